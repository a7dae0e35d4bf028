"""Admin API routes for organizations, teams, projects, budgets, rate limits and usage.

Handlers are plain `def` functions, so FastAPI runs their blocking database
work in its thread pool. Each write and its audit entry share one transaction.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime
from sqlalchemy import Connection, and_, select

from gateway_core import budgets, directory, limits_admin, provisioning, usage_summary
from gateway_core.errors import NotFoundError
from gateway_core.schema import budgets as budget_table
from gateway_core.schema import credit_balances, organizations, projects, teams
from proxy.admin_auth import DirectoryWriter, Reader, SpendingWriter
from proxy.admin_models import (
    Budget,
    BudgetSet,
    DataList,
    Organization,
    OrganizationCreate,
    Project,
    ProjectCreate,
    RateLimits,
    RateLimitSet,
    Team,
    TeamCreate,
    UsageGroup,
    UsageSummary,
)

router = APIRouter()


# Organizations, teams and projects


def organization_rows(conn: Connection, organization_id: int | None = None) -> list[Organization]:
    balance = credit_balances.c
    query = (
        select(
            organizations.c.id,
            organizations.c.name,
            organizations.c.timezone,
            organizations.c.created_at,
            balance.balance.label("credit_balance_usd"),
        )
        .outerjoin(
            credit_balances,
            and_(balance.scope_type == "organization", balance.scope_id == organizations.c.id),
        )
        .order_by(organizations.c.id)
    )
    if organization_id is not None:
        query = query.where(organizations.c.id == organization_id)
    return [Organization.model_validate(row._mapping) for row in conn.execute(query)]


@router.post("/organizations", status_code=201, tags=["organizations"])
def create_organization(body: OrganizationCreate, context: DirectoryWriter) -> Organization:
    """Create an organization, with trial credit unless `trial_usd` is "0"."""
    with context.engine.begin() as conn:
        organization_id = provisioning.create_organization(
            conn,
            body.name,
            timezone=body.timezone,
            trial_usd=body.trial_usd,
            trial_days=body.trial_days,
            actor=context.identity.actor,
        )
        context.audit(
            conn,
            "organization.create",
            "organization",
            organization_id,
            after=body.model_dump(mode="json"),
        )
        return organization_rows(conn, organization_id)[0]


@router.get("/organizations", tags=["organizations"])
def list_organizations(context: Reader) -> DataList[Organization]:
    with context.engine.connect() as conn:
        return DataList(data=organization_rows(conn))


def team_rows(
    conn: Connection, *, team_id: int | None = None, organization_id: int | None = None
) -> list[Team]:
    query = select(teams.c.id, teams.c.organization_id, teams.c.name, teams.c.created_at).order_by(
        teams.c.id
    )
    if team_id is not None:
        query = query.where(teams.c.id == team_id)
    if organization_id is not None:
        query = query.where(teams.c.organization_id == organization_id)
    return [Team.model_validate(row._mapping) for row in conn.execute(query)]


@router.post("/teams", status_code=201, tags=["teams"])
def create_team(body: TeamCreate, context: DirectoryWriter) -> Team:
    with context.engine.begin() as conn:
        organization = conn.execute(
            select(organizations.c.name).where(organizations.c.id == body.organization_id)
        ).scalar_one_or_none()
        if organization is None:
            raise NotFoundError(
                f"organization {body.organization_id} not found", param="organization_id"
            )
        team = directory.create_team(conn, body.name, organization)
        context.audit(conn, "team.create", "team", team.id, after=body.model_dump(mode="json"))
        return team_rows(conn, team_id=team.id)[0]


@router.get("/teams", tags=["teams"])
def list_teams(context: Reader, organization_id: int | None = None) -> DataList[Team]:
    with context.engine.connect() as conn:
        return DataList(data=team_rows(conn, organization_id=organization_id))


def project_rows(
    conn: Connection, *, project_id: int | None = None, team_id: int | None = None
) -> list[Project]:
    query = select(
        projects.c.id,
        projects.c.team_id,
        projects.c.name,
        projects.c.principal_investigator,
        projects.c.cost_centre,
        projects.c.created_at,
    ).order_by(projects.c.id)
    if project_id is not None:
        query = query.where(projects.c.id == project_id)
    if team_id is not None:
        query = query.where(projects.c.team_id == team_id)
    return [Project.model_validate(row._mapping) for row in conn.execute(query)]


@router.post("/projects", status_code=201, tags=["projects"])
def create_project(body: ProjectCreate, context: DirectoryWriter) -> Project:
    with context.engine.begin() as conn:
        if not team_rows(conn, team_id=body.team_id):
            raise NotFoundError(f"team {body.team_id} not found", param="team_id")
        project = directory.create_project(
            conn,
            body.team_id,
            body.name,
            principal_investigator=body.principal_investigator,
            cost_centre=body.cost_centre,
        )
        context.audit(
            conn, "project.create", "project", project.id, after=body.model_dump(mode="json")
        )
        return project_rows(conn, project_id=project.id)[0]


@router.get("/projects", tags=["projects"])
def list_projects(context: Reader, team_id: int | None = None) -> DataList[Project]:
    with context.engine.connect() as conn:
        return DataList(data=project_rows(conn, team_id=team_id))


# Budgets


def budget_out(conn: Connection, budget: budgets.Budget, timezone: str) -> Budget:
    status = budgets.budget_status(conn, budget, timezone)
    return Budget(
        id=budget.id,
        scope_type=budget.scope_type,
        scope_id=budget.scope_id,
        period=budget.period,
        limit_usd=budget.limit_usd,
        alert_thresholds=list(budget.alert_thresholds),
        period_start=status.period_start,
        resets_at=None if budget.period == "lifetime" else status.period_end,
        spent_usd=status.spent,
        reserved_usd=status.reserved,
        remaining_usd=status.remaining,
    )


def budget_outs(conn: Connection, found: list[budgets.Budget]) -> list[Budget]:
    """Describe budgets with their current period, in their organizations' time zones."""
    zones: dict[tuple[str, int], str] = {}
    described = []
    for budget in found:
        scope = (budget.scope_type, budget.scope_id)
        if scope not in zones:
            try:
                zones[scope] = limits_admin.find_scope(conn, *scope).timezone
            except NotFoundError:
                # A budget row may outlive its scope, because budgets have
                # no foreign key; its periods then follow UTC.
                zones[scope] = "UTC"
        described.append(budget_out(conn, budget, zones[scope]))
    return described


