"""Alerts reach real receivers on loopback: an HTTP webhook server and an SMTP server, exactly once; and
each says what to do about it (the budget's figures, its top spenders, recommendations, the dashboard) in
every form, or goes out with a note when that cannot be computed."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.servers import Mailbox, free_port
from tokenledger.alert_notices import AlertContext, Recommendation, Spender, alert_notice
from tokenledger.alerts import Dispatcher, EmailSink, LogSink, SlackSink, WebhookSink, sinks_from_env
from tokenledger.errors import InvalidInput
from tokenledger.ledger import SPENDER_DIMENSIONS, Ledger
from tokenledger.settings import MAX_PUBLIC_URL_LENGTH, ReportLimits, Settings, public_url
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, Principal, TrackRequest

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


async def test_two_sinks_finishing_at_once_mark_the_alert_delivered(dsn: str, ledger: Ledger) -> None:
    """Two dispatchers finish the same alert's two sinks in overlapping transactions. Each used to see the
    other's sink still undelivered (its write not yet committed), so neither marked the alert delivered and
    it stayed pending for ever; now the second waits on the alert's row and sees the first's delivery."""
    import psycopg

    await ledger.set_budget(BudgetSpec(name="b", limit=Decimal(100), priority_shares=None))
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=50, output_tokens=0))  # crosses 50 %
    claimed = await ledger.claim_alert_deliveries(["one", "two"])
    assert sorted(d["sink"] for d in claimed) == ["one", "two"]
    [alert_id] = {d["alert_id"] for d in claimed}
    finish = "select tl_finish_alert_delivery('default', %s, %s, null, null)"
    first = await psycopg.AsyncConnection.connect(dsn)
    second = await psycopg.AsyncConnection.connect(dsn)
    try:
        await first.execute(finish, (alert_id, "one"))  # open: its delivery is not committed yet

        async def finish_second() -> None:
            await second.execute(finish, (alert_id, "two"))
            await second.commit()

        racing = asyncio.create_task(finish_second())
        await asyncio.sleep(0.5)  # the second is inside its call now (waiting, with the fix)
        await first.commit()
        await asyncio.wait_for(racing, 30)
    finally:
        await first.close()
        await second.close()
    [alert] = await ledger.store.alerts(tenant="default")
    assert alert["delivered_at"] is not None


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
    [posted] = receiver.bodies
    assert posted["text"] == "[tokenledger] Budget usd crossed 50%: $0.005 of $0.01 used (50.00%)"
    assert posted["blocks"][1]["text"]["text"] == (
        ":warning: Budget usd crossed 50%: $0.005 of $0.01 used (50.00%)"
    )


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


# --- alerts a person can act on -------------------------------------------------------------------

PUBLIC_URL = "https://ledger.example.test/tl"
STABLE_FIELDS = {
    "id",
    "tenant_id",
    "alert_id",
    "budget",
    "kind",
    "threshold",
    "percent_used",
    "used",
    "limit",
    "unit",
    "period_start",
    "created_at",
    "text",
}


@pytest.fixture
def slack() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


async def team_spend(ledger: Ledger) -> None:
    """Team search's $10-a-month budget crosses 50 %: ana, dan, bob and eve of the team spend in that order
    of size; carol of team ads spends the most of all, outside the budget's scope."""
    await ledger.set_budget(
        BudgetSpec(
            name="search",
            scope="team:search",
            unit="usd",
            limit=Decimal(10),
            period="month",
            priority_shares=None,
        )
    )
    calls = [
        ("ana-7f", "search", "chat", "gpt-4o", "2.50"),
        ("dan-3c", "search", "rag", "gpt-4o", "1.50"),
        ("bob-9e", "search", "rag", "gpt-4o-mini", "0.60"),
        ("eve-2a", "search", "chat", "gpt-4o-mini", "0.10"),
        ("carol-5d", "ads", "chat", "gpt-4o", "9.00"),
        ("ana-7f", "search", "chat", "gpt-4o", "0.50"),  # $5.20 in team search: 52 %
    ]
    for user, team, feature, model, cost in calls:
        await ledger.track_usage(
            TrackRequest(
                model=model,
                input_tokens=20_000,
                output_tokens=200,
                cost_usd=Decimal(cost),
                user=user,
                team=team,
                feature=feature,
            )
        )


