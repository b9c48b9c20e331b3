"""Rebuild `src/tokenledger/data/catalog.json` from the price list inside a litellm wheel.

    python scripts/update_catalog.py                    # pip-downloads the latest litellm wheel
    python scripts/update_catalog.py --wheel PATH.whl   # or reads one you already have

litellm's `model_prices_and_context_window_backup.json` is MIT-licensed; its licence is copied to
`data/LICENSE.litellm`. tokenledger never imports litellm: the snapshot is plain data.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "src" / "tokenledger" / "data"
PRICES_FILE = "litellm/model_prices_and_context_window_backup.json"

# (litellm provider, our provider, key prefix litellm puts on the name), in order of precedence:
# when two listings give the same model name, the first wins (Gemini API before Vertex AI).
SOURCES = [
    ("openai", "openai", ""),
    ("anthropic", "anthropic", ""),
    ("gemini", "google", "gemini/"),
    ("vertex_ai-language-models", "google", "vertex_ai/"),
    ("mistral", "mistral", "mistral/"),
    ("cohere_chat", "cohere", ""),
    ("deepseek", "deepseek", "deepseek/"),
    ("xai", "xai", "xai/"),
    ("meta_llama", "meta", "meta_llama/"),
]
# Text-generation modes; OpenAI (pro, codex, deep-research) and xAI list some models under "responses".
MODES = {"chat", "responses"}

PRICE_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
}

# tiktoken's own model-name table (tiktoken/model.py): these OpenAI names are counted exactly.
OPENAI_EXACT = [
    (re.compile(r"^(ft:)?(o1|o3|o4-mini|gpt-5|gpt-4\.5|gpt-4\.1|chatgpt-4o|gpt-4o)($|[-.])"), "o200k_base"),
    (re.compile(r"^(ft:)?(gpt-4|gpt-3\.5-turbo|gpt-35-turbo)($|-)"), "cl100k_base"),
]

# Estimates for providers that publish no tiktoken-compatible encoding: the o200k_base count times a
# factor chosen to err high, so budgets reserve too much rather than too little.
_TAIL = " Non-English text and code can differ more; the ledger calibrates from provider-reported usage."
RULES: dict[str, tuple[float, str]] = {
    "openai-unlisted": (
        1.0,
        "Estimate: o200k_base count. OpenAI has not published this model's encoding in tiktoken; "
        "o200k_base is the encoding of every OpenAI chat model since gpt-4o.",
    ),
    "anthropic": (
        1.25,
        "Estimate: o200k_base count x 1.25, rounded up. Anthropic publishes no tokenizer; Claude 3 "
        "through 4.6 produce roughly 10-25% more tokens than o200k_base for English prose, so 1.25 "
        "errs high." + _TAIL,
    ),
    "anthropic-4.7": (
        1.70,
        "Estimate: o200k_base count x 1.70, rounded up. Claude Opus 4.7 and later use a new tokenizer "
        "that Anthropic says yields 1.0-1.35x the tokens of earlier Claude models (themselves up to "
        "1.25x o200k_base); 1.25 x 1.35 = 1.69." + _TAIL,
    ),
    "google": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Gemini's 256k SentencePiece vocabulary splits "
        "English about as finely as o200k_base; the 10% margin errs high." + _TAIL,
    ),
    "mistral": (
        1.15,
        "Estimate: o200k_base count x 1.15, rounded up. Mistral's Tekken tokenizer (131k vocabulary) "
        "splits English slightly finer than o200k_base, and its older 32k SentencePiece models finer "
        "still; 1.15 errs high." + _TAIL,
    ),
    "cohere": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Cohere's tokenizer is not tiktoken-compatible; "
        "its large multilingual BPE vocabulary splits English close to o200k_base." + _TAIL,
    ),
    "deepseek": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. DeepSeek V3/R1 use a 128k byte-level BPE "
        "vocabulary; DeepSeek documents about 0.3 tokens per English character, close to "
        "o200k_base." + _TAIL,
    ),
    "xai": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. xAI publishes no tokenizer; Grok's usage for "
        "English text sits close to o200k_base counts, and the 10% margin errs high." + _TAIL,
    ),
    "meta": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Llama 3 and 4 use a 128k tiktoken-style "
        "vocabulary built on cl100k_base, about 5% more tokens than o200k_base for English." + _TAIL,
    ),
}
# Claude generations with the Opus 4.7 tokenizer: version 4.7 and up, and unversioned previews.
_CLAUDE_VERSION = re.compile(r"^claude-[a-z]+-(\d+)(?:-(\d{1,2}))?(?:-|$)")


def price_text(value: Any) -> str | None:
    """Return the price as a plain decimal string, exactly as the source wrote it; None if absent."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    # str() of a JSON float is its shortest repr, i.e. the digits written in the source file.
    return format(Decimal(str(value)), "f")


