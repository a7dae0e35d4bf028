"""Transactional emails rendered from Jinja2 templates, sent off the request path.

Each email in `templates/email/` is a pair of files: `NAME.txt` defines a
`subject` block and a plain-text `body` block, and `NAME.html` extends
`base.html` and defines the HTML `body`. Missing context variables raise
`jinja2.UndefinedError` instead of rendering as empty text.

`EmailOutbox.send` renders at once and hands delivery to a background
thread, so a slow or failing mail server does not block the caller. Delivery
is retried and failures are logged by `gateway_core.alerts.send_email`.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import jinja2

from gateway_core import alerts

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates" / "email"
TEMPLATES = (
    "invitation",
    "welcome",
    "key_created",
    "payment_receipt",
    "low_balance",
    "budget_alert",
)
# Background threads that deliver email. Each send uses one until its retries end.
OUTBOX_WORKERS = 2


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
            "accept_url": "https://gateway.example.com/invite/EXAMPLE",
            "expires_at": "2026-12-31",
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


class EmailOutbox:
    """Deliver rendered emails in background threads through one SMTP server."""

    def __init__(self, smtp: alerts.SmtpSettings | None, workers: int = OUTBOX_WORKERS) -> None:
        self._smtp = smtp
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="email")

    @property
    def configured(self) -> bool:
        return self._smtp is not None

    def send(self, recipient: str, name: str, **context: Any) -> Future[bool]:
        """Render `name` now and queue it for `recipient`; the future is True when delivered.

        Rendering errors raise here, because they are bugs. Delivery errors
        are retried and logged in the background, and the future returns False.
        """
        subject, text, html = render_email(name, **context)
        if self._smtp is None:
            logger.info("%s email to %s not sent: GATEWAYZ_SMTP_HOST is not set", name, recipient)
            skipped: Future[bool] = Future()
            skipped.set_result(False)
            return skipped
        smtp = self._smtp
        logger.info("queued %s email to %s", name, recipient)
        return self._executor.submit(
            alerts.send_email,
            smtp.host,
            smtp.port,
            smtp.sender,
            recipient,
            subject,
            text,
            html,
            username=smtp.username,
            password=smtp.password,
            starttls=smtp.starttls,
            timeout=smtp.timeout,
        )

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait)


def format_timestamp(moment: datetime) -> str:
    """Format a time for an email body, in UTC: 2026-12-07 09:30 UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
