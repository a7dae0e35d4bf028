"""Model comparisons through a running proxy, and the Compare page run headless with AppTest.

The proxy serves the sandbox models and a FakeOpenAI upstream configured as
provider `fake`, whose model `fail-500` always fails. The page tests sign in
through app.py like tests/test_app_pages.py, whose helpers and fixtures they
import, and reach the proxy through GATEWAYZ_PROXY_URL.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest

from gateway_core import audit, compare, directory, keys, model_routes, providers
from gateway_core.access import Actor
from gateway_core.compare import (
    CellDelta,
    CellDone,
    ComparisonCancelled,
    RunStore,
    compare_models,
    parse_prompt_file,
    rerun_comparison,
    resume_comparison,
    run_checks,
    set_winner_alias,
    summarize,
)
from gateway_core.errors import InvalidRequestError, PermissionDeniedError
from gateway_core.schema import (
    audit_log,
    comparison_cells,
    comparison_ratings,
    comparison_runs,
    metadata,
)
from gateway_core.schema import model_routes as model_routes_table
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import usage_row
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    add_user,
    app_env,
    cookies,
    open_page,
    plotly_specs,
    sign_in,
    start_app,
    values,
)

NOTICE = "[sandbox: synthetic answer, no model was called, no cost]"
COMPARISON_TABLES = {
    "comparison_runs",
    "comparison_prompts",
    "comparison_cells",
    "comparison_ratings",
}


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        # One upstream attempt per cell, so upstream requests count cells.
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
        GATEWAYZ_CIRCUIT_FAILURES="1000",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("compare") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def team_id(engine: Engine, fake_upstream: FakeOpenAI) -> int:
    fake_upstream.requests.clear()
    fake_upstream.calls.clear()
    with engine.begin() as conn:
        providers.upsert_provider(conn, name="fake", base_url=fake_upstream.base_url)
        return directory.create_team(conn, "research").id


@pytest.fixture
def live_key(engine: Engine, team_id: int) -> str:
    with engine.begin() as conn:
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team_id, name="live").secret


@pytest.fixture
def sandbox_key(engine: Engine, team_id: int) -> str:
    with engine.begin() as conn:
        issued = keys.create_key(
            conn, TEST_SECRET.encode(), team_id=team_id, name="sandbox", mode="test"
        )
    return issued.secret


@pytest.fixture
def store(engine: Engine) -> RunStore:
    return RunStore(engine)


def upstream_prompts(upstream: FakeOpenAI) -> Counter[tuple[str, str]]:
    """Count the (model, prompt) pairs that reached the fake upstream."""
    return Counter((body["model"], body["messages"][-1]["content"]) for body in upstream.requests)


# Checks and inputs, without the proxy


@pytest.mark.parametrize(
    ("answer", "expected", "check", "passed"),
    [
        ("Paris", "Paris", "exact", True),
        ("  Paris\n", "Paris ", "exact", True),
        ("paris", "Paris", "exact", False),
        ("The capital is Paris.", "Paris", "exact", False),
        ("The capital is PARIS.", "paris", "contains", True),
        ("The capital is Lyon.", "Paris", "contains", False),
        ("Order 12345 shipped", r"\b\d{5}\b", "regex", True),
        ("Order 1234 shipped", r"\b\d{5}\b", "regex", False),
        ("PARIS", "(?i)^paris$", "regex", True),
        ('{"city": "Paris"}', "unused", "json", True),
        ("  [1, 2, 3]  ", "unused", "json", True),
        ("{'city': 'Paris'}", "unused", "json", False),
        ("Sure! {}", "unused", "json", False),
        (None, "Paris", "contains", False),
        (None, "x", "json", False),
    ],
)
def test_check_outcomes(answer: str | None, expected: str, check: str, passed: bool) -> None:
    assert run_checks(answer, expected, [check]) == {check: passed}


def test_checks_skipped_without_expected() -> None:
    assert run_checks("anything", None, compare.CHECKS) == {}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"models": []}, "choose at least one model"),
        ({"models": ["sandbox/echo", "sandbox/echo"]}, "only once"),
        ({"prompts": ["  "]}, "prompt 1 is empty"),
        ({"checks": ["fuzzy"]}, "unknown checks"),
        ({"temperature": 2.5}, "temperature must be between 0 and 2.0"),
        ({"max_tokens": 0}, "max tokens must be at least 1"),
        ({"expected": ["a", "b"]}, "expected has 2 entries for 1 prompts"),
        ({"expected": ["(unclosed"], "checks": ["regex"]}, "not a valid regular expression"),
    ],
)
def test_build_spec_rejects(arguments: dict, message: str) -> None:
    inputs = {"models": ["sandbox/echo"], "prompts": ["hi"], **arguments}
    with pytest.raises(InvalidRequestError, match=message):
        compare.build_spec(inputs.pop("models"), inputs.pop("prompts"), **inputs)


def test_build_spec_blank_expected_is_none() -> None:
    spec = compare.build_spec(["sandbox/echo"], ["a", "b"], expected=["  ", "x"], system="  ")
    assert spec.expected == (None, "x")
    assert spec.system is None


def test_parse_csv_prompt_file() -> None:
    data = b'\xef\xbb\xbfPrompt,Expected\n"Capital of France, please?",Paris\nSay hi,\n'
    prompts, expected = parse_prompt_file("questions.CSV", data)
    assert prompts == ["Capital of France, please?", "Say hi"]
    assert expected == ["Paris", None]


def test_parse_jsonl_prompt_file() -> None:
    lines = [
        json.dumps({"prompt": "2+2?", "expected": "4"}),
        "",
        json.dumps({"prompt": "Say hi", "expected": None}),
        json.dumps({"prompt": "Name a colour"}),
    ]
    prompts, expected = parse_prompt_file("set.jsonl", "\n".join(lines).encode())
    assert prompts == ["2+2?", "Say hi", "Name a colour"]
    assert expected == ["4", None, None]


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("p.txt", b"prompt\nhi\n", "upload a .csv or .jsonl file"),
        ("p.csv", b"question,answer\nhi,there\n", "has no 'prompt' column"),
        ("p.csv", b"prompt\n", "contains no prompts"),
        ("p.csv", b"prompt,expected\nhi,x\n ,y\n", "line 3: the prompt is empty"),
        ("p.jsonl", b'{"prompt": "hi"}\n{oops\n', "line 2 is not valid JSON"),
        ("p.jsonl", b'["hi"]\n', "line 1 must be a JSON object"),
        ("p.jsonl", b'{"prompt": "hi", "expected": 4}\n', "'expected' must be a string"),
        ("p.csv", b"\xff\xfe", "is not UTF-8 text"),
        ("p.csv", b"prompt\n" + b"q\n" * 501, "has 501 prompts"),
    ],
)
def test_parse_prompt_file_rejects(filename: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_prompt_file(filename, data)


def test_proxy_url_setting() -> None:
    assert compare.proxy_url({}) == "http://127.0.0.1:8000"
    assert compare.proxy_url({"GATEWAYZ_PROXY_PORT": "9100"}) == "http://127.0.0.1:9100"
    assert compare.proxy_url({"GATEWAYZ_PROXY_URL": "http://10.0.0.5:9000/"}) == (
        "http://10.0.0.5:9000"
    )
    with pytest.raises(compare.ConfigError, match="must start with http"):
        compare.proxy_url({"GATEWAYZ_PROXY_URL": "10.0.0.5:9000"})


def test_migration_matches_schema(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    ours = [diff for diff in differences if COMPARISON_TABLES & set(_tables_named(diff))]
    assert ours == []


def _tables_named(diff: object) -> list[str]:
    """Return the table names that one autogenerate difference mentions."""
    items = diff if isinstance(diff, list) else [diff]
    names = []
    for item in items:
        for part in item:
            table = getattr(part, "table", None)
            names.append(getattr(table, "name", None) or getattr(part, "name", None))
            if isinstance(part, str):
                names.append(part)
    return [name for name in names if isinstance(name, str)]


# compare_models through the proxy


def test_failed_model_gives_error_cells(
    proxy: ProxyProcess, live_key: str, store: RunStore, engine: Engine
) -> None:
    models = ["sandbox/echo", "fake/steady", "fake/fail-500", "sandbox/reverse"]
    frame = compare_models(
        models,
        ["one two three", "four five"],
        live_key,
        base_url=proxy.base_url,
        run_store=store,
        created_by="alice",
    )

    assert len(frame) == 8
    assert frame["model"].tolist() == models * 2
    failed = frame[frame["model"] == "fake/fail-500"]
    assert failed["answer"].isna().all()
    assert all(error.startswith("HTTP 5") for error in failed["error"])
    served = frame[frame["model"] != "fake/fail-500"]
    assert served["error"].isna().all()
    assert served["answer"].tolist() == [
        f"{NOTICE} one two three",
        "fake answer: one two three",
        f"{NOTICE} three two one",
        f"{NOTICE} four five",
        "fake answer: four five",
        f"{NOTICE} five four",
    ]
    for cell in frame.itertuples():
        row = usage_row(engine, cell.request_id)
        assert row["model"] == cell.model
        assert row["stream"] is True
        assert row["cost_usd"] == cell.cost_usd
        assert (row["status_code"] >= 500) == (cell.model == "fake/fail-500")
    assert (served["ttft_ms"] >= 0).all()
    assert (served["latency_ms"] >= served["ttft_ms"]).all()
    assert served["input_tokens"].tolist() == [6, 11, 6, 5, 11, 5]
    assert served["output_tokens"].tolist() == [12, 5, 12, 11, 4, 11]

    run_id = int(frame["run_id"].iloc[0])
    with engine.connect() as conn:
        run = conn.execute(select(comparison_runs).where(comparison_runs.c.id == run_id)).one()
        stored = conn.execute(
            select(comparison_cells.c.model, comparison_cells.c.error).where(
                comparison_cells.c.run_id == run_id
            )
        ).all()
    assert run.status == "completed"
    assert run.created_by == "alice"
    assert run.finished_at is not None
    assert len(stored) == 8
    assert sorted(model for model, error in stored if error) == ["fake/fail-500"] * 2


def test_resume_skips_finished_cells(
    proxy: ProxyProcess, live_key: str, store: RunStore, fake_upstream: FakeOpenAI
) -> None:
    prompts = [f"question {i}" for i in range(4)]
    cancel = threading.Event()
    finished_before_cancel: list[tuple[str, str]] = []

    def cancel_after_three(event: object) -> None:
        if isinstance(event, CellDone):
            finished_before_cancel.append((event.cell.model, prompts[event.cell.position]))
            if event.finished == 3:
                cancel.set()

    with pytest.raises(ComparisonCancelled) as cancelled:
        compare_models(
            ["fake/alpha", "fake/beta"],
            prompts,
            live_key,
            base_url=proxy.base_url,
            concurrency=1,
            run_store=store,
            on_event=cancel_after_three,
            cancel=cancel,
        )
    run_id = cancelled.value.run_id
    assert store.load_run(run_id).status == "cancelled"
    stored = {(model, prompts[position]) for position, model in store.finished_cells(run_id)}
    assert set(finished_before_cancel) <= stored
    assert len(stored) < 8
    sent_before = upstream_prompts(fake_upstream)

    frame = resume_comparison(run_id, live_key, base_url=proxy.base_url, run_store=store)

    assert store.load_run(run_id).status == "completed"
    assert len(frame) == 8
    assert frame["error"].isna().all()
    resent = upstream_prompts(fake_upstream) - sent_before
    upstream_names = {(model.removeprefix("fake/"), prompt) for model, prompt in stored}
    assert not upstream_names & set(resent)
    assert sum(resent.values()) == 8 - len(stored)
    for model, prompt in finished_before_cancel:
        assert upstream_prompts(fake_upstream)[(model.removeprefix("fake/"), prompt)] == 1


def test_streamlit_stop_cancels_run(
    proxy: ProxyProcess, live_key: str, store: RunStore, fake_upstream: FakeOpenAI
) -> None:
    """A click during a run makes Streamlit raise StopException from the page's event handler."""
    closed_before = fake_upstream.streams_closed_early

    def stop_on_first_slow_chunk(event: object) -> None:
        if isinstance(event, CellDelta) and event.model == "fake/slow-stream":
            raise StopException

    started = time.monotonic()
    with pytest.raises(StopException):
        compare_models(
            ["fake/slow-stream", "sandbox/echo"],
            ["go"],
            live_key,
            base_url=proxy.base_url,
            run_store=store,
            on_event=stop_on_first_slow_chunk,
        )

    # The fake streams 200 chunks 50 ms apart, so a stream left open would take 10 s.
    assert time.monotonic() - started < 5
    (run,) = store.list_runs()
    assert run.status == "cancelled"
    assert ("fake/slow-stream", 0) not in {
        (model, position) for position, model in store.finished_cells(run.id)
    }
    deadline = time.monotonic() + 3
    while fake_upstream.streams_closed_early == closed_before:
        assert time.monotonic() < deadline, "upstream stream was not closed"
        time.sleep(0.02)


