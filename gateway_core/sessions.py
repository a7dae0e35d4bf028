"""Chat sessions: stored conversations that chat calls extend.

A session belongs to an organization. Every key of that organization can
read and extend it, and for keys of other organizations it does not exist
(404). Messages are numbered 1, 2, 3, ... in conversation order. An append raises the
session's message_count and inserts the messages in one transaction, and
the row lock of that UPDATE makes concurrent appends to one session wait
for each other, so the messages of one call stay contiguous.

The SQL statements are shared with the proxy (proxy/session_store.py),
which runs them on its async pool. The functions here run them on a
SQLAlchemy connection, for the app and scripts.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import Connection

from gateway_core import access
from gateway_core.errors import InvalidRequestError, NotFoundError

SESSION_ID = re.compile(r"^sess_[0-9a-f]{32}$")
# Metadata limits of OpenAI's API (the Metadata schema of its OpenAPI spec).
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_TITLE = 200
MAX_MODEL = 200
MAX_QUERY = 200
# Fields of a chat message that are stored and sent again as history.
STORED_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id")
SESSION_FIELDS = frozenset({"title", "model", "system_prompt", "metadata"})

_COLUMNS = (
    "id, organization_id, team_id, api_key_id, title, model, system_prompt, metadata, "
    "message_count, created_at, updated_at"
)
INSERT_SESSION = (
    "INSERT INTO chat_sessions (id, organization_id, team_id, api_key_id, title, model, "
    "system_prompt, metadata) VALUES (%(id)s, %(organization_id)s, %(team_id)s, "
    "%(api_key_id)s, %(title)s, %(model)s, %(system_prompt)s, %(metadata)s) "
    f"RETURNING {_COLUMNS}"
)
SELECT_SESSION = (
    f"SELECT {_COLUMNS} FROM chat_sessions "
    "WHERE id = %(id)s AND organization_id = %(organization_id)s"
)
SELECT_CURSOR = (
    "SELECT created_at, id FROM chat_sessions "
    "WHERE id = %(id)s AND organization_id = %(organization_id)s"
)
# Sessions newest first. `pattern` is an ILIKE pattern matched against the
# title and the text of every message.
SELECT_SESSIONS = (
    f"SELECT {_COLUMNS} FROM chat_sessions s WHERE s.organization_id = %(organization_id)s "
    "AND (%(after_created)s::timestamptz IS NULL "
    "OR (s.created_at, s.id) < (%(after_created)s::timestamptz, %(after_id)s::text)) "
    "AND (%(pattern)s::text IS NULL OR s.title ILIKE %(pattern)s OR EXISTS ("
    "SELECT 1 FROM chat_session_messages m "
    "WHERE m.session_id = s.id AND m.content_text ILIKE %(pattern)s)) "
    "ORDER BY s.created_at DESC, s.id DESC LIMIT %(limit)s"
)
DELETE_SESSION = (
    "DELETE FROM chat_sessions WHERE id = %(id)s AND organization_id = %(organization_id)s "
    "RETURNING id"
)
_MESSAGE_COLUMNS = "seq, message, request_id, partial, created_at"
SELECT_MESSAGES = (
    f"SELECT {_MESSAGE_COLUMNS} FROM chat_session_messages "
    "WHERE session_id = %(id)s AND seq > %(after)s ORDER BY seq LIMIT %(limit)s"
)
# The newest `limit` messages, returned oldest first.
SELECT_HISTORY = (
    f"SELECT {_MESSAGE_COLUMNS} FROM (SELECT {_MESSAGE_COLUMNS} FROM chat_session_messages "
    "WHERE session_id = %(id)s ORDER BY seq DESC LIMIT %(limit)s) newest ORDER BY seq"
)
RESERVE_SEQUENCE = (
    "UPDATE chat_sessions SET message_count = message_count + %(count)s, updated_at = now() "
    "WHERE id = %(id)s AND organization_id = %(organization_id)s RETURNING message_count"
)
INSERT_MESSAGE = (
    "INSERT INTO chat_session_messages "
    "(session_id, seq, role, message, content_text, request_id, partial) "
    "VALUES (%(session_id)s, %(seq)s, %(role)s, %(message)s, %(content_text)s, "
    "%(request_id)s, %(partial)s)"
)
SELECT_TOTALS = (
    "SELECT s.id, s.organization_id, o.name, s.team_id, s.title, s.model, s.message_count, "
    "s.created_at, s.updated_at, count(u.request_id), coalesce(sum(u.cost_usd), 0), "
    "coalesce(sum(u.prompt_tokens), 0), coalesce(sum(u.completion_tokens), 0), "
    "avg(u.latency_ms)::float8 FROM chat_sessions s "
    "JOIN organizations o ON o.id = s.organization_id "
    "LEFT JOIN usage_events u ON u.session_id = s.id "
    "WHERE (%(pattern)s::text IS NULL OR s.title ILIKE %(pattern)s OR s.id = %(query)s "
    "OR EXISTS (SELECT 1 FROM chat_session_messages m "
    "WHERE m.session_id = s.id AND m.content_text ILIKE %(pattern)s)) "
    # NULL lists every organization, for installation staff.
    "AND (%(organization_ids)s::bigint[] IS NULL OR s.organization_id = ANY(%(organization_ids)s)) "
    "GROUP BY s.id, o.name ORDER BY s.updated_at DESC, s.id LIMIT %(limit)s"
)


@dataclass(frozen=True)
class ChatSession:
    id: str
    organization_id: int
    team_id: int | None
    api_key_id: int | None
    title: str | None
    model: str | None
    system_prompt: str | None
    metadata: dict[str, str]
    message_count: int
    created_at: datetime
    updated_at: datetime

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.session",
            "title": self.title,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "metadata": self.metadata,
            "message_count": self.message_count,
            "created_at": int(self.created_at.timestamp()),
            "updated_at": int(self.updated_at.timestamp()),
        }

    def system_messages(self) -> list[dict[str, Any]]:
        if not self.system_prompt:
            return []
        return [{"role": "system", "content": self.system_prompt}]


@dataclass(frozen=True)
class SessionMessage:
    seq: int
    message: dict[str, Any]
    request_id: str | None
    partial: bool
    created_at: datetime

    def to_api(self, session_id: str) -> dict[str, Any]:
        return {
            "id": f"{session_id}:{self.seq}",
            "object": "chat.session.message",
            "seq": self.seq,
            **self.message,
            "request_id": self.request_id,
            "partial": self.partial,
            "created_at": int(self.created_at.timestamp()),
        }


@dataclass(frozen=True)
class SessionTotals:
    """A session with the usage rows of the calls that named it, summed."""

    id: str
    organization_id: int
    organization: str
    team_id: int | None
    title: str | None
    model: str | None
    message_count: int
    created_at: datetime
    updated_at: datetime
    calls: int
    cost_usd: Decimal
    prompt_tokens: int
    completion_tokens: int
    # Mean latency of the calls in milliseconds, or None before the first call.
    mean_latency_ms: float | None


def session_from_row(row: Any) -> ChatSession:
    return ChatSession(*row)


def message_from_row(row: Any) -> SessionMessage:
    return SessionMessage(*row)


def new_session_id() -> str:
    return "sess_" + secrets.token_hex(16)


def session_not_found(session_id: str) -> NotFoundError:
    truncated = session_id if len(session_id) <= 40 else session_id[:40] + "..."
    return NotFoundError(f"session {truncated!r} not found", code="session_not_found")


def check_session_id(session_id: Any) -> str:
    """Return `session_id` if it is well formed, else raise NotFoundError.

    An id of another form names no session, so it is not found rather than invalid.
    """
    if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
        raise session_not_found(str(session_id))
    return session_id


def like_pattern(query: str | None) -> str | None:
    """Return an ILIKE pattern that matches `query` anywhere, wildcards escaped."""
    if not query:
        return None
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _optional_text(payload: Mapping[str, Any], field: str, limit: int | None) -> str | None:
    value = payload[field]
    if value is None:
        return None
    if not isinstance(value, str) or (limit is not None and len(value) > limit):
        size = f" of at most {limit} characters" if limit else ""
        raise InvalidRequestError(f"'{field}' must be a string{size} or null", param=field)
    if "\x00" in value:
        raise InvalidRequestError(f"'{field}' must not contain NUL characters", param=field)
    return value


def check_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError("'metadata' must be an object", param="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidRequestError(
            f"'metadata' has at most {MAX_METADATA_KEYS} keys, got {len(value)}", param="metadata"
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY or "\x00" in key:
            raise InvalidRequestError(
                f"metadata keys have at most {MAX_METADATA_KEY} characters", param="metadata"
            )
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE or "\x00" in item:
            raise InvalidRequestError(
                f"metadata value {key!r} must be a string of at most "
                f"{MAX_METADATA_VALUE} characters",
                param=f"metadata.{key}",
            )
    return dict(value)


def session_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return the session fields present in a create or update body, checked."""
    unknown = sorted(set(payload) - SESSION_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s) {', '.join(map(repr, unknown))}. A session has "
            f"{', '.join(sorted(SESSION_FIELDS))}",
            param=unknown[0],
        )
    fields: dict[str, Any] = {}
    limits = {"title": MAX_TITLE, "model": MAX_MODEL, "system_prompt": None}
    for field, limit in limits.items():
        if field in payload:
            fields[field] = _optional_text(payload, field, limit)
    if "metadata" in payload:
        fields["metadata"] = check_metadata(payload["metadata"])
    return fields