def find_budget(conn: Connection, budget_id: int) -> budgets.Budget:
    row = conn.execute(
        select(budget_table.c.scope_type, budget_table.c.scope_id).where(
            budget_table.c.id == budget_id
        )
    ).first()
    found = [] if row is None else budgets.list_budgets(conn, row.scope_type, row.scope_id)
    for budget in found:
        if budget.id == budget_id:
            return budget
    raise NotFoundError(f"no budget with id {budget_id}")


def budget_snapshot(budget: budgets.Budget | None) -> dict[str, object] | None:
    if budget is None:
        return None
    return {"limit_usd": budget.limit_usd, "alert_thresholds": list(budget.alert_thresholds)}


@router.post("/budgets", tags=["budgets"])
def set_budget(body: BudgetSet, context: SpendingWriter) -> Budget:
    """Create or change the budget of a scope for a period."""
    with context.engine.begin() as conn:
        current = [
            budget
            for budget in budgets.list_budgets(conn, body.scope_type, body.scope_id)
            if budget.period == body.period
        ]
        budget_id = limits_admin.save_budget(
            conn,
            context.identity.role,
            scope_type=body.scope_type,
            scope_id=body.scope_id,
            period=body.period,
            limit_usd=body.limit_usd,
            alert_thresholds=tuple(body.alert_thresholds),
            actor=context.identity.actor,
        )
        context.audit(
            conn,
            "budget.set",
            "budget",
            budget_id,
            before=budget_snapshot(current[0] if current else None),
            after=body.model_dump(mode="json"),
        )
        return budget_outs(conn, [find_budget(conn, budget_id)])[0]


