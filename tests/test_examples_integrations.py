"""The integration examples run as documented, against the provider stand-in and real PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import sys
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import anyio
import httpx
import pytest

from tests.provider_standin import ProviderStandin
from tokenledger.ledger import Ledger
from tokenledger.types import BudgetSpec, UsageQuery

pytest.importorskip("openai")
pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example_env(dsn: str, provider: ProviderStandin, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "TOKENLEDGER_DATABASE_URL": dsn,
        "OPENAI_BASE_URL": provider.openai_base_url,
        "OPENAI_API_KEY": "test-key",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env}


async def test_openai_wrapper_example(
    ledger: Ledger, provider: ProviderStandin, example_env: dict[str, str]
) -> None:
    result = await anyio.run_process(
        [sys.executable, str(EXAMPLES / "openai_wrapper.py")], env=example_env, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    output = result.stdout.decode()
    assert output.count(provider.behaviour.text) == 2  # the completion, then the stream
    assert "example-daily: 140 of 200000 tokens used, 0 reserved" in output
    assert [r.path for r in provider.requests] == ["/v1/chat/completions"] * 2
    totals = (await ledger.usage(UsageQuery(project="example"))).totals
    assert (totals.requests, totals.input_tokens, totals.cache_read_input_tokens, totals.output_tokens) == (
        2,
        64,
        16,
        60,
    )


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fastapi_example(
    ledger: Ledger, provider: ProviderStandin, example_env: dict[str, str]
) -> None:
    pytest.importorskip("fastapi")
    await ledger.set_budget(
        BudgetSpec(
            name="ana-daily", scope="user:ana", limit=Decimal(1400), period="day", priority_shares=None
        )
    )
    example = load_example("fastapi_app")
    app = example.create_app()
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        assert (await http.get("/health")).json() == {"status": "ok"}
        answer = await http.post("/chat", json={"message": "hello"}, headers={"X-User": "ana"})
        assert answer.status_code == 200
        assert answer.json() == {"reply": provider.behaviour.text, "total_tokens": 70}
        # Each request reserves its estimate, 1000 + 300: after 70 used a second fits in 1400, a third not.
        assert (
            await http.post("/chat", json={"message": "again"}, headers={"X-User": "ana"})
        ).status_code == 200
        denied = await http.post("/chat", json={"message": "more"}, headers={"X-User": "ana"})
        assert denied.status_code == 429 and int(denied.headers["retry-after"]) >= 1
        assert denied.json()["decision"]["blocked_by"]["budget"] == "ana-daily"
    state = (await ledger.get_budget("ana-daily")).state
    assert (state.used, state.reserved) == (140, 0)
    assert len(provider.requests) == 2
