"""`TokenLedgerMiddleware`: per-request token budgets for any ASGI app (Starlette, FastAPI).

    app.add_middleware(TokenLedgerMiddleware, ledger=ledger, model="gpt-4o-mini", estimate=2000)

Each HTTP request is checked before the app runs: `estimate` input tokens (an int, or a function of
the scope) plus `max_output_tokens` are reserved for its user. The user is, in order: `user_from(scope)`,
the authenticated `scope["user"]` (Starlette's AuthenticationMiddleware), `request.state.user`, then the
`user_header` (default `X-User`; trust it only behind a gateway that sets it). A denial answers
429 with `Retry-After` (seconds, at least 1) and a JSON body `{"error": "budget_exceeded", "message",
"decision"}`, and the app does not run.

After the response the request is settled, with the first of:
1. what the app settled itself through `request.state.tokenledger_grant` (a `Grant`:
   `await request.state.tokenledger_grant.settle(completion.usage)`): the provider's exact usage;
2. `usage_from(scope, status, headers)`, a callback returning a `Usage`, a provider usage object or
   a dict, or None;
3. response headers the app set: `X-Tokens-Input`, `X-Tokens-Output`, and optionally
   `X-Tokens-Cache-Read`, `X-Tokens-Cache-Write`, `X-Tokens-Reasoning` (removed before the response
   leaves, unless `strip_usage_headers=False`);
4. `request.state.tokenledger_usage` (a provider usage object or a dict) set by the app;
5. nothing reported: a response of status 400 or more is released (the app refused or failed), any
   other is charged the estimate as reserved (`unreported="estimate"`) or released (`"release"`).
An exception from the app releases the reservation. Websocket and lifespan scopes pass through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, MutableMapping
from typing import Any, Literal

from pydantic import ValidationError

from tokenledger.errors import BudgetExceeded, InvalidInput, PermissionDenied, StoreUnavailable
from tokenledger.integrations.guard import (
    Grant,
    SyncLedger,
    Usage,
    async_calls,
    check_request,
    make_spec,
    reserve,
)
from tokenledger.integrations.guard import usage_from as read_usage
from tokenledger.ledger import Ledger
from tokenledger.types import Attribution, CheckResult, Principal, Priority, UsageStatus

__all__ = ["GRANT_STATE_KEY", "USAGE_STATE_KEY", "TokenLedgerMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]
Headers = list[tuple[bytes, bytes]]

GRANT_STATE_KEY = "tokenledger_grant"
USAGE_STATE_KEY = "tokenledger_usage"
_USAGE_HEADERS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache-read": "cache_read_input_tokens",
    "cache-write": "cache_creation_input_tokens",
    "reasoning": "reasoning_output_tokens",
}
logger = logging.getLogger(__name__)


class TokenLedgerMiddleware:
    """Pure ASGI middleware: reserve per request, 429 when denied, settle after the response."""

    def __init__(
        self,
        app: ASGIApp,
        ledger: Ledger | SyncLedger | Callable[[Scope], Ledger | SyncLedger],
        *,
        model: str,
        estimate: int | Callable[[Scope], int] = 1000,
        max_output_tokens: int = 0,
        user_header: str | None = "X-User",
        user_from: Callable[[Scope], str | None] | None = None,
        principal: Principal | Callable[[Scope], Principal | None] | None = None,
        priority: Priority = "medium",
        attribution: Mapping[str, str] | None = None,
        usage_from: Callable[[Scope, int, Headers], object] | None = None,
        usage_header_prefix: str = "X-Tokens-",
        strip_usage_headers: bool = True,
        unreported: Literal["estimate", "release"] = "estimate",
        exclude_paths: Collection[str] = (),
        default_retry_after: int = 60,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.model = model
        self.estimate = estimate
        self.max_output_tokens = max_output_tokens
        self.user_header = user_header.lower().encode("latin-1") if user_header else None
        self.user_from = user_from
        self.principal = principal
        self.priority: Priority = priority
        self.attribution = dict(attribution or {})
        Attribution(**self.attribution)  # refuse a bad static attribution at start-up, not per request
        self.usage_from = usage_from
        self.usage_prefix = usage_header_prefix.lower().encode("latin-1")
        self.strip_usage_headers = strip_usage_headers
        self.unreported = unreported
        self.exclude_paths = frozenset(exclude_paths)
        self.default_retry_after = max(1, default_retry_after)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        try:
            grant = await self._reserve(scope)
        except BudgetExceeded as denied:
            await self._deny(send, denied)
            return
        except (InvalidInput, ValidationError) as error:
            await _send_json(send, 400, {"error": "invalid_request", "message": str(error)})
            return
        except PermissionDenied as error:
            await _send_json(send, 403, {"error": "permission_denied", "message": str(error)})
            return
        except StoreUnavailable as error:
            headers = [(b"retry-after", str(self.default_retry_after).encode())]
            await _send_json(send, 503, {"error": "ledger_unavailable", "message": str(error)}, headers)
            return

        state = scope.setdefault("state", {})
        state[GRANT_STATE_KEY] = grant
        status = 500
        headers = []

        async def send_and_watch(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                if self.strip_usage_headers:
                    message = {**message, "headers": [h for h in headers if not self._is_usage_header(h[0])]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException:
            await grant.release()
            raise
        await self._settle(scope, grant, status, headers)

    # --- before ---------------------------------------------------------------------------------

    async def _reserve(self, scope: Scope) -> Grant:
        ledger = self.ledger(scope) if callable(self.ledger) else self.ledger
        principal = self.principal(scope) if callable(self.principal) else self.principal
        estimate = self.estimate(scope) if callable(self.estimate) else self.estimate
        spec = make_spec(
            model=self.model,
            max_output_tokens=self.max_output_tokens,
            priority=self.priority,
            metadata={"settled_by": "asgi"},
            attribution={**self.attribution, "user": self._user(scope)},
        )
        request = check_request(spec, input_tokens=estimate)
        return await reserve(async_calls(ledger), request, principal, spec)

    def _user(self, scope: Scope) -> str | None:
        if self.user_from is not None:
            return self.user_from(scope)
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            try:
                identity = user.identity
            # Starlette's BaseUser declares `identity` and raises NotImplementedError where a user class
            # leaves it out; other auth libraries have no such attribute: then fall back to display_name.
            except (NotImplementedError, AttributeError):
                identity = getattr(user, "display_name", None)
            if isinstance(identity, str) and identity:
                return identity
        state_user = (scope.get("state") or {}).get("user")
        if isinstance(state_user, str) and state_user:
            return state_user
        if self.user_header is not None:
            for name, value in scope.get("headers") or ():
                if name.lower() == self.user_header:
                    return str(value.decode("latin-1")).strip() or None
        return None

    async def _deny(self, send: Send, denied: BudgetExceeded) -> None:
        decision = denied.decision
        retry_after = self.default_retry_after
        body: dict[str, Any] = {"error": "budget_exceeded", "message": str(denied)}
        if isinstance(decision, CheckResult):
            if decision.retry_after_seconds is not None:
                retry_after = max(1, decision.retry_after_seconds)
            body["decision"] = decision.model_dump(mode="json")
        await _send_json(send, 429, body, [(b"retry-after", str(retry_after).encode())])

    # --- after ----------------------------------------------------------------------------------

    def _is_usage_header(self, name: bytes) -> bool:
        return name.lower().startswith(self.usage_prefix)

    def _header_usage(self, headers: Headers) -> Usage | None:
        counts: dict[str, int] = {}
        for name, value in headers:
            lowered = name.lower()
            if not lowered.startswith(self.usage_prefix):
                continue
            field = _USAGE_HEADERS.get(lowered[len(self.usage_prefix) :].decode("latin-1"))
            if field is None:
                continue
            try:
                counts[field] = max(0, int(value))
            except ValueError:
                logger.warning("ignored usage header %s: not an integer", name.decode("latin-1"))
        if "input_tokens" not in counts and "output_tokens" not in counts:
            return None
        return read_usage(counts)

    def _reported(self, scope: Scope, status: int, headers: Headers) -> object:
        if self.usage_from is not None:
            reported = self.usage_from(scope, status, headers)
            if reported is not None:
                return reported
        from_headers = self._header_usage(headers)
        if from_headers is not None:
            return from_headers
        return (scope.get("state") or {}).get(USAGE_STATE_KEY)

    async def _settle(self, scope: Scope, grant: Grant, status: int, headers: Headers) -> None:
        if grant.settled:
            return
        outcome: UsageStatus = "success" if status < 400 else "error"
        reported = self._reported(scope, status, headers)
        if reported is not None:
            await grant.settle(reported, status=outcome)
        elif status >= 400 or self.unreported == "release":
            await grant.release()
        else:
            await grant.record(
                input_tokens=grant.input_tokens,
                output_tokens=grant.max_output_tokens,
                metadata={"settled_by": "asgi_estimate"},
            )


async def _send_json(
    send: Send, status: int, body: Mapping[str, Any], headers: Headers | None = None
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
