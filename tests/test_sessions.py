"""Chat sessions, context trimming and prompt templates.

Proxy tests run the real proxy with FakeOpenAI as the upstream and check
what the upstream received. Trimming is tested as a pure function, and the
app page runs headless with AppTest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from gateway_core import directory, keys, prompt_templates, providers, sessions
from gateway_core.context_window import (
    IMAGE_PART_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    estimate_message_tokens,
    trim_to_window,
    turn_starts,
)
from gateway_core.errors import InvalidRequestError
from gateway_core.schema import chat_session_messages, usage_events
from gateway_core.schema import prompt_templates as templates_table
from proxy.chat_history import StreamedAnswer
from tests.conftest import TEST_SECRET
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import usage_row
from tests.test_app_pages import (  # noqa: F401 (app_env and cookies are fixtures)
    add_user,
    app_env,
    click,
    cookies,
    open_page,
    sign_in,
    start_app,
    values,
)

SESSION_HEADER = "x-gatewayz-session-id"
MODEL = "fake/any-model"


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI(slow_chunks=400).start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_PROVIDER_REFRESH_INTERVAL="0",
        GATEWAYZ_UPSTREAM_MAX_RETRIES="0",
        FAKE_PROVIDER_KEY="sk-fake-provider-secret-0123456789",
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("proxy") / "proxy.log")
    yield process
    process.stop()


@dataclass(frozen=True)
class Keys:
    # Two keys of different teams in one organization, and one of another organization.
    own: keys.IssuedKey
    colleague: keys.IssuedKey
    stranger: keys.IssuedKey
    organization_id: int


@pytest.fixture
def api_keys(engine: Engine, fake_upstream: FakeOpenAI) -> Keys:
    with engine.begin() as conn:
        providers.upsert_provider(
            conn, name="fake", base_url=fake_upstream.base_url, api_key_env="FAKE_PROVIDER_KEY"
        )
        research = directory.create_team(conn, "research")
        ops = directory.create_team(conn, "ops")
        other = directory.create_team(conn, "research", organization="Other Org")
        secret = TEST_SECRET.encode()
        return Keys(
            keys.create_key(conn, secret, team_id=research.id, name="own"),
            keys.create_key(conn, secret, team_id=ops.id, name="colleague"),
            keys.create_key(conn, secret, team_id=other.id, name="stranger"),
            research.organization_id,
        )


class Api:
    """httpx calls to the proxy with one key."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.headers = {"authorization": f"Bearer {key}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, self.base_url + path, headers=self.headers, timeout=30, **kwargs
        )

    def create_session(self, **fields: Any) -> dict[str, Any]:
        response = self.request("POST", "/v1/sessions", json=fields)
        assert response.status_code == 200, response.text
        return response.json()

    def chat(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            self.base_url + "/v1/chat/completions",
            json=body,
            headers={**self.headers, **(headers or {})},
            timeout=30,
        )

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        response = self.request("GET", f"/v1/sessions/{session_id}/messages")
        assert response.status_code == 200, response.text
        return response.json()["data"]


@pytest.fixture
def own(proxy: ProxyProcess, api_keys: Keys) -> Api:
    return Api(proxy.base_url, api_keys.own.secret)


@pytest.fixture
def stranger(proxy: ProxyProcess, api_keys: Keys) -> Api:
    return Api(proxy.base_url, api_keys.stranger.secret)


@pytest.fixture
def client(proxy: ProxyProcess, api_keys: Keys) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.base_url + "/v1", api_key=api_keys.own.secret, max_retries=0
    )


def roles_and_text(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(message["role"], message.get("content")) for message in messages]


# History injection through the proxy


def test_history_injected_in_order(
    client: openai.OpenAI, own: Api, fake_upstream: FakeOpenAI
) -> None:
    session = own.create_session(title="Trip", model=MODEL, system_prompt="Be brief.")

    first = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "first question"}],
        extra_headers={SESSION_HEADER: session["id"]},
    )
    assert fake_upstream.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
    ]
    assert first.headers[SESSION_HEADER] == session["id"]
    assert first.headers["x-gatewayz-context-dropped"] == "0"

    second = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "second question"}],
        extra_body={"session_id": session["id"]},
    )
    assert second.choices[0].message.content == "fake answer: second question"
    forwarded = fake_upstream.requests[-1]
    assert roles_and_text(forwarded["messages"]) == [
        ("system", "Be brief."),
        ("user", "first question"),
        ("assistant", "fake answer: first question"),
        ("user", "second question"),
    ]
    assert "session_id" not in forwarded
    stored = own.messages(session["id"])
    assert [message["seq"] for message in stored] == [1, 2, 3, 4]
    assert roles_and_text(stored)[-1] == ("assistant", "fake answer: second question")
    assert own.request("GET", f"/v1/sessions/{session['id']}").json()["message_count"] == 4


