"""Coupons and referral codes, which add credit to organizations.

A coupon adds a fixed amount of credit (a `grant` ledger entry). It has an
optional maximum number of redemptions and a validity window, and each
organization can redeem a given coupon once. The coupon row is locked while
it is redeemed, so concurrent redemptions never exceed the maximum.

A referral code belongs to one organization. An organization that signs up
with it is recorded as referred, and after its first paid top-up both
organizations get the referral credit once.

Creating and listing coupons is `billing.configure`, which only
installation staff take. Redeeming a coupon and reading a referral code
need `billing.manage` in the organization. A bare role string is an
installation-wide principal (see access.as_actor).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from gateway_core import access, ledger
from gateway_core.access import Actor
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import billing_accounts, coupon_redemptions, coupons, referral_codes

logger = logging.getLogger(__name__)

_COUPON_CODE = re.compile(r"^[A-Z0-9_-]{3,64}$")
# Crockford-style alphabet without 0, 1, I, L, O and U, so a code read
# aloud or copied by hand is not mistyped.
_REFERRAL_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
REFERRAL_CODE_LENGTH = 8


@dataclass(frozen=True)
class Coupon:
    id: int
    code: str
    credit: Decimal
    max_redemptions: int | None
    redemptions: int
    valid_from: datetime
    valid_until: datetime | None


_COUPON_COLUMNS = (
    coupons.c.id,
    coupons.c.code,
    coupons.c.credit,
    coupons.c.max_redemptions,
    coupons.c.redemptions,
    coupons.c.valid_from,
    coupons.c.valid_until,
)


def normalize_coupon_code(code: str) -> str:
    """Return the stored form of a coupon code: stripped and upper-case."""
    normalized = code.strip().upper()
    if not _COUPON_CODE.match(normalized):
        raise InvalidRequestError(
            f"coupon code {code!r} is invalid; use 3 to 64 letters, digits, '-' or '_'",
            param="code",
        )
    return normalized


def create_coupon(
    conn: Connection,
    code: str,
    credit: Decimal,
    *,
    actor: Actor | str,
    max_redemptions: int | None = None,
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
) -> Coupon:
    """Insert a coupon that adds `credit` dollars when redeemed."""
    principal = access.as_actor(actor)
    access.require_actor(principal, "billing.configure")
    code = normalize_coupon_code(code)
    credit = ledger.validate_amount(credit)
    if credit < 0:
        raise InvalidRequestError(f"coupon credit must be positive, got {credit}", param="credit")
    if max_redemptions is not None and max_redemptions <= 0:
        raise InvalidRequestError(
            f"max_redemptions must be positive or None, got {max_redemptions}",
            param="max_redemptions",
        )
    for name, moment in (("valid_from", valid_from), ("valid_until", valid_until)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidRequestError(f"{name} must be timezone-aware", param=name)
    start = valid_from or datetime.now(UTC)
    if valid_until is not None and valid_until <= start:
        raise InvalidRequestError("valid_until must be after valid_from", param="valid_until")
    if conn.execute(select(coupons.c.id).where(coupons.c.code == code)).first() is not None:
        raise InvalidRequestError(f"coupon {code} already exists", param="code")
    row = conn.execute(
        insert(coupons)
        .values(
            code=code,
            credit=credit,
            max_redemptions=max_redemptions,
            valid_from=start,
            valid_until=valid_until,
            created_by=principal.username,
        )
        .returning(*_COUPON_COLUMNS)
    ).one()
    logger.info("user %s created coupon %s for %s dollars", principal.username, code, credit)
    return Coupon(*row)


def list_coupons(conn: Connection, actor: Actor | str) -> list[Coupon]:
    """Return every coupon with its redemption count, oldest first."""
    access.require_actor(access.as_actor(actor), "billing.configure")
    return [Coupon(*row) for row in conn.execute(select(*_COUPON_COLUMNS).order_by(coupons.c.id))]


def redeem_coupon(
    conn: Connection,
    organization_id: int,
    code: str,
    actor: Actor | str,
    now: datetime | None = None,
) -> Decimal:
    """Add a coupon's credit to an organization and return the amount added.

    Raises NotFoundError for an unknown coupon or organization, and
    InvalidRequestError when the coupon is outside its validity window, has
    reached its maximum redemptions, or this organization redeemed it before.
    """
    principal = access.as_actor(actor)
    access.require_organization(principal, organization_id, "billing.manage")
    username = principal.username
    code = normalize_coupon_code(code)
    now = now or datetime.now(UTC)
    if not ledger.account_exists(conn, "organization", organization_id):
        raise NotFoundError(f"organization {organization_id} not found")
    row = conn.execute(
        select(*_COUPON_COLUMNS).where(coupons.c.code == code).with_for_update()
    ).first()
    if row is None:
        raise NotFoundError(f"coupon {code} not found; check the spelling")
    coupon = Coupon(*row)
    _check_redeemable(coupon, now)
    redeemed = conn.execute(
        pg_insert(coupon_redemptions)
        .values(coupon_id=coupon.id, organization_id=organization_id, actor=username)
        .on_conflict_do_nothing()
        .returning(coupon_redemptions.c.coupon_id)
    ).first()
    if redeemed is None:
        raise InvalidRequestError(
            f"this organization has already redeemed coupon {code}; each organization "
            "can redeem a coupon once",
            param="code",
            code="coupon_already_redeemed",
        )
    conn.execute(
        update(coupons)
        .where(coupons.c.id == coupon.id)
        .values(redemptions=coupons.c.redemptions + 1)
    )
    ledger.add_entry(
        conn,
        scope_type="organization",
        scope_id=organization_id,
        amount=coupon.credit,
        kind="grant",
        reference=f"coupon:{code}",
        reason=f"coupon {code}",
        actor=username,
    )
    logger.info("user %s redeemed coupon %s for organization %d", username, code, organization_id)
    return coupon.credit


def _check_redeemable(coupon: Coupon, now: datetime) -> None:
    if now < coupon.valid_from:
        raise InvalidRequestError(
            f"coupon {coupon.code} is not valid before {coupon.valid_from:%Y-%m-%d %H:%M %Z}",
            param="code",
            code="coupon_not_yet_valid",
        )
    if coupon.valid_until is not None and now >= coupon.valid_until:
        raise InvalidRequestError(
            f"coupon {coupon.code} expired at {coupon.valid_until:%Y-%m-%d %H:%M %Z}",
            param="code",
            code="coupon_expired",
        )
    if coupon.max_redemptions is not None and coupon.redemptions >= coupon.max_redemptions:
        raise InvalidRequestError(
            f"coupon {coupon.code} has reached its maximum of {coupon.max_redemptions} redemptions",
            param="code",
            code="coupon_exhausted",
        )


def referral_code_for(conn: Connection, organization_id: int, actor: Actor | str) -> str:
    """Return the organization's referral code, creating it on first use."""
    access.require_organization(access.as_actor(actor), organization_id, "billing.manage")
    if not ledger.account_exists(conn, "organization", organization_id):
        raise NotFoundError(f"organization {organization_id} not found")
    existing = _referral_code(conn, organization_id)
    if existing is not None:
        return existing
    # 29**8 codes, so a collision between two organizations is unlikely
    # but possible: the loop draws again, a bounded number of times.
    for _ in range(5):
        code = "".join(secrets.choice(_REFERRAL_ALPHABET) for _ in range(REFERRAL_CODE_LENGTH))
        conn.execute(
            pg_insert(referral_codes)
            .values(code=code, organization_id=organization_id)
            .on_conflict_do_nothing()
        )
        stored = _referral_code(conn, organization_id)
        if stored is not None:
            return stored
    raise RuntimeError("failed to draw an unused referral code in 5 attempts")


