"""The bundled model catalog: context windows, counting rules and dated per-token USD prices.

The catalog is built from a series of litellm releases' public price lists (`data/catalog.json`, by
`scripts/update_catalog.py`) and read once on first use; each model's entry is built when first asked
for. Every price carries the date it came into force, so usage is costed at the price of its own time
(`price_at`); a model the newest release no longer lists is `retired` and keeps its last price.

Names resolve case-insensitively, through aliases, first-party prefixes (`openai/gpt-4o`,
`gemini/gemini-2.5-pro`), fine-tune ids (`ft:gpt-4o-mini-2024-07-18:org::id`), dated or `-latest`
names whose base model is listed, and hosted or routed names (`azure/`, `bedrock/`, `vertex_ai/`,
`openrouter/`, ...): the host's own entry where the price list has one, else the model it serves at
its maker's price, with a warning. Local runtimes (`ollama/`, `lm_studio/`, `vllm/`, ...) are priced
$0 as local. Costs: see `tokenledger.pricing`.

Catalog updates (`tokenledger catalog update`, stored in the database) are applied over the bundled
catalog, oldest first: a model an update lists gets a new dated price from the update's moment where its
price changed (earlier prices stay as they were), a model it adds joins the catalog, and a model of a
provider it covers that it no longer lists is retired. An update dated before the bundled snapshot is
superseded by it (a newer release already carries newer prices) and left out.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from tokenledger.errors import InvalidInput, UnknownModel
from tokenledger.families import FIRST_PARTY, bare_name, counting, family_of
from tokenledger.pricelist import flatten
from tokenledger.pricing import cost
from tokenledger.types import Amount, DatedPrice, Model, ModelInfo, Price

__all__ = [
    "Catalog",
    "CatalogDiff",
    "CatalogUpdate",
    "Snapshot",
    "cheapest",
    "cost",
    "default_catalog",
    "resolve",
    "search",
]

# Prefixes callers put before a maker's model name (litellm, OpenRouter, Hugging Face style) -> maker.
PROVIDER_PREFIXES = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "gemini": "google",
    "mistral": "mistral",
    "mistralai": "mistral",
    "codestral": "mistral",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "deepseek": "deepseek",
    "deepseek-ai": "deepseek",
    "xai": "xai",
    "x-ai": "xai",
    "meta": "meta",
    "meta_llama": "meta",
    "meta-llama": "meta",
}
# Prefixes of hosts and routers, which serve other makers' models at their own prices -> provider.
HOSTS = {
    "azure": "azure",
    "azure_ai": "azure_ai",
    "bedrock": "bedrock",
    "vertex_ai": "vertex_ai",
    "openrouter": "openrouter",
    "together_ai": "together_ai",
    "groq": "groq",
    "fireworks_ai": "fireworks_ai",
    "deepinfra": "deepinfra",
}
HOST_NAMES = {
    "azure": "Azure OpenAI",
    "azure_ai": "Azure AI Foundry",
    "bedrock": "Bedrock",
    "vertex_ai": "Vertex AI",
    "openrouter": "OpenRouter",
    "together_ai": "Together AI",
    "groq": "Groq",
    "fireworks_ai": "Fireworks AI",
    "deepinfra": "DeepInfra",
}
# Runtimes on the caller's own machine or servers: no per-token bill, so $0 as a stated price.
LOCAL_RUNTIMES = (
    "ollama",
    "ollama_chat",
    "lm_studio",
    "vllm",
    "hosted_vllm",
    "llamafile",
    "lemonade",
    "xinference",
    "oobabooga",
)
LOCAL_PRICE = Price(input=Decimal(0), output=Decimal(0), local=True)
# Dated snapshots (-2024-08-06, -20250929, @20251101, -0125, -09-2025) and -latest pointers.
_VERSION_SUFFIX = re.compile(r"(?:[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{4}|\d{4})|-latest)$")
# How Bedrock spells a model: [region/]geography.vendor.model-vN:M; `converse/` and `invoke/` routes.
_BEDROCK_ROUTE = re.compile(r"^(?:converse/|invoke/)?(?:[a-z]{2}(?:-gov)?-[a-z]+-\d/)?")
_BEDROCK_GEOGRAPHY = re.compile(r"^(us|eu|apac|global|au|jp|ca|us-gov)\.")  # cross-region inference profiles
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")
_TOKENS_ALLOWED = "a whole number of tokens, 0 or more"


@dataclass(frozen=True)
class Snapshot:
    """Where the bundled prices come from and when they were taken."""

    date: date  # the newest release's date
    source: str
    version: str  # the newest litellm release read
    models: int  # every model, retired ones included
    retired: int = 0
    releases: tuple[tuple[str, dt.date], ...] = ()  # (litellm version, date), oldest first


@dataclass(frozen=True)
class CatalogUpdate:
    """A price list an operator loaded (`tokenledger catalog update`), as stored in the database."""

    update_id: int
    effective_from: datetime  # its prices are in force from this moment on
    source_name: str
    source_kind: str  # litellm or openrouter
    sha256: str
    models: int
    entries: dict[str, dict[str, Any]]  # by lower-cased name: tokenledger.pricefile.PriceFile.entries
    created_at: datetime | None = None
    created_by: str | None = None

    @property
    def label(self) -> str:
        return f"catalog update {self.update_id} ({self.source_name})"


class RateChange(Model):
    rate: str  # "input", "batch.output", "tiers.200000.input", ...
    old: Amount | None  # USD per token; None: not published before
    new: Amount | None  # None: no longer published


class ModelChange(Model):
    name: str
    provider: str
    context_window: int | None = None
    input: Amount | None = None  # USD per token, the new standard rates (for added models)
    output: Amount | None = None
    changes: list[RateChange] = Field(default_factory=list)


class CatalogDiff(Model):
    """What a price list would change in the catalog in force: models added (or listed again after their
    retirement), retired (of a provider the list covers, no longer listed) and price changes."""

    added: list[ModelChange] = Field(default_factory=list)
    relisted: list[ModelChange] = Field(default_factory=list)
    retired: list[ModelChange] = Field(default_factory=list)
    changed: list[ModelChange] = Field(default_factory=list)
    unchanged: int = 0
    providers: list[str] = Field(default_factory=list)  # the providers the list covers


@dataclass
class _Index:
    snapshot: Snapshot
    # lower-cased name -> the model's JSON line, replaced by the parsed entry when first asked for
    entries: dict[str, str | dict[str, Any]]
    providers: dict[str, str]  # lower-cased name -> provider, known without parsing the line
    retired: set[str]  # lower-cased names of retired models
    aliases: dict[str, str]  # lower-cased alias -> lower-cased name
    alias_names: dict[str, list[str]]  # lower-cased name -> its aliases as written
    versions: dict[str, str]  # release date -> litellm version
    prices: dict[tuple[str, int], Price] = field(default_factory=dict)  # (name, index in its prices)
    infos: dict[str, ModelInfo] = field(default_factory=dict)  # entries built so far
    labels: dict[str, str] = field(default_factory=dict)  # a price's "from" -> the list it came from
    last_listed: dict[str, str] = field(default_factory=dict)  # name -> the "from" of the last listing
    applied: list[CatalogUpdate] = field(default_factory=list)  # updates over the bundled catalog
    superseded: list[CatalogUpdate] = field(default_factory=list)  # older than the bundled snapshot

    def label(self, since: str) -> str:
        return self.labels.get(since, "litellm ?")

    def entry(self, key: str) -> dict[str, Any]:
        found = self.entries[key]
        if isinstance(found, str):
            found = self.entries[key] = json.loads(found)
        return found

    def price(self, key: str, position: int) -> Price:
        """Return the entry's price at `position` in its dated prices (parsed once; callers copy it)."""
        dated = self.entry(key)["prices"]
        position %= len(dated)
        found = self.prices.get((key, position))
        if found is None:
            found = self.prices[key, position] = _price(dated[position])
        return found


