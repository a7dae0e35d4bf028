"""A local SMTP server (aiosmtpd) that keeps each message it accepts."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from gateway_core import alerts
from tests.support.fake_openai import free_port


class Inbox:
    """aiosmtpd handler that parses and keeps accepted messages.

    `reply` replaces the 250 reply to DATA, to test rejections.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.reply: str | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply is not None:
            return self.reply
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        return [message for message in self.messages if message["To"] == recipient]


class SmtpServer:
    """An aiosmtpd server on a fixed 127.0.0.1 port that can be stopped and started again."""

    def __init__(self, port: int | None = None) -> None:
        self.inbox = Inbox()
        self.port = port or free_port()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def settings(self, timeout: float = 5.0) -> alerts.SmtpSettings:
        return alerts.SmtpSettings(
            host="127.0.0.1", port=self.port, sender="gatewayz@example.com", timeout=timeout
        )


def parts(message: EmailMessage) -> dict[str, str]:
    """Return the text/plain and text/html bodies of a message by content type."""
    found = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            found[part.get_content_type()] = part.get_content()
    return found
