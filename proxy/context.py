"""Per-call state, carried from authentication to the usage row."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from gateway_core.pricing import TokenUsage
from proxy.key_policy import KeyPolicy

if TYPE_CHECKING:
    from proxy.ratelimit import RateLimitTicket
    from proxy.spend import Reservation


@dataclass(frozen=True)
class KeyIdentity:
    """The verified API key behind a request; never holds the key itself."""

    key_id: int
    team_id: int
    organization_id: int
    mode: str
    project_id: int | None = None
    policy: KeyPolicy = field(default_factory=KeyPolicy)

    @property
    def is_test(self) -> bool:
        return self.mode == "test"


def new_request_id() -> str:
    """Return a new request id: "req_" and 32 random hex digits, as a UUID4's hex would be."""
    return "req_" + secrets.token_hex(16)


@dataclass
class CallContext:
    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    identity: KeyIdentity | None = None
    model: str | None = None
    provider: str | None = None
    stream: bool = False
    partial: bool = False
    status_code: int = 200
    error_type: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: Decimal = Decimal(0)
    first_token_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    # Spend reserved before forwarding; settled exactly once when the call ends.
    reservation: Reservation | None = None
    # Rate-limit consumption, released when the call ends.
    rate_ticket: RateLimitTicket | None = None
    rate_headers: dict[str, str] = field(default_factory=dict)
    # The chat session and prompt template version the call used, if any.
    session_id: str | None = None
    template_name: str | None = None
    template_version: int | None = None
    # Bodies kept for storage when the key's privacy settings ask for it.
    log_bodies: bool = False
    request_body: dict[str, Any] | None = None
    response_body: dict[str, Any] | None = None

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def finish(self, status_code: int, error_type: str | None = None) -> None:
        self.status_code = status_code
        self.error_type = error_type
        self.finished_at = time.perf_counter()

    def usage_row(self) -> dict[str, Any]:
        finished = self.finished_at if self.finished_at is not None else time.perf_counter()
        ttft_ms = None
        if self.first_token_at is not None:
            ttft_ms = round((self.first_token_at - self.started) * 1000)
        identity = self.identity
        return {
            "request_id": self.request_id,
            "created_at": self.started_at,
            "organization_id": identity.organization_id if identity else None,
            "team_id": identity.team_id if identity else None,
            "api_key_id": identity.key_id if identity else None,
            "project_id": identity.project_id if identity else None,
            "endpoint": self.endpoint,
            "model": self.model,
            "provider": self.provider,
            "status_code": self.status_code,
            "error_type": self.error_type,
            "stream": self.stream,
            "partial": self.partial,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "cost_usd": self.cost,
            "latency_ms": round((finished - self.started) * 1000),
            "ttft_ms": ttft_ms,
            "attempts": self.attempts,
            "session_id": self.session_id,
            "template_name": self.template_name,
            "template_version": self.template_version,
            "key_tags": list(identity.policy.tags) if identity else [],
            "key_metadata": Jsonb(identity.policy.metadata) if identity else Jsonb({}),
        }