async def test_an_alert_says_what_to_do_in_every_form(
    ledger: Ledger, mailbox: Mailbox, receiver: Receiver, slack: Receiver
) -> None:
    await team_spend(ledger)
    sinks = [EmailSink.from_url(mailbox.url), WebhookSink(receiver.url), SlackSink(slack.url)]
    dispatcher = Dispatcher(ledger, sinks, public_url=PUBLIC_URL)
    assert await dispatcher.run_once() == 3
    assert await dispatcher.run_once() == 0
    state = (await ledger.get_budget("search")).state
    assert state.used == Decimal("5.20") and state.remaining == Decimal("4.80")

    [body] = receiver.bodies
    assert set(body) >= STABLE_FIELDS
    assert body["threshold"] == 50 and body["kind"] == "threshold" and body["budget"] == "search"
    assert body["text"] == "Budget search crossed 50%: $5.20 of $10.00 used (52.00%)"
    figures = body["figures"]
    assert (figures["limit"], figures["used"], figures["remaining"]) == ("10", "5.20", "4.80")
    assert figures["scope"] == "team:search" and Decimal(figures["days_left"]) > 0
    by = body["spenders"]["by"]
    assert list(by) == ["user", "feature", "model"]
    assert [(s["name"], s["amount"]) for s in by["user"]] == [
        ("ana-7f", "3.00"),
        ("dan-3c", "1.50"),
        ("bob-9e", "0.60"),
    ]  # the three largest: eve's $0.10 is fourth
    assert by["feature"][0] == {"name": "chat", "amount": "3.10", "share": "59.6"}
    recommendations = body["recommendations"]["rows"]
    assert recommendations and recommendations[0]["kind"] == "cheaper_model"
    assert Decimal(recommendations[0]["saving_usd"]) > 0
    assert body["dashboard_url"] == f"{PUBLIC_URL}/dashboard" and body["notes"] == []
    assert "carol-5d" not in json.dumps(body)  # another team's user is no part of this budget's alert

    [mail] = mailbox.messages()
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for shown in (text, html):
        for figure in (
            "$10.00",
            "$5.20",
            "$4.80",
            "ana-7f",
            "dan-3c",
            "bob-9e",
            "gpt-4o-mini",
            recommendations[0]["suggestion"],
            f"${Decimal(recommendations[0]['saving_usd']).quantize(Decimal('0.01'))}",
            "days left",
        ):
            assert figure in shown, figure
        assert "carol-5d" not in shown and "eve-2a" not in shown
        assert f"{PUBLIC_URL}/dashboard" in shown
    assert "limit:      $10.00" in text and "remaining:  $4.80" in text
    assert "by user: ana-7f $3.00 (57.7%), dan-3c $1.50 (28.8%), bob-9e $0.60 (11.5%)" in text
    assert f'<a href="{PUBLIC_URL}/dashboard"' in html
    assert "<img" not in html and "<script" not in html and "src=" not in html

    [posted] = slack.bodies
    kinds = [block["type"] for block in posted["blocks"]]
    assert kinds == ["header", "section", "section", "section", "section", "actions", "context"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in posted["blocks"][2]["fields"]}
    assert fields["*limit*"] == "$10.00" and fields["*spent*"] == "$5.20" and fields["*remaining*"] == "$4.80"
    spenders = posted["blocks"][3]["text"]["text"]
    assert "by user: ana-7f $3.00 (57.7%), dan-3c $1.50 (28.8%), bob-9e $0.60 (11.5%)" in spenders
    assert "saves $" in posted["blocks"][4]["text"]["text"]
    assert posted["blocks"][5]["elements"][0]["url"] == f"{PUBLIC_URL}/dashboard"
    assert "carol-5d" not in json.dumps(posted)


