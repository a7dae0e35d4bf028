"""The Budgets & limits page run headless with AppTest, and gateway_core.limits_admin on its own.

The page tests sign in through app.py against the test database, like
tests/test_app_pages.py, whose helpers and fixtures they import.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Connection, Engine, insert, select, update
from streamlit.testing.v1 import AppTest

from gateway_core import budgets, directory, limits_admin, secret_box
from gateway_core.directory import ROLES
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.keys import create_key
from gateway_core.schema import (
    alert_channels,
    organizations,
    projects,
    rate_limits,
    spend_leases,
    usage_events,
)
from gateway_core.schema import budgets as budgets_table
from tests.conftest import TEST_SECRET
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    APP_PATH,
    TIMEOUT_SECONDS,
    add_user,
    app_env,
    click,
    cookies,
    open_page,
    plotly_specs,
    sign_in,
    start_app,
    trace_values,
    values,
)

NEW_YORK = "America/New_York"


@dataclass(frozen=True)
class Seeded:
    organization_id: int
    team_id: int
    other_team_id: int
    key_id: int
    project_id: int


def seed_scopes(engine: Engine, timezone: str = NEW_YORK) -> Seeded:
    """Create teams Research and Ops in the Default organization, set to `timezone`."""
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
        other = directory.create_team(conn, "Ops")
        conn.execute(
            update(organizations)
            .where(organizations.c.id == team.organization_id)
            .values(timezone=timezone)
        )
        key = create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="ci")
        project = directory.create_project(conn, team.id, "Folding")
    return Seeded(team.organization_id, team.id, other.id, key.id, project.id)


def add_usage(
    conn: Connection,
    request_id: str,
    created_at: datetime,
    cost: str,
    *,
    team_id: int,
    key_id: int | None = None,
    organization_id: int | None = None,
) -> None:
    conn.execute(
        insert(usage_events).values(
            request_id=request_id,
            created_at=created_at,
            organization_id=organization_id,
            team_id=team_id,
            api_key_id=key_id,
            endpoint="chat.completions",
            model="openai/gpt-4o-mini",
            provider="openai",
            status_code=200,
            cost_usd=Decimal(cost),
            latency_ms=100,
        )
    )


def budget_rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(budgets_table)).all()


def rate_limit_rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(rate_limits)).all()


def budgets_page(engine: Engine, role: str = "owner") -> AppTest:
    add_user(engine, "alice", role)
    at = sign_in(start_app(), "alice")
    return open_page(at, "pages/budgets.py")


def choose_scope(at: AppTest, scope_type: str, scope_id: int) -> AppTest:
    at.radio(key="scope_type").set_value(scope_type)
    at.run()
    at.selectbox(key=f"scope_{scope_type}").set_value(scope_id)
    at.run()
    assert not at.exception, at.exception
    return at


def type_budget(at: AppTest, period: str, limit: str, thresholds: str | None = None) -> AppTest:
    at.selectbox(key="budget_period").set_value(period)
    at.text_input(key="budget_limit").input(limit)
    if thresholds is not None:
        at.text_input(key="budget_thresholds").input(thresholds)
    return click(at, "Save budget")


# Access


@pytest.mark.usefixtures("cookies")
def test_viewer_cannot_reach_page(engine: Engine) -> None:
    add_user(engine, "victor", "viewer")
    at = sign_in(start_app(), "victor")

    assert "budgets" not in at.session_state["gatewayz_allowed_pages"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/budgets.py")


@pytest.mark.usefixtures("cookies")
def test_billing_reaches_page(engine: Engine) -> None:
    add_user(engine, "bill", "billing")
    at = sign_in(start_app(), "bill")

    assert "budgets" in at.session_state["gatewayz_allowed_pages"]
    assert "keys" not in at.session_state["gatewayz_allowed_pages"]
    open_page(at, "pages/budgets.py")
    assert values(at.title) == ["Budgets & limits"]


@pytest.mark.usefixtures("app_env")
def test_page_run_directly_stops(engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page("pages/budgets.py")
    at.run()

    assert any(
        message.startswith("Sign in as an owner, admin or billing") for message in values(at.error)
    )
    assert not at.text_input


def test_save_budget_denied_for_viewer(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn, pytest.raises(PermissionDeniedError, match="role 'viewer'"):
        limits_admin.save_budget(
            conn,
            "viewer",
            scope_type="team",
            scope_id=seeded.team_id,
            period="monthly",
            limit_usd=Decimal(10),
        )
    assert budget_rows(engine) == []


@pytest.mark.parametrize("role", ROLES)
def test_budget_manager_roles(role: str) -> None:
    assert limits_admin.can_manage_budgets(role) == (role in {"owner", "admin", "billing"})


# Empty states


@pytest.mark.usefixtures("cookies")
def test_empty_database_says_what_to_do(engine: Engine) -> None:
    at = budgets_page(engine)

    infos = values(at.info)
    assert len(infos) == 1, infos
    assert infos[0].startswith("No teams yet.")
    assert "Keys page" in infos[0]
    assert not at.get("plotly_chart")
    assert not at.text_input


@pytest.mark.usefixtures("cookies")
def test_scope_without_budget_says_what_to_do(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "team", seeded.team_id)

    assert any(message.startswith("No budgets for this team.") for message in values(at.info))
    assert any(message.startswith("No rate limits for this team.") for message in values(at.info))
    assert any(message.startswith("No alert recipients yet") for message in values(at.info))
    assert at.selectbox(key="scope_team").options == ["Ops", "Research"]


@pytest.mark.usefixtures("cookies")
def test_scopes_listed_by_name(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = budgets_page(engine)

    choose_scope(at, "project", seeded.project_id)
    assert at.selectbox(key="scope_project").options == ["Research / Folding"]
    choose_scope(at, "key", seeded.key_id)
    (label,) = at.selectbox(key="scope_key").options
    assert label.startswith("Research / ci (gw_live_")


# Budgets


@pytest.mark.usefixtures("cookies")
def test_budget_saved_as_exact_decimal(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "team", seeded.team_id)

    type_budget(at, "monthly", "1234.5678901234")

    (row,) = budget_rows(engine)
    assert row.scope_type == "team"
    assert row.scope_id == seeded.team_id
    assert row.period == "monthly"
    assert row.limit_usd == Decimal("1234.5678901234")
    assert row.alert_thresholds == [Decimal("0.5"), Decimal("0.8"), Decimal("1")]
    assert row.created_by == "alice"
    assert "Saved the monthly budget of Research: $1,234.5678901234." in values(at.success)
    assert "$1,234.5678901234" in values(at.metric)
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.usefixtures("cookies")
def test_budget_custom_thresholds(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "organization", seeded.organization_id)

    type_budget(at, "lifetime", "$500", "90, 25.5")

    (row,) = budget_rows(engine)
    assert row.scope_type == "organization"
    assert row.limit_usd == Decimal(500)
    assert row.alert_thresholds == [Decimal("0.255"), Decimal("0.9")]


@pytest.mark.usefixtures("cookies")
@pytest.mark.parametrize(
    ("limit", "thresholds", "message"),
    [
        ("ten", None, "limit must be a decimal number of US dollars"),
        ("12abc", None, "limit must be a decimal number of US dollars"),
        ("-5", None, "limit must be a non-negative amount"),
        ("NaN", None, "limit must be a non-negative amount"),
        ("1.12345678901", None, "limit has more than 10 decimal places"),
        ("10000000000", None, "limit must be less than 10000000000"),
        ("", None, "enter a limit in USD"),
        ("100", "50, 150", "at most 100 percent"),
        ("100", "fifty", "invalid alert threshold 'fifty'"),
        ("100", "33.333", "at most 2 decimal places"),
    ],
)
def test_invalid_budget_rejected(
    engine: Engine, limit: str, thresholds: str | None, message: str
) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "team", seeded.team_id)

    type_budget(at, "weekly", limit, thresholds)

    errors = values(at.error)
    assert len(errors) == 1
    assert errors[0].startswith("Budget not saved: ")
    assert message in errors[0]
    assert budget_rows(engine) == []
    assert not at.success


@pytest.mark.usefixtures("cookies")
def test_budget_replaced_then_removed(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "key", seeded.key_id)

    type_budget(at, "daily", "5")
    type_budget(at, "daily", "7.25")
    (row,) = budget_rows(engine)
    assert row.limit_usd == Decimal("7.25")

    at.selectbox(key="remove_budget_id").set_value(row.id)
    click(at, "Remove budget")

    assert budget_rows(engine) == []
    assert "Removed the daily budget of Research / ci" in values(at.success)[0]
    assert not at.get("plotly_chart")


@pytest.mark.usefixtures("cookies")
def test_burn_down_chart_in_new_york(engine: Engine) -> None:
    seeded = seed_scopes(engine, NEW_YORK)
    now = datetime.now(UTC)
    start, end = budgets.period_bounds("monthly", now, NEW_YORK)
    elapsed = now - start
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=seeded.team_id, period="monthly", limit_usd="100"
        )
        # Inside this month in New York.
        add_usage(conn, "in-1", start, "1.2500000001", team_id=seeded.team_id)
        add_usage(conn, "in-2", start + elapsed / 3, "0.3333333333", team_id=seeded.team_id)
        add_usage(conn, "in-3", start + elapsed * 2 / 3, "2", team_id=seeded.team_id)
        # One minute before local midnight on the 1st is still this month in UTC.
        add_usage(conn, "last-month", start - timedelta(minutes=1), "50", team_id=seeded.team_id)
        add_usage(conn, "next-month", end, "20", team_id=seeded.team_id)
        add_usage(conn, "other-team", start + elapsed / 2, "7", team_id=seeded.other_team_id)
    expected = Decimal("1.2500000001") + Decimal("0.3333333333") + Decimal("2")

    at = choose_scope(budgets_page(engine), "team", seeded.team_id)

    (spec,) = plotly_specs(at)
    local = budgets.zone(NEW_YORK)
    first_day = start.astimezone(local).date()
    last_day = (end.astimezone(local) - timedelta(days=1)).date()
    assert spec["layout"]["title"]["text"] == (
        f"Research: monthly budget, {first_day:%Y-%m-%d} to {last_day:%Y-%m-%d}"
    )
    assert spec["layout"]["xaxis"]["title"]["text"] == "Date (America/New_York)"
    assert spec["layout"]["yaxis"]["title"]["text"] == "Spend (USD)"
    traces = {trace["name"]: trace for trace in spec["data"]}
    assert set(traces) == {
        "Spent",
        "Reserved ($0.00)",
        f"Limit $100.00, ${Decimal(100) - expected:f} remaining",
        "Forecast",
    }
    spent = traces["Spent"]
    assert spent["line"]["dash"] == "solid"
    assert trace_values(spent["y"])[-1] == pytest.approx(float(expected))
    assert trace_values(spent["y"])[0] == 0
    assert spent["x"][0].startswith(f"{first_day:%Y-%m-%d}T00:00:00")
    assert traces["Forecast"]["line"]["dash"] == "dash"
    assert traces["Forecast"]["x"][-1].startswith(f"{end.astimezone(local).date():%Y-%m-%d}")
    assert "$3.5833333334" in values(at.metric)


@pytest.mark.usefixtures("cookies")
def test_admin_sees_one_chart_per_budget(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        for period in ("daily", "weekly", "lifetime"):
            budgets.set_budget(
                conn, scope_type="project", scope_id=seeded.project_id, period=period, limit_usd="9"
            )
    at = choose_scope(budgets_page(engine, "admin"), "project", seeded.project_id)

    titles = [spec["layout"]["title"]["text"] for spec in plotly_specs(at)]
    assert len(titles) == 3
    assert titles[2] == "Research / Folding: lifetime budget"
    assert titles[0].startswith("Research / Folding: daily budget, ")
    assert titles[1].startswith("Research / Folding: weekly budget, ")


# Rate limits


@pytest.mark.usefixtures("cookies")
def test_rate_limits_saved_and_removed(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "team", seeded.team_id)
    suffix = f"team_{seeded.team_id}"

    at.text_input(key=f"requests_per_minute_{suffix}").input("60")
    at.text_input(key=f"tokens_per_minute_{suffix}").input("100,000")
    click(at, "Save rate limits")

    (row,) = rate_limit_rows(engine)
    assert (row.scope_type, row.scope_id) == ("team", seeded.team_id)
    assert row.requests_per_minute == 60
    assert row.tokens_per_minute == 100_000
    assert row.requests_per_day is None
    assert row.max_concurrent is None
    assert "Saved the rate limits of Research." in values(at.success)
    assert at.text_input(key=f"requests_per_minute_{suffix}").value == "60"
    overview = at.dataframe[-1].value
    assert overview["Scope"].tolist() == ["Research"]
    assert overview["Requests per minute"].tolist() == [60]

    click(at, "Remove rate limits")

    assert rate_limit_rows(engine) == []
    assert "Removed the rate limits of Research." in values(at.success)
    assert at.text_input(key=f"requests_per_minute_{suffix}").value == ""


@pytest.mark.usefixtures("cookies")
def test_clearing_every_rate_limit_removes_row(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        limits_admin.set_rate_limits(
            conn, "owner", scope_type="key", scope_id=seeded.key_id, max_concurrent=4
        )
    at = choose_scope(budgets_page(engine), "key", seeded.key_id)

    at.text_input(key=f"max_concurrent_key_{seeded.key_id}").input("")
    click(at, "Save rate limits")

    assert rate_limit_rows(engine) == []


@pytest.mark.usefixtures("cookies")
@pytest.mark.parametrize("text", ["sixty", "0", "1.5", "-3", "2147483648"])
def test_invalid_rate_limit_rejected(engine: Engine, text: str) -> None:
    seeded = seed_scopes(engine)
    at = choose_scope(budgets_page(engine), "team", seeded.team_id)

    at.text_input(key=f"requests_per_minute_team_{seeded.team_id}").input("60")
    at.text_input(key=f"requests_per_day_team_{seeded.team_id}").input(text)
    click(at, "Save rate limits")

    errors = values(at.error)
    assert len(errors) == 1
    assert errors[0].startswith("Rate limits not saved: requests_per_day must be a whole number")
    assert rate_limit_rows(engine) == []


# Alert recipients and projects


@pytest.mark.usefixtures("cookies")
def test_webhook_recipient_added_with_secret(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = budgets_page(engine)
    secret = "whsec-" + "s" * 20

    at.radio(key="channel_kind").set_value("webhook")
    at.text_input(key="channel_target").input("https://hooks.example.org/gatewayz")
    at.text_input(key="channel_secret").input(secret)
    click(at, "Add recipient")

    with engine.connect() as conn:
        (row,) = conn.execute(select(alert_channels)).all()
    assert row.organization_id == seeded.organization_id
    assert row.kind == "webhook"
    assert row.target == "https://hooks.example.org/gatewayz"
    assert secret not in row.secret_encrypted
    assert secret_box.decrypt(TEST_SECRET.encode(), row.secret_encrypted) == secret
    assert at.dataframe[0].value["Recipient"].tolist() == ["https://hooks.example.org/gatewayz"]


@pytest.mark.usefixtures("cookies")
def test_invalid_email_recipient_rejected(engine: Engine) -> None:
    seed_scopes(engine)
    at = budgets_page(engine)

    at.text_input(key="channel_target").input("finance at example.org")
    click(at, "Add recipient")

    assert any("invalid email address" in message for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(alert_channels)).all() == []


@pytest.mark.usefixtures("cookies")
def test_project_created_under_team(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    at = budgets_page(engine, "billing")

    at.selectbox(key="project_team").set_value(seeded.other_team_id)
    at.text_input(key="project_name").input("Genomics")
    at.text_input(key="project_investigator").input("Dr. Ada Lovelace")
    at.text_input(key="project_cost_centre").input("CC-4711")
    click(at, "Create project")

    with engine.connect() as conn:
        row = conn.execute(select(projects).where(projects.c.name == "Genomics")).one()
    assert row.team_id == seeded.other_team_id
    assert row.principal_investigator == "Dr. Ada Lovelace"
    assert row.cost_centre == "CC-4711"
    assert "Created project 'Genomics' in Ops." in values(at.success)


# limits_admin.burn_down without Streamlit

# 2026-03-10 11:00 in New York, two days after daylight saving time started.
NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
MARCH_START = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
APRIL_START = datetime(2026, 4, 1, 4, 0, tzinfo=UTC)


def team_budget(conn: Connection, team_id: int, period: str, limit: str) -> budgets.Budget:
    budgets.set_budget(conn, scope_type="team", scope_id=team_id, period=period, limit_usd=limit)
    (budget,) = budgets.list_budgets(conn, "team", team_id)
    return budget


def test_burn_down_monthly_across_dst(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        budget = team_budget(conn, seeded.team_id, "monthly", "20")
        add_usage(conn, "start", MARCH_START, "1.2", team_id=seeded.team_id)
        add_usage(conn, "mid", datetime(2026, 3, 5, 12, tzinfo=UTC), "6.9", team_id=seeded.team_id)
        add_usage(conn, "late", NOW - timedelta(seconds=1), "0.036", team_id=seeded.team_id)
        add_usage(conn, "feb", MARCH_START - timedelta(seconds=1), "100", team_id=seeded.team_id)
        add_usage(conn, "at-now", NOW, "50", team_id=seeded.team_id)
        add_usage(conn, "ops", NOW - timedelta(hours=1), "30", team_id=seeded.other_team_id)
        frame = limits_admin.burn_down(conn, budget, NEW_YORK, NOW)

    assert list(frame.columns) == ["time", "spent", "reserved", "remaining", "forecast"]
    times = frame["time"].tolist()
    assert times[0] == MARCH_START
    assert times[-1] == APRIL_START
    # Local midnights: 05:00 UTC before the switch to daylight saving time, 04:00 after.
    assert datetime(2026, 3, 8, 5, tzinfo=UTC) in times
    assert datetime(2026, 3, 9, 4, tzinfo=UTC) in times
    assert datetime(2026, 3, 9, 5, tzinfo=UTC) not in times
    now_index = times.index(NOW)
    # Start, nine midnights (March 2 to 10) and now, then 21 midnights (March 11 to 31) and the end.
    assert now_index == 10
    assert len(times) == 33

    spent = frame["spent"].tolist()
    assert spent[0] == Decimal(0)
    assert spent[times.index(datetime(2026, 3, 2, 5, tzinfo=UTC))] == Decimal("1.2")
    assert spent[times.index(datetime(2026, 3, 6, 5, tzinfo=UTC))] == Decimal("8.1")
    assert spent[now_index] == Decimal("8.136")
    assert all(isinstance(amount, Decimal) for amount in spent[: now_index + 1])
    assert spent[now_index + 1 :] == [None] * 22

    assert frame["reserved"].tolist()[now_index] == Decimal(0)
    assert frame["remaining"].tolist()[now_index] == Decimal("11.864")
    assert frame["remaining"].tolist()[0] == Decimal(20)

    # 8.136 USD in 813,600 s is 0.00001 USD/s, and 1,861,200 s remain to April 1.
    forecast = frame["forecast"].tolist()
    assert forecast[:now_index] == [None] * now_index
    assert forecast[now_index] == Decimal("8.136")
    assert forecast[-1] == Decimal("26.748")
    assert forecast[now_index + 1] == Decimal("8.136") + Decimal("0.00001") * 13 * 3600


def test_burn_down_counts_reserved(engine: Engine) -> None:
    seeded = seed_scopes(engine, "UTC")
    with engine.begin() as conn:
        budget = team_budget(conn, seeded.team_id, "daily", "10")
        start, _ = budgets.period_bounds("daily", NOW, "UTC")
        conn.execute(
            insert(spend_leases).values(
                limit_key=budgets.budget_limit_key(budget.id, start),
                holder="worker-1",
                amount=Decimal("2.5"),
                expires_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
        add_usage(conn, "a", NOW - timedelta(hours=3), "9", team_id=seeded.team_id)
        frame = limits_admin.burn_down(conn, budget, "UTC", NOW)

    assert frame["time"].tolist() == [
        datetime(2026, 3, 10, tzinfo=UTC),
        NOW,
        datetime(2026, 3, 11, tzinfo=UTC),
    ]
    assert frame["spent"].tolist() == [Decimal(0), Decimal(9), None]
    assert frame["reserved"].tolist() == [None, Decimal("2.5"), None]
    # The limit is 10, so 9 spent and 2.5 reserved leave nothing.
    assert frame["remaining"].tolist() == [Decimal(10), Decimal(0), None]
    # 9 USD in 15 hours is 0.6 USD an hour, for the 9 hours left.
    assert frame["forecast"].tolist() == [None, Decimal(9), Decimal("14.4")]


def test_burn_down_lifetime_forecasts_30_days(engine: Engine) -> None:
    seeded = seed_scopes(engine, "UTC")
    now = datetime(2026, 3, 11, tzinfo=UTC)
    with engine.begin() as conn:
        budget = team_budget(conn, seeded.team_id, "lifetime", "100")
        add_usage(conn, "first", datetime(2026, 3, 1, 12, tzinfo=UTC), "4", team_id=seeded.team_id)
        add_usage(conn, "second", datetime(2026, 3, 9, tzinfo=UTC), "6", team_id=seeded.team_id)
        frame = limits_admin.burn_down(conn, budget, "UTC", now)

    times = frame["time"].tolist()
    assert times[0] == datetime(2026, 3, 1, tzinfo=UTC)
    assert times[-1] == now + timedelta(days=30)
    assert frame["spent"].tolist()[times.index(now)] == Decimal(10)
    # 10 USD over the 10 days since the first day with usage is 1 USD a day.
    assert frame["forecast"].tolist()[-1] == Decimal(40)


def test_burn_down_key_scope_without_usage(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="key", scope_id=seeded.key_id, period="weekly", limit_usd="3"
        )
        (budget,) = budgets.list_budgets(conn, "key", seeded.key_id)
        add_usage(conn, "other-key", NOW - timedelta(hours=1), "1", team_id=seeded.team_id)
        frame = limits_admin.burn_down(conn, budget, NEW_YORK, NOW)

    # The week starts on Monday, March 9, at local midnight.
    assert frame["time"].iloc[0] == datetime(2026, 3, 9, 4, tzinfo=UTC)
    assert set(frame["spent"].dropna()) == {Decimal(0)}
    assert set(frame["forecast"].dropna()) == {Decimal(0)}


def test_burn_down_uses_key_column(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="key", scope_id=seeded.key_id, period="monthly", limit_usd="3"
        )
        (budget,) = budgets.list_budgets(conn, "key", seeded.key_id)
        add_usage(
            conn,
            "mine",
            NOW - timedelta(hours=1),
            "0.25",
            team_id=seeded.team_id,
            key_id=seeded.key_id,
        )
        frame = limits_admin.burn_down(conn, budget, NEW_YORK, NOW)

    assert frame["spent"].dropna().iloc[-1] == Decimal("0.25")


def test_burn_down_rejects_naive_now(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        budget = team_budget(conn, seeded.team_id, "monthly", "1")
        with pytest.raises(ValueError, match="timezone-aware"):
            limits_admin.burn_down(conn, budget, NEW_YORK, datetime(2026, 3, 10))


# limits_admin.set_rate_limits without Streamlit


def test_set_rate_limits_upserts(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        first = limits_admin.set_rate_limits(
            conn, "admin", scope_type="team", scope_id=seeded.team_id, requests_per_minute=10
        )
        second = limits_admin.set_rate_limits(
            conn,
            "billing",
            scope_type="team",
            scope_id=seeded.team_id,
            requests_per_day=1000,
            max_concurrent=2,
        )
        listed = limits_admin.list_rate_limits(conn)

    assert first is not None
    assert first.requests_per_minute == 10
    assert second is not None
    assert second.requests_per_minute is None
    assert second.requests_per_day == 1000
    assert second.max_concurrent == 2
    assert listed == [second]


def test_set_rate_limits_all_none_deletes(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        limits_admin.set_rate_limits(
            conn, "owner", scope_type="project", scope_id=seeded.project_id, tokens_per_minute=5
        )
        removed = limits_admin.set_rate_limits(
            conn, "owner", scope_type="project", scope_id=seeded.project_id
        )

    assert removed is None
    assert rate_limit_rows(engine) == []


@pytest.mark.parametrize("value", [0, -1, 2**31, 1.5, True, "60", Decimal(5)])
def test_set_rate_limits_rejects_value(engine: Engine, value: object) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="requests_per_day"):
        limits_admin.set_rate_limits(
            conn, "owner", scope_type="team", scope_id=seeded.team_id, requests_per_day=value
        )
    assert rate_limit_rows(engine) == []


def test_set_rate_limits_checks_scope_and_role(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        with pytest.raises(NotFoundError, match="team 999999 not found"):
            limits_admin.set_rate_limits(
                conn, "owner", scope_type="team", scope_id=999999, max_concurrent=1
            )
        with pytest.raises(InvalidRequestError, match="scope must be one of"):
            limits_admin.set_rate_limits(
                conn, "owner", scope_type="user", scope_id=seeded.team_id, max_concurrent=1
            )
        with pytest.raises(PermissionDeniedError):
            limits_admin.set_rate_limits(
                conn, "team_admin", scope_type="team", scope_id=seeded.team_id, max_concurrent=1
            )
    assert rate_limit_rows(engine) == []


# Parsing and listing


def test_parse_rate_limit() -> None:
    assert limits_admin.parse_rate_limit(" 1,000 ", "requests_per_day") == 1000
    assert limits_admin.parse_rate_limit("", "requests_per_day") is None
    with pytest.raises(InvalidRequestError, match="got '1e3'"):
        limits_admin.parse_rate_limit("1e3", "requests_per_day")


@pytest.mark.parametrize(
    ("text", "limit"),
    [("250", Decimal(250)), (" $99.95 ", Decimal("99.95")), ("0", Decimal(0)),
     ("0.0000000001", Decimal("0.0000000001")), ("1.50000000000", Decimal("1.5"))],
)  # fmt: skip
def test_parse_limit_usd(text: str, limit: Decimal) -> None:
    assert limits_admin.parse_limit_usd(text) == limit


def test_parse_alert_thresholds() -> None:
    assert limits_admin.parse_alert_thresholds("50, 80, 100") == budgets.DEFAULT_THRESHOLDS
    assert limits_admin.parse_alert_thresholds("80%,50%,80") == (Decimal("0.5"), Decimal("0.8"))
    assert limits_admin.parse_alert_thresholds("  ") == ()
    assert limits_admin.format_thresholds((Decimal("0.255"), Decimal("1.0000"))) == "25.5, 100"
    with pytest.raises(InvalidRequestError, match="above 0"):
        limits_admin.parse_alert_thresholds("0")


def test_save_budget_unknown_scope(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(NotFoundError, match="project 5 not found"):
        limits_admin.save_budget(
            conn, "owner", scope_type="project", scope_id=5, period="daily", limit_usd="1"
        )


def test_list_scopes_prefixes_organization(engine: Engine) -> None:
    seeded = seed_scopes(engine)
    with engine.begin() as conn:
        directory.create_team(conn, "Research", organization="Partner Lab")
        scopes = limits_admin.list_scopes(conn)

    names = [(scope.scope_type, scope.name) for scope in scopes]
    assert names[:2] == [("organization", "Default"), ("organization", "Partner Lab")]
    assert ("team", "Default / Research") in names
    assert ("team", "Partner Lab / Research") in names
    assert ("project", "Default / Research / Folding") in names
    team = next(
        scope for scope in scopes if scope.scope_id == seeded.team_id and scope.scope_type == "team"
    )
    assert team.timezone == NEW_YORK
