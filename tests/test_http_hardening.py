"""The HTTP server's edges, tried as an attacker would (issue 9): metrics across tenants, keys in logs,
slow clients, a database outage. Real servers on loopback, real clients, real PostgreSQL.
"""

from __future__ import annotations

import anyio
import httpx2
import pytest

from tests.servers import serving
from tests.test_metrics import Scrape, call, mcp_client, parse

TEST_TIMEOUT = 60
MODEL = "gpt-4o-mini"
CUSTOM_MODEL = "acme-secret-finetune"

pytestmark = pytest.mark.anyio


# --- /metrics: a tenant reads its own series, the operator's token the whole process --------------


SCRAPE_TOKEN = "scrape-" + "t0ken" * 5


@pytest.mark.parametrize("token", [None, SCRAPE_TOKEN], ids=["no-scrape-token", "scrape-token"])
async def test_metrics_keys_read_only_their_own_tenant(dsn: str, token: str | None) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, metrics_token=token) as served, httpx2.AsyncClient(timeout=10) as http:
            default_admin, _ = await served.ledger.create_key(role="admin", tenant="default")
            acme_admin, _ = await served.ledger.create_key(role="admin", tenant="acme")
            acme_viewer, _ = await served.ledger.create_key(role="viewer", tenant="acme")
            async with mcp_client(served, default_admin) as client:
                await call(client, "track_usage", model=MODEL, input_tokens=100, output_tokens=10)
                await call(client, "check_budget", model=MODEL, input_tokens=5)
            async with mcp_client(served, acme_admin) as client:
                await call(client, "track_usage", model=MODEL, input_tokens=7, output_tokens=1)
                # A model of acme's own (a price override makes it known to acme alone).
                await call(
                    client, "prices", action="set", model=CUSTOM_MODEL, input="0.000001", output="0.000002"
                )
                await call(client, "track_usage", model=CUSTOM_MODEL, input_tokens=3, output_tokens=1)

            async def scrape(credential: str) -> str:
                answer = await http.get(
                    f"{served.base}/metrics", headers={"Authorization": f"Bearer {credential}"}
                )
                assert answer.status_code == 200, answer.text
                return answer.text

            acme = parse(await scrape(acme_viewer))
            default = parse(await scrape(default_admin))
            process = parse(await scrape(token)) if token else None

    def input_tokens(figures: Scrape, **labels: str) -> float:
        return float(figures.value("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **labels))

    # Each tenant's key sees its own counts and nothing of the other's.
    assert input_tokens(acme, gen_ai_request_model=MODEL) == 7
    assert input_tokens(acme) == 10
    assert input_tokens(default) == 100
    assert acme.value("tokenledger_budget_decisions_total") == 0  # the check was default's
    assert default.value("tokenledger_budget_decisions_total", decision="allow") == 1
    assert acme.value("tokenledger_tool_seconds_count", tool="track_usage") == 2
    assert default.value("tokenledger_tool_seconds_count", tool="track_usage") == 1
    # A tenant's own model name is not a label value: it shows as `other`, to its own tenant only.
    assert input_tokens(acme, gen_ai_request_model="other") == 3
    assert input_tokens(default, gen_ai_request_model="other") == 0
    for figures in (acme, default, process):
        if figures is not None:
            assert CUSTOM_MODEL not in figures.text
            assert not {"tenant", "tenant_id"} & figures.label_names
            assert "acme" not in figures.text
    assert "process_cpu_seconds_total" not in acme.samples
    if process is None:
        return
    # The operator's scrape token reads the whole process: both tenants summed, and the process itself.
    assert input_tokens(process) == 110
    assert process.value("tokenledger_tool_seconds_count", tool="track_usage") == 3
    assert process.value("process_cpu_seconds_total") > 0
