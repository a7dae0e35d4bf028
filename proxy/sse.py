"""Server-sent events split on event boundaries.

Network reads may end anywhere: inside a JSON payload, inside a multi-byte
UTF-8 character, or between the CR and LF of a line ending. The parser
buffers bytes and only hands out complete events (terminated by a blank
line), so what it yields can be forwarded or decoded safely.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    # The event exactly as received, including its terminating blank line.
    raw: bytes
    event: str | None
    data: bytes | None

    @property
    def is_comment(self) -> bool:
        return self.event is None and self.data is None


class SSEParser:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> Iterator[ServerSentEvent]:
        self._buffer += chunk
        while True:
            end, separator = _find_boundary(self._buffer)
            if end < 0:
                return
            raw = bytes(self._buffer[: end + separator])
            del self._buffer[: end + separator]
            yield _parse_event(raw)

    def flush(self) -> ServerSentEvent | None:
        """Return a final event the upstream did not terminate, if any."""
        if not self._buffer.strip():
            self._buffer.clear()
            return None
        raw = bytes(self._buffer) + b"\n\n"
        self._buffer.clear()
        return _parse_event(raw)


def _find_boundary(buffer: bytearray) -> tuple[int, int]:
    best = (-1, 0)
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        index = buffer.find(separator)
        if index >= 0 and (best[0] < 0 or index < best[0]):
            best = (index, len(separator))
    return best


def _parse_event(raw: bytes) -> ServerSentEvent:
    event: str | None = None
    data_lines: list[bytes] = []
    for line in raw.splitlines():
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    data = b"\n".join(data_lines) if data_lines else None
    return ServerSentEvent(raw, event, data)
