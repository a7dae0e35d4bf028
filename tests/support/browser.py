"""Drive the Streamlit app in Debian's chromium through Playwright.

Playwright cannot download its own browser here, so every launch points at
/usr/bin/chromium with a fresh profile folder. Streamlit shows its status
widget (`stStatusWidget`) while a script run is in progress; `settle` waits
for that widget to go away instead of sleeping.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, TimeoutError, sync_playwright

from gateway_core.config import PROJECT_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "artifacts" / "journeys"
# Milliseconds. A script run normally starts within a few hundred.
RUN_START_TIMEOUT = 1_500
RUN_FINISH_TIMEOUT = 60_000
STATUS_WIDGET = '[data-testid="stStatusWidget"]'


@contextmanager
def chromium() -> Iterator[BrowserContext]:
    """Launch headless chromium with a throwaway profile and close it afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="gatewayz-chromium-"))
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                accept_downloads=True,
                viewport={"width": 1400, "height": 1000},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the script run that the last interaction started.

    The status widget can take a moment to appear after a click, so a short
    wait for it comes first, and a run that finished before it showed is fine.
    """
    with suppress(TimeoutError):
        page.wait_for_selector(STATUS_WIDGET, state="attached", timeout=RUN_START_TIMEOUT)
    page.wait_for_selector(STATUS_WIDGET, state="detached", timeout=RUN_FINISH_TIMEOUT)


def open_app(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]')
    settle(page)


def sign_in(page: Page, app_url: str, username: str, password: str) -> None:
    """Sign in through the streamlit-authenticator form and wait for the sidebar."""
    open_app(page, app_url)
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Signed in as").wait_for()
    settle(page)


def expand_navigation(page: Page) -> None:
    """Click the sidebar's "View N more", which Streamlit shows when it hides some links."""
    more = page.locator('[data-testid="stSidebarNav"]').get_by_text(re.compile(r"^View \d+ more$"))
    if more.count():
        more.click()


def go_to(page: Page, title: str) -> None:
    """Open a page through the sidebar navigation and wait for the run to finish."""
    expand_navigation(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    settle(page)


def navigation_titles(page: Page) -> list[str]:
    expand_navigation(page)
    links = page.locator('[data-testid="stSidebarNav"] a')
    # Each link's text starts with its icon's ligature name, such as "key".
    return [text.strip().splitlines()[-1] for text in links.all_inner_texts()]


def choose(
    page: Page, label: str, option: str | re.Pattern[str], search: str | None = None
) -> None:
    """Pick `option` in the first select box or multiselect labelled `label`.

    A string matches the whole option text. A pattern matches part of it, for
    labels that end in a generated part such as a key's last four characters,
    and then `search` is the text typed to filter the list.
    """
    page.get_by_role("combobox", name=label, exact=True).first.click()
    # Long option lists are virtualized, so typing filters them down to the wanted one.
    typed = option if isinstance(option, str) else search
    assert typed is not None, "a pattern needs the text to type in `search`"
    page.keyboard.type(typed)
    page.get_by_role("option", name=option, exact=isinstance(option, str)).first.click()
    settle(page)


def press(page: Page, name: str) -> None:
    page.get_by_role("button", name=name, exact=True).click()
    settle(page)


def shown_code(page: Page, pattern: str) -> str:
    """Return the first text in an `st.code` block that matches `pattern`."""
    block = page.locator('[data-testid="stCode"]').filter(has_text=re.compile(pattern)).first
    block.wait_for()
    match = re.search(pattern, block.inner_text())
    assert match is not None, block.inner_text()
    return match.group(0)


def screenshot(page: Page, journey: str, step: str) -> Path:
    """Save the whole page to artifacts/journeys/<journey>/<step>.png.

    Streamlit scrolls its main area inside the window, so Playwright's
    full-page mode captures only the viewport. The window is made as tall as the
    content for the shot and then set back.
    """
    path = ARTIFACTS / journey / f"{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    assert viewport is not None
    height = page.evaluate(
        """() => Math.max(...[...document.querySelectorAll(
            '[data-testid="stMain"], [data-testid="stAppViewContainer"], '
            + '[data-testid="stSidebarContent"]')].map((element) => element.scrollHeight))"""
    )
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, 600), 8000)})
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(viewport)
    return path
