"""Token usage parsing and request cost, shared by streaming and non-streaming paths.

Each provider reports usage in its own shape. The ``parse_*_usage`` functions
turn those shapes into one ``TokenUsage`` in which ``prompt_tokens`` is the
whole input (cache reads and cache writes included) and ``completion_tokens``
is the whole output (reasoning included). The parsers never raise on what a
provider sends: a missing, null, negative or non-integer count is read as 0.

``compute_cost`` prices a ``TokenUsage`` in exact ``Decimal`` arithmetic and
rounds once, half to even, to the 10 decimal places of the ledger's
NUMERIC(20,10) columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from gateway_core.catalog import ModelPrices

COST_QUANTUM = Decimal("1E-10")
COST_HEADER = "x-gatewayz-cost-usd"
# Enough digits for a count of 10**15 tokens times a price with 10 decimals.
_PRECISION = 60


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one request.

    ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of
    ``prompt_tokens``, and ``reasoning_tokens`` is part of ``completion_tokens``.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.cached_tokens + self.cache_write_tokens > self.prompt_tokens:
            raise ValueError(
                f"cached_tokens ({self.cached_tokens}) plus cache_write_tokens "
                f"({self.cache_write_tokens}) exceed prompt_tokens ({self.prompt_tokens})"
            )
        if self.reasoning_tokens > self.completion_tokens:
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceed "
                f"completion_tokens ({self.completion_tokens})"
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse_openai_usage(usage: Mapping[str, Any] | None) -> TokenUsage:
    """Parse an OpenAI usage object from chat, completions, embeddings or responses.

    Chat and completions report ``prompt_tokens`` and ``completion_tokens``
    with ``*_tokens_details``. The Responses API reports ``input_tokens`` and
    ``output_tokens`` with ``input_tokens_details`` and ``output_tokens_details``.
    OpenAI counts cache reads (``cached_tokens``) and, from the GPT-5.6 family
    on, cache writes (``cache_write_tokens``) inside the prompt total.
    """
    if not isinstance(usage, Mapping):
        return TokenUsage()
    input_details = _mapping(_first(usage, "prompt_tokens_details", "input_tokens_details"))
    output_details = _mapping(_first(usage, "completion_tokens_details", "output_tokens_details"))
    return _normalised(
        prompt=_count(_first(usage, "prompt_tokens", "input_tokens")),
        completion=_count(_first(usage, "completion_tokens", "output_tokens")),
        cached=_count(input_details.get("cached_tokens")),
        cache_write=_count(input_details.get("cache_write_tokens")),
        reasoning=_count(output_details.get("reasoning_tokens")),
    )


def parse_anthropic_usage(usage: Mapping[str, Any] | None) -> TokenUsage:
    """Parse an Anthropic Messages usage object.

    Anthropic's ``input_tokens`` excludes ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``, so the prompt total is the sum of the
    three. Thinking tokens are billed as output and not reported apart, so
    ``reasoning_tokens`` is always 0.
    """
    if not isinstance(usage, Mapping):
        return TokenUsage()
    uncached = _count(usage.get("input_tokens"))
    cached = _count(usage.get("cache_read_input_tokens"))
    # NOTE: 1-hour cache writes cost 2x input against 1.25x for 5-minute
    # writes, but both arrive in cache_creation_input_tokens and are priced
    # here at the catalog's single (5-minute) cache_write price.
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    return _normalised(
        prompt=uncached + cached + cache_write,
        completion=_count(usage.get("output_tokens")),
        cached=cached,
        cache_write=cache_write,
        reasoning=0,
    )


def parse_gemini_usage(usage_metadata: Mapping[str, Any] | None) -> TokenUsage:
    """Parse a Gemini ``usageMetadata`` object (camelCase or snake_case keys).

    ``promptTokenCount`` already includes ``cachedContentTokenCount``. Tool-use
    prompt tokens are counted separately and billed as input, so they are added
    to the prompt. ``candidatesTokenCount`` excludes ``thoughtsTokenCount`` and
    Google bills thoughts as output, so the completion total is their sum.
    """
    if not isinstance(usage_metadata, Mapping):
        return TokenUsage()

    def read(camel: str, snake: str) -> int:
        return _count(_first(usage_metadata, camel, snake))

    thoughts = read("thoughtsTokenCount", "thoughts_token_count")
    return _normalised(
        prompt=read("promptTokenCount", "prompt_token_count")
        + read("toolUsePromptTokenCount", "tool_use_prompt_token_count"),
        completion=read("candidatesTokenCount", "candidates_token_count") + thoughts,
        cached=read("cachedContentTokenCount", "cached_content_token_count"),
        cache_write=0,
        reasoning=thoughts,
    )


def compute_cost(prices: ModelPrices, usage: TokenUsage) -> Decimal:
    """Return the USD cost of ``usage`` at ``prices``, rounded to 10 decimal places.

    Uncached input is billed at ``input``, cache reads at ``cached_input`` and
    cache writes at ``cache_write`` (both falling back to ``input``), visible
    output at ``output`` and reasoning at ``reasoning_output`` (falling back to
    ``output``). A long prompt selects the model's matching price tier first.
    """
    tier = prices.for_prompt_tokens(usage.prompt_tokens)
    output_price = tier.output if tier.output is not None else Decimal(0)
    uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    visible_output = usage.completion_tokens - usage.reasoning_tokens
    with localcontext() as context:
        context.prec = _PRECISION
        per_million = (
            uncached * tier.input
            + usage.cached_tokens * _or(tier.cached_input, tier.input)
            + usage.cache_write_tokens * _or(tier.cache_write, tier.input)
            + visible_output * output_price
            + usage.reasoning_tokens * _or(tier.reasoning_output, output_price)
        )
        return per_million.scaleb(-6).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def format_usd(amount: Decimal) -> str:
    """Format a USD amount as a plain decimal string with 10 places, e.g. "0.0000150000"."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a Decimal, got {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"amount must be finite, got {amount}")
    with localcontext() as context:
        context.prec = _PRECISION
        rounded = amount.quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)
    if rounded.is_zero():
        rounded = abs(rounded)
    return format(rounded, "f")


def _normalised(
    *, prompt: int, completion: int, cached: int, cache_write: int, reasoning: int
) -> TokenUsage:
    # Provider totals that contradict their own parts are clamped so that no
    # part ever exceeds its total, which keeps every cost non-negative.
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    reasoning = min(reasoning, completion)
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def _first(usage: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = usage.get(key)
        if value is not None:
            return value
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    """Read a token count, treating anything but a non-negative whole number as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return max(int(value), 0)
    return 0


def _or(price: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if price is None else price
