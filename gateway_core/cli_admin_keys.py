"""Commands for admin keys, the credentials of the admin API: create, list and revoke."""

from __future__ import annotations

import argparse
import getpass

from sqlalchemy import Connection

from gateway_core import admin_keys


def add_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("admin-keys", help="create, list and revoke admin API keys")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create an admin key and print it once")
    create.add_argument(
        "--name",
        required=True,
        help=f"label for the audit log, at most {admin_keys.MAX_NAME_LENGTH} characters",
    )
    create.add_argument(
        "--role",
        required=True,
        choices=admin_keys.ADMIN_ROLES,
        help="owner and admin may change everything, billing budgets and rate limits, "
        "viewer only reads",
    )
    actions.add_parser("list", help="list admin keys (never their secret part)")
    revoke = actions.add_parser("revoke", help="revoke an admin key at once")
    revoke.add_argument("key_id", type=int, help="numeric id shown by `admin-keys list`")


def run(args: argparse.Namespace, conn: Connection, secret: bytes) -> int:
    if args.action == "create":
        issued = admin_keys.create_admin_key(
            conn, secret, name=args.name, role=args.role, created_by=f"cli:{getpass.getuser()}"
        )
        print(f"created admin key id {issued.id} with role {issued.role}; it is shown only once:")
        print(issued.secret)
    elif args.action == "list":
        for key in admin_keys.list_admin_keys(conn):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}\t{key.name}\t{key.role}\t{key.prefix}...{key.last4}\t{state}")
    elif admin_keys.revoke_admin_key(conn, args.key_id):
        print(f"revoked admin key {args.key_id}")
    else:
        print(f"admin key {args.key_id} was already revoked")
    return 0
