"""Gatewayz admin app: sign-in, then the pages the user's role allows.

While self-service sign-up is on, the sign-in page also has a "Create an
account" tab (signup_form.py). The app server runs one email outbox sender
when GATEWAYZ_SMTP_HOST is set.

Run with `streamlit run app.py`. DATABASE_URL and GATEWAYZ_SECRET come from
the environment. Users are the rows of the `users` table, checked against
their bcrypt hashes by streamlit-authenticator. Failed sign-ins are limited
per username and per browser session by gateway_core.login_attempts.

Streamlit runs a file in pages/ directly, without this script, when the first
request after server start requests its URL and no session has called
st.navigation yet (its multipage v1 mode, Streamlit 1.67). This script calls
st.navigation on every run, signed in or not, and each page also checks the
SESSION_PAGES entry that only this script writes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import streamlit as st
import streamlit_authenticator as stauth
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from streamlit_authenticator.utilities import LoginError

import signup_form
from gateway_core import access, email_outbox, login_attempts, signup
from gateway_core.access import roles_for
from gateway_core.config import ConfigError, Settings
from gateway_core.db import get_engine
from gateway_core.directory import ROLES, User, list_users

logger = logging.getLogger("gatewayz.app")

COOKIE_NAME = "gatewayz_auth"
# Kept short because logout only deletes the cookie in the browser: a copied
# cookie signs in until it expires or GATEWAYZ_SECRET changes.
COOKIE_EXPIRY_DAYS = 1.0
# HMAC label that derives the cookie signing key from GATEWAYZ_SECRET, so the
# key changes whenever the secret does and is never the secret itself.
COOKIE_KEY_LABEL = b"gatewayz app sign-in cookie"
ACCOUNTS_TTL_SECONDS = 30

# Session-state keys that only this script writes. The pages read them.
SESSION_USER = "gatewayz_user"
SESSION_PAGES = "gatewayz_allowed_pages"
SESSION_COOKIE_PENDING = "gatewayz_cookie_pending"
# Random id of this browser session in login_attempts, kept across sign-outs.
SESSION_SIGN_IN_KEY = "gatewayz_sign_in_session"


@dataclass(frozen=True)
class AppPage:
    # Also the URL path: /keys, /usage.
    name: str
    path: str
    title: str
    icon: str
    roles: frozenset[str]


PAGES = (
    AppPage("keys", "pages/keys.py", "Keys", ":material/key:", roles_for("keys.create")),
    AppPage("usage", "pages/usage.py", "Usage", ":material/monitoring:", frozenset(ROLES)),
    AppPage("models", "pages/models.py", "Models", ":material/list:", frozenset(ROLES)),
    AppPage(
        "budgets",
        "pages/budgets.py",
        "Budgets & limits",
        ":material/savings:",
        frozenset({"owner", "admin", "billing"}),
    ),
    AppPage(
        "overview",
        "pages/overview.py",
        "Overview",
        ":material/dashboard:",
        frozenset({"owner", "admin", "team_admin", "billing", "viewer"}),
    ),
    AppPage(
        "team_spend",
        "pages/team_spend.py",
        "Team spend",
        ":material/groups:",
        frozenset({"owner", "admin", "team_admin", "billing", "viewer"}),
    ),
    AppPage(
        "model_analytics",
        "pages/model_analytics.py",
        "Model analytics",
        ":material/insights:",
        frozenset({"owner", "admin", "team_admin", "billing", "viewer"}),
    ),
    AppPage(
        "explorer",
        "pages/explorer.py",
        "Usage explorer",
        ":material/table_view:",
        frozenset({"owner", "admin", "team_admin", "billing", "viewer"}),
    ),
    AppPage(
        "reports",
        "pages/reports.py",
        "Research reports",
        ":material/description:",
        frozenset(ROLES),
    ),
    AppPage(
        "billing",
        "pages/billing.py",
        "Billing",
        ":material/payments:",
        frozenset({"owner", "admin", "billing"}),
    ),
    AppPage("users", "pages/users.py", "Users", ":material/group:", roles_for("users.manage")),
    AppPage(
        "health_alerts",
        "pages/health_alerts.py",
        "Health alerts",
        ":material/notifications:",
        roles_for("alerts.manage"),
    ),
    AppPage(
        "audit",
        "pages/audit.py",
        "Audit log",
        ":material/policy:",
        roles_for("audit.read"),
    ),
    AppPage(
        "compare",
        "pages/compare.py",
        "Compare",
        ":material/compare_arrows:",
        frozenset({"owner", "admin", "team_admin", "researcher"}),
    ),
    AppPage(
        "sessions",
        "pages/sessions.py",
        "Sessions & templates",
        ":material/forum:",
        frozenset({"owner", "admin", "team_admin", "researcher", "viewer"}),
    ),
)


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


@st.cache_resource
def email_sender(_engine: Engine) -> email_outbox.OutboxSender | None:
    """Start this app server's one email sender, or return None without SMTP settings."""
    return email_outbox.start_sender(_engine)


