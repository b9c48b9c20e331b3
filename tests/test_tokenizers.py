"""Exact counts with a model's own tokenizer: Mistral's, from mistral-common, against that library itself."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import mistral_common
import pytest
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers import mistral as mistral_tokenizers
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from tokenledger import tokenizers, tokens
from tokenledger.catalog import resolve
from tokenledger.tokenizers import mistral
from tokenledger.types import ModelInfo

from .test_tokens import CORPUS, ONE_MB_TEXT

DATA = Path(mistral_common.__file__).parent / "data"


def mistral_model(name: str) -> ModelInfo:
    return ModelInfo(name=name, provider="mistral", encoding="o200k_base", count_method="estimate")


# One model per tokenizer file.
MODEL_PER_FILE = {file: name for name, file in sorted(mistral.MODEL_FILES.items(), reverse=True)}

CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a terse assistant. Answer in one line."},
    {"role": "user", "content": "What does the ledger do before a call?"},
    {"role": "assistant", "content": "It reserves the tokens the call may use."},
    {"role": "user", "content": "And after it? 東京で 🎉"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


def test_every_mapped_file_is_pinned_and_matches_what_mistral_common_ships() -> None:
    assert set(mistral.MODEL_FILES.values()) == set(mistral.PINNED_FILES)
    for file, digest in mistral.PINNED_FILES.items():
        assert hashlib.sha256((DATA / file).read_bytes()).hexdigest() == digest, file


def test_the_model_table_is_mistral_commons_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of mistral-common's model constructors loads the file our table names for that model."""
    opened: list[str] = []
    record = classmethod(lambda cls, path, mode=None: opened.append(Path(path).name))
    monkeypatch.setattr(MistralTokenizer, "from_file", record)
    theirs = {}
    for name, construct in mistral_tokenizers.MODEL_NAME_TO_TOKENIZER_CLS.items():
        construct()
        theirs[name] = opened.pop()
    assert theirs == mistral.MODEL_FILES


@pytest.mark.parametrize("file", sorted(mistral.PINNED_FILES))
def test_text_counts_equal_mistral_commons_encode(file: str) -> None:
    model = mistral_model(MODEL_PER_FILE[file])
    reference = MistralTokenizer.from_file(str(DATA / file)).instruct_tokenizer.tokenizer
    counter = tokens.TokenCounter()
    for text in CORPUS if file.startswith("tekken") else CORPUS[:-1]:  # SentencePiece: 1 MB is slow
        expected = len(reference.encode(text, bos=False, eos=False))
        counted = counter.count_text(text, model=model)
        assert (counted.tokens, counted.method, counted.error_band) == (expected, "exact", 0.0), text[:40]
    batch = counter.count_texts(CORPUS[:6], model=model)
    assert batch.per_text == [len(reference.encode(t, bos=False, eos=False)) for t in CORPUS[:6]]
    assert batch.method == "exact" and batch.encoding == file.removesuffix(".json")


@pytest.mark.parametrize("file", ["tekken_240718.json", "mistral_instruct_tokenizer_241114.model.v7"])
def test_chat_counts_equal_mistral_commons_chat_encoding(file: str) -> None:
    model = mistral_model(MODEL_PER_FILE[file])
    reference = MistralTokenizer.from_file(str(DATA / file))
    for tools in (None, [WEATHER_TOOL]):
        request = ChatCompletionRequest.from_openai(CHAT, tools)  # type: ignore[arg-type]
        expected = len(reference.encode_chat_completion(request).tokens)
        counted = tokens.count_messages(CHAT, tools=tools, model=model)
        assert (counted.tokens, counted.method) == (expected, "exact")
    with_tool = tokens.count_messages(CHAT, tools=[WEATHER_TOOL], model=model).tokens
    assert with_tool > tokens.count_messages(CHAT, model=model).tokens


def test_catalog_models_that_map_count_exactly_and_others_stay_estimates() -> None:
    for name in ("open-mistral-nemo", "mistral/open-mistral-nemo-2407", "codestral-mamba-latest"):
        counted = tokens.count_text("hello world", model=resolve(name))
        assert counted.method == "exact" and counted.error_band == 0, name
    # Newer Mistral models load their tokenizer from the Hub, and Mistral also hosts other makers' models.
    for name in ("mistral-large-latest", "deepseek-v4-1-flash-1017", "zai-glm-5"):
        model = resolve(name)
        assert tokenizers.exact_tokenizer(model) is None
        counted = tokens.count_text("hello world", model=model)
        assert (counted.method, counted.error_band, counted.warnings) == ("estimate", 0.15, []), name


def test_images_are_listed_not_counted_and_never_fetched() -> None:
    model = mistral_model("pixtral-12b-2409")
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/never-fetched.png"}},
    ]
    with_image = tokens.count_messages([{"role": "user", "content": parts}], model=model)
    text_only = tokens.count_messages([{"role": "user", "content": "What is in this image?"}], model=model)
    assert (with_image.method, with_image.tokens) == ("exact", text_only.tokens)
    assert with_image.not_counted == ["messages[0].content[1]: image_url"]


def test_a_conversation_the_tokenizer_refuses_is_estimated_with_a_warning() -> None:
    nemo = resolve("open-mistral-nemo")
    counted = tokens.count_messages([{"role": "assistant", "content": "hi"}], model=nemo)
    assert counted.method == "estimate" and counted.error_band == 0.15
    assert "cannot render this conversation" in counted.warnings[0]


def test_a_file_that_fails_its_hash_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mistral.PINNED_FILES, "tekken_240911.json", "0" * 64)
    monkeypatch.setattr(mistral, "_loaded", {})
    counted = tokens.TokenCounter().count_text("hello world", model=mistral_model("pixtral-12b"))
    assert counted.method == "estimate"
    assert "tekken_240911.json" in counted.warnings[0] and "SHA-256" in counted.warnings[0]


def test_without_the_extra_mistral_is_estimated_and_says_how_to_count_exactly() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["mistral_common"] = None  # as if the extra were not installed
        from tokenledger import tokens
        from tokenledger.catalog import resolve
        counted = tokens.count_text("hello world", model=resolve("open-mistral-nemo"))
        print(counted.method, counted.error_band, counted.warnings[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("estimate 0.15 open-mistral-nemo: estimated, not exact: ")
    assert "pip install 'tokenledger[mistral]'" in done.stdout


def test_one_megabyte_counts_exactly_with_tekken() -> None:
    reference = MistralTokenizer.from_file(str(DATA / "tekken_240718.json")).instruct_tokenizer.tokenizer
    counted = tokens.count_text(ONE_MB_TEXT, model=resolve("open-mistral-nemo"))
    assert counted.tokens == len(reference.encode(ONE_MB_TEXT, bos=False, eos=False))
