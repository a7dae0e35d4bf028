"""The monthly chargeback: one research-report CSV per team for a calendar month.

Meant for cron on the first of a month. Each file is written under a
temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
from sqlalchemy import Engine, select

from gateway_core.errors import InvalidRequestError
from gateway_core.reports.research import ReportTotals, scope_for_team, write_report_csv
from gateway_core.schema import teams

logger = logging.getLogger(__name__)

CHARGEBACK_TITLE = "Monthly chargeback"
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ChargebackFile:
    team_id: int
    team_name: str
    path: Path
    totals: ReportTotals


def month_bounds(month: str) -> tuple[date, date]:
    """Return the first day of `month` (YYYY-MM) and the first day of the next month."""
    match = _MONTH.fullmatch(month)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise InvalidRequestError(f"month must look like 2026-03; got {month!r}", param="month")
    year, number = int(match.group(1)), int(match.group(2))
    first = date(year, number, 1)
    end = date(year + 1, 1, 1) if number == 12 else date(year, number + 1, 1)
    return first, end


def previous_month(today: date) -> str:
    """Return the month before the one that contains `today`, as YYYY-MM."""
    if today.month == 1:
        return f"{today.year - 1}-12"
    return f"{today.year}-{today.month - 1:02d}"


def chargeback_file_name(month: str, team_id: int, team_name: str) -> str:
    """Return a file name that is safe on any file system and unique per team."""
    slug = _UNSAFE_FILE_CHARACTERS.sub("-", team_name).strip("-.")[:60] or "team"
    return f"chargeback-{month}-team{team_id}-{slug}.csv"


def write_chargeback(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    month: str,
    out_dir: Path,
    *,
    generated_at: datetime | None = None,
) -> list[ChargebackFile]:
    """Write one chargeback CSV per team, teams with no usage included, and return them.

    Teams and their scopes are read through `engine`, the usage through DuckDB's `con`.
    """
    first, end = month_bounds(month)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated_at = generated_at or datetime.now(UTC)
    with engine.connect() as conn:
        team_rows = conn.execute(select(teams.c.id, teams.c.name).order_by(teams.c.id)).all()
    written = []
    for team_id, team_name in team_rows:
        path = out_dir / chargeback_file_name(month, team_id, team_name)
        with engine.connect() as conn:
            scope = scope_for_team(conn, team_id)
        descriptor, temporary = tempfile.mkstemp(dir=out_dir, prefix=".chargeback-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as out:
                totals = write_report_csv(
                    con,
                    scope,
                    first,
                    end,
                    out,
                    title=CHARGEBACK_TITLE,
                    generated_at=generated_at,
                )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info(
            "wrote chargeback for team %s (id %d): %d rows, $%s",
            team_name,
            team_id,
            totals.rows,
            totals.cost_usd,
        )
        written.append(ChargebackFile(team_id, team_name, path, totals))
    return written
