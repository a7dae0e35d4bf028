"""Token estimates for when a provider reports no usage.

The estimate is one token per 4 characters, rounded up, the rule of thumb
OpenAI documents for English text. It is used only for partial streams cut
short before the provider sent its usage, and is marked partial there.
"""

from __future__ import annotations

from typing import Any


def estimate_tokens(characters: int) -> int:
    return -(-characters // 4)


def prompt_characters(messages: Any) -> int:
    total = 0
    if not isinstance(messages, list):
        return 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total
