"""Bills as the providers compute them, in SQL: every price mode through `track_usage` (tl_track and
tl_cost) against the provider's published price page, exact in Decimal; the mode stored on the usage row;
the check's estimate at the mode's and tier's rates; and tl_cost equal to `tokenledger.pricing.cost` on
every price and usage hypothesis draws."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from psycopg.types.json import Jsonb

from tokenledger import catalog
from tokenledger.errors import Conflict, InvalidInput
from tokenledger.ledger import Ledger, _catalog_price, _request_hash
from tokenledger.mcp import build_server
from tokenledger.pricing import cost
from tokenledger.types import (
    BudgetSpec,
    CheckRequest,
    Price,
    PriceMode,
    PriceRates,
    PriceSpec,
    PriceTier,
    Principal,
    TrackRequest,
)

MILLION = 1_000_000

# (model, usage and mode as track_usage takes them, the bill in USD), each from the provider's page.
WORKED_EXAMPLES = [
    # https://docs.claude.com/en/docs/about-claude/pricing#long-context-pricing: Claude Sonnet 4, input
    # > 200K tokens: $6 / $22.50 per MTok for every token of the request.
    pytest.param(
        "claude-sonnet-4-20250514",
        {"input_tokens": 250_000, "output_tokens": 2_000},
        "1.545",  # 250,000 x $6 + 2,000 x $22.50
        id="tier-anthropic-above-200k",
    ),
    # The same page: the threshold counts input + cache creation + cache read tokens.
    pytest.param(
        "claude-sonnet-4-20250514",
        {
            "input_tokens": 50_000,
            "output_tokens": 1_000,
            "cache_read_input_tokens": 150_000,
            "cache_creation_input_tokens": 1,
        },
        "0.4125075",  # 50,000 x $6 + 150,000 x $0.60 + 1 x $7.50 + 1,000 x $22.50
        id="tier-reached-with-cached-input",
    ),
    # https://ai.google.dev/gemini-api/docs/pricing, Gemini 2.5 Pro: $2.50 / $15.00 per 1M for prompts
    # > 200k tokens.
    pytest.param(
        "gemini-2.5-pro", {"input_tokens": 300_000, "output_tokens": 2_000}, "0.78", id="tier-gemini"
    ),
    # https://developers.openai.com/api/docs/models/gpt-5.4: > 272K input at 2x input and 1.5x output,
    # for flex too (flex: half of standard).
    pytest.param(
        "gpt-5.4",
        {"input_tokens": 300_000, "output_tokens": 10_000, "service_tier": "flex"},
        "0.8625",  # 300,000 x $2.50 + 10,000 x $11.25
        id="tier-and-flex-gpt-5.4",
    ),
    # https://docs.claude.com/en/docs/about-claude/pricing: Claude Sonnet 4 cache writes $3.75 (5
    # minutes) and $6 (1 hour) per MTok.
    pytest.param(
        "claude-sonnet-4-20250514",
        {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 100_000, "cache_ttl": "1h"},
        "0.6",
        id="cache-write-1h",
    ),
    pytest.param(
        "claude-sonnet-4-20250514",
        {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 100_000},
        "0.375",
        id="cache-write-5m",
    ),
    # https://docs.claude.com/en/docs/about-claude/pricing#batch-processing: Sonnet 4.5 batch $1.50 /
    # $7.50 per MTok.
    pytest.param(
        "claude-sonnet-4-5",
        {"input_tokens": MILLION, "output_tokens": MILLION, "batch": True},
        "9",
        id="batch-anthropic",
    ),
    # https://platform.openai.com/docs/pricing: gpt-4o Batch API $1.25 / $5.00; Priority $4.25 / $17.00.
    pytest.param(
        "gpt-4o",
        {"input_tokens": MILLION, "output_tokens": MILLION, "batch": True},
        "6.25",
        id="batch-openai",
    ),
    pytest.param(
        "gpt-4o",
        {"input_tokens": MILLION, "output_tokens": MILLION, "service_tier": "priority"},
        "21.25",
        id="priority-openai",
    ),
    # The same page (Flex): o3 input $1.00, cached input $0.25, output $4.00 per 1M.
    pytest.param(
        "o3",
        {
            "input_tokens": 10_000,
            "output_tokens": 5_000,
            "cache_read_input_tokens": 2_000,
            "service_tier": "flex",
        },
        "0.0305",
        id="flex-openai",
    ),
    # https://ai.google.dev/gemini-api/docs/pricing, Gemini 2.5 Pro Batch: $1.25 / $7.50 per 1M above 200k.
    pytest.param(
        "gemini-2.5-pro",
        {"input_tokens": 250_000, "output_tokens": 10_000, "batch": True},
        "0.3875",
        id="batch-gemini-above-200k",
    ),
    # A local runtime: $0, a stated price.
    pytest.param(
        "ollama/llama3",
        {"input_tokens": 123_456, "output_tokens": 7_890, "cache_creation_input_tokens": 5},
        "0",
        id="local",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "usage", "bill"), WORKED_EXAMPLES)
async def test_track_usage_bills_the_published_worked_example(
    ledger: Ledger, model: str, usage: dict[str, Any], bill: str
) -> None:
    tracked = await ledger.track_usage(TrackRequest(model=model, **usage))
    assert (tracked.cost_usd, tracked.priced) == (Decimal(bill), True)
    assert not [w for w in tracked.warnings if "publishes no" in w]
    # Python's rule gives the same bill.
    modes = {k: usage[k] for k in ("batch", "service_tier", "cache_ttl") if k in usage}
    counts = {k: v for k, v in usage.items() if k not in modes}
    assert cost(catalog.resolve(model).price, **counts, **modes).cost_usd == Decimal(bill)
    # The row keeps how the call was billed, for reports.
    rows = await ledger.store._fetch_rows(
        "select cost_usd, batch, service_tier, cache_ttl from tl_usage where usage_id = %s",
        (tracked.usage_id,),
    )
    assert rows == [
        {
            "cost_usd": Decimal(bill),
            "batch": usage.get("batch", False),
            "service_tier": usage.get("service_tier", "standard"),
            "cache_ttl": usage.get("cache_ttl", "5m"),
        }
    ]


@pytest.mark.anyio
async def test_a_mode_the_model_does_not_publish_is_billed_at_standard_rates_with_a_warning(
    ledger: Ledger,
) -> None:
    tracked = await ledger.track_usage(
        TrackRequest(
            model="claude-sonnet-4-20250514", input_tokens=1_000, output_tokens=1_000, service_tier="flex"
        )
    )
    assert tracked.cost_usd == Decimal("0.018")  # $3 + $15 per MTok: Anthropic has no flex tier
    assert "claude-sonnet-4-20250514 publishes no flex price: priced at standard rates" in tracked.warnings


@pytest.mark.anyio
async def test_a_batch_call_at_flex_or_priority_is_refused_naming_the_field_before_any_write(
    ledger: Ledger,
) -> None:
    await ledger.set_budget(BudgetSpec(name="day", limit=Decimal(10**6), period="day"))
    for tier in ("flex", "priority"):
        with pytest.raises(InvalidInput) as refused:
            await ledger.track_usage(
                TrackRequest(model="gpt-4o", input_tokens=1, output_tokens=1, batch=True, service_tier=tier)  # type: ignore[arg-type]
            )
        assert refused.value.field == "service_tier" and "batch" in str(refused.value)
        with pytest.raises(InvalidInput) as refused:
            await ledger.check_budget(
                CheckRequest(model="gpt-4o", input_tokens=1, batch=True, service_tier=tier)
            )  # type: ignore[arg-type]
        assert refused.value.field == "service_tier"
    written = await ledger.store._fetch_rows(
        "select (select count(*) from tl_usage) as usage, (select count(*) from tl_reservation) as held", ()
    )
    assert written == [{"usage": 0, "held": 0}]
    assert (await ledger.get_budget("day")).state.used == 0


@pytest.mark.anyio
async def test_a_tenant_override_is_flat_and_wins_over_tiers_and_modes(ledger: Ledger) -> None:
    await ledger.set_price(
        PriceSpec(model="gemini-2.5-pro", input=Decimal("0.000001"), output=Decimal("0.000002"))
    )
    tracked = await ledger.track_usage(
        TrackRequest(model="gemini-2.5-pro", input_tokens=300_000, output_tokens=1_000, batch=True)
    )
    assert tracked.cost_usd == Decimal("0.302")  # 300,000 x $1 + 1,000 x $2: no tier, no batch rate
    assert "gemini-2.5-pro publishes no batch price: priced at standard rates" in tracked.warnings


@pytest.mark.anyio
async def test_the_check_reserves_at_the_rates_of_its_mode_and_tier(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="usd", unit="usd", limit=Decimal(1000), period="day"))
    priority = await ledger.check_budget(
        CheckRequest(model="gpt-4o", input_tokens=MILLION, max_output_tokens=MILLION, service_tier="priority")
    )
    assert priority.estimated_cost_usd == Decimal("21.25")  # $4.25 + $17 per 1M, as it will be billed
    batch = await ledger.check_budget(
        CheckRequest(model="gpt-4o", input_tokens=MILLION, max_output_tokens=MILLION, batch=True)
    )
    assert batch.estimated_cost_usd == Decimal("6.25")
    long_context = await ledger.check_budget(
        CheckRequest(model="claude-sonnet-4-20250514", input_tokens=250_000, max_output_tokens=2_000)
    )
    assert long_context.estimated_cost_usd == Decimal("1.545")  # the whole request at the > 200K tier
    budget = await ledger.get_budget("usd")
    assert budget.state.reserved == Decimal("21.25") + Decimal("6.25") + Decimal("1.545")


@pytest.mark.anyio
async def test_the_mcp_tools_take_the_bill_modes(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        check = await client.call_tool(
            "check_budget",
            {
                "model": "gpt-4o",
                "input_tokens": MILLION,
                "max_output_tokens": MILLION,
                "service_tier": "priority",
            },
        )
        assert check.structured_content is not None and Decimal(
            check.structured_content["estimated_cost_usd"]
        ) == Decimal("21.25")
        tracked = await client.call_tool(
            "track_usage",
            {"model": "gpt-4o", "input_tokens": MILLION, "output_tokens": MILLION, "batch": True},
        )
        assert tracked.structured_content is not None and Decimal(
            tracked.structured_content["cost_usd"]
        ) == Decimal("6.25")


def test_a_standard_request_keeps_the_hash_it_had_before_bill_modes_existed() -> None:
    # An idempotent retry sent across the upgrade still replays: the fields count only when set.
    request = TrackRequest(model="gpt-4o", input_tokens=5, output_tokens=3, request_id="r-1")
    content = request.model_dump(mode="json", exclude={"request_id", "batch", "service_tier", "cache_ttl"})
    before = {key: value for key, value in content.items() if value is not None}
    encoded = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert _request_hash(request) == hashlib.sha256(encoded).hexdigest()
    assert _request_hash(request.model_copy(update={"batch": True})) != _request_hash(request)


@pytest.mark.anyio
async def test_a_replay_in_another_mode_is_a_conflict_not_a_second_record(ledger: Ledger) -> None:
    first = await ledger.track_usage(
        TrackRequest(model="gpt-4o", input_tokens=5, output_tokens=3, request_id="r-1")
    )
    with pytest.raises(Conflict):
        await ledger.track_usage(
            TrackRequest(model="gpt-4o", input_tokens=5, output_tokens=3, request_id="r-1", batch=True)
        )
    replay = await ledger.track_usage(
        TrackRequest(model="gpt-4o", input_tokens=5, output_tokens=3, request_id="r-1")
    )
    assert replay.duplicate and replay.usage_id == first.usage_id


# --- SQL and Python agree on every price -----------------------------------------------------------

_RATE = st.none() | st.decimals(min_value=0, max_value=Decimal("0.01"), places=12)
_TOKENS = st.integers(0, 400_000) | st.integers(0, 10**12)


@st.composite
def _rates(draw: st.DrawFn) -> dict[str, Decimal | None]:
    kinds = ("input", "output", "cache_read", "cache_write", "reasoning", "cache_write_1h")
    return {kind: draw(_RATE) for kind in kinds}


@st.composite
def _modes(draw: st.DrawFn) -> dict[str, PriceRates | None]:
    return {
        mode: draw(st.none() | _rates().map(PriceRates.model_validate))
        for mode in ("batch", "flex", "priority")
    }


@st.composite
def _prices(draw: st.DrawFn) -> Price:
    thresholds = sorted(draw(st.lists(st.integers(1, 300_000), unique=True, max_size=3)))
    tiers = [PriceTier(above_input_tokens=above, **draw(_rates()), **draw(_modes())) for above in thresholds]
    return Price(**draw(_rates()), **draw(_modes()), tiers=tiers, local=draw(st.booleans()))


@st.composite
def _usages(draw: st.DrawFn) -> dict[str, Any]:
    output = draw(_TOKENS)
    mode: PriceMode = draw(st.sampled_from(["standard", "batch", "flex", "priority"]))
    return {
        "input_tokens": draw(_TOKENS),
        "output_tokens": output,
        "cache_read_input_tokens": draw(_TOKENS),
        "cache_creation_input_tokens": draw(_TOKENS),
        "reasoning_output_tokens": draw(st.integers(0, output)),
        "batch": mode == "batch",
        "service_tier": mode if mode in ("flex", "priority") else "standard",
        "cache_ttl": draw(st.sampled_from(["5m", "1h"])),
    }


@pytest.fixture
def connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=_prices(), usage=_usages())
def test_tl_cost_is_exactly_pricing_cost(
    connection: psycopg.Connection[Any], price: Price, usage: dict[str, Any]
) -> None:
    expected = cost(price, **usage)
    mode = "batch" if usage["batch"] else usage["service_tier"]
    whole_input = (
        usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    )
    row = connection.execute(
        "select tl_cost(%s, %s, %s, %s, %s, %s, %s, %s), tl_mode_published(%s, %s, %s)",
        (
            Jsonb(_catalog_price(price)),  # the price JSON the ledger passes to tl_check and tl_track
            usage["input_tokens"],
            usage["output_tokens"],
            usage["cache_read_input_tokens"],
            usage["cache_creation_input_tokens"],
            usage["reasoning_output_tokens"],
            mode,
            usage["cache_ttl"],
            Jsonb(_catalog_price(price)),
            mode,
            whole_input,
        ),
    ).fetchone()
    assert row is not None
    sql_cost, published = row
    assert sql_cost == expected.cost_usd
    if expected.priced:
        assert published == (expected.price_mode == mode)
