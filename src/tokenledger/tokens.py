"""Token counting: texts, chat messages and tool definitions, offline, with the BPE files we ship.

OpenAI models are counted exactly with their tiktoken encoding plus OpenAI's published chat and tool
overheads (the cookbook "How to count tokens with tiktoken"). A model whose own tokenizer ships in an
installed package (`tokenledger.tokenizers`: Mistral's, with the `mistral` extra) is counted exactly with
it. Other models are counted with the encoding their `ModelInfo` names, the gpt-4o overhead rules, and
then `estimate_factor`: such counts say `method="estimate"`, carry an `error_band`, and are never
presented as exact.

Nothing here touches a network, a database, or tiktoken's download cache, and nothing loads at import.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import os
import re
import threading
import time
from base64 import b64decode
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import tiktoken

from tokenledger import tokenizers
from tokenledger.errors import InvalidInput, UnknownEncoding
from tokenledger.types import ChatMessage, ContextFit, FitResult, Method, ModelInfo, TokenCount

DEFAULT_ENCODING = "o200k_base"

# The expected error of an estimate (0.15: the provider's count within ±15 % of ours) until a tenant's
# own settled calls measure it: the spread each catalog rule allows (see its `estimate_rule`), widened
# for code and non-English text. The README's counting table shows them.
DEFAULT_ERROR_BANDS = {
    "anthropic": 0.25,  # o200k x1.25 (Opus 4.7+: x1.70); Claude is 1.10-1.25x o200k (4.7+: 1.0-1.35x that)
    "google": 0.15,
    "mistral": 0.15,
    "cohere": 0.15,
    "deepseek": 0.15,
    "xai": 0.15,
    "meta": 0.10,  # Llama 3/4's vocabulary is close to cl100k/o200k
    "openai": 0.10,  # an OpenAI model tiktoken has no encoding for: o200k_base
}
UNKNOWN_ERROR_BAND = 0.25


def default_error_band(model: ModelInfo | None) -> float:
    """The documented error band of an estimate for this model's family (whose tokenizer counts it, so a
    host's copy of a model has its maker's band); 0 for exact counts."""
    if model is None or model.count_method != "estimate":
        return 0.0
    return DEFAULT_ERROR_BANDS.get(model.family or model.provider, UNKNOWN_ERROR_BAND)


# --- encodings, copied from tiktoken_ext/openai_public.py (tiktoken 0.14) ------------------------

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_HARMONY_SPECIAL = {
    _ENDOFTEXT: 199999,
    _ENDOFPROMPT: 200018,
    "<|startoftext|>": 199998,
    "<|reserved_200000|>": 200000,
    "<|reserved_200001|>": 200001,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|reserved_200004|>": 200004,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|reserved_200009|>": 200009,
    "<|reserved_200010|>": 200010,
    "<|reserved_200011|>": 200011,
    "<|call|>": 200012,
} | {f"<|reserved_{i}|>": i for i in range(200013, 201088)}

# SHA-256 of each bundled rank file: the same values tiktoken pins for its downloads.
_RANK_FILES = {
    "r50k_base": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


@dataclass(frozen=True)
class _EncodingSpec:
    rank_file: str
    pat_str: str
    special_tokens: dict[str, int]
    explicit_n_vocab: int | None = None


_SPECS = {
    "r50k_base": _EncodingSpec("r50k_base", _R50K_PAT, {_ENDOFTEXT: 50256}, 50257),
    "p50k_base": _EncodingSpec("p50k_base", _R50K_PAT, {_ENDOFTEXT: 50256}, 50281),
    "p50k_edit": _EncodingSpec(
        "p50k_base",
        _R50K_PAT,
        {_ENDOFTEXT: 50256, _FIM_PREFIX: 50281, _FIM_MIDDLE: 50282, _FIM_SUFFIX: 50283},
    ),
    "cl100k_base": _EncodingSpec(
        "cl100k_base",
        _CL100K_PAT,
        {
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _EncodingSpec("o200k_base", _O200K_PAT, {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018}),
    "o200k_harmony": _EncodingSpec("o200k_base", _O200K_PAT, _O200K_HARMONY_SPECIAL),
}
ENCODINGS: tuple[str, ...] = tuple(sorted(_SPECS))

_loaded: dict[str, tiktoken.Encoding] = {}
_load_lock = threading.Lock()


def _read_ranks(rank_file: str) -> dict[bytes, int]:
    """Return the mergeable ranks of a bundled `.tiktoken` file, after checking its pinned SHA-256.

    This parses the file the way `tiktoken.load.load_tiktoken_bpe` does, but from bytes we read
    ourselves: given a path, tiktoken copies the file into its download cache directory (and fails
    if that directory is read-only), and we promise never to touch that cache.
    """
    contents = rank_file_bytes(rank_file)
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


def rank_file_bytes(rank_file: str) -> bytes:
    """The contents of a bundled `.tiktoken` rank file, after checking its pinned SHA-256."""
    resource = importlib.resources.files("tokenledger") / "data" / "tiktoken" / f"{rank_file}.tiktoken"
    contents = resource.read_bytes()
    if hashlib.sha256(contents).hexdigest() != _RANK_FILES[rank_file]:
        raise RuntimeError(f"bundled {rank_file}.tiktoken does not match its pinned SHA-256; reinstall")
    return contents


def pinned_rank_files() -> dict[str, str]:
    """Each bundled rank file's pinned SHA-256, by name."""
    return dict(_RANK_FILES)


