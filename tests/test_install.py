"""`tokenledger install CLIENT`, run as a person runs it (the venv's console script, a temporary HOME).

Each client's file is read back with an independent parser (json5 reads JSONC), and the server it
describes is started exactly as that client starts it (its command, args and env, nothing from this
shell) and asked for its tools through the official MCP client.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json5
import pytest
import yaml
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.test_serve import serve
from tokenledger.cli import clients, main

VENV_BIN = Path(sys.executable).parent
TOKENLEDGER = VENV_BIN / "tokenledger"
TOOLS = {"count_tokens", "check_budget", "track_usage", "release", "report", "manage_budget", "prices"}
# Each client's way to name an environment variable in an HTTP entry (VS Code: a secret input).
KEY_REFERENCES = {
    "claude-code": ["Bearer ${TOKENLEDGER_KEY}"],
    "kilocode": ["Bearer ${env:TOKENLEDGER_KEY}", "Bearer {env:TOKENLEDGER_KEY}"],
    "cursor": ["Bearer ${env:TOKENLEDGER_KEY}"],
    "vscode": ["Bearer ${input:tokenledger-key}"],
    "windsurf": ["Bearer ${env:TOKENLEDGER_KEY}"],
}


def install(home: Path, *args: str, dsn: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`tokenledger install ARGS` as a process, with HOME (and none of this shell's settings) in `home`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENLEDGER_", "XDG_", "APPDATA"))}
    clean.update(HOME=str(home), TOKENLEDGER_HOME=str(home / "ledger"), **env)
    if dsn:
        clean["TOKENLEDGER_DATABASE_URL"] = dsn
    return subprocess.run(
        [str(TOKENLEDGER), "install", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    """`tokenledger install ARGS` in this process (the CLI's main), HOME in the given directory."""

    def run(home: Path, *args: str, dsn: str | None = None, **env: str) -> Done:
        for name in [name for name in os.environ if name.startswith(("TOKENLEDGER_", "XDG_", "APPDATA"))]:
            monkeypatch.delenv(name)
        for name, value in {"HOME": str(home), "TOKENLEDGER_HOME": str(home / "ledger"), **env}.items():
            monkeypatch.setenv(name, value)
        if dsn:
            monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
        code = main(["install", *args])
        captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)

    return run


def written(home: Path, client: str, scope: clients.Scope = "user", project: Path | None = None) -> list[Any]:
    """(target, its entry) for each file the client reads, parsed as JSONC by json5."""
    machine = clients.Machine("linux", home, {}, project or home)
    found = []
    for target in clients.targets(client, scope, machine):
        document = json5.loads(target.path.read_text())
        found.append((target, document[target.servers_key]["tokenledger"]))
    return found


def launch(target: clients.Target, entry: dict[str, Any]) -> StdioServerParameters:
    """The process the client starts for a stdio entry, from the entry alone."""
    if target.style == "kilo":
        assert entry["type"] == "local" and entry["enabled"] is True
        return StdioServerParameters(
            command=entry["command"][0], args=entry["command"][1:], env=entry["environment"]
        )
    if target.style in ("claude-code", "vscode"):
        assert entry["type"] == "stdio"
    return StdioServerParameters(command=entry["command"], args=entry["args"], env=entry["env"])


async def listed_tools(parameters: StdioServerParameters, errlog: Path) -> set[str]:
    with errlog.open("a") as log:
        async with Client(stdio_client(parameters, errlog=log), read_timeout_seconds=60) as client:
            return {tool.name for tool in (await client.list_tools()).tools}


