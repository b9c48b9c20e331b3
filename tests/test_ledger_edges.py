"""The ledger's promises at its edges (issue 9), on real PostgreSQL and the real clock.

A late settle records its usage once whoever freed the reservation; idempotency keys are per user;
usage is dated within bounds and a settle counts in its reservation's period; TTLs are bounded and a
reservation can be extended; counts and limits stay within what the ledger can hold, and an internal
error is logged under the id its caller reads; no single user's reports skew another's estimates; a
member touches only its own user's reservations. Each test names the defect of issue 9 it pins down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import httpx2
import psycopg
import pydantic
import pytest
from mcp import Client
from mcp_types import TextContent

from tests.servers import serving
from tests.test_ledger import budget, table_counts
from tokenledger import reports
from tokenledger.cli import main
from tokenledger.errors import Conflict, InternalError, InvalidInput, NotFound, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.mcp.http import DASHBOARD_COOKIE
from tokenledger.store import Store
from tokenledger.types import (
    CLOCK_SKEW,
    MAX_BACKDATE,
    MAX_IMPORT_AGE,
    MAX_TOKEN_LIMIT,
    MAX_TOKENS,
    MAX_TTL_SECONDS,
    MAX_USD_LIMIT,
    MIN_TTL_SECONDS,
    CheckRequest,
    CountRequest,
    ExtendRequest,
    PriceSpec,
    Principal,
    TrackRequest,
    UsageQuery,
)

pytestmark = pytest.mark.anyio

MODEL = "gpt-4o"
ESTIMATED = "claude-sonnet-4-5"  # counted by estimate: calibrated from provider usage
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
    # (The December 9999 is refused by the timestamp type itself: tests/test_report_limits.py.)
    too_early, too_late = now - CLOCK_SKEW - timedelta(minutes=1), now + CLOCK_SKEW + timedelta(minutes=1)
    for moment in (too_early, too_late, datetime(9998, 12, 31, tzinfo=UTC)):
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
    for moment in (now - MAX_BACKDATE - margin, now + CLOCK_SKEW + margin, datetime(9998, 12, 1, tzinfo=UTC)):
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


# --- 8. what the ledger can hold ----------------------------------------------------------------------


def test_limits_and_counts_are_bounded_to_what_the_ledger_holds() -> None:
    """Defect 8: a 20-digit token limit and 2^53-token counts are refused naming their field; the bounds
    themselves are accepted."""
    assert (MAX_TOKENS, MAX_TOKEN_LIMIT, MAX_USD_LIMIT) == (10**12, 10**15, 10**12)  # as the README says
    refused = [
        (lambda: budget(limit=Decimal("99999999999999999999")), "limit"),
        (lambda: budget(limit=Decimal(MAX_TOKEN_LIMIT + 1)), "limit"),
        (lambda: budget(unit="usd", limit=Decimal(MAX_USD_LIMIT) + Decimal("0.01")), "limit"),
        (lambda: budget(unit="usd", limit=Decimal(1), hard_limit=Decimal(MAX_USD_LIMIT + 1)), "hard_limit"),
        (lambda: TrackRequest(model=MODEL, input_tokens=2**53, output_tokens=0), "input_tokens"),
        (lambda: TrackRequest(model=MODEL, input_tokens=0, output_tokens=MAX_TOKENS + 1), "output_tokens"),
        (
            lambda: CheckRequest(model=MODEL, input_tokens=0, max_output_tokens=MAX_TOKENS + 1),
            "max_output_tokens",
        ),
    ]
    for make, field in refused:
        with pytest.raises(pydantic.ValidationError) as error:
            make()
        assert error.value.errors()[0]["loc"] == (field,)
    assert budget(limit=Decimal(MAX_TOKEN_LIMIT)).limit == MAX_TOKEN_LIMIT
    assert budget(unit="usd", limit=Decimal(MAX_USD_LIMIT)).limit == MAX_USD_LIMIT
    assert (
        TrackRequest(model=MODEL, input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS).input_tokens
        == MAX_TOKENS
    )


async def test_the_largest_valid_inputs_never_reach_an_internal_error(ledger: Ledger) -> None:
    """Defect 8, the issue's reproductions at the bounds: a $100M budget priced at $1e-12 a token, and
    tracks of MAX_TOKENS in every field (with a rate limit) against the largest token budget. Every check,
    track and report answers; none is an internal error."""
    big = Principal(tenant_id="big")
    await ledger.set_budget(
        budget(limit=Decimal(MAX_TOKEN_LIMIT), hard_limit=Decimal(MAX_TOKEN_LIMIT), tokens_per_minute=2**53),
        big,
    )
    await ledger.set_budget(budget("dollars", unit="usd", limit=Decimal(100_000_000)), big)
    await ledger.set_price(PriceSpec(model=MODEL, input=Decimal("1e-12"), output=Decimal("1e-12")), big)
    largest = CheckRequest(model=MODEL, input_tokens=MAX_TOKENS, max_output_tokens=MAX_TOKENS)
    check = await ledger.check_budget(largest, big)
    assert check.allowed and check.estimated_cost_usd == Decimal(2)
    every_field = {
        "input_tokens": MAX_TOKENS,
        "output_tokens": MAX_TOKENS,
        "cache_read_input_tokens": MAX_TOKENS,
        "cache_creation_input_tokens": MAX_TOKENS,
        "reasoning_output_tokens": MAX_TOKENS,
    }
    await ledger.track_usage(
        TrackRequest(model=MODEL, reservation_id=check.reservation_id, **every_field), big
    )
    for _ in range(4):
        tracked = await ledger.track_usage(TrackRequest(model=MODEL, **every_field), big)
        assert tracked.total_tokens == 4 * MAX_TOKENS
    after = await ledger.check_budget(largest, big)
    assert after.decision in ("allow", "deny")
    for view in ("summary", "usage", "recommendations", "accuracy", "budgets", "forecast", "top"):
        assert (await ledger.report(reports.ReportQuery(view=view), big)).view == view


async def test_token_sums_cannot_overflow_bigint(ledger: Ledger, dsn: str) -> None:
    """Defect 8: what sums token counts across calls is numeric. A rate window that already counted
    about 2.3 million calls of 4 * 10^12 tokens in one minute still takes the next one."""
    columns = await ledger.store._fetch_rows(
        """select table_name || '.' || column_name as name, data_type from information_schema.columns
            where table_name in ('tl_rate_window', 'tl_usage_daily', 'tl_budget_period')
              and (column_name like '%%tokens' or column_name in ('committed', 'overage', 'reserved'))""",
        (),
    )
    assert len(columns) == 10 and {c["data_type"] for c in columns} == {"numeric"}, columns
    await ledger.set_budget(budget(limit=Decimal(MAX_TOKEN_LIMIT), tokens_per_minute=2**53))
    await ledger.track_usage(settle(None, MAX_TOKENS))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update tl_rate_window set tokens = 9223372036854775000")  # bigint's largest is ...807
    tracked = await ledger.track_usage(settle(None, MAX_TOKENS))
    assert tracked.total_tokens == MAX_TOKENS


# --- 8. an internal error carries the id it was logged under --------------------------------------------


def logged_ids(caplog: pytest.LogCaptureFixture) -> dict[str, logging.LogRecord]:
    """The internal errors logged, by id."""
    return {
        str(record.args[0]): record  # type: ignore[index]
        for record in caplog.records
        if record.getMessage().startswith("internal error ")
    }


def break_function(dsn: str, signature: str) -> None:
    """Drop one of the ledger's SQL functions: every call of it is now an unforeseen failure."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop function {signature}")


