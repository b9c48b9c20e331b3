"""Rebuild `src/tokenledger/data/catalog.json` from a series of litellm releases' price lists.

    python scripts/update_catalog.py                 # pip-downloads the RELEASES below (build time only)
    python scripts/update_catalog.py --wheels DIR    # or reads litellm-X-*.whl files already in DIR
    python scripts/update_catalog.py --check-dates   # compares RELEASES' dates with PyPI's index

litellm's `model_prices_and_context_window_backup.json` is MIT-licensed; its licence is copied to
`data/LICENSE.litellm`. tokenledger never imports litellm: the catalog is plain data. Which listings
are read, how names and prices are read and how releases merge is `tokenledger.pricelist`.

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
from pathlib import Path
from typing import Any, NamedTuple

from tokenledger.pricelist import merge, release_entries

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


def build_catalog(series: list[tuple[Release, dict[str, Any]]]) -> dict[str, Any]:
    """Return the catalog document: its sources and dates, and one entry per model."""
    models = merge([(release.date, release_entries(prices)) for release, prices in series])
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
