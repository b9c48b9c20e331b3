"""Every tool's input schema converts to OpenAI strict mode with the converters agents use, and the
converted schemas are satisfiable: a realistic call in the shape strict mode forces (every field present,
`null` for those not meant) validates against them, and the server answers it.

- openai-agents: its MCP client over stdio to a real `tokenledger serve`, and `MCPUtil` with
  `convert_schemas_to_strict=True` (it falls back to a non-strict tool when conversion fails).
- LangChain: the tool as langchain-mcp-adapters builds it (a `StructuredTool` whose `args_schema` is the
  MCP input schema) through `convert_to_openai_tool(tool, strict=True)`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from agents import Agent, RunContextWrapper
from agents.mcp import MCPServerStdio, MCPUtil
from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from mcp import Client

from tests.test_mcp_tools import TOOLS
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.types import Principal

pytestmark = pytest.mark.anyio

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Summarise the ledger."}, {"type": "image_url"}]},
]
WEATHER_TOOL = '{"type":"function","function":{"name":"weather","parameters":{"type":"object"}}}'

# Realistic calls, in order (release and extend take the reservation check_budget made). Only what a
# strict model must send besides nulls: every field that is not nullable has a value.
CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "manage_budget",
        {
            "action": "set",
            "name": "team-a",
            "limit": "100000",
            "period": "day",
            "scope": "team:a",
            "clear": [],
            "reset_counters": False,
        },
    ),
    ("count_tokens", {"messages": MESSAGES, "tools": [WEATHER_TOOL], "model": "gpt-4o"}),
    (
        "check_budget",
        {
            "model": "gpt-4o",
            "text": "Summarise the ledger.",
            "max_output_tokens": 200,
            "priority": "medium",
            "reserve": True,
            "allow_partial": False,
            "ttl_seconds": 600,
            "batch": False,
            "service_tier": "standard",
            "team": "a",
        },
    ),
    ("extend_reservation", {"ttl_seconds": 900}),
    ("release", {}),
    (
        "track_usage",
        {
            "model": "gpt-4o",
            "input_tokens": 120,
            "output_tokens": 40,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "reasoning_output_tokens": 0,
            "status": "success",
            "tools_used": ["search"],
            "metadata": '{"run": 7}',
            "batch": False,
            "service_tier": "standard",
            "cache_ttl": "5m",
            "team": "a",
        },
    ),
    (
        "report",
        {"view": "usage", "group_by": ["model"], "timezone": "UTC", "limit": 50, "format": "markdown"},
    ),
    ("lookup", {"what": "budgets", "name": "team-a"}),
    ("prices", {"action": "get", "model": "gpt-4o", "query": "", "limit": 20}),
    (
        "fit_messages",
        {
            "messages": MESSAGES,
            "model": "gpt-4o",
            "max_output_tokens": 500,
            "keep_system": True,
            "keep_last": 1,
        },
    ),
    (
        "budget_override",
        {"action": "request", "budget": "team-a", "amount": "5000", "until": "2h", "reason": "launch"},
    ),
    ("manage_schedule", {"action": "add", "name": "daily", "to": "slack"}),
    ("manage_prices", {"action": "set", "model": "gpt-4o", "input": "0.000002", "output": "0.000008"}),
]


def strict_call(schema: dict[str, Any], call: Any) -> Any:
    """`call` as a strict model sends it: every property of every object present, null where not given."""
    if isinstance(call, dict) and "properties" in schema:
        return {
            name: strict_call(sub, call[name]) if name in call else None
            for name, sub in schema["properties"].items()
        }
    if isinstance(call, list) and isinstance(schema.get("items"), dict):
        return [strict_call(schema["items"], item) for item in call]
    for branch in schema.get("anyOf", []):
        if jsonschema.Draft202012Validator(branch).is_valid(strict_call(branch, call)):
            return strict_call(branch, call)
    return call


def assert_strict(schema: dict[str, Any], where: str) -> None:
    """What OpenAI's strict mode asks of every object: closed, with every property required."""
    assert "$ref" not in schema and "$defs" not in schema and "default" not in schema, where
    kinds = schema.get("type")
    if kinds == "object" or (isinstance(kinds, list) and "object" in kinds):
        assert schema.get("properties"), f"{where}: an object without properties"
        assert schema.get("additionalProperties") is False, where
        assert set(schema.get("required", [])) == set(schema["properties"]), where
    for name, sub in schema.get("properties", {}).items():
        assert_strict(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        assert_strict(schema["items"], f"{where}[]")
    for index, branch in enumerate(schema.get("anyOf", [])):
        assert_strict(branch, f"{where}|{index}")


async def answers(client: Client, calls: list[tuple[str, dict[str, Any]]]) -> None:
    """Sends each call; each must be answered (no tool error)."""
    reservation = ""
    for tool, arguments in calls:
        if tool in ("release", "extend_reservation"):
            arguments = {**arguments, "reservation_id": reservation}
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, (tool, result.content)
        assert result.structured_content is not None
        if tool == "check_budget":
            reservation = result.structured_content["reservation_id"]
            assert reservation and result.structured_content["allowed"] is True


async def test_openai_agents_makes_every_tool_strict_and_the_server_answers_strict_calls(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    assert {tool for tool, _ in CALLS} == TOOLS
    env = {**os.environ, "TOKENLEDGER_DATABASE_URL": dsn, "TOKENLEDGER_HOME": str(tmp_path)}
    params = {"command": sys.executable, "args": ["-m", "tokenledger", "serve", "--transport", "stdio"]}
    async with MCPServerStdio(params={**params, "env": env}, client_session_timeout_seconds=30) as server:  # type: ignore[typeddict-item]
        agent = Agent(name="token-checker")
        tools = await MCPUtil.get_function_tools(
            server, convert_schemas_to_strict=True, run_context=RunContextWrapper(None), agent=agent
        )
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == TOOLS
    strict_schemas = {}
    for name, tool in by_name.items():
        assert tool.strict_json_schema is True, f"{name}: openai-agents could not make it strict"  # type: ignore[attr-defined]
        schema = tool.params_json_schema  # type: ignore[attr-defined]
        assert_strict(schema, name)
        strict_schemas[name] = schema
    calls = [(tool, strict_call(strict_schemas[tool], call)) for tool, call in CALLS]
    for tool, call in calls:
        if tool not in ("release", "extend_reservation"):  # they get the reservation below
            jsonschema.validate(call, strict_schemas[tool])
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        await answers(client, calls)


async def test_langchain_strict_conversion_is_satisfiable_and_answered(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == TOOLS
        strict_schemas = {}
        for name, tool in listed.items():
            # As langchain-mcp-adapters builds it: the MCP input schema is the args schema.
            wrapped = StructuredTool(
                name=name, description=tool.description or "", args_schema=tool.input_schema, func=print
            )
            converted = convert_to_openai_tool(wrapped, strict=True)
            assert converted["function"]["strict"] is True
            schema = converted["function"]["parameters"]
            assert_strict(schema, name)
            jsonschema.Draft202012Validator.check_schema(schema)
            strict_schemas[name] = schema
        calls = [(tool, strict_call(strict_schemas[tool], call)) for tool, call in CALLS]
        for tool, call in calls:
            if tool not in ("release", "extend_reservation"):
                jsonschema.validate(call, strict_schemas[tool])
            else:
                jsonschema.validate(
                    {**call, "reservation_id": "00000000-0000-0000-0000-000000000000"}, strict_schemas[tool]
                )
        await answers(client, calls)
