"""Admin API routes for API keys: create, list, read, restrict, rotate and revoke.

The plain key appears only in the responses of create and rotate. Audit
entries and every other response carry the key's id, prefix and last four
characters instead.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection, select

from gateway_core import budgets, key_details, keys, provisioning
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import teams
from proxy.admin_auth import DirectoryWriter, Reader
from proxy.admin_models import (
    ApiKey,
    ApiKeyDetail,
    DataList,
    IssuedApiKey,
    KeyCreate,
    KeyPolicy,
    KeyRotate,
    RateLimits,
    RateLimitValues,
)
from proxy.admin_routes import budget_outs

router = APIRouter(prefix="/keys", tags=["keys"])


def key_detail(conn: Connection, key_id: int) -> ApiKeyDetail:
    key = key_details.get_key(conn, key_id)
    limits = key_details.key_rate_limits(conn, key_id)
    return ApiKeyDetail(
        **key,
        rate_limits=None if limits is None else RateLimits.model_validate(limits),
        budgets=budget_outs(conn, budgets.list_budgets(conn, "key", key_id)),
    )


def policy_snapshot(key: dict[str, Any]) -> dict[str, Any]:
    return {field: key[field] for field in keys.POLICY_FIELDS}


@router.post("", status_code=201)
def create_key(body: KeyCreate, context: DirectoryWriter) -> IssuedApiKey:
    """Create a key with its project, rate limits, credit limit and restrictions in one call."""
    limits = body.rate_limits or RateLimitValues()
    policy = {
        field: getattr(body, field)
        for field in keys.POLICY_FIELDS
        if getattr(body, field) is not None
    }
    with context.engine.begin() as conn:
        team = conn.execute(select(teams.c.id).where(teams.c.id == body.team_id)).first()
        if team is None:
            raise NotFoundError(f"team {body.team_id} not found", param="team_id")
        issued = provisioning.issue_key(
            conn,
            context.secret,
            team_id=body.team_id,
            project_id=body.project_id,
            name=body.name,
            mode=body.mode,
            requests_per_minute=limits.requests_per_minute,
            requests_per_day=limits.requests_per_day,
            tokens_per_minute=limits.tokens_per_minute,
            max_concurrent=limits.max_concurrent,
            credit_limit=body.credit_limit_usd,
            created_by=context.identity.actor,
        )
        if policy:
            keys.set_key_policy(conn, issued.id, **policy)
        detail = key_detail(conn, issued.id)
        context.audit(conn, "key.create", "key", issued.id, after=detail.model_dump(mode="json"))
    return IssuedApiKey(**detail.model_dump(), key=issued.secret)


@router.get("")
def list_keys(
    context: Reader,
    team_id: int | None = None,
    project_id: int | None = None,
    include_revoked: bool = True,
) -> DataList[ApiKey]:
    with context.engine.connect() as conn:
        found = key_details.list_keys(
            conn, team_id=team_id, project_id=project_id, include_revoked=include_revoked
        )
    return DataList(data=[ApiKey.model_validate(key) for key in found])


@router.get("/{key_id}")
def get_key(key_id: int, context: Reader) -> ApiKeyDetail:
    """Return a key with its restrictions, rate limits and budget status."""
    with context.engine.connect() as conn:
        return key_detail(conn, key_id)


@router.patch("/{key_id}")
def update_key_policy(key_id: int, body: KeyPolicy, context: DirectoryWriter) -> ApiKeyDetail:
    """Change the restrictions sent; null removes a restriction, omitted ones stay."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidRequestError(
            f"no restrictions to change; send one or more of {', '.join(keys.POLICY_FIELDS)}"
        )
    with context.engine.begin() as conn:
        before = policy_snapshot(key_details.get_key(conn, key_id))
        keys.set_key_policy(conn, key_id, **changes)
        detail = key_detail(conn, key_id)
        context.audit(
            conn,
            "key.update_policy",
            "key",
            key_id,
            before=before,
            after=policy_snapshot(detail.model_dump()),
        )
    return detail


@router.post("/{key_id}/rotate", status_code=201)
def rotate_key(
    key_id: int, context: DirectoryWriter, body: KeyRotate | None = None
) -> IssuedApiKey:
    """Issue a replacement key with the same settings; the old key expires after the grace.

    The replacement gets the old key's restrictions, rate limits and budgets.
    A lifetime budget carries over only what the old key has not spent.
    """
    grace_seconds = (body or KeyRotate()).grace_seconds
    actor = context.identity.actor
    with context.engine.begin() as conn:
        issued = keys.rotate_key(
            conn,
            context.secret,
            key_id,
            grace=timedelta(seconds=grace_seconds),
            created_by=actor,
        )
        key_details.carry_over_limits(conn, key_id, issued.id, actor)
        old = key_details.get_key(conn, key_id)
        detail = key_detail(conn, issued.id)
        context.audit(
            conn,
            "key.rotate",
            "key",
            key_id,
            after={
                "replacement_id": issued.id,
                "grace_seconds": grace_seconds,
                "expires_at": old["expires_at"],
            },
        )
    return IssuedApiKey(**detail.model_dump(), key=issued.secret)


@router.post("/{key_id}/revoke")
def revoke_key(key_id: int, context: DirectoryWriter) -> ApiKey:
    """Revoke a key at once; revoking a revoked key changes nothing and succeeds."""
    with context.engine.begin() as conn:
        revoked = keys.revoke_key(conn, key_id)
        key = key_details.get_key(conn, key_id)
        context.audit(
            conn,
            "key.revoke",
            "key",
            key_id,
            after={"revoked_at": key["revoked_at"], "already_revoked": not revoked},
        )
    return ApiKey.model_validate(key)
