"""`set` on an existing budget changes only the fields given, on every surface (Ledger.set_budget, the MCP
`manage_budget` tool, `tokenledger budget set`); a change of scope, unit, period or timezone that would
discard the current period's counters needs `reset_counters`; every change is audited with its before
and after; a set prepared over a budget that changed meanwhile is refused rather than undoing that change.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.test_ledger import table_counts
from tests.test_mcp_tools import Session
from tokenledger.cli import main
from tokenledger.errors import Conflict, InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.settings import Settings
from tokenledger.types import BudgetChange, BudgetSpec, CheckRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ADMIN = Principal(key_id="k-admin")
ANA = Principal(role="member", user="ana")
MODEL = "gpt-4o"
ANAS_DAY = {"name": "ana-daily", "scope": "user:ana", "period": "day", "timezone": "Europe/Paris"}


async def anas_day_with_usage(ledger: Ledger, **fields: Any) -> None:
    """The issue's budget: user:ana, daily, with 2,000 tokens used today."""
    await ledger.set_budget(BudgetSpec(**{**ANAS_DAY, "limit": Decimal(5000), **fields}), ADMIN)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1500, output_tokens=500), ANA)


async def last_audit(ledger: Ledger) -> dict[str, Any]:
    return (await ledger.store.audit_log(tenant="default", limit=1))[0]


async def test_a_partial_set_keeps_every_field_and_counter_it_does_not_name(ledger: Ledger) -> None:
    await anas_day_with_usage(
        ledger, hard_limit=Decimal(7000), tokens_per_minute=90_000, alert_thresholds=[Decimal(80)]
    )
    changed = await ledger.set_budget(BudgetSpec(name="ana-daily", limit=Decimal(6000)), ADMIN)
    spec, state = changed.spec, changed.state
    assert (spec.scope, spec.period, spec.timezone) == ("user:ana", "day", "Europe/Paris")
    assert (spec.limit, spec.hard_limit, spec.tokens_per_minute) == (6000, 7000, 90_000)
    assert spec.alert_thresholds == [80]
    assert spec.priority_shares == {"high": Decimal("0.5"), "medium": Decimal("0.3"), "low": Decimal("0.2")}
    assert (state.used, state.limit) == (2000, 6000)
    audit = await last_audit(ledger)
    assert (audit["action"], audit["actor"], audit["object_id"]) == ("update", "k-admin", "ana-daily")
    assert (audit["before"]["limit"], audit["after"]["limit"]) == (5000, 6000)
    assert audit["before"]["scope"] == audit["after"]["scope"] == "user:ana"
    assert audit["before"]["period"] == audit["after"]["period"] == "day"

    # No limit needed to change something else; null keeps a required field, clears an optional one.
    softer = await ledger.set_budget(BudgetChange(name="ana-daily", enforcement="soft", limit=None), ADMIN)
    assert (softer.spec.enforcement, softer.spec.limit, softer.state.used) == ("soft", 6000, 2000)
    cleared = await ledger.set_budget(
        BudgetChange(name="ana-daily", hard_limit=None, tokens_per_minute=None, priority_shares=None), ADMIN
    )
    assert cleared.spec.hard_limit is None and cleared.spec.tokens_per_minute is None
    assert cleared.spec.priority_shares is None and cleared.spec.alert_thresholds == [80]
    audit = await last_audit(ledger)
    assert audit["before"]["hard_limit"] == 7000 and audit["after"]["hard_limit"] is None


async def test_the_tool_sets_only_the_fields_given_and_clears_shares_on_request(ledger: Ledger) -> None:
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        admin = await Session(client).load()
        await admin.ok("manage_budget", action="set", name="team", scope="team:a", limit=1000, period="day")
        big = {"model": MODEL, "input_tokens": 900, "priority": "high", "team": "a", "reserve": False}
        shared = await admin.ok("check_budget", **big)
        assert shared["blocked_by"]["reason"] == "priority_share"  # high may take half of what remains

        answer = await admin.ok("manage_budget", action="set", name="team", clear=["priority_shares"])
        spec = answer["budgets"][0]["spec"]
        assert spec["priority_shares"] is None and spec["scope"] == "team:a" and spec["limit"] == "1000"
        assert (await admin.ok("check_budget", **big))["allowed"] is True
        answer = await admin.ok("manage_budget", action="set", name="team", limit=2000)
        assert answer["budgets"][0]["spec"]["priority_shares"] is None  # still off
        assert answer["budgets"][0]["spec"]["period"] == "day"

        refused = await admin.refused("manage_budget", action="set", name="brand-new")
        assert "limit" in refused and "required to create" in refused
        refused = await admin.refused("manage_budget", action="set", name="team", hard_limit=10)
        assert "hard_limit" in refused and "2000" in refused


