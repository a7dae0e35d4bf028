from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from gateway_core import directory, ledger
from gateway_core.config import PROJECT_ROOT
from gateway_core.errors import InvalidRequestError, NotFoundError
from gateway_core.schema import ledger_entries

TEAM = {"scope_type": "team", "scope_id": 7}


def add(engine: Engine, amount: str, kind: str, reference: str, **extra: object) -> bool:
    with engine.begin() as conn:
        return ledger.add_entry(
            conn, **TEAM, amount=Decimal(amount), kind=kind, reference=reference, **extra
        )


def team_balance(engine: Engine) -> Decimal | None:
    with engine.connect() as conn:
        return ledger.balance(conn, "team", 7)


def expiry_entries(engine: Engine) -> list[tuple[str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ledger_entries.c.reference, ledger_entries.c.amount)
            .where(ledger_entries.c.kind == "expiry")
            .order_by(ledger_entries.c.id)
        )
        return [(reference, amount) for reference, amount in rows]


def create_organization(engine: Engine, name: str = "Acme") -> int:
    with engine.begin() as conn:
        return directory.ensure_organization(conn, name)


def test_duplicate_reference_written_once(engine: Engine) -> None:
    assert add(engine, "25", "purchase", "pay_1") is True
    assert add(engine, "25", "purchase", "pay_1") is False
    assert add(engine, "99", "purchase", "pay_1") is False
    assert team_balance(engine) == Decimal("25")
    with engine.connect() as conn:
        assert len(ledger.history(conn, "team", 7)) == 1


def test_reference_scoped_by_kind_and_account(engine: Engine) -> None:
    assert add(engine, "10", "grant", "ref") is True
    assert add(engine, "-1", "usage", "ref") is True
    with engine.begin() as conn:
        other = ledger.add_entry(
            conn, scope_type="team", scope_id=8, amount=Decimal(5), kind="grant", reference="ref"
        )
    assert other is True
    assert team_balance(engine) == Decimal("9")


def test_unmetered_account_has_no_balance(engine: Engine) -> None:
    assert team_balance(engine) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"amount": 1.5}, "floats are rejected"),
        ({"amount": True}, "not bool"),
        ({"amount": "1.5"}, "not str"),
        ({"amount": Decimal(0)}, "must not be zero"),
        ({"amount": Decimal("NaN")}, "must be finite"),
        ({"amount": Decimal("Infinity")}, "must be finite"),
        ({"amount": Decimal("0.00000000001")}, "more than 10 decimal places"),
        ({"amount": Decimal("1e10")}, "too large"),
        ({"scope_type": "user"}, "unknown scope type 'user'"),
        ({"scope_id": 0}, "positive integer"),
        ({"kind": "bonus"}, "unknown ledger entry kind 'bonus'"),
        ({"kind": "usage"}, "must remove credit"),
        ({"kind": "grant", "amount": Decimal(-1)}, "must add credit"),
        ({"reference": " "}, "reference must not be empty"),
        ({"reference": "r" * 201}, "longer than 200"),
        ({"expires_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"kind": "purchase", "expires_at": datetime(2030, 1, 1, tzinfo=UTC)}, "can expire"),
    ],
)
def test_invalid_entry_rejected(engine: Engine, changes: dict[str, object], message: str) -> None:
    entry = {
        **TEAM,
        "amount": Decimal("5"),
        "kind": "grant",
        "reference": "r1",
        **changes,
    }
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match=message):
        ledger.add_entry(conn, **entry)  # type: ignore[arg-type]
    assert team_balance(engine) is None


def test_integer_amount_accepted(engine: Engine) -> None:
    with engine.begin() as conn:
        assert ledger.add_entry(conn, **TEAM, amount=3, kind="grant", reference="int")
    assert team_balance(engine) == Decimal(3)


def test_parse_amount() -> None:
    assert ledger.parse_amount(" 12.50 ") == Decimal("12.50")
    with pytest.raises(InvalidRequestError, match="not a decimal number"):
        ledger.parse_amount("12,50")
    with pytest.raises(InvalidRequestError, match="must not be zero"):
        ledger.parse_amount("0.00")


def test_balance_equals_sum_of_entries(engine: Engine) -> None:
    expected = Decimal(0)
    with engine.begin() as conn:
        for i in range(200):
            amount = Decimal(i * 37 % 1000 - 300) / Decimal(1000) or Decimal("0.0000000001")
            kind = "usage" if amount < 0 else "purchase"
            ledger.add_entry(conn, **TEAM, amount=amount, kind=kind, reference=f"r{i}")
            expected += amount
    assert team_balance(engine) == expected
    with engine.connect() as conn:
        total = conn.execute(text("SELECT sum(amount) FROM ledger_entries")).scalar_one()
        assert total == expected
        assert ledger.verify_balances(conn) == []


