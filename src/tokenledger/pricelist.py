"""litellm-format price lists read into catalog entries: names, dated prices and retirement.

`scripts/update_catalog.py` builds the bundled catalog with these functions from a series of litellm
releases; the same functions read a price list a user saved (litellm's
`model_prices_and_context_window_backup.json` format). Pure functions over JSON values, no I/O.

An entry is `{"name", "provider", "context_window"?, "max_output_tokens"?, "aliases"?, "prices":
[{"from": "YYYY-MM-DD", ...rates}, ...], "retired"?: "YYYY-MM-DD"}`; a price is
`{"input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning", "batch": {...},
"flex": {...}, "priority": {...}, "tiers": [{"above_input_tokens": N, ...rates, "batch": {...}}]}`
with every rate a plain decimal string (tokenledger.types.Price validates it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenledger.families import FIRST_PARTY

# (litellm provider, our provider, key prefix stripped from first-party names), in order of precedence:
# when two listings give the same model name, the first keeps it and the other becomes its alias.
# First-party APIs keep their bare names (`gemini-2.5-pro`); hosts keep litellm's key (`azure/gpt-4o`,
# `us.anthropic.claude-...-v1:0`), so a host's own price never mixes with the maker's.
SOURCES = [
    ("openai", "openai", ""),
    ("text-completion-openai", "openai", ""),
    ("anthropic", "anthropic", ""),
    ("gemini", "google", "gemini/"),
    ("mistral", "mistral", "mistral/"),
    ("codestral", "mistral", "codestral/"),
    ("text-completion-codestral", "mistral", "text-completion-codestral/"),
    ("cohere_chat", "cohere", ""),
    ("cohere", "cohere", ""),
    ("deepseek", "deepseek", "deepseek/"),
    ("xai", "xai", "xai/"),
    ("meta_llama", "meta", "meta_llama/"),
    ("azure", "azure", ""),
    ("azure_text", "azure", ""),
    ("azure_ai", "azure_ai", ""),
    ("bedrock_converse", "bedrock", ""),
    ("bedrock", "bedrock", ""),
    ("vertex_ai", "vertex_ai", ""),  # and every vertex_ai-* listing (vertex_ai-anthropic_models, ...)
    ("openrouter", "openrouter", ""),
    ("together_ai", "together_ai", ""),
    ("groq", "groq", ""),
    ("fireworks_ai", "fireworks_ai", ""),
    ("deepinfra", "deepinfra", ""),
]
# Token-priced text generation. Left out: embeddings, images, audio, video, realtime, rerank,
# moderation, OCR and search, which are priced per image, second, page or query.
MODES = {"chat", "completion", "responses"}
# Vertex AI lists Gemini under bare names that are the Gemini API's names too: they get this prefix.
VERTEX_PREFIX = "vertex_ai/"

# litellm's per-token keys: a kind, then optionally a 1-hour cache write, a context tier and a mode:
# cache_creation_input_token_cost_above_1hr_above_200k_tokens, input_cost_per_token_above_272k_tokens_flex.
_KINDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
_PRICE_KEY = re.compile(
    r"^(?P<kind>" + "|".join(_KINDS) + r")(?P<hour>_above_1hr)?(?:_above_(?P<k>\d+)k_tokens)?"
    r"(?:_(?P<mode>batches|flex|priority))?$"
)
_MODES = {"batches": "batch", "flex": "flex", "priority": "priority"}


def is_rate_key(key: str) -> bool:
    """Whether a litellm spec's key is a per-token rate the catalog reads (`input_cost_per_token`, ...)."""
    return _PRICE_KEY.match(key) is not None


