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
    rates = document["models"][0]["price_per_million"]
    assert all(isinstance(value, str) for value in rates.values() if value is not None)
    assert isinstance(document["models"][0]["price"]["input"], str)


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
        (
            ["cost", "--model", "gpt-4o", "--input", "1", "--output", "1", "--service-tier", "turbo"],
            "--service-tier",
        ),
        (["cost", "--model", "gpt-4o", "--input", "1", "--output", "1", "--cache-ttl", "2h"], "--cache-ttl"),
        (
            [
                "cost",
                "--model",
                "gpt-4o",
                "--input",
                "1",
                "--output",
                "1",
                "--batch",
                "--service-tier",
                "flex",
            ],
            "--service-tier",
        ),
        (["cost", "--model", "gpt-4o", "--input", "1", "--output", "1", "--at", "2025-13-01"], "--at"),
        (["cost", "--model", "gpt-4o", "--input", "1", "--output", "1", "--at", "2025-01-01T00:00"], "--at"),
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
    lines = completed.stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})  # under the header
    assert lines[rule + 1].startswith("gpt-4o ")


# --- the seeds' models, retirement and dates ------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "total"),
    [
        # Seed 002's table: Claude Opus 4 $15 / $75, Claude Haiku 3.5 $0.80 / $4 per million.
        ("claude-opus-4-20250514", "90"),
        ("claude-3-5-haiku-20241022", "4.8"),
    ],
)
def test_cost_of_seed_002s_retired_models(capsys: pytest.CaptureFixture[str], model: str, total: str) -> None:
    code, out, err = run(capsys, "cost", "--model", model, "--input", "1000000", "--output", "1000000")
    assert code == 0
    assert out.splitlines()[-1].split() == ["total", "2,000,000", total]
    assert "warning" in err and "retired" in err


def test_cost_of_claude_sonnet_4_at_and_above_its_long_context_threshold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Seed 002: Claude Sonnet 4 $3 / $15 per million; above 200K input tokens Anthropic bills the
    # whole request at $6 / $22.50.
    code, out, _ = run(
        capsys, "cost", "--model", "claude-sonnet-4-20250514", "--input", "100000", "--output", "100000"
    )
    assert code == 0 and out.splitlines()[-1].split() == ["total", "200,000", "1.8"]
    code, out, _ = run(
        capsys, "cost", "--model", "claude-sonnet-4-20250514", "--input", "1000000", "--output", "1000000"
    )
    assert code == 0 and out.splitlines()[-1].split() == ["total", "2,000,000", "28.5"]
    assert "above 200,000 input tokens" in out.splitlines()[0]


def test_prices_and_count_of_a_retired_model_warn(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "prices", "claude-3-5-haiku-20241022")
    assert code == 0
    assert "0.0000008 / 0.8" in out and "last listed 2026-03-01" in out
    assert "retired" in err
    code, out, err = run(capsys, "count", "--model", "claude-3-5-haiku-20241022", "hello there", "--json")
    assert code == 0
    assert any("retired" in warning for warning in json.loads(out)["warnings"])
    assert "retired" in err


def test_models_retired_lists_them_with_their_last_date(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--retired", "claude-3-5-haiku-2024")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["Last", "listed"]
    assert lines[2].split() == ["claude-3-5-haiku-20241022", "anthropic", "200,000", "0.8", "4", "2026-03-01"]
    code, out, _ = run(capsys, "models", "claude-3-5-haiku-2024")  # listed today: Bedrock's, not Anthropic's
    assert code == 0
    assert "claude-3-5-haiku-20241022" not in [line.split()[0] for line in out.splitlines() if line.strip()]


def test_prices_history_shows_the_dated_prices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "gpt-3.5-turbo", "--history")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [
        ["2023-12-14", "2025-10-05", "1.5", "2", "-", "-", "litellm", "1.14.4"],
        ["2025-10-05", "now", "0.5", "1.5", "-", "-", "litellm", "1.77.7"],
    ]
    code, out, _ = run(capsys, "prices", "gpt-3.5-turbo", "--history", "--json")
    history = json.loads(out)["history"]
    assert [h["effective_from"][:10] for h in history] == ["2023-12-14", "2025-10-05"]
    assert history[0]["price"]["input"] == "0.0000015"


def test_cost_at_a_date_takes_the_price_then(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--model", "gpt-3.5-turbo", "--input", "1000", "--output", "1000"]
    code, out, _ = run(capsys, *argv, "--at", "2024-06-01")
    assert code == 0 and out.splitlines()[-1].split() == ["total", "2,000", "0.0035"]
    code, out, _ = run(capsys, *argv, "--at", "2026-01-01T09:00:00+01:00")
    assert code == 0 and out.splitlines()[-1].split() == ["total", "2,000", "0.002"]


# --- price modes, hosts and local runtimes -------------------------------------------------------


def test_prices_show_modes_and_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prices", "gpt-5.4")
    assert code == 0
    labels = [line.strip().split("  ")[0] for line in out.splitlines()]
    assert {"batch", "flex", "priority", "above 272,000 input"} <= set(labels)
    assert "input 5 / output 22.5" in out


@pytest.mark.parametrize(
    ("options", "total", "mode"),
    [
        (["--batch"], "6.25", "batch rates"),
        (["--service-tier", "priority"], "21.25", "priority rates"),
        ([], "12.5", "standard rates"),
    ],
)
def test_cost_in_batch_and_service_tiers(
    capsys: pytest.CaptureFixture[str], options: list[str], total: str, mode: str
) -> None:
    argv = ["cost", "--model", "gpt-4o", "--input", "1000000", "--output", "1000000", *options]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert out.splitlines()[-1].split() == ["total", "2,000,000", total]
    assert mode in out.splitlines()[0]


def test_cost_of_one_hour_cache_writes(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--model", "claude-sonnet-4-20250514", "--input", "0", "--output", "0"]
    code, out, _ = run(capsys, *argv, "--cache-write", "100000", "--cache-ttl", "1h", "--json")
    assert code == 0 and json.loads(out)["cost_usd"] == "0.6"


def test_cost_in_a_mode_the_model_lacks_warns(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "cost",
        "--model",
        "claude-sonnet-4-5",
        "--input",
        "10",
        "--output",
        "10",
        "--service-tier",
        "flex",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "standard rates" in out and "no flex price" in err


def test_cost_of_a_local_model_is_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "cost", "--model", "ollama/llama3", "--input", "1000", "--output", "1000")
    assert code == 0
    assert "local runtime" in out.splitlines()[0]
    assert out.splitlines()[-1].split() == ["total", "2,000", "0"]
    code, out, _ = run(capsys, "prices", "ollama/llama3", "--json")
    document = json.loads(out)
    assert document["priced"] is True and document["price"] == {"input": "0", "output": "0", "local": True}
