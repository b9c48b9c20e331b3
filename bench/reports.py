"""Benchmark: every report view over a month of 1,000,000 usage rows of one tenant.

Run: python bench/reports.py [--rows 1000000] [--other-rows 250000] [--days 30] [--repeat 3]
                             [--drop-report-indexes]

It starts its own embedded PostgreSQL in a temporary directory (stopped at the end), migrates it, and
COPYs `--rows` usage events of tenant `bench` spread over the last `--days` days (200 users, 20 projects,
8 models, 3 % errors, half with a pre-flight estimate, a third repeating one of 5,000 prompts) and
`--other-rows` of tenant `other` into the same monthly partitions. Then it times `Ledger.report` for each
view (admin: the whole tenant; member: one user's rows) and prints a markdown table of the median and
worst of `--repeat` runs. `--drop-report-indexes` drops the indexes migration 0004 adds, to measure
without them. Goal: every view under 2 s. Then what alerts cost on the same data: the anomaly job (one read
per tenant, over the same hours of the last 8 weeks) and one alert's context (the global budget's figures,
top spenders and recommendations over its month so far).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import psycopg

from tokenledger.catalog import Catalog, cost
from tokenledger.ledger import Ledger
from tokenledger.reports import ReportQuery
from tokenledger.store import Store, start_embedded, stop_embedded
from tokenledger.types import BudgetSpec, Principal

MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "gemini-2.5-pro",
    "mistral-large-latest",
)
COLUMNS = (
    "tenant_id",
    "usage_id",
    "occurred_at",
    "user_id",
    "session_id",
    "project",
    "team",
    "feature",
    "endpoint",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "total_tokens",
    "cost_usd",
    "estimated_input_tokens",
    "method",
    "status",
    "latency_ms",
    "prompt_hash",
)
# What migration 0004 adds for reports (dropped by --drop-report-indexes).
REPORT_INDEXES = ("tl_usage_cost", "tl_usage_prompt")


def rows_of(tenant: str, count: int, now: datetime, seed: int, days: int = 30) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    catalog = Catalog()
    infos = [catalog.resolve(name) for name in MODELS]
    prompts = [hashlib.sha256(f"prompt {i}".encode()).hexdigest() for i in range(5_000)]
    start = now - timedelta(days=days)
    span = days * 86_400
    rows = []
    for i in range(count):
        info = infos[rng.randrange(len(infos))]
        input_tokens = rng.randint(100, 20_000)
        output_tokens = rng.randint(10, 2_000)
        cache_read = rng.choice((0, 0, 0, rng.randint(0, input_tokens)))
        price = cost(
            info.price,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read,
        ).cost_usd
        repeated = rng.random() < 0.33
        rows.append(
            (
                tenant,
                uuid.uuid4(),
                start + timedelta(seconds=rng.random() * span),
                f"u{rng.randrange(200)}",
                f"s{rng.randrange(20_000)}",
                f"p{rng.randrange(20)}",
                f"t{rng.randrange(10)}",
                f"f{rng.randrange(30)}",
                f"e{rng.randrange(10)}",
                info.provider,
                info.name,
                input_tokens,
                output_tokens,
                cache_read,
                input_tokens + output_tokens + cache_read,
                price,
                int(input_tokens * rng.uniform(0.9, 1.2)) if rng.random() < 0.5 else None,
                "provider",
                "error" if rng.random() < 0.03 else "success",
                rng.randint(200, 20_000),
                prompts[rng.randrange(len(prompts))]
                if repeated
                else hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(),
            )
        )
    rows.sort(key=lambda row: row[2])  # events arrive in time order: a day's rows share pages
    return rows


def load(dsn: str, tenant: str, count: int, now: datetime, seed: int, days: int = 30) -> float:
    """COPY `count` generated rows of `tenant`; returns seconds spent copying."""
    rows = rows_of(tenant, count, now, seed, days)
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(f"copy tl_usage ({', '.join(COLUMNS)}) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
    return time.perf_counter() - started


def cases() -> list[tuple[str, dict[str, object], Principal]]:
    admin = Principal(tenant_id="bench")
    member = Principal(tenant_id="bench", role="member", user="u7")
    month = {"since": "30d"}
    return [
        ("summary", {"view": "summary", **month}, admin),
        (
            "usage by user, model",
            {"view": "usage", "group_by": ["user", "model"], "limit": 100, **month},
            admin,
        ),
        ("usage by session (20,000 groups)", {"view": "usage", "group_by": ["session"], **month}, admin),
        (
            "usage by project, day",
            {"view": "usage", "group_by": ["project"], "bucket": "day", **month},
            admin,
        ),
        ("timeseries day (Europe/Paris)", {"view": "timeseries", "timezone": "Europe/Paris", **month}, admin),
        ("timeseries hour", {"view": "timeseries", "bucket": "hour", **month}, admin),
        ("budgets (50)", {"view": "budgets"}, admin),
        ("forecast (50 budgets, last 24h)", {"view": "forecast"}, admin),
        ("forecast (50 budgets, 30d rate)", {"view": "forecast", **month}, admin),
        ("top 50", {"view": "top", **month}, admin),
        ("top 50, one model", {"view": "top", "model": "gpt-4o-mini", **month}, admin),
        ("recommendations", {"view": "recommendations", **month}, admin),
        ("accuracy", {"view": "accuracy", **month}, admin),
        ("chargeback by team (this month)", {"view": "chargeback", "by": "team"}, admin),
        ("chargeback by user (this month)", {"view": "chargeback", "by": "user"}, admin),
        ("member: chargeback (this month)", {"view": "chargeback", "by": "user"}, member),
        ("member: summary", {"view": "summary", **month}, member),
        ("member: top 50", {"view": "top", **month}, member),
        ("member: recommendations", {"view": "recommendations", **month}, member),
        ("member: accuracy", {"view": "accuracy", **month}, member),
    ]


async def measure(dsn: str, repeat: int) -> list[tuple[str, float, float, int]]:
    store = await Store.open(dsn, migrate=False, max_size=4)
    ledger = Ledger(store)
    admin = Principal(tenant_id="bench")
    for i in range(50):
        scope = "global" if i == 0 else f"{('user', 'team', 'project')[i % 3]}:{'utp'[i % 3]}{i % 10}"
        await ledger.set_budget(
            BudgetSpec(name=f"b{i}", scope=scope, limit=Decimal(10**9), unit="tokens" if i % 2 else "usd"),
            admin,
        )
    results = []
    for name, fields, principal in cases():
        query = ReportQuery.model_validate(fields)
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            report = await ledger.report(query, principal)
            seconds.append(time.perf_counter() - started)
        results.append((name, statistics.median(seconds), max(seconds), len(report.rows)))
    results += await measure_alerts(ledger, repeat)
    await store.close()
    return results


async def measure_alerts(ledger: Ledger, repeat: int) -> list[tuple[str, float, float, int]]:
    """The anomaly job over every tenant (rows: alerts written) and one alert's context (rows: spenders
    and recommendations listed)."""
    state = (await ledger.get_budget("b0", Principal(tenant_id="bench"))).state
    alert = {"tenant_id": "bench", "alert_id": 0, "budget": "b0", "kind": "threshold"}
    alert |= {"period_start": str(state.period_start), "subject": "", "detail": None}
    results = []
    seconds, written = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        written += await ledger.anomaly_alerts()
        seconds.append(time.perf_counter() - started)
    name = "anomaly alerts (50 budgets; 8 weeks)"
    results.append((name, statistics.median(seconds), max(seconds), written))
    seconds, listed = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        context = await ledger.alert_context(alert)
        seconds.append(time.perf_counter() - started)
        listed = sum(map(len, context.spenders.values())) + len(context.recommendations)
    results.append(("alert context (global budget, month)", statistics.median(seconds), max(seconds), listed))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--other-rows", type=int, default=250_000)
    parser.add_argument("--days", type=int, default=30, help="the days the rows spread over")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--drop-report-indexes", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-reports-"))
    try:
        dsn = start_embedded(home, keep_running=False)

        async def migrate() -> None:
            await (await Store.open(dsn)).close()

        anyio.run(migrate)
        now = datetime.now(UTC)
        copied = load(dsn, "bench", args.rows, now, seed=1, days=args.days)
        copied += load(dsn, "other", args.other_rows, now, seed=2, days=args.days)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if args.drop_report_indexes:
                for index in REPORT_INDEXES:
                    conn.execute(f"drop index if exists {index}")
            conn.execute("vacuum analyze tl_usage")
            settings = conn.execute(
                "select current_setting('work_mem'), current_setting('shared_buffers'), "
                "current_setting('max_parallel_workers_per_gather'), version()"
            ).fetchone()
        print(f"COPY of {args.rows + args.other_rows:,} rows: {copied:.1f} s")
        print(
            f"PostgreSQL: work_mem {settings[0]}, shared_buffers {settings[1]}, "
            f"parallel workers per gather {settings[2]}; {settings[3].split(',')[0]}"
        )
        print(f"report indexes of 0004: {'dropped' if args.drop_report_indexes else 'present'}\n")
        results = anyio.run(measure, dsn, args.repeat)
        title = f"view ({args.rows:,} rows of tenant bench, {args.days} days)"
        print(f"| {title} | median ms | worst ms | rows |")
        print("|---|---:|---:|---:|")
        for name, median, worst, rows in results:
            print(f"| {name} | {median * 1000:.0f} | {worst * 1000:.0f} | {rows} |")
        slowest = max(results, key=lambda item: item[1])
        verdict = "meets" if slowest[1] < 2 else "MISSES"
        print(f"\nslowest: {slowest[0]} at {slowest[1] * 1000:.0f} ms median: {verdict} the 2 s goal")
    finally:
        stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
