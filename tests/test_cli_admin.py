"""Operator commands for organizations, projects, budgets, limits and keys."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

from sqlalchemy import Engine, text


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_research_key_in_one_call(server_env: dict[str, str], engine: Engine) -> None:
    created = cli(server_env, "orgs", "create", "Uni", "--timezone", "Europe/Berlin")
    assert created.returncode == 0, created.stderr
    assert cli(server_env, "teams", "create", "lab", "--org", "Uni").returncode == 0
    project = cli(
        server_env, "projects", "create", "folding", "--team", "lab", "--org", "Uni",
        "--pi", "Dr. Rivera", "--cost-centre", "GRANT-42",
    )  # fmt: skip
    assert project.returncode == 0, project.stderr
    key = cli(
        server_env, "keys", "create", "--team", "lab", "--org", "Uni", "--project", "folding",
        "--rpd", "1000", "--credit-limit", "100",
    )  # fmt: skip
    assert key.returncode == 0, key.stderr
    assert key.stdout.strip().splitlines()[-1].startswith("gw_live_")
    with engine.connect() as conn:
        key_row = conn.execute(text("SELECT id, project_id FROM api_keys")).one()
        limits = conn.execute(
            text("SELECT requests_per_day, requests_per_minute FROM rate_limits")
        ).one()
        budget = conn.execute(
            text("SELECT scope_type, scope_id, period, limit_usd FROM budgets")
        ).one()
        trial = conn.execute(
            text("SELECT amount, kind FROM ledger_entries WHERE scope_type = 'organization'")
        ).one()
        zone = conn.execute(text("SELECT timezone FROM organizations WHERE name = 'Uni'"))
    assert key_row.project_id is not None
    assert tuple(limits) == (1000, None)
    assert tuple(budget) == ("key", key_row.id, "lifetime", Decimal(100))
    assert tuple(trial) == (Decimal(10), "trial")
    assert zone.scalar_one() == "Europe/Berlin"


def test_budget_and_limit_commands(server_env: dict[str, str], engine: Engine) -> None:
    assert cli(server_env, "teams", "create", "ops").returncode == 0
    with engine.connect() as conn:
        team_id = conn.execute(text("SELECT id FROM teams")).scalar_one()
    budget = cli(
        server_env, "budgets", "set", "--scope", "team", "--id", str(team_id),
        "--period", "monthly", "--limit", "25.50",
    )  # fmt: skip
    assert budget.returncode == 0, budget.stderr
    listed = cli(server_env, "budgets", "list").stdout
    assert "monthly budget of team" in listed
    assert "$25.50" in listed
    limits = cli(
        server_env, "limits", "set", "--scope", "team", "--id", str(team_id), "--rpm", "60"
    )
    assert limits.returncode == 0, limits.stderr
    assert "rpm=60" in cli(server_env, "limits", "list").stdout
    bad = cli(
        server_env, "budgets", "set", "--scope", "team", "--id", "1",
        "--period", "monthly", "--limit", "lots",
    )  # fmt: skip
    assert bad.returncode == 2
    assert "not a decimal amount" in bad.stderr
    for command in (["orgs", "create"], ["projects", "create"], ["budgets", "set"]):
        helped = cli(server_env, *command, "--help")
        assert helped.returncode == 0
        assert "usage:" in helped.stdout
