"""Where each MCP client keeps its config, on Linux, macOS and Windows, and how our entry looks in it.

- claude-desktop (user only): `claude_desktop_config.json` in `~/Library/Application Support/Claude`
  (macOS), `%APPDATA%\\Claude` (Windows), `$XDG_CONFIG_HOME/Claude` (Linux builds; default ~/.config).
- claude-code: user `~/.claude.json` (its `mcpServers`: Claude Code's user scope); project `.mcp.json`.
- kilocode, two files: the legacy extension's `mcp_settings.json` in VS Code's
  `globalStorage/kilocode.kilo-code/settings/` (project: `.kilocode/mcp.json`), and the current
  extension's and CLI's `~/.config/kilo/kilo.jsonc` (project: `kilo.jsonc`, or `.kilo/kilo.jsonc`).
- cursor: user `~/.cursor/mcp.json`; project `.cursor/mcp.json`.
- vscode: user `mcp.json` in `~/.config/Code/User` (Linux), `~/Library/Application Support/Code/User`
  (macOS), `%APPDATA%\\Code\\User` (Windows); project `.vscode/mcp.json`.
- windsurf (user only): `~/.codeium/windsurf/mcp_config.json`.

An entry we write carries a mark, so a later install can tell it from one a person wrote: the
environment variable TOKENLEDGER_CLIENT in a stdio entry, the header X-Tokenledger-Client in an HTTP one.
Each client names an environment variable its own way; an HTTP entry refers to the key that way and
never holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from tokenledger.errors import InvalidInput

CLIENTS: Final = ("claude-desktop", "claude-code", "kilocode", "cursor", "vscode", "windsurf")
Scope = Literal["user", "project"]
Style = Literal["mcp-servers", "claude-code", "kilocode", "kilo", "cursor", "vscode", "windsurf"]
MARK_ENV: Final = "TOKENLEDGER_CLIENT"
MARK_HEADER: Final = "X-Tokenledger-Client"
VSCODE_KEY_INPUT: Final = "tokenledger-key"


@dataclass(frozen=True)
class Machine:
    """What decides where files live: the platform (`sys.platform`), the home, the environment and
    the project directory (for project scope)."""

    platform: str
    home: Path
    environ: Mapping[str, str]
    project: Path

    def config_home(self) -> Path:
        """XDG_CONFIG_HOME, else ~/.config (Linux; tools from the Unix world use it everywhere)."""
        configured = self.environ.get("XDG_CONFIG_HOME")
        return Path(configured) if configured else self.home / ".config"

    def app_data(self) -> Path:
        """Where desktop apps keep settings: %APPDATA% on Windows, Application Support on macOS."""
        if self.platform == "win32":
            configured = self.environ.get("APPDATA")
            return Path(configured) if configured else self.home / "AppData" / "Roaming"
        if self.platform == "darwin":
            return self.home / "Library" / "Application Support"
        return self.config_home()


@dataclass(frozen=True)
class Target:
    """One config file of a client: where it is, the key its servers sit under, and its entry style."""

    client: str
    label: str
    path: Path
    servers_key: str
    style: Style


def targets(client: str, scope: Scope, machine: Machine) -> list[Target]:
    """The config files `tokenledger install CLIENT` writes for `scope` (kilocode has two)."""
    if client not in CLIENTS:
        raise InvalidInput("CLIENT", client, f"one of {', '.join(CLIENTS)}")
    project = machine.project
    home = machine.home
    vscode_user = machine.app_data() / "Code" / "User"
    if scope == "project" and client in ("claude-desktop", "windsurf"):
        raise InvalidInput("--scope", scope, f"{client} reads only its user config: --scope user")
    if client == "claude-desktop":
        path = machine.app_data() / "Claude" / "claude_desktop_config.json"
        return [Target(client, "Claude Desktop", path, "mcpServers", "mcp-servers")]
    if client == "claude-code":
        path = project / ".mcp.json" if scope == "project" else home / ".claude.json"
        return [Target(client, "Claude Code", path, "mcpServers", "claude-code")]
    if client == "kilocode":
        if scope == "project":
            legacy = project / ".kilocode" / "mcp.json"
            current = next(
                (project / name for name in ("kilo.jsonc", "kilo.json") if (project / name).exists()),
                project / ".kilo" / "kilo.jsonc",
            )
        else:
            legacy = vscode_user / "globalStorage" / "kilocode.kilo-code" / "settings" / "mcp_settings.json"
            current = machine.config_home() / "kilo" / "kilo.jsonc"
        return [
            Target(client, "KiloCode (legacy extension)", legacy, "mcpServers", "kilocode"),
            Target(client, "Kilo (extension and CLI)", current, "mcp", "kilo"),
        ]
    if client == "cursor":
        path = (project if scope == "project" else home) / ".cursor" / "mcp.json"
        return [Target(client, "Cursor", path, "mcpServers", "cursor")]
    if client == "vscode":
        path = project / ".vscode" / "mcp.json" if scope == "project" else vscode_user / "mcp.json"
        return [Target(client, "VS Code", path, "servers", "vscode")]
    path = home / ".codeium" / "windsurf" / "mcp_config.json"
    return [Target(client, "Windsurf", path, "mcpServers", "windsurf")]


# --- entries ---------------------------------------------------------------------------------------


def stdio_entry(target: Target, command: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """A server the client starts itself: `command` (absolute) with `env`, marked as ours."""
    marked = {**env, MARK_ENV: target.client}
    if target.style == "kilo":
        return {"type": "local", "command": command, "environment": marked, "enabled": True}
    entry: dict[str, Any] = {"command": command[0], "args": command[1:], "env": marked}
    if target.style in ("claude-code", "vscode"):
        entry = {"type": "stdio", **entry}
    return entry


def http_entry(target: Target, url: str, key_env: str) -> dict[str, Any]:
    """A server the client reaches over streamable HTTP, its key named by reference, marked as ours."""
    headers = {"Authorization": f"Bearer {key_reference(target, key_env)}", MARK_HEADER: target.client}
    if target.style == "mcp-servers":
        raise InvalidInput(
            "--transport",
            "http",
            "stdio for Claude Desktop: its config file starts local servers only (remote servers are "
            "added as connectors in its settings)",
        )
    if target.style == "kilo":
        return {"type": "remote", "url": url, "headers": headers, "enabled": True}
    if target.style == "windsurf":
        return {"serverUrl": url, "headers": headers}
    if target.style == "cursor":
        return {"url": url, "headers": headers}
    kind = {"claude-code": "http", "vscode": "http", "kilocode": "streamable-http"}[target.style]
    return {"type": kind, "url": url, "headers": headers}


def key_reference(target: Target, key_env: str) -> str:
    """How the client names the environment variable holding the key (VS Code: a secret input)."""
    if target.style == "claude-code":
        return f"${{{key_env}}}"
    if target.style == "kilo":
        return f"{{env:{key_env}}}"
    if target.style == "vscode":
        return f"${{input:{VSCODE_KEY_INPUT}}}"
    return f"${{env:{key_env}}}"


def vscode_key_input() -> dict[str, Any]:
    """The `inputs` item VS Code prompts for once and keeps in its secret storage."""
    return {
        "type": "promptString",
        "id": VSCODE_KEY_INPUT,
        "description": "tokenledger API key (tokenledger keys create --role member --user YOU)",
        "password": True,
    }


def is_ours(entry: object) -> bool:
    """Whether a config entry carries our mark (written by `tokenledger install`)."""
    if not isinstance(entry, dict):
        return False
    env = entry.get("env") or entry.get("environment") or {}
    headers = entry.get("headers") or {}
    marked_env = isinstance(env, dict) and MARK_ENV in env
    marked_header = isinstance(headers, dict) and any(
        str(name).lower() == MARK_HEADER.lower() for name in headers
    )
    return marked_env or marked_header
