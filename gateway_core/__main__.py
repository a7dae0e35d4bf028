"""Command line for operators and scripts: `python -m gateway_core --help`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection

from gateway_core import (
    audit,
    cli_admin,
    cli_admin_keys,
    cli_signup,
    cli_usage,
    directory,
    keys,
    ledger,
    providers,
    provisioning,
)
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine, migrate
from gateway_core.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway_core.schema import SCOPE_TYPES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_core",
        description="Manage a Gatewayz installation. Reads DATABASE_URL and GATEWAYZ_SECRET.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="apply database migrations")
    run = commands.add_parser("run", help="start Postgres (if needed), the proxy and the app")
    run.add_argument("--no-app", action="store_true", help="start the proxy only")

    team_parser = commands.add_parser("teams", help="create and list teams")
    team_commands = team_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    team_create = team_commands.add_parser("create", help="create a team")
    team_create.add_argument("name", help="team name, unique within its organization")
    team_create.add_argument(
        "--org", default=directory.DEFAULT_ORGANIZATION, help="organization name (created if new)"
    )
    team_commands.add_parser("list", help="list teams")

    key_parser = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = key_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_create = key_commands.add_parser(
        "create", help="create an API key for a team and print it once"
    )
    key_create.add_argument("--team", required=True, help="name of the team that owns the key")
    key_create.add_argument("--org", default=directory.DEFAULT_ORGANIZATION, help="organization")
    key_create.add_argument("--name", default="default", help="label shown in the app")
    key_create.add_argument("--project", help="project name within the team")
    key_create.add_argument("--credit-limit", type=cli_admin.usd, help="lifetime spend limit, USD")
    cli_admin.add_rate_limit_options(key_create)
    key_create.add_argument(
        "--test",
        action="store_true",
        help="create a gw_test_ key, which is served by the free sandbox provider",
    )
    key_commands.add_parser("list", help="list keys (never their secret part)")
    key_revoke = key_commands.add_parser("revoke", help="revoke a key at once")
    key_revoke.add_argument("key_id", type=int, help="numeric id shown by `keys list`")

    provider_parser = commands.add_parser("providers", help="configure upstream providers")
    provider_commands = provider_parser.add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    provider_add = provider_commands.add_parser(
        "add", help="add or update an OpenAI-compatible provider"
    )
    provider_add.add_argument("name", help="model id prefix, e.g. openai for openai/gpt-4o")
    provider_add.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    provider_add.add_argument(
        "--api-key-env", help="environment variable that holds the provider's API key"
    )
    provider_add.add_argument(
        "--kind",
        choices=sorted(providers.PROVIDER_KINDS),
        default="openai-compatible",
        help="wire format of the provider (default openai-compatible)",
    )
    provider_add.add_argument(
        "--api-key-stdin",
        action="store_true",
        help="read the provider's API key from standard input and store it encrypted",
    )
    provider_add.add_argument("--api-version", help="Azure OpenAI api-version")
    provider_add.add_argument("--connect-timeout", type=float, help="seconds to connect")
    provider_add.add_argument(
        "--read-timeout", type=float, help="seconds to wait for the first byte and between chunks"
    )
    provider_add.add_argument("--total-timeout", type=float, help="seconds for a whole call")
    provider_add.add_argument("--max-retries", type=int, help="retries before a fallback")
    provider_commands.add_parser("list", help="list providers")
    secrets_parser = commands.add_parser("secrets", help="rotate the encryption of stored secrets")
    secrets_commands = secrets_parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    secrets_commands.add_parser(
        "rotate",
        help="re-encrypt provider keys and webhook secrets under GATEWAYZ_ENCRYPTION_KEY, "
        "reading old ones with GATEWAYZ_OLD_ENCRYPTION_KEYS",
    )
    add_credits_parser(commands)
    cli_admin.add_parsers(commands)
    cli_admin_keys.add_parsers(commands)
    cli_signup.add_parsers(commands)
    cli_usage.add_parsers(commands)
    return parser


def add_credits_parser(commands: argparse._SubParsersAction) -> None:
    credits_parser = commands.add_parser(
        "credits", help="grant credit, show balances and history, expire and verify"
    )
    credit_commands = credits_parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    grant = credit_commands.add_parser(
        "grant", help="add a ledger entry (credit by default); a repeated reference is a no-op"
    )
    add_account_arguments(grant)
    grant.add_argument(
        "--amount",
        required=True,
        help="US dollars, e.g. 12.50; a negative amount removes credit "
        "(purchase, refund and adjustment kinds only)",
    )
    grant.add_argument(
        "--reference",
        required=True,
        help="payment id or operator reference, unique per account and kind",
    )
    grant.add_argument(
        "--kind",
        choices=("grant", "purchase", "refund", "adjustment"),
        default="grant",
        help="ledger entry kind (default: grant)",
    )
    grant.add_argument("--reason", help="free text shown in the history")
    grant.add_argument(
        "--expires-days",
        type=int,
        metavar="N",
        help="days until unused credit expires (grant kind only; default: never)",
    )

    show_balance = credit_commands.add_parser("balance", help="print an account's balance")
    add_account_arguments(show_balance)

    show_history = credit_commands.add_parser(
        "history", help="print an account's ledger entries, newest first"
    )
    add_account_arguments(show_history)
    show_history.add_argument(
        "--limit", type=int, default=100, help="number of entries to print (default: 100)"
    )

    credit_commands.add_parser(
        "expire",
        help="write expiry entries for grants and trials past their expiry time (run from cron)",
    )
    credit_commands.add_parser(
        "verify",
        help="check every cached balance against the sum of its entries; exit 1 on a mismatch",
    )


def add_account_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scope",
        required=True,
        choices=SCOPE_TYPES,
        help="type of the account that the credit belongs to",
    )
    parser.add_argument(
        "--id",
        dest="scope_id",
        metavar="N",
        required=True,
        type=int,
        help="numeric id of that account",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from gateway_core.launcher import run

            return run(start_app=not args.no_app)
        from gateway_core.launcher import local_environment

        settings = Settings.from_env(local_environment(dict(os.environ)))
        if args.command == "migrate":
            migrate(settings.database_url)
            print("database is up to date")
            return 0
        return dispatch(args, settings)
    except (ConfigError, GatewayError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# Actions that only read; every other command is written to the audit log.
READ_ONLY_ACTIONS = frozenset({"list", "balance", "history", "verify", "export", "status"})


def audit_command(conn: Connection, args: argparse.Namespace) -> None:
    """Record a command that changed something, in the same transaction as the change."""
    # `usage` and some sign-up commands write their own entries, with the outcome in them.
    if args.command in ("audit", "usage", *cli_signup.SELF_AUDITED):
        return
    if getattr(args, "action", None) in READ_ONLY_ACTIONS:
        return
    details = {
        name: value
        for name, value in vars(args).items()
        if name not in ("command", "action") and value is not None
    }
    audit.record(
        conn,
        actor=f"cli:{getpass.getuser()}",
        action=f"{args.command}.{args.action}",
        object_type=args.command,
        after=details,
    )


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    engine = get_engine(settings.database_url)
    if args.command == "audit":
        return cli_admin.run_audit(args, engine)
    if args.command == "emails" and args.action == "send":
        return cli_signup.send_emails(engine)
    if args.command == "usage" and args.action == "detach":
        return cli_usage.run_detach(args, engine)
    with engine.begin() as conn:
        audit_command(conn, args)
        if args.command == "credits":
            return run_credits_command(args, conn)
        if args.command == "admin-keys":
            return cli_admin_keys.run(args, conn, settings.secret)
        if args.command == "signup":
            return cli_signup.run_signup(args, conn)
        if args.command == "emails":
            return cli_signup.run_emails(args, conn)
        if args.command == "usage":
            return cli_usage.run(args, conn)
        if args.command == "teams" and args.action == "create":
            team = directory.create_team(conn, args.name, args.org)
            print(f"created team {team.name!r} (id {team.id})")
        elif args.command == "teams":
            for team in directory.list_teams(conn):
                print(f"{team.id}\t{team.name}")
        elif args.command == "secrets":
            count = providers.rotate_secrets(
                conn, settings.encryption_key, settings.old_encryption_keys
            )
            print(f"re-encrypted {count} stored secrets under the current encryption key")
        elif args.command in ("orgs", "projects", "budgets", "limits", "privacy", "users"):
            return cli_admin.run(args, conn)
        elif args.command == "keys" and args.action == "create":
            team = directory.get_team(conn, args.team, args.org)
            project_id = None
            if args.project:
                matches = [
                    p for p in directory.list_projects(conn, team.id) if p.name == args.project
                ]
                if not matches:
                    raise InvalidRequestError(f"no project {args.project!r} in team {team.name!r}")
                project_id = matches[0].id
            issued = provisioning.issue_key(
                conn,
                settings.secret,
                team_id=team.id,
                project_id=project_id,
                name=args.name,
                mode="test" if args.test else "live",
                requests_per_minute=args.rpm,
                requests_per_day=args.rpd,
                tokens_per_minute=args.tpm,
                max_concurrent=args.concurrent,
                credit_limit=args.credit_limit,
                created_by="cli",
            )
            print(f"created key id {issued.id} for team {team.name!r}; it is shown only once:")
            print(issued.secret)
        elif args.command == "keys" and args.action == "list":
            for key in keys.list_keys(conn):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}\t{key.team_name}\t{key.name}\t{key.prefix}...{key.last4}\t{state}")
        elif args.command == "keys":
            if keys.revoke_key(conn, args.key_id):
                print(f"revoked key {args.key_id}")
            else:
                print(f"key {args.key_id} was already revoked")
        elif args.command == "providers" and args.action == "add":
            providers.upsert_provider(
                conn,
                name=args.name,
                base_url=args.base_url,
                api_key_env=args.api_key_env,
                kind=args.kind,
                api_version=args.api_version,
                connect_timeout=args.connect_timeout,
                read_timeout=args.read_timeout,
                total_timeout=args.total_timeout,
                max_retries=args.max_retries,
                api_key=sys.stdin.readline().strip() if args.api_key_stdin else None,
                encryption_key=settings.encryption_key,
            )
            print(f"provider {args.name!r} now forwards to {args.base_url}")
        elif args.command == "providers":
            configured = providers.list_providers(conn)
            if not configured:
                print("no providers configured; add one with `providers add`")
            for provider in configured:
                print(f"{provider.name}\t{provider.kind}\t{provider.base_url}")
    return 0


def run_credits_command(args: argparse.Namespace, conn: Connection) -> int:
    if args.action == "grant":
        return grant_credit(args, conn)
    if args.action == "balance":
        amount = ledger.balance(conn, args.scope, args.scope_id)
        if amount is None:
            print(f"{args.scope} {args.scope_id} is not credit-metered (it has no ledger entries)")
        else:
            print(f"{args.scope} {args.scope_id} balance: {format_usd(amount)}")
        return 0
    if args.action == "history":
        for entry in ledger.history(conn, args.scope, args.scope_id, args.limit):
            expires = entry.expires_at.isoformat() if entry.expires_at else ""
            print(
                f"{entry.id}\t{entry.created_at.isoformat()}\t{entry.kind}\t"
                f"{format_usd(entry.amount)}\t{entry.reference}\t{expires}\t"
                f"{entry.actor or ''}\t{entry.reason or ''}"
            )
        return 0
    if args.action == "expire":
        written = ledger.expire_credits(conn)
        print(f"wrote {written} expiry entries")
        return 0
    mismatches = ledger.verify_balances(conn)
    for mismatch in mismatches:
        cached = "missing" if mismatch.cached is None else format_usd(mismatch.cached)
        print(
            f"mismatch: {mismatch.scope_type} {mismatch.scope_id} cached balance {cached}, "
            f"sum of entries {format_usd(mismatch.entries_sum)}"
        )
    if mismatches:
        print(f"error: {len(mismatches)} balances differ from their entries", file=sys.stderr)
        return 1
    print("every balance equals the sum of its entries")
    return 0


def grant_credit(args: argparse.Namespace, conn: Connection) -> int:
    amount = ledger.parse_amount(args.amount)
    if not ledger.account_exists(conn, args.scope, args.scope_id):
        raise NotFoundError(f"{args.scope} {args.scope_id} not found; check --scope and --id")
    expires_at = None
    if args.expires_days is not None:
        if args.expires_days <= 0:
            raise InvalidRequestError(
                f"--expires-days must be a positive number of days, got {args.expires_days}"
            )
        expires_at = datetime.now(UTC) + timedelta(days=args.expires_days)
    written = ledger.add_entry(
        conn,
        scope_type=args.scope,
        scope_id=args.scope_id,
        amount=amount,
        kind=args.kind,
        reference=args.reference,
        reason=args.reason,
        actor="cli",
        expires_at=expires_at,
    )
    if not written:
        print(
            f"reference {args.reference!r} is already recorded as a {args.kind} entry "
            f"for {args.scope} {args.scope_id}; nothing written"
        )
        return 0
    current = ledger.balance(conn, args.scope, args.scope_id)
    print(
        f"recorded {args.kind} of {format_usd(amount)} for {args.scope} {args.scope_id}; "
        f"balance is now {format_usd(current if current is not None else Decimal(0))}"
    )
    return 0


def format_usd(amount: Decimal) -> str:
    """Format dollars with at least two decimal places, dropping zeros beyond them."""
    text = format(abs(amount).normalize(), "f")
    whole, _, fraction = text.partition(".")
    sign = "-" if amount < 0 else ""
    return f"{sign}${whole}.{fraction.ljust(2, '0')}"


if __name__ == "__main__":
    sys.exit(main())
