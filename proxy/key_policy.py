"""Per-key restrictions: expiry, endpoints, models, client networks and referrers.

The client address is the TCP peer, unless that peer is a trusted proxy
(`GATEWAYZ_TRUSTED_PROXIES`); then it is the right-most address in
`X-Forwarded-For` that is not itself a trusted proxy, so a client cannot
pick its own address by sending the header.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from gateway_core.errors import AuthenticationError, PermissionDeniedError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class KeyPolicy:
    expires_at: datetime | None = None
    # Model ids, aliases or glob patterns such as "anthropic/*"; None allows all.
    allowed_models: tuple[str, ...] | None = None
    allowed_endpoints: frozenset[str] | None = None
    allowed_networks: tuple[IPNetwork, ...] | None = None
    # Domains; a subdomain of a listed domain is allowed too.
    allowed_referrers: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def allows_model(self, *names: str) -> bool:
        if self.allowed_models is None:
            return True
        return any(
            fnmatch.fnmatchcase(name, pattern) for name in names for pattern in self.allowed_models
        )


def parse_networks(values: list[str] | None) -> tuple[IPNetwork, ...] | None:
    if values is None:
        return None
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> IPAddress | None:
    """Return the client's address, following X-Forwarded-For only through trusted proxies."""
    if peer is None:
        return None
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if not forwarded_for or not any(address in network for network in trusted):
        return address
    for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
        try:
            candidate = ipaddress.ip_address(hop)
        except ValueError:
            # A malformed hop cannot be trusted; stop at the last good one.
            return address
        if not any(candidate in network for network in trusted):
            return candidate
        address = candidate
    return address


def referrer_host(referer: str | None, origin: str | None) -> str | None:
    for value in (origin, referer):
        if value:
            host = urlsplit(value).hostname
            if host:
                return host.lower()
    return None


def check_access(
    policy: KeyPolicy,
    key_id: int,
    *,
    endpoint: str | None,
    address: IPAddress | None,
    referrer: str | None,
    now: datetime | None = None,
) -> None:
    """Raise 401 or 403, with the reason, when the key may not make this call."""
    now = now or datetime.now(UTC)
    if policy.expires_at is not None and policy.expires_at <= now:
        raise AuthenticationError(
            f"API key {key_id} expired at {policy.expires_at.isoformat()}; use its replacement "
            "or ask an admin for a new key",
            code="api_key_expired",
        )
    if (
        endpoint is not None
        and policy.allowed_endpoints is not None
        and endpoint not in policy.allowed_endpoints
    ):
        raise PermissionDeniedError(
            f"API key {key_id} may not call the {endpoint} endpoint; it is limited to "
            + ", ".join(sorted(policy.allowed_endpoints)),
            code="endpoint_not_allowed",
        )
    if policy.allowed_networks is not None and (
        address is None or not any(address in network for network in policy.allowed_networks)
    ):
        raise PermissionDeniedError(
            f"API key {key_id} is not allowed from address {address}",
            code="ip_not_allowed",
        )
    if policy.allowed_referrers is not None:
        allowed = referrer is not None and any(
            referrer == domain or referrer.endswith("." + domain)
            for domain in policy.allowed_referrers
        )
        if not allowed:
            raise PermissionDeniedError(
                f"API key {key_id} is not allowed from referrer {referrer or '(none)'}",
                code="referrer_not_allowed",
            )
