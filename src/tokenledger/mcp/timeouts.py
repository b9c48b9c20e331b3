"""Read timeouts for the HTTP server: a client finishes its request head within `header_seconds` and its
body within `body_seconds`, or gets 408 and loses the connection.

uvicorn (0.54) times out only a connection idle between requests (`timeout_keep_alive`, armed after a
response). A client that sends half its headers, or trickles its body a byte at a time, holds a socket, a
buffer and (for a body) an application task for as long as it likes: `h11_max_incomplete_event_size`
bounds a head's size, not its time, and the httptools protocol has the same gap. Our ASGI guard cannot
help with heads (the application sees a request only once its head is complete) nor with bodies on paths
that never read them (`/healthz`). So the bound lives where the bytes arrive: a subclass of uvicorn's h11
protocol that arms one deadline for whatever the client owes — a head, then a body — and cancels it once
that has arrived. `http=http_protocol(...)` in `uvicorn.Config` puts it in place.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_READ_TIMEOUTS", "MAX_READ_TIMEOUT_SECONDS", "ReadTimeouts", "http_protocol"]

log = logging.getLogger("tokenledger.http")

MAX_READ_TIMEOUT_SECONDS: Final = 3600.0
Owed = Literal["head", "body"]


@dataclass(frozen=True)
class ReadTimeouts:
    """Seconds a client has to send a request's head (request line and headers) and then its body."""

    header_seconds: float = 10.0
    body_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("header_seconds", "body_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= MAX_READ_TIMEOUT_SECONDS):  # NaN too
                raise ValueError(f"{name}: {value!r}; seconds, more than 0 and at most 3600")


DEFAULT_READ_TIMEOUTS: Final = ReadTimeouts()


def http_protocol(timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with these read timeouts, for `uvicorn.Config(http=...)`."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"read_timeouts": timeouts})


def _timeout_response(description: str) -> bytes:
    body = json.dumps({"error": "request_timeout", "error_description": description}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline on each request's head and on its body."""

    read_timeouts: ClassVar[ReadTimeouts] = DEFAULT_READ_TIMEOUTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owed: Owed | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owe(None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Arm the deadline for what the client owes now: a head, a body, or nothing (it waits for our
        answer, or it is idle between requests, which uvicorn's keep-alive timeout bounds)."""
        if self.transport.is_closing():
            self._owe(None)
            return
        state = self.conn.their_state
        if state is h11.IDLE and self.timeout_keep_alive_task is None:
            self._owe("head")
        elif state is h11.SEND_BODY:
            self._owe("body")
        else:
            self._owe(None)

    def _owe(self, owed: Owed | None) -> None:
        if owed == self._owed:
            return  # the deadline runs from when the client started to owe it, not from its last byte
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._owed = owed
        if owed is not None:
            timeouts = self.read_timeouts
            seconds = timeouts.header_seconds if owed == "head" else timeouts.body_seconds
            self._deadline = self.loop.call_later(seconds, self._expire, owed, seconds)

    def _expire(self, owed: Owed, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        what = "headers" if owed == "head" else "body"
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown client"
        log.info("closed the connection of %s: its request %s took over %g s", client, what, seconds)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # no answer started: say why
            self.transport.write(_timeout_response(f"the request {what} took over {seconds:g} s"))
        self.transport.close()
