"""A running server delivers threshold alerts from the outbox by itself, within seconds of the crossing."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from tests.test_alerts import Receiver
from tests.test_serve import serve
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, TrackRequest

pytestmark = pytest.mark.anyio


def wait_for_a_body(receiver: Receiver, seconds: float) -> None:
    """Poll the receiver (an HTTP server on its own thread) until it has a body or time runs out."""
    deadline = time.monotonic() + seconds
    while not receiver.bodies and time.monotonic() < deadline:
        time.sleep(0.1)


async def test_the_server_delivers_a_crossing_within_seconds(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    monkeypatch.setenv("TOKENLEDGER_ALERT_WEBHOOK", receiver.url)
    monkeypatch.setenv("TOKENLEDGER_ALERT_POLL_SECONDS", "0.5")
    try:
        with serve(dsn, tmp_path / "home"):
            store = await Store.open(dsn, migrate=False)
            try:
                ledger = Ledger(store)
                await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(100), priority_shares=None))
                crossed = time.monotonic()
                await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=60, output_tokens=0))
                await anyio.to_thread.run_sync(wait_for_a_body, receiver, 60.0)
            finally:
                await store.close()
            delivered_after = time.monotonic() - crossed
        assert [b["threshold"] for b in receiver.bodies] == [50]
        assert delivered_after < 60, "the issue's promise: delivered within 60 s of the crossing"
    finally:
        receiver.close()