async def test_an_internal_error_is_logged_under_the_id_the_caller_reads(
    ledger: Ledger, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 8: an unforeseen failure reaches the caller (a Python caller, an MCP agent) as
    `internal error <id>` with nothing of its internals, and the server logged that id with the
    failure and its traceback."""
    held = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=1))
    break_function(dsn, "tl_release(text, uuid, text)")
    with pytest.raises(InternalError) as failed:
        await ledger.release(held.reservation_id or "")
    record = logged_ids(caplog)[failed.value.error_id]
    assert "tl_release" in str(record.exc_info[1]) and record.levelno == logging.ERROR  # type: ignore[index]

    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        result = await client.call_tool("release", {"reservation_id": held.reservation_id})
    text = "".join(block.text for block in result.content if isinstance(block, TextContent))
    assert result.is_error and "internal error " in text and "tl_release" not in text
    error_id = text.split("internal error ", 1)[1].split(":", 1)[0]
    assert error_id in logged_ids(caplog) and error_id != failed.value.error_id


def test_the_cli_shows_the_id_of_an_internal_error(
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 8: the CLI prints the id an unforeseen failure was logged under: one in the database, and
    a bug in Python (the traceback goes to the log, not the message)."""
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    break_function(dsn, "tl_budget_state(tl_budget, timestamptz)")
    assert main(["budget", "list"]) == 1
    err = capsys.readouterr().err
    error_id = err.split("internal error ", 1)[1].split(":", 1)[0]
    assert error_id in logged_ids(caplog) and "tl_budget_state" not in err

    async def a_bug(*args: object) -> None:
        raise RuntimeError("a bug's own words")

    monkeypatch.setattr(Ledger, "list_budgets", a_bug)
    assert main(["budget", "list"]) == 1
    err = capsys.readouterr().err
    error_id = err.split("internal error ", 1)[1].split(":", 1)[0]
    record = logged_ids(caplog)[error_id]
    assert "a bug's own words" not in err and isinstance(record.exc_info[1], RuntimeError)  # type: ignore[index]


async def test_http_answers_500_with_the_id_of_an_internal_error(
    dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 8, over HTTP: the dashboard, and any route that crashes on a bug (here /healthz), answer
    500 with the id the failure was logged under, and nothing else of it."""
    async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
        viewer, _ = await served.ledger.create_key(role="viewer")
        break_function(dsn, "tl_budget_state(tl_budget, timestamptz)")
        page = await http.get(f"{served.base}/dashboard", headers={"Cookie": f"{DASHBOARD_COOKIE}={viewer}"})

        async def a_bug() -> None:
            raise RuntimeError("a bug's own words")

        monkeypatch.setattr(served.ledger, "ping", a_bug)
        health = await http.get(f"{served.base}/healthz")
    assert page.status_code == 500 and "tl_budget_state" not in page.text
    assert page.text.split("internal error ", 1)[1].split(":", 1)[0] in logged_ids(caplog)
    assert health.status_code == 500 and "a bug" not in health.text
    assert health.json()["error"].split("internal error ", 1)[1].split(":", 1)[0] in logged_ids(caplog)


# --- 10. calibration: one user, one vote ---------------------------------------------------------------


TEXT = "Summarise the quarterly report in three bullet points. " * 20


async def settled_calls(
    ledger: Ledger, principal: Principal, calls: int, reported: Callable[[int], int]
) -> None:
    """`calls` checks of TEXT by `principal`, each settled with `reported(estimated input)`."""
    for _ in range(calls):
        check = await ledger.check_budget(CheckRequest(model=ESTIMATED, text=TEXT), principal)
        request = TrackRequest(
            model=ESTIMATED,
            reservation_id=check.reservation_id,
            input_tokens=reported(check.input_tokens),
            output_tokens=1,
        )
        await ledger.track_usage(request, principal)


async def factor_for(ledger: Ledger, principal: Principal) -> float | None:
    """The calibration a fresh process gives `principal`'s next estimate (no cached ratios)."""
    check = await Ledger(ledger.store).check_budget(
        CheckRequest(model=ESTIMATED, text=TEXT, reserve=False), principal
    )
    return check.calibration_factor


async def test_one_users_reports_do_not_lower_anothers_estimates(ledger: Ledger) -> None:
    """Defect 10, the issue's scenario: ana's provider reports twice our estimate; bob then settles six
    calls reporting input_tokens=1. Ana's factor stays hers; bob's own estimates take his; a third user
    gets none (two users are too few to speak for a tenant)."""
    await settled_calls(ledger, ANA, 5, lambda raw: 2 * raw)
    assert await factor_for(ledger, ANA) == 2.0
    await settled_calls(ledger, BOB, 6, lambda raw: 1)
    assert await factor_for(ledger, ANA) == 2.0
    assert await factor_for(ledger, BOB) == 0.5  # his own ratio, held at the lower bound
    assert await factor_for(ledger, Principal(role="member", user="cy")) is None


async def test_calibration_applies_when_three_users_agree(ledger: Ledger) -> None:
    """Defect 10: a user without calls of its own gets the median of the users' ratios once three or more
    users have them; one dissenting user cannot pull it down."""
    agreeing = [Principal(role="member", user=name) for name in ("ana", "dan", "eve")]
    for principal in agreeing:
        await settled_calls(ledger, principal, 5, lambda raw: math.ceil(raw * 1.5))
    await settled_calls(ledger, BOB, 6, lambda raw: 1)
    newcomer = Principal(role="member", user="cy")
    factor = await factor_for(ledger, newcomer)
    assert factor is not None and 1.49 <= factor <= 1.51
    raw = (await ledger.count_tokens(CountRequest(model=ESTIMATED, text=TEXT))).tokens
    calibrated = await Ledger(ledger.store).check_budget(CheckRequest(model=ESTIMATED, text=TEXT), newcomer)
    assert calibrated.input_tokens == math.ceil(raw * factor)
