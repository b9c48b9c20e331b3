"""Catalog updates without a release: a saved price list checked, diffed, stored with its source and
taken by every ledger; usage keeps the price of its own time; hostile files change nothing."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from tokenledger.catalog import Catalog, CatalogUpdate
from tokenledger.cli import main
from tokenledger.cli.serve import poll_catalog
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.pricefile import MAX_FILE_BYTES, read_price_file
from tokenledger.store import Store
from tokenledger.types import TrackRequest

pytestmark = pytest.mark.anyio

MILLION = 1_000_000
# A newer price list, litellm's format: gpt-4o cheaper, a model the bundled catalog has never seen, and
# one other OpenAI model kept as it is (every other OpenAI model is no longer listed: retired).
NEWER = {
    "sample_spec": {"mode": "chat", "input_cost_per_token": 0},
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "input_cost_per_token": 2e-06,
        "output_cost_per_token": 8e-06,
    },
    "gpt-6-preview": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 400000,
        "input_cost_per_token": "0.000005",
        "output_cost_per_token": 4e-05,
    },
    "gpt-4o-mini-tts": {"litellm_provider": "openai", "mode": "audio_speech", "input_cost_per_token": -5},
}


def _file(tmp_path: Path, document: Any, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def test_a_litellm_map_and_an_openrouter_answer_are_read_as_catalog_entries() -> None:
    listed = read_price_file(json.dumps(NEWER).encode(), "prices.json")
    assert listed.source_kind == "litellm" and sorted(listed.entries) == ["gpt-4o", "gpt-6-preview"]
    assert listed.entries["gpt-4o"]["price"] == {"input": "0.000002", "output": "0.000008"}
    assert len(listed.sha256) == 64 and listed.size_bytes == len(json.dumps(NEWER))
    openrouter = {
        "data": [
            {
                "id": "anthropic/claude-sonnet-4.5",
                "context_length": 1000000,
                "architecture": {"output_modalities": ["text"]},
                "pricing": {"prompt": "0.000003", "completion": "0.000015", "input_cache_read": "0.0000003"},
                "top_provider": {"max_completion_tokens": 64000},
            },
            {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
            {"id": "x/image", "architecture": {"output_modalities": ["image"]}, "pricing": {"prompt": "1"}},
        ]
    }
    routed = read_price_file(json.dumps(openrouter).encode(), "models.json")
    assert routed.source_kind == "openrouter"
    entry = routed.entries["openrouter/anthropic/claude-sonnet-4.5"]
    assert entry["provider"] == "openrouter" and entry["context_window"] == 1000000
    assert entry["price"] == {"input": "0.000003", "output": "0.000015", "cache_read": "0.0000003"}
    assert routed.skipped == ("openrouter/openrouter/auto: variable price (-1)",)


def _spec(**rates: Any) -> bytes:
    return json.dumps({"m": {"litellm_provider": "openai", "mode": "chat", **rates}}).encode()


HOSTILE = [
    (b"{not json", "invalid JSON at line 1"),
    (b'{"m": {"mode": "chat", "input_cost_per_token": NaN}}', "NaN is not a number"),
    (b"[1, 2]", "the file holds a JSON list"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"m": ' + b"9" * 5000 + b"}", "integer"),
    (_spec(input_cost_per_token=-1e-06, output_cost_per_token=1e-06), "m.input_cost_per_token"),
    (_spec(input_cost_per_token="2", output_cost_per_token=1e-06), "0 to 1"),
    (_spec(input_cost_per_token="1e-30", output_cost_per_token=1e-06), "18 decimal places"),
    (_spec(input_cost_per_token="cheap", output_cost_per_token=1e-06), "a decimal number"),
    (_spec(input_cost_per_token=[1], output_cost_per_token=1e-06), "a decimal number"),
    (
        _spec(input_cost_per_token=1e-06, output_cost_per_token=1e-06, max_input_tokens=10**12),
        "0 to 1,000,000,000",
    ),
    (json.dumps({"bad\nname": {"litellm_provider": "openai", "mode": "chat"}}).encode(), "printable text"),
    (json.dumps({"x" * 201: {"litellm_provider": "openai", "mode": "chat"}}).encode(), "1 to 200 characters"),
    (
        json.dumps({"data": [{"id": "a/b", "pricing": {"prompt": "-0.5", "completion": "1e-6"}}]}).encode(),
        "0 to 1",
    ),
    (json.dumps({"data": ["a"]}).encode(), "an object with an id"),
    (
        json.dumps({"image-model": {"litellm_provider": "openai", "mode": "image_generation"}}).encode(),
        "lists none",
    ),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE)
def test_a_hostile_or_malformed_file_is_refused_with_a_clear_error(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        read_price_file(raw, "prices.json")
    assert reason in str(refused.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(InvalidInput, match=f"at most {MAX_FILE_BYTES:,} bytes"):
        read_price_file(b" " * (MAX_FILE_BYTES + 1), "huge.json")


def test_an_update_older_than_the_bundled_snapshot_is_superseded() -> None:
    listed = read_price_file(json.dumps(NEWER).encode(), "old.json")
    old = CatalogUpdate(
        1, datetime(2026, 1, 1, tzinfo=UTC), "old.json", "litellm", listed.sha256, 2, listed.entries
    )
    catalog = Catalog(updates=[old]).load()
    assert catalog.superseded_updates == [old] and catalog.applied_updates == []
    assert catalog.resolve("gpt-4o").price.input == Decimal("0.0000025")  # the bundled price stays


async def test_an_update_adds_a_model_and_changes_a_price_from_its_own_moment(ledger: Ledger) -> None:
    before = await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0))
    assert before.cost_usd == Decimal("2.5")
    update, diff = await ledger.update_catalog(
        read_price_file(json.dumps(NEWER).encode(), "prices.json"), actor="operator:test"
    )
    assert [m.name for m in diff.added] == ["gpt-6-preview"] and [m.name for m in diff.changed] == ["gpt-4o"]
    assert any(m.name == "gpt-4o-mini" for m in diff.retired)

    after = await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=MILLION, output_tokens=0))
    assert after.cost_usd == Decimal("2")
    new_model = await ledger.track_usage(
        TrackRequest(model="gpt-6-preview", input_tokens=MILLION, output_tokens=0)
    )
    assert new_model.cost_usd == Decimal("5")
    # Usage dated before the update keeps the price of its time, however late it is reported.
    late = await ledger.track_usage(
        TrackRequest(
            model="gpt-4o",
            input_tokens=MILLION,
            output_tokens=0,
            occurred_at=update.effective_from - timedelta(minutes=1),
        )
    )
    assert late.cost_usd == Decimal("2.5")
    stored = await ledger.store._fetch_rows("select cost_usd from tl_usage order by recorded_at", ())
    assert [row["cost_usd"] for row in stored] == [Decimal("2.5"), Decimal("2"), Decimal("5"), Decimal("2.5")]

    history = ledger.catalog.price_history("gpt-4o")
    assert history[-2].effective_until == update.effective_from == history[-1].effective_from
    assert history[-1].source == "catalog update 1 (prices.json)" and history[-2].price.input == Decimal(
        "0.0000025"
    )
    retired = ledger.catalog.resolve("gpt-4o-mini")
    assert retired.retired and "catalog update" not in retired.warnings[0]  # last listed by the bundled list

    rows = await ledger.store._fetch_rows(
        "select sha256, source_name, created_by, models from tl_catalog_update", ()
    )
    assert rows == [
        {"sha256": update.sha256, "source_name": "prices.json", "created_by": "operator:test", "models": 2}
    ]
    audit = await ledger.store.audit_log(tenant="*")
    assert audit[0]["object_kind"] == "catalog" and audit[0]["after"]["summary"]["added"] == 1
    assert "entries" not in audit[0]["after"]


async def test_another_ledger_takes_the_update_at_its_next_poll(ledger: Ledger, dsn: str) -> None:
    other_store = await Store.open(dsn, migrate=False, max_size=2)
    other = Ledger(other_store)
    try:
        assert await other.refresh_catalog() is False  # nothing stored: one index probe
        await ledger.update_catalog(read_price_file(json.dumps(NEWER).encode(), "prices.json"), actor="op")
        assert other.catalog.resolve("gpt-4o").price.input == Decimal("0.0000025")  # not yet polled
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(poll_catalog, other, 0.05)  # the server's poll, at a test's pace
            with anyio.fail_after(10):
                while other.catalog.resolve("gpt-4o").price.input != Decimal("0.000002"):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
        tracked = await other.track_usage(
            TrackRequest(model="gpt-6-preview", input_tokens=MILLION, output_tokens=0)
        )
        assert tracked.cost_usd == Decimal("5")
        assert await other.refresh_catalog() is False
    finally:
        await other_store.close()


@pytest.fixture
def database(dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    return dsn


def test_catalog_diff_update_and_status_commands(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, NEWER)
    assert main(["catalog", "diff", "--from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "catalog diff: prices.json (litellm, 2 models" in out
    assert "added: 1\n  gpt-6-preview (openai): input 5 / output 40 per million, context 400,000" in out
    assert "price changes, USD per million tokens: 1" in out
    assert (
        "gpt-4o (openai): batch.input 1.25 -> -; batch.output 5 -> -; cache_read 1.25 -> -; input 2.5 -> 2;"
        in out
    )
    retired = re.search(r"retired \(no longer listed\): ([\d,]+)\n", out)
    assert retired is not None and int(retired[1].replace(",", "")) > 100  # every other OpenAI model
    assert "more (--json lists every one)" in out

    assert main(["catalog", "update", "--from", str(path)]) == 1  # no terminal, no --yes: nothing stored
    assert "--yes" in capsys.readouterr().err
    assert main(["catalog", "status"]) == 0
    assert "updates: none" in capsys.readouterr().out

    assert main(["catalog", "update", "--from", str(path), "--yes"]) == 0
    assert "catalog update 1 stored" in capsys.readouterr().out
    assert main(["catalog", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["bundled"]["date"] == "2026-11-12"
    assert status["updates"][0]["source"] == "prices.json" and status["updates"][0]["applied"] is True
    assert status["updates"][0]["created_by"].startswith("operator:")


def test_a_refused_file_changes_nothing(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _file(
        tmp_path, {"gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": -1}}
    )
    assert main(["catalog", "update", "--from", str(bad), "--yes"]) == 1
    err = capsys.readouterr().err
    assert "gpt-4o.input_cost_per_token" in err and "-1" in err
    assert main(["catalog", "update", "--from", str(tmp_path / "missing.json"), "--yes"]) == 1
    assert "a readable file" in capsys.readouterr().err
    assert main(["catalog", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["updates"] == []


@pytest.fixture
def price_server() -> Iterator[str]:
    body = json.dumps(NEWER).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/prices.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_is_fetched_once_and_said_so(
    database: str, price_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["catalog", "diff", "--from", f"{price_server}/prices.json"]) == 0
    captured = capsys.readouterr()
    assert f"fetching {price_server}/prices.json (at most 32 MiB within 30 s)" in captured.err
    assert "added: 1" in captured.out
    assert main(["catalog", "diff", "--from", f"{price_server}/gone.json"]) == 1
    assert "answered 404" in capsys.readouterr().err


def test_a_retired_model_listed_again_is_said_so_and_priced_from_the_update() -> None:
    relisted = {
        "claude-3-5-haiku-20241022": {  # retired in the bundled catalog (last listed 2026-03-01)
            "litellm_provider": "anthropic",
            "mode": "chat",
            "input_cost_per_token": 8e-07,
            "output_cost_per_token": 4e-06,
        }
    }
    listed = read_price_file(json.dumps(relisted).encode(), "anthropic.json")
    diff = Catalog().diff(listed.entries)
    assert [model.name for model in diff.relisted] == ["claude-3-5-haiku-20241022"] and not diff.added
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    update = CatalogUpdate(1, at, "anthropic.json", "litellm", listed.sha256, 1, listed.entries)
    model = Catalog(updates=[update]).resolve("claude-3-5-haiku-20241022")
    assert not model.retired and not model.warnings
