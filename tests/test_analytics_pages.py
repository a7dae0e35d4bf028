"""The Overview, Team spend, Model analytics, Usage explorer and Research reports pages.

Each page runs headless with AppTest against seeded calls. Hostile filter
values (quotes, SQL fragments, wildcards, crafted query parameters) must give
a correct, empty or rejected result and never an exception.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select
from streamlit.runtime.download_data_util import convert_data_to_bytes_and_infer_mime
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from gateway_core import budgets
from gateway_core.errors import GatewayError
from gateway_core.explorer import ExplorerFilters
from gateway_core.schema import organizations, usage_events
from tests import test_app_pages
from tests.test_app_pages import (
    APP_PATH,
    TIMEOUT_SECONDS,
    add_user,
    labels,
    open_page,
    plotly_specs,
    sign_in,
    start_app,
    sums_by_trace,
    values,
)
from tests.test_reports import MODEL_A, MODEL_B, Seeded, seed_calls, seed_directory, usage_row

ZONE = "America/New_York"

# The app tests' fixtures: the app's environment and an empty cookie jar.
app_env = test_app_pages.app_env
cookies = test_app_pages.cookies

HOSTILE_TEXT = [
    "' OR '1'='1",
    "x'; DROP TABLE usage_events; --",
    "%",
    "_",
    '" OR ""="',
    "\\",
    "1) UNION SELECT password_hash FROM users --",
]


@dataclass(frozen=True)
class Recent:
    seeded: Seeded
    now: datetime


def seed_recent(engine: Engine) -> Recent:
    """Seed three calls in the last 7 days and one 8 days ago, around the current time.

    Calls "n1" and "n2" are stamped now, so they fall on today in any zone.
    """
    seeded = seed_directory(engine, ZONE)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()

        def call(request_id: str, at: datetime, key_id: int, team_id: int, project_id, **values):
            return usage_row(
                request_id,
                at,
                organization_id=organization_id,
                team_id=team_id,
                key_id=key_id,
                project_id=project_id,
                **values,
            )

        conn.execute(
            insert(usage_events),
            [
                call(
                    "n1",
                    now,
                    seeded.folding_key,
                    seeded.lab,
                    seeded.folding,
                    cost="1.25",
                    prompt=100,
                    completion=10,
                    latency=100,
                    ttft=20,
                ),
                call(
                    "n2",
                    now,
                    seeded.vision_key,
                    seeded.lab,
                    seeded.vision,
                    model=MODEL_B,
                    cost="0.5",
                    latency=300,
                ),
                call(
                    "n3",
                    now - timedelta(days=2),
                    seeded.lab_key,
                    seeded.lab,
                    None,
                    cost="2.0000000001",
                    status=502,
                    latency=1000,
                    attempts=2,
                ),
                call(
                    "n4",
                    now - timedelta(days=8),
                    seeded.other_key,
                    seeded.other,
                    None,
                    cost="3",
                    latency=200,
                ),
            ],
        )
    return Recent(seeded, now)


def signed_in(engine: Engine, page: str, role: str = "viewer") -> AppTest:
    add_user(engine, "victor", role)
    at = sign_in(start_app(), "victor")
    return open_page(at, page)


def metric_values(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def local_today() -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(ZONE)).date()


def estimate_ms(text: str) -> float:
    """Return the number of an Overview latency metric shown as an estimate, "≈1,234 ms"."""
    assert text.startswith("≈"), text
    assert text.endswith(" ms"), text
    return float(text[1:-3].replace(",", ""))


# Overview


def test_overview_metrics_and_previous_period(cookies, engine: Engine) -> None:
    seed_recent(engine)
    at = signed_in(engine, "pages/overview.py")

    at.selectbox(key="overview_period").set_value("last_7_days")
    at.run()

    assert not at.exception
    metrics = metric_values(at)
    # n1 + n2 today; n1 + n2 + n3 in the last 7 days; n4 in the 7 days before.
    assert metrics["Spend today (USD)"] == "$1.7500"
    assert metrics["Spend, last 7 days (USD)"] == "$3.7500"
    assert metrics["Requests"] == "3"
    assert metrics["Error rate"] == "33.33%"
    # Successful calls n1 (100 ms) and n2 (300 ms), interpolated percentiles,
    # estimated from the latency histograms within 10%.
    assert estimate_ms(metrics["Latency p50"]) == pytest.approx(200, rel=0.1)
    assert estimate_ms(metrics["Latency p95"]) == pytest.approx(290, rel=0.1)
    assert estimate_ms(metrics["TTFT p50"]) == pytest.approx(20, rel=0.1)
    deltas = {metric.label: metric.proto.delta for metric in at.metric}
    assert deltas["Spend, last 7 days (USD)"] == "+0.7500"
    assert deltas["Requests"] == "+2"
    (spec,) = plotly_specs(at)
    assert spec["layout"]["title"]["text"] == "Spend per day by model (USD)"
    assert sums_by_trace(spec) == {
        MODEL_A: pytest.approx(3.2500000001),
        MODEL_B: pytest.approx(0.5),
    }
    top_models, top_teams, top_keys = (frame.value for frame in at.dataframe)
    assert top_models["name"].tolist() == [MODEL_A, MODEL_B]
    assert top_teams["name"].tolist() == ["Lab"]
    assert [name.split(" (")[0] for name in top_keys["name"]] == ["shared", "fold", "see"]
    assert all("…" in name for name in top_keys["name"])


def test_overview_empty_state(cookies, engine: Engine) -> None:
    seed_directory(engine, ZONE)
    at = signed_in(engine, "pages/overview.py")

    assert not at.exception
    assert any("No calls in this period." in message for message in values(at.info))
    assert metric_values(at)["Requests"] == "0"
    assert not at.get("plotly_chart")


def test_overview_without_organization(cookies, engine: Engine) -> None:
    at = signed_in(engine, "pages/overview.py")

    assert not at.exception
    assert any("No organization yet" in message for message in values(at.info))


# Team spend


def test_team_spend_chart_and_budget_line(cookies, engine: Engine) -> None:
    recent = seed_recent(engine)
    with engine.begin() as conn:
        budgets.set_budget(
            conn, scope_type="team", scope_id=recent.seeded.lab, period="daily", limit_usd="5"
        )
        budgets.set_budget(
            conn, scope_type="team", scope_id=recent.seeded.lab, period="monthly", limit_usd="100"
        )
    at = signed_in(engine, "pages/team_spend.py", role="billing")
    today = local_today()

    at.date_input(key="team_spend_dates").set_value((today - timedelta(days=10), today))
    at.selectbox(key="team_spend_team").set_value(recent.seeded.lab)
    at.selectbox(key="team_spend_unit").set_value("day")
    at.run()

    assert not at.exception
    per_team, budget_rows, by_project, by_key = (frame.value for frame in at.dataframe)
    assert per_team["name"].tolist() == ["Lab", "Other"]
    assert per_team["cost_usd"].tolist() == [Decimal("3.7500000001"), Decimal("3.0000000000")]
    (spec,) = plotly_specs(at)
    assert spec["layout"]["title"]["text"] == "Spend per day by model (USD)"
    assert sums_by_trace(spec) == {
        MODEL_A: pytest.approx(3.2500000001),
        MODEL_B: pytest.approx(0.5),
    }
    lines = [shape["y0"] for shape in spec["layout"]["shapes"]]
    assert lines == [5.0]
    assert budget_rows["period"].tolist() == ["daily", "monthly"]
    assert budget_rows["on_chart"].tolist() == [True, False]
    assert by_project["name"].tolist() == ["(no project)", "folding", "vision"]
    assert by_project["cost_usd"].tolist() == [
        Decimal("2.0000000001"),
        Decimal("1.2500000000"),
        Decimal("0.5000000000"),
    ]
    assert [name.split(" (")[0] for name in by_key["name"]] == ["shared", "fold", "see"]
    assert metric_values(at)["Spend of Lab (USD)"] == "$3.7500"


def test_team_spend_project_drill_down(cookies, engine: Engine) -> None:
    recent = seed_recent(engine)
    at = signed_in(engine, "pages/team_spend.py")

    at.selectbox(key="team_spend_team").set_value(recent.seeded.lab)
    at.run()
    at.selectbox(key="team_spend_project").set_value(recent.seeded.folding)
    at.run()

    assert not at.exception
    assert metric_values(at)["Spend of Lab / folding (USD)"] == "$1.2500"
    (spec,) = plotly_specs(at)
    assert sums_by_trace(spec) == {MODEL_A: pytest.approx(1.25)}
    link = at.get("page_link")[0].proto
    today = local_today()
    assert link.page == "explorer"
    assert parse_qs(link.query_string) == {
        "team": [str(recent.seeded.lab)],
        "project": [str(recent.seeded.folding)],
        "start": [(today - timedelta(days=29)).isoformat()],
        "end": [today.isoformat()],
    }


def test_team_spend_empty_range(cookies, engine: Engine) -> None:
    seed_recent(engine)
    at = signed_in(engine, "pages/team_spend.py")

    at.date_input(key="team_spend_dates").set_value((date(2020, 1, 1), date(2020, 1, 31)))
    at.run()

    assert not at.exception
    assert any("No calls in this date range." in message for message in values(at.info))
    assert not at.get("plotly_chart")


# Model analytics


def test_model_analytics_rates_and_latency(cookies, engine: Engine) -> None:
    seed_recent(engine)
    at = signed_in(engine, "pages/model_analytics.py", role="team_admin")

    assert not at.exception
    stats = at.dataframe[0].value.set_index("model")
    assert stats.loc[MODEL_A, "provider"] == "openai"
    assert stats.loc[MODEL_A, "requests"] == 2
    assert stats.loc[MODEL_A, "error_rate"] == 0.5
    assert stats.loc[MODEL_A, "retry_rate"] == 0.5
    # (1.25 + 2.0000000001) * 1000 / 2 requests
    assert stats.loc[MODEL_A, "cost_per_1k_requests"] == Decimal("1625.0000000500")
    # n3 failed, so only n1 counts for latency. Percentiles are estimates
    # from the latency histograms, within 10%.
    assert stats.loc[MODEL_A, "latency_p50"] == pytest.approx(100, rel=0.1)
    assert stats.loc[MODEL_A, "ttft_p50"] == pytest.approx(20, rel=0.1)
    assert stats.loc[MODEL_B, "requests"] == 1
    assert stats.loc[MODEL_B, "latency_p95"] == pytest.approx(300, rel=0.1)
    assert any("estimates from latency histograms" in caption.value for caption in at.caption)
    titles = [spec["layout"]["title"]["text"] for spec in plotly_specs(at)]
    assert titles == [
        "Cost per 1,000 requests (USD)",
        "Latency of successful calls (ms)",
        "Error and retry or fallback rate (% of requests)",
    ]


def test_model_analytics_team_filter(cookies, engine: Engine) -> None:
    recent = seed_recent(engine)
    at = signed_in(engine, "pages/model_analytics.py")
    today = local_today()

    at.date_input(key="model_analytics_dates").set_value((today - timedelta(days=9), today))
    at.selectbox(key="model_analytics_team").set_value(recent.seeded.other)
    at.run()

    assert not at.exception
    stats = at.dataframe[0].value
    assert stats["model"].tolist() == [MODEL_A]
    assert stats["requests"].tolist() == [1]


# Usage explorer


def explorer_page(engine: Engine, query: dict[str, str] | None = None) -> AppTest:
    add_user(engine, "victor", "viewer")
    at = sign_in(start_app(), "victor")
    at.switch_page("pages/explorer.py")
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, at.exception
    return at


def request_ids(at: AppTest) -> list[str]:
    return at.dataframe[0].value["request_id"].tolist()


def test_explorer_lists_newest_first(cookies, engine: Engine) -> None:
    seed_recent(engine)
    at = explorer_page(engine)

    assert request_ids(at) == ["n1", "n2", "n3"]
    table = at.dataframe[0].value.set_index("request_id")
    assert table.loc["n1", "team"] == "Lab"
    assert table.loc["n1", "project"] == "folding"
    assert table.loc["n1", "key"].startswith("fold (gw_live_")
    assert table.loc["n3", "project"] == "(no project)"
    assert labels(at.get("download_button")) == ["Export CSV"]


def test_explorer_filters(cookies, engine: Engine) -> None:
    recent = seed_recent(engine)
    at = explorer_page(engine)

    at.selectbox(key="explorer_status").set_value("server_error")
    at.run()
    assert request_ids(at) == ["n3"]

    at.selectbox(key="explorer_status").set_value("all")
    at.multiselect(key="explorer_projects").set_value([recent.seeded.vision])
    at.run()
    assert request_ids(at) == ["n2"]

    at.multiselect(key="explorer_projects").set_value([])
    at.multiselect(key="explorer_models").set_value([MODEL_A])
    at.text_input(key="explorer_request_id").input("n3")
    at.run()
    assert request_ids(at) == ["n3"]

    at.text_input(key="explorer_request_id").input("")
    at.multiselect(key="explorer_models").set_value([])
    at.text_input(key="explorer_model_search").input("CLAUDE")
    at.run()
    assert request_ids(at) == ["n2"]


@pytest.mark.parametrize("hostile", HOSTILE_TEXT)
def test_explorer_hostile_text_matches_nothing(cookies, engine: Engine, hostile: str) -> None:
    seed_recent(engine)
    at = explorer_page(engine)

    at.text_input(key="explorer_model_search").input(hostile)
    at.run()
    assert not at.exception
    assert "No calls match these filters. Widen the days or clear a filter." in values(at.info)

    at.text_input(key="explorer_model_search").input("")
    at.text_input(key="explorer_request_id").input(hostile)
    at.run()
    assert not at.exception
    assert "No calls match these filters. Widen the days or clear a filter." in values(at.info)

    with engine.connect() as conn:
        assert conn.execute(select(usage_events.c.request_id)).scalars().all()


def test_explorer_overlong_request_id(cookies, engine: Engine) -> None:
    seed_recent(engine)
    at = explorer_page(engine)

    at.text_input(key="explorer_request_id").set_value("n1" + "x" * 70)
    at.run()

    # The widget keeps the first 64 characters, the longest stored request id.
    assert not at.exception
    assert len(at.text_input(key="explorer_request_id").value) == 64
    assert "No calls match these filters. Widen the days or clear a filter." in values(at.info)


def test_explorer_filters_reject_overlong_values() -> None:
    now = datetime.now(UTC)
    with pytest.raises(GatewayError, match="longer than 64 characters"):
        ExplorerFilters(start=now, end=now, request_id="x" * 65)
    with pytest.raises(GatewayError, match="status must be one of"):
        ExplorerFilters(start=now, end=now, status="5xx' --")
    with pytest.raises(GatewayError, match="timezone-aware"):
        ExplorerFilters(start=now.replace(tzinfo=None), end=now)


@pytest.mark.parametrize(
    ("query", "warning"),
    [
        ({"team": "1 OR 1=1"}, "Ignored the team filter"),
        ({"team": "1;DROP TABLE teams"}, "Ignored the team filter"),
        ({"team": "999999"}, "Ignored unknown team ids"),
        ({"project": "-1"}, "Ignored the project filter"),
        ({"key": "0x10"}, "Ignored the key filter"),
        ({"status": "500' OR '1'='1"}, "Ignored the status filter"),
        ({"status": "999"}, "Ignored the status filter"),
        ({"model": "' UNION SELECT 1 --"}, "Ignored the model filter"),
        ({"start": "9999-12-31"}, "Ignored the start date"),
        ({"end": "2026-02-30"}, "Ignored the end date"),
        ({"start": "'; --"}, "Ignored the start date"),
    ],
)
def test_explorer_hostile_link_ignored(cookies, engine: Engine, query, warning) -> None:
    seed_recent(engine)

    at = explorer_page(engine, query)

    assert any(message.startswith(warning) for message in values(at.warning)), values(at.warning)
    assert request_ids(at) == ["n1", "n2", "n3"]


def test_explorer_link_preselects_team(cookies, engine: Engine) -> None:
    recent = seed_recent(engine)
    today = local_today()

    at = explorer_page(
        engine,
        {
            "team": str(recent.seeded.other),
            "start": (today - timedelta(days=9)).isoformat(),
            "end": today.isoformat(),
            "status": "200",
        },
    )

    assert not at.warning
    assert at.multiselect(key="explorer_teams").value == [recent.seeded.other]
    assert request_ids(at) == ["n4"]


def capture_deferred_downloads(monkeypatch) -> list[Callable]:
    """Record the data callables of deferred download buttons, which AppTest never runs."""
    captured: list[Callable] = []
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        captured.append(data_callable)
        return original(self, data_callable, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return captured


def download_text(data_callable: Callable) -> str:
    """Run a download callable and convert its result as Streamlit does on click."""
    data, _ = convert_data_to_bytes_and_infer_mime(data_callable(), RuntimeError("unsupported"))
    return data.decode()


def test_explorer_export_has_every_match(cookies, engine: Engine, monkeypatch) -> None:
    seed_recent(engine)
    downloads = capture_deferred_downloads(monkeypatch)
    at = explorer_page(engine)
    at.selectbox(key="explorer_status").set_value("success")
    at.run()

    rows = list(csv.DictReader(io.StringIO(download_text(downloads[-1]))))

    assert [row["request_id"] for row in rows] == ["n1", "n2"]
    assert [row["cost_usd"] for row in rows] == ["1.2500000000", "0.5000000000"]
    assert rows[0]["team"] == "Lab"
    assert rows[0]["key"].startswith("fold (gw_live_")


# Research reports


def test_reports_page_summary_and_csv(cookies, engine: Engine, monkeypatch) -> None:
    seeded = seed_calls(engine)
    downloads = capture_deferred_downloads(monkeypatch)
    at = signed_in(engine, "pages/reports.py", role="researcher")

    at.selectbox(key="reports_team").set_value(seeded.lab)
    at.run()
    at.selectbox(key="reports_project").set_value(seeded.folding)
    at.date_input(key="reports_dates").set_value((date(2026, 3, 8), date(2026, 3, 10)))
    at.run()

    assert not at.exception
    metrics = metric_values(at)
    assert metrics["Requests"] == "4"
    assert metrics["Input tokens"] == "1,310"
    assert metrics["Cost (USD)"] == "$2.6100"
    summary = at.dataframe[0].value
    assert summary["model"].tolist() == [MODEL_B, MODEL_A]
    assert any("Dr. Ada Lovelace" in text for text in values(at.markdown))
    content = download_text(downloads[-1])
    assert content.startswith("Report,Research usage report\r\n")
    assert "Principal investigator,Dr. Ada Lovelace\r\n" in content
    assert content.endswith("TOTAL,,,4,1310,520,361,2.6100012346\r\n")


def test_reports_page_empty_period(cookies, engine: Engine) -> None:
    seeded = seed_calls(engine)
    at = signed_in(engine, "pages/reports.py", role="researcher")

    at.selectbox(key="reports_team").set_value(seeded.other)
    at.date_input(key="reports_dates").set_value((date(2025, 1, 1), date(2025, 1, 31)))
    at.run()

    assert not at.exception
    assert any("No calls in this period." in message for message in values(at.info))
    assert labels(at.get("download_button")) == ["Download CSV"]


def test_researcher_sees_only_reports(cookies, engine: Engine) -> None:
    add_user(engine, "rita", "researcher")
    at = sign_in(start_app(), "rita")

    allowed = at.session_state["gatewayz_allowed_pages"]
    assert "reports" in allowed
    for page in ("overview", "team_spend", "model_analytics", "explorer"):
        assert page not in allowed
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/explorer.py")


@pytest.mark.parametrize(
    "page", ["overview", "team_spend", "model_analytics", "explorer", "reports"]
)
def test_page_run_directly_stops(app_env, page: str) -> None:
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page(f"pages/{page}.py")
    at.run()

    assert not at.exception
    assert any(message.startswith("Sign in") for message in values(at.error))
    assert not at.get("plotly_chart")
    assert not at.dataframe
