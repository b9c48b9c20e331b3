"""Counting: golden numbers from OpenAI's cookbook, exactness against tiktoken, cache, fitting, errors."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenledger import tokens
from tokenledger.errors import InvalidInput, UnknownEncoding
from tokenledger.tokens import TokenCounter
from tokenledger.types import ChatMessage, ModelInfo

DATA = Path(tokens.__file__).parent / "data" / "tiktoken"


def openai_model(name: str, encoding: str, context_window: int | None = 128_000) -> ModelInfo:
    return ModelInfo(
        name=name, provider="openai", encoding=encoding, count_method="exact", context_window=context_window
    )


CLAUDE = ModelInfo(
    name="claude-sonnet-4",
    provider="anthropic",
    encoding="o200k_base",
    count_method="estimate",
    estimate_factor=1.2,
    context_window=200_000,
)
FAMILIES = {
    "gpt-3.5-turbo": "cl100k_base",
    "gpt-4": "cl100k_base",
    "gpt-4o": "o200k_base",
    "gpt-4o-mini": "o200k_base",
}

# Copied from OpenAI's cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_WEATHER_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {
        "role": "user",
        "content": "What's the weather like in San Francisco?",
    },
]

ONE_MB_TEXT = (
    "The ledger reserves tokens before a call and settles them after. 東京で会いましょう 🎉🚀\n"
    "def count(x):\n    return len(x)  # <|endoftext|>\n\t\t  \n"
) * 8000
CORPUS = [
    "",
    "tiktoken is great!",
    "antidisestablishmentarianism",
    "It's 2 + 2 = 4, isn't it? We'll see; they've said 12345678 times.",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\r\n",
    '{"key": [1, 2.5, null], "nested": {"a": "b"}}',
    "お誕生日おめでとう。我们今天去北京。한국어 텍스트입니다.",
    "👩‍👩‍👧‍👦 🇯🇵 👍🏽 emoji ✨ mixed with text 🎉",
    " " * 5000,
    "\n" * 3000 + "x" + "\t \n" * 1000,
    "word" + " " * 777 + "word",
    "<|endoftext|><|fim_prefix|><|fim_middle|><|fim_suffix|><|endofprompt|><|start|><|message|>",
    "Ünïcödé ﬁ ligatures, combining e\u0301 and zero\u200bwidth",
    "x" * 20_000,
    ONE_MB_TEXT,
]


# --- golden numbers from the cookbook ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"), [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)]
)
def test_cookbook_messages(name: str, expected: int) -> None:
    result = tokens.count_messages(COOKBOOK_MESSAGES, model=openai_model(name, FAMILIES[name]))
    assert (result.tokens, result.method, result.encoding, result.model) == (
        expected,
        "exact",
        FAMILIES[name],
        name,
    )


@pytest.mark.parametrize(
    ("name", "expected"), [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)]
)
def test_cookbook_tools(name: str, expected: int) -> None:
    model = openai_model(name, FAMILIES[name])
    result = tokens.count_messages(COOKBOOK_WEATHER_MESSAGES, tools=COOKBOOK_TOOLS, model=model)
    assert result.tokens == expected
    # The tools' share is what count_tools reports on its own.
    messages_only = tokens.count_messages(COOKBOOK_WEATHER_MESSAGES, model=model).tokens
    assert tokens.count_tools(COOKBOOK_TOOLS, model=model).tokens == expected - messages_only


@pytest.mark.parametrize(
    "name", ["gpt-4-0613", "gpt-4-turbo", "openai/gpt-4-32k", "gpt-4.1", "gpt-4.5-preview", "o3", "gpt-5"]
)
def test_family_rules_follow_the_model_name(name: str) -> None:
    legacy = name.removeprefix("openai/").startswith(("gpt-4-", "gpt-3.5"))
    result = tokens.count_messages(
        COOKBOOK_WEATHER_MESSAGES, tools=COOKBOOK_TOOLS, model=openai_model(name, "cl100k_base")
    )
    assert result.tokens == (105 if legacy else 102)  # the gpt-4o rule on cl100k: 3 fewer for func_init


def test_gpt35_0301_overheads() -> None:
    model = openai_model("gpt-3.5-turbo-0301", "cl100k_base")
    enc = tokens.get_encoding("cl100k_base")
    expected = 3  # reply priming
    for message in COOKBOOK_MESSAGES:
        expected += 4 + sum(len(enc.encode_ordinary(value)) for value in message.values())
        expected -= 1 if "name" in message else 0
    assert tokens.count_messages(COOKBOOK_MESSAGES, model=model).tokens == expected


def test_chat_message_models_count_like_dicts() -> None:
    as_models = [ChatMessage.model_validate(message) for message in COOKBOOK_MESSAGES]
    assert tokens.count_messages(as_models, model=openai_model("gpt-4o", "o200k_base")).tokens == 124


# --- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_count_text_equals_encode_ordinary(encoding: str) -> None:
    enc = tokens.get_encoding(encoding)
    counter = TokenCounter()
    for text in CORPUS:
        expected = len(enc.encode_ordinary(text))
        assert counter.count_text(text, encoding=encoding).tokens == expected
        assert counter.count_text(text, encoding=encoding).tokens == expected  # and from the cache
    batch = counter.count_texts(CORPUS, encoding=encoding)
    assert batch.per_text == [len(enc.encode_ordinary(text)) for text in CORPUS]
    assert batch.tokens == sum(batch.per_text)


def _tiktoken_built(name: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    """Return the encoding as tiktoken's own constructor builds it, fed from a pre-filled cache dir.

    A pre-filled TIKTOKEN_CACHE_DIR is tiktoken's documented way to run offline; this proves our
    pattern, special tokens and ranks are the ones tiktoken itself uses.
    """
    from tiktoken_ext import openai_public

    for rank_file in ("r50k_base", "p50k_base", "cl100k_base", "o200k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{rank_file}.tiktoken"
        key = hashlib.sha1(url.encode()).hexdigest()
        (cache_dir / key).write_bytes((DATA / f"{rank_file}.tiktoken").read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_bundled_encoding_is_built_like_tiktokens(
    encoding: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _tiktoken_built(encoding, tmp_path, monkeypatch)
    ours = tokens.get_encoding(encoding)
    assert ours.name == reference.name
    assert ours.n_vocab == reference.n_vocab
    assert ours.special_tokens_set == reference.special_tokens_set
    for special in sorted(reference.special_tokens_set)[:50]:
        assert ours.encode_single_token(special) == reference.encode_single_token(special)
    for text in CORPUS[:-1]:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
        assert ours.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    if encoding == "o200k_base":
        assert tokens.count_text(ONE_MB_TEXT, encoding=encoding).tokens == len(
            reference.encode_ordinary(ONE_MB_TEXT)
        )


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400), encoding=st.sampled_from(["o200k_base", "cl100k_base", "r50k_base"]))
def test_any_text_counts_like_tiktoken(text: str, encoding: str) -> None:
    assert tokens.count_text(text, encoding=encoding).tokens == len(
        tokens.get_encoding(encoding).encode_ordinary(text)
    )


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(max_size=200), max_size=12))
def test_batch_matches_single_counts(texts: list[str]) -> None:
    counter = TokenCounter()
    batch = counter.count_texts(texts, encoding="o200k_base")
    assert batch.per_text == [tokens.count_text(text).tokens for text in texts]


@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_special_token_strings_are_plain_text(encoding: str) -> None:
    text = "before <|endoftext|> after <|fim_prefix|><|endofprompt|><|start|>"
    result = tokens.count_text(text, encoding=encoding)
    assert result.tokens == len(tokens.get_encoding(encoding).encode_ordinary(text))
    assert result.tokens > 8  # spelled out, not one special token each
    message = tokens.count_messages([{"role": "user", "content": "<|endoftext|>"}], encoding=encoding)
    assert message.tokens > 7


def test_loads_offline_without_tiktoken_registry_or_cache(tmp_path: Path) -> None:
    """In a fresh process with sockets and tiktoken's registry disabled, every encoding counts,
    nothing loads at import, and tiktoken's cache directory stays empty."""
    script = textwrap.dedent(
        """
        import socket, sys
        import tiktoken, tiktoken.registry

        def refuse(*args, **kwargs):
            raise AssertionError("network or tiktoken registry used")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        tiktoken.get_encoding = tiktoken.registry.get_encoding = tiktoken.encoding_for_model = refuse

        from tokenledger import tokens
        assert tokens._loaded == {}, "encodings loaded at import"
        for name in tokens.ENCODINGS:
            print(name, tokens.count_text("hello <|endoftext|> world", encoding=name).tokens)
        """
    )
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir), "DATA_GYM_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(tokens.ENCODINGS)
    assert list(cache_dir.iterdir()) == []