def test_session_model_used_when_call_has_none(own: Api, fake_upstream: FakeOpenAI) -> None:
    session = own.create_session(model="fake/session-model")

    response = own.chat(
        {"messages": [{"role": "user", "content": "hi"}]}, {SESSION_HEADER: session["id"]}
    )

    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1]["model"] == "session-model"


def test_streaming_appends_answer(client: openai.OpenAI, own: Api) -> None:
    session = own.create_session(model=MODEL)

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        extra_body={"session_id": session["id"]},
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert streamed == "fake answer: a b c"
    stored = own.messages(session["id"])
    assert roles_and_text(stored) == [("user", "a b c"), ("assistant", "fake answer: a b c")]
    assert [message["partial"] for message in stored] == [False, False]


def test_stream_left_early_stores_partial(own: Api) -> None:
    session = own.create_session(model="fake/slow-stream")
    body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
    headers = {**own.headers, SESSION_HEADER: session["id"]}

    with httpx.stream(
        "POST", own.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)

    deadline = time.monotonic() + 10
    stored = own.messages(session["id"])
    while len(stored) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        stored = own.messages(session["id"])
    assert roles_and_text(stored)[0] == ("user", "go")
    assert stored[1]["role"] == "assistant"
    assert stored[1]["content"].startswith("w")
    assert stored[1]["partial"] is True


def test_failed_call_stores_nothing(own: Api) -> None:
    session = own.create_session(model="fake/fail-500")

    response = own.chat(
        {"messages": [{"role": "user", "content": "x"}]}, {SESSION_HEADER: session["id"]}
    )

    assert response.status_code >= 500
    assert own.messages(session["id"]) == []


def test_tool_call_and_result_stored_together(own: Api, fake_upstream: FakeOpenAI) -> None:
    session = own.create_session(model=MODEL)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    headers = {SESSION_HEADER: session["id"]}

    tool_call_response = own.chat(
        {"messages": [{"role": "user", "content": "weather?"}], "tools": tools}, headers
    )
    call = tool_call_response.json()["choices"][0]["message"]["tool_calls"][0]
    result = {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}
    answered = own.chat({"messages": [result]}, headers)

    assert answered.status_code == 200, answered.text
    forwarded = fake_upstream.requests[-1]["messages"]
    assert [message["role"] for message in forwarded] == ["user", "assistant", "tool"]
    assert forwarded[1]["tool_calls"] == [call]
    assert forwarded[2] == result
    stored = own.messages(session["id"])
    assert [message["role"] for message in stored] == ["user", "assistant", "tool", "assistant"]


def test_session_call_rejects_bad_requests(own: Api, fake_upstream: FakeOpenAI) -> None:
    session = own.create_session(model=MODEL)
    headers = {SESSION_HEADER: session["id"]}
    before = len(fake_upstream.requests)

    empty = own.chat({"messages": []}, headers)
    several = own.chat({"messages": [{"role": "user", "content": "x"}], "n": 2}, headers)
    conflicting = own.chat(
        {"messages": [{"role": "user", "content": "x"}], "session_id": sessions.new_session_id()},
        headers,
    )
    unknown = own.chat(
        {"messages": [{"role": "user", "content": "x"}]},
        {SESSION_HEADER: sessions.new_session_id()},
    )

    assert empty.status_code == 400
    assert empty.json()["error"]["param"] == "messages"
    assert several.status_code == 400
    assert several.json()["error"]["param"] == "n"
    assert conflicting.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "session_not_found"
    assert len(fake_upstream.requests) == before


