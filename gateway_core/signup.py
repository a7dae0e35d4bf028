"""Self-service sign-up and the live-key gate of self-service organizations.

`sign_up` creates, in the caller's transaction, an organization, its owner,
trial credit, a team and a `gw_test_` key. The proxy's sandbox serves test
keys, so they cost nothing. A self-service organization may
create live keys only after its first paid top-up or an admin's approval,
which `billing_accounts.live_keys_allowed` records. Organizations created
by an operator have no `billing_accounts` row and may create live keys.

Admins switch sign-up on and off in `self_service_settings`. It is off in a
new installation.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import directory, keys, ledger, promotions
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.schema import (
    billing_accounts,
    organization_members,
    organizations,
    self_service_settings,
    teams,
    users,
)

logger = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
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
        ).where(self_service_settings.c.id == 1)
    ).first()
    return SelfServiceSettings() if row is None else SelfServiceSettings(*row)


def save_settings(conn: Connection, new: SelfServiceSettings, actor: str) -> None:
    """Check and store the sign-up settings."""
    for name in ("trial_credit", "referral_credit"):
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
        "updated_by": actor,
        "updated_at": func.now(),
    }
    statement = pg_insert(self_service_settings).values(id=1, **values)
    conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))
    logger.info("user %s saved sign-up settings: enabled=%s", actor, new.signup_enabled)


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
    org_name = org_name.strip()
    if not org_name or len(org_name) > MAX_ORGANIZATION_NAME:
        raise InvalidRequestError(
            f"organization name must be 1 to {MAX_ORGANIZATION_NAME} characters", param="org_name"
        )
    return email, org_name


def sign_up(
    conn: Connection,
    settings_secret: bytes,
    email: str,
    password: str,
    org_name: str,
    referral_code: str | None = None,
) -> SignupResult:
    """Create an organization, its owner, trial credit, a team and a test key.

    Everything is written in the caller's transaction, so a failure leaves
    nothing behind. The email is the owner's username. Raises
    PermissionDeniedError when sign-up is switched off and
    InvalidRequestError for invalid input, a taken email or organization
    name, or an unknown referral code.
    """
    current = get_settings(conn)
    if not current.signup_enabled:
        raise PermissionDeniedError(
            "self-service sign-up is switched off; ask an administrator for an account",
            code="signup_disabled",
        )
    email, org_name = _check_signup_input(email, password, org_name)
    referrer_id = promotions.referrer_of(conn, referral_code) if referral_code else None
    _check_names_free(conn, email, org_name)

    organization_id = conn.execute(
        insert(organizations).values(name=org_name).returning(organizations.c.id)
    ).scalar_one()
    # NOTE: users.role is one role across the whole app, and the app's pages
    # other than Billing do not filter by organization_members yet, so this
    # owner can see other organizations there. Keep sign-up switched off on
    # a shared installation until they do.
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
    test_key = keys.create_key(
        conn, settings_secret, team_id=team_id, name=DEFAULT_TEST_KEY, mode="test", created_by=email
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


def live_keys_allowed(conn: Connection, organization_id: int) -> bool:
    """Tell whether the organization may create live keys."""
    allowed = conn.execute(
        select(billing_accounts.c.live_keys_allowed).where(
            billing_accounts.c.organization_id == organization_id
        )
    ).scalar_one_or_none()
    return True if allowed is None else allowed


def check_live_key_allowed(conn: Connection, team_id: int) -> None:
    """Raise PermissionDeniedError if the team's organization may not create live keys."""
    organization_id = conn.execute(
        select(teams.c.organization_id).where(teams.c.id == team_id)
    ).scalar_one_or_none()
    if organization_id is None:
        raise NotFoundError(f"team {team_id} not found")
    if not live_keys_allowed(conn, organization_id):
        raise PermissionDeniedError(
            "live keys are available after the organization's first paid top-up or an "
            "administrator's approval; use a gw_test_ key until then",
            code="live_keys_not_allowed",
        )


def approve_live_keys(conn: Connection, organization_id: int, actor: str) -> None:
    """Let an organization create live keys before its first paid top-up."""
    if not ledger.account_exists(conn, "organization", organization_id):
        raise NotFoundError(f"organization {organization_id} not found")
    statement = pg_insert(billing_accounts).values(
        organization_id=organization_id, live_keys_allowed=True, live_keys_approved_by=actor
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["organization_id"],
            set_={"live_keys_allowed": True, "live_keys_approved_by": actor},
        )
    )
    logger.info("user %s approved live keys for organization %d", actor, organization_id)


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


def set_signup_enabled(conn: Connection, enabled: bool, actor: str) -> None:
    """Switch self-service sign-up on or off, keeping the other settings."""
    current = get_settings(conn)
    save_settings(
        conn,
        SelfServiceSettings(
            enabled, current.trial_credit, current.trial_days, current.referral_credit
        ),
        actor,
    )
