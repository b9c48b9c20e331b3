"""Alerts reach real receivers on loopback: an HTTP webhook server and an SMTP server, exactly once."""

from __future__ import annotations

import asyncio
import email
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.servers import free_port
from tokenledger.alerts import Dispatcher, EmailSink, LogSink, SlackSink, WebhookSink, sinks_from_env
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, TrackRequest

pytestmark = pytest.mark.anyio


class Receiver:
    """A webhook receiver on loopback that can be told to fail its first N requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.calls += 1
                failing = receiver.calls <= receiver.fail_first
                if not failing:
                    receiver.bodies.append(body)
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


async def cross_thresholds(ledger: Ledger, name: str = "team") -> None:
    await ledger.set_budget(
        BudgetSpec(name=name, scope=f"user:{name}", limit=Decimal(1000), period="day", priority_shares=None)
    )
    for tokens in (600, 200, 150):  # 60 %, 80 %, 95 %: crosses 50, 75, 90
        await ledger.track_usage(
            TrackRequest(model="gpt-4o", input_tokens=tokens, output_tokens=0, user=name)
        )


async def test_thresholds_are_delivered_once_to_a_webhook(ledger: Ledger, receiver: Receiver) -> None:
    await cross_thresholds(ledger)
    dispatcher = Dispatcher(ledger, [WebhookSink(receiver.url)])
    assert await dispatcher.run_once() == 3
    assert await dispatcher.run_once() == 0
    await ledger.track_usage(
        TrackRequest(model="gpt-4o", input_tokens=10, output_tokens=0)
    )  # 96 %: nothing new
    assert await dispatcher.run_once() == 0
    assert sorted(b["threshold"] for b in receiver.bodies) == [50, 75, 90]
    body = receiver.bodies[0]
    assert body["budget"] == "team" and body["unit"] == "tokens" and "crossed" in body["text"]
    assert len({b["id"] for b in receiver.bodies}) == 3
    alerts = await ledger.store.alerts(tenant="default")
    assert all(a["delivered_at"] is not None for a in alerts)


async def test_a_receiver_failing_twice_gets_the_alert_once(ledger: Ledger) -> None:
    flaky = Receiver(fail_first=2)
    try:
        await ledger.set_budget(BudgetSpec(name="b", limit=Decimal(100), priority_shares=None))
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=50, output_tokens=0))
        dispatcher = Dispatcher(ledger, [WebhookSink(flaky.url)], base_backoff=0.05)
        delivered = 0
        for _ in range(40):
            delivered += await dispatcher.run_once()
            if delivered:
                break
            await asyncio.sleep(0.05)
        assert delivered == 1 and flaky.calls == 3 and len(flaky.bodies) == 1
        [delivery] = await ledger.store.alert_deliveries(tenant="default")
        assert delivery["attempts"] == 3 and delivery["delivered_at"] is not None
    finally:
        flaky.close()


async def test_a_failing_sink_does_not_block_the_others(ledger: Ledger, receiver: Receiver) -> None:
    await cross_thresholds(ledger)
    dead = WebhookSink("http://127.0.0.1:9/never", timeout=1)  # the discard port: nothing listens
    dispatcher = Dispatcher(ledger, [dead, WebhookSink(receiver.url), LogSink()], base_backoff=60)
    assert await dispatcher.run_once() == 6  # 3 alerts x the two working sinks
    deliveries = await ledger.store.alert_deliveries(tenant="default")
    failed = [d for d in deliveries if d["sink"] == dead.name]
    assert len(failed) == 3 and all(d["delivered_at"] is None and d["last_error"] for d in failed)
    assert all("127.0.0.1" not in d["last_error"] for d in failed)  # the URL (a secret) is not stored
    assert all(d["next_attempt_at"] > datetime.now(UTC) for d in failed)
    assert len(receiver.bodies) == 3


async def test_four_dispatchers_deliver_each_alert_exactly_once(
    dsn: str, ledger: Ledger, receiver: Receiver
) -> None:
    for name in ("a", "b", "c", "d", "e"):
        await cross_thresholds(ledger, name)  # 15 alerts
    stores = [await Store.open(dsn, migrate=False, max_size=4) for _ in range(4)]
    try:
        dispatchers = [Dispatcher(Ledger(store), [WebhookSink(receiver.url)]) for store in stores]
        totals = await asyncio.gather(*(d.run_once(limit=4) for d in dispatchers for _ in range(3)))
        while sum(totals) < 15:
            totals.append(await dispatchers[0].run_once())
            if totals[-1] == 0:
                break
        assert sum(totals) == 15
    finally:
        for store in stores:
            await store.close()
    ids = [b["id"] for b in receiver.bodies]
    assert len(ids) == 15 and len(set(ids)) == 15
    assert len(await ledger.store.alerts(tenant="default")) == 15


async def test_email_over_smtp_and_slack(ledger: Ledger, receiver: Receiver) -> None:
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        mail_sink = EmailSink.from_url(
            f"smtp://127.0.0.1:{port}?from=ledger@example.test&to=ops@example.test"
        )
        slack = SlackSink(receiver.url)
        await ledger.set_budget(
            BudgetSpec(name="usd", unit="usd", limit=Decimal("0.01"), priority_shares=None)
        )
        await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=2000, output_tokens=0))  # $0.005
        assert await Dispatcher(ledger, [mail_sink, slack]).run_once() == 2
    finally:
        controller.stop()
    assert len(received) == 1 and received[0].rcpt_tos == ["ops@example.test"]
    message = email.message_from_bytes(received[0].content)
    assert message["Subject"] == "[tokenledger] Budget usd crossed 50%: $0.005 of $0.01 used (50.00%)"
    assert receiver.bodies == [{"text": ":warning: Budget usd crossed 50%: $0.005 of $0.01 used (50.00%)"}]


async def test_forecast_alert_when_the_rate_runs_out_before_the_period_ends(ledger: Ledger) -> None:
    # A time zone where it is about 06:00 now: a quarter of the day has passed.
    offset = (6 - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    zone = f"Etc/GMT{'-' if offset >= 0 else '+'}{abs(offset)}"  # Etc/GMT-X is UTC+X
    await ledger.set_budget(
        BudgetSpec(
            name="day",
            limit=Decimal(1000),
            period="day",
            timezone=zone,
            priority_shares=None,
            alert_thresholds=[Decimal(100)],
        )
    )
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=500, output_tokens=0))
    assert await ledger.forecast_alerts() == 1
    assert await ledger.forecast_alerts() == 0  # once per budget and period
    [alert] = await ledger.store.alerts(tenant="default")
    assert alert["kind"] == "forecast" and alert["percent_used"] > 100


def test_sinks_from_env_never_name_secrets() -> None:
    sinks = sinks_from_env(
        {
            "TOKENLEDGER_ALERT_WEBHOOK": "https://hooks.example.test/a?token=s3cret",
            "TOKENLEDGER_ALERT_SLACK_WEBHOOK": "https://hooks.slack.test/T/B/s3cret",
            "TOKENLEDGER_ALERT_SMTP": "smtp://u:s3cret@127.0.0.1:2525?from=a@x.test&to=b@x.test",
        }
    )
    assert [s.name.split(":")[0] for s in sinks] == ["webhook", "slack", "email", "log"]
    assert all("s3cret" not in s.name for s in sinks)
    with pytest.raises(ValueError, match="TOKENLEDGER_ALERT_SMTP"):
        sinks_from_env({"TOKENLEDGER_ALERT_SMTP": "smtp://u:s3cret@host"})
