"""Rebuild `src/tokenledger/data/catalog.json` from a series of litellm releases' price lists.

    python scripts/update_catalog.py                 # pip-downloads the RELEASES below (build time only)
    python scripts/update_catalog.py --wheels DIR    # or reads litellm-X-*.whl files already in DIR
    python scripts/update_catalog.py --check-dates   # compares RELEASES' dates with PyPI's index

litellm's `model_prices_and_context_window_backup.json` is MIT-licensed; its licence is copied to
`data/LICENSE.litellm`. tokenledger never imports litellm: the catalog is plain data.

The releases are read oldest to newest. A model listed once stays in the catalog: when a later
release no longer lists it, it is `retired` on the date of the last release that did, at its last
price. A price that changes between releases becomes a new dated entry, in force from the date of the
release that first shows it, so usage is costed at the price in force at its own time. The output
depends only on RELEASES (the price lists are checked against their SHA-256), never on the day of the
build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

DATA_DIR = Path(__file__).resolve().parent.parent / "src" / "tokenledger" / "data"
PRICES_FILE = "litellm/model_prices_and_context_window_backup.json"
PYPI_INDEX = "https://pypi.org/simple/litellm/"


class Release(NamedTuple):
    version: str
    date: str  # the day (UTC) PyPI received the release's first file
    prices_sha256: str  # of PRICES_FILE inside the wheel (the same in every platform's wheel)


# The first release of each calendar month, from 1.53.1 to 1.109.1 (the snapshot tokenledger shipped
# before), so a dated price lags the map's own change by at most about a month; and 1.14.4, the last
# release before a gap: litellm deleted 1.15 to 1.53.0 from PyPI, so nothing from 2024 before
# 2024-11-28 can be read. 1.14.4 gives gpt-4 and gpt-3.5-turbo their 2023 prices and keeps the models
# retired during 2024. A month's first release is skipped when its version is lower than the previous
# pick (a backported patch), and a pick within days of the next one is left out (1.53.2, 1.108.0).
# Dates: the earliest `upload-time` (UTC) among the release's files in PyPI's simple index
# (PYPI_INDEX as PEP 691 JSON, with PEP 700 upload times), read on 2026-11-30; `--check-dates` re-reads it.
RELEASES = [
    Release("1.14.4", "2023-12-14", "dea3cff44169b42d122073f903411e99d4f13a083f559ecb58a3e8eef4d439e8"),
    Release("1.53.1", "2024-11-28", "ae4d6d078e0f1e4d8737e2304eecd1d2c5f0c9ce1a52dabd374d980a128b7151"),
    Release("1.56.6", "2025-01-02", "cc399fbbf92db35509811ab13381df3076ef5152d496dd567b5e85468cd1282b"),
    Release("1.60.0", "2025-02-01", "25b9c5ec408d219ee766a6bc4108b672e96c3574529089906661a707c54967b0"),
    Release("1.62.1", "2025-03-03", "ac29ecd2f608a830bfbba938dee2ba36f3881025b73f500a317d354e6cfe9f5c"),
    Release("1.65.1", "2025-04-01", "dd4eb16bd4b6a32a57c58c169acf6d43266de6419fd10ff2c25c8f54a95a3fa7"),
    Release("1.67.6", "2025-05-02", "2d72eb9d7545606d0fc1d455c0646fe829258f64b95186685c63d4e3b973f001"),
    Release("1.72.0", "2025-06-01", "5dd6cd3a102dfce55689d40453f0d584ab34776d5d097e3eff56916d34860662"),
    Release("1.73.7", "2025-07-04", "8da6a250eb0ff84ef2212c4c11f9d7b29b94e142f38c28a6fb60a6368a34ecfb"),
    Release("1.74.14", "2025-08-02", "b543688408b55d0b587a86eac95c9f72168e550158332e23975c47057fc9f5e7"),
    Release("1.76.2", "2025-09-04", "dcf8fec82efddd7ee27b42e47361d227a3d64dfbe9216639230027a03ebc080a"),
    Release("1.77.7", "2025-10-05", "fd1dfb8bf948261ddb10c6c1eab34346d2e4adadc715e60e37d7d2a7b173d743"),
    Release("1.79.1", "2025-11-01", "618b08fb4c4085c8a3da5e6ed0286fc3c0b969ea04bd5d31dd335897f4102f6f"),
    Release("1.80.8", "2025-12-07", "231e10e07230286f32eb269f4a3a61a2a539b041c8c27d06d7617a9cc34edcdb"),
    Release("1.80.12", "2026-01-07", "f5379aabd9af8a22670e53137c2c4bb34b6d6a716315222ae2be397debfdb02e"),
    Release("1.81.6", "2026-02-01", "fd203239d57dc7fa5b6290a573b29ba960e27aa1bc0cc5ae08a5493e55906f7d"),
    Release("1.82.0", "2026-03-01", "fc3618cd45e12c13fa6a13a3f6d3f35eea5530a0b7ac7a44406adce387e0220f"),
    Release("1.83.1", "2026-04-03", "fed90edeb1f8c4d27571f87b2a7e5aec60b5837a947aa83578c9fcf71d6562db"),
    Release("1.84.0", "2026-05-14", "1114beea54200d45c2b2a1289d442af4bf9a343833615e4b36f950eee7a2cea7"),
    Release("1.85.3", "2026-06-02", "0b5e4258b32c98863a3efafb010531d627862a8cae28886604a3d463bd56730f"),
    Release("1.90.2", "2026-07-01", "5a3ac3d11bdaabf82c0b51e3772090f991b1ad7f04dee674b27e2edc7f4a4eb2"),
    Release("1.95.0", "2026-08-02", "4df7bc68d849882dbfb0ecc098eb3f23602635e2c79da14279e2d9cf9fbfe452"),
    Release("1.99.0", "2026-09-01", "4659fb1673b8b48678f344afe794bd3f5a5f7bf057678163dc49b434ca3b4470"),
    Release("1.101.4", "2026-10-01", "60e814a40446bb997f95f8c601ea63fddabfb1eff67caba97026e4322df295ca"),
    Release("1.109.1", "2026-11-12", "8f8060d8ce7a40c91b995c74d6a27657543d49e3c1c53430dabd556f244392c6"),
]

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
FIRST_PARTY = {"openai", "anthropic", "google", "mistral", "cohere", "deepseek", "xai", "meta"}
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


def merge(series: list[tuple[Release, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Return the catalog's models from the releases' entries, oldest release first."""
    models: dict[str, History] = {}
    for release, entries in series:
        for key, entry in entries.items():
            price = entry["price"]
            known = models.get(key)
            if known is None:
                models[key] = History(entry, [{"from": release.date, **price}], release.date)
                known = models[key]
            else:
                add_price(known.prices, release.date, price)
                known.entry, known.last_listed = entry, release.date
            known.aliases |= entry["aliases"]
    newest = series[-1][0].date
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


