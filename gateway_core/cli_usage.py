"""Commands for the monthly partitions of usage_events: list, ensure and detach."""

from __future__ import annotations

import argparse
import getpass
from datetime import date
from pathlib import Path

from sqlalchemy import Connection, Engine

from gateway_core import audit, usage_partitions
from gateway_core.errors import InvalidRequestError


def add_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("usage", help="manage the monthly partitions of usage rows")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list partitions with their bounds and estimated row counts")
    ensure = actions.add_parser(
        "ensure", help="create the partitions of this UTC month and the next months"
    )
    ensure.add_argument(
        "--months-ahead",
        type=int,
        default=usage_partitions.MONTHS_AHEAD,
        help=f"months after this one to create (default {usage_partitions.MONTHS_AHEAD})",
    )
    detach = actions.add_parser(
        "detach", help="detach a past month's partition, optionally archive and drop it"
    )
    detach.add_argument("month", type=month_argument, help="UTC month as YYYY-MM")
    detach.add_argument("--out", type=Path, help="write the month's rows to this new CSV file")
    detach.add_argument(
        "--drop", action="store_true", help="drop the detached table after writing --out"
    )


def month_argument(value: str) -> date:
    try:
        return usage_partitions.parse_month(value)
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def run(args: argparse.Namespace, conn: Connection) -> int:
    """Run `usage list` or `usage ensure` in the caller's transaction."""
    actor = f"cli:{getpass.getuser()}"
    if args.action == "list":
        for partition in usage_partitions.list_partitions(conn):
            print(f"{partition.name}\t{partition.bounds}\t~{partition.rows} rows")
        return 0
    if args.action == "ensure":
        created = usage_partitions.ensure_partitions(conn, args.months_ahead)
        audit.record(
            conn,
            actor=actor,
            action="usage.ensure",
            object_type="usage_partition",
            after={"months_ahead": args.months_ahead, "created": created},
        )
        print(f"created {created} new partitions")
        return 0
    raise ValueError(f"unknown usage action {args.action!r}")


def run_detach(args: argparse.Namespace, engine: Engine) -> int:
    """Detach, archive and drop a month; each step commits on its own."""
    detached = usage_partitions.detach_month(
        engine,
        args.month,
        actor=f"cli:{getpass.getuser()}",
        archive=args.out,
        drop=args.drop,
    )
    if detached.detached_now:
        print(f"detached {detached.table} with {detached.rows} rows")
    else:
        print(f"{detached.table} was detached already; it has {detached.rows} rows")
    if detached.archive is not None:
        print(f"wrote {detached.archive}")
    if detached.dropped:
        print(f"dropped table {detached.table}")
    return 0
