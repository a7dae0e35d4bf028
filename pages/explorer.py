"""Usage explorer page: find individual calls by time, team, project, key, model and status.

The table shows the newest matching calls. The CSV export contains every match:
when its button is clicked, a deferred callable reads the rows through
DuckDB in record batches into a temporary file and hands Streamlit the
open file, so the rows never sit in memory as a table. Streamlit still
holds the finished file's bytes in memory to serve the download.

Links from other pages preselect filters with query parameters: team,
project and key (comma-separated ids), model, status (a status class or
code), start and end (YYYY-MM-DD). Invalid values are reported and ignored.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import duckdb
import pandas as pd
import streamlit as st

from app_support import current_actor, duckdb_for, load_names, pick_organization
from gateway_core import analytics, explorer
from gateway_core.config import Settings
from gateway_core.errors import GatewayError
from gateway_core.explorer import ExplorerFilters
from gateway_core.time_ranges import day_range, zone_info

PAGE_NAME = "explorer"
TTL_SECONDS = 30
DEFAULT_DAYS = 7
COUNT_CAP = 100_000
# Oldest date a link may preselect, in days before today. Link dates outside
# the window are ignored, so a crafted date such as 9999-12-31 never reaches st.date_input.
LINK_DAYS_BACK = 3_650
NO_TEAM = 0

logger = logging.getLogger("gatewayz.app.explorer")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error("Sign in to explore usage: open the app's home page.")
    st.stop()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def load_rows(database_url: str, filters: ExplorerFilters) -> tuple[int, pd.DataFrame]:
    with duckdb_for(database_url).cursor() as cursor:
        count = explorer.count_rows(cursor, filters, COUNT_CAP + 1)
        if count == 0:
            return 0, pd.DataFrame(columns=list(explorer.CSV_COLUMNS))
        return count, explorer.fetch_rows(cursor, filters)


def preselected_ids(name: str, known: dict[int, str]) -> list[int]:
    """Return the ids in query parameter `name` that are options, warning about the rest."""
    values = st.query_params.get_all(name)
    if not values:
        return []
    try:
        ids = explorer.parse_ids(values, name)
    except GatewayError as error:
        logger.info("ignored query parameter %s: %s", name, error.message)
        st.warning(f"Ignored the {name} filter from the link: {error.message}")
        return []
    unknown = [i for i in ids if i not in known]
    if unknown:
        st.warning(f"Ignored unknown {name} ids from the link: {', '.join(map(str, unknown))}")
    return [i for i in ids if i in known]


def preselected_date(name: str, default: date, earliest: date, latest: date) -> date:
    value = st.query_params.get(name)
    if value is None:
        return default
    try:
        day = date.fromisoformat(value)
    except ValueError:
        st.warning(f"Ignored the {name} date from the link: {value!r} is not YYYY-MM-DD.")
        return default
    if not earliest <= day <= latest:
        st.warning(
            f"Ignored the {name} date from the link: {value} is not between "
            f"{earliest.isoformat()} and {latest.isoformat()}."
        )
        return default
    return day


def preselected_status() -> str:
    value = st.query_params.get("status")
    if value is None:
        return "all"
    try:
        return explorer.check_status(value)
    except GatewayError as error:
        logger.info("ignored query parameter status: %s", error.message)
        st.warning(f"Ignored the status filter from the link: {error.message}")
        return "all"


def render_rows(count: int, rows: pd.DataFrame) -> None:
    shown = f"the newest {len(rows):,}" if count > len(rows) else "all"
    total = f"more than {COUNT_CAP:,}" if count > COUNT_CAP else f"{count:,}"
    st.caption(f"{total} matching calls; showing {shown}. The CSV export has every match.")
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "time_utc": st.column_config.DatetimeColumn("Time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
            "request_id": "Request ID",
            "team": "Team",
            "project": "Project",
            "key": "Key",
            "endpoint": "Endpoint",
            "model": "Model",
            "provider": "Provider",
            "status": st.column_config.NumberColumn("Status", format="%d"),
            "error_type": "Error type",
            "stream": "Streamed",
            "attempts": st.column_config.NumberColumn("Attempts", format="%d"),
            "prompt_tokens": st.column_config.NumberColumn("Input tokens", format="%d"),
            "completion_tokens": st.column_config.NumberColumn("Output tokens", format="%d"),
            "cached_tokens": st.column_config.NumberColumn("Cached tokens", format="%d"),
            "cost_usd": st.column_config.NumberColumn(
                "Cost (USD)", format="$%.6f", help="Rounded here. The CSV has all 10 places."
            ),
            "latency_ms": st.column_config.NumberColumn("Latency (ms)", format="%d"),
            "ttft_ms": st.column_config.NumberColumn("TTFT (ms)", format="%d"),
        },
    )


settings = Settings.from_env()
st.title("Usage explorer")
url = settings.analytics_database_url

actor = current_actor()
organization = pick_organization(
    url,
    "explorer_organization",
    empty_message="No organization yet. Create a team and a key on the Keys page, "
    "then send a request.",
)
names = load_names(url, organization.id, actor)
today = datetime.now(UTC).astimezone(zone_info(organization.timezone)).date()

# Calls without a valid key belong to no organization, so only staff see them.
team_options = {NO_TEAM: "(no team: calls without a valid key)"} if actor.is_staff else {}
team_options |= names.teams
dates_column, team_column, project_column = st.columns([2, 2, 2])
earliest, latest = today - timedelta(days=LINK_DAYS_BACK), today + timedelta(days=1)
first_day = preselected_date("start", today - timedelta(days=DEFAULT_DAYS - 1), earliest, latest)
last_day = preselected_date("end", today, earliest, latest)
if last_day < first_day:
    st.warning("Ignored the dates from the link: the end is before the start.")
    first_day, last_day = today - timedelta(days=DEFAULT_DAYS - 1), today
dates = dates_column.date_input(
    f"Days ({organization.timezone})",
    value=(first_day, last_day),
    key="explorer_dates",
)
team_ids = team_column.multiselect(
    "Teams",
    list(team_options),
    default=preselected_ids("team", names.teams),
    format_func=team_options.get,
    placeholder="All teams",
    key="explorer_teams",
)
project_ids = project_column.multiselect(
    "Projects",
    list(names.projects),
    default=preselected_ids("project", names.projects),
    format_func=names.projects.get,
    placeholder="All projects",
    key="explorer_projects",
)
key_column, model_column, status_column = st.columns([2, 2, 2])
key_ids = key_column.multiselect(
    "Keys",
    list(names.keys),
    default=preselected_ids("key", names.keys),
    format_func=names.keys.get,
    placeholder="All keys",
    key="explorer_keys",
)
linked_model = st.query_params.get("model")
if linked_model is not None and linked_model not in names.models:
    st.warning("Ignored the model filter from the link: no call used that model.")
models = model_column.multiselect(
    "Models",
    list(names.models),
    default=[linked_model] if linked_model in names.models else [],
    placeholder="All models",
    key="explorer_models",
)
status_options = list(explorer.STATUS_CLASSES)
linked_status = preselected_status()
if linked_status not in status_options:
    status_options.append(linked_status)
status = status_column.selectbox(
    "Status",
    status_options,
    index=status_options.index(linked_status),
    format_func=lambda s: explorer.STATUS_CLASSES.get(s, f"Status {s}"),
    key="explorer_status",
)
search_column, request_column = st.columns(2)
model_search = search_column.text_input(
    "Model contains", key="explorer_model_search", max_chars=explorer.MAX_MODEL_SEARCH_LENGTH
)
request_id = request_column.text_input(
    "Request ID", key="explorer_request_id", max_chars=explorer.MAX_REQUEST_ID_LENGTH
)

if not isinstance(dates, tuple) or len(dates) != 2:
    st.info("Pick an end date to see calls.")
    st.stop()
try:
    time_range = day_range(dates[0], dates[1] + timedelta(days=1), organization.timezone)
    filters = ExplorerFilters(
        start=time_range.start,
        end=time_range.end,
        organization_id=organization.id,
        team_ids=tuple(i for i in team_ids if i != NO_TEAM),
        include_no_team=NO_TEAM in team_ids,
        project_ids=tuple(project_ids),
        key_ids=tuple(key_ids),
        models=tuple(models),
        status=status,
        request_id=request_id.strip(),
        model_search=model_search.strip(),
    )
    explorer.require_filters(actor, filters)
except GatewayError as error:
    logger.info("rejected usage explorer filters: %s", error.message)
    st.error(f"Filters not applied: {error.message}.")
    st.stop()

try:
    with st.spinner("Finding calls…"):
        count, rows = load_rows(url, filters)
except duckdb.Error as error:
    logger.error("usage explorer query failed: %s", analytics.redact_password(str(error), url))
    st.error("Could not read calls from Postgres. Reload the page to try again.")
    st.stop()

if count == 0:
    st.info("No calls match these filters. Widen the days or clear a filter.")
    st.stop()
render_rows(count, rows)
con = duckdb_for(url)
st.download_button(
    "Export CSV",
    # Runs in a separate thread when clicked, with its own DuckDB cursor.
    data=lambda: explorer.export_csv_file(con, filters),
    file_name=f"usage-{dates[0].isoformat()}-to-{dates[1].isoformat()}.csv",
    mime="text/csv",
    icon=":material/download:",
    key="explorer_download",
    help="Every matching call, oldest first, with names in place of ids.",
)
