"""Fit a chat conversation into a model's context window by dropping its oldest turns.

Token counts are an estimate, not a tokenizer's count. A message counts the
UTF-8 size of its text (content, name, tool call names and arguments)
divided by 4 and rounded up, plus MESSAGE_OVERHEAD_TOKENS for its role and
delimiters. A conversation adds REPLY_PRIMING_TOKENS for the start of the
assistant's reply. Four bytes per token is the usual rule of thumb for
English text with byte-level BPE tokenizers.

NOTE: for text with few ASCII characters (Chinese, Japanese, code full of
symbols) real tokenizers can produce more tokens than the estimate, so a
conversation trimmed to fit can still exceed the provider's window, and the
provider then rejects the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
# NOTE: providers count an image by its pixel size, which a URL does not
# show, so every image part counts this flat estimate.
IMAGE_PART_TOKENS = 1000
IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
# Leading messages with these roles form the system prompt, which is never dropped.
SYSTEM_ROLES = frozenset({"system", "developer"})

TokenCounter = Callable[[Mapping[str, Any]], int]


@dataclass(frozen=True)
class TrimResult:
    """A conversation cut to fit a token budget."""

    messages: list[dict[str, Any]]
    # Messages removed from the start of the conversation, after the system prompt.
    dropped: int
    estimated_tokens: int
    # False when even the system prompt and the newest turn exceed the budget.
    # They are kept anyway.
    fits: bool


def _utf8_size(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else 0


def estimate_message_tokens(message: Mapping[str, Any]) -> int:
    """Return the estimated prompt tokens of one chat message."""
    text_bytes = _utf8_size(message.get("name")) + _utf8_size(message.get("tool_call_id"))
    images = 0
    content = message.get("content")
    if isinstance(content, str):
        text_bytes += _utf8_size(content)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in IMAGE_PART_TYPES:
                images += 1
            elif isinstance(part.get("text"), str):
                text_bytes += _utf8_size(part["text"])
            else:
                # Audio, files and unknown parts count their JSON size.
                text_bytes += len(orjson.dumps(part))
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            text_bytes += _utf8_size(function.get("name")) + _utf8_size(function.get("arguments"))
    return -(-text_bytes // 4) + images * IMAGE_PART_TOKENS + MESSAGE_OVERHEAD_TOKENS


def estimate_conversation_tokens(
    messages: Sequence[Mapping[str, Any]], count: TokenCounter = estimate_message_tokens
) -> int:
    return sum(count(message) for message in messages) + REPLY_PRIMING_TOKENS


def prompt_budget(context_window: int, output_tokens: int) -> int:
    """Return the prompt tokens that leave room for `output_tokens` in the window."""
    return context_window - output_tokens


def system_prompt_length(messages: Sequence[Mapping[str, Any]]) -> int:
    """Return how many leading messages are system or developer messages."""
    length = 0
    while length < len(messages) and messages[length].get("role") in SYSTEM_ROLES:
        length += 1
    return length


def turn_starts(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Return the indexes where the conversation may be cut, oldest first.

    A cut keeps messages[index:]. Index 0 keeps everything. Every other cut
    is at a user message, so whole turns go, and only where no tool result
    at or after it belongs to a tool call made before it.
    """
    call_position: dict[str, int] = {}
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                call_position[call["id"]] = index
    # A cut at index i orphans a result at j >= i whose call is at c < i,
    # so every index in (c, j] is closed to cuts.
    blocked_until = [-1] * (len(messages) + 1)
    for index, message in enumerate(messages):
        call_index = call_position.get(message.get("tool_call_id") or "")
        if message.get("role") == "tool" and call_index is not None and call_index < index:
            blocked_until[call_index + 1] = max(blocked_until[call_index + 1], index)
    starts = [0]
    reach = -1
    for index in range(1, len(messages)):
        reach = max(reach, blocked_until[index])
        if messages[index].get("role") == "user" and reach < index:
            starts.append(index)
    return starts


def trim_to_window(
    messages: Sequence[Mapping[str, Any]],
    max_prompt_tokens: int,
    count: TokenCounter = estimate_message_tokens,
) -> TrimResult:
    """Drop the oldest whole turns until the conversation fits `max_prompt_tokens`.

    The system prompt (the leading system and developer messages) and the
    newest turn are always kept. A turn starts at a user message and runs
    to the next one, so an assistant tool call and its tool results stay
    together.
    """
    prefix_length = system_prompt_length(messages)
    prefix = [dict(message) for message in messages[:prefix_length]]
    rest = list(messages[prefix_length:])
    fixed = sum(count(message) for message in prefix) + REPLY_PRIMING_TOKENS
    # suffix[i] is the token count of rest[i:].
    suffix = [0] * (len(rest) + 1)
    for index in range(len(rest) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + count(rest[index])
    starts = turn_starts(rest)
    cut = next((start for start in starts if fixed + suffix[start] <= max_prompt_tokens), None)
    fits = cut is not None
    if cut is None:
        cut = starts[-1]
    trimmed = prefix + [dict(message) for message in rest[cut:]]
    return TrimResult(trimmed, cut, fixed + suffix[cut], fits)
