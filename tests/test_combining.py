"""Group commit: concurrent calls of one process applied as one SQL call, each with its own answer.

The ledger tests all run through this path (it is the default); these tests pin what is particular to
it: calls made together share one batch, a refused request beside good ones fails alone, replays inside
and across batches count once, and a caller that leaves never fails the others in its batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import anyio
import pytest

from tokenledger.combining import Combiner
from tokenledger.errors import Conflict, InvalidInput, NotFound
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import (
    BudgetSpec,
    CheckRequest,
    CheckResult,
    TrackRequest,
    TrackResult,
    UsageQuery,
)

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"


async def together(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Start every call in the same loop turn; each one's result, or the exception it raised."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[index] = await call()
        except Exception as error:
            results[index] = error

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(run, index, call)
    return results


def check(ledger: Ledger, **fields: Any) -> Callable[[], Awaitable[CheckResult]]:
    request = CheckRequest(model=MODEL, **({"input_tokens": 10, "max_output_tokens": 10} | fields))
    return lambda: ledger.check_budget(request)


def track(ledger: Ledger, **fields: Any) -> Callable[[], Awaitable[TrackResult]]:
    request = TrackRequest(model=MODEL, **({"input_tokens": 10, "output_tokens": 5} | fields))
    return lambda: ledger.track_usage(request)


async def budget_g(ledger: Ledger) -> None:
    """Budget g, and the process's caches warm (the tenant's aliases, the model's entry): cold, each caller
    would await its own lookup and reach the combiner at its own moment. The warm-up reserves nothing."""
    await ledger.set_budget(BudgetSpec(name="g", limit=Decimal(10_000), period="total"))
    assert (await check(ledger, reserve=False)()).allowed


async def test_concurrent_checks_go_as_one_sql_call_and_a_lone_check_alone(
    ledger: Ledger, store: Store
) -> None:
    await budget_g(ledger)
    before = (store.checks.batches, store.checks.calls)
    results = await together(*(check(ledger) for _ in range(8)))
    assert all(isinstance(r, CheckResult) and r.allowed for r in results), results
    assert len({r.reservation_id for r in results}) == 8
    assert (store.checks.batches, store.checks.calls) == (before[0] + 1, before[1] + 8)

    assert (await check(ledger)()).allowed
    assert (store.checks.batches, store.checks.calls) == (before[0] + 2, before[1] + 9)
    assert (await ledger.get_budget("g")).state.reserved == 9 * 20


async def test_a_refused_settle_fails_alone_and_its_batch_commits(ledger: Ledger, store: Store) -> None:
    await budget_g(ledger)
    grants = await together(*(check(ledger) for _ in range(5)))
    settled_first = await track(ledger, reservation_id=grants[0].reservation_id)()
    missing = "00000000-0000-4000-8000-000000000000"
    before = store.tracks.batches

    results = await together(
        track(ledger, reservation_id=grants[1].reservation_id, input_tokens=11),
        track(ledger, reservation_id=grants[0].reservation_id),  # settled already
        track(ledger, reservation_id=grants[2].reservation_id, input_tokens=12),
        track(ledger, reservation_id=missing),
        track(ledger, reservation_id=grants[3].reservation_id, input_tokens=13),
        track(ledger, input_tokens=14),  # direct usage
    )

    assert store.tracks.batches == before + 1  # one batch; the store sent it again isolated
    good = [results[i] for i in (0, 2, 4, 5)]
    assert all(isinstance(r, TrackResult) for r in good), results
    assert [r.input_tokens for r in good] == [11, 12, 13, 14]
    assert isinstance(results[1], Conflict)
    assert f"reservation_id {grants[0].reservation_id}: already settled" in str(results[1])
    assert settled_first.usage_id in str(results[1])
    assert isinstance(results[3], NotFound)
    assert f"reservation_id {missing}: no such reservation" in str(results[3])
    state = (await ledger.get_budget("g")).state
    assert state.used == 15 + (11 + 5) + (12 + 5) + (13 + 5) + (14 + 5)  # nothing of the refused two
    assert state.reserved == 20  # grants[4] still held


async def test_a_value_json_cannot_carry_fails_its_caller_alone(ledger: Ledger, store: Store) -> None:
    before = store.tracks.calls
    results = await together(
        track(ledger, input_tokens=11),
        track(ledger, input_tokens=12, metadata={"score": float("nan")}),
        track(ledger, input_tokens=13),
    )
    assert [r.input_tokens for r in (results[0], results[2])] == [11, 13]
    assert isinstance(results[1], InvalidInput)
    assert "metadata" in str(results[1]) and "NaN" in str(results[1])
    assert store.tracks.calls == before + 2  # refused before it reached a batch
    rows = await ledger.usage(UsageQuery(since="1h"))
    assert rows.totals.input_tokens == 11 + 13


async def test_a_refused_check_fails_alone(ledger: Ledger, store: Store) -> None:
    await budget_g(ledger)
    first = await check(ledger, request_id="r-1")()
    before = store.checks.batches

    results = await together(
        check(ledger, request_id="r-2"),
        check(ledger, request_id="r-1", input_tokens=99),  # the same id for other content
        check(ledger),
    )

    assert store.checks.batches == before + 1
    assert isinstance(results[0], CheckResult) and results[0].allowed and not results[0].duplicate
    assert isinstance(results[1], Conflict)
    assert "request_id r-1 was already used for a different check_budget" in str(results[1])
    assert isinstance(results[2], CheckResult) and results[2].allowed
    assert first.allowed
    assert (await ledger.get_budget("g")).state.reserved == 3 * 20


async def test_replays_inside_one_batch_and_across_batches_count_once(ledger: Ledger, store: Store) -> None:
    await budget_g(ledger)
    before = store.checks.batches
    checks = await together(*(check(ledger, request_id="c-1") for _ in range(4)))
    assert store.checks.batches == before + 1
    assert [c.duplicate for c in checks].count(False) == 1
    assert len({c.reservation_id for c in checks}) == 1
    assert (await check(ledger, request_id="c-1")()).duplicate  # a later batch replays it too

    before = store.tracks.batches
    reservation = checks[0].reservation_id
    tracks = await together(*(track(ledger, reservation_id=reservation, request_id="t-1") for _ in range(4)))
    assert store.tracks.batches == before + 1
    assert [t.duplicate for t in tracks].count(False) == 1
    assert len({t.usage_id for t in tracks}) == 1
    again = await track(ledger, reservation_id=reservation, request_id="t-1")()
    assert again.duplicate and again.usage_id == tracks[0].usage_id

    state = (await ledger.get_budget("g")).state
    assert (state.used, state.reserved, state.requests) == (Decimal(15), Decimal(0), 1)


async def test_releases_go_together_and_a_refused_one_fails_alone(ledger: Ledger, store: Store) -> None:
    await budget_g(ledger)
    grants = await together(*(check(ledger) for _ in range(3)))
    await track(ledger, reservation_id=grants[0].reservation_id)()
    before = store.releases.batches

    results = await together(*(lambda g=g: ledger.release(g.reservation_id) for g in grants))

    assert store.releases.batches == before + 1
    assert isinstance(results[0], Conflict) and "already settled" in str(results[0])
    assert [r.status for r in results[1:]] == ["released", "released"]
    assert (await ledger.get_budget("g")).state.reserved == 0


# --- the combiner alone: who waits, who leads, who may leave ----------------------------------------


class Recorder:
    """A batch function that records its batches and holds each until told to finish."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = anyio.Event()

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]


