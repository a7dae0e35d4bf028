"""The shipped model catalog, its search, and the validation of malformed entries."""

from __future__ import annotations

import copy
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway_core.catalog import (
    CATALOG_PATH,
    PRICE_FIELDS,
    Catalog,
    CatalogError,
    load_catalog,
    parse_catalog,
)

REQUIRED_PROVIDERS = {
    "openai",
    "anthropic",
    "google",
    "openrouter",
    "azure",
    "groq",
    "together",
    "deepinfra",
    "mistral",
    "ollama",
    "sandbox",
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def raw_models() -> list[dict[str, Any]]:
    return json.loads(CATALOG_PATH.read_text(encoding="utf-8"))["models"]


# -- the shipped catalog ------------------------------------------------------


def test_catalog_has_100_models(catalog: Catalog) -> None:
    assert len(catalog) >= 100


def test_catalog_covers_providers(catalog: Catalog) -> None:
    missing = REQUIRED_PROVIDERS - set(catalog.providers())
    assert missing == set()
    for provider in REQUIRED_PROVIDERS:
        assert catalog.by_provider(provider), provider


def test_catalog_ids_unique(raw_models: list[dict[str, Any]]) -> None:
    ids = [model["id"] for model in raw_models]
    duplicates = sorted({model_id for model_id in ids if ids.count(model_id) > 1})
    assert duplicates == []


def test_catalog_prices_are_strings(raw_models: list[dict[str, Any]]) -> None:
    for model in raw_models:
        tables = [model["prices_per_million"], model.get("prices_per_image", {})]
        tables += [tier["prices_per_million"] for tier in model.get("price_tiers", [])]
        for table in tables:
            for name, value in table.items():
                assert value is None or isinstance(value, str), (model["id"], name)


def test_catalog_prices_non_negative(catalog: Catalog) -> None:
    for entry in catalog:
        tables = [entry.prices] + [tier.prices for tier in entry.prices.tiers]
        for prices in tables:
            assert isinstance(prices.input, Decimal), entry.id
            assert prices.input >= 0, entry.id
            for name in PRICE_FIELDS:
                value = getattr(prices, name)
                assert value is None or (isinstance(value, Decimal) and value >= 0), (
                    entry.id,
                    name,
                )
            for name, value in prices.extra.items():
                assert value >= 0, (entry.id, name)
        for label, value in entry.prices_per_image.items():
            assert value >= 0, (entry.id, label)


def test_catalog_dates_and_sources(catalog: Catalog) -> None:
    for entry in catalog:
        assert isinstance(entry.price_date, date), entry.id
        assert entry.price_date >= date(2026, 1, 1), entry.id
        assert len(entry.price_source) > 20, entry.id


def test_catalog_estimates_give_reason(catalog: Catalog) -> None:
    estimates = [entry for entry in catalog if entry.price_is_estimate]
    assert estimates, "the catalog marks no estimate"
    for entry in estimates:
        reason = entry.price_source.split(":", 1)[1]
        assert len(reason.strip()) > 30, entry.id


def test_catalog_ids_name_provider(catalog: Catalog) -> None:
    for entry in catalog:
        assert entry.id.startswith(entry.provider + "/"), entry.id
        assert entry.upstream_model, entry.id


def test_catalog_limits_positive(catalog: Catalog) -> None:
    for entry in catalog:
        assert entry.context_window > 0, entry.id
        assert entry.max_output_tokens >= 0, entry.id
        assert entry.max_output_tokens <= entry.context_window, entry.id


def test_catalog_sandbox_models_free(catalog: Catalog) -> None:
    ids = {entry.id for entry in catalog.by_provider("sandbox")}
    assert {"sandbox/echo", "sandbox/reverse", "sandbox/lorem"} <= ids
    for entry in catalog.by_provider("sandbox"):
        assert entry.prices.input == 0, entry.id
        assert entry.prices.output == 0, entry.id


def test_catalog_ollama_models_free(catalog: Catalog) -> None:
    for entry in catalog.by_provider("ollama"):
        assert entry.prices.input == 0, entry.id
        assert entry.prices.output in (None, 0), entry.id


def test_catalog_has_embeddings_and_images(catalog: Catalog) -> None:
    small = catalog.get("openai/text-embedding-3-small")
    assert small is not None
    assert small.endpoints == ("embeddings",)
    assert small.prices.input == Decimal("0.02")
    image_models = [entry for entry in catalog if "images" in entry.endpoints]
    assert any(entry.provider == "openai" for entry in image_models)


def test_catalog_known_price(catalog: Catalog) -> None:
    entry = catalog.get("openai/gpt-4o-mini")
    assert entry is not None
    assert entry.prices.input == Decimal("0.15")
    assert entry.prices.cached_input == Decimal("0.075")
    assert entry.prices.output == Decimal("0.60")


def test_catalog_tiers_select_by_prompt(catalog: Catalog) -> None:
    entry = catalog.get("anthropic/claude-haiku-5-5")
    assert entry is not None
    assert entry.prices.for_prompt_tokens(100_000).input == Decimal("0.10")
    assert entry.prices.for_prompt_tokens(100_001).input == Decimal("0.50")


# -- lookup and search --------------------------------------------------------


def test_get_unknown_returns_none(catalog: Catalog) -> None:
    assert catalog.get("openai/no-such-model") is None
    assert "openai/no-such-model" not in catalog


def test_all_keeps_file_order(catalog: Catalog, raw_models: list[dict[str, Any]]) -> None:
    assert [entry.id for entry in catalog.all()] == [model["id"] for model in raw_models]


def test_search_text_is_case_insensitive(catalog: Catalog) -> None:
    found = catalog.search(text="EMBEDDING-3")
    ids = {entry.id for entry in found}
    assert "openai/text-embedding-3-small" in ids
    assert "azure/text-embedding-3-large" in ids
    assert all("embedding-3" in entry.id for entry in found)


def test_search_by_provider(catalog: Catalog) -> None:
    found = catalog.search(provider="groq")
    assert found
    assert {entry.provider for entry in found} == {"groq"}


def test_search_price_and_context(catalog: Catalog) -> None:
    found = catalog.search(max_input_price=Decimal("0.50"), min_context=1_000_000)
    assert found
    for entry in found:
        assert entry.prices.input <= Decimal("0.50"), entry.id
        assert entry.context_window >= 1_000_000, entry.id


def test_search_price_limit_as_string(catalog: Catalog) -> None:
    assert catalog.search(max_input_price="0.50") == catalog.search(max_input_price=Decimal("0.5"))


def test_search_sorts_by_input_price(catalog: Catalog) -> None:
    prices = [entry.prices.input for entry in catalog.search(provider="openai")]
    assert prices == sorted(prices)


def test_search_sorts_by_output_price(catalog: Catalog) -> None:
    found = catalog.search(provider="openai", sort_by="output_price")
    priced = [entry.prices.output for entry in found if entry.prices.output is not None]
    assert priced == sorted(priced)
    unpriced = [entry.prices.output is None for entry in found]
    assert unpriced == sorted(unpriced), "models without an output price must sort last"


def test_search_sorts_by_context(catalog: Catalog) -> None:
    windows = [entry.context_window for entry in catalog.search(sort_by="context_window")]
    assert windows == sorted(windows, reverse=True)


def test_search_ties_break_by_id(catalog: Catalog) -> None:
    found = catalog.search(provider="ollama")
    assert [entry.id for entry in found] == sorted(entry.id for entry in found)


def test_search_rejects_bad_sort(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="sort_by"):
        catalog.search(sort_by="price")


def test_search_rejects_float_price(catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        catalog.search(max_input_price=0.5)  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------


def _model(model_id: str = "acme/widget-1", **changes: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": model_id,
        "provider": model_id.split("/", 1)[0],
        "upstream_model": model_id.split("/", 1)[1],
        "display_name": "Widget 1",
        "context_window": 128_000,
        "max_output_tokens": 4_096,
        "modalities": {"input": ["text"], "output": ["text"]},
        "endpoints": ["chat"],
        "prices_per_million": {
            "input": "1.00",
            "cached_input": "0.10",
            "cache_write": None,
            "output": "2.00",
            "reasoning_output": None,
        },
        "price_date": "2026-12-01",
        "price_source": "https://example.invalid/pricing (test fixture)",
    }
    model.update(changes)
    return model


def _document(*models: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, "generated_at": "2026-12-04T00:00:00Z", "models": list(models)}


def _with_price(name: str, value: Any) -> dict[str, Any]:
    model = _model()
    model["prices_per_million"][name] = value
    return model


def _without(field: str) -> dict[str, Any]:
    model = _model()
    del model[field]
    return model


def test_valid_document_parses() -> None:
    catalog = parse_catalog(_document(_model(), _model("acme/widget-2")))
    assert len(catalog) == 2
    entry = catalog.get("acme/widget-1")
    assert entry is not None
    assert entry.prices.input == Decimal("1.00")
    assert entry.price_date == date(2026, 12, 1)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (_without("context_window"), "context_window"),
        (_without("price_source"), "price_source"),
        (_with_price("input", "-1.00"), "prices_per_million.input"),
        (_with_price("output", "1e-6"), "prices_per_million.output"),
        (_with_price("output", "NaN"), "prices_per_million.output"),
        (_with_price("output", " 2.50"), "prices_per_million.output"),
        (_with_price("output", "2,50"), "prices_per_million.output"),
        (_with_price("output", 2.5), "prices_per_million.output"),
        (_with_price("output", 2), "prices_per_million.output"),
        (_with_price("output", None), "prices_per_million.output"),
        (_with_price("input", None), "prices_per_million.input"),
        (_with_price("image_input", "-0.5"), "prices_per_million.image_input"),
        (_model(context_window=0), "context_window"),
        (_model(context_window="128000"), "context_window"),
        (_model(max_output_tokens=True), "max_output_tokens"),
        (_model(price_date="2026-13-01"), "price_date"),
        (_model(price_date="1 Dec 2026"), "price_date"),
        (_model(price_source=""), "price_source"),
        (_model(endpoints=["chat", "fax"]), "endpoints"),
        (_model(endpoints=[]), "endpoints"),
        (_model(modalities={"input": ["text"]}), "modalities.output"),
        (_model(modalities={"input": ["smell"], "output": ["text"]}), "modalities.input"),
        (_model(provider="other"), "id"),
        (_model(colour="blue"), "colour"),
        (_model(prices_per_image={"standard": "0.04.1"}), "prices_per_image.standard"),
    ],
)
def test_invalid_entry_names_model_and_field(model: dict[str, Any], field: str) -> None:
    with pytest.raises(CatalogError) as raised:
        parse_catalog(_document(_model("acme/widget-0"), model))
    message = str(raised.value)
    assert "acme/widget-1" in message
    assert f"'{field}'" in message