def test_concurrent_inserts_keep_balance(engine: Engine) -> None:
    threads_count = 8
    per_thread = 40
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with engine.begin() as conn:
                    ledger.add_entry(
                        conn,
                        **TEAM,
                        amount=Decimal("-0.0001234567"),
                        kind="usage",
                        reference=f"req-{index}-{i}",
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert team_balance(engine) == Decimal("-0.0001234567") * threads_count * per_thread
    with engine.connect() as conn:
        assert ledger.verify_balances(conn) == []


def test_concurrent_duplicate_reference_written_once(engine: Engine) -> None:
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with engine.begin() as conn:
                barrier.wait()
                inserted = ledger.add_entry(
                    conn, **TEAM, amount=Decimal("-2"), kind="usage", reference="req-same"
                )
            results.append(inserted)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False] * (threads_count - 1) + [True]
    assert team_balance(engine) == Decimal("-2")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = 1000",
        "DELETE FROM ledger_entries",
    ],
)
def test_ledger_is_append_only(engine: Engine, statement: str) -> None:
    add(engine, "5", "grant", "g1")
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert team_balance(engine) == Decimal("5")


def test_verify_reports_mismatch(engine: Engine) -> None:
    add(engine, "5", "grant", "g1")
    with engine.begin() as conn:
        conn.execute(text("UPDATE credit_balances SET balance = balance + 1"))
        conn.execute(
            text(
                "INSERT INTO credit_balances (scope_type, scope_id, balance) "
                "VALUES ('key', 3, 0), ('project', 4, 2)"
            )
        )
    with engine.connect() as conn:
        mismatches = ledger.verify_balances(conn)
    assert mismatches == [
        ledger.BalanceMismatch("project", 4, Decimal("2"), Decimal(0)),
        ledger.BalanceMismatch("team", 7, Decimal("6"), Decimal("5")),
    ]


def test_history_newest_first(engine: Engine) -> None:
    for i in range(5):
        add(engine, str(i + 1), "grant", f"g{i}", reason=f"reason {i}", actor="ops")
    with engine.connect() as conn:
        entries = ledger.history(conn, "team", 7, limit=3)
        with pytest.raises(InvalidRequestError, match="limit must be positive"):
            ledger.history(conn, "team", 7, limit=0)
    assert [entry.reference for entry in entries] == ["g4", "g3", "g2"]
    assert entries[0].amount == Decimal(5)
    assert entries[0].reason == "reason 4"
    assert entries[0].actor == "ops"


def test_trial_granted_once_per_organization(engine: Engine) -> None:
    organization_id = create_organization(engine)
    before = datetime.now(UTC)
    with engine.begin() as conn:
        assert ledger.grant_trial(conn, organization_id, actor="signup") is True
        assert ledger.grant_trial(conn, organization_id, amount=Decimal(50)) is False
    with engine.connect() as conn:
        assert ledger.balance(conn, "organization", organization_id) == Decimal(10)
        (trial,) = ledger.history(conn, "organization", organization_id)
    assert trial.kind == "trial"
    assert trial.reference == "trial"
    assert trial.actor == "signup"
    assert trial.expires_at is not None
    assert before + timedelta(days=14) <= trial.expires_at
    assert trial.expires_at <= datetime.now(UTC) + timedelta(days=14)


def test_trial_unknown_organization(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(NotFoundError, match="organization 999"):
        ledger.grant_trial(conn, 999)


def test_trial_invalid_days(engine: Engine) -> None:
    organization_id = create_organization(engine)
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="days"):
        ledger.grant_trial(conn, organization_id, days=0)


def grant_expiring(engine: Engine, amount: str, reference: str, expires_at: datetime) -> int:
    add(engine, amount, "grant", reference, expires_at=expires_at)
    with engine.connect() as conn:
        return conn.execute(
            select(ledger_entries.c.id).where(ledger_entries.c.reference == reference)
        ).scalar_one()


def expire(engine: Engine, now: datetime) -> int:
    with engine.begin() as conn:
        return ledger.expire_credits(conn, now)


NOW = datetime.now(UTC)


