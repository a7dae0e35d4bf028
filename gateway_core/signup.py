"""Self-service sign-up and the live-key gate of self-service organizations.

`sign_up` creates, in the caller's transaction, an organization, its owner,
trial credit, a team and a `gw_test_` key. The proxy's sandbox serves test
keys, so they cost nothing. A self-service organization may
create live keys only after its first paid top-up or an admin's approval,
which `billing_accounts.live_keys_allowed` records. Organizations created
by an operator have no `billing_accounts` row and may create live keys.

Installation staff switch sign-up on and off in `self_service_settings`. It
is off in a new installation. A signed-up owner is a member of their new
organization only, so gateway_core.access limits them to it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import (
    access,
    audit,
    directory,
    email_outbox,
    keys,
    ledger,
    live_keys,
    promotions,
)
from gateway_core.access import Actor
from gateway_core.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from gateway_core.schema import (
    audit_log,
    billing_accounts,
    organization_members,
    organizations,
    self_service_settings,
    teams,
    users,
)

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
# A password needs this many different characters, which rejects "aaaaaaaaaaaa"
# and "abababababab".
MIN_DISTINCT_CHARACTERS = 6
# Sign-ups accepted per client address, and in the whole installation, in
# SIGNUP_WINDOW. The installation-wide cap also bounds a client that hides
# behind many addresses or a reverse proxy.
MAX_SIGNUPS_PER_ADDRESS = 5
MAX_SIGNUPS_PER_WINDOW = 100
SIGNUP_WINDOW = timedelta(hours=1)
MAX_ORGANIZATION_NAME = 200
# The email is also the username, and users.username has room for 100 characters.
MAX_EMAIL_LENGTH = 100
DEFAULT_TEAM = "default"
DEFAULT_TEST_KEY = "sign-up test key"
_EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class SelfServiceSettings:
    signup_enabled: bool = False
    trial_credit: Decimal = Decimal(10)
    trial_days: int = 14
    # Given to both organizations after the referred one's first paid top-up.
    referral_credit: Decimal = Decimal(10)
    # An organization whose balance falls below this gets one low-balance email.
    low_balance_threshold: Decimal = email_outbox.DEFAULT_LOW_BALANCE_THRESHOLD


@dataclass(frozen=True)
class SignupResult:
    organization_id: int
    user_id: int
    team_id: int
    # Contains the plain key, to be shown once: only its hash is stored.
    test_key: keys.IssuedKey
    trial_credit: Decimal
    trial_days: int


def get_settings(conn: Connection) -> SelfServiceSettings:
    """Return the sign-up settings, or the defaults if their row is missing."""
    row = conn.execute(
        select(
            self_service_settings.c.signup_enabled,
            self_service_settings.c.trial_credit,
            self_service_settings.c.trial_days,
            self_service_settings.c.referral_credit,
            self_service_settings.c.low_balance_threshold,
        ).where(self_service_settings.c.id == 1)
    ).first()
    return SelfServiceSettings() if row is None else SelfServiceSettings(*row)


def save_settings(conn: Connection, new: SelfServiceSettings, actor: Actor | str) -> None:
    """Check and store the sign-up settings, which apply to every organization."""
    principal = access.as_actor(actor)
    access.require_actor(principal, "signup.manage")
    for name in ("trial_credit", "referral_credit", "low_balance_threshold"):
        value = getattr(new, name)
        if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
            raise InvalidRequestError(f"{name} must be a Decimal of 0 or more", param=name)
        if value >= ledger.MAX_ABS_AMOUNT:
            raise InvalidRequestError(f"{name} {value} is too large", param=name)
    days = new.trial_days
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise InvalidRequestError(
            f"trial_days must be a positive integer, got {days!r}", param="trial_days"
        )
    values = {
        "signup_enabled": new.signup_enabled,
        "trial_credit": new.trial_credit,
        "trial_days": days,
        "referral_credit": new.referral_credit,
        "low_balance_threshold": new.low_balance_threshold,
        "updated_by": principal.username,
        "updated_at": func.now(),
    }
    statement = pg_insert(self_service_settings).values(id=1, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))
    logger.info(
        "user %s saved sign-up settings: enabled=%s", principal.username, new.signup_enabled
    )


def _check_signup_input(email: str, password: str, org_name: str) -> tuple[str, str]:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL_ADDRESS.match(email):
        raise InvalidRequestError(
            f"{email!r} is not a valid email address of at most {MAX_EMAIL_LENGTH} characters",
            param="email",
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequestError(
            f"password must be at least {MIN_PASSWORD_LENGTH} characters long", param="password"
        )
    if len(set(password)) < MIN_DISTINCT_CHARACTERS:
        raise InvalidRequestError(
            f"password is too easy to guess: use at least {MIN_DISTINCT_CHARACTERS} "
            "different characters",
            param="password",
        )
    local_part = email.split("@", 1)[0]
    if len(local_part) >= 3 and local_part in password.lower():
        raise InvalidRequestError(
            "password is too easy to guess: it must not contain your email address",
            param="password",
        )
    org_name = org_name.strip()
    if not org_name or len(org_name) > MAX_ORGANIZATION_NAME:
        raise InvalidRequestError(
            f"organization name must be 1 to {MAX_ORGANIZATION_NAME} characters", param="org_name"
        )
    return email, org_name


def check_signup_rate(conn: Connection, client_address: str | None) -> None:
    """Raise RateLimitError when too many sign-ups came from this address or in total.

    Counts the `signup.create` audit entries of the last SIGNUP_WINDOW.
    """
    recent = select(func.count()).where(
        audit_log.c.action == "signup.create",
        audit_log.c.created_at > func.now() - SIGNUP_WINDOW,
    )
    minutes = int(SIGNUP_WINDOW.total_seconds() // 60)
    if conn.execute(recent).scalar_one() >= MAX_SIGNUPS_PER_WINDOW:
        logger.warning("sign-up rejected: %d sign-ups in the window", MAX_SIGNUPS_PER_WINDOW)
        raise RateLimitError(
            f"too many new accounts in the last {minutes} minutes; try again later",
            code="too_many_signups",
        )
    if client_address is None:
        return
    from_address = recent.where(audit_log.c.client_address == client_address)
    if conn.execute(from_address).scalar_one() >= MAX_SIGNUPS_PER_ADDRESS:
        logger.warning("sign-up rejected: too many from %s", client_address)
        raise RateLimitError(
            f"too many new accounts from your address in the last {minutes} minutes; "
            "try again later",
            code="too_many_signups",
        )


def sign_up(
    conn: Connection,
    settings_secret: bytes,
    email: str,
    password: str,
    org_name: str,
    referral_code: str | None = None,
    client_address: str | None = None,
) -> SignupResult:
    """Create an organization, its owner, trial credit, a team and a test key.

    Everything is written in the caller's transaction, so a failure leaves
    nothing behind. The email is the owner's username. The sign-up is
    audited as `signup.create` with `client_address`, and a welcome email is
    queued. Raises PermissionDeniedError when sign-up is switched off,
    RateLimitError after too many sign-ups (see `check_signup_rate`), and
    InvalidRequestError for invalid input, a weak password, a taken email
    or organization name, or an unknown referral code.
    """
    current = get_settings(conn)
    if not current.signup_enabled:
        raise PermissionDeniedError(
            "self-service sign-up is switched off; ask an administrator for an account",
            code="signup_disabled",
        )
    email, org_name = _check_signup_input(email, password, org_name)
    check_signup_rate(conn, client_address)
    referrer_id = promotions.referrer_of(conn, referral_code) if referral_code else None
    _check_names_free(conn, email, org_name)

    organization_id = conn.execute(
        insert(organizations).values(name=org_name).returning(organizations.c.id)
    ).scalar_one()
    # The organization_members row makes this owner an organization user,
    # limited to this organization (see gateway_core.access).
    user_id = directory.create_user(
        conn, username=email, password=password, role="owner", display_name=email, email=email
    )
    conn.execute(
        insert(organization_members).values(organization_id=organization_id, user_id=user_id)
    )
    conn.execute(
        insert(billing_accounts).values(
            organization_id=organization_id,
            live_keys_allowed=False,
            referred_by_organization_id=referrer_id,
        )
    )
    if current.trial_credit > 0:
        ledger.grant_trial(
            conn, organization_id, current.trial_credit, current.trial_days, actor=email
        )
    team_id = conn.execute(
        insert(teams)
        .values(organization_id=organization_id, name=DEFAULT_TEAM)
        .returning(teams.c.id)
    ).scalar_one()
    # The welcome email describes the test key, so no key-created email is sent.
    test_key = keys.create_key(
        conn,
        settings_secret,
        team_id=team_id,
        name=DEFAULT_TEST_KEY,
        mode="test",
        created_by=email,
        notify=False,
    )
    audit.record(
        conn,
        actor=email,
        action="signup.create",
        object_type="organization",
        object_id=organization_id,
        after={
            "organization": org_name,
            "owner": email,
            "trial_credit": current.trial_credit,
            "test_key": f"{test_key.prefix}...{test_key.last4}",
        },
        client_address=client_address,
    )
    email_outbox.enqueue(
        conn,
        email,
        "welcome",
        dedupe_key=f"welcome:{user_id}",
        organization=org_name,
        username=email,
        trial_credit=current.trial_credit,
        trial_days=current.trial_days,
    )
    logger.info(
        "sign-up created organization %d with owner user %d, team %d and test key %d",
        organization_id,
        user_id,
        team_id,
        test_key.id,
    )
    return SignupResult(
        organization_id,
        user_id,
        team_id,
        test_key,
        current.trial_credit,
        current.trial_days,
    )


def _check_names_free(conn: Connection, email: str, org_name: str) -> None:
    # The unique constraints also reject a concurrent duplicate, as an
    # IntegrityError at insert time.
    taken_user = conn.execute(
        select(users.c.id).where(func.lower(users.c.username) == email)
    ).first()
    if taken_user is not None:
        raise InvalidRequestError(
            f"an account for {email} already exists; sign in instead", param="email"
        )
    taken_org = conn.execute(
        select(organizations.c.id).where(func.lower(organizations.c.name) == org_name.lower())
    ).first()
    if taken_org is not None:
        raise InvalidRequestError(
            f"an organization named {org_name!r} already exists; choose another name",
            param="org_name",
        )


def organization_of_username(conn: Connection, username: str) -> int | None:
    """Return the organization a user signed up with, or None for operator accounts."""
    return conn.execute(
        select(organization_members.c.organization_id)
        .join(users, users.c.id == organization_members.c.user_id)
        .where(users.c.username == username)
        .order_by(organization_members.c.organization_id)
        .limit(1)
    ).scalar_one_or_none()


def live_keys_allowed(conn: Connection, organization_id: int, actor: Actor | str) -> bool:
    """Tell whether the organization may create live keys."""
    access.require_organization(access.as_actor(actor), organization_id, "billing.manage")
    return live_keys.organization_allowed(conn, organization_id)


def check_live_key_allowed(conn: Connection, team_id: int) -> None:
    """Raise PermissionDeniedError if the team's organization may not create live keys."""
    live_keys.check_team(conn, team_id)


