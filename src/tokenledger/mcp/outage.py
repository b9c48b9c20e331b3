"""What the HTTP server still answers while PostgreSQL is away: counting, for keys it knows.

Counting needs no database (`count_tokens`, `fit_messages`), but checking an API key does. So the request
guard remembers the keys it authenticated in the last few minutes (by hash, never the key), and consults
that memory only when the key store cannot be reached, and only for a call that needs no database: those
two tools and the MCP plumbing a client needs to reach them (initialize, ping, tools/list, opening an SSE
stream). Every other call still fails closed with 503, and `/healthz` says exactly this.

Revocation is unchanged whenever the database answers: the lookup there decides, and a key it refuses is
forgotten at once. A key revoked while this server could not reach the database may go on counting
tokens until its memory expires; counting reads and writes nothing of the tenant.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Final

from tokenledger.types import Principal

__all__ = ["OFFLINE_TOOLS", "RECENT_KEY_SECONDS", "RecentKeys", "needs_no_database"]

OFFLINE_TOOLS: Final = ("count_tokens", "fit_messages")
# JSON-RPC methods that touch no ledger data: what a client sends before or around a tools/call.
_PLUMBING: Final = frozenset(
    {
        "initialize",
        "notifications/initialized",
        "notifications/cancelled",
        "ping",
        "server/discover",
        "tools/list",
    }
)
RECENT_KEY_SECONDS: Final = 300.0
MAX_RECENT_KEYS: Final = 10_000


def needs_no_database(body: bytes) -> bool:
    """Whether a JSON-RPC message (an MCP request body) can be answered without PostgreSQL."""
    try:
        message = json.loads(body)
    except ValueError:
        return False
    if not isinstance(message, dict):  # a batch, or garbage: not worth the exception
        return False
    method = message.get("method")
    if method == "tools/call":
        params = message.get("params")
        return isinstance(params, dict) and params.get("name") in OFFLINE_TOOLS
    return method in _PLUMBING


class RecentKeys:
    """The principals of keys authenticated in the last `ttl_seconds`, by the key's hash; at most
    `max_keys` of them (the least recently seen go first)."""

    def __init__(self, ttl_seconds: float = RECENT_KEY_SECONDS, max_keys: int = MAX_RECENT_KEYS) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_keys = max_keys
        self._seen: dict[str, tuple[Principal, float]] = {}

    def remember(self, key: str, principal: Principal) -> None:
        digest = _digest(key)
        self._seen.pop(digest, None)  # re-inserted last: the most recently seen
        self._seen[digest] = (principal, time.monotonic())
        while len(self._seen) > self.max_keys:
            del self._seen[next(iter(self._seen))]

    def forget(self, key: str) -> None:
        self._seen.pop(_digest(key), None)

    def recall(self, key: str) -> Principal | None:
        """The principal of `key` if it was authenticated within the last `ttl_seconds`."""
        found = self._seen.get(_digest(key))
        if found is None:
            return None
        principal, seen_at = found
        if time.monotonic() - seen_at > self.ttl_seconds:
            self.forget(key)
            return None
        return principal


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