@pytest.mark.anyio
@pytest.mark.parametrize("client", clients.CLIENTS)
async def test_each_clients_file_starts_a_server_that_lists_the_tools(
    client: str, dsn: str, tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = run_install(home, client, dsn=dsn)
    assert done.returncode == 0, done.stderr
    entries = written(home, client)
    assert len(entries) == (2 if client == "kilocode" else 1)
    for target, entry in entries:
        parameters = launch(target, entry)
        # The venv's own script, by absolute path: an app started from the dock has no PATH to search.
        assert parameters.command == str(TOKENLEDGER) and Path(parameters.command).is_absolute()
        assert parameters.args == ["serve", "--transport", "stdio"]
        assert parameters.env is not None
        assert parameters.env["TOKENLEDGER_HOME"] == str(home / "ledger")
        assert parameters.env[clients.MARK_ENV] == client
        assert await listed_tools(parameters, tmp_path / "server.log") >= TOOLS


def test_paths_on_each_platform(tmp_path: Path) -> None:
    home = Path("/home/ana")
    project = Path("/work/app")

    def paths(client: str, platform: str, scope: clients.Scope = "user", **env: str) -> list[str]:
        machine = clients.Machine(platform, home, env, project)
        return [target.path.as_posix() for target in clients.targets(client, scope, machine)]

    assert paths("claude-desktop", "darwin") == [
        "/home/ana/Library/Application Support/Claude/claude_desktop_config.json"
    ]
    assert paths("claude-desktop", "win32", APPDATA="/home/ana/AppData/Roaming") == [
        "/home/ana/AppData/Roaming/Claude/claude_desktop_config.json"
    ]
    assert paths("claude-desktop", "linux", XDG_CONFIG_HOME="/cfg") == [
        "/cfg/Claude/claude_desktop_config.json"
    ]
    assert paths("claude-code", "linux") == ["/home/ana/.claude.json"]
    assert paths("claude-code", "win32", "project") == ["/work/app/.mcp.json"]
    vscode_mac = "/home/ana/Library/Application Support/Code/User"
    assert paths("kilocode", "darwin") == [
        f"{vscode_mac}/globalStorage/kilocode.kilo-code/settings/mcp_settings.json",
        "/home/ana/.config/kilo/kilo.jsonc",
    ]
    assert paths("kilocode", "linux", "project") == [
        "/work/app/.kilocode/mcp.json",
        "/work/app/.kilo/kilo.jsonc",
    ]
    assert paths("cursor", "win32") == ["/home/ana/.cursor/mcp.json"]
    assert paths("vscode", "win32") == ["/home/ana/AppData/Roaming/Code/User/mcp.json"]
    assert paths("vscode", "linux") == ["/home/ana/.config/Code/User/mcp.json"]
    assert paths("vscode", "darwin", "project") == ["/work/app/.vscode/mcp.json"]
    assert paths("windsurf", "darwin") == ["/home/ana/.codeium/windsurf/mcp_config.json"]
    kilo_project = tmp_path / "app"
    kilo_project.mkdir()
    (kilo_project / "kilo.jsonc").write_text("{}")
    machine = clients.Machine("linux", home, {}, kilo_project)
    assert clients.targets("kilocode", "project", machine)[1].path == kilo_project / "kilo.jsonc"


def test_merge_keeps_comments_and_other_servers_and_backs_up_first(
    tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    home = tmp_path / "home"
    config = home / ".cursor" / "mcp.json"
    config.parent.mkdir(parents=True)
    kept = '{\n  // my servers\n  "mcpServers": {\n    "git": {"command": "/usr/bin/git-mcp"}, // keep\n'
    original = kept + "  },\n}\n"
    config.write_text(original)

    done = run_install(home, "cursor")
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert text.startswith(
        '{\n  // my servers\n  "mcpServers": {\n    "git": {"command": "/usr/bin/git-mcp"}, // keep\n'
    )
    assert set(json5.loads(text)["mcpServers"]) == {"git", "tokenledger"}
    backups = list(config.parent.glob("mcp.json.bak-*"))
    assert [backup.read_text() for backup in backups] == [original]

    assert run_install(home, "cursor").returncode == 0  # ours: replaced in place, nothing else changes
    assert config.read_text() == text

    foreign = text.replace('"TOKENLEDGER_CLIENT": "cursor"', '"OTHER": "1"')
    config.write_text(foreign)
    refused = run_install(home, "cursor")
    assert refused.returncode == 1 and "--force" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert config.read_text() == foreign
    assert run_install(home, "cursor", "--force").returncode == 0
    assert json5.loads(config.read_text())["mcpServers"]["tokenledger"]["env"][clients.MARK_ENV] == "cursor"


@pytest.mark.parametrize("client", [client for client in clients.CLIENTS if client != "claude-desktop"])
def test_http_entries_name_the_key_by_its_environment_reference(
    client: str, tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = run_install(
        home, client, "--transport", "http", "--url", "http://127.0.0.1:9/mcp", TOKENLEDGER_KEY="tl_secret"
    )
    assert done.returncode == 0, done.stderr
    for target, entry in written(home, client):
        assert entry.get("url", entry.get("serverUrl")) == "http://127.0.0.1:9/mcp"
        assert entry["headers"]["Authorization"] in KEY_REFERENCES[client]
        assert "tl_secret" not in target.path.read_text()
    if client == "vscode":
        document = json5.loads(written(home, client)[0][0].path.read_text())
        assert document["inputs"] == [clients.vscode_key_input()]


def test_claude_desktop_takes_stdio_only(tmp_path: Path, run_install: Callable[..., Done]) -> None:
    done = run_install(tmp_path, "claude-desktop", "--transport", "http")
    assert done.returncode == 1 and "connectors" in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / ".config").exists()


def test_a_dsn_with_a_password_is_never_copied_into_a_config(
    tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    done = run_install(tmp_path, "cursor", dsn="postgresql://ledger:s3cret@db.example/ledger")
    assert done.returncode == 1 and "vault:" in done.stderr and "s3cret" not in done.stderr
    assert not (tmp_path / ".cursor").exists()


def test_print_writes_nothing(tmp_path: Path, run_install: Callable[..., Done]) -> None:
    done = run_install(tmp_path, "vscode", "--print")
    assert done.returncode == 0
    assert json.loads(done.stdout)["servers"]["tokenledger"]["command"] == str(TOKENLEDGER)
    assert str(tmp_path / ".config" / "Code" / "User" / "mcp.json") in done.stderr
    assert not (tmp_path / ".config").exists()


def test_run_as_a_module_it_still_names_the_venvs_script(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "tokenledger", "install", "cursor", "--print"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mcpServers"]["tokenledger"]["command"] == str(TOKENLEDGER)


@pytest.mark.anyio
async def test_an_http_entry_reaches_a_real_server_with_the_key_from_the_environment(
    dsn: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with serve(dsn, tmp_path / "server-home") as (base, _):
        key = (tmp_path / "server-home" / "admin.key").read_text().strip()
        done = install(home, "cursor", "--transport", "http", "--url", f"{base}/mcp")  # the real script
        assert done.returncode == 0, done.stderr
        [(_, entry)] = written(home, "cursor")
        # What Cursor does with ${env:NAME}: the value of NAME in its environment.
        environment = {"TOKENLEDGER_KEY": key}
        headers = {
            name: re.sub(r"\$\{env:(\w+)\}", lambda match: environment[match[1]], value)
            for name, value in entry["headers"].items()
        }
        import httpx2

        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(entry["url"], http_client=http)) as client,
        ):
            assert {tool.name for tool in (await client.list_tools()).tools} >= TOOLS


# --- the Token Checker agent -------------------------------------------------------------------------


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, "a Markdown file with YAML front matter"
    return yaml.safe_load(match[1]), match[2]


def test_the_claude_code_subagent_parses_and_uses_only_tokenledger_and_reading(
    tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    done = run_install(tmp_path, "claude-code", "--scope", "project", "--project", str(tmp_path), "--agent")
    assert done.returncode == 0, done.stderr
    meta, body = front_matter((tmp_path / ".claude" / "agents" / "token-checker.md").read_text())
    assert meta["name"] == "token-checker" and len(meta["description"]) > 50
    tools = [tool.strip() for tool in meta["tools"].split(",")]
    assert "mcp__tokenledger__*" in tools
    assert all(tool.startswith("mcp__tokenledger__") or tool in {"Read", "Grep", "Glob"} for tool in tools)
    assert all(job in body for job in ("usage_analysis", "cost_tracking_setup", "budget_enforcement"))
    assert json5.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["tokenledger"]["type"] == "stdio"


def test_the_kilocode_mode_is_merged_beside_other_modes(
    tmp_path: Path, run_install: Callable[..., Done]
) -> None:
    modes = tmp_path / ".kilocodemodes"
    modes.write_text(
        "# team modes\ncustomModes:\n  - slug: docs-writer # ours\n    name: Docs\n"
        "    roleDefinition: Writes docs.\n    groups: [read]\n"
    )
    args = ("kilocode", "--scope", "project", "--project", str(tmp_path), "--agent")
    done = run_install(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    text = modes.read_text()
    assert "# team modes" in text and "# ours" in text
    listed = yaml.safe_load(text)["customModes"]
    assert [mode["slug"] for mode in listed] == ["docs-writer", "token-checker"]
    checker = listed[1]
    assert re.fullmatch(r"[a-zA-Z0-9-]+", checker["slug"]) and checker["name"]
    assert checker["groups"] == ["read", "mcp"]  # reading and MCP tools: no edit, command or browser
    assert all(isinstance(checker[key], str) for key in ("roleDefinition", "whenToUse", "customInstructions"))
    assert "tokenledger" in checker["customInstructions"]

    assert run_install(tmp_path, *args).returncode == 0
    assert modes.read_text() == text  # the same mode again: nothing to change
    modes.write_text(text.replace("name: Token Checker", "name: My Checker"))
    refused = run_install(tmp_path, *args)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert run_install(tmp_path, *args, "--force").returncode == 0
    assert yaml.safe_load(modes.read_text())["customModes"][1]["name"] == "Token Checker"


def test_user_scope_agents_and_more_servers(tmp_path: Path, run_install: Callable[..., Done]) -> None:
    """--agent in user scope writes the subagent under ~/.claude and the mode into KiloCode's global
    custom modes; an edited subagent is replaced only with --force; --env and --name add to the entry."""
    assert run_install(tmp_path, "claude-code", "--agent", "--env", "TOKENLEDGER_ROLE=member").returncode == 0
    subagent = tmp_path / ".claude" / "agents" / "token-checker.md"
    assert front_matter(subagent.read_text())[0]["name"] == "token-checker"
    [(_, entry)] = written(tmp_path, "claude-code")
    assert entry["env"]["TOKENLEDGER_ROLE"] == "member"
    subagent.write_text(subagent.read_text() + "\nAlso answer in French.\n")
    refused = run_install(tmp_path, "claude-code", "--agent")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert "French" in subagent.read_text()
    assert run_install(tmp_path, "claude-code", "--agent", "--force").returncode == 0
    assert "French" not in subagent.read_text()

    assert run_install(tmp_path, "kilocode", "--agent").returncode == 0
    settings = tmp_path / ".config" / "Code" / "User" / "globalStorage" / "kilocode.kilo-code" / "settings"
    assert (
        yaml.safe_load((settings / "custom_modes.yaml").read_text())["customModes"][0]["slug"]
        == "token-checker"
    )

    assert run_install(tmp_path, "cursor", "--name", "tokenledger-work").returncode == 0
    assert run_install(tmp_path, "cursor").returncode == 0
    servers = json5.loads((tmp_path / ".cursor" / "mcp.json").read_text())["mcpServers"]
    assert set(servers) == {"tokenledger", "tokenledger-work"}


def test_make_run_passes_host_and_port() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["make", "-n", "run", "HOST=0.0.0.0", "PORT=9000"],
        cwd=root, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "tokenledger serve --transport http --first-run --host 0.0.0.0 --port 9000" in done.stdout
