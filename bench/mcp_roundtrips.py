"""Benchmark: MCP round trips of our tools against the transport's floor. Run: python bench/mcp_roundtrips.py

The floor is a no-op tool registered, for this benchmark only, on the very server `build_server` gives
(same process, same transport, same middleware). For each transport and protocol we time, as medians
of sequential calls from the official client:

- `noop`: the floor, one round trip;
- `count_tokens` of a short prompt: one round trip (goal: within 1.5x the floor);
- `check_budget` + `track_usage` (reserve, then settle): two round trips and two ledger calls, each one
  SQL call and one commit (a batch of one: calls made together in a process are combined; issue 14's
  goal: within 1.5x two floors).

The machine may be shared: it prints the load average with the table; compare ratios within one run.

It starts its own embedded PostgreSQL in a temporary directory and its own server processes
(this script, re-run with `--serve stdio|http`), and stops them all; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

if TYPE_CHECKING:
    from mcp import Client

PROMPT = "Summarize the attached meeting notes in three bullet points for the weekly update."
MODEL = "gpt-4o-mini"
PROTOCOLS = {"2025-11-25 (handshake)": "legacy", "2026-07-28": "2026-07-28"}
RUN_TIMEOUT = 300


# --- the server side (run as a subprocess) ------------------------------------------------------


def _server_with_floor(ledger: Any) -> Any:
    from tokenledger.mcp import build_server
    from tokenledger.types import Principal

    server = build_server(ledger, default_principal=Principal())

    @server.tool(name="noop", description="Does nothing (benchmark floor)")
    async def noop() -> str:
        return "ok"

    return server


async def _serve(transport: str, port: int) -> None:
    import logging

    from tokenledger.ledger import Ledger
    from tokenledger.settings import Settings

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    async with await Ledger.open(Settings.from_env(), migrate=False) as ledger:
        server = _server_with_floor(ledger)
        if transport == "stdio":
            await server.run_stdio_async()
            return
        import uvicorn

        from tokenledger.mcp.http import build_app
        from tokenledger.mcp.timeouts import http_protocol

        app = build_app(ledger, server)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, http=http_protocol(), log_level="warning", lifespan="on"
        )
        await uvicorn.Server(config).serve()


# --- the client side ---------------------------------------------------------------------------


async def _timed_ms(operation: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await operation()
    return (time.perf_counter() - started) * 1000


async def _medians(
    operations: dict[str, Callable[[], Awaitable[object]]], samples: int, warmup: int
) -> dict[str, float]:
    """Median ms of each operation, run in turn (so a busy machine slows all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in operations}
    for sample in range(warmup + samples):
        for name, operation in operations.items():
            elapsed = await _timed_ms(operation)
            if sample >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


async def _measure(client: Client, samples: int, warmup: int) -> dict[str, float]:
    sequence = iter(range(10**9))

    async def noop() -> None:
        result = await client.call_tool("noop", {})
        assert not result.is_error

    async def count() -> None:
        result = await client.call_tool("count_tokens", {"text": PROMPT, "model": MODEL})
        assert not result.is_error and result.structured_content

    async def check_and_track() -> None:
        request = next(sequence)
        check = await client.call_tool(
            "check_budget",
            {"model": MODEL, "input_tokens": 20, "max_output_tokens": 50, "user": f"u{request % 50}"},
        )
        assert not check.is_error and check.structured_content, check
        reservation = check.structured_content["reservation_id"]
        track = await client.call_tool(
            "track_usage",
            {"model": MODEL, "reservation_id": reservation, "input_tokens": 20, "output_tokens": 40},
        )
        assert not track.is_error, track

    return await _medians(
        {"noop": noop, "count_tokens": count, "check+track": check_and_track}, samples, warmup
    )


