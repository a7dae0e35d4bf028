"""Self-service sign-up from the app's form, and the live-key gate on every key path.

The app runs headless with AppTest against the test database. The CLI runs
as a subprocess. Paid top-ups are applied through Billing.handle_event with
the real stripe client talking to the fake Stripe API on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from streamlit.testing.v1 import AppTest

from gateway_core import access, keys, keys_admin, provisioning, signup
from gateway_core.access import Actor
from gateway_core.billing import Billing, BillingSettings
from gateway_core.errors import PermissionDeniedError, RateLimitError
from gateway_core.schema import (
    api_keys,
    audit_log,
    billing_accounts,
    email_outbox,
    ledger_entries,
    organizations,
    users,
)
from tests.conftest import TEST_SECRET
from tests.support.fake_stripe import API_KEY, WEBHOOK_SECRET, FakeStripe, event
from tests.test_app_pages import app_env, cookies, start_app  # noqa: F401

PASSWORD = "correct horse battery staple"
OWNER = Actor("root", "owner")
SECRET = TEST_SECRET.encode()


def set_signup(engine: Engine, enabled: bool) -> None:
    with engine.begin() as conn:
        signup.set_signup_enabled(conn, OWNER, enabled)


def sign_up(engine: Engine, email: str = "ada@example.com", org: str = "Analytical") -> Any:
    set_signup(engine, True)
    with engine.begin() as conn:
        return signup.sign_up(conn, SECRET, email, PASSWORD, org)


def audit_actions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(audit_log.c.action).order_by(audit_log.c.id)).scalars())


def key_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(api_keys.c.id)).all())


def sign_in(at: AppTest, username: str) -> None:
    [username_input] = [t for t in at.text_input if t.label == "Username"]
    [password_input] = [t for t in at.text_input if t.label == "Password"]
    username_input.input(username)
    password_input.input(PASSWORD)
    [login] = [b for b in at.button if b.label == "Login"]
    login.click()
    at.run()
    assert not at.exception, at.exception


# The form


def fill_signup(
    at: AppTest, email: str, org: str, password: str, repeat: str | None = None
) -> None:
    at.text_input(key="signup_email").input(email)
    at.text_input(key="signup_org").input(org)
    at.text_input(key="signup_password").input(password)
    at.text_input(key="signup_repeat").input(password if repeat is None else repeat)
    [button] = [b for b in at.button if b.label == "Create account"]
    button.click()
    at.run()
    assert not at.exception, at.exception


def test_form_hidden_when_signup_off(cookies, engine: Engine) -> None:  # noqa: F811
    at = start_app()
    assert [tab.label for tab in at.tabs] == []
    assert [text.label for text in at.text_input] == ["Username", "Password"]


def test_form_creates_account(cookies, engine: Engine) -> None:  # noqa: F811
    set_signup(engine, True)
    at = start_app()
    assert [tab.label for tab in at.tabs] == ["Sign in", "Create an account"]

    fill_signup(at, "Ada@Example.com", "Analytical Engines", PASSWORD)

    assert [error.value for error in at.error] == []
    assert any("$10.00 of trial credit" in s.value for s in at.success)
    [code] = at.code
    plain = code.value
    assert plain.startswith("gw_test_")
    with engine.connect() as conn:
        user = conn.execute(select(users).where(users.c.username == "ada@example.com")).one()
        org = conn.execute(select(organizations)).one()
        key = conn.execute(select(api_keys)).one()
        trials = conn.execute(
            select(ledger_entries.c.amount).where(ledger_entries.c.kind == "trial")
        ).all()
        queued = conn.execute(select(email_outbox.c.template, email_outbox.c.recipient)).all()
        account = conn.execute(select(billing_accounts)).one()
    assert user.role == "owner"
    assert user.password_hash.startswith("$2")
    assert PASSWORD not in user.password_hash
    assert org.name == "Analytical Engines"
    assert key.mode == "test"
    assert key.key_hash == keys.hash_key(SECRET, plain)
    assert [amount for (amount,) in trials] == [Decimal(10)]
    assert queued == [("welcome", "ada@example.com")]
    assert account.live_keys_allowed is False
    assert "signup.create" in audit_actions(engine)

    # The key is shown once, and the new owner can sign in at once.
    at.run()
    assert not at.code
    sign_in(at, "ada@example.com")
    assert at.session_state["authentication_status"] is True
    assert at.session_state["gatewayz_user"]["role"] == "owner"


@pytest.mark.parametrize(
    ("email", "org", "password", "repeat", "message"),
    [
        ("ada@example.com", "Other", PASSWORD, None, "already exists; sign in instead"),
        ("not-an-email", "Other", PASSWORD, None, "is not a valid email address"),
        ("bob@example.com", "Other", "short", None, "at least 12 characters"),
        ("bob@example.com", "Other", "aaaaaaaaaaaaaaaa", None, "too easy to guess"),
        ("bobby@example.com", "Other", "bobby-password-1", None, "must not contain your email"),
        ("bob@example.com", "Other", PASSWORD, "something else entirely", "passwords differ"),
        ("bob@example.com", "analytical", PASSWORD, None, "organization named"),
    ],
)
def test_form_rejects_invalid_input(
    cookies,  # noqa: F811
    engine: Engine,
    email: str,
    org: str,
    password: str,
    repeat: str | None,
    message: str,
) -> None:
    sign_up(engine)
    at = start_app()
    fill_signup(at, email, org, password, repeat)
    errors = [error.value for error in at.error]
    assert len(errors) == 1, errors
    assert message in errors[0]
    assert not at.code
    with engine.connect() as conn:
        assert len(conn.execute(select(organizations.c.id)).all()) == 1
        assert len(conn.execute(select(users.c.id)).all()) == 1
        trials = conn.execute(select(ledger_entries.c.id).where(ledger_entries.c.kind == "trial"))
        assert len(trials.all()) == 1


def test_signup_rate_limited_per_address(engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(signup, "MAX_SIGNUPS_PER_ADDRESS", 2)
    set_signup(engine, True)
    for number in range(2):
        with engine.begin() as conn:
            signup.sign_up(
                conn,
                SECRET,
                f"u{number}@example.com",
                PASSWORD,
                f"Org {number}",
                client_address="203.0.113.9",
            )
    with engine.begin() as conn, pytest.raises(RateLimitError, match="from your address"):
        signup.sign_up(
            conn, SECRET, "u9@example.com", PASSWORD, "Org 9", client_address="203.0.113.9"
        )
    with engine.begin() as conn:
        signup.sign_up(
            conn, SECRET, "u9@example.com", PASSWORD, "Org 9", client_address="198.51.100.7"
        )


def test_signup_rate_limited_in_total(engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(signup, "MAX_SIGNUPS_PER_WINDOW", 1)
    sign_up(engine)
    with engine.begin() as conn, pytest.raises(RateLimitError, match="too many new accounts"):
        signup.sign_up(conn, SECRET, "bob@example.com", PASSWORD, "Other")


def test_switch_audited_and_permission_checked(engine: Engine) -> None:
    with engine.begin() as conn:
        assert signup.set_signup_enabled(conn, OWNER, True) is True
        assert signup.set_signup_enabled(conn, OWNER, True) is False
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        signup.set_signup_enabled(conn, Actor("bea", "billing"), False)
    with engine.connect() as conn:
        assert signup.get_settings(conn).signup_enabled is True
    assert audit_actions(engine) == ["signup.set_enabled"]


# The live-key gate


def test_live_key_rejected_on_every_path(engine: Engine) -> None:
    result = sign_up(engine)
    owner = Actor("ada@example.com", "owner")
    before = key_count(engine)
    with engine.begin() as conn, pytest.raises(PermissionDeniedError) as raised:
        keys_admin.create_key(conn, SECRET, owner, team_id=result.team_id, name="prod")
    assert raised.value.code == "live_keys_not_allowed"
    assert "first paid top-up" in raised.value.message
    with engine.begin() as conn, pytest.raises(PermissionDeniedError, match="first paid top-up"):
        provisioning.issue_key(conn, SECRET, team_id=result.team_id, name="prod")
    assert key_count(engine) == before
    # Test keys stay available.
    with engine.begin() as conn:
        keys_admin.create_key(conn, SECRET, owner, team_id=result.team_id, name="ci", mode="test")
        keys.rotate_key(conn, SECRET, result.test_key.id)


def test_rotation_of_live_key_gated(engine: Engine) -> None:
    result = sign_up(engine)
    with engine.begin() as conn:
        signup.approve_live_keys(conn, OWNER, result.organization_id)
        live = keys.create_key(conn, SECRET, team_id=result.team_id, name="prod")
        # As if the approval were withdrawn by an operator.
        conn.execute(update(billing_accounts).values(live_keys_allowed=False))
    with engine.begin() as conn, pytest.raises(PermissionDeniedError, match="first paid top-up"):
        keys.rotate_key(conn, SECRET, live.id)


def test_approval_allows_live_keys(engine: Engine) -> None:
    result = sign_up(engine)
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        signup.approve_live_keys(conn, Actor("bea", "billing"), result.organization_id)
    with engine.begin() as conn:
        assert signup.approve_live_keys(conn, OWNER, result.organization_id) is True
        assert signup.approve_live_keys(conn, OWNER, result.organization_id) is False
        issued = keys.create_key(conn, SECRET, team_id=result.team_id, name="prod")
    assert issued.secret.startswith("gw_live_")
    assert audit_actions(engine).count("organizations.approve_live_keys") == 1


def test_operator_organizations_approved(engine: Engine) -> None:
    with engine.begin() as conn:
        org_id = provisioning.create_organization(conn, "Uni", actor="root")
        team = keys_admin.create_team(conn, OWNER, "lab")
        issued = keys_admin.create_key(conn, SECRET, OWNER, team_id=team.id, name="prod")
    assert org_id > 0
    assert issued.mode == "live"


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


def test_paid_checkout_allows_live_keys(engine: Engine, fake_stripe: FakeStripe) -> None:
    result = sign_up(engine)
    service = Billing(
        BillingSettings(
            api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=fake_stripe.base_url
        )
    )
    with engine.begin() as conn:
        owner = access.load_actor(conn, "ada@example.com", "owner")
        session = service.create_topup_session(
            conn,
            result.organization_id,
            Decimal(10),
            "http://127.0.0.1:8501/billing?checkout=success",
            "http://127.0.0.1:8501/billing?checkout=cancel",
            owner,
        )
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        keys.create_key(conn, SECRET, team_id=result.team_id, name="prod")
    # An unpaid completion (a bank debit still pending) does not unlock live keys.
    unpaid = dict(fake_stripe.sessions[session.session_id], payment_status="unpaid")
    with engine.begin() as conn:
        service.handle_event(conn, event("checkout.session.completed", unpaid))
    with engine.begin() as conn, pytest.raises(PermissionDeniedError):
        keys.create_key(conn, SECRET, team_id=result.team_id, name="prod")
    paid = fake_stripe.pay(session.session_id)
    with engine.begin() as conn:
        service.handle_event(conn, event("checkout.session.async_payment_succeeded", paid))
    with engine.begin() as conn:
        issued = keys.create_key(conn, SECRET, team_id=result.team_id, name="prod")
    assert issued.mode == "live"


# The Keys page and the CLI


def test_keys_page_explains_gate(cookies, engine: Engine) -> None:  # noqa: F811
    sign_up(engine)
    at = start_app()
    sign_in(at, "ada@example.com")
    before = key_count(engine)
    at.text_input(key="key_name").input("prod")
    at.radio(key="key_mode").set_value("live")
    [create] = [b for b in at.button if b.label == "Create key"]
    create.click()
    at.run()
    assert not at.exception, at.exception
    errors = [error.value for error in at.error]
    assert any("first paid top-up" in message for message in errors), errors
    assert key_count(engine) == before


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_core", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_gate_and_signup_commands(server_env: dict[str, str], engine: Engine) -> None:
    env = {k: v for k, v in server_env.items() if not k.startswith("GATEWAYZ_SMTP")}

    enabled = cli(env, "signup", "enable")
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.strip() == "sign-up enabled"
    with engine.begin() as conn:
        result = signup.sign_up(conn, SECRET, "ada@example.com", PASSWORD, "Analytical")

    args = ("keys", "create", "--team", "default", "--org", "Analytical", "--name", "prod")
    rejected = cli(env, *args)
    assert rejected.returncode == 1
    assert "first paid top-up" in rejected.stderr
    approved = cli(env, "signup", "approve", str(result.organization_id))
    assert approved.returncode == 0, approved.stderr
    created = cli(env, *args)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("gw_live_")

    status = cli(env, "signup", "status")
    assert "sign-up: enabled" in status.stdout
    disabled = cli(env, "signup", "disable")
    assert disabled.returncode == 0, disabled.stderr
    with engine.connect() as conn:
        assert signup.get_settings(conn).signup_enabled is False

        actors = conn.execute(
            select(audit_log.c.actor, audit_log.c.action).where(
                audit_log.c.action.in_(["signup.set_enabled", "organizations.approve_live_keys"])
            )
        ).all()
    assert [action for _, action in actors] == [
        "signup.set_enabled",
        "organizations.approve_live_keys",
        "signup.set_enabled",
    ]
    assert all(actor.startswith("cli:") for actor, _ in actors)


def test_cli_emails_list(server_env: dict[str, str], engine: Engine) -> None:
    sign_up(engine)
    listed = cli(server_env, "emails", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.strip().splitlines()
    assert "\twelcome\tada@example.com\tpending\tattempts=0" in line


def test_settings_keep_other_values(engine: Engine) -> None:
    with engine.begin() as conn:
        current = signup.get_settings(conn)
        signup.save_settings(conn, replace(current, trial_days=30), "owner")
        signup.set_signup_enabled(conn, OWNER, True)
        assert signup.get_settings(conn).trial_days == 30