def build_catalog(series: list[tuple[Release, dict[str, Any]]]) -> dict[str, Any]:
    """Return the catalog document: its sources and dates, and one entry per model."""
    models = merge([(release, release_entries(prices)) for release, prices in series])
    aliases = {alias: model["name"] for model in models for alias in model.pop("aliases", ())}
    newest = series[-1][0]
    return {
        "snapshot": {
            "date": newest.date,
            "source": (
                f"litellm {series[0][0].version} to {newest.version}: {PRICES_FILE} "
                "(MIT, see LICENSE.litellm)"
            ),
            "litellm_version": newest.version,
            "models": len(models),
            "retired": sum(1 for model in models if "retired" in model),
        },
        "releases": [[release.version, release.date] for release, _ in series],
        "aliases": dict(sorted(aliases.items(), key=lambda item: item[0].lower())),
        "models": models,
    }


def dump(catalog: dict[str, Any]) -> str:
    """Return the catalog as JSON with one model per line, each starting with its name: diffs read per
    model, and tokenledger indexes the lines by name and parses a model's line only when asked for it."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    lines = [
        "{",
        f'"snapshot":{compact(catalog["snapshot"])},',
        f'"releases":{compact(catalog["releases"])},',
        f'"aliases":{compact(catalog["aliases"])},',
        '"models":[',
        ",\n".join(compact(model) for model in catalog["models"]),
        "]}",
    ]
    return "\n".join(lines) + "\n"


def download_wheel(release: Release, directory: Path) -> Path:
    """Return the path of a release's wheel, downloaded with pip into `directory`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    subprocess.run([*command, f"litellm=={release.version}", "-d", str(directory)], check=True)
    return find_wheel(release, directory)


