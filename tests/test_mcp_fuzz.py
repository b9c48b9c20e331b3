"""Every tool's published input schema, fuzzed through the in-memory client.

Valid arguments (drawn from the schema with hypothesis-jsonschema) must be answered, with a result that
matches the output schema or a refusal in words; invalid ones (a valid case with one field of the wrong
type, a required field dropped, or an unknown field added) must be refused naming that field. The client
never sees a protocol error, and no call crashes the server.

hypothesis-jsonschema 0.23.1 draws objects through a Hypothesis internal (`many.more()`) that the installed
Hypothesis no longer has, so `arguments_from` builds the objects (`fixed_dictionaries` over the declared
properties, dictionaries for free-form objects) and leaves every other schema to `from_schema`.

Hypothesis runs synchronously in a worker thread and calls the client on the event loop through
`anyio.from_thread`, so one client (and one fresh database) serves all the examples of a tool.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from mcp import Client
from mcp_types import CallToolResult, TextContent, Tool

from tests.test_mcp_tools import TOOLS as ALL_TOOLS
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.types import Principal

pytestmark = pytest.mark.anyio

TOOLS = sorted(ALL_TOOLS)
VALID_EXAMPLES = 150
INVALID_EXAMPLES = 60
UNKNOWN_FIELD = "zz_not_a_field"


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def assert_answered(tool: Tool, result: CallToolResult) -> None:
    """A success matching the output schema, or a refusal that says what was wrong."""
    if result.is_error:
        text = text_of(result)
        assert text.startswith(f"Error executing tool {tool.name}: "), text  # not a crash's bare message
        reason = text.removeprefix(f"Error executing tool {tool.name}: ")
        assert ":" in reason and "Traceback" not in reason, text
    else:
        assert result.structured_content is not None
        jsonschema.validate(result.structured_content, tool.output_schema or {})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


# Valid values the ledger knows, mixed into what the schema alone would give, so that valid cases also
# reach past "unknown model" into the rules.
HINTS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20240620", "gemini-1.5-pro"]),
    "reservation_id": st.uuids().map(str),
    "input_tokens": st.integers(0, 10**6),
    "cache_read_input_tokens": st.integers(0, 1_000),
    "cache_creation_input_tokens": st.integers(0, 1_000),
    "reasoning_output_tokens": st.just(0),
    "cost_usd": st.decimals(0, 100, places=6).map(str),
    "occurred_at": st.sampled_from(["1h", "2026-11-01T00:00:00+00:00"]),
    "tools_used": st.lists(st.sampled_from(["search", "code"]), max_size=3),
    "metadata": st.dictionaries(st.sampled_from(["run", "step"]), st.integers(), max_size=2),
    "request_id": st.uuids().map(str),
    "output_tokens": st.integers(0, 10**6),
    "scope": st.sampled_from(["global", "user:alice", "team:a", "project:x"]),
    "timezone": st.sampled_from(["UTC", "Europe/Paris"]),
    "since": st.sampled_from(["1h", "7d", "2026-01-01T00:00:00+00:00"]),
    "messages": st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=200)}
        ),
        min_size=1,
        max_size=6,
    ),
}


def arguments_from(
    schema: dict[str, Any], defs: dict[str, Any] | None = None, name: str | None = None
) -> st.SearchStrategy[Any]:
    """Values valid against `schema` (a tool's input schema or one of its parts)."""
    if name in HINTS:
        return HINTS[name] | arguments_from(schema, defs)
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        resolved = defs[schema["$ref"].removeprefix("#/$defs/")]
        schema = {**resolved, **{k: v for k, v in schema.items() if k != "$ref"}}
    if "anyOf" in schema:
        return st.one_of([arguments_from(branch, defs) for branch in schema["anyOf"]])
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "object" in kinds:
        properties = schema.get("properties")
        if properties is not None:
            required = set(schema.get("required", ()))
            return st.fixed_dictionaries(
                {key: arguments_from(sub, defs, key) for key, sub in properties.items() if key in required},
                optional={
                    key: arguments_from(sub, defs, key)
                    for key, sub in properties.items()
                    if key not in required
                },
            )
        extra = schema.get("additionalProperties")
        values = arguments_from(extra, defs) if isinstance(extra, dict) else JSON_VALUES
        return st.dictionaries(st.text(max_size=12), values, max_size=4)
    if "array" in kinds:
        items = schema.get("items")
        elements = arguments_from(items, defs) if isinstance(items, dict) else JSON_VALUES
        return st.lists(
            elements, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 5), 5)
        )
    return from_schema(schema)


