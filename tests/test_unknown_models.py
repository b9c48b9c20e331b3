"""A model the catalog does not know never breaks a call and never loses usage: counted by the best rule
its name allows, recorded unpriced with a warning naming it; token budgets apply, USD budgets apply their
unpriced_policy; count, fit, the MCP tools, the SDK wrappers and the guard all let it through."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pydantic
import pytest
from mcp import Client

from tests.provider_standin import ProviderStandin
from tokenledger.errors import InvalidInput
from tokenledger.integrations import guard
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.pricefile import read_price_file
from tokenledger.types import (
    MAX_TOKENS,
    BudgetSpec,
    CheckRequest,
    CountRequest,
    FitRequest,
    PriceSpec,
    Principal,
    TrackRequest,
)

pytestmark = pytest.mark.anyio

MILLION = 1_000_000
UNKNOWN = "acme-reasoner-9000"  # a name no rule recognises: the `other` estimate, o200k_base x 1.30
TEXT = "The ledger records every call, whatever model made it."
MESSAGES = [{"role": "user", "content": "What is a ledger?"}]


def other_estimate(ledger: Ledger, text: str) -> int:
    return math.ceil(ledger.counter.count_text(text, encoding="o200k_base").tokens * 1.30)


async def usage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    return await ledger.store._fetch_rows(
        "select model, provider, input_tokens, output_tokens, cost_usd, method from tl_usage"
        " order by recorded_at",
        (),
    )


def names_the_model(warnings: list[str], model: str = UNKNOWN) -> bool:
    return any(warning.startswith(f"{model} is not in the catalog") for warning in warnings)


async def test_track_usage_of_an_unknown_model_records_it_estimated_and_unpriced(ledger: Ledger) -> None:
    tracked = await ledger.track_usage(TrackRequest(model=UNKNOWN, input_text=TEXT, output_text="Yes."))
    assert tracked.input_tokens == other_estimate(ledger, TEXT)
    assert tracked.output_tokens == other_estimate(ledger, "Yes.")
    assert (tracked.method, tracked.cost_usd, tracked.priced) == ("estimate", None, False)
    assert names_the_model(tracked.warnings)
    assert f"model {UNKNOWN} is unpriced: its cost is unknown, not $0" in tracked.warnings
    reported = await ledger.track_usage(TrackRequest(model=UNKNOWN, input_tokens=10, output_tokens=5))
    assert reported.method == "provider" and reported.cost_usd is None
    assert await usage_rows(ledger) == [
        {
            "model": UNKNOWN,
            "provider": "unknown",
            "input_tokens": tracked.input_tokens,
            "output_tokens": tracked.output_tokens,
            "cost_usd": None,
            "method": "estimate",
        },
        {
            "model": UNKNOWN,
            "provider": "unknown",
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": None,
            "method": "provider",
        },
    ]


async def test_an_unknown_name_counts_by_the_rule_its_name_shows(ledger: Ledger) -> None:
    # tiktoken lists every gpt-4o-* name as o200k_base: exact, though the catalog lists no such model.
    exact = await ledger.count_tokens(CountRequest(text=TEXT, model="gpt-4o-acme-finetune"))
    assert (exact.method, exact.tokens) == (
        "exact",
        ledger.counter.count_text(TEXT, encoding="o200k_base").tokens,
    )
    # A Claude name is a Claude estimate (x1.70 for unversioned names: the newest tokenizer).
    claude = await ledger.count_tokens(CountRequest(text=TEXT, model="anthropic/claude-next-preview"))
    o200k = ledger.counter.count_text(TEXT, encoding="o200k_base").tokens
    assert (claude.method, claude.tokens) == ("estimate", math.ceil(o200k * 1.70))
    assert names_the_model(claude.warnings, "anthropic/claude-next-preview")


async def test_count_tokens_of_an_unknown_model_is_an_estimate_with_a_warning(ledger: Ledger) -> None:
    counted = await ledger.count_tokens(CountRequest(text=TEXT, model=UNKNOWN, max_output_tokens=100))
    assert (counted.tokens, counted.method, counted.encoding) == (
        other_estimate(ledger, TEXT),
        "estimate",
        "o200k_base",
    )
    assert (counted.priced, counted.estimated_cost_usd, counted.context_window) == (False, None, None)
    assert names_the_model(counted.warnings)


async def test_a_typo_is_recorded_and_its_warning_names_the_closest_known_models(ledger: Ledger) -> None:
    tracked = await ledger.track_usage(TrackRequest(model="gpt-4oo", input_tokens=1, output_tokens=1))
    assert any(
        w.startswith("gpt-4oo is not in the catalog (closest known: gpt-4o,") for w in tracked.warnings
    )


async def test_check_budget_applies_token_budgets_to_an_unknown_model(ledger: Ledger) -> None:
    await ledger.set_budget(
        BudgetSpec(name="tokens", limit=Decimal(1_000), period="day", priority_shares=None)
    )
    allowed = await ledger.check_budget(CheckRequest(model=UNKNOWN, text=TEXT, max_output_tokens=100))
    assert allowed.allowed and allowed.input_tokens == other_estimate(ledger, TEXT)
    assert allowed.method == "estimate" and names_the_model(allowed.warnings)
    assert (await ledger.get_budget("tokens")).state.reserved == allowed.input_tokens + 100
    denied = await ledger.check_budget(CheckRequest(model=UNKNOWN, input_tokens=900, max_output_tokens=100))
    assert not denied.allowed and denied.blocked_by is not None and denied.blocked_by.reason == "limit"


async def test_usd_budgets_meet_an_unknown_model_with_their_unpriced_policy(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="usd", unit="usd", limit=Decimal(10), period="day"))
    denied = await ledger.check_budget(CheckRequest(model=UNKNOWN, input_tokens=10, max_output_tokens=10))
    assert not denied.allowed  # money fails closed by default ...
    assert denied.blocked_by is not None and denied.blocked_by.reason == "unpriced_model"
    # ... records never do: the call's usage is recorded all the same, outside the USD budget.
    tracked = await ledger.track_usage(TrackRequest(model=UNKNOWN, input_tokens=10, output_tokens=10))
    assert tracked.cost_usd is None and "USD budget usd did not count this unpriced usage" in tracked.warnings
    assert len(await usage_rows(ledger)) == 1

    await ledger.set_budget(
        BudgetSpec(name="usd", unit="usd", limit=Decimal(10), period="day", unpriced_policy="allow")
    )
    allowed = await ledger.check_budget(CheckRequest(model=UNKNOWN, input_tokens=10, max_output_tokens=10))
    assert allowed.allowed
    assert (
        f"model {UNKNOWN} has no price: USD budget usd allows it by policy, its cost is not counted"
        in allowed.warnings
    )


async def test_a_tenant_price_prices_an_unknown_model(ledger: Ledger) -> None:
    await ledger.set_price(PriceSpec(model=UNKNOWN, input=Decimal("0.000001"), output=Decimal("0.000002")))
    tracked = await ledger.track_usage(TrackRequest(model=UNKNOWN, input_tokens=1_000, output_tokens=1_000))
    assert tracked.cost_usd == Decimal("0.003") and tracked.priced
    info = await ledger.get_price(UNKNOWN)
    assert (info.source, info.count_method, info.estimate_factor) == ("tenant override", "estimate", 1.3)


async def test_a_catalog_update_that_lists_an_unknown_model_prices_it_at_once(ledger: Ledger) -> None:
    usage = TrackRequest(model="acme-reasoner-9000", input_tokens=MILLION, output_tokens=0)
    assert (await ledger.track_usage(usage)).cost_usd is None  # unknown, and remembered as such
    newer = {
        "acme-reasoner-9000": {
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": "0.000002",
            "output_cost_per_token": "0.000008",
        }
    }
    await ledger.update_catalog(read_price_file(json.dumps(newer).encode(), "prices.json"), actor="op")
    tracked = await ledger.track_usage(usage)
    assert tracked.cost_usd == Decimal(2) and not names_the_model(tracked.warnings)


async def test_fit_messages_of_an_unknown_model_needs_its_context_window(ledger: Ledger) -> None:
    long = [{"role": "user", "content": "word " * 400}, *MESSAGES]
    with pytest.raises(InvalidInput) as refused:
        await ledger.fit_messages(FitRequest(model=UNKNOWN, messages=long))  # type: ignore[arg-type]
    assert refused.value.field == "context_window"
    fitted = await ledger.fit_messages(FitRequest(model=UNKNOWN, messages=long, context_window=200))  # type: ignore[arg-type]
    assert (fitted.dropped, fitted.context_window, fitted.fits, fitted.method) == (1, 200, True, "estimate")
    assert names_the_model(fitted.warnings)


async def test_fit_messages_fits_a_known_model_into_a_smaller_window(ledger: Ledger) -> None:
    long = [{"role": "user", "content": "word " * 400}, *MESSAGES]
    full = await ledger.fit_messages(FitRequest(model="gpt-4o", messages=long))  # type: ignore[arg-type]
    assert (full.context_window, full.dropped) == (128_000, 0)
    small = await ledger.fit_messages(FitRequest(model="gpt-4o", messages=long, context_window=100))  # type: ignore[arg-type]
    assert (small.context_window, small.dropped, small.fits) == (100, 1, True)


@pytest.mark.parametrize("window", [0, MAX_TOKENS + 1])
def test_the_context_window_to_fit_into_is_bounded(window: int) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        FitRequest(model=UNKNOWN, messages=MESSAGES, context_window=window)  # type: ignore[arg-type]
    assert refused.value.errors()[0]["loc"] == ("context_window",)
    FitRequest(model=UNKNOWN, messages=MESSAGES, context_window=MAX_TOKENS)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["x" * 201, "bad\x00name", "tab\there", "   "])
def test_an_unknown_name_is_still_validated_as_stored_text(model: str) -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        TrackRequest(model=model, input_tokens=1, output_tokens=1)
    assert refused.value.errors()[0]["loc"] == ("model",)
    TrackRequest(model="x" * 200, input_tokens=1, output_tokens=1)


async def test_the_mcp_tools_record_an_unknown_model(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        tracked = await client.call_tool(
            "track_usage", {"model": UNKNOWN, "input_tokens": 7, "output_tokens": 3}
        )
        assert not tracked.is_error and tracked.structured_content is not None
        assert tracked.structured_content["cost_usd"] is None
        assert names_the_model(tracked.structured_content["warnings"])
        counted = await client.call_tool("count_tokens", {"model": UNKNOWN, "text": TEXT})
        assert not counted.is_error and counted.structured_content is not None
        assert counted.structured_content["method"] == "estimate"
    assert [row["input_tokens"] for row in await usage_rows(ledger)] == [7]


# --- the SDK wrappers and the guard ------------------------------------------------------------------

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from tokenledger.integrations.anthropic import wrap_anthropic  # noqa: E402
from tokenledger.integrations.openai import wrap_openai  # noqa: E402


async def test_a_wrapped_openai_call_of_an_unknown_model_succeeds_and_is_recorded(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    await ledger.set_budget(
        BudgetSpec(name="tokens", limit=Decimal(100_000), period="day", priority_shares=None)
    )
    client = wrap_openai(clients["openai"], ledger, user="ana")
    completion = await client.chat.completions.create(
        model="my-gateway/llama-70b", messages=MESSAGES, max_tokens=50
    )
    assert completion.choices[0].message.content == provider.behaviour.text
    assert provider.requests[0].body["model"] == "my-gateway/llama-70b"
    # The stand-in reports prompt 40 (8 cached) and completion 30: recorded as reported, unpriced.
    assert await usage_rows(ledger) == [
        {
            "model": "my-gateway/llama-70b",
            "provider": "openai",
            "input_tokens": 32,
            "output_tokens": 30,
            "cost_usd": None,
            "method": "provider",
        }
    ]
    state = (await ledger.get_budget("tokens")).state
    assert (state.used, state.reserved) == (70, 0)


async def test_a_wrapped_anthropic_call_of_an_unknown_model_succeeds_and_is_recorded(
    ledger: Ledger, provider: ProviderStandin, clients: dict[str, Any]
) -> None:
    client = wrap_anthropic(clients["anthropic"], ledger)
    message = await client.messages.create(model="claude-internal-canary", messages=MESSAGES, max_tokens=50)
    assert message.content[0].text == provider.behaviour.text
    [row] = await usage_rows(ledger)
    assert (row["model"], row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (
        "claude-internal-canary",
        25,
        18,
        None,
    )


async def test_the_guard_lets_an_unknown_model_through_and_records_it(ledger: Ledger) -> None:
    async with guard(ledger, model=UNKNOWN, messages=MESSAGES, max_output_tokens=100) as grant:
        assert grant.reservation_id is not None
        tracked = await grant.settle({"prompt_tokens": 12, "completion_tokens": 4})
    assert (tracked.input_tokens, tracked.output_tokens, tracked.cost_usd) == (12, 4, None)
    assert names_the_model(tracked.warnings)
