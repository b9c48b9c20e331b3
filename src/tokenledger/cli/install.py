"""`tokenledger install CLIENT`: add tokenledger's MCP server (and, with --agent, the Token Checker) to an
MCP client's own config file, at its real place on this platform (see `tokenledger.cli.clients`).

A stdio entry runs this installation's `tokenledger` by its absolute path (an app started from the
dock has no shell PATH) with the TOKENLEDGER_HOME in effect; an HTTP entry names the key by an
environment reference in the client's syntax and never holds it. The file is merged, not replaced:
every other server, comment and setting stays. A backup is written first, and an entry this command
did not write (it has no mark) is left alone unless --force.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tokenledger.cli import clients, jsonc
from tokenledger.cli.serve import ADMIN_KEY_FILE, DEFAULT_HOST, DEFAULT_PORT
from tokenledger.errors import InvalidInput, TokenLedgerError
from tokenledger.settings import Settings
from tokenledger.store import dsn_has_password

SERVE_ARGS: Final = ("serve", "--transport", "stdio")
DEFAULT_URL: Final = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/mcp"
# The settings that decide which ledger a stdio server opens and whom it acts as: copied when set.
COPIED_SETTINGS: Final = (
    "TOKENLEDGER_DATABASE_URL",
    "TOKENLEDGER_TENANT",
    "TOKENLEDGER_ROLE",
    "TOKENLEDGER_USER",
)
AGENT_CLIENTS: Final = ("claude-code", "kilocode")
PROMPTS: Final = "usage_analysis, cost_tracking_setup, budget_enforcement"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "install",
        help="add the MCP server (and the Token Checker agent) to a client's config file",
        description=(
            "Write tokenledger's MCP server into CLIENT's own config file (merged: other servers, "
            "comments and settings stay; a backup is written first). stdio entries run this "
            "installation's tokenledger by its absolute path with the TOKENLEDGER_HOME in effect; HTTP "
            "entries name the key by an environment reference (VS Code: a secret input), never the key."
        ),
    )
    parser.add_argument("client", metavar="CLIENT", choices=clients.CLIENTS, help=", ".join(clients.CLIENTS))
    parser.add_argument(
        "--scope",
        choices=("user", "project"),
        default="user",
        help="user: the client's config for all projects (default); project: the project's own file "
        "(claude-code, kilocode, cursor, vscode)",
    )
    parser.add_argument("--project", default=".", metavar="DIR", help="the project for --scope project")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the server's /mcp URL for http (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--key-env",
        default="TOKENLEDGER_KEY",
        metavar="NAME",
        help="the environment variable the client reads the key from (http; default TOKENLEDGER_KEY)",
    )
    parser.add_argument(
        "--name", default="tokenledger", help="the server's name in the config (default tokenledger)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="another variable for a stdio server"
    )
    parser.add_argument(
        "--agent", action="store_true", help="also add the Token Checker agent (claude-code, kilocode)"
    )
    parser.add_argument("--print", action="store_true", help="print what would be merged; write nothing")
    parser.add_argument(
        "--force", action="store_true", help="replace an entry or agent this command did not write"
    )
    parser.set_defaults(handler=install_command)


@dataclass
class _Change:
    """One file to write: its new text, what it is, and what the person reads about it."""

    path: Path
    text: str
    what: str
    preview: str  # for --print: the part that is ours


def install_command(args: argparse.Namespace) -> int:
    machine = clients.Machine(
        platform=sys.platform, home=Path.home(), environ=os.environ, project=Path(args.project).absolute()
    )
    if not _SERVER_NAME.fullmatch(args.name):
        raise InvalidInput("--name", args.name, "letters, digits, '.', '_' and '-', up to 64")
    settings = Settings.from_env()
    entry = _entry_maker(args, settings)
    changes = [
        _server_change(target, args, entry) for target in clients.targets(args.client, args.scope, machine)
    ]
    notes: list[str] = []
    if args.agent:
        if args.client in AGENT_CLIENTS:
            changes.append(_agent_change(args, machine))
        else:
            notes.append(f"{args.client} has no agent definitions: its agents use the prompts {PROMPTS}")
    if args.print:
        for change in changes:
            print(f"# {change.what}: {change.path}", file=sys.stderr)
            print(change.preview)
        return 0
    for change in changes:
        backup = _write(change.path, change.text)
        print(f"{change.what}: wrote {change.path}" + (f" (backup: {backup.name})" if backup else ""))
    print(_how_it_runs(args, settings), *notes, sep="\n")
    if not args.agent and args.client in AGENT_CLIENTS:
        print(f"Add the Token Checker agent too: tokenledger install {args.client} --agent")
    return 0


# --- the server entry --------------------------------------------------------------------------------


def _entry_maker(args: argparse.Namespace, settings: Settings) -> Callable[[clients.Target], dict[str, Any]]:
    """A function giving the entry for a target, its inputs checked once, before any file is read."""
    if args.transport == "http":
        url = urlsplit(args.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise InvalidInput("--url", args.url, "an http(s) URL of the server's /mcp endpoint")
        if not _ENV_NAME.fullmatch(args.key_env):
            raise InvalidInput("--key-env", args.key_env, "an environment variable name (letters, digits, _)")
        return lambda target: clients.http_entry(target, args.url, args.key_env)
    command = [*server_command(), *SERVE_ARGS]
    env = server_env(settings, args.env)
    return lambda target: clients.stdio_entry(target, command, env)


def server_command() -> list[str]:
    """How to start this installation's `tokenledger`, by absolute path: the script this process runs
    from, else the one beside this Python (a virtual environment's bin or Scripts), else this Python
    with `-m tokenledger`. Paths are made absolute but symlinks are not followed: a venv's python is
    a link to the base interpreter, which does not have tokenledger installed."""
    invoked = sys.argv[0]
    if Path(invoked).stem == "tokenledger":
        located = invoked if os.sep in invoked or "/" in invoked else shutil.which(invoked)
        if located and Path(located).is_file():
            return [os.path.abspath(located)]
    beside = Path(os.path.abspath(sys.executable)).parent
    for name in ("tokenledger", "tokenledger.exe"):
        if (beside / name).is_file():
            return [str(beside / name)]
    return [os.path.abspath(sys.executable), "-m", "tokenledger"]


def server_env(settings: Settings, extra: list[str]) -> dict[str, str]:
    """The environment a stdio server needs to open the same ledger as this shell: the home in effect,
    the settings that are set here, and --env pairs. A DSN holding a password is not copied into a
    config file: that is refused with what to do instead."""
    env = {"TOKENLEDGER_HOME": str(settings.home.absolute())}
    for name in COPIED_SETTINGS:
        value = os.environ.get(name)
        if value:
            env[name] = value
    dsn = env.get("TOKENLEDGER_DATABASE_URL")
    if dsn and dsn_has_password(dsn):
        raise InvalidInput(
            "TOKENLEDGER_DATABASE_URL",
            "<a DSN with a password>",
            "no password in a client's config file: use a vault: reference, or ~/.pgpass, "
            "or pass the DSN yourself with --env",
        )
    for pair in extra:
        name, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise InvalidInput("--env", pair, "KEY=VALUE with KEY an environment variable name")
        env[name] = value
    return env


def _server_change(
    target: clients.Target, args: argparse.Namespace, entry_for: Callable[[clients.Target], dict[str, Any]]
) -> _Change:
    entry = entry_for(target)
    text = _read(target.path)
    document = _parsed(target.path, text)
    servers = document.get(target.servers_key) if isinstance(document, dict) else None
    existing = servers.get(args.name) if isinstance(servers, dict) else None
    if existing is not None and not clients.is_ours(existing) and not args.force:
        raise TokenLedgerError(
            f"{target.path} already has a server {args.name!r} that tokenledger install did not write: "
            "give --force to replace it (a backup is kept), or --name to add another"
        )
    new_text = jsonc.set_member(text, [target.servers_key, args.name], entry)
    preview: dict[str, Any] = {target.servers_key: {args.name: entry}}
    if target.style == "vscode" and args.transport == "http":
        key_input = clients.vscode_key_input()
        inputs = document.get("inputs") if isinstance(document, dict) else None
        known = isinstance(inputs, list) and any(
            isinstance(item, dict) and item.get("id") == key_input["id"] for item in inputs
        )
        if not known:
            new_text = jsonc.append_item(new_text, ["inputs"], key_input)
        preview = {"inputs": [key_input], **preview}
    return _Change(target.path, new_text, target.label, json.dumps(preview, indent=2))


def _read(path: Path) -> str:
    if path.is_dir():
        raise InvalidInput("config file", str(path), "a file, but it is a directory")
    try:
        return path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as error:
        raise TokenLedgerError(f"cannot read {path}: {error}") from error


def _parsed(path: Path, text: str) -> Any:
    try:
        document = jsonc.parse(text)
    except jsonc.JsoncError as error:
        raise TokenLedgerError(f"{path} is not valid JSON: {error}; fix it, or move it away") from error
    if document is not None and not isinstance(document, dict):
        raise TokenLedgerError(
            f"{path} holds a JSON {type(document).__name__}, not an object; nothing written"
        )
    return document or {}


# --- the Token Checker agent ---------------------------------------------------------------------------


def agent_file(name: str) -> str:
    """A shipped agent definition (package data)."""
    return resources.files("tokenledger").joinpath("data", "agents", name).read_text(encoding="utf-8")


def _agent_change(args: argparse.Namespace, machine: clients.Machine) -> _Change:
    project = args.scope == "project"
    if args.client == "claude-code":
        base = machine.project if project else machine.home
        path = base / ".claude" / "agents" / "token-checker.md"
        shipped = agent_file("token-checker.md")
        current = _read(path)
        if current and current != shipped and not args.force:
            raise TokenLedgerError(
                f"{path} differs from the Token Checker this version ships (edited, or another version): "
                "give --force to replace it (a backup is kept)"
            )
        return _Change(path, shipped, "Claude Code subagent", shipped)
    if project:
        path = machine.project / ".kilocodemodes"
    else:
        settings = machine.app_data() / "Code" / "User" / "globalStorage" / "kilocode.kilo-code" / "settings"
        path = settings / "custom_modes.yaml"
    return _Change(path, _merged_modes(path, args.force), "KiloCode mode", agent_file("kilocodemodes.yaml"))


def _merged_modes(path: Path, force: bool) -> str:
    """The custom-modes file with the token-checker mode added or replaced, other modes kept."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    shipped = agent_file("kilocodemodes.yaml")
    current = _read(path)
    if not current.strip():
        return shipped
    yaml = YAML()  # round trip: comments, order and styles of the other modes stay
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    try:
        document = yaml.load(current) or {}
    except YAMLError as error:
        raise TokenLedgerError(f"{path} is not valid YAML or JSON: {' '.join(str(error).split())}") from error
    modes = document.get("customModes") if isinstance(document, dict) else None
    if not isinstance(modes, list):
        raise TokenLedgerError(f"{path} has no customModes list; nothing written")
    ours = yaml.load(shipped)["customModes"][0]
    found = [
        index
        for index, mode in enumerate(modes)
        if isinstance(mode, dict) and mode.get("slug") == ours["slug"]
    ]
    if not found:
        modes.append(ours)
    elif _plain(modes[found[0]]) != _plain(ours):
        if not force:
            raise TokenLedgerError(
                f"{path} has a token-checker mode that differs from the one this version ships: "
                "give --force to replace it (a backup is kept)"
            )
        modes[found[0]] = ours
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


# --- writing -------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path | None:
    """Write `text` to `path` whole (never half-written), keeping its permissions; an existing file is
    copied to PATH.bak-TIMESTAMP first. Returns the backup, or None for a new or unchanged file."""
    backup = None
    if path.exists():
        if path.read_text(encoding="utf-8") == text:
            return None
        backup = path.with_name(f"{path.name}.bak-{datetime.now():%Y%m%d-%H%M%S}")
        shutil.copy2(path, backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    if backup is not None:
        shutil.copymode(backup, temporary)
    os.replace(temporary, path)
    return backup


def _how_it_runs(args: argparse.Namespace, settings: Settings) -> str:
    if args.transport == "stdio":
        command = shlex.join([*server_command(), *SERVE_ARGS])
        return (
            f"The client starts: {command} (TOKENLEDGER_HOME={settings.home.absolute()}). "
            "Restart it, or reload its MCP servers, to pick this up."
        )
    if args.client == "vscode":
        return "VS Code asks for the key once (input tokenledger-key) and keeps it in its secret storage."
    key_file = settings.home.absolute() / ADMIN_KEY_FILE
    return (
        f"The client reads the key from ${args.key_env}: start it from a shell where it is set, e.g. "
        f'export {args.key_env}="$(cat {key_file})"'
    )