def test_compare_without_store(proxy: ProxyProcess, live_key: str, engine: Engine) -> None:
    frame = compare_models(
        ["sandbox/echo", "sandbox/reverse"], ["x y"], live_key, base_url=proxy.base_url
    )

    assert frame["run_id"].isna().all()
    assert frame["cell_id"].isna().all()
    assert frame["cost_usd"].tolist() == [None, None]
    assert frame["answer"].tolist() == [f"{NOTICE} x y", f"{NOTICE} y x"]
    assert frame["input_tokens"].tolist() == [5, 5]
    with engine.connect() as conn:
        assert conn.execute(select(comparison_runs.c.id)).first() is None


def test_summary_costs_equal_usage_rows(
    proxy: ProxyProcess, live_key: str, store: RunStore, engine: Engine
) -> None:
    with engine.begin() as conn:
        model_routes.set_price_override(conn, "fake/priced", {"input": "3", "output": "15"})
        model_routes.set_price_override(conn, "fake/dear", {"input": "30", "output": "60"})
    models = ["fake/priced", "fake/dear", "sandbox/echo"]
    frame = compare_models(
        models,
        ["a", "b c", "d e f"],
        live_key,
        base_url=proxy.base_url,
        run_store=store,
    )
    summary = summarize(frame, models).set_index("model")

    for model in models:
        request_ids = frame.loc[frame["model"] == model, "request_id"]
        usage_costs = [usage_row(engine, request_id)["cost_usd"] for request_id in request_ids]
        assert summary.loc[model, "total_cost_usd"] == sum(usage_costs, Decimal(0))
        assert isinstance(summary.loc[model, "total_cost_usd"], Decimal)
    # Per million tokens: 3 calls of 11 prompt tokens at $3, and 3 + 4 + 5
    # completion tokens ("fake answer: " and the prompt's words) at $15.
    assert summary.loc["fake/priced", "total_cost_usd"] == Decimal("0.000279")
    assert summary.loc["fake/dear", "total_cost_usd"] > 0
    assert summary.loc["sandbox/echo", "total_cost_usd"] == 0
    assert summary.loc["fake/priced", "cells"] == 3
    assert summary.loc["fake/priced", "errors"] == 0


