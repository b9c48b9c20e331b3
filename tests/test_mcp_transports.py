"""The MCP server end to end, through the official client, over stdio, streamable HTTP and SSE.

stdio runs `python -m tokenledger serve --transport stdio` as a real subprocess; HTTP and SSE run the
real ASGI app under uvicorn on 127.0.0.1 (a free port) in this test's event loop. Each transport is
driven with the legacy initialize handshake at protocol 2025-06-18 and with the newest protocol the
SDK speaks. The request guard (Host 421, Origin 403, body size 413, key 401) is checked with raw HTTP
requests, and each refusal leaves every ledger table as it was.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from mcp_types.version import LATEST_MODERN_VERSION, LATEST_PROTOCOL_VERSION
from psycopg import sql

from tests.servers import Served, serving
from tokenledger.mcp.http import DEFAULT_MAX_REQUEST_BYTES, AccessPolicy
from tokenledger.types import MAX_TEXT_BYTES

LEGACY = "2025-06-18"
NEWEST = LATEST_PROTOCOL_VERSION
PROTOCOLS = (LEGACY, NEWEST)
MODEL = "gpt-4o-mini"
TEST_TIMEOUT = 60

pytestmark = pytest.mark.anyio


@pytest.fixture
def offer(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Client options offering a protocol: the handshake at 2025-06-18, or the newest modern version."""

    def options(protocol: str) -> dict[str, Any]:
        if protocol == LEGACY:
            # The SDK's client offers its newest handshake version; an older client offers 2025-06-18.
            monkeypatch.setattr("mcp.client.session.LATEST_HANDSHAKE_VERSION", LEGACY)
            return {"mode": "legacy", "read_timeout_seconds": 30}
        assert protocol == LATEST_MODERN_VERSION
        return {"mode": protocol, "read_timeout_seconds": 30}

    yield options


# --- servers -----------------------------------------------------------------------------------


def stdio_parameters(dsn: str, home: Path, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "tokenledger", "serve", "--transport", "stdio"],
        env={"TOKENLEDGER_DATABASE_URL": dsn, "TOKENLEDGER_HOME": str(home), **env},
    )


@contextlib.asynccontextmanager
async def connect(
    kind: Literal["stdio", "http", "sse"],
    protocol_options: dict[str, Any],
    *,
    served: Served | None = None,
    key: str | None = None,
    stdio: StdioServerParameters | None = None,
    errlog: Path | None = None,
    on_session: Callable[[str], None] | None = None,
) -> AsyncIterator[Client]:
    """An entered official client over `kind`."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with contextlib.AsyncExitStack() as stack:
        if kind == "stdio":
            assert stdio is not None and errlog is not None
            log_file = stack.enter_context(errlog.open("a"))
            transport: Any = stdio_client(stdio, errlog=log_file)
        elif kind == "http":
            assert served is not None
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30))
            )
            transport = streamable_http_client(f"{served.base}/mcp", http_client=http)
        else:
            assert served is not None
            transport = sse_client(
                f"{served.base}/sse",
                headers=headers,
                timeout=10,
                sse_read_timeout=30,
                on_session_created=on_session,
            )
        client = await stack.enter_async_context(Client(transport, **protocol_options))
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """The structured result of a tool call that must succeed."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {_text(result)}"
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The error text of a tool call that must be refused."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have been refused: {result.structured_content}"
    return _text(result)


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def row_counts(dsn: str) -> dict[str, int]:
    """Rows in every ledger table."""
    with psycopg.connect(dsn) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select tablename from pg_tables where schemaname = 'public' and tablename like 'tl%'"
            )
        ]
        return {
            table: conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(table))).fetchone()[
                0
            ]  # type: ignore[index]
            for table in tables
        }


async def counts(dsn: str) -> dict[str, int]:
    return await anyio.to_thread.run_sync(row_counts, dsn)


# --- the flow, on every transport and protocol -------------------------------------------------


