"""The MCP tools end to end, through the SDK's in-memory `Client(server)` over a real ledger."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from starlette.requests import Request

from tokenledger import __version__
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server, principal_of
from tokenledger.tokens import count_text
from tokenledger.types import Principal

pytestmark = pytest.mark.anyio

ADMIN = Principal()
TOOLS = {
    "count_tokens",
    "check_budget",
    "track_usage",
    "release",
    "extend_reservation",
    "report",
    "lookup",
    "manage_budget",
    "manage_schedule",
    "budget_override",
    "prices",
    "manage_prices",
    "fit_messages",
}


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


class Session:
    """A connected client with the tools' declared schemas, checking every answer against them."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.schemas: dict[str, dict[str, Any]] = {}

    async def load(self) -> Session:
        listed = await self.client.list_tools()
        self.schemas = {tool.name: tool.output_schema or {} for tool in listed.tools}
        return self

    async def call(self, tool: str, **arguments: Any) -> CallToolResult:
        return await self.client.call_tool(tool, arguments)

    async def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = await self.call(tool, **arguments)
        assert not result.is_error, text_of(result)
        assert result.structured_content is not None
        jsonschema.validate(result.structured_content, self.schemas[tool])
        return result.structured_content

    async def refused(self, tool: str, **arguments: Any) -> str:
        result = await self.call(tool, **arguments)
        assert result.is_error, result.structured_content
        text = text_of(result)
        assert "Traceback" not in text and "select " not in text.lower()
        return text


