"""Real servers on loopback for the tests: a free port, and the whole HTTP app under uvicorn."""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import anyio
import uvicorn
from aiosmtpd.controller import Controller

from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.mcp.http import AccessPolicy, build_app
from tokenledger.mcp.timeouts import DEFAULT_READ_TIMEOUTS, ReadTimeouts, http_protocol
from tokenledger.settings import Settings
from tokenledger.types import Principal


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A running HTTP server: its base URL and a ledger over the same database (for keys and checks)."""

    base: str
    port: int
    ledger: Ledger
    dsn: str


@contextlib.asynccontextmanager
async def serving(
    dsn: str,
    settings: Settings | None = None,
    *,
    read_timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS,
    **app_options: Any,
) -> AsyncIterator[Served]:
    """The real app (MCP, SSE, /metrics, /dashboard) under uvicorn on 127.0.0.1 with the server's read
    timeouts, in this event loop, stopped on exit; its ledger opened with `settings` (default: none from
    the environment). `app_options` go to `build_app` (transports, max_request_bytes, metrics_token...)."""
    ledger = await Ledger.open(settings or Settings.from_env({}), dsn=dsn, migrate=False)
    try:
        server = build_server(ledger, default_principal=Principal(role="viewer"))
        app = build_app(ledger, server, policy=AccessPolicy.for_bind("127.0.0.1"), **app_options)
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=http_protocol(read_timeouts),
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        http_server = uvicorn.Server(config)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(http_server.serve)
            with anyio.fail_after(10):
                while not http_server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
                    await anyio.sleep(0.01)
            try:
                yield Served(f"http://127.0.0.1:{port}", port, ledger, dsn)
            finally:
                http_server.should_exit = True
    finally:
        await ledger.close()


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) keeping what it receives."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mailbox.received.append(envelope)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.url = f"smtp://127.0.0.1:{self.port}?from=ledger@example.test&to=ops@example.test"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
            for e in self.received
        ]
