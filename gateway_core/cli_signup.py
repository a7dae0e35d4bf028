"""Commands for self-service sign-up, the live-key gate and the email outbox."""

from __future__ import annotations

import argparse
import getpass

from sqlalchemy import Connection, Engine

from gateway_core import alerts, email_outbox, signup
from gateway_core.access import Actor
from gateway_core.config import ConfigError
from gateway_core.errors import NotFoundError

# The CLI runs with database access, so it acts with the widest app role.
OPERATOR_ROLE = "owner"
# These commands write their own audit entries.
SELF_AUDITED = frozenset({"signup"})


def add_parsers(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("signup", help="switch self-service sign-up and approve live keys")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="show whether sign-up is on and its trial settings")
    actions.add_parser("enable", help="show the sign-up form on the app's sign-in page")
    actions.add_parser("disable", help="hide the sign-up form and reject new sign-ups")
    approve = actions.add_parser(
        "approve", help="allow an organization live keys before its first paid top-up"
    )
    approve.add_argument("organization_id", type=int, help="numeric organization id")

    outbox = commands.add_parser("emails", help="list, send and retry queued emails")
    outbox_actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = outbox_actions.add_parser("list", help="list the newest queued and sent emails")
    listing.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    outbox_actions.add_parser(
        "send", help="send the due emails now through GATEWAYZ_SMTP_HOST and exit"
    )
    retry = outbox_actions.add_parser("retry", help="queue a failed email again")
    retry.add_argument("email_id", type=int, help="numeric id shown by `emails list`")


def operator() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", OPERATOR_ROLE)


def run_signup(args: argparse.Namespace, conn: Connection) -> int:
    if args.action == "status":
        current = signup.get_settings(conn)
        print(f"sign-up: {'enabled' if current.signup_enabled else 'disabled'}")
        print(f"trial credit: ${current.trial_credit} for {current.trial_days} days")
        print(f"referral credit: ${current.referral_credit}")
        print(f"low-balance email below: ${current.low_balance_threshold}")
    elif args.action in ("enable", "disable"):
        enabled = args.action == "enable"
        changed = signup.set_signup_enabled(conn, operator(), enabled)
        state = "enabled" if enabled else "disabled"
        print(f"sign-up {state}" if changed else f"sign-up was already {state}")
    elif signup.approve_live_keys(conn, operator(), args.organization_id):
        print(f"organization {args.organization_id} may now create live keys")
    else:
        print(f"organization {args.organization_id} could already create live keys")
    return 0


def send_emails(engine: Engine) -> int:
    smtp = alerts.SmtpSettings.from_env()
    if smtp is None:
        raise ConfigError("set GATEWAYZ_SMTP_HOST and GATEWAYZ_SMTP_FROM to send email")
    with engine.begin() as conn:
        email_outbox.check_low_balances(conn)
    print(f"sent {email_outbox.deliver_due(engine, smtp)} emails")
    return 0


def run_emails(args: argparse.Namespace, conn: Connection) -> int:
    if args.action == "list":
        for email in email_outbox.list_emails(conn, operator(), args.limit):
            print(
                f"{email.id}\t{email.created_at:%Y-%m-%d %H:%M}\t{email.template}\t"
                f"{email.recipient}\t{email.status}\tattempts={email.attempts}\t"
                f"{email.last_error or ''}"
            )
        return 0
    if not email_outbox.retry_failed(conn, args.email_id):
        raise NotFoundError(f"no failed email with id {args.email_id}")
    print(f"email {args.email_id} queued again")
    return 0