@st.cache_data(ttl=ACCOUNTS_TTL_SECONDS, show_spinner=False)
def load_accounts(database_url: str) -> dict[str, User]:
    """Return enabled users keyed by lowercase username.

    streamlit-authenticator 0.4.2 lowercases usernames, so two users whose
    names differ only in case would share one entry. Both are left out.
    """
    with engine_for(database_url).connect() as conn:
        users = list_users(conn)
    accounts: dict[str, User] = {}
    ambiguous: set[str] = set()
    for user in users:
        if user.disabled:
            continue
        key = user.username.lower()
        if key in accounts:
            ambiguous.add(key)
        accounts[key] = user
    for key in ambiguous:
        logger.warning("users whose names differ only in case cannot sign in: %s", key)
        del accounts[key]
    return accounts


def credentials_for(accounts: dict[str, User]) -> dict[str, Any]:
    """Build the credentials dict in the shape streamlit-authenticator expects."""
    return {
        "usernames": {
            key: {
                "name": account.display_name,
                "email": account.email,
                "password": account.password_hash,
                "roles": [account.role],
            }
            for key, account in accounts.items()
        }
    }


def cookie_key(secret: bytes) -> str:
    return hmac.new(secret, COOKIE_KEY_LABEL, hashlib.sha256).hexdigest()


def show_only(render: Callable[[], None], title: str, url_path: str) -> None:
    """Register one hidden page, so no other page is reachable, and run it."""
    st.navigation([st.Page(render, title=title, url_path=url_path)], position="hidden").run()


def remember_password_sign_in(event: dict[str, Any]) -> None:
    """Log a sign-in with username and password and ask the next run to set the cookie.

    streamlit-authenticator calls this only for the login form, not for a
    sign-in from the cookie, so the cookie's expiry does not slide.
    """
    logger.info("user %s signed in with a password", event["username"])
    # The st.rerun() after sign-in can remove the cookie component before the
    # browser runs it, so the next run sets the cookie again.
    st.session_state[SESSION_COOKIE_PENDING] = True


def wait_text(wait: timedelta) -> str:
    minutes = max(1, math.ceil(wait.total_seconds() / 60))
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"


