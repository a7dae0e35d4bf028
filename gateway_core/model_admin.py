"""Model listings with admin price overrides applied, and the checks on changing them.

The proxy bills a model that has an override row at the override's prices
alone. The row replaces the catalog prices as a whole, long-prompt tiers
included. A NULL column falls back as gateway_core.pricing describes: cache
prices to the input price and reasoning to the output price.
``merge_overrides`` shows the same prices.

The ``save_*`` and ``delete_*`` functions check the caller's role before they
write, so a page that hides its forms is not the only guard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, select

from gateway_core import access, model_routes
from gateway_core.catalog import Catalog, ModelEntry, ModelPrices
from gateway_core.errors import InvalidRequestError, PermissionDeniedError
from gateway_core.schema import model_price_overrides

MANAGER_ROLES = frozenset({"owner", "admin"})
LISTING_SORT_KEYS = ("input_price", "output_price", "context_window")
# model_price_overrides stores NUMERIC(20, 10), so ten digits on each side of the point.
PRICE_DECIMAL_PLACES = 10
PRICE_LIMIT = Decimal(10) ** (20 - PRICE_DECIMAL_PLACES)


@dataclass(frozen=True)
class PriceOverride:
    """One row of model_price_overrides, with prices in USD per million tokens."""

    model_id: str
    prices: ModelPrices
    updated_by: str | None
    updated_at: datetime


@dataclass(frozen=True)
class ModelListing:
    """A model with the prices the proxy bills for it, and its catalog entry if it has one."""

    id: str
    provider: str
    # None for a model that has only a price override and no catalog entry.
    entry: ModelEntry | None
    prices: ModelPrices
    override: PriceOverride | None

    @property
    def overridden(self) -> bool:
        return self.override is not None

    @property
    def price_date(self) -> date | None:
        if self.override is not None:
            return self.override.updated_at.date()
        return self.entry.price_date if self.entry is not None else None

    @property
    def price_source(self) -> str:
        if self.override is not None:
            return f"Price override set by {self.override.updated_by or 'an unknown user'}"
        return self.entry.price_source if self.entry is not None else ""

    @property
    def price_is_estimate(self) -> bool:
        return self.override is None and self.entry is not None and self.entry.price_is_estimate


def can_manage_models(role: access.Actor | str) -> bool:
    """Return whether the principal may change price overrides, aliases and fallbacks.

    Prices and routes apply to every organization, so organization users may not.
    A bare role string is an installation-wide principal (see access.as_actor).
    """
    actor = access.as_actor(role)
    return actor.role in MANAGER_ROLES and actor.is_staff


def require_manager(role: access.Actor | str) -> None:
    actor = access.as_actor(role)
    if actor.role not in MANAGER_ROLES:
        raise PermissionDeniedError(
            f"only owners and admins can change model prices and routes, not role {actor.role!r}"
        )
    access.require_actor(actor, "models.manage")


def load_price_overrides(conn: Connection) -> dict[str, PriceOverride]:
    rows = conn.execute(select(model_price_overrides).order_by(model_price_overrides.c.model_id))
    return {
        row.model_id: PriceOverride(
            model_id=row.model_id,
            prices=ModelPrices(
                input=row.input,
                cached_input=row.cached_input,
                cache_write=row.cache_write,
                output=row.output,
                reasoning_output=row.reasoning_output,
            ),
            updated_by=row.updated_by,
            updated_at=row.updated_at,
        )
        for row in rows
    }


def merge_overrides(catalog: Catalog, overrides: Mapping[str, PriceOverride]) -> list[ModelListing]:
    """List catalog models in file order, then override-only models by id.

    A model with an override gets the override's prices in place of the catalog's.
    """
    listings = []
    for entry in catalog:
        override = overrides.get(entry.id)
        prices = override.prices if override is not None else entry.prices
        listings.append(ModelListing(entry.id, entry.provider, entry, prices, override))
    for model_id in sorted(set(overrides) - {entry.id for entry in catalog}):
        override = overrides[model_id]
        provider = model_id.partition("/")[0]
        listings.append(ModelListing(model_id, provider, None, override.prices, override))
    return listings


def effective_prices(conn: Connection, catalog: Catalog) -> list[ModelListing]:
    """Read the price overrides and list every model with the prices the proxy bills."""
    return merge_overrides(catalog, load_price_overrides(conn))


def search_listings(
    listings: Iterable[ModelListing],
    text: str | None = None,
    provider: str | None = None,
    max_input_price: Decimal | None = None,
    min_context: int | None = None,
    sort_by: str = "input_price",
) -> list[ModelListing]:
    """Filter and sort listings like Catalog.search, but on the billed prices.

    A model without a catalog entry has no context window, so it fails any
    ``min_context`` filter and sorts last by context window.
    """
    if sort_by not in LISTING_SORT_KEYS:
        raise ValueError(
            f"invalid sort_by {sort_by!r}, expected one of {', '.join(LISTING_SORT_KEYS)}"
        )
    needle = text.strip().casefold() if text else ""
    found = []
    for listing in listings:
        if provider is not None and listing.provider != provider:
            continue
        if max_input_price is not None and listing.prices.input > max_input_price:
            continue
        if min_context is not None and _context_window(listing) < min_context:
            continue
        if needle and not _matches(listing, needle):
            continue
        found.append(listing)
    found.sort(key=lambda listing: listing.id)
    found.sort(key=_LISTING_SORTS[sort_by])
    return found


def _context_window(listing: ModelListing) -> int:
    return listing.entry.context_window if listing.entry is not None else 0


def _matches(listing: ModelListing, needle: str) -> bool:
    names = [listing.id]
    if listing.entry is not None:
        names += [listing.entry.display_name, listing.entry.upstream_model]
    return any(needle in name.casefold() for name in names)


_LISTING_SORTS = {
    "input_price": lambda listing: listing.prices.input,
    "output_price": lambda listing: (
        listing.prices.output is None,
        listing.prices.output or Decimal(0),
    ),
    "context_window": lambda listing: -_context_window(listing),
}


def format_price(price: Decimal | None) -> str:
    """Write a price exactly, without an exponent and with at least two decimal places."""
    if price is None:
        return ""
    normalized = price.normalize()
    if normalized.as_tuple().exponent > -2:
        normalized = normalized.quantize(Decimal("0.01"))
    return f"{normalized:f}"


def parse_price_limit(text: str) -> Decimal | None:
    """Parse the max input price filter. Blank text means no limit."""
    return model_routes.parse_price(text.strip(), "max input price")


def check_storable_price(price: Decimal | None, field: str) -> None:
    """Reject a price that Postgres would round or could not store in NUMERIC(20, 10)."""
    if price is None:
        return
    if price.normalize().as_tuple().exponent < -PRICE_DECIMAL_PLACES:
        raise InvalidRequestError(
            f"{field} has more than {PRICE_DECIMAL_PLACES} decimal places, got {price}",
            param=field,
        )
    if price >= PRICE_LIMIT:
        raise InvalidRequestError(
            f"{field} must be less than {PRICE_LIMIT:f} USD per million tokens, got {price}",
            param=field,
        )


def save_price_override(
    conn: Connection,
    role: access.Actor | str,
    actor: str,
    model_id: str,
    prices: Mapping[str, str],
    entry: ModelEntry | None,
) -> None:
    """Check the role and the typed prices, then store them as the model's override.

    ``entry`` is the model's catalog entry. The output price is required
    unless the catalog has none for the model (embedding models), because the
    proxy bills output tokens of a blank output price at zero.
    """
    require_manager(role)
    cleaned = {field: prices.get(field, "").strip() for field in model_routes.PRICE_FIELDS}
    for field, text in cleaned.items():
        check_storable_price(model_routes.parse_price(text, field), field)
    generates_output = entry is None or entry.prices.output is not None
    if generates_output and not cleaned["output"]:
        raise InvalidRequestError(
            f"output price is required for {model_id}, because a blank output price "
            "bills output tokens at 0",
            param="output",
        )
    model_routes.set_price_override(conn, model_id, dict(cleaned), actor=actor)


def delete_price_override(conn: Connection, role: access.Actor | str, model_id: str) -> bool:
    require_manager(role)
    return model_routes.remove_price_override(conn, model_id)


def save_alias(
    conn: Connection, role: access.Actor | str, actor: str, alias: str, target: str
) -> None:
    require_manager(role)
    model_routes.set_alias(conn, alias.strip(), target, actor=actor)


def parse_fallback_list(model: str, text: str) -> list[str]:
    """Split one model id per line, skipping blank lines, and reject repeats and `model`."""
    fallbacks = [line.strip() for line in text.splitlines() if line.strip()]
    if not fallbacks:
        raise InvalidRequestError(
            "enter at least one fallback model id, or remove the route to clear its fallbacks",
            param="fallbacks",
        )
    if model in fallbacks:
        raise InvalidRequestError(
            f"{model} cannot be its own fallback, so list only other model ids",
            param="fallbacks",
        )
    repeated = sorted({item for item in fallbacks if fallbacks.count(item) > 1})
    if repeated:
        raise InvalidRequestError(
            f"fallback list names {', '.join(repeated)} more than once", param="fallbacks"
        )
    return fallbacks


def save_fallbacks(
    conn: Connection, role: access.Actor | str, actor: str, model: str, text: str
) -> list[str]:
    """Check the role, parse the typed list and store it as the model's fallbacks."""
    require_manager(role)
    fallbacks = parse_fallback_list(model, text)
    model_routes.set_fallbacks(conn, model, fallbacks, actor=actor)
    return fallbacks


def delete_route(conn: Connection, role: access.Actor | str, name: str) -> bool:
    require_manager(role)
    return model_routes.remove_route(conn, name)
