"""SSE parsing on event boundaries, whatever the network splits."""

from __future__ import annotations

import json

from proxy.sse import SSEParser

RECORDED = (
    b": keep-alive comment\n\n"
    b'data: {"id":"c1","choices":[{"delta":{"content":"caf\xc3\xa9 \xe2\x82\xac"}}]}\n\n'
    b"event: message\r\n"
    b'data: {"id":"c1","choices":[{"delta":{"content":" \xf0\x9f\x98\x80"}}]}\r\n\r\n'
    b"data: line one\n"
    b"data: line two\n\n"
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def parse_all(chunks: list[bytes]) -> list[tuple[bytes, str | None, bytes | None]]:
    parser = SSEParser()
    events = []
    for chunk in chunks:
        events += [(event.raw, event.event, event.data) for event in parser.feed(chunk)]
    last = parser.flush()
    if last is not None:
        events.append((last.raw, last.event, last.data))
    return events


def test_whole_stream_events() -> None:
    events = parse_all([RECORDED])
    assert len(events) == 6
    assert events[0][2] is None
    assert events[2][1] == "message"
    assert json.loads(events[2][2])["choices"][0]["delta"]["content"] == " 😀"
    assert events[3][2] == b"line one\nline two"
    assert events[5][2] == b"[DONE]"
    assert b"".join(raw for raw, _, _ in events) == RECORDED


def test_split_at_every_offset() -> None:
    expected = parse_all([RECORDED])
    for offset in range(1, len(RECORDED)):
        split = parse_all([RECORDED[:offset], RECORDED[offset:]])
        assert split == expected, offset


def test_split_into_single_bytes() -> None:
    chunks = [RECORDED[i : i + 1] for i in range(len(RECORDED))]
    assert parse_all(chunks) == parse_all([RECORDED])


def test_unterminated_last_event_flushed() -> None:
    events = parse_all([b'data: {"a": 1}'])
    assert events == [(b'data: {"a": 1}\n\n', None, b'{"a": 1}')]
