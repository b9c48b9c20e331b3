"""A member never reads anything attributable to another user (DESIGN §2), on any read path.

Two members of one tenant (ana, bob) and an admin act through the real MCP client (in-memory, one server
per principal over one ledger): every tool that answers with budgets or usage, both budget resources,
the `cost_review` prompt, every report view in json, markdown and csv, the dashboard and the CLI. Bob
must see the shared budgets (as aggregate state) and his own, and never ana's budget, her figures, her
reservation, her denial or her alert; the admin sees all of them, which proves they are there to leak.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent

from tests.test_mcp_tools import Session
from tokenledger import dashboard
from tokenledger.cli import main
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.settings import Settings
from tokenledger.types import BudgetSpec, CheckRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ADMIN = Principal()
ANA = Principal(role="member", user="ana")
BOB = Principal(role="member", user="bob")
MODEL = "gpt-4o"
SHARED = {"everyone", "team-search", "project-x", "feature-f"}
BOBS = SHARED | {"bob-day"}
ATTRIBUTION = {"project": "X", "team": "search", "feature": "f"}
# Ana's own figures: tokens she used and holds in reservation. No path may show them to bob; the shared
# budgets show bob's usage and reservation added to hers, never hers alone.
ANA_USED = 1801  # 1,234 input + 567 output
ANA_RESERVED = 1117
REPORT_VIEWS: list[dict[str, Any]] = [
    {"view": "budgets"},
    {"view": "forecast"},
    {"view": "summary"},
    {"view": "usage", "group_by": ["user"]},
    {"view": "usage", "group_by": ["project", "model"]},
    {"view": "timeseries", "since": "2d"},
    {"view": "top"},
    {"view": "accuracy"},
    {"view": "recommendations"},
]
FORMATS = ("json", "markdown", "csv")


async def seed(ledger: Ledger) -> str:
    """Shared budgets, one budget per member; ana's usage (60% of her budget: an alert), her open
    reservation (its id is returned) and her denial; bob's usage and his open reservation, both in every
    shared scope."""
    for spec in (
        BudgetSpec(name="everyone", limit=Decimal(10**6), period="month"),
        BudgetSpec(name="team-search", scope="team:search", limit=Decimal(10**6), period="day"),
        BudgetSpec(name="project-x", scope="project:X", limit=Decimal(10**6), period="day"),
        BudgetSpec(name="feature-f", scope="feature:f", limit=Decimal(10**6), period="week"),
        BudgetSpec(name="ana-day", scope="user:ana", limit=Decimal(3000), period="day", priority_shares=None),
        BudgetSpec(name="bob-day", scope="user:bob", limit=Decimal(10**6), period="day"),
    ):
        await ledger.set_budget(spec, ADMIN)
    ana_usage = await ledger.track_usage(
        TrackRequest(model=MODEL, input_tokens=1234, output_tokens=567, **ATTRIBUTION), ANA
    )
    assert [alert.budget for alert in ana_usage.alerts] == ["ana-day"]  # 60% crossed 50%
    held = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=ANA_RESERVED, **ATTRIBUTION), ANA)
    assert held.allowed
    denied = await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=5000, **ATTRIBUTION), ANA)
    assert denied.blocked_by is not None and denied.blocked_by.budget == "ana-day"
    await ledger.track_usage(
        TrackRequest(model=MODEL, input_tokens=100, output_tokens=20, **ATTRIBUTION), BOB
    )
    assert (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=13, **ATTRIBUTION), BOB)).allowed
    assert held.reservation_id is not None
    return held.reservation_id


def leaks(seen: str) -> list[str]:
    """What in `seen` is ana's: her user id or budget (as a word), or one of her figures (as a number)."""
    found = re.findall(r"\bana\b[-\w]*", seen)
    found += re.findall(rf"(?<![\d.]){ANA_USED}(?![\d.])|(?<![\d.]){ANA_RESERVED}(?![\d.])", seen)
    return found


