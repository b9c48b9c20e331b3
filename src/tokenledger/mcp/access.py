"""Who is calling: the principal of an MCP request.

Transports and where the principal comes from:

- **streamable HTTP** (`/mcp`, stateful or stateless) and **legacy SSE** (`/sse` + `POST /messages/`): the
  SDK hands every inbound message a Starlette `Request` built from the ASGI scope of the HTTP request that
  carried it (`ServerMessageMetadata.request_context`, surfaced as `ctx.request_context.request`). For
  SSE that is the `POST /messages/` request of each message, not the long-lived `GET /sse`, so the auth
  middleware must run on both routes. The transport's auth middleware stores the authenticated
  `Principal` in the scope's state (`request.state.principal`, i.e. `scope["state"]["principal"]`).
  A request that reached us without one is refused: HTTP never falls back to the default principal.
- **stdio** and the **in-memory** test client: there is no request object; the server acts as the
  configured default principal (by default the admin of tenant `default`).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from tokenledger.types import Principal

__all__ = ["PrincipalMiddleware", "principal_of", "principal_of_request", "request_principal"]

UNAUTHENTICATED = "unauthenticated: this HTTP request carries no API key principal; send a bearer API key"

# The request being served, for handlers the SDK gives no Context (static resources).
_current: ContextVar[ServerRequestContext[Any, Any] | None] = ContextVar("tokenledger_request", default=None)


def principal_of_request(
    request_context: ServerRequestContext[Any, Any] | None, default: Principal
) -> Principal:
    """The principal of a low-level request context: the HTTP request's, or `default` without one."""
    request = None if request_context is None else request_context.request
    if request is None:
        return default
    state = getattr(request, "state", None)
    principal = getattr(state, "principal", None) if state is not None else None
    if principal is None and isinstance(getattr(request, "scope", None), dict):
        principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise ToolError(UNAUTHENTICATED)
    return principal


def principal_of(ctx: Context[Any, Any], default: Principal) -> Principal:
    """The principal of a tool, resource-template or prompt call.

    Raises ToolError("unauthenticated ...") for an HTTP request without a principal.
    """
    try:
        request_context = ctx.request_context
    except ValueError:  # a Context built outside a request (direct `MCPServer.call_tool`)
        return default
    return principal_of_request(request_context, default)


def request_principal(default: Principal) -> Principal:
    """The principal of the request being served, for handlers that get no Context."""
    return principal_of_request(_current.get(), default)


class PrincipalMiddleware:
    """Keeps the request being served in a context variable for `request_principal`."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        token = _current.set(ctx)
        try:
            return await call_next(ctx)
        finally:
            _current.reset(token)
