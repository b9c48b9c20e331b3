"""Benchmark: reserve + settle through the Ledger against a bare conditional UPDATE, same clients, same run.

Run: python bench/ledger.py [--seconds 4] [--clients 1,16,64]

It starts its own embedded PostgreSQL in a temporary directory and stops it at the end. For each
client count (asyncio tasks over one Store pool sized to the clients, at most 64 connections) it
measures four workloads for `--seconds` each, after a short warm-up:

- `bare spread`: `UPDATE counters SET used = used + n WHERE id = $1 AND used + n <= lim RETURNING used`
  on 1,000 rows, each request on the next row;
- `bare hot`: the same statement on one row;
- `ledger spread`: `check_budget` (reserve) then `track_usage` (settle) as one op, each op on a
  different one of 1,000 budgets (scope `user:uN`, attribution `user uN`);
- `ledger hot`: the same on one budget every request matches.

It prints a markdown table (ops/s, p50 and p99 latency, ratio to the bare statement of the same shape)
and the share of the bare statement's throughput that spread reserve + settle reaches (goal: >= 60 %).
One reserve + settle pair counts as one op; `calls/s` counts each ledger call.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import anyio
import psycopg

from tokenledger.ledger import Ledger
from tokenledger.store import Store, start_embedded, stop_embedded
from tokenledger.types import BudgetSpec, CheckRequest, TrackRequest

MODEL = "gpt-4o-mini"
BUDGETS = 1000
MAX_POOL = 64  # the embedded server allows 100 connections; leave room for the rest
WARMUP_SECONDS = 0.5
HUGE = Decimal(10) ** 15  # budgets and counters that never run out: we measure the path, not denials


@dataclass
class Cell:
    clients: int
    workload: str
    ops: int
    seconds: float
    latencies: list[float]  # seconds per op

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds

    def percentile(self, q: int) -> float:
        """The q-th percentile latency in milliseconds."""
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_cell(
    clients: int, seconds: float, op: Callable[[int], Awaitable[None]]
) -> tuple[int, float, list[float]]:
    """Run `op(n)` from `clients` concurrent tasks for `seconds`; return ops, elapsed time and latencies."""
    counter = itertools.count()
    latencies: list[float] = []
    deadline = 0.0

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await op(next(counter))
            latencies.append(time.perf_counter() - started)

    for phase_seconds, keep in ((WARMUP_SECONDS, False), (seconds, True)):
        latencies = []
        began = time.perf_counter()
        deadline = began + phase_seconds
        async with anyio.create_task_group() as group:
            for _ in range(clients):
                group.start_soon(client)
        elapsed = time.perf_counter() - began
        if keep:
            return len(latencies), elapsed, latencies
    raise AssertionError("unreachable")


async def prepare(dsn: str) -> None:
    """The schema, 1,000 user budgets, one hot budget and the bare counters table."""
    store = await Store.open(dsn, max_size=16)
    ledger = Ledger(store)
    limiter = anyio.CapacityLimiter(16)

    async def budget(spec: BudgetSpec) -> None:
        async with limiter:
            await ledger.set_budget(spec)

    async with anyio.create_task_group() as group:
        for n in range(BUDGETS):
            group.start_soon(
                budget, BudgetSpec(name=f"user-u{n}", scope=f"user:u{n}", limit=HUGE, priority_shares=None)
            )
        group.start_soon(
            budget, BudgetSpec(name="hot", scope="project:hot", limit=HUGE, priority_shares=None)
        )
    await store.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "create table counters (id integer primary key, used bigint not null, lim bigint not null)"
        )
        await conn.execute(
            "insert into counters select g, 0, %s from generate_series(0, %s) g", (10**15, BUDGETS - 1)
        )
        await conn.execute("vacuum analyze counters")


async def measure(dsn: str, clients: int, seconds: float) -> list[Cell]:
    pool_size = min(clients, MAX_POOL)
    store = await Store.open(dsn, min_size=pool_size, max_size=pool_size, migrate=False)
    ledger = Ledger(store)
    bare_sql = "update counters set used = used + %s where id = %s and used + %s <= lim returning used"

    async def bare(row: int) -> None:
        async with store.pool.connection() as conn:
            cursor = await conn.execute(bare_sql, (20, row, 20), prepare=True)
            assert await cursor.fetchone() is not None

    async def reserve_settle(attribution: dict[str, str]) -> None:
        check = await ledger.check_budget(
            CheckRequest(model=MODEL, input_tokens=10, max_output_tokens=10, **attribution)
        )
        assert check.allowed
        await ledger.track_usage(
            TrackRequest(model=MODEL, reservation_id=check.reservation_id, input_tokens=10, output_tokens=5)
        )

    workloads: dict[str, Callable[[int], Awaitable[None]]] = {
        "bare spread": lambda n: bare(n % BUDGETS),
        "bare hot": lambda n: bare(0),
        "ledger spread": lambda n: reserve_settle({"user": f"u{n % BUDGETS}"}),
        "ledger hot": lambda n: reserve_settle({"project": "hot"}),
    }
    cells = []
    try:
        for workload, op in workloads.items():
            ops, elapsed, latencies = await run_cell(clients, seconds, op)
            cells.append(Cell(clients, workload, ops, elapsed, latencies))
    finally:
        await store.close()
    return cells


def report(cells: list[Cell]) -> None:
    bare = {
        (c.clients, c.workload.split()[1]): c.ops_per_second for c in cells if c.workload.startswith("bare")
    }
    print("| clients | workload | ops/s | calls/s | p50 ms | p99 ms | ratio to bare |")
    print("|--:|---|--:|--:|--:|--:|--:|")
    for c in cells:
        ledger = c.workload.startswith("ledger")
        calls = f"{2 * c.ops_per_second:,.0f}" if ledger else "-"
        ratio = f"{c.ops_per_second / bare[(c.clients, c.workload.split()[1])]:.2f}" if ledger else "1.00"
        print(
            f"| {c.clients} | {c.workload} | {c.ops_per_second:,.0f} | {calls} | {c.percentile(50):.2f} "
            f"| {c.percentile(99):.2f} | {ratio} |"
        )
    print()
    for clients in sorted({c.clients for c in cells}):
        spread = next(c for c in cells if c.clients == clients and c.workload == "ledger spread")
        share = 100 * spread.ops_per_second / bare[(clients, "spread")]
        verdict = "meets" if share >= 60 else "below"
        print(
            f"{clients} clients: spread reserve+settle reaches {share:.0f} % of the bare statement's "
            f"throughput ({verdict} the 60 % goal); counting each call, {2 * share:.0f} %"
        )


async def main(seconds: float, client_counts: list[int]) -> None:
    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-"))
    try:
        server_dsn = await anyio.to_thread.run_sync(lambda: start_embedded(home, keep_running=False))
        async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as conn:
            await conn.execute("create database bench")
            row = await (await conn.execute("show server_version")).fetchone()
        dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname="bench")
        print(
            f"PostgreSQL {row[0] if row else '?'} (embedded), {os.cpu_count()} CPUs, {seconds:g} s per cell, "
            f"{BUDGETS} spread budgets, model {MODEL}\n"
        )
        await prepare(dsn)
        cells: list[Cell] = []
        for clients in client_counts:
            cells += await measure(dsn, clients, seconds)
        report(cells)
        medians = {
            c.workload: statistics.median(c.latencies) * 1000 for c in cells if c.clients == client_counts[0]
        }
        print(
            f"\nmedian latency at {client_counts[0]} client(s): "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
        )
    finally:
        await anyio.to_thread.run_sync(stop_embedded, home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell (default 4)")
    parser.add_argument(
        "--clients", default="1,16,64", help="comma-separated client counts (default 1,16,64)"
    )
    args = parser.parse_args()
    anyio.run(main, args.seconds, [int(n) for n in args.clients.split(",")])
