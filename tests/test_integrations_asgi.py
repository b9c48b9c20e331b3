"""`TokenLedgerMiddleware` on Starlette and FastAPI apps, driven through httpx's ASGI transport."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from tokenledger.integrations.asgi import TokenLedgerMiddleware
from tokenledger.ledger import Ledger
from tokenledger.types import BudgetSpec, UsageQuery

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o-mini"


def budget(name: str = "main", limit: int = 100_000, scope: str = "global") -> BudgetSpec:
    return BudgetSpec(name=name, scope=scope, limit=Decimal(limit), period="day", priority_shares=None)


async def state(ledger: Ledger, name: str = "main") -> tuple[Decimal, Decimal]:
    current = (await ledger.get_budget(name)).state
    return current.used, current.reserved


async def reported(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", headers={"X-Tokens-Input": "120", "X-Tokens-Output": "30"})


async def settles_itself(request: Request) -> JSONResponse:
    grant = request.state.tokenledger_grant
    await grant.settle({"prompt_tokens": 50, "completion_tokens": 10})
    return JSONResponse({"reservation": grant.reservation_id})


async def silent(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no usage reported")


async def state_usage(request: Request) -> PlainTextResponse:
    request.state.tokenledger_usage = {"input_tokens": 9, "output_tokens": 1}
    return PlainTextResponse("ok")


async def fails(request: Request) -> PlainTextResponse:
    raise RuntimeError("model call failed")


async def server_error(request: Request) -> PlainTextResponse:
    return PlainTextResponse("upstream failed", status_code=502)


ROUTES = [
    Route("/reported", reported, methods=["POST"]),
    Route("/settles", settles_itself, methods=["POST"]),
    Route("/silent", silent, methods=["POST"]),
    Route("/state", state_usage, methods=["POST"]),
    Route("/fails", fails, methods=["POST"]),
    Route("/error", server_error, methods=["POST"]),
    Route("/health", silent),
]


def starlette_app(ledger: Ledger, **options: Any) -> Starlette:
    options.setdefault("estimate", 200)
    options.setdefault("max_output_tokens", 100)
    return Starlette(
        routes=ROUTES,
        middleware=[Middleware(TokenLedgerMiddleware, ledger=ledger, model=MODEL, **options)],
    )


def client(app: Any, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_usage_headers_are_tracked_and_stripped(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with client(starlette_app(ledger)) as http:
        response = await http.post("/reported", headers={"X-User": "ana"})
    assert response.status_code == 200 and response.text == "ok"
    assert "x-tokens-input" not in response.headers
    assert await state(ledger) == (150, 0)
    rows = (await ledger.usage(UsageQuery(group_by=["user"]))).rows
    assert [(r.keys["user"], r.input_tokens, r.output_tokens) for r in rows] == [("ana", 120, 30)]


async def test_denial_is_429_with_retry_after_and_the_decision(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    await ledger.set_budget(budget("ana", limit=350, scope="user:ana"))
    async with client(starlette_app(ledger)) as http:
        first = await http.post("/silent", headers={"X-User": "ana"})
        denied = await http.post("/reported", headers={"X-User": "ana"})
        other = await http.post("/reported", headers={"X-User": "bo"})
    assert first.status_code == 200  # charged its estimate: 200 in + 100 out
    assert denied.status_code == 429
    assert int(denied.headers["retry-after"]) >= 1
    body = denied.json()
    assert body["error"] == "budget_exceeded"
    assert body["decision"]["decision"] == "deny" and body["decision"]["blocked_by"]["budget"] == "ana"
    assert body["decision"]["retry_after_seconds"] is None or int(denied.headers["retry-after"]) == max(
        1, body["decision"]["retry_after_seconds"]
    )
    assert other.status_code == 200
    assert await state(ledger, "ana") == (300, 0)


async def test_the_app_can_settle_its_grant_with_provider_usage(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with client(starlette_app(ledger)) as http:
        response = await http.post("/settles")
        from_state = await http.post("/state")
    assert response.status_code == 200 and response.json()["reservation"]
    assert from_state.status_code == 200
    assert await state(ledger) == (60 + 10, 0)


async def test_unreported_usage_is_charged_the_estimate_or_released(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with client(starlette_app(ledger)) as http:
        await http.post("/silent")
    assert await state(ledger) == (300, 0)
    async with client(starlette_app(ledger, unreported="release", estimate=lambda scope: 50)) as http:
        await http.post("/silent")
    assert await state(ledger) == (300, 0)


async def test_app_errors_release_the_reservation(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with client(starlette_app(ledger)) as http:
        with pytest.raises(RuntimeError, match="model call failed"):
            await http.post("/fails")
        assert (await http.post("/error")).status_code == 502
    assert await state(ledger) == (0, 0)


async def test_excluded_paths_and_the_authenticated_user(ledger: Ledger) -> None:
    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
            token = conn.headers.get("authorization", "")
            return (AuthCredentials(["authenticated"]), SimpleUser(token[7:])) if token else None

    await ledger.set_budget(budget())
    await ledger.set_budget(budget("carla", limit=10, scope="user:carla"))
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(TokenLedgerMiddleware, ledger=ledger, model=MODEL, exclude_paths={"/health"}),
        ],
    )
    async with client(app) as http:
        assert (await http.get("/health")).status_code == 200
        # The authenticated user wins over a header anyone can set.
        response = await http.post("/reported", headers={"Authorization": "Bearer carla", "X-User": "bo"})
    assert response.status_code == 429
    assert await state(ledger) == (0, 0)


async def test_invalid_user_header_is_a_400(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    async with client(starlette_app(ledger)) as http:
        response = await http.post("/reported", headers={"X-User": "not a valid id!"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_fastapi_app_with_the_middleware(ledger: Ledger) -> None:
    fastapi = pytest.importorskip("fastapi")
    await ledger.set_budget(budget(limit=1000))
    app = fastapi.FastAPI()
    app.add_middleware(TokenLedgerMiddleware, ledger=ledger, model=MODEL, estimate=400, max_output_tokens=100)

    @app.post("/chat")
    async def chat(request: Request) -> dict[str, str]:  # FastAPI takes Starlette's Request
        await request.state.tokenledger_grant.record(input_tokens=300, output_tokens=50)
        return {"reply": "hi"}

    async with client(app) as http:
        answers = [(await http.post("/chat", headers={"X-User": "ana"})).status_code for _ in range(4)]
    assert answers == [200, 200, 429, 429]  # 350 used each; a third needs 500 with 300 left
    assert await state(ledger) == (700, 0)
