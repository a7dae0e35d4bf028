"""End-to-end journeys through `python -m gateway_core run`, driven in chromium.

One launcher (embedded Postgres, proxy, app) serves every journey in this
module, and the journeys run in file order because later ones use the teams,
keys and users that earlier ones create. Screenshots go to
artifacts/journeys/<journey>/<step>.png.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from gateway_core.config import PROJECT_ROOT
from tests.support import browser
from tests.support.fake_openai import free_port
from tests.test_launcher import read_until_banner, start_launcher, stop_launcher

pytestmark = pytest.mark.browser

ADMIN_PAGES = ("Keys", "Budgets & limits", "Users", "Audit log", "Billing")
ADMIN_URLS = {"keys": "Create a team", "users": "Invite a user", "budgets": "Set a budget"}
ORGANIZATION = "Acme Research"
SANDBOX_MODELS = ("sandbox/echo", "sandbox/reverse", "sandbox/lorem")
# USD per million tokens on sandbox/lorem, set on the Models page, so its calls
# cost money: $0.001 a token.
LOREM_PRICE = "1000"
# Seconds to wait for the proxy to reload prices, rate limits or budgets. It
# polls those tables every 2 seconds by default.
RELOAD_TIMEOUT = 15


@dataclass
class Gateway:
    proxy_url: str
    app_url: str
    database_url: str
    admin_password: str
    data_dir: Path
    # Shared between journeys, in file order.
    keys: dict[str, str] = field(default_factory=dict)
    researcher_password: str = ""


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    # Outside pytest's private base folder: the embedded Postgres runs as another user.
    data_dir = Path(tempfile.mkdtemp(prefix="gatewayz-journeys-"))
    proxy_port, app_port = free_port(), free_port()
    process = start_launcher(data_dir, proxy_port, app_port)
    try:
        banner = read_until_banner(process)
        password = re.search(r"password: (\S+)", banner)
        database = re.search(r"Database: +(\S+)", banner)
        assert password is not None, banner
        assert database is not None, banner
        yield Gateway(
            proxy_url=f"http://127.0.0.1:{proxy_port}/v1",
            app_url=f"http://127.0.0.1:{app_port}",
            database_url=database.group(1),
            admin_password=password.group(1),
            data_dir=data_dir,
        )
    finally:
        stop_launcher(process)
        shutil.rmtree(data_dir, ignore_errors=True)


def cli(gateway: Gateway, *args: str) -> str:
    """Run `python -m gateway_core ARGS` against the launcher's data folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "GATEWAYZ_SECRET")}
    env["GATEWAYZ_DATA_DIR"] = str(gateway.data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def created_id(output: str) -> int:
    match = re.search(r"\bid (\d+)", output)
    assert match is not None, output
    return int(match.group(1))


def query(gateway: Gateway, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(gateway.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for_usage_rows(gateway: Gateway, expected: int) -> None:
    """Poll until the proxy's recorder has written `expected` usage rows (at most 30 s)."""
    deadline = time.monotonic() + 30
    count = 0
    while time.monotonic() < deadline:
        (count,) = query(gateway, "SELECT count(*) FROM usage_events")[0]
        if count >= expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"only {count} of {expected} usage rows were recorded")


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.proxy_url, api_key=key, max_retries=0)


def chat(gateway: Gateway, key: str, model: str, text: str = "Hello") -> str:
    reply = client(gateway, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""


def wait_for_priced_lorem(gateway: Gateway, key: str) -> int:
    """Call sandbox/lorem until the proxy bills it after reloading the price override.

    Returns the number of calls made, so callers can count their usage rows.
    """
    deadline = time.monotonic() + RELOAD_TIMEOUT
    calls = 0
    cost = Decimal(0)
    while time.monotonic() < deadline:
        raw = client(gateway, key).chat.completions.with_raw_response.create(
            model="sandbox/lorem", messages=[{"role": "user", "content": "price"}], max_tokens=5
        )
        calls += 1
        cost = Decimal(raw.headers["x-gatewayz-cost-usd"])
        if cost > 0:
            return calls
        time.sleep(0.2)
    raise AssertionError(f"sandbox/lorem still cost ${cost} after the price override")


def post_chat(key: str, url: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra},
        timeout=30,
    )


def test_admin_journey(gateway: Gateway) -> None:
    journey = "1-admin"
    with browser.chromium() as context:
        page = context.new_page()
        browser.sign_in(page, gateway.app_url, "admin", gateway.admin_password)
        browser.screenshot(page, journey, "01-signed-in")

        # Invite the researcher first: the app caches accounts for 30 seconds.
        browser.go_to(page, "Users")
        page.get_by_label("Username", exact=True).fill("rita")
        page.get_by_label("Display name").fill("Rita Researcher")
        page.get_by_label("Email").fill("rita@example.org")
        browser.choose(page, "Role", "researcher")
        browser.press(page, "Invite user")
        gateway.researcher_password = browser.shown_code(page, r"\S{12,}")
        browser.screenshot(page, journey, "02-researcher-invited")

        browser.go_to(page, "Keys")
        browser.screenshot(page, journey, "03-keys-empty")
        page.get_by_label("Organization name").fill(ORGANIZATION)
        browser.press(page, "Create organization")
        page.get_by_text(f"Created organization '{ORGANIZATION}'.").wait_for()
        for team in ("alpha", "beta"):
            browser.choose(page, "Organization", ORGANIZATION)
            page.get_by_label("Team name").fill(team)
            browser.press(page, "Create team")
            page.get_by_text(f"Created team '{team}' in '{ORGANIZATION}'.").wait_for()
        browser.screenshot(page, journey, "03-organization-and-teams")
        team_organizations = query(
            gateway,
            "SELECT t.name, o.name, o.timezone FROM teams t "
            "JOIN organizations o ON o.id = t.organization_id",
        )
        assert sorted(team_organizations) == [
            ("alpha", ORGANIZATION, "UTC"),
            ("beta", ORGANIZATION, "UTC"),
        ]
        # The app grants no trial credit by default, so only budgets limit these calls.
        assert query(gateway, "SELECT count(*) FROM credit_balances") == [(0,)]
        for team in ("alpha", "beta"):
            browser.choose(page, "Team", team)
            page.get_by_label("Key name").fill(f"{team}-notebook")
            browser.press(page, "Create key")
            gateway.keys[team] = browser.shown_code(page, r"gw_live_[A-Za-z0-9_-]+")
            browser.screenshot(page, journey, f"04-key-{team}")

        # With more than one organization, this page starts each team and
        # project name with its organization's name.
        browser.go_to(page, "Budgets & limits")
        browser.choose(page, "Team", f"{ORGANIZATION} / alpha")
        page.get_by_label("Project name").fill("grant-a")
        page.get_by_label("Principal investigator (optional)").fill("Dr. Ada Lovelace")
        page.get_by_label("Cost centre (optional)").fill("GR-2026-17")
        browser.press(page, "Create project")
        page.get_by_text(f"Created project 'grant-a' in {ORGANIZATION} / alpha.").wait_for()
        page.get_by_role("radiogroup", name="Scope").get_by_text("Project", exact=True).click()
        browser.settle(page)
        grant_a = f"{ORGANIZATION} / alpha / grant-a"
        browser.choose(page, "Project", grant_a)
        page.get_by_label("Limit (USD)").fill("100")
        browser.press(page, "Save budget")
        page.get_by_text(f"Saved the monthly budget of {grant_a}: $100.00.").wait_for()
        page.get_by_label("Requests per minute").fill("600")
        browser.press(page, "Save rate limits")
        page.get_by_text(f"Saved the rate limits of {grant_a}.").wait_for()
        browser.screenshot(page, journey, "05-project-budget-and-limit")

        browser.go_to(page, "Keys")
        browser.choose(page, "Team", "alpha")
        browser.choose(page, "Project", "alpha / grant-a")
        page.get_by_label("Key name").fill("grant-a-batch")
        browser.press(page, "Create key")
        page.get_by_text("Created live key 'grant-a-batch' for project 'grant-a'.").wait_for()
        gateway.keys["grant-a"] = browser.shown_code(page, r"gw_live_[A-Za-z0-9_-]+")
        browser.screenshot(page, journey, "06-project-key")

        browser.go_to(page, "Models")
        browser.choose(page, "Model", "sandbox/lorem")
        page.get_by_label(re.compile(r"^Input \(")).fill(LOREM_PRICE)
        page.get_by_label(re.compile(r"^Output \(")).fill(LOREM_PRICE)
        browser.press(page, "Save override")
        page.get_by_text("Saved the price override for sandbox/lorem.").wait_for()
        browser.screenshot(page, journey, "07-price-override")

        calls = wait_for_priced_lorem(gateway, gateway.keys["alpha"])
        for name in ("alpha", "beta", "grant-a"):
            assert "Hello" in chat(gateway, gateway.keys[name], "sandbox/echo")
            chat(gateway, gateway.keys[name], "sandbox/lorem")
            calls += 2
        wait_for_usage_rows(gateway, calls)
        per_team = dict(
            query(
                gateway,
                "SELECT t.name, sum(u.cost_usd) FROM usage_events u "
                "JOIN teams t ON t.id = u.team_id GROUP BY t.name",
            )
        )
        assert set(per_team) == {"alpha", "beta"}
        # alpha has two keys' calls and beta one key's, both with priced lorem calls.
        assert per_team["beta"] > 0
        assert per_team["alpha"] > per_team["beta"]

        browser.go_to(page, "Team spend")
        browser.choose(page, "Organization", ORGANIZATION)
        all_teams = page.locator('[data-testid="stDataFrame"]').first
        all_teams.wait_for()
        for team in ("alpha", "beta"):
            browser.choose(page, "Team", team)
            metric = page.locator('[data-testid="stMetric"]').filter(
                has_text=f"Spend of {team} (USD)"
            )
            assert f"${per_team[team]:,.4f}" in metric.inner_text(), (team, metric.inner_text())
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
            browser.screenshot(page, journey, f"08-team-spend-{team}")

        browser.go_to(page, "Keys")
        # The label ends in the key's last 4 characters. Playwright 1.65 cannot
        # parse a "/" in a name pattern, so the pattern starts after the team.
        browser.choose(page, "Key", re.compile(r"beta-notebook \(gw_live_"), search="beta-notebook")
        # Streamlit draws its own box over the checkbox input, so the label takes the click.
        page.get_by_text("I understand that applications using this key").click()
        browser.press(page, "Revoke key")
        page.get_by_text("Revoked key 'beta-notebook'").wait_for()
        browser.screenshot(page, journey, "09-key-revoked")

    with pytest.raises(openai.PermissionDeniedError) as revoked:
        chat(gateway, gateway.keys["beta"], "sandbox/echo")
    assert "revoked" in str(revoked.value)
    assert "Hello" in chat(gateway, gateway.keys["alpha"], "sandbox/echo")


def test_researcher_journey(gateway: Gateway) -> None:
    journey = "2-researcher"
    assert gateway.researcher_password, "the admin journey did not invite the researcher"
    with browser.chromium() as context:
        page = context.new_page()
        browser.sign_in(page, gateway.app_url, "rita", gateway.researcher_password)
        titles = browser.navigation_titles(page)
        browser.screenshot(page, journey, "01-signed-in")
        assert "Compare" in titles
        assert "Research reports" in titles
        for title in ADMIN_PAGES:
            assert title not in titles

        for path, admin_text in ADMIN_URLS.items():
            other = context.new_page()
            browser.open_app(other, f"{gateway.app_url}/{path}")
            other.get_by_text("Signed in as").wait_for()
            # Streamlit runs the first allowed page and reports the requested one as not found.
            other.get_by_text("Page not found").wait_for()
            assert admin_text not in other.content()
            browser.screenshot(other, journey, f"02-url-{path}")
            other.close()

        browser.go_to(page, "Compare")
        browser.screenshot(page, journey, "03-compare-empty")
        key_field = page.get_by_label("Project API key", exact=True)
        key_field.fill(gateway.keys["grant-a"])
        key_field.press("Enter")
        browser.settle(page)
        for model in SANDBOX_MODELS:
            browser.choose(page, "Models (2 to 6)", model)
        page.get_by_label("Prompt", exact=True).fill("Name three colours")
        browser.press(page, "Run comparison")
        ratings = page.get_by_role("button", name="Save rating")
        ratings.first.wait_for()
        assert ratings.count() == len(SANDBOX_MODELS)
        browser.screenshot(page, journey, "04-compare-run")
        # Rate the three models 5, 4 and 3. Each slider starts at 3.
        for index, model in enumerate(SANDBOX_MODELS):
            slider = page.get_by_role("slider").nth(index)
            for _ in range(2 - index):
                slider.press("ArrowRight")
            page.get_by_role("button", name="Save rating").nth(index).click()
            browser.settle(page)
            page.get_by_text(f"Saved your rating of {model}").wait_for()
        browser.screenshot(page, journey, "05-rated")

        page.get_by_role("tab", name="Batch").click()
        upload = io.StringIO()
        csv.writer(upload).writerows([["prompt", "expected"], ["red", "red"], ["blue", "blue"]])
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
            files=[
                {
                    "name": "prompts.csv",
                    "mimeType": "text/csv",
                    "buffer": upload.getvalue().encode(),
                }
            ]
        )
        page.get_by_text("prompts.csv").wait_for()
        browser.settle(page)
        browser.screenshot(page, journey, "06-batch-file")
        browser.press(page, "Start batch")
        page.get_by_text("Rate an answer").wait_for()
        browser.screenshot(page, journey, "07-batch-run")

        page.get_by_role("tab", name="History").click()
        history = page.get_by_role("tabpanel", name="History")
        history.locator('[data-testid="stDataFrame"]').wait_for()
        browser.screenshot(page, journey, "08-history")

    runs = query(gateway, "SELECT kind, status, created_by FROM comparison_runs ORDER BY id")
    assert ("interactive", "completed", "rita") in runs, runs
    assert ("batch", "completed", "rita") in runs, runs
    ratings = query(
        gateway,
        "SELECT c.model, r.rating FROM comparison_ratings r "
        "JOIN comparison_cells c ON c.id = r.cell_id WHERE r.rated_by = 'rita'",
    )
    assert dict(ratings) == dict(zip(SANDBOX_MODELS, (5, 4, 3), strict=True))