def test_proxy_trims_oldest_turn_to_fit(
    own: Api, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    # The catalog gives this model a 128,000-token window and output limit, so
    # max_tokens 127,000 leaves a 1,000-token prompt budget.
    with engine.begin() as conn:
        providers.upsert_provider(
            conn, name="mistral", base_url=fake_upstream.base_url, api_key_env="FAKE_PROVIDER_KEY"
        )
    session = own.create_session(model="mistral/ministral-3b-latest")
    headers = {SESSION_HEADER: session["id"]}
    # 1,200 bytes: 300 tokens plus the message overhead. Each assistant reply
    # adds 13 bytes ("fake answer: "), so it is 4 tokens longer.
    texts = [f"{index}{'word ' * 240}"[:1200] for index in range(3)]
    dropped = []
    for content in texts:
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 127_000}
        response = own.chat(body, headers)
        assert response.status_code == 200, response.text
        dropped.append(response.headers["x-gatewayz-context-dropped"])

    assert dropped == ["0", "0", "2"]
    forwarded = fake_upstream.requests[-1]["messages"]
    assert [message["content"] for message in forwarded] == [
        texts[1],
        "fake answer: " + texts[1],
        texts[2],
    ]
    assert len(own.messages(session["id"])) == 6


# Organization boundary


def test_other_organization_gets_404(
    own: Api, stranger: Api, proxy: ProxyProcess, api_keys: Keys
) -> None:
    session = own.create_session(title="private plans", model=MODEL)
    path = f"/v1/sessions/{session['id']}"

    responses = {
        "get": stranger.request("GET", path),
        "patch": stranger.request("PATCH", path, json={"title": "mine now"}),
        "delete": stranger.request("DELETE", path),
        "messages": stranger.request("GET", path + "/messages"),
        "chat": stranger.chat(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            {SESSION_HEADER: session["id"]},
        ),
    }

    for name, response in responses.items():
        assert response.status_code == 404, name
        assert response.json()["error"]["type"] == "not_found_error", name
    assert stranger.request("GET", "/v1/sessions").json()["data"] == []
    colleague = Api(proxy.base_url, api_keys.colleague.secret)
    assert colleague.request("GET", path).json()["title"] == "private plans"
    assert own.request("GET", path).json()["title"] == "private plans"


# Ordering under concurrency


def test_concurrent_calls_keep_turns_together(own: Api) -> None:
    session = own.create_session(model=MODEL)
    headers = {SESSION_HEADER: session["id"]}
    texts = [f"message {index}" for index in range(12)]

    def send(text_: str) -> int:
        return own.chat({"messages": [{"role": "user", "content": text_}]}, headers).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(send, texts))

    assert statuses == [200] * len(texts)
    stored = own.messages(session["id"])
    assert [message["seq"] for message in stored] == list(range(1, 2 * len(texts) + 1))
    users = stored[0::2]
    answers = stored[1::2]
    assert sorted(message["content"] for message in users) == sorted(texts)
    for user, answer in zip(users, answers, strict=True):
        assert user["role"] == "user"
        assert answer["role"] == "assistant"
        assert answer["content"] == "fake answer: " + user["content"]
        assert answer["request_id"] == user["request_id"]


# Session resources


def test_session_create_update_delete(own: Api, engine: Engine) -> None:
    session = own.create_session(title="Draft", metadata={"ticket": "T-1"})
    assert session["object"] == "chat.session"
    assert session["id"].startswith("sess_")
    assert session["metadata"] == {"ticket": "T-1"}
    assert session["model"] is None
    path = f"/v1/sessions/{session['id']}"

    updated = own.request("PATCH", path, json={"title": "Final", "metadata": {"a": "b"}}).json()
    assert updated["title"] == "Final"
    assert updated["metadata"] == {"a": "b"}
    bad = own.request("PATCH", path, json={"titel": "typo"})
    assert bad.status_code == 400
    assert "'titel'" in bad.json()["error"]["message"]
    too_many = own.request(
        "POST", "/v1/sessions", json={"metadata": {str(i): "v" for i in range(17)}}
    )
    assert too_many.status_code == 400

    own.chat(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        {SESSION_HEADER: session["id"]},
    )
    deleted = own.request("DELETE", path).json()
    assert deleted == {"id": session["id"], "object": "chat.session.deleted", "deleted": True}
    assert own.request("GET", path).status_code == 404
    with engine.connect() as conn:
        left = conn.execute(
            select(chat_session_messages).where(chat_session_messages.c.session_id == session["id"])
        ).all()
    assert left == []


