"""Scheduled reports: occurrences at the local time across real DST changes (pure functions), schedules
that only admins change (validated, bounded, audited), and delivery end to end: dispatchers over
separate pools and two real `tokenledger serve` processes racing over one database, a real SMTP server
(aiosmtpd) and webhook receivers on loopback, exactly one delivery per occurrence, one catch-up after
downtime, retries, run-now from the CLI and the MCP tool."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from pydantic import ValidationError

from tests.servers import Mailbox
from tests.test_alerts import Receiver
from tokenledger import digest, reports
from tokenledger.alerts import EmailSink, LogSink, SlackSink, WebhookSink
from tokenledger.cli import main
from tokenledger.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.scheduled import ScheduleDispatcher
from tokenledger.schedules import (
    MAX_SCHEDULES,
    Delivery,
    ScheduleSpec,
    next_occurrence,
    plan_due,
    previous_occurrence,
    window_before,
)
from tokenledger.store import Store
from tokenledger.types import Principal, TrackRequest

pytestmark = pytest.mark.anyio

ADMIN = Principal()
PARIS = "Europe/Paris"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def local(moment: datetime, zone: str = PARIS) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def series(after: datetime, count: int, every: Any, at: str, zone: str = PARIS) -> list[datetime]:
    found = []
    for _ in range(count):
        after = next_occurrence(after, every, at, zone)
        found.append(after)
    return found


# --- occurrences: pure, across real DST changes --------------------------------------------------


def test_eight_oclock_stays_eight_oclock_across_both_changes() -> None:
    spring = series(utc(2026, 3, 27, 12), 3, "day", "08:00")  # clocks jump forward on Sunday 29 March
    assert spring == [utc(2026, 3, 28, 7), utc(2026, 3, 29, 6), utc(2026, 3, 30, 6)]
    assert [local(t) for t in spring] == [
        "2026-03-28 08:00 CET",
        "2026-03-29 08:00 CEST",
        "2026-03-30 08:00 CEST",
    ]
    autumn = series(utc(2026, 10, 23, 12), 3, "day", "08:00")  # and back on Sunday 25 October
    assert autumn == [utc(2026, 10, 24, 6), utc(2026, 10, 25, 7), utc(2026, 10, 26, 7)]
    weekly = series(utc(2026, 3, 20), 2, "week", "08:00")  # Mondays
    assert weekly == [utc(2026, 3, 23, 7), utc(2026, 3, 30, 6)]
    monthly = series(utc(2026, 2, 15), 3, "month", "08:00")  # the 1st
    assert monthly == [utc(2026, 3, 1, 7), utc(2026, 4, 1, 6), utc(2026, 5, 1, 6)]
    new_york = series(utc(2026, 3, 7), 2, "day", "08:00", "America/New_York")  # DST from 8 March
    assert new_york == [utc(2026, 3, 7, 13), utc(2026, 3, 8, 12)]
    sydney = series(utc(2026, 4, 3), 3, "day", "08:00", "Australia/Sydney")  # DST ends 5 April
    assert [local(t, "Australia/Sydney")[-10:] for t in sydney] == ["08:00 AEDT", "08:00 AEST", "08:00 AEST"]


def test_a_skipped_time_runs_once_shifted_and_a_repeated_time_runs_once_first() -> None:
    # 02:30 does not exist on 29 March in Paris (02:00 -> 03:00): read with the winter offset, 03:30 CEST.
    spring = series(utc(2026, 3, 27, 12), 3, "day", "02:30")
    assert [local(t) for t in spring] == [
        "2026-03-28 02:30 CET",
        "2026-03-29 03:30 CEST",
        "2026-03-30 02:30 CEST",
    ]
    # 02:30 happens twice on 25 October (03:00 -> 02:00): delivered once, at the first (summer time).
    autumn = series(utc(2026, 10, 23, 12), 3, "day", "02:30")
    assert autumn == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert utc(2026, 10, 25, 1, 30) not in autumn  # the second 02:30 (winter time)
    assert next_occurrence(utc(2026, 10, 25, 0, 30), "day", "02:30", PARIS) == utc(2026, 10, 26, 1, 30)


def test_previous_occurrence_and_windows() -> None:
    assert previous_occurrence(utc(2026, 3, 30, 6), "day", "08:00", PARIS) == utc(2026, 3, 29, 6)
    assert previous_occurrence(utc(2026, 3, 29, 6), "day", "08:00", PARIS) == utc(2026, 3, 28, 7)  # 23 h
    assert previous_occurrence(utc(2026, 4, 1, 6), "month", "08:00", PARIS) == utc(2026, 3, 1, 7)
    assert window_before(utc(2026, 3, 30, 10), "day", PARIS) == utc(2026, 3, 29, 10)  # 12:00 local both
    assert window_before(utc(2026, 3, 31, 10), "month", PARIS) == utc(2026, 2, 28, 11)  # no 31 February
    assert window_before(utc(2026, 3, 31, 10), "week", PARIS) == utc(2026, 3, 24, 11)


def test_plan_due_folds_missed_occurrences_into_one_catch_up() -> None:
    # Down from before Friday's 08:00 until Monday 10:00 (Paris): Fri, Sat, Sun, Mon fell due.
    plan = plan_due(utc(2026, 11, 27, 7), utc(2026, 11, 30, 9), "day", "08:00", PARIS)
    assert plan.kind == "catch_up" and plan.occurrence == utc(2026, 11, 30, 7)
    assert plan.missed == 3 and plan.missed_from == utc(2026, 11, 27, 7)
    assert plan.since == utc(2026, 11, 26, 7)  # the first missed occurrence's window start
    assert plan.next_run_at == utc(2026, 12, 1, 7)
    on_time = plan_due(utc(2026, 11, 30, 7), utc(2026, 11, 30, 7, 0, 3), "day", "08:00", PARIS)
    assert on_time.kind == "scheduled" and on_time.missed == 0 and on_time.since == utc(2026, 11, 29, 7)
    years = plan_due(utc(1990, 1, 1, 7), utc(2026, 11, 30, 9), "day", "08:00", PARIS)  # bounded work
    assert years.occurrence == utc(2026, 11, 30, 7) and years.next_run_at == utc(2026, 12, 1, 7)


ZONES = ["Europe/Paris", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "America/Santiago",
         "Asia/Kolkata", "Pacific/Chatham", "UTC"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2032, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(["day", "week", "month"]),
    st.integers(0, 23),
    st.sampled_from([0, 15, 30, 59]),
)
def test_occurrences_are_ordered_local_and_none_is_skipped(
    zone: str, after: datetime, every: Any, hour: int, minute: int
) -> None:
    at = f"{hour:02d}:{minute:02d}"
    following = next_occurrence(after, every, at, zone)
    before = previous_occurrence(following, every, at, zone)
    assert before <= after < following  # nothing between: no occurrence is skipped
    assert next_occurrence(before, every, at, zone) == following
    wall = following.astimezone(ZoneInfo(zone))
    exists = datetime.combine(wall.date(), datetime.strptime(at, "%H:%M").time(), ZoneInfo(zone))
    if exists.astimezone(UTC).astimezone(ZoneInfo(zone)).replace(tzinfo=None) == exists.replace(tzinfo=None):
        assert (wall.hour, wall.minute) == (hour, minute)  # the local time, wherever it exists that day
    assert {"day": True, "week": wall.weekday() == 0, "month": wall.day == 1}[every] or (
        wall.date() != exists.date()  # only where the time was skipped past midnight
    )


# --- schedules: validated, bounded, admin only, audited ------------------------------------------


def spec(name: str = "daily", **fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": name, "to": "webhook", **fields})


async def test_add_list_delete_and_audit(ledger: Ledger) -> None:
    added = await ledger.add_schedule(
        spec(view="chargeback", every="month", at="07:30", timezone=PARIS, by="team")
    )
    assert added.next_run_at > datetime.now(UTC)
    assert local(added.next_run_at)[8:16] == "01 07:30"  # the 1st, 07:30 Paris time
    mail = await ledger.add_schedule(spec("mail", to="email:finance@example.com"))
    assert mail.to == "email:finance@example.com" and mail.view == "summary" and mail.at == "08:00"
    assert [s.name for s in await ledger.list_schedules()] == ["daily", "mail"]
    with pytest.raises(Conflict, match="name daily: a schedule of this name exists"):
        await ledger.add_schedule(spec())
    run = await ledger.run_schedule_now("mail")
    assert run.kind == "manual" and run.until - run.since == timedelta(days=1)
    deleted = await ledger.delete_schedule("daily")
    assert deleted.name == "daily" and [s.name for s in await ledger.list_schedules()] == ["mail"]
    with pytest.raises(NotFound, match="name nope: no such schedule"):
        await ledger.delete_schedule("nope")
    with pytest.raises(NotFound, match="no such schedule"):
        await ledger.run_schedule_now("nope")
    audit = [(a["action"], a["object_kind"], a["object_id"], a["actor"]) for a in
             reversed(await ledger.store.audit_log(tenant="default"))]  # fmt: skip
    assert audit == [
        ("create", "schedule", "daily", "local:admin"),
        ("create", "schedule", "mail", "local:admin"),
        ("run_now", "schedule", "mail", "local:admin"),
        ("delete", "schedule", "daily", "local:admin"),
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "a b"}, "name"),
        ({"name": "tenant:colon"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"view": "top"}, "view"),
        ({"every": "hour"}, "every"),
        ({"at": "8:00"}, "at"),
        ({"at": "24:00"}, "at"),
        ({"to": "sms"}, "to"),
        ({"to": "email:not-an-address"}, "to"),
        ({"to": "email:a@example.com\r\nBcc: all@example.com"}, "to"),
        ({"to": "email:a@example.com,b@example.com"}, "to"),
        ({"to": "slack:#general"}, "to"),
        ({"to": "email:" + "a" * 64 + "@" + "b" * 186 + ".com"}, "to"),  # a 255-character address
        ({"to": "webhook" + " " * 254}, "to"),  # 261 characters
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "Europe/" + "x" * 58}, "timezone"),  # 65 characters
        ({"view": "summary", "by": "team"}, "by"),
        ({"view": "chargeback", "by": "model"}, "by"),
        ({"by": "colour"}, "by"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(
    ledger: Ledger, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises((InvalidInput, ValidationError)) as raised:
        await ledger.add_schedule(spec(**fields))
    assert field in str(raised.value)
    assert await ledger.list_schedules() == [] and await ledger.store.audit_log(tenant="default") == []


async def test_the_longest_address_and_time_zone_allowed(ledger: Ledger) -> None:
    address = "a" * 64 + "@" + "b" * 185 + ".com"  # 254 characters: the most an SMTP path takes
    added = await ledger.add_schedule(
        spec(to=f"email:{address}", timezone="America/Argentina/ComodRivadavia")
    )
    assert added.to == f"email:{address}"


async def test_only_admins_and_at_most_a_hundred_per_tenant(ledger: Ledger) -> None:
    for role, user in (("member", "ana"), ("viewer", None)):
        principal = Principal(role=role, user=user)
        with pytest.raises(PermissionDenied, match="cannot manage schedules"):
            await ledger.add_schedule(spec(), principal)
        for call in (ledger.list_schedules(principal), ledger.delete_schedule("x", principal),
                     ledger.run_schedule_now("x", principal)):  # fmt: skip
            with pytest.raises(PermissionDenied):
                await call
    for number in range(MAX_SCHEDULES):
        await ledger.add_schedule(spec(f"s{number:03d}"))
    with pytest.raises(InvalidInput, match="this tenant has 100 schedules, the most allowed"):
        await ledger.add_schedule(spec("one-too-many"))
    other = Principal(tenant_id="other")
    assert (await ledger.add_schedule(spec("one-too-many"), other)).name == "one-too-many"  # per tenant
    assert len(await ledger.list_schedules()) == MAX_SCHEDULES
    assert [s.name for s in await ledger.list_schedules(other)] == ["one-too-many"]


# --- delivery end to end -------------------------------------------------------------------------


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    hook, slack = Receiver(), Receiver()
    yield hook, slack
    hook.close()
    slack.close()


def sinks(mailbox: Mailbox, hook: Receiver, slack: Receiver) -> list[Any]:
    return [EmailSink.from_url(mailbox.url), WebhookSink(hook.url), SlackSink(slack.url), LogSink()]


async def due_now(ledger: Ledger, name: str, *, occurrences_back: int = 0) -> datetime:
    """Make a schedule's latest occurrence (or one `occurrences_back` before it) its next_run_at, as if
    it had been added earlier and its servers had been down since: returns that occurrence."""
    [schedule] = [s for s in await ledger.list_schedules() if s.name == name]
    moment = previous_occurrence(datetime.now(UTC), schedule.every, schedule.at, schedule.timezone)
    for _ in range(occurrences_back):
        moment = previous_occurrence(moment, schedule.every, schedule.at, schedule.timezone)
    async with ledger.store.pool.connection() as conn:
        await conn.execute("update tl_schedule set next_run_at = %s where name = %s", (moment, name))
    return moment


def a_minute_ago(zone: str = PARIS) -> str:
    return (datetime.now(ZoneInfo(zone)) - timedelta(minutes=1)).strftime("%H:%M")


async def seed_usage(ledger: Ledger) -> None:
    """Two calls three minutes ago: inside the day that ended at an occurrence a minute ago (the start of
    the minute before this one), and in its month."""
    for team, model, tokens in (("search", "gpt-4o", 12_000), ("ads", "gpt-4o-mini", 50_000)):
        await ledger.track_usage(
            TrackRequest(
                model=model,
                team=team,
                user="ana",
                input_tokens=tokens,
                output_tokens=tokens // 10,
                occurred_at=datetime.now(UTC) - timedelta(minutes=3),
            )
        )


@pytest.fixture
async def dispatchers(dsn: str) -> AsyncIterator[list[Ledger]]:
    """Two more ledgers over their own pools on the same database: separate dispatchers."""
    stores = [await Store.open(dsn, migrate=False, max_size=4) for _ in range(2)]
    yield [Ledger(store) for store in stores]
    for store in stores:
        await store.close()


async def race(dispatchers: list[ScheduleDispatcher], rounds: int = 3) -> int:
    delivered = 0
    for _ in range(rounds):
        delivered += sum(await asyncio.gather(*(d.run_once() for d in dispatchers)))
    return delivered


async def test_each_occurrence_is_delivered_once_by_racing_dispatchers(
    ledger: Ledger, dispatchers: list[Ledger], mailbox: Mailbox, receivers: tuple[Receiver, Receiver]
) -> None:
    hook, slack = receivers
    await seed_usage(ledger)
    at = a_minute_ago()
    await ledger.add_schedule(spec("finance-mail", to="email:finance@example.test", at=at, timezone=PARIS))
    await ledger.add_schedule(spec("ops-hook", view="usage", by="team", at=at, timezone=PARIS))
    await ledger.add_schedule(spec("ops-slack", to="slack", view="budgets", at=at, timezone=PARIS))
    await ledger.add_schedule(spec("chargeback", to="email", view="chargeback", at=at, timezone=PARIS))
    occurrence = {name: await due_now(ledger, name) for name in ("finance-mail", "ops-hook", "ops-slack")}
    daily = await due_now(ledger, "chargeback")  # a daily chargeback: the month to date

    racing = [ScheduleDispatcher(other, sinks(mailbox, hook, slack)) for other in dispatchers]
    assert await race(racing) == 4
    assert await race(racing) == 0  # nothing twice

    [body] = hook.bodies
    assert body["id"] == f"default:ops-hook:{occurrence['ops-hook'].replace(tzinfo=None).isoformat()}Z"
    assert body["type"] == "scheduled_report" and body["kind"] == "scheduled" and body["catch_up"] is None
    assert body["view"] == "usage" and {row["team"] for row in body["report"]["rows"]} == {"search", "ads"}
    assert body["since"] == previous_occurrence(occurrence["ops-hook"], "day", at, PARIS).isoformat()
    [posted] = slack.bodies
    assert posted["text"].startswith("[tokenledger] ops-slack: daily budgets report")
    assert [block["type"] for block in posted["blocks"]][:2] == ["header", "section"]

    by_to = {str(m["To"]): m for m in mailbox.messages()}
    assert sorted(e.rcpt_tos for e in mailbox.received) == [["finance@example.test"], ["ops@example.test"]]
    mail = by_to["finance@example.test"]
    assert mail.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in mail.iter_parts()] == ["text/plain", "text/html"]
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert str(mail["Subject"]).startswith("[tokenledger] finance-mail: daily summary report, ")
    window_start = previous_occurrence(occurrence["finance-mail"], "day", at, PARIS)
    assert f"Covers: {local(window_start)[:16]} to {local(occurrence['finance-mail'])[:16]} {PARIS}" in text
    assert "requests: 2" in text and "<img" not in html and "<script" not in html and "src=" not in html
    assert "<td" in html and "finance-mail" in html
    chargeback = by_to["ops@example.test"]
    statement = chargeback.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    month = window_before(daily, "day", PARIS).astimezone(ZoneInfo(PARIS)).strftime("%Y-%m")
    assert f"month {month}" in str(chargeback["Subject"]) and "| search | subtotal |" in statement

    runs = await ledger.store.schedule_runs(tenant="default")
    assert len(runs) == 4 and all(r["delivered_at"] is not None and r["kind"] == "scheduled" for r in runs)
    listed = {s.name: s for s in await ledger.list_schedules()}
    assert all(s.next_run_at > datetime.now(UTC) and s.last_delivered_at for s in listed.values())
    deliveries = await ledger.store.schedule_deliveries(tenant="default")
    assert len(deliveries) == 4 and all(d["attempts"] == 1 for d in deliveries)  # one sink per run here


async def test_downtime_over_three_occurrences_gives_one_catch_up(
    ledger: Ledger, dispatchers: list[Ledger], mailbox: Mailbox, receivers: tuple[Receiver, Receiver]
) -> None:
    hook, slack = receivers
    at = a_minute_ago()
    await ledger.add_schedule(spec("hook", at=at, timezone=PARIS))
    await ledger.add_schedule(spec("mail", to="email", at=at, timezone=PARIS))
    first = await due_now(
        ledger, "hook", occurrences_back=2
    )  # the day before yesterday's, yesterday's, today's
    await due_now(ledger, "mail", occurrences_back=2)
    racing = [ScheduleDispatcher(other, sinks(mailbox, hook, slack)) for other in dispatchers]
    assert await race(racing) == 2
    [body] = hook.bodies
    latest = previous_occurrence(datetime.now(UTC), "day", at, PARIS)
    assert body["kind"] == "catch_up" and body["occurrence"] == latest.isoformat()
    assert body["catch_up"] == {"occurrences": 3, "first": first.isoformat()}
    assert body["since"] == previous_occurrence(first, "day", at, PARIS).isoformat()  # the whole downtime
    assert "(catch-up of 3)" in body["text"]
    [mail] = mailbox.messages()
    assert "(catch-up of 3)" in str(mail["Subject"])
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Catch-up: no server was running when 3 occurrences of this schedule fell due" in text
    [schedule] = [s for s in await ledger.list_schedules() if s.name == "hook"]
    assert schedule.next_run_at == next_occurrence(datetime.now(UTC), "day", at, PARIS)
    assert await race(racing) == 0


async def test_a_failing_receiver_gets_the_report_once_after_a_retry(ledger: Ledger) -> None:
    flaky = Receiver(fail_first=1)
    try:
        await ledger.add_schedule(spec("hook", at=a_minute_ago(), timezone=PARIS))
        await due_now(ledger, "hook")
        dispatcher = ScheduleDispatcher(ledger, [WebhookSink(flaky.url)], base_backoff=0.05)
        assert await dispatcher.run_once() == 0
        [failed] = await ledger.store.schedule_deliveries(tenant="default")
        assert (
            failed["last_error"].startswith("RuntimeError: webhook:") and "HTTP 503" in failed["last_error"]
        )
        assert "127.0.0.1" not in failed["last_error"]  # a webhook URL is a secret
        delivered = 0
        for _ in range(40):
            delivered += await dispatcher.run_once()
            if delivered:
                break
            await asyncio.sleep(0.05)
        assert delivered == 1 and flaky.calls == 2 and len(flaky.bodies) == 1
        [delivery] = await ledger.store.schedule_deliveries(tenant="default")
        assert delivery["attempts"] == 2 and delivery["delivered_at"] is not None
    finally:
        flaky.close()


def test_a_message_escapes_what_users_named() -> None:
    hostile = "<!channel> <script>x</script>"
    report = reports.Report(
        view="usage", rows=[{"model": hostile, "cost_usd": "1.00"}], totals={"requests": 1}, notes=[hostile]
    )
    now = datetime.now(UTC)
    delivery = Delivery(
        tenant_id="default", schedule="s", run_id=1, occurrence=now, kind="scheduled",
        since=now - timedelta(days=1), until=now, sink="slack:x", attempt=1, view="usage", every="day",
        at="08:00", timezone=PARIS, destination="slack",
    )  # fmt: skip
    notice = digest.report_notice(report, delivery)
    assert "<script>" not in notice.html and "&lt;script&gt;" in notice.html
    slack = json.dumps(notice.slack())
    assert "<!channel>" not in slack and "&lt;!channel&gt;" in slack


async def test_what_each_view_covers(ledger: Ledger) -> None:
    """A monthly chargeback on the 1st is the month just ended (a daily one the month to date); a usage
    report covers its run's window, grouped by `by` (default model)."""
    first = utc(2026, 11, 1, 6)  # 07:00 Paris on the 1st

    def run(view: Any, **fields: Any) -> Delivery:
        return Delivery.model_validate(
            {"tenant_id": "default", "schedule": "s", "run_id": 1, "occurrence": first, "kind": "scheduled",
             "since": utc(2026, 10, 1, 5), "until": first, "sink": "email:x", "attempt": 1, "view": view,
             "every": "month", "at": "07:00", "timezone": PARIS, "destination": "email", **fields}
        )  # fmt: skip

    chargeback = await ledger.scheduled_report(run("chargeback", by="project"))
    assert chargeback.totals is not None and chargeback.totals["period"] == "2026-10"
    assert chargeback.totals["by"] == "project" and chargeback.since == utc(2026, 9, 30, 22)
    assert (await ledger.scheduled_report(run("chargeback"))).totals["by"] == "team"  # type: ignore[index]
    daily = await ledger.scheduled_report(run("chargeback", every="day", since=utc(2026, 10, 31, 6)))
    assert daily.totals is not None and daily.totals["period"] == "2026-10"  # on the 1st: October, whole
    later = await ledger.scheduled_report(
        run("chargeback", every="day", occurrence=utc(2026, 11, 2, 6), until=utc(2026, 11, 2, 6))
    )
    assert later.totals is not None and later.totals["period"] == "2026-11"  # the month to date
    usage = await ledger.scheduled_report(run("usage"))
    assert (usage.since, usage.until) == (utc(2026, 10, 1, 5), first)
    await ledger.import_usage(  # last month's usage: past the 7 days direct usage may be backdated
        TrackRequest(model="gpt-4o", input_tokens=10, output_tokens=1, occurred_at=utc(2026, 10, 15))
    )
    assert "model" in (await ledger.scheduled_report(run("usage"))).rows[0]
    assert (await ledger.scheduled_report(run("budgets"))).view == "budgets"