@dataclass(frozen=True)
class _Resolved:
    info: ModelInfo
    key: str | None  # the catalog entry whose prices apply; None for a local runtime


# The layout scripts/update_catalog.py writes: a header, then one model per line, each starting with
# its name and provider. Other layouts of the same JSON load too, parsed whole.
_MODELS_START = '\n"models":[\n'
_MODELS_END = "\n]}\n"
_NAME_START = '{"name":"'
_PROVIDER_START = ',"provider":"'
_RETIRED = '"retired":"'  # only ever a key: quotes inside names and values are escaped


def _bundled_path() -> Path:
    return Path(str(resources.files("tokenledger") / "data" / "catalog.json"))


def _line_key(line: str) -> tuple[str, str] | None:
    """Return the name and provider a model's line starts with, read without parsing the line."""
    if not line.startswith(_NAME_START):
        return None
    name, end = json.decoder.scanstring(line, len(_NAME_START))  # type: ignore[attr-defined]
    if not line.startswith(_PROVIDER_START, end):
        return None
    provider, _ = json.decoder.scanstring(line, end + len(_PROVIDER_START))  # type: ignore[attr-defined]
    return name, provider


def _load(path: Path) -> _Index:
    """Return the catalog's index: the header parsed, each model's line kept unparsed under its name."""
    text = path.read_text(encoding="utf-8")
    head, found, body = text.partition(_MODELS_START)
    if found and body.endswith(_MODELS_END):
        document: dict[str, Any] = json.loads(head + '"models":[]}')
        models: list[str | dict[str, Any]] = list(body[: -len(_MODELS_END)].split(",\n"))
    else:
        document = json.loads(text)
        models = list(document["models"])
    entries: dict[str, str | dict[str, Any]] = {}
    providers: dict[str, str] = {}
    retired: set[str] = set()
    for model in models:
        known = _line_key(model) if isinstance(model, str) else None
        if isinstance(model, str) and known is None:
            model = json.loads(model)
        if known is not None:
            name, provider = known
            gone = _RETIRED in model
        else:
            assert isinstance(model, dict)
            name, provider, gone = model["name"], model["provider"], "retired" in model
        key = name.lower()
        entries[key], providers[key] = model, provider
        if gone:
            retired.add(key)
    aliases: dict[str, str] = {}
    alias_names: dict[str, list[str]] = {}
    for alias, name in document.get("aliases", {}).items():
        aliases.setdefault(alias.lower(), name.lower())
        alias_names.setdefault(name.lower(), []).append(alias)
    meta = document["snapshot"]
    releases = tuple((version, date.fromisoformat(day)) for version, day in document.get("releases", ()))
    snapshot = Snapshot(
        date=date.fromisoformat(meta["date"]),
        source=meta["source"],
        version=meta.get("litellm_version", ""),
        models=len(entries),
        retired=len(retired),
        releases=releases,
    )
    versions = {day.isoformat(): version for version, day in releases}
    labels = {day: f"litellm {version}" for day, version in versions.items()}
    return _Index(snapshot, entries, providers, retired, aliases, alias_names, versions, labels=labels)


