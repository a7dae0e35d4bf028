"""The Health alerts page run headless with AppTest, signed in through app.py."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, select, text

from gateway_core import directory
from gateway_core.schema import health_alert_rules
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    add_user,
    app_env,
    click,
    cookies,
    open_page,
    sign_in,
    start_app,
    values,
)


def rules(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(health_alert_rules).order_by(health_alert_rules.c.id)).all()


def audit_actions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT action FROM audit_log ORDER BY id")).scalars())


@pytest.mark.usefixtures("cookies")
def test_billing_cannot_reach_page(engine: Engine) -> None:
    add_user(engine, "bill", "billing")
    at = sign_in(start_app(), "bill")

    assert "health_alerts" not in at.session_state["gatewayz_allowed_pages"]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/health_alerts.py")


@pytest.mark.usefixtures("cookies")
def test_rule_created_changed_deleted(engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "ops")
    add_user(engine, "alice", "admin")
    at = open_page(sign_in(start_app(), "alice"), "pages/health_alerts.py")
    assert values(at.title) == ["Health alerts"]

    at.text_input(key="rule_name_0").input("openai errors")
    at.selectbox(key="rule_kind_0").set_value("error_rate")
    at.text_input(key="rule_provider_0").input("openai")
    at.text_input(key="rule_threshold_0").input("0.25")
    click(at, "Save rule")

    (rule,) = rules(engine)
    assert rule.organization_id == team.organization_id
    assert rule.name == "openai errors"
    assert rule.provider == "openai"
    assert rule.threshold == Decimal("0.25")
    assert rule.updated_by == "alice"
    assert at.dataframe[0].value["Name"].tolist() == ["openai errors"]

    at.selectbox(key="rule_pick").set_value(rule.id)
    at.run()
    at.text_input(key=f"rule_threshold_{rule.id}").input("1.5")
    click(at, "Save rule")
    assert any("expected a fraction from 0 to 1" in message for message in values(at.error))
    assert rules(engine)[0].threshold == Decimal("0.25")

    at.text_input(key=f"rule_threshold_{rule.id}").input("0.4")
    click(at, "Save rule")
    assert rules(engine)[0].threshold == Decimal("0.4")

    at.selectbox(key="delete_pick").set_value(rule.id)
    click(at, "Delete rule")
    assert rules(engine) == []
    assert audit_actions(engine) == [
        "health_rule.create",
        "health_rule.update",
        "health_rule.delete",
    ]
