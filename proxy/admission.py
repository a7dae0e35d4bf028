"""The most a call can cost, reserved before it is forwarded.

The estimate is an upper bound for byte-level BPE tokenizers (those of
OpenAI, Anthropic and Llama models), where a token is at least one byte:
the request body's JSON size bounds its input tokens, and the requested
output limit (or the model's) bounds its output tokens.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from gateway_core.catalog import ModelEntry, ModelPrices
from gateway_core.pricing import TokenUsage, compute_cost

# Output limit assumed when neither the request nor the catalog gives one.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# NOTE: images are billed by the provider from pixels, which the request
# does not show when it sends a URL; this per-image bound is an estimate.
TOKENS_PER_IMAGE_PART = 6000
IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def output_limit(body: dict[str, Any], entry: ModelEntry | None) -> int:
    for field in _OUTPUT_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if entry is not None and entry.max_output_tokens > 0:
        return entry.max_output_tokens
    return DEFAULT_MAX_OUTPUT_TOKENS


def image_parts(body: dict[str, Any]) -> int:
    count = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(
                1
                for part in content
                if isinstance(part, dict)
                and part.get("type") in ("image_url", "image", "input_image")
            )
    return count


def max_cost(
    prices: ModelPrices | None, entry: ModelEntry | None, body: dict[str, Any], raw_size: int
) -> Decimal:
    """Return the highest cost the call can reach at these prices."""
    if prices is None:
        return Decimal(0)
    prompt = raw_size + TOKENS_PER_IMAGE_PART * image_parts(body)
    completion = output_limit(body, entry)
    if body.get("n") and isinstance(body["n"], int) and body["n"] > 1:
        completion *= body["n"]
    # Prices are never negative, so the highest cost bills every prompt
    # token at the higher of the input and cache-write prices, and every
    # output token at the higher of the output and reasoning prices.
    tier = prices.for_prompt_tokens(prompt)
    output_price = tier.output or Decimal(0)
    write_price = tier.cache_write if tier.cache_write is not None else tier.input
    reasoning_price = tier.reasoning_output if tier.reasoning_output is not None else output_price
    usage = TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cache_write_tokens=prompt if write_price > tier.input else 0,
        reasoning_tokens=completion if reasoning_price > output_price else 0,
    )
    return compute_cost(prices, usage)
