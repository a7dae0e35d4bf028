"""Prompt templates: named, versioned messages with {{name}} placeholders.

Rendering is a plain substitution, not Jinja: `{{ name }}` (spaces optional,
name as a Python identifier) is replaced by the variable's value in one
pass, so a value that itself contains `{{x}}` is inserted as it is. Any
other text, including a lone `{{`, is copied unchanged. There are no loops,
conditions or filters, so rendering untrusted templates cannot run code or
loop.

A missing variable and a variable the template does not use are both
rejected with a 400 that names them: an unused variable is most often a
typo of a used one.

Versions are immutable. Saving under an existing name inserts the next
version, and a trigger (migration 0007) rejects UPDATE on the table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection

from gateway_core import access
from gateway_core.errors import InvalidRequestError, NotFoundError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TEMPLATE_ROLES = frozenset({"system", "developer", "user", "assistant"})
MAX_TEMPLATE_MESSAGES = 100
MAX_VARIABLE_NAME = 100
TemplateContent = str | list[dict[str, str]]

_COLUMNS = "name, version, content, variables, description, created_by, created_at"
# Serializes version numbering per organization and template name.
LOCK_NAME = "SELECT pg_advisory_xact_lock(hashtextextended(%(lock_key)s, 0))"
INSERT_VERSION = (
    "INSERT INTO prompt_templates "
    "(organization_id, name, version, content, variables, description, created_by) "
    "SELECT %(organization_id)s::bigint, %(name)s::text, coalesce(max(version), 0) + 1, "
    "%(content)s::jsonb, %(variables)s::text[], %(description)s::text, %(created_by)s::text "
    "FROM prompt_templates "
    "WHERE organization_id = %(organization_id)s::bigint AND name = %(name)s::text "
    f"RETURNING {_COLUMNS}"
)
SELECT_LATEST = (
    f"SELECT {_COLUMNS} FROM prompt_templates "
    "WHERE organization_id = %(organization_id)s AND name = %(name)s "
    "ORDER BY version DESC LIMIT 1"
)
SELECT_VERSION = (
    f"SELECT {_COLUMNS} FROM prompt_templates "
    "WHERE organization_id = %(organization_id)s AND name = %(name)s AND version = %(version)s"
)
SELECT_VERSIONS = (
    f"SELECT {_COLUMNS} FROM prompt_templates "
    "WHERE organization_id = %(organization_id)s AND name = %(name)s ORDER BY version DESC"
)
# The newest version of each template, by name, after the `after` name.
SELECT_LATEST_ALL = (
    f"SELECT DISTINCT ON (name) {_COLUMNS} FROM prompt_templates "
    "WHERE organization_id = %(organization_id)s "
    "AND (%(after)s::text IS NULL OR name > %(after)s) "
    "ORDER BY name, version DESC LIMIT %(limit)s"
)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    content: TemplateContent
    variables: tuple[str, ...]
    description: str | None
    created_by: str | None
    created_at: datetime

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "prompt_template",
            "name": self.name,
            "version": self.version,
            "content": self.content,
            "variables": list(self.variables),
            "description": self.description,
            "created_by": self.created_by,
            "created_at": int(self.created_at.timestamp()),
        }


def template_from_row(row: Any) -> PromptTemplate:
    name, version, content, variables, description, created_by, created_at = row
    return PromptTemplate(
        name, version, content, tuple(variables), description, created_by, created_at
    )


def check_template_name(name: Any) -> str:
    if not isinstance(name, str) or not TEMPLATE_NAME.match(name):
        raise InvalidRequestError(
            "template name must be 1 to 100 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {name!r}",
            param="name",
        )
    return name


def parse_template_content(content: Any) -> TemplateContent:
    """Return `content` checked: a non-empty string or an array of role/content messages."""
    if isinstance(content, str):
        if not content.strip():
            raise InvalidRequestError("template content must not be empty", param="content")
        if "\x00" in content:
            raise InvalidRequestError(
                "template content must not contain NUL characters", param="content"
            )
        return content
    if not isinstance(content, list) or not content:
        raise InvalidRequestError(
            "template content must be a string or a non-empty array of messages", param="content"
        )
    if len(content) > MAX_TEMPLATE_MESSAGES:
        raise InvalidRequestError(
            f"a template has at most {MAX_TEMPLATE_MESSAGES} messages, got {len(content)}",
            param="content",
        )
    messages = []
    for index, message in enumerate(content):
        param = f"content[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InvalidRequestError(
                f"{param} must be an object with exactly 'role' and 'content'", param=param
            )
        if message["role"] not in TEMPLATE_ROLES:
            raise InvalidRequestError(
                f"{param}.role must be one of {', '.join(sorted(TEMPLATE_ROLES))}, "
                f"got {message['role']!r}",
                param=f"{param}.role",
            )
        if not isinstance(message["content"], str) or "\x00" in message["content"]:
            raise InvalidRequestError(
                f"{param}.content must be a string without NUL characters",
                param=f"{param}.content",
            )
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def template_variables(content: TemplateContent) -> tuple[str, ...]:
    """Return the placeholder names in `content`, in order of first appearance."""
    texts = [content] if isinstance(content, str) else [m["content"] for m in content]
    names: dict[str, None] = {}
    for text in texts:
        for match in PLACEHOLDER.finditer(text):
            names.setdefault(match.group(1), None)
    too_long = [name for name in names if len(name) > MAX_VARIABLE_NAME]
    if too_long:
        raise InvalidRequestError(
            f"variable names have at most {MAX_VARIABLE_NAME} characters: {too_long[0][:20]}...",
            param="content",
        )
    return tuple(names)


def variable_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise InvalidRequestError(
        f"template variable {name!r} must be a string, number or boolean, "
        f"got {type(value).__name__}",
        param=f"variables.{name}",
    )


def as_messages(content: TemplateContent) -> list[dict[str, str]]:
    """Return template content as chat messages: a string is one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    return [dict(message) for message in content]


