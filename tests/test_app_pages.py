"""The Streamlit app run headless with AppTest against the test database.

AppTest renders no custom components, so streamlit-authenticator's cookie
component never runs here. st.context.cookies is replaced by a plain dict per
test (AppTest's own stand-in is a MagicMock that reports every cookie present),
which lets the cookie sign-in path be tested by putting a signed token in it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import jwt
import numpy as np
import pytest
import streamlit as st
from sqlalchemy import Engine, insert, select, text, update
from streamlit.runtime.context import ContextProxy, StreamlitCookies
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.util import calc_hash

from gateway_core import directory
from gateway_core.keys import create_key, hash_key
from gateway_core.schema import (
    api_keys,
    audit_log,
    credit_balances,
    ledger_entries,
    metadata,
    organizations,
    teams,
    usage_events,
    users,
)
from tests.conftest import TEST_SECRET

APP_PATH = Path(__file__).resolve().parent.parent / "app.py"
PASSWORD = "correct horse battery"
TIMEOUT_SECONDS = 60
# Pages every role except researcher gets; researchers get only "reports" of these.
ANALYTICS_PAGES = ("overview", "team_spend", "model_analytics", "explorer", "reports")


@pytest.fixture
def app_env(engine: Engine, server_env: dict[str, str], monkeypatch) -> Iterator[dict[str, str]]:
    """Set the app's environment, empty its caches and return the browser's cookies."""
    monkeypatch.setenv("DATABASE_URL", server_env["DATABASE_URL"])
    monkeypatch.setenv("GATEWAYZ_SECRET", server_env["GATEWAYZ_SECRET"])
    st.cache_data.clear()
    st.cache_resource.clear()
    jar: dict[str, str] = {}
    monkeypatch.setattr(ContextProxy, "cookies", property(lambda self: StreamlitCookies(jar)))
    # AppTest's client address is a MagicMock; Streamlit reports None for localhost.
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: None))
    yield jar
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def cookies(app_env: dict[str, str], monkeypatch) -> dict[str, str]:
    """The app as it runs once any session has called st.navigation.

    AppTest resets Streamlit's "use the pages/ folder" flag before every run,
    so without this each run after the first would execute the requested page
    file without app.py, which a running server does only until the first
    st.navigation call after start-up.
    """
    original_init = PagesManager.__init__

    def init_after_navigation(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_after_navigation)
    return app_env


def add_user(engine: Engine, username: str, role: str, *, disabled: bool = False) -> int:
    with engine.begin() as conn:
        user_id = directory.create_user(
            conn, username=username, password=PASSWORD, role=role, display_name=username.title()
        )
        if disabled:
            conn.execute(update(users).where(users.c.id == user_id).values(disabled=True))
    return user_id


def start_app() -> AppTest:
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.run()
    assert not at.exception, at.exception
    return at


def sign_in(at: AppTest, username: str, password: str = PASSWORD) -> AppTest:
    at.text_input[0].input(username)
    at.text_input[1].input(password)
    click(at, "Login")
    assert not at.exception, at.exception
    return at


def click(at: AppTest, label: str) -> AppTest:
    matches = [button for button in at.button if button.label == label]
    assert len(matches) == 1, f"expected one {label!r} button, found {[b.label for b in at.button]}"
    matches[0].click()
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def labels(elements) -> list[str]:
    return [element.label for element in elements]


def values(elements) -> list[str]:
    return [element.value for element in elements]


def cookie_signing_key(secret: str = TEST_SECRET) -> str:
    return hmac.new(secret.encode(), b"gatewayz app sign-in cookie", hashlib.sha256).hexdigest()


def cookie_token(username: str, *, secret: str = TEST_SECRET) -> str:
    """Sign a sign-in cookie the way streamlit-authenticator 0.4.2 does."""
    expires = (datetime.now() + timedelta(days=1)).timestamp()
    claims = {"username": username, "exp_date": expires}
    return jwt.encode(claims, cookie_signing_key(secret), algorithm="HS256")


def cookie_calls(at: AppTest, method: str) -> list[dict]:
    """Arguments of the cookie-manager component calls that this run rendered."""
    calls = [json.loads(element.proto.json_args) for element in at.get("component_instance")]
    return [call for call in calls if call.get("method") == method]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def trace_values(values: list | dict) -> list[float]:
    """Decode a Plotly trace array, which Plotly 6+ may send as base64 typed data."""
    if isinstance(values, list):
        return values
    data = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
    return data.tolist()


def sums_by_trace(spec: dict) -> dict[str, float]:
    return {trace["name"]: sum(trace_values(trace["y"])) for trace in spec["data"]}


# Sign-in


def test_login_form_when_signed_out(cookies) -> None:
    at = start_app()

    assert labels(at.text_input) == ["Username", "Password"]
    assert labels(at.button) == ["Login"]
    assert values(at.title) == ["Gatewayz"]
    assert "gatewayz_user" not in at.session_state


def test_sign_in_shows_navigation(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = start_app()

    sign_in(at, "alice")

    assert at.session_state["authentication_status"] is True
    assert at.session_state["gatewayz_user"]["role"] == "owner"
    assert at.session_state["gatewayz_allowed_pages"] == frozenset(
        {
            "keys",
            "usage",
            "models",
            "budgets",
            "billing",
            "users",
            "audit",
            "compare",
            "sessions",
            "health_alerts",
            *ANALYTICS_PAGES,
        }
    )
    assert labels(at.sidebar.button) == ["Log out"]
    assert "Signed in as **Alice** (owner)" in values(at.sidebar.caption)
    assert values(at.title) == ["API keys"]
    assert not at.text_input(key="team_name").disabled


def test_sign_in_is_case_insensitive(cookies, engine: Engine) -> None:
    add_user(engine, "Carol", "admin")
    at = start_app()

    sign_in(at, "CAROL")

    assert at.session_state["gatewayz_user"]["username"] == "Carol"


def test_wrong_password_rejected(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = start_app()

    sign_in(at, "alice", "wrong password")

    assert at.session_state["authentication_status"] is False
    assert "Incorrect username or password." in values(at.error)
    assert "gatewayz_allowed_pages" not in at.session_state
    assert labels(at.button) == ["Login"]


def test_disabled_user_cannot_sign_in(cookies, engine: Engine) -> None:
    add_user(engine, "mallory", "owner", disabled=True)
    at = start_app()

    sign_in(at, "mallory")

    assert at.session_state["authentication_status"] is False
    assert "gatewayz_allowed_pages" not in at.session_state


def test_logout_returns_to_login_form(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = sign_in(start_app(), "alice")

    click(at, "Log out")

    assert not at.session_state["authentication_status"]
    assert "gatewayz_user" not in at.session_state
    assert "gatewayz_allowed_pages" not in at.session_state
    assert labels(at.button) == ["Login"]


def test_disabling_user_ends_session(cookies, engine: Engine) -> None:
    user_id = add_user(engine, "alice", "owner")
    at = sign_in(start_app(), "alice")
    with engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == user_id).values(disabled=True))

    # Clearing the cache replaces waiting for its 30-second TTL to expire.
    st.cache_data.clear()
    at.run()

    assert not at.session_state["authentication_status"]
    assert "gatewayz_allowed_pages" not in at.session_state
    assert labels(at.button) == ["Login"]


def test_password_sign_in_sets_cookie(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = sign_in(start_app(), "alice")

    (call,) = cookie_calls(at, "set")
    assert call["cookie"] == "gatewayz_auth"
    assert call["options"]["sameSite"] == "strict"
    claims = jwt.decode(call["value"], cookie_signing_key(), algorithms=["HS256"])
    assert claims["username"] == "alice"

    at.run()
    assert cookie_calls(at, "set") == []


def test_logout_deletes_cookie(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    at = sign_in(start_app(), "alice")

    click(at, "Log out")

    assert [call["cookie"] for call in cookie_calls(at, "delete")] == ["gatewayz_auth"]


def test_cookie_signs_in(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "admin")
    cookies["gatewayz_auth"] = cookie_token("alice")

    at = start_app()

    assert at.session_state["authentication_status"] is True
    assert at.session_state["gatewayz_allowed_pages"] == frozenset(
        {
            "keys",
            "usage",
            "models",
            "budgets",
            "billing",
            "users",
            "audit",
            "compare",
            "sessions",
            "health_alerts",
            *ANALYTICS_PAGES,
        }
    )
    assert values(at.title) == ["API keys"]
    # Signing in from the cookie does not issue a fresh one with a later expiry.
    assert cookie_calls(at, "set") == []


def test_cookie_with_other_key_rejected(cookies, engine: Engine) -> None:
    add_user(engine, "alice", "admin")
    cookies["gatewayz_auth"] = cookie_token("alice", secret="another-secret-" + "y" * 40)

    at = start_app()

    assert not at.session_state["authentication_status"]
    assert labels(at.button) == ["Login"]


def test_cookie_for_disabled_user_rejected(cookies, engine: Engine) -> None:
    add_user(engine, "mallory", "admin", disabled=True)
    cookies["gatewayz_auth"] = cookie_token("mallory")

    at = start_app()

    assert not at.session_state["authentication_status"]
    assert "gatewayz_allowed_pages" not in at.session_state
    assert any("disabled or no longer exists" in message for message in values(at.error))


# Page access


def test_viewer_has_no_keys_page(cookies, engine: Engine) -> None:
    add_user(engine, "victor", "viewer")
    at = sign_in(start_app(), "victor")

    assert at.session_state["gatewayz_allowed_pages"] == frozenset(
        {"usage", "models", "sessions", *ANALYTICS_PAGES}
    )
    assert values(at.title) == ["Usage"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/keys.py")


def test_viewer_request_for_keys_url_gets_usage(cookies, engine: Engine) -> None:
    add_user(engine, "victor", "viewer")
    at = sign_in(start_app(), "victor")

    # What a browser sends for /keys. AppTest has no public way to request a
    # page that is not registered, so this sets its private page hash.
    at._page_hash = calc_hash("keys")
    at.run()

    assert not at.exception
    assert values(at.title) == ["Usage"]
    assert "Create team" not in labels(at.button)


def test_keys_page_run_directly_stops(app_env, engine: Engine) -> None:
    add_user(engine, "alice", "owner")
    # Before any run, AppTest resolves the page from the pages/ folder and runs
    # keys.py without app.py, as Streamlit does for the first request to /keys.
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page("pages/keys.py")
    at.run()

    assert (
        "Sign in as an owner, admin or team admin to manage API keys: open the app's home page."
        in values(at.error)
    )
    assert "Create team" not in labels(at.button)
    assert not at.text_input


def test_usage_page_run_directly_stops(app_env) -> None:
    at = AppTest.from_file(APP_PATH, default_timeout=TIMEOUT_SECONDS)
    at.switch_page("pages/usage.py")
    at.run()

    assert "Sign in to see usage: open the app's home page." in values(at.error)
    assert not at.get("plotly_chart")


# Keys page


def signed_in_keys_page(engine: Engine, role: str = "owner") -> AppTest:
    add_user(engine, "alice", role)
    at = sign_in(start_app(), "alice")
    return open_page(at, "pages/keys.py")


def test_keys_page_empty_state(cookies, engine: Engine) -> None:
    at = signed_in_keys_page(engine)

    # One message shows what to do first, not one per empty section.
    assert values(at.info) == ["No teams yet: create one above."]
    assert not at.get("dataframe")


def test_keys_page_creates_team(cookies, engine: Engine) -> None:
    at = signed_in_keys_page(engine)

    at.text_input(key="team_name").input("Research")
    click(at, "Create team")

    with engine.connect() as conn:
        assert conn.execute(select(teams.c.name)).scalars().all() == ["Research"]
    assert "Created team 'Research' in 'Default'." in values(at.success)
    assert at.selectbox(key="key_team").options == ["Research"]


def create_organization_in_page(at: AppTest, name: str, trial_usd: str = "0") -> AppTest:
    at.text_input(key="organization_name").input(name)
    at.text_input(key="organization_trial_usd").input(trial_usd)
    return click(at, "Create organization")


def test_keys_page_creates_organization(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        directory.ensure_organization(conn)
    at = signed_in_keys_page(engine)

    at.selectbox(key="organization_timezone").set_value("Europe/Berlin")
    create_organization_in_page(at, "  Acme Research ")

    assert "Created organization 'Acme Research'." in values(at.success)
    with engine.connect() as conn:
        row = conn.execute(
            select(organizations).where(organizations.c.name == "Acme Research")
        ).one()
        metered = conn.execute(select(credit_balances)).all()
        [entry] = conn.execute(select(audit_log)).mappings().all()
    assert row.timezone == "Europe/Berlin"
    # No trial credit, so the organization is not credit-metered.
    assert metered == []
    assert entry["actor"] == "alice"
    assert entry["action"] == "organizations.create"
    assert entry["object_type"] == "organization"
    assert entry["object_id"] == str(row.id)
    assert entry["after"] == {"name": "Acme Research", "timezone": "Europe/Berlin",
                              "trial_usd": "0"}  # fmt: skip
    # The team form offers the new organization and has it chosen.
    organization_choice = at.selectbox(key="team_organization")
    assert organization_choice.options == ["Acme Research", "Default"]
    assert organization_choice.value == row.id


def test_organization_trial_credit(cookies, engine: Engine) -> None:
    at = signed_in_keys_page(engine)

    at.number_input(key="organization_trial_days").set_value(30)
    create_organization_in_page(at, "Acme Research", trial_usd="12.50")

    with engine.connect() as conn:
        organization_id = conn.execute(select(organizations.c.id)).scalar_one()
        balance = conn.execute(
            select(credit_balances.c.balance).where(
                credit_balances.c.scope_type == "organization",
                credit_balances.c.scope_id == organization_id,
            )
        ).scalar_one()
        expires_at = conn.execute(select(ledger_entries.c.expires_at)).scalar_one()
        after = conn.execute(select(audit_log.c.after)).scalar_one()
    assert balance == Decimal("12.50")
    assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)
    assert after["trial_usd"] == "12.50"
    assert after["trial_days"] == 30


@pytest.mark.parametrize(
    ("name", "trial_usd", "message"),
    [
        ("   ", "0", "organization name must not be empty"),
        ("Acme", "ten", "trial credit 'ten' is not a dollar amount"),
        ("Acme", "-5", "trial credit must be zero or more dollars"),
        ("Default", "0", "organization 'Default' already exists"),
    ],
)
def test_organization_form_rejects(
    cookies, engine: Engine, name: str, trial_usd: str, message: str
) -> None:
    with engine.begin() as conn:
        directory.ensure_organization(conn)
    at = signed_in_keys_page(engine)

    create_organization_in_page(at, name, trial_usd)

    assert any(message in error for error in values(at.error)), values(at.error)
    with engine.connect() as conn:
        assert conn.execute(select(organizations.c.name)).scalars().all() == ["Default"]
        assert conn.execute(select(audit_log.c.id)).first() is None


def test_keys_page_creates_team_in_organization(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        directory.ensure_organization(conn)
        acme = directory.ensure_organization(conn, "Acme Research")
    at = signed_in_keys_page(engine)

    at.selectbox(key="team_organization").set_value(acme)
    at.text_input(key="team_name").input("alpha")
    click(at, "Create team")

    assert "Created team 'alpha' in 'Acme Research'." in values(at.success)
    with engine.connect() as conn:
        assert conn.execute(select(teams.c.organization_id)).scalar_one() == acme
        after = conn.execute(select(audit_log.c.after)).scalar_one()
    assert after == {"name": "alpha", "organization_id": acme}


def test_team_admin_cannot_create_organization(cookies, engine: Engine) -> None:
    at = signed_in_keys_page(engine, role="team_admin")

    assert "Create an organization" not in [header.value for header in at.subheader]
    assert not [box for box in at.text_input if box.key == "organization_name"]
    with engine.connect() as conn:
        assert conn.execute(select(organizations.c.id)).first() is None


def test_keys_page_rejects_duplicate_team(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        directory.create_team(conn, "Research")
    at = signed_in_keys_page(engine)

    at.text_input(key="team_name").input("Research")
    click(at, "Create team")

    assert any("already exists" in message for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(teams.c.name)).scalars().all() == ["Research"]


def test_keys_page_creates_key_shown_once(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
    at = signed_in_keys_page(engine)

    at.selectbox(key="key_team").set_value(team.id)
    at.text_input(key="key_name").input("ci-pipeline")
    at.radio(key="key_mode").set_value("test")
    click(at, "Create key")

    assert len(at.code) == 1
    plain = at.code[0].value
    assert plain.startswith("gw_test_")
    assert any("will not be shown again" in message for message in values(at.warning))
    with engine.connect() as conn:
        row = conn.execute(select(api_keys)).one()
    assert row.team_id == team.id
    assert row.name == "ci-pipeline"
    assert row.mode == "test"
    assert row.created_by == "alice"
    assert row.key_hash == hash_key(TEST_SECRET.encode(), plain)
    assert row.prefix == plain[:12]
    assert row.last4 == plain[-4:]
    listed = at.dataframe[0].value
    assert listed["Key"].tolist() == [f"{plain[:12]}…{plain[-4:]}"]

    # The next run, with no form submitted, no longer shows the key.
    at.run()
    assert not at.code


def test_plain_key_in_no_database_column(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
    at = signed_in_keys_page(engine)

    at.selectbox(key="key_team").set_value(team.id)
    at.text_input(key="key_name").input("ci-pipeline")
    click(at, "Create key")

    plain = at.code[0].value
    secret_part = plain[len("gw_live_") + 4 : -4]
    assert len(secret_part) == 35
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            matches = conn.execute(
                text(f'SELECT count(*) FROM "{table.name}" AS t WHERE t::text LIKE :pattern'),
                {"pattern": f"%{secret_part}%"},
            ).scalar_one()
            assert matches == 0, f"plain key found in table {table.name}"
    assert "gw_live_" not in json.dumps(
        {key: str(value) for key, value in at.session_state.to_dict().items()}
    )


def test_keys_page_creates_project_key(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
        project = directory.create_project(conn, team.id, "folding")
    at = signed_in_keys_page(engine)

    assert at.selectbox(key="key_project").options == ["No project", "Research / folding"]
    at.selectbox(key="key_team").set_value(team.id)
    at.selectbox(key="key_project").set_value(project.id)
    at.text_input(key="key_name").input("batch")
    click(at, "Create key")

    assert "Created live key 'batch' for project 'folding'." in values(at.success)
    with engine.connect() as conn:
        assert conn.execute(select(api_keys.c.project_id)).scalar_one() == project.id
    listed = at.dataframe[0].value
    assert listed["Project"].tolist() == ["folding"]


def test_project_key_needs_its_team(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        research = directory.create_team(conn, "Research")
        ops = directory.create_team(conn, "Ops")
        project = directory.create_project(conn, research.id, "folding")
    at = signed_in_keys_page(engine)

    at.selectbox(key="key_team").set_value(ops.id)
    at.selectbox(key="key_project").set_value(project.id)
    at.text_input(key="key_name").input("batch")
    click(at, "Create key")

    assert not at.code
    assert any("belongs to another team" in message for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(api_keys.c.id)).first() is None


def test_key_name_required(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        directory.create_team(conn, "Research")
    at = signed_in_keys_page(engine)

    at.text_input(key="key_name").input("   ")
    click(at, "Create key")

    assert not at.code
    assert any("Key name must not be empty" in message for message in values(at.error))
    with engine.connect() as conn:
        assert conn.execute(select(api_keys.c.id)).first() is None


def test_keys_page_revokes_key(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
        remaining = create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="remaining")
        doomed = create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="doomed")
    at = signed_in_keys_page(engine)

    at.selectbox(key="revoke_key_id").set_value(doomed.id)
    at.checkbox(key="revoke_confirm").check()
    click(at, "Revoke key")

    with engine.connect() as conn:
        revoked = dict(conn.execute(select(api_keys.c.name, api_keys.c.revoked_at)).all())
    assert revoked["doomed"] is not None
    assert revoked["remaining"] is None
    assert any(message.startswith("Revoked key 'doomed'") for message in values(at.success))
    assert at.selectbox(key="revoke_key_id").options == [
        f"Research / remaining ({remaining.prefix}…{remaining.last4})"
    ]
    listed = at.dataframe[0].value.set_index("Name")
    revoked_text = revoked["doomed"].astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert listed.loc["doomed", "Revoked"] == revoked_text
    # An active key's cell is empty rather than "None".
    assert listed.loc["remaining", "Revoked"] == ""


def test_revoke_needs_confirmation(cookies, engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "Research")
        key = create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="ci")
    at = signed_in_keys_page(engine)

    at.selectbox(key="revoke_key_id").set_value(key.id)
    click(at, "Revoke key")

    assert "Tick the confirmation box to revoke the key." in values(at.warning)
    with engine.connect() as conn:
        assert conn.execute(select(api_keys.c.revoked_at)).scalar_one() is None


# Usage page

DAY = datetime(2026, 3, 10, tzinfo=UTC)


def seed_usage(engine: Engine) -> None:
    """Seed Alpha with 3 calls ($2.6000012346), Beta with 2 ($1.333333334) and 1 with no team."""
    with engine.begin() as conn:
        alpha = directory.create_team(conn, "Alpha").id
        beta = directory.create_team(conn, "Beta").id
        alpha_key = create_key(conn, TEST_SECRET.encode(), team_id=alpha, name="ci").id
        beta_key = create_key(conn, TEST_SECRET.encode(), team_id=beta, name="web").id
        calls = [
            ("a1", DAY + timedelta(hours=10), alpha, alpha_key, "0.0000012345"),
            ("a2", DAY + timedelta(hours=10, minutes=59), alpha, alpha_key, "0.1000000001"),
            ("a3", DAY + timedelta(hours=11), alpha, alpha_key, "2.5"),
            ("b1", DAY + timedelta(hours=10, minutes=30), beta, beta_key, "0.3333333333"),
            ("b2", DAY + timedelta(days=1, hours=3), beta, beta_key, "1.0000000007"),
            ("anon", DAY + timedelta(hours=12), None, None, "0"),
            ("old", DAY - timedelta(days=5), alpha, alpha_key, "99"),
        ]
        for request_id, created_at, team_id, key_id, cost in calls:
            conn.execute(
                insert(usage_events).values(
                    request_id=request_id,
                    created_at=created_at,
                    team_id=team_id,
                    api_key_id=key_id,
                    endpoint="chat.completions",
                    model="openai/gpt-4o-mini",
                    provider="openai",
                    status_code=200,
                    prompt_tokens=10,
                    completion_tokens=5,
                    cost_usd=Decimal(cost),
                    latency_ms=100,
                )
            )


def signed_in_usage_page(engine: Engine, role: str = "viewer") -> AppTest:
    add_user(engine, "victor", role)
    at = sign_in(start_app(), "victor")
    return open_page(at, "pages/usage.py")


def test_usage_page_totals(cookies, engine: Engine) -> None:
    seed_usage(engine)
    at = signed_in_usage_page(engine)

    at.date_input(key="usage_dates").set_value((date(2026, 3, 10), date(2026, 3, 11)))
    at.run()

    assert not at.exception
    assert values(at.metric) == ["6", "$3.933335"]
    requests_spec, cost_spec = plotly_specs(at)
    assert requests_spec["layout"]["title"]["text"] == "Requests per day"
    assert sums_by_trace(requests_spec) == {"Alpha": 3, "Beta": 2, "(no team)": 1}
    assert cost_spec["layout"]["title"]["text"] == "Cost per day (USD)"
    assert cost_spec["layout"]["yaxis"]["title"]["text"] == "Cost (USD)"
    assert cost_spec["layout"]["yaxis"]["tickprefix"] == "$"
    assert sums_by_trace(cost_spec) == {
        "Alpha": pytest.approx(2.6000012346),
        "Beta": pytest.approx(1.333333334),
        "(no team)": 0,
    }
    table = at.dataframe[0].value
    assert table["request_id"].tolist() == ["b2", "anon", "a3", "a2", "b1", "a1"]
    assert [Decimal(str(cost)) for cost in table["cost_usd"]] == [
        Decimal("1.0000000007"),
        Decimal("0"),
        Decimal("2.5"),
        Decimal("0.1000000001"),
        Decimal("0.3333333333"),
        Decimal("0.0000012345"),
    ]


def test_usage_page_hourly_buckets(cookies, engine: Engine) -> None:
    seed_usage(engine)
    at = signed_in_usage_page(engine)

    at.date_input(key="usage_dates").set_value((date(2026, 3, 10), date(2026, 3, 10)))
    at.selectbox(key="usage_bucket").set_value("hour")
    at.run()

    requests_spec, _ = plotly_specs(at)
    assert requests_spec["layout"]["title"]["text"] == "Requests per hour"
    assert sums_by_trace(requests_spec) == {"Alpha": 3, "Beta": 1, "(no team)": 1}
    assert values(at.metric) == ["5", "$2.933335"]


def test_usage_page_team_filter(cookies, engine: Engine) -> None:
    seed_usage(engine)
    at = signed_in_usage_page(engine)
    with engine.connect() as conn:
        beta = conn.execute(select(teams.c.id).where(teams.c.name == "Beta")).scalar_one()

    at.date_input(key="usage_dates").set_value((date(2026, 3, 10), date(2026, 3, 11)))
    at.selectbox(key="usage_team").set_value(beta)
    at.run()

    assert values(at.metric) == ["2", "$1.333333"]
    requests_spec, _ = plotly_specs(at)
    assert sums_by_trace(requests_spec) == {"Beta": 2}
    assert at.dataframe[0].value["request_id"].tolist() == ["b2", "b1"]


def test_usage_page_empty_state(cookies, engine: Engine) -> None:
    at = signed_in_usage_page(engine)

    assert any("No requests in this date range." in message for message in values(at.info))
    assert "/v1/chat/completions" in at.code[0].value
    assert not at.get("plotly_chart")
    assert not at.dataframe
