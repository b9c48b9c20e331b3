"""The MCP server over HTTP: streamable HTTP at `/mcp`, legacy SSE at `/sse` (+ `/messages/`), `/healthz`,
Prometheus metrics at `/metrics` and a web dashboard at `/dashboard`.

Every MCP request passes four checks, in this order, before the SDK sees it:

1. `Host` is one this server answers to (else 421): DNS rebinding protection.
2. `Origin`, when present, is a loopback or allowed origin (else 403): a web page cannot drive it.
3. The body is within the limit, by `Content-Length` and while streaming (else 413).
4. `Authorization: Bearer <key>` is a live API key (else 401 with `WWW-Authenticate: Bearer`).

The key is looked up in the database on every request, so a revoked key is refused at once. The caller's
`Principal` is put in the request scope's state: a tool finds it at
`ctx.request_context.request.state.principal` (on streamable HTTP, and on SSE's `POST /messages/`).
While the database cannot be reached, only a call that needs none (`count_tokens`, `fit_messages` and the
MCP handshake) goes on, for a key this server authenticated in the last minutes; every other call gets 503
(`tokenledger.mcp.outage`). `/healthz` needs none of this: it says whether the server and its database
answer, and during an outage what still works. A request whose client goes away before its response
starts is cancelled, with its database queries (CancelOnDisconnect).

`/metrics` passes the same checks. An admin or viewer key reads its own tenant's series only; the whole
process's (every tenant summed, with the process's CPU and memory) needs the operator's scrape token
(`TOKENLEDGER_METRICS_TOKEN`); without one configured, no credential reads it.

`/dashboard` passes checks 1-3 and authenticates itself, as a browser cannot easily send a bearer header:
`/dashboard?key=<key>` once (answered with a redirect that drops the key from the address) or the
sign-in form (`POST /dashboard/login`) puts the key in an HttpOnly, SameSite=Strict cookie scoped to
`/dashboard`, checked against the database on every request like a bearer key. `/dashboard/chargeback`
(a printable chargeback statement) signs in the same way. That is the only place a key in a query string
counts (`/mcp?access_token=` does not authenticate), and the access log shows no query string at all
(`tokenledger.mcp.redaction`).

An admin approves or denies override requests on the dashboard: a form that POSTs to `/dashboard/overrides`
with the same cookie and a form token. SameSite=Strict keeps the cookie off requests from other sites and
the Origin check refuses foreign origins, but neither stops a page of the same site (a sibling subdomain,
or another port of localhost: loopback origins are always allowed) from posting with the cookie. So the
form carries a token derived from the signed-in key (`dashboard_form_token`), which such a page cannot
read or compute; a POST without it changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenledger import dashboard
from tokenledger.errors import (
    Conflict,
    InternalError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ReportBusy,
    ReportTimeout,
    StoreUnavailable,
    TokenLedgerError,
    internal_error,
)
from tokenledger.ledger import Ledger
from tokenledger.mcp.outage import OFFLINE_TOOLS, RECENT_KEY_SECONDS, RecentKeys, needs_no_database
from tokenledger.mcp.redaction import AccessLogRedaction
from tokenledger.mcp.server import TokenLedgerServer
from tokenledger.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenledger.metrics import Metrics
from tokenledger.reports import ReportQuery
from tokenledger.types import Principal, explain_validation_error

__all__ = [
    "DASHBOARD_COOKIE",
    "DASHBOARD_PATH",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MCP_PATH",
    "METRICS_PATH",
    "SSE_PATH",
    "AccessPolicy",
    "CancelOnDisconnect",
    "Transport",
    "build_app",
]

log = logging.getLogger("tokenledger.http")

Transport = Literal["http", "sse"]

MCP_PATH: Final = "/mcp"
SSE_PATH: Final = "/sse"
MESSAGES_PATH: Final = "/messages/"
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"
DASHBOARD_PATH: Final = "/dashboard"
DASHBOARD_LOGIN_PATH: Final = "/dashboard/login"
DASHBOARD_LOGOUT_PATH: Final = "/dashboard/logout"
CHARGEBACK_PATH: Final = "/dashboard/chargeback"
DASHBOARD_OVERRIDES_PATH: Final = "/dashboard/overrides"
DASHBOARD_PATHS: Final = frozenset(
    {DASHBOARD_PATH, DASHBOARD_LOGIN_PATH, DASHBOARD_LOGOUT_PATH, CHARGEBACK_PATH, DASHBOARD_OVERRIDES_PATH}
)
DASHBOARD_COOKIE: Final = "tokenledger_key"
DASHBOARD_COOKIE_SECONDS: Final = 12 * 3600
METRICS_ROLES: Final = ("admin", "viewer")
# Set in the scope's state by the guard when the operator's scrape token was presented.
PROCESS_SCRAPE: Final = "tokenledger_process_scrape"
# No script, no external anything: the page is self-contained HTML with inline CSS and SVG.
DASHBOARD_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# An 8 MiB text (the largest a tool takes) as a JSON-RPC call, with room for escaping and the envelope.
DEFAULT_MAX_REQUEST_BYTES: Final = 10 * 1024 * 1024
HEALTH_TIMEOUT_SECONDS: Final = 2.0

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Our checks below are the authority; the SDK's own Host/Origin check would only repeat them.
_SDK_HEADER_CHECKS_OFF: Final = TransportSecuritySettings(enable_dns_rebinding_protection=False)


def _split_authority(authority: str) -> tuple[str, str | None] | None:
    """(host, port) of `host[:port]`, host lowercased and without IPv6 brackets; None if malformed."""
    try:
        parts = urlsplit(f"//{authority.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError:
        if authority.endswith(":*"):  # a pattern's wildcard port
            split = _split_authority(authority[:-2])
            return None if split is None or split[1] is not None else (split[0], "*")
        return None
    if not host:
        return None
    return host, None if port is None else str(port)


@dataclass(frozen=True)
class AccessPolicy:
    """Which `Host` and `Origin` headers the server accepts.

    Loopback names (127.0.0.1, localhost, ::1) on any port are always accepted, as Hosts and as
    http(s) Origins. `allowed_hosts` adds `name` (any port), `name:port` or `name:*`; `allowed_origins`
    adds `scheme://name[:port]` or `scheme://name:*`. `*` in either list accepts anything (for a proxy
    that checks these itself). A request without an `Origin` header (any non-browser client) passes.
    """

    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()

    @classmethod
    def for_bind(
        cls, bind_host: str, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
    ) -> AccessPolicy:
        """The policy of a server bound to `bind_host`: a named, non-wildcard bind address is a Host too."""
        hosts = [h.strip() for h in allowed_hosts if h.strip()]
        if bind_host not in ("0.0.0.0", "::", "") and bind_host.strip("[]").lower() not in LOOPBACK_HOSTS:
            hosts.append(bind_host if ":" not in bind_host else f"[{bind_host.strip('[]')}]")
        return cls(tuple(hosts), tuple(o.strip() for o in allowed_origins if o.strip()))

    def host_allowed(self, header: str | None) -> bool:
        if "*" in self.allowed_hosts:
            return True
        if not header:
            return False
        split = _split_authority(header)
        if split is None:
            return False
        host, port = split
        if host in LOOPBACK_HOSTS:
            return True
        for pattern in self.allowed_hosts:
            allowed = _split_authority(pattern)
            if allowed is not None and allowed[0] == host and allowed[1] in (None, "*", port):
                return True
        return False

    def origin_allowed(self, header: str | None) -> bool:
        if header is None or "*" in self.allowed_origins:
            return True
        origin = _split_origin(header)
        if origin is None:  # "null" (a sandboxed or file: page) or garbage
            return False
        scheme, host, port = origin
        if host in LOOPBACK_HOSTS:
            return True
        for pattern in self.allowed_origins:
            allowed = _split_origin(pattern)
            if allowed is not None and allowed[:2] == (scheme, host) and allowed[2] in ("*", port):
                return True
        return False


def _split_origin(origin: str) -> tuple[str, str, str] | None:
    """(scheme, host, port) of an origin, the port made explicit; None if it is not an http(s) origin."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    split = _split_authority(authority.rstrip("/"))
    if split is None:
        return None
    host, port = split
    return scheme, host, port or str(_DEFAULT_PORTS[scheme])


