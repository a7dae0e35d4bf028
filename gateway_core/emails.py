"""Transactional emails rendered from Jinja2 templates, sent off the request path.

Each email in `templates/email/` is a pair of files: `NAME.txt` defines a
`subject` block and a plain-text `body` block, and `NAME.html` extends
`base.html` and defines the HTML `body`. Missing context variables raise
`jinja2.UndefinedError` instead of rendering as empty text.

`gateway_core.email_outbox` queues rendered emails in Postgres and
delivers them in the background with retries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_DIR = Path(__file__).parent / "templates" / "email"
TEMPLATES = (
    "invitation",
    "welcome",
    "key_created",
    "payment_receipt",
    "low_balance",
    "budget_alert",
)
# The app's address when GATEWAYZ_APP_URL is unset, as in gateway_core.billing.
DEFAULT_APP_URL = "http://127.0.0.1:8501"


def format_usd(amount: Decimal | int) -> str:
    """Format a dollar amount with a thousands separator and whole cents: $1,234.50."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"amount must be a Decimal or an int, not {type(amount).__name__}")
    cents = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents):,.2f}"


def _environment(autoescape: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    environment.filters["usd"] = format_usd
    return environment


# Plain text is never escaped. HTML escapes every value, so a team or
# organization name cannot inject markup.
_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def render_email(name: str, **context: Any) -> tuple[str, str, str]:
    """Render the email template `name` and return (subject, text, html)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown email template {name!r}; expected one of {', '.join(TEMPLATES)}")
    text_template = _TEXT.get_template(f"{name}.txt")
    template_context = text_template.new_context(context)
    subject = " ".join("".join(text_template.blocks["subject"](template_context)).split())
    text = "".join(text_template.blocks["body"](template_context)).strip() + "\n"
    html = _HTML.get_template(f"{name}.html").render(subject=subject, **context)
    return subject, text, html


def sample_context(name: str) -> dict[str, Any]:
    """Return example values for a template, for previews in the app."""
    common = {"organization": "Acme Research", "app_url": "https://gateway.example.com"}
    samples: dict[str, dict[str, Any]] = {
        "invitation": {
            "inviter": "Ada Lovelace",
            "role": "researcher",
            "username": "grace",
        },
        "welcome": {"username": "ada@example.com", "trial_credit": Decimal(10), "trial_days": 14},
        "key_created": {
            "created_by": "ada@example.com",
            "mode": "live",
            "key_name": "ci-pipeline",
            "key_prefix": "gw_live_AbC1",
            "key_last4": "xY9z",
            "team": "ml-platform",
        },
        "payment_receipt": {
            "amount": Decimal("25.00"),
            "reference": "cs_test_EXAMPLE",
            "paid_at": "2026-12-07 09:30 UTC",
            "balance": Decimal("37.42"),
        },
        "low_balance": {
            "balance": Decimal("1.87"),
            "threshold": Decimal(5),
            "topup_url": "https://gateway.example.com/billing",
        },
        "budget_alert": {
            "scope": "team ml-platform",
            "period": "monthly",
            "spent": Decimal("80.00"),
            "limit": Decimal("100.00"),
            "percent": 80,
        },
    }
    if name not in samples:
        raise ValueError(f"unknown email template {name!r}")
    return {**common, **samples[name]}


def app_url(environ: Mapping[str, str] | None = None) -> str:
    """Return the app's public address for links in emails, from GATEWAYZ_APP_URL."""
    env = os.environ if environ is None else environ
    return env.get("GATEWAYZ_APP_URL", DEFAULT_APP_URL).strip().rstrip("/") or DEFAULT_APP_URL


def format_timestamp(moment: datetime) -> str:
    """Format a time for an email body, in UTC: 2026-12-07 09:30 UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