def update_statement(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return an UPDATE for the given session fields and its parameters."""
    params = {field: Jsonb(v) if field == "metadata" else v for field, v in fields.items()}
    # Column names come from SESSION_FIELDS only, never from the request.
    assignments = [f"{field} = %({field})s" for field in sorted(fields) if field in SESSION_FIELDS]
    assignments.append("updated_at = now()")
    statement = (
        f"UPDATE chat_sessions SET {', '.join(assignments)} "
        f"WHERE id = %(id)s AND organization_id = %(organization_id)s RETURNING {_COLUMNS}"
    )
    return statement, params


def stored_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """Return the fields of a chat message that are kept as history."""
    return {
        field: message[field]
        for field in STORED_MESSAGE_FIELDS
        if field in message and (message[field] is not None or field == "content")
    }


def without_nul(value: Any) -> Any:
    """Return `value` with NUL characters replaced, because Postgres text cannot hold them."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    return value


def message_text(message: Mapping[str, Any]) -> str:
    """Return the searchable text of a message: its text content and tool call arguments."""
    texts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        texts += [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            texts.append(function["arguments"])
    return "\n".join(texts).replace("\x00", "")


def message_rows(
    session_id: str,
    first_seq: int,
    messages: Iterable[Mapping[str, Any]],
    request_id: str | None,
    partial_last: bool,
) -> list[dict[str, Any]]:
    """Return INSERT_MESSAGE parameters for messages numbered from `first_seq`."""
    listed = list(messages)
    return [
        {
            "session_id": session_id,
            "seq": first_seq + index,
            "role": message["role"],
            "message": Jsonb(without_nul(stored_message(message))),
            "content_text": message_text(message),
            "request_id": request_id,
            "partial": partial_last and index == len(listed) - 1,
        }
        for index, message in enumerate(listed)
    ]


def page_limit(value: Any, default: int = 20, maximum: int = 100) -> int:
    """Parse a `limit` query parameter."""
    if value is None:
        return default
    if not (isinstance(value, str) and value.isdigit() and 1 <= int(value) <= maximum):
        raise InvalidRequestError(
            f"'limit' must be an integer from 1 to {maximum}, got {value!r}", param="limit"
        )
    return int(value)


def list_envelope(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """Wrap a page of objects the way OpenAI's list endpoints do."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# Synchronous storage for the app and scripts.


def create_session(
    conn: Connection,
    organization_id: int,
    fields: Mapping[str, Any],
    *,
    team_id: int | None = None,
    api_key_id: int | None = None,
) -> ChatSession:
    params = insert_parameters(organization_id, fields, team_id, api_key_id)
    return session_from_row(conn.exec_driver_sql(INSERT_SESSION, params).one())


def insert_parameters(
    organization_id: int,
    fields: Mapping[str, Any],
    team_id: int | None,
    api_key_id: int | None,
) -> dict[str, Any]:
    return {
        "id": new_session_id(),
        "organization_id": organization_id,
        "team_id": team_id,
        "api_key_id": api_key_id,
        "title": fields.get("title"),
        "model": fields.get("model"),
        "system_prompt": fields.get("system_prompt"),
        "metadata": Jsonb(fields.get("metadata") or {}),
    }


def get_session(conn: Connection, organization_id: int, session_id: str) -> ChatSession:
    check_session_id(session_id)
    params = {"id": session_id, "organization_id": organization_id}
    row = conn.exec_driver_sql(SELECT_SESSION, params).first()
    if row is None:
        raise session_not_found(session_id)
    return session_from_row(row)


def list_messages(
    conn: Connection, organization_id: int, session_id: str, after: int = 0, limit: int = 1000
) -> list[SessionMessage]:
    get_session(conn, organization_id, session_id)
    params = {"id": session_id, "after": after, "limit": limit}
    return [message_from_row(row) for row in conn.exec_driver_sql(SELECT_MESSAGES, params)]


def append_messages(
    conn: Connection,
    organization_id: int,
    session_id: str,
    messages: list[Mapping[str, Any]],
    request_id: str | None = None,
    partial_last: bool = False,
) -> int:
    """Append messages in order and return the seq of the last. Call it inside a transaction."""
    params = {"id": session_id, "organization_id": organization_id, "count": len(messages)}
    row = conn.exec_driver_sql(RESERVE_SEQUENCE, params).first()
    if row is None:
        raise session_not_found(session_id)
    last = row[0]
    rows = message_rows(session_id, last - len(messages) + 1, messages, request_id, partial_last)
    if rows:
        conn.exec_driver_sql(INSERT_MESSAGE, rows)
    return last


def session_totals(
    conn: Connection,
    query: str | None = None,
    limit: int = 200,
    actor: access.Actor | None = None,
) -> list[SessionTotals]:
    """Return sessions, most recently updated first, with usage sums.

    Without an `actor`, or for installation staff, every organization's
    sessions are listed, and otherwise only those of the actor's organizations.
    """
    organization_ids = None
    if actor is not None and actor.organization_ids is not None:
        organization_ids = sorted(actor.organization_ids)
    params = {
        "pattern": like_pattern(query),
        "query": query,
        "limit": limit,
        "organization_ids": organization_ids,
    }
    return [SessionTotals(*row) for row in conn.exec_driver_sql(SELECT_TOTALS, params)]


def organization_names(conn: Connection, actor: access.Actor | None = None) -> dict[int, str]:
    """Return the names of every organization, or of the actor's, by id, ordered by name."""
    rows = conn.exec_driver_sql("SELECT id, name FROM organizations ORDER BY name, id")
    return {
        organization_id: name
        for organization_id, name in rows
        if actor is None or actor.may_see(organization_id)
    }