def approve_live_keys(conn: Connection, actor: Actor, organization_id: int) -> bool:
    """Let an organization create live keys before its first paid top-up; audited.

    Returns False, writing nothing, when live keys were already allowed.
    """
    access.require_actor(actor, "signup.manage")
    if not ledger.account_exists(conn, "organization", organization_id):
        raise NotFoundError(f"organization {organization_id} not found")
    if live_keys.organization_allowed(conn, organization_id):
        return False
    statement = pg_insert(billing_accounts).values(
        organization_id=organization_id,
        live_keys_allowed=True,
        live_keys_approved_by=actor.username,
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["organization_id"],
            set_={"live_keys_allowed": True, "live_keys_approved_by": actor.username},
        )
    )
    audit.record(
        conn,
        actor=actor.username,
        action="organizations.approve_live_keys",
        object_type="organization",
        object_id=organization_id,
        before={"live_keys_allowed": False},
        after={"live_keys_allowed": True},
        client_address=actor.client_address,
    )
    logger.info("user %s approved live keys for organization %d", actor.username, organization_id)
    return True


def allow_live_keys_after_payment(conn: Connection, organization_id: int) -> bool:
    """Record an organization's first paid top-up; return True if it was the first.

    The first paid top-up also allows live keys.
    """
    statement = (
        pg_insert(billing_accounts)
        .values(organization_id=organization_id, live_keys_allowed=True, first_paid_at=func.now())
        .on_conflict_do_update(
            index_elements=["organization_id"],
            set_={"live_keys_allowed": True, "first_paid_at": func.now()},
            where=billing_accounts.c.first_paid_at.is_(None),
        )
        .returning(billing_accounts.c.organization_id)
    )
    first = conn.execute(statement).first() is not None
    if first:
        logger.info("organization %d made its first paid top-up", organization_id)
    return first


def set_signup_enabled(conn: Connection, actor: Actor, enabled: bool) -> bool:
    """Switch self-service sign-up on or off, keeping the other settings; audited.

    Returns False, writing nothing, when sign-up is already in that state.
    """
    access.require_actor(actor, "signup.manage")
    current = get_settings(conn)
    if current.signup_enabled == enabled:
        return False
    save_settings(conn, replace(current, signup_enabled=enabled), actor)
    audit.record(
        conn,
        actor=actor.username,
        action="signup.set_enabled",
        object_type="self_service_settings",
        object_id=1,
        before={"signup_enabled": current.signup_enabled},
        after={"signup_enabled": enabled},
        client_address=actor.client_address,
    )
    return True