async def _measure_ledger(dsn: str, samples: int, warmup: int) -> dict[str, float]:
    """The same operations as direct `Ledger` calls in this process: what the tools cost without MCP."""
    from tokenledger.ledger import Ledger
    from tokenledger.settings import Settings
    from tokenledger.types import CheckRequest, CountRequest, TrackRequest

    sequence = iter(range(10**9))
    async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:

        async def count() -> None:
            await ledger.count_tokens(CountRequest(text=PROMPT, model=MODEL))

        async def check_and_track() -> None:
            request = next(sequence)
            check = await ledger.check_budget(
                CheckRequest(model=MODEL, input_tokens=20, max_output_tokens=50, user=f"u{request % 50}")
            )
            await ledger.track_usage(
                TrackRequest(
                    model=MODEL, reservation_id=check.reservation_id, input_tokens=20, output_tokens=40
                )
            )

        return await _medians({"count_tokens": count, "check+track": check_and_track}, samples, warmup)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _http_server(env: dict[str, str]) -> Any:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", "http", "--port", str(port)], env=env, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError("the benchmark's HTTP server exited")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark's HTTP server did not start in 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def _client(
    transport: str, mode: str, env: dict[str, str], url: str, key: str
) -> AsyncIterator[Client]:
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    if transport == "stdio":
        server = StdioServerParameters(command=sys.executable, args=[__file__, "--serve", "stdio"], env=env)
        async with Client(server, mode=mode, read_timeout_seconds=30) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=30) as client,
    ):
        yield client


async def _prepare(dsn: str) -> str:
    """A global budget large enough never to deny (so check+track reserve and settle), and an API key."""
    from decimal import Decimal

    from tokenledger.ledger import Ledger
    from tokenledger.settings import Settings
    from tokenledger.types import BudgetSpec

    async with await Ledger.open(Settings.from_env({}), dsn=dsn) as ledger:
        await ledger.set_budget(BudgetSpec(name="bench", limit=Decimal(10**11), priority_shares=None))
        key, _ = await ledger.create_key(role="admin", name="bench")
    return key


async def _bench(dsn: str, samples: int, warmup: int) -> list[tuple[str, str, dict[str, float]]]:
    key = await _prepare(dsn)
    env = {name: value for name, value in os.environ.items() if not name.startswith("TOKENLEDGER_")}
    env["TOKENLEDGER_DATABASE_URL"] = dsn
    results = [("in-process", "no MCP (Ledger calls)", await _measure_ledger(dsn, samples, warmup))]
    with _http_server(env) as url:
        for transport in ("stdio", "http"):
            for protocol, mode in PROTOCOLS.items():
                async with _client(transport, mode, env, url, key) as client:
                    results.append((transport, protocol, await _measure(client, samples, warmup)))
    return results


def _table(results: list[tuple[str, str, dict[str, float]]]) -> str:
    lines = [
        "| transport | protocol | noop (floor) | count_tokens | vs floor | check+track | vs 2x floor |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for transport, protocol, ms in results:
        count, pair = ms["count_tokens"], ms["check+track"]
        floor = ms.get("noop")
        if floor is None:
            lines.append(f"| {transport} | {protocol} | - | {count:.2f} ms | - | {pair:.2f} ms | - |")
            continue
        lines.append(
            f"| {transport} | {protocol} | {floor:.2f} ms | {count:.2f} ms | {count / floor:.2f}x "
            f"| {pair:.2f} ms | {pair / (2 * floor):.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="MCP round trips of our tools against a no-op floor.")
    parser.add_argument("--samples", type=int, default=300, help="timed calls per operation (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed calls first (default 30)")
    parser.add_argument("--serve", choices=("stdio", "http"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        anyio.run(_serve, args.serve, args.port)
        return 0

    from tokenledger.store import start_embedded, stop_embedded

    with tempfile.TemporaryDirectory(prefix="tl-bench-mcp-") as directory:
        home = Path(directory)
        dsn = start_embedded(home, keep_running=False)
        try:

            async def bounded() -> list[tuple[str, str, dict[str, float]]]:
                with anyio.fail_after(RUN_TIMEOUT):
                    return await _bench(dsn, args.samples, args.warmup)

            results = anyio.run(bounded)
        finally:
            stop_embedded(home)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"MCP round trips, medians of {args.samples} sequential calls (one client, one server process)")
    print(f"load average {load} (1, 5, 15 minutes)\n")
    print(_table(results))
    over = [f"{t} {p}" for t, p, ms in results if "noop" in ms and ms["check+track"] > 3 * ms["noop"]]
    verdict = "met" if not over else "NOT met for " + "; ".join(over)
    print(f"\ncheck+track within 1.5x two floors: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
