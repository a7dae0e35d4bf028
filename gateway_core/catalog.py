"""Model catalog: the models the gateway can route to, with limits and prices.

The catalog lives in ``data/models.json``. Every price is USD per million
tokens, written in the file as a decimal string ("2.50") so that no price ever
passes through a float. ``load_catalog`` validates the whole file and raises
``CatalogError`` naming the model and the field at the first malformed entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway_core.config import DATA_DIR

CATALOG_PATH = DATA_DIR / "models.json"
CATALOG_VERSION = 1

PRICE_FIELDS = ("input", "cached_input", "cache_write", "output", "reasoning_output")
ENDPOINTS = frozenset({"chat", "completions", "embeddings", "images", "responses", "messages"})
MODALITIES = frozenset({"text", "image", "audio", "video", "pdf", "embedding"})
SORT_KEYS = ("input_price", "output_price", "context_window", "id", "display_name")

# Matches a non-negative plain decimal such as "2.50" (no sign, exponent, NaN or spaces).
_DECIMAL_TEXT = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")
_PRICE_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_REQUIRED_MODEL_KEYS = frozenset(
    {
        "id",
        "provider",
        "upstream_model",
        "display_name",
        "context_window",
        "max_output_tokens",
        "modalities",
        "endpoints",
        "prices_per_million",
        "price_date",
        "price_source",
    }
)
_OPTIONAL_MODEL_KEYS = frozenset({"price_tiers", "prices_per_image"})
_ESTIMATE_PREFIX = "estimate:"


class CatalogError(ValueError):
    """The catalog file is missing, is not valid JSON, or has a malformed entry."""


@dataclass(frozen=True)
class PriceTier:
    """Prices that replace the base prices when a request's prompt is long.

    Providers bill the whole request at the tier price, output included, once
    its prompt (cached and cache-write tokens counted) exceeds the threshold.
    """

    above_prompt_tokens: int
    prices: ModelPrices


@dataclass(frozen=True)
class ModelPrices:
    """USD prices per million tokens. None means the provider has no such price."""

    input: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    output: Decimal | None = None
    reasoning_output: Decimal | None = None
    # Named extra prices per million tokens, such as "image_input".
    extra: Mapping[str, Decimal] = field(default_factory=dict, hash=False)
    tiers: tuple[PriceTier, ...] = ()

    def for_prompt_tokens(self, prompt_tokens: int) -> ModelPrices:
        """Return the prices that apply to a request with this many prompt tokens."""
        selected = self
        threshold = -1
        for tier in self.tiers:
            if threshold < tier.above_prompt_tokens < prompt_tokens:
                selected = tier.prices
                threshold = tier.above_prompt_tokens
        return selected


@dataclass(frozen=True)
class ModelEntry:
    """One routable model: where it runs, what it accepts, and what it costs."""

    id: str
    provider: str
    upstream_model: str
    display_name: str
    context_window: int
    max_output_tokens: int
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    endpoints: tuple[str, ...]
    prices: ModelPrices
    price_date: date
    price_source: str
    # USD per generated image, keyed by a quality/size label such as "low/1024x1024".
    prices_per_image: Mapping[str, Decimal] = field(default_factory=dict, hash=False)

    @property
    def price_is_estimate(self) -> bool:
        """True when the catalog marks the whole price as an estimate."""
        return self.price_source.lower().startswith(_ESTIMATE_PREFIX)


class Catalog:
    """An in-memory, read-only set of models keyed by id, in file order."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.id in self._entries:
                raise CatalogError(f"model {entry.id!r}: duplicate id")
            self._entries[entry.id] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def get(self, model_id: str) -> ModelEntry | None:
        return self._entries.get(model_id)

    def all(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def providers(self) -> list[str]:
        return sorted({entry.provider for entry in self._entries.values()})

    def by_provider(self, name: str) -> list[ModelEntry]:
        return [entry for entry in self._entries.values() if entry.provider == name]

    def search(
        self,
        text: str | None = None,
        provider: str | None = None,
        max_input_price: Decimal | int | str | None = None,
        min_context: int | None = None,
        sort_by: str = "input_price",
    ) -> list[ModelEntry]:
        """Filter models and sort them, breaking ties by id.

        ``text`` matches a case-insensitive substring of the id, display name
        or upstream model name. ``max_input_price`` is USD per million input
        tokens and must not be a float. Prices sort cheapest first, context
        windows largest first, and models without an output price sort last.
        """
        if sort_by not in SORT_KEYS:
            raise ValueError(f"invalid sort_by {sort_by!r}: use one of {', '.join(SORT_KEYS)}")
        limit = _price_limit(max_input_price)
        needle = text.casefold() if text else None
        found = []
        for entry in self._entries.values():
            if provider is not None and entry.provider != provider:
                continue
            if limit is not None and entry.prices.input > limit:
                continue
            if min_context is not None and entry.context_window < min_context:
                continue
            if needle is not None and not _matches(entry, needle):
                continue
            found.append(entry)
        found.sort(key=lambda entry: entry.id)
        found.sort(key=_SORT_FUNCTIONS[sort_by])
        return found


def _matches(entry: ModelEntry, needle: str) -> bool:
    haystack = (entry.id, entry.display_name, entry.upstream_model)
    return any(needle in value.casefold() for value in haystack)


def _price_limit(value: Decimal | int | str | None) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float | bool):
        raise TypeError("max_input_price must be a Decimal, int or decimal string, not a float")
    limit = Decimal(value)
    if not limit.is_finite():
        raise ValueError(f"max_input_price must be a finite number, got {value!r}")
    return limit