def encoding_source(name: str) -> tuple[str, str]:
    """The rank file and the tiktoken (Rust regex) pattern of an encoding."""
    spec = _SPECS.get(name)
    if spec is None:
        raise UnknownEncoding(name, ENCODINGS)
    return spec.rank_file, spec.pat_str


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the bundled encoding `name`, loading it on first use (once per process, thread-safe)."""
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    spec = _SPECS.get(name)
    if spec is None:
        raise UnknownEncoding(name, ENCODINGS)
    with _load_lock:
        encoding = _loaded.get(name)
        if encoding is None:
            encoding = tiktoken.Encoding(
                name=name,
                pat_str=spec.pat_str,
                mergeable_ranks=_read_ranks(spec.rank_file),
                special_tokens=spec.special_tokens,
                explicit_n_vocab=spec.explicit_n_vocab,
            )
            _loaded[name] = encoding
    return encoding


# --- overhead rules ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Overheads:
    """OpenAI's published per-message and per-tool token overheads for one model family."""

    per_message: int = 3
    per_name: int = 1
    reply_priming: int = 3  # every reply is primed with <|start|>assistant<|message|>
    func_init: int = 7
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


_GPT4O_RULES = _Overheads()
_GPT4_RULES = _Overheads(func_init=10)
_GPT35_0301_RULES = _Overheads(per_message=4, per_name=-1, func_init=10)
# gpt-3.5 and gpt-4 (incl. gpt-4-turbo), but not gpt-4o, gpt-4.1 or gpt-4.5: the char after "4" decides.
_GPT4_FAMILY = re.compile(r"^(?:[\w.-]+/)?gpt-(?:3\.5|4)(?:-|$)", re.IGNORECASE)


def _overheads(model: ModelInfo | None) -> _Overheads:
    """Return the overhead rules for a model: gpt-3.5/gpt-4 rules for that family, gpt-4o rules otherwise.

    The gpt-4o rules cover gpt-4o, gpt-4.1, gpt-5 and the o-series, and are also the base of the
    estimate for non-OpenAI models and for counts by encoding alone.
    """
    if model is None:
        return _GPT4O_RULES
    name = model.name.lower()
    if name.endswith("gpt-3.5-turbo-0301"):
        return _GPT35_0301_RULES
    return _GPT4_RULES if _GPT4_FAMILY.match(name) else _GPT4O_RULES


# --- the counter ---------------------------------------------------------------------------------


class _Encoder(Protocol):
    """A tiktoken encoding, or a model's own tokenizer (`tokenizers.ExactTokenizer`)."""

    def encode_ordinary(self, text: str) -> list[int]: ...


@dataclass
class _MethodStats:
    calls: int = 0
    seconds: float = 0.0


