"""Benchmark: the time `guard` adds around a model call (reserve + settle), against the bare call.

    python bench/integrations.py [--calls 400] [--concurrency 16] [--seconds 60]

The "call" is a no-op coroutine, so the guarded time is all ledger: one `check_budget` (reserve)
and one `track_usage` (settle), each one SQL function call on PostgreSQL; the same two calls made
by hand show what is the ledger's and what is the guard's own. Runs on its own embedded
PostgreSQL in a temporary directory, stopped at the end; every phase stops at its sample count or
when the time budget runs out, whichever comes first. Medians, in microseconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import anyio

from tokenledger.integrations import guard
from tokenledger.ledger import Ledger
from tokenledger.store import start_embedded, stop_embedded
from tokenledger.types import (
    BudgetSpec,
    CheckRequest,
    CheckResult,
    Principal,
    ReleaseResult,
    TrackRequest,
    TrackResult,
)

MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in one paragraph."},
    {"role": "user", "content": "Explain why a two-phase reservation prevents overspending a budget. " * 3},
]


async def no_op_call() -> str:
    """The model call stand-in: returns at once."""
    await anyio.lowlevel.checkpoint()
    return "done"


class InstantLedger:
    """A ledger that answers every call at once with a fixed result: isolates the guard's own cost."""

    def __init__(self, check: CheckResult, tracked: TrackResult) -> None:
        self.check, self.tracked = check, tracked

    async def check_budget(self, request: CheckRequest, principal: Principal | None = None) -> CheckResult:
        return self.check

    async def track_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult:
        return self.tracked

    async def release(self, reservation_id: str, principal: Principal | None = None) -> ReleaseResult:
        return ReleaseResult(reservation_id=reservation_id, status="released")


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def interleaved(
    runs: list[Callable[[], Awaitable[object]]], calls: int, deadline: float
) -> list[list[float]]:
    """Seconds of up to `calls` runs of each, taken in turns (rotating who goes first) so that drift
    in the machine's load falls on every variant alike; stops at the deadline."""
    times: list[list[float]] = [[] for _ in runs]
    for sample in range(calls):
        if time.monotonic() > deadline:
            break
        for offset in range(len(runs)):
            index = (sample + offset) % len(runs)
            started = time.perf_counter()
            await runs[index]()
            times[index].append(time.perf_counter() - started)
    return times


async def bench(dsn: str, options: argparse.Namespace) -> None:
    deadline = time.monotonic() + options.seconds
    async with await Ledger.open(dsn=dsn) as ledger:
        await ledger.set_budget(
            BudgetSpec(name="bench", limit=Decimal(10**11), period="day", priority_shares=None)
        )

        async def bare() -> None:
            await no_op_call()

        async def guarded_counts() -> None:
            async with guard(
                ledger, model=MODEL, input_tokens=120, max_output_tokens=300, user="bench"
            ) as grant:
                await no_op_call()
                await grant.record(output_tokens=80)

        async def ledger_directly() -> None:
            check = await ledger.check_budget(
                CheckRequest(model=MODEL, input_tokens=120, max_output_tokens=300, user="bench")
            )
            await no_op_call()
            await ledger.track_usage(
                TrackRequest(
                    model=MODEL,
                    reservation_id=check.reservation_id,
                    input_tokens=120,
                    output_tokens=80,
                    user="bench",
                )
            )

        async def guarded_messages() -> None:
            async with guard(
                ledger, model=MODEL, messages=MESSAGES, max_output_tokens=300, user="bench"
            ) as grant:
                await no_op_call()
                await grant.settle({"prompt_tokens": 120, "completion_tokens": 80})

        # The guard's own Python cost: the same guard over a ledger that answers at once.
        allowed = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1, reserve=False))
        tracked = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1, output_tokens=1))
        instant = InstantLedger(allowed.model_copy(update={"reservation_id": None}), tracked)

        async def guarded_instant() -> None:
            async with guard(
                instant, model=MODEL, input_tokens=120, max_output_tokens=300, user="bench"
            ) as grant:
                await no_op_call()
                await grant.record(output_tokens=80)

        variants = {
            "bare no-op call": bare,
            "check_budget + track_usage by hand": ledger_directly,
            "guard, input_tokens given": guarded_counts,
            "guard, messages counted (exact)": guarded_messages,
            "guard over an instant in-memory ledger": guarded_instant,
        }
        await interleaved(list(variants.values()), 20, deadline)  # warm up: pool, caches, encodings
        measured = await interleaved(list(variants.values()), options.calls, deadline)
        rows = list(zip(variants, measured, strict=True))

        concurrent_calls = 0
        window = min(5.0, max(0.5, deadline - time.monotonic()))
        stop_at = time.monotonic() + window

        async def worker() -> None:
            nonlocal concurrent_calls
            while time.monotonic() < stop_at:
                await guarded_counts()
                concurrent_calls += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for _ in range(options.concurrency):
                tasks.start_soon(worker)
        elapsed = time.perf_counter() - started

    bare_us = median_us(rows[0][1])
    print(f"{'call':40} {'n':>5} {'median µs':>10} {'p90 µs':>9} {'added µs':>9} {'ratio':>9}")
    for name, times in rows:
        med = median_us(times)
        p90 = statistics.quantiles(times, n=10)[-1] * 1e6 if len(times) >= 10 else float("nan")
        print(f"{name:40} {len(times):5d} {med:10.1f} {p90:9.1f} {med - bare_us:9.1f} {med / bare_us:8.0f}x")
    added_ms = (median_us(rows[2][1]) - bare_us) / 1000
    own_us = median_us(rows[4][1]) - bare_us
    print(f"the guard's own Python cost (instant ledger): {own_us:.0f} µs; the rest is the two ledger calls")
    print(
        f"added per call: {added_ms:.2f} ms, i.e. {added_ms / 500 * 100:.2f} % of a 500 ms model call, "
        f"{added_ms / 2000 * 100:.2f} % of a 2 s one"
    )
    print(
        f"{options.concurrency} concurrent guarded calls: {concurrent_calls / elapsed:,.0f} calls/s "
        f"over {elapsed:.1f} s (one process, one hot budget row)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=400, help="samples per sequential phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60, help="time budget for the whole run")
    options = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-"))
    try:
        started = time.perf_counter()
        dsn = start_embedded(home, keep_running=False)
        print(f"embedded PostgreSQL up in {time.perf_counter() - started:.2f} s")
        anyio.run(bench, dsn, options)
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