def text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def test_a_member_reads_no_other_users_budget_figures_or_decisions_on_any_path(ledger: Ledger) -> None:
    anas_reservation = await seed(ledger)
    seen: list[str] = []  # everything bob's calls returned

    async with Client(build_server(ledger, default_principal=BOB)) as client:
        bob = await Session(client).load()

        listed = await bob.ok("lookup", what="budgets")
        assert {b["spec"]["name"] for b in listed["budgets"]} == BOBS
        seen.append(text(listed))
        missing = await bob.refused("lookup", what="budgets", name="nobody-day")
        hidden = await bob.refused("lookup", what="budgets", name="ana-day")
        assert hidden == missing.replace("nobody-day", "ana-day")  # absent, not forbidden
        for name in ("bob-day", "project-x"):
            seen.append(text(await bob.ok("lookup", what="budgets", name=name)))

        for query in REPORT_VIEWS:
            for fmt in FORMATS:
                report = await bob.ok("report", format=fmt, **query)
                seen.append(text(report))
                if query["view"] in ("budgets", "forecast"):
                    assert {row["name"] for row in report["rows"]} == BOBS, (query, fmt)
                    if fmt != "json":
                        assert all(name in report["text"] for name in BOBS)
        own = await bob.ok("report", view="summary")
        assert own["totals"]["total_tokens"] == 120  # bob's usage alone

        budgets = json.loads(_resource_text(await client.read_resource("tokenledger://budgets")))
        assert {row["name"] for row in budgets["rows"]} == BOBS
        seen.append(text(budgets))
        seen.append(_resource_text(await client.read_resource("tokenledger://budgets/bob-day")))
        with pytest.raises(MCPError) as absent:
            await client.read_resource("tokenledger://budgets/nobody-day")
        with pytest.raises(MCPError) as other_users:
            await client.read_resource("tokenledger://budgets/ana-day")
        assert str(other_users.value) == str(absent.value).replace("nobody-day", "ana-day")

        prompt = await client.get_prompt("cost_review", {"since": "7d"})
        message = prompt.messages[0].content
        assert isinstance(message, TextContent)
        assert 'group_by=["user"]' not in message.text and 'view="budgets"' in message.text

        checked = await bob.ok("check_budget", model=MODEL, input_tokens=10, reserve=False, **ATTRIBUTION)
        assert {state["name"] for state in checked["budgets"]} == BOBS
        seen.append(text(checked))
        reserved = await bob.ok("check_budget", model=MODEL, input_tokens=10, **ATTRIBUTION)
        seen.append(text(reserved))
        tracked = await bob.ok(
            "track_usage",
            model=MODEL,
            reservation_id=reserved["reservation_id"],
            input_tokens=10,
            output_tokens=0,
            **ATTRIBUTION,
        )
        assert {state["name"] for state in tracked["budgets"]} == BOBS
        seen.append(text(tracked))
        nobodys = await bob.refused("release", reservation_id="00000000-0000-4000-8000-000000000000")
        anas = await bob.refused("release", reservation_id=anas_reservation)
        assert anas == nobodys.replace("00000000-0000-4000-8000-000000000000", anas_reservation)

    board = await ledger.dashboard(BOB)
    assert {state.name for state in board.budgets} == BOBS
    assert all(alert.budget in BOBS for alert in board.alerts)
    assert all(decision.user == "bob" for decision in board.decisions)
    seen.append(board.model_dump_json())
    seen.append(dashboard.render(board))

    assert leaks("\n".join(seen)) == []

    # The admin reads all of it: ana's budget, figures, alert and denial exist to be leaked.
    admin_board = await ledger.dashboard(ADMIN)
    assert "ana-day" in {state.name for state in admin_board.budgets}
    assert ("ana-day", 50) in {(alert.budget, alert.threshold) for alert in admin_board.alerts}
    assert ("ana-day", "ana") in {(decision.budget, decision.user) for decision in admin_board.decisions}
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        admin = await Session(client).load()
        report = await admin.ok("report", view="budgets", format="csv")
        assert set(leaks(report["text"])) >= {"ana-day", str(ANA_USED), str(ANA_RESERVED)}


async def test_answers_never_carry_another_users_budgets(ledger: Ledger) -> None:
    """Check and track answers show only budgets the caller may read, whichever way they were made: here
    replays of ana's request ids (on the old code bob received ana's answer, her user:ana budget and its
    figures with it)."""
    await seed(ledger)
    check = {"model": MODEL, "input_tokens": 5, "request_id": "same-check", **ATTRIBUTION}
    track = {"model": MODEL, "input_tokens": 3, "output_tokens": 2, "request_id": "same-track", **ATTRIBUTION}
    anas = await ledger.check_budget(CheckRequest(**check), ANA)
    assert "ana-day" in {state.name for state in anas.budgets}
    await ledger.track_usage(TrackRequest(**track), ANA)
    async with Client(build_server(ledger, default_principal=BOB)) as client:
        bob = await Session(client).load()
        checked = await bob.ok("check_budget", **check)
        tracked = await bob.ok("track_usage", **track)
    for answer in (checked, tracked):
        assert {state["name"] for state in answer["budgets"]} <= BOBS
    assert all(alert["budget"] in BOBS for alert in tracked["alerts"])
    assert leaks(text(checked) + text(tracked)) == []


def test_a_member_reads_no_other_users_budget_from_the_cli(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seeded() -> None:
        async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
            await seed(ledger)

    anyio.run(seeded)
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    monkeypatch.setenv("TOKENLEDGER_ROLE", "member")
    monkeypatch.setenv("TOKENLEDGER_USER", "bob")
    printed: list[str] = []
    for command in (
        ["budget", "list", "--json"],
        ["budget", "list"],
        ["report", "--view", "budgets", "--format", "csv"],
        ["report", "--view", "forecast", "--format", "markdown"],
        ["report", "--view", "usage", "--group-by", "user", "--format", "json"],
        ["usage", "--group-by", "user,project", "--json"],
    ):
        assert main(command) == 0, command
        out, _ = capsys.readouterr()
        printed.append(out)
    assert {b["spec"]["name"] for b in json.loads(printed[0])} == BOBS
    assert main(["budget", "show", "ana-day"]) == 1
    _, err = capsys.readouterr()
    assert "no such budget" in err
    assert leaks("\n".join(printed)) == []


def _resource_text(read: Any) -> str:
    content = read.contents[0]
    return str(content.text)
