"""Request and response bodies of the admin API.

Money is a decimal string of US dollars in both directions ("100", "0.25"),
so no amount passes through a float. Request bodies reject unknown fields.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from gateway_core import budgets, provisioning
from gateway_core.errors import InvalidRequestError
from gateway_core.limits_admin import MAX_RATE_LIMIT, check_limit_usd

Item = TypeVar("Item")
MAX_GRACE_SECONDS = 30 * 86_400
MAX_LIST_ITEMS = 100


def parse_usd(value: object) -> Decimal:
    """Accept a decimal string such as "100.00"; reject JSON numbers, which may be floats."""
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a decimal string of US dollars such as "100.00", not a number')
    try:
        return Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"invalid decimal amount {value!r}") from None


def check_usd_limit(amount: Decimal) -> Decimal:
    try:
        return check_limit_usd(amount)
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None


def format_decimal(amount: Decimal) -> str:
    """Write a decimal without exponent or trailing zeros: Decimal("100.0000") is "100"."""
    return format(amount.normalize(), "f") if amount else "0"


_USD_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["100.00"]}
)
# An amount sent by a client: non-negative, at most 10 decimal places.
UsdLimit = Annotated[
    Decimal,
    BeforeValidator(parse_usd),
    AfterValidator(check_usd_limit),
    PlainSerializer(format_decimal, return_type=str),
    _USD_SCHEMA,
]
# An amount the API returns.
Usd = Annotated[Decimal, PlainSerializer(format_decimal, return_type=str), _USD_SCHEMA]
RateLimit = Annotated[int, Field(strict=True, ge=1, le=MAX_RATE_LIMIT)]
# A fraction of a budget limit, such as 0.8.
Threshold = Annotated[
    Decimal,
    Field(gt=0, le=1, decimal_places=4),
    PlainSerializer(format_decimal, return_type=str),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ListItem = Annotated[str, Field(min_length=1, max_length=200)]
ScopeType = Literal["organization", "team", "project", "key"]
Endpoint = Literal["chat", "completions", "embeddings", "images", "responses", "messages"]


class RequestBody(BaseModel):
    """A request body; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape that every failed admin call returns."""

    error: ErrorDetail


# Organizations, teams and projects


class OrganizationCreate(RequestBody):
    name: Name
    timezone: str = Field("UTC", max_length=64, description="IANA zone for budget periods")
    trial_usd: UsdLimit = Field(
        provisioning.DEFAULT_TRIAL_USD, description='trial credit; "0" grants none'
    )
    trial_days: int = Field(provisioning.DEFAULT_TRIAL_DAYS, strict=True, ge=1, le=3650)


class Organization(BaseModel):
    id: int
    name: str
    timezone: str
    created_at: datetime
    # None when the organization is not credit-metered.
    credit_balance_usd: Usd | None


class TeamCreate(RequestBody):
    organization_id: int = Field(strict=True)
    name: Name


class Team(BaseModel):
    id: int
    organization_id: int
    name: str
    created_at: datetime


class ProjectCreate(RequestBody):
    team_id: int = Field(strict=True)
    name: Name
    principal_investigator: str | None = Field(None, max_length=200)
    cost_centre: str | None = Field(None, max_length=100)


class Project(BaseModel):
    id: int
    team_id: int
    name: str
    principal_investigator: str | None
    cost_centre: str | None
    created_at: datetime


# Rate limits and budgets


class RateLimitValues(RequestBody):
    """Rate limits of one scope; null means no limit of that kind."""

    requests_per_minute: RateLimit | None = None
    tokens_per_minute: RateLimit | None = None
    requests_per_day: RateLimit | None = Field(None, description="per UTC day")
    max_concurrent: RateLimit | None = Field(None, description="requests in flight at once")


class RateLimitSet(RateLimitValues):
    """Replace a scope's rate limits; all four null removes them."""

    scope_type: ScopeType
    scope_id: int = Field(strict=True)


class RateLimits(BaseModel):
    scope_type: str
    scope_id: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    requests_per_day: int | None
    max_concurrent: int | None
    # None after the limits were removed.
    updated_at: datetime | None


class BudgetSet(RequestBody):
    scope_type: ScopeType
    scope_id: int = Field(strict=True)
    period: Literal["lifetime", "daily", "weekly", "monthly"]
    limit_usd: UsdLimit
    alert_thresholds: list[Threshold] = Field(
        default_factory=lambda: list(budgets.DEFAULT_THRESHOLDS),
        max_length=10,
        description="fractions of the limit at which alerts are sent, such as 0.8",
    )


class Budget(BaseModel):
    id: int
    scope_type: str
    scope_id: int
    period: str
    limit_usd: Usd
    alert_thresholds: list[Threshold]
    period_start: datetime
    # None for lifetime budgets, which never reset.
    resets_at: datetime | None
    spent_usd: Usd
    # Money leased to proxy workers for calls in flight.
    reserved_usd: Usd
    remaining_usd: Usd


# API keys


class KeyPolicy(RequestBody):
    """Restrictions of an API key; null means no restriction of that kind."""

    expires_at: AwareDatetime | None = None
    allowed_models: list[ListItem] | None = Field(
        None, max_length=MAX_LIST_ITEMS, description='model ids or globs such as "anthropic/*"'
    )
    allowed_endpoints: list[Endpoint] | None = None
    allowed_ips: list[ListItem] | None = Field(
        None, max_length=MAX_LIST_ITEMS, description="addresses or CIDR networks"
    )
    allowed_referrers: list[ListItem] | None = Field(None, max_length=MAX_LIST_ITEMS)
    tags: list[ListItem] | None = Field(None, max_length=MAX_LIST_ITEMS)
    metadata: dict[str, Any] | None = None


class KeyCreate(KeyPolicy):
    team_id: int = Field(strict=True)
    project_id: int | None = Field(None, strict=True)
    name: Name = "default"
    mode: Literal["live", "test"] = "live"
    rate_limits: RateLimitValues | None = None
    credit_limit_usd: UsdLimit | None = Field(
        None, description="lifetime spending limit of the key"
    )


class KeyRotate(RequestBody):
    grace_seconds: int = Field(
        86_400,
        strict=True,
        ge=0,
        le=MAX_GRACE_SECONDS,
        description="seconds the old key keeps working",
    )


class ApiKey(BaseModel):
    id: int
    team_id: int
    project_id: int | None
    name: str
    mode: str
    prefix: str
    last4: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None
    # The key this one replaced by rotation.
    rotated_from: int | None
    expires_at: datetime | None
    allowed_models: list[str] | None
    allowed_endpoints: list[str] | None
    allowed_ips: list[str] | None
    allowed_referrers: list[str] | None
    tags: list[str]
    metadata: dict[str, Any]


class ApiKeyDetail(ApiKey):
    rate_limits: RateLimits | None
    budgets: list[Budget]


class IssuedApiKey(ApiKeyDetail):
    key: str = Field(description="the plain key; this is the only response that contains it")


# Usage


class UsageGroup(BaseModel):
    # Team, project or key id; None when grouping by model or day.
    group_id: int | None
    # Model id, UTC date, team name, "team / project" or key label.
    group: str | None
    requests: int
    # Calls that returned HTTP status 400 or higher.
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Usd


class UsageSummary(BaseModel):
    group_by: str
    start: datetime | None
    end: datetime | None
    data: list[UsageGroup]


class DataList(BaseModel, Generic[Item]):
    """A list response: `{"data": [...]}`."""

    data: list[Item]