def _apply_update(index: _Index, update: CatalogUpdate) -> None:
    """Apply a catalog update over the index (see the module docstring): a changed price becomes a new
    dated price from the update's moment, never a change of an earlier one."""
    if update.effective_from <= _midnight(index.snapshot.date.isoformat()):
        index.superseded.append(update)
        return
    since = update.effective_from.astimezone(UTC).isoformat()
    index.labels[since] = update.label
    for key, listed in update.entries.items():
        price = listed.get("price") or {}
        if key in index.entries:
            current = index.entry(key)
            prices = list(current["prices"])
            last = {k: v for k, v in prices[-1].items() if k != "from"}
            if flatten(price) != flatten(last):
                prices.append({"from": since, **price})
            model = {
                k: v
                for k, v in current.items()
                if k not in ("retired", "context_window", "max_output_tokens")
            }
        else:
            prices = [{"from": since, **price}]
            model = {"name": listed["name"], "provider": listed["provider"]}
        for limit in ("context_window", "max_output_tokens"):
            if listed.get(limit) is not None:
                model[limit] = listed[limit]
        model["prices"] = prices
        index.entries[key], index.providers[key] = model, model["provider"]
        index.retired.discard(key)
        index.last_listed[key] = since
        for alias in listed.get("aliases", ()):
            if alias.lower() not in index.entries and alias.lower() not in index.aliases:
                index.aliases[alias.lower()] = key
                index.alias_names.setdefault(key, []).append(alias)
    covered = {listed["provider"] for listed in update.entries.values()}
    for key, provider in index.providers.items():
        if provider in covered and key not in update.entries and key not in index.retired:
            index.entries[key] = {
                **index.entry(key),
                "retired": index.last_listed.get(key, index.snapshot.date.isoformat()),
            }
            index.retired.add(key)
    index.prices.clear()
    index.infos.clear()
    index.applied.append(update)


