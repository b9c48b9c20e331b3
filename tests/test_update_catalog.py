"""scripts/update_catalog.py: litellm price maps in, a dated catalog out (synthetic releases, no download)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenledger import pricelist
from tokenledger.catalog import Catalog

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "update_catalog.py"
_spec = importlib.util.spec_from_file_location("update_catalog", _SCRIPT)
assert _spec is not None and _spec.loader is not None
update_catalog = importlib.util.module_from_spec(_spec)
sys.modules["update_catalog"] = update_catalog  # dataclasses look their module up there
_spec.loader.exec_module(update_catalog)
Release = update_catalog.Release


def spec(provider: str, input_rate: float, output_rate: float, **extra: Any) -> dict[str, Any]:
    return {
        "litellm_provider": provider,
        "mode": "chat",
        "max_input_tokens": 200_000,
        "input_cost_per_token": input_rate,
        "output_cost_per_token": output_rate,
        **extra,
    }


def build(*maps: dict[str, Any]) -> dict[str, Any]:
    dates = ["2025-01-01", "2025-02-01", "2025-03-01", "2025-04-01"]
    series = [(Release(f"1.{i}.0", dates[i], ""), prices) for i, prices in enumerate(maps)]
    catalog: dict[str, Any] = update_catalog.build_catalog(series)
    return catalog


def model(catalog: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in catalog["models"] if m["name"] == name)
    return found


def test_prices_read_tiers_modes_and_one_hour_writes() -> None:
    price = pricelist.build_price(
        spec(
            "openai",
            2.5e-06,
            1.5e-05,
            cache_creation_input_token_cost=3.75e-06,
            cache_creation_input_token_cost_above_1hr=6e-06,
            input_cost_per_token_batches=1.25e-06,
            input_cost_per_token_above_272k_tokens=5e-06,
            input_cost_per_token_above_272k_tokens_flex=2.5e-06,
            cache_creation_input_token_cost_above_1hr_above_200k_tokens=1.2e-05,
            output_cost_per_token_priority=0,  # the source's placeholder for "unknown"
            input_cost_per_token_ultrafast=6e-05,  # a mode tokenledger does not model
        )
    )
    assert price == {
        "input": "0.0000025",
        "output": "0.000015",
        "cache_write": "0.00000375",
        "cache_write_1h": "0.000006",
        "batch": {"input": "0.00000125"},
        "tiers": [
            {"above_input_tokens": 200_000, "cache_write_1h": "0.000012"},
            {"above_input_tokens": 272_000, "input": "0.000005", "flex": {"input": "0.0000025"}},
        ],
    }
    assert pricelist.build_price(spec("openai", 0, 0)) == {}  # $0/$0: unpriced, not free


def test_a_model_that_disappears_is_retired_at_its_last_price() -> None:
    catalog = build(
        {"claude-x": spec("anthropic", 1e-06, 5e-06), "claude-y": spec("anthropic", 3e-06, 1.5e-05)},
        {"claude-x": spec("anthropic", 8e-07, 4e-06), "claude-y": spec("anthropic", 3e-06, 1.5e-05)},
        {"claude-y": spec("anthropic", 3e-06, 1.5e-05)},
    )
    gone = model(catalog, "claude-x")
    assert gone["retired"] == "2025-02-01"  # the last release that listed it
    assert gone["prices"] == [
        {"from": "2025-01-01", "input": "0.000001", "output": "0.000005"},
        {"from": "2025-02-01", "input": "0.0000008", "output": "0.000004"},
    ]
    assert "retired" not in model(catalog, "claude-y")
    assert model(catalog, "claude-y")["prices"] == [
        {"from": "2025-01-01", "input": "0.000003", "output": "0.000015"}
    ]
    assert catalog["snapshot"]["retired"] == 1 and catalog["snapshot"]["date"] == "2025-03-01"


def test_a_rate_added_later_joins_earlier_entries_and_a_removed_one_starts_a_new_entry() -> None:
    catalog = build(
        {"gpt-z": spec("openai", 1e-06, 2e-06)},
        {"gpt-z": spec("openai", 2e-06, 4e-06)},
        {"gpt-z": spec("openai", 2e-06, 4e-06, input_cost_per_token_batches=1e-06)},
        {"gpt-z": spec("openai", 2e-06, 4e-06)},
    )
    assert model(catalog, "gpt-z")["prices"] == [
        {"from": "2025-01-01", "input": "0.000001", "output": "0.000002", "batch": {"input": "0.000001"}},
        {"from": "2025-02-01", "input": "0.000002", "output": "0.000004", "batch": {"input": "0.000001"}},
        {"from": "2025-04-01", "input": "0.000002", "output": "0.000004"},
    ]


def test_names_hosts_and_aliases() -> None:
    catalog = build(
        {
            "gemini/gemini-9": spec("gemini", 1e-06, 2e-06),
            "gemini-9": spec("vertex_ai-language-models", 1.5e-06, 3e-06),  # Vertex AI's bare name
            "azure/gpt-z": spec("azure", 1e-06, 2e-06),
            "openai/container": spec("openai", 1e-06, 1e-06),  # a billing item
            "some-embedding": {**spec("openai", 1e-06, 0), "mode": "embedding"},
        }
    )
    names = {m["name"]: m["provider"] for m in catalog["models"]}
    assert names == {"gemini-9": "google", "vertex_ai/gemini-9": "vertex_ai", "azure/gpt-z": "azure"}
    assert catalog["aliases"] == {"gemini/gemini-9": "gemini-9"}


@pytest.mark.parametrize("layout", ["lines", "pretty"])
def test_the_written_catalog_loads_and_prices_by_date(tmp_path: Path, layout: str) -> None:
    catalog = build(
        {"gpt-z": spec("openai", 1e-06, 2e-06), "gemini/gemini-9": spec("gemini", 1e-06, 2e-06)},
        {"gpt-z": spec("openai", 2e-06, 4e-06), "gemini/gemini-9": spec("gemini", 1e-06, 2e-06)},
    )
    path = tmp_path / "catalog.json"
    text = update_catalog.dump(catalog) if layout == "lines" else json.dumps(catalog, indent=2)
    path.write_text(text, encoding="utf-8")
    loaded = Catalog(path)
    assert loaded.resolve("gemini/gemini-9").name == "gemini-9"
    assert loaded.resolve("gpt-z").price.input == Decimal("0.000002")
    assert loaded.price_at("gpt-z", datetime(2025, 1, 31, tzinfo=UTC)).input == Decimal("0.000001")
    assert [h.source for h in loaded.price_history("gpt-z")] == ["litellm 1.0.0", "litellm 1.1.0"]
    assert loaded.snapshot.models == 2 and loaded.providers() == ["google", "openai"]


def test_releases_are_recorded_oldest_first_with_their_checksums() -> None:
    releases = update_catalog.RELEASES
    assert [r.date for r in releases] == sorted(r.date for r in releases)
    assert releases[-1].version == "1.109.1"
    assert all(len(r.prices_sha256) == 64 for r in releases)


def wheel(directory: Path, version: str, prices: dict[str, Any]) -> tuple[Path, str]:
    """Write a minimal litellm wheel holding `prices`; return it and its price list's SHA-256."""
    raw = json.dumps(prices).encode()
    path = directory / f"litellm-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(update_catalog.PRICES_FILE, raw)
        archive.writestr(f"litellm-{version}.dist-info/METADATA", f"Name: litellm\nVersion: {version}\n")
        archive.writestr(f"litellm-{version}.dist-info/licenses/LICENSE", "MIT License\nCopyright Berri AI\n")
    return path, hashlib.sha256(raw).hexdigest()


