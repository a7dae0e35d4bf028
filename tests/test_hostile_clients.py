"""Oversized, malformed and slow requests over raw sockets against a real proxy.

Each case checks the status the proxy sends, and afterwards that the
process is still running, /health/live returns 200 and a normal call works.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from gateway_core import directory, keys
from tests.conftest import TEST_SECRET
from tests.support.processes import ProxyProcess
from tests.support.proxy_client import CHAT, post_json

MAX_BODY = 64 * 1024
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def proxy(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        GATEWAYZ_SECRET=TEST_SECRET,
        GATEWAYZ_MAX_BODY_BYTES=str(MAX_BODY),
        GATEWAYZ_MAX_HEADER_BYTES=str(MAX_HEAD),
        GATEWAYZ_HEADER_TIMEOUT=str(HEAD_TIMEOUT),
        GATEWAYZ_BODY_TIMEOUT=str(BODY_TIMEOUT),
    )
    process = ProxyProcess(env, tmp_path_factory.mktemp("hostile") / "proxy.log")
    yield process
    process.stop()


@pytest.fixture
def key(engine: Engine) -> str:
    with engine.begin() as conn:
        team = directory.create_team(conn, "hostile")
        return keys.create_key(conn, TEST_SECRET.encode(), team_id=team.id, name="k").secret


def connect(proxy: ProxyProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def request_head(key: str, extra: str = "", length: int | None = None) -> bytes:
    head = f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
    head += "Content-Type: application/json\r\n" + extra
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response until its body is complete or the server closes; return status and body."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator:
            lengths = [
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if lengths and len(body) >= int(lengths[0]):
                break
    assert data, "the server closed the connection without a response"
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def send_and_read(proxy: ProxyProcess, payload: bytes) -> tuple[int, bytes]:
    with connect(proxy) as sock:
        # The server may reject and close before the whole payload is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        return read_response(sock)


def assert_still_serving(proxy: ProxyProcess, key: str) -> None:
    assert proxy.process.poll() is None, "proxy process exited"
    assert httpx.get(proxy.base_url + "/health/live", timeout=5).status_code == 200
    response = post_json(proxy.base_url, CHAT_PATH, CHAT, key, timeout=10)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]


def error_code(body: bytes) -> str | None:
    return json.loads(body)["error"]["code"]


def test_body_over_limit_declared(proxy: ProxyProcess, key: str) -> None:
    body = b'{"model": "sandbox/echo", "messages": []}'.ljust(MAX_BODY + 1)
    status, _ = send_and_read(proxy, request_head(key, length=len(body)) + body)
    assert status == 413
    assert_still_serving(proxy, key)


def test_body_over_limit_chunked(proxy: ProxyProcess, key: str) -> None:
    chunk = b" " * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY // 8192 + 2))
    payload = request_head(key, "Transfer-Encoding: chunked\r\n") + chunks + b"0\r\n\r\n"
    status, _ = send_and_read(proxy, payload)
    assert status == 413
    assert_still_serving(proxy, key)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "sandbox/echo", "messages": [',
        b"\x00\x01\x02",
        b"",
        b'{"model": "sandbox/echo", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "sandbox/\xc3\x28echo", "messages": []}',
        b'"just a string"',
        b'{"model": "sandbox/echo", "messages": [{"role": {}, "content": null}]}',
    ],
    ids=[
        "truncated",
        "binary",
        "empty",
        "invalid-utf8-content",
        "invalid-utf8-model",
        "string",
        "role-object",
    ],
)
def test_malformed_body_rejected(proxy: ProxyProcess, key: str, body: bytes) -> None:
    status, response = send_and_read(proxy, request_head(key, length=len(body)) + body)
    assert status == 400
    assert json.loads(response)["error"]["type"] == "invalid_request_error"
    assert_still_serving(proxy, key)


def test_huge_header_value(proxy: ProxyProcess, key: str) -> None:
    status, body = send_and_read(proxy, request_head(key, "X-Big: " + "a" * 1_000_000 + "\r\n", 2))
    assert status == 431
    assert error_code(body) == "headers_too_large"
    assert_still_serving(proxy, key)


def test_many_headers(proxy: ProxyProcess, key: str) -> None:
    extra = "".join(f"X-H{i}: v\r\n" for i in range(20_000))
    status, _ = send_and_read(proxy, request_head(key, extra, 2))
    assert status == 431
    assert_still_serving(proxy, key)


def test_invalid_request_line(proxy: ProxyProcess, key: str) -> None:
    status, _ = send_and_read(proxy, b"\x16\x03\x01 not http at all\r\n\r\n")
    assert status == 400
    assert_still_serving(proxy, key)


def test_slow_loris_headers_closed(proxy: ProxyProcess, key: str) -> None:
    """A client trickling its headers gets 408 within the head timeout."""
    sockets = [connect(proxy) for _ in range(20)]
    started = time.monotonic()

    def trickle(sock: socket.socket) -> None:
        try:
            for byte in request_head(key, length=2):
                sock.send(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            return

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in sockets]
    for thread in threads:
        thread.start()
    # Other clients are served while the trickling connections are open.
    assert_still_serving(proxy, key)
    responses = []
    for sock in sockets:
        with sock:
            responses.append(read_response(sock))
    closed_after = time.monotonic() - started
    assert [status for status, _ in responses] == [408] * len(sockets)
    assert error_code(responses[0][1]) == "request_timeout"
    assert closed_after < HEAD_TIMEOUT + 3
    assert_still_serving(proxy, key)


def test_idle_connection_closed(proxy: ProxyProcess, key: str) -> None:
    with connect(proxy) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 3
    assert_still_serving(proxy, key)


def test_stalled_body_gets_408(proxy: ProxyProcess, key: str) -> None:
    with connect(proxy) as sock:
        sock.sendall(request_head(key, length=100) + b'{"model": ')
        started = time.monotonic()
        status, body = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408
    assert error_code(body) == "request_timeout"
    assert BODY_TIMEOUT - 0.2 < elapsed < BODY_TIMEOUT + 3
    assert_still_serving(proxy, key)


def test_trickled_body_gets_408(proxy: ProxyProcess, key: str) -> None:
    """The body timeout bounds the whole body, not the gap between bytes."""
    body = json.dumps(CHAT).encode()
    with connect(proxy) as sock:
        sock.sendall(request_head(key, length=len(body)))
        started = time.monotonic()
        try:
            for byte in body:
                sock.send(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            pass
        status, _ = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408
    assert elapsed < BODY_TIMEOUT + 3
    assert_still_serving(proxy, key)


def test_keep_alive_requests_still_work(proxy: ProxyProcess, key: str) -> None:
    """The head timer restarts per request, so a reused connection is not cut."""
    with httpx.Client(base_url=proxy.base_url, timeout=10) as client:
        for _ in range(4):
            response = client.post(CHAT_PATH, json=CHAT, headers={"authorization": f"Bearer {key}"})
            assert response.status_code == 200
            time.sleep(HEAD_TIMEOUT / 2)
