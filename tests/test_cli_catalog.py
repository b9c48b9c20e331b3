"""`tokenledger models`, `prices` and `cost`, driven through the CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokenledger import catalog
from tokenledger.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_prints_an_aligned_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "gpt-4o")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["Model", "Provider", "Context", "In", "$/Mtok", "Out", "$/Mtok", "Counting"]
    assert lines[2].split() == ["gpt-4o", "openai", "128,000", "2.5", "10", "exact"]
    assert lines[0].index("Counting") == lines[2].index("exact")  # columns line up
    assert lines[0].index("Out $/Mtok") + len("Out $/Mtok") == lines[2].index(" exact") - 1  # right-aligned


def test_models_fit_80_and_120_columns() -> None:
    from tests.test_cli_tables import assert_readable
    from tokenledger.cli.catalog_cmds import models_grid

    grid = models_grid(catalog.search("", limit=400))
    for width in (80, 120):
        assert_readable(grid, width)


def test_models_json_and_provider(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "claude", "--provider", "anthropic", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["snapshot"]["litellm_version"]
    assert document["models"] and {model["provider"] for model in document["models"]} == {"anthropic"}
    assert all(isinstance(value, str) for value in document["models"][0]["price"].values() if value)


def test_models_with_no_match_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models", "zzz-no-such-model")
    assert code == 1
    assert out == ""
    assert "zzz-no-such-model" in err


def test_prices_shows_per_token_and_per_million(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "openai/gpt-4o")
    assert code == 0
    assert "0.0000025 / 2.5" in out
    assert "0.00001 / 10" in out
    assert "o200k_base" in out
    assert "snapshot" in out


def test_prices_json_keeps_money_as_strings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "gpt-4o", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["price"]["input"] == "0.0000025"
    assert document["price_per_million"]["output"] == "10"
    assert document["count_method"] == "exact"


def test_prices_of_an_unpriced_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "meta-llama/Llama-3.3-70B-Instruct")
    assert code == 0
    assert "unpriced" in out
    assert "estimate" in out


def test_cost_prints_the_exact_decimal(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cost", "--model", "gpt-4o", "--input", "1234", "--output", "567")
    assert code == 0
    assert out.splitlines()[-1].split() == ["total", "1,801", "0.008755"]


def test_cost_json_with_cache_and_reasoning(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--model", "o3", "--input", "1000", "--output", "5000", "--reasoning", "4000"]
    code, out, _ = run(capsys, *argv, "--cache-read", "2000", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["model"] == "o3"
    assert document["priced"] is True
    # o3: $2/M input, $0.50/M cache read, $8/M output (reasoning at the output rate)
    assert document["cost_usd"] == "0.043"
    assert document["reasoning_usd"] == "0.032"


def test_cost_of_an_unpriced_model_is_not_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cost", "--model", "Llama-3.3-70B-Instruct", "--input", "5", "--output", "1")
    assert code == 0
    assert "unpriced" in out
    code, out, _ = run(
        capsys, "cost", "--model", "Llama-3.3-70B-Instruct", "--input", "5", "--output", "1", "--json"
    )
    assert json.loads(out)["cost_usd"] is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["cost", "--model", "gpt-4o", "--input", "-5", "--output", "1"], "--input"),
        (
            ["cost", "--model", "gpt-4o", "--input", "5", "--output", "1", "--cache-read", "-1"],
            "--cache-read",
        ),
        (["cost", "--model", "gpt-4o", "--input", "1.5", "--output", "1"], "--input"),
        (["cost", "--model", "gpt-4o", "--input", "5", "--output", "1", "--reasoning", "2"], "reasoning"),
        (["cost", "--model", "gpt-4oo", "--input", "5", "--output", "1"], "closest known: gpt-4o"),
        (["prices", "claude-sonet-4-5"], "claude-sonnet-4-5"),
        (["models", "--provider", "nope"], "provider"),
        (["models", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("tokenledger: ")
    assert named in err


def test_runs_as_a_module() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tokenledger", "models", "gpt-4o"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[2].startswith("gpt-4o ")  # after the header and its rule
