"""Usage parsing and cost computation, checked against hand-computed Decimals."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway_core.catalog import ModelPrices, PriceTier, load_catalog
from gateway_core.pricing import (
    TokenUsage,
    compute_cost,
    format_usd,
    parse_anthropic_usage,
    parse_gemini_usage,
    parse_openai_usage,
)

# Prices per million tokens, written out here so a catalog update cannot
# change what these tests expect.
GPT_4O = ModelPrices(input=Decimal("2.50"), cached_input=Decimal("1.25"), output=Decimal("10.00"))
GPT_SOL = ModelPrices(
    input=Decimal("2.00"),
    cached_input=Decimal("0.10"),
    cache_write=Decimal("2.50"),
    output=Decimal("10.00"),
    tiers=(
        PriceTier(
            above_prompt_tokens=272_000,
            prices=ModelPrices(
                input=Decimal("4.00"),
                cached_input=Decimal("0.20"),
                cache_write=Decimal("5.00"),
                output=Decimal("15.00"),
            ),
        ),
    ),
)
SONNET = ModelPrices(
    input=Decimal("2.00"),
    cached_input=Decimal("0.10"),
    cache_write=Decimal("2.50"),
    output=Decimal("10.00"),
)
HAIKU_TIERED = ModelPrices(
    input=Decimal("0.10"),
    cached_input=Decimal("0.01"),
    cache_write=Decimal("0.125"),
    output=Decimal("0.50"),
    tiers=(
        PriceTier(
            above_prompt_tokens=100_000,
            prices=ModelPrices(
                input=Decimal("0.50"),
                cached_input=Decimal("0.05"),
                cache_write=Decimal("0.625"),
                output=Decimal("2.50"),
            ),
        ),
    ),
)
GEMINI_PRO = ModelPrices(
    input=Decimal("2.00"), cached_input=Decimal("0.20"), output=Decimal("12.00")
)


# -- compute_cost -------------------------------------------------------------


def test_cost_uncached_input_only() -> None:
    # 1,234 tokens x $2.50 / 1M = $0.003085
    usage = TokenUsage(prompt_tokens=1_234)
    assert compute_cost(GPT_4O, usage) == Decimal("0.0030850000")


def test_cost_cached_write_and_reasoning() -> None:
    usage = TokenUsage(
        prompt_tokens=10_000,
        cached_tokens=6_000,
        cache_write_tokens=1_000,
        completion_tokens=2_500,
        reasoning_tokens=2_000,
    )
    # uncached  3,000 x 2.00 =  6,000
    # cached    6,000 x 0.10 =    600
    # written   1,000 x 2.50 =  2,500
    # visible     500 x 10   =  5,000
    # reasoning 2,000 x 10   = 20,000  (no reasoning price: output price)
    # total 34,100 / 1M = 0.0341
    assert compute_cost(GPT_SOL, usage) == Decimal("0.0341000000")


def test_cost_separate_reasoning_price() -> None:
    prices = ModelPrices(
        input=Decimal("1.00"), output=Decimal("4.00"), reasoning_output=Decimal("8.00")
    )
    usage = TokenUsage(prompt_tokens=100, completion_tokens=1_000, reasoning_tokens=600)
    # 100 x 1 + 400 x 4 + 600 x 8 = 6,500 -> 0.0065
    assert compute_cost(prices, usage) == Decimal("0.0065000000")


def test_cost_cache_prices_fall_back_to_input() -> None:
    prices = ModelPrices(input=Decimal("3.00"), output=Decimal("15.00"))
    usage = TokenUsage(
        prompt_tokens=2_000, cached_tokens=500, cache_write_tokens=500, completion_tokens=100
    )
    # all 2,000 input tokens at 3.00 = 6,000; 100 x 15 = 1,500 -> 0.0075
    assert compute_cost(prices, usage) == Decimal("0.0075000000")


def test_cost_gpt4o_mixed_cached() -> None:
    usage = TokenUsage(prompt_tokens=1_234, cached_tokens=1_024, completion_tokens=56)
    # 210 x 2.50 = 525; 1,024 x 1.25 = 1,280; 56 x 10 = 560; sum 2,365
    assert compute_cost(GPT_4O, usage) == Decimal("0.0023650000")


def test_cost_rounds_half_even() -> None:
    prices = ModelPrices(input=Decimal("0.00005"), output=Decimal("0"))
    # 1 token -> 0.00000000005 exactly half a quantum: rounds to even 0
    assert compute_cost(prices, TokenUsage(prompt_tokens=1)) == Decimal("0E-10")
    # 3 tokens -> 0.00000000015: rounds to even 0.0000000002
    assert compute_cost(prices, TokenUsage(prompt_tokens=3)) == Decimal("2E-10")


def test_cost_large_counts_exact() -> None:
    prices = ModelPrices(input=Decimal("0.075"), output=Decimal("0.30"))
    usage = TokenUsage(prompt_tokens=123_456_789)
    # 123,456,789 x 0.075 = 9,259,259.175 -> 9.259259175
    assert compute_cost(prices, usage) == Decimal("9.2592591750")


def test_cost_has_ten_decimal_places() -> None:
    cost = compute_cost(GPT_4O, TokenUsage(prompt_tokens=1))
    assert cost.as_tuple().exponent == -10
    assert cost == Decimal("0.0000025000")


def test_cost_zero_usage_is_zero() -> None:
    assert compute_cost(GPT_SOL, TokenUsage()) == Decimal("0E-10")


def test_cost_long_context_tier() -> None:
    usage = TokenUsage(prompt_tokens=300_000, completion_tokens=1_000)
    # whole request at the tier: 300,000 x 4 = 1,200,000; 1,000 x 15 = 15,000
    assert compute_cost(GPT_SOL, usage) == Decimal("1.2150000000")


def test_cost_tier_threshold_is_exclusive() -> None:
    usage = TokenUsage(prompt_tokens=272_000, completion_tokens=1_000)
    # 272,000 x 2 = 544,000; 1,000 x 10 = 10,000 -> 0.554
    assert compute_cost(GPT_SOL, usage) == Decimal("0.5540000000")


def test_cost_tier_counts_cache_reads() -> None:
    usage = TokenUsage(prompt_tokens=110_000, cached_tokens=70_000, completion_tokens=1_000)
    # over 100K with cache reads: 40,000 x 0.50 = 20,000; 70,000 x 0.05 = 3,500;
    # 1,000 x 2.50 = 2,500; total 26,000
    assert compute_cost(HAIKU_TIERED, usage) == Decimal("0.0260000000")


def test_cost_embedding_without_output_price() -> None:
    prices = ModelPrices(input=Decimal("0.02"))
    usage = parse_openai_usage({"prompt_tokens": 8_000, "total_tokens": 8_000})
    # 8,000 x 0.02 = 160 -> 0.00016
    assert compute_cost(prices, usage) == Decimal("0.0001600000")


def test_cost_every_catalog_model() -> None:
    usage = TokenUsage(
        prompt_tokens=400_000,
        cached_tokens=100_000,
        cache_write_tokens=10_000,
        completion_tokens=5_000,
        reasoning_tokens=1_000,
    )
    for entry in load_catalog():
        cost = compute_cost(entry.prices, usage)
        assert cost >= 0, entry.id
        assert cost.as_tuple().exponent == -10, entry.id


# -- TokenUsage ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt_tokens": -1},
        {"completion_tokens": True},
        {"prompt_tokens": 5, "cached_tokens": 6},
        {"prompt_tokens": 5, "cached_tokens": 3, "cache_write_tokens": 3},
        {"completion_tokens": 1, "reasoning_tokens": 2},
    ],
)
def test_token_usage_rejects_inconsistent(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TokenUsage(**fields)  # type: ignore[arg-type]


# -- parse_openai_usage -------------------------------------------------------


def test_openai_chat_usage() -> None:
    usage = parse_openai_usage(
        {
            "prompt_tokens": 1_200,
            "completion_tokens": 300,
            "total_tokens": 1_500,
            "prompt_tokens_details": {"cached_tokens": 1_024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=1_200, completion_tokens=300, cached_tokens=1_024, reasoning_tokens=128
    )


def test_openai_responses_usage() -> None:
    usage = parse_openai_usage(
        {
            "input_tokens": 5_000,
            "input_tokens_details": {"cached_tokens": 4_096, "cache_write_tokens": 512},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 700},
            "total_tokens": 5_900,
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=5_000,
        completion_tokens=900,
        cached_tokens=4_096,
        cache_write_tokens=512,
        reasoning_tokens=700,
    )
    # uncached 392 x 2.00 = 784; cached 4,096 x 0.10 = 409.6; written 512 x 2.50 = 1,280;
    # visible 200 x 10 = 2,000; reasoning 700 x 10 = 7,000; total 11,473.6
    assert compute_cost(GPT_SOL, usage) == Decimal("0.0114736000")


def test_openai_embeddings_usage() -> None:
    usage = parse_openai_usage({"prompt_tokens": 8, "total_tokens": 8})
    assert usage == TokenUsage(prompt_tokens=8)


@pytest.mark.parametrize("usage", [None, {}, "junk", 42, ["prompt_tokens", 5]])
def test_openai_missing_usage_is_zero(usage: object) -> None:
    assert parse_openai_usage(usage) == TokenUsage()  # type: ignore[arg-type]


def test_openai_junk_counts_are_zero() -> None:
    usage = parse_openai_usage(
        {
            "prompt_tokens": "12",
            "completion_tokens": -5,
            "prompt_tokens_details": "oops",
            "completion_tokens_details": {"reasoning_tokens": None},
        }
    )
    assert usage == TokenUsage()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), (7.0, 7), (7.5, 0), (float("nan"), 0), (float("inf"), 0), (True, 0), ([7], 0)],
)
def test_openai_count_values(value: object, expected: int) -> None:
    assert parse_openai_usage({"prompt_tokens": value}).prompt_tokens == expected


def test_openai_cached_clamped_to_prompt() -> None:
    usage = parse_openai_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=10, completion_tokens=3, cached_tokens=10, reasoning_tokens=3
    )


def test_openai_prompt_tokens_preferred() -> None:
    usage = parse_openai_usage({"prompt_tokens": None, "input_tokens": 40, "output_tokens": 2})
    assert usage == TokenUsage(prompt_tokens=40, completion_tokens=2)


# -- parse_anthropic_usage ----------------------------------------------------


def test_anthropic_cache_normalisation() -> None:
    usage = parse_anthropic_usage(
        {
            "input_tokens": 50,
            "cache_read_input_tokens": 10_000,
            "cache_creation_input_tokens": 2_000,
            "output_tokens": 400,
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=12_050,
        completion_tokens=400,
        cached_tokens=10_000,
        cache_write_tokens=2_000,
    )
    # 50 x 2.00 = 100; 10,000 x 0.10 = 1,000; 2,000 x 2.50 = 5,000; 400 x 10 = 4,000
    assert compute_cost(SONNET, usage) == Decimal("0.0101000000")


def test_anthropic_stream_start_nulls() -> None:
    usage = parse_anthropic_usage(
        {
            "input_tokens": 25,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
            "output_tokens": 1,
        }
    )
    assert usage == TokenUsage(prompt_tokens=25, completion_tokens=1)


def test_anthropic_junk_is_zero() -> None:
    assert parse_anthropic_usage(None) == TokenUsage()
    usage = parse_anthropic_usage(
        {"input_tokens": "many", "cache_read_input_tokens": -3, "output_tokens": {"n": 1}}
    )
    assert usage == TokenUsage()


# -- parse_gemini_usage -------------------------------------------------------


def test_gemini_cached_and_thoughts() -> None:
    usage = parse_gemini_usage(
        {
            "promptTokenCount": 2_000,
            "candidatesTokenCount": 300,
            "cachedContentTokenCount": 1_500,
            "thoughtsTokenCount": 700,
            "totalTokenCount": 3_000,
        }
    )
    assert usage == TokenUsage(
        prompt_tokens=2_000, completion_tokens=1_000, cached_tokens=1_500, reasoning_tokens=700
    )
    # 500 x 2.00 = 1,000; 1,500 x 0.20 = 300; 1,000 x 12 = 12,000; total 13,300
    assert compute_cost(GEMINI_PRO, usage) == Decimal("0.0133000000")


def test_gemini_snake_case_and_tool_use() -> None:
    usage = parse_gemini_usage(
        {
            "prompt_token_count": 100,
            "tool_use_prompt_token_count": 50,
            "candidates_token_count": 20,
        }
    )
    assert usage == TokenUsage(prompt_tokens=150, completion_tokens=20)


def test_gemini_junk_is_zero() -> None:
    assert parse_gemini_usage(None) == TokenUsage()
    usage = parse_gemini_usage({"promptTokenCount": "x", "thoughtsTokenCount": {}})
    assert usage == TokenUsage()


# -- format_usd ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (Decimal("0.000015"), "0.0000150000"),
        (Decimal("1E-7"), "0.0000001000"),
        (Decimal("0"), "0.0000000000"),
        (Decimal("-0"), "0.0000000000"),
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("12.5"), "12.5000000000"),
        (Decimal("1E+3"), "1000.0000000000"),
        (Decimal("0.00000000005"), "0.0000000000"),
        (Decimal("0.00000000015"), "0.0000000002"),
    ],
)
def test_format_usd(amount: Decimal, expected: str) -> None:
    assert format_usd(amount) == expected


def test_format_usd_of_cost() -> None:
    cost = compute_cost(GPT_4O, TokenUsage(prompt_tokens=6))
    assert format_usd(cost) == "0.0000150000"


def test_format_usd_rejects_float() -> None:
    with pytest.raises(TypeError):
        format_usd(0.5)  # type: ignore[arg-type]


def test_format_usd_rejects_nan() -> None:
    with pytest.raises(ValueError):
        format_usd(Decimal("NaN"))
