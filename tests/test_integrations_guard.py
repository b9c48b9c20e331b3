"""`guard`, `SyncLedger` and `@metered` on real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from tests.provider_standin import ProviderStandin
from tokenledger.errors import BudgetExceeded, Conflict
from tokenledger.integrations import SyncLedger, Usage, guard, metered, usage_from
from tokenledger.ledger import Ledger
from tokenledger.types import MIN_TTL_SECONDS, BudgetSpec, CheckResult, CountRequest, UsageQuery

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a ledger?"}]


def budget(limit: int = 100_000, **fields: Any) -> BudgetSpec:
    return BudgetSpec(name="main", limit=Decimal(limit), period="day", priority_shares=None, **fields)


async def state(ledger: Ledger) -> tuple[Decimal, Decimal]:
    """The budget's (used, reserved)."""
    current = (await ledger.get_budget("main")).state
    return current.used, current.reserved


async def counted(ledger: Ledger, **request: Any) -> int:
    return (await ledger.count_tokens(CountRequest(model=MODEL, **request))).tokens


async def test_guard_reserves_then_settles_from_provider_usage(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 10},
    }
    async with guard(ledger, model=MODEL, messages=MESSAGES, max_output_tokens=500, user="ana") as grant:
        assert grant.input_tokens == await counted(ledger, messages=MESSAGES)
        assert grant.max_output_tokens == 500 and grant.reservation_id
        assert await state(ledger) == (0, grant.input_tokens + 500)
        tracked = await grant.settle(usage)
    assert (tracked.input_tokens, tracked.cache_read_input_tokens, tracked.output_tokens) == (100, 20, 40)
    assert tracked.reasoning_output_tokens == 10 and tracked.method == "provider"
    assert await state(ledger) == (160, 0)
    rows = await ledger.usage(UsageQuery(group_by=["user"]))
    assert [(r.keys["user"], r.total_tokens) for r in rows.rows] == [("ana", 160)]


async def test_denied_guard_raises_with_the_decision_and_makes_no_call(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=100))
    with ProviderStandin() as provider:
        ran = False
        with pytest.raises(BudgetExceeded, match="budget 'main' denied the call: limit") as denied:
            async with guard(ledger, model=MODEL, messages=MESSAGES, max_output_tokens=500):
                ran = True
                import httpx

                async with httpx.AsyncClient() as http:  # the call the guard protects
                    await http.post(f"{provider.openai_base_url}/chat/completions", json={})
        assert not ran and provider.requests == []
    decision = denied.value.decision
    assert isinstance(decision, CheckResult) and decision.decision == "deny"
    assert decision.blocked_by is not None and decision.blocked_by.budget == "main"
    assert await state(ledger) == (0, 0)


async def test_an_exception_inside_releases_the_reservation(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    with pytest.raises(RuntimeError, match="provider down"):
        async with guard(ledger, model=MODEL, text="hello", max_output_tokens=300) as grant:
            assert (await state(ledger))[1] > 0
            raise RuntimeError("provider down")
    assert grant.released is not None and grant.released.status == "released"
    assert await state(ledger) == (0, 0)


async def test_a_cancelled_body_releases_the_reservation(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    entered = anyio.Event()

    async def call() -> None:
        async with guard(ledger, model=MODEL, text="hello", max_output_tokens=300):
            entered.set()
            await anyio.sleep(30)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        await entered.wait()
        tasks.cancel_scope.cancel()
    assert await state(ledger) == (0, 0)


async def test_a_body_that_does_not_settle_is_charged_its_input_or_released(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with guard(ledger, model=MODEL, text="count me", max_output_tokens=300) as grant:
        pass
    assert grant.tracked is not None and grant.tracked.output_tokens == 0
    assert await state(ledger) == (await counted(ledger, text="count me"), 0)

    async with guard(ledger, model=MODEL, text="count me", max_output_tokens=300, on_exit="release"):
        pass
    assert await state(ledger) == (await counted(ledger, text="count me"), 0)


async def test_record_counts_texts_and_a_grant_settles_once(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with guard(ledger, model=MODEL, text="question", max_output_tokens=100) as grant:
        tracked = await grant.record(output_text="a short answer")
        with pytest.raises(Conflict, match="already settled"):
            await grant.record(output_tokens=1)
    expected_output = await counted(ledger, text="a short answer")
    assert (tracked.input_tokens, tracked.output_tokens) == (grant.input_tokens, expected_output)
    assert tracked.method == "exact"
    assert await state(ledger) == (grant.input_tokens + expected_output, 0)


async def test_a_partial_grant_lowers_max_output_tokens(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=1000))
    async with guard(
        ledger, model=MODEL, input_tokens=400, max_output_tokens=2000, allow_partial=True
    ) as grant:
        assert grant.check.decision == "partial" and grant.max_output_tokens == 600
        await grant.record(output_tokens=600)
    assert await state(ledger) == (1000, 0)


async def test_a_guarded_stream_longer_than_its_ttl_keeps_its_reservation(ledger: Ledger) -> None:
    """A stream from the provider stand-in outlasts the shortest TTL; calling keep_alive() as it flows
    extends the reservation each time half its TTL has passed, so the sweeper frees nothing of it and the
    settle finds it still active."""
    import httpx

    await ledger.set_budget(budget(limit=1000))
    with ProviderStandin() as provider:
        provider.behaviour.delay = 0.9  # 7 events: about 6.3 s, past the 5 s TTL
        async with guard(
            ledger, model=MODEL, messages=MESSAGES, max_output_tokens=300, ttl_seconds=MIN_TTL_SECONDS
        ) as grant:
            granted_until = grant.expires_at
            body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}}
            usage = None
            async with (
                httpx.AsyncClient(timeout=30) as http,
                http.stream("POST", f"{provider.openai_base_url}/chat/completions", json=body) as response,
            ):
                async for line in response.aiter_lines():
                    await grant.keep_alive()
                    if line.startswith("data: {") and '"usage"' in line:
                        usage = json.loads(line.removeprefix("data: "))["usage"]
            assert await ledger.expire_reservations() == 0
            assert await state(ledger) == (0, grant.input_tokens + 300)
            assert granted_until is not None and grant.expires_at is not None
            assert grant.expires_at > granted_until
            tracked = await grant.settle(usage)
    assert tracked.warnings == [] and await state(ledger) == (70, 0)


def test_usage_from_maps_each_providers_fields() -> None:
    openai_chat = SimpleNamespace(
        prompt_tokens=50,
        completion_tokens=20,
        prompt_tokens_details=SimpleNamespace(cached_tokens=30),
        completion_tokens_details=SimpleNamespace(reasoning_tokens=4),
    )
    assert usage_from(SimpleNamespace(usage=openai_chat)) == Usage(20, 20, 30, 0, 4)
    responses = {
        "input_tokens": 50,
        "output_tokens": 20,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 7},
    }
    assert usage_from(responses) == Usage(40, 20, 10, 0, 7)
    anthropic = {
        "input_tokens": 12,
        "output_tokens": 9,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": None,
    }
    assert usage_from(anthropic) == Usage(12, 9, 100, 0, 0)


