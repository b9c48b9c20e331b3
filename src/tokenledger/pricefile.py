"""A price list a user saved, read and checked before it can touch the catalog: a litellm-format price
map (`model_prices_and_context_window.json`) or an OpenRouter `/api/v1/models` answer.

The file is untrusted: its size, its JSON, every name and every rate are checked, and anything out of
bounds refuses the whole file with an error naming the model, the field, the value and what is allowed,
so a refused file changes nothing. What is read becomes catalog entries by `tokenledger.pricelist`'s
rules (the same ones that build the bundled catalog). Pure functions over bytes, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from tokenledger.errors import InvalidInput
from tokenledger.pricelist import MODES, is_rate_key, release_entries
from tokenledger.types import Price

__all__ = ["MAX_FILE_BYTES", "PriceFile", "read_price_file"]

SourceKind = Literal["litellm", "openrouter"]

MAX_FILE_BYTES = 32 * 1024 * 1024  # litellm's whole map is about 1.5 MB; OpenRouter's about 0.5 MB
MAX_MODELS = 100_000  # top-level entries of a map, or models of an OpenRouter answer
MAX_NAME_CHARS = 200
MAX_RATE = Decimal(1)  # USD per token: $1,000,000 per million, far above any published price
MAX_RATE_PLACES = 18  # as a tenant's own prices (types.Money)
MAX_TOKENS_FIELD = 10**9  # a context window or output limit
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_FORMAT_HELP = "a litellm price map (a JSON object: model name -> spec) or OpenRouter's /api/v1/models answer"
# OpenRouter's pricing fields -> litellm's per-token keys.
_OPENROUTER_RATES = {
    "prompt": "input_cost_per_token",
    "completion": "output_cost_per_token",
    "input_cache_read": "cache_read_input_token_cost",
    "input_cache_write": "cache_creation_input_token_cost",
    "internal_reasoning": "output_cost_per_reasoning_token",
}
OPENROUTER_VARIABLE = "-1"  # OpenRouter's price of a router whose price depends on the model it picks


@dataclass(frozen=True)
class PriceFile:
    """A checked price list: where it came from and the catalog entries it lists, by lower-cased name."""

    source_name: str
    source_kind: SourceKind
    sha256: str
    size_bytes: int
    entries: dict[str, dict[str, Any]]  # pricelist.release_entries' shape, aliases as sorted lists
    skipped: tuple[str, ...] = ()  # models left out, and why (OpenRouter's variable-priced routers)


def read_price_file(raw: bytes, source_name: str) -> PriceFile:
    """Return the checked entries of a saved price list; InvalidInput names what is wrong and where."""
    name = _source_name(source_name)
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput("--from", name, f"a file of at most {MAX_FILE_BYTES:,} bytes; it has {len(raw):,}")
    document = _parse(raw, name)
    if not isinstance(document, dict):
        raise InvalidInput("--from", name, f"{_FORMAT_HELP}; the file holds a JSON {type(document).__name__}")
    skipped: list[str] = []
    if isinstance(document.get("data"), list):
        kind: SourceKind = "openrouter"
        price_map = _from_openrouter(document["data"], skipped)
    else:
        kind, price_map = "litellm", document
    if len(price_map) > MAX_MODELS:
        raise InvalidInput("--from", name, f"at most {MAX_MODELS:,} models; it lists {len(price_map):,}")
    _check_map(price_map)
    entries = release_entries(price_map)
    if not entries:
        raise InvalidInput(
            "--from", name, f"{_FORMAT_HELP} listing chat, completion or responses models; it lists none"
        )
    for entry in entries.values():
        _check_entry(entry)
    listed = {
        key: {**entry, "aliases": sorted(entry["aliases"])}
        if entry.get("aliases")
        else _without_aliases(entry)
        for key, entry in entries.items()
    }
    digest = hashlib.sha256(raw).hexdigest()
    return PriceFile(name, kind, digest, len(raw), listed, tuple(skipped))


def _without_aliases(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key != "aliases"}


def _source_name(source_name: str) -> str:
    shown = source_name.strip()[-500:]
    if not shown or not _PRINTABLE.match(shown):
        raise InvalidInput("--from", source_name[:80], "a file name or URL in printable text")
    return shown


def _reject_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not a number JSON allows")


def _parse(raw: bytes, name: str) -> Any:
    """The file's JSON, numbers kept as the file wrote them (no float rounding); NaN and Infinity refused."""
    try:
        text = raw.decode("utf-8-sig")
        return json.loads(text, parse_float=str, parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise InvalidInput(
            "--from", name, f"UTF-8 JSON ({_FORMAT_HELP}); byte {error.start} is not UTF-8"
        ) from None
    except json.JSONDecodeError as error:
        raise InvalidInput(
            "--from",
            name,
            f"{_FORMAT_HELP}; invalid JSON at line {error.lineno} column {error.colno}: {error.msg}",
        ) from None
    except RecursionError:
        raise InvalidInput("--from", name, f"{_FORMAT_HELP}; its JSON is nested too deeply") from None
    except ValueError as error:  # NaN / Infinity, or an integer too long to read
        raise InvalidInput("--from", name, f"{_FORMAT_HELP}; {error}") from None


def _from_openrouter(models: list[Any], skipped: list[str]) -> dict[str, Any]:
    """OpenRouter's models as litellm specs under litellm's names (`openrouter/<id>`): text-output models
    only; a router priced "-1" (its price is the model it picks) is skipped and said so."""
    if len(models) > MAX_MODELS:
        raise InvalidInput("data", f"{len(models):,} models", f"at most {MAX_MODELS:,}")
    price_map: dict[str, Any] = {}
    for position, model in enumerate(models):
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            raise InvalidInput(
                f"data[{position}]", _short(model), "an object with an id (OpenRouter's model)"
            )
        model_id = model["id"]
        pricing = model.get("pricing")
        if not isinstance(pricing, dict):
            raise InvalidInput(f"data[{position}].pricing", _short(pricing), "an object of per-token prices")
        if not _outputs_text(model.get("architecture")):
            continue
        if any(str(pricing.get(field)) == OPENROUTER_VARIABLE for field in ("prompt", "completion")):
            skipped.append(f"openrouter/{model_id}: variable price (-1)")
            continue
        spec: dict[str, Any] = {"litellm_provider": "openrouter", "mode": "chat"}
        for field, key in _OPENROUTER_RATES.items():
            if pricing.get(field) is not None:
                spec[key] = pricing[field]
        top = model.get("top_provider")
        top = top if isinstance(top, dict) else {}
        spec["max_input_tokens"] = model.get("context_length")
        spec["max_output_tokens"] = top.get("max_completion_tokens")
        price_map[f"openrouter/{model_id}"] = spec
    return price_map


def _outputs_text(architecture: Any) -> bool:
    if not isinstance(architecture, dict):
        return True
    outputs = architecture.get("output_modalities")
    if isinstance(outputs, list):
        return "text" in outputs
    modality = architecture.get("modality")
    return not isinstance(modality, str) or modality.endswith("->text")


def _check_map(price_map: dict[str, Any]) -> None:
    """Every model the catalog would read: a bounded printable name, rates that are non-negative decimals
    of at most $1 per token and 18 decimal places, whole-number token limits."""
    for key, spec in price_map.items():
        if not isinstance(spec, dict) or spec.get("mode") not in MODES:
            continue  # not a token-priced text model: never read
        _check_name(key, "model name")
        provider = spec.get("litellm_provider")
        if provider is not None and (not isinstance(provider, str) or len(provider) > 100):
            raise InvalidInput(f"{_short(key)}.litellm_provider", _short(provider), "a provider name")
        for field, value in spec.items():
            if is_rate_key(field):
                _check_rate(key, field, value)
            elif field in ("max_input_tokens", "max_tokens", "max_output_tokens"):
                _check_tokens(key, field, value)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS or not _PRINTABLE.match(name):
        raise InvalidInput(what, _short(name), f"printable text of 1 to {MAX_NAME_CHARS} characters")


def _check_rate(model: str, field: str, value: Any) -> None:
    allowed = f"a decimal number of USD per token, 0 to {MAX_RATE}, at most {MAX_RATE_PLACES} decimal places"
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"{model}.{field}", _short(value), allowed)
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(f"{model}.{field}", _short(value), allowed) from None
    exponent = rate.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) else MAX_RATE_PLACES + 1
    if not rate.is_finite() or rate < 0 or rate > MAX_RATE or places > MAX_RATE_PLACES:
        raise InvalidInput(f"{model}.{field}", _short(value), allowed)


def _check_tokens(model: str, field: str, value: Any) -> None:
    if value is None or isinstance(value, str):
        return  # the catalog reads whole numbers only; other values are ignored, as in litellm's own map
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_FIELD:
        raise InvalidInput(
            f"{model}.{field}", _short(value), f"a whole number of tokens, 0 to {MAX_TOKENS_FIELD:,}"
        )


def _check_entry(entry: dict[str, Any]) -> None:
    """The built entry, checked as the catalog will hold it: its aliases' names, its price as a Price."""
    for alias in entry.get("aliases", ()):
        _check_name(alias, "model alias")
    if entry["price"]:
        Price.model_validate(entry["price"])


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
