"""The ledger against a plain Python model of it, driven by hypothesis through random histories.

One hard token budget (period `day` in a time zone with a half-hour offset, no priority shares) sees
random reserves, settles (below and above the grant), releases, expiries, direct tracks, tracks dated
in earlier days and refused tracks dated in the future. After every step the database's period rows
must equal the model's (committed, overage, reserved per period start) and the database's own
invariant must hold: `committed + reserved <= cap`. Each example runs on a fresh database cloned from
the template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio
import psycopg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import dict_row

from tests.conftest import clone_database, drop_database, with_database
from tokenledger.errors import Conflict, InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.store import Store
from tokenledger.types import MIN_TTL_SECONDS, BudgetSpec, CheckRequest, TrackRequest

T = TypeVar("T")
ZONE = ZoneInfo("Asia/Kolkata")
LIMIT = 1000
MODEL = "gpt-4o-mini"
EXPIRIES_PER_EXAMPLE = 2

tokens = st.integers(min_value=0, max_value=400)
actual_tokens = st.integers(min_value=0, max_value=700)  # settling above the grant makes overage


def day_start(at: datetime) -> datetime:
    return at.astimezone(ZONE).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class PeriodModel:
    committed: int = 0
    overage: int = 0
    reserved: int = 0

    def available(self) -> int:
        """What a check may still take: the cap less everything spent (overage included) and held."""
        return max(LIMIT - self.committed - self.overage - self.reserved, 0)

    def post(self, amount: int) -> None:
        """Usage lands within the cap as far as it fits; the rest is overage, recorded, never hidden."""
        room = min(amount, max(LIMIT - self.committed - self.reserved, 0))
        self.committed += room
        self.overage += amount - room


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    period_start: datetime
    amount: int


class LedgerModelMachine(RuleBasedStateMachine):
    """Set `portal` and `server_dsn` on a subclass before running (see the test below)."""

    portal: BlockingPortal
    server_dsn: str

    reservations = Bundle("reservations")
    finished = Bundle("finished")

    def __init__(self) -> None:
        super().__init__()
        self.database = clone_database(self.server_dsn)
        self.dsn = with_database(self.server_dsn, self.database)
        self.periods: dict[datetime, PeriodModel] = {}
        self.settled: set[str] = set()
        self.expiries = 0
        self.ledger = self.portal.call(self._open)
        self.reader = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)

    async def _open(self) -> Ledger:
        ledger = Ledger(await Store.open(self.dsn, migrate=False, max_size=2))
        await ledger.set_budget(
            BudgetSpec(
                name="daily", limit=Decimal(LIMIT), period="day", timezone=str(ZONE), priority_shares=None
            )
        )
        return ledger

    def teardown(self) -> None:
        self.reader.close()
        self.portal.call(self.ledger.close)
        drop_database(self.server_dsn, self.database)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def in_current_period(
        self, fn: Callable[[], T], period_of: Callable[[T], datetime | None]
    ) -> tuple[T, datetime]:
        """Run `fn` and name the period it landed in: today, unless midnight passed during the call
        (then the ledger's answer says which of the two days it was)."""
        before = day_start(datetime.now(ZONE))
        result = fn()
        after = day_start(datetime.now(ZONE))
        if before == after:
            return result, before
        landed = period_of(result)
        assert landed in (before, after)
        return result, landed

    def period(self, start: datetime) -> PeriodModel:
        return self.periods.setdefault(start, PeriodModel())

    def check(self, input_tokens: int, max_output: int, ttl: float) -> tuple[bool, Reservation | None]:
        request = CheckRequest(
            model=MODEL, input_tokens=input_tokens, max_output_tokens=max_output, ttl_seconds=ttl
        )
        result, start = self.in_current_period(
            lambda: self.call(self.ledger.check_budget, request),
            lambda r: r.budgets[0].period_start,
        )
        expected = input_tokens + max_output <= self.period(start).available()
        assert result.allowed == expected, (result, self.periods)
        if not result.allowed:
            assert result.blocked_by is not None and result.blocked_by.reason == "limit"
            return False, None
        assert result.granted_output_tokens == max_output
        self.period(start).reserved += input_tokens + max_output
        return True, Reservation(result.reservation_id, start, input_tokens + max_output)

    # --- rules ------------------------------------------------------------------------------------

    @rule(target=reservations, input_tokens=tokens, max_output=tokens)
    def reserve(self, input_tokens: int, max_output: int) -> Any:
        allowed, reservation = self.check(input_tokens, max_output, ttl=600)
        return reservation if allowed else multiple()

    @rule(
        target=finished, reservation=consumes(reservations), input_tokens=actual_tokens, output=actual_tokens
    )
    def settle(self, reservation: Reservation, input_tokens: int, output: int) -> Reservation:
        """A settle posts to the period its reservation was taken in, even after midnight."""
        request = TrackRequest(
            model=MODEL,
            reservation_id=reservation.reservation_id,
            input_tokens=input_tokens,
            output_tokens=output,
        )
        result = self.call(self.ledger.track_usage, request)
        assert result.total_tokens == input_tokens + output
        assert result.budgets[0].period_start == reservation.period_start
        self.period(reservation.period_start).reserved -= reservation.amount
        self.period(reservation.period_start).post(input_tokens + output)
        self.settled.add(reservation.reservation_id)
        return reservation

    @rule(target=finished, reservation=consumes(reservations))
    def release(self, reservation: Reservation) -> Reservation:
        result = self.call(self.ledger.release, reservation.reservation_id)
        assert (result.status, result.released) == ("released", reservation.amount)
        self.period(reservation.period_start).reserved -= reservation.amount
        return reservation

    @rule(reservation=finished)
    def release_again(self, reservation: Reservation) -> None:
        """A finished reservation gives nothing back twice, and a settled one cannot be released."""
        if reservation.reservation_id in self.settled:
            try:
                self.call(self.ledger.release, reservation.reservation_id)
            except Conflict:
                return
            raise AssertionError("releasing a settled reservation did not raise Conflict")
        result = self.call(self.ledger.release, reservation.reservation_id)
        assert (result.status, result.released) == ("already_released", 0)

    @precondition(lambda self: self.expiries < EXPIRIES_PER_EXAMPLE)
    @rule(input_tokens=tokens, max_output=tokens)
    def expire(self, input_tokens: int, max_output: int) -> None:
        self.expiries += 1
        allowed, reservation = self.check(input_tokens, max_output, ttl=MIN_TTL_SECONDS)
        if reservation is not None:
            self.age(reservation.reservation_id)
        assert self.call(self.ledger.expire_reservations) == (1 if allowed else 0)
        if reservation is not None:
            self.period(reservation.period_start).reserved -= reservation.amount

    @rule(input_tokens=actual_tokens, output=actual_tokens)
    def track(self, input_tokens: int, output: int) -> None:
        """Usage reported after the fact, with no reservation: it may go over the cap, as overage."""
        request = TrackRequest(model=MODEL, input_tokens=input_tokens, output_tokens=output)
        _, start = self.in_current_period(
            lambda: self.call(self.ledger.track_usage, request),
            lambda r: r.budgets[0].period_start,
        )
        self.period(start).post(input_tokens + output)

    @rule(days=st.sampled_from([-3, -2, -1]), input_tokens=actual_tokens, output=actual_tokens)
    def track_in_another_day(self, days: int, input_tokens: int, output: int) -> None:
        occurred_at = datetime.now(ZONE) + timedelta(days=days)
        request = TrackRequest(
            model=MODEL, input_tokens=input_tokens, output_tokens=output, occurred_at=occurred_at
        )
        result = self.call(self.ledger.track_usage, request)
        assert result.budgets[0].period_start == day_start(occurred_at)
        self.period(day_start(occurred_at)).post(input_tokens + output)

    @rule(input_tokens=actual_tokens, output=actual_tokens)
    def track_tomorrow_is_refused(self, input_tokens: int, output: int) -> None:
        """Usage dated in the future (beyond clock skew) is refused and changes nothing."""
        occurred_at = datetime.now(ZONE) + timedelta(days=1)
        request = TrackRequest(
            model=MODEL, input_tokens=input_tokens, output_tokens=output, occurred_at=occurred_at
        )
        try:
            self.call(self.ledger.track_usage, request)
        except InvalidInput as error:
            assert error.field == "occurred_at"
            return
        raise AssertionError("usage dated tomorrow was accepted")

    def age(self, reservation_id: str) -> None:
        """Bring a reservation's expiry to now: what waiting out its TTL (at least MIN_TTL_SECONDS) does,
        without the wait in every history (expiry against the real clock is tested in test_ledger_edges)."""
        self.reader.execute(
            "update tl_reservation set expires_at = clock_timestamp() where reservation_id = %s",
            (reservation_id,),
        )
        self.reader.execute(
            "update tl_reservation_hold set expires_at = clock_timestamp() where reservation_id = %s",
            (reservation_id,),
        )

    # --- after every step -------------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            rows = conn.execute(
                "select period_start, committed, overage, reserved, cap from tl_budget_period"
            ).fetchall()
        seen = {}
        for row in rows:
            assert row["cap"] == LIMIT
            assert row["committed"] + row["reserved"] <= row["cap"]  # zero overspend
            assert min(row["committed"], row["overage"], row["reserved"]) >= 0
            seen[row["period_start"]] = PeriodModel(row["committed"], row["overage"], row["reserved"])
        # A denied check creates its period row with zeros: the model has it as "never touched".
        expected = {start: p for start, p in self.periods.items() if p != PeriodModel()}
        assert {start: p for start, p in seen.items() if p != PeriodModel()} == expected
        # The ledger's own account of today: used is committed plus overage.
        state = self.call(self.ledger.get_budget, "daily").state
        today = self.periods.get(state.period_start, PeriodModel())
        assert (state.used, state.reserved, state.overage) == (
            today.committed + today.overage,
            today.reserved,
            today.overage,
        )


def test_the_ledger_behaves_like_its_model(server_dsn: str, template_dsn: str) -> None:
    with start_blocking_portal(backend="asyncio") as portal:
        machine = type(
            "BoundLedgerModelMachine", (LedgerModelMachine,), {"portal": portal, "server_dsn": server_dsn}
        )
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=25,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


@pytest.mark.anyio
async def test_usage_is_not_pushed_into_overage_by_an_expired_hold(ledger: Ledger, dsn: str) -> None:
    """An expired reservation holds nothing (tl_usage_now does not count it, and checks free it first), so a
    track must not record as overage what fits once the expired hold is gone."""
    await ledger.set_budget(
        BudgetSpec(name="small", limit=Decimal(100), period="total", priority_shares=None)
    )
    held = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=60, ttl_seconds=MIN_TTL_SECONDS))
    assert held.allowed
    await anyio.sleep(MIN_TTL_SECONDS + 0.1)
    tracked = await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=50, output_tokens=0))
    assert not tracked.warnings, tracked.warnings
    state = (await ledger.get_budget("small")).state
    assert (state.used, state.overage) == (Decimal(50), Decimal(0))
