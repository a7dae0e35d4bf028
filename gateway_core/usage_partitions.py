"""Monthly partitions of usage_events: create ahead, list, detach and archive.

usage_events is partitioned by range of created_at, one partition per UTC
month named usage_events_yYYYYmMM, plus usage_events_default for rows of a
month that has no partition. The SQL functions behind `ensure_partitions`
come from migration 0016.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from gateway_core import audit
from gateway_core.errors import InvalidRequestError, NotFoundError

# Months after the current UTC month that always have a partition.
MONTHS_AHEAD = 3
DEFAULT_PARTITION = "usage_events_default"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True)
class Partition:
    name: str
    # "FOR VALUES FROM (...) TO (...)" or "DEFAULT", as Postgres prints it.
    bounds: str
    rows: int


@dataclass(frozen=True)
class DetachedMonth:
    table: str
    rows: int
    archive: Path | None
    dropped: bool
    # False when an earlier run had detached the table already.
    detached_now: bool


def parse_month(value: str) -> date:
    """Parse YYYY-MM into the first day of that month."""
    match = _MONTH.match(value)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise InvalidRequestError(f"invalid month {value!r}; expected YYYY-MM, e.g. 2026-01")
    return date(int(match.group(1)), int(match.group(2)), 1)


def partition_name(month: date) -> str:
    return f"usage_events_y{month.year:04d}m{month.month:02d}"


def ensure_partitions(conn: Connection, months_ahead: int = MONTHS_AHEAD) -> int:
    """Create the partitions of this UTC month and the next months; return how many were new.

    Safe to call from many processes at once: the SQL function takes an
    advisory lock and skips months whose table exists.
    """
    return conn.execute(
        text("SELECT usage_events_ensure_partitions(:months)"), {"months": months_ahead}
    ).scalar_one()


def list_partitions(conn: Connection) -> list[Partition]:
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), "
            "coalesce(s.n_live_tup, 0) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE i.inhparent = 'usage_events'::regclass ORDER BY c.relname"
        )
    ).all()
    return [Partition(name, bounds, rows) for name, bounds, rows in rows]


def detach_month(
    engine: Engine,
    month: date,
    *,
    actor: str,
    archive: Path | None = None,
    drop: bool = False,
) -> DetachedMonth:
    """Detach one past month's partition, then optionally write it to CSV and drop it.

    Each step commits on its own, so usage_events is locked only for the
    detach itself and not while the archive is written. A month detached
    earlier but not dropped can be archived and dropped by running this
    again. The detach and the drop each append an audit entry. The rollups
    in usage_hourly and usage_daily keep the month's totals.
    """
    this_month = datetime.now(UTC).date().replace(day=1)
    if month >= this_month:
        raise InvalidRequestError(
            f"{month:%Y-%m} is the current or a future month; only past months can be detached"
        )
    if drop and archive is None:
        raise InvalidRequestError("--drop needs --out, so the month's rows are archived first")
    if archive is not None and archive.exists():
        raise InvalidRequestError(f"archive file {archive} exists; choose another --out")
    table = partition_name(month)
    with engine.begin() as conn:
        detached_now = _detach(conn, table, month)
        rows = conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
        if detached_now:
            audit.record(
                conn,
                actor=actor,
                action="usage.detach",
                object_type="usage_partition",
                object_id=table,
                after={"month": f"{month:%Y-%m}", "rows": rows},
            )
    if archive is not None:
        with engine.begin() as conn:
            write_archive(conn, table, archive)
    if drop:
        with engine.begin() as conn:
            conn.execute(text(f'DROP TABLE "{table}"'))
            audit.record(
                conn,
                actor=actor,
                action="usage.drop",
                object_type="usage_partition",
                object_id=table,
                after={"month": f"{month:%Y-%m}", "rows": rows, "archive": str(archive)},
            )
    return DetachedMonth(table, rows, archive, drop, detached_now)


def _detach(conn: Connection, table: str, month: date) -> bool:
    """Detach the partition; False when it is a table detached earlier."""
    state = conn.execute(
        text(
            "SELECT c.relispartition FROM pg_class c "
            "WHERE c.relname = :name AND c.relnamespace = 'public'::regnamespace"
        ),
        {"name": table},
    ).scalar_one_or_none()
    if state is None:
        raise NotFoundError(f"usage_events has no partition {table} for {month:%Y-%m}")
    if not state:
        return False
    conn.execute(text(f'ALTER TABLE usage_events DETACH PARTITION "{table}"'))
    return True


def write_archive(conn: Connection, table: str, path: Path) -> None:
    """Write a table as CSV with a header row, fsynced before returning."""
    raw = conn.connection.driver_connection
    query = (
        f'COPY (SELECT * FROM "{table}" ORDER BY created_at, request_id) '
        "TO STDOUT WITH (FORMAT csv, HEADER true)"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = path.open("xb")
    except FileExistsError as exc:
        raise InvalidRequestError(f"archive file {path} exists; choose another --out") from exc
    with handle, raw.cursor().copy(query) as copy:  # type: ignore[union-attr]
        for chunk in copy:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
