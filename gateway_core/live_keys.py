"""The live-key gate of self-service organizations.

A self-service organization has a `billing_accounts` row with
`live_keys_allowed` false until its first paid top-up or an admin's
approval. Organizations created by an operator have no row, or a row
written by a payment, and may create live keys. `keys.create_key` checks
the gate, so every path that issues a live key (the app, the CLI, the admin
API, rotation and provisioning) is covered.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from gateway_core.errors import NotFoundError, PermissionDeniedError
from gateway_core.schema import billing_accounts, teams


def organization_allowed(conn: Connection, organization_id: int) -> bool:
    """Tell whether the organization may create live keys."""
    allowed = conn.execute(
        select(billing_accounts.c.live_keys_allowed).where(
            billing_accounts.c.organization_id == organization_id
        )
    ).scalar_one_or_none()
    return True if allowed is None else allowed


def check_team(conn: Connection, team_id: int) -> None:
    """Raise PermissionDeniedError if the team's organization may not create live keys."""
    organization_id = conn.execute(
        select(teams.c.organization_id).where(teams.c.id == team_id)
    ).scalar_one_or_none()
    if organization_id is None:
        raise NotFoundError(f"team {team_id} not found")
    if not organization_allowed(conn, organization_id):
        raise PermissionDeniedError(
            f"organization {organization_id} may not create live keys yet. Live keys are "
            "available after its first paid top-up (Billing page) or an administrator's "
            "approval; create a gw_test_ key until then",
            code="live_keys_not_allowed",
        )