def test_checks_through_proxy(proxy: ProxyProcess, live_key: str, store: RunStore) -> None:
    prompts = ["alpha beta", "order 12345", "no expectation"]
    expected = [f"{NOTICE} alpha beta", r"order \d{5}$", None]
    frame = compare_models(
        ["sandbox/echo", "sandbox/reverse", "fake/fail-500"],
        prompts,
        live_key,
        base_url=proxy.base_url,
        expected=expected,
        checks=["exact", "contains", "regex", "json"],
        run_store=store,
    )
    cells = frame.set_index(["position", "model"])

    assert cells.loc[(0, "sandbox/echo"), "exact"]
    assert cells.loc[(0, "sandbox/echo"), "contains"]
    # As a pattern, the notice's brackets are a character class, so it does not match.
    assert not cells.loc[(0, "sandbox/echo"), "regex"]
    assert not cells.loc[(0, "sandbox/echo"), "json"]
    assert not cells.loc[(0, "sandbox/echo"), "passed"]
    assert not cells.loc[(0, "sandbox/reverse"), "exact"]
    assert not cells.loc[(0, "sandbox/reverse"), "contains"]
    assert cells.loc[(1, "sandbox/echo"), "regex"]
    assert not cells.loc[(1, "sandbox/echo"), "contains"]
    assert not cells.loc[(1, "sandbox/reverse"), "regex"]
    assert not cells.loc[(1, "fake/fail-500"), "regex"]
    assert pd.isna(cells.loc[(2, "sandbox/echo"), "passed"])
    assert pd.isna(cells.loc[(2, "sandbox/echo"), "exact"])

    summary = summarize(frame).set_index("model")
    assert summary.loc["sandbox/echo", "checked"] == 2
    assert summary.loc["sandbox/echo", "pass_rate"] == 0
    assert summary.loc["fake/fail-500", "errors"] == 3
    assert pd.isna(summary.loc["fake/fail-500", "median_latency_ms"])
    reloaded = store.load_cells(int(frame["run_id"].iloc[0]))
    echo_second = next(c for c in reloaded if (c.position, c.model) == (1, "sandbox/echo"))
    assert dict(echo_second.check_results) == {
        "exact": False,
        "contains": False,
        "regex": True,
        "json": False,
    }


