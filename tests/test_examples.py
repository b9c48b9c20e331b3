"""The examples run as a user would run them, against a fresh test database."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anyio

from tokenledger.ledger import Ledger
from tokenledger.settings import Settings
from tokenledger.types import Budget, UsageQuery, UsageResult

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def _ledger_state(dsn: str) -> tuple[Budget, UsageResult]:
    async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
        budget = await ledger.get_budget("orchestrator-demo")
        usage = await ledger.usage(UsageQuery(project="orchestrator-demo", group_by=["feature"]))
    return budget, usage


def test_orchestrator_routes_calls_within_the_budget(dsn: str, tmp_path: Path) -> None:
    env = {**os.environ, "TOKENLEDGER_DATABASE_URL": dsn, "TOKENLEDGER_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "orchestrator.py"), "--limit", "1000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "budget orchestrator-demo: 1000 tokens a day"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "routed summarize",
        "routed translate",
        "partial draft-email",
        "routed draft-email",
        "skipped classify",
        f"total for run {lines[-1].split()[3].rstrip(':')}",
    ]
    assert "denied by budget 'orchestrator-demo' (limit)" in lines[5]

    budget, usage = anyio.run(_ledger_state, dsn)
    features = {row.keys["feature"]: row for row in usage.rows}
    assert set(features) == {"summarize", "translate", "draft-email"}
    assert features["summarize"].output_tokens == 250 and features["translate"].output_tokens == 400
    # The partial grant was what was left after the first two calls and the third's prompt.
    granted = int(lines[3].rsplit(" ", 1)[1])
    assert features["draft-email"].output_tokens == granted < 500
    assert usage.totals.requests == 3
    assert f"{usage.totals.total_tokens} tokens" in lines[-1]
    # Everything reserved was settled, and the budget was used to the token, never over.
    assert budget.state.reserved == 0
    assert budget.state.used == Decimal(usage.totals.total_tokens) == Decimal(1000)
