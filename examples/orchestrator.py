"""An orchestrator that routes LLM calls through a token budget, over MCP (stdio).

It starts `python -m tokenledger serve --transport stdio` with the official MCP client, sets a daily
token budget for its project, then for each planned call:

1. `check_budget` with the prompt (the server counts its tokens) and the output it wants, allowing a
   partial grant; the allowance is reserved.
2. denied: the call is skipped, with the budget and reason that blocked it.
   partial: the call is made with `max_output_tokens` lowered to `granted_output_tokens`.
3. after the (pretend) provider answers, `track_usage` settles the reservation with the real usage.

Run it against the embedded database, or any:

    TOKENLEDGER_DATABASE_URL=postgresql://... python examples/orchestrator.py
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

MODEL = "gpt-4o-mini"
PROJECT = "orchestrator-demo"


@dataclass(frozen=True)
class PlannedCall:
    """A tool call an agent wants to make, and what the pretend provider will answer."""

    name: str
    prompt: str
    max_output_tokens: int
    provider_output_tokens: int  # what the model would write, if allowed


PLAN = (
    PlannedCall("summarize", "Summarize the release notes of version 2.3 in five bullet points.", 300, 250),
    PlannedCall("translate", "Translate the summary into French, keeping the bullet points.", 400, 400),
    PlannedCall("draft-email", "Draft an email announcing the release to our customers.", 500, 480),
    PlannedCall("classify", "Classify the customer replies by sentiment.", 50, 40),
)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; a refusal stops the run with its message."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise SystemExit(f"{tool} was refused: {text}")
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def orchestrate(limit: int) -> int:
    # The server inherits only a safe default environment: pass the ledger's settings on.
    env = {name: value for name, value in os.environ.items() if name.startswith("TOKENLEDGER_")}
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "tokenledger", "serve", "--transport", "stdio"], env=env
    )
    run = uuid.uuid4().hex[:8]
    async with Client(server, read_timeout_seconds=60) as client:
        await call(
            client,
            "manage_budget",
            action="set",
            name=PROJECT,
            scope=f"project:{PROJECT}",
            unit="tokens",
            limit=str(limit),
            period="day",
            # One request may take all that remains (the default lets a medium request take 30%).
            priority_shares={"high": 1, "medium": 1, "low": 1},
        )
        print(f"budget {PROJECT}: {limit} tokens a day")
        for planned in PLAN:
            check = await call(
                client,
                "check_budget",
                model=MODEL,
                text=planned.prompt,
                max_output_tokens=planned.max_output_tokens,
                allow_partial=True,
                project=PROJECT,
                session=run,
                feature=planned.name,
                request_id=f"{run}-{planned.name}-check",
            )
            if not check["allowed"]:
                blocked = check["blocked_by"]
                print(
                    f"skipped {planned.name}: denied by budget {blocked['budget']!r} ({blocked['reason']}), "
                    f"{blocked.get('remaining')} left, resets at {blocked.get('resets_at')}"
                )
                continue
            granted = check["granted_output_tokens"]
            if check["decision"] == "partial":
                asked = planned.max_output_tokens
                print(f"partial {planned.name}: max_output_tokens lowered from {asked} to {granted}")
            # The provider call would go here, with max_output_tokens=granted; it writes at most that.
            output_tokens = min(planned.provider_output_tokens, granted)
            tracked = await call(
                client,
                "track_usage",
                model=MODEL,
                reservation_id=check["reservation_id"],
                input_tokens=check["input_tokens"],
                output_tokens=output_tokens,
                project=PROJECT,
                session=run,
                feature=planned.name,
                request_id=f"{run}-{planned.name}-track",
            )
            print(
                f"routed {planned.name}: {check['input_tokens']} in + {output_tokens} out = "
                f"{tracked['total_tokens']} tokens, cost {tracked['cost_usd']} USD"
            )
        report = await call(client, "report", view="summary", project=PROJECT, session=run)
        totals = report["totals"]
        print(f"total for run {run}: {totals['requests']} calls, {totals['total_tokens']} tokens")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="the daily token budget (default 1000)")
    args = parser.parse_args(argv)
    return anyio.run(orchestrate, args.limit)


if __name__ == "__main__":
    sys.exit(main())
