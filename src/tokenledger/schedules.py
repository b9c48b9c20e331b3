"""Scheduled reports: what a schedule is, and when its occurrences fall. Plain functions, no I/O.

A schedule delivers one report view every day, every week (on Mondays) or every month (on the 1st) at a
wall-clock time in its IANA time zone. Occurrences are computed here with `zoneinfo`, as instants in UTC;
the database only decides which server process takes each one (see `tl_start_schedule_run`).

Daylight saving time, deliberately:
- 08:00 is 08:00 local on both sides of a change: the instant moves with the offset.
- A local time that does not exist on the day the clocks jump forward (02:30 in Europe/Paris on the last
  Sunday of March) is read with the offset in force before the jump, as `zoneinfo` does with fold=0: it
  falls one gap later on the wall clock (03:30 local), once, that day.
- A local time that exists twice on the day the clocks go back (02:30 on the last Sunday of October) is
  delivered once, at its first instance (summer time).

A kept recurrence library was weighed: croniter (its DST handling of skipped and repeated times is its
own, and has changed across releases) and procrastinate's periodic tasks (static tasks declared in code,
with their own queue schema, not per-tenant schedules stored as rows). Three frequencies at one wall
time need a few lines over the standard library's `zoneinfo`, with the DST rule above stated and tested.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import StringConstraints

from tokenledger.errors import InvalidInput
from tokenledger.types import GroupKey, Model, TimeZone

__all__ = [
    "MAX_SCHEDULES",
    "Delivery",
    "Schedule",
    "ScheduleRun",
    "ScheduleSpec",
    "destination",
    "next_occurrence",
    "plan_due",
    "previous_occurrence",
    "window_before",
]

Every = Literal["day", "week", "month"]
ScheduleView = Literal["summary", "usage", "budgets", "forecast", "recommendations", "chargeback"]
Destination = Literal["email", "slack", "webhook"]
# No ':' in a name: the webhook id `tenant:schedule:occurrence` stays readable.
ScheduleName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
LocalTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Recipient = Annotated[str, StringConstraints(min_length=1, max_length=260)]

MAX_SCHEDULES = 100  # per tenant
MAX_CATCH_UP = 10_000  # occurrences counted after downtime (27 years of a daily schedule)
# An address as SMTP takes it, without display names or anything a header could be injected with.
EMAIL_PATTERN = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
)
TO_ALLOWED = "email, email:ADDRESS (e.g. email:finance@example.com), slack or webhook"


class ScheduleSpec(Model):
    """A scheduled report: the view, how often and when (local time in `timezone`), and where it goes."""

    name: ScheduleName
    view: ScheduleView = "summary"
    every: Every = "day"
    at: LocalTime = "08:00"
    timezone: TimeZone = "UTC"
    to: Recipient  # email (the configured recipients), email:ADDRESS, slack or webhook
    by: GroupKey | None = None  # usage: the grouping (default model); chargeback: the cost centre (team)


class Schedule(ScheduleSpec):
    """A stored schedule, its next occurrence and its latest run."""

    next_run_at: datetime
    created_at: datetime
    created_by: str
    last_occurrence: datetime | None = None
    last_delivered_at: datetime | None = None
    last_error: str | None = None


class ScheduleRun(Model):
    """One delivery of a schedule: an occurrence, a catch-up standing for missed ones, or a run-now."""

    schedule: str
    run_id: int
    occurrence: datetime
    kind: Literal["scheduled", "catch_up", "manual"]
    since: datetime  # the window the report covers
    until: datetime
    missed: int = 0  # earlier occurrences that fell due while no server ran, folded into this run
    missed_from: datetime | None = None


class Delivery(ScheduleRun):
    """A run claimed for one sink, with what its report needs from the schedule."""

    tenant_id: str
    sink: str
    attempt: int
    view: ScheduleView
    every: Every
    at: str
    timezone: str
    destination: Destination
    recipient: str | None = None
    by: GroupKey | None = None

    @property
    def id(self) -> str:
        """`tenant:schedule:occurrence` (UTC, to the microsecond when not whole seconds): stable across
        retries and sinks, so receivers can deduplicate."""
        moment = self.occurrence.astimezone(UTC)
        spec = "seconds" if moment.microsecond == 0 else "microseconds"
        return f"{self.tenant_id}:{self.schedule}:{moment.replace(tzinfo=None).isoformat(timespec=spec)}Z"


def destination(to: str) -> tuple[Destination, str | None]:
    """The sink kind and the email recipient (None: the configured ones) of a `to` value."""
    if to in ("email", "slack", "webhook"):
        return to, None  # type: ignore[return-value]  # one of the Destination literals, just checked
    kind, _, address = to.partition(":")
    if kind == "email" and len(address) <= 254 and EMAIL_PATTERN.fullmatch(address):
        return "email", address
    raise InvalidInput("to", to, TO_ALLOWED)


# --- occurrences ---------------------------------------------------------------------------------


def _wall(value: str) -> time:
    hour, minute = value.split(":")
    return time(int(hour), int(minute))


def _instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """`at` on `day` in `zone`, as UTC: fold=0 picks the first of a repeated time and reads a skipped
    one with the offset before the jump (see the module docstring)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _first_of_next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _days_from(start: date, every: Every) -> Iterator[date]:
    """The days an occurrence falls on, from `start` on: every day, Mondays, or the 1st."""
    if every == "month":
        day = start if start.day == 1 else _first_of_next_month(start)
        while True:
            yield day
            day = _first_of_next_month(day)
    step = timedelta(days=7 if every == "week" else 1)
    day = start + timedelta(days=(-start.weekday()) % 7) if every == "week" else start
    while True:
        yield day
        day += step