# --- run-now, the CLI and the MCP tool -----------------------------------------------------------


def test_cli_schedule_commands(
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    receivers: tuple[Receiver, Receiver],
) -> None:
    hook, _ = receivers
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    monkeypatch.setenv("TOKENLEDGER_ALERT_WEBHOOK", hook.url)
    monkeypatch.setenv("TOKENLEDGER_ALERT_LOG", "0")
    monkeypatch.delenv("TOKENLEDGER_ALERT_SMTP", raising=False)
    add = ["schedule", "add", "weekly-usage", "--view", "usage", "--by", "project", "--every", "week",
           "--at", "09:15", "--timezone", "America/New_York", "--to", "webhook"]  # fmt: skip
    assert main(add) == 0
    assert "added schedule weekly-usage: next " in capsys.readouterr().out
    assert main(["schedule", "add", "mail", "--to", "email:finance@example.com"]) == 0
    assert "TOKENLEDGER_ALERT_SMTP is not set here" in capsys.readouterr().err
    assert main(["schedule", "list"]) == 0
    table = capsys.readouterr().out
    assert (
        "weekly-usage" in table
        and "every week at 09:15 America/New_York" in table
        and "usage by project" in table
    )
    assert main(["schedule", "run-now", "weekly-usage"]) == 0
    assert "delivered weekly-usage" in capsys.readouterr().out
    [body] = hook.bodies
    assert body["kind"] == "manual" and body["view"] == "usage" and "(run now)" in body["text"]
    assert main(["schedule", "run-now", "mail"]) == 0  # no SMTP sink in this shell: a server will send it
    assert "queued mail" in capsys.readouterr().out
    assert main(["schedule", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["mail", "weekly-usage"] and listed[1]["last_delivered_at"]
    assert main(["schedule", "add", "bad", "--to", "sms"]) == 1
    assert "to: 'sms' is not allowed; email, email:ADDRESS" in capsys.readouterr().err
    assert main(["schedule", "add", "bad", "--to", "webhook", "--at", "25:00"]) == 1
    assert "at: got '25:00'" in capsys.readouterr().err
    assert main(["schedule", "delete", "mail"]) == 0 and "deleted schedule mail" in capsys.readouterr().out
    assert main(["schedule", "delete", "mail"]) == 1 and "no such schedule" in capsys.readouterr().err


async def test_mcp_manage_schedule_tool(ledger: Ledger, receivers: tuple[Receiver, Receiver]) -> None:
    _, slack = receivers
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        added = await client.call_tool(
            "manage_schedule",
            {"action": "add", "name": "daily", "to": "slack", "view": "forecast", "at": "07:00"},
        )
        assert not added.is_error and added.structured_content is not None
        assert added.structured_content["schedules"][0]["view"] == "forecast"
        listed = await client.call_tool("lookup", {"what": "schedules"})
        assert [s["name"] for s in listed.structured_content["schedules"]] == ["daily"]  # type: ignore[index]
        run = await client.call_tool("manage_schedule", {"action": "run_now", "name": "daily"})
        assert run.structured_content["run"]["kind"] == "manual"  # type: ignore[index]
        # Queued: the next poll of a server's dispatcher sends it.
        assert await ScheduleDispatcher(ledger, [SlackSink(slack.url)]).run_once() == 1
        [posted] = slack.bodies
        assert (
            posted["text"].startswith("[tokenledger] daily: daily forecast report")
            and "(run now)" in posted["text"]
        )
        for arguments, field in (
            ({"action": "add", "name": "x", "to": "fax"}, "to"),
            ({"action": "add", "name": "x", "to": "slack", "at": "7am"}, "at"),
            ({"action": "add", "name": "x"}, "to"),
            ({"action": "delete"}, "name"),
        ):
            refused = await client.call_tool("manage_schedule", arguments)
            assert refused.is_error and field in str(refused.content[0]), arguments
        deleted = await client.call_tool("manage_schedule", {"action": "delete", "name": "daily"})
        assert deleted.structured_content["schedules"][0]["name"] == "daily"  # type: ignore[index]
    member = Principal(role="member", user="ana")
    async with Client(build_server(ledger, default_principal=member)) as client:
        refused = await client.call_tool("lookup", {"what": "schedules"})
        assert refused.is_error and "cannot manage schedules" in str(refused.content[0])


# --- two real servers ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_two_serve_processes_deliver_each_occurrence_once(
    ledger: Ledger, dsn: str, receivers: tuple[Receiver, Receiver], tmp_path: Any
) -> None:
    hook, _ = receivers
    names = [f"report-{n}" for n in range(8)]
    for name in names:
        await ledger.add_schedule(spec(name, at=a_minute_ago(), timezone=PARIS))
    env = {
        **os.environ,
        "TOKENLEDGER_DATABASE_URL": dsn,
        "TOKENLEDGER_HOME": str(tmp_path),
        "TOKENLEDGER_ALERT_WEBHOOK": hook.url,
        "TOKENLEDGER_ALERT_LOG": "0",
        "TOKENLEDGER_ALERT_POLL_SECONDS": "0.1",
    }
    env.pop("TOKENLEDGER_ALERT_SMTP", None)
    command = [sys.executable, "-m", "tokenledger", "serve", "--transport", "stdio"]
    servers = [
        await anyio.open_process(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        for server in servers:  # both are up and polling before anything falls due
            assert server.stderr is not None
            seen = b""
            with anyio.fail_after(60):
                while b"serving MCP over stdio" not in seen:
                    seen += await server.stderr.receive()
        for name in names:
            await due_now(ledger, name)

        async def delivered() -> int:
            return sum(1 for run in await ledger.store.schedule_runs(tenant="default") if run["delivered_at"])

        with anyio.fail_after(30):
            while await delivered() < len(names):  # noqa: ASYNC110 - the database is what changes
                await anyio.sleep(0.1)
        await anyio.sleep(1)  # ten more polls of each server: nothing is sent again
    finally:
        for server in servers:
            assert server.stdin is not None
            await server.stdin.aclose()  # a stdio server stops when its input ends
        with anyio.fail_after(20):
            for server in servers:
                await server.wait()
    ids = [body["id"] for body in hook.bodies]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert sorted(body["schedule"] for body in hook.bodies) == names
    assert all(server.returncode == 0 for server in servers)
