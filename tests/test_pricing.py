"""Prices as bills are computed: context tiers, cache-write lifetimes, batch and service tiers.

Each worked example takes the numbers of the provider's published price page, checks the bundled
catalog carries them, and prices one request exactly in Decimal.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from tokenledger import catalog
from tokenledger.catalog import cost
from tokenledger.errors import InvalidInput
from tokenledger.types import Price, PriceRates, PriceTier

M = Decimal(1_000_000)


def per_million(rate: Decimal | None) -> Decimal | None:
    return None if rate is None else rate * M


# --- context tiers: the whole request at the tier its input reaches --------------------------------


def test_anthropic_long_context_prices_the_whole_request_above_200k() -> None:
    # https://docs.claude.com/en/docs/about-claude/pricing#long-context-pricing: Claude Sonnet 4 with
    # the 1M context window, input <= 200K: $3 / $15 per MTok; input > 200K: $6 / $22.50 per MTok,
    # for every token of the request.
    price = catalog.resolve("claude-sonnet-4-20250514").price
    assert (per_million(price.input), per_million(price.output)) == (3, 15)
    tier = price.tiers[0]
    assert tier.above_input_tokens == 200_000
    assert (per_million(tier.input), per_million(tier.output)) == (6, Decimal("22.5"))

    below = cost(price, input_tokens=200_000, output_tokens=2_000)
    assert below.cost_usd == Decimal("0.63")  # 200,000 x $3 + 2,000 x $15 (200K is not above 200K)
    assert below.tier_above_input_tokens is None
    above = cost(price, input_tokens=250_000, output_tokens=2_000)
    assert above.cost_usd == Decimal("1.545")  # 250,000 x $6 + 2,000 x $22.50
    assert above.tier_above_input_tokens == 200_000


def test_cache_reads_and_writes_count_toward_the_threshold() -> None:
    # The same page: the 200K threshold counts input_tokens + cache_creation + cache_read.
    price = catalog.resolve("claude-sonnet-4-20250514").price
    result = cost(
        price,
        input_tokens=50_000,
        output_tokens=1_000,
        cache_read_input_tokens=150_000,
        cache_creation_input_tokens=1,
    )
    assert result.tier_above_input_tokens == 200_000
    # 50,000 x $6 + 150,000 x $0.60 (long-context cache hit) + 1 x $7.50 + 1,000 x $22.50
    assert result.cost_usd == Decimal("0.4125075")


def test_gemini_2_5_pro_prices_prompts_above_200k() -> None:
    # https://ai.google.dev/gemini-api/docs/pricing, Gemini 2.5 Pro: input $1.25 (prompts <= 200k
    # tokens) / $2.50 (> 200k); output $10.00 / $15.00 per 1M tokens.
    price = catalog.resolve("gemini-2.5-pro").price
    result = cost(price, input_tokens=300_000, output_tokens=2_000)
    assert result.cost_usd == Decimal("0.78")  # 300,000 x $2.50 + 2,000 x $15
    assert cost(price, input_tokens=100_000, output_tokens=2_000).cost_usd == Decimal("0.145")


def test_gemini_1_5_pro_prices_prompts_above_128k() -> None:
    # https://ai.google.dev/pricing as published from May 2024: Gemini 1.5 Pro $3.50 / $10.50 per 1M
    # tokens for prompts up to 128K, $7.00 / $21.00 for longer prompts (the rates the catalog keeps
    # for the retired model).
    price = catalog.resolve("gemini-1.5-pro").price
    assert price.tiers[0].above_input_tokens == 128_000
    assert cost(price, input_tokens=128_001, output_tokens=1_000).cost_usd == Decimal("0.917007")
    assert cost(price, input_tokens=128_000, output_tokens=1_000).cost_usd == Decimal("0.4585")


def test_gpt_5_4_prices_prompts_above_272k_at_2x_input_and_1_5x_output() -> None:
    # https://developers.openai.com/api/docs/models/gpt-5.4: $2.50 input, $0.25 cached input, $15
    # output per 1M; "prompts with >272K input tokens are priced at 2x input and 1.5x output for the
    # full session for standard, batch, and flex".
    price = catalog.resolve("gpt-5.4").price
    result = cost(price, input_tokens=300_000, output_tokens=10_000)
    assert result.cost_usd == Decimal("1.725")  # 300,000 x $5 + 10,000 x $22.50
    flex = cost(price, input_tokens=300_000, output_tokens=10_000, service_tier="flex")
    assert flex.cost_usd == Decimal("0.8625")  # flex is half: 300,000 x $2.50 + 10,000 x $11.25
    assert (flex.price_mode, flex.tier_above_input_tokens) == ("flex", 272_000)


# --- cache writes by lifetime ----------------------------------------------------------------------


def test_one_hour_cache_writes_cost_twice_the_input_rate() -> None:
    # https://docs.claude.com/en/docs/about-claude/pricing: 5-minute cache writes 1.25x the base input
    # price, 1-hour cache writes 2x, cache hits 0.1x. Claude Sonnet 4: $3.75, $6 and $0.30 per MTok.
    price = catalog.resolve("claude-sonnet-4-20250514").price
    assert (per_million(price.cache_write), per_million(price.cache_write_1h)) == (Decimal("3.75"), 6)
    five = cost(price, input_tokens=0, output_tokens=0, cache_creation_input_tokens=100_000)
    hour = cost(price, input_tokens=0, output_tokens=0, cache_creation_input_tokens=100_000, cache_ttl="1h")
    assert (five.cost_usd, hour.cost_usd) == (Decimal("0.375"), Decimal("0.6"))
    assert hour.cache_write_usd == Decimal("0.6")


def test_one_hour_write_without_a_published_rate_takes_the_five_minute_rate() -> None:
    price = Price(input=Decimal("0.000001"), output=Decimal("0.000002"), cache_write=Decimal("0.00000125"))
    result = cost(price, input_tokens=0, output_tokens=0, cache_creation_input_tokens=10, cache_ttl="1h")
    assert result.cost_usd == Decimal("0.0000125")


# --- batch and service tiers -----------------------------------------------------------------------


def test_anthropic_batch_is_half_price() -> None:
    # https://docs.claude.com/en/docs/about-claude/pricing#batch-processing: Claude Sonnet 4.5 batch
    # input $1.50 / MTok, batch output $7.50 / MTok.
    price = catalog.resolve("claude-sonnet-4-5").price
    result = cost(price, input_tokens=1_000_000, output_tokens=1_000_000, batch=True)
    assert result.cost_usd == Decimal("9")
    assert result.price_mode == "batch"
    assert cost(price, input_tokens=1_000_000, output_tokens=1_000_000).cost_usd == Decimal("18")


def test_openai_batch_and_priority_of_gpt_4o() -> None:
    # https://platform.openai.com/docs/pricing: gpt-4o $2.50 / $10.00 per 1M tokens; Batch API $1.25 /
    # $5.00; Priority processing $4.25 / $17.00.
    price = catalog.resolve("gpt-4o").price
    assert cost(price, input_tokens=1_000_000, output_tokens=1_000_000).cost_usd == Decimal("12.5")
    assert cost(price, input_tokens=1_000_000, output_tokens=1_000_000, batch=True).cost_usd == Decimal(
        "6.25"
    )
    priority = cost(price, input_tokens=1_000_000, output_tokens=1_000_000, service_tier="priority")
    assert (priority.cost_usd, priority.price_mode) == (Decimal("21.25"), "priority")


def test_openai_flex_of_o3() -> None:
    # https://platform.openai.com/docs/pricing (Flex): o3 input $1.00, cached input $0.25, output $4.00.
    price = catalog.resolve("o3").price
    result = cost(
        price, input_tokens=10_000, output_tokens=5_000, cache_read_input_tokens=2_000, service_tier="flex"
    )
    assert result.cost_usd == Decimal("0.0305")  # 10,000 x $1 + 2,000 x $0.25 + 5,000 x $4


def test_gemini_batch_above_200k_takes_the_tier_batch_rate() -> None:
    # https://ai.google.dev/gemini-api/docs/pricing, Gemini 2.5 Pro Batch: input $0.625 / $1.25
    # (prompts <= / > 200k tokens), output $5.00 / $7.50 per 1M tokens.
    price = catalog.resolve("gemini-2.5-pro").price
    result = cost(price, input_tokens=250_000, output_tokens=10_000, batch=True)
    assert result.cost_usd == Decimal("0.3875")  # 250,000 x $1.25 + 10,000 x $7.50
    assert (result.price_mode, result.tier_above_input_tokens) == ("batch", 200_000)


def test_a_mode_the_model_does_not_publish_is_priced_at_standard_and_says_so() -> None:
    price = catalog.resolve("claude-sonnet-4-20250514").price  # Anthropic has no flex tier
    result = cost(price, input_tokens=1_000, output_tokens=1_000, service_tier="flex")
    assert result.cost_usd == Decimal("0.018")
    assert result.price_mode == "standard"


def test_rates_fall_back_from_the_most_specific_published() -> None:
    price = Price(
        input=Decimal(1),
        output=Decimal(2),
        cache_read=Decimal("0.1"),
        batch=PriceRates(input=Decimal("0.5")),
        tiers=[PriceTier(above_input_tokens=10, input=Decimal(3), batch=PriceRates(output=Decimal(4)))],
    )
    # Tier + batch: output from the tier's batch rates, input from the tier, cache read from the base.
    result = cost(price, input_tokens=11, output_tokens=1, cache_read_input_tokens=1, batch=True)
    assert (result.input_usd, result.output_usd, result.cache_read_usd) == (
        Decimal(33),
        Decimal(4),
        Decimal("0.1"),
    )
    # Below the tier with batch: input from batch, output from the standard rates.
    result = cost(price, input_tokens=2, output_tokens=1, batch=True)
    assert (result.input_usd, result.output_usd) == (Decimal(1), Decimal(2))


# --- local runtimes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["ollama/llama3", "ollama_chat/qwen2.5:7b", "lm_studio/phi-4", "vllm/mistral-7b"]
)
def test_local_models_cost_zero_as_a_stated_price(name: str) -> None:
    price = catalog.resolve(name).price
    assert price.local and price.priced
    result = cost(price, input_tokens=123_456, output_tokens=7_890, cache_creation_input_tokens=5)
    assert (result.cost_usd, result.priced) == (Decimal(0), True)


# --- options are validated -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"service_tier": "turbo"}, "service_tier"),
        ({"cache_ttl": "2h"}, "cache_ttl"),
        ({"batch": "yes"}, "batch"),
        ({"batch": True, "service_tier": "priority"}, "service_tier"),
    ],
)
def test_bad_price_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        cost(Price(input=Decimal(1), output=Decimal(1)), input_tokens=1, output_tokens=1, **options)  # type: ignore[arg-type]
    assert raised.value.field == field


def test_tiers_must_ascend() -> None:
    with pytest.raises(ValidationError, match="ascend"):
        Price(
            input=Decimal(1),
            output=Decimal(1),
            tiers=[PriceTier(above_input_tokens=200_000), PriceTier(above_input_tokens=128_000)],
        )