def test_expiry_removes_exact_remainder(engine: Engine) -> None:
    grant_id = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    add(engine, "-3.25", "usage", "req-1")
    assert expire(engine, NOW) == 0
    assert expire(engine, NOW + timedelta(days=2)) == 1
    assert expiry_entries(engine) == [(str(grant_id), Decimal("-6.75"))]
    assert team_balance(engine) == Decimal(0)


def test_expiry_is_idempotent(engine: Engine) -> None:
    grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    later = NOW + timedelta(days=2)
    assert expire(engine, later) == 1
    assert expire(engine, later) == 0
    add(engine, "4", "purchase", "pay-1")
    assert expire(engine, later + timedelta(days=30)) == 0
    assert len(expiry_entries(engine)) == 1
    assert team_balance(engine) == Decimal(4)


def test_expiry_after_other_credit(engine: Engine) -> None:
    # Usage spends the credit that expires soonest first, so the purchase
    # made earlier is left whole.
    add(engine, "100", "purchase", "pay-1")
    grant_id = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    add(engine, "-4", "usage", "req-1")
    assert expire(engine, NOW + timedelta(days=2)) == 1
    assert expiry_entries(engine) == [(str(grant_id), Decimal("-6"))]
    assert team_balance(engine) == Decimal(100)


def test_expiry_of_used_up_grant_writes_zero(engine: Engine) -> None:
    grant_id = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    add(engine, "50", "purchase", "pay-1")
    add(engine, "-12", "usage", "req-1")
    assert expire(engine, NOW + timedelta(days=2)) == 1
    assert expiry_entries(engine) == [(str(grant_id), Decimal(0))]
    assert team_balance(engine) == Decimal(48)


def test_expiry_not_more_than_balance(engine: Engine) -> None:
    grant_id = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    add(engine, "-25", "usage", "req-1")
    assert expire(engine, NOW + timedelta(days=2)) == 1
    assert expiry_entries(engine) == [(str(grant_id), Decimal(0))]
    assert team_balance(engine) == Decimal(-15)


def test_expiry_after_debt_repaid(engine: Engine) -> None:
    # A grant first pays what the account owes; only the rest can expire.
    add(engine, "-4", "usage", "req-1")
    grant_id = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    assert expire(engine, NOW + timedelta(days=2)) == 1
    assert expiry_entries(engine) == [(str(grant_id), Decimal("-6"))]
    assert team_balance(engine) == Decimal(0)


def test_expiry_of_two_grants_in_order(engine: Engine) -> None:
    first = grant_expiring(engine, "10", "g1", NOW + timedelta(days=1))
    second = grant_expiring(engine, "20", "g2", NOW + timedelta(days=3))
    add(engine, "-15", "usage", "req-1")
    assert expire(engine, NOW + timedelta(days=2)) == 1
    add(engine, "-5", "usage", "req-2")
    assert expire(engine, NOW + timedelta(days=4)) == 1
    assert expiry_entries(engine) == [(str(first), Decimal(0)), (str(second), Decimal("-10"))]
    assert team_balance(engine) == Decimal(0)


def test_expiry_of_trial(engine: Engine) -> None:
    organization_id = create_organization(engine)
    with engine.begin() as conn:
        ledger.grant_trial(conn, organization_id, amount=Decimal("10"), days=14)
        ledger.add_entry(
            conn,
            scope_type="organization",
            scope_id=organization_id,
            amount=Decimal("-1.5"),
            kind="usage",
            reference="req-1",
        )
    assert expire(engine, NOW + timedelta(days=13)) == 0
    assert expire(engine, NOW + timedelta(days=15)) == 1
    with engine.connect() as conn:
        assert ledger.balance(conn, "organization", organization_id) == Decimal(0)
        assert ledger.verify_balances(conn) == []