def test_invalid_missing_price_field() -> None:
    model = _model()
    del model["prices_per_million"]["cache_write"]
    with pytest.raises(CatalogError, match=r"acme/widget-1.*cache_write.*missing"):
        parse_catalog(_document(model))


def test_invalid_duplicate_id() -> None:
    with pytest.raises(CatalogError, match=r"acme/widget-1.*duplicate"):
        parse_catalog(_document(_model(), _model()))


def test_invalid_tiers_must_increase() -> None:
    tier_prices = copy.deepcopy(_model()["prices_per_million"])
    tiers = [
        {"above_prompt_tokens": 200_000, "prices_per_million": tier_prices},
        {"above_prompt_tokens": 100_000, "prices_per_million": tier_prices},
    ]
    with pytest.raises(CatalogError, match=r"acme/widget-1.*price_tiers\[1\]"):
        parse_catalog(_document(_model(price_tiers=tiers)))


def test_invalid_entry_without_id() -> None:
    model = _without("id")
    with pytest.raises(CatalogError, match=r"model '#0'.*'id' is missing"):
        parse_catalog(_document(model))


def test_embedding_may_lack_output_price() -> None:
    model = _model(
        modalities={"input": ["text"], "output": ["embedding"]}, endpoints=["embeddings"]
    )
    model["prices_per_million"]["output"] = None
    entry = parse_catalog(_document(model)).get("acme/widget-1")
    assert entry is not None
    assert entry.prices.output is None


@pytest.mark.parametrize(
    "document",
    [[], {"version": 2, "models": []}, {"version": 1}, {"version": 1, "models": {}}],
)
def test_invalid_document_shape(document: Any) -> None:
    with pytest.raises(CatalogError):
        parse_catalog(document)


def test_load_rejects_json_float_price(tmp_path: Path) -> None:
    text = json.dumps(_document(_model())).replace('"output": "2.00"', '"output": 2.00')
    path = tmp_path / "models.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match=r"acme/widget-1.*prices_per_million\.output"):
        load_catalog(path)


def test_load_rejects_nan_constant(tmp_path: Path) -> None:
    text = json.dumps(_document(_model())).replace("128000", "NaN")
    path = tmp_path / "models.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match="NaN"):
        load_catalog(path)


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="failed to read"):
        load_catalog(tmp_path / "absent.json")
