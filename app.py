"""Gatewayz admin app: sign-in, then the pages the user's role allows.

Run with `streamlit run app.py`. DATABASE_URL and GATEWAYZ_SECRET come from
the environment. Users are the rows of the `users` table, checked against
their bcrypt hashes by streamlit-authenticator.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st
import streamlit_authenticator as stauth
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from streamlit_authenticator.utilities import LoginError

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


@dataclass(frozen=True)
class AppPage:
    # Also the URL path: /keys, /usage.
    name: str
    path: str
    title: str
    icon: str
    roles: frozenset[str]


PAGES = (
    AppPage("keys", "pages/keys.py", "Keys", ":material/key:", frozenset({"owner", "admin"})),
    AppPage("usage", "pages/usage.py", "Usage", ":material/monitoring:", frozenset(ROLES)),
    AppPage("models", "pages/models.py", "Models", ":material/list:", frozenset(ROLES)),
)


@st.cache_resource
def engine_for(database_url: str) -> Engine:
    return get_engine(database_url)


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


def render_sign_in(authenticator: stauth.Authenticate) -> None:
    st.title("Gatewayz")
    # NOTE: failed sign-ins are not rate-limited. streamlit-authenticator counts
    # them in the credentials dict, which this script rebuilds on every run.
    try:
        authenticator.login(location="main", callback=remember_password_sign_in)
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
    if status is False:
        st.error("Incorrect username or password.")


def sign_out(authenticator: stauth.Authenticate) -> None:
    """Clear the session after the authenticator's own logout or a vanished account."""
    if st.session_state.get("authentication_status"):
        authenticator.logout(location="unrendered")
    for key in (SESSION_USER, SESSION_PAGES, SESSION_COOKIE_PENDING):
        st.session_state.pop(key, None)


def render_signed_in(authenticator: stauth.Authenticate, account: User) -> bool:
    """Show the sidebar and the pages for the account's role, or return False after logout."""
    allowed = [page for page in PAGES if account.role in page.roles]
    st.session_state[SESSION_USER] = {
        "username": account.username,
        "display_name": account.display_name,
        "role": account.role,
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
        elif render_signed_in(authenticator, account):
            return
    sign_out(authenticator)
    show_only(lambda: render_sign_in(authenticator), "Sign in", "sign-in")


main()
