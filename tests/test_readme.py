"""The README runs when pasted: every fenced block of README.md, in order, as a user would run it.

- `json` and `jsonc` blocks are parsed.
- `sh` and `bash` blocks run line by line in bash, each line in its own shell that starts from the
  block's environment so far (`export`, `source` and plain assignments carry to the next line of the
  same block, never to the next block: every block sets what it uses). A line must succeed, except:
  - a line whose comment starts with `# refused:` must fail, saying what the comment quotes (`...`
    stands for any text);
  - a line that serves (`make run`, `tokenledger serve`) is started on a free port, must answer its
    health check (HTTP `/healthz`; stdio: the MCP handshake), and is stopped.
- `python` blocks run as complete programs (`python -c`).
- A block after `<!-- not run: REASON -->` is skipped; the test names each one and its reason, and the
  list stays short (what they promise is tested elsewhere, as the reason says).
- A block after `<!-- beside a server -->` runs while `tokenledger serve --transport http` serves on a
  free port, which replaces 8765 in the block.

All of it runs against one embedded PostgreSQL under a temporary TOKENLEDGER_HOME (the README's own
default), in a temporary working directory that links the repository's files, with HOME in a temporary
directory (client config files land there), and the provider stand-in on loopback behind
OPENAI_BASE_URL and ANTHROPIC_BASE_URL with dummy keys. Blocks run in README order, one test each: later
blocks see what earlier ones made, as a reader's terminal would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import json5
import pytest

from tests.provider_standin import ProviderStandin

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINE_TIMEOUT = 120
SERVE_TIMEOUT = 60
# What the working directory links from the repository (the README's commands name these paths).
LINKED = ("README.md", "examples", "scripts", "bench", "src", "sql", "deploy", "tests", ".venv")
# Files a block reads that a user saves first (the README says where they come from).
GIVEN_FILES = {
    # litellm's price list: gpt-4o cheaper and a model the bundled catalog has never seen.
    "model_prices_and_context_window.json": {
        "gpt-4o": {
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 128000,
            "input_cost_per_token": 2e-06,
            "output_cost_per_token": 8e-06,
        },
        "gpt-6-preview": {
            "litellm_provider": "openai",
            "mode": "chat",
            "max_input_tokens": 400000,
            "input_cost_per_token": 5e-06,
            "output_cost_per_token": 4e-05,
        },
    },
    # OpenRouter's /api/v1/models answer.
    "openrouter-models.json": {
        "data": [
            {
                "id": "anthropic/claude-sonnet-4.5",
                "context_length": 1000000,
                "pricing": {"prompt": "0.000003", "completion": "0.000015"},
            }
        ]
    },
}
NOT_RUN_AT_MOST = 6

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*(not run|beside a server)\s*(?::\s*(.*?))?\s*-->\s*\Z", re.S)
SERVES = re.compile(r"(^|\s)(make run|tokenledger serve)(\s|$)")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    text: str
    directive: str | None = None  # "not run" or "beside a server"
    reason: str | None = None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'plain'}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the directive in the HTML comment right before it, if any."""
    blocks, end = [], 0
    for match in FENCE.finditer(text):
        before = DIRECTIVE.search(text[end : match.start()])
        blocks.append(
            Block(
                line=text[: match.start()].count("\n") + 1,
                lang=match.group(1),
                text=match.group(2),
                directive=before.group(1) if before else None,
                reason=before.group(2) if before else None,
            )
        )
        end = match.end()
    return blocks


BLOCKS = readme_blocks(README.read_text())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class World:
    """Where the blocks run: the working directory and the environment every block starts from."""

    cwd: Path
    env: dict[str, str]
    home: Path
    keys: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("readme")
    cwd, home, ledger_home = base / "work", base / "home", base / "ledger"
    for path in (cwd, home, ledger_home):
        path.mkdir()
    for name in LINKED:
        if (ROOT / name).exists():
            (cwd / name).symlink_to(ROOT / name)
    # The Makefile's venv stamp depends on pyproject.toml: an old copy keeps `make run` from reinstalling.
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, cwd / name)
    os.utime(cwd / "pyproject.toml", (0, 0))
    for name, document in GIVEN_FILES.items():
        (cwd / name).write_text(json.dumps(document))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TOKENLEDGER_", "VAULT_", "OPENAI_", "ANTHROPIC_", "GEMINI_", "GOOGLE_"))
    }
    with ProviderStandin() as provider:
        env.update(
            HOME=str(home),
            TOKENLEDGER_HOME=str(ledger_home),
            PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",  # the README's commands assume the venv
            VIRTUAL_ENV=str(Path(venv_bin).parent),
            OPENAI_BASE_URL=provider.openai_base_url,
            ANTHROPIC_BASE_URL=provider.anthropic_base_url,
            TOKENLEDGER_PROVIDER_COUNT_TIMEOUT="5",
            PYTHONUNBUFFERED="1",
        )
        # Keys for the Python blocks, which call the SDKs. Shell blocks set their own (one does): with
        # ANTHROPIC_API_KEY set, every command loads Anthropic's SDK for provider counting (3 s here).
        keys = {"OPENAI_API_KEY": "sk-test-readme", "ANTHROPIC_API_KEY": "sk-ant-test-readme"}
        yield World(cwd=cwd, env=env, home=home, keys=keys)
        subprocess.run(
            ["tokenledger", "db", "stop", "--force"], cwd=cwd, env=env, capture_output=True, timeout=60
        )


# --- running a shell block ------------------------------------------------------------------------


