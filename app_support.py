"""Streamlit helpers shared by the app's pages: the signed-in actor and the organization picker.

This module sits beside app.py, outside pages/, because Streamlit serves
every file in pages/ as a page when it runs without st.navigation (see
app.py's docstring). The organization picker and name lists show only the
organizations of the signed-in actor, as gateway_core.access defines them.
"""

from __future__ import annotations

import logging

import duckdb
import streamlit as st

from gateway_core import analytics, usage_stats
from gateway_core.access import Actor
from gateway_core.usage_stats import Organization, OrganizationNames

# Session-state key that app.py writes after sign-in.
SESSION_USER = "gatewayz_user"
TTL_SECONDS = 30

logger = logging.getLogger("gatewayz.app.support")


def current_actor() -> Actor:
    """Return the signed-in user as an Actor with the organizations app.py loaded at sign-in.

    Raises KeyError when app.py has not stored the user's organizations, so a
    page never treats an unknown user as installation staff.
    """
    user = st.session_state[SESSION_USER]
    organization_ids = user["organization_ids"]
    return Actor(
        user["username"],
        user["role"],
        st.context.ip_address,
        None if organization_ids is None else frozenset(organization_ids),
    )


@st.cache_resource
def duckdb_for(database_url: str) -> duckdb.DuckDBPyConnection:
    """Open one DuckDB with Postgres attached per process. Each query uses its own cursor."""
    return analytics.connect(database_url)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_organizations(
    database_url: str, actor: Actor, version: tuple[int, ...] | None = None
) -> list[Organization]:
    """Return the organizations the actor may see, by name.

    `version` is directory.directory_version where a page has it, so a new
    organization shows at once.
    """
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.list_organizations(cursor, actor)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_names(
    database_url: str,
    organization_id: int,
    actor: Actor,
    version: tuple[int, ...] | None = None,
) -> OrganizationNames:
    """Return the organization's names, if the actor may see it.

    `version`, from directory.directory_version, makes new names show at once.
    """
    with duckdb_for(database_url).cursor() as cursor:
        return usage_stats.organization_names(cursor, organization_id, actor)


def pick_organization(
    database_url: str,
    key: str,
    *,
    empty_message: str,
    version: tuple[int, ...] | None = None,
    container: st.delta_generator.DeltaGenerator | None = None,
) -> Organization:
    """Render the organization picker with the actor's organizations and return the choice.

    Stops the page with a message when Postgres cannot be read or the actor
    has no organization to pick.
    """
    actor = current_actor()
    try:
        organizations = load_organizations(database_url, actor, version)
    except duckdb.Error as error:
        detail = analytics.redact_password(str(error), database_url)
        logger.error("reading organizations failed: %s", detail)
        st.error("Cannot read from Postgres. Check that the database is running, then reload.")
        st.stop()
    if not organizations:
        st.info(empty_message)
        st.stop()
    by_id = {organization.id: organization for organization in organizations}
    organization_id = (container or st).selectbox(
        "Organization",
        list(by_id),
        format_func=lambda i: by_id[i].name,
        key=key,
        disabled=len(by_id) == 1,
    )
    return by_id[organization_id]