async def ledger_flow(client: Client, protocol: str) -> None:
    """Set a budget, count, check, track, report; a denial with its reason; a replayed track."""
    assert client.protocol_version == protocol
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert {"count_tokens", "check_budget", "track_usage", "report", "manage_budget"} <= tools

    budget = await call(
        client, "manage_budget", action="set", name="monthly", limit="1000", unit="tokens", period="month"
    )
    assert budget["budgets"][0]["spec"]["name"] == "monthly"

    counted = await call(client, "count_tokens", text="hello world", model=MODEL)
    assert counted["tokens"] == 2 and counted["method"] == "exact"

    check = await call(client, "check_budget", model=MODEL, input_tokens=100, max_output_tokens=200)
    assert check["allowed"] is True and check["decision"] == "allow" and check["reservation_id"]

    tracked = await call(
        client,
        "track_usage",
        model=MODEL,
        reservation_id=check["reservation_id"],
        input_tokens=100,
        output_tokens=150,
        request_id="call-1",
    )
    assert tracked["total_tokens"] == 250 and tracked["duplicate"] is False

    replay = await call(
        client,
        "track_usage",
        model=MODEL,
        reservation_id=check["reservation_id"],
        input_tokens=100,
        output_tokens=150,
        request_id="call-1",
    )
    assert replay["duplicate"] is True and replay["usage_id"] == tracked["usage_id"]

    report = await call(client, "report", view="summary")
    totals = report["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (1, 100, 150)

    denied = await call(client, "check_budget", model=MODEL, input_tokens=900, max_output_tokens=100)
    assert denied["allowed"] is False and denied["decision"] == "deny"
    assert denied["blocked_by"]["budget"] == "monthly" and denied["blocked_by"]["reason"] == "limit"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_stdio_flow(dsn: str, tmp_path: Path, offer: Any, protocol: str) -> None:
    errlog = tmp_path / "server.log"
    with anyio.fail_after(TEST_TIMEOUT):
        async with connect(
            "stdio", offer(protocol), stdio=stdio_parameters(dsn, tmp_path), errlog=errlog
        ) as client:
            await ledger_flow(client, protocol)
    assert "serving MCP over stdio as admin of tenant 'default'" in errlog.read_text()


async def test_stdio_member_reads_only_its_own_usage(dsn: str, tmp_path: Path, offer: Any) -> None:
    parameters = stdio_parameters(dsn, tmp_path, TOKENLEDGER_ROLE="member", TOKENLEDGER_USER="alice")
    with anyio.fail_after(TEST_TIMEOUT):
        async with connect(
            "stdio", offer(NEWEST), stdio=parameters, errlog=tmp_path / "server.log"
        ) as client:
            tracked = await call(client, "track_usage", model=MODEL, input_tokens=10, output_tokens=5)
            assert tracked["total_tokens"] == 15
            error = await refused(client, "report", view="summary", user="bob")
            assert "bob" in error and "member" in error
            assert "admin" in await refused(client, "manage_budget", action="set", name="b", limit="5")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_http_flow(dsn: str, offer: Any, kind: Literal["http", "sse"], protocol: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            admin_key, _ = await served.ledger.create_key(role="admin", name="test admin")
            async with connect(kind, offer(protocol), served=served, key=admin_key) as client:
                await ledger_flow(client, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_member_key_cannot_read_another_users_usage(
    dsn: str, offer: Any, kind: Literal["http", "sse"], protocol: str
) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            member_key, _ = await served.ledger.create_key(role="member", user="alice")
            async with connect(kind, offer(protocol), served=served, key=member_key) as client:
                tracked = await call(client, "track_usage", model=MODEL, input_tokens=10, output_tokens=5)
                assert tracked["total_tokens"] == 15
                own = await call(client, "report", view="summary", user="alice")
                assert own["totals"]["requests"] == 1
                error = await refused(client, "report", view="summary", user="bob")
                assert "'bob'" in error and "member" in error
                assert "admin" in await refused(client, "manage_budget", action="set", name="b", limit="5")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_revoked_key_is_refused_at_once(
    dsn: str, offer: Any, kind: Literal["http", "sse"], protocol: str
) -> None:
    sessions: list[str] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            key, record = await served.ledger.create_key(role="admin")
            async with connect(
                kind, offer(protocol), served=served, key=key, on_session=sessions.append
            ) as client:
                await call(client, "count_tokens", text="still allowed", model=MODEL)
                await served.ledger.revoke_key(record["key_id"])
                before = await counts(served.dsn)
                # The streamable-HTTP client raises on the 401; the SDK's SSE client only logs its failed
                # POST, so there the call never completes: either way it is not served.
                with anyio.move_on_after(2):
                    with pytest.raises((MCPError, httpx2.HTTPStatusError)):
                        await client.call_tool(
                            "track_usage", {"model": MODEL, "input_tokens": 1, "output_tokens": 1}
                        )
                assert await counts(served.dsn) == before
                # What the server answered, seen raw: 401 on the endpoint this client used.
                path = "/mcp" if kind == "http" else f"/messages/?session_id={sessions[0]}"
                async with httpx2.AsyncClient(timeout=10) as http:
                    answer = await http.post(
                        served.base + path,
                        json=modern_track_call(),
                        headers=modern_headers("track_usage", key),
                    )
                assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
                assert 'error="invalid_token"' in answer.headers["www-authenticate"]
                assert await counts(served.dsn) == before


async def test_an_sse_session_answers_only_the_key_that_opened_it(dsn: str, offer: Any) -> None:
    sessions: list[str] = []
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            alice, _ = await served.ledger.create_key(role="member", user="alice")
            mallory, _ = await served.ledger.create_key(role="admin")
            async with connect(
                "sse", offer(NEWEST), served=served, key=alice, on_session=sessions.append
            ) as client:
                await call(client, "count_tokens", text="hello", model=MODEL)
                before = await counts(dsn)
                async with httpx2.AsyncClient(timeout=10) as http:
                    answer = await http.post(
                        f"{served.base}/messages/?session_id={sessions[0]}",
                        json=modern_track_call(),
                        headers=modern_headers("track_usage", mallory),
                    )
                assert answer.status_code == 404  # as if the session did not exist
                assert await counts(dsn) == before
                await call(client, "count_tokens", text="still mine", model=MODEL)


# --- the request guard ---------------------------------------------------------------------------


def tools_call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


def modern_headers(tool: str, key: str | None = None) -> dict[str, str]:
    """The headers of a modern-era tools/call (the protocol names the method and tool in headers)."""
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Protocol-Version": LATEST_MODERN_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


MODERN_HEADERS = modern_headers("track_usage")


def modern_track_call() -> dict[str, Any]:
    """A complete modern-era track_usage request: were it let through, it would record usage."""
    message = tools_call("track_usage", model=MODEL, input_tokens=7, output_tokens=3, request_id="guarded")
    message["params"]["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return message


async def test_a_raw_modern_call_records_usage(dsn: str) -> None:
    """The control for the refusals below: the same request, let through, changes the ledger."""
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            key, _ = await served.ledger.create_key(role="admin")
            before = await counts(dsn)
            answer = await http.post(
                f"{served.base}/mcp",
                json=modern_track_call(),
                headers=modern_headers("track_usage", key),
            )
            assert answer.status_code == 200, answer.text
            assert '"total_tokens":10' in answer.text.replace(" ", "")
            after = await counts(dsn)
            assert after["tl_usage"] == before["tl_usage"] + 1


@pytest.mark.parametrize("path", ["/mcp", "/messages/?session_id=00000000000000000000000000000000"])
async def test_refusals_leave_the_ledger_unchanged(dsn: str, path: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES) as served:
            key, _ = await served.ledger.create_key(role="admin")
            auth = {"Authorization": f"Bearer {key}"}
            body = json.dumps(modern_track_call()).encode()
            before = await counts(dsn)
            url = served.base + path
            async with httpx2.AsyncClient(timeout=30) as http:
                foreign_host = await http.post(
                    url,
                    content=body,
                    headers={**MODERN_HEADERS, **auth, "Host": f"evil.example:{served.port}"},
                )
                assert foreign_host.status_code == 421
                assert foreign_host.json()["error"] == "misdirected_request"

                foreign_origin = await http.post(
                    url, content=body, headers={**MODERN_HEADERS, **auth, "Origin": "http://evil.example"}
                )
                assert foreign_origin.status_code == 403
                assert foreign_origin.json()["error"] == "forbidden_origin"

                no_key = await http.post(url, content=body, headers=MODERN_HEADERS)
                assert no_key.status_code == 401
                assert no_key.headers["www-authenticate"].startswith("Bearer")
                assert no_key.json()["error"] == "invalid_request"

                unknown_key = await http.post(
                    url, content=body, headers={**MODERN_HEADERS, "Authorization": "Bearer tl_nope_nope"}
                )
                assert unknown_key.status_code == 401
                assert 'error="invalid_token"' in unknown_key.headers["www-authenticate"]

                # Over the limit by Content-Length, and while streaming (chunked, no length declared).
                huge = json.dumps(
                    tools_call("count_tokens", text="x" * (DEFAULT_MAX_REQUEST_BYTES + 1))
                ).encode()
                declared = await http.post(url, content=huge, headers={**MODERN_HEADERS, **auth})
                assert declared.status_code == 413
                assert declared.json()["error"] == "request_too_large"

                async def chunks() -> AsyncIterator[bytes]:
                    for start in range(0, len(huge), 1 << 20):
                        yield huge[start : start + (1 << 20)]

                streamed = await http.post(url, content=chunks(), headers={**MODERN_HEADERS, **auth})
                assert streamed.status_code == 413
                assert "content-length" not in streamed.request.headers

                # The order: a foreign Host is refused before Origin, body size and key are looked at.
                everything_wrong = await http.post(
                    url,
                    content=huge,
                    headers={**MODERN_HEADERS, "Host": "evil.example", "Origin": "http://x.y"},
                )
                assert everything_wrong.status_code == 421
                origin_and_size = await http.post(
                    url, content=huge, headers={**MODERN_HEADERS, "Origin": "http://x.y"}
                )
                assert origin_and_size.status_code == 403
                size_and_key = await http.post(url, content=huge, headers=MODERN_HEADERS)
                assert size_and_key.status_code == 413
            assert await counts(dsn) == before


async def test_loopback_hosts_and_origins_are_accepted(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            key, _ = await served.ledger.create_key(role="admin")
            message = tools_call("count_tokens", text="hello world", model=MODEL)
            message["params"]["_meta"] = modern_track_call()["params"]["_meta"]
            for host, origin in [
                (f"127.0.0.1:{served.port}", None),
                (f"localhost:{served.port}", "http://localhost:6274"),
                (f"127.0.0.1:{served.port}", f"http://127.0.0.1:{served.port}"),
            ]:
                headers = {**modern_headers("count_tokens", key), "Host": host}
                if origin:
                    headers["Origin"] = origin
                answer = await http.post(f"{served.base}/mcp", json=message, headers=headers)
                assert answer.status_code == 200, (host, origin, answer.text)


async def test_an_8_mib_text_fits_the_default_limit(dsn: str, offer: Any) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            key, _ = await served.ledger.create_key(role="member", user="alice")
            async with connect("http", offer(NEWEST), served=served, key=key) as client:
                # Just under the tools' own 8 MiB text limit (which counts argument names too).
                text = "ab " * ((MAX_TEXT_BYTES - 1024) // 3)
                counted = await call(client, "count_tokens", text=text, encoding="o200k_base")
                assert counted["tokens"] > 1_000_000


async def test_healthz_needs_no_key(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            answer = await http.get(f"{served.base}/healthz")
            assert answer.status_code == 200
            assert answer.json() == {"status": "ok", "database": "ok"}
            await served.ledger.close()  # the database is now out of reach of this server
            answer = await http.get(f"{served.base}/healthz")
            assert answer.status_code == 200
            health = answer.json()
            assert (health["status"], health["database"]) == ("degraded", "unavailable")
            assert health["available_tools"] == ["count_tokens", "fit_messages"]  # they need no database


async def test_sse_only_server_has_no_streamable_endpoint(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, transports=("sse",)) as served, httpx2.AsyncClient(timeout=10) as http:
            key, _ = await served.ledger.create_key(role="admin")
            answer = await http.post(
                f"{served.base}/mcp", json={}, headers=modern_headers("track_usage", key)
            )
            assert answer.status_code == 404


def test_access_policy() -> None:
    policy = AccessPolicy.for_bind(
        "0.0.0.0",
        allowed_hosts=["ledger.example.com", "proxy.internal:8443"],
        allowed_origins=["https://app.example.com"],
    )
    assert policy.host_allowed("127.0.0.1:8765") and policy.host_allowed("[::1]:8765")
    assert policy.host_allowed("LocalHost") and policy.host_allowed("ledger.example.com:443")
    assert policy.host_allowed("proxy.internal:8443") and not policy.host_allowed("proxy.internal:9000")
    assert not policy.host_allowed("evil.example:8765") and not policy.host_allowed(None)
    assert not policy.host_allowed("127.0.0.1.evil.example") and not policy.host_allowed("a b")
    assert policy.origin_allowed(None) and policy.origin_allowed("http://localhost:6274")
    assert policy.origin_allowed("https://app.example.com") and policy.origin_allowed(
        "https://app.example.com:443"
    )
    assert not policy.origin_allowed("http://app.example.com") and not policy.origin_allowed("null")
    assert not policy.origin_allowed("https://app.example.com.evil.example")
    named = AccessPolicy.for_bind("10.1.2.3")
    assert named.host_allowed("10.1.2.3:8765") and not named.host_allowed("10.1.2.4:8765")
    anything = AccessPolicy(allowed_hosts=("*",), allowed_origins=("*",))
    assert anything.host_allowed("whatever:1") and anything.origin_allowed("https://any.example")
    assert AccessPolicy(allowed_hosts=("proxy:*",)).host_allowed("proxy:1")
    wildcard_port = AccessPolicy(allowed_origins=("https://app.example.com:*",))
    assert wildcard_port.origin_allowed("https://app.example.com:9999")