def _referral_code(conn: Connection, organization_id: int) -> str | None:
    return conn.execute(
        select(referral_codes.c.code).where(referral_codes.c.organization_id == organization_id)
    ).scalar_one_or_none()


def referrer_of(conn: Connection, code: str) -> int:
    """Return the organization that owns a referral code."""
    normalized = code.strip().upper()
    organization_id = conn.execute(
        select(referral_codes.c.organization_id).where(referral_codes.c.code == normalized)
    ).scalar_one_or_none()
    if organization_id is None:
        raise InvalidRequestError(
            f"referral code {code!r} not found; check it or sign up without one",
            param="referral_code",
        )
    return organization_id


def credit_referral(conn: Connection, organization_id: int, amount: Decimal) -> bool:
    """Give the referral credit to a referred organization and its referrer, once.

    Call after the referred organization's first paid top-up. Returns False,
    writing nothing, when it was not referred or was credited before.
    """
    row = conn.execute(
        select(
            billing_accounts.c.referred_by_organization_id,
            billing_accounts.c.referral_credited_at,
        )
        .where(billing_accounts.c.organization_id == organization_id)
        .with_for_update()
    ).first()
    if row is None or row.referred_by_organization_id is None or row.referral_credited_at:
        return False
    referrer_id = row.referred_by_organization_id
    if amount > 0:
        for scope_id, reason in (
            (organization_id, f"referral by organization {referrer_id}"),
            (referrer_id, f"referral of organization {organization_id}"),
        ):
            ledger.add_entry(
                conn,
                scope_type="organization",
                scope_id=scope_id,
                amount=amount,
                kind="grant",
                reference=f"referral:{organization_id}",
                reason=reason,
                actor="referral",
            )
    conn.execute(
        update(billing_accounts)
        .where(billing_accounts.c.organization_id == organization_id)
        .values(referral_credited_at=func.now())
    )
    logger.info(
        "referral credit of %s dollars to organizations %d and %d",
        amount,
        organization_id,
        referrer_id,
    )
    return True
