"""A ledger client in its own OS process, for the multi-process tests (not a test module itself).

Each run opens its own Store (its own pool), warms up, writes its `--ready` file, then waits for the
`--go` file so that every worker starts at the same instant. Modes:

- `reserve`: fire every check of the `--plan` JSON file at once (one task each); write the answers
  to `--out` as JSON, and how they were combined (SQL calls, ledger calls) to `--out` .stats.json.
- `settle`: track every usage of the `--plan` file at once (settling the reservations it names);
  write the answers to `--out` (and the stats beside it).
- `traffic`: reserve and settle in a loop until killed, printing `reserved <id>` after each granted
  check and `usage <id>` after each committed track, flushed, so the killer knows what was committed.
  Every fifth reservation is abandoned, as a crashed client would.

Run: python tests/ledger_worker.py MODE --dsn DSN --ready PATH --go PATH [--plan PATH --out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import MIN_TTL_SECONDS, CheckRequest, TrackRequest


async def _wait_for(path: Path) -> None:
    """Return when `path` exists: poll often, so that every worker leaves the barrier within a millisecond."""
    for _ in range(60_000):
        # A stat is not worth a thread here: the barrier's latency is what matters.
        if os.path.exists(path):  # noqa: ASYNC240
            return
        await anyio.sleep(0.001)
    raise TimeoutError(f"{path} did not appear within a minute")


async def _reserve(ledger: Ledger, item: dict[str, Any], answers: list[dict[str, Any]]) -> None:
    started = time.time()
    answer: dict[str, Any] = {"plan": item, "started": started}
    try:
        result = await ledger.check_budget(CheckRequest(**item))
        answer.update(
            allowed=result.allowed,
            decision=result.decision,
            reservation_id=result.reservation_id,
            granted_output_tokens=result.granted_output_tokens,
            estimated_cost_usd=None if result.estimated_cost_usd is None else str(result.estimated_cost_usd),
        )
    except Exception as error:  # reported to the test, which fails on any
        answer["error"] = repr(error)
    answer["ended"] = time.time()
    answers.append(answer)


async def _settle(ledger: Ledger, item: dict[str, Any], answers: list[dict[str, Any]]) -> None:
    started = time.time()
    answer: dict[str, Any] = {"plan": item, "started": started}
    try:
        result = await ledger.track_usage(TrackRequest(**item))
        answer.update(
            usage_id=result.usage_id,
            total_tokens=result.total_tokens,
            cost_usd=None if result.cost_usd is None else str(result.cost_usd),
        )
    except Exception as error:
        answer["error"] = repr(error)
    answer["ended"] = time.time()
    answers.append(answer)


async def _batch(ledger: Ledger, mode: str, plan: list[dict[str, Any]], out: Path) -> None:
    answers: list[dict[str, Any]] = []
    step = _reserve if mode == "reserve" else _settle
    async with anyio.create_task_group() as group:
        for item in plan:
            group.start_soon(step, ledger, item, answers)
    await anyio.Path(out).write_text(json.dumps(answers))
    # How the calls were combined: SQL calls made and ledger calls they carried.
    combiner = ledger.store.checks if mode == "reserve" else ledger.store.tracks
    stats = {"batches": combiner.batches, "calls": combiner.calls}
    await anyio.Path(out.with_suffix(".stats.json")).write_text(json.dumps(stats))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _traffic_loop(ledger: Ledger, model: str, worker: int) -> None:
    for n in range(10**9):
        check = await ledger.check_budget(
            CheckRequest(model=model, input_tokens=10, max_output_tokens=10, ttl_seconds=MIN_TTL_SECONDS)
        )
        if not check.allowed:
            await anyio.sleep(0.05)
            continue
        _say(f"reserved {check.reservation_id}")
        if n % 5 == 4:
            continue  # abandoned: its hold must come back by expiry
        await anyio.sleep(0.02)  # the provider call
        usage = await ledger.track_usage(
            TrackRequest(
                model=model,
                reservation_id=check.reservation_id,
                input_tokens=10,
                output_tokens=n % 7,
                request_id=f"traffic-{worker}-{n}-{uuid.uuid4()}",
            )
        )
        _say(f"usage {usage.usage_id}")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["reserve", "settle", "traffic"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--go", type=Path, required=True)
    parser.add_argument("--plan", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args(argv)

    store = await Store.open(args.dsn, min_size=args.pool, max_size=args.pool, migrate=False)
    try:
        ledger = Ledger(store)
        plan: list[dict[str, Any]] = json.loads(args.plan.read_text()) if args.plan else []
        for model in {item["model"] for item in plan} | {args.model}:
            await ledger.model_info(model)  # loads the catalog and exercises the pool before the start
        args.ready.write_text("ready")
        await _wait_for(args.go)
        if args.mode == "traffic":
            async with anyio.create_task_group() as group:
                for worker in range(args.tasks):
                    group.start_soon(_traffic_loop, ledger, args.model, worker)
        else:
            assert args.out is not None
            await _batch(ledger, args.mode, plan, args.out)
    finally:
        await store.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
