"""Billing page: Stripe top-ups, payments, plan, credit ledger, coupons and emails.

app.py registers this page for owners, admins and billing users. Users who
signed up themselves see only their own organization. Operator accounts
pick an organization and also get the sign-up and live-key settings and
the email outbox.
Without STRIPE_API_KEY the page explains how to configure Stripe and still
shows balances, coupons and email previews.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pandas as pd
import streamlit as st
import stripe
from sqlalchemy import Engine, select

from app_support import current_actor
from gateway_core import access, billing, email_outbox, emails, ledger, promotions, signup
from gateway_core.billing import Billing
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine
from gateway_core.errors import GatewayError
from gateway_core.schema import organizations

PAGE_NAME = "billing"
ADMIN_ROLES = ("owner", "admin")
LIST_TTL_SECONDS = 10
# Session-state key for a Checkout URL, kept so a rerun still shows it.
CHECKOUT_URL = "billing_page_checkout_url"

logger = logging.getLogger("gatewayz.app.billing")

if PAGE_NAME not in st.session_state.get("gatewayz_allowed_pages", ()):
    st.error(
        "Sign in as an owner, admin or billing user to manage billing: open the app's home page."
    )
    st.stop()


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_data(ttl=LIST_TTL_SECONDS, show_spinner=False)
def load_organizations(database_url: str) -> dict[int, str]:
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(select(organizations.c.id, organizations.c.name).order_by("name"))
        return dict(rows.tuples().all())


def load_billing() -> Billing | None:
    """Return the Stripe billing service, or None when it is not configured."""
    try:
        return Billing.from_env()
    except ConfigError as error:
        st.error(f"Stripe is configured incorrectly: {error}")
        return None


def usd(amount: Decimal | None) -> str:
    return "—" if amount is None else emails.format_usd(amount)


def pick_organization(database_url: str, actor: access.Actor) -> int | None:
    names = {
        org_id: name
        for org_id, name in load_organizations(database_url).items()
        if actor.may_see(org_id)
    }
    if not actor.is_staff and len(names) == 1:
        (own, name), *_ = names.items()
        st.caption(f"Organization: **{name}**")
        return own
    if not names:
        st.info("No organizations yet. Create a team on the Keys page to create one.")
        return None
    return st.selectbox(
        "Organization", list(names), format_func=names.__getitem__, key="billing_org"
    )


def render_stripe_status(service: Billing | None) -> None:
    if service is not None:
        st.success("Stripe is configured: top-ups, invoices and the customer portal are on.")
        return
    st.info(
        "Stripe is not configured, so top-ups, plans and the customer portal are off. "
        "Everything else in Gatewayz works without it: keys, usage, budgets and credit "
        "granted by admins or coupons."
    )
    st.markdown(
        "To turn billing on, set `STRIPE_API_KEY` (a secret key, `sk_...`) and "
        "`STRIPE_WEBHOOK_SECRET` (`whsec_...`) for both the app and the proxy, then add a "
        "webhook endpoint in the Stripe dashboard pointing at "
        "`https://<proxy address>/billing/stripe/webhook` with the events "
        "`checkout.session.*`, `charge.refunded`, `invoice.paid`, "
        "`invoice.payment_failed` and `customer.subscription.*`."
    )


def render_balance(engine: Engine, org_id: int, actor: access.Actor) -> None:
    with engine.connect() as conn:
        balance = billing.credit_balance(conn, org_id, actor)
        plan = billing.plan_state(conn, org_id, actor)
        live = signup.live_keys_allowed(conn, org_id, actor)
    left, middle, right = st.columns(3)
    left.metric("Credit balance", usd(balance))
    if plan is None:
        middle.metric("Plan", "None")
    else:
        middle.metric("Plan", f"{plan.plan_name or plan.stripe_price_id} ({plan.status})")
        if plan.grace_until is not None:
            st.warning(
                f"The last plan payment failed. The plan is served until "
                f"{plan.grace_until:%Y-%m-%d %H:%M %Z}; update the card in the customer portal."
            )
    right.metric("Live keys", "allowed" if live else "after first top-up")


def render_topup(engine: Engine, service: Billing, org_id: int, actor: access.Actor) -> None:
    st.subheader("Top up credit")
    low, high = service.settings.topup_min, service.settings.topup_max
    with st.form("billing_topup"):
        text = st.text_input(
            f"Amount in USD ({low} to {high})", value=str(low), key="billing_topup_amount"
        )
        submitted = st.form_submit_button("Create Checkout Session")
    if submitted:
        base = service.settings.app_url
        try:
            amount = ledger.parse_amount(text)
            with engine.begin() as conn:
                session = service.create_topup_session(
                    conn,
                    org_id,
                    amount,
                    f"{base}/billing?checkout=success",
                    f"{base}/billing?checkout=cancel",
                    actor,
                )
        except GatewayError as error:
            st.error(error.message)
            return
        except stripe.StripeError as error:
            logger.error("user %s: creating a Checkout Session failed: %s", actor.username, error)
            st.error(f"Stripe rejected the request: {error.user_message or error}")
            return
        st.session_state[CHECKOUT_URL] = session.url
    if CHECKOUT_URL in st.session_state:
        st.success(
            "Checkout Session created. Pay on Stripe's page; the credit appears here once "
            f"Stripe confirms the payment: {st.session_state[CHECKOUT_URL]}"
        )
        st.link_button("Open Stripe Checkout", st.session_state[CHECKOUT_URL])


def render_portal(engine: Engine, service: Billing, org_id: int, actor: access.Actor) -> None:
    with engine.connect() as conn:
        has_customer = billing.stripe_customer_of(conn, org_id, actor) is not None
    if not has_customer:
        st.caption("The Stripe customer portal opens after the first top-up.")
        return
    if st.button("Open the Stripe customer portal", key="billing_portal"):
        try:
            with engine.begin() as conn:
                url = service.create_portal_session(
                    conn, org_id, f"{service.settings.app_url}/billing", actor
                )
        except GatewayError as error:
            st.error(error.message)
            return
        except stripe.StripeError as error:
            logger.error("customer portal for organization %d failed: %s", org_id, error)
            st.error(f"Stripe rejected the request: {error.user_message or error}")
            return
        st.link_button("Continue to the customer portal", url)


def render_history(engine: Engine, org_id: int, actor: access.Actor) -> None:
    with engine.connect() as conn:
        payment_list = billing.list_payments(conn, org_id, actor)
        invoice_list = billing.list_invoices(conn, org_id, actor)
        entry_list = billing.ledger_history(conn, org_id, actor, limit=100)
    st.subheader("Payments")
    if payment_list:
        frame = pd.DataFrame(
            {
                "Created": [p.created_at for p in payment_list],
                "Amount": [usd(p.amount) for p in payment_list],
                "Status": [p.status for p in payment_list],
                "Credited": [usd(p.credited) for p in payment_list],
                "Refunded": [usd(p.reversed) for p in payment_list],
                "Checkout Session": [p.stripe_session_id for p in payment_list],
            }
        )
        st.dataframe(frame, hide_index=True)
    else:
        st.caption("No top-ups yet.")
    st.subheader("Invoices")
    if invoice_list:
        frame = pd.DataFrame(
            {
                "Invoice": [i.stripe_invoice_id for i in invoice_list],
                "Status": [i.status for i in invoice_list],
                "Paid": [usd(i.amount_paid) for i in invoice_list],
                "Allowance": [usd(i.allowance) for i in invoice_list],
                "Period end": [i.period_end for i in invoice_list],
                "Link": [i.hosted_invoice_url for i in invoice_list],
            }
        )
        st.dataframe(frame, hide_index=True, column_config={"Link": st.column_config.LinkColumn()})
    else:
        st.caption("No plan invoices yet.")
    st.subheader("Credit ledger")
    if entry_list:
        frame = pd.DataFrame(
            {
                "Time": [e.created_at for e in entry_list],
                "Kind": [e.kind for e in entry_list],
                "Amount": [usd(e.amount) for e in entry_list],
                "Reason": [e.reason for e in entry_list],
                "Expires": [e.expires_at for e in entry_list],
            }
        )
        st.dataframe(frame, hide_index=True)
    else:
        st.caption("No ledger entries yet.")


def render_coupon(engine: Engine, org_id: int, actor: access.Actor) -> None:
    st.subheader("Redeem a coupon")
    with st.form("billing_coupon", clear_on_submit=True):
        code = st.text_input("Coupon code", max_chars=64, key="billing_coupon_code")
        submitted = st.form_submit_button("Redeem")
    if not submitted:
        return
    try:
        with engine.begin() as conn:
            credit = promotions.redeem_coupon(conn, org_id, code, actor)
    except GatewayError as error:
        st.error(error.message)
        return
    st.success(f"Added {usd(credit)} of credit.")


def render_referral(engine: Engine, org_id: int, actor: access.Actor) -> None:
    with engine.begin() as conn:
        code = promotions.referral_code_for(conn, org_id, actor)
    st.caption(
        f"Referral code: `{code}`. An organization that signs up with it and makes a first "
        "paid top-up earns credit for both of you."
    )


def render_email_previews() -> None:
    with st.expander("Email templates"):
        name = st.selectbox("Template", emails.TEMPLATES, key="billing_email_template")
        subject, text, html = emails.render_email(name, **emails.sample_context(name))
        st.markdown(f"**Subject:** {subject}")
        st.code(text, language=None)
        st.html(html)


def render_outbox(engine: Engine, actor: access.Actor) -> None:
    with engine.connect() as conn:
        queued = email_outbox.list_emails(conn, actor, limit=50)
    with st.expander("Email outbox"):
        if not queued:
            st.caption("No emails queued yet.")
            return
        st.caption(
            "Emails are delivered in the background through GATEWAYZ_SMTP_HOST. Failed "
            "sends are retried with backoff; `python -m gateway_core emails retry ID` "
            "queues a failed one again."
        )
        frame = pd.DataFrame(
            {
                "Id": [e.id for e in queued],
                "Queued": [e.created_at for e in queued],
                "Template": [e.template for e in queued],
                "Recipient": [e.recipient for e in queued],
                "Status": [e.status for e in queued],
                "Attempts": [e.attempts for e in queued],
                "Last error": [e.last_error for e in queued],
            }
        )
        st.dataframe(frame, hide_index=True)


def render_admin(engine: Engine, org_id: int, actor: access.Actor) -> None:
    st.subheader("Self-service settings")
    with engine.connect() as conn:
        current = signup.get_settings(conn)
        live = signup.live_keys_allowed(conn, org_id, actor)
    enabled = st.toggle(
        "Self-service sign-up",
        value=current.signup_enabled,
        key="billing_signup_enabled",
        help="Shows a Create an account form on the sign-in page.",
    )
    if enabled != current.signup_enabled:
        try:
            with engine.begin() as conn:
                signup.set_signup_enabled(conn, actor, enabled)
        except GatewayError as error:
            st.error(error.message)
            return
        st.success(f"Self-service sign-up is now {'on' if enabled else 'off'}.")
    if not live and st.button("Approve live keys for this organization", key="billing_approve"):
        try:
            with engine.begin() as conn:
                signup.approve_live_keys(conn, actor, org_id)
        except GatewayError as error:
            st.error(error.message)
            return
        st.success("This organization may now create live keys.")


settings = Settings.from_env()
engine = engine_for(settings.database_url)
user = st.session_state["gatewayz_user"]

st.title("Billing")
if st.query_params.get("checkout") == "success":
    st.success("Thank you. Stripe is confirming the payment, and the credit appears shortly.")
service = load_billing()
render_stripe_status(service)
actor = current_actor()
org_id = pick_organization(settings.database_url, actor)
if org_id is not None:
    render_balance(engine, org_id, actor)
    if service is not None:
        render_topup(engine, service, org_id, actor)
        render_portal(engine, service, org_id, actor)
    render_history(engine, org_id, actor)
    render_coupon(engine, org_id, actor)
    render_referral(engine, org_id, actor)
    if actor.is_staff and user["role"] in ADMIN_ROLES:
        render_admin(engine, org_id, actor)
        render_outbox(engine, actor)
render_email_previews()