def counting(name: str, provider: str) -> dict[str, Any]:
    """Return the encoding, count_method, estimate_factor and rule id for a model."""
    if provider == "openai":
        for pattern, encoding in OPENAI_EXACT:
            if pattern.match(name.lower()):
                return {"encoding": encoding, "count_method": "exact"}
        rule = "openai-unlisted"
    elif provider == "anthropic":
        match = _CLAUDE_VERSION.match(name.lower())
        version = (int(match[1]), int(match[2] or 0)) if match else None
        rule = "anthropic" if version is not None and version < (4, 7) else "anthropic-4.7"
    else:
        rule = provider
    return {
        "encoding": "o200k_base",
        "count_method": "estimate",
        "estimate_factor": RULES[rule][0],
        "estimate_rule": rule,
    }


def build_entry(name: str, provider: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Return one catalog entry (None-valued fields left out) from a litellm spec."""
    price = {field: price_text(spec.get(key)) for field, key in PRICE_FIELDS.items()}
    if not Decimal(price["input"] or 0) and not Decimal(price["output"] or 0):
        # $0/$0 marks experimental or free-tier listings whose real price is unknown: unpriced, not free.
        price["input"] = price["output"] = None
    for optional in ("cache_read", "cache_write", "reasoning"):
        rate = price[optional]
        if rate is not None and not Decimal(rate):
            # A zero rate is a placeholder; dropping it makes cost() fall back to the input/output rate.
            price[optional] = None
    context = spec.get("max_input_tokens") or spec.get("max_tokens")
    entry: dict[str, Any] = {
        "name": name,
        "provider": provider,
        **counting(name, provider),
        "context_window": context if isinstance(context, int) else None,
        "max_output_tokens": spec.get("max_output_tokens")
        if isinstance(spec.get("max_output_tokens"), int)
        else None,
        "price": {field: text for field, text in price.items() if text is not None},
    }
    return {key: value for key, value in entry.items() if value is not None}


def build_catalog(prices: dict[str, Any], version: str, snapshot_date: date) -> dict[str, Any]:
    """Return the catalog document: snapshot metadata, estimate rules and one entry per model."""
    entries: dict[str, dict[str, Any]] = {}
    for litellm_provider, provider, prefix in SOURCES:
        for key, spec in prices.items():
            if not isinstance(spec, dict) or spec.get("litellm_provider") != litellm_provider:
                continue
            if spec.get("mode") not in MODES:
                continue
            name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
            if "/" in name:  # "openai/container": a billing item, not a model
                continue
            existing = entries.get(name.lower())
            if existing is not None:
                if key.lower() != existing["name"].lower():
                    existing.setdefault("aliases", []).append(key)
                continue
            entries[name.lower()] = build_entry(name, provider, spec)
            if key != name:
                entries[name.lower()]["aliases"] = [key]
    models = sorted(entries.values(), key=lambda entry: (entry["provider"], entry["name"].lower()))
    return {
        "snapshot": {
            "date": snapshot_date.isoformat(),
            "source": f"litellm {version}: {PRICES_FILE} (MIT, see LICENSE.litellm)",
            "litellm_version": version,
            "models": len(models),
        },
        "rules": {rule: text for rule, (_, text) in RULES.items()},
        "models": models,
    }


def dump(catalog: dict[str, Any]) -> str:
    """Return the catalog as JSON with one model per line: small, and diffs read per model."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    lines = [
        "{",
        f'"snapshot":{compact(catalog["snapshot"])},',
        f'"rules":{compact(catalog["rules"])},',
        '"models":[',
        ",\n".join(compact(model) for model in catalog["models"]),
        "]}",
    ]
    return "\n".join(lines) + "\n"


def download_wheel(directory: Path) -> Path:
    """Return the path of the newest litellm wheel, downloaded with pip into `directory`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*command, "litellm", "-d", str(directory)], check=True)
    return next(directory.glob("litellm-*.whl"))


def read_wheel(wheel: Path) -> tuple[dict[str, Any], str, str]:
    """Return the price list, the litellm version and its licence text, read from the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        prices = json.loads(archive.read(PRICES_FILE))
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence_name = next(
            n for n in names if re.search(r"\.dist-info/(licenses/)?LICEN[CS]E(\.txt|\.md)?$", n)
        )
        licence = archive.read(licence_name).decode()
    version = re.search(r"^Version: (\S+)$", metadata, re.MULTILINE)
    if version is None:
        raise SystemExit(f"{wheel}: no Version in METADATA")
    return prices, version[1], licence


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a litellm wheel; default: pip download the latest")
    parser.add_argument("--output", type=Path, default=DATA_DIR, help="directory for catalog.json")
    parser.add_argument("--date", type=date.fromisoformat, default=date.today(), help="snapshot date")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = args.wheel or download_wheel(Path(scratch))
        prices, version, licence = read_wheel(wheel)
    catalog = build_catalog(prices, version, args.date)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "catalog.json").write_text(dump(catalog), encoding="utf-8")
    notice = (
        f"The model prices and context windows in catalog.json are derived from\n{PRICES_FILE}\n"
        f"of litellm {version} (https://github.com/BerriAI/litellm), used under this licence:\n\n"
    )
    (args.output / "LICENSE.litellm").write_text(notice + licence, encoding="utf-8")
    print(f"catalog.json: {catalog['snapshot']['models']} models from litellm {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
