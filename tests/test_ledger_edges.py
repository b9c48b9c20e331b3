"""The ledger's promises at its edges (issue 9), on real PostgreSQL and the real clock.

A late settle records its usage once whoever freed the reservation; idempotency keys are per user;
usage is dated within bounds and a settle counts in its reservation's period; TTLs are bounded and a
reservation can be extended; a member touches only its own user's reservations. Each test names the
defect of issue 9 it pins down.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pydantic
import pytest

from tests.test_ledger import budget, table_counts
from tokenledger.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import (
    CLOCK_SKEW,
    MAX_BACKDATE,
    MAX_IMPORT_AGE,
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    CheckRequest,
    ExtendRequest,
    Principal,
    TrackRequest,
    UsageQuery,
)

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o"
ADMIN = Principal()
ANA = Principal(role="member", user="ana")
BOB = Principal(role="member", user="bob")


async def ledger_state(store: Store) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Row counts of every table and every period's counters: what 'nothing was written' means."""
    periods = await store._fetch_rows(
        "select budget_id, period_start, committed, overage, reserved, requests from tl_budget_period"
        " order by 1, 2",
        (),
    )
    return await table_counts(store), periods


async def reservation_row(store: Store, reservation_id: str | None) -> dict[str, Any]:
    rows = await store._fetch_rows(
        "select status, settled_at, usage_id::text as usage_id from tl_reservation where reservation_id = %s",
        (reservation_id,),
    )
    return rows[0]


def settle(reservation_id: str | None, tokens: int = 800, **fields: Any) -> TrackRequest:
    return TrackRequest(
        model=MODEL, reservation_id=reservation_id, input_tokens=tokens, output_tokens=0, **fields
    )


# --- 1. a late settle records the usage, once ---------------------------------------------------------


async def test_a_late_settle_records_its_usage_once_whoever_freed_the_reservation(ledger: Ledger) -> None:
    """Defect 1: reserve with the shortest TTL and let it expire on the real clock; free it with the
    sweeper (the issue's path), lazily by another call, or by an explicit release. Each settle records its
    usage exactly once (as overage where the capacity went to someone else meanwhile), says so in a
    warning, replays with its request_id, and refuses a second settle naming the first."""
    swept, lazy, released = (Principal(tenant_id=name) for name in ("swept", "lazy", "released"))
    held = {}
    for principal in (swept, lazy, released):
        await ledger.set_budget(budget(limit=Decimal(1000)), principal)
        check = CheckRequest(model=MODEL, input_tokens=800, ttl_seconds=MIN_TTL_SECONDS)
        held[principal.tenant_id] = (await ledger.check_budget(check, principal)).reservation_id
    await ledger.release(held["released"] or "", released)
    await anyio.sleep(MIN_TTL_SECONDS + 0.3)  # measured from after the checks returned: past expiry

    # Lazily: the next check frees the expired hold and takes the capacity; then the late settle comes.
    taken = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=900), lazy)
    assert taken.allowed
    late = await ledger.track_usage(settle(held["lazy"], request_id="settle-lazy"), lazy)
    assert any("expired" in w for w in late.warnings) and any("overage" in w for w in late.warnings)
    state = (await ledger.get_budget("main", lazy)).state
    assert (state.used, state.overage, state.reserved) == (800, 700, 900)

    # The server's sweeper: the reproduction.
    assert await ledger.expire_reservations() == 1
    assert (await ledger.get_budget("main", swept)).state.reserved == 0
    late = await ledger.track_usage(settle(held["swept"], request_id="settle-swept"), swept)
    assert any("expired" in w for w in late.warnings)
    assert (await ledger.get_budget("main", swept)).state.used == 800

    late = await ledger.track_usage(settle(held["released"], request_id="settle-released"), released)
    assert any("released" in w for w in late.warnings)
    assert (await ledger.get_budget("main", released)).state.used == 800

    for principal, status in ((swept, "expired"), (lazy, "expired"), (released, "released")):
        reservation = held[principal.tenant_id]
        first = settle(reservation, request_id=f"settle-{principal.tenant_id}")
        replay = await ledger.track_usage(first, principal)
        assert replay.duplicate
        with pytest.raises(Conflict, match=f"already settled .*usage_id {replay.usage_id}"):
            await ledger.track_usage(settle(reservation), principal)
        with pytest.raises(Conflict, match="already settled"):
            await ledger.track_usage(settle(reservation, request_id="another-id"), principal)
        row = await reservation_row(ledger.store, reservation)
        assert (row["status"], row["usage_id"]) == (status, replay.usage_id) and row["settled_at"]
        usage = await ledger.usage(UsageQuery(), principal)
        assert usage.totals.requests == 1 and usage.totals.total_tokens == 800