def _refusal(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status, headers=headers)


class _BodyTooLarge(Exception):
    pass


class _ClientLeft(Exception):
    """The client disconnected (or was disconnected: a read timeout) before its body was complete."""


class CancelOnDisconnect:
    """ASGI middleware: a request whose client goes away before its response starts is cancelled, and
    with it the tool call or dashboard it serves and their database queries (Store cancels a report's
    query in PostgreSQL).

    Uvicorn never cancels an app whose client left, and the SDK answering in JSON (streamable HTTP here)
    never reads `receive` again once it has the body, so nothing else would notice. This middleware is
    the only reader of the real `receive`: it hands the body on, and on `http.disconnect` cancels the
    app if no response has started. A started response is left to end its own way: work after a 202
    (an SSE message) goes on, and the SSE stream, which watches `receive` for the disconnect itself,
    closes its session, which cancels that session's tool calls. It buffers what it reads: it sits
    inside RequestGuard, which bounds the body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming, to_app = anyio.create_memory_object_stream[Message](math.inf)
        started = False

        async def app_receive() -> Message:
            try:
                return await to_app.receive()
            except anyio.EndOfStream:
                return {"type": "http.disconnect"}

        async def app_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async with anyio.create_task_group() as tasks, to_app:

            async def pump() -> None:
                async with incoming:
                    while (message := await receive())["type"] != "http.disconnect":
                        await incoming.send(message)
                if not started:
                    tasks.cancel_scope.cancel()

            tasks.start_soon(pump)
            await self.app(scope, app_receive, app_send)
            tasks.cancel_scope.cancel()


class RequestGuard:
    """ASGI middleware: Host (421), Origin (403), body size (413), bearer key (401), in that order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        ledger: Ledger,
        policy: AccessPolicy,
        max_request_bytes: int,
        open_paths: Collection[str] = (HEALTH_PATH,),
        browser_paths: Collection[str] = (),
        metrics_token: str | None = None,
    ) -> None:
        if max_request_bytes <= 0:
            raise ValueError("max_request_bytes must be a positive number of bytes")
        self.app = app
        self.ledger = ledger
        self.policy = policy
        self.max_request_bytes = max_request_bytes
        self.open_paths = frozenset(open_paths)
        # Pages that authenticate themselves (a cookie or a form): Host, Origin and size checks only.
        self.browser_paths = frozenset(browser_paths)
        self.metrics_token = metrics_token or None
        # Keys seen lately, for counting through a database outage (see tokenledger.mcp.outage).
        self.recent_keys = RecentKeys()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check_headers(headers)
        body = b""
        if refusal is None:
            try:
                body, receive = await self._buffered_body(receive)
            except _BodyTooLarge:
                refusal = self._too_large()
            except _ClientLeft:
                return  # nobody to answer: no key lookup, no application call
        if refusal is None and scope["path"] in self.browser_paths:
            await self.app(scope, receive, send)
            return
        if (
            refusal is None
            and scope["path"] == METRICS_PATH
            and self.metrics_token is not None
            and _scrape_token_matches(headers, self.metrics_token)
        ):
            scope["state"] = {**scope.get("state", {}), PROCESS_SCRAPE: True}
            await self.app(scope, receive, send)
            return
        if refusal is None:
            refusal = await self._authenticate(scope, headers, body)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        user = scope["user"]
        reset = auth_context_var.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    def _check_headers(self, headers: Headers) -> Response | None:
        host = headers.get("host")
        if not self.policy.host_allowed(host):
            log.warning("refused a request for host %r (421): not an allowed host", host)
            return _refusal(421, "misdirected_request", f"host {host!r} is not served here; see --allow-host")
        origin = headers.get("origin")
        if not self.policy.origin_allowed(origin):
            log.warning("refused a request from origin %r (403): not an allowed origin", origin)
            return _refusal(403, "forbidden_origin", f"origin {origin!r} is not allowed; see --allow-origin")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        limit = self.max_request_bytes
        return _refusal(
            413, "request_too_large", f"the request body is over {limit} bytes; see --max-request-bytes"
        )

    async def _buffered_body(self, receive: Receive) -> tuple[bytes, Receive]:
        """Read the whole body (refusing it past the limit); give it back with a `receive` that replays it.

        A GET (the SSE stream) has an empty body and returns at once; the replay then hands on to the
        real `receive`, which later reports the client's disconnect.
        """
        body = bytearray()
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            if message["type"] != "http.request":
                pending.append(message)
                break
            body.extend(message.get("body", b""))
            if len(body) > self.max_request_bytes:
                raise _BodyTooLarge
            if not message.get("more_body", False):
                break
        whole = bytes(body)
        if not pending:
            pending.append({"type": "http.request", "body": whole, "more_body": False})

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return whole, replay

    async def _authenticate(self, scope: Scope, headers: Headers, body: bytes) -> Response | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return _refusal(
                401,
                "invalid_request",
                "an API key is required: send 'Authorization: Bearer <key>' (see `tokenledger keys create`)",
                headers={"WWW-Authenticate": 'Bearer realm="tokenledger"'},
            )
        offline = self._needs_no_database(scope, body)
        try:
            principal = await self._look_up(key, bounded=offline)
        except TokenLedgerError as error:
            unreachable = offline and isinstance(error, StoreUnavailable)
            principal = self.recent_keys.recall(key) if unreachable else None
            if principal is None:
                log.error("could not check an API key: %s", error)
                return _refusal(503, "temporarily_unavailable", "the key store is unavailable; retry shortly")
            log.warning("the key store is unavailable: a call that needs no database goes on: %s", error)
        if principal is None:
            log.info("refused an unknown or revoked API key from %s", _client(scope))
            return _refusal(
                401,
                "invalid_token",
                "the API key is unknown or revoked",
                headers={
                    "WWW-Authenticate": (
                        'Bearer realm="tokenledger", error="invalid_token", '
                        'error_description="the API key is unknown or revoked"'
                    )
                },
            )
        scope["state"] = {**scope.get("state", {}), "principal": principal}
        scope["auth"] = AuthCredentials([principal.role])
        # The SDK binds an SSE or streamable-HTTP session to the credential that opened it.
        scope["user"] = AuthenticatedUser(_access_token(principal))
        return None

    async def _look_up(self, key: str, *, bounded: bool) -> Principal | None:
        """The key's principal, from the database; remembered (or forgotten) for an outage.

        `bounded`: a call that could go on without the database waits for it no longer than /healthz does
        before calling it unavailable, rather than the pool's whole wait.
        """
        if bounded:
            try:
                with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
                    principal = await self.ledger.authenticate(key)
            except TimeoutError as error:
                raise StoreUnavailable(f"no answer within {HEALTH_TIMEOUT_SECONDS:g} s") from error
        else:
            principal = await self.ledger.authenticate(key)
        if principal is None:
            self.recent_keys.forget(key)
        else:
            self.recent_keys.remember(key, principal)
        return principal

    @staticmethod
    def _needs_no_database(scope: Scope, body: bytes) -> bool:
        """Counting (and what leads to it: the handshake, opening an SSE stream) needs no database."""
        if scope["method"] == "GET":
            return bool(scope["path"] == SSE_PATH)
        return scope["path"] in (MCP_PATH, MESSAGES_PATH) and needs_no_database(body)


