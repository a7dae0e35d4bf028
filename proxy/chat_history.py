"""Session history and prompt templates for chat calls.

`prepare_chat` runs before a chat call is validated. A call names a session
with the header `x-gatewayz-session-id` or the body field `session_id`.
Its forwarded messages are then the session's system prompt, its stored
history and the new messages. The oldest whole turns are dropped to fit
the smallest context window among the call's routes. When a call names a
`template` (with `variables` and optionally `template_version`), the
rendered template messages come before the call's own `messages`. Only
calls that name a session are trimmed. The proxy's own fields are removed
before the body is forwarded.

After a successful call, the new messages and the assistant's reply are
appended to the session before the response ends, so the client's next
call finds them.
A stream the client left early stores what the client had received,
marked partial. Calls that failed store nothing. Calls that run at the same
time on one session each see the history stored when they started, and
each call's messages are stored together, in the order the calls finish.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from gateway_core.context_window import (
    TrimResult,
    estimate_conversation_tokens,
    prompt_budget,
    trim_to_window,
)
from gateway_core.errors import InvalidRequestError
from gateway_core.prompt_templates import check_template_name, render_template
from gateway_core.sessions import ChatSession, SessionMessage, stored_message
from proxy import session_store
from proxy.admission import output_limit
from proxy.context import CallContext
from proxy.gateway import Gateway
from proxy.sse import SSEParser

logger = logging.getLogger("gatewayz.proxy")

SESSION_HEADER = "x-gatewayz-session-id"
CONTEXT_DROPPED_HEADER = "x-gatewayz-context-dropped"
TEMPLATE_HEADER = "x-gatewayz-template-version"
# Request fields the proxy reads itself and never forwards.
CONTROL_FIELDS = frozenset({"session_id", "template", "template_version", "variables"})
# Maximum number of stored messages loaded for one call. Older ones count as dropped.
HISTORY_LIMIT = 2000
# Status the relay records when the client disconnected mid-stream.
CLIENT_DISCONNECTED = 499


@dataclass
class ChatPreparation:
    """The body to forward for a call that names a session or a template."""

    body: dict[str, Any]
    # Size of the forwarded body in bytes, for the spend reservation and rate limits.
    size: int
    headers: dict[str, str]
    pool: AsyncConnectionPool
    request_id: str
    session: ChatSession | None = None
    # The messages this call adds to the session: rendered template, then the client's.
    new_messages: list[dict[str, Any]] = field(default_factory=list)

    async def on_success(self, answer_message: Mapping[str, Any] | None, partial: bool) -> None:
        """Append the new messages and the answer to the session, if the call named one.

        A partial reply keeps its text only, because its tool calls may be cut
        off mid-argument. A failed write is logged, and the client still gets
        its response.
        """
        if self.session is None:
            return
        messages = list(self.new_messages)
        answer = stored_answer(answer_message, partial)
        if answer is not None:
            messages.append(answer)
        try:
            last = await session_store.append_messages(
                self.pool,
                self.session.organization_id,
                self.session.id,
                messages,
                self.request_id,
                partial_last=partial and answer is not None,
            )
        except psycopg.Error:
            logger.exception(
                "request %s: storing %d messages in session %s failed",
                self.request_id,
                len(messages),
                self.session.id,
            )
            return
        if last is None:
            logger.warning(
                "request %s: session %s was deleted during the call, so its messages "
                "were not stored",
                self.request_id,
                self.session.id,
            )

    async def finish(self, ctx: CallContext, answer: Mapping[str, Any]) -> None:
        """Store the reply of a non-streamed call that succeeded."""
        if not 200 <= ctx.status_code < 300:
            return
        choices = answer.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        await self.on_success(message if isinstance(message, dict) else None, False)

    async def wrap_stream(
        self, ctx: CallContext, source: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """Pass `source` through, assemble the reply, and store it.

        The reply is stored before the chunk that carries `data: [DONE]` is
        sent, so a client that stops reading there finds it in its next call.
        A stream without [DONE] is stored when it ends. `source` is the relay,
        whose `finally` block sets the call's final status, so it is closed
        before that status is read.
        """
        answer = StreamedAnswer()
        stored = False
        try:
            async for chunk in source:
                answer.feed(chunk)
                if answer.done and not answer.failed and not stored:
                    stored = True
                    await self.on_success(answer.message(), False)
                yield chunk
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
            if not stored and not answer.failed:
                if ctx.finished_at is not None and ctx.status_code == 200:
                    await self.on_success(answer.message(), False)
                elif ctx.status_code == CLIENT_DISCONNECTED:
                    await self.on_success(answer.message(), True)


class StreamedAnswer:
    """Assembles the first choice's message from chat completion chunks."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._content: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        # The stream sent `data: [DONE]`, or an error event.
        self.done = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            if event.data == b"[DONE]":
                self.done = True
            if not event.data or event.data == b"[DONE]":
                continue
            try:
                decoded = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(decoded, dict):
                self.observe(decoded)

    def observe(self, event: Mapping[str, Any]) -> None:
        if isinstance(event.get("error"), dict) and event.get("type") in (None, "error"):
            self.failed = True
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                self._content.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._observe_tool_call(call)

    def _observe_tool_call(self, call: Mapping[str, Any]) -> None:
        index = call.get("index", 0)
        slot = self._tool_calls.setdefault(
            index if isinstance(index, int) else 0,
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if isinstance(call.get("id"), str):
            slot["id"] = call["id"]
        function = call.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    slot["function"][key] += function[key]

    def message(self) -> dict[str, Any]:
        text = "".join(self._content)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self._tool_calls:
            message["content"] = text or None
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        return message


def stored_answer(message: Mapping[str, Any] | None, partial: bool) -> dict[str, Any] | None:
    """Return the reply as it is stored, or None when there is nothing to store."""
    if message is None:
        return None
    if partial:
        content = message.get("content")
        if not isinstance(content, str) or not content:
            return None
        return {"role": "assistant", "content": content}
    answer = stored_message(message)
    answer.setdefault("role", "assistant")
    return answer


def session_named(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """Return the session id the call names in its header or body, if any."""
    from_header = headers.get(SESSION_HEADER)
    from_body = body.get("session_id")
    if from_body is not None and not isinstance(from_body, str):
        raise InvalidRequestError("'session_id' must be a string", param="session_id")
    if from_header and from_body and from_header != from_body:
        raise InvalidRequestError(
            f"the {SESSION_HEADER} header and 'session_id' name different sessions",
            param="session_id",
        )
    return from_header or from_body


def template_version(body: Mapping[str, Any]) -> int | None:
    version = body.get("template_version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequestError(
            f"'template_version' must be a positive integer, got {version!r}",
            param="template_version",
        )
    return version


async def prepare_chat(
    gateway: Gateway, ctx: CallContext, body: dict[str, Any], headers: Mapping[str, str]
) -> ChatPreparation | None:
    """Build the forwarded body of a chat call that names a session or a template.

    Returns None, and leaves `body` as it is, when the call names neither.
    Sets the call's session id and template name and version for its usage row.
    """
    # Imported here because proxy.routes imports this module.
    from proxy.routes import validate_chat

    session_id = session_named(body, headers)
    if session_id is None and CONTROL_FIELDS.isdisjoint(body):
        return None
    assert ctx.identity is not None
    organization_id = ctx.identity.organization_id
    forwarded = {key: value for key, value in body.items() if key not in CONTROL_FIELDS}
    preparation = ChatPreparation(forwarded, 0, {}, gateway.pool, ctx.request_id)
    messages = forwarded.get("messages", [] if "template" in body else None)
    if "template" in body:
        name = check_template_name(body["template"])
        template = await session_store.get_template(
            gateway.pool, organization_id, name, template_version(body)
        )
        ctx.template_name, ctx.template_version = template.name, template.version
        rendered = render_template(template, body.get("variables", {}))
        if isinstance(messages, list):
            messages = rendered + messages
        preparation.headers[TEMPLATE_HEADER] = f"{template.name}:{template.version}"
    elif "variables" in body or "template_version" in body:
        raise InvalidRequestError("'variables' and 'template_version' need a 'template'")
    validate_chat({"messages": messages})
    preparation.new_messages = messages
    forwarded["messages"] = messages
    if session_id is not None:
        await add_history(gateway, ctx, preparation, session_id)
    preparation.size = len(orjson.dumps(forwarded))
    return preparation


async def add_history(
    gateway: Gateway,
    ctx: CallContext,
    preparation: ChatPreparation,
    session_id: str,
) -> None:
    """Put the session's system prompt and history before the new messages, trimmed."""
    from proxy.routes import validate_common

    assert ctx.identity is not None
    session = await session_store.get_session(
        gateway.pool, ctx.identity.organization_id, session_id
    )
    ctx.session_id = session.id
    preparation.session = session
    forwarded = preparation.body
    if "model" not in forwarded and session.model:
        forwarded["model"] = session.model
    if forwarded.get("n") not in (None, 1):
        raise InvalidRequestError("'n' must be 1 in a call that names a session", param="n")
    validate_common(forwarded)
    history = await session_store.load_history(gateway.pool, session.id, HISTORY_LIMIT)
    kept_history, skipped = start_at_turn(history, session.message_count)
    conversation = session.system_messages() + kept_history + preparation.new_messages
    trimmed = await fit_to_window(gateway, ctx, forwarded, conversation)
    forwarded["messages"] = trimmed.messages
    preparation.headers[SESSION_HEADER] = session.id
    preparation.headers[CONTEXT_DROPPED_HEADER] = str(skipped + trimmed.dropped)
    if trimmed.dropped or skipped:
        logger.info(
            "request %s session %s: dropped %d old messages to fit the context window",
            ctx.request_id,
            session.id,
            skipped + trimmed.dropped,
        )


def start_at_turn(history: list[SessionMessage], stored: int) -> tuple[list[dict[str, Any]], int]:
    """Return the loaded messages from the first whole turn, and how many are left out.

    When older messages were not loaded, the loaded ones may start inside a
    turn, so they are cut to start at the first user message.
    """
    messages = [message.message for message in history]
    not_loaded = max(stored - len(messages), 0)
    if not_loaded == 0:
        return messages, 0
    start = next(
        (i for i, message in enumerate(messages) if message.get("role") == "user"), len(messages)
    )
    return messages[start:], not_loaded + start


async def fit_to_window(
    gateway: Gateway, ctx: CallContext, body: Mapping[str, Any], conversation: list[dict[str, Any]]
) -> TrimResult:
    """Trim the conversation to the smallest prompt budget among the call's routes.

    A route whose model has no catalog entry sets no budget, so a call with
    no catalog model is forwarded whole.
    """
    assert ctx.identity is not None
    models = body.get("models")
    routes = await gateway.registry.resolve_all(
        body["model"], ctx.identity, models if isinstance(models, list) else None
    )
    budgets = [
        prompt_budget(route.entry.context_window, output_limit(dict(body), route.entry))
        for route in routes
        if route.entry is not None and route.entry.context_window > 0
    ]
    if not budgets:
        return TrimResult(conversation, 0, estimate_conversation_tokens(conversation), True)
    return trim_to_window(conversation, min(budgets))