def test_session_list_pages_and_search(own: Api) -> None:
    created = [
        own.create_session(title=title, model=MODEL) for title in ("alpha", "beta", "100% gamma")
    ]
    own.chat(
        {"messages": [{"role": "user", "content": "the zebra question"}]},
        {SESSION_HEADER: created[0]["id"]},
    )

    first = own.request("GET", "/v1/sessions", params={"limit": 2}).json()
    rest = own.request("GET", "/v1/sessions", params={"limit": 2, "after": first["last_id"]}).json()

    assert first["object"] == "list"
    assert [s["id"] for s in first["data"]] == [created[2]["id"], created[1]["id"]]
    assert first["has_more"] is True
    assert [s["id"] for s in rest["data"]] == [created[0]["id"]]
    assert rest["has_more"] is False

    def search(query: str) -> list[str]:
        return [
            s["title"]
            for s in own.request("GET", "/v1/sessions", params={"q": query}).json()["data"]
        ]

    assert search("BETA") == ["beta"]
    assert search("zebra") == ["alpha"]
    assert search("100%") == ["100% gamma"]
    assert search("%") == ["100% gamma"]
    assert own.request("GET", "/v1/sessions", params={"after": "sess_nope"}).status_code == 400
    assert own.request("GET", "/v1/sessions", params={"limit": "0"}).status_code == 400


# Templates


def create_template(api: Api, name: str, content: Any) -> dict[str, Any]:
    response = api.request("POST", "/v1/templates", json={"name": name, "content": content})
    assert response.status_code == 200, response.text
    return response.json()


GREETING = [
    {"role": "system", "content": "You answer for {{team}}."},
    {"role": "user", "content": "Hello, I am {{ name }} and I need {{count}} items."},
]


def test_template_rendered_into_messages(own: Api, fake_upstream: FakeOpenAI) -> None:
    created = create_template(own, "greeting", GREETING)
    assert created["version"] == 1
    assert created["variables"] == ["team", "name", "count"]

    response = own.chat(
        {
            "model": MODEL,
            "template": "greeting",
            "variables": {"team": "Ops", "name": "Ada", "count": 3},
            "messages": [{"role": "user", "content": "Thanks."}],
        }
    )

    assert response.status_code == 200, response.text
    forwarded = fake_upstream.requests[-1]
    assert forwarded["messages"] == [
        {"role": "system", "content": "You answer for Ops."},
        {"role": "user", "content": "Hello, I am Ada and I need 3 items."},
        {"role": "user", "content": "Thanks."},
    ]
    for field in ("template", "variables", "template_version"):
        assert field not in forwarded
    assert response.headers["x-gatewayz-template-version"] == "greeting:1"