def test_pass_rate_from_contains_check(
    proxy: ProxyProcess, sandbox_key: str, store: RunStore
) -> None:
    frame = compare_models(
        ["sandbox/echo", "sandbox/lorem"],
        ["dolor"],
        sandbox_key,
        base_url=proxy.base_url,
        max_tokens=3,
        expected=["lorem"],
        checks=["contains"],
        run_store=store,
    )
    summary = summarize(frame).set_index("model")
    assert summary.loc["sandbox/lorem", "pass_rate"] == 1
    assert summary.loc["sandbox/echo", "pass_rate"] == 0
    assert frame.loc[frame["model"] == "sandbox/lorem", "answer"].item() == "lorem ipsum dolor"


def test_ratings_give_mean_rating(proxy: ProxyProcess, live_key: str, store: RunStore) -> None:
    frame = compare_models(
        ["sandbox/echo", "sandbox/reverse"],
        ["first", "second"],
        live_key,
        base_url=proxy.base_url,
        run_store=store,
    )
    run_id = int(frame["run_id"].iloc[0])
    ids = frame.set_index(["position", "model"])["cell_id"]
    store.rate_cell(int(ids[(0, "sandbox/echo")]), 5, "clear", "alice")
    store.rate_cell(int(ids[(0, "sandbox/echo")]), 3, None, "bob")
    store.rate_cell(int(ids[(1, "sandbox/echo")]), 2, "  ", "alice")
    store.rate_cell(int(ids[(1, "sandbox/echo")]), 1, "changed my mind", "alice")

    reloaded = compare.cells_frame(store.load_spec(run_id), store.load_cells(run_id), run_id)
    summary = summarize(reloaded).set_index("model")
    # Cell means 4 and 1, then their mean.
    assert summary.loc["sandbox/echo", "mean_rating"] == 2.5
    assert pd.isna(summary.loc["sandbox/reverse", "mean_rating"])
    alice = {
        rating.cell_id: (rating.rating, rating.note) for rating in store.ratings(run_id, "alice")
    }
    assert alice == {
        int(ids[(0, "sandbox/echo")]): (5, "clear"),
        int(ids[(1, "sandbox/echo")]): (1, "changed my mind"),
    }
    with pytest.raises(InvalidRequestError, match="rating must be 1 to 5"):
        store.rate_cell(int(ids[(0, "sandbox/echo")]), 6, None, "alice")


