"""The bundled catalog: name resolution, exact costs, cheapest model, and the snapshot file itself."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenledger import catalog
from tokenledger.catalog import Catalog, cost
from tokenledger.errors import InvalidInput, UnknownModel
from tokenledger.types import Price

DATA = Path(catalog.__file__).parent / "data"
ENCODINGS = {"o200k_base", "cl100k_base", "p50k_base", "r50k_base"}


@pytest.fixture(scope="module")
def raw_catalog() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / "catalog.json").read_text(encoding="utf-8"))
    return document


# --- resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("  gpt-4o ", "gpt-4o"),
        ("openai/gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),  # listed itself: its own entry
        ("gpt-4o-2099-01-01", "gpt-4o"),  # an unlisted snapshot takes its base model's rules
        ("openai/gpt-4o-mini-2099-01-01", "gpt-4o-mini"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
        ("claude-sonnet-4-6-latest", "claude-sonnet-4-6"),
        ("claude-opus-4-5@20251101", "claude-opus-4-5"),
        ("gemini/gemini-2.5-pro", "gemini-2.5-pro"),
        ("vertex_ai/gemini-2.5-flash", "gemini-2.5-flash"),
        ("meta-llama/llama-3.3-70b-instruct", "Llama-3.3-70B-Instruct"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini-2024-07-18"),
    ],
)
def test_resolve_names_aliases_dated_and_prefixed(name: str, expected: str) -> None:
    assert catalog.resolve(name).name == expected


def test_resolve_returns_a_copy() -> None:
    catalog.resolve("gpt-4o").price.input = Decimal(1)
    assert catalog.resolve("gpt-4o").price.input == Decimal("0.0000025")


def test_unknown_model_lists_closest_names() -> None:
    with pytest.raises(UnknownModel) as raised:
        catalog.resolve("gpt-4oo")
    assert "gpt-4o" in raised.value.closest
    assert 1 <= len(raised.value.closest) <= 5
    assert "gpt-4o" in str(raised.value)


def test_fine_tune_of_unlisted_base_is_unknown_not_priced_as_base() -> None:
    with pytest.raises(UnknownModel):
        catalog.resolve("ft:gpt-5-mini-2025-08-07:acme::abc")


def test_provider_prefix_outside_the_catalog_is_unknown() -> None:
    with pytest.raises(UnknownModel) as raised:
        catalog.resolve("bedrock/claude-sonnet-4-5")
    assert "claude-sonnet-4-5" in raised.value.closest


def test_empty_name_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="model"):
        catalog.resolve("  ")


def test_counting_rules_per_provider() -> None:
    assert (catalog.resolve("gpt-4o").count_method, catalog.resolve("gpt-4o").encoding) == (
        "exact",
        "o200k_base",
    )
    assert catalog.resolve("o3").encoding == "o200k_base"
    assert catalog.resolve("gpt-5").count_method == "exact"
    assert catalog.resolve("gpt-4-turbo").encoding == "cl100k_base"
    assert catalog.resolve("gpt-3.5-turbo").encoding == "cl100k_base"
    claude = catalog.resolve("claude-sonnet-4-5")
    assert claude.count_method == "estimate"
    assert claude.estimate_factor >= 1.2
    assert claude.estimate_rule and "o200k_base" in claude.estimate_rule
    # Opus 4.7's tokenizer yields up to 1.35x the tokens of earlier Claude models.
    assert catalog.resolve("claude-opus-4-7").estimate_factor > claude.estimate_factor


# --- search and providers ----------------------------------------------------------------------


def test_search_puts_the_exact_name_first() -> None:
    found = catalog.search("gpt-4o")
    assert found[0].name == "gpt-4o"
    assert all("gpt-4o" in model.name for model in found)


def test_search_words_provider_and_limit() -> None:
    opus = catalog.search("claude opus")
    assert opus and all("opus" in model.name for model in opus)
    google = catalog.search(provider="gemini", limit=3)  # a prefix names its provider
    assert len(google) == 3
    assert {model.provider for model in google} == {"google"}
    assert catalog.search("no-such-model-anywhere") == []


def test_search_rejects_unknown_provider_and_bad_limit() -> None:
    with pytest.raises(InvalidInput, match=r"provider.*openai"):
        catalog.search(provider="nope")
    with pytest.raises(InvalidInput, match="limit"):
        catalog.search(limit=0)


def test_providers_and_snapshot() -> None:
    default = catalog.default_catalog()
    assert {"openai", "anthropic", "google", "mistral", "cohere", "deepseek", "xai", "meta"} <= set(
        default.providers()
    )
    assert default.snapshot.version
    assert "litellm" in default.snapshot.source
    assert default.snapshot.models == len(catalog.search(limit=10_000))


def test_catalog_loads_lazily(tmp_path: Path) -> None:
    lazy = Catalog(tmp_path / "missing.json")  # nothing is read until first use
    with pytest.raises(FileNotFoundError):
        lazy.resolve("gpt-4o")


# --- cost --------------------------------------------------------------------------------------


def test_cost_is_exact_decimal() -> None:
    price = catalog.resolve("gpt-4o").price
    assert (price.input, price.output) == (Decimal("0.0000025"), Decimal("0.00001"))
    result = cost(price, input_tokens=1234, output_tokens=567)
    # 1234 x $2.50/M + 567 x $10/M = 0.003085 + 0.00567
    assert result.cost_usd == Decimal("0.008755")
    assert result.priced
    assert (result.input_usd, result.output_usd) == (Decimal("0.003085"), Decimal("0.00567"))
    assert Catalog().cost(price, input_tokens=1234, output_tokens=567) == result  # same function


def test_cache_and_reasoning_are_priced_at_their_own_rates() -> None:
    price = Price(
        input=Decimal("0.000003"),
        output=Decimal("0.000015"),
        cache_read=Decimal("0.0000003"),
        cache_write=Decimal("0.00000375"),
        reasoning=Decimal("0.00002"),
    )
    result = cost(
        price,
        input_tokens=100,
        output_tokens=50,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=200,
        reasoning_output_tokens=30,
    )
    assert result.input_usd == Decimal("0.0003")
    assert result.output_usd == Decimal("0.0003")  # 20 non-reasoning output tokens
    assert result.reasoning_usd == Decimal("0.0006")
    assert result.cache_read_usd == Decimal("0.0003")
    assert result.cache_write_usd == Decimal("0.00075")
    assert result.cost_usd == Decimal("0.00225")


def test_missing_cache_and_reasoning_rates_fall_back_to_input_and_output() -> None:
    price = Price(input=Decimal("0.000001"), output=Decimal("0.000004"))
    result = cost(
        price,
        input_tokens=0,
        output_tokens=10,
        cache_read_input_tokens=5,
        cache_creation_input_tokens=7,
        reasoning_output_tokens=4,
    )
    assert result.cache_read_usd == Decimal("0.000005")
    assert result.cache_write_usd == Decimal("0.000007")
    assert result.reasoning_usd == Decimal("0.000016")
    assert result.cost_usd == Decimal("0.000052")


@pytest.mark.parametrize("price", [Price(), Price(input=Decimal("0.000001")), Price(output=Decimal("0.1"))])
def test_unpriced_costs_none_never_zero(price: Price) -> None:
    result = cost(price, input_tokens=10, output_tokens=10)
    assert result.cost_usd is None
    assert result.priced is False


@pytest.mark.parametrize(
    "field",
    [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_output_tokens",
    ],
)
def test_negative_tokens_name_the_field(field: str) -> None:
    counts = {"input_tokens": 1, "output_tokens": 1, field: -1}
    with pytest.raises(InvalidInput, match=field) as raised:
        cost(Price(input=Decimal(1), output=Decimal(1)), **counts)
    assert raised.value.field == field


def test_reasoning_cannot_exceed_output() -> None:
    with pytest.raises(InvalidInput, match="reasoning_output_tokens"):
        cost(
            Price(input=Decimal(1), output=Decimal(1)),
            input_tokens=0,
            output_tokens=5,
            reasoning_output_tokens=6,
        )


rates = st.decimals(min_value=0, max_value=1, places=12, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2**53)


@given(rates, rates, st.none() | rates, st.none() | rates, counts, counts, counts, counts)
def test_cost_equals_rational_arithmetic(
    input_rate: Decimal,
    output_rate: Decimal,
    cache_rate: Decimal | None,
    reasoning_rate: Decimal | None,
    input_tokens: int,
    output_tokens: int,
    cache_tokens: int,
    reasoning_share: int,
) -> None:
    reasoning_tokens = reasoning_share % (output_tokens + 1)
    price = Price(input=input_rate, output=output_rate, cache_read=cache_rate, reasoning=reasoning_rate)
    result = cost(
        price,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_input_tokens=cache_tokens,
        reasoning_output_tokens=reasoning_tokens,
    )
    expected = (
        Fraction(input_rate) * input_tokens
        + Fraction(output_rate) * (output_tokens - reasoning_tokens)
        + Fraction(input_rate if cache_rate is None else cache_rate) * cache_tokens
        + Fraction(output_rate if reasoning_rate is None else reasoning_rate) * reasoning_tokens
    )
    assert result.cost_usd is not None
    assert Fraction(result.cost_usd) == expected


# --- cheapest ----------------------------------------------------------------------------------


def test_cheapest_is_the_minimum_over_fitting_priced_models() -> None:
    found = catalog.cheapest(10_000, 1_000)
    assert found is not None
    fitting = [
        model
        for model in catalog.search(limit=10_000)
        if model.price.priced
        and model.context_window is not None
        and model.context_window >= 11_000
        and (model.max_output_tokens is None or model.max_output_tokens >= 1_000)
    ]
    costs = [cost(model.price, input_tokens=10_000, output_tokens=1_000).cost_usd for model in fitting]
    found_cost = cost(found.price, input_tokens=10_000, output_tokens=1_000).cost_usd
    assert found_cost == min(c for c in costs if c is not None)


def test_cheapest_respects_budget_provider_exclude_and_size() -> None:
    openai = catalog.cheapest(1_000, 100, provider="openai")
    assert openai is not None and openai.provider == "openai"
    other = catalog.cheapest(1_000, 100, provider="openai", exclude=openai.name.upper())
    assert other is not None and other.name != openai.name
    assert catalog.cheapest(1_000, 100, max_cost_usd=Decimal(0)) is None
    within = catalog.cheapest(1_000, 100, provider="anthropic", max_cost_usd=Decimal("0.01"))
    assert within is not None
    assert (cost(within.price, input_tokens=1_000, output_tokens=100).cost_usd or 0) <= Decimal("0.01")
    assert catalog.cheapest(10**9, 1) is None  # no context window holds a billion tokens


def test_cheapest_rejects_negative_tokens() -> None:
    with pytest.raises(InvalidInput, match="output_tokens"):
        catalog.cheapest(1, -1)


# --- the snapshot file -------------------------------------------------------------------------


def test_snapshot_prices_are_plain_decimal_strings(raw_catalog: dict[str, Any]) -> None:
    models = raw_catalog["models"]
    assert isinstance(models, list) and len(models) > 100
    for entry in models:
        for field, value in entry.get("price", {}).items():
            assert isinstance(value, str), (entry["name"], field, value)
            assert "e" not in value.lower(), (entry["name"], field, value)
            assert Decimal(value) > 0


def test_snapshot_metadata(raw_catalog: dict[str, Any]) -> None:
    snapshot = raw_catalog["snapshot"]
    assert isinstance(snapshot, dict)
    assert snapshot["date"] and snapshot["litellm_version"]
    assert snapshot["models"] == len(raw_catalog["models"])


def test_every_entry_counts_with_a_known_encoding(raw_catalog: dict[str, Any]) -> None:
    rules = raw_catalog["rules"]
    for entry in raw_catalog["models"]:
        assert entry["encoding"] in ENCODINGS, entry["name"]
        assert entry["count_method"] in {"exact", "estimate"}
        if entry["count_method"] == "estimate":
            assert entry["estimate_factor"] >= 1.0
            assert entry["estimate_rule"] in rules
        else:
            assert entry["provider"] == "openai"


def test_litellm_license_notice_is_bundled() -> None:
    notice = (DATA / "LICENSE.litellm").read_text(encoding="utf-8")
    assert "MIT License" in notice
    assert "Berri AI" in notice
    assert "catalog.json" in notice
