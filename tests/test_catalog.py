"""The bundled catalog: name resolution, exact costs, cheapest model, and the snapshot file itself."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tokenledger import catalog
from tokenledger.catalog import Catalog, cost
from tokenledger.errors import InvalidInput, UnknownModel
from tokenledger.families import FIRST_PARTY
from tokenledger.types import Price

DATA = Path(catalog.__file__).parent / "data"
_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "update_catalog.py"
_spec = importlib.util.spec_from_file_location("update_catalog", _SCRIPT)
assert _spec is not None and _spec.loader is not None
update_catalog = importlib.util.module_from_spec(_spec)
sys.modules["update_catalog"] = update_catalog  # dataclasses look their module up there
_spec.loader.exec_module(update_catalog)
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
        ("vertex_ai/gemini-2.5-flash", "vertex_ai/gemini-2.5-flash"),  # Vertex AI's own entry
        ("meta-llama/llama-3.3-70b-instruct", "Llama-3.3-70B-Instruct"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini-2024-07-18"),
    ],
)
def test_resolve_names_aliases_dated_and_prefixed(name: str, expected: str) -> None:
    assert catalog.resolve(name).name == expected


def test_resolve_returns_a_copy() -> None:
    catalog.resolve("gpt-4o").price.input = Decimal(1)
    assert catalog.resolve("gpt-4o").price.input == Decimal("0.0000025")
    catalog.resolve("gpt-5.4").price.tiers.clear()
    assert catalog.resolve("gpt-5.4").price.tiers
    with pytest.raises(ValidationError, match="frozen"):  # rate sets are shared between copies: immutable
        catalog.resolve("gpt-5.4").price.tiers[0].input = Decimal(1)  # type: ignore[misc]


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
        catalog.resolve("nosuchhost/claude-sonnet-4-5")
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
    makers = {"openai", "anthropic", "google", "mistral", "cohere", "deepseek", "xai", "meta"}
    hosts = {"azure", "azure_ai", "bedrock", "vertex_ai", "openrouter", "together_ai", "groq"}
    assert makers | hosts | {"fireworks_ai", "deepinfra"} <= set(default.providers())
    snapshot = default.snapshot
    assert snapshot.version == "1.109.1"
    assert "litellm 1.14.4 to 1.109.1" in snapshot.source
    assert snapshot.models == default.count(retired=None) == default.count() + default.count(retired=True)
    assert snapshot.retired == default.count(retired=True) > 0
    assert snapshot.releases[0] == ("1.14.4", date(2023, 12, 14))
    assert snapshot.releases[-1] == ("1.109.1", date(2026, 11, 12))
    assert snapshot.date == date(2026, 11, 12)


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
        for model in catalog.search(limit=10_000)  # listed today
        if model.provider in FIRST_PARTY  # a host's offer is not a model the caller can switch to
        and model.price.priced
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


def _rates(node: Any) -> list[Any]:
    """Every rate in a catalog price, however deep (modes, tiers)."""
    if isinstance(node, list):
        return [rate for item in node for rate in _rates(item)]
    if isinstance(node, dict):
        return [
            rate
            for key, value in node.items()
            if key not in {"from", "above_input_tokens"}
            for rate in _rates(value)
        ]
    return [node]


def test_snapshot_prices_are_plain_decimal_strings(raw_catalog: dict[str, Any]) -> None:
    models = raw_catalog["models"]
    assert isinstance(models, list) and len(models) > 1000
    for entry in models:
        assert entry["prices"], entry["name"]
        dates = [dated["from"] for dated in entry["prices"]]
        assert dates == sorted(set(dates)), entry["name"]  # oldest first, one price per date
        for value in _rates(entry["prices"]):
            assert isinstance(value, str), (entry["name"], value)
            assert "e" not in value.lower(), (entry["name"], value)
            assert Decimal(value) > 0


def test_snapshot_metadata(raw_catalog: dict[str, Any]) -> None:
    snapshot = raw_catalog["snapshot"]
    assert isinstance(snapshot, dict)
    assert snapshot["date"] and snapshot["litellm_version"]
    assert snapshot["models"] == len(raw_catalog["models"])
    assert snapshot["retired"] == sum(1 for entry in raw_catalog["models"] if "retired" in entry)
    # The catalog records its sources: every release read, with its PyPI date, as the script lists them.
    assert raw_catalog["releases"] == [[r.version, r.date] for r in update_catalog.RELEASES]


def test_every_entry_counts_with_a_known_encoding() -> None:
    for model in catalog.search(limit=10**6, retired=None):
        assert model.encoding in ENCODINGS, model.name
        assert model.count_method in {"exact", "estimate"}
        if model.count_method == "estimate":
            assert model.estimate_factor >= 1.0
            assert model.estimate_rule and "o200k_base" in model.estimate_rule
        else:
            assert model.family == "openai", model.name


def test_litellm_license_notice_is_bundled() -> None:
    notice = (DATA / "LICENSE.litellm").read_text(encoding="utf-8")
    assert "MIT License" in notice
    assert "Berri AI" in notice
    assert "catalog.json" in notice


# --- the seeds' models, dates and retirement -----------------------------------------------------

MILLION = 1_000_000


@pytest.mark.parametrize(
    ("model", "input_usd", "output_usd"),
    [
        # Seed 002's table (TheBridge, "as of Dec 2024"), per million tokens, with the dated ids.
        ("claude-sonnet-4-20250514", "3", "15"),
        ("claude-opus-4-20250514", "15", "75"),
        ("claude-3-5-haiku-20241022", "0.8", "4"),
        # Seed 004's gpt-4 at $0.03 / $0.06 per 1K tokens.
        ("gpt-4", "30", "60"),
    ],
)
def test_the_seeds_models_price_exactly(model: str, input_usd: str, output_usd: str) -> None:
    price = catalog.resolve(model).price
    assert (price.input * MILLION, price.output * MILLION) == (Decimal(input_usd), Decimal(output_usd))
    # Seed 002's logTokenUsage example: 1,500 input and 800 output tokens.
    expected = (1500 * Decimal(input_usd) + 800 * Decimal(output_usd)) / MILLION
    assert cost(price, input_tokens=1500, output_tokens=800).cost_usd == expected


def test_gpt_3_5_turbo_is_priced_as_seed_004_in_2024_and_lower_now() -> None:
    # Seed 004 (2024): gpt-3.5-turbo at $0.0015 / $0.002 per 1K tokens. The price list lowered it to
    # $0.50 / $1.50 per million in litellm 1.77.7 (2025-10-05).
    default = catalog.default_catalog()
    then = default.price_at("gpt-3.5-turbo", datetime(2024, 6, 1, tzinfo=UTC))
    assert cost(then, input_tokens=1000, output_tokens=1000).cost_usd == Decimal("0.0035")
    now = catalog.resolve("gpt-3.5-turbo").price
    assert cost(now, input_tokens=MILLION, output_tokens=MILLION).cost_usd == Decimal("2")


def test_retired_models_keep_their_last_price_and_say_so() -> None:
    haiku = catalog.resolve("claude-3-5-haiku-20241022")
    assert haiku.retired and haiku.last_listed == date(2026, 3, 1)
    assert haiku.warnings and "retired" in haiku.warnings[0] and "2026-03-01" in haiku.warnings[0]
    assert (haiku.price.input, haiku.price.output) == (Decimal("0.0000008"), Decimal("0.000004"))
    listed = catalog.resolve("claude-sonnet-4-5")
    assert not listed.retired and listed.last_listed is None and listed.warnings == []


def test_search_lists_retired_models_only_when_asked() -> None:
    retired = catalog.search("claude-3-5-haiku", retired=True)
    assert "claude-3-5-haiku-20241022" in {model.name for model in retired}
    assert all(model.retired for model in retired)
    assert "claude-3-5-haiku-20241022" not in {model.name for model in catalog.search("claude-3-5-haiku")}
    both = catalog.search("claude-3-5-haiku", retired=None, limit=1000)
    assert {m.name for m in retired} < {m.name for m in both}


def test_price_at_takes_the_price_in_force_at_that_time() -> None:
    default = catalog.default_catalog()
    # claude-3-5-haiku-20241022: $1 / $5 when first listed (litellm 1.53.1, 2024-11-28), $0.80 / $4 from
    # litellm 1.62.1 (2025-03-03).
    for moment, rates in [
        (datetime(2024, 11, 4, tzinfo=UTC), ("0.000001", "0.000005")),  # before its first date: the first
        (datetime(2025, 3, 2, 23, 59, tzinfo=UTC), ("0.000001", "0.000005")),
        (datetime(2025, 3, 3, tzinfo=UTC), ("0.0000008", "0.000004")),
        (datetime(2026, 11, 30, tzinfo=UTC), ("0.0000008", "0.000004")),  # retired: its last price
    ]:
        price = default.price_at("claude-3-5-haiku-20241022", moment)
        assert (price.input, price.output) == tuple(Decimal(rate) for rate in rates), moment
    with pytest.raises(InvalidInput, match="offset"):
        default.price_at("gpt-4o", datetime(2025, 1, 1))  # no offset: refused


def test_price_history_lists_dated_prices_with_their_source() -> None:
    history = catalog.default_catalog().price_history("gpt-3.5-turbo")
    assert [(h.effective_from.date(), h.source) for h in history] == [
        (date(2023, 12, 14), "litellm 1.14.4"),
        (date(2025, 10, 5), "litellm 1.77.7"),
    ]
    assert history[0].effective_until == history[1].effective_from
    assert history[1].effective_until is None
    assert history[0].price.input == Decimal("0.0000015")


def test_a_rate_added_later_joins_the_earlier_prices() -> None:
    # claude-sonnet-4-20250514 was first listed without a 1-hour cache-write rate; the price list added
    # it later without changing another rate, so usage since the model's launch takes it too.
    history = catalog.default_catalog().price_history("claude-sonnet-4-20250514")
    assert len(history) == 1 and history[0].price.cache_write_1h == Decimal("0.000006")


# --- routed, hosted and local names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected", "provider", "family"),
    [
        ("azure/gpt-4o", "azure/gpt-4o", "azure", "openai"),
        ("azure/gpt-4o-2099-01-01", "azure/gpt-4o", "azure", "openai"),
        ("azure_ai/mistral-small-2503", "azure_ai/mistral-small-2503", "azure_ai", "mistral"),
        (
            "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "bedrock/us-east-1/anthropic.claude-3-5-haiku-20241022-v1:0",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "bedrock/global.anthropic.claude-sonnet-4-20250514-v1:0",
            "global.anthropic.claude-sonnet-4-20250514-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "bedrock/converse/us.anthropic.claude-sonnet-4-20250514-v1:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "bedrock",
            "anthropic",
        ),
        (
            "vertex_ai/claude-sonnet-4-5@20250929",
            "vertex_ai/claude-sonnet-4-5@20250929",
            "vertex_ai",
            "anthropic",
        ),
        ("vertex_ai/gemini-2.5-pro", "vertex_ai/gemini-2.5-pro", "vertex_ai", "google"),
        ("gemini/gemini-2.5-pro", "gemini-2.5-pro", "google", "google"),
        ("anthropic/claude-sonnet-4-5", "claude-sonnet-4-5", "anthropic", "anthropic"),
        ("openai/gpt-4o", "gpt-4o", "openai", "openai"),
        ("mistral/mistral-large-latest", "mistral-large-latest", "mistral", "mistral"),
        (
            "openrouter/anthropic/claude-3.5-sonnet",
            "openrouter/anthropic/claude-3.5-sonnet",
            "openrouter",
            "anthropic",
        ),
        (
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together_ai",
            "meta",
        ),
        ("groq/openai/gpt-oss-20b", "groq/openai/gpt-oss-20b", "groq", "openai"),
        (
            "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct",
            "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct",
            "fireworks_ai",
            "meta",
        ),
        ("deepinfra/google/gemini-2.5-flash", "deepinfra/google/gemini-2.5-flash", "deepinfra", "google"),
        ("xai/grok-4", "grok-4", "xai", "xai"),
    ],
)
def test_routed_and_hosted_names_resolve(name: str, expected: str, provider: str, family: str) -> None:
    model = catalog.resolve(name)
    assert (model.name, model.provider, model.family) == (expected, provider, family)
    assert model.price.priced


def test_openrouter_prices_are_kept_from_the_last_release_that_listed_them() -> None:
    routed = catalog.resolve("openrouter/anthropic/claude-3.5-sonnet")
    assert routed.retired and routed.last_listed == date(2026, 10, 1)
    assert (routed.price.input, routed.price.output) == (Decimal("0.000003"), Decimal("0.000015"))
    assert catalog.default_catalog().count(provider="openrouter") == 0  # none listed today


def test_a_host_keeps_its_own_price() -> None:
    # Bedrock's EU profile of Claude Sonnet 4.5 costs 10% more than Anthropic's API.
    hosted = catalog.resolve("bedrock/eu.anthropic.claude-sonnet-4-5-20250929-v1:0")
    first_party = catalog.resolve("claude-sonnet-4-5-20250929")
    assert (hosted.price.input, first_party.price.input) == (Decimal("0.0000033"), Decimal("0.000003"))


def test_a_hosted_name_the_price_list_lacks_takes_its_makers_price_with_a_warning() -> None:
    hosted = catalog.resolve("bedrock/anthropic.claude-sonnet-4-6-v1:0")
    maker = catalog.resolve("claude-sonnet-4-6")
    assert (hosted.name, hosted.provider, hosted.base_model) == (
        "bedrock/anthropic.claude-sonnet-4-6-v1:0",
        "bedrock",
        "claude-sonnet-4-6",
    )
    assert hosted.price == maker.price
    assert "no Bedrock price" in hosted.warnings[0]
    history = catalog.default_catalog().price_history("bedrock/anthropic.claude-sonnet-4-6-v1:0")
    assert history == catalog.default_catalog().price_history("claude-sonnet-4-6")


def test_counting_follows_the_family_not_the_host() -> None:
    azure = catalog.resolve("azure/gpt-4o")
    assert (azure.count_method, azure.encoding) == ("exact", "o200k_base")
    assert catalog.resolve("azure/gpt-35-turbo").encoding == "cl100k_base"
    bedrock = catalog.resolve("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0")
    claude = catalog.resolve("claude-3-5-haiku-20241022")
    assert bedrock.count_method == "estimate"
    assert (bedrock.estimate_factor, bedrock.estimate_rule) == (claude.estimate_factor, claude.estimate_rule)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("ollama/llama3", "meta"),
        ("ollama_chat/mistral", "mistral"),
        ("lm_studio/qwen2.5-7b-instruct", "other"),
        ("vllm/meta-llama/Llama-3.1-8B-Instruct", "meta"),
        ("hosted_vllm/deepseek-r1", "deepseek"),
        ("llamafile/gemma-2-9b", "google"),
    ],
)
def test_local_runtimes_are_priced_zero_as_local(name: str, family: str) -> None:
    model = catalog.resolve(name)
    assert (model.name, model.provider, model.family) == (name, name.split("/")[0], family)
    assert model.price.local and (model.price.input, model.price.output) == (0, 0)
    assert model.price.priced  # a stated price, not unpriced
    assert model.count_method == "estimate"
    history = catalog.default_catalog().price_at(name, datetime(2025, 1, 1, tzinfo=UTC))
    assert history.local


def test_an_unknown_name_behind_a_known_host_is_still_unknown() -> None:
    with pytest.raises(UnknownModel):
        catalog.resolve("azure/my-gpt4o-prod")  # a deployment name: a tenant alias's job
    with pytest.raises(UnknownModel):
        catalog.resolve("ollama/")