def find_wheel(release: Release, directory: Path) -> Path:
    found = sorted(directory.glob(f"litellm-{release.version}-*.whl"))
    if not found:
        raise SystemExit(f"{directory}: no litellm-{release.version}-*.whl")
    return found[0]


def read_wheel(wheel: Path, release: Release) -> tuple[dict[str, Any], str]:
    """Return the price list and the licence text of a release's wheel, after checking both."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        raw = archive.read(PRICES_FILE)
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence_name = next(
            n for n in names if re.search(r"\.dist-info/(licenses/)?LICEN[CS]E(\.txt|\.md)?$", n)
        )
        licence = archive.read(licence_name).decode()
    version = re.search(r"^Version: (\S+)$", metadata, re.MULTILINE)
    if version is None or version[1] != release.version:
        raise SystemExit(f"{wheel}: METADATA says {version and version[1]}, expected {release.version}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != release.prices_sha256:
        raise SystemExit(f"{wheel}: {PRICES_FILE} has SHA-256 {digest}, expected {release.prices_sha256}")
    return json.loads(raw), licence


def first_upload_days(index: dict[str, Any]) -> dict[str, str]:
    """Return each version's first upload day (UTC) from a PEP 691 JSON simple index with PEP 700 times."""
    first: dict[str, str] = {}
    for file in index["files"]:
        match = re.match(r"litellm-(\d+(?:\.\d+)*)(?:-|\.tar\.gz$)", file["filename"])
        if match and not file.get("yanked") and file.get("upload-time"):
            uploaded = file["upload-time"][:10]
            first[match[1]] = min(first.get(match[1], uploaded), uploaded)
    return first


def wrong_dates(dates: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """Return (version, recorded date, PyPI's date) for every release whose dates differ."""
    return [(r.version, r.date, dates.get(r.version)) for r in RELEASES if dates.get(r.version) != r.date]


def check_dates() -> int:
    request = urllib.request.Request(PYPI_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        wrong = wrong_dates(first_upload_days(json.load(response)))
    for version, recorded, found in wrong:
        print(f"litellm {version}: recorded {recorded}, PyPI says {found}", file=sys.stderr)
    print(f"{len(RELEASES) - len(wrong)} of {len(RELEASES)} release dates match PyPI", file=sys.stderr)
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, help="a directory holding the releases' wheels")
    parser.add_argument("--output", type=Path, default=DATA_DIR, help="directory for catalog.json")
    parser.add_argument("--check-dates", action="store_true", help="compare RELEASES' dates with PyPI")
    args = parser.parse_args(argv)
    if args.check_dates:
        return check_dates()
    if [r.date for r in RELEASES] != sorted(r.date for r in RELEASES):
        raise SystemExit("RELEASES must be listed oldest first")
    series = []
    with tempfile.TemporaryDirectory() as scratch:
        for release in RELEASES:
            wheel = (
                find_wheel(release, args.wheels) if args.wheels else download_wheel(release, Path(scratch))
            )
            prices, licence = read_wheel(wheel, release)
            series.append((release, prices))
            if not args.wheels:
                wheel.unlink()  # one wheel on disk at a time
    catalog = build_catalog(series)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "catalog.json").write_text(dump(catalog), encoding="utf-8")
    newest = RELEASES[-1].version
    notice = (
        f"The model prices and context windows in catalog.json are derived from\n{PRICES_FILE}\n"
        f"of litellm releases {RELEASES[0].version} to {newest} (https://github.com/BerriAI/litellm),\n"
        f"used under this licence (as shipped in litellm {newest}):\n\n"
    )
    (args.output / "LICENSE.litellm").write_text(notice + licence, encoding="utf-8")
    snapshot = catalog["snapshot"]
    print(
        f"catalog.json: {snapshot['models']} models ({snapshot['retired']} retired) from "
        f"{len(RELEASES)} litellm releases, {RELEASES[0].version} to {newest}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
