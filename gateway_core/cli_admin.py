"""Commands for organizations, projects, budgets and rate limits."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, Engine, func, select

from gateway_core import (
    audit,
    budgets,
    directory,
    limits_admin,
    privacy,
    provisioning,
    user_data,
)
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import SCOPE_TYPES, audit_log

OPERATOR_ROLE = "owner"


def usd(text: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a decimal amount: {text!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"amount must be zero or more: {text!r}")
    return amount


def add_parsers(commands: argparse._SubParsersAction) -> None:
    orgs = commands.add_parser("orgs", help="create and list organizations")
    org_commands = orgs.add_subparsers(dest="action", required=True, metavar="ACTION")
    org_create = org_commands.add_parser("create", help="create an organization")
    org_create.add_argument("name")
    org_create.add_argument("--timezone", default="UTC", help="IANA zone for budget periods")
    org_create.add_argument(
        "--trial-usd", type=usd, default=provisioning.DEFAULT_TRIAL_USD,
        help="trial credit in USD (0 for none; default 10)",
    )  # fmt: skip
    org_create.add_argument(
        "--trial-days", type=int, default=provisioning.DEFAULT_TRIAL_DAYS,
        help="days until unused trial credit expires (default 14)",
    )  # fmt: skip

    projects = commands.add_parser("projects", help="create and list projects")
    project_commands = projects.add_subparsers(dest="action", required=True, metavar="ACTION")
    project_create = project_commands.add_parser("create", help="create a project in a team")
    project_create.add_argument("name")
    project_create.add_argument("--team", required=True, help="team name")
    project_create.add_argument("--org", default=directory.DEFAULT_ORGANIZATION)
    project_create.add_argument("--pi", help="principal investigator, shown in reports")
    project_create.add_argument("--cost-centre", help="grant or cost-centre id for reports")
    project_commands.add_parser("list", help="list projects")

    budget_parser = commands.add_parser("budgets", help="set, list and remove budgets")
    budget_commands = budget_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    budget_set = budget_commands.add_parser("set", help="create or change a budget")
    add_scope(budget_set)
    budget_set.add_argument("--period", choices=budgets.PERIODS, required=True)
    budget_set.add_argument("--limit", type=usd, required=True, help="limit in USD")
    budget_commands.add_parser("list", help="list budgets")
    budget_remove = budget_commands.add_parser("remove", help="remove a budget by id")
    budget_remove.add_argument("budget_id", type=int)

    limit_parser = commands.add_parser("limits", help="set and list rate limits")
    limit_commands = limit_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    limit_set = limit_commands.add_parser("set", help="set a scope's rate limits (omit to clear)")
    add_scope(limit_set)
    add_rate_limit_options(limit_set)
    limit_commands.add_parser("list", help="list rate limits")

    privacy = commands.add_parser("privacy", help="body storage, redaction and retention")
    privacy_commands = privacy.add_subparsers(dest="action", required=True, metavar="ACTION")
    privacy_set = privacy_commands.add_parser("set", help="store bodies for a scope, or not")
    add_scope(privacy_set)
    privacy_set.add_argument(
        "--log-bodies", action=argparse.BooleanOptionalAction, required=True,
        help="store redacted request and response bodies of this scope's calls",
    )  # fmt: skip
    privacy_set.add_argument(
        "--retention-days", type=int, help="days to keep bodies (organization scope)"
    )
    pattern = privacy_commands.add_parser("pattern", help="add a redaction pattern")
    pattern.add_argument("--org-id", type=int, required=True)
    pattern.add_argument("--name", required=True)
    pattern.add_argument("--pattern", required=True, help="Python regular expression")
    privacy_commands.add_parser("purge", help="delete bodies older than their retention (cron)")

    users = commands.add_parser("users", help="export or delete one user's data")
    user_commands = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    user_export = user_commands.add_parser("export", help="print a user's data as JSON")
    user_export.add_argument("username")
    user_delete = user_commands.add_parser("delete", help="delete a user's account and data")
    user_delete.add_argument("username")

    audit_parser = commands.add_parser("audit", help="verify and export the audit log")
    audit_commands = audit_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_commands.add_parser("verify", help="check the hash chain; exit 1 where it breaks")
    audit_export = audit_commands.add_parser("export", help="write the audit log as CSV")
    audit_export.add_argument("--out", default="-", help="file to write (default stdout)")


def add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", choices=SCOPE_TYPES, required=True)
    parser.add_argument("--id", dest="scope_id", type=int, required=True, help="numeric id")


def add_rate_limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--rpd", type=int, help="requests per day (UTC days)")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--concurrent", type=int, help="requests in flight at once")


def run_audit(args: argparse.Namespace, engine: Engine) -> int:
    with engine.connect() as conn:
        if args.action == "verify":
            breaks = audit.verify_chain(conn)
            for item in breaks:
                print(f"entry {item.entry_id}: {item.reason}", file=sys.stderr)
            if breaks:
                return 1
            count = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
            print(f"audit log intact: {count} entries")
            return 0
        handle = sys.stdout if args.out == "-" else open(args.out, "w", newline="")  # noqa: SIM115
        try:
            writer = csv.writer(handle)
            columns = [column.name for column in audit_log.columns]
            writer.writerow(columns)
            for row in conn.execute(select(audit_log).order_by(audit_log.c.id)):
                writer.writerow(list(row))
        finally:
            if handle is not sys.stdout:
                handle.close()
    return 0


def run(args: argparse.Namespace, conn: Connection) -> int:
    if args.command == "orgs" and args.action == "create":
        organization_id = provisioning.create_organization(
            conn,
            args.name,
            timezone=args.timezone,
            trial_usd=args.trial_usd,
            trial_days=args.trial_days,
            actor="cli",
        )
        print(f"created organization {args.name!r} (id {organization_id})")
    elif args.command == "projects" and args.action == "create":
        team = directory.get_team(conn, args.team, args.org)
        project = directory.create_project(
            conn, team.id, args.name, principal_investigator=args.pi, cost_centre=args.cost_centre
        )
        print(f"created project {project.name!r} (id {project.id}) in team {team.name!r}")
    elif args.command == "projects":
        for project in directory.list_projects(conn):
            print(f"{project.id}\tteam {project.team_id}\t{project.name}")
    elif args.command == "budgets" and args.action == "set":
        budget_id = budgets.set_budget(
            conn,
            scope_type=args.scope,
            scope_id=args.scope_id,
            period=args.period,
            limit_usd=args.limit,
            actor="cli",
        )
        print(
            f"budget {budget_id}: {args.period} limit ${args.limit} on {args.scope} {args.scope_id}"
        )
    elif args.command == "budgets" and args.action == "list":
        for budget in budgets.list_budgets(conn):
            print(f"{budget.id}\t{budget.label()}")
    elif args.command == "budgets":
        if not budgets.remove_budget(conn, args.budget_id):
            raise InvalidRequestError(f"no budget with id {args.budget_id}")
        print(f"removed budget {args.budget_id}")
    elif args.command == "privacy" and args.action == "set":
        privacy.set_privacy(
            conn,
            scope_type=args.scope,
            scope_id=args.scope_id,
            log_bodies=args.log_bodies,
            retention_days=args.retention_days,
        )
        state = "stores" if args.log_bodies else "does not store"
        print(f"{args.scope} {args.scope_id} now {state} request bodies")
    elif args.command == "privacy" and args.action == "pattern":
        pattern_id = privacy.add_redaction_pattern(conn, args.org_id, args.name, args.pattern)
        print(f"added redaction pattern {pattern_id}")
    elif args.command == "privacy":
        print(f"deleted {privacy.purge_bodies(conn)} stored bodies past their retention")
    elif args.command == "users" and args.action == "export":
        print(json.dumps(user_data.export_user(conn, args.username), indent=2, default=str))
    elif args.command == "users":
        user_data.delete_user(conn, args.username)
        print(f"deleted user {args.username!r} and their data")
    elif args.command == "limits" and args.action == "set":
        limits_admin.set_rate_limits(
            conn,
            OPERATOR_ROLE,
            scope_type=args.scope,
            scope_id=args.scope_id,
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            requests_per_day=args.rpd,
            max_concurrent=args.concurrent,
        )
        print(f"rate limits of {args.scope} {args.scope_id} saved")
    elif args.command == "limits":
        for row in limits_admin.list_rate_limits(conn):
            print(
                f"{row.scope_type} {row.scope_id}\trpm={row.requests_per_minute}\t"
                f"rpd={row.requests_per_day}\ttpm={row.tokens_per_minute}\t"
                f"concurrent={row.max_concurrent}"
            )
    return 0
