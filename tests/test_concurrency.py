"""Zero overspend across OS processes: 4 workers, each with its own pool, race for one hard budget.

Each worker (tests/ledger_worker.py) fires 100 checks at once after a shared start barrier, while a
sampler in this process reads the budget's period row over and over. The budget's counters must
never pass the cap, exactly what fits must be granted, and settling everything concurrently must
leave `used` equal to what was actually reported, with nothing left reserved.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import psycopg
import pytest
from anyio.abc import Process
from psycopg.rows import dict_row

from tokenledger.catalog import Catalog, cost
from tokenledger.ledger import Ledger
from tokenledger.types import BudgetSpec

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("ledger_worker.py")
PROCESSES = 4
PER_PROCESS = 100


@dataclass
class Sampler:
    """Reads every period row of the database in a loop and keeps what it saw."""

    dsn: str
    samples: list[tuple[Decimal, Decimal, Decimal | None]] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while self.running:
                cursor = await conn.execute("select committed, reserved, cap from tl_budget_period")
                self.samples.extend(await cursor.fetchall())
                await anyio.lowlevel.checkpoint()

    def over_cap(self) -> list[tuple[Decimal, Decimal, Decimal | None]]:
        return [s for s in self.samples if s[2] is not None and s[0] + s[1] > s[2]]

    def totals(self) -> Iterator[Decimal]:
        return (committed + reserved for committed, reserved, _ in self.samples)


async def run_workers(
    dsn: str,
    mode: str,
    plans: list[list[dict[str, Any]]],
    folder: Path,
    before_go: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[list[dict[str, Any]]], Sampler]:
    """Start one worker process per plan, release them together, sample the ledger until all exit.
    `before_go` runs once every worker is ready, just before they are released."""
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    go = folder / "go"
    processes: list[Process] = []
    logs: list[Path] = []
    for number, plan in enumerate(plans):
        plan_path = folder / f"plan{number}.json"
        plan_path.write_text(json.dumps(plan))
        logs.append(folder / f"worker{number}.log")
        with logs[-1].open("w") as log:
            processes.append(
                await anyio.open_process(
                    [
                        sys.executable,
                        str(WORKER),
                        mode,
                        "--dsn",
                        dsn,
                        "--ready",
                        str(folder / f"ready{number}"),
                        "--go",
                        str(go),
                        "--plan",
                        str(plan_path),
                        "--out",
                        str(folder / f"out{number}.json"),
                    ],
                    stdout=log,
                    stderr=log,
                )
            )
    try:
        deadline = time.monotonic() + 60
        while not all((folder / f"ready{n}").exists() for n in range(len(plans))):
            for process, log_path in zip(processes, logs, strict=True):
                assert process.returncode is None, f"worker exited early: {log_path.read_text()}"
            assert time.monotonic() < deadline, "workers did not get ready within 60 s"
            await anyio.sleep(0.02)
        sampler = Sampler(dsn)
        async with anyio.create_task_group() as group:
            group.start_soon(sampler.run)
            await anyio.sleep(0.05)  # the sampler is reading before anyone starts
            if before_go is not None:
                await before_go()
            go.write_text("go")
            with anyio.fail_after(120):
                for process in processes:
                    await process.wait()
            sampler.running = False
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    for process, log_path in zip(processes, logs, strict=True):
        assert process.returncode == 0, f"worker failed: {log_path.read_text()}"
    answers = [json.loads((folder / f"out{n}.json").read_text()) for n in range(len(plans))]
    errors = [a["error"] for per_process in answers for a in per_process if "error" in a]
    assert not errors, errors[:5]
    return answers, sampler


def assert_overlapped(answers: list[list[dict[str, Any]]]) -> None:
    """Every process was still working when the last one started: the race really happened."""
    windows = [(min(a["started"] for a in per), max(a["ended"] for a in per)) for per in answers]
    assert max(start for start, _ in windows) < min(end for _, end in windows), windows


async def fetch(dsn: str, query: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query)
        return await cursor.fetchall()


async def period_row(dsn: str) -> dict[str, Any]:
    rows = await fetch(dsn, "select committed, overage, reserved, cap from tl_budget_period")
    assert len(rows) == 1, rows
    return rows[0]


def split(items: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    return [items[n::parts] for n in range(parts)]


async def test_no_overspend_of_a_token_budget_across_processes(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    await ledger.set_budget(BudgetSpec(name="hot", limit=Decimal(1000), period="total", priority_shares=None))
    plan = [
        {"model": "gpt-4o-mini", "input_tokens": 10, "max_output_tokens": 0, "user": f"u{n % 7}"}
        for n in range(PER_PROCESS)
    ]

    answers, sampler = await run_workers(dsn, "reserve", [plan] * PROCESSES, tmp_path / "reserve")

    granted = [a for per in answers for a in per if a["allowed"]]
    assert sum(len(per) for per in answers) == PROCESSES * PER_PROCESS
    assert len(granted) == 100  # 1,000 tokens / 10: not one more, not one less
    assert_overlapped(answers)
    assert sampler.samples, "the sampler never read the budget"
    assert not sampler.over_cap()
    assert max(sampler.totals()) == 1000
    assert any(0 < total < 1000 for total in sampler.totals()), "the sampler saw no moment mid-race"
    row = await period_row(dsn)
    assert (row["committed"], row["reserved"], row["cap"]) == (0, 1000, 1000)
    assert (await ledger.get_budget("hot")).state.remaining == 0

    # Settle all 100 at once from 4 processes, each reporting less than it reserved.
    settle = [
        {
            "model": "gpt-4o-mini",
            "reservation_id": a["reservation_id"],
            "input_tokens": 1 + n % 9,
            "output_tokens": 0,
            "request_id": f"settle-{n}",
        }
        for n, a in enumerate(granted)
    ]
    settled, sampler = await run_workers(dsn, "settle", split(settle, PROCESSES), tmp_path / "settle")

    actual = sum(item["input_tokens"] for item in settle)
    assert sum(a["total_tokens"] for per in settled for a in per) == actual
    assert not sampler.over_cap()
    state = (await ledger.get_budget("hot")).state
    assert (state.used, state.reserved, state.overage) == (Decimal(actual), Decimal(0), Decimal(0))
    row = await period_row(dsn)
    assert (row["committed"], row["reserved"], row["overage"]) == (actual, 0, 0)
    counts = await fetch(
        dsn,
        "select (select count(*) from tl_usage) as usage, "
        "(select count(*) from tl_reservation where status = 'settled') as settled, "
        "(select count(*) from tl_reservation_hold where not released) as open_holds",
    )
    assert counts == [{"usage": 100, "settled": 100, "open_holds": 0}]


# Four request shapes on models of different prices; the cheapest shape alone asks for more than $1,
# so the race must end with less left than even the cheapest request costs.
USD_SHAPES = [
    {"model": "gpt-4o-mini", "input_tokens": 30_000, "max_output_tokens": 10_000},
    {"model": "gpt-4o", "input_tokens": 2_000, "max_output_tokens": 1_000},
    {"model": "claude-sonnet-4-5", "input_tokens": 2_000, "max_output_tokens": 1_000},
    {"model": "claude-haiku-4-5", "input_tokens": 5_000, "max_output_tokens": 2_000},
]


def shape_cost(catalog: Catalog, shape: dict[str, Any], output_tokens: int | None = None) -> Decimal:
    price = catalog.resolve(shape["model"]).price
    output = shape["max_output_tokens"] if output_tokens is None else output_tokens
    breakdown = cost(price, input_tokens=shape["input_tokens"], output_tokens=output)
    assert breakdown.cost_usd is not None, f"{shape['model']} is unpriced in the catalog"
    return breakdown.cost_usd


async def test_no_overspend_of_a_usd_budget_with_mixed_models(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    catalog = Catalog()
    limit = Decimal("1.00")
    costs = [shape_cost(catalog, shape) for shape in USD_SHAPES]
    cheapest = min(costs)
    per_shape = PROCESSES * PER_PROCESS // len(USD_SHAPES)
    assert len(set(costs)) > 1, "the shapes must differ in price"
    assert cheapest * per_shape > limit, "the test needs the cheapest shape alone to exhaust the budget"
    await ledger.set_budget(
        BudgetSpec(name="dollar", unit="usd", limit=limit, period="total", priority_shares=None)
    )
    plan = [USD_SHAPES[n % len(USD_SHAPES)] for n in range(PER_PROCESS)]

    answers, sampler = await run_workers(dsn, "reserve", [plan] * PROCESSES, tmp_path / "reserve")

    granted = [a for per in answers for a in per if a["allowed"]]
    assert_overlapped(answers)
    for answer in granted:
        assert Decimal(answer["estimated_cost_usd"]) == shape_cost(catalog, answer["plan"])
    spent = sum((Decimal(a["estimated_cost_usd"]) for a in granted), Decimal(0))
    assert 0 < spent <= limit
    assert len({a["plan"]["model"] for a in granted}) > 1
    assert not sampler.over_cap()
    assert max(sampler.totals()) == spent
    row = await period_row(dsn)
    assert (row["committed"], row["reserved"], row["cap"]) == (0, spent, limit)
    remaining = limit - row["committed"] - row["overage"] - row["reserved"]
    assert 0 <= remaining < cheapest, f"${remaining} left unused: the budget was starved, not used up"
    assert (await ledger.get_budget("dollar")).state.remaining == remaining

    # Settle every grant concurrently with half the output it reserved.
    settle = []
    expected = Decimal(0)
    for n, answer in enumerate(granted):
        shape = answer["plan"]
        output = shape["max_output_tokens"] // 2
        expected += shape_cost(catalog, shape, output)
        settle.append(
            {
                "model": shape["model"],
                "reservation_id": answer["reservation_id"],
                "input_tokens": shape["input_tokens"],
                "output_tokens": output,
                "request_id": f"settle-{n}",
            }
        )
    settled, sampler = await run_workers(dsn, "settle", split(settle, PROCESSES), tmp_path / "settle")

    assert sum(Decimal(a["cost_usd"]) for per in settled for a in per) == expected
    assert not sampler.over_cap()
    state = (await ledger.get_budget("dollar")).state
    assert (state.used, state.reserved, state.overage) == (expected, Decimal(0), Decimal(0))
    assert expected < spent


COMBINED_TASKS = 32


def combined(folder: Path) -> list[dict[str, int]]:
    return [json.loads((folder / f"out{n}.stats.json").read_text()) for n in range(PROCESSES)]


async def test_combined_calls_of_four_processes_grant_a_hot_budget_exactly(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    """4 processes x 32 concurrent tasks on one hot hard budget, each process combining its calls into
    batches (one SQL call and one commit for many): the grants add up to the limit exactly, the cap holds
    at every instant the sampler saw, and settling them all the same way leaves what was reported."""
    limit = 1000
    await ledger.set_budget(
        BudgetSpec(name="hot", limit=Decimal(limit), period="total", priority_shares=None)
    )
    # 128 requests of 8 tokens: 125 fit in 1,000 exactly.
    plan = [{"model": "gpt-4o-mini", "input_tokens": 8, "max_output_tokens": 0}] * COMBINED_TASKS
    plans = [plan] * PROCESSES

    answers, sampler = await run_workers(dsn, "reserve", plans, tmp_path / "reserve")

    stats = combined(tmp_path / "reserve")
    assert all(s["calls"] == COMBINED_TASKS for s in stats)
    assert all(s["batches"] < s["calls"] for s in stats), f"no process combined its calls: {stats}"
    assert_overlapped(answers)
    granted = [a for per in answers for a in per if a["allowed"]]
    assert len(granted) == limit // 8  # not one more, not one less
    total = sum(a["plan"]["input_tokens"] for a in granted)
    assert total == limit
    assert not sampler.over_cap()
    assert max(sampler.totals()) == total
    row = await period_row(dsn)
    assert (row["committed"], row["reserved"], row["cap"]) == (0, total, limit)

    settle = [
        {
            "model": "gpt-4o-mini",
            "reservation_id": a["reservation_id"],
            "input_tokens": 1 + n % 8,
            "output_tokens": 0,
            "request_id": f"settle-{n}",
        }
        for n, a in enumerate(granted)
    ]
    settled, sampler = await run_workers(dsn, "settle", split(settle, PROCESSES), tmp_path / "settle")

    assert all(s["batches"] < s["calls"] for s in combined(tmp_path / "settle"))
    actual = sum(item["input_tokens"] for item in settle)
    assert sum(a["total_tokens"] for per in settled for a in per) == actual
    assert not sampler.over_cap()
    row = await period_row(dsn)
    assert (row["committed"], row["reserved"], row["overage"]) == (actual, 0, 0)