def price_text(value: Any) -> str | None:
    """Return the price as a plain decimal string, exactly as the source wrote it; None if absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))  # str() of a JSON float is its shortest repr: the file's digits
    except ArithmeticError:
        return None
    return format(number, "f")


def build_price(spec: dict[str, Any]) -> dict[str, Any]:
    """Return the catalog price of a litellm spec: standard rates, `batch`/`flex`/`priority` rates and
    context `tiers`; empty when the model is unpriced. Zero rates are left out: the source writes 0
    where it knows no price, and an absent rate falls back to a published one, never to $0."""
    price: dict[str, Any] = {}
    tiers: dict[int, dict[str, Any]] = {}
    for key, value in spec.items():
        match = _PRICE_KEY.match(key)
        text = price_text(value) if match else None
        if match is None or text is None or not Decimal(text):
            continue
        kind = _KINDS[match["kind"]]
        if match["hour"]:
            if kind != "cache_write":
                continue
            kind = "cache_write_1h"
        rates = price if match["k"] is None else tiers.setdefault(int(match["k"]) * 1000, {})
        if match["mode"]:
            rates = rates.setdefault(_MODES[match["mode"]], {})
        rates[kind] = text
    if "input" not in price or "output" not in price:
        return {}  # unpriced: no standard input and output price (or $0/$0, a placeholder)
    flat = flatten(price)
    for above, rates in tiers.items():
        flat.update({("tiers", above, *path): text for path, text in flatten(rates).items()})
    return nest(flat)


# Flat prices map paths to rates: ("input",), ("batch", "input"), ("tiers", 200000, "flex", "output").
Path_ = tuple[str | int, ...]
_ORDER = ["input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning", "batch", "flex"]
_ORDER += ["priority", "tiers"]


def flatten(price: dict[str, Any]) -> dict[Path_, str]:
    """Return a catalog price as {path: rate}."""
    flat: dict[Path_, str] = {}
    for key, value in price.items():
        if key == "tiers":
            for tier in value:
                rates = {k: v for k, v in tier.items() if k != "above_input_tokens"}
                flat.update({("tiers", tier["above_input_tokens"], *p): v for p, v in flatten(rates).items()})
        elif isinstance(value, dict):
            flat.update({(key, *p): v for p, v in flatten(value).items()})
        else:
            flat[(key,)] = value
    return flat


def nest(flat: dict[Path_, str]) -> dict[str, Any]:
    """Return the catalog price of a flat price, its keys in one order (so diffs read per rate)."""
    price: dict[str, Any] = {}
    tiers: dict[int, dict[Path_, str]] = {}
    for path, text in flat.items():
        if path[0] == "tiers":
            tiers.setdefault(int(path[1]), {})[path[2:]] = text
        elif len(path) == 2:
            price.setdefault(str(path[0]), {})[str(path[1])] = text
        else:
            price[str(path[0])] = text
    if tiers:
        price["tiers"] = [{"above_input_tokens": above, **nest(tiers[above])} for above in sorted(tiers)]
    return {key: _ordered(price[key]) for key in sorted(price, key=_ORDER.index)}


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: value[key] for key in sorted(value, key=_ORDER.index)}
    return value


def name_for(key: str, provider: str, prefix: str) -> str:
    """Return the catalog name of a litellm key: first-party prefixes stripped, Vertex AI's bare names
    prefixed."""
    if prefix and key.startswith(prefix):
        return key[len(prefix) :]
    if provider == "vertex_ai" and not key.startswith(VERTEX_PREFIX):
        return VERTEX_PREFIX + key
    return key


def build_entry(name: str, provider: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Return one release's entry for a model (None-valued fields left out)."""
    context = spec.get("max_input_tokens") or spec.get("max_tokens")
    max_output = spec.get("max_output_tokens")
    entry: dict[str, Any] = {
        "name": name,
        "provider": provider,
        "context_window": context if isinstance(context, int) and not isinstance(context, bool) else None,
        "max_output_tokens": max_output
        if isinstance(max_output, int) and not isinstance(max_output, bool)
        else None,
        "price": build_price(spec),
    }
    return {key: value for key, value in entry.items() if value is not None}


def release_entries(prices: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return one release's models by lower-cased name, each with the keys that alias it."""
    entries: dict[str, dict[str, Any]] = {}
    for litellm_provider, provider, prefix in SOURCES:
        for key, spec in prices.items():
            if not isinstance(spec, dict) or spec.get("mode") not in MODES:
                continue
            listed_by = spec.get("litellm_provider")
            if not isinstance(listed_by, str):
                continue
            if listed_by != litellm_provider and not (
                litellm_provider == "vertex_ai" and listed_by.startswith("vertex_ai-")
            ):
                continue
            name = name_for(key, provider, prefix)
            if provider in FIRST_PARTY and "/" in name:
                continue  # "openai/container": a billing item, not a model
            existing = entries.get(name.lower())
            if existing is not None:
                if key.lower() != existing["name"].lower():
                    existing["aliases"].add(key)
                continue
            entries[name.lower()] = {**build_entry(name, provider, spec), "aliases": set()}
            if key != name:
                entries[name.lower()]["aliases"].add(key)
    return entries


@dataclass
class History:
    """A model across the releases: its newest entry, its dated prices and when it was last listed."""

    entry: dict[str, Any]
    prices: list[dict[str, Any]]
    last_listed: str
    aliases: set[str] = field(default_factory=set)


def add_price(prices: list[dict[str, Any]], since: str, price: dict[str, Any]) -> None:
    """Add a release's price to a model's dated prices (oldest first).

    A changed or removed rate starts a new dated entry. Rates a release only adds (a batch price, a
    1-hour cache write, a context tier first listed) join every earlier entry instead: the source
    learnt them late, and no usage of a mode could predate the mode itself.
    """
    new, last = flatten(price), flatten({k: v for k, v in prices[-1].items() if k != "from"})
    if not new and last:  # no longer priced: a new, unpriced entry
        prices.append({"from": since})
        return
    changed = any(path in new and new[path] != rate for path, rate in last.items())
    removed = any(path not in new for path in last)
    if changed or removed:
        prices.append({"from": since, **price})
        return
    added = {path: rate for path, rate in new.items() if path not in last}
    if not added:
        return
    for index, earlier in enumerate(prices):
        rates = flatten({k: v for k, v in earlier.items() if k != "from"})
        if rates:  # an unpriced entry stays unpriced
            prices[index] = {"from": earlier["from"], **nest({**added, **rates})}


def merge(series: list[tuple[str, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Return the catalog's models from releases' entries, each under its release date, oldest first."""
    models: dict[str, History] = {}
    for since, entries in series:
        for key, entry in entries.items():
            price = entry["price"]
            known = models.get(key)
            if known is None:
                models[key] = History(entry, [{"from": since, **price}], since)
                known = models[key]
            else:
                add_price(known.prices, since, price)
                known.entry, known.last_listed = entry, since
            known.aliases |= entry["aliases"]
    newest = series[-1][0]
    catalog = []
    for key, history in models.items():
        model = {k: v for k, v in history.entry.items() if k not in {"price", "aliases"}}
        aliases = sorted(a for a in history.aliases if a.lower() != key and a.lower() not in models)
        if aliases:
            model["aliases"] = aliases  # moved to the document's alias table by build_catalog
        model["prices"] = history.prices
        if history.last_listed != newest:
            model["retired"] = history.last_listed
        catalog.append(model)
    catalog.sort(key=lambda model: (model["provider"], model["name"].lower()))
    return catalog
