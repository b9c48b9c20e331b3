"""The catalog through the ledger on real PostgreSQL: usage costed at the price of its own time,
retired, hosted and local models answered normally, and a retired model through the MCP tools."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from mcp import Client

from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.types import BudgetSpec, CheckRequest, CountRequest, PriceSpec, Principal, TrackRequest

pytestmark = pytest.mark.anyio

MILLION = 1_000_000
RETIRED = "claude-3-5-haiku-20241022"  # last listed 2026-03-01, at $0.80 / $4 per million


async def test_usage_from_before_a_price_change_is_costed_at_the_old_price(ledger: Ledger) -> None:
    # gpt-3.5-turbo: $1.50 / $2 per million until litellm 1.77.7 (2025-10-05), $0.50 / $1.50 since.
    # Usage of last year comes in through an admin's import (direct usage goes back 7 days at most).
    before = await ledger.import_usage(
        TrackRequest(
            model="gpt-3.5-turbo",
            input_tokens=MILLION,
            output_tokens=MILLION,
            occurred_at=datetime(2025, 9, 15, 12, tzinfo=UTC),
        )
    )
    after = await ledger.track_usage(
        TrackRequest(model="gpt-3.5-turbo", input_tokens=MILLION, output_tokens=MILLION)
    )
    assert (before.cost_usd, after.cost_usd) == (Decimal("3.5"), Decimal("2"))
    rows = await ledger.store._fetch_rows(
        "select cost_usd from tl_usage where tenant_id = 'default' order by occurred_at", ()
    )
    assert [row["cost_usd"] for row in rows] == [Decimal("3.5"), Decimal("2")]  # as stored


async def test_a_tenant_override_still_wins_over_the_dated_catalog_price(ledger: Ledger) -> None:
    at = datetime(2025, 9, 15, 12, tzinfo=UTC)
    await ledger.set_price(
        PriceSpec(
            model="gpt-3.5-turbo",
            input=Decimal("0.000001"),
            output=Decimal("0.000001"),
            effective_from=at - timedelta(days=1),
        )
    )
    tracked = await ledger.import_usage(
        TrackRequest(model="gpt-3.5-turbo", input_tokens=MILLION, output_tokens=MILLION, occurred_at=at)
    )
    assert tracked.cost_usd == Decimal("2")


async def test_a_retired_model_counts_checks_and_tracks_with_a_warning(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="usd", unit="usd", limit=Decimal(10), period="day"))
    counted = await ledger.count_tokens(CountRequest(text="hello there", model=RETIRED))
    assert counted.tokens > 0 and counted.priced
    assert any("retired" in warning for warning in counted.warnings)

    check = await ledger.check_budget(CheckRequest(model=RETIRED, input_tokens=1000, max_output_tokens=500))
    assert check.allowed
    assert check.estimated_cost_usd == Decimal("0.0028")  # 1,000 x $0.80 + 500 x $4 per million
    assert any("retired" in warning for warning in check.warnings)

    tracked = await ledger.track_usage(
        TrackRequest(model=RETIRED, reservation_id=check.reservation_id, input_tokens=1000, output_tokens=100)
    )
    assert tracked.cost_usd == Decimal("0.0012")
    assert any("retired" in warning for warning in tracked.warnings)


async def test_hosted_names_are_tracked_at_the_hosts_price(ledger: Ledger) -> None:
    profile = "bedrock/eu.anthropic.claude-sonnet-4-5-20250929-v1:0"  # $3.30 / $16.50 per million
    # 100K input: below the 200K context tier, above which the whole request is billed at $6.60 / $24.75.
    tracked = await ledger.track_usage(TrackRequest(model=profile, input_tokens=100_000, output_tokens=0))
    assert tracked.cost_usd == Decimal("0.33")
    counted = await ledger.count_tokens(CountRequest(text="hello there", model="azure/gpt-4o"))
    assert (counted.method, counted.encoding) == ("exact", "o200k_base")


async def test_a_local_model_is_priced_zero_and_passes_a_spent_usd_budget(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="usd", unit="usd", limit=Decimal("2.5"), period="day"))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0))  # $2.50
    check = await ledger.check_budget(
        CheckRequest(model="ollama/llama3", input_tokens=1000, max_output_tokens=1000)
    )
    assert check.allowed and check.estimated_cost_usd == 0
    tracked = await ledger.track_usage(
        TrackRequest(
            model="ollama/llama3", reservation_id=check.reservation_id, input_tokens=900, output_tokens=50
        )
    )
    assert (tracked.cost_usd, tracked.priced) == (Decimal(0), True)


async def test_a_retired_model_through_the_mcp_tools(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        counted = await client.call_tool("count_tokens", {"text": "hello there", "model": RETIRED})
        assert not counted.is_error and counted.structured_content is not None
        assert any("retired" in w for w in counted.structured_content["warnings"])

        tracked = await client.call_tool(
            "track_usage", {"model": RETIRED, "input_tokens": MILLION, "output_tokens": MILLION}
        )
        assert not tracked.is_error and tracked.structured_content is not None
        assert Decimal(tracked.structured_content["cost_usd"]) == Decimal("4.8")
        assert any("retired" in w for w in tracked.structured_content["warnings"])

        prices = await client.call_tool("prices", {"action": "get", "model": RETIRED})
        assert prices.structured_content is not None
        model = prices.structured_content["models"][0]
        assert model["retired"] is True and model["last_listed"] == "2026-03-01"
        assert (model["price"]["input"], model["price"]["output"]) == ("0.0000008", "0.000004")
