"""The audit log's hash chain detects edits, deletions and reordering."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from gateway_core import audit


def append(engine: Engine, count: int, actor: str = "admin") -> None:
    for index in range(count):
        with engine.begin() as conn:
            audit.record(
                conn,
                actor=actor,
                action="budget.set",
                object_type="budget",
                object_id=index,
                before=None,
                after={"limit_usd": Decimal("12.50"), "period": "monthly"},
                client_address="127.0.0.1",
            )


def tamper(engine: Engine, statement: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(text(statement))
        conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))


def test_intact_chain_verifies(engine: Engine) -> None:
    append(engine, 5)
    with engine.connect() as conn:
        assert audit.verify_chain(conn) == []


def test_concurrent_writers_form_one_chain(engine: Engine) -> None:
    threads = [threading.Thread(target=append, args=(engine, 10, f"t{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 40
        assert audit.verify_chain(conn) == []


def test_edit_is_detected_where_it_happened(engine: Engine) -> None:
    append(engine, 5)
    tamper(engine, "UPDATE audit_log SET actor = 'mallory' WHERE id = 3")
    with engine.connect() as conn:
        breaks = audit.verify_chain(conn)
    assert [b.entry_id for b in breaks] == [3]
    assert "content" in breaks[0].reason


def test_deletion_is_detected(engine: Engine) -> None:
    append(engine, 5)
    tamper(engine, "DELETE FROM audit_log WHERE id = 2")
    with engine.connect() as conn:
        breaks = audit.verify_chain(conn)
    assert [b.entry_id for b in breaks] == [3]
    assert "previous hash" in breaks[0].reason


def test_changes_rejected_by_database(engine: Engine) -> None:
    append(engine, 1)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'x'"))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log"))


def test_cli_actions_audited_and_verified(server_env: dict[str, str], engine: Engine) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway_core", *args],
            env=server_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("teams", "create", "audited").returncode == 0
    created = cli("keys", "create", "--team", "audited")
    plain = created.stdout.strip().splitlines()[-1]
    assert cli("keys", "list").returncode == 0
    with engine.connect() as conn:
        actions = conn.execute(text("SELECT action FROM audit_log ORDER BY id")).scalars().all()
        dump = conn.execute(text("SELECT string_agg(t::text, '') FROM audit_log t")).scalar_one()
    assert actions == ["teams.create", "keys.create"]
    assert plain not in dump
    verified = cli("audit", "verify")
    assert verified.returncode == 0
    assert "2 entries" in verified.stdout
    tamper(engine, "UPDATE audit_log SET actor = 'mallory' WHERE action = 'teams.create'")
    broken = cli("audit", "verify")
    assert broken.returncode == 1
    assert "content does not match" in broken.stderr
    exported = cli("audit", "export")
    assert exported.stdout.splitlines()[0].startswith("id,created_at,actor,action")
