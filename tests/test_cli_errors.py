"""Bad arguments to every command: one line on stderr, a non-zero exit, nothing on stdout, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from tokenledger.cli import main

# (argv, words the one line must contain); {tmp} is a temporary directory.
CASES = [
    (["usage", "--since", "7"], ["--since", "7d"]),
    (["report", "--since", "7"], ["--since", "7d"]),
    (["report", "--until", "30"], ["--until", "30d"]),
    (["prune", "--older-than", "90"], ["--older-than", "90d"]),
    (["usage", "--since", "999999d"], ["tokenledger:"]),
    (["report", "--since", "999999d"], ["tokenledger:"]),
    (["report", "--output", "{tmp}/missing/usage.csv"], ["--output", "does not exist"]),
    (["report", "--output", "{tmp}"], ["--output", "not a directory"]),
    (["keys", "create", "--role", "member"], ["--user", "member"]),
    (["keys", "create"], ["--role"]),
    (["budget", "set", "b"], ["limit: missing", "required to create"]),
    (["budget", "nonsense"], ["invalid choice"]),
    (["count", "--file", "nosuchfile.txt"], ["--file", "nosuchfile.txt", "no such file"]),
    (["install", "cursor", "--transport", "http", "--url", "ftp://example"], ["--url"]),
    (["install", "cursor", "--env", "=x"], ["--env"]),
    (["install", "notepad"], ["CLIENT", "invalid choice"]),
    (["install", "windsurf", "--scope", "project"], ["--scope", "user"]),
    (["serve", "--transport", "http", "--port", "0"], ["--port"]),
]


@pytest.fixture
def env(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TOKENLEDGER_HOME", str(tmp_path / "ledger"))
    yield tmp_path


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse refuses a command line by exiting 2
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    assert code != 0, (argv, out, err)
    assert out == "", out
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and err.startswith("tokenledger"), err
    assert "None is not allowed" not in err, err
    return err


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_bad_arguments_are_one_line(
    env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: list[str]
) -> None:
    err = one_line_error(capsys, [arg.replace("{tmp}", str(env)) for arg in argv])
    assert all(word in err for word in named), err


def test_a_busy_port_is_one_line_before_any_banner(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_line_error(capsys, ["serve", "--transport", "http", "--port", str(port)])
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


def test_the_busy_port_as_a_real_process(env: Path) -> None:
    """As a person sees it: the process's whole stderr is the one line (no banner, no traceback)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "tokenledger", "serve", "--transport", "http", "--port", port],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"tokenledger: port {port} on 127.0.0.1 is already in use (another tokenledger serve?): "
        "stop that server or choose another port with --port"
    ]


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"tokenledger {version('tokenledger')}\n"


def test_keys_list_and_create_take_a_tenant(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--role", "viewer", "--tenant", "acme", "--name", "grafana"]) == 0
    created = capsys.readouterr().out
    assert "tenant acme" in created
    assert main(["keys", "list", "--tenant", "acme"]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].strip() == "keys of tenant 'acme'" and "grafana" in listed
    assert main(["keys", "list"]) == 0
    assert capsys.readouterr().out.strip() == "keys of tenant 'default': none"


def test_budget_set_states_its_default_period(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["budget", "set", "monthly", "--limit", "1000"]) == 0
    out = capsys.readouterr().out
    assert "month, hard" in out
    assert out.splitlines()[-1] == "period: month (the default for a new budget; --period sets another)"
    assert main(["budget", "set", "daily", "--limit", "10", "--period", "day"]) == 0
    assert "default" not in capsys.readouterr().out
    assert main(["budget", "set", "monthly", "--limit", "900"]) == 0  # a change keeps its period, silently
    assert "default" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["budget", "set", "--help"])
    assert "(default for a new budget: month)" in " ".join(capsys.readouterr().out.split())
