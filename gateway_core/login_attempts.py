"""The limits on failed sign-ins, per username and per browser session.

After `MAX_USERNAME_FAILURES` failed sign-ins within `WINDOW` for one
username, or `MAX_SESSION_FAILURES` from one browser session, further
attempts are rejected without checking the password until enough of those
failures leave the window. A successful sign-in ends the count for its own
username only.

`begin_attempt` records an attempt as a failure before the password is
checked, and `finish_attempt` turns it into a success. Concurrent attempts
for one username therefore each take a place in the count, so parallel
guesses cannot pass the limit. An attempt whose process stops before
`finish_attempt` stays counted as a failure.

NOTE: failures are not limited per client address, because behind a reverse
proxy every browser has the proxy's address. A client that opens a new
session for each guess is therefore limited only per username.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from gateway_core.schema import login_attempts

MAX_USERNAME_FAILURES = 5
# Higher than the per-username limit, so a person who mistypes their own
# username a few times is not stopped before the username limit applies.
MAX_SESSION_FAILURES = 10
WINDOW = timedelta(minutes=15)
# Rows older than this are deleted as new attempts are recorded.
RETENTION = timedelta(days=30)
MAX_USERNAME_LENGTH = 200
# Namespace for pg_advisory_xact_lock(int, int), so these locks do not
# collide with single-key advisory locks elsewhere.
_LOCK_NAMESPACE = 0x6C6F67


@dataclass(frozen=True)
class Limit:
    """A limit that rejects sign-ins for now."""

    # "username" or "session".
    scope: str
    # How long until an attempt is accepted again.
    retry_after: timedelta


@dataclass(frozen=True)
class Attempt:
    """An attempt from `begin_attempt`: its id to finish, or the limit that rejected it."""

    attempt_id: int
    limit: Limit | None = None

    @property
    def rejected(self) -> bool:
        return self.limit is not None


def normalize_username(username: str) -> str:
    """Return the username as streamlit-authenticator 0.4.2 compares it: lowercased, stripped."""
    return username.lower().strip()[:MAX_USERNAME_LENGTH]


def _wait(failure_times: list[datetime], maximum: int, now: datetime) -> timedelta:
    """Return the time until fewer than `maximum` of these failures are in the window."""
    if len(failure_times) < maximum:
        return timedelta(0)
    newest_first = sorted(failure_times, reverse=True)
    return max(newest_first[maximum - 1] + WINDOW - now, timedelta(0))


def _failures_since(
    conn: Connection, condition: ColumnElement[bool], since: datetime
) -> list[datetime]:
    rows = conn.execute(
        select(login_attempts.c.attempted_at).where(
            condition,
            login_attempts.c.outcome == "failure",
            login_attempts.c.attempted_at > since,
        )
    )
    return list(rows.scalars())


def _username_failures(conn: Connection, username: str, since: datetime) -> list[datetime]:
    """Return the username's failures in the window that came after its last success."""
    last_success = conn.execute(
        select(func.max(login_attempts.c.attempted_at)).where(
            login_attempts.c.username == username, login_attempts.c.outcome == "success"
        )
    ).scalar_one()
    if last_success is not None and last_success > since:
        since = last_success
    return _failures_since(conn, login_attempts.c.username == username, since)


def check_limits(
    conn: Connection, *, username: str | None, session_key: str, now: datetime | None = None
) -> Limit | None:
    """Return the limit that the session, or the username if given, has reached, else None.

    When both have, return the one with the longer wait.
    """
    now = now or datetime.now(UTC)
    since = now - WINDOW
    session_failures = _failures_since(conn, login_attempts.c.session_key == session_key, since)
    waits = {"session": _wait(session_failures, MAX_SESSION_FAILURES, now)}
    if username is not None:
        failures = _username_failures(conn, normalize_username(username), since)
        waits["username"] = _wait(failures, MAX_USERNAME_FAILURES, now)
    scope, wait = max(waits.items(), key=lambda item: item[1])
    return Limit(scope, wait) if wait > timedelta(0) else None


def begin_attempt(
    conn: Connection,
    username: str,
    *,
    session_key: str,
    client_address: str | None,
    now: datetime | None = None,
) -> Attempt:
    """Record a sign-in attempt as a failure, or as rejected when a limit is reached.

    Commit before checking the password, so concurrent attempts see this one.
    """
    now = now or datetime.now(UTC)
    username = normalize_username(username)
    conn.execute(
        text("SELECT pg_advisory_xact_lock(CAST(:namespace AS integer), hashtext(:username))"),
        {"namespace": _LOCK_NAMESPACE, "username": username},
    )
    limit = check_limits(conn, username=username, session_key=session_key, now=now)
    outcome = "failure" if limit is None else "rejected"
    attempt_id = conn.execute(
        insert(login_attempts)
        .values(
            attempted_at=now,
            username=username,
            session_key=session_key,
            client_address=client_address,
            outcome=outcome,
        )
        .returning(login_attempts.c.id)
    ).scalar_one()
    conn.execute(delete(login_attempts).where(login_attempts.c.attempted_at < now - RETENTION))
    return Attempt(attempt_id, limit)


def finish_attempt(conn: Connection, attempt_id: int, *, success: bool) -> None:
    """Mark an accepted attempt as a success. `begin_attempt` recorded it as a failure."""
    if success:
        conn.execute(
            update(login_attempts)
            .where(login_attempts.c.id == attempt_id)
            .values(outcome="success")
        )