def wrong_value(schema: dict[str, Any]) -> Any:
    """A value no field of this schema accepts, and that pydantic will not coerce."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return 7 if {"array", "object"} & set(kinds) else [1]


def mutations(tool: Tool) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    """Invalid arguments, and the field the refusal must name."""
    schema = tool.input_schema
    properties: dict[str, Any] = schema["properties"]
    # A NUL character is refused first wherever it is stored: keep the base cases free of it.
    valid = arguments_from(schema).filter(lambda arguments: "\\x00" not in repr(arguments))

    def wrong_type(arguments: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
        return {**arguments, field: wrong_value(properties[field])}, field

    def drop_required(arguments: dict[str, Any], field: str) -> tuple[dict[str, Any], str]:
        return {k: v for k, v in arguments.items() if k != field}, field

    def add_unknown(arguments: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return {**arguments, UNKNOWN_FIELD: "x"}, UNKNOWN_FIELD

    choices = [
        st.builds(wrong_type, valid, st.sampled_from(sorted(properties))),
        st.builds(add_unknown, valid),
    ]
    if schema.get("required"):
        choices.append(st.builds(drop_required, valid, st.sampled_from(schema["required"])))
    return st.one_of(choices)


async def seed(client: Client) -> dict[str, dict[str, Any]]:
    """Budgets in place, so checks and usage meet real rules; returns a known-good call per tool, run as
    an explicit example before the drawn ones."""
    for arguments in (
        {"name": "global-tokens", "limit": 10_000_000, "period": "month"},
        {"name": "global-usd", "unit": "usd", "limit": "50", "period": "day", "enforcement": "soft"},
        {"name": "alice", "scope": "user:alice", "limit": 20_000, "period": "24h"},
        {"name": "team-a", "scope": "team:a", "limit": 5_000, "period": "hour", "requests_per_minute": 100},
    ):
        result = await client.call_tool("manage_budget", {"action": "set", **arguments})
        assert not result.is_error, text_of(result)
    held = await client.call_tool("check_budget", {"model": "gpt-4o", "input_tokens": 10, "user": "alice"})
    assert not held.is_error and held.structured_content is not None, text_of(held)
    reservation = held.structured_content["reservation_id"]
    return {
        "count_tokens": {"text": "hello", "model": "gpt-4o"},
        "check_budget": {"model": "gpt-4o", "input_tokens": 100, "max_output_tokens": 50, "team": "a"},
        "track_usage": {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, "user": "alice"},
        "release": {"reservation_id": reservation},
        "extend_reservation": {"reservation_id": reservation, "ttl_seconds": 60},
        "report": {"view": "usage", "group_by": ["user"]},
        "lookup": {"what": "budgets"},
        "manage_budget": {"action": "set", "name": "global-tokens", "limit": "20000000"},
        "manage_schedule": {"action": "add", "name": "daily", "to": "slack"},
        "budget_override": {
            "action": "request",
            "budget": "team-a",
            "amount": "10",
            "until": "1h",
            "reason": "x",
        },
        "prices": {"action": "get", "model": "gpt-4o"},
        "manage_prices": {"action": "set", "model": "gpt-4o", "input": "0.000001", "output": "0.000002"},
        "fit_messages": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
    }


def run_fuzz(
    tool: Tool, call: Callable[[str, dict[str, Any]], CallToolResult], known_good: dict[str, Any]
) -> Counter[str]:
    """Runs in a worker thread: hypothesis drives `call`, which hops back onto the event loop."""
    outcomes: Counter[str] = Counter()

    @fuzz_settings(VALID_EXAMPLES)
    @example(known_good)
    @given(arguments_from(tool.input_schema))
    def valid(arguments: dict[str, Any]) -> None:
        result = call(tool.name, arguments)
        assert_answered(tool, result)
        outcomes["refused" if result.is_error else "answered"] += 1

    @fuzz_settings(INVALID_EXAMPLES)
    @given(mutations(tool))
    def invalid(case: tuple[dict[str, Any], str]) -> None:
        arguments, field = case
        result = call(tool.name, arguments)
        assert result.is_error, (arguments, result.structured_content)
        assert field in text_of(result), (field, text_of(result))

    valid()
    invalid()
    return outcomes


@pytest.mark.parametrize("name", TOOLS)
async def test_fuzz_tool(ledger: Ledger, name: str) -> None:
    async with Client(build_server(ledger, default_principal=Principal())) as client:
        known_good = await seed(client)
        tool = next(t for t in (await client.list_tools()).tools if t.name == name)

        def call(tool_name: str, arguments: dict[str, Any]) -> CallToolResult:
            return anyio.from_thread.run(partial(client.call_tool, tool_name, arguments))

        outcomes = await anyio.to_thread.run_sync(run_fuzz, tool, call, known_good[name])
        print(f"\n{name}: valid cases {dict(outcomes)}")
        assert outcomes["answered"] > 0
        # Still serving.
        after = await client.call_tool("count_tokens", {"text": "ok", "encoding": "o200k_base"})
        assert not after.is_error and after.structured_content is not None
