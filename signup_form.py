"""The public "Create an account" form on the app's sign-in page.

app.py shows it only while self-service sign-up is on. A sign-up runs
`gateway_core.signup.sign_up` in one transaction and shows the new gw_test_
key once. Invalid input, a taken email and too many sign-ups are reported
as messages next to the form.
"""

from __future__ import annotations

import logging

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from gateway_core import emails, signup
from gateway_core.errors import GatewayError

logger = logging.getLogger("gatewayz.app.signup")

# Sign-ups one browser session may make. gateway_core.signup also limits
# them per client address and for the whole installation.
MAX_SIGNUPS_PER_SESSION = 3
SESSION_SIGNUPS = "gatewayz_signups"


def render(engine: Engine, secret: bytes, client_address: str | None) -> signup.SignupResult | None:
    """Render the form; return the sign-up's result on the run that created it."""
    st.caption(
        "Create an organization with trial credit and a free gw_test_ key. Live keys "
        "become available after your first paid top-up or an administrator's approval."
    )
    with st.form("signup_form"):
        email = st.text_input("Email", max_chars=signup.MAX_EMAIL_LENGTH, key="signup_email")
        org_name = st.text_input(
            "Organization name", max_chars=signup.MAX_ORGANIZATION_NAME, key="signup_org"
        )
        password = st.text_input(
            "Choose a password",
            type="password",
            key="signup_password",
            help=f"At least {signup.MIN_PASSWORD_LENGTH} characters.",
        )
        repeated = st.text_input("Repeat the password", type="password", key="signup_repeat")
        referral = st.text_input("Referral code (optional)", key="signup_referral")
        submitted = st.form_submit_button("Create account")
    if not submitted:
        return None
    if st.session_state.get(SESSION_SIGNUPS, 0) >= MAX_SIGNUPS_PER_SESSION:
        st.error("This browser session has created enough accounts. Sign in instead.")
        return None
    if password != repeated:
        st.error("The two passwords differ. Enter the same password twice.")
        return None
    try:
        with engine.begin() as conn:
            result = signup.sign_up(
                conn,
                secret,
                email,
                password,
                org_name,
                referral_code=referral.strip() or None,
                client_address=client_address,
            )
    except GatewayError as error:
        logger.info("sign-up rejected: %s", error.message)
        st.error(error.message[:1].upper() + error.message[1:] + ".")
        return None
    except IntegrityError:
        # A concurrent sign-up took the email or organization name first.
        logger.info("sign-up rejected: the email or organization name was taken concurrently")
        st.error("That email or organization name was just taken. Choose another one.")
        return None
    st.session_state[SESSION_SIGNUPS] = st.session_state.get(SESSION_SIGNUPS, 0) + 1
    show_result(result)
    return result


def show_result(result: signup.SignupResult) -> None:
    st.success(
        f"Your account is ready, with {emails.format_usd(result.trial_credit)} of trial "
        f"credit for "
        f"{result.trial_days} days. Sign in on the Sign in tab with your email and password."
    )
    st.warning(
        "Copy your test key now. Gatewayz stores only its hash, so it will not be shown again."
    )
    st.code(result.test_key.secret, language=None)
