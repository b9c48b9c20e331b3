"""The bundled model catalog: context windows, counting rules and per-token USD prices, and costs.

The catalog is a dated snapshot of litellm's public price list (`data/catalog.json`, built by
`scripts/update_catalog.py`), read once on first use. Names resolve case-insensitively, through
aliases, provider prefixes (`openai/gpt-4o`, `gemini/gemini-2.5-pro`), fine-tune ids
(`ft:gpt-4o-mini-2024-07-18:org::id`) and dated or `-latest` names whose base model is listed.

Token conventions of `cost` (the same for every provider):
- `input_tokens` are uncached input tokens; cache reads and cache writes are counted separately
  (Anthropic's convention) and priced at their own rates, or at the input rate where the provider
  publishes none, so a missing rate over-charges, never under-charges;
- `reasoning_output_tokens` are part of `output_tokens` (OpenAI's convention) and priced at the
  reasoning rate where one is published, else at the output rate;
- a model without an input or output price is unpriced: its cost is None, never $0.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from importlib import resources
from pathlib import Path
from typing import Any

from tokenledger.errors import InvalidInput, UnknownModel
from tokenledger.types import CostBreakdown, ModelInfo, Price

# Prefixes callers put before a model name (litellm, OpenRouter, Hugging Face style) -> our provider.
PROVIDER_PREFIXES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "mistral": "mistral",
    "mistralai": "mistral",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "deepseek": "deepseek",
    "xai": "xai",
    "x-ai": "xai",
    "meta": "meta",
    "meta_llama": "meta",
    "meta-llama": "meta",
}
# Dated snapshots (-2024-08-06, -20250929, @20251101, -0125, -09-2025) and -latest pointers.
_VERSION_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{4}|\d{4})|-latest)$")
_TOKENS_ALLOWED = "a whole number of tokens, 0 or more"


@dataclass(frozen=True)
class Snapshot:
    """Where the bundled prices come from and when they were taken."""

    date: date
    source: str
    version: str  # the litellm release the snapshot was read from
    models: int


@dataclass(frozen=True)
class _Index:
    snapshot: Snapshot
    models: dict[str, ModelInfo]  # lower-cased name -> entry, in catalog order
    aliases: dict[str, str]  # lower-cased alias -> lower-cased name


def _bundled_path() -> Path:
    return Path(str(resources.files("tokenledger") / "data" / "catalog.json"))


def _load(path: Path) -> _Index:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    rules: dict[str, str] = document.get("rules", {})
    models: dict[str, ModelInfo] = {}
    aliases: dict[str, str] = {}
    for entry in document["models"]:
        price = Price(**{field: Decimal(text) for field, text in entry.get("price", {}).items()})
        rule = entry.get("estimate_rule")
        info = ModelInfo(**{**entry, "price": price, "estimate_rule": rules.get(rule, rule)})
        key = info.name.lower()
        models[key] = info
        for alias in info.aliases:
            aliases.setdefault(alias.lower(), key)
    meta = document["snapshot"]
    snapshot = Snapshot(
        date=date.fromisoformat(meta["date"]),
        source=meta["source"],
        version=meta.get("litellm_version", ""),
        models=len(models),
    )
    return _Index(snapshot=snapshot, models=models, aliases=aliases)


def _candidates(key: str) -> list[str]:
    """Return the names to try for a lower-cased model name, most specific first."""
    names = [key]
    prefix, slash, rest = key.partition("/")
    if slash and prefix in PROVIDER_PREFIXES:
        names.append(rest)
    bare = names[-1]
    if bare.startswith("ft:") and bare.count(":") > 1:
        # ft:BASE:org:suffix:id is priced as the fine-tuned BASE; never as BASE itself (it costs more).
        names.append(":".join(bare.split(":")[:2]))
    undated = _VERSION_SUFFIX.sub("", names[-1])
    if undated != names[-1]:
        names.append(undated)
    return names


def _tokens(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(field, value, _TOKENS_ALLOWED)
    return value


def cost(
    price: Price,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    reasoning_output_tokens: int = 0,
) -> CostBreakdown:
    """Return the exact USD cost of one request at `price`, by part; cost None if unpriced.

    Conventions (see the module docstring): `input_tokens` exclude cache reads and writes, which are
    priced at their own rates (else the input rate); `reasoning_output_tokens` are part of
    `output_tokens`, priced at the reasoning rate (else the output rate). `output_usd` covers the
    output other than reasoning, so the parts add up to `cost_usd`.
    """
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "reasoning_output_tokens": reasoning_output_tokens,
    }
    for field, value in counts.items():
        _tokens(field, value)
    if reasoning_output_tokens > output_tokens:
        raise InvalidInput(
            "reasoning_output_tokens",
            reasoning_output_tokens,
            f"at most output_tokens ({output_tokens}): reasoning tokens are part of the output",
        )
    if price.input is None or price.output is None:
        return CostBreakdown(cost_usd=None, priced=False)
    cache_read_rate = price.input if price.cache_read is None else price.cache_read
    cache_write_rate = price.input if price.cache_write is None else price.cache_write
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    charges = {
        "input_usd": (input_tokens, price.input),
        "output_usd": (output_tokens - reasoning_output_tokens, price.output),
        "cache_read_usd": (cache_read_input_tokens, cache_read_rate),
        "cache_write_usd": (cache_creation_input_tokens, cache_write_rate),
        "reasoning_usd": (reasoning_output_tokens, reasoning_rate),
    }
    # Enough precision that token count x per-token price is never rounded.
    with localcontext(prec=60):
        parts = {part: tokens * rate if tokens else Decimal(0) for part, (tokens, rate) in charges.items()}
        total = sum(parts.values(), Decimal(0))
    return CostBreakdown(cost_usd=total, priced=True, **parts)


class Catalog:
    """Models and prices from a catalog file (the bundled snapshot by default), loaded on first use."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path

    # Pricing needs no catalog data; offered here too so code holding a Catalog can price with it.
    cost = staticmethod(cost)

    @functools.cached_property
    def _index(self) -> _Index:
        return _load(self._path or _bundled_path())

    @property
    def snapshot(self) -> Snapshot:
        """Return the snapshot's date, source and litellm version."""
        return self._index.snapshot

    def providers(self) -> list[str]:
        """Return the providers in the catalog, sorted."""
        return sorted({model.provider for model in self._index.models.values()})

    def model_names(self) -> frozenset[str]:
        """Return the canonical name of every model in the catalog (aliases excluded)."""
        return frozenset(model.name for model in self._index.models.values())

    def resolve(self, name: str) -> ModelInfo:
        """Return the entry for a model name, alias, dated or provider-prefixed name.

        Raises UnknownModel, listing up to five close names, when nothing matches.
        """
        key = name.strip().lower()
        if not key:
            raise InvalidInput("model", name, "a model name is required")
        index = self._index
        for candidate in _candidates(key):
            found = index.models.get(candidate) or index.models.get(index.aliases.get(candidate, ""))
            if found is not None:
                # A copy: callers may adjust an entry (a tenant's price) without touching the catalog.
                return found.model_copy(deep=True)
        known = [*index.models, *index.aliases]
        close = difflib.get_close_matches(_candidates(key)[-1], known, n=10, cutoff=0.5)
        names = dict.fromkeys(index.models[index.aliases.get(match, match)].name for match in close)
        raise UnknownModel(name, list(names)[:5])

    def search(self, query: str = "", provider: str | None = None, limit: int = 50) -> list[ModelInfo]:
        """Return up to `limit` models whose name, alias or provider contains every word of `query`.

        Exact and prefix matches of the whole query come first, then the rest by provider and name.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit", limit, "a whole number, 1 or more")
        wanted = self._provider(provider) if provider is not None else None
        phrase = query.strip().lower()
        words = phrase.split()
        found = []
        for key, model in self._index.models.items():
            if wanted is not None and model.provider != wanted:
                continue
            haystack = " ".join([key, model.provider, *model.aliases]).lower()
            if all(word in haystack for word in words):
                found.append(model)
        found.sort(
            key=lambda model: (
                model.name.lower() != phrase,
                not model.name.lower().startswith(phrase),
                model.provider,
                model.name.lower(),
            )
        )
        return [model.model_copy(deep=True) for model in found[:limit]]

    def cheapest(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        max_cost_usd: Decimal | None = None,
        provider: str | None = None,
        exclude: str | None = None,
    ) -> ModelInfo | None:
        """Return the cheapest priced model that fits the request and `max_cost_usd`, or None.

        Fits: the context window holds input + output and the max output holds output. Models with
        no published context window are skipped, since a fit cannot be shown.
        """
        _tokens("input_tokens", input_tokens)
        _tokens("output_tokens", output_tokens)
        wanted = self._provider(provider) if provider is not None else None
        excluded = self._excluded(exclude)
        best: tuple[Decimal, str] | None = None
        for key, model in self._index.models.items():
            if key in excluded or not model.price.priced or model.context_window is None:
                continue
            if wanted is not None and model.provider != wanted:
                continue
            if model.context_window < input_tokens + output_tokens:
                continue
            if model.max_output_tokens is not None and model.max_output_tokens < output_tokens:
                continue
            usd = cost(model.price, input_tokens=input_tokens, output_tokens=output_tokens).cost_usd
            if usd is None or (max_cost_usd is not None and usd > max_cost_usd):
                continue
            if best is None or (usd, key) < best:
                best = (usd, key)
        return None if best is None else self._index.models[best[1]].model_copy(deep=True)

    def _provider(self, provider: str) -> str:
        name = provider.strip().lower()
        name = PROVIDER_PREFIXES.get(name, name)
        known = self.providers()
        if name not in known:
            raise InvalidInput("provider", provider, f"one of: {', '.join(known)}")
        return name

    def _excluded(self, exclude: str | None) -> set[str]:
        if not exclude:
            return set()
        keys = {exclude.strip().lower()}
        with contextlib.suppress(InvalidInput):  # not in the catalog: nothing more to leave out
            keys.add(self.resolve(exclude).name.lower())
        return keys


@functools.cache
def default_catalog() -> Catalog:
    """Return the process-wide catalog of the bundled snapshot (created on first call)."""
    return Catalog()


def resolve(name: str) -> ModelInfo:
    """Return the bundled catalog's entry for `name`; see `Catalog.resolve`."""
    return default_catalog().resolve(name)


def search(query: str = "", provider: str | None = None, limit: int = 50) -> list[ModelInfo]:
    """Return matching models from the bundled catalog; see `Catalog.search`."""
    return default_catalog().search(query, provider=provider, limit=limit)


def cheapest(
    input_tokens: int,
    output_tokens: int,
    *,
    max_cost_usd: Decimal | None = None,
    provider: str | None = None,
    exclude: str | None = None,
) -> ModelInfo | None:
    """Return the bundled catalog's cheapest model for the request; see `Catalog.cheapest`."""
    return default_catalog().cheapest(
        input_tokens, output_tokens, max_cost_usd=max_cost_usd, provider=provider, exclude=exclude
    )
