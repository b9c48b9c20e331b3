"""Benchmark: reserve + settle through the Ledger against a bare conditional UPDATE, same clients, same run.

Run: python bench/ledger.py [--seconds 2] [--clients 1,16] [--no-alone]

It starts its own embedded PostgreSQL in a temporary directory and stops it at the end. For each
client count (asyncio tasks in this one process, over one Store pool sized to the clients, at most 64
connections) it measures these workloads for `--seconds` each, after a short warm-up:

- `bare spread`: `UPDATE counters SET used = used + n WHERE id = $1 AND used + n <= lim RETURNING used`
  on 1,000 rows, each request on the next row;
- `bare hot`: the same statement on one row;
- `ledger spread`: `check_budget` (reserve) then `track_usage` (settle) as one op, each op on a
  different one of 1,000 budgets (scope `user:uN`, attribution `user uN`), through the default path:
  concurrent calls combined into one SQL call and one commit (group commit, see tokenledger.combining);
- `ledger hot`: the same on one budget every request matches;
- `... alone` (unless --no-alone): the same two through a Store with batch size 1, each call its own SQL
  call and commit, as before combining.

It prints a markdown table (ops/s, p50 and p99 latency, ratio to the bare statement of the same shape,
the mean calls per SQL call, this process's CPU per op), the issue's goals met or not, and the load
average: the machine may be shared, so compare ratios within one run. One reserve + settle pair counts
as one op; `calls/s` counts each ledger call.

Then, unless --no-server, where the server's time goes without any client: a procedure in the database
times the bare UPDATE, tl_check_many and tl_track_many on the hot budget, per request, in batches of 1
and of 16, each batch with its commit (the WAL flush included), as the server spends it for one client.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import anyio
import psycopg
from psycopg import sql

from tokenledger.ledger import Ledger
from tokenledger.store import BATCHES_IN_FLIGHT, Store, start_embedded, stop_embedded
from tokenledger.types import BudgetSpec, CheckRequest, TrackRequest

MODEL = "gpt-4o-mini"
BUDGETS = 1000
MAX_POOL = 64  # the embedded server allows 100 connections; leave room for the rest
WARMUP_SECONDS = 0.3
HUGE = Decimal(10) ** 15  # budgets and counters that never run out: we measure the path, not denials


@dataclass
class Cell:
    clients: int
    workload: str
    ops: int
    seconds: float
    latencies: list[float]  # seconds per op
    calls_per_batch: float | None = None  # ledger calls per SQL call
    client_cpu: float = 0.0  # seconds of this process's CPU per op (the client and the ledger's Python)
    checks: list[float] = field(default_factory=list)  # seconds per check_budget (ledger workloads)
    tracks: list[float] = field(default_factory=list)  # seconds per track_usage

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds

    def percentile(self, q: int, latencies: list[float] | None = None) -> float:
        """The q-th percentile latency in milliseconds (of ops, or of the latencies given)."""
        ordered = sorted(self.latencies if latencies is None else latencies)
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


async def measure(dsn: str, clients: int, seconds: float, alone: bool, in_flight: int) -> list[Cell]:
    pool_size = min(clients, MAX_POOL)
    store = await Store.open(
        dsn, min_size=pool_size, max_size=pool_size, migrate=False, batches_in_flight=in_flight
    )
    single = await Store.open(dsn, min_size=pool_size, max_size=pool_size, migrate=False, batch_size=1)
    bare_sql = "update counters set used = used + %s where id = %s and used + %s <= lim returning used"
    checks: list[float] = []
    tracks: list[float] = []

    async def bare(row: int) -> None:
        async with store.pool.connection() as conn:
            cursor = await conn.execute(bare_sql, (20, row, 20), prepare=True)
            assert await cursor.fetchone() is not None

    def reserve_settle(ledger: Ledger, attribution: dict[str, str]) -> Callable[[], Awaitable[None]]:
        async def op() -> None:
            started = time.perf_counter()
            check = await ledger.check_budget(
                CheckRequest(model=MODEL, input_tokens=10, max_output_tokens=10, **attribution)
            )
            checked = time.perf_counter()
            assert check.allowed
            settle = TrackRequest(
                model=MODEL, reservation_id=check.reservation_id, input_tokens=10, output_tokens=5
            )
            await ledger.track_usage(settle)
            checks.append(checked - started)
            tracks.append(time.perf_counter() - checked)

        return op

    combined, each_alone = Ledger(store), Ledger(single)
    workloads: dict[str, tuple[Callable[[int], Awaitable[None]], Store | None]] = {
        "bare spread": (lambda n: bare(n % BUDGETS), None),
        "bare hot": (lambda n: bare(0), None),
        "ledger spread": (lambda n: reserve_settle(combined, {"user": f"u{n % BUDGETS}"})(), store),
        "ledger hot": (lambda n: reserve_settle(combined, {"project": "hot"})(), store),
    }
    if alone:
        workloads["ledger spread, alone"] = (
            lambda n: reserve_settle(each_alone, {"user": f"u{n % BUDGETS}"})(),
            single,
        )
        workloads["ledger hot, alone"] = (lambda n: reserve_settle(each_alone, {"project": "hot"})(), single)
    cells = []
    try:
        for workload, (op, ledger_store) in workloads.items():
            before = _batch_counts(ledger_store)
            checks.clear()
            tracks.clear()
            cpu = time.process_time()
            ops, elapsed, latencies = await run_cell(clients, seconds, op)
            cpu = time.process_time() - cpu  # the warm-up too: a slight overestimate
            after = _batch_counts(ledger_store)
            batches = after[0] - before[0]
            cells.append(
                Cell(
                    clients,
                    workload,
                    ops,
                    elapsed,
                    latencies,
                    calls_per_batch=(after[1] - before[1]) / batches if batches else None,
                    client_cpu=cpu / ops,
                    checks=checks[-ops:] if ledger_store else [],
                    tracks=tracks[-ops:] if ledger_store else [],
                )
            )
    finally:
        await store.close()
        await single.close()
    return cells


def _batch_counts(store: Store | None) -> tuple[int, int]:
    """SQL calls and ledger calls the store's check and track combiners made so far."""
    if store is None:
        return 0, 0
    return store.checks.batches + store.tracks.batches, store.checks.calls + store.tracks.calls