def test_template_variable_errors(own: Api, fake_upstream: FakeOpenAI) -> None:
    create_template(own, "greeting", GREETING)
    before = len(fake_upstream.requests)

    missing = own.chat(
        {"model": MODEL, "template": "greeting", "variables": {"team": "Ops", "count": 1}}
    )
    extra = own.chat(
        {
            "model": MODEL,
            "template": "greeting",
            "variables": {"team": "Ops", "name": "Ada", "count": 1, "nmae": "typo"},
        }
    )
    unknown = own.chat({"model": MODEL, "template": "nope", "variables": {}})
    orphan = own.chat(
        {"model": MODEL, "variables": {"a": "b"}, "messages": [{"role": "user", "content": "x"}]}
    )

    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_template_variable"
    assert "name" in missing.json()["error"]["message"]
    assert "team" not in missing.json()["error"]["message"].partition(":")[2]
    assert extra.status_code == 400
    assert extra.json()["error"]["code"] == "unknown_template_variable"
    assert "'nmae'" in extra.json()["error"]["message"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "template_not_found"
    assert orphan.status_code == 400
    assert len(fake_upstream.requests) == before


def test_template_versions_immutable(
    own: Api, stranger: Api, engine: Engine, fake_upstream: FakeOpenAI
) -> None:
    create_template(own, "summary", "Summarize: {{text}}")
    second = create_template(own, "summary", "Summarize in one line: {{text}}")

    assert second["version"] == 2
    latest = own.request("GET", "/v1/templates/summary").json()
    first = own.request("GET", "/v1/templates/summary", params={"version": 1}).json()
    assert latest["version"] == 2
    assert first["content"] == "Summarize: {{text}}"
    assert own.request("GET", "/v1/templates/summary", params={"version": 3}).status_code == 404
    assert stranger.request("GET", "/v1/templates/summary").status_code == 404
    listed = own.request("GET", "/v1/templates").json()
    assert [(t["name"], t["version"]) for t in listed["data"]] == [("summary", 2)]
    with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
        conn.execute(templates_table.update().values(content="changed"))

    pinned = own.chat(
        {"model": MODEL, "template": "summary", "template_version": 1, "variables": {"text": "x"}}
    )
    assert pinned.status_code == 200
    assert fake_upstream.requests[-1]["messages"] == [{"role": "user", "content": "Summarize: x"}]


def test_template_content_checked(own: Api) -> None:
    cases = [
        {"name": "bad name!", "content": "x"},
        {"name": "ok", "content": ""},
        {"name": "ok", "content": [{"role": "tool", "content": "x"}]},
        {"name": "ok", "content": [{"role": "user", "content": 5}]},
        {"name": "ok", "content": "x", "extra": 1},
    ]
    for body in cases:
        response = own.request("POST", "/v1/templates", json=body)
        assert response.status_code == 400, body


def test_usage_rows_carry_session_and_template(own: Api, engine: Engine) -> None:
    session = own.create_session(model=MODEL)
    create_template(own, "ask", "Question: {{q}}")
    create_template(own, "ask", "Q: {{q}}")

    response = own.chat(
        {"template": "ask", "variables": {"q": "why"}}, {SESSION_HEADER: session["id"]}
    )

    assert response.status_code == 200, response.text
    row = usage_row(engine, response.headers["x-request-id"])
    assert row["session_id"] == session["id"]
    assert row["template_name"] == "ask"
    assert row["template_version"] == 2
    assert row["endpoint"] == "chat"
    stored = own.messages(session["id"])
    assert roles_and_text(stored) == [("user", "Q: why"), ("assistant", "fake answer: Q: why")]
    listing = own.request("GET", f"/v1/sessions/{session['id']}/messages")
    assert usage_row(engine, listing.headers["x-request-id"])["session_id"] == session["id"]


# Context window trimming


def text_message(role: str, tokens: int) -> dict[str, Any]:
    """Return a message the estimate counts as exactly `tokens` tokens."""
    return {"role": role, "content": "abcd" * (tokens - MESSAGE_OVERHEAD_TOKENS)}


def test_estimate_counts_bytes_and_parts() -> None:
    assert (
        estimate_message_tokens({"role": "user", "content": "abcd"}) == 1 + MESSAGE_OVERHEAD_TOKENS
    )
    assert (
        estimate_message_tokens({"role": "user", "content": "abcde"}) == 2 + MESSAGE_OVERHEAD_TOKENS
    )
    # "é" is two bytes in UTF-8.
    assert estimate_message_tokens({"role": "user", "content": "éé"}) == 1 + MESSAGE_OVERHEAD_TOKENS
    parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert estimate_message_tokens({"role": "user", "content": parts}) == (
        1 + IMAGE_PART_TOKENS + MESSAGE_OVERHEAD_TOKENS
    )
    call = {"id": "c", "type": "function", "function": {"name": "ab", "arguments": "cdefgh"}}
    assert estimate_message_tokens(
        {"role": "assistant", "content": None, "tool_calls": [call]}
    ) == (2 + MESSAGE_OVERHEAD_TOKENS)


def test_trim_at_exact_window_boundary() -> None:
    system = text_message("system", 10)
    turns = [text_message("user", 20), text_message("assistant", 30)]
    newest = [text_message("user", 40), text_message("assistant", 50)]
    conversation = [system, *turns, *newest]
    whole = 10 + 20 + 30 + 40 + 50 + REPLY_PRIMING_TOKENS

    untrimmed = trim_to_window(conversation, whole)
    assert (untrimmed.dropped, untrimmed.fits, untrimmed.estimated_tokens) == (0, True, whole)
    assert untrimmed.messages == conversation

    cut = trim_to_window(conversation, whole - 1)
    assert cut.dropped == 2
    assert cut.fits is True
    assert cut.messages == [system, *newest]
    assert cut.estimated_tokens == whole - 50

    exact = trim_to_window(conversation, whole - 50)
    assert exact.dropped == 2
    assert exact.fits is True

    too_small = trim_to_window(conversation, whole - 51)
    assert too_small.fits is False
    assert too_small.messages == [system, *newest]


def test_trim_drops_whole_turns_only() -> None:
    conversation = [
        text_message("user", 10),
        text_message("assistant", 10),
        text_message("assistant", 10),
        text_message("user", 10),
    ]
    result = trim_to_window(conversation, 10 + 10 + REPLY_PRIMING_TOKENS)
    assert result.dropped == 3
    assert result.messages == conversation[3:]


def tool_call(call_id: str) -> dict[str, Any]:
    function = {"name": "lookup", "arguments": "{}"}
    return {"id": call_id, "type": "function", "function": function}


def test_trim_keeps_tool_call_with_results() -> None:
    conversation = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "look up a and b"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("a"), tool_call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": "A" * 400},
        {"role": "tool", "tool_call_id": "b", "content": "B" * 400},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "thanks"},
    ]

    result = trim_to_window(conversation, 50)

    assert result.dropped == 5
    assert [message["role"] for message in result.messages] == ["system", "user"]


