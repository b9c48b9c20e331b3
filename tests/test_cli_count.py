"""`tokenledger count`: a few runs of the real command, the rest through `main` in-process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_tokens import COOKBOOK_TOOLS, COOKBOOK_WEATHER_MESSAGES
from tokenledger import tokens
from tokenledger.cli import main

# The cookbook's weather example (105 tokens on gpt-4, 101 on gpt-4o), shared with the counting tests.
WEATHER: dict[str, Any] = {"messages": COOKBOOK_WEATHER_MESSAGES, "tools": COOKBOOK_TOOLS}


def run_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenledger", "count", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def count_with(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["count", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def needs_catalog() -> None:
    pytest.importorskip("tokenledger.catalog", reason="the model catalog is written separately")


# --- the real command -------------------------------------------------------------------------


def test_command_counts_an_argument() -> None:
    done = run_command("tiktoken is great!")
    assert (done.returncode, done.stdout, done.stderr) == (0, "6 tokens (exact, o200k_base)\n", "")
    assert run_command("a").stdout == "1 token (exact, o200k_base)\n"


def test_command_counts_stdin_bytes_as_written() -> None:
    text = "line one\r\nline two 東京\r\n"
    done = run_command("--encoding", "cl100k_base", "--json", stdin=text)
    assert done.returncode == 0, done.stderr
    expected = len(tokens.get_encoding("cl100k_base").encode_ordinary(text))
    result = json.loads(done.stdout)
    assert (result["tokens"], result["method"], result["encoding"]) == (expected, "exact", "cl100k_base")
    assert result["context_window"] is None  # no model, no window
    assert "estimated_cost_usd" not in result  # pricing needs a model


def test_command_reports_bad_input_on_one_line() -> None:
    done = run_command("--encoding", "o300k_base", "hello")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("tokenledger: encoding: 'o300k_base'")
    assert len(done.stderr.splitlines()) == 1


# --- in-process -------------------------------------------------------------------------------


def test_file_keeps_line_endings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    text = "a\r\nb\r\n" * 50 + "<|endoftext|>"
    path.write_bytes(text.encode())
    code, out, _ = count_with(capsys, "--file", str(path), "--encoding", "r50k_base")
    expected = len(tokens.get_encoding("r50k_base").encode_ordinary(text))
    assert (code, out) == (0, f"{expected} tokens (exact, r50k_base)\n")


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello world"))
    assert json.loads(count_with(capsys, "--json")[1])["tokens"] == 2


def test_messages_with_tools(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(WEATHER))
    # Counting by encoding alone applies the gpt-4o rules: the cookbook's 101.
    assert count_with(capsys, "--messages", str(path)) == (0, "101 tokens (exact, o200k_base)\n", "")


def test_messages_list_with_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "messages.json"
    content = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "x"}}]
    path.write_text(json.dumps([{"role": "user", "content": content}]))
    code, out, _ = count_with(capsys, "--messages", str(path))
    assert code == 0
    assert out.splitlines()[1] == "not counted: messages[0].content[1]: image_url"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[{", "tokenledger: --messages: '{path}' is not allowed; it is not valid JSON"),
        ('{"msgs": []}', "tokenledger: --messages: '{path}' is not allowed; give a list of messages"),
        ('[{"role": "user", "content": 5}]', "tokenledger: messages[0].content: 5 is not allowed"),
        ('{"messages": [], "tools": {}}', "tokenledger: tools: {} is not allowed"),
    ],
)
def test_malformed_messages(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    payload: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # a short path: an error shortens a long value it quotes
    path = Path("bad.json")
    path.write_text(payload)
    code, out, err = count_with(capsys, "--messages", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(message.replace("{path}", str(path)))
    assert len(err.splitlines()) == 1


def test_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = count_with(capsys, "--file", str(tmp_path / "missing.txt"))
    assert code == 1
    assert (
        err.strip()
        == f"tokenledger: --file: cannot read {str(tmp_path / 'missing.txt')!r}: no such file or directory"
    )
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    code, _, err = count_with(capsys, "--file", str(binary))
    assert code == 1
    assert "not UTF-8" in err


def test_output_tokens_need_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = count_with(capsys, "--max-output-tokens", "100", "hi")
    assert code == 1
    assert err.startswith("tokenledger: --max-output-tokens")


# --- with the catalog -------------------------------------------------------------------------


def test_model_shows_context(capsys: pytest.CaptureFixture[str]) -> None:
    needs_catalog()
    code, out, _ = count_with(
        capsys, "--model", "gpt-4o", "--max-output-tokens", "1000", "tiktoken is great!"
    )
    assert code == 0
    first, context, price = out.splitlines()
    assert first == "6 tokens (exact, o200k_base, gpt-4o)"
    assert context.startswith("context: 6 input + 1,000 output of ")
    assert price.startswith("estimated cost: $")


def test_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    needs_catalog()
    code, out, _ = count_with(capsys, "--model", "gpt-4o", "--json", "tiktoken is great!")
    result = json.loads(out)
    assert (code, result["tokens"], result["method"], result["fits"]) == (0, 6, "exact", True)
    assert result["remaining_context"] == result["context_window"] - 6
    assert result["priced"] is True and float(result["estimated_cost_usd"]) > 0


def test_single_token_and_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    needs_catalog()
    from tokenledger.catalog import search

    estimated = next(model for model in search(provider="anthropic") if model.count_method == "estimate")
    code, out, _ = count_with(capsys, "--model", estimated.name, "hi")
    assert code == 0
    assert f"(estimate, {estimated.encoding}, {estimated.name})" in out.splitlines()[0]


def test_unknown_model_is_an_estimate_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    needs_catalog()
    code, out, err = count_with(capsys, "--model", "no-such-model-xyz", "--json", "hello there")
    result = json.loads(out)
    assert (code, result["method"], result["encoding"], result["priced"]) == (
        0,
        "estimate",
        "o200k_base",
        False,
    )
    assert (
        result["tokens"] == 3
    )  # 2 o200k_base tokens x 1.30 (a model whose tokenizer is unknown), rounded up
    assert result["warnings"][0].startswith("no-such-model-xyz is not in the catalog")
    assert "no-such-model-xyz is not in the catalog" in err
