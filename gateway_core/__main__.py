"""Command line for operators and scripts: `python -m gateway_core --help`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gateway_core import directory, keys, providers
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine, migrate
from gateway_core.errors import GatewayError


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
    provider_commands.add_parser("list", help="list providers")
    return parser


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


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    engine = get_engine(settings.database_url)
    with engine.begin() as conn:
        if args.command == "teams" and args.action == "create":
            team = directory.create_team(conn, args.name, args.org)
            print(f"created team {team.name!r} (id {team.id})")
        elif args.command == "teams":
            for team in directory.list_teams(conn):
                print(f"{team.id}\t{team.name}")
        elif args.command == "keys" and args.action == "create":
            team = directory.get_team(conn, args.team, args.org)
            issued = keys.create_key(
                conn,
                settings.secret,
                team_id=team.id,
                name=args.name,
                mode="test" if args.test else "live",
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
                conn, name=args.name, base_url=args.base_url, api_key_env=args.api_key_env
            )
            print(f"provider {args.name!r} now forwards to {args.base_url}")
        elif args.command == "providers":
            for provider in providers.list_providers(conn):
                print(f"{provider.name}\t{provider.kind}\t{provider.base_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
