"""Benchmark: what a catalog update costs a server. Run: python bench/catalog_update.py

- the poll every server makes (`Store.catalog_version`, one index probe) against `select 1`, the bare
  round trip, measured in the same run over the same pool, with and without stored updates;
- the rebuild once an update arrives (bundled catalog + an update relisting every priced model of the
  bundled catalog at a new price) against loading the bundled catalog alone, CPU time, same run.

A refresh runs off the call path (the server's poll task); a call never waits for it. The poll decided
polling over LISTEN/NOTIFY: it costs about one round trip every few seconds per process, needs no
dedicated connection and survives a restarted server or a transaction pooler.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from tokenledger.catalog import Catalog, CatalogUpdate
from tokenledger.pricefile import read_price_file
from tokenledger.store import Store, start_embedded, stop_embedded


def relisted_entries() -> dict[str, dict[str, object]]:
    """Every model the bundled catalog lists today, as an update's entries, at 90 % of its price."""
    entries: dict[str, dict[str, object]] = {}
    for model in Catalog().search("", limit=100_000):
        price = model.price.model_dump(mode="json", exclude_defaults=True)
        if model.price.priced:
            price = {**price, "input": format(Decimal(price["input"]) * 9 / 10, "f")}
        entries[model.name.lower()] = {"name": model.name, "provider": model.provider, "price": price}
    return entries


def price_map(models: int) -> dict[str, object]:
    """A litellm-format map of `models` chat models, the size of litellm's own."""
    return {
        f"bench-model-{n}": {
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 128000,
            "input_cost_per_token": 2.5e-06,
            "output_cost_per_token": 1e-05,
            "cache_read_input_token_cost": 1.25e-06,
        }
        for n in range(models)
    }


def median_cpu(run: object, samples: int) -> float:
    times = []
    for _ in range(samples):
        started = time.process_time()
        run()  # type: ignore[operator]
        times.append(time.process_time() - started)
    return statistics.median(times)


async def poll_costs(dsn: str, samples: int) -> tuple[float, float]:
    store = await Store.open(dsn, max_size=1)
    try:
        bare, poll = [], []
        for _ in range(samples):
            started = time.perf_counter()
            await store.ping()
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.catalog_version()
            poll.append(time.perf_counter() - started)
        return statistics.median(bare), statistics.median(poll)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    raw = json.dumps(price_map(4_500)).encode()
    checked = median_cpu(lambda: read_price_file(raw, "bench.json"), 5)
    entries = relisted_entries()
    update = CatalogUpdate(1, datetime.now(UTC), "bench.json", "litellm", "0" * 64, len(entries), entries)
    bundled = median_cpu(lambda: Catalog().load(), 7)
    rebuilt = median_cpu(lambda: Catalog(updates=[update]).load(), 7)
    print(f"read and check a 4,500-model litellm map ({len(raw):,} bytes): {checked * 1000:.1f} ms CPU")
    print(f"load the bundled catalog: {bundled * 1000:.1f} ms CPU")
    print(
        f"load it with an update relisting all {len(entries):,} listed models at new prices: "
        f"{rebuilt * 1000:.1f} ms CPU ({rebuilt / bundled:.2f}x)"
    )

    home = Path(tempfile.mkdtemp(prefix="tokenledger-bench-catalog-"))
    dsn = start_embedded(home, keep_running=False)
    try:
        bare, poll = anyio.run(poll_costs, dsn, args.samples)
        print(
            f"poll (no update stored): {poll * 1e6:.0f} µs vs select 1 {bare * 1e6:.0f} µs "
            f"({poll / bare:.2f}x)"
        )
    finally:
        stop_embedded(home)


if __name__ == "__main__":
    main()