def _scrape_token_matches(headers: Headers, token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _access_token(principal: Principal) -> AccessToken:
    """The SDK's view of a key: its id (never the key itself), tenant and role."""
    key_id = principal.key_id or "unknown"
    return AccessToken(
        token=key_id,
        client_id=key_id,
        scopes=[principal.role],
        subject=principal.user,
        claims={"iss": f"tokenledger:{principal.tenant_id}"},
    )


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown client"


def _health_endpoint(ledger: Ledger) -> Callable[[Request], Awaitable[Response]]:
    async def healthz(request: Request) -> Response:
        """200 whenever the server answers; `database` says if PostgreSQL does, and when it does not,
        what still works (the request guard uses the same timeout to call the database unavailable)."""
        health: dict[str, Any] = {"status": "ok", "database": "ok"}
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_SECONDS):
                await ledger.ping()
        except (TokenLedgerError, TimeoutError, OSError) as error:
            log.warning("health check: the database is unavailable: %s", error)
            health = {
                "status": "degraded",
                "database": "unavailable",
                "available_tools": list(OFFLINE_TOOLS),
                "detail": (
                    f"{' and '.join(OFFLINE_TOOLS)} answer for keys this server authenticated in the last "
                    f"{RECENT_KEY_SECONDS:g} s; every other call answers 503 until the database returns"
                ),
            }
        return JSONResponse(health, headers={"Cache-Control": "no-store"})

    return healthz


