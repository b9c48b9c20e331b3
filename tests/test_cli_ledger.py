"""`tokenledger budget | usage | keys | migrate | doctor` against a real database."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokenledger.cli import main


@pytest.fixture
def env(dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    return dsn


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_budget_lifecycle(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "budget",
        "set",
        "team-a",
        "--limit",
        "5000",
        "--scope",
        "team:a",
        "--period",
        "day",
        "--timezone",
        "Europe/Paris",
        "--tpm",
        "1000",
    )
    assert code == 0 and "team-a" in out and "team:a" in out and "5000" in out
    code, out, _ = run(
        capsys, "budget", "set", "dollars", "--limit", "2.50", "--unit", "usd", "--priority-shares", "none"
    )
    assert code == 0 and "$2.5" in out
    code, out, _ = run(capsys, "budget", "list", "--json")
    listed = json.loads(out)
    assert [b["spec"]["name"] for b in listed] == ["dollars", "team-a"]
    assert listed[0]["spec"]["priority_shares"] is None and listed[1]["spec"]["tokens_per_minute"] == 1000
    code, out, _ = run(capsys, "budget", "show", "team-a", "--json")
    assert json.loads(out)[0]["state"]["remaining"] == "5000"
    code, out, _ = run(capsys, "budget", "delete", "team-a")
    assert code == 0 and "deleted budget team-a" in out
    code, _, err = run(capsys, "budget", "show", "team-a")
    assert code == 1 and "team-a" in err and "no such budget" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--limit", "0"), "limit"),
        (("--limit", "10", "--period", "fortnight"), "period"),
        (("--limit", "10", "--timezone", "Nowhere/City"), "timezone"),
        (("--limit", "10", "--scope", "planet:mars"), "scope"),
        (("--limit", "10", "--priority-shares", "high"), "--priority-shares"),
        (("--limit", "ten"), "limit"),
    ],
)
def test_bad_budget_input_is_one_clear_line(
    env: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], named: str
) -> None:
    code, out, err = run(capsys, "budget", "set", "b", *args)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("tokenledger: ") and named in err
    assert run(capsys, "budget", "list", "--json")[1].strip() == "[]"


def test_keys_and_usage(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "create", "--role", "member", "--user", "ana", "--json")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith("tl_") and created["role"] == "member"
    code, out, _ = run(capsys, "keys", "list")
    assert created["key_id"] in out and created["key"] not in out
    code, out, _ = run(capsys, "keys", "revoke", created["key_id"])
    assert code == 0 and "revoked" in out
    code, _, err = run(capsys, "keys", "create", "--role", "member")
    assert code == 1 and "user" in err
    code, out, _ = run(capsys, "usage", "--since", "7d", "--group-by", "user,model")
    assert code == 0 and "TOTAL" in out
    code, out, _ = run(capsys, "usage", "--since", "30d", "--bucket", "day", "--timezone", "America/New_York")
    assert code == 0 and "TOTAL" in out
    code, _, err = run(capsys, "usage", "--group-by", "password")
    assert code == 1 and "group_by" in err


def test_migrate_and_doctor_as_real_commands(env: str) -> None:
    for command in (["migrate"], ["doctor"]):
        done = subprocess.run(
            [sys.executable, "-m", "tokenledger", *command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "database: ok" in done.stdout and "catalog:" in done.stdout
