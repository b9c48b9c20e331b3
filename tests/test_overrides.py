"""Override requests: a member asks for a temporary increase of a budget, an admin approves or denies it, and
an approved override raises the budget's cap for its window and falls back by itself when it expires (no
job runs), on real PostgreSQL and a real clock. Zero overspend holds with the raised cap: OS processes
racing for it are granted exactly limit + override, and after expiry, with reservations taken under it
still open, the period row's CHECK holds, their settles record within what they held, and new grants stop
until the budget is back under its limit. A member can never approve, on any surface (library, MCP, CLI,
dashboard); admins hear of each request once per sink (a real SMTP server and webhook receivers on
loopback); every step is audited; the README's commands run as pasted."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import shlex
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from aiosmtpd.controller import Controller
from mcp import Client
from psycopg.rows import dict_row
from pydantic import ValidationError

from tests.servers import free_port, serving
from tests.test_alerts import Receiver
from tests.test_concurrency import PROCESSES, Sampler, assert_overlapped, run_workers
from tests.test_dashboard import read
from tests.test_mcp_tools import Session
from tokenledger.alerts import EmailSink, LogSink, SlackSink, WebhookSink
from tokenledger.cli import main
from tokenledger.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.mcp.http import DASHBOARD_COOKIE, dashboard_form_token
from tokenledger.override_notices import OverrideNoticeDispatcher
from tokenledger.store import Store
from tokenledger.types import (
    MAX_PENDING_OVERRIDES,
    BudgetChange,
    BudgetSpec,
    CheckRequest,
    OverrideRequest,
    Principal,
    TrackRequest,
)

pytestmark = pytest.mark.anyio

ADMIN = Principal()
ANA = Principal(role="member", user="ana")
BO = Principal(role="member", user="bo")
README = Path(__file__).resolve().parent.parent / "README.md"


def ask(budget: str, amount: int | str, until: Any = "2h", reason: str = "launch week") -> OverrideRequest:
    return OverrideRequest(budget=budget, amount=Decimal(amount), until=until, reason=reason)


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def sleep_past(moment: datetime) -> None:
    await anyio.sleep(max((moment - datetime.now(UTC)).total_seconds(), 0) + 0.05)


async def period_rows(ledger: Ledger) -> list[dict[str, Any]]:
    async with ledger.store.pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "select committed, overage, reserved, cap, override_amount from tl_budget_period"
        )
        return await cursor.fetchall()


async def audit(ledger: Ledger) -> list[tuple[str, str, str]]:
    """(action, actor, object_id) of the override steps, oldest first."""
    rows = await ledger.store.audit_log(tenant="default")
    return [
        (r["action"], r["actor"], r["object_id"]) for r in reversed(rows) if r["object_kind"] == "override"
    ]


def check(tokens: int, user: str = "ana") -> CheckRequest:
    return CheckRequest(model="gpt-4o-mini", input_tokens=tokens, user=user)


# --- the window: raised from approval, back by itself at expiry ------------------------------------


@pytest.mark.parametrize("period", ["day", "24h"])  # a calendar period row, and a rolling window
async def test_an_approved_override_raises_the_cap_until_it_expires(ledger: Ledger, period: str) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000), period=period, priority_shares=None))
    denied = await ledger.check_budget(check(1200), ANA)
    assert denied.decision == "deny" and denied.blocked_by and denied.blocked_by.reason == "limit"
    assert denied.override_hint == "budget_override action=request budget=team"
    assert "budget team: an override may be requested (override_hint)" in denied.warnings

    asked = await ledger.request_override(ask("team", 500, until=soon(4)), ANA)
    assert (asked.status, asked.user, asked.decided_at) == ("pending", "ana", None)
    assert (await ledger.check_budget(check(1200), ANA)).decision == "deny"  # pending raises nothing
    approved = await ledger.approve_override(asked.override_id, reason="ok for the launch")
    assert approved.status == "approved" and approved.decided_by == "local:admin"
    assert approved.decision_reason == "ok for the launch"

    granted = await ledger.check_budget(check(1200), ANA)
    assert granted.decision == "allow" and granted.override_hint is None
    [state] = granted.budgets
    assert (state.limit, state.override, state.reserved) == (Decimal(1500), Decimal(500), Decimal(1200))
    assert (await ledger.check_budget(check(301), ANA)).decision == "deny"  # limit + override, not more
    state = (await ledger.get_budget("team")).state  # read without a lock, as reports and dry runs do
    assert (state.limit, state.override, state.remaining) == (Decimal(1500), Decimal(500), Decimal(300))
    dry = await ledger.check_budget(check(300).model_copy(update={"reserve": False}), ANA)
    assert dry.decision == "allow"
    assert (await ledger.override_status(asked.override_id, ANA)).status == "approved"

    await sleep_past(asked.until)  # nothing runs at expiry: the next reads and checks judge by the clock
    assert (await ledger.override_status(asked.override_id, ANA)).status == "expired"
    state = (await ledger.get_budget("team")).state
    assert (state.limit, state.override, state.remaining) == (Decimal(1000), Decimal(0), Decimal(0))
    assert (await ledger.check_budget(check(1), ANA)).decision == "deny"  # 1,200 still held
    await ledger.release(str(granted.reservation_id))
    assert (await ledger.check_budget(check(1000), ANA)).decision == "allow"
    assert (await ledger.check_budget(check(1), ANA)).decision == "deny"
    assert await audit(ledger) == [("request", "local:member", "1"), ("approve", "local:admin", "1")]


async def test_expiry_with_open_reservations_keeps_the_check_and_settles_within_what_they_held(
    ledger: Ledger,
) -> None:
    await ledger.set_budget(
        BudgetSpec(
            name="hard", limit=Decimal(100), hard_limit=Decimal(120), period="total", priority_shares=None
        )
    )
    asked = await ledger.request_override(ask("hard", 100, until=soon(3)), ANA)
    await ledger.approve_override(asked.override_id)
    first, second = [await ledger.check_budget(check(100), ANA) for _ in range(2)]  # 200: within 120 + 100
    assert first.allowed and second.allowed and (await period_rows(ledger))[0]["cap"] == 220

    await sleep_past(asked.until)
    refused = await ledger.check_budget(check(1), ANA)
    assert refused.decision == "deny"
    assert refused.override_hint == "budget_override action=request budget=hard"
    [row] = await period_rows(ledger)
    # The cap came down as far as what is held, no further: the CHECK holds, no room for anyone else.
    assert (row["cap"], row["reserved"], row["override_amount"]) == (200, 200, 0)

    # A settle spends what its own hold frees, though the other hold keeps the budget above 120.
    settled = await ledger.track_usage(
        TrackRequest(
            model="gpt-4o-mini", reservation_id=first.reservation_id, input_tokens=100, output_tokens=0
        )
    )
    assert not any("overage" in warning for warning in settled.warnings), settled.warnings
    [row] = await period_rows(ledger)
    assert (row["committed"], row["overage"], row["reserved"]) == (100, 0, 100)
    assert (await ledger.check_budget(check(1), ANA)).decision == "deny"
    await ledger.release(str(second.reservation_id))  # its call was not made
    assert (await ledger.check_budget(check(21), ANA)).decision == "deny"  # back to the hard limit, 120
    assert (await ledger.check_budget(check(20), ANA)).decision == "allow"
    [row] = await period_rows(ledger)
    assert (row["committed"] + row["reserved"], row["cap"]) == (120, 120)


async def test_a_budget_changed_meanwhile_keeps_the_override_and_its_spend(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000), period="day", priority_shares=None))
    asked = await ledger.request_override(ask("team", 500), ANA)
    await ledger.approve_override(asked.override_id)
    await ledger.track_usage(
        TrackRequest(model="gpt-4o-mini", input_tokens=1400, output_tokens=0, user="ana")
    )
    changed = await ledger.set_budget(BudgetChange(name="team", limit=Decimal(1100)))
    assert (changed.state.limit, changed.state.used, changed.state.overage) == (1600, 1400, 0)
    assert (await ledger.check_budget(check(200), ANA)).decision == "allow"
    assert (await ledger.check_budget(check(1), ANA)).decision == "deny"


async def test_a_limit_lowered_below_open_reservations_binds_once_they_end(ledger: Ledger) -> None:
    """The same fit that brings an expired override's cap down: before it, a cap raised to cover open
    reservations when the limit was lowered stayed there after they ended, and let checks past the limit."""
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000), period="day", priority_shares=None))
    held = await ledger.check_budget(check(800), ANA)
    await ledger.set_budget(BudgetChange(name="team", limit=Decimal(100)))
    await ledger.release(str(held.reservation_id))
    assert (await ledger.check_budget(check(101), ANA)).decision == "deny"
    assert (await ledger.check_budget(check(100), ANA)).decision == "allow"


async def test_an_expired_request_can_no_longer_be_approved(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000)))
    asked = await ledger.request_override(ask("team", 10, until=soon(1)), ANA)
    await sleep_past(asked.until)
    assert (await ledger.override_status(asked.override_id, ANA)).status == "expired"
    with pytest.raises(Conflict, match=r"override_id 1: expired at .*; only a pending request"):
        await ledger.approve_override(asked.override_id)
    assert [o.status for o in await ledger.list_overrides(status="expired")] == ["expired"]
    assert await ledger.list_overrides(status="pending") == []


async def test_every_period_in_the_window_is_raised_and_none_carries_it_over(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 45:  # keep the usage and the check in one hour
        await anyio.sleep(20)
    await ledger.set_budget(
        BudgetSpec(name="hourly", limit=Decimal(1000), period="hour", rollover="carry", priority_shares=None)
    )
    asked = await ledger.request_override(ask("hourly", 500, until="2h"), ANA)
    await ledger.approve_override(asked.override_id)
    await ledger.track_usage(TrackRequest(model="gpt-4o-mini", input_tokens=400, output_tokens=0, user="ana"))
    assert (await ledger.check_budget(check(1100), ANA)).allowed  # this hour: 1,000 + 500
    # The rules asked about later hours (no clock is faked): the next hour is raised too, the one after
    # the window is not; and the next hour carries over what this hour left of its own limit only.
    async with ledger.store.pool.connection() as conn:
        cursor = await conn.execute(
            """select (tl_budget_state(b, now() + interval '1 hour') ->> 'override')::numeric,
                      (tl_budget_state(b, now() + interval '3 hours') ->> 'override')::numeric
                 from tl_budget b"""
        )
        assert await cursor.fetchone() == (500, 0)
        async with conn.transaction(force_rollback=True):
            cursor = await conn.execute(
                "select (tl_lock_period(b, now() + interval '1 hour')).carried from tl_budget b"
            )
            assert await cursor.fetchone() == (600,)  # 1,000 - 400 used; nothing of the 500


async def test_an_override_needs_its_budget_and_its_unit(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000)))
    asked = await ledger.request_override(ask("team", 500), ANA)
    await ledger.approve_override(asked.override_id)
    assert (await ledger.get_budget("team")).state.override == 500
    await ledger.set_budget(BudgetChange(name="team", unit="usd", limit=Decimal(10)), reset_counters=True)
    assert (await ledger.get_budget("team")).state.limit == 10  # 500 tokens mean nothing in USD
    await ledger.delete_budget("team")
    assert await ledger.list_overrides() == []


async def test_a_running_server_tells_the_admins(
    dsn: str, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_serve import serve
    from tests.test_serve_background import wait_for_a_body

    hook = Receiver()
    monkeypatch.setenv("TOKENLEDGER_ALERT_WEBHOOK", hook.url)
    monkeypatch.setenv("TOKENLEDGER_ALERT_POLL_SECONDS", "0.5")
    monkeypatch.setenv("TOKENLEDGER_PUBLIC_URL", "https://ledger.example.test")
    try:
        with serve(dsn, tmp_path / "home"):
            await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000)))
            await ledger.request_override(ask("team", 500), ANA)
            await anyio.to_thread.run_sync(wait_for_a_body, hook, 60.0)
        [body] = hook.bodies
        assert (body["kind"], body["override_id"], body["user"]) == ("override_request", 1, "ana")
        assert body["dashboard"] == "https://ledger.example.test/dashboard#overrides"
    finally:
        hook.close()


# --- what may be asked, and by whom --------------------------------------------------------------


async def test_bad_requests_name_the_field_and_write_nothing(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000)))
    await ledger.set_budget(BudgetSpec(name="dollars", unit="usd", limit=Decimal("5.00")))
    await ledger.set_budget(BudgetSpec(name="bo-own", scope="user:bo", limit=Decimal(10)))
    refused: list[tuple[OverrideRequest, Principal, type[Exception], str]] = [
        (ask("team", 10_001), ANA, InvalidInput,
         "amount: '10001' is not allowed; whole tokens above 0, at most 10000 (10 times the limit"),
        (ask("team", "1.5"), ANA, InvalidInput, "amount"),
        (ask("dollars", "50.01"), ANA, InvalidInput,
         "amount: '50.01' is not allowed; USD above 0, at most 50"),
        (ask("team", 10, until="2020-01-01T00:00:00+00:00"), ANA, InvalidInput, "until: '2020-01-01"),
        (ask("team", 10, until="32d"), ANA, InvalidInput, "at most 31 days ahead"),
        (ask("nope", 10), ANA, NotFound, "no such budget"),
        (ask("bo-own", 10), ANA, NotFound, "no such budget"),  # another user's budget looks absent
        (ask("team", 10), Principal(role="viewer"), PermissionDenied,
         "role 'viewer' cannot request overrides"),
    ]  # fmt: skip
    for request, principal, error, message in refused:
        with pytest.raises(error) as raised:
            await ledger.request_override(request, principal)
        assert message in str(raised.value), (request, str(raised.value))
    for fields in (
        {"amount": "0"},
        {"amount": "-1"},
        {"reason": ""},
        {"reason": "x" * 501},
        {"reason": "bad\x00"},
        {"until": "2030-01-01T00:00:00"},  # no offset
        {"until": "tomorrow"},
        {"budget": "has space"},
    ):
        with pytest.raises(ValidationError, match=next(iter(fields))):
            OverrideRequest.model_validate(
                {"budget": "team", "amount": "1", "reason": "r", "until": "1h"} | fields
            )
    # The database checks the bounds again, against its own clock, whatever the caller checked.
    with pytest.raises(InvalidInput, match=r"^amount 10001: not allowed"):
        await ledger.store.request_override(
            tenant="default", actor="x", member_user=None, budget="team", amount=Decimal(10_001), reason="r",
            until=soon(60), max_factor=10, max_ahead=timedelta(days=31), max_pending=20,
        )  # fmt: skip
    assert await ledger.list_overrides() == [] and await audit(ledger) == []

    # The bounds themselves are allowed.
    accepted = [
        await ledger.request_override(ask("team", 10_000, until="30d", reason="r" * 500), ANA),
        await ledger.request_override(ask("dollars", "50", until=soon(31 * 86_400 - 60)), ANA),
        await ledger.request_override(ask("bo-own", 100), BO),
    ]
    assert [o.amount for o in accepted] == [10_000, 50, 100]
    assert [o.unit for o in accepted] == ["tokens", "usd", "tokens"]


async def test_a_member_never_approves_and_sees_only_its_own_requests(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="shared", scope="team:search", limit=Decimal(1000)))
    await ledger.set_budget(BudgetSpec(name="bo-own", scope="user:bo", limit=Decimal(1000)))
    ana_1 = await ledger.request_override(ask("shared", 100), ANA)
    bo_1 = await ledger.request_override(ask("bo-own", 200), BO)
    bo_2 = await ledger.request_override(ask("shared", 300), BO)

    for principal in (ANA, BO):
        with pytest.raises(PermissionDenied, match="role 'member' cannot approve override requests"):
            await ledger.approve_override(ana_1.override_id, principal)
        with pytest.raises(PermissionDenied, match="role 'member' cannot deny override requests"):
            await ledger.deny_override(bo_1.override_id, "no", principal)
    assert [o.override_id for o in await ledger.list_overrides(ANA)] == [ana_1.override_id]
    assert [o.override_id for o in await ledger.list_overrides(BO)] == [bo_2.override_id, bo_1.override_id]
    assert len(await ledger.list_overrides(status="pending")) == 3
    with pytest.raises(NotFound):
        await ledger.override_status(bo_1.override_id, ANA)
    with pytest.raises(NotFound):
        await ledger.cancel_override(bo_1.override_id, ANA)
    with pytest.raises(PermissionDenied):
        await ledger.list_overrides(Principal(role="viewer"))

    assert (await ledger.cancel_override(ana_1.override_id, ANA)).status == "cancelled"
    with pytest.raises(Conflict, match="already cancelled"):
        await ledger.cancel_override(ana_1.override_id, ANA)
    with pytest.raises(Conflict, match="already cancelled"):
        await ledger.approve_override(ana_1.override_id)
    with pytest.raises(InvalidInput, match="reason"):
        await ledger.deny_override(bo_2.override_id, "")
    denied = await ledger.deny_override(bo_2.override_id, "use the batch API")
    assert (denied.status, denied.decision_reason) == ("denied", "use the batch API")
    assert (await ledger.override_status(bo_2.override_id, BO)).decision_reason == "use the batch API"
    assert (await ledger.approve_override(bo_1.override_id)).status == "approved"
    with pytest.raises(Conflict, match="already approved"):
        await ledger.deny_override(bo_1.override_id, "too late")
    assert await audit(ledger) == [
        ("request", "local:member", "1"),
        ("request", "local:member", "2"),
        ("request", "local:member", "3"),
        ("cancel", "local:member", "1"),
        ("deny", "local:admin", "3"),
        ("approve", "local:admin", "2"),
    ]


async def test_pending_requests_are_bounded_per_requester(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000)))
    for _ in range(MAX_PENDING_OVERRIDES):
        await ledger.request_override(ask("team", 1), ANA)
    with pytest.raises(Conflict, match=f"{MAX_PENDING_OVERRIDES} override requests of yours are pending"):
        await ledger.request_override(ask("team", 1), ANA)
    await ledger.request_override(ask("team", 1), BO)  # another requester is not held back
    await ledger.deny_override(1, "one at a time")
    await ledger.request_override(ask("team", 1), ANA)


# --- admins are told, once per request and sink ----------------------------------------------------


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd) keeping what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mailbox.received.append(envelope.content)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
        self.url = f"smtp://127.0.0.1:{self.controller.port}?from=ledger@example.test&to=admins@example.test"

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(m, policy=email.policy.default) for m in self.received]  # type: ignore[misc]


@pytest.fixture
def sinks() -> Iterator[tuple[Mailbox, Receiver, Receiver]]:
    mailbox, hook, slack = Mailbox(), Receiver(), Receiver()
    mailbox.controller.start()
    yield mailbox, hook, slack
    mailbox.controller.stop()
    hook.close()
    slack.close()


@pytest.fixture
async def other_ledgers(dsn: str) -> AsyncIterator[list[Ledger]]:
    """Two more ledgers over their own pools on the same database: dispatchers of separate servers."""
    stores = [await Store.open(dsn, migrate=False, max_size=4) for _ in range(2)]
    yield [Ledger(store) for store in stores]
    for store in stores:
        await store.close()


async def test_admins_hear_of_each_request_once_through_every_sink(
    ledger: Ledger, other_ledgers: list[Ledger], sinks: tuple[Mailbox, Receiver, Receiver]
) -> None:
    mailbox, hook, slack = sinks
    await ledger.set_budget(BudgetSpec(name="team", scope="team:search", limit=Decimal(1000)))
    reason = "<b>reindex</b> & <!channel>"
    asked = await ledger.request_override(ask("team", 500, until="6h", reason=reason), ANA)
    withdrawn = await ledger.request_override(ask("team", 5), ANA)
    await ledger.cancel_override(withdrawn.override_id, ANA)  # decided before any notice: never sent

    configured = [EmailSink.from_url(mailbox.url), WebhookSink(hook.url), SlackSink(slack.url), LogSink()]
    dispatchers = [
        OverrideNoticeDispatcher(other, configured, dashboard_url="https://ledger.example.test/")
        for other in other_ledgers
    ]
    delivered = 0
    for _ in range(3):
        delivered += sum(await asyncio.gather(*(d.run_once() for d in dispatchers)))
    assert delivered == 4  # one request, four sinks, once each

    [body] = hook.bodies
    assert body["id"] == "default:override:1" and body["kind"] == "override_request"
    assert (body["budget"], body["amount"], body["unit"], body["user"]) == ("team", "500", "tokens", "ana")
    assert body["reason"] == reason and body["until"] == asked.until.isoformat()
    assert body["approve"] == "tokenledger override approve 1"
    assert body["deny"] == "tokenledger override deny 1 --reason '...'"
    assert body["dashboard"] == "https://ledger.example.test/dashboard#overrides"
    [posted] = slack.bodies
    assert "&lt;!channel&gt;" in json.dumps(posted) and "<!channel>" not in json.dumps(posted)
    [message] = mailbox.messages()
    assert message["Subject"].startswith("[tokenledger] override request #1: 500 tokens more on budget team")
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f"Reason: {reason}" in text and "tokenledger override approve 1" in text
    assert "https://ledger.example.test/dashboard#overrides" in text
    assert "&lt;b&gt;reindex&lt;/b&gt; &amp; &lt;!channel&gt;" in html and "<b>reindex" not in html
    assert sum(await asyncio.gather(*(d.run_once() for d in dispatchers))) == 0
    rows = await ledger.store._fetch_rows("select override_id, notified_at from tl_override order by 1", ())
    assert rows[0]["notified_at"] is not None and rows[1]["notified_at"] is None


# --- MCP, CLI and dashboard ------------------------------------------------------------------------


async def test_the_budget_override_tool_for_a_member_and_an_admin(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="team", limit=Decimal(1000), priority_shares=None))
    async with Client(build_server(ledger, default_principal=ANA)) as client:
        member = await Session(client).load()
        denied = await member.ok("check_budget", model="gpt-4o-mini", input_tokens=2000)
        assert denied["override_hint"] == "budget_override action=request budget=team"
        asked = await member.ok(
            "budget_override", action="request", budget="team", amount="500", until="2h", reason="launch"
        )
        [shown] = asked["overrides"]
        assert (shown["status"], shown["amount"], shown["user"]) == ("pending", "500", "ana")
        assert (await member.ok("lookup", what="overrides", id=1))["overrides"][0]["budget"] == "team"
        for action in ("approve", "deny"):
            refused = await member.refused("budget_override", action=action, id=1, reason="mine")
            assert f"role 'member' cannot {action} override requests" in refused
        assert "amount" in await member.refused(
            "budget_override", action="request", budget="team", amount="10001", until="2h", reason="x"
        )
        assert "reason" in await member.refused("budget_override", action="request", budget="team", amount=1)
        assert "id" in await member.refused("budget_override", action="cancel")
        second = await member.ok(
            "budget_override", action="request", budget="team", amount=5, until="1h", reason="spare"
        )
        cancelled = await member.ok(
            "budget_override", action="cancel", id=second["overrides"][0]["override_id"]
        )
        assert cancelled["overrides"][0]["status"] == "cancelled"
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        admin = await Session(client).load()
        pending = await admin.ok("lookup", what="overrides", status="pending")
        assert [o["override_id"] for o in pending["overrides"]] == [1]
        assert "reason" in await admin.refused("budget_override", action="deny", id=1)
        approved = await admin.ok("budget_override", action="approve", id=1)
        assert approved["overrides"][0]["status"] == "approved"
        listed = await client.list_tools()
        [tool] = [t for t in listed.tools if t.name == "budget_override"]
        assert tool.annotations is not None
        # A write (MCP's default readOnlyHint: false) that destroys nothing.
        assert (tool.annotations.read_only_hint, tool.annotations.destructive_hint) == (None, False)
    assert (await ledger.check_budget(check(1500), ANA)).decision == "allow"


def readme_commands() -> list[str]:
    """The command lines of the README's "Override requests" section, as a user would paste them."""
    text = README.read_text()
    section = text[text.index("## Override requests") :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def run_pasted(line: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run one pasted command line: `VAR=value ... tokenledger ARGS`, in this process."""
    words = shlex.split(line)
    with monkeypatch.context() as scoped:
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            scoped.setenv(name, value)
        assert words[0] == "tokenledger", line
        return main(words[1:])


def test_the_readme_commands_run_as_pasted_and_a_member_cannot_approve(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    for name in ("TOKENLEDGER_ROLE", "TOKENLEDGER_USER", "TOKENLEDGER_TENANT"):
        monkeypatch.delenv(name, raising=False)
    lines = readme_commands()
    assert len(lines) >= 6
    for line in lines:
        assert run_pasted(line, monkeypatch) == 0, (line, capsys.readouterr())
    out = capsys.readouterr().out
    assert "requested override #1: 50000 tokens more on budget team-search until" in out
    assert "approved override #1" in out and "denied override #2" in out
    member = "TOKENLEDGER_ROLE=member TOKENLEDGER_USER=ana tokenledger"
    assert run_pasted(f"{member} override approve 2", monkeypatch) == 1
    assert "role 'member' cannot approve override requests" in capsys.readouterr().err
    assert run_pasted(f"{member} override list --json", monkeypatch) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(o["override_id"], o["status"]) for o in listed] == [(2, "denied"), (1, "approved")]
    assert listed[0]["decision_reason"] == "use the batch API"
    assert run_pasted("tokenledger override approve 1", monkeypatch) == 1
    assert "already approved" in capsys.readouterr().err
    assert (
        run_pasted("tokenledger override request team-search --amount 1 --until 40d --reason x", monkeypatch)
        == 1
    )
    assert "until" in capsys.readouterr().err


async def test_an_admin_decides_on_the_dashboard_with_the_form_token(dsn: str) -> None:
    with anyio.fail_after(120):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            ledger = served.ledger
            await ledger.set_budget(BudgetSpec(name="team", scope="team:search", limit=Decimal(1000)))
            admin_key, admin_record = await ledger.create_key(role="admin")
            ana_key, _ = await ledger.create_key(role="member", user="ana")
            for amount in (100, 200, 300):
                await ledger.request_override(ask("team", amount), ANA)
            url, post = f"{served.base}/dashboard", f"{served.base}/dashboard/overrides"
            as_admin = {"Cookie": f"{DASHBOARD_COOKIE}={admin_key}"}
            as_ana = {"Cookie": f"{DASHBOARD_COOKIE}={ana_key}"}

            page = await http.get(url, headers=as_admin)
            rows = read(page.text).having("override")
            assert {(e.attrs["data-override"], e.attrs["data-override-status"]) for e in rows} == {
                ("1", "pending"), ("2", "pending"), ("3", "pending")
            }  # fmt: skip
            token = dashboard_form_token(admin_key)
            assert page.text.count(f'name="csrf" value="{token}"') == 3

            form = {"id": "1", "action": "approve", "csrf": token}
            for refused, headers in (
                ({**form, "csrf": ""}, as_admin),
                ({**form, "csrf": dashboard_form_token("tl_another_key")}, as_admin),
                (form, {}),
            ):
                answer = await http.post(post, data=refused, headers=headers)
                assert answer.status_code in (401, 403), answer.text
            foreign = await http.post(post, data=form, headers={**as_admin, "Origin": "https://evil.example"})
            assert foreign.status_code == 403
            # A member with its own valid form token still cannot decide.
            member_form = {**form, "csrf": dashboard_form_token(ana_key)}
            answer = await http.post(post, data=member_form, headers=as_ana)
            assert answer.status_code == 403 and "role &#x27;member&#x27; cannot approve" in answer.text
            assert (await ledger.override_status(1)).status == "pending"

            done = await http.post(post, data={**form, "reason": "launch"}, headers=as_admin)
            assert done.status_code == 303 and done.headers["location"] == "/dashboard#overrides"
            approved = await ledger.override_status(1)
            assert (approved.status, approved.decided_by) == ("approved", admin_record["key_id"])
            again = await http.post(post, data=form, headers=as_admin)
            assert again.status_code == 409 and "already approved" in again.text
            deny = {"id": "2", "action": "deny", "csrf": token}
            assert (await http.post(post, data=deny, headers=as_admin)).status_code == 400  # no reason
            assert (await http.post(post, data={**deny, "reason": "no"}, headers=as_admin)).status_code == 303
            assert (await ledger.override_status(2)).status == "denied"

            mine = await http.get(url, headers=as_ana)
            assert len(read(mine.text).having("override")) == 3 and 'name="csrf"' not in mine.text
            assert "of it by override" in mine.text  # the budget's limit shows the approved override


# --- zero overspend with the raised cap, across processes and through expiry -----------------------


# The override's window in the race: long enough for 240 checks from 4 processes on a busy 2-core machine
# (they took 1 to 4 s), short enough to wait out.
RACE_WINDOW_SECONDS = 8


@pytest.mark.slow
async def test_racing_processes_get_exactly_limit_plus_override_and_nothing_after_expiry(
    ledger: Ledger, dsn: str, tmp_path: Path
) -> None:
    await ledger.set_budget(BudgetSpec(name="hot", limit=Decimal(1000), period="total", priority_shares=None))
    # 4 x 60 checks of 10 tokens race for 150 grants: enough to oversubscribe, few enough to race quickly.
    plan = [{"model": "gpt-4o-mini", "input_tokens": 10, "max_output_tokens": 0, "user": "ana"}] * 60
    window: list[datetime] = []

    async def ask_and_approve() -> None:  # once every worker is ready to race
        asked = await ledger.request_override(ask("hot", 500, until=soon(RACE_WINDOW_SECONDS)), ANA)
        window.append((await ledger.approve_override(asked.override_id)).until)

    answers, sampler = await run_workers(
        dsn, "reserve", [plan] * PROCESSES, tmp_path / "raised", before_go=ask_and_approve
    )

    ended = max(a["ended"] for per in answers for a in per)
    assert ended < window[0].timestamp(), (
        "the race outlasted the override's window: raise RACE_WINDOW_SECONDS"
    )
    granted = [a for per in answers for a in per if a["allowed"]]
    assert len(granted) == 150  # (1,000 + 500) / 10: not one more, not one less
    assert_overlapped(answers)
    assert sampler.samples and not sampler.over_cap() and max(sampler.totals()) == 1500
    [row] = await period_rows(ledger)
    assert (row["committed"], row["reserved"], row["cap"], row["override_amount"]) == (0, 1500, 1500, 500)

    # The override expires with all 150 reservations open: racing checks get nothing more.
    await sleep_past(window[0])
    assert (await ledger.override_status(1)).status == "expired"
    results, sampler = await race(dsn, [check(10) for _ in range(200)])
    assert not [r for r in results if r.allowed] and not sampler.over_cap()
    [row] = await period_rows(ledger)
    assert (row["committed"], row["reserved"], row["cap"], row["override_amount"]) == (0, 1500, 1500, 0)

    # Settle every grant with 6 of its 10 tokens, concurrently: each records within what it held.
    settles = [
        TrackRequest(model="gpt-4o-mini", reservation_id=a["reservation_id"], input_tokens=6, output_tokens=0)
        for a in granted
    ]
    settled, sampler = await race(dsn, settles)
    assert sum(t.total_tokens for t in settled) == 900 and not sampler.over_cap()
    assert not [w for t in settled for w in t.warnings if "overage" in w]
    [row] = await period_rows(ledger)
    assert (row["committed"], row["overage"], row["reserved"]) == (900, 0, 0)

    # Back under the limit: the base limit, not the override, bounds what racing checks get now.
    results, sampler = await race(dsn, [check(10) for _ in range(200)])
    assert len([r for r in results if r.allowed]) == 10  # (1,000 - 900) / 10
    assert not sampler.over_cap() and max(sampler.totals()) == 1000
    [row] = await period_rows(ledger)
    assert (row["committed"], row["reserved"], row["cap"]) == (900, 100, 1000)


async def race(dsn: str, calls: list[Any]) -> tuple[list[Any], Sampler]:
    """Every check (CheckRequest) or settle (TrackRequest) at once from tasks over a pool of its own, while
    a sampler reads the period rows; the answers in order."""
    store = await Store.open(dsn, migrate=False, max_size=8)
    racer, sampler = Ledger(store), Sampler(dsn)
    answers: list[Any] = [None] * len(calls)

    async def one(n: int) -> None:
        call = calls[n]
        if isinstance(call, CheckRequest):
            answers[n] = await racer.check_budget(call, ANA)
        else:
            answers[n] = await racer.track_usage(call, ANA)

    try:
        async with anyio.create_task_group() as sampling:
            sampling.start_soon(sampler.run)
            async with anyio.create_task_group() as tasks:
                for n in range(len(calls)):
                    tasks.start_soon(one, n)
            sampler.running = False
    finally:
        await store.close()
    assert sampler.samples, "the sampler never read the budget"
    return answers, sampler