# --- /metrics ----------------------------------------------------------------------------------


def _metrics_endpoint(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def scrape(request: Request) -> Response:
        """The Prometheus text format: the key's tenant (role admin or viewer), or the whole process for
        the scrape token."""
        state = request.scope.get("state", {})
        principal = state.get("principal")
        if state.get(PROCESS_SCRAPE) is True:
            exposition = metrics.process_exposition()
        elif not isinstance(principal, Principal):  # the guard lets nothing else through; fail closed
            return _refusal(401, "invalid_request", "an API key or the scrape token is required")
        elif principal.role not in METRICS_ROLES:
            return _refusal(
                403,
                "insufficient_scope",
                f"role {principal.role!r} cannot read metrics; allowed: admin, viewer",
            )
        else:
            exposition = metrics.tenant_exposition(principal.tenant_id)
        return Response(exposition, media_type=METRICS_CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return scrape


class _ToolTimer:
    """MCP middleware: the time of each `tools/call` in the server, by tool and outcome."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = str((ctx.params or {}).get("name", ""))
        started = time.perf_counter()
        ok = False
        try:
            result = await call_next(ctx)
            ok = not _is_error(result)
            return result
        finally:
            self.metrics.observe_tool(name, time.perf_counter() - started, ok=ok, tenant=_tenant_of(ctx))


def _tenant_of(ctx: ServerRequestContext[Any, Any]) -> str:
    """The tenant of the request's principal ("" without one: counted in the process total only)."""
    scope = getattr(ctx.request, "scope", None)
    principal = scope.get("state", {}).get("principal") if isinstance(scope, dict) else None
    return principal.tenant_id if isinstance(principal, Principal) else ""


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, dict):
        return bool(result.get("isError") or result.get("is_error"))
    return bool(getattr(result, "is_error", False))


# --- /dashboard --------------------------------------------------------------------------------

_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": DASHBOARD_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _page(html: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(html, status, headers={**_PAGE_HEADERS, **(headers or {})})


def _login_page(message: str | None = None, status: int = 200) -> HTMLResponse:
    challenge = {"WWW-Authenticate": 'Bearer realm="tokenledger"'} if status == 401 else None
    return _page(dashboard.render_login(message), status, challenge)


def _signed_in(request: Request, key: str, target: str) -> Response:
    """A redirect to `target` that keeps the key in the dashboard's cookie."""
    response = RedirectResponse(target, status_code=303, headers=_PAGE_HEADERS)
    response.set_cookie(
        DASHBOARD_COOKIE,
        key,
        max_age=DASHBOARD_COOKIE_SECONDS,
        path=DASHBOARD_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def dashboard_form_token(key: str) -> str:
    """The token a dashboard form carries: an HMAC of a fixed label under the signed-in API key, so that
    only a page that knows the key (the dashboard, rendered for it) can post a decision. Stateless: any
    server process checks it."""
    return hmac.new(key.encode(), b"tokenledger dashboard form", hashlib.sha256).hexdigest()


def _dashboard_endpoints(ledger: Ledger) -> list[BaseRoute]:
    async def check_key(key: str) -> Principal | Response | None:
        try:
            return await ledger.authenticate(key)
        except TokenLedgerError as error:
            log.error("could not check an API key: %s", error)
            return _page(
                dashboard.render_message("Unavailable", "The key store is unavailable; retry shortly."), 503
            )

    async def signed_in(request: Request) -> Principal | Response:
        """The principal of the cookie's key; `?key=` signs in (a redirect to the same page without it);
        no key: the sign-in form."""
        query = request.query_params
        given = query.get("key")
        if given is not None:
            if request.headers.get("sec-fetch-site") == "cross-site":
                # A link on another site must not sign a browser in with a key of its choosing.
                return _login_page("Sign-in links from other sites are refused: use this form.", 403)
            principal = await check_key(given.strip())
            if isinstance(principal, Response):
                return principal
            if principal is None:
                return _login_page("That API key is unknown or revoked.", 401)
            rest = urlencode([(k, v) for k, v in query.multi_items() if k != "key"])
            return _signed_in(request, given.strip(), request.url.path + (f"?{rest}" if rest else ""))
        key = request.cookies.get(DASHBOARD_COOKIE)
        if not key:
            return _login_page()
        principal = await check_key(key)
        if isinstance(principal, Response):
            return principal
        if principal is None:
            response = _login_page("Your API key is unknown or was revoked: sign in again.", 401)
            response.delete_cookie(DASHBOARD_COOKIE, path=DASHBOARD_PATH)
            return response
        return principal

    async def page(request: Request) -> Response:
        """The dashboard for the signed-in key."""
        principal = await signed_in(request)
        if isinstance(principal, Response):
            return principal
        query = request.query_params
        try:
            days = int(query.get("days", "30"))
        except ValueError:
            return _page(dashboard.render_message("Bad request", "days: a whole number, 1 to 366"), 400)
        try:
            data = await ledger.dashboard(
                principal, days=days, timezone=query.get("tz", "UTC"), currency=query.get("currency") or None
            )
        except InvalidInput as error:
            return _page(dashboard.render_message("Bad request", str(error)), 400)
        except ReportBusy as error:
            retry = {"Retry-After": str(error.retry_after_seconds)}
            return _page(dashboard.render_message("Busy", str(error)), 503, retry)
        except ReportTimeout:
            message = "The dashboard's queries ran past the report time limit; show fewer days (?days=7)."
            return _page(dashboard.render_message("Too slow", message), 503)
        except InternalError as error:  # logged under its id where it arose; the page shows the id
            return _page(dashboard.render_message("Internal error", str(error)), 500)
        except TokenLedgerError as error:
            log.error("dashboard: %s", error)
            return _page(
                dashboard.render_message("Unavailable", "The database is unavailable; retry shortly."), 503
            )
        key = request.cookies.get(DASHBOARD_COOKIE, "")
        csrf = dashboard_form_token(key) if principal.role == "admin" else None
        return _page(dashboard.render(data, csrf=csrf))

    async def decide_override(request: Request) -> Response:
        """The approve/deny form: `id`, `action` (approve or deny), `reason`, `csrf`; admins only."""
        key = request.cookies.get(DASHBOARD_COOKIE)
        if not key:
            return _login_page("Sign in to decide on override requests.", 401)
        principal = await check_key(key)
        if isinstance(principal, Response):
            return principal
        if principal is None:
            return _login_page("Your API key is unknown or was revoked: sign in again.", 401)
        form = parse_qs((await request.body()).decode("utf-8", "replace"))

        def field(name: str) -> str:
            return (form.get(name) or [""])[0].strip()

        if not hmac.compare_digest(field("csrf").encode(), dashboard_form_token(key).encode()):
            message = "This form did not come from your dashboard page: reload the dashboard and try again."
            return _page(dashboard.render_message("Refused", message), 403)
        action, reason = field("action"), field("reason") or None
        if action not in ("approve", "deny") or not field("id").isdigit():
            message = "id: a request's number; action: approve or deny"
            return _page(dashboard.render_message("Bad request", message), 400)
        override_id = int(field("id"))
        try:
            if action == "approve":
                await ledger.approve_override(override_id, principal, reason=reason)
            else:
                await ledger.deny_override(override_id, reason or "", principal)
        except PermissionDenied as error:
            return _page(dashboard.render_message("Not allowed", str(error)), 403)
        except NotFound as error:
            return _page(dashboard.render_message("Not found", str(error)), 404)
        except Conflict as error:
            return _page(dashboard.render_message("Already decided", str(error)), 409)
        except InvalidInput as error:
            return _page(dashboard.render_message("Bad request", str(error)), 400)
        except TokenLedgerError as error:
            log.error("override decision: %s", error)
            return _page(
                dashboard.render_message("Unavailable", "The database is unavailable; retry shortly."), 503
            )
        return RedirectResponse(f"{DASHBOARD_PATH}#overrides", status_code=303, headers=_PAGE_HEADERS)

    async def chargeback(request: Request) -> Response:
        """A printable chargeback statement: `?period=YYYY-MM&by=team&tz=UTC` (a member: its own lines)."""
        principal = await signed_in(request)
        if isinstance(principal, Response):
            return principal
        query = request.query_params
        try:
            wanted = ReportQuery.model_validate(
                {
                    "view": "chargeback",
                    "period": query.get("period") or None,
                    "by": query.get("by") or "team",
                    "timezone": query.get("tz") or "UTC",
                }
            )
            report = await ledger.report(wanted, principal)
        except ValidationError as error:
            return _page(dashboard.render_message("Bad request", explain_validation_error(error)), 400)
        except InvalidInput as error:
            return _page(dashboard.render_message("Bad request", str(error)), 400)
        except PermissionDenied as error:
            return _page(dashboard.render_message("Not allowed", str(error)), 403)
        except TokenLedgerError as error:
            log.error("chargeback page: %s", error)
            return _page(
                dashboard.render_message("Unavailable", "The database is unavailable; retry shortly."), 503
            )
        return _page(
            dashboard.render_chargeback(
                dashboard.Chargeback(
                    tenant=principal.tenant_id,
                    role=principal.role,
                    user=principal.user if principal.role == "member" else None,
                    since=report.since or datetime.now(UTC),
                    until=report.until or datetime.now(UTC),
                    rows=report.rows,
                    totals=report.totals or {},
                    notes=report.notes,
                )
            )
        )

    async def login(request: Request) -> Response:
        """The sign-in form's POST: `key=<API key>`, form-encoded."""
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        if not key:
            return _login_page("Enter an API key.", 401)
        principal = await check_key(key)
        if isinstance(principal, Response):
            return principal
        if principal is None:
            return _login_page("That API key is unknown or revoked.", 401)
        return _signed_in(request, key, DASHBOARD_PATH)

    async def logout(request: Request) -> Response:
        response = RedirectResponse(DASHBOARD_PATH, status_code=303, headers=_PAGE_HEADERS)
        response.delete_cookie(DASHBOARD_COOKIE, path=DASHBOARD_PATH)
        return response

    return [
        Route(DASHBOARD_PATH, page, methods=["GET"]),
        Route(CHARGEBACK_PATH, chargeback, methods=["GET"]),
        Route(DASHBOARD_LOGIN_PATH, login, methods=["POST"]),
        Route(DASHBOARD_LOGOUT_PATH, logout, methods=["POST"]),
        Route(DASHBOARD_OVERRIDES_PATH, decide_override, methods=["POST"]),
    ]


# --- the app -----------------------------------------------------------------------------------


def build_app(
    ledger: Ledger,
    server: MCPServer,
    *,
    transports: Sequence[Transport] = ("http", "sse"),
    policy: AccessPolicy | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    metrics: Metrics | None = None,
    metrics_token: str | None = None,
) -> Starlette:
    """The ASGI app serving `server` on `transports` behind the request guard, plus `/healthz`,
    `/metrics` and `/dashboard`.

    Streamable HTTP runs stateless, answering in JSON: any request may reach any server process, as the
    ledger's state is all in PostgreSQL. The app's lifespan runs the SDK's session manager; serve it
    with lifespan on.

    The ledger reports to `metrics` (a new registry of this app's own when None): `ledger.metrics` is
    set to it, and the server's tool calls are timed. `metrics_token`, when given, is the operator's
    credential for the whole process's metrics; API keys read their own tenant's.
    """
    if not transports:
        raise ValueError("give at least one of the transports 'http' and 'sse'")
    metrics = (
        metrics
        or ledger.metrics
        or Metrics(models=ledger.catalog.model_names(), providers=ledger.catalog.providers())
    )
    ledger.metrics = metrics
    if not any(isinstance(m, _ToolTimer) for m in server.middleware):
        server.middleware.append(_ToolTimer(metrics))
    AccessLogRedaction.install()
    routes: list[BaseRoute] = [
        Route(HEALTH_PATH, _health_endpoint(ledger), methods=["GET"]),
        Route(METRICS_PATH, _metrics_endpoint(metrics), methods=["GET"]),
        *_dashboard_endpoints(ledger),
    ]
    run_sessions: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None
    if "http" in transports:
        http_app = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            # Plain JSON answers: a tool call here never streams progress or asks the client anything,
            # and JSON halves the round trip of handshake-era clients against an SSE-framed answer.
            json_response=True,
            max_request_body_size=max_request_bytes,
            transport_security=_SDK_HEADER_CHECKS_OFF,
        )
        routes.extend(http_app.routes)
        run_sessions = server.session_manager.run
    if "sse" in transports:
        sse_app = server.sse_app(
            sse_path=SSE_PATH,
            message_path=MESSAGES_PATH,
            max_request_body_size=max_request_bytes,
            transport_security=_SDK_HEADER_CHECKS_OFF,
        )
        routes.extend(route for route in sse_app.routes if route not in routes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # Every tool, whatever role the server's default principal has (its list is that role's).
        if isinstance(server, TokenLedgerServer):
            metrics.known_tools(server.tool_names())
        else:
            metrics.known_tools([tool.name for tool in await server.list_tools()])
        async with contextlib.AsyncExitStack() as stack:
            if run_sessions is not None:
                await stack.enter_async_context(run_sessions())
            yield {}

    guard = Middleware(
        RequestGuard,
        ledger=ledger,
        policy=policy or AccessPolicy(),
        max_request_bytes=max_request_bytes,
        browser_paths=DASHBOARD_PATHS,
        metrics_token=metrics_token,
    )
    return Starlette(
        routes=routes,
        middleware=[guard, Middleware(CancelOnDisconnect)],
        lifespan=lifespan,
        exception_handlers={Exception: _internal_error_response},
    )


async def _internal_error_response(request: Request, error: Exception) -> Response:
    """Any route's crash: logged with its traceback under an id; the answer is a 500 naming that id."""
    failure = internal_error(log, error, f"serving {request.method} {request.url.path}")
    return JSONResponse({"error": str(failure)}, status_code=500)


def describe(bind_host: str, port: int, transports: Sequence[Transport]) -> dict[str, str]:
    """The URLs of a server bound to `bind_host:port`, by name, for people and config snippets."""
    shown = "127.0.0.1" if bind_host in ("0.0.0.0", "") else ("[::1]" if bind_host == "::" else bind_host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}"
    urls = {"health": base + HEALTH_PATH}
    if "http" in transports:
        urls["mcp"] = base + MCP_PATH
    if "sse" in transports:
        urls["sse"] = base + SSE_PATH
    urls["metrics"] = base + METRICS_PATH
    urls["dashboard"] = base + DASHBOARD_PATH
    return urls
