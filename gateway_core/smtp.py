"""Sending email over SMTP: server settings, message building and delivery with retries.

`deliver` makes one attempt and raises. `send_email` retries connection
errors and 4xx replies, logs failures and returns a success flag.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage

from gateway_core.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3
# Seconds before the first retry. Each later retry waits twice as long.
DEFAULT_BACKOFF = 0.5
DEFAULT_TIMEOUT = 10.0
EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class SmtpSettings:
    """Mail server for every email the gateway sends, read from GATEWAYZ_SMTP_* variables."""

    host: str
    sender: str
    port: int = 25
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """Read the settings; return None when GATEWAYZ_SMTP_HOST is unset."""
        env = os.environ if environ is None else environ
        host = env.get("GATEWAYZ_SMTP_HOST", "").strip()
        if not host:
            return None
        sender = env.get("GATEWAYZ_SMTP_FROM", "").strip()
        if not EMAIL_ADDRESS.match(sender):
            raise ConfigError(
                "GATEWAYZ_SMTP_FROM must be the sender's email address when "
                f"GATEWAYZ_SMTP_HOST is set; got {sender!r}"
            )
        port_text = env.get("GATEWAYZ_SMTP_PORT", "25")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"GATEWAYZ_SMTP_PORT must be a TCP port number, got {port_text!r}")
        starttls_text = env.get("GATEWAYZ_SMTP_STARTTLS", "false").strip().lower()
        if starttls_text not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(
                f"GATEWAYZ_SMTP_STARTTLS must be true or false, got {starttls_text!r}"
            )
        return cls(
            host=host,
            sender=sender,
            port=int(port_text),
            username=env.get("GATEWAYZ_SMTP_USERNAME") or None,
            password=env.get("GATEWAYZ_SMTP_PASSWORD") or None,
            starttls=starttls_text in ("true", "1", "yes"),
        )


def build_email(
    sender: str, recipient: str, subject: str, text: str, html_body: str | None
) -> EmailMessage:
    message = EmailMessage()
    # EmailMessage raises ValueError for a header with CR or LF in it.
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message.set_content(text)
    if html_body is not None:
        message.add_alternative(html_body, subtype="html")
    return message


def is_permanent_smtp_error(error: Exception) -> bool:
    """Tell whether retrying cannot help: a 5xx reply, a missing extension or a TLS error."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return error.smtp_code >= 500
    return isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLError)


def deliver(
    message: EmailMessage,
    smtp_host: str,
    smtp_port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Send one message in one SMTP session, without retries.

    Raises smtplib.SMTPException or OSError when the server cannot be
    reached or rejects the message.
    """
    with smtplib.SMTP(smtp_host, smtp_port, timeout=timeout) as client:
        if starttls:
            client.starttls(context=ssl_context or ssl.create_default_context())
        if username is not None:
            client.login(username, password or "")
        client.send_message(message)


def send_email(
    smtp_host: str,
    smtp_port: int,
    sender: str,
    recipient: str,
    subject: str,
    text: str,
    html: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    starttls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> bool:
    """Send a plain-text email, with an HTML alternative if given; return success.

    Connection errors and 4xx replies are retried up to `attempts` times in
    all; 5xx replies are not. Delivery failures and an invalid message (such
    as a header with a line break) are logged and return False.
    """
    try:
        message = build_email(sender, recipient, subject, text, html)
    except ValueError as exc:
        logger.error("email to %s not sent: invalid message: %s", recipient, exc)
        return False
    for attempt in range(1, attempts + 1):
        try:
            deliver(
                message,
                smtp_host,
                smtp_port,
                username=username,
                password=password,
                starttls=starttls,
                ssl_context=ssl_context,
                timeout=timeout,
            )
        except (smtplib.SMTPException, OSError) as exc:
            if is_permanent_smtp_error(exc) or attempt == attempts:
                logger.error(
                    "email to %s via %s:%d failed on attempt %d of %d: %s: %s",
                    recipient,
                    smtp_host,
                    smtp_port,
                    attempt,
                    attempts,
                    type(exc).__name__,
                    exc,
                )
                return False
            delay = backoff * 2 ** (attempt - 1)
            logger.warning(
                "email to %s via %s:%d failed on attempt %d of %d, retrying in %.2fs: %s: %s",
                recipient,
                smtp_host,
                smtp_port,
                attempt,
                attempts,
                delay,
                type(exc).__name__,
                exc,
            )
            time.sleep(delay)
        else:
            logger.info("email to %s sent via %s:%d", recipient, smtp_host, smtp_port)
            return True
    return False
