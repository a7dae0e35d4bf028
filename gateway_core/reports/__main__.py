"""Command line for usage reports: `python -m gateway_core.reports --help`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from gateway_core import analytics
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine
from gateway_core.directory import DEFAULT_ORGANIZATION
from gateway_core.errors import GatewayError
from gateway_core.reports.chargeback import month_bounds, previous_month, write_chargeback
from gateway_core.reports.research import (
    ReportScope,
    ReportTotals,
    find_scope,
    write_report_csv,
)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: use YYYY-MM-DD") from None


def parse_month(text: str) -> str:
    try:
        month_bounds(text)
    except GatewayError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_core.reports",
        description="Write usage reports as CSV. Reads DATABASE_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    research = commands.add_parser(
        "research",
        help="usage of a team or one of its projects per day and model",
        description="Dates are days in the organization's time zone; --end is exclusive.",
    )
    research.add_argument("--team", required=True, help="team name")
    research.add_argument("--project", help="project name within the team (default: every project)")
    research.add_argument(
        "--org", default=DEFAULT_ORGANIZATION, help="organization name (default: %(default)s)"
    )
    research.add_argument("--start", required=True, type=parse_date, help="first day, YYYY-MM-DD")
    research.add_argument(
        "--end", required=True, type=parse_date, help="day after the last day, YYYY-MM-DD"
    )
    research.add_argument("--out", type=Path, help="CSV file to write (default: standard output)")

    chargeback = commands.add_parser(
        "chargeback",
        help="one CSV per team for a calendar month (for cron)",
        description="Each team's month follows its organization's time zone.",
    )
    chargeback.add_argument(
        "--month",
        type=parse_month,
        help="YYYY-MM (default: the month before the current UTC month)",
    )
    chargeback.add_argument(
        "--out-dir",
        type=Path,
        default=Path("."),
        help="folder for the CSV files, created if missing (default: current folder)",
    )
    return parser


def write_research(args: argparse.Namespace, settings: Settings) -> int:
    if args.end <= args.start:
        print(
            f"error: --end {args.end.isoformat()} must be after --start {args.start.isoformat()}",
            file=sys.stderr,
        )
        return 1
    with get_engine(settings.database_url).connect() as conn:
        scope = find_scope(conn, team=args.team, project=args.project, organization=args.org)
    con = analytics.connect(settings.database_url)
    try:
        if args.out is None:
            totals = write_report_csv(con, scope, args.start, args.end, sys.stdout)
        else:
            totals = write_to_file(con, scope, args, args.out)
    finally:
        con.close()
    destination = args.out or "standard output"
    print(
        f"wrote {totals.rows} rows, {totals.requests} requests, "
        f"${totals.cost_usd:f} to {destination}",
        file=sys.stderr,
    )
    return 0


def write_to_file(
    con: duckdb.DuckDBPyConnection, scope: ReportScope, args: argparse.Namespace, path: Path
) -> ReportTotals:
    """Write the report under a temporary name next to `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as out:
            totals = write_report_csv(con, scope, args.start, args.end, out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return totals


def write_monthly_chargeback(args: argparse.Namespace, settings: Settings) -> int:
    month = args.month or previous_month(datetime.now(UTC).date())
    con = analytics.connect(settings.database_url)
    try:
        files = write_chargeback(get_engine(settings.database_url), con, month, args.out_dir)
    finally:
        con.close()
    for written in files:
        print(
            f"{written.path}\t{written.team_name}\t{written.totals.requests} requests\t"
            f"${written.totals.cost_usd:f}"
        )
    print(f"wrote {len(files)} chargeback files for {month}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from gateway_core.launcher import local_environment

    try:
        settings = Settings.from_env(local_environment(dict(os.environ)))
        if args.command == "research":
            return write_research(args, settings)
        return write_monthly_chargeback(args, settings)
    except (ConfigError, GatewayError, OSError, duckdb.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