def test_client_developer_journey(gateway: Gateway) -> None:
    # The admin's side, as the README's "Limits for a key" shows it, with limits
    # small enough to reach: 3 requests a minute and a $0.25 monthly budget. A
    # sandbox/lorem call costs about $0.01, but the proxy reserves about $0.2
    # for it, as it counts every request byte as a possible input token.
    cli(gateway, "teams", "create", "research")
    project = created_id(cli(gateway, "projects", "create", "folding", "--team", "research"))
    cli(gateway, "budgets", "set", "--scope", "project", "--id", str(project),
        "--period", "monthly", "--limit", "0.25")  # fmt: skip
    output = cli(gateway, "keys", "create", "--team", "research", "--project", "folding",
                 "--rpm", "3")  # fmt: skip
    key = output.strip().splitlines()[-1]
    key_id = created_id(output)
    url = gateway.proxy_url
    sdk = client(gateway, key)

    models = [model.id for model in sdk.models.list()]
    assert set(SANDBOX_MODELS) <= set(models)
    assert "Hello" in chat(gateway, key, "sandbox/echo")
    stream = sdk.chat.completions.create(
        model="sandbox/echo", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Hello" in streamed

    # The proxy reloads rate limits every few seconds, so the limit may start late.
    deadline = time.monotonic() + RELOAD_TIMEOUT
    limited = post_chat(key, url, "sandbox/echo")
    while limited.status_code == 200 and time.monotonic() < deadline:
        limited = post_chat(key, url, "sandbox/echo")
    assert limited.status_code == 429, limited.text
    assert limited.headers["x-ratelimit-limit-requests"] == "3"
    assert int(limited.headers["retry-after"]) > 0
    assert limited.json()["error"]["type"]

    # Lift the rate limit and spend the budget on priced sandbox/lorem calls.
    cli(gateway, "limits", "set", "--scope", "key", "--id", str(key_id))
    deadline = time.monotonic() + RELOAD_TIMEOUT
    statuses = []
    response = post_chat(key, url, "sandbox/lorem", max_tokens=5)
    while response.status_code in (200, 429) and time.monotonic() < deadline:
        statuses.append(response.status_code)
        response = post_chat(key, url, "sandbox/lorem", max_tokens=5)
    assert response.status_code == 402, (statuses, response.text)
    assert 200 in statuses, (statuses, response.text)
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded", error
    assert f"monthly budget of project 'folding' (id {project}, $0.25" in error["message"], error
    assert "GET /v1/key" in error["message"], error

    info = httpx.get(f"{url}/key", headers={"Authorization": f"Bearer {key}"})
    assert info.status_code == 200, info.text
    described = info.json()["data"]
    assert described["id"] == key_id
    assert described["project"] == "folding"
    [budget] = described["budgets"]
    assert budget["period"] == "monthly"
    assert Decimal(budget["remaining_usd"]) < Decimal("0.25")


def test_grant_report_journey(gateway: Gateway) -> None:
    journey = "4-grant-report"
    with browser.chromium() as context:
        page = context.new_page()
        browser.sign_in(page, gateway.app_url, "rita", gateway.researcher_password)
        browser.go_to(page, "Research reports")
        browser.choose(page, "Organization", ORGANIZATION)
        browser.choose(page, "Team", "alpha")
        browser.choose(page, "Project", "alpha / grant-a")
        page.get_by_text("Principal investigator: Dr. Ada Lovelace").wait_for()
        period = page.get_by_text(re.compile(r"Period: \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d"))
        first, last = re.findall(r"\d{4}-\d\d-\d\d", period.inner_text())
        browser.screenshot(page, journey, "01-report")
        with page.expect_download() as download_info:
            page.get_by_role("button", name="Download CSV").click()
        download = download_info.value
        assert download.suggested_filename == f"research-grant-a-{first}-to-{last}.csv"
        text = Path(download.path()).read_text()

    rows = list(csv.reader(io.StringIO(text)))
    header = rows.index(["date", "project", "model", "requests", "input_tokens",
                         "cached_input_tokens", "output_tokens", "cost_usd"])  # fmt: skip
    data = [row for row in rows[header + 1 :] if row and row[0] != "TOTAL"]
    [total] = [row for row in rows if row and row[0] == "TOTAL"]
    # The organization was created with the time zone UTC, so report days are UTC days.
    start = date.fromisoformat(first)
    end = date.fromisoformat(last) + timedelta(days=1)
    requests, input_tokens, output_tokens, cost = query(
        gateway,
        "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), "
        "coalesce(sum(cost_usd), 0) FROM usage_events u JOIN projects p ON p.id = u.project_id "
        "WHERE p.name = 'grant-a' AND u.created_at >= %s AND u.created_at < %s",
        start,
        end,
    )[0]
    assert requests > 0
    assert cost > 0
    assert int(total[3]) == requests
    assert int(total[4]) == input_tokens
    assert int(total[6]) == output_tokens
    assert Decimal(total[7]) == cost
    assert sum(int(row[3]) for row in data) == requests
    assert sum((Decimal(row[7]) for row in data), Decimal(0)) == cost
