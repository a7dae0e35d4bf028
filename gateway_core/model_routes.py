"""Model aliases, fallback lists and price overrides set by admins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert

from gateway_core.errors import InvalidRequestError
from gateway_core.schema import model_price_overrides, model_routes

ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*/\S{1,190}$")


@dataclass(frozen=True)
class ModelRoute:
    name: str
    target: str | None
    fallbacks: tuple[str, ...]


def _check_model_id(value: str, field: str) -> None:
    if not MODEL_ID.match(value):
        raise InvalidRequestError(
            f"{field} must be a model id like 'openai/gpt-4o-mini', got {value!r}", param=field
        )


def set_alias(conn: Connection, alias: str, target: str, actor: str | None = None) -> None:
    """Point `alias` (a name without a slash) at a model id."""
    if "/" in alias or not ALIAS.match(alias):
        raise InvalidRequestError(
            f"alias must be letters, digits, '.', '_', ':' or '-' without '/', got {alias!r}",
            param="alias",
        )
    _check_model_id(target, "target")
    statement = insert(model_routes).values(name=alias, target=target, updated_by=actor)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[model_routes.c.name],
            set_={"target": target, "updated_by": actor, "updated_at": func.now()},
        )
    )


def set_fallbacks(
    conn: Connection, model: str, fallbacks: list[str], actor: str | None = None
) -> None:
    """Set the ordered model ids tried when `model` (an id or alias) fails."""
    if "/" in model:
        _check_model_id(model, "model")
    for fallback in fallbacks:
        _check_model_id(fallback, "fallbacks")
    statement = insert(model_routes).values(name=model, fallbacks=fallbacks, updated_by=actor)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[model_routes.c.name],
            set_={"fallbacks": fallbacks, "updated_by": actor, "updated_at": func.now()},
        )
    )


def remove_route(conn: Connection, name: str) -> bool:
    return conn.execute(delete(model_routes).where(model_routes.c.name == name)).rowcount > 0


def list_routes(conn: Connection) -> list[ModelRoute]:
    rows = conn.execute(
        select(model_routes.c.name, model_routes.c.target, model_routes.c.fallbacks).order_by(
            model_routes.c.name
        )
    )
    return [ModelRoute(name, target, tuple(fallbacks or ())) for name, target, fallbacks in rows]


PRICE_FIELDS = ("input", "cached_input", "cache_write", "output", "reasoning_output")


def parse_price(value: str | Decimal | None, field: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidRequestError(f"{field} must be a decimal number, got {value!r}") from exc
    if not price.is_finite() or price < 0:
        raise InvalidRequestError(f"{field} must be a non-negative number, got {value!r}")
    return price


def set_price_override(
    conn: Connection,
    model_id: str,
    prices: dict[str, str | Decimal | None],
    actor: str | None = None,
) -> None:
    """Store admin prices (USD per million tokens) that replace the catalog's."""
    _check_model_id(model_id, "model_id")
    unknown = set(prices) - set(PRICE_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown price fields: {', '.join(sorted(unknown))}")
    values = {field: parse_price(prices.get(field), field) for field in PRICE_FIELDS}
    if values["input"] is None:
        raise InvalidRequestError("an override needs at least the input price", param="input")
    statement = insert(model_price_overrides).values(model_id=model_id, updated_by=actor, **values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[model_price_overrides.c.model_id],
            set_={**values, "updated_by": actor, "updated_at": func.now()},
        )
    )


def remove_price_override(conn: Connection, model_id: str) -> bool:
    result = conn.execute(
        delete(model_price_overrides).where(model_price_overrides.c.model_id == model_id)
    )
    return result.rowcount > 0