def test_trim_never_orphans_tool_result() -> None:
    # A user message between a tool call and its result is no place to cut.
    rest = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("a")]},
        {"role": "user", "content": "still there?"},
        {"role": "tool", "tool_call_id": "a", "content": "result"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "newest"},
    ]
    assert turn_starts(rest) == [0, 5]

    result = trim_to_window(rest, 28)

    assert result.dropped == 5
    assert result.messages == rest[5:]


def test_trim_keeps_developer_prefix() -> None:
    conversation = [
        text_message("developer", 10),
        text_message("system", 10),
        text_message("user", 100),
        text_message("user", 10),
    ]
    result = trim_to_window(conversation, 30 + REPLY_PRIMING_TOKENS)
    assert [m["role"] for m in result.messages] == ["developer", "system", "user"]
    assert result.dropped == 1


# Template rendering as a function


def template_of(content: Any) -> prompt_templates.PromptTemplate:
    parsed = prompt_templates.parse_template_content(content)
    variables = prompt_templates.template_variables(parsed)
    return prompt_templates.PromptTemplate("t", 1, parsed, variables, None, None, None)  # type: ignore[arg-type]


def test_render_substitutes_once() -> None:
    template = template_of("{{a}} and {{ b }} and {{a}}, not {{ c d }} or {single}")
    rendered = prompt_templates.render_template(template, {"a": "{{b}}", "b": True})
    assert rendered == [
        {"role": "user", "content": "{{b}} and true and {{b}}, not {{ c d }} or {single}"}
    ]


def test_render_rejects_objects_as_values() -> None:
    template = template_of("{{a}}")
    with pytest.raises(InvalidRequestError, match="'a' must be a string, number or boolean"):
        prompt_templates.render_template(template, {"a": {"nested": 1}})