def test_encodings_load_once_across_threads() -> None:
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: tokens.get_encoding("p50k_edit"), range(16)))
    assert all(encoding is loaded[0] for encoding in loaded)


def test_counts_agree_across_threads() -> None:
    counter = TokenCounter(max_entries=8)  # small, so threads evict each other's entries
    texts = [f"text number {i} " * (i % 17 + 1) for i in range(200)]
    expected = [len(tokens.get_encoding("o200k_base").encode_ordinary(text)) for text in texts]
    with ThreadPoolExecutor(8) as pool:
        counted = list(pool.map(lambda text: counter.count_text(text).tokens, texts * 3))
    assert counted == expected * 3
    assert counter.stats()["cache_entries"] <= 8


# --- cache and stats --------------------------------------------------------------------------


def test_cache_hits_misses_and_stats() -> None:
    counter = TokenCounter()
    first = counter.count_text("hello world")
    second = counter.count_text("hello world")
    other_encoding = counter.count_text("hello world", encoding="r50k_base")
    assert first == second
    assert other_encoding.encoding == "r50k_base"
    stats = counter.stats()
    assert (stats["cache_hits"], stats["cache_misses"], stats["cache_entries"]) == (1, 2, 2)
    assert stats["calls"] == 3
    assert stats["methods"]["count_text"]["calls"] == 3
    assert stats["methods"]["count_text"]["seconds"] > 0