def _midnight(day: str) -> datetime:
    """The moment a dated price starts: a day's midnight UTC, or an update's own moment."""
    if len(day) > 10:
        return datetime.fromisoformat(day)
    return datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)


def _price(dated: dict[str, Any]) -> Price:
    return Price.model_validate({key: value for key, value in dated.items() if key != "from"})


def _copy_price(price: Price) -> Price:
    """Return a copy a caller may change: the rate sets and tiers inside are immutable, so shared."""
    return price.model_copy(update={"tiers": list(price.tiers)})


def _copy_info(info: ModelInfo) -> ModelInfo:
    update = {
        "price": _copy_price(info.price),
        "aliases": list(info.aliases),
        "warnings": list(info.warnings),
    }
    return info.model_copy(update=update)


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


def _served_names(host: str, rest: str) -> list[str]:
    """Return the names a hosted model may be listed under, most specific first: the host's own
    spelling (Bedrock's `us.anthropic.claude-...-v1:0`), then the maker's (`claude-...`)."""
    names = [rest]
    if host == "bedrock":
        route = _BEDROCK_ROUTE.sub("", rest)
        names += [route, _BEDROCK_GEOGRAPHY.sub("", route)]
    bare = _BEDROCK_VERSION.sub("", bare_name(rest)) if host == "bedrock" else bare_name(rest)
    names.append(bare)
    if "claude" in bare:
        names.append(bare.replace(".", "-"))  # OpenRouter's claude-3.5-sonnet is claude-3-5-sonnet
    return list(dict.fromkeys(names))