# Assembling streamed replies


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_streamed_answer_joins_deltas_across_chunks() -> None:
    first_call = {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": '{"ci'}}
    rest_of_call = {"index": 0, "function": {"arguments": 'ty": "Paris"}'}}
    stream = b"".join(
        [
            sse_event(
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let"}}]}
            ),
            sse_event({"choices": [{"index": 0, "delta": {"content": " me check."}}]}),
            sse_event({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
            sse_event({"choices": [{"index": 0, "delta": {"tool_calls": [first_call]}}]}),
            sse_event({"choices": [{"index": 0, "delta": {"tool_calls": [rest_of_call]}}]}),
            b"data: [DONE]\n\n",
        ]
    )
    answer = StreamedAnswer()

    # Chunks end anywhere, even inside an event.
    for start in range(0, len(stream), 7):
        answer.feed(stream[start : start + 7])

    assert answer.done is True
    assert answer.failed is False
    assert answer.message() == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }


def test_streamed_answer_notes_error_event() -> None:
    answer = StreamedAnswer()
    answer.feed(sse_event({"choices": [{"index": 0, "delta": {"content": "half"}}]}))
    answer.feed(sse_event({"error": {"message": "upstream failed", "type": "upstream_error"}}))

    assert answer.failed is True
    assert answer.done is False


def test_nul_characters_stored_as_replacement(engine: Engine) -> None:
    with engine.begin() as conn:
        team = directory.create_team(conn, "research")
        session = sessions.create_session(conn, team.organization_id, {})
        sessions.append_messages(
            conn, team.organization_id, session.id, [{"role": "user", "content": "a\x00b"}]
        )
        stored = sessions.list_messages(conn, team.organization_id, session.id)

    assert stored[0].message == {"role": "user", "content": "a\ufffdb"}


# App page


def seed_page_data(engine: Engine) -> tuple[str, str]:
    with engine.begin() as conn:
        team = directory.create_team(conn, "research")
        key = keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="ci")
        chatty = sessions.create_session(
            conn, team.organization_id, {"title": "Chatty", "model": MODEL}, api_key_id=key.id
        )
        quiet = sessions.create_session(conn, team.organization_id, {"title": "Quiet"})
        sessions.append_messages(
            conn,
            team.organization_id,
            chatty.id,
            [
                {"role": "user", "content": "**not bold** question"},
                {"role": "assistant", "content": "an answer"},
            ],
            "r1",
        )
        for request_id, cost, latency in (("r1", "0.0000012345", 100), ("r2", "0.5", 300)):
            conn.execute(
                insert(usage_events).values(
                    request_id=request_id,
                    created_at=text("now()"),
                    organization_id=team.organization_id,
                    endpoint="chat",
                    status_code=200,
                    prompt_tokens=10,
                    completion_tokens=5,
                    cost_usd=Decimal(cost),
                    latency_ms=latency,
                    session_id=chatty.id,
                )
            )
        prompt_templates.create_version(conn, team.organization_id, "hello", "Hi {{name}}")
    return chatty.id, quiet.id


@pytest.mark.usefixtures("cookies")
def test_sessions_page_totals_and_transcript(engine: Engine) -> None:
    chatty_id, quiet_id = seed_page_data(engine)
    add_user(engine, "victor", "viewer")
    at = open_page(sign_in(start_app(), "victor"), "pages/sessions.py")

    table = at.dataframe[0].value
    rows = {row["Session"]: row for row in table.to_dict("records")}
    assert rows[chatty_id]["Calls"] == 2
    assert rows[chatty_id]["Cost (USD)"] == "0.5000012345"
    assert rows[chatty_id]["Prompt tokens"] == 20
    assert rows[chatty_id]["Completion tokens"] == 10
    assert rows[chatty_id]["Mean latency (ms)"] == 200
    assert rows[quiet_id]["Calls"] == 0

    at.selectbox(key="sessions_selected").set_value(chatty_id)
    at.run()
    assert not at.exception
    assert [message.name for message in at.chat_message][:2] == ["user", "assistant"]
    assert "**not bold** question" in [element.value for element in at.text]
    # Viewers preview templates but get no editor.
    assert "Save new version" not in [button.label for button in at.button]


@pytest.mark.usefixtures("cookies")
def test_sessions_page_search(engine: Engine) -> None:
    chatty_id, _ = seed_page_data(engine)
    add_user(engine, "victor", "viewer")
    at = open_page(sign_in(start_app(), "victor"), "pages/sessions.py")

    at.text_input(key="sessions_query").input("not bold")
    at.run()

    assert at.dataframe[0].value["Session"].tolist() == [chatty_id]


@pytest.mark.usefixtures("cookies")
def test_templates_page_preview_and_new_version(engine: Engine) -> None:
    seed_page_data(engine)
    add_user(engine, "rita", "researcher")
    at = open_page(sign_in(start_app(), "rita"), "pages/sessions.py")

    at.text_area(key="templates_variables").input('{"name": "Ada"}')
    click(at, "Preview")
    assert "Hi Ada" in [element.value for element in at.text]

    at.text_area(key="templates_variables").input('{"nmae": "Ada"}')
    click(at, "Preview")
    assert any("missing variable" in message for message in values(at.error))

    at.text_area(key="template_content").input("Hello {{name}}, welcome.")
    click(at, "Save new version")
    assert "Saved template 'hello' version 2." in values(at.success)
    with engine.connect() as conn:
        stored = conn.execute(
            select(
                templates_table.c.version, templates_table.c.content, templates_table.c.created_by
            ).order_by(templates_table.c.version)
        ).all()
    assert [tuple(row) for row in stored] == [
        (1, "Hi {{name}}", None),
        (2, "Hello {{name}}, welcome.", "rita"),
    ]