def _shape(workload: str) -> str:
    return workload.split()[1].rstrip(",")


def report(cells: list[Cell]) -> None:
    bare = {(c.clients, _shape(c.workload)): c for c in cells if c.workload.startswith("bare")}
    print(
        "| clients | workload | ops/s | calls/s | p50 ms | p99 ms | ratio to bare | calls per SQL call "
        "| Python CPU µs/op |"
    )
    print("|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    for c in cells:
        ledger = c.workload.startswith("ledger")
        calls = f"{2 * c.ops_per_second:,.0f}" if ledger else "-"
        ratio = c.ops_per_second / bare[(c.clients, _shape(c.workload))].ops_per_second
        per_call = f"{c.calls_per_batch:.1f}" if c.calls_per_batch else "-"
        print(
            f"| {c.clients} | {c.workload} | {c.ops_per_second:,.0f} | {calls} | {c.percentile(50):.2f} "
            f"| {c.percentile(99):.2f} | {ratio:.2f} | {per_call} | {1e6 * c.client_cpu:,.0f} |"
        )
    print()
    goals(cells, bare)


def goals(cells: list[Cell], bare: dict[tuple[int, str], Cell]) -> None:
    """The issue's goals (issue 14), met or not, in this run."""
    for c in cells:
        if c.workload not in ("ledger spread", "ledger hot"):
            continue
        base = bare[(c.clients, _shape(c.workload))]
        ratio = c.ops_per_second / base.ops_per_second
        if c.clients == 1:
            bare_p50 = base.percentile(50)
            check_p50, track_p50 = c.percentile(50, c.checks), c.percentile(50, c.tracks)
            met = check_p50 <= 2 * bare_p50 and track_p50 <= 2 * bare_p50
            print(
                f"1 client, {_shape(c.workload)}: check_budget p50 {check_p50:.2f} ms "
                f"({check_p50 / bare_p50:.1f}x the bare UPDATE's {bare_p50:.2f} ms), track_usage p50 "
                f"{track_p50:.2f} ms ({track_p50 / bare_p50:.1f}x); goal each <= 2x: {_verdict(met)}"
            )
        elif c.clients == 16:
            floor = 0.25 if _shape(c.workload) == "spread" else 1.0
            met = c.ops_per_second >= 2000 and ratio >= floor
            print(
                f"16 clients, {_shape(c.workload)}: {c.ops_per_second:,.0f} pairs/s, {ratio:.2f} of the bare "
                f"UPDATE; goal >= 2,000 pairs/s and >= {floor:.2f}: {_verdict(met)}"
            )


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# Per request, in batches of `per`, each batch and its commit timed: the bare UPDATE, tl_check_many and
# tl_track_many on the hot budget (the settles of the checks just made).
SERVER_TIMES = """
create or replace procedure pg_temp.server_times(rounds int, per int, inout bare float8, inout checks float8,
                                                inout tracks float8)
language plpgsql as $$
declare
    started timestamptz;
    answers jsonb;
    settles jsonb;
    checks_of jsonb;
begin
    bare := 0; checks := 0; tracks := 0;
    select jsonb_agg(jsonb_build_object(
        'tenant', 'default', 'request_id', null, 'request_hash', '', 'model', {model},
        'attr', jsonb_build_object('project', 'hot'), 'input_tokens', 10, 'max_output_tokens', 10,
        'priority', 'medium', 'allow_partial', false, 'reserve', true, 'ttl_seconds', 600,
        'catalog_price', {price}::jsonb, 'method', 'provider'))
      into checks_of from generate_series(1, per);
    for round in 1 .. rounds loop
        started := clock_timestamp();
        for n in 1 .. per loop
            update counters set used = used + 20 where id = (round * per + n) % 1000 and used + 20 <= lim;
        end loop;
        commit;
        bare := bare + extract(epoch from clock_timestamp() - started);
        started := clock_timestamp();
        answers := tl_check_many(checks_of, false);
        commit;
        checks := checks + extract(epoch from clock_timestamp() - started);
        select jsonb_agg(jsonb_build_object(
            'tenant', 'default', 'request_id', null, 'request_hash', '', 'model', {model},
            'reservation_id', a -> 'ok' ->> 'reservation_id', 'provider', 'openai', 'attr', '{{}}'::jsonb,
            'input_tokens', 10, 'output_tokens', 5, 'cache_read_input_tokens', 0,
            'cache_creation_input_tokens', 0, 'reasoning_output_tokens', 0, 'catalog_price', {price}::jsonb,
            'method', 'provider', 'status', 'success', 'tools_used', '[]'::jsonb, 'metadata', '{{}}'::jsonb,
            'clock_skew_seconds', 300))
          into settles from jsonb_array_elements(answers) a;
        started := clock_timestamp();
        answers := tl_track_many(settles, false);
        commit;
        tracks := tracks + extract(epoch from clock_timestamp() - started);
    end loop;
    bare := bare / (rounds * per); checks := checks / (rounds * per); tracks := tracks / (rounds * per);
end $$
"""


async def server_times(dsn: str) -> None:
    """Where the server's time goes per request, with no client in the way (see SERVER_TIMES)."""
    from tokenledger.catalog import Catalog

    price = Catalog().resolve(MODEL).price.model_dump_json(include={"input", "output"})
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL(SERVER_TIMES).format(model=sql.Literal(MODEL), price=sql.Literal(price)))
        print(
            "\nServer time per request, no client (a procedure in the database, each batch with its commit):"
        )
        print()
        print("| requests per SQL call | bare UPDATE us | check us | vs bare | settle us | vs bare |")
        print("|--:|--:|--:|--:|--:|--:|")
        for per in (1, 16):
            cursor = await conn.execute("call pg_temp.server_times(%s, %s, 0, 0, 0)", (320 // per, per))
            row = await cursor.fetchone()
            assert row is not None
            bare, checks, tracks = (1e6 * value for value in row)
            print(
                f"| {per} | {bare:.0f} | {checks:.0f} | {checks / bare:.1f}x | {tracks:.0f} "
                f"| {tracks / bare:.1f}x |"
            )


def _load() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


async def main(seconds: float, client_counts: list[int], alone: bool, server: bool, in_flight: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-"))
    try:
        server_dsn = await anyio.to_thread.run_sync(lambda: start_embedded(home, keep_running=False))
        async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as conn:
            await conn.execute("create database bench")
            row = await (await conn.execute("show server_version")).fetchone()
        dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname="bench")
        print(
            f"PostgreSQL {row[0] if row else '?'} (embedded), {os.cpu_count()} CPUs, {seconds:g} s per cell, "
            f"{BUDGETS} spread budgets, model {MODEL}, load average {_load()} at the start\n"
        )
        await prepare(dsn)
        cells: list[Cell] = []
        for clients in client_counts:
            cells += await measure(dsn, clients, seconds, alone, in_flight)
        report(cells)
        if server:
            await server_times(dsn)
        print(f"\nload average {_load()} at the end (1, 5, 15 minutes)")
    finally:
        await anyio.to_thread.run_sync(stop_embedded, home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per cell (default 2)")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts (default 1,16)")
    parser.add_argument(
        "--no-alone", action="store_true", help="skip the workloads with each call alone (batch size 1)"
    )
    parser.add_argument("--no-server", action="store_true", help="skip the server-time table")
    parser.add_argument(
        "--in-flight", type=int, default=BATCHES_IN_FLIGHT, help="batches of one kind at once per process"
    )
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",")]
    anyio.run(main, args.seconds, clients, not args.no_alone, not args.no_server, args.in_flight)
