"""The Models page run headless with AppTest, and gateway_core.model_admin on its own.

The page tests sign in through app.py against the test database, like
tests/test_app_pages.py, whose helpers and fixtures they import.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select
from streamlit.testing.v1 import AppTest

from gateway_core import model_admin, model_routes
from gateway_core.catalog import ModelPrices, load_catalog
from gateway_core.directory import ROLES
from gateway_core.errors import InvalidRequestError, PermissionDeniedError
from gateway_core.model_admin import PriceOverride
from gateway_core.schema import model_price_overrides
from gateway_core.schema import model_routes as model_routes_table
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    APP_PATH,
    TIMEOUT_SECONDS,
    add_user,
    app_env,
    click,
    cookies,
    open_page,
    sign_in,
    start_app,
    values,
)

CATALOG = load_catalog()
INPUT_COLUMN = "Input (USD / 1M tokens)"
OUTPUT_COLUMN = "Output (USD / 1M tokens)"
CACHED_INPUT_COLUMN = "Cached input (USD / 1M tokens)"
# A chat model whose catalog prices have a cached input price and long-prompt tiers.
TIERED_MODEL = "openai/gpt-6.2-astra"
EMBEDDING_MODEL = "openai/text-embedding-3-small"


def models_page(engine: Engine, role: str) -> AppTest:
    add_user(engine, "alice", role)
    at = sign_in(start_app(), "alice")
    return open_page(at, "pages/models.py")


def catalog_table(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value


def listed_ids(at: AppTest) -> list[str]:
    return catalog_table(at)["Model id"].tolist()


def row_for(at: AppTest, model_id: str) -> pd.Series:
    return catalog_table(at).set_index("Model id").loc[model_id]


def override_rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(model_price_overrides)).all()


def type_override(at: AppTest, model_id: str, prices: dict[str, str]) -> AppTest:
    at.selectbox(key="override_model").set_value(model_id)
    for field, text in prices.items():
        at.text_input(key=f"override_{field}").input(text)
    return click(at, "Save override")


# Browsing


@pytest.mark.usefixtures("cookies")
def test_page_lists_whole_catalog(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    assert "Models" in values(at.title)
    ids = listed_ids(at)
    assert len(ids) >= 100
    assert sorted(ids) == sorted(entry.id for entry in CATALOG)
    table = catalog_table(at)
    for label in ("Input", "Cached input", "Cache write", "Output", "Reasoning output"):
        assert f"{label} (USD / 1M tokens)" in table.columns
    assert not table["Overridden"].any()


@pytest.mark.usefixtures("cookies")
def test_prices_are_exact_strings(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    row = row_for(at, TIERED_MODEL)
    entry = CATALOG.get(TIERED_MODEL)
    assert Decimal(row[INPUT_COLUMN]) == entry.prices.input
    assert Decimal(row[CACHED_INPUT_COLUMN]) == entry.prices.cached_input
    assert row["Higher prices above (prompt tokens)"] == entry.prices.tiers[0].above_prompt_tokens
    assert row["Price source"] == entry.price_source


@pytest.mark.usefixtures("cookies")
def test_search_text_narrows_table(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.text_input(key="models_search").input("HAIKU")
    at.run()

    expected = {"anthropic/claude-haiku-4-5", "anthropic/claude-haiku-5-5"}
    assert set(listed_ids(at)) == expected


@pytest.mark.usefixtures("cookies")
def test_provider_filter_narrows_table(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.selectbox(key="models_provider").set_value("anthropic")
    at.run()

    expected = {entry.id for entry in CATALOG if entry.provider == "anthropic"}
    assert len(expected) > 1
    assert set(listed_ids(at)) == expected


@pytest.mark.usefixtures("cookies")
def test_price_and_context_filters(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.text_input(key="models_max_input").input("0.50")
    at.number_input(key="models_min_context").set_value(100_000)
    at.run()

    expected = {
        entry.id
        for entry in CATALOG
        if entry.prices.input <= Decimal("0.50") and entry.context_window >= 100_000
    }
    assert expected
    assert set(listed_ids(at)) == expected


@pytest.mark.usefixtures("cookies")
def test_sort_by_input_price(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.selectbox(key="models_sort").set_value("input_price")
    at.run()

    prices = [Decimal(text) for text in catalog_table(at)[INPUT_COLUMN]]
    assert prices[0] == min(entry.prices.input for entry in CATALOG)
    assert prices == sorted(prices)


@pytest.mark.usefixtures("cookies")
def test_sort_by_context_window(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.selectbox(key="models_sort").set_value("context_window")
    at.run()

    windows = catalog_table(at)["Context window"].tolist()
    assert windows[0] == max(entry.context_window for entry in CATALOG)
    assert windows == sorted(windows, reverse=True)


@pytest.mark.usefixtures("cookies")
def test_no_match_says_what_to_do(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.text_input(key="models_search").input("no-such-model")
    at.run()

    assert any(message.startswith("No models match these filters.") for message in values(at.info))
    assert not at.dataframe


@pytest.mark.usefixtures("cookies")
def test_invalid_max_price_shows_error(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    at.text_input(key="models_max_input").input("cheap")
    at.run()

    assert any(
        message.startswith("Catalog not filtered: max input price must be a decimal number")
        for message in values(at.error)
    )
    assert not at.dataframe


# Access


@pytest.mark.usefixtures("cookies")
def test_viewer_gets_no_admin_forms(engine: Engine) -> None:
    at = models_page(engine, "viewer")

    assert not model_admin.can_manage_models("viewer")
    button_labels = [button.label for button in at.button]
    for label in ("Save override", "Remove override", "Save alias", "Save fallbacks"):
        assert label not in button_labels
    assert "override_input" not in [widget.key for widget in at.text_input]
    assert "Owners and admins can set price overrides, aliases and fallbacks here." in values(
        at.caption
    )


@pytest.mark.usefixtures("cookies")
def test_every_role_sees_models_page(engine: Engine) -> None:
    # All users exist before the first sign-in, because app.py caches the accounts.
    for role in ROLES:
        add_user(engine, f"user-{role}", role)
    for role in ROLES:
        at = sign_in(start_app(), f"user-{role}")

        assert "models" in at.session_state["gatewayz_allowed_pages"], role


@pytest.mark.usefixtures("app_env")
def test_page_run_directly_stops() -> None:
    # Before any run, AppTest runs the page file without app.py, as Streamlit
    # does for the first request to /models after the server starts.
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page("pages/models.py")
    at.run()

    assert "Sign in to browse models: open the app's home page." in values(at.error)
    assert not at.dataframe
    assert not at.text_input


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_managers_can_manage_models(role: str) -> None:
    assert model_admin.can_manage_models(role)


@pytest.mark.parametrize("role", ["viewer", "billing", "researcher", "team_admin", "", "Owner"])
def test_others_cannot_manage_models(role: str) -> None:
    assert not model_admin.can_manage_models(role)


def test_viewer_write_rejected(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        model_admin.save_price_override(
            conn, "viewer", "victor", TIERED_MODEL, {"input": "1", "output": "2"}, None
        )
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        model_admin.save_alias(conn, "viewer", "victor", "fast", TIERED_MODEL)
    assert override_rows(engine) == []
    with engine.connect() as conn:
        assert model_routes.list_routes(conn) == []


# Price overrides


@pytest.mark.usefixtures("cookies")
def test_admin_sets_price_override(engine: Engine) -> None:
    at = models_page(engine, "admin")

    type_override(at, TIERED_MODEL, {"input": "1.2345678901", "output": " 3.5 "})

    assert f"Saved the price override for {TIERED_MODEL}." in values(at.success)
    (row,) = override_rows(engine)
    assert row.model_id == TIERED_MODEL
    assert isinstance(row.input, Decimal)
    assert row.input == Decimal("1.2345678901")
    assert row.output == Decimal("3.5")
    assert row.cached_input is None
    assert row.updated_by == "alice"
    listed_row = row_for(at, TIERED_MODEL)
    assert listed_row[INPUT_COLUMN] == "1.2345678901"
    assert listed_row[OUTPUT_COLUMN] == "3.50"
    # The override replaces every catalog price, so the catalog's cached price is gone.
    assert listed_row[CACHED_INPUT_COLUMN] == ""
    assert bool(listed_row["Overridden"])
    assert listed_row["Price source"] == "Price override set by alice"
    assert at.text_input(key="override_input").value == ""


@pytest.mark.usefixtures("cookies")
def test_filter_uses_overridden_price(engine: Engine) -> None:
    assert CATALOG.get(TIERED_MODEL).prices.input > 0
    at = models_page(engine, "owner")

    type_override(at, TIERED_MODEL, {"input": "0", "output": "0"})
    at.text_input(key="models_max_input").input("0")
    at.run()

    assert TIERED_MODEL in listed_ids(at)
    assert set(catalog_table(at)[INPUT_COLUMN]) == {"0.00"}


@pytest.mark.usefixtures("cookies")
@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"input": "abc", "output": "1"}, "input must be a decimal number"),
        ({"input": "-1", "output": "1"}, "input must be a non-negative number"),
        ({"input": "NaN", "output": "1"}, "input must be a non-negative number"),
        ({"input": "0.12345678901", "output": "1"}, "input has more than 10 decimal places"),
        ({"input": "10000000000", "output": "1"}, "input must be less than 10000000000"),
        ({"input": "", "output": "1"}, "an override needs at least the input price"),
        ({"input": "1"}, "output price is required"),
        ({"input": "1", "output": "2", "cache_write": "1,5"}, "cache_write must be a decimal"),
    ],
)
def test_invalid_override_rejected(engine: Engine, prices: dict[str, str], message: str) -> None:
    at = models_page(engine, "admin")

    type_override(at, TIERED_MODEL, prices)

    errors = values(at.error)
    assert len(errors) == 1
    assert errors[0].startswith("Override not saved: ")
    assert message in errors[0]
    assert override_rows(engine) == []
    assert not row_for(at, TIERED_MODEL)["Overridden"]


@pytest.mark.usefixtures("cookies")
def test_embedding_override_without_output(engine: Engine) -> None:
    at = models_page(engine, "admin")

    type_override(at, EMBEDDING_MODEL, {"input": "0.01"})

    assert not at.error
    (row,) = override_rows(engine)
    assert row.input == Decimal("0.01")
    assert row.output is None


@pytest.mark.usefixtures("cookies")
def test_admin_removes_price_override(engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(conn, TIERED_MODEL, {"input": "1", "output": "2"})
    at = models_page(engine, "admin")
    assert bool(row_for(at, TIERED_MODEL)["Overridden"])

    at.selectbox(key="remove_override_model").set_value(TIERED_MODEL)
    click(at, "Remove override")

    assert override_rows(engine) == []
    assert f"Removed the price override for {TIERED_MODEL}." in values(at.success)
    assert not row_for(at, TIERED_MODEL)["Overridden"]
    assert "No price overrides. Every model is billed at its catalog prices." in values(at.info)


# Aliases and fallbacks


@pytest.mark.usefixtures("cookies")
def test_admin_creates_alias(engine: Engine) -> None:
    at = models_page(engine, "admin")
    assert any(message.startswith("No aliases or fallbacks yet.") for message in values(at.info))

    at.text_input(key="alias_name").input("fast")
    at.selectbox(key="alias_target").set_value("anthropic/claude-haiku-4-5")
    click(at, "Save alias")

    with engine.connect() as conn:
        row = conn.execute(select(model_routes_table)).one()
    assert row.name == "fast"
    assert row.target == "anthropic/claude-haiku-4-5"
    assert row.fallbacks == []
    assert row.updated_by == "alice"
    assert "Alias 'fast' now points at anthropic/claude-haiku-4-5." in values(at.success)
    routes = at.dataframe[1].value
    assert routes["Name"].tolist() == ["fast"]
    assert routes["Alias for"].tolist() == ["anthropic/claude-haiku-4-5"]


@pytest.mark.usefixtures("cookies")
def test_invalid_alias_rejected(engine: Engine) -> None:
    at = models_page(engine, "admin")

    at.text_input(key="alias_name").input("openai/fast")
    click(at, "Save alias")

    assert any(message.startswith("Alias not saved: alias must be") for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(model_routes_table)).all() == []


@pytest.mark.usefixtures("cookies")
def test_admin_sets_fallbacks_in_order(engine: Engine) -> None:
    at = models_page(engine, "owner")

    at.selectbox(key="fallback_model").set_value(TIERED_MODEL)
    at.text_area(key="fallback_list").input(
        "anthropic/claude-haiku-4-5\n\n  openai/text-embedding-3-small \n"
    )
    click(at, "Save fallbacks")

    with engine.connect() as conn:
        row = conn.execute(select(model_routes_table)).one()
    assert row.name == TIERED_MODEL
    assert row.target is None
    assert row.fallbacks == ["anthropic/claude-haiku-4-5", "openai/text-embedding-3-small"]
    routes = at.dataframe[1].value
    assert routes["Fallbacks, in order"].tolist() == [
        "anthropic/claude-haiku-4-5, openai/text-embedding-3-small"
    ]


@pytest.mark.usefixtures("cookies")
def test_fallback_to_itself_rejected(engine: Engine) -> None:
    at = models_page(engine, "owner")

    at.selectbox(key="fallback_model").set_value(TIERED_MODEL)
    at.text_area(key="fallback_list").input(TIERED_MODEL)
    click(at, "Save fallbacks")

    assert any("cannot be its own fallback" in message for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(model_routes_table)).all() == []


@pytest.mark.usefixtures("cookies")
def test_admin_removes_route(engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_alias(conn, "fast", "anthropic/claude-haiku-4-5")
        model_routes.set_alias(conn, "smart", TIERED_MODEL)
    at = models_page(engine, "admin")

    at.selectbox(key="remove_route_name").set_value("fast")
    click(at, "Remove route")

    with engine.connect() as conn:
        assert [route.name for route in model_routes.list_routes(conn)] == ["smart"]
    assert "Removed fast." in values(at.success)


# gateway_core.model_admin without Streamlit


def test_effective_prices_without_overrides(engine: Engine) -> None:
    with engine.connect() as conn:
        listings = model_admin.effective_prices(conn, CATALOG)

    assert [listing.id for listing in listings] == [entry.id for entry in CATALOG]
    for listing in listings:
        assert listing.prices == listing.entry.prices
        assert not listing.overridden
        assert listing.price_date == listing.entry.price_date


def test_effective_prices_apply_override(engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(
            conn, TIERED_MODEL, {"input": "0.1000000001", "output": "7"}, actor="alice"
        )
        listings = model_admin.effective_prices(conn, CATALOG)

    by_id = {listing.id: listing for listing in listings}
    listing = by_id[TIERED_MODEL]
    assert listing.overridden
    assert listing.prices.input == Decimal("0.1000000001")
    assert listing.prices.output == Decimal(7)
    assert listing.prices.cached_input is None
    assert listing.prices.tiers == ()
    assert listing.entry is CATALOG.get(TIERED_MODEL)
    assert listing.price_source == "Price override set by alice"
    assert listing.price_date == listing.override.updated_at.date()
    assert not listing.price_is_estimate
    untouched = by_id["anthropic/claude-haiku-4-5"]
    assert not untouched.overridden
    assert untouched.prices == CATALOG.get("anthropic/claude-haiku-4-5").prices


def test_effective_prices_list_override_only_model(engine: Engine) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(conn, "acme/private-1", {"input": "2", "output": "4"})
        listings = model_admin.effective_prices(conn, CATALOG)

    assert len(listings) == len(CATALOG) + 1
    extra = listings[-1]
    assert extra.id == "acme/private-1"
    assert extra.provider == "acme"
    assert extra.entry is None
    assert extra.prices.input == Decimal(2)


def test_effective_prices_leave_catalog_unchanged(engine: Engine) -> None:
    before = CATALOG.get(TIERED_MODEL).prices
    with engine.begin() as conn:
        model_routes.set_price_override(conn, TIERED_MODEL, {"input": "1", "output": "2"})
        model_admin.effective_prices(conn, CATALOG)

    assert CATALOG.get(TIERED_MODEL).prices == before


def override(model_id: str, input_price: str) -> PriceOverride:
    prices = ModelPrices(input=Decimal(input_price), output=Decimal(1))
    return PriceOverride(model_id, prices, "alice", datetime(2026, 1, 2, tzinfo=UTC))


def test_search_uses_overridden_price() -> None:
    listings = model_admin.merge_overrides(CATALOG, {TIERED_MODEL: override(TIERED_MODEL, "0")})

    cheap = model_admin.search_listings(listings, max_input_price=Decimal(0))

    assert TIERED_MODEL in [listing.id for listing in cheap]
    assert all(listing.prices.input == 0 for listing in cheap)


def test_search_matches_catalog_search() -> None:
    listings = model_admin.merge_overrides(CATALOG, {})
    cases = [
        {"text": "gpt", "sort_by": "input_price"},
        {"provider": "mistral", "sort_by": "output_price"},
        {"min_context": 200_000, "sort_by": "context_window"},
        {"max_input_price": Decimal("1"), "sort_by": "input_price"},
    ]
    for case in cases:
        found = [listing.id for listing in model_admin.search_listings(listings, **case)]
        assert found == [entry.id for entry in CATALOG.search(**case)], case


def test_search_override_only_model_has_no_context() -> None:
    listings = model_admin.merge_overrides(CATALOG, {"acme/x": override("acme/x", "1")})

    assert "acme/x" not in [
        listing.id for listing in model_admin.search_listings(listings, min_context=1)
    ]
    by_window = model_admin.search_listings(listings, sort_by="context_window")
    assert by_window[-1].id == "acme/x"
    assert [listing.id for listing in model_admin.search_listings(listings, text="ACME")] == [
        "acme/x"
    ]


def test_search_rejects_unknown_sort() -> None:
    with pytest.raises(ValueError, match="invalid sort_by 'id', expected one of"):
        model_admin.search_listings([], sort_by="id")


@pytest.mark.parametrize(
    ("price", "text"),
    [
        (None, ""),
        (Decimal("0"), "0.00"),
        (Decimal("2.5000000000"), "2.50"),
        (Decimal("0.0750000000"), "0.075"),
        (Decimal("1E+3"), "1000.00"),
        (Decimal("0.0000000001"), "0.0000000001"),
        (Decimal("1.2345678901"), "1.2345678901"),
    ],
)
def test_format_price(price: Decimal | None, text: str) -> None:
    assert model_admin.format_price(price) == text


def test_storable_price_limits() -> None:
    model_admin.check_storable_price(Decimal("9999999999.9999999999"), "input")
    model_admin.check_storable_price(Decimal("0.10000000000000"), "input")
    with pytest.raises(InvalidRequestError, match="more than 10 decimal places"):
        model_admin.check_storable_price(Decimal("0.00000000001"), "input")
    with pytest.raises(InvalidRequestError, match="must be less than"):
        model_admin.check_storable_price(Decimal("1E+10"), "input")


def test_parse_fallback_list() -> None:
    assert model_admin.parse_fallback_list("a/b", " c/d \n\ne/f\n") == ["c/d", "e/f"]
    with pytest.raises(InvalidRequestError, match="at least one"):
        model_admin.parse_fallback_list("a/b", " \n ")
    with pytest.raises(InvalidRequestError, match="more than once"):
        model_admin.parse_fallback_list("a/b", "c/d\nc/d")


def test_price_override_rows_are_decimal(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(model_price_overrides).values(model_id="acme/x", input=Decimal("0.3333333333"))
        )
        overrides = model_admin.load_price_overrides(conn)

    assert overrides["acme/x"].prices.input == Decimal("0.3333333333")
    assert isinstance(overrides["acme/x"].prices.input, Decimal)