def test_the_script_builds_from_wheels_and_checks_their_price_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    _, old = wheel(wheels, "1.0.0", {"claude-x": spec("anthropic", 1e-06, 5e-06)})
    _, new = wheel(wheels, "1.1.0", {"claude-y": spec("anthropic", 3e-06, 1.5e-05)})
    releases = [Release("1.0.0", "2025-01-01", old), Release("1.1.0", "2025-02-01", new)]
    monkeypatch.setattr(update_catalog, "RELEASES", releases)
    assert update_catalog.main(["--wheels", str(wheels), "--output", str(out)]) == 0
    first = (out / "catalog.json").read_text(encoding="utf-8")
    built = Catalog(out / "catalog.json")
    assert built.resolve("claude-x").retired and built.snapshot.releases[-1][0] == "1.1.0"
    assert "litellm releases 1.0.0 to 1.1.0" in (out / "LICENSE.litellm").read_text(encoding="utf-8")
    assert update_catalog.main(["--wheels", str(wheels), "--output", str(out)]) == 0
    assert (out / "catalog.json").read_text(encoding="utf-8") == first  # the same input, the same file

    monkeypatch.setattr(update_catalog, "RELEASES", [Release("1.0.0", "2025-01-01", "0" * 64)])
    with pytest.raises(SystemExit, match="SHA-256"):
        update_catalog.main(["--wheels", str(wheels), "--output", str(out)])


def test_release_dates_are_the_first_upload_day_on_pypi() -> None:
    index = {
        "files": [
            {"filename": "litellm-1.14.4.tar.gz", "upload-time": "2023-12-14T22:40:00Z"},
            {"filename": "litellm-1.14.4-py3-none-any.whl", "upload-time": "2023-12-14T22:33:11.17Z"},
            {
                "filename": "litellm-1.53.1-py3-none-any.whl",
                "upload-time": "2024-11-29T01:00:00Z",
                "yanked": True,
            },
            {"filename": "litellm-1.53.1-py3-none-any.whl", "upload-time": "2024-11-28T05:36:31Z"},
        ]
    }
    days = update_catalog.first_upload_days(index)
    assert days == {"1.14.4": "2023-12-14", "1.53.1": "2024-11-28"}
    wrong = update_catalog.wrong_dates(days)
    assert ("1.14.4", "2023-12-14", "2023-12-14") not in wrong  # recorded as PyPI says
    assert ("1.56.6", "2025-01-02", None) in wrong  # not in this index