async def test_calls_arriving_during_a_batch_form_the_next_one_and_get_their_own_outcomes() -> None:
    recorder = Recorder()
    combiner: Combiner[int, int] = Combiner(recorder, max_batch=3)
    results: dict[int, Any] = {}

    async def call(item: int) -> None:
        try:
            results[item] = await combiner.submit(item)
        except ValueError as error:
            results[item] = error

    async with anyio.create_task_group() as group:
        group.start_soon(call, 0)
        await anyio.wait_all_tasks_blocked()
        for item in range(1, 6):
            group.start_soon(call, item)
        await anyio.wait_all_tasks_blocked()
        assert recorder.batches == [[0]]  # a lone call goes at once; the others wait for it
        recorder.release.set()

    assert recorder.batches == [[0], [1, 2, 3], [4, 5]]  # arrival order, at most max_batch each
    assert {k: v for k, v in results.items() if not isinstance(v, ValueError)} == {0: 0, 2: 20, 4: 40}
    assert {k: str(v) for k, v in results.items() if isinstance(v, ValueError)} == {
        1: "odd 1",
        3: "odd 3",
        5: "odd 5",
    }


async def test_a_caller_that_leaves_fails_no_one_else() -> None:
    recorder = Recorder()
    combiner: Combiner[int, int] = Combiner(recorder, max_batch=8)
    results: dict[int, int] = {}

    async def call(item: int, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            results[item] = await combiner.submit(item)

    leader, queued = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(call, 0, leader)
        await anyio.wait_all_tasks_blocked()  # item 0 leads a running batch
        group.start_soon(call, 4)
        group.start_soon(call, 2, queued)
        group.start_soon(call, 6)
        await anyio.wait_all_tasks_blocked()
        leader.cancel()  # the leader's caller leaves: its batch must still finish
        queued.cancel()  # a queued caller leaves: it is never sent
        await anyio.wait_all_tasks_blocked()
        recorder.release.set()

    assert recorder.batches == [[0], [4, 6]]  # the leader's batch ran to its end; 2 was never sent
    assert (results[4], results[6], 2 in results) == (40, 60, False)


async def test_calls_that_arrive_together_are_shared_among_the_free_slots() -> None:
    recorder = Recorder()
    combiner: Combiner[int, int] = Combiner(recorder, max_batch=8, max_in_flight=2, min_share=1)
    results: dict[int, Any] = {}

    async def call(item: int) -> None:
        results[item] = await combiner.submit(item)

    async with anyio.create_task_group() as group:
        try:
            group.start_soon(call, 0)
            group.start_soon(call, 2)
            await anyio.wait_all_tasks_blocked()
            assert recorder.batches == [[0], [2]]  # two slots: two calls go at once, side by side
            for item in range(4, 16, 2):
                group.start_soon(call, item)
            await anyio.wait_all_tasks_blocked()
        finally:
            recorder.release.set()

    # Six queued behind two slots: shared, three to a batch, in arrival order (the last three again among
    # the two slots free by then).
    assert recorder.batches[:3] == [[0], [2], [4, 6, 8]]
    assert [item for batch in recorder.batches[3:] for item in batch] == [10, 12, 14]
    assert all(len(batch) <= 3 for batch in recorder.batches)
    assert results == {item: item * 10 for item in range(0, 16, 2)}


async def test_a_call_reads_only_the_budgets_that_match_it(ledger: Ledger, store: Store) -> None:
    """Matching a call to its budgets probes the scope index once per scope kind: it reads the budgets
    that match, never every budget of the tenant (a tenant with a budget per user made each check scan
    them all: 0.5 ms more per 1,000 budgets)."""
    for n in range(200):
        await ledger.set_budget(BudgetSpec(name=f"user-{n}", scope=f"user:u{n}", limit=Decimal(10**6)))
    await ledger.set_budget(BudgetSpec(name="team-a", scope="team:a", limit=Decimal(10**6)))
    async with store.pool.connection() as conn:
        await conn.execute("analyze tl_budget")
        # As the ledger's functions run it: a generic plan, the tenant and attribution parameters.
        await conn.execute("set plan_cache_mode = force_generic_plan")
        await conn.execute("prepare matching(text, jsonb) as select name from tl_matching_budgets($1, $2)")
        execute = 'execute matching(\'default\', \'{"user": "u7", "team": "a"}\')'
        cursor = await conn.execute(f"explain (analyze, format json) {execute}")
        row = await cursor.fetchone()
        matched = await conn.execute(execute)
        names = [r[0] for r in await matched.fetchall()]
    assert row is not None
    assert sorted(names) == ["team-a", "user-7"]

    def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
        return [plan, *(node for child in plan.get("Plans", []) for node in nodes(child))]

    scans = [node for node in nodes(row[0][0]["Plan"]) if node.get("Relation Name") == "tl_budget"]
    assert scans and all(node["Node Type"] == "Index Scan" for node in scans), scans
    assert sum(node["Actual Rows"] for node in scans) == 2
    assert (
        sum(
            node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
            for node in scans
        )
        == 0
    )