class TokenCounter:
    """Counts tokens with a bounded LRU cache; one per process, shared by threads.

    The cache is keyed by (encoding, text): Python caches a str's hash on the object, so a repeated
    text costs one dict lookup. Because the key holds the text, memory is bounded by total characters,
    and texts longer than `max_cached_chars` are never cached (hashing them costs time for no likely hit).
    `stats()` counters are exact single-threaded and may miss an increment under heavy concurrency.
    """

    def __init__(
        self,
        *,
        max_entries: int = 4096,
        max_total_chars: int = 16_000_000,
        max_cached_chars: int = 65_536,
        batch_threads: int | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_total_chars = max_total_chars
        self.max_cached_chars = max_cached_chars
        self.batch_threads = batch_threads or min(8, os.cpu_count() or 1)
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._cached_chars = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._uncached = 0
        self._methods: dict[str, _MethodStats] = {}

    # -- public API --

    def count_text(
        self, text: str, *, model: ModelInfo | None = None, encoding: str | None = None
    ) -> TokenCount:
        """Return the tokens in `text`; special-token strings such as `<|endoftext|>` count as plain text."""
        started = time.perf_counter()
        _require_str(text, "text")
        exact = _exact(model, encoding)
        if exact is not None:
            tokens = self._count(exact.name, exact, text)
            result = TokenCount(tokens=tokens, method="exact", encoding=exact.name, model=_name(model))
        else:
            name, enc = _pick_encoding(model, encoding)
            result = _result(self._count(name, enc, text), model, name)
        self._record("count_text", started)
        return result

    def count_texts(
        self, texts: Sequence[str], *, model: ModelInfo | None = None, encoding: str | None = None
    ) -> TokenCount:
        """Return the total tokens of `texts` with `per_text`, encoding cache misses on threads.

        For estimated models each text is estimated (rounded up) and `tokens` is their sum.
        """
        started = time.perf_counter()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts", texts, "give a list of strings")
        for index, text in enumerate(texts):
            _require_str(text, f"texts[{index}]")
        exact = _exact(model, encoding)
        if exact is not None:
            per_text = [self._count(exact.name, exact, text) for text in texts]
            self._record("count_texts", started)
            name = exact.name
            return TokenCount(
                tokens=sum(per_text), method="exact", encoding=name, model=_name(model), per_text=per_text
            )
        name, enc = _pick_encoding(model, encoding)
        counts: list[int | None] = [self._cached(name, text) for text in texts]
        missing = [index for index, count in enumerate(counts) if count is None]
        encoded: list[list[int]] = []
        if len(missing) == 1:  # a thread pool costs more than it saves for one text
            encoded = [enc.encode_ordinary(texts[missing[0]])]
        elif missing:
            encoded = enc.encode_ordinary_batch([texts[i] for i in missing], num_threads=self.batch_threads)
        for index, tokens in zip(missing, encoded, strict=True):
            counts[index] = len(tokens)
            self._store((name, texts[index]), len(tokens))
        per_text = [_scale(count or 0, model) for count in counts]
        method = _method(model)
        result = TokenCount(
            tokens=sum(per_text),
            method=method,
            encoding=name,
            model=_name(model),
            per_text=per_text,
            error_band=default_error_band(model),
            warnings=_estimate_warnings(model),
        )
        self._record("count_texts", started)
        return result

    def count_messages(
        self,
        messages: Sequence[ChatMessage | Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        model: ModelInfo | None = None,
        encoding: str | None = None,
    ) -> TokenCount:
        """Return the prompt tokens of an OpenAI chat request: messages, their overheads, and tools.

        Follows OpenAI's cookbook: 3 tokens per message, 1 per `name`, 3 to prime the reply
        (gpt-3.5-turbo-0301: 4 and -1), plus `num_tokens_for_tools` when tools are given. Every
        string field of a message is counted (as the cookbook does); non-text content parts
        (images, audio, files) are listed in `not_counted`; `tool_calls` and other structured
        fields are counted as their compact JSON, an approximation of how OpenAI renders them.
        """
        started = time.perf_counter()
        name, enc = _pick_encoding(model, encoding)
        rules = _overheads(model)
        not_counted: list[str] = []
        total = rules.reply_priming
        for index, message in enumerate(_require_list(messages, "messages")):
            total += self._message_tokens(name, enc, rules, message, index, not_counted)
        if tools:
            total += self._tools_tokens(name, enc, rules, tools, not_counted)
        result = _result(total, model, name, not_counted)
        exact = _exact(model, encoding)
        if exact is not None:  # validated above, and estimated in case the tokenizer refuses the shape
            result = self._exact_chat(exact, messages, tools, result)
        self._record("count_messages", started)
        return result

    def _exact_chat(
        self,
        exact: tokenizers.ExactTokenizer,
        messages: Sequence[ChatMessage | Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        estimate: TokenCount,
    ) -> TokenCount:
        """The chat request's tokens as the model's own tokenizer renders it, cached by its JSON; the
        estimate, with a warning, when the tokenizer's rules refuse the conversation."""
        converted, not_counted = tokenizers.text_only_messages([_as_dict(m) for m in messages])
        tool_list = [dict(tool) for tool in tools] if tools else None
        key = (f"{exact.name}/chat", json.dumps([converted, tool_list], sort_keys=True, default=str))
        tokens = self._cached(*key)
        if tokens is None:
            tokens = exact.count_chat(converted, tool_list)
            if tokens is None:
                warning = f"{exact.name} cannot render this conversation (e.g. it must end with a user turn)"
                return estimate.model_copy(update={"warnings": [*estimate.warnings, warning + "; estimated"]})
            self._store(key, tokens)
        return TokenCount(
            tokens=tokens, method="exact", encoding=exact.name, model=estimate.model, not_counted=not_counted
        )

    def count_tools(
        self,
        tools: Sequence[Mapping[str, Any]],
        *,
        model: ModelInfo | None = None,
        encoding: str | None = None,
    ) -> TokenCount:
        """Return the tokens that tool (function) definitions add to a request, by OpenAI's published rule.

        The rule counts each function's name and description and each top-level property's name, type,
        description and enum values; nested schemas are not part of the published rule.
        """
        started = time.perf_counter()
        name, enc = _pick_encoding(model, encoding)
        not_counted: list[str] = []
        tokens = self._tools_tokens(name, enc, _overheads(model), tools, not_counted)
        result = _result(tokens, model, name, not_counted)
        self._record("count_tools", started)
        return result

    def fit_messages(
        self,
        messages: Sequence[ChatMessage | Mapping[str, Any]],
        model: ModelInfo,
        max_tokens: int = 0,
        *,
        keep_system: bool = True,
        keep_last: int = 1,
    ) -> FitResult:
        """Return the conversation with the oldest turns dropped until input + `max_tokens` fits the window.

        System messages (if `keep_system`) and the last `keep_last` messages are never dropped. An
        assistant message with `tool_calls` and the `tool` results that follow it are dropped together,
        so no tool result is left without its call. If even that is too long, `fits` is False and the
        result holds what remains.
        """
        started = time.perf_counter()
        if model.context_window is None:
            raise InvalidInput("model", model.name, "it has no known context window to fit into")
        _require_count(max_tokens, "max_tokens")
        _require_count(keep_last, "keep_last")
        name, enc = _pick_encoding(model, None)
        rules = _overheads(model)
        items = _require_list(messages, "messages")
        not_counted: list[str] = []  # fitting needs only the sizes
        sizes = [
            self._message_tokens(name, enc, rules, message, index, not_counted)
            for index, message in enumerate(items)
        ]
        dicts = [_as_dict(message) for message in items]
        raw_total = sum(sizes) + rules.reply_priming
        original = _scale(raw_total, model)
        protected = set(range(max(0, len(dicts) - keep_last), len(dicts)))
        if keep_system:
            protected |= {i for i, message in enumerate(dicts) if message.get("role") == "system"}
        dropped: set[int] = set()
        for group in _turn_groups(dicts):
            if _scale(raw_total, model) + max_tokens <= model.context_window:
                break
            if protected.isdisjoint(group):
                dropped.update(group)
                raw_total -= sum(sizes[i] for i in group)
        tokens = _scale(raw_total, model)
        result = FitResult(
            messages=[message for i, message in enumerate(dicts) if i not in dropped],
            dropped=len(dropped),
            tokens=tokens,
            original_tokens=original,
            context_window=model.context_window,
            fits=tokens + max_tokens <= model.context_window,
            method=_method(model),
            encoding=name,
        )
        self._record("fit_messages", started)
        return result

    def stats(self) -> dict[str, Any]:
        """Return the counter's cache size and hit/miss counts, and calls and seconds per method."""
        with self._lock:
            return {
                "calls": sum(entry.calls for entry in self._methods.values()),
                "cache_hits": self._hits,
                "cache_misses": self._misses,
                "uncached": self._uncached,
                "cache_entries": len(self._cache),
                "cache_chars": self._cached_chars,
                "methods": {
                    method: {"calls": entry.calls, "seconds": entry.seconds}
                    for method, entry in sorted(self._methods.items())
                },
            }

    def record(self, method: str, seconds: float) -> None:
        """Count a call made elsewhere (counting in the database: "pg_tiktoken") in `stats()`."""
        entry = self._methods.get(method) or self._methods.setdefault(method, _MethodStats())
        entry.calls += 1
        entry.seconds += seconds

    def clear_cache(self) -> None:
        """Empty the cache (counters are kept)."""
        with self._lock:
            self._cache.clear()
            self._cached_chars = 0

    # -- internals --

    def _count(self, name: str, enc: _Encoder, text: str) -> int:
        """Return the raw token count of one text, from the cache when possible."""
        # `_cached` and `_store` inlined: this runs for every text and every message field.
        if len(text) > self.max_cached_chars:
            self._uncached += 1
            return len(enc.encode_ordinary(text))
        key = (name, text)
        tokens = self._cache.get(key)
        if tokens is not None:
            self._hits += 1
            try:  # noqa: SIM105 (contextlib.suppress costs more than a hit)
                self._cache.move_to_end(key)
            except KeyError:  # evicted by another thread since `get`
                pass
            return tokens
        self._misses += 1
        tokens = len(enc.encode_ordinary(text))
        self._store(key, tokens)
        return tokens

    # Reads and stat increments take no lock: each OrderedDict operation is atomic, a key evicted
    # between `get` and `move_to_end` is harmless, and a lost increment under contention only blurs
    # a statistic. Writes take the lock, since eviction must keep `_cached_chars` right.

    def _cached(self, name: str, text: str) -> int | None:
        """Return the cached count of `text`, or None (counted as a miss unless it is too long to cache)."""
        if len(text) > self.max_cached_chars:
            return None
        key = (name, text)
        tokens = self._cache.get(key)
        if tokens is None:
            self._misses += 1
            return None
        self._hits += 1
        try:  # noqa: SIM105
            self._cache.move_to_end(key)
        except KeyError:
            pass
        return tokens

    def _store(self, key: tuple[str, str], tokens: int) -> None:
        size = len(key[1])
        if size > self.max_cached_chars:
            self._uncached += 1
            return
        cache = self._cache
        with self._lock:
            entries = len(cache)
            cache[key] = tokens
            if len(cache) == entries:  # another thread stored it first
                return
            self._cached_chars += size
            while len(cache) > self.max_entries or self._cached_chars > self.max_total_chars:
                (_, evicted), _ = cache.popitem(last=False)
                self._cached_chars -= len(evicted)

    def _record(self, method: str, started: float) -> None:
        entry = self._methods.get(method) or self._methods.setdefault(method, _MethodStats())
        entry.calls += 1
        entry.seconds += time.perf_counter() - started

    def _message_tokens(
        self,
        name: str,
        enc: tiktoken.Encoding,
        rules: _Overheads,
        message: ChatMessage | Mapping[str, Any],
        index: int,
        not_counted: list[str],
    ) -> int:
        """Return one message's raw tokens with its overhead; non-text parts go to `not_counted`."""
        # Plain dicts first: this loop is the hot path of chat counting.
        if isinstance(message, dict | Mapping):
            if "role" not in message:
                raise InvalidInput(f"messages[{index}].role", None, "every message needs a role")
            fields: Iterable[tuple[str, Any]] = message.items()
        elif isinstance(message, ChatMessage):
            fields = (("role", message.role), ("content", message.content), ("name", message.name))
            if message.model_extra:
                fields = (*fields, *message.model_extra.items())
        else:
            raise InvalidInput(f"messages[{index}]", message, "give a message object with role and content")
        tokens = rules.per_message
        for key, value in fields:
            if value is None:
                continue
            if key == "content" and not isinstance(value, str):
                tokens += self._parts_tokens(name, enc, value, index, not_counted)
                continue
            if not isinstance(value, str):
                if key in ("role", "name"):
                    raise InvalidInput(f"messages[{index}].{key}", value, "give a string")
                value = json.dumps(value, separators=(",", ":"))
            if key == "name":
                tokens += rules.per_name
            tokens += self._count(name, enc, value)
        return tokens

    def _parts_tokens(
        self, name: str, enc: tiktoken.Encoding, content: object, index: int, not_counted: list[str]
    ) -> int:
        """Return the tokens of a list of content parts; non-text parts go to `not_counted`."""
        where = f"messages[{index}].content"
        if not isinstance(content, list):
            raise InvalidInput(where, content, "give a string, a list of content parts, or null")
        tokens = 0
        for part_index, part in enumerate(content):
            part_where = f"{where}[{part_index}]"
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                raise InvalidInput(part_where, part, 'give an object with a "type"')
            if part["type"] in ("text", "input_text", "output_text"):
                text = _require_str(part.get("text"), f"{part_where}.text")
                tokens += self._count(name, enc, text)
            else:
                not_counted.append(f"{part_where}: {part['type']}")
        return tokens

    def _tools_tokens(
        self,
        name: str,
        enc: tiktoken.Encoding,
        rules: _Overheads,
        tools: Sequence[Mapping[str, Any]],
        not_counted: list[str],
    ) -> int:
        """Return the cookbook's `num_tokens_for_tools` for these definitions (0 when there are none).

        Built-in tools (`web_search`, `file_search`, ...) have no published rule: they go to `not_counted`.
        """
        tokens = 0
        for index, tool in enumerate(_require_list(tools, "tools")):
            where = f"tools[{index}]"
            if not isinstance(tool, Mapping):
                raise InvalidInput(where, tool, "give a tool definition object")
            if tool.get("type", "function") != "function":
                not_counted.append(f"{where}: {tool.get('type')}")
                continue
            # Chat Completions nests the function; the legacy `functions` list and Responses do not.
            function = tool.get("function", tool)
            if "function" in tool:
                where += ".function"
            if not isinstance(function, Mapping):
                raise InvalidInput(where, function, "give a function definition object")
            tokens += rules.func_init
            function_name = function.get("name")
            _require_str(function_name, f"{where}.name")
            description = _optional_str(function.get("description"), f"{where}.description")
            tokens += self._count(name, enc, f"{function_name}:{description.removesuffix('.')}")
            parameters = function.get("parameters") or {}
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if properties is None:
                properties = {}
            if not isinstance(properties, Mapping):
                raise InvalidInput(f"{where}.parameters.properties", properties, "give an object")
            if properties:
                tokens += rules.prop_init
                for key, schema in properties.items():
                    prop_where = f"{where}.parameters.properties.{key}"
                    if not isinstance(schema, Mapping):
                        raise InvalidInput(prop_where, schema, "give a JSON schema object")
                    tokens += rules.prop_key
                    enum = schema.get("enum")
                    if enum is not None:
                        if not isinstance(enum, list):
                            raise InvalidInput(f"{prop_where}.enum", enum, "give a list")
                        tokens += rules.enum_init
                        for item in enum:
                            tokens += rules.enum_item + self._count(name, enc, str(item))
                    prop_type = schema.get("type", "")
                    if not isinstance(prop_type, str):  # e.g. ["string", "null"]
                        prop_type = ",".join(map(str, prop_type)) if isinstance(prop_type, list) else ""
                    prop_description = _optional_str(schema.get("description"), f"{prop_where}.description")
                    line = f"{key}:{prop_type}:{prop_description.removesuffix('.')}"
                    tokens += self._count(name, enc, line)
        return tokens + rules.func_end if tokens else 0


# --- helpers -------------------------------------------------------------------------------------


def _pick_encoding(model: ModelInfo | None, encoding: str | None) -> tuple[str, tiktoken.Encoding]:
    """Return the encoding's name and object: `encoding` if given, else the model's, else o200k_base."""
    name = encoding or (model.encoding if model is not None else DEFAULT_ENCODING)
    return name, get_encoding(name)


def _exact(model: ModelInfo | None, encoding: str | None) -> tokenizers.ExactTokenizer | None:
    """The model's own tokenizer, for a model the catalog estimates, unless an encoding was asked for."""
    if model is None or encoding is not None or model.count_method != "estimate":
        return None
    return tokenizers.exact_tokenizer(model)


def _estimate_warnings(model: ModelInfo | None) -> list[str]:
    """Why a model that has an exact tokenizer was estimated here (its package is not installed)."""
    if model is None or model.count_method != "estimate":
        return []
    reason = tokenizers.unavailable_reason(model)
    return [f"{model.name}: estimated, not exact: {reason}"] if reason else []


def _method(model: ModelInfo | None) -> Method:
    return "estimate" if model is not None and model.count_method == "estimate" else "exact"


def _scale(tokens: int, model: ModelInfo | None) -> int:
    """Return `tokens` as the model counts them: unchanged when exact, ceil(tokens * factor) if estimated."""
    if model is None or model.count_method != "estimate":
        return tokens
    return math.ceil(tokens * model.estimate_factor)


def _name(model: ModelInfo | None) -> str | None:
    return model.name if model is not None else None


def _result(
    tokens: int, model: ModelInfo | None, name: str, not_counted: list[str] | None = None
) -> TokenCount:
    if model is None and not not_counted:  # the common case, built with the fewest fields to validate
        return TokenCount(tokens=tokens, method="exact", encoding=name)
    return TokenCount(
        tokens=_scale(tokens, model),
        method=_method(model),
        encoding=name,
        model=_name(model),
        not_counted=not_counted or [],
        error_band=default_error_band(model),
        warnings=_estimate_warnings(model),
    )


def _require_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(where, value, "give a string")
    return value


def _optional_str(value: object, where: str) -> str:
    if value is None:
        return ""
    return _require_str(value, where)


def _require_count(value: object, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(where, value, "give a non-negative integer")


def _require_list(value: object, where: str) -> Sequence[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise InvalidInput(where, value, "give a list")
    return value


def _as_dict(message: ChatMessage | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(message, ChatMessage):
        return message.model_dump(exclude_none=True)
    return dict(message)


def _turn_groups(messages: list[dict[str, Any]]) -> list[list[int]]:
    """Return message indices grouped into droppable turns, oldest first.

    A `tool` message joins the group before it, so a tool call and its results go together.
    """
    groups: list[list[int]] = []
    for index, message in enumerate(messages):
        if message.get("role") == "tool" and groups:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def context_fit(tokens: int, model: ModelInfo, max_output_tokens: int | None = None) -> ContextFit:
    """Return how `tokens` of input plus `max_output_tokens` of output sit in the model's context window.

    `percent_used` and `remaining_context` count both input and the output reserved; all fields are
    None when the model's window is unknown.
    """
    _require_count(tokens, "tokens")
    output = max_output_tokens or 0
    _require_count(output, "max_output_tokens")
    window = model.context_window
    if window is None:
        return ContextFit(context_window=None, remaining_context=None, fits=None, percent_used=None)
    used = tokens + output
    return ContextFit(
        context_window=window,
        remaining_context=window - used,
        fits=used <= window,
        percent_used=round(100 * used / window, 2) if window else None,
    )


# --- module-level convenience: a lazily created default counter ----------------------------------

_default: TokenCounter | None = None
_default_lock = threading.Lock()


def default_counter() -> TokenCounter:
    """Return the process-wide counter used by the module-level functions, creating it on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = TokenCounter()
    return _default


def count_text(text: str, *, model: ModelInfo | None = None, encoding: str | None = None) -> TokenCount:
    """Return the tokens in `text` (see `TokenCounter.count_text`)."""
    return default_counter().count_text(text, model=model, encoding=encoding)


def count_texts(
    texts: Sequence[str], *, model: ModelInfo | None = None, encoding: str | None = None
) -> TokenCount:
    """Return the total and per-text tokens of `texts` (see `TokenCounter.count_texts`)."""
    return default_counter().count_texts(texts, model=model, encoding=encoding)


def count_messages(
    messages: Sequence[ChatMessage | Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    model: ModelInfo | None = None,
    encoding: str | None = None,
) -> TokenCount:
    """Return the prompt tokens of a chat request (see `TokenCounter.count_messages`)."""
    return default_counter().count_messages(messages, tools=tools, model=model, encoding=encoding)


def count_tools(
    tools: Sequence[Mapping[str, Any]], *, model: ModelInfo | None = None, encoding: str | None = None
) -> TokenCount:
    """Return the tokens tool definitions add to a request (see `TokenCounter.count_tools`)."""
    return default_counter().count_tools(tools, model=model, encoding=encoding)


def fit_messages(
    messages: Sequence[ChatMessage | Mapping[str, Any]],
    model: ModelInfo,
    max_tokens: int = 0,
    *,
    keep_system: bool = True,
    keep_last: int = 1,
) -> FitResult:
    """Return the conversation trimmed to fit the model's window (see `TokenCounter.fit_messages`)."""
    return default_counter().fit_messages(
        messages, model, max_tokens, keep_system=keep_system, keep_last=keep_last
    )