def logical_lines(script: str) -> list[str]:
    """The block's commands: continuation lines joined, blank lines and whole-line comments dropped."""
    lines, pending = [], ""
    for raw in script.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def comment_start(line: str) -> int:
    """Where the line's trailing comment starts (a `#` after a space, outside quotes), or its length."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and index > 0 and line[index - 1].isspace():
            return index
    return len(line)


def comment_of(line: str) -> str:
    return line[comment_start(line) + 1 :].strip()


def command_of(line: str) -> str:
    return line[: comment_start(line)].rstrip()


def run_line(
    line: str, env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """One command line in bash from `env`; its result and the environment it leaves (assignments and
    exports both, as the next line of the same paste would see them)."""
    state = cwd / ".readme-env"
    script = f"set -a\n{line}\nstatus=$?\nset +a\nenv -0 > {shlex.quote(str(state))}\nexit $status\n"
    master, slave = os.openpty()  # a terminal to paste into: a command that asks gets "y"
    os.write(master, b"y\n")
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=cwd,
            env=env,
            stdin=slave,
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT,
        )
    finally:
        os.close(slave)
        os.close(master)
    left = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
    left.pop("_", None)
    return done, left


def expect_refusal(line: str, done: subprocess.CompletedProcess[str], quoted: str) -> None:
    assert done.returncode != 0, f"{line!r} should be refused, but exited 0:\n{done.stdout}"
    said = done.stderr + done.stdout
    for piece in (part.strip() for part in quoted.split("...")):
        assert piece in said, f"{line!r}: {piece!r} not in its error:\n{said}"
    assert "Traceback" not in said


def serving_command(line: str, port: int) -> str:
    """The serving line on `port`: README's fixed ports are whatever a reader has free; ours is too."""
    if "make run" in line:
        line = re.sub(r"\bPORT=\d+", f"PORT={port}", line)
        if f"PORT={port}" not in line:
            line = line.replace("make run", f"make run PORT={port}", 1)
        return line.replace("make run", "make -o .venv/.installed run", 1)
    if "--transport stdio" in line:
        return line
    line = re.sub(r"--port\s+\d+", f"--port {port}", line)
    return (
        line
        if f"--port {port}" in line
        else line.replace("tokenledger serve", f"tokenledger serve --port {port}", 1)
    )


def check_serving(line: str, env: dict[str, str], cwd: Path) -> None:
    """Start a serving line, wait for it to answer, stop it."""
    port = free_port()
    command = serving_command(command_of(line), port)
    stdio = "--transport stdio" in command
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}" if command.startswith(("tokenledger", "make")) else command],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if stdio:
            assert_stdio_handshake(process)
        else:
            assert_healthy(process, f"http://127.0.0.1:{port}/healthz")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


def assert_healthy(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the server exited with {process.returncode}:\n{err}")
        try:
            answer = httpx2.get(url, timeout=2)
            if answer.status_code == 200 and answer.json()["status"] == "ok":
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no healthy answer from {url} within {SERVE_TIMEOUT} s")


def assert_stdio_handshake(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "readme-test", "version": "1"},
        },
    }
    process.stdin.write(json.dumps(initialize) + "\n")
    process.stdin.flush()
    answer = json.loads(process.stdout.readline())
    assert answer["result"]["serverInfo"]["name"] == "tokenledger", answer


@pytest.fixture
def http_server(world: World) -> Iterator[int]:
    """`tokenledger serve --transport http` on a free port, for blocks that run beside a server."""
    port = free_port()
    process = subprocess.Popen(
        ["tokenledger", "serve", "--transport", "http", "--port", str(port)],
        cwd=world.cwd,
        env=world.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert_healthy(process, f"http://127.0.0.1:{port}/healthz")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)


def run_shell_block(block: Block, world: World, text: str) -> None:
    env = dict(world.env)
    for line in logical_lines(text):
        comment = comment_of(line)
        if SERVES.search(command_of(line)) and "--version" not in line:
            check_serving(line, env, world.cwd)
            continue
        done, env = run_line(line, env, world.cwd)
        if comment.startswith("refused:"):
            expect_refusal(line, done, comment.removeprefix("refused:").strip())
        else:
            assert done.returncode == 0, (
                f"README line {block.line}: {line!r} exited {done.returncode}\n"
                f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
            )


# --- the tests ----------------------------------------------------------------------------------


def test_every_block_is_of_a_kind_the_test_runs_and_few_are_not_run() -> None:
    fences = sum(1 for line in README.read_text().splitlines() if line.startswith("```"))
    assert len(BLOCKS) == fences // 2 > 30  # the parser found every block
    kinds = {block.lang for block in BLOCKS if block.directive != "not run"}
    assert kinds <= {"sh", "bash", "python", "json", "jsonc"}, kinds
    skipped = [block for block in BLOCKS if block.directive == "not run"]
    for block in skipped:
        assert block.reason and len(block.reason) > 20, f"README line {block.line}: say why it is not run"
        print(f"not run: README line {block.line}: {block.reason}")
    assert len(skipped) <= NOT_RUN_AT_MOST


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_readme_block(block: Block, world: World, request: pytest.FixtureRequest) -> None:
    if block.directive == "not run":
        return  # named with its reason by the test above
    if block.lang in ("json", "jsonc"):
        parsed = json5.loads(block.text) if block.lang == "jsonc" else json.loads(block.text)
        assert parsed is not None
        return
    if block.lang == "python":
        done = subprocess.run(
            [sys.executable, "-c", block.text],
            cwd=world.cwd,
            env={**world.env, **world.keys},
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT,
        )
        assert done.returncode == 0, f"README line {block.line}:\n{done.stdout}\n{done.stderr}"
        return
    text = block.text
    if block.directive == "beside a server":
        port = request.getfixturevalue("http_server")
        text = text.replace("8765", str(port))
    run_shell_block(block, world, text)
