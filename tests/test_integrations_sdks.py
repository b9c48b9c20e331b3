"""`wrap_openai` and `wrap_anthropic`: the real SDKs against a provider stand-in, on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.provider_standin import ProviderStandin
from tokenledger.errors import BudgetExceeded
from tokenledger.integrations import SyncLedger
from tokenledger.ledger import Ledger
from tokenledger.types import MIN_TTL_SECONDS, BudgetSpec, CountRequest, UsageQuery

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

from tokenledger.integrations.anthropic import wrap_anthropic  # noqa: E402
from tokenledger.integrations.openai import wrap_openai  # noqa: E402

pytestmark = pytest.mark.anyio

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a ledger?"}]


def budget(limit: int = 100_000) -> BudgetSpec:
    return BudgetSpec(name="main", limit=Decimal(limit), period="day", priority_shares=None)


async def state(ledger: Ledger) -> tuple[Decimal, Decimal]:
    current = (await ledger.get_budget("main")).state
    return current.used, current.reserved


async def count(ledger: Ledger, model: str, **request: Any) -> int:
    return (await ledger.count_tokens(CountRequest(model=model, **request))).tokens


@pytest.fixture
def async_openai(clients: dict[str, Any], ledger: Ledger) -> Callable[..., Any]:
    return lambda **options: wrap_openai(clients["openai"], ledger, **options)


@pytest.fixture
def async_anthropic(clients: dict[str, Any], ledger: Ledger) -> Callable[..., Any]:
    return lambda **options: wrap_anthropic(clients["anthropic"], ledger, **options)


# --- OpenAI ------------------------------------------------------------------------------------------


async def test_openai_completion_is_tracked_with_reported_usage(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_openai(user="ana", feature="chat")
    completion = await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200)
    assert completion.choices[0].message.content == provider.behaviour.text
    assert await state(ledger) == (70, 0)  # prompt 40 (8 cached) + completion 30
    totals = (await ledger.usage(UsageQuery(user="ana", feature="chat"))).totals
    assert (totals.input_tokens, totals.cache_read_input_tokens) == (32, 8)
    assert (totals.output_tokens, totals.reasoning_output_tokens) == (30, 5)
    assert provider.requests[0].body["max_tokens"] == 200


async def test_openai_denied_check_makes_no_provider_call(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget(limit=300))
    client = async_openai()
    with pytest.raises(BudgetExceeded) as denied:
        await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=1000)
    assert denied.value.decision.decision == "deny"  # type: ignore[attr-defined]
    with pytest.raises(BudgetExceeded):
        await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=1000, stream=True)
    assert provider.requests == []
    assert await state(ledger) == (0, 0)


async def test_openai_stream_settles_from_the_usage_chunk(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_openai()
    stream = await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200, stream=True)
    received = [chunk async for chunk in stream]
    # The usage chunk was asked for on our behalf, so the consumer does not see it.
    assert all(chunk.choices for chunk in received)
    assert "".join(c.choices[0].delta.content or "" for c in received) == provider.behaviour.text
    assert provider.requests[0].body["stream_options"] == {"include_usage": True}
    assert await state(ledger) == (70, 0)

    stream = await client.chat.completions.create(
        model=GPT, messages=MESSAGES, max_tokens=200, stream=True, stream_options={"include_usage": True}
    )
    received = [chunk async for chunk in stream]
    assert received[-1].usage.prompt_tokens == 40  # asked for by the caller: passed on
    assert await state(ledger) == (140, 0)


async def test_a_long_openai_stream_extends_its_reservation(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    """A stream that outlasts the shortest TTL: the wrapper extends the reservation as events arrive,
    so it is still active when the stream settles it (no expiry, no warning)."""
    await ledger.set_budget(budget())
    provider.behaviour.delay = 0.9  # 7 events: about 6.3 s, past the 5 s TTL
    client = async_openai(ttl_seconds=MIN_TTL_SECONDS)
    stream = await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200, stream=True)
    async with stream:
        received = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in received) == provider.behaviour.text
    tracked = stream.grant.tracked
    assert tracked is not None and tracked.warnings == []
    rows = await ledger.store._fetch_rows("select status from tl_reservation", ())
    assert rows == [{"status": "settled"}] and await state(ledger) == (70, 0)


async def test_openai_stream_cut_after_three_chunks_settles_what_was_used(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_openai()
    stream = await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200, stream=True)
    texts = []
    async with stream:
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content)
            if len(texts) == 3:
                break
    expected = await count(ledger, GPT, messages=MESSAGES) + await count(ledger, GPT, text="".join(texts))
    assert await state(ledger) == (expected, 0)
    assert stream.grant.tracked.output_tokens == await count(ledger, GPT, text="".join(texts))


async def test_openai_dropped_stream_settles_what_was_received(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    provider.behaviour.drop_after = 2
    client = async_openai()
    stream = await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200, stream=True)
    texts = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content)
    assert texts == provider.behaviour.pieces[:2]
    expected = await count(ledger, GPT, messages=MESSAGES) + await count(ledger, GPT, text="".join(texts))
    assert await state(ledger) == (expected, 0)
    rows = await ledger.usage(UsageQuery())
    assert rows.totals.errors == 1


async def test_openai_provider_error_releases_the_reservation(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    provider.behaviour.status = 500
    client = async_openai()
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=200)
    assert len(provider.requests) == 1
    assert await state(ledger) == (0, 0)


async def test_openai_partial_grant_lowers_max_tokens(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget(limit=500))
    client = async_openai(allow_partial=True)
    await client.chat.completions.create(model=GPT, messages=MESSAGES, max_completion_tokens=4000)
    asked = provider.requests[0].body["max_completion_tokens"]
    assert asked == 500 - await count(ledger, GPT, messages=MESSAGES)


async def test_openai_with_attribution_copies_the_client(
    ledger: Ledger, provider: ProviderStandin, async_openai: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_openai(project="web")
    await client.with_attribution(user="bo").chat.completions.create(
        model=GPT, messages=MESSAGES, max_tokens=9
    )
    rows = (await ledger.usage(UsageQuery(group_by=["project", "user"]))).rows
    assert [(r.keys["project"], r.keys["user"]) for r in rows] == [("web", "bo")]
    assert client.base_url == provider.openai_base_url + "/"  # everything else is the client's own


@pytest.fixture
def sync_ledger(dsn: str) -> Iterator[SyncLedger]:
    with SyncLedger.open(dsn=dsn, migrate=False) as opened:
        opened.set_budget(budget())
        yield opened


def test_openai_sync_client_stream_broken_after_three_chunks(
    sync_ledger: SyncLedger, provider: ProviderStandin
) -> None:
    raw = openai.OpenAI(base_url=provider.openai_base_url, api_key="t", max_retries=0)
    client = wrap_openai(raw, sync_ledger)
    completion = client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=100)
    assert completion.usage.total_tokens == 70
    stream = client.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=100, stream=True)
    texts = []
    for chunk in stream:
        texts.append(chunk.choices[0].delta.content)
        if len(texts) == 3:
            break  # no close(): leaving the loop settles it
    model = sync_ledger.ledger.catalog.resolve(GPT)
    counter = sync_ledger.ledger.counter
    expected = (
        counter.count_messages(MESSAGES, model=model).tokens
        + counter.count_text("".join(texts), model=model).tokens
    )
    state = sync_ledger.get_budget("main").state
    assert (state.used, state.reserved) == (70 + expected, 0)
    raw.close()


def test_sync_client_needs_a_sync_ledger(provider: ProviderStandin) -> None:
    with openai.OpenAI(base_url=provider.openai_base_url, api_key="t") as raw, pytest.raises(TypeError):
        wrap_openai(raw, object())  # type: ignore[arg-type]


# --- Anthropic ---------------------------------------------------------------------------------------


async def test_anthropic_message_is_tracked_one_to_one(
    ledger: Ledger, provider: ProviderStandin, async_anthropic: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_anthropic(user="ana")
    message = await client.messages.create(
        model=CLAUDE, max_tokens=300, system="Be brief.", messages=MESSAGES[1:]
    )
    assert message.content[0].text == provider.behaviour.text
    totals = (await ledger.usage(UsageQuery(user="ana"))).totals
    assert (totals.input_tokens, totals.cache_read_input_tokens, totals.cache_creation_input_tokens) == (
        25,
        6,
        4,
    )
    assert totals.output_tokens == 18
    assert await state(ledger) == (53, 0)


async def test_anthropic_denied_check_makes_no_provider_call(
    ledger: Ledger, provider: ProviderStandin, async_anthropic: Any
) -> None:
    await ledger.set_budget(budget(limit=100))
    client = async_anthropic()
    with pytest.raises(BudgetExceeded):
        await client.messages.create(model=CLAUDE, max_tokens=300, messages=MESSAGES[1:], stream=True)
    assert provider.requests == []


async def test_anthropic_stream_settles_from_message_delta(
    ledger: Ledger, provider: ProviderStandin, async_anthropic: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_anthropic()
    stream = await client.messages.create(model=CLAUDE, max_tokens=300, messages=MESSAGES[1:], stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert await state(ledger) == (53, 0)


async def test_anthropic_stream_cut_after_three_deltas(
    ledger: Ledger, provider: ProviderStandin, async_anthropic: Any
) -> None:
    await ledger.set_budget(budget())
    client = async_anthropic()
    stream = await client.messages.create(model=CLAUDE, max_tokens=300, messages=MESSAGES[1:], stream=True)
    texts = []
    async for event in stream:
        if event.type == "content_block_delta":
            texts.append(event.delta.text)
            if len(texts) == 3:
                break
    await stream.close()
    # The input message_start reported (25 + 6 cache read + 4 cache write), the output text counted.
    output = await count(ledger, CLAUDE, text="".join(texts))
    assert stream.grant.tracked.method == "estimate"
    assert await state(ledger) == (35 + output, 0)


def test_anthropic_sync_client(sync_ledger: SyncLedger, provider: ProviderStandin) -> None:
    raw = anthropic.Anthropic(base_url=provider.anthropic_base_url, api_key="t", max_retries=0)
    client = wrap_anthropic(raw, sync_ledger)
    client.messages.create(model=CLAUDE, max_tokens=100, messages=MESSAGES[1:])
    with client.messages.create(model=CLAUDE, max_tokens=100, messages=MESSAGES[1:], stream=True) as stream:
        assert [e.type for e in stream][-1] == "message_stop"
    state = sync_ledger.get_budget("main").state
    assert (state.used, state.reserved) == (106, 0)
    raw.close()