def render_template(template: PromptTemplate, variables: Any) -> list[dict[str, str]]:
    """Return the template's messages with every placeholder replaced.

    Raises InvalidRequestError naming every missing or unused variable.
    """
    if not isinstance(variables, Mapping):
        raise InvalidRequestError("'variables' must be an object", param="variables")
    label = f"template {template.name!r} version {template.version}"
    missing = [name for name in template.variables if name not in variables]
    if missing:
        raise InvalidRequestError(
            f"missing variable(s) for {label}: {', '.join(missing)}",
            param="variables",
            code="missing_template_variable",
        )
    unused = sorted(name for name in variables if name not in template.variables)
    if unused:
        expected = ", ".join(template.variables) or "none"
        raise InvalidRequestError(
            f"{label} has no variable(s) {', '.join(map(repr, unused))}. It uses: {expected}",
            param="variables",
            code="unknown_template_variable",
        )
    values = {name: variable_text(name, variables[name]) for name in template.variables}

    def substitute(text: str) -> str:
        return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)

    return [
        {"role": message["role"], "content": substitute(message["content"])}
        for message in as_messages(template.content)
    ]


def version_parameters(
    organization_id: int,
    name: Any,
    content: Any,
    description: Any,
    created_by: str | None,
) -> dict[str, Any]:
    """Check a new version's fields and return the parameters of INSERT_VERSION."""
    check_template_name(name)
    parsed = parse_template_content(content)
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError("'description' must be a string", param="description")
    return {
        "organization_id": organization_id,
        "name": name,
        "content": Jsonb(parsed),
        "variables": list(template_variables(parsed)),
        "description": description,
        "created_by": created_by,
        "lock_key": f"prompt_template:{organization_id}:{name}",
    }


def not_found(name: str, version: int | None) -> NotFoundError:
    version_text = f"version {version} of " if version is not None else ""
    return NotFoundError(f"{version_text}template {name!r} not found", code="template_not_found")


# Synchronous storage for the app and scripts. proxy/session_store.py runs
# the same statements on the proxy's async pool.


def create_version(
    conn: Connection,
    organization_id: int,
    name: str,
    content: Any,
    description: str | None = None,
    created_by: str | None = None,
    actor: access.Actor | None = None,
) -> PromptTemplate:
    """Insert the next version of a template. Call it inside a transaction.

    With an `actor`, raises PermissionDeniedError unless they may edit
    templates in this organization.
    """
    if actor is not None:
        access.require_organization(actor, organization_id, "templates.edit")
    params = version_parameters(organization_id, name, content, description, created_by)
    conn.exec_driver_sql(LOCK_NAME, params)
    return template_from_row(conn.exec_driver_sql(INSERT_VERSION, params).one())


def get_template(
    conn: Connection, organization_id: int, name: str, version: int | None = None
) -> PromptTemplate:
    """Return one version of a template, the newest when `version` is None."""
    params = {"organization_id": organization_id, "name": name, "version": version}
    query = SELECT_LATEST if version is None else SELECT_VERSION
    row = conn.exec_driver_sql(query, params).first()
    if row is None:
        raise not_found(name, version)
    return template_from_row(row)


def list_versions(conn: Connection, organization_id: int, name: str) -> list[PromptTemplate]:
    params = {"organization_id": organization_id, "name": name}
    return [template_from_row(row) for row in conn.exec_driver_sql(SELECT_VERSIONS, params)]


def list_latest(
    conn: Connection, organization_id: int, after: str | None = None, limit: int = 100
) -> list[PromptTemplate]:
    """Return the newest version of each template, ordered by name."""
    params = {"organization_id": organization_id, "after": after, "limit": limit}
    return [template_from_row(row) for row in conn.exec_driver_sql(SELECT_LATEST_ALL, params)]
