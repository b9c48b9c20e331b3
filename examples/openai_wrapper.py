"""Meter OpenAI calls with tokenledger: wrap the client once, then call it as usual.

    OPENAI_API_KEY=... python examples/openai_wrapper.py

Every `chat.completions.create` is checked against the budgets before it is sent (a denial raises
`BudgetExceeded` and nothing is sent) and tracked with the usage OpenAI reports, streams included.
The ledger is TOKENLEDGER_DATABASE_URL, or the embedded PostgreSQL when it is unset; OPENAI_BASE_URL
points the SDK at any OpenAI-compatible server.
"""

from __future__ import annotations

import os
from decimal import Decimal

import anyio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tokenledger.errors import BudgetExceeded
from tokenledger.integrations.openai import wrap_openai
from tokenledger.ledger import Ledger
from tokenledger.types import BudgetSpec

MODEL = os.environ.get("TOKENLEDGER_EXAMPLE_MODEL", "gpt-4o-mini")
BUDGET = "example-daily"


async def main() -> None:
    async with await Ledger.open() as ledger, AsyncOpenAI() as raw_client:
        await ledger.set_budget(
            BudgetSpec(name=BUDGET, scope="project:example", limit=Decimal(200_000), period="day")
        )
        client = wrap_openai(
            raw_client, ledger, project="example", user=os.environ.get("EXAMPLE_USER", "demo")
        )
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "In one sentence: why reserve tokens before a call?"}
        ]
        try:
            completion = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=200)
            print(completion.choices[0].message.content)

            stream = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=200, stream=True
            )
            async with stream:
                async for chunk in stream:
                    print(chunk.choices[0].delta.content or "", end="", flush=True)
            print()
        except BudgetExceeded as denied:
            print(f"not sent: {denied}")
        state = (await ledger.get_budget(BUDGET)).state
        print(f"{BUDGET}: {state.used} of {state.limit} tokens used, {state.reserved} reserved")


if __name__ == "__main__":
    anyio.run(main)