def test_rerun_sends_every_cell_again(
    proxy: ProxyProcess, live_key: str, store: RunStore, fake_upstream: FakeOpenAI
) -> None:
    first = compare_models(
        ["fake/m1", "fake/m2"],
        ["p"],
        live_key,
        base_url=proxy.base_url,
        system="Answer briefly.",
        temperature=0.5,
        max_tokens=20,
        run_store=store,
        kind="interactive",
    )
    run_id = int(first["run_id"].iloc[0])
    second = rerun_comparison(
        run_id, live_key, base_url=proxy.base_url, run_store=store, created_by="bob"
    )

    new_id = int(second["run_id"].iloc[0])
    assert new_id != run_id
    assert store.load_run(new_id).source_run_id == run_id
    assert store.load_run(new_id).kind == "interactive"
    assert len(fake_upstream.requests) == 4
    body = fake_upstream.requests[-1]
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert body["temperature"] == 0.5
    assert body["max_tokens"] == 20


def test_set_winner_alias_audited(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    with engine.begin() as conn:
        model_routes.set_alias(conn, "research-default", "sandbox/echo", "bob")
    with caplog.at_level(logging.INFO, logger="gatewayz.audit"), engine.begin() as conn:
        set_winner_alias(conn, "research-default", "fake/steady", Actor("alice", "owner"))

    with engine.connect() as conn:
        route = conn.execute(
            select(model_routes_table).where(model_routes_table.c.name == "research-default")
        ).one()
        entry = conn.execute(select(audit_log)).one()
        assert audit.verify_chain(conn) == []
    assert route.target == "fake/steady"
    assert route.updated_by == "alice"
    assert (entry.actor, entry.action, entry.object_type, entry.object_id) == (
        "alice",
        "model_alias.set",
        "model_alias",
        "research-default",
    )
    assert entry.before == {"target": "sandbox/echo"}
    assert entry.after == {"target": "fake/steady", "reason": "model comparison winner"}
    messages = [record.getMessage() for record in caplog.records if record.name == "gatewayz.audit"]
    assert messages == [
        "user alice pointed alias 'research-default' at fake/steady after a model comparison"
    ]


def test_set_winner_alias_rejects_bad_alias(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="alias must be letters"), engine.begin() as conn:
        set_winner_alias(conn, "team/default", "sandbox/echo", Actor("alice", "owner"))
    with engine.connect() as conn:
        assert conn.execute(select(audit_log.c.id)).first() is None


@pytest.mark.parametrize(
    ("actor", "code"),
    [
        # A researcher may run comparisons but not change model routing.
        (Actor("rita", "researcher"), "action_not_allowed"),
        # An alias routes every organization's requests, so organization owners may not.
        (Actor("olga", "owner", organization_ids=frozenset({1})), "installation_action"),
    ],
)
def test_set_winner_alias_permission(engine: Engine, actor: Actor, code: str) -> None:
    with pytest.raises(PermissionDeniedError) as raised, engine.begin() as conn:
        set_winner_alias(conn, "research-default", "sandbox/echo", actor)
    assert raised.value.code == code
    with engine.connect() as conn:
        assert conn.execute(select(model_routes_table.c.name)).first() is None
        assert conn.execute(select(audit_log.c.id)).first() is None


# The Compare page


@pytest.fixture
def page_env(
    request: pytest.FixtureRequest, proxy: ProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set up the app's environment as `cookies` does and point the app at the test proxy."""
    request.getfixturevalue("cookies")
    monkeypatch.setenv("GATEWAYZ_PROXY_URL", proxy.base_url)


def signed_in_compare_page(engine: Engine, role: str = "researcher") -> AppTest:
    add_user(engine, "rita", role)
    at = sign_in(start_app(), "rita")
    return open_page(at, "pages/compare.py")


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    """Return the one dataframe on the page that has `column`."""
    tables = [frame.value for frame in at.dataframe if column in frame.value.columns]
    assert len(tables) == 1, f"expected one table with a {column!r} column, found {len(tables)}"
    return tables[0]


def enter_key(at: AppTest, key: str) -> AppTest:
    at.text_input(key="compare_api_key").input(key)
    at.run()
    assert not at.exception, at.exception
    return at


def test_page_compares_and_rates(page_env, engine: Engine, sandbox_key: str) -> None:
    at = signed_in_compare_page(engine)
    assert "Paste a project API key" in values(at.info)[0]

    enter_key(at, sandbox_key)
    assert "sandbox/echo" in at.multiselect(key="compare_models").options
    at.multiselect(key="compare_models").set_value(["sandbox/echo", "sandbox/reverse"])
    at.text_area(key="compare_prompt").input("red green blue")
    at.button(key="compare_run").click()
    at.run()
    assert not at.exception, at.exception

    with engine.connect() as conn:
        run = conn.execute(select(comparison_runs)).one()
        cells = conn.execute(select(comparison_cells).order_by(comparison_cells.c.id)).all()
    assert run.kind == "interactive"
    assert run.created_by == "rita"
    assert run.status == "completed"
    assert {cell.model for cell in cells} == {"sandbox/echo", "sandbox/reverse"}
    markdown = values(at.markdown)
    assert f"{NOTICE} red green blue" in markdown
    assert f"{NOTICE} blue green red" in markdown
    captions = [caption for caption in values(at.caption) if "TTFT" in caption]
    assert len(captions) == 2
    assert all("6 in / 12 out tokens" in caption for caption in captions)
    assert all(caption.endswith("$0.000000") for caption in captions)

    echo = next(cell for cell in cells if cell.model == "sandbox/echo")
    at.select_slider(key=f"rating_{echo.id}").set_value(4)
    at.text_input(key=f"note_{echo.id}").input("faithful")
    at.button(key=f"rate_{echo.id}").click()
    at.run()
    assert not at.exception, at.exception
    with engine.connect() as conn:
        rating = conn.execute(select(comparison_ratings)).one()
    assert (rating.cell_id, rating.rated_by, rating.rating, rating.note) == (
        echo.id,
        "rita",
        4,
        "faithful",
    )
    assert "Saved your rating of sandbox/echo on prompt 1." in values(at.success)
    summary = table_with(at, "total_cost_usd").set_index("model")
    assert summary.loc["sandbox/echo", "mean_rating"] == 4
    # Researchers cannot repoint aliases.
    assert not [button for button in at.button if button.key == "winner_submit"]


def test_page_rejects_one_model(page_env, engine: Engine, sandbox_key: str) -> None:
    at = enter_key(signed_in_compare_page(engine), sandbox_key)
    at.multiselect(key="compare_models").set_value(["sandbox/echo"])
    at.text_area(key="compare_prompt").input("hello")
    at.button(key="compare_run").click()
    at.run()

    assert "Choose 2 to 6 models to compare." in values(at.error)
    with engine.connect() as conn:
        assert conn.execute(select(comparison_runs.c.id)).first() is None


def test_page_rejects_unknown_key(page_env, engine: Engine) -> None:
    at = enter_key(signed_in_compare_page(engine), "gw_test_not-a-real-key-000000000000000")

    assert any("rejected this API key" in message for message in values(at.error))
    assert at.multiselect(key="compare_models").options == []


def test_page_batch_and_winner_alias(page_env, engine: Engine, sandbox_key: str) -> None:
    at = enter_key(signed_in_compare_page(engine, role="admin"), sandbox_key)
    at.multiselect(key="compare_models").set_value(["sandbox/echo", "sandbox/lorem"])
    at.number_input(key="compare_max_tokens").set_value(12)
    rows = "prompt,expected\nsay lorem,lorem\nsay hello,hello\nno check,\n"
    at.file_uploader(key="compare_file").set_value(("set.csv", rows.encode(), "text/csv"))
    at.multiselect(key="compare_checks").set_value(["contains"])
    at.button(key="compare_start_batch").click()
    at.run()
    assert not at.exception, at.exception

    with engine.connect() as conn:
        run = conn.execute(select(comparison_runs)).one()
    assert run.kind == "batch"
    assert run.status == "completed"
    assert run.max_tokens == 12
    results = table_with(at, "prompt #")
    assert len(results) == 6
    assert results["prompt #"].tolist() == [1, 1, 2, 2, 3, 3]
    summary = table_with(at, "total_cost_usd").set_index("model")
    # The lorem answers contain "lorem" but not "hello", and echo repeats both prompts.
    assert summary.loc["sandbox/lorem", "pass_rate"] == 0.5
    assert summary.loc["sandbox/echo", "pass_rate"] == 1
    assert summary.loc["sandbox/echo", "total_cost_usd"] == "0.0000000000"
    (chart,) = plotly_specs(at)
    assert chart["layout"]["title"]["text"] == "Cost against pass rate"
    assert chart["data"][0]["text"] == ["sandbox/echo", "sandbox/lorem"]
    download = at.get("download_button")
    assert len(download) == 1

    at.text_input(key="winner_alias").input("research-default")
    at.selectbox(key="winner_model").set_value("sandbox/echo")
    at.button(key="winner_submit").click()
    at.run()
    assert not at.exception, at.exception
    with engine.connect() as conn:
        target = conn.execute(
            select(model_routes_table.c.target).where(
                model_routes_table.c.name == "research-default"
            )
        ).scalar_one()
    assert target == "sandbox/echo"
    assert "Alias 'research-default' now points at sandbox/echo." in values(at.success)
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log)).one()
    assert (entry.actor, entry.object_id, entry.after["target"]) == (
        "rita",
        "research-default",
        "sandbox/echo",
    )