async def test_a_measure_change_over_counters_needs_reset_counters(ledger: Ledger) -> None:
    await anas_day_with_usage(ledger)
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        admin = await Session(client).load()
        before = await table_counts(ledger.store)
        for change, named in (
            ({"scope": "global"}, "scope user:ana -> global"),
            ({"unit": "usd"}, "unit tokens -> usd"),
            ({"period": "month", "limit": 9000}, "period day -> month"),
            ({"timezone": "UTC"}, "timezone Europe/Paris -> UTC"),
        ):
            refused = await admin.refused("manage_budget", action="set", name="ana-daily", **change)
            assert named in refused and "used 2000" in refused and "reset_counters" in refused, refused
        assert await table_counts(ledger.store) == before  # nothing written, nothing audited
        kept = (await admin.ok("lookup", what="budgets", name="ana-daily"))["budgets"][0]
        assert kept["spec"]["scope"] == "user:ana" and kept["state"]["used"] == "2000"

        moved = await admin.ok(
            "manage_budget", action="set", name="ana-daily", scope="global", reset_counters=True
        )
        spec, state = moved["budgets"][0]["spec"], moved["budgets"][0]["state"]
        assert (spec["scope"], spec["period"], state["used"]) == ("global", "day", "0")
    audit = await last_audit(ledger)
    assert audit["action"] == "update, counters reset"
    assert (audit["before"]["scope"], audit["after"]["scope"]) == ("user:ana", "global")


async def test_a_reservation_alone_also_needs_the_confirmation(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="held", limit=Decimal(1000), period="week"), ADMIN)
    assert (await ledger.check_budget(CheckRequest(model=MODEL, input_tokens=10))).allowed
    with pytest.raises(Conflict, match=r"period week -> day: .* reserved 10 tokens .*reset_counters"):
        await ledger.set_budget(BudgetChange(name="held", period="day"), ADMIN)
    assert (await ledger.get_budget("held")).spec.period == "week"


async def test_a_measure_change_without_counters_needs_no_confirmation(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="idle", limit=Decimal(1000), period="day"), ADMIN)
    assert (await ledger.set_budget(BudgetChange(name="idle", period="week"), ADMIN)).spec.period == "week"
    # A `total` budget counts the same in any zone: its counters stay, no confirmation asked.
    await ledger.set_budget(BudgetSpec(name="ever", limit=Decimal(1000), period="total"), ADMIN)
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=40, output_tokens=2))
    moved = await ledger.set_budget(BudgetChange(name="ever", timezone="Asia/Tokyo"), ADMIN)
    assert (moved.spec.timezone, moved.state.used) == ("Asia/Tokyo", 42)


async def test_creating_a_budget_needs_a_limit_and_writes_nothing_without_one(ledger: Ledger) -> None:
    before = await table_counts(ledger.store)
    with pytest.raises(InvalidInput, match="limit: missing; a positive amount, required to create"):
        await ledger.set_budget(BudgetChange(name="fresh", period="day"), ADMIN)
    assert await table_counts(ledger.store) == before


async def test_a_set_prepared_over_a_budget_changed_meanwhile_is_refused(ledger: Ledger) -> None:
    """The ledger merges the given fields over the budget it read; a budget changed since (by another
    admin) is refused, so the merge never undoes that change."""
    read = await ledger.set_budget(BudgetSpec(name="race", limit=Decimal(1000)), ADMIN)
    await ledger.set_budget(BudgetChange(name="race", enforcement="soft"), ADMIN)
    stale = read.spec.model_copy(update={"limit": Decimal(2000)}).model_dump(mode="json")
    with pytest.raises(Conflict, match="changed by another call while this one was prepared"):
        await ledger.store.set_budget(
            tenant="default", actor="k", spec=stale, expected_updated_at=read.updated_at, reset_counters=False
        )
    with pytest.raises(Conflict, match="created by another call while this one was prepared"):
        await ledger.store.set_budget(
            tenant="default", actor="k", spec=stale, expected_updated_at=None, reset_counters=False
        )
    now = await ledger.get_budget("race")
    assert (now.spec.enforcement, now.spec.limit) == ("soft", 1000)


def test_budget_set_on_the_command_line_changes_only_the_options_given(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    code, _, _ = run(
        "budget", "set", "ana-daily", "--scope", "user:ana", "--period", "day", "--limit", "5000",
        "--hard-limit", "7000", "--tpm", "90000",
    )  # fmt: skip
    assert code == 0

    async def use() -> None:
        async with await Ledger.open(Settings.from_env({}), dsn=dsn, migrate=False) as ledger:
            await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=1500, output_tokens=500), ANA)

    anyio.run(use)
    code, out, _ = run("budget", "set", "ana-daily", "--limit", "6000", "--json")
    changed = json.loads(out)[0]
    assert code == 0 and changed["spec"]["scope"] == "user:ana" and changed["spec"]["period"] == "day"
    assert changed["spec"]["hard_limit"] == "7000" and changed["spec"]["tokens_per_minute"] == 90_000
    assert changed["state"]["used"] == "2000" and changed["spec"]["limit"] == "6000"

    code, out, err = run("budget", "set", "ana-daily", "--period", "month")
    assert code == 1 and out == "" and "period day -> month" in err and "--reset-counters" in err
    code, out, _ = run("budget", "set", "ana-daily", "--tpm", "none", "--hard-limit", "none", "--json")
    cleared = json.loads(out)[0]["spec"]
    assert cleared["tokens_per_minute"] is None and cleared["hard_limit"] is None
    code, out, _ = run("budget", "set", "ana-daily", "--period", "month", "--reset-counters", "--json")
    moved = json.loads(out)[0]
    assert code == 0 and moved["spec"]["period"] == "month" and moved["state"]["used"] == "0"
    code, _, err = run("budget", "set", "fresh", "--period", "day")
    assert code == 1 and "limit" in err and "required to create" in err