@router.get("/budgets", tags=["budgets"])
def list_budgets(
    context: Reader,
    scope_type: Literal["organization", "team", "project", "key"] | None = None,
    scope_id: int | None = None,
) -> DataList[Budget]:
    """List budgets with the spend, reservations and remainder of their current period."""
    with context.engine.connect() as conn:
        found = budgets.list_budgets(conn, scope_type, scope_id)
        return DataList(data=budget_outs(conn, found))


@router.delete("/budgets/{budget_id}", status_code=204, tags=["budgets"])
def remove_budget(budget_id: int, context: SpendingWriter) -> Response:
    with context.engine.begin() as conn:
        current = find_budget(conn, budget_id)
        limits_admin.delete_budget(conn, context.identity.role, budget_id)
        context.audit(conn, "budget.remove", "budget", budget_id, before=budget_snapshot(current))
    return Response(status_code=204)


# Rate limits


def rate_limit_rows(
    conn: Connection, scope_type: str | None = None, scope_id: int | None = None
) -> list[RateLimits]:
    return [
        RateLimits.model_validate(row, from_attributes=True)
        for row in limits_admin.list_rate_limits(conn)
        if (scope_type is None or row.scope_type == scope_type)
        and (scope_id is None or row.scope_id == scope_id)
    ]


@router.post("/rate-limits", tags=["rate limits"])
def set_rate_limits(body: RateLimitSet, context: SpendingWriter) -> RateLimits:
    """Replace a scope's rate limits; sending all four as null removes them."""
    values = body.model_dump(exclude={"scope_type", "scope_id"})
    with context.engine.begin() as conn:
        current = rate_limit_rows(conn, body.scope_type, body.scope_id)
        saved = limits_admin.set_rate_limits(
            conn,
            context.identity.role,
            scope_type=body.scope_type,
            scope_id=body.scope_id,
            **values,
        )
        context.audit(
            conn,
            "rate_limits.set",
            body.scope_type,
            body.scope_id,
            before=current[0].model_dump(mode="json") if current else None,
            after=values,
        )
    if saved is None:
        return RateLimits(
            scope_type=body.scope_type, scope_id=body.scope_id, updated_at=None, **values
        )
    return RateLimits.model_validate(saved, from_attributes=True)


@router.get("/rate-limits", tags=["rate limits"])
def list_rate_limits(
    context: Reader,
    scope_type: Literal["organization", "team", "project", "key"] | None = None,
    scope_id: int | None = None,
) -> DataList[RateLimits]:
    with context.engine.connect() as conn:
        return DataList(data=rate_limit_rows(conn, scope_type, scope_id))


# Usage


@router.get("/usage", tags=["usage"])
def get_usage(
    context: Reader,
    group_by: Literal["model", "team", "project", "key", "day"] = "model",
    key: Annotated[int | None, Query(description="API key id")] = None,
    team: Annotated[int | None, Query(description="team id")] = None,
    project: Annotated[int | None, Query(description="project id")] = None,
    start: Annotated[AwareDatetime | None, Query(description="inclusive, ISO 8601")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive, ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=usage_summary.MAX_LIMIT)] = usage_summary.DEFAULT_LIMIT,
) -> UsageSummary:
    """Sum requests, tokens and cost per model, team, project, key or UTC day."""
    with context.engine.connect() as conn:
        groups = usage_summary.summarize_usage(
            conn,
            group_by,
            key_id=key,
            team_id=team,
            project_id=project,
            start=start,
            end=end,
            limit=limit,
        )
    data = [
        UsageGroup(
            group_id=group.group_id,
            group=group.group,
            requests=group.requests,
            errors=group.errors,
            prompt_tokens=group.prompt_tokens,
            completion_tokens=group.completion_tokens,
            total_tokens=group.total_tokens,
            cost_usd=group.cost_usd,
        )
        for group in groups
    ]
    return UsageSummary(group_by=group_by, start=start, end=end, data=data)
