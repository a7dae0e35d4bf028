"""Organization scope: signed-up owners act only inside their own organization.

Two organizations are created through `signup.sign_up`, each with a named
team, project, key, budget, alert channel, health rule, template and calls.
Every check runs against the real test database, and each refusal has a
matching success by the organization's own owner or by staff, so a check
that refuses everything would fail.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, insert, select
from streamlit.testing.v1 import AppTest

from gateway_core import (
    access,
    analytics,
    audit_search,
    billing,
    email_outbox,
    explorer,
    health_rules,
    keys_admin,
    limits_admin,
    model_admin,
    promotions,
    prompt_templates,
    reports,
    signup,
    usage_stats,
    user_data,
    users_admin,
)
from gateway_core.access import Actor
from gateway_core.audit_search import AuditFilters
from gateway_core.billing import Billing, BillingSettings
from gateway_core.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway_core.explorer import ExplorerFilters
from gateway_core.schema import organization_members, usage_events, users
from tests import test_app_pages
from tests.conftest import TEST_SECRET
from tests.test_app_pages import ANALYTICS_PAGES, add_user, open_page, start_app
from tests.test_reports import usage_row
from tests.test_signup import PASSWORD, sign_in

SECRET = TEST_SECRET.encode()
STAFF = Actor("root", "owner")
# An id that no seeded object uses.
MISSING_ID = 987654321

app_env = test_app_pages.app_env
cookies = test_app_pages.cookies


@dataclass(frozen=True)
class Tenant:
    """One signed-up organization and the objects seeded in it."""

    prefix: str
    owner: Actor
    organization_id: int
    team_id: int
    project_id: int
    key_id: int
    budget_id: int
    rule_id: int

    def names(self) -> list[str]:
        """Return the names seeded in this organization, which no other one may see."""
        return [
            f"{self.prefix} Labs",
            f"{self.prefix}-team",
            f"{self.prefix}-project",
            f"{self.prefix}-key",
            f"{self.prefix}-rule",
            f"{self.prefix}-template",
            f"{self.prefix}@example.com",
            f"{self.prefix}-model",
        ]


def seed_tenant(engine: Engine, prefix: str) -> Tenant:
    email = f"{prefix}@example.com"
    with engine.begin() as conn:
        result = signup.sign_up(conn, SECRET, email, PASSWORD, f"{prefix} Labs")
    with engine.connect() as conn:
        owner = access.load_actor(conn, email, "owner")
    org_id = result.organization_id
    with engine.begin() as conn:
        team = keys_admin.create_team(conn, owner, f"{prefix}-team", org_id)
        project = limits_admin.add_project(conn, owner, team_id=team.id, name=f"{prefix}-project")
        key = keys_admin.create_key(
            conn, SECRET, owner, team_id=team.id, name=f"{prefix}-key", mode="test"
        )
        budget_id = limits_admin.save_budget(
            conn,
            owner,
            scope_type="team",
            scope_id=team.id,
            period="monthly",
            limit_usd=Decimal("50"),
            actor=owner.username,
        )
        limits_admin.add_alert_channel(
            conn,
            owner,
            SECRET,
            organization_id=org_id,
            kind="email",
            target=f"alerts@{prefix}.example",
        )
        rule_id = health_rules.save_rule(
            conn,
            owner,
            organization_id=org_id,
            name=f"{prefix}-rule",
            kind="error_rate",
            provider=None,
            threshold=Decimal("0.5"),
            window_seconds=300,
            min_requests=10,
            cooldown_seconds=600,
        )
        prompt_templates.create_version(
            conn,
            org_id,
            f"{prefix}-template",
            "Say hello",
            created_by=owner.username,
            actor=owner,
        )
        now = datetime.now(UTC)
        conn.execute(
            insert(usage_events),
            [
                usage_row(
                    f"{prefix}-call-{number}",
                    now - timedelta(minutes=number),
                    organization_id=org_id,
                    team_id=team.id,
                    key_id=key.id,
                    project_id=project.id,
                    model=f"{prefix}-model",
                    prompt=10,
                    completion=5,
                    cost="0.25",
                )
                for number in range(3)
            ],
        )
    return Tenant(prefix, owner, org_id, team.id, project.id, key.id, budget_id, rule_id)


@pytest.fixture
def tenants(engine: Engine) -> tuple[Tenant, Tenant]:
    add_user(engine, "root", "owner")
    with engine.begin() as conn:
        signup.set_signup_enabled(conn, STAFF, True)
    return seed_tenant(engine, "alpha"), seed_tenant(engine, "beta")


def denied(engine: Engine, write, *, code: str | None = None) -> PermissionDeniedError:
    """Run `write` in a rolled-back transaction and return the PermissionDeniedError it raises."""
    with engine.begin() as conn, pytest.raises(PermissionDeniedError) as raised:
        write(conn)
    if code is not None:
        assert raised.value.code == code
    return raised.value


def not_found(engine: Engine, call) -> str:
    """Run `call` in a rolled-back transaction and return the message of its NotFoundError."""
    with engine.begin() as conn, pytest.raises(NotFoundError) as raised:
        call(conn)
    return raised.value.message


def hidden(engine: Engine, call, foreign_id: int) -> None:
    """Check that `call` raises the same NotFoundError for `foreign_id` as for a missing id."""
    foreign = not_found(engine, lambda c: call(c, foreign_id))
    missing = not_found(engine, lambda c: call(c, MISSING_ID))
    assert str(foreign_id) in foreign
    assert foreign == missing.replace(str(MISSING_ID), str(foreign_id))


# gateway_core


def test_signup_creates_organization_user(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    assert alpha.owner.organization_ids == frozenset({alpha.organization_id})
    assert beta.owner.organization_ids == frozenset({beta.organization_id})
    with engine.connect() as conn:
        assert access.organization_ids_of(conn, "root") is None


def test_other_keys_not_found(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    hidden(
        engine,
        lambda c, team: keys_admin.create_key(c, SECRET, intruder, team_id=team, name="x"),
        alpha.team_id,
    )
    hidden(engine, lambda c, key: keys_admin.revoke_key(c, intruder, key), alpha.key_id)
    hidden(engine, lambda c, key: keys_admin.key_policy(c, intruder, key), alpha.key_id)
    hidden(
        engine,
        lambda c, key: keys_admin.set_key_policy(c, intruder, key, tags=["x"]),
        alpha.key_id,
    )
    with engine.connect() as conn:
        visible = {team.id for team in keys_admin.visible_teams(conn, intruder)}
        assert alpha.team_id not in visible
        assert beta.team_id in visible
        assert keys_admin.key_policy(conn, alpha.owner, alpha.key_id)["tags"] == []
        assert keys_admin.key_policy(conn, STAFF, alpha.key_id)["tags"] == []


def test_role_failure_denied_before_lookup(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    viewer = Actor("beta-viewer", "viewer", organization_ids=frozenset({beta.organization_id}))
    for key_id in (beta.key_id, alpha.key_id, MISSING_ID):
        denied(engine, lambda c, k=key_id: keys_admin.revoke_key(c, viewer, k))
        denied(engine, lambda c, k=key_id: keys_admin.key_policy(c, viewer, k))
    for team_id in (beta.team_id, alpha.team_id, MISSING_ID):
        denied(
            engine,
            lambda c, t=team_id: limits_admin.add_project(c, viewer, team_id=t, name="x"),
        )
    for rule_id in (beta.rule_id, alpha.rule_id, MISSING_ID):
        denied(engine, lambda c, r=rule_id: health_rules.delete_rule(c, viewer, r))


def test_other_teams_projects_not_found(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    denied(engine, lambda c: keys_admin.create_team(c, intruder, "sneaky", alpha.organization_id))
    # Without an organization the team would go to the Default one, which is not theirs.
    with engine.begin() as conn, pytest.raises(InvalidRequestError):
        keys_admin.create_team(conn, intruder, "sneaky")
    hidden(
        engine,
        lambda c, team: limits_admin.add_project(c, intruder, team_id=team, name="x"),
        alpha.team_id,
    )

    hidden(
        engine,
        lambda c, project: limits_admin.save_budget(
            c, intruder, scope_type="project", scope_id=project, period="daily", limit_usd="1"
        ),
        alpha.project_id,
    )
    hidden(engine, lambda c, team: reports.scope_for_team(c, team, None, intruder), alpha.team_id)
    with engine.connect() as conn:
        beta_user = conn.execute(
            select(users.c.id).where(users.c.username == "beta@example.com")
        ).scalar_one()
    hidden(
        engine,
        lambda c, team: users_admin.set_team_membership(c, intruder, beta_user, team, "member"),
        alpha.team_id,
    )
    with engine.begin() as conn:
        team = keys_admin.create_team(conn, STAFF, "staff-team", alpha.organization_id)
    assert team.organization_id == alpha.organization_id


def test_other_budgets_limits_not_found(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    for scope_type, scope_id in (
        ("organization", alpha.organization_id),
        ("team", alpha.team_id),
        ("project", alpha.project_id),
        ("key", alpha.key_id),
    ):
        hidden(
            engine,
            lambda c, i, t=scope_type: limits_admin.save_budget(
                c, intruder, scope_type=t, scope_id=i, period="daily", limit_usd=Decimal(1)
            ),
            scope_id,
        )
        hidden(
            engine,
            lambda c, i, t=scope_type: limits_admin.set_rate_limits(
                c, intruder, scope_type=t, scope_id=i, requests_per_minute=1
            ),
            scope_id,
        )
    # Deleting another organization's budget returns False, as for a missing one.
    with engine.begin() as conn:
        assert limits_admin.delete_budget(conn, intruder, alpha.budget_id) is False
        assert limits_admin.delete_budget(conn, intruder, MISSING_ID) is False
    with engine.connect() as conn:
        scopes = limits_admin.list_scopes(conn, intruder)
        budget_ids = {budget.id for budget in limits_admin.list_budgets(conn, intruder)}
        alpha_budgets = {budget.id for budget in limits_admin.list_budgets(conn, alpha.owner)}
    assert {scope.organization_id for scope in scopes} == {beta.organization_id}
    assert budget_ids == {beta.budget_id}
    assert alpha_budgets == {alpha.budget_id}
    with engine.begin() as conn:
        assert limits_admin.delete_budget(conn, alpha.owner, alpha.budget_id) is True


def test_other_channels_rules_hidden(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    hidden(
        engine,
        lambda c, organization_id: limits_admin.add_alert_channel(
            c,
            intruder,
            SECRET,
            organization_id=organization_id,
            kind="email",
            target="x@example.com",
        ),
        alpha.organization_id,
    )
    denied(engine, lambda c: limits_admin.list_alert_channels(c, intruder, alpha.organization_id))

    rule = {
        "name": "moved",
        "kind": "error_rate",
        "provider": None,
        "threshold": Decimal("0.1"),
        "window_seconds": 60,
        "min_requests": 1,
        "cooldown_seconds": 60,
    }
    denied(
        engine,
        lambda c: health_rules.save_rule(
            c, intruder, organization_id=alpha.organization_id, **rule
        ),
    )
    # Moving the other organization's rule into one's own is rejected too.
    hidden(
        engine,
        lambda c, rule_id: health_rules.save_rule(
            c, intruder, rule_id=rule_id, organization_id=beta.organization_id, **rule
        ),
        alpha.rule_id,
    )
    # Deleting another organization's rule returns False, as for a missing one.
    with engine.begin() as conn:
        assert health_rules.delete_rule(conn, intruder, alpha.rule_id) is False
        assert health_rules.delete_rule(conn, intruder, MISSING_ID) is False
    with engine.connect() as conn:
        rule_ids = {rule.id for rule in health_rules.visible_rules(conn, intruder)}
        alpha_rule_ids = {rule.id for rule in health_rules.visible_rules(conn, alpha.owner)}
        channels = limits_admin.list_alert_channels(conn, alpha.owner, alpha.organization_id)
    assert rule_ids == {beta.rule_id}
    assert alpha_rule_ids == {alpha.rule_id}
    assert [channel.target for channel in channels] == ["alerts@alpha.example"]


# Every gateway_core function that reads one organization's billing.
BILLING_READS = (
    lambda conn, org_id, actor: billing.credit_balance(conn, org_id, actor),
    lambda conn, org_id, actor: billing.ledger_history(conn, org_id, actor),
    lambda conn, org_id, actor: billing.list_payments(conn, org_id, actor),
    lambda conn, org_id, actor: billing.list_invoices(conn, org_id, actor),
    lambda conn, org_id, actor: billing.plan_state(conn, org_id, actor),
    lambda conn, org_id, actor: billing.stripe_customer_of(conn, org_id, actor),
    lambda conn, org_id, actor: signup.live_keys_allowed(conn, org_id, actor),
)


def test_other_billing_rejected(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    code = "organization_not_member"
    for read in BILLING_READS:
        denied(engine, lambda c, r=read: r(c, alpha.organization_id, intruder), code=code)

    with engine.begin() as conn:
        promotions.create_coupon(conn, "SHARED", Decimal(3), actor=STAFF)
    denied(
        engine,
        lambda c: promotions.redeem_coupon(c, alpha.organization_id, "SHARED", intruder),
        code=code,
    )
    denied(
        engine,
        lambda c: promotions.referral_code_for(c, alpha.organization_id, intruder),
        code=code,
    )

    # The check comes before any Stripe request, so this address is never contacted.
    service = Billing(
        BillingSettings(
            api_key="sk_test_x", webhook_secret="whsec_x", api_base="http://127.0.0.1:9"
        )
    )
    url = "http://127.0.0.1:8501/billing"
    org_id = alpha.organization_id
    denied(
        engine,
        lambda c: service.create_topup_session(c, org_id, Decimal(10), url, url, intruder),
        code=code,
    )
    denied(
        engine,
        lambda c: service.create_plan_session(c, org_id, "price_x", url, url, intruder),
        code=code,
    )
    denied(engine, lambda c: service.create_portal_session(c, org_id, url, intruder), code=code)

    # The organization's own owner reads and redeems.
    with engine.begin() as conn:
        balance, history, payments, invoices, plan, customer, live = (
            read(conn, org_id, alpha.owner) for read in BILLING_READS
        )
        assert promotions.redeem_coupon(conn, org_id, "SHARED", alpha.owner) == Decimal(3)
        assert promotions.referral_code_for(conn, org_id, alpha.owner)
    assert balance == Decimal(10)
    assert [entry.kind for entry in history] == ["trial"]
    assert payments == []
    assert invoices == []
    assert plan is None
    assert customer is None
    assert live is False


def test_billing_role_checked_in_own_org(engine: Engine, tenants) -> None:
    alpha, _ = tenants
    org_ids = frozenset({alpha.organization_id})
    viewer = Actor("alpha-viewer", "viewer", organization_ids=org_ids)
    finance = Actor("alpha-billing", "billing", organization_ids=org_ids)
    denied(
        engine,
        lambda c: billing.list_payments(c, alpha.organization_id, viewer),
        code="action_not_allowed",
    )
    with engine.connect() as conn:
        assert billing.list_payments(conn, alpha.organization_id, finance) == []


def test_billing_settings_staff_only(engine: Engine, tenants) -> None:
    _, beta = tenants
    owner = beta.owner
    code = "installation_action"
    denied(engine, lambda c: billing.save_plan(c, "price_pro", "Pro", Decimal(5), owner), code=code)
    denied(
        engine, lambda c: promotions.create_coupon(c, "MINE", Decimal(5), actor=owner), code=code
    )
    denied(engine, lambda c: promotions.list_coupons(c, owner), code=code)
    denied(
        engine,
        lambda c: signup.save_settings(c, signup.SelfServiceSettings(signup_enabled=True), owner),
        code=code,
    )
    denied(engine, lambda c: email_outbox.list_emails(c, owner), code=code)
    with engine.begin() as conn:
        assert billing.save_plan(conn, "price_pro", "Pro", Decimal(5), STAFF).name == "Pro"
        promotions.create_coupon(conn, "STAFF", Decimal(5), actor=STAFF)
        assert [coupon.code for coupon in promotions.list_coupons(conn, STAFF)] == ["STAFF"]
        assert email_outbox.list_emails(conn, STAFF)


def test_other_audit_rows_hidden(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    with engine.connect() as conn:
        beta_rows = audit_search.search(conn, beta.owner, AuditFilters())
        beta_actors = audit_search.distinct_values(conn, beta.owner, "actor")
        staff_actors = audit_search.distinct_values(conn, STAFF, "actor")
        out = io.StringIO()
        audit_search.write_csv(conn, beta.owner, AuditFilters(), out)
    assert beta_rows
    assert {row["actor"] for row in beta_rows} == {"beta@example.com"}
    assert beta_actors == ["beta@example.com"]
    assert "alpha@example.com" in staff_actors
    assert "alpha@example.com" not in out.getvalue()
    denied(engine, lambda c: audit_search.verify(c, beta.owner), code="installation_action")


def test_reused_username_hides_old_audit(engine: Engine, tenants) -> None:
    _, beta = tenants
    with engine.begin() as conn:
        user_data.delete_user(conn, "beta@example.com")
    with engine.begin() as conn:
        signup.sign_up(conn, SECRET, "beta@example.com", PASSWORD, "mallory Labs")
    with engine.connect() as conn:
        newcomer = access.load_actor(conn, "beta@example.com", "owner")
        rows = audit_search.search(conn, newcomer, AuditFilters())
        staff_rows = audit_search.search(conn, STAFF, AuditFilters(actor="beta@example.com"))
    # Staff still read the deleted owner's entries, while the new owner of
    # the same username reads only their own sign-up.
    assert len(staff_rows) > 1
    assert [row["action"] for row in rows] == ["signup.create"]
    assert newcomer.organization_ids != beta.owner.organization_ids


def test_staff_cannot_cross_team_membership(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    with engine.connect() as conn:
        alpha_id = conn.execute(
            select(users.c.id).where(users.c.username == "alpha@example.com")
        ).scalar_one()
    with engine.begin() as conn, pytest.raises(InvalidRequestError) as raised:
        users_admin.set_team_membership(conn, STAFF, alpha_id, beta.team_id, "admin")
    assert raised.value.code == "organization_mismatch"
    with engine.begin() as conn:
        assert users_admin.set_team_membership(conn, STAFF, alpha_id, alpha.team_id, "admin")


def test_other_usage_rejected(engine: Engine, database_url: str, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    with engine.connect() as conn:
        own = reports.scope_for_team(conn, beta.team_id, None, intruder)
    assert own.organization_id == beta.organization_id
    con = analytics.connect(database_url)
    try:
        with con.cursor() as cursor:
            listed = usage_stats.list_organizations(cursor, intruder)
            assert [organization.id for organization in listed] == [beta.organization_id]
            with pytest.raises(PermissionDeniedError):
                usage_stats.organization_names(cursor, alpha.organization_id, intruder)
            names = usage_stats.organization_names(cursor, beta.organization_id, intruder)
            assert "beta-team" in names.teams.values()
            now = datetime.now(UTC)
            rows = analytics.usage_rows(
                cursor,
                start=now - timedelta(days=1),
                end=now + timedelta(minutes=1),
                organization_ids=intruder.organization_ids,
            )
            assert set(rows["request_id"]) == {f"beta-call-{n}" for n in range(3)}
            over_time = analytics.usage_over_time(
                cursor,
                start=now - timedelta(days=1),
                end=now + timedelta(minutes=1),
                organization_ids=intruder.organization_ids,
            )
            assert int(over_time["requests"].sum()) == 3
    finally:
        con.close()
    filters = ExplorerFilters(
        start=datetime.now(UTC) - timedelta(days=1),
        end=datetime.now(UTC),
        organization_id=alpha.organization_id,
    )
    with pytest.raises(PermissionDeniedError):
        explorer.require_filters(intruder, filters)
    with pytest.raises(PermissionDeniedError):
        explorer.require_filters(intruder, ExplorerFilters(start=filters.start, end=filters.end))
    explorer.require_filters(alpha.owner, filters)
    # Calls without a valid key belong to no organization.
    no_team = ExplorerFilters(
        start=filters.start,
        end=filters.end,
        organization_id=alpha.organization_id,
        include_no_team=True,
    )
    with pytest.raises(PermissionDeniedError):
        explorer.require_filters(alpha.owner, no_team)
    explorer.require_filters(STAFF, no_team)


def test_other_users_rejected(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    intruder = beta.owner
    with engine.connect() as conn:
        alpha_id = conn.execute(
            select(users.c.id).where(users.c.username == "alpha@example.com")
        ).scalar_one()
        root_id = conn.execute(select(users.c.id).where(users.c.username == "root")).scalar_one()
        listed = {account.username for account in users_admin.list_accounts(conn, intruder)}
    assert listed == {"beta@example.com"}
    for user_id in (alpha_id, root_id):
        hidden(engine, lambda c, u: users_admin.reset_password(c, intruder, u), user_id)
        hidden(engine, lambda c, u: users_admin.set_disabled(c, intruder, u, True), user_id)
        hidden(engine, lambda c, u: users_admin.change_role(c, intruder, u, "viewer"), user_id)
    denied(
        engine,
        lambda c: users_admin.invite_user(
            c,
            intruder,
            "spy",
            "spy@example.com",
            "viewer",
            "",
            organization_id=alpha.organization_id,
        ),
    )
    with engine.begin() as conn:
        users_admin.invite_user(conn, intruder, "beta-viewer", "bv@example.com", "viewer", "")
    with engine.connect() as conn:
        invited = access.organization_ids_of(conn, "beta-viewer")
        members = conn.execute(
            select(organization_members.c.organization_id)
            .join(users, users.c.id == organization_members.c.user_id)
            .where(users.c.username == "beta-viewer")
        ).all()
    assert invited == frozenset({beta.organization_id})
    assert len(members) == 1


def user_id_of(engine: Engine, username: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(users.c.id).where(users.c.username == username)).scalar_one()


def test_last_owner_kept_per_organization(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    alpha_owner = user_id_of(engine, alpha.owner.username)
    # Staff owners and beta's owner exist, but alpha's owner is alpha's only one.
    for change in (
        lambda c: users_admin.change_role(c, STAFF, alpha_owner, "admin"),
        lambda c: users_admin.set_disabled(c, STAFF, alpha_owner, True),
    ):
        with engine.begin() as conn, pytest.raises(InvalidRequestError) as raised:
            change(conn)
        assert raised.value.code == "last_owner"
        assert f"organization {alpha.organization_id}" in raised.value.message
    with engine.begin() as conn:
        users_admin.invite_user(
            conn,
            STAFF,
            "alpha-second",
            "second@alpha.example",
            "owner",
            "",
            organization_id=alpha.organization_id,
        )
    with engine.begin() as conn:
        assert users_admin.change_role(conn, STAFF, alpha_owner, "admin") is True


def test_last_staff_owner_kept(engine: Engine, tenants) -> None:
    root = user_id_of(engine, "root")
    # Organization owners exist, but root is the only staff owner.
    with engine.begin() as conn, pytest.raises(InvalidRequestError) as raised:
        users_admin.change_role(conn, STAFF, root, "admin")
    assert raised.value.code == "last_owner"
    assert "installation staff" in raised.value.message
    with engine.begin() as conn:
        users_admin.invite_user(conn, STAFF, "ops", "ops@example.com", "owner", "")
    with engine.begin() as conn:
        assert users_admin.change_role(conn, STAFF, root, "admin") is True


def test_installation_actions_rejected(engine: Engine, tenants) -> None:
    alpha, beta = tenants
    owner = beta.owner
    code = "installation_action"
    denied(
        engine,
        lambda c: keys_admin.create_organization(
            c, owner, "Another", timezone="UTC", trial_usd=Decimal(0)
        ),
        code=code,
    )
    denied(engine, lambda c: signup.set_signup_enabled(c, owner, False), code=code)
    denied(engine, lambda c: signup.approve_live_keys(c, owner, beta.organization_id), code=code)
    denied(engine, lambda c: model_admin.save_alias(c, owner, owner.username, "a", "b"), code=code)
    denied(engine, lambda c: model_admin.delete_route(c, owner, "a"), code=code)
    assert model_admin.can_manage_models(owner) is False
    assert model_admin.can_manage_models(STAFF) is True
    with engine.begin() as conn:
        assert signup.set_signup_enabled(conn, STAFF, False) is True
        assert signup.approve_live_keys(conn, STAFF, alpha.organization_id) is True


# Pages


def page_text(at: AppTest) -> str:
    """Return the visible text of a page: markdown, tables, widget labels and options."""
    parts: list[str] = []
    for element_type in (
        "title",
        "header",
        "subheader",
        "markdown",
        "caption",
        "text",
        "info",
        "success",
        "warning",
        "error",
        "code",
        "metric",
    ):
        for element in getattr(at, element_type):
            parts.append(str(getattr(element, "value", "")))
            parts.append(str(getattr(element, "label", "")))
    for element in at.dataframe:
        parts.append(element.value.to_string())
    for element_type in ("selectbox", "multiselect", "radio"):
        for element in getattr(at, element_type):
            parts.extend(str(option) for option in element.options)
            parts.append(str(element.value))
    for chart in at.get("plotly_chart"):
        parts.append(str(chart.proto.spec))
    return "\n".join(parts)


OWNER_PAGES = (
    "keys",
    "usage",
    "budgets",
    *ANALYTICS_PAGES,
    "billing",
    "users",
    "health_alerts",
    "audit",
    "compare",
    "sessions",
)


@pytest.mark.parametrize("prefix", ["alpha", "beta"])
def test_owner_pages_show_own_only(cookies, engine: Engine, tenants, prefix) -> None:
    own, other = tenants if prefix == "alpha" else tenants[::-1]
    at = start_app()
    sign_in(at, own.owner.username)
    for page in OWNER_PAGES:
        open_page(at, f"pages/{page}.py")
        text = page_text(at)
        for name in other.names():
            assert name not in text, f"{page} page shows {name!r} of the other organization"
    # Pages that list the organization's own objects show them, so the
    # absence above is not an empty page.
    for page, name in (
        ("keys", f"{prefix}-key"),
        ("budgets", f"{prefix}-team"),
        ("health_alerts", f"{prefix}-rule"),
        ("users", f"{prefix}@example.com"),
        ("audit", f"{prefix}@example.com"),
        ("overview", f"{prefix}-model"),
        ("team_spend", f"{prefix}-team"),
        ("explorer", f"{prefix}-key"),
    ):
        open_page(at, f"pages/{page}.py")
        assert name in page_text(at), f"{page} page does not show {name!r}"


def test_staff_pages_show_both(cookies, engine: Engine, tenants) -> None:
    at = start_app()
    test_app_pages.sign_in(at, "root")
    for page, expected in (
        ("keys", ["alpha-key", "beta-key"]),
        ("budgets", ["alpha-team", "beta-team"]),
        ("health_alerts", ["alpha-rule", "beta-rule"]),
        ("users", ["alpha@example.com", "beta@example.com"]),
    ):
        open_page(at, f"pages/{page}.py")
        text = page_text(at)
        for name in expected:
            assert name in text, f"{page} page does not show {name!r} to staff"


def test_staff_invite_into_organization(cookies, engine: Engine, tenants) -> None:
    alpha, _ = tenants
    at = start_app()
    test_app_pages.sign_in(at, "root")
    open_page(at, "pages/users.py")
    picker = at.selectbox(key="invite_organization")
    assert picker.options == ["None (installation staff)", "alpha Labs", "beta Labs"]
    assert picker.value is None

    at.text_input(key="invite_username").input("alpha-analyst")
    at.text_input(key="invite_email").input("analyst@alpha.example")
    at.selectbox(key="invite_organization").set_value(alpha.organization_id)
    test_app_pages.click(at, "Invite user")

    assert any("into alpha Labs" in message.value for message in at.success)
    with engine.connect() as conn:
        organization_ids = access.organization_ids_of(conn, "alpha-analyst")
    assert organization_ids == frozenset({alpha.organization_id})


def test_owner_invite_picker_own_only(cookies, engine: Engine, tenants) -> None:
    alpha, _ = tenants
    at = start_app()
    sign_in(at, alpha.owner.username)
    open_page(at, "pages/users.py")
    picker = at.selectbox(key="invite_organization")
    assert picker.options == ["alpha Labs"]
    assert picker.disabled
