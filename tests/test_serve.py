"""`tokenledger serve --transport http --first-run` (what `make run` starts), as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg

from tests.servers import free_port
from tokenledger.ledger import Ledger
from tokenledger.settings import Settings
from tokenledger.types import Principal

START_TIMEOUT = 30
STOP_TIMEOUT = 15


@contextmanager
def serve(
    dsn: str, home: Path, *extra: str, env: dict[str, str] | None = None, stdout: int | None = None
) -> Iterator[tuple[str, Path]]:
    """Run `serve --transport http --first-run` until /healthz answers; SIGTERM it on exit, which must
    stop it cleanly (exit code 0) in time. Yields the base URL and the file its stderr (the log) goes to;
    its stdout goes to `stdout` (a file descriptor, e.g. a terminal's) or to that path with `.out`."""
    port = free_port()
    log_path = home.parent / f"serve-{port}.log"
    environment = {
        **os.environ,
        "TOKENLEDGER_DATABASE_URL": dsn,
        "TOKENLEDGER_HOME": str(home),
        **(env or {}),
    }
    command = [sys.executable, "-m", "tokenledger", "serve", "--transport", "http", "--first-run"]
    with log_path.open("w") as log, log_path.with_suffix(".out").open("w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port), *extra],
            env=environment,
            stdout=out if stdout is None else stdout,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"serve exited early:\n{log_path.read_text()}"
            try:
                if httpx2.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer in time:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield base, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert process.returncode == 0, f"exit code {process.returncode}:\n{log_path.read_text()}"


def key_rows(dsn: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select tenant_id, role, revoked_at::text from tl_api_key order by created_at")
        return [(row[0], row[1], row[2]) for row in rows]


def tools_call_status(base: str, key: str) -> int:
    """The HTTP status of a modern count_tokens call with `key`."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "count_tokens",
            "arguments": {"text": "hello", "encoding": "o200k_base"},
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
        "Mcp-Name": "count_tokens",
        "Authorization": f"Bearer {key}",
    }
    return httpx2.post(f"{base}/mcp", json=message, headers=headers, timeout=10).status_code


def test_first_run_creates_a_private_admin_key_and_later_runs_reuse_it(dsn: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    key_file = home / "admin.key"

    with serve(dsn, home) as (base, log):
        answer = httpx2.get(f"{base}/healthz", timeout=5)
        assert answer.json() == {"status": "ok", "database": "ok"}
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key.startswith("tl_")
        assert tools_call_status(base, key) == 200
        assert tools_call_status(base, key + "x") == 401
    first = log.with_suffix(".out").read_text()
    assert key not in first and key not in log.read_text(), "stdout is no terminal here: a log"
    assert f"{base}/mcp" in first and f"{base}/sse" in first and str(key_file) in first
    assert f"claude mcp add --transport http tokenledger {base}/mcp" in first
    assert key_rows(dsn) == [("default", "admin", None)]

    with serve(dsn, home) as (base, log):
        assert key_file.read_text().strip() == key
        assert tools_call_status(base, key) == 200
    second = log.with_suffix(".out").read_text()
    assert key not in second and key not in log.read_text(), "a later start names the key file, never the key"
    assert str(key_file) in second
    assert key_rows(dsn) == [("default", "admin", None)]


async def _revoked_admin_key(dsn: str) -> str:
    async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
        key, record = await ledger.create_key(role="admin", principal=Principal())
        await ledger.revoke_key(record["key_id"])
    return key


def test_a_revoked_saved_key_is_replaced(dsn: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    old_key = anyio.run(_revoked_admin_key, dsn)
    (home / "admin.key").write_text(old_key + "\n")

    with serve(dsn, home) as (base, log):
        new_key = (home / "admin.key").read_text().strip()
        assert new_key != old_key
        assert tools_call_status(base, new_key) == 200
        assert tools_call_status(base, old_key) == 401
    assert "unknown to this database or revoked" in log.read_text()
    assert stat.S_IMODE((home / "admin.key").stat().st_mode) == 0o600


ROOT = Path(__file__).resolve().parent.parent


def test_client_config_examples_start_this_server() -> None:
    """The examples are what `tokenledger install` writes (without its mark), for an absolute path: the
    stdio entries run `serve --transport stdio`, the HTTP entries point at `make run`'s /mcp and name
    the key by reference."""
    from tokenledger.cli import build_parser, clients
    from tokenledger.cli.serve import DEFAULT_HOST, DEFAULT_PORT

    url = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/mcp"
    machine = clients.Machine("linux", Path("/home/YOU"), {}, ROOT)
    [kilocode, _] = clients.targets("kilocode", "user", machine)
    [vscode_target] = clients.targets("vscode", "project", machine)
    kilo = json.loads((ROOT / "mcp.json.example").read_text())["mcpServers"]
    vscode = json.loads((ROOT / ".vscode" / "mcp.json.example").read_text())

    def unmarked(entry: dict[str, Any]) -> dict[str, Any]:
        for part in ("env", "headers"):
            if part in entry:
                entry[part] = {
                    k: v for k, v in entry[part].items() if k not in (clients.MARK_ENV, clients.MARK_HEADER)
                }
        return entry

    for target, servers in ((kilocode, kilo), (vscode_target, vscode["servers"])):
        stdio = servers["tokenledger"]
        assert Path(stdio["command"]).is_absolute() and stdio["command"].endswith("/bin/tokenledger")
        args = build_parser().parse_args(stdio["args"])
        assert (args.command, args.transport) == ("serve", "stdio")
        assert stdio == unmarked(
            clients.stdio_entry(target, [stdio["command"], *stdio["args"]], stdio["env"])
        )
        assert servers["tokenledger-http"] == unmarked(clients.http_entry(target, url, "TOKENLEDGER_KEY"))
    assert vscode["inputs"] == [clients.vscode_key_input()]


def test_commands_start_without_loading_the_mcp_sdk() -> None:
    """The parser states the server's body limit without importing tokenledger.mcp (the SDK takes a
    second to load, which every command would pay)."""
    from tokenledger.cli import serve
    from tokenledger.mcp import http

    assert serve.DEFAULT_MAX_REQUEST_BYTES == http.DEFAULT_MAX_REQUEST_BYTES
    probe = (
        "import sys\nfrom tokenledger.cli import build_parser\nbuild_parser()\nprint('mcp' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