class SignInLimiter:
    """Apply the failed sign-in limits of gateway_core.login_attempts to the login form.

    streamlit-authenticator 0.4.2 counts failures only for known usernames,
    in the credentials dict that this script rebuilds on every run, so its
    own max_login_attempts cannot limit anything here. Its Authenticate.login calls
    `authentication_controller.login(username, password, ...)` when the form
    is submitted, and `login(token=...)` for a sign-in cookie. `install`
    wraps that call on one authenticator, so every password attempt is
    recorded and one over the limit is rejected before its password is
    checked.
    """

    def __init__(self, engine: Engine, session_key: str, client_address: str | None) -> None:
        self.engine = engine
        self.session_key = session_key
        self.client_address = client_address
        # The limit that rejected this run's attempt, if one did.
        self.rejection: login_attempts.Limit | None = None

    def session_limit(self) -> login_attempts.Limit | None:
        with self.engine.connect() as conn:
            return login_attempts.check_limits(conn, username=None, session_key=self.session_key)

    def install(self, authenticator: stauth.Authenticate) -> None:
        controller = authenticator.authentication_controller
        check_password = controller.login

        def limited_login(
            username: str | None = None, password: str | None = None, *args: Any, **kwargs: Any
        ) -> bool | None:
            if not username:
                return check_password(username, password, *args, **kwargs)
            with self.engine.begin() as conn:
                attempt = login_attempts.begin_attempt(
                    conn,
                    username,
                    session_key=self.session_key,
                    client_address=self.client_address,
                )
            if attempt.limit is not None:
                self.rejection = attempt.limit
                logger.warning(
                    "rejected sign-in for %s: too many failures for this %s",
                    login_attempts.normalize_username(username),
                    attempt.limit.scope,
                )
                return False
            signed_in = check_password(username, password, *args, **kwargs)
            if signed_in:
                with self.engine.begin() as conn:
                    login_attempts.finish_attempt(conn, attempt.attempt_id, success=True)
            else:
                logger.info("failed sign-in for %s", login_attempts.normalize_username(username))
            return signed_in

        controller.login = limited_login


def limit_message(limit: login_attempts.Limit) -> str:
    subject = "this username" if limit.scope == "username" else "this browser session"
    return f"Too many failed sign-ins for {subject}. Try again in {wait_text(limit.retry_after)}."