async def test_the_whole_flow(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        assert set(session.schemas) == TOOLS

        budget = await session.ok(
            "manage_budget", action="set", name="monthly", unit="tokens", limit=100_000, period="month"
        )
        assert budget["budgets"][0]["spec"]["name"] == "monthly"

        counted = await session.ok("count_tokens", text="hello world", model="gpt-4o", max_output_tokens=100)
        assert counted["tokens"] == 2 and counted["method"] == "exact" and counted["encoding"] == "o200k_base"
        assert counted["fits"] is True and counted["context_window"] > counted["remaining_context"]
        assert (
            isinstance(counted["estimated_cost_usd"], str)
            and "e" not in counted["estimated_cost_usd"].lower()
        )
        several = await session.ok("count_tokens", texts=["a b", "hello world"], encoding="cl100k_base")
        assert several["per_text"] == [2, 2] and several["tokens"] == 4

        check = await session.ok(
            "check_budget",
            model="gpt-4o",
            input_tokens=1_000,
            max_output_tokens=500,
            user="alice",
            project="demo",
            request_id="check-1",
        )
        assert check["allowed"] is True and check["decision"] == "allow"
        assert check["reservation_id"] and check["granted_output_tokens"] == 500 and check["expires_at"]
        assert check["budgets"][0]["name"] == "monthly"
        assert check["budgets"][0]["reserved"] == "1500"

        tracked = await session.ok(
            "track_usage",
            model="gpt-4o",
            reservation_id=check["reservation_id"],
            request_id="track-1",
            input_tokens=1_000,
            output_tokens=400,
            user="alice",
            project="demo",
            latency_ms=900,
        )
        assert tracked["total_tokens"] == 1_400 and tracked["duplicate"] is False and tracked["usage_id"]
        assert tracked["method"] == "provider" and isinstance(tracked["cost_usd"], str)
        assert tracked["budgets"][0]["used"] == "1400" and tracked["budgets"][0]["reserved"] == "0"

        summary = await session.ok("report")
        assert summary["view"] == "summary" and summary["rows"] == []
        totals = summary["totals"]
        assert totals["requests"] == 1 and totals["total_tokens"] == 1_400 and totals["input_tokens"] == 1_000
        assert totals["success_rate"] == 1.0 and totals["avg_tokens_per_request"] == 1_400.0
        assert totals["cost_usd"] == tracked["cost_usd"]

        usage = await session.ok("report", view="usage", group_by=["model", "user"], since="1h")
        assert usage["rows"][0]["model"] == "gpt-4o" and usage["rows"][0]["user"] == "alice"
        assert usage["rows"][0]["requests"] == 1

        budgets = await session.ok("report", view="budgets")
        assert budgets["rows"][0]["name"] == "monthly" and budgets["rows"][0]["used"] == "1400"
        assert budgets["rows"][0]["status"] == "ok" and budgets["rows"][0]["resets_at"]

        markdown = await session.ok("report", view="usage", group_by=["model"], format="markdown")
        assert markdown["text"].startswith("| model | requests |") and "| gpt-4o | 1 |" in markdown["text"]
        # The table is what an agent reads: the text content, not the report's JSON.
        as_read = text_of(await session.call("report", view="usage", group_by=["model"], format="markdown"))
        assert as_read == markdown["text"]
        csv_report = await session.ok("report", view="budgets", format="csv")
        assert text_of(await session.call("report", view="budgets", format="csv")) == csv_report["text"]
        assert not text_of(await session.call("report")).startswith("|")  # json: the report's JSON
        header, row = csv_report["text"].splitlines()[:2]
        # Every cell quoted (OWASP's CSV-injection guidance; see test_report_limits).
        assert header.startswith('"name","scope","unit","limit"')
        assert row.startswith('"monthly","global","tokens","100000')

        # A long call extends its reservation; an aborted one gives it back.
        held = await session.ok("check_budget", model="gpt-4o", input_tokens=10, max_output_tokens=10)
        kept = await session.ok("extend_reservation", reservation_id=held["reservation_id"], ttl_seconds=900)
        assert kept["reservation_id"] == held["reservation_id"] and kept["expires_at"] > held["expires_at"]
        released = await session.ok("release", reservation_id=held["reservation_id"])
        assert released["status"] == "released"
        again = await session.ok("release", reservation_id=held["reservation_id"])
        assert again["status"] == "already_released"
        refused = await session.refused("extend_reservation", reservation_id=held["reservation_id"])
        assert "already released" in refused

        fitted = await session.ok(
            "fit_messages",
            model="gpt-4o",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        )
        assert fitted["fits"] is True and fitted["dropped"] == 0

        listed = await session.ok("lookup", what="budgets")
        assert [b["spec"]["name"] for b in listed["budgets"]] == ["monthly"]
        one = await session.ok("lookup", what="budgets", name="monthly")
        assert one["budgets"][0]["spec"]["alert_thresholds"] == ["50", "75", "90", "100"]
        price = await session.ok("prices", action="get", model="gpt-4o")
        assert price["models"][0]["name"] == "gpt-4o" and isinstance(
            price["models"][0]["price"]["input"], str
        )
        found = await session.ok("prices", action="list", query="gpt-4o", limit=3)
        assert 1 <= len(found["models"]) <= 3
        override = await session.ok(
            "manage_prices", action="set", model="gpt-4o", input="0.000001", output="0.000002"
        )
        assert override["models"][0]["source"] == "tenant override"
        overrides = await session.ok("prices", action="list", query="gpt-4o")
        assert overrides["overrides"][0]["model"] == "gpt-4o"
        deleted = await session.ok("manage_budget", action="delete", name="monthly")
        assert deleted["deleted"] == "monthly"


async def test_a_denial_names_its_budget_and_reason(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        await session.ok(
            "manage_budget", action="set", name="bob-daily", scope="user:bob", limit=100, period="day"
        )
        denied = await session.ok("check_budget", model="gpt-4o", input_tokens=1_000, user="bob")
        assert denied["allowed"] is False and denied["decision"] == "deny"
        assert denied["reservation_id"] is None
        assert denied["blocked_by"]["budget"] == "bob-daily" and denied["blocked_by"]["reason"] == "limit"
        assert denied["blocked_by"]["resets_at"]
        # Another user's call does not match the budget's scope.
        other = await session.ok("check_budget", model="gpt-4o", input_tokens=1_000, user="carol")
        assert other["allowed"] is True


async def test_a_replayed_request_id_counts_once(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        usage = {"model": "gpt-4o", "input_tokens": 100, "output_tokens": 50, "request_id": "same-call"}
        first = await session.ok("track_usage", **usage)
        second = await session.ok("track_usage", **usage)
        assert first["duplicate"] is False and second["duplicate"] is True
        assert second["usage_id"] == first["usage_id"]
        summary = await session.ok("report")
        assert summary["totals"]["requests"] == 1 and summary["totals"]["total_tokens"] == 150
        conflict = await session.refused("track_usage", **{**usage, "output_tokens": 60})
        assert "request_id" in conflict


async def test_roles_are_enforced(ledger: Ledger) -> None:
    member = Principal(role="member", user="alice")
    async with Client(build_server(ledger, default_principal=member)) as client:
        session = await Session(client).load()
        own = await session.ok("report", view="usage", user="alice")
        assert own["totals"]["requests"] == 0
        refused = await session.refused("report", view="usage", user="bob")
        assert "user" in refused and "'bob'" in refused and "own user" in refused
        refused = await session.refused("manage_budget", action="set", name="x", limit=10)
        assert "role 'member'" in refused and "admin" in refused
    viewer = Principal(role="viewer")
    async with Client(build_server(ledger, default_principal=viewer)) as client:
        session = await Session(client).load()
        refused = await session.refused("check_budget", model="gpt-4o", input_tokens=10)
        assert "role 'viewer'" in refused and "admin, member" in refused
        assert (await session.ok("report"))["view"] == "summary"


BIG_TEXT = "a" * (8 * 1024 * 1024 + 1)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("count_tokens", {"text": 42, "model": "gpt-4o"}, "text"),
    ("count_tokens", {"text": "hi", "model": "x" * 201}, "model"),
    ("count_tokens", {"text": "hi", "encoding": "nope_base"}, "encoding"),
    ("count_tokens", {"text": "hi", "texts": ["a"]}, "text"),
    ("count_tokens", {"text": BIG_TEXT}, "text"),
    ("count_tokens", {"messages": [{"role": "user", "content": "x"}] * 10_001}, "messages"),
    ("count_tokens", {"text": "hi", "colour": "blue"}, "colour"),
    ("check_budget", {"model": "gpt-4o", "input_tokens": -5}, "input_tokens"),
    ("check_budget", {"input_tokens": 5}, "model"),
    ("check_budget", {"model": "gpt-4o", "input_tokens": 5, "text": "hello"}, "input_tokens"),
    ("check_budget", {"model": "gpt-4o", "input_tokens": 5, "priority": "urgent"}, "priority"),
    ("check_budget", {"model": "gpt-4o", "input_tokens": "many"}, "input_tokens"),
    ("check_budget", {"model": "gpt-4o", "input_tokens": 5, "user": "has spaces!"}, "user"),
    ("track_usage", {"model": "gpt-4o", "input_tokens": 5}, "output_tokens"),
    ("track_usage", {"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1, "status": "ok"}, "status"),
    ("track_usage", {"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1, "cost_usd": -1}, "cost_usd"),
    (
        "track_usage",
        {"model": "o3", "input_tokens": 1, "output_tokens": 1, "batch": True, "service_tier": "flex"},
        "service_tier",
    ),
    ("track_usage", {"model": "o3", "input_tokens": 1, "output_tokens": 1, "cache_ttl": "2h"}, "cache_ttl"),
    (
        "fit_messages",
        {"model": "no-such-model-xyz", "messages": [{"role": "user", "content": "x"}]},
        "context_window",
    ),
    ("manage_budget", {"action": "set", "name": "b", "limit": 10, "period": "fortnight"}, "period"),
    ("manage_budget", {"action": "set", "name": "b", "limit": 10, "scope": "planet:mars"}, "scope"),
    ("manage_budget", {"action": "set", "name": "b"}, "limit"),
    ("manage_budget", {"action": "delete"}, "name"),
    ("manage_budget", {"action": "delete", "name": "missing"}, "name"),
    ("manage_budget", {"name": "b", "limit": 10}, "action"),
    ("manage_budget", {"action": "set", "name": "b", "limit": 10, "clear": ["limit"]}, "clear"),
    ("lookup", {"what": "budgets", "name": "missing"}, "name"),
    ("lookup", {"what": "budgets", "id": 1}, "id"),
    ("lookup", {"what": "everything"}, "what"),
    ("manage_prices", {"action": "alias", "model": "my-model"}, "target"),
    (
        "fit_messages",
        {"model": "gpt-4o", "messages": [], "max_tokens": 1, "max_output_tokens": 1},
        "max_tokens",
    ),
    ("report", {"view": "everything"}, "view"),
    ("report", {"since": "yesterday"}, "since"),
    ("report", {"group_by": ["colour"]}, "group_by"),
    ("prices", {"action": "get", "model": "no-such-model-xyz"}, "model"),
    ("fit_messages", {"model": "gpt-4o"}, "messages"),
    ("release", {"reservation_id": "00000000-0000-0000-0000-000000000000"}, "reservation_id"),
    ("extend_reservation", {"reservation_id": "00000000-0000-0000-0000-000000000000"}, "reservation_id"),
    (
        "extend_reservation",
        {"reservation_id": "00000000-0000-0000-0000-000000000000", "ttl_seconds": 1},
        "ttl_seconds",
    ),
]


async def test_malformed_calls_are_refused_naming_the_field(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        for tool, arguments, field in MALFORMED:
            text = await session.refused(tool, **arguments)
            assert field in text, (tool, field, text)
            print(f"{tool}: {text[:300]}")
            assert len(text) < 2_000, (tool, field, len(text))
        # The server keeps serving.
        assert (await session.ok("count_tokens", text="still here", model="gpt-4o"))["tokens"] == 2
        assert len(MALFORMED) >= 20


async def test_texts_over_8_mb_together_are_refused(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        half = "b" * (4 * 1024 * 1024 + 1)
        text = await session.refused("track_usage", model="gpt-4o", input_text=half, output_text=half)
        assert "output_text" in text and "8 MB" in text
        text = await session.refused("count_tokens", texts=[half, half])
        assert "texts" in text


async def test_resources_and_the_prompt(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        await session.ok(
            "manage_budget", action="set", name="team-a", scope="team:a", limit="5.50", unit="usd"
        )
        listed = await client.list_resources()
        assert "tokenledger://budgets" in {str(resource.uri) for resource in listed.resources}
        templates = await client.list_resource_templates()
        assert {t.uri_template for t in templates.resource_templates} >= {
            "tokenledger://budgets/{name}",
            "tokenledger://models/{name}",
        }

        read = await client.read_resource("tokenledger://budgets")
        payload = json.loads(read.contents[0].text)  # type: ignore[union-attr]
        assert payload["rows"][0]["name"] == "team-a" and payload["rows"][0]["limit"] == "5.50"
        one = json.loads((await client.read_resource("tokenledger://budgets/team-a")).contents[0].text)  # type: ignore[union-attr]
        assert one["spec"]["unit"] == "usd" and one["state"]["remaining"] == "5.50"
        model = json.loads((await client.read_resource("tokenledger://models/gpt-4o")).contents[0].text)  # type: ignore[union-attr]
        assert model["name"] == "gpt-4o" and model["context_window"] > 0
        with pytest.raises(MCPError, match="no such budget"):
            await client.read_resource("tokenledger://budgets/nope")
        with pytest.raises(MCPError, match="unknown model"):
            await client.read_resource("tokenledger://models/no-such-model-xyz")

        prompts = await client.list_prompts()
        assert "cost_review" in [p.name for p in prompts.prompts]  # the Token Checker's: test_token_checker
        prompt = await client.get_prompt("cost_review", {"since": "30d"})
        message = prompt.messages[0].content
        assert isinstance(message, TextContent)
        assert 'view="summary" since="30d"' in message.text and 'view="budgets"' in message.text


async def test_tool_list_is_small_and_annotated(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        listed = await client.list_tools()
        wire = listed.model_dump_json(by_alias=True, exclude_none=True)
        tokens = count_text(wire, encoding="o200k_base").tokens
        spaced = count_text(json.dumps(json.loads(wire)), encoding="o200k_base").tokens
        print(f"\ntools/list costs {tokens} o200k tokens as sent ({spaced} with json.dumps spacing)")
        assert tokens < 3_000
        for tool in listed.tools:
            assert tool.description and len(tool.description) < 120, tool.name
            assert tool.annotations is not None and tool.output_schema == {"type": "object"}, tool.name
            assert tool.input_schema.get("additionalProperties") is False, tool.name
            assert "$defs" not in json.dumps(tool.input_schema) and "$ref" not in json.dumps(
                tool.input_schema
            )
            jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        hints = {tool.name: tool.annotations for tool in listed.tools}
        reads = {name for name, hint in hints.items() if hint and hint.read_only_hint}
        assert reads == {"count_tokens", "report", "lookup", "prices", "fit_messages"}
        destructive = {name for name, hint in hints.items() if hint and hint.destructive_hint is not False}
        assert destructive - reads == {"manage_budget", "manage_schedule", "manage_prices"}
        # Every write says whether it destroys, since clients gate on it; MCP's default would say it does.
        assert all(hints[name].destructive_hint is not None for name in TOOLS - reads)  # type: ignore[union-attr]


async def test_reads_live_in_read_only_tools_and_moved_actions_say_where(ledger: Ledger) -> None:
    """A read never needs a tool that may write; an action that moved names the tool that has it now."""
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        await session.ok("manage_budget", action="set", name="daily", limit=1_000, period="day")
        for tool, arguments, home in (
            ("manage_budget", {"action": "list"}, "lookup what=budgets"),
            ("manage_budget", {"action": "get", "name": "daily"}, "lookup what=budgets name=NAME"),
            ("manage_schedule", {"action": "list"}, "lookup what=schedules"),
            ("budget_override", {"action": "status", "id": 1}, "lookup what=overrides id=ID"),
            ("prices", {"action": "set", "model": "gpt-4o", "input": "1", "output": "1"}, "manage_prices"),
        ):
            refused = await session.refused(tool, **arguments)
            assert "action" in refused and home in refused, refused
        assert (await session.ok("lookup", what="schedules"))["schedules"] == []
        assert (await session.ok("lookup", what="overrides", status="pending"))["overrides"] == []
        aliased = await session.ok("manage_prices", action="alias", model="my-prod", target="gpt-4o")
        assert aliased["aliases"][0]["target"] == "gpt-4o"
        assert [a["alias"] for a in (await session.ok("prices", action="list"))["aliases"]] == ["my-prod"]
        removed = await session.ok("manage_prices", action="unalias", model="my-prod")
        assert removed["aliases"][0]["alias"] == "my-prod"


async def test_null_means_not_given_and_clear_unsets(ledger: Ledger) -> None:
    """Strict clients send every field, null for those they do not mean: a set changes only the others;
    `clear` is how a field is unset."""
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        manage = next(t for t in (await client.list_tools()).tools if t.name == "manage_budget")
        every_field_null = dict.fromkeys(manage.input_schema["properties"])
        created = {"action": "set", "name": "b", "limit": "1000", "hard_limit": "1200", "clear": []}
        await session.ok("manage_budget", **{**every_field_null, **created, "tokens_per_minute": 500})
        changed = await session.ok(
            "manage_budget",
            **{**every_field_null, "action": "set", "name": "b", "limit": "1100", "clear": []},
        )
        spec = changed["budgets"][0]["spec"]
        assert (spec["limit"], spec["hard_limit"], spec["tokens_per_minute"]) == ("1100", "1200", 500)
        assert spec["priority_shares"] == {"high": "0.5", "medium": "0.3", "low": "0.2"}
        cleared = await session.ok(
            "manage_budget", action="set", name="b", clear=["hard_limit", "priority_shares"]
        )
        spec = cleared["budgets"][0]["spec"]
        assert (
            spec["hard_limit"] is None
            and spec["priority_shares"] is None
            and spec["tokens_per_minute"] == 500
        )
        shares = await session.ok(
            "manage_budget", action="set", name="b", priority_shares={"high": 0.6, "low": None}
        )
        assert shares["budgets"][0]["spec"]["priority_shares"] == {"high": "0.6"}
        # Nulls in messages and their parts are absent too; the count is the same as without them.
        plain = [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]
        strict = [{"role": "user", "name": None, "content": [{"type": "text", "text": "hello there"}]}]
        counted = [
            (await session.ok("count_tokens", model="gpt-4o", messages=messages, text=None))["tokens"]
            for messages in (plain, strict)
        ]
        assert counted[0] == counted[1] > 0


async def test_each_role_lists_only_the_tools_it_can_call(ledger: Ledger) -> None:
    """A member sees no admin tool, a viewer no write; each tool hidden from a role refuses that role."""
    calls: dict[str, dict[str, Any]] = {
        "check_budget": {"model": "gpt-4o", "input_tokens": 1},
        "track_usage": {"model": "gpt-4o", "input_tokens": 1, "output_tokens": 1},
        "release": {"reservation_id": "00000000-0000-0000-0000-000000000000"},
        "extend_reservation": {"reservation_id": "00000000-0000-0000-0000-000000000000"},
        "budget_override": {"action": "cancel", "id": 1},
        "manage_budget": {"action": "set", "name": "b", "limit": 10},
        "manage_schedule": {"action": "add", "name": "s", "to": "slack"},
        "manage_prices": {"action": "alias", "model": "mine", "target": "gpt-4o"},
    }
    for role, hidden in (
        ("member", {"manage_budget", "manage_schedule", "manage_prices"}),
        (
            "viewer",
            {
                "manage_budget",
                "manage_schedule",
                "manage_prices",
                "check_budget",
                "track_usage",
                "release",
                "extend_reservation",
                "budget_override",
            },
        ),
    ):
        principal = Principal(role=role, user="ana" if role == "member" else None)  # type: ignore[arg-type]
        async with Client(build_server(ledger, default_principal=principal)) as client:
            tools = await client.list_tools()
            wire = tools.model_dump_json(by_alias=True, exclude_none=True)
            tokens = count_text(wire, encoding="o200k_base").tokens
            print(f"\n{role}'s tools/list costs {tokens} o200k tokens")
            listed = {tool.name for tool in tools.tools}
            assert listed == TOOLS - hidden, role
            session = await Session(client).load()
            for name in hidden:
                refused = await session.refused(name, **calls[name])
                assert f"role {role!r}" in refused, (name, refused)


async def test_unknown_tools_and_prompts_are_invalid_params(ledger: Ledger) -> None:
    server = build_server(ledger, default_principal=ADMIN)

    @server.tool(name="ping", description="A tool the embedding application adds")
    async def ping() -> str:
        return "pong"

    async with Client(server) as client:
        with pytest.raises(MCPError) as tool:
            await client.call_tool("no_such_tool", {})
        assert tool.value.error.code == -32602 and "no_such_tool" in tool.value.error.message
        assert "ping" in tool.value.error.message  # among the tools it may call instead
        assert text_of(await client.call_tool("ping", {})) == "pong"  # an embedder's own tool is known
        with pytest.raises(MCPError) as prompt:
            await client.get_prompt("no_such_prompt", {})
        assert prompt.value.error.code == -32602 and "no_such_prompt" in prompt.value.error.message
        assert client.server_info is not None and client.server_info.version == __version__


async def test_fit_messages_takes_max_output_tokens_and_its_old_name_for_one_release(ledger: Ledger) -> None:
    messages = [{"role": "user", "content": "word " * 50}]
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        session = await Session(client).load()
        schema = next(t for t in (await client.list_tools()).tools if t.name == "fit_messages").input_schema
        assert "max_output_tokens" in schema["properties"] and "max_tokens" not in schema["properties"]
        room = {"model": "gpt-4o", "messages": messages, "context_window": 100}
        fitted = await session.ok("fit_messages", **room, max_output_tokens=60)
        assert fitted["fits"] is False and not fitted["warnings"]
        old = await session.ok("fit_messages", **room, max_tokens=60)
        assert old["fits"] is False and any("max_tokens is deprecated" in w for w in old["warnings"])
        assert (await session.ok("fit_messages", **room, max_output_tokens=10))["fits"] is True


# --- who is calling ----------------------------------------------------------------------------


def _http_context(state: dict[str, Any] | None) -> Context:  # type: ignore[type-arg]
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/mcp", "headers": []}
    if state is not None:
        scope["state"] = state
    return Context(request_context=SimpleNamespace(request=Request(scope)))  # type: ignore[arg-type]


def test_the_principal_of_an_http_request_is_the_one_its_auth_middleware_stored() -> None:
    member = Principal(tenant_id="acme", role="member", user="alice", key_id="k1")
    assert principal_of(_http_context({"principal": member}), ADMIN) == member


def test_an_http_request_without_a_principal_is_refused_never_defaulted() -> None:
    with pytest.raises(ToolError, match="unauthenticated"):
        principal_of(_http_context(None), ADMIN)
    with pytest.raises(ToolError, match="unauthenticated"):
        principal_of(_http_context({"principal": "admin"}), ADMIN)


def test_without_a_request_the_default_principal_acts() -> None:
    assert principal_of(Context(request_context=SimpleNamespace(request=None)), ADMIN) is ADMIN  # type: ignore[arg-type]
    assert principal_of(Context(), ADMIN) is ADMIN