def test_concurrent_expiry_runs(engine: Engine) -> None:
    for i in range(5):
        grant_expiring(engine, "10", f"g{i}", NOW + timedelta(hours=i + 1))
    add(engine, "-12", "usage", "req-1")
    barrier = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            counts.append(expire(engine, NOW + timedelta(days=1)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == 5
    assert len(expiry_entries(engine)) == 5
    assert team_balance(engine) == Decimal(0)


def test_expiry_requires_aware_time(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(InvalidRequestError, match="timezone-aware"):
        ledger.expire_credits(conn, datetime(2030, 1, 1))


def test_account_exists(engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "research", "Acme")
    with engine.connect() as conn:
        assert ledger.account_exists(conn, "team", team.id) is True
        assert ledger.account_exists(conn, "organization", team.organization_id) is True
        assert ledger.account_exists(conn, "team", team.id + 1) is False
        assert ledger.account_exists(conn, "project", 1) is False
        assert ledger.account_exists(conn, "key", 1) is False
        with pytest.raises(InvalidRequestError, match="unknown scope type"):
            ledger.account_exists(conn, "user", 1)


def create_team_7(engine: Engine) -> None:
    """Create teams until one has id 7, the account the CLI tests use."""
    with engine.begin() as conn:
        for number in range(7):
            directory.create_team(conn, f"team {number + 1}", "Acme")


def run_cli(server_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", "credits", *args],
        env=server_env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_grant_balance_history(engine: Engine, server_env: dict[str, str]) -> None:
    create_team_7(engine)
    account = ("--scope", "team", "--id", "7")
    granted = run_cli(
        server_env, "grant", *account, "--amount", "12.50", "--reference", "INV-1",
        "--reason", "invoice 1",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    assert "balance is now $12.50" in granted.stdout
    repeated = run_cli(server_env, "grant", *account, "--amount", "12.50", "--reference", "INV-1")
    assert repeated.returncode == 0, repeated.stderr
    assert "nothing written" in repeated.stdout
    adjusted = run_cli(
        server_env, "grant", *account, "--amount", "-0.25", "--reference", "FIX-1",
        "--kind", "adjustment",
    )  # fmt: skip
    assert adjusted.returncode == 0, adjusted.stderr
    assert team_balance(engine) == Decimal("12.25")

    balance_output = run_cli(server_env, "balance", *account)
    assert balance_output.returncode == 0, balance_output.stderr
    assert balance_output.stdout.strip() == "team 7 balance: $12.25"
    listed = run_cli(server_env, "history", *account)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "\tadjustment\t-$0.25\tFIX-1\t" in lines[0]
    assert "\tgrant\t$12.50\tINV-1\t" in lines[1]
    assert lines[1].endswith("\tcli\tinvoice 1")

    unmetered = run_cli(server_env, "balance", "--scope", "key", "--id", "3")
    assert unmetered.returncode == 0
    assert "not credit-metered" in unmetered.stdout


def test_cli_expire_and_verify(engine: Engine, server_env: dict[str, str]) -> None:
    create_team_7(engine)
    granted = run_cli(
        server_env, "grant", "--scope", "team", "--id", "7", "--amount", "5",
        "--reference", "G-1", "--expires-days", "1",
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    expired = run_cli(server_env, "expire")
    assert expired.returncode == 0, expired.stderr
    assert expired.stdout.strip() == "wrote 0 expiry entries"
    with engine.connect() as conn:
        (entry,) = ledger.history(conn, "team", 7)
    assert entry.expires_at is not None
    assert entry.expires_at > datetime.now(UTC) + timedelta(hours=23)

    verified = run_cli(server_env, "verify")
    assert verified.returncode == 0, verified.stderr
    with engine.begin() as conn:
        conn.execute(text("UPDATE credit_balances SET balance = balance - 1"))
    broken = run_cli(server_env, "verify")
    assert broken.returncode == 1
    assert "mismatch: team 7 cached balance $4.00, sum of entries $5.00" in broken.stdout
    assert broken.stderr.startswith("error: 1 balances differ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--amount", "twelve"), "error: amount 'twelve' is not a decimal number"),
        (("--amount", "0"), "error: amount must not be zero"),
        (("--amount", "1.00000000001"), "more than 10 decimal places"),
        (("--amount", "-1"), "error: a grant entry must add credit"),
        (("--amount", "1", "--expires-days", "0"), "error: --expires-days must be a positive"),
        (("--amount", "1", "--kind", "purchase", "--expires-days", "3"), "can expire"),
    ],
)
def test_cli_grant_invalid(
    engine: Engine, server_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    create_team_7(engine)
    result = run_cli(server_env, "grant", "--scope", "team", "--id", "7", "--reference", "R", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert team_balance(engine) is None


def test_cli_grant_unknown_account(engine: Engine, server_env: dict[str, str]) -> None:
    result = run_cli(
        server_env, "grant", "--scope", "project", "--id", "5", "--amount", "1",
        "--reference", "R",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "error: project 5 not found; check --scope and --id"
    with engine.connect() as conn:
        assert ledger.balance(conn, "project", 5) is None


@pytest.mark.parametrize(
    "command", [(), ("grant",), ("balance",), ("history",), ("expire",), ("verify",)]
)
def test_cli_help(server_env: dict[str, str], command: tuple[str, ...]) -> None:
    result = run_cli(server_env, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m gateway_core credits")
