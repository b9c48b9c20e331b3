"""The ledger's rules on real PostgreSQL: budgets, reservations, idempotency, periods, prices, access."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest

from tokenledger.errors import Conflict, InvalidInput, NotFound, PermissionDenied, UnknownModel
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, CheckRequest, PriceSpec, Principal, TrackRequest, UsageQuery

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o"


def budget(name: str = "main", **fields: Any) -> BudgetSpec:
    fields.setdefault("limit", Decimal(10_000))
    fields.setdefault("period", "day")
    fields.setdefault("priority_shares", None)
    return BudgetSpec(name=name, **fields)


async def table_counts(store: Store) -> dict[str, int]:
    """Row counts of every ledger table: what 'the ledger is unchanged' means."""
    tables = [
        "tl_budget",
        "tl_budget_period",
        "tl_reservation",
        "tl_reservation_hold",
        "tl_usage",
        "tl_request",
        "tl_alert",
        "tl_price",
        "tl_audit",
        "tl_api_key",
        "tl_rate_window",
    ]
    rows = await store._fetch_rows(
        " union all ".join(f"select '{t}' as t, count(*) as n from {t}" for t in tables), ()
    )
    return {r["t"]: r["n"] for r in rows}


async def test_reserve_then_settle_moves_reserved_to_used(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    check = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1000, max_output_tokens=3000))
    assert check.allowed and check.decision == "allow" and check.reservation_id
    assert (check.budgets[0].used, check.budgets[0].reserved) == (0, 4000)
    assert check.estimated_cost_usd is not None and check.estimated_cost_usd > 0

    tracked = await ledger.track_usage(
        TrackRequest(model=MODEL, reservation_id=check.reservation_id, input_tokens=1000, output_tokens=1500)
    )
    assert tracked.total_tokens == 2500
    state = (await ledger.get_budget("main")).state
    assert (state.used, state.reserved, state.remaining) == (2500, 0, 7500)

    with pytest.raises(Conflict, match="already settled"):
        await ledger.track_usage(
            TrackRequest(model=MODEL, reservation_id=check.reservation_id, input_tokens=1, output_tokens=1)
        )
    assert (await ledger.get_budget("main")).state.used == 2500


async def test_release_returns_capacity(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(1000)))
    first = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=600))
    denied = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=600))
    assert first.allowed and not denied.allowed
    assert denied.blocked_by is not None and denied.blocked_by.reason == "limit"
    assert (
        denied.blocked_by.remaining == 400 and denied.retry_after_seconds and denied.retry_after_seconds > 0
    )

    released = await ledger.release(first.reservation_id or "")
    assert released.status == "released" and released.released == 600
    assert (await ledger.release(first.reservation_id or "")).status == "already_released"
    # Expiry (lazy and by the sweeper) and late settles: tests/test_ledger_edges.py.


async def test_track_replays_count_once(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    request = TrackRequest(model=MODEL, request_id="call-1", input_tokens=10, output_tokens=5, user="ana")
    results = [await ledger.track_usage(request) for _ in range(50)]
    assert [r.duplicate for r in results].count(False) == 1
    assert len({r.usage_id for r in results}) == 1
    assert (await ledger.get_budget("main")).state.used == 15
    rows = await ledger.store.usage_rows(tenant="default")
    assert len(rows) == 1

    with pytest.raises(Conflict, match="call-1"):
        await ledger.track_usage(request.model_copy(update={"output_tokens": 6}))
    assert (await ledger.get_budget("main")).state.used == 15


async def test_concurrent_replays_of_one_request_count_once(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    request = TrackRequest(model=MODEL, request_id="burst", input_tokens=7, output_tokens=3)
    results = await asyncio.gather(*(ledger.track_usage(request) for _ in range(8)))
    assert sum(not r.duplicate for r in results) == 1
    assert (await ledger.get_budget("main")).state.used == 10


async def test_check_replay_returns_the_first_answer(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(100)))
    request = CheckRequest(model=MODEL, input_tokens=60, request_id="chk-1")
    first = await ledger.check_budget(request)
    again = await ledger.check_budget(request)
    assert first.allowed and again.duplicate and again.reservation_id == first.reservation_id
    assert (await ledger.get_budget("main")).state.reserved == 60
    with pytest.raises(Conflict):
        await ledger.check_budget(request.model_copy(update={"input_tokens": 61}))


async def test_midnight_in_the_budget_time_zone_splits_periods(ledger: Ledger) -> None:
    zone = ZoneInfo("America/New_York")
    await ledger.set_budget(budget(timezone="America/New_York"))
    today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    before, after = today - timedelta(seconds=0.1), today + timedelta(seconds=0.1)
    for moment, tokens in ((before, 100), (after, 7)):
        await ledger.track_usage(
            TrackRequest(model=MODEL, input_tokens=tokens, output_tokens=0, occurred_at=moment)
        )
    periods = await ledger.store._fetch_rows(
        "select period_start, committed from tl_budget_period order by period_start", ()
    )
    assert [p["committed"] for p in periods] == [100, 7]
    assert periods[1]["period_start"] == today  # local midnight, not UTC's
    assert (await ledger.get_budget("main")).state.used == 7


async def test_a_new_period_starts_at_zero_without_a_job(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(50), period="minute"))
    # Wait for a fresh minute so the budget can be filled and the boundary crossed within it.
    await asyncio.sleep(max(0, 60.5 - datetime.now(UTC).second - datetime.now(UTC).microsecond / 1e6) % 60)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=50, output_tokens=0))
    assert not (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1))).allowed
    now = datetime.now(UTC)
    await asyncio.sleep(60 - now.second - now.microsecond / 1e6 + 0.2)
    fresh = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=50))
    assert fresh.allowed and fresh.budgets[0].used == 0


async def test_priority_shares_and_partial_grants(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="shared", limit=Decimal(1000)))  # default shares .5/.3/.2
    low = await ledger.check_budget(
        CheckRequest(model=MODEL, input_tokens=100, max_output_tokens=200, priority="low", reserve=False)
    )
    assert not low.allowed and low.blocked_by is not None and low.blocked_by.reason == "priority_share"
    high = await ledger.check_budget(
        CheckRequest(model=MODEL, input_tokens=100, max_output_tokens=200, priority="high", reserve=False)
    )
    assert high.allowed
    partial = await ledger.check_budget(
        CheckRequest(
            model=MODEL, input_tokens=100, max_output_tokens=500, priority="medium", allow_partial=True
        )
    )
    assert partial.decision == "partial" and partial.granted_output_tokens == 200  # 0.3 * 1000 - 100
    assert partial.budgets[0].reserved == 300


async def test_usd_budget_denies_unpriced_model_by_policy(ledger: Ledger) -> None:
    await ledger.set_budget(budget("dollars", unit="usd", limit=Decimal("5")))
    await ledger.set_price(
        PriceSpec(
            model="house-model",
            input=Decimal("0.000001"),
            output=Decimal("0.000002"),
            effective_from=datetime.now(UTC) + timedelta(days=1),
        )
    )
    denied = await ledger.check_budget(CheckRequest(model="house-model", input_tokens=10))
    assert not denied.allowed and denied.blocked_by is not None
    assert denied.blocked_by.reason == "unpriced_model" and denied.estimated_cost_usd is None
    tracked = await ledger.track_usage(TrackRequest(model="house-model", input_tokens=10, output_tokens=10))
    assert tracked.cost_usd is None and not tracked.priced
    assert any("unpriced" in w for w in tracked.warnings)

    await ledger.set_budget(budget("dollars", unit="usd", limit=Decimal("5"), unpriced_policy="allow"))
    assert (await ledger.check_budget(CheckRequest(model="house-model", input_tokens=10))).allowed


async def test_every_matching_budget_must_pass(ledger: Ledger) -> None:
    await ledger.set_budget(budget("global", limit=Decimal(10_000)))
    await ledger.set_budget(budget("ana", scope="user:ana", limit=Decimal(100)))
    await ledger.set_budget(budget("search", scope="feature:search", limit=Decimal(10_000)))
    denied = await ledger.check_budget(
        CheckRequest(model=MODEL, input_tokens=150, user="ana", feature="search")
    )
    assert not denied.allowed and denied.blocked_by is not None and denied.blocked_by.budget == "ana"
    assert {b.name for b in denied.budgets} == {"global", "ana", "search"}
    other = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=150, user="bo"))
    assert other.allowed and {b.name for b in other.budgets} == {"global"}


async def test_soft_and_shadow_budgets_allow_and_say_so(ledger: Ledger) -> None:
    await ledger.set_budget(budget("soft", limit=Decimal(10), enforcement="soft"))
    await ledger.set_budget(budget("shadow", limit=Decimal(10), enforcement="shadow"))
    result = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=50))
    assert result.allowed and len([w for w in result.warnings if "would deny" in w]) == 2
    decisions = await ledger.store._fetch_rows("select budget_name, decision from tl_decision order by 1", ())
    assert decisions == [
        {"budget_name": "shadow", "decision": "would_deny"},
        {"budget_name": "soft", "decision": "would_deny"},
    ]


async def test_overage_band_up_to_the_hard_limit(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(1000), hard_limit=Decimal(1200)))
    inside = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1100))
    assert inside.allowed and any("overage band" in w for w in inside.warnings)
    assert not (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=101))).allowed


async def test_direct_usage_beyond_the_cap_is_recorded_as_overage(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(100)))
    tracked = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=150, output_tokens=0))
    assert any("overage" in w for w in tracked.warnings)
    state = (await ledger.get_budget("main")).state
    assert (state.used, state.overage, state.status) == (150, 50, "exceeded")
    assert not (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1))).allowed


async def test_rate_limits_say_how_long_to_wait(ledger: Ledger) -> None:
    await ledger.set_budget(
        budget("rpm", limit=Decimal(10**9), requests_per_minute=3, tokens_per_minute=10_000)
    )
    results = [await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=10)) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    blocked = results[-1]
    assert blocked.blocked_by is not None and blocked.blocked_by.reason == "rate_limit_requests"
    assert blocked.retry_after_seconds is not None and 1 <= blocked.retry_after_seconds <= 60
    await ledger.set_budget(
        budget("rpm", limit=Decimal(10**9), tokens_per_minute=100, requests_per_minute=None)
    )
    tokens = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=101))
    assert tokens.blocked_by is not None and tokens.blocked_by.reason == "rate_limit_tokens"


async def test_thresholds_alert_once_per_period(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(100)))
    first = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=55, output_tokens=0))
    second = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=40, output_tokens=0))
    third = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1, output_tokens=0))
    assert [a.threshold for a in first.alerts] == [50]
    assert [a.threshold for a in second.alerts] == [75, 90]
    assert third.alerts == []
    assert [a["threshold"] for a in await ledger.store.alerts(tenant="default")] == [50, 75, 90]


async def test_rollover_carries_unused_allowance(ledger: Ledger) -> None:
    await ledger.set_budget(budget(limit=Decimal(100), rollover="carry", rollover_cap=Decimal(30)))
    yesterday = datetime.now(UTC) - timedelta(days=1)
    await ledger.track_usage(
        TrackRequest(model=MODEL, input_tokens=20, output_tokens=0, occurred_at=yesterday)
    )
    state = (await ledger.get_budget("main")).state
    # get_budget reads without creating today's period; the first check creates it with the carry.
    check = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=130))
    assert state.limit == 100 and check.allowed and check.budgets[0].carried_over == 30
    assert check.budgets[0].limit == 130


async def test_prices_are_versioned_by_effective_from(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    await ledger.set_price(
        PriceSpec(
            model=MODEL,
            input=Decimal("0.000001"),
            output=Decimal("0.000002"),
            effective_from=now - timedelta(days=6),
        )
    )
    await ledger.set_price(
        PriceSpec(
            model=MODEL,
            input=Decimal("0.00001"),
            output=Decimal("0.00002"),
            effective_from=now - timedelta(days=1),
        )
    )
    old = await ledger.track_usage(
        TrackRequest(model=MODEL, input_tokens=1000, output_tokens=1000, occurred_at=now - timedelta(days=3))
    )
    new = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1000, output_tokens=1000))
    assert old.cost_usd == Decimal("0.003") and new.cost_usd == Decimal("0.03")
    catalog_era = await ledger.track_usage(
        TrackRequest(
            model=MODEL, input_tokens=1000, output_tokens=0, occurred_at=now - timedelta(days=6, hours=1)
        )
    )
    catalog_price = ledger.catalog.resolve(MODEL).price.input
    assert catalog_price is not None and catalog_era.cost_usd == 1000 * catalog_price
    info = await ledger.get_price(MODEL)
    assert info.source == "tenant override" and info.price.input == Decimal("0.00001")


async def test_cached_and_reasoning_tokens_are_priced_at_their_rates(ledger: Ledger) -> None:
    price = ledger.catalog.resolve(MODEL).price
    assert price.input and price.output and price.cache_read
    tracked = await ledger.track_usage(
        TrackRequest(
            model=MODEL,
            input_tokens=100,
            output_tokens=50,
            cache_read_input_tokens=1000,
            reasoning_output_tokens=20,
        )
    )
    expected = (
        100 * price.input
        + 1000 * price.cache_read
        + 30 * price.output
        + 20 * (price.reasoning or price.output)
    )
    assert tracked.cost_usd == expected and tracked.total_tokens == 1150


async def test_admin_changes_are_audited(ledger: Ledger) -> None:
    admin = Principal(tenant_id="default", role="admin", key_id="k-admin")
    await ledger.set_budget(budget(limit=Decimal(10)), admin)
    await ledger.set_budget(budget(limit=Decimal(20)), admin)
    await ledger.delete_budget("main", admin)
    await ledger.set_price(PriceSpec(model=MODEL, input=Decimal(0), output=Decimal(0)), admin)
    await ledger.create_key(role="viewer", principal=admin)
    log = list(reversed(await ledger.store.audit_log(tenant="default")))
    assert [(e["action"], e["object_kind"]) for e in log] == [
        ("create", "budget"),
        ("update", "budget"),
        ("delete", "budget"),
        ("set", "price"),
        ("create", "api_key"),
    ]
    assert all(e["actor"] == "k-admin" for e in log)
    assert log[1]["before"]["limit"] == 10 and log[1]["after"]["limit"] == 20


async def test_tenants_never_see_each_other(ledger: Ledger) -> None:
    acme, other = Principal(tenant_id="acme"), Principal(tenant_id="other")
    await ledger.set_budget(budget(limit=Decimal(100)), acme)
    check = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=10), acme)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=10, output_tokens=1), acme)
    assert await ledger.list_budgets(other) == []
    with pytest.raises(NotFound):
        await ledger.track_usage(
            TrackRequest(model=MODEL, reservation_id=check.reservation_id, input_tokens=1, output_tokens=1),
            other,
        )
    with pytest.raises(NotFound):
        await ledger.release(check.reservation_id or "", other)
    assert (await ledger.usage(UsageQuery(), other)).totals.requests == 0
    assert (await ledger.usage(UsageQuery(), acme)).totals.requests == 1


async def test_roles(ledger: Ledger) -> None:
    member = Principal(role="member", user="ana")
    viewer = Principal(role="viewer")
    with pytest.raises(PermissionDenied):
        await ledger.set_budget(budget(), member)
    with pytest.raises(PermissionDenied):
        await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1), viewer)
    with pytest.raises(PermissionDenied):
        await ledger.track_usage(
            TrackRequest(model=MODEL, input_tokens=1, output_tokens=1, user="bo"), member
        )
    with pytest.raises(PermissionDenied):
        await ledger.usage(UsageQuery(user="bo"), member)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1, output_tokens=1), member)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=5, output_tokens=5, user="bo"))
    mine = await ledger.usage(UsageQuery(group_by=["user"]), member)
    assert [row.keys["user"] for row in mine.rows] == ["ana"]


async def test_usage_groups_and_buckets(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    for user, model, tokens in (("ana", "gpt-4o", 100), ("ana", "gpt-4o-mini", 10), ("bo", "gpt-4o", 1)):
        await ledger.track_usage(
            TrackRequest(model=model, input_tokens=tokens, output_tokens=tokens, user=user, project="p1")
        )
    result = await ledger.usage(UsageQuery(group_by=["user", "model"], since=now - timedelta(hours=1)))
    assert next((r.keys["user"], r.keys["model"], r.total_tokens) for r in result.rows) == (
        "ana",
        "gpt-4o",
        200,
    )
    assert result.totals.requests == 3 and result.totals.total_tokens == 222
    bucketed = await ledger.usage(UsageQuery(bucket="day", timezone="Asia/Tokyo", project="p1"))
    assert len(bucketed.rows) == 1 and bucketed.rows[0].bucket is not None


async def test_unknown_model_names_the_closest(ledger: Ledger) -> None:
    with pytest.raises(UnknownModel) as error:
        await ledger.check_budget(CheckRequest(model="gpt-4oo", input_tokens=1))
    assert "gpt-4o" in str(error.value)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: CheckRequest(model=MODEL, input_tokens=-1), "input_tokens"),
        (lambda: TrackRequest(model=MODEL, input_tokens=1, output_tokens=-5), "output_tokens"),
        (lambda: budget(limit=Decimal(0)), "limit"),
        (lambda: budget(limit=Decimal(-3)), "limit"),
        (lambda: budget(period="fortnight"), "period"),
        (lambda: budget(unit="eur"), "unit"),
        (lambda: CheckRequest(model=MODEL, input_tokens=1, user="has space"), "user"),
    ],
)
def test_bad_input_is_refused_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        make()
    assert error.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (budget(timezone="Mars/Olympus"), "timezone"),
        (budget(scope="planet:x"), "scope"),
        (budget(scope="user:"), "scope"),
        (budget(scope="user:two words"), "user"),
        (budget(limit=Decimal(10), hard_limit=Decimal(5)), "hard_limit"),
        (budget(period="total", rollover="carry"), "rollover"),
    ],
)
async def test_bad_budgets_change_nothing(ledger: Ledger, spec: BudgetSpec, field: str) -> None:
    before = await table_counts(ledger.store)
    with pytest.raises((InvalidInput, pydantic.ValidationError)) as error:
        await ledger.set_budget(spec)
    assert field in str(error.value)
    assert await table_counts(ledger.store) == before


async def test_oversized_metadata_changes_nothing(ledger: Ledger) -> None:
    await ledger.set_budget(budget())
    before = await table_counts(ledger.store)
    with pytest.raises(InvalidInput, match="metadata"):
        await ledger.track_usage(
            TrackRequest(model=MODEL, input_tokens=1, output_tokens=1, metadata={"blob": "x" * 20_000})
        )
    with pytest.raises(InvalidInput, match="reasoning_output_tokens"):
        await ledger.track_usage(
            TrackRequest(model=MODEL, input_tokens=1, output_tokens=1, reasoning_output_tokens=2)
        )
    assert await table_counts(ledger.store) == before


async def test_track_counts_texts_when_counts_are_absent(ledger: Ledger) -> None:
    tracked = await ledger.track_usage(
        TrackRequest(model=MODEL, input_text="hello world", output_text="hi there")
    )
    assert (tracked.input_tokens, tracked.output_tokens, tracked.method) == (2, 2, "exact")
    given = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=9, output_text="hi there"))
    assert given.input_tokens == 9 and given.output_tokens == 2


async def test_prompts_are_recorded_by_hash_never_by_text(ledger: Ledger) -> None:
    from tokenledger import privacy, reports
    from tokenledger.types import ChatMessage

    messages = [ChatMessage(role="user", content="What is our refund policy?")]
    check = await ledger.check_budget(CheckRequest(model=MODEL, messages=messages))
    await ledger.track_usage(
        TrackRequest(model=MODEL, reservation_id=check.reservation_id, input_tokens=9, output_tokens=3)
    )
    await ledger.track_usage(TrackRequest(model=MODEL, input_text="hello there", output_tokens=1))
    rows = await ledger.store._fetch_rows(
        "select prompt_hash, metadata from tl_usage order by recorded_at", ()
    )
    key = (await ledger._tenant_keys("default")).prompt_key  # stored keyed per tenant (test_privacy)
    assert [r["prompt_hash"] for r in rows] == [
        privacy.keyed_prompt_hash(key, reports.prompt_hash(messages=messages)),
        privacy.keyed_prompt_hash(key, reports.prompt_hash(text="hello there")),
    ]
    assert "refund" not in str(rows)


async def test_estimates_are_calibrated_from_what_the_provider_reported(ledger: Ledger) -> None:
    claude = "claude-sonnet-4-5"
    assert ledger.catalog.resolve(claude).count_method == "estimate"
    text = "Summarise the quarterly report in three bullet points. " * 20
    first = await ledger.check_budget(CheckRequest(model=claude, text=text))
    assert first.method == "estimate" and first.calibration_factor is None
    raw = first.input_tokens
    for _ in range(5):  # the provider reports twice what we estimated, every time
        check = await ledger.check_budget(CheckRequest(model=claude, text=text))
        await ledger.track_usage(
            TrackRequest(
                model=claude, reservation_id=check.reservation_id, input_tokens=2 * raw, output_tokens=1
            )
        )
    calibrated = await Ledger(ledger.store).check_budget(CheckRequest(model=claude, text=text))
    assert calibrated.calibration_factor == 2.0
    assert calibrated.input_tokens == 2 * raw and calibrated.method == "estimate"
    # Exact counts are never scaled, and a calibrated check keeps calibrating against the raw count.
    exact = await ledger.check_budget(CheckRequest(model=MODEL, text=text))
    assert exact.calibration_factor is None
    await ledger.track_usage(
        TrackRequest(
            model=claude, reservation_id=calibrated.reservation_id, input_tokens=2 * raw, output_tokens=1
        )
    )
    again = await Ledger(ledger.store).check_budget(CheckRequest(model=claude, text=text))
    assert again.calibration_factor == 2.0