def signup_enabled(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            return signup.get_settings(conn).signup_enabled
    except SQLAlchemyError as error:
        logger.error("reading the sign-up setting from Postgres failed: %s", error)
        return False


def render_signup(engine: Engine, secret: bytes) -> None:
    result = signup_form.render(engine, secret, st.context.ip_address)
    if result is None:
        return
    # The new owner can sign in at once instead of after ACCOUNTS_TTL_SECONDS.
    load_accounts.clear()
    sender = email_sender(engine)
    if sender is not None:
        sender.wake()


def render_sign_in(
    authenticator: stauth.Authenticate, limiter: SignInLimiter, secret: bytes
) -> None:
    st.title("Gatewayz")
    if not signup_enabled(limiter.engine):
        render_sign_in_form(authenticator, limiter)
        return
    sign_in_tab, signup_tab = st.tabs(["Sign in", "Create an account"])
    with signup_tab:
        render_signup(limiter.engine, secret)
    with sign_in_tab:
        render_sign_in_form(authenticator, limiter)


def render_sign_in_form(authenticator: stauth.Authenticate, limiter: SignInLimiter) -> None:
    try:
        session_limit = limiter.session_limit()
        limiter.install(authenticator)
        # Over the session's limit, only a sign-in cookie is checked and no form is shown.
        location = "main" if session_limit is None else "unrendered"
        authenticator.login(location=location, callback=remember_password_sign_in)
    except SQLAlchemyError as error:
        logger.error("checking sign-in attempts in Postgres failed: %s", error)
        st.error(
            "Cannot check sign-in attempts in Postgres. Check that the database is running, "
            "then reload the page."
        )
        return
    except LoginError as error:
        # The sign-in cookie names a user who is now disabled or deleted.
        logger.warning("rejected sign-in cookie: %s", error)
        authenticator.cookie_controller.delete_cookie()
        st.error(
            "Your saved sign-in is for an account that is disabled or no longer exists. "
            "Reload the page to sign in again."
        )
        return
    status = st.session_state.get("authentication_status")
    if status:
        st.rerun()
    if session_limit is not None:
        st.error(limit_message(session_limit))
    elif limiter.rejection is not None:
        st.error(limit_message(limiter.rejection))
    elif status is False:
        st.error("Incorrect username or password.")


def sign_out(authenticator: stauth.Authenticate) -> None:
    """Clear the session after the authenticator's own logout or a vanished account."""
    if st.session_state.get("authentication_status"):
        authenticator.logout(location="unrendered")
    for key in (SESSION_USER, SESSION_PAGES, SESSION_COOKIE_PENDING):
        st.session_state.pop(key, None)


def session_organizations(engine: Engine, account: User) -> list[int] | None:
    """Return the account's organizations, loaded once per sign-in and kept in the session.

    None means installation staff (no organization_members row). Membership
    changes take effect at the user's next sign-in.
    """
    stored = st.session_state.get(SESSION_USER)
    if stored is not None and stored["username"] == account.username:
        return stored["organization_ids"]
    with engine.connect() as conn:
        organization_ids = access.organization_ids_of(conn, account.username)
    return None if organization_ids is None else sorted(organization_ids)


def render_signed_in(authenticator: stauth.Authenticate, engine: Engine, account: User) -> bool:
    """Show the sidebar and the pages for the account's role, or return False after logout."""
    allowed = [page for page in PAGES if account.role in page.roles]
    organization_ids = session_organizations(engine, account)
    st.session_state[SESSION_USER] = {
        "username": account.username,
        "display_name": account.display_name,
        "role": account.role,
        # Read by app_support.current_actor.
        "organization_ids": organization_ids,
    }
    st.session_state[SESSION_PAGES] = frozenset(page.name for page in allowed)
    if st.session_state.pop(SESSION_COOKIE_PENDING, False):
        authenticator.cookie_controller.set_cookie()

    sidebar = st.sidebar.empty()
    with sidebar.container():
        st.caption(f"Signed in as **{account.display_name}** ({account.role})")
        logout_clicked = st.button("Log out", key="gatewayz_logout")
    if logout_clicked:
        # Called outside the sidebar container, so the cookie-deleting
        # component it renders survives the sidebar being cleared.
        authenticator.logout(location="unrendered")
        sidebar.empty()
        logger.info("user %s signed out", account.username)
        return False

    navigation = st.navigation(
        [
            st.Page(page.path, title=page.title, icon=page.icon, url_path=page.name)
            for page in allowed
        ]
    )
    navigation.run()
    return True


def main() -> None:
    # A no-op once the root logger has handlers, as on every rerun after the first.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    st.set_page_config(page_title="Gatewayz", page_icon=":material/hub:", layout="wide")
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        message = str(error)
        show_only(lambda: st.error(message), "Configuration error", "configuration-error")
        return
    try:
        accounts = load_accounts(settings.database_url)
    except SQLAlchemyError as error:
        logger.error("reading users from Postgres failed: %s", error)
        show_only(
            lambda: st.error(
                "Cannot read accounts from Postgres. Check that the database is running "
                "and that DATABASE_URL points at it, then reload the page."
            ),
            "Database unavailable",
            "database-unavailable",
        )
        return

    email_sender(engine_for(settings.database_url))
    authenticator = stauth.Authenticate(
        credentials_for(accounts),
        COOKIE_NAME,
        cookie_key(settings.secret),
        COOKIE_EXPIRY_DAYS,
        auto_hash=False,
    )
    if st.session_state.get("authentication_status"):
        account = accounts.get(st.session_state.get("username") or "")
        if account is None:
            logger.warning(
                "ending session of %s: account disabled or deleted",
                st.session_state.get("username"),
            )
        elif render_signed_in(authenticator, engine_for(settings.database_url), account):
            return
    sign_out(authenticator)
    session_key = st.session_state.setdefault(SESSION_SIGN_IN_KEY, secrets.token_hex(16))
    limiter = SignInLimiter(engine_for(settings.database_url), session_key, st.context.ip_address)
    show_only(lambda: render_sign_in(authenticator, limiter, settings.secret), "Sign in", "sign-in")


main()