class Catalog:
    """Models and prices from a catalog file (the bundled one by default) and the catalog updates given,
    oldest first; loaded on first use (or by `load`)."""

    def __init__(self, path: Path | None = None, updates: Sequence[CatalogUpdate] = ()) -> None:
        self.path = path
        self.updates = tuple(sorted(updates, key=lambda update: update.update_id))

    # Pricing needs no catalog data; offered here too so code holding a Catalog can price with it.
    cost = staticmethod(cost)

    @functools.cached_property
    def _index(self) -> _Index:
        index = _load(self.path or _bundled_path())
        for update in self.updates:
            _apply_update(index, update)
        return index

    def load(self) -> Catalog:
        """Read the catalog and apply its updates now (a process does it before swapping catalogs, so
        that no call pays for it); returns the catalog."""
        _ = self._index
        return self

    @property
    def applied_updates(self) -> list[CatalogUpdate]:
        """The updates in force over the bundled catalog, oldest first."""
        return list(self._index.applied)

    @property
    def superseded_updates(self) -> list[CatalogUpdate]:
        """Updates older than the bundled snapshot, which carries newer prices: left out."""
        return list(self._index.superseded)

    @property
    def snapshot(self) -> Snapshot:
        """Return the catalog's sources, dates and size."""
        return self._index.snapshot

    def providers(self) -> list[str]:
        """Return the providers in the catalog, sorted."""
        return sorted(set(self._index.providers.values()))

    def context_windows(self) -> dict[str, int]:
        """Return every catalog model's context window by name (retired models too), where published."""
        index = self._index
        entries = [index.entry(key) for key in index.entries]
        return {entry["name"]: entry["context_window"] for entry in entries if entry.get("context_window")}

    def model_names(self) -> frozenset[str]:
        """Return the name of every model in the catalog, lower-cased (aliases excluded; nothing parsed)."""
        return frozenset(self._index.entries)

    def resolve(self, name: str) -> ModelInfo:
        """Return the entry for a model name, alias, dated, prefixed, hosted or local-runtime name.

        Raises UnknownModel, listing up to five close names, when nothing matches.
        """
        # A copy: callers may adjust an entry (a tenant's price) without touching the catalog.
        return _copy_info(self._resolve(name).info)

    def price_at(self, name: str, at: datetime) -> Price:
        """Return the catalog price of a model in force at `at` (the earliest known before its first date)."""
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InvalidInput("at", at, "a datetime with its UTC offset")
        resolved = self._resolve(name)
        if resolved.key is None:
            return _copy_price(resolved.info.price)
        prices = self._index.entry(resolved.key)["prices"]
        chosen = 0
        for position, dated in enumerate(prices):
            if _midnight(dated["from"]) <= at:
                chosen = position
        return _copy_price(self._index.price(resolved.key, chosen))

    def price_history(self, name: str) -> list[DatedPrice]:
        """Return a model's catalog prices, oldest first, each with the dates it was in force."""
        resolved = self._resolve(name)
        if resolved.key is None:
            return []
        prices = self._index.entry(resolved.key)["prices"]
        history = []
        for index, dated in enumerate(prices):
            following = prices[index + 1]["from"] if index + 1 < len(prices) else None
            history.append(
                DatedPrice(
                    effective_from=_midnight(dated["from"]),
                    effective_until=None if following is None else _midnight(following),
                    price=_copy_price(self._index.price(resolved.key, index)),
                    source=self._index.label(dated["from"]),
                )
            )
        return history

    def search(
        self, query: str = "", provider: str | None = None, limit: int = 50, *, retired: bool | None = False
    ) -> list[ModelInfo]:
        """Return up to `limit` models whose name, alias or provider contains every word of `query`.

        `retired`: False (default) for models listed today, True for retired ones only, None for both.
        Exact and prefix matches of the whole query come first, then the rest by provider and name.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit", limit, "a whole number, 1 or more")
        found = self._matching(query, provider, retired)
        return [_copy_info(self._template(key)) for key in found[:limit]]

    def count(self, query: str = "", provider: str | None = None, *, retired: bool | None = False) -> int:
        """Return how many models `search` would find with no limit."""
        return len(self._matching(query, provider, retired))

    def _matching(self, query: str, provider: str | None, retired: bool | None) -> list[str]:
        """Return the keys of the entries that match a search, in the order `search` gives them."""
        wanted = self._provider(provider) if provider is not None else None
        phrase = query.strip().lower()
        words = phrase.split()
        found = []
        index = self._index
        for key, provider in index.providers.items():
            if wanted is not None and provider != wanted:
                continue
            if retired is not None and (key in index.retired) != retired:
                continue
            haystack = " ".join([key, provider, *index.alias_names.get(key, ())]).lower()
            if all(word in haystack for word in words):
                found.append(key)
        found.sort(
            key=lambda key: (
                key != phrase,
                not key.startswith(phrase),
                index.providers[key],
                key,
            )
        )
        return found

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

        Only models listed today; of `provider`, or of the makers' own APIs when none is given (a host
        serves them under another contract). Fits: the context window holds input + output and the
        max output holds output. Models with no published context window are skipped, since a fit
        cannot be shown.
        """
        if isinstance(input_tokens, bool) or not isinstance(input_tokens, int) or input_tokens < 0:
            raise InvalidInput("input_tokens", input_tokens, _TOKENS_ALLOWED)
        if isinstance(output_tokens, bool) or not isinstance(output_tokens, int) or output_tokens < 0:
            raise InvalidInput("output_tokens", output_tokens, _TOKENS_ALLOWED)
        wanted = self._provider(provider) if provider is not None else None
        excluded = self._excluded(exclude)
        best: tuple[Decimal, str] | None = None
        index = self._index
        for key, provider in index.providers.items():
            if key in excluded or key in index.retired:
                continue
            if (provider != wanted) if wanted is not None else (provider not in FIRST_PARTY):
                continue
            entry = index.entry(key)
            if entry.get("context_window") is None or entry["context_window"] < input_tokens + output_tokens:
                continue
            max_output = entry.get("max_output_tokens")
            if max_output is not None and max_output < output_tokens:
                continue
            price = index.price(key, -1)
            usd = cost(price, input_tokens=input_tokens, output_tokens=output_tokens).cost_usd
            if usd is None or (max_cost_usd is not None and usd > max_cost_usd):
                continue
            if best is None or (usd, key) < best:
                best = (usd, key)
        return None if best is None else _copy_info(self._template(best[1]))

    # --- building and resolving entries -------------------------------------------------------------

    def _template(self, key: str) -> ModelInfo:
        """Return the ModelInfo of a catalog entry, built once: callers hand out copies of it."""
        index = self._index
        info = index.infos.get(key)
        if info is None:
            info = index.infos[key] = self._build(key)
        return info

    def _build(self, key: str) -> ModelInfo:
        entry = self._index.entry(key)
        name, provider = entry["name"], entry["provider"]
        family = family_of(name, provider)
        current = entry["prices"][-1]
        retired = entry.get("retired")
        warnings = []
        if retired is not None:
            warnings.append(
                f"{name} is retired: the price list last listed it on {retired[:10]} "
                f"({self._index.label(retired)}); its provider retired it or no longer publishes its price. "
                "Priced at its last listed price"
            )
        return ModelInfo(
            name=name,
            provider=provider,
            **counting(name, family),
            family=family,
            context_window=entry.get("context_window"),
            max_output_tokens=entry.get("max_output_tokens"),
            price=self._index.price(key, -1),
            aliases=list(self._index.alias_names.get(key, ())),
            effective_from=_midnight(current["from"]),
            retired=retired is not None,
            last_listed=None if retired is None else date.fromisoformat(retired[:10]),
            warnings=warnings,
        )

    def diff(self, entries: dict[str, dict[str, Any]]) -> CatalogDiff:
        """What applying a price list's entries (by lower-cased name, as `tokenledger.pricefile` reads
        them) would change in this catalog."""
        index = self._index
        covered = sorted({listed["provider"] for listed in entries.values()})
        diff = CatalogDiff(providers=covered)
        for key in sorted(entries):
            listed = entries[key]
            new = flatten(listed.get("price") or {})
            if key not in index.entries:
                diff.added.append(_listing(listed))
                continue
            last = index.entry(key)["prices"][-1]
            old = flatten({k: v for k, v in last.items() if k != "from"})
            changes = [
                RateChange(
                    rate=".".join(map(str, path)), old=_decimal(old.get(path)), new=_decimal(new.get(path))
                )
                for path in sorted(set(old) | set(new), key=lambda path: tuple(map(str, path)))
                if old.get(path) is None or new.get(path) is None or Decimal(old[path]) != Decimal(new[path])
            ]
            if key in index.retired:
                diff.relisted.append(_listing(listed, changes))
            elif changes:
                diff.changed.append(_listing(listed, changes))
            else:
                diff.unchanged += 1
        for key, provider in index.providers.items():
            if provider in covered and key not in entries and key not in index.retired:
                diff.retired.append(ModelChange(name=index.entry(key)["name"], provider=provider))
        diff.retired.sort(key=lambda change: (change.provider, change.name.lower()))
        return diff

    def _lookup(self, names: list[str]) -> str | None:
        """Return the key of the first of `names` (each with its candidates) the catalog lists."""
        index = self._index
        for name in names:
            for candidate in _candidates(name):
                key = candidate if candidate in index.entries else index.aliases.get(candidate)
                if key is not None:
                    return key
        return None

    def _resolve(self, name: str) -> _Resolved:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("model", name, "a model name is required")
        typed = name.strip()
        key = typed.lower()
        found = self._lookup([key])
        if found is not None:
            return _Resolved(self._template(found), found)
        prefix, _, rest = key.partition("/")
        if prefix in LOCAL_RUNTIMES and rest:
            return _Resolved(self._local(typed, prefix), None)
        if prefix in HOSTS and rest:
            found = self._lookup(_served_names(prefix, rest))
            if found is not None:
                return _Resolved(self._hosted(typed, HOSTS[prefix], self._template(found)), found)
        known = [*self._index.entries, *self._index.aliases]
        close = difflib.get_close_matches(_candidates(key)[-1], known, n=10, cutoff=0.5)
        index = self._index
        names = dict.fromkeys(index.entry(index.aliases.get(match, match))["name"] for match in close)
        raise UnknownModel(name, list(names)[:5])

    @staticmethod
    def _hosted(name: str, host: str, served: ModelInfo) -> ModelInfo:
        """Return a hosted name's entry: the served model's, or its maker's price where the price list
        has none of the host's own, said in a warning."""
        if served.provider == host:
            return served
        note = (
            f"{name}: the price list has no {HOST_NAMES[host]} price for it; priced as {served.name} "
            f"({served.provider}), which {HOST_NAMES[host]} may bill differently"
        )
        return served.model_copy(
            update={
                "name": name,
                "provider": host,
                "aliases": [],
                "base_model": served.name,
                "warnings": [note, *served.warnings],
            }
        )

    @staticmethod
    def _local(name: str, runtime: str) -> ModelInfo:
        """Return a local runtime's model: $0 as local, counted by the rule of the family it names."""
        served = name.split("/", 1)[1]
        family = family_of(served, "other")
        return ModelInfo(
            name=name,
            provider=runtime,
            **counting(served, family),
            family=family,
            price=LOCAL_PRICE.model_copy(),
        )

    def _provider(self, provider: str) -> str:
        name = provider.strip().lower()
        name = PROVIDER_PREFIXES.get(name, HOSTS.get(name, name))
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


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _listing(listed: dict[str, Any], changes: list[RateChange] | None = None) -> ModelChange:
    price = listed.get("price") or {}
    return ModelChange(
        name=listed["name"],
        provider=listed["provider"],
        context_window=listed.get("context_window"),
        input=_decimal(price.get("input")),
        output=_decimal(price.get("output")),
        changes=changes or [],
    )


@functools.cache
def default_catalog() -> Catalog:
    """Return the process-wide catalog of the bundled snapshot (created on first call)."""
    return Catalog()


def resolve(name: str) -> ModelInfo:
    """Return the bundled catalog's entry for `name`; see `Catalog.resolve`."""
    return default_catalog().resolve(name)


def search(
    query: str = "", provider: str | None = None, limit: int = 50, *, retired: bool | None = False
) -> list[ModelInfo]:
    """Return matching models from the bundled catalog; see `Catalog.search`."""
    return default_catalog().search(query, provider=provider, limit=limit, retired=retired)


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