# --- sync code ---------------------------------------------------------------------------------------


@pytest.fixture
def sync_ledger(dsn: str) -> Iterator[SyncLedger]:
    with SyncLedger.open(dsn=dsn, migrate=False) as opened:
        opened.set_budget(budget())
        yield opened


def sync_state(sync_ledger: SyncLedger) -> tuple[Decimal, Decimal]:
    current = sync_ledger.get_budget("main").state
    return current.used, current.reserved


def test_sync_guard_works_from_sync_code(sync_ledger: SyncLedger) -> None:
    with guard(sync_ledger, model=MODEL, messages=MESSAGES, max_output_tokens=200, user="ana") as grant:
        assert sync_state(sync_ledger) == (0, grant.input_tokens + 200)
        grant.settle({"input_tokens": 30, "output_tokens": 12})
    assert sync_state(sync_ledger) == (42, 0)

    with (
        pytest.raises(ValueError, match="bad reply"),
        sync_ledger.guard(model=MODEL, text="x", max_output_tokens=50),
    ):
        raise ValueError("bad reply")
    assert sync_state(sync_ledger) == (42, 0)

    with pytest.raises(BudgetExceeded), guard(sync_ledger, model=MODEL, input_tokens=200_000):
        pytest.fail("a denied guard never runs its body")


def test_metered_sync_function_counts_prompt_and_reply(sync_ledger: SyncLedger) -> None:
    @metered(sync_ledger, model=MODEL, max_output_tokens=100, feature="summaries")
    def summarize(prompt: str, *, style: str = "short") -> str:
        return "A ledger records who spent what."

    assert summarize("Summarize the ledger design.") == "A ledger records who spent what."
    tokens = sync_ledger.ledger.counter
    model = sync_ledger.ledger.catalog.resolve(MODEL)
    expected = (
        tokens.count_text("Summarize the ledger design.", model=model).tokens
        + tokens.count_text("A ledger records who spent what.", model=model).tokens
    )
    assert sync_state(sync_ledger) == (expected, 0)


def test_metered_sync_function_needs_a_sync_ledger() -> None:
    with pytest.raises(TypeError, match="needs a SyncLedger"):

        @metered(object(), model=MODEL)  # type: ignore[arg-type]
        def reply(prompt: str) -> str:
            return prompt


async def test_metered_async_function_counts_messages_and_reply(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    calls = []

    @metered(ledger, model=MODEL, max_output_tokens=100, user="ana")
    async def chat(messages: list[dict[str, str]], temperature: float = 0.2) -> str:
        calls.append(messages)
        return "Reply text."

    assert await chat(MESSAGES) == "Reply text."
    expected = await counted(ledger, messages=MESSAGES) + await counted(ledger, text="Reply text.")
    assert await state(ledger) == (expected, 0)

    @metered(ledger, model=MODEL, max_output_tokens=100)
    async def with_response(prompt: str) -> Any:
        return SimpleNamespace(usage={"input_tokens": 7, "output_tokens": 3})

    await with_response("hi")
    assert await state(ledger) == (expected + 10, 0)

    @metered(ledger, model=MODEL, max_output_tokens=100)
    async def failing(prompt: str) -> str:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await failing("hi")
    assert await state(ledger) == (expected + 10, 0)

    @metered(ledger, model=MODEL, max_output_tokens=200_000)
    async def too_big(prompt: str) -> str:
        calls.append("too big")
        return ""

    with pytest.raises(BudgetExceeded):
        await too_big("hi")
    assert calls == [MESSAGES]


async def test_async_guard_over_a_sync_ledger(dsn: str) -> None:
    sync_ledger = await anyio.to_thread.run_sync(lambda: SyncLedger.open(dsn=dsn, migrate=False))
    try:
        await anyio.to_thread.run_sync(sync_ledger.set_budget, budget())
        async with guard(sync_ledger, model=MODEL, input_tokens=10, max_output_tokens=10) as grant:
            await grant.record(output_tokens=4)
        used = await anyio.to_thread.run_sync(sync_state, sync_ledger)
        assert used == (14, 0)
    finally:
        await anyio.to_thread.run_sync(sync_ledger.close)