async def test_a_context_that_fails_or_runs_late_never_holds_an_alert_back(
    dsn: str, ledger: Ledger, receiver: Receiver, slack: Receiver
) -> None:
    await team_spend(ledger)
    # Every report connection taken, and none waited for: the context's queries are refused as busy.
    busy = await Store.open(dsn, migrate=False, reports=ReportLimits(concurrency=1, wait_seconds=0))
    try:
        async with busy.report_pool.connection(timeout=10):
            sinks = [WebhookSink(receiver.url), SlackSink(slack.url)]
            assert await Dispatcher(Ledger(busy), sinks).run_once() == 2
    finally:
        await busy.close()
    [body] = receiver.bodies
    assert set(body) >= STABLE_FIELDS and body["threshold"] == 50
    assert body["figures"] is None and body["spenders"] is None and body["dashboard_url"] is None
    [note] = body["notes"]
    assert note.startswith("the budget's figures, top spenders and recommendations could not be computed")
    assert "ReportBusy" in note
    [posted] = slack.bodies
    assert note in json.dumps(posted) and "actions" not in [b["type"] for b in posted["blocks"]]

    # A context that runs past its time goes out without one, and says so.
    await ledger.track_usage(
        TrackRequest(model="gpt-4o", input_tokens=1, output_tokens=0, cost_usd=Decimal("2.60"), team="search")
    )  # 78 %: crosses 75
    assert await Dispatcher(ledger, [WebhookSink(receiver.url)], context_seconds=0).run_once() == 1
    late = receiver.bodies[1]
    assert late["threshold"] == 75 and late["figures"] is None
    assert late["notes"] == [
        "the budget's figures, top spenders and recommendations could not be computed in time (0 s); "
        "see the dashboard"
    ]
    # Without its context an anomaly about one user names nobody: user ids pass only through the labels.
    await raise_anomaly(ledger, "user:ana-7f")
    assert await Dispatcher(ledger, [WebhookSink(receiver.url)], context_seconds=0).run_once() == 1
    anonymous = receiver.bodies[2]
    assert anonymous["kind"] == "anomaly" and anonymous["anomaly"]["user"] is None
    assert anonymous["text"].startswith("Budget search: unusual spend by one user: $3.00 in one hour")
    assert "ana-7f" not in json.dumps(anonymous)


async def raise_anomaly(ledger: Ledger, subject: str) -> None:
    """An anomaly alert of budget `search` (as the anomaly job writes it) about `subject`."""
    crossing = next(a for a in await ledger.store.alerts(tenant="default") if a["budget_name"] == "search")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    detail = {"hour_start": hour.isoformat(), "hour_end": (hour + timedelta(hours=1)).isoformat()}
    detail |= {"timezone": "UTC", "spend": "3", "median": "0", "mad": "0", "bar": "0", "floor": "1.00"}
    spike = {"budget_id": crossing["budget_id"], "subject": subject, "period": "month"}
    found = [spike | {"hour_start": hour.isoformat(), "detail": detail | {"weeks": 8, "baseline": ["0"] * 8}}]
    assert await ledger.store.raise_anomaly_alerts(tenant="default", found=found) == 1


def test_a_message_escapes_what_callers_named() -> None:
    """Model names are any printable text: none becomes markup in the HTML or a mention in Slack."""
    hostile = "<img src=x onerror=alert(1)> <!channel>"
    now = datetime.now(UTC)
    alert = {"tenant_id": "default", "alert_id": 1, "budget": "b", "kind": "threshold", "threshold": 50}
    alert |= {"percent_used": "50", "used": "5", "limit": "10", "unit": "usd", "period_start": now}
    alert |= {"created_at": now, "subject": "", "detail": None}
    context = AlertContext(
        spenders_since=now,
        spenders_until=now,
        spent=Decimal(5),
        spenders={"model": [Spender(name=hostile, amount=Decimal(5), share=Decimal(100))]},
        recommendations_since=now,
        recommendations_until=now,
        recommendations=[
            Recommendation(
                kind="cheaper_model",
                model=hostile,
                suggestion=hostile,
                saving_usd=Decimal(1),
                evidence=hostile,
            )
        ],
    )
    notice = alert_notice(alert, context)
    assert "<img" not in notice.html and "&lt;img src=x onerror=alert(1)&gt;" in notice.html
    slack_texts = json.dumps(notice.slack())
    assert "<!channel>" not in slack_texts and "&lt;!channel&gt;" in slack_texts
    assert hostile in notice.text  # plain text is plain


def test_the_dimensions_of_top_spenders_per_scope_are_the_readmes() -> None:
    assert SPENDER_DIMENSIONS == {
        "global": ("user", "feature", "model"),
        "team": ("user", "feature", "model"),
        "project": ("user", "feature", "model"),
        "endpoint": ("user", "feature", "model"),
        "feature": ("user", "model"),
        "user": ("feature", "model"),
        "session": ("feature", "model"),
    }


async def test_a_budget_without_an_end_has_no_days_left_and_a_bounded_window(
    ledger: Ledger, receiver: Receiver
) -> None:
    await ledger.set_budget(
        BudgetSpec(name="forever", limit=Decimal(100), period="total", priority_shares=None)
    )
    await ledger.track_usage(TrackRequest(model="gpt-4o", input_tokens=60, output_tokens=0, user="ana"))
    assert await Dispatcher(ledger, [WebhookSink(receiver.url)]).run_once() == 1
    [body] = receiver.bodies
    assert body["figures"]["period_end"] is None and body["figures"]["days_left"] is None
    since = datetime.fromisoformat(body["spenders"]["since"])
    assert timedelta(days=30.9) < datetime.now(UTC) - since < timedelta(days=31.1)
    assert body["notes"] == ["spenders and recommendations cover the last 31 days"]
    assert [s["name"] for s in body["spenders"]["by"]["user"]] == ["ana"]