_SORT_FUNCTIONS = {
    "input_price": lambda entry: entry.prices.input,
    "output_price": lambda entry: (
        entry.prices.output is None,
        entry.prices.output or Decimal(0),
    ),
    "context_window": lambda entry: -entry.context_window,
    "id": lambda entry: entry.id,
    "display_name": lambda entry: entry.display_name.casefold(),
}


def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """Read and validate the catalog file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"failed to read model catalog {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"model catalog {path} is not valid JSON: {exc}") from exc
    except CatalogError as exc:
        raise CatalogError(f"model catalog {path}: {exc}") from exc
    return parse_catalog(document)


def _reject_constant(name: str) -> Any:
    raise CatalogError(f"{name} is not a valid JSON number")


def parse_catalog(document: Any) -> Catalog:
    """Validate a decoded catalog document and build a Catalog from it."""
    if not isinstance(document, dict):
        raise CatalogError("catalog must be a JSON object with 'version' and 'models'")
    if document.get("version") != CATALOG_VERSION:
        raise CatalogError(
            f"unsupported catalog version {document.get('version')!r}: expected {CATALOG_VERSION}"
        )
    models = document.get("models")
    if not isinstance(models, list):
        raise CatalogError("catalog field 'models' must be a list")
    return Catalog(_parse_entry(raw, index) for index, raw in enumerate(models))


def _parse_entry(raw: Any, index: int) -> ModelEntry:
    if not isinstance(raw, dict):
        raise CatalogError(f"model #{index}: entry must be a JSON object")
    label = raw.get("id") if isinstance(raw.get("id"), str) else f"#{index}"
    check = _FieldCheck(f"model {label!r}")
    missing = sorted(_REQUIRED_MODEL_KEYS - raw.keys())
    if missing:
        raise check.error(missing[0], "is missing")
    unknown = sorted(raw.keys() - _REQUIRED_MODEL_KEYS - _OPTIONAL_MODEL_KEYS)
    if unknown:
        raise check.error(unknown[0], "is not a known field")

    model_id = check.text(raw, "id")
    provider = check.text(raw, "provider")
    if not model_id.startswith(provider + "/") or model_id == provider + "/":
        raise check.error("id", f"must be '{provider}/<model>', got {model_id!r}")
    output_modalities = check.names(raw["modalities"], "modalities.output", MODALITIES)
    generates = output_modalities != ("embedding",)
    prices = _parse_prices(raw["prices_per_million"], "prices_per_million", check, generates)
    tiers = _parse_tiers(raw.get("price_tiers", []), check, generates)
    return ModelEntry(
        id=model_id,
        provider=provider,
        upstream_model=check.text(raw, "upstream_model"),
        display_name=check.text(raw, "display_name"),
        context_window=check.count(raw, "context_window", minimum=1),
        max_output_tokens=check.count(raw, "max_output_tokens", minimum=0),
        input_modalities=check.names(raw["modalities"], "modalities.input", MODALITIES),
        output_modalities=output_modalities,
        endpoints=check.names(raw, "endpoints", ENDPOINTS),
        prices=replace(prices, tiers=tiers),
        price_date=check.day(raw, "price_date"),
        price_source=check.text(raw, "price_source"),
        prices_per_image=_parse_price_map(raw.get("prices_per_image", {}), check),
    )


def _parse_prices(raw: Any, name: str, check: _FieldCheck, generates: bool) -> ModelPrices:
    if not isinstance(raw, dict):
        raise check.error(name, "must be an object of decimal strings")
    missing = [key for key in PRICE_FIELDS if key not in raw]
    if missing:
        raise check.error(f"{name}.{missing[0]}", "is missing (use null when there is no price)")
    if raw["input"] is None:
        raise check.error(f"{name}.input", "must be a decimal string, not null")
    # Only an embedding model may lack an output price, because it generates no tokens.
    if raw["output"] is None and generates:
        raise check.error(f"{name}.output", "must be set for a model that generates output")
    extra: dict[str, Decimal] = {}
    for key in sorted(raw.keys() - set(PRICE_FIELDS)):
        if not _PRICE_KEY.match(key):
            raise check.error(f"{name}.{key}", "is not a valid price name")
        extra[key] = check.price(raw[key], f"{name}.{key}")
    return ModelPrices(
        input=check.price(raw["input"], f"{name}.input"),
        cached_input=check.optional_price(raw["cached_input"], f"{name}.cached_input"),
        cache_write=check.optional_price(raw["cache_write"], f"{name}.cache_write"),
        output=check.optional_price(raw["output"], f"{name}.output"),
        reasoning_output=check.optional_price(raw["reasoning_output"], f"{name}.reasoning_output"),
        extra=MappingProxyType(extra),
    )


def _parse_tiers(raw: Any, check: _FieldCheck, generates: bool) -> tuple[PriceTier, ...]:
    if not isinstance(raw, list):
        raise check.error("price_tiers", "must be a list")
    tiers = []
    previous = 0
    for position, item in enumerate(raw):
        name = f"price_tiers[{position}]"
        if not isinstance(item, dict) or set(item) != {"above_prompt_tokens", "prices_per_million"}:
            raise check.error(name, "must have exactly above_prompt_tokens and prices_per_million")
        threshold = check.count(item, "above_prompt_tokens", minimum=1, name=name)
        if threshold <= previous:
            raise check.error(f"{name}.above_prompt_tokens", "must increase from tier to tier")
        previous = threshold
        prices = _parse_prices(
            item["prices_per_million"], f"{name}.prices_per_million", check, generates
        )
        tiers.append(PriceTier(above_prompt_tokens=threshold, prices=prices))
    return tuple(tiers)


def _parse_price_map(raw: Any, check: _FieldCheck) -> Mapping[str, Decimal]:
    if not isinstance(raw, dict):
        raise check.error("prices_per_image", "must be an object of decimal strings")
    prices = {str(key): check.price(value, f"prices_per_image.{key}") for key, value in raw.items()}
    return MappingProxyType(prices)


class _FieldCheck:
    """Type checks for one catalog entry. Every error names the model and the field."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def error(self, name: str, problem: str) -> CatalogError:
        return CatalogError(f"{self.subject}: field '{name}' {problem}")

    def text(self, raw: dict[str, Any], key: str) -> str:
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def count(self, raw: dict[str, Any], key: str, *, minimum: int, name: str = "") -> int:
        value = raw[key]
        full_name = f"{name}.{key}" if name else key
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(full_name, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def names(self, raw: Any, key: str, allowed: frozenset[str]) -> tuple[str, ...]:
        leaf = key.rpartition(".")[2]
        if not isinstance(raw, dict) or leaf not in raw:
            raise self.error(key, "is missing")
        value = raw[leaf]
        if not isinstance(value, list) or not value:
            raise self.error(key, f"must be a non-empty list, got {value!r}")
        for item in value:
            if item not in allowed:
                raise self.error(
                    key, f"has invalid value {item!r}, expected one of {', '.join(sorted(allowed))}"
                )
        if len(set(value)) != len(value):
            raise self.error(key, "lists a value twice")
        return tuple(value)

    def optional_price(self, value: Any, name: str) -> Decimal | None:
        return None if value is None else self.price(value, name)

    def price(self, value: Any, name: str) -> Decimal:
        if not isinstance(value, str) or not _DECIMAL_TEXT.match(value):
            raise self.error(
                name, f'must be a non-negative decimal string such as "2.50", got {value!r}'
            )
        return Decimal(value)

    def day(self, raw: dict[str, Any], key: str) -> date:
        value = raw[key]
        try:
            if not isinstance(value, str) or len(value) != 10:
                raise ValueError(value)
            return date.fromisoformat(value)
        except ValueError:
            raise self.error(key, f"must be a YYYY-MM-DD date, got {value!r}") from None