def test_cache_is_bounded_by_entries_and_characters() -> None:
    counter = TokenCounter(max_entries=3, max_total_chars=100, max_cached_chars=60)
    for word in ("a", "b", "c", "d"):
        counter.count_text(word)
    assert counter.stats()["cache_entries"] == 3
    counter.count_text("b")  # still cached ("a" was the oldest)
    assert counter.stats()["cache_hits"] == 1
    counter.count_text("x" * 50)
    counter.count_text("y" * 50)  # 100 chars of long texts: the short ones are evicted first
    stats = counter.stats()
    assert stats["cache_chars"] <= 100
    counter.count_text("z" * 61)  # above max_cached_chars: counted, never cached
    assert counter.stats()["uncached"] == 1
    assert counter.stats()["cache_chars"] <= 100
    counter.clear_cache()
    assert (counter.stats()["cache_entries"], counter.stats()["cache_chars"]) == (0, 0)


# --- content parts, estimates, errors ---------------------------------------------------------


def test_non_text_parts_are_listed_not_counted() -> None:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "...", "format": "wav"}},
    ]
    with_parts = tokens.count_messages([{"role": "user", "content": parts}])
    text_only = tokens.count_messages([{"role": "user", "content": "What is in this image?"}])
    assert with_parts.tokens == text_only.tokens
    assert with_parts.not_counted == [
        "messages[0].content[1]: image_url",
        "messages[0].content[2]: input_audio",
    ]


def test_built_in_tools_are_listed_not_counted() -> None:
    tools = [{"type": "web_search"}, *COOKBOOK_TOOLS]
    result = tokens.count_messages(
        COOKBOOK_WEATHER_MESSAGES, tools=tools, model=openai_model("gpt-4o", "o200k_base")
    )
    assert (result.tokens, result.not_counted) == (101, ["tools[0]: web_search"])
    assert tokens.count_tools([{"type": "file_search"}]).tokens == 0


def test_tool_calls_and_extra_fields_are_counted() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}
    bare = {"role": "assistant", "content": None}
    assert tokens.count_messages([call]).tokens > tokens.count_messages([bare]).tokens


def test_estimated_models_scale_and_say_so() -> None:
    text = "An estimate for a model whose tokenizer is not public."
    raw = tokens.count_text(text, encoding="o200k_base").tokens
    estimated = tokens.count_text(text, model=CLAUDE)
    assert (estimated.tokens, estimated.method, estimated.model) == (
        math.ceil(raw * 1.2),
        "estimate",
        CLAUDE.name,
    )
    # Messages: the gpt-4o rule, then the factor.
    messages = tokens.count_messages(COOKBOOK_MESSAGES, model=CLAUDE)
    assert (messages.tokens, messages.method) == (math.ceil(124 * 1.2), "estimate")
    batch = tokens.count_texts([text, text], model=CLAUDE)
    assert batch.per_text == [math.ceil(raw * 1.2)] * 2
    assert batch.tokens == sum(batch.per_text)


def test_explicit_encoding_overrides_the_models() -> None:
    result = tokens.count_text("hello", model=openai_model("gpt-4o", "o200k_base"), encoding="r50k_base")
    assert (result.encoding, result.model) == ("r50k_base", "gpt-4o")