def _days_back_from(start: date, every: Every) -> Iterator[date]:
    """The days an occurrence falls on, from `start` back."""
    if every == "month":
        day = start.replace(day=1)
        while True:
            yield day
            day = (day - timedelta(days=1)).replace(day=1)
    step = timedelta(days=7 if every == "week" else 1)
    day = start - timedelta(days=start.weekday()) if every == "week" else start
    while True:
        yield day
        day -= step


def next_occurrence(after: datetime, every: Every, at: str, timezone: str) -> datetime:
    """The first occurrence strictly after `after`."""
    zone, wall = ZoneInfo(timezone), _wall(at)
    # From the day before: an occurrence's local date may precede `after`'s by one near a DST change.
    for day in _days_from(after.astimezone(zone).date() - timedelta(days=1), every):
        instant = _instant(day, wall, zone)
        if instant > after:
            return instant
    raise AssertionError("unreachable: the days never end")


def previous_occurrence(until: datetime, every: Every, at: str, timezone: str) -> datetime:
    """The last occurrence strictly before `until`."""
    zone, wall = ZoneInfo(timezone), _wall(at)
    for day in _days_back_from(until.astimezone(zone).date() + timedelta(days=1), every):
        instant = _instant(day, wall, zone)
        if instant < until:
            return instant
    raise AssertionError("unreachable: the days never end")


def window_before(moment: datetime, every: Every, timezone: str) -> datetime:
    """One day, week or month of local wall time before `moment` (a run-now's window start); the 31st
    of a month steps back to the last day of a shorter month."""
    zone = ZoneInfo(timezone)
    local = moment.astimezone(zone)
    if every == "month":
        last_day = (local.replace(day=1) - timedelta(days=1)).day
        previous = local.replace(day=1) - timedelta(days=1)
        wall = local.replace(year=previous.year, month=previous.month, day=min(local.day, last_day), fold=0)
    else:
        wall = (local.replace(tzinfo=None) - timedelta(days=7 if every == "week" else 1)).replace(tzinfo=zone)
    return wall.astimezone(UTC)


class Plan(Model):
    """What a dispatcher does with a due schedule: one run for `occurrence` over [since, occurrence),
    standing for `missed` earlier occurrences, and the schedule's next occurrence after it."""

    occurrence: datetime
    kind: Literal["scheduled", "catch_up"]
    since: datetime
    missed: int
    missed_from: datetime | None
    next_run_at: datetime


def plan_due(next_run_at: datetime, now: datetime, every: Every, at: str, timezone: str) -> Plan:
    """The one run that delivers every occurrence from `next_run_at` (due: at or before `now`) up to
    `now`: the latest of them, covering the time since the first one's window began. Several due
    occurrences (a server down over them) make one catch-up run, never a flood."""
    due = [next_run_at]
    following = next_occurrence(next_run_at, every, at, timezone)
    while following <= now and len(due) < MAX_CATCH_UP:
        due.append(following)
        following = next_occurrence(following, every, at, timezone)
    if following <= now:  # past MAX_CATCH_UP: jump to the present
        due.append(previous_occurrence(now + timedelta(microseconds=1), every, at, timezone))
        following = next_occurrence(now, every, at, timezone)
    return Plan(
        occurrence=due[-1],
        kind="catch_up" if len(due) > 1 else "scheduled",
        since=previous_occurrence(due[0], every, at, timezone),
        missed=len(due) - 1,
        missed_from=due[0] if len(due) > 1 else None,
        next_run_at=following,
    )
