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
        start = 0
        try:
            while True:
                end, separator = _find_boundary_from(self._buffer, start)
                if end < 0:
                    return
                raw = bytes(self._buffer[start : end + separator])
                start = end + separator
                yield _parse_event(raw)
        finally:
            # One deletion per read, not one per event.
            del self._buffer[:start]

    def flush(self) -> ServerSentEvent | None:
        """Return a final event the upstream did not terminate, if any."""
        if not self._buffer.strip():
            self._buffer.clear()
            return None
        raw = bytes(self._buffer) + b"\n\n"
        self._buffer.clear()
        return _parse_event(raw)


def _find_boundary_from(buffer: bytearray, start: int) -> tuple[int, int]:
    """Return the index and length of the first event separator at or after `start`.

    Returns (-1, 0) when there is none.

    Each later search stops where an earlier one matched, so finding one
    event costs time proportional to that event, not to the whole buffer.
    """
    best = (-1, 0)
    end = len(buffer)
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        index = buffer.find(separator, start, end)
        if index >= 0 and (best[0] < 0 or index < best[0]):
            best = (index, len(separator))
            # A separator that starts earlier ends at most 3 bytes later.
            end = index + 3
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
