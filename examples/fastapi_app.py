"""A FastAPI app whose model calls are budgeted per user by `TokenLedgerMiddleware`.

    OPENAI_API_KEY=... uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/chat -H 'X-User: ana' -H 'content-type: application/json' \
         -d '{"message": "hello"}'

Each request to /chat reserves `estimate` input tokens plus `max_output_tokens` for its user (the
`X-User` header here: set it in a gateway you trust, or put an authentication middleware before this
one). Over budget, the answer is 429 with `Retry-After`. The endpoint settles its grant with the usage
OpenAI reports; a request that fails releases its reservation. Set budgets with the CLI, e.g.
`tokenledger budget set ana-daily --scope user:ana --limit 50000 --period day`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from openai import AsyncOpenAI
from pydantic import BaseModel

from tokenledger.integrations.asgi import TokenLedgerMiddleware
from tokenledger.ledger import Ledger

MODEL = os.environ.get("TOKENLEDGER_EXAMPLE_MODEL", "gpt-4o-mini")


class ChatIn(BaseModel):
    message: str


class ChatOut(BaseModel):
    reply: str
    total_tokens: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with await Ledger.open() as ledger, AsyncOpenAI() as openai_client:
        app.state.ledger = ledger
        app.state.openai = openai_client
        yield


def ledger_of(scope: Any) -> Ledger:
    """The ledger the lifespan opened (the middleware is built before it runs)."""
    ledger: Ledger = scope["app"].state.ledger
    return ledger


def create_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.add_middleware(
        TokenLedgerMiddleware,
        ledger=ledger_of,
        model=MODEL,
        estimate=1000,
        max_output_tokens=300,
        user_header="X-User",
        exclude_paths={"/health"},
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/chat")
    async def chat(body: ChatIn, request: Request) -> ChatOut:
        grant = request.state.tokenledger_grant
        completion = await request.app.state.openai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": body.message}],
            max_tokens=grant.max_output_tokens,
        )
        await grant.settle(completion.usage)  # the provider's usage, not the estimate
        return ChatOut(
            reply=completion.choices[0].message.content or "", total_tokens=completion.usage.total_tokens
        )

    return app


app = create_app()
