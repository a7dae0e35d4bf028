"""Sessions and prompt templates on the proxy's async Postgres pool.

The statements and checks are those of gateway_core.sessions and
gateway_core.prompt_templates. Only the connection differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway_core import prompt_templates as templates
from gateway_core import sessions
from gateway_core.errors import InvalidRequestError
from gateway_core.prompt_templates import PromptTemplate
from gateway_core.sessions import ChatSession, SessionMessage
from proxy.context import KeyIdentity


async def create_session(
    pool: AsyncConnectionPool, identity: KeyIdentity, fields: Mapping[str, Any]
) -> ChatSession:
    params = sessions.insert_parameters(
        identity.organization_id, fields, identity.team_id, identity.key_id
    )
    async with pool.connection() as conn:
        row = await (await conn.execute(sessions.INSERT_SESSION, params)).fetchone()
    return sessions.session_from_row(row)


async def get_session(
    pool: AsyncConnectionPool, organization_id: int, session_id: Any
) -> ChatSession:
    """Return the organization's session, or raise NotFoundError."""
    session_id = sessions.check_session_id(session_id)
    params = {"id": session_id, "organization_id": organization_id}
    async with pool.connection() as conn:
        row = await (await conn.execute(sessions.SELECT_SESSION, params)).fetchone()
    if row is None:
        raise sessions.session_not_found(session_id)
    return sessions.session_from_row(row)


async def list_sessions(
    pool: AsyncConnectionPool,
    organization_id: int,
    *,
    limit: int,
    after: str | None,
    query: str | None,
) -> tuple[list[ChatSession], bool]:
    """Return one page of sessions, newest first, and whether more follow."""
    params: dict[str, Any] = {
        "organization_id": organization_id,
        "after_created": None,
        "after_id": None,
        "pattern": sessions.like_pattern(query),
        "limit": limit + 1,
    }
    async with pool.connection() as conn:
        if after is not None:
            cursor_params = {"id": after, "organization_id": organization_id}
            cursor = await (await conn.execute(sessions.SELECT_CURSOR, cursor_params)).fetchone()
            if cursor is None:
                raise InvalidRequestError(
                    f"'after' names no session of this organization: {after[:40]!r}",
                    param="after",
                )
            params["after_created"], params["after_id"] = cursor
        rows = await (await conn.execute(sessions.SELECT_SESSIONS, params)).fetchall()
    found = [sessions.session_from_row(row) for row in rows]
    return found[:limit], len(found) > limit


async def update_session(
    pool: AsyncConnectionPool, organization_id: int, session_id: str, fields: Mapping[str, Any]
) -> ChatSession:
    statement, params = sessions.update_statement(fields)
    params.update(id=session_id, organization_id=organization_id)
    async with pool.connection() as conn:
        row = await (await conn.execute(statement, params)).fetchone()
    if row is None:
        raise sessions.session_not_found(session_id)
    return sessions.session_from_row(row)


async def delete_session(pool: AsyncConnectionPool, organization_id: int, session_id: str) -> None:
    params = {"id": session_id, "organization_id": organization_id}
    async with pool.connection() as conn:
        row = await (await conn.execute(sessions.DELETE_SESSION, params)).fetchone()
    if row is None:
        raise sessions.session_not_found(session_id)


async def list_messages(
    pool: AsyncConnectionPool, session_id: str, *, after: int, limit: int
) -> list[SessionMessage]:
    """Return messages after seq `after`, oldest first.

    The caller checks first that the session belongs to the key's organization.
    """
    params = {"id": session_id, "after": after, "limit": limit}
    async with pool.connection() as conn:
        rows = await (await conn.execute(sessions.SELECT_MESSAGES, params)).fetchall()
    return [sessions.message_from_row(row) for row in rows]


async def load_history(
    pool: AsyncConnectionPool, session_id: str, limit: int
) -> list[SessionMessage]:
    """Return the newest `limit` messages of a session, oldest first."""
    params = {"id": session_id, "limit": limit}
    async with pool.connection() as conn:
        rows = await (await conn.execute(sessions.SELECT_HISTORY, params)).fetchall()
    return [sessions.message_from_row(row) for row in rows]


async def append_messages(
    pool: AsyncConnectionPool,
    organization_id: int,
    session_id: str,
    messages: list[Mapping[str, Any]],
    request_id: str,
    partial_last: bool,
) -> int | None:
    """Append messages in one transaction and return the last seq.

    Returns None when the session was deleted.
    """
    params = {"id": session_id, "organization_id": organization_id, "count": len(messages)}
    async with pool.connection() as conn, conn.transaction():
        row = await (await conn.execute(sessions.RESERVE_SEQUENCE, params)).fetchone()
        if row is None:
            return None
        last = row[0]
        first = last - len(messages) + 1
        rows = sessions.message_rows(session_id, first, messages, request_id, partial_last)
        async with conn.cursor() as cursor:
            await cursor.executemany(sessions.INSERT_MESSAGE, rows)
    return last


async def create_template_version(
    pool: AsyncConnectionPool, identity: KeyIdentity, body: Mapping[str, Any]
) -> PromptTemplate:
    params = templates.version_parameters(
        identity.organization_id,
        body.get("name"),
        body.get("content"),
        body.get("description"),
        f"api_key:{identity.key_id}",
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(templates.LOCK_NAME, params)
        row = await (await conn.execute(templates.INSERT_VERSION, params)).fetchone()
    return templates.template_from_row(row)


async def get_template(
    pool: AsyncConnectionPool, organization_id: int, name: str, version: int | None
) -> PromptTemplate:
    params = {"organization_id": organization_id, "name": name, "version": version}
    query = templates.SELECT_LATEST if version is None else templates.SELECT_VERSION
    async with pool.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    if row is None:
        raise templates.not_found(name, version)
    return templates.template_from_row(row)


async def list_templates(
    pool: AsyncConnectionPool, organization_id: int, *, after: str | None, limit: int
) -> tuple[list[PromptTemplate], bool]:
    params = {"organization_id": organization_id, "after": after, "limit": limit + 1}
    async with pool.connection() as conn:
        rows = await (await conn.execute(templates.SELECT_LATEST_ALL, params)).fetchall()
    found = [templates.template_from_row(row) for row in rows]
    return found[:limit], len(found) > limit
