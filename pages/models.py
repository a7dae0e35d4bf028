"""Models page: browse the catalog at the prices the proxy bills, and manage routing.

Every signed-in role can search the catalog and see aliases and fallbacks.
Owners and admins also get forms for price overrides, aliases and fallback
lists. gateway_core.model_admin checks the role again before each write, and
the proxy picks up a change when it next reloads these tables.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from app_support import current_actor
from gateway_core import model_admin, model_routes
from gateway_core.catalog import Catalog, CatalogError, load_catalog
from gateway_core.config import Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.model_admin import ModelListing, PriceOverride

PAGE_NAME = "models"
LIST_TTL_SECONDS = 10
# Session-state key for a message shown once after the rerun that follows a write.
FLASH_MESSAGE = "models_page_flash"
ALL_PROVIDERS = "All providers"
PRICE_UNIT = "USD / 1M tokens"
PRICE_LABELS = {
    "input": "Input",
    "cached_input": "Cached input",
    "cache_write": "Cache write",
    "output": "Output",
    "reasoning_output": "Reasoning output",
}
SORT_LABELS = {
    "input_price": "Input price, cheapest first",
    "output_price": "Output price, cheapest first",
    "context_window": "Context window, largest first",
}

logger = logging.getLogger("gatewayz.app.models")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to browse models: open the app's home page.")
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_resource
def load_model_catalog() -> Catalog:
    return load_catalog()


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_overrides(database_url: str) -> dict[str, PriceOverride]:
    with engine_for(database_url).connect() as conn:
        return model_admin.load_price_overrides(conn)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_routes(database_url: str) -> list[model_routes.ModelRoute]:
    with engine_for(database_url).connect() as conn:
        return model_routes.list_routes(conn)


def price_label(field: str) -> str:
    return f"{PRICE_LABELS[field]} ({PRICE_UNIT})"


def finish_write(message: str) -> None:
    """Empty the cached lists and rerun, so the tables above the forms show the change."""
    load_overrides.clear()
    load_routes.clear()
    st.session_state[FLASH_MESSAGE] = message
    st.rerun()


def search_form(providers: list[str]) -> dict | None:
    """Render the filters and return search_listings arguments, or None after an input error."""
    columns = st.columns(5)
    text = columns[0].text_input("Search", placeholder="gpt, claude, llama", key="models_search")
    provider = columns[1].selectbox("Provider", [ALL_PROVIDERS, *providers], key="models_provider")
    max_price_text = columns[2].text_input(
        f"Max input price ({PRICE_UNIT})", placeholder="2.50", key="models_max_input"
    )
    min_context = columns[3].number_input(
        "Min context window (tokens)", min_value=0, step=1000, key="models_min_context"
    )
    sort_by = columns[4].selectbox(
        "Sort by", list(SORT_LABELS), format_func=SORT_LABELS.__getitem__, key="models_sort"
    )
    try:
        max_price = model_admin.parse_price_limit(max_price_text)
    except GatewayError as error:
        st.error(
            f"Catalog not filtered: {error.message}. Enter a number such as 2.50, "
            "or clear the field for no limit."
        )
        return None
    return {
        "text": text,
        "provider": None if provider == ALL_PROVIDERS else provider,
        "max_input_price": max_price,
        "min_context": min_context or None,
        "sort_by": sort_by,
    }


def listing_frame(listings: list[ModelListing]) -> pd.DataFrame:
    entries = [listing.entry for listing in listings]
    columns = {
        "Model id": [listing.id for listing in listings],
        "Provider": [listing.provider for listing in listings],
        "Context window": pd.array(
            [entry.context_window if entry else None for entry in entries], dtype="Int64"
        ),
        "Max output": pd.array(
            [entry.max_output_tokens if entry else None for entry in entries], dtype="Int64"
        ),
        "Modalities": [
            f"{', '.join(entry.input_modalities)} → {', '.join(entry.output_modalities)}"
            if entry
            else ""
            for entry in entries
        ],
    }
    for field in model_routes.PRICE_FIELDS:
        columns[price_label(field)] = [
            model_admin.format_price(getattr(listing.prices, field)) for listing in listings
        ]
    columns["Higher prices above (prompt tokens)"] = pd.array(
        [
            listing.prices.tiers[0].above_prompt_tokens if listing.prices.tiers else None
            for listing in listings
        ],
        dtype="Int64",
    )
    columns["Price date"] = [listing.price_date for listing in listings]
    columns["Price source"] = [listing.price_source for listing in listings]
    columns["Estimate"] = [listing.price_is_estimate for listing in listings]
    columns["Overridden"] = [listing.overridden for listing in listings]
    return pd.DataFrame(columns)


def render_catalog(listings: list[ModelListing], providers: list[str]) -> None:
    st.subheader("Catalog")
    filters = search_form(providers)
    if filters is None:
        return
    found = model_admin.search_listings(listings, **filters)
    if not found:
        st.info(
            "No models match these filters. Clear the search text, choose All providers, "
            "raise the max input price or lower the min context window."
        )
        return
    st.caption(
        f"{len(found)} of {len(listings)} models. Overridden rows show the admin's prices, "
        "which replace all catalog prices for that model, long-prompt tiers included. "
        "Estimate marks prices the catalog gives as estimates."
    )
    st.dataframe(
        listing_frame(found),
        hide_index=True,
        column_config={"Price date": st.column_config.DateColumn(format="YYYY-MM-DD")},
    )


def render_routes(routes: list[model_routes.ModelRoute]) -> None:
    st.subheader("Aliases and fallbacks")
    if not routes:
        st.info(
            "No aliases or fallbacks yet. Clients send catalog model ids as they are; "
            "an owner or admin can add an alias or a fallback list below."
        )
        return
    frame = pd.DataFrame(
        {
            "Name": [route.name for route in routes],
            "Alias for": [route.target or "" for route in routes],
            "Fallbacks, in order": [", ".join(route.fallbacks) for route in routes],
        }
    )
    st.dataframe(frame, hide_index=True)


def render_set_override(engine: Engine, listings: list[ModelListing], user: dict) -> None:
    st.subheader("Set a price override")
    by_id = {listing.id: listing for listing in listings}
    model_id = st.selectbox("Model", list(by_id), key="override_model")
    current = by_id[model_id].prices
    with st.form("set_override"):
        typed = {
            field: st.text_input(
                price_label(field),
                placeholder=model_admin.format_price(getattr(current, field)) or "blank",
                key=f"override_{field}",
            )
            for field in model_routes.PRICE_FIELDS
        }
        st.caption(
            "Decimal numbers, such as 0.15. Input is required, and output too unless the "
            "model is an embedding model. A blank cached input or cache write price bills "
            "at the input price, and a blank reasoning output price at the output price."
        )
        submitted = st.form_submit_button("Save override")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            model_admin.save_price_override(
                conn, user["actor"], user["username"], model_id, typed, by_id[model_id].entry
            )
    except GatewayError as error:
        logger.info(
            "user %s: override for %s not saved: %s", user["username"], model_id, error.message
        )
        st.error(f"Override not saved: {error.message}.")
        return

    logger.info("user %s set a price override for %s", user["username"], model_id)
    for field in model_routes.PRICE_FIELDS:
        del st.session_state[f"override_{field}"]
    finish_write(f"Saved the price override for {model_id}.")


def render_remove_override(engine: Engine, overrides: list[str], user: dict) -> None:
    st.subheader("Remove a price override")
    if not overrides:
        st.info("No price overrides. Every model is billed at its catalog prices.")
        return
    with st.form("remove_override"):
        model_id = st.selectbox("Overridden model", overrides, key="remove_override_model")
        submitted = st.form_submit_button("Remove override")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            removed = model_admin.delete_price_override(conn, user["actor"], model_id)
    except GatewayError as error:
        logger.info(
            "user %s: override for %s not removed: %s", user["username"], model_id, error.message
        )
        st.error(f"Override not removed: {error.message}.")
        return
    logger.info("user %s removed the price override for %s", user["username"], model_id)
    finish_write(
        f"Removed the price override for {model_id}."
        if removed
        else f"{model_id} had no price override."
    )


def render_set_alias(engine: Engine, model_ids: list[str], user: dict) -> None:
    st.subheader("Set an alias")
    with st.form("set_alias"):
        alias = st.text_input("Alias", placeholder="fast", max_chars=100, key="alias_name")
        target = st.selectbox("Model id", model_ids, key="alias_target")
        submitted = st.form_submit_button("Save alias")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            model_admin.save_alias(conn, user["actor"], user["username"], alias, target)
    except GatewayError as error:
        logger.info("user %s: alias %r not saved: %s", user["username"], alias, error.message)
        st.error(f"Alias not saved: {error.message}.")
        return
    logger.info("user %s pointed alias %r at %s", user["username"], alias.strip(), target)
    finish_write(f"Alias {alias.strip()!r} now points at {target}.")


def render_set_fallbacks(engine: Engine, names: list[str], user: dict) -> None:
    st.subheader("Set fallbacks")
    with st.form("set_fallbacks"):
        model = st.selectbox("Model id or alias", names, key="fallback_model")
        text = st.text_area(
            "Fallback model ids, one per line, tried in order",
            placeholder="openai/gpt-4o-mini\nanthropic/claude-haiku-4-5",
            key="fallback_list",
        )
        submitted = st.form_submit_button("Save fallbacks")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            fallbacks = model_admin.save_fallbacks(
                conn, user["actor"], user["username"], model, text
            )
    except GatewayError as error:
        logger.info(
            "user %s: fallbacks for %s not saved: %s", user["username"], model, error.message
        )
        st.error(f"Fallbacks not saved: {error.message}.")
        return
    logger.info("user %s set fallbacks for %s: %s", user["username"], model, fallbacks)
    finish_write(f"{model} now falls back to {', '.join(fallbacks)}.")


def render_remove_route(engine: Engine, routes: list[model_routes.ModelRoute], user: dict) -> None:
    # Without routes the section is left out, because "Aliases and fallbacks"
    # above shows that there are none.
    if not routes:
        return
    st.subheader("Remove an alias or fallback list")
    with st.form("remove_route"):
        name = st.selectbox("Name", [route.name for route in routes], key="remove_route_name")
        submitted = st.form_submit_button("Remove route")
    if not submitted:
        return

    try:
        with engine.begin() as conn:
            removed = model_admin.delete_route(conn, user["actor"], name)
    except GatewayError as error:
        logger.info("user %s: route %s not removed: %s", user["username"], name, error.message)
        st.error(f"Route not removed: {error.message}.")
        return
    logger.info("user %s removed the route for %s", user["username"], name)
    finish_write(f"Removed {name}." if removed else f"{name} was already removed.")


def render_admin(
    engine: Engine,
    listings: list[ModelListing],
    routes: list[model_routes.ModelRoute],
    user: dict,
) -> None:
    model_ids = [listing.id for listing in listings]
    aliases = [route.name for route in routes if route.target]
    render_set_override(engine, listings, user)
    render_remove_override(engine, [listing.id for listing in listings if listing.overridden], user)
    render_set_alias(engine, model_ids, user)
    render_set_fallbacks(engine, aliases + model_ids, user)
    render_remove_route(engine, routes, user)


settings = Settings.from_env()
engine = engine_for(settings.database_url)
# The render functions read the username, and pass the Actor to model_admin.
user = {**st.session_state["gatewayz_user"], "actor": current_actor()}

st.title("Models")
if FLASH_MESSAGE in st.session_state:
    st.success(st.session_state.pop(FLASH_MESSAGE))
try:
    catalog = load_model_catalog()
except CatalogError as error:
    logger.error("loading the model catalog failed: %s", error)
    st.error(f"Cannot load the model catalog: {error}. Fix the file and reload the page.")
    st.stop()

listings = model_admin.merge_overrides(catalog, load_overrides(settings.database_url))
routes = load_routes(settings.database_url)
render_catalog(listings, sorted({listing.provider for listing in listings}))
render_routes(routes)
if model_admin.can_manage_models(user["actor"]):
    render_admin(engine, listings, routes, user)
else:
    st.caption("Owners and admins can set price overrides, aliases and fallbacks here.")