# --- 4. idempotency keys per (tenant, user) -----------------------------------------------------------


async def test_a_request_id_never_replays_another_users_answer(ledger: Ledger) -> None:
    """Defect 4: bob and ana send the same request_id with the same content: two calls, two
    reservations, two usages; ana never sees bob's reservation or his user budget."""
    await ledger.set_budget(budget())
    await ledger.set_budget(budget("bob-daily", scope="user:bob"))
    checks = {}
    for principal in (BOB, ANA):
        checks[principal.user] = await ledger.check_budget(
            CheckRequest(model=MODEL, input_tokens=100, request_id="R"), principal
        )
    assert not checks["ana"].duplicate and checks["ana"].reservation_id != checks["bob"].reservation_id
    assert [b.name for b in checks["ana"].budgets] == ["main"]
    for principal in (BOB, ANA):
        request = settle(checks[principal.user or ""].reservation_id, tokens=100, request_id="R")
        assert not (await ledger.track_usage(request, principal)).duplicate
        assert (await ledger.track_usage(request, principal)).duplicate  # its own replay still replays
    usage = await ledger.usage(UsageQuery(group_by=["user"]))
    assert {row.keys["user"]: row.total_tokens for row in usage.rows} == {"ana": 100, "bob": 100}
    again = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=100, request_id="R"), ANA)
    assert again.duplicate and again.reservation_id == checks["ana"].reservation_id


# --- 5. when usage may be dated -----------------------------------------------------------------------


async def test_backdated_settles_no_longer_escape_the_day_budget(ledger: Ledger) -> None:
    """Defect 5, the issue's reproduction: five check + settle pairs of 800 tokens against a hard
    1,000-token day budget, each settled as if in 2020. The first settle is refused (nothing written), its
    hold stays, so the other four checks are denied; a settle without the date counts today."""
    await ledger.set_budget(budget(limit=Decimal(1000)))
    outcomes = []
    held = None
    for month in range(1, 6):
        check = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=800))
        if not check.allowed:
            outcomes.append("denied")
            continue
        held = check.reservation_id
        try:
            await ledger.track_usage(settle(held, occurred_at=datetime(2020, month, 1, tzinfo=UTC)))
            outcomes.append("settled")
        except InvalidInput as error:
            assert error.field == "occurred_at"
            outcomes.append("refused")
    assert outcomes == ["refused", "denied", "denied", "denied", "denied"]
    state = (await ledger.get_budget("main")).state
    assert (state.used, state.reserved) == (0, 800)
    await ledger.track_usage(settle(held))
    state = (await ledger.get_budget("main")).state
    assert (state.used, state.reserved) == (800, 0)