def test_unknown_encoding() -> None:
    with pytest.raises(UnknownEncoding, match="o200k_base"):
        tokens.count_text("hi", encoding="o300k_base")
    with pytest.raises(UnknownEncoding):
        tokens.count_text("hi", model=openai_model("gpt-x", "nope"))


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ("just a string", "messages"),
        ([{"role": "user", "content": "ok"}, {"content": "no role"}], "messages[1].role"),
        ([{"role": 7, "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        ([{"role": "user", "content": ["not a part"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
        ([{"role": "user", "content": "x", "name": 3}], "messages[0].name"),
        (["not a message"], "messages[0]"),
    ],
)
def test_bad_messages_name_the_field(messages: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        tokens.count_messages(messages)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
        (["nope"], "tools[0]"),
        ([{"name": "f", "parameters": {"properties": {"a": "str"}}}], "tools[0].parameters.properties.a"),
        (
            [{"name": "f", "parameters": {"properties": {"a": {"enum": "x"}}}}],
            "tools[0].parameters.properties.a.enum",
        ),
    ],
)
def test_bad_tools_name_the_field(tools: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        tokens.count_tools(tools)
    assert raised.value.field == field


def test_bad_texts() -> None:
    with pytest.raises(InvalidInput) as raised:
        tokens.count_text(b"bytes")  # type: ignore[arg-type]
    assert raised.value.field == "text"
    with pytest.raises(InvalidInput) as raised:
        tokens.count_texts(["ok", None])  # type: ignore[list-item]
    assert raised.value.field == "texts[1]"


# --- context ----------------------------------------------------------------------------------


def test_context_fit() -> None:
    model = openai_model("gpt-4o", "o200k_base", context_window=1000)
    fit = tokens.context_fit(600, model, 300)
    assert (fit.context_window, fit.remaining_context, fit.fits, fit.percent_used) == (1000, 100, True, 90.0)
    over = tokens.context_fit(600, model, 500)
    assert (over.remaining_context, over.fits) == (-100, False)
    unknown = tokens.context_fit(10, openai_model("mystery", "o200k_base", context_window=None))
    assert unknown.fits is None and unknown.context_window is None


def _conversation() -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(10):
        turns.append({"role": "user", "content": f"Question {i}: " + "why? " * 20})
        turns.append({"role": "assistant", "content": f"Answer {i}: " + "because. " * 20})
    return turns


def test_fit_messages_drops_oldest_turns_first() -> None:
    messages = _conversation()
    total = tokens.count_messages(messages).tokens
    model = openai_model("gpt-4o", "o200k_base", context_window=total)
    fitted = tokens.fit_messages(messages, model, max_tokens=200)
    assert fitted.fits and fitted.dropped > 0
    assert fitted.original_tokens == total
    assert fitted.messages[0] == messages[0]  # the system prompt stays
    assert fitted.messages[1:] == messages[1 + fitted.dropped :]  # oldest dropped, order kept
    assert fitted.tokens == tokens.count_messages(fitted.messages).tokens
    assert fitted.tokens + 200 <= total
    # One more message kept would not have fit: no turn was dropped needlessly.
    kept_one_more = [messages[0], *messages[fitted.dropped :]]
    assert tokens.count_messages(kept_one_more).tokens + 200 > total


def test_fit_messages_that_already_fit_are_unchanged() -> None:
    messages = _conversation()
    fitted = tokens.fit_messages(messages, openai_model("gpt-4o", "o200k_base"), max_tokens=1000)
    assert (fitted.dropped, fitted.fits, fitted.messages) == (0, True, messages)
    assert fitted.tokens == fitted.original_tokens


def test_fit_messages_that_cannot_fit() -> None:
    messages = _conversation()
    model = openai_model("gpt-4o", "o200k_base", context_window=100)
    fitted = tokens.fit_messages(messages, model, max_tokens=50, keep_last=2)
    assert not fitted.fits
    assert fitted.messages == [messages[0], *messages[-2:]]
    assert fitted.dropped == len(messages) - 3
    unkept = tokens.fit_messages(messages, model, max_tokens=50, keep_system=False, keep_last=0)
    assert unkept.messages == [] and unkept.dropped == len(messages)


def test_fit_messages_drops_tool_calls_with_their_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome? " * 30},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}, {"id": "2"}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny " * 40},
        {"role": "tool", "tool_call_id": "2", "content": "rainy " * 40},
        {"role": "assistant", "content": "Paris is sunny, Rome is rainy."},
        {"role": "user", "content": "Thanks!"},
    ]
    total = tokens.count_messages(messages).tokens
    without_question = total - tokens.count_messages(messages[:1]).tokens + 3  # 3: reply priming
    model = openai_model("gpt-4o", "o200k_base", context_window=without_question - 1)
    fitted = tokens.fit_messages(messages, model)
    assert fitted.messages == messages[4:]
    assert fitted.dropped == 4


def test_fit_messages_estimates_for_other_providers() -> None:
    fitted = tokens.fit_messages(COOKBOOK_MESSAGES, CLAUDE)
    assert (fitted.tokens, fitted.method, fitted.dropped) == (math.ceil(124 * 1.2), "estimate", 0)


def test_fit_messages_needs_a_context_window() -> None:
    with pytest.raises(InvalidInput, match="context window"):
        tokens.fit_messages(COOKBOOK_MESSAGES, openai_model("mystery", "o200k_base", context_window=None))