def test_page_resumes_from_history(
    page_env, engine: Engine, proxy: ProxyProcess, sandbox_key: str, store: RunStore
) -> None:
    cancel = threading.Event()

    def cancel_after_first(event: object) -> None:
        if isinstance(event, CellDone):
            cancel.set()

    with pytest.raises(ComparisonCancelled) as cancelled:
        compare_models(
            ["sandbox/echo", "sandbox/reverse"],
            [f"prompt {i}" for i in range(3)],
            sandbox_key,
            base_url=proxy.base_url,
            concurrency=1,
            run_store=store,
            created_by="rita",
            on_event=cancel_after_first,
            cancel=cancel,
        )
    run_id = cancelled.value.run_id
    done_before = store.finished_cells(run_id)
    requests_before = {cell.request_id for cell in store.load_cells(run_id)}

    at = enter_key(signed_in_compare_page(engine), sandbox_key)
    history = table_with(at, "Cells done")
    assert history["Status"].tolist() == ["cancelled"]
    at.selectbox(key="history_run").set_value(run_id)
    at.button(key="history_open").click()
    at.run()
    assert any("Resume sends only those" in message for message in values(at.warning))
    at.button(key="run_resume").click()
    at.run()
    assert not at.exception, at.exception

    run = store.load_run(run_id)
    assert run.status == "completed"
    assert run.finished_cells == 6
    cells = store.load_cells(run_id)
    kept = [cell for cell in cells if (cell.position, cell.model) in done_before]
    assert {cell.request_id for cell in kept} == requests_before
    assert len(table_with(at, "prompt #")) == 6


def test_page_key_never_stored(page_env, engine: Engine, sandbox_key: str) -> None:
    at = enter_key(signed_in_compare_page(engine), sandbox_key)
    at.multiselect(key="compare_models").set_value(["sandbox/echo", "sandbox/reverse"])
    at.text_area(key="compare_prompt").input("hello")
    at.button(key="compare_run").click()
    at.run()

    secret_part = sandbox_key[len("gw_test_") + 4 : -4]
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(select(table)).all()
            assert not any(secret_part in str(tuple(row)) for row in rows), table.name