async def test_a_settle_counts_in_its_reservations_period_and_its_date_is_bounded(ledger: Ledger) -> None:
    """Defect 5: a settle posts to the period its reservation was taken in, whatever occurred_at says;
    occurred_at must lie between the reservation's creation and now, give or take CLOCK_SKEW; a refusal
    writes nothing, and retrying it adds nothing."""
    await ledger.set_budget(budget("per-minute", limit=Decimal(10**6), period="minute"))
    check = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=100))
    taken_in = check.budgets[0].period_start
    now = datetime.now(UTC)
    before = await ledger_state(ledger.store)
    too_early, too_late = now - CLOCK_SKEW - timedelta(minutes=1), now + CLOCK_SKEW + timedelta(minutes=1)
    for moment in (too_early, too_late, datetime(9999, 12, 31, tzinfo=UTC)):
        for _ in range(2):
            with pytest.raises(InvalidInput) as refused:
                await ledger.track_usage(
                    settle(check.reservation_id, 100, occurred_at=moment, request_id="s")
                )
            assert refused.value.field == "occurred_at" and "clock skew" in str(refused.value)
    assert await ledger_state(ledger.store) == before

    earlier = now - CLOCK_SKEW + timedelta(minutes=1)  # within the skew, and in an earlier minute
    tracked = await ledger.track_usage(settle(check.reservation_id, 100, occurred_at=earlier))
    assert tracked.occurred_at == earlier and tracked.budgets[0].period_start == taken_in
    periods = await ledger.store._fetch_rows("select period_start, committed from tl_budget_period", ())
    assert periods == [{"period_start": taken_in, "committed": 100}]


async def test_direct_usage_is_dated_at_most_7_days_back_and_5_minutes_ahead(ledger: Ledger) -> None:
    """Defect 5: usage without a reservation may be backdated MAX_BACKDATE at most, and dated no more
    than CLOCK_SKEW ahead; both bounds hold, and a refusal (retried) writes nothing."""
    assert (timedelta(days=7), timedelta(minutes=5)) == (MAX_BACKDATE, CLOCK_SKEW)  # as the README says
    await ledger.set_budget(budget())
    now = datetime.now(UTC)
    margin = timedelta(minutes=1)
    before = await ledger_state(ledger.store)
    for moment in (now - MAX_BACKDATE - margin, now + CLOCK_SKEW + margin, datetime(9999, 12, 1, tzinfo=UTC)):
        for _ in range(2):
            with pytest.raises(InvalidInput) as refused:
                await ledger.track_usage(settle(None, 5, occurred_at=moment, request_id="direct"))
            assert refused.value.field == "occurred_at" and "7 days back and 5 minutes ahead" in str(
                refused.value
            )
    assert await ledger_state(ledger.store) == before
    for moment in (now - MAX_BACKDATE + margin, now + CLOCK_SKEW - margin):
        assert (await ledger.track_usage(settle(None, 5, occurred_at=moment))).occurred_at == moment


async def test_an_admin_imports_older_usage(ledger: Ledger) -> None:
    """Usage from before the backdating window comes in through import_usage: admins only, no
    reservation, dated within MAX_IMPORT_AGE."""
    now = datetime.now(UTC)
    old = now - timedelta(days=90)
    imported = await ledger.import_usage(settle(None, 7, occurred_at=old, user="ana"))
    assert imported.occurred_at == old
    assert (await ledger.usage(UsageQuery(since=old - timedelta(hours=1)))).totals.total_tokens == 7
    with pytest.raises(PermissionDenied):
        await ledger.import_usage(settle(None, 7, occurred_at=old), ANA)
    with pytest.raises(InvalidInput, match="occurred_at"):
        await ledger.import_usage(settle(None, 7, occurred_at=now - MAX_IMPORT_AGE - timedelta(days=1)))
    with pytest.raises(InvalidInput, match="occurred_at"):
        await ledger.import_usage(settle(None, 7))
    with pytest.raises(InvalidInput, match="reservation_id"):
        await ledger.import_usage(settle("00000000-0000-0000-0000-000000000000", occurred_at=old))


# --- 9. bounded TTLs, and extend ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "accepted"),
    [(MIN_TTL_SECONDS - 0.01, False), (MIN_TTL_SECONDS, True), (MAX_TTL_SECONDS, True), (86_400.01, False)],
)
def test_ttl_seconds_is_bounded(ttl: float, accepted: bool) -> None:
    """Defect 9: a TTL is 5 s to a day, on a check and on an extension."""
    assert (MIN_TTL_SECONDS, MAX_TTL_SECONDS) == (5, 86_400)  # as the README says
    for make in (
        lambda: CheckRequest(model=MODEL, input_tokens=1, ttl_seconds=ttl),
        lambda: ExtendRequest(reservation_id="00000000-0000-0000-0000-000000000000", ttl_seconds=ttl),
    ):
        if accepted:
            assert make().ttl_seconds == ttl
        else:
            with pytest.raises(pydantic.ValidationError) as refused:
                make()
            assert refused.value.errors()[0]["loc"] == ("ttl_seconds",)


