"""Benchmark: what pseudonyms and keyed prompt hashes cost, against the same work without them.

Run: python bench/privacy.py [--rows 200000] [--users 10000] [--repeat 5] [--checks 300]

It starts its own embedded PostgreSQL in a temporary directory (stopped at the end), migrates it, and
COPYs `--rows` usage events of `--users` users over the last 30 days. Then, medians of `--repeat` runs:

- a usage report by user as an admin (real ids) and as a viewer with `pseudonymize_users` on;
- a top report filtered by one user: an admin by the real id, a viewer by its pseudonym (which reads the
  tenant's user ids, one index probe per user, and hashes them until one matches);
- a prompt's SHA-256 and its keyed hash (HMAC under the tenant's key) against the SHA-256 alone;
- `check_budget` of a short text (counted, hashed and keyed) against one given as input_tokens.

Each line gives the ratio to its baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import psycopg

from tokenledger import privacy, reports
from tokenledger.ledger import Ledger
from tokenledger.reports import ReportQuery
from tokenledger.store import Store, start_embedded, stop_embedded
from tokenledger.types import CheckRequest, Principal

COLUMNS = ("tenant_id", "usage_id", "occurred_at", "user_id", "model", "input_tokens", "output_tokens",
           "total_tokens", "cost_usd", "method", "status")  # fmt: skip
ADMIN, VIEWER = Principal(tenant_id="bench"), Principal(tenant_id="bench", role="viewer")


def seed(dsn: str, rows: int, users: int) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(f"copy tl_usage ({', '.join(COLUMNS)}) from stdin") as copy:
            for _ in range(rows):
                tokens = rng.randint(100, 5_000)
                copy.write_row(
                    ("bench", uuid.uuid4(), now - timedelta(seconds=rng.random() * 30 * 86_400),
                     f"user{rng.randrange(users)}@example.com", "gpt-4o-mini", tokens, 100, tokens + 100,
                     Decimal(tokens) / 1_000_000, "provider", "success")
                )  # fmt: skip
        conn.execute("analyze tl_usage")


async def median_ms(run: Callable[[], Awaitable[Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-"))
    try:
        dsn = start_embedded(home, keep_running=False)
        store = await Store.open(dsn, migrate=True)
        await anyio.to_thread.run_sync(seed, dsn, args.rows, args.users)
        ledger = Ledger(store)
        await ledger.set_tenant_setting("pseudonymize_users", True, ADMIN)
        by_user = ReportQuery(view="usage", group_by=["user"], limit=10_000)
        real = "user1@example.com"
        shown = str(await ledger.shown_user(VIEWER, real))
        lines = [
            (
                "usage by user",
                await median_ms(lambda: ledger.report(by_user, ADMIN), args.repeat),
                await median_ms(lambda: ledger.report(by_user, VIEWER), args.repeat),
            ),
            (
                "top, one user",
                await median_ms(
                    lambda: ledger.report(ReportQuery(view="top", user=real), ADMIN), args.repeat
                ),
                await median_ms(
                    lambda: ledger.report(ReportQuery(view="top", user=shown), VIEWER), args.repeat
                ),
            ),
        ]
        key = (await ledger._tenant_keys("bench")).prompt_key
        hashes = 100_000
        lines.append(
            (
                f"prompt hash x{hashes:,}",
                await median_ms(lambda: _hashes(hashes, None), args.repeat),
                await median_ms(lambda: _hashes(hashes, key), args.repeat),
            )
        )
        plain = CheckRequest(model="gpt-4o-mini", input_tokens=5, reserve=False)
        hashed = CheckRequest(model="gpt-4o-mini", text="yes", reserve=False)
        lines.append(
            (
                f"check_budget x{args.checks}",
                await median_ms(lambda: _checks(ledger, plain, args.checks), args.repeat),
                await median_ms(lambda: _checks(ledger, hashed, args.checks), args.repeat),
            )
        )
        print(f"{args.rows:,} usage rows, {args.users:,} users; medians of {args.repeat} runs")
        print("| what | baseline ms | with privacy ms | ratio |\n|---|---|---|---|")
        for what, base, private in lines:
            print(f"| {what} | {base:.1f} | {private:.1f} | {private / base:.2f} |")
        await store.close()
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


async def _hashes(count: int, key: bytes | None) -> None:
    for _ in range(count):
        plain = reports.prompt_hash("What is our refund policy?")
        if key is not None:
            privacy.keyed_prompt_hash(key, plain)


async def _checks(ledger: Ledger, request: CheckRequest, count: int) -> None:
    for _ in range(count):
        await ledger.check_budget(request, ADMIN)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checks", type=int, default=300)
    anyio.run(main, parser.parse_args())
