"""Retention drops whole monthly partitions; the daily rollups keep the totals reports show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tokenledger.cli import main
from tokenledger.ledger import Ledger
from tokenledger.types import TrackRequest, UsageQuery

pytestmark = pytest.mark.anyio


async def test_prune_drops_old_partitions_and_keeps_totals(ledger: Ledger) -> None:
    old = datetime.now(UTC) - timedelta(days=150)
    await ledger.store._fetch_rows("select tl_ensure_usage_partitions(%s, 0) as created", (old,))
    for user, model, tokens in (("ana", "gpt-4o", 100), ("ana", "gpt-4o-mini", 50), ("bo", "gpt-4o", 7)):
        await ledger.import_usage(
            TrackRequest(model=model, input_tokens=tokens, output_tokens=tokens, user=user, occurred_at=old)
        )
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=1, output_tokens=1, user="ana"))
    query = UsageQuery(since=old - timedelta(days=1), group_by=["user"])
    before = await ledger.usage(query)
    partition = f"tl_usage_{old:%Y%m}"

    result = await ledger.prune_usage(timedelta(days=90))

    assert result["dropped_partitions"] == [partition]
    remaining = await ledger.store._fetch_rows("select count(*) as n from tl_usage", ())
    assert remaining == [{"n": 1}]
    tables = await ledger.store._fetch_rows("select to_regclass(%s) is null as gone", (partition,))
    assert tables == [{"gone": True}]
    after = await ledger.usage(query)
    assert after.totals == before.totals and after.totals.requests == 4
    assert after.rows == before.rows
    assert (await ledger.prune_usage(timedelta(days=90)))["dropped_partitions"] == []


def test_prune_command(dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["prune", "--older-than", "90d"]) == 0
    assert "dropped 0 partition(s)" in capsys.readouterr().out
    assert main(["prune", "--older-than", "soon"]) == 1
    assert "--older-than" in capsys.readouterr().err
