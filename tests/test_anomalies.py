"""Anomaly alerts: an hour's spend against the same hour of the week in recent weeks (median and MAD),
judged as pure functions over a whole weekly rhythm, then end to end on real PostgreSQL with history
imported weeks back: a real spike alerts once (however often and from however many processes the job
runs, two real `tokenledger serve` processes included), a weekly peak does not, a spike under the
absolute floor does not, too little history does not, and a member never sees another user's anomaly."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from tests.test_alerts import Receiver
from tests.test_serve import serve
from tokenledger import anomalies
from tokenledger import dashboard as dashboards
from tokenledger.alerts import Dispatcher, WebhookSink
from tokenledger.anomalies import ANOMALY_FLOOR, MIN_BASELINE_WEEKS, anomaly_period, judge
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, Principal, TrackRequest

pytestmark = pytest.mark.anyio

WEEK = timedelta(days=7)


def usd(value: str) -> Decimal:
    return Decimal(value)


def spike(spend: Decimal, baseline: list[Decimal], unit: str = "usd") -> bool:
    verdict = judge(spend, baseline, unit)
    assert verdict is not None
    return verdict.spike


# --- judging: pure ---------------------------------------------------------------------------------


def weekly_rhythm(weeks: int, seed: int) -> list[list[Decimal]]:
    """`weeks` weeks of hourly spend (168 hours each, Monday 00:00 first) with a working rhythm: nights
    near nothing, working hours a few dollars, Monday 09:00-11:00 a $40 peak every week; each with noise."""
    rng = random.Random(seed)
    series = []
    for _ in range(weeks):
        week = []
        for hour_of_week in range(168):
            day, hour = divmod(hour_of_week, 24)
            if day == 0 and 9 <= hour < 12:
                usual = 40.0
            elif day < 5 and 8 <= hour < 19:
                usual = 3.0
            else:
                usual = 0.05
            week.append(Decimal(str(round(usual * rng.uniform(0.85, 1.15), 2))))
        series.append(week)
    return series


def test_a_weekly_rhythm_is_its_own_baseline() -> None:
    history = weekly_rhythm(9, seed=7)
    baseline_weeks, this_week = history[:8], history[8]
    for hour_of_week, spend in enumerate(this_week):
        verdict = judge(spend, [week[hour_of_week] for week in baseline_weeks], "usd")
        assert verdict is not None and not verdict.spike, (hour_of_week, spend, verdict)
    monday_nine = [week[9] for week in baseline_weeks]
    assert spike(usd("40"), monday_nine, "usd") is False
    sunday_night = [week[6 * 24 + 3] for week in baseline_weeks]  # Sunday 03:00: usually cents
    verdict = judge(usd("40"), sunday_night, "usd")  # the Monday peak, on a Sunday night
    assert verdict is not None and verdict.spike and verdict.median < usd("0.1")


def test_the_bar_the_ratio_and_the_floor_from_both_sides() -> None:
    baseline = [usd(v) for v in ("10", "11", "10", "10", "12", "8", "10", "10")]
    verdict = judge(usd("20"), baseline, "usd")
    assert verdict is not None
    assert verdict.median == 10 and verdict.mad == 0  # more than half the weeks spent exactly $10
    # MAD 0: the bar is twice the median, and only spend above it is a spike.
    assert verdict.bar == 20 and not verdict.spike
    assert spike(usd("20.01"), baseline, "usd")
    spread = [usd(v) for v in ("10", "16", "4", "13", "7", "10", "12", "8")]  # a wide spread: MAD 2.5
    verdict = judge(usd("23"), spread, "usd")
    assert verdict is not None and verdict.median == 10 and verdict.mad == Decimal("2.5")
    assert verdict.bar == Decimal(10) + Decimal("3.5") * Decimal("1.4826") * Decimal("2.5")  # 22.97...
    assert verdict.spike and not spike(verdict.bar, spread, "usd")
    # The floor: an hour that usually spends nothing pages only from $1 (100,000 tokens) on.
    quiet = [Decimal(0)] * 8
    assert {"usd": Decimal("1.00"), "tokens": Decimal(100_000)} == ANOMALY_FLOOR
    assert not spike(usd("0.99"), quiet, "usd")
    assert spike(usd("1.00"), quiet, "usd")
    assert not spike(Decimal(99_999), quiet, "tokens")
    assert spike(Decimal(100_000), quiet, "tokens")


def test_too_few_weeks_give_no_judgement() -> None:
    assert judge(usd("1000"), [Decimal(0)] * (MIN_BASELINE_WEEKS - 1), "usd") is None
    assert judge(usd("1000"), [Decimal(0)] * MIN_BASELINE_WEEKS, "usd") is not None


def test_the_period_an_anomaly_is_raised_once_in() -> None:
    assert [anomaly_period(p) for p in ("minute", "hour", "day", "week", "month", "year")] == [
        "day",
        "day",
        "day",
        "week",
        "month",
        "year",
    ]
    assert [anomaly_period(p) for p in ("24h", "7d", "30d", "total")] == ["day", "week", "month", "month"]


# --- end to end: seeded history on real PostgreSQL --------------------------------------------------


async def spend(
    ledger: Ledger, at: datetime, cost: str, *, user: str = "ana", team: str | None = None, tokens: int = 1000
) -> None:
    """Usage of `cost` USD (as the provider reported it) at `at`, imported as an admin would."""
    await ledger.import_usage(
        TrackRequest(
            model="gpt-4o",
            input_tokens=tokens,
            output_tokens=0,
            cost_usd=Decimal(cost),
            user=user,
            team=team,
            occurred_at=at,
        )
    )


async def history(ledger: Ledger, now: datetime, costs: list[str], **attribution: str) -> None:
    """The same hour of the week as `now`, one week back per cost (the first is a week ago)."""
    for weeks_back, cost in enumerate(costs, start=1):
        await spend(ledger, now - weeks_back * WEEK, cost, **attribution)


async def global_budget(ledger: Ledger, name: str = "all", unit: str = "usd") -> None:
    await ledger.set_budget(
        BudgetSpec(name=name, unit=unit, limit=Decimal(10**9), period="month", priority_shares=None)
    )


async def anomaly_rows(ledger: Ledger, tenant: str = "default") -> list[dict[str, object]]:
    return [a for a in await ledger.store.alerts(tenant=tenant) if a["kind"] == "anomaly"]


@pytest.fixture
def moment() -> datetime:
    """A minute ago: inside the hour the job judges (the one in progress, or the one before it)."""
    return datetime.now(UTC) - timedelta(minutes=1)


async def test_a_spike_alerts_once_however_often_and_wherever_the_job_runs(
    ledger: Ledger, dsn: str, moment: datetime
) -> None:
    await global_budget(ledger)
    await history(ledger, moment, ["2.10", "1.90", "2.00", "2.30", "1.80", "2.00", "2.20", "1.95"])
    await history(ledger, moment, ["0.50"] * 8, user="bo")  # bo's usual, and bo's hour now: no spike
    await spend(ledger, moment, "30")
    await spend(ledger, moment, "0.50", user="bo")
    others = [await Store.open(dsn, migrate=False, max_size=2) for _ in range(2)]
    try:
        runs = [ledger.anomaly_alerts(), *(Ledger(store).anomaly_alerts() for store in others)]
        written = await asyncio.gather(*runs)
    finally:
        for store in others:
            await store.close()
    assert sum(written) == 2  # the budget as a whole, and ana under it: one writer each
    assert await ledger.anomaly_alerts() == 0  # the same hour again: nothing new

    by_subject = {a["subject"]: a for a in await anomaly_rows(ledger)}
    assert sorted(by_subject) == ["", "user:ana"]
    alert = by_subject["user:ana"]
    assert alert["threshold"] == 0 and alert["budget_name"] == "all"
    detail = alert["detail"]
    assert isinstance(detail, dict)
    assert Decimal(detail["spend"]) == Decimal("30") and Decimal(detail["median"]) == Decimal("2.00")
    assert detail["weeks"] == 8 and len(detail["baseline"]) == 8
    assert datetime.fromisoformat(detail["hour_start"]) <= moment < datetime.fromisoformat(detail["hour_end"])
    state = (await ledger.get_budget("all")).state  # the stable fields: the budget's figures then
    assert alert["used"] == state.used and alert["limit_amount"] == state.limit
    whole = by_subject[""]["detail"]
    assert isinstance(whole, dict) and Decimal(whole["spend"]) == Decimal("30.50")
    # Raised once in the budget's period (a month): the month's start, in the budget's time zone.
    assert alert["period_start"] == moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def test_a_spike_goes_out_with_the_hour_and_who_spent_it(ledger: Ledger, moment: datetime) -> None:
    await global_budget(ledger)
    await history(ledger, moment, ["2"] * 8)
    await spend(ledger, moment, "25")
    await spend(ledger, moment, "5", user="cy")  # cy: no history, $5 in an hour usually empty
    assert await ledger.anomaly_alerts() == 3  # the budget, ana and cy
    receiver = Receiver()
    try:
        dispatcher = Dispatcher(ledger, [WebhookSink(receiver.url)], public_url="https://ledger.example.test")
        assert await dispatcher.run_once() == 3
        assert await dispatcher.run_once() == 0
    finally:
        receiver.close()
    bodies = {(b["anomaly"] or {}).get("user"): b for b in receiver.bodies}
    assert set(bodies) == {None, "ana", "cy"}
    ana = bodies["ana"]
    assert ana["kind"] == "anomaly" and ana["threshold"] == 0 and ana["budget"] == "all"
    assert ana["text"] == (
        "Budget all: unusual spend by user ana: $25.00 in one hour, "
        "against a usual $2.00 at that hour of the week"
    )
    assert ana["anomaly"]["spend"] == "25" and ana["anomaly"]["weeks"] == 8
    # Who spent it: over the anomalous hour, ana's own usage (by feature and model; she is the subject).
    assert ana["spenders"]["by"] == {
        "feature": [{"name": "(unattributed)", "amount": "25", "share": "100.0"}],
        "model": [{"name": "gpt-4o", "amount": "25", "share": "100.0"}],
    }
    whole = bodies[None]["spenders"]["by"]["user"]
    assert [(s["name"], s["amount"]) for s in whole] == [("ana", "25"), ("cy", "5")]
    assert bodies[None]["dashboard_url"] == "https://ledger.example.test/dashboard"
    state = (await ledger.get_budget("all")).state
    assert Decimal(bodies[None]["figures"]["used"]) == state.used and state.used >= 30  # the month so far


async def test_a_weekly_peak_does_not_alert_and_the_same_spend_elsewhere_does(
    ledger: Ledger, moment: datetime
) -> None:
    """The hour now stands for Monday morning: it peaks at about $40 every week."""
    await global_budget(ledger)
    await history(ledger, moment, ["40", "42", "38", "45", "41", "39", "44", "40"])
    await history(ledger, moment - timedelta(hours=1), ["3"] * 8)  # the hour before: an ordinary one
    await spend(ledger, moment, "46")
    await spend(ledger, moment - timedelta(hours=1), "3.2")
    assert await ledger.anomaly_alerts() == 0
    assert await anomaly_rows(ledger) == []

    quiet = Principal(tenant_id="quiet")  # where this hour is usually quiet, the same $46 is a spike
    await ledger.set_budget(
        BudgetSpec(name="all", unit="usd", limit=Decimal(10**9), priority_shares=None), quiet
    )
    for weeks_back in range(1, 9):
        await ledger.import_usage(
            TrackRequest(
                model="gpt-4o",
                input_tokens=1,
                output_tokens=0,
                cost_usd=Decimal("1"),
                user="ana",
                occurred_at=moment - weeks_back * WEEK,
            ),
            quiet,
        )
    await ledger.import_usage(
        TrackRequest(
            model="gpt-4o",
            input_tokens=1,
            output_tokens=0,
            cost_usd=Decimal("46"),
            user="ana",
            occurred_at=moment,
        ),
        quiet,
    )
    assert await ledger.anomaly_alerts() == 2
    assert await anomaly_rows(ledger) == []  # the other tenant's, not this one's


async def test_per_user_only_under_a_shared_budget(ledger: Ledger, moment: datetime) -> None:
    for name, scope in (("all", "global"), ("search", "team:search"), ("mine", "user:ana")):
        await ledger.set_budget(
            BudgetSpec(name=name, scope=scope, unit="usd", limit=Decimal(10**9), priority_shares=None)
        )
    await history(ledger, moment, ["1"] * 8, team="search")
    await spend(ledger, moment, "50", team="search")
    assert await ledger.anomaly_alerts() == 5
    raised = sorted((str(a["budget_name"]), str(a["subject"])) for a in await anomaly_rows(ledger))
    assert raised == [("all", ""), ("all", "user:ana"), ("mine", ""), ("search", ""), ("search", "user:ana")]


async def test_under_the_floor_nothing_pages(ledger: Ledger, moment: datetime) -> None:
    await global_budget(ledger)
    await global_budget(ledger, "tokens", unit="tokens")
    await history(ledger, moment, ["0.01"] * 8, tokens=100)
    await spend(ledger, moment, "0.90", tokens=99_000)  # 90 times the usual dollars, 990 times the tokens
    assert await ledger.anomaly_alerts() == 0
    await spend(ledger, moment, "0.10", tokens=1_000)  # $1.00 and 100,000 tokens: at the floor
    assert await ledger.anomaly_alerts() == 4  # each budget, as a whole and for ana
    units = sorted(str(a["unit"]) for a in await anomaly_rows(ledger))
    assert units == ["tokens", "tokens", "usd", "usd"]


async def test_too_little_history_is_no_baseline(ledger: Ledger, moment: datetime) -> None:
    await global_budget(ledger)
    await history(ledger, moment, ["1"] * (anomalies.MIN_BASELINE_WEEKS - 1))
    await spend(ledger, moment, "500")
    assert await ledger.anomaly_alerts() == 0  # three weeks of history: no judgement yet
    await spend(ledger, moment - anomalies.MIN_BASELINE_WEEKS * WEEK, "1")
    assert await ledger.anomaly_alerts() == 2  # a fourth week: now it is one


async def test_a_member_never_sees_another_users_anomaly(ledger: Ledger, moment: datetime) -> None:
    await global_budget(ledger)
    await history(ledger, moment, ["1"] * 8)
    await spend(ledger, moment, "50")
    assert await ledger.anomaly_alerts() == 2
    admin = {(a.kind, a.subject) for a in await ledger.open_alerts()}
    assert admin == {("anomaly", ""), ("anomaly", "user:ana")}
    bo = Principal(role="member", user="bo")
    assert [(a.kind, a.subject) for a in await ledger.open_alerts(bo)] == [("anomaly", "")]
    ana = Principal(role="member", user="ana")
    assert {(a.kind, a.subject) for a in await ledger.open_alerts(ana)} == admin
    assert "unusual hourly spend by user:ana" in dashboards.render(await ledger.dashboard())
    assert "ana" not in dashboards.render(await ledger.dashboard(bo))
    # A viewer of a tenant that pseudonymises users sees whom an anomaly is about as a pseudonym.
    viewer = Principal(role="viewer")
    assert {a.subject for a in await ledger.open_alerts(viewer)} == {"", "user:ana"}
    await ledger.set_tenant_setting("pseudonymize_users", True)
    masked = {a.subject for a in await ledger.open_alerts(viewer)}
    assert masked == {"", f"user:{await ledger.shown_user(viewer, 'ana')}"} and "user:ana" not in masked


# --- two real servers -------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def wait_for_bodies(receiver: Receiver, count: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(receiver.bodies) < count and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.slow
async def test_two_servers_raise_and_deliver_a_spike_once(
    ledger: Ledger, dsn: str, tmp_path: Path, receiver: Receiver, moment: datetime
) -> None:
    await global_budget(ledger)
    await history(ledger, moment, ["1"] * 8)
    await spend(ledger, moment, "40")
    env = {
        "TOKENLEDGER_ALERT_WEBHOOK": receiver.url,
        "TOKENLEDGER_ALERT_LOG": "0",
        "TOKENLEDGER_ALERT_POLL_SECONDS": "0.2",
        "TOKENLEDGER_PUBLIC_URL": "https://ledger.example.test/tl/",
    }
    with serve(dsn, tmp_path / "a", env=env), serve(dsn, tmp_path / "b", env=env):
        await anyio.to_thread.run_sync(wait_for_bodies, receiver, 2, 60.0)
        await anyio.sleep(1)  # five more polls of each server: nothing goes out again
    assert len(receiver.bodies) == 2 and len({b["id"] for b in receiver.bodies}) == 2
    assert sorted((b["anomaly"] or {}).get("user") or "" for b in receiver.bodies) == ["", "ana"]
    assert {b["dashboard_url"] for b in receiver.bodies} == {"https://ledger.example.test/tl/dashboard"}
    assert len(await anomaly_rows(ledger)) == 2