async def test_a_tiny_ttl_no_longer_defeats_a_hard_limit(ledger: Ledger) -> None:
    """Defect 9, the issue's reproduction: ten sequential 500-token grants against a hard 1,000-token
    budget with ttl_seconds=0.001. The TTL is refused; with the shortest allowed one, two are granted."""
    await ledger.set_budget(budget(limit=Decimal(1000)))
    with pytest.raises(pydantic.ValidationError, match="ttl_seconds"):
        CheckRequest(model=MODEL, input_tokens=500, ttl_seconds=0.001)
    grants = [
        await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=500, ttl_seconds=MIN_TTL_SECONDS))
        for _ in range(10)
    ]
    assert [g.allowed for g in grants].count(True) == 2
    for grant in grants:
        if grant.allowed:
            await ledger.track_usage(settle(grant.reservation_id, 500))
    assert (await ledger.get_budget("main")).state.used == 1000


async def test_an_extended_reservation_outlives_its_first_expiry(ledger: Ledger) -> None:
    """Defect 9: extend gives an active reservation a new expiry and keeps its holds; it is refused once
    the reservation expired, was released or settled."""
    await ledger.set_budget(budget(limit=Decimal(1000)))
    kept, lapsed, released = [
        await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=300, ttl_seconds=MIN_TTL_SECONDS))
        for _ in range(3)
    ]
    extended = await ledger.extend_reservation(
        ExtendRequest(reservation_id=kept.reservation_id, ttl_seconds=60)
    )
    assert kept.expires_at is not None and extended.expires_at >= kept.expires_at + timedelta(seconds=50)
    await ledger.release(released.reservation_id or "")
    with pytest.raises(Conflict, match="already released"):
        await ledger.extend_reservation(ExtendRequest(reservation_id=released.reservation_id))
    await anyio.sleep(MIN_TTL_SECONDS + 0.3)

    assert await ledger.expire_reservations() == 1  # the lapsed one only
    with pytest.raises(Conflict, match="already expired"):
        await ledger.extend_reservation(ExtendRequest(reservation_id=lapsed.reservation_id))
    assert (await ledger.get_budget("main")).state.reserved == 300  # the extended hold still counts
    assert not (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=701, reserve=False))).allowed
    tracked = await ledger.track_usage(settle(kept.reservation_id, 250))
    assert tracked.warnings == []
    assert (await reservation_row(ledger.store, kept.reservation_id))["status"] == "settled"
    with pytest.raises(Conflict, match="already settled"):
        await ledger.extend_reservation(ExtendRequest(reservation_id=kept.reservation_id))


# --- 12a. a member touches only its own user's reservations -------------------------------------------


async def test_a_member_settles_extends_and_releases_only_its_own_users_reservations(ledger: Ledger) -> None:
    """Defect 12: bob cannot settle, extend or release an admin's reservation without a user, nor ana's:
    to him they do not exist, and nothing changes. His own he can."""
    await ledger.set_budget(budget())
    admins = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=100))
    anas = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=100), ANA)
    before = await ledger_state(ledger.store)
    for reservation in (admins.reservation_id, anas.reservation_id):
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda r=reservation: ledger.track_usage(settle(r, 1), BOB),
            lambda r=reservation: ledger.extend_reservation(ExtendRequest(reservation_id=r), BOB),
            lambda r=reservation: ledger.release(r or "", BOB),
        ]
        for attempt in attempts:
            with pytest.raises(NotFound, match="no such reservation"):
                await attempt()
    assert await ledger_state(ledger.store) == before
    bobs = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=100), BOB)
    await ledger.extend_reservation(ExtendRequest(reservation_id=bobs.reservation_id), BOB)
    assert (await ledger.track_usage(settle(bobs.reservation_id, 100), BOB)).total_tokens == 100