async def test_alerts_name_users_as_the_tenants_privacy_setting_says(
    ledger: Ledger, mailbox: Mailbox, receiver: Receiver, slack: Receiver
) -> None:
    """Every user id of an alert passes through Ledger.alert_user_labels: with pseudonymize_users on, the
    sinks' recipients read pseudonyms in every form, as they do in scheduled reports."""
    await ledger.set_tenant_setting("pseudonymize_users", True)
    await ledger.set_budget(  # a budget of ana's own: its scope names her
        BudgetSpec(
            name="mine",
            scope="user:ana-7f",
            unit="usd",
            limit=Decimal(1),
            alert_thresholds=[Decimal(100)],
            priority_shares=None,
        )
    )
    await team_spend(ledger)
    await raise_anomaly(ledger, "user:ana-7f")  # an anomaly about one user, too
    sinks = [EmailSink.from_url(mailbox.url), WebhookSink(receiver.url), SlackSink(slack.url)]
    assert await Dispatcher(ledger, sinks).run_once() == 9  # team 50 %, mine 100 % and the anomaly
    pseudonym = await ledger.shown_user(Principal(role="viewer"), "ana-7f")
    assert pseudonym is not None and pseudonym.startswith("user-")
    mails = [part.get_content() for mail in mailbox.messages() for part in mail.iter_parts()]
    sent = mails + [json.dumps(body) for body in receiver.bodies + slack.bodies]
    assert len(sent) == 12  # text and HTML of three emails, three webhook and three Slack bodies
    assert all(pseudonym in form for form in mails + [json.dumps(body) for body in receiver.bodies])
    assert sum(pseudonym in json.dumps(body) for body in slack.bodies) == 2  # mine's Slack names no user
    for raw in ("ana-7f", "dan-3c", "bob-9e"):
        assert not any(raw in form for form in sent), raw
    anomaly = next(b for b in receiver.bodies if b["kind"] == "anomaly")
    assert anomaly["anomaly"]["user"] == pseudonym and f"by user {pseudonym}" in anomaly["text"]
    mine = next(b for b in receiver.bodies if b["budget"] == "mine")
    assert mine["figures"]["scope"] == f"user:{pseudonym}"


def test_the_public_url_is_a_plain_http_address() -> None:
    assert public_url("") is None and public_url("  ") is None
    assert public_url("https://ledger.example.com/") == "https://ledger.example.com"
    assert public_url("http://127.0.0.1:8765/tl") == "http://127.0.0.1:8765/tl"
    longest = "https://ledger.example.com/" + "a" * (MAX_PUBLIC_URL_LENGTH - 27)
    assert public_url(longest) == longest and len(longest) == MAX_PUBLIC_URL_LENGTH
    refused = [
        longest + "a",
        "ftp://ledger.example.com",
        "javascript:alert(1)",
        "https://",
        "https://ledger.example.com:0",
        "https://ledger.example.com:99999",
        "https://ledger.example.com/?key=1",
        "https://ledger.example.com/#top",
        "https://ledger.example.com/a b",
        'https://ledger.example.com/"><script>',
    ]
    for value in refused:
        with pytest.raises(InvalidInput, match="TOKENLEDGER_PUBLIC_URL") as caught:
            public_url(value)
        assert "http:// or https://" in str(caught.value)
    with pytest.raises(InvalidInput) as caught:
        Settings.from_env({"TOKENLEDGER_PUBLIC_URL": "https://admin:s3cret@ledger.example.com"})
    assert "s3cret" not in str(caught.value)
    assert Settings.from_env({"TOKENLEDGER_PUBLIC_URL": PUBLIC_URL + "/"}).public_url == PUBLIC_URL


def test_serve_refuses_to_start_on_a_bad_public_url(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TOKENLEDGER_HOME": str(tmp_path),
        "TOKENLEDGER_PUBLIC_URL": "ftp://ledger.example.com",
    }
    command = [sys.executable, "-m", "tokenledger", "serve", "--transport", "stdio"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "TOKENLEDGER_PUBLIC_URL: 'ftp://ledger.example.com'" in done.stderr
