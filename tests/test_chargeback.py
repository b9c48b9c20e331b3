"""Chargeback statements: one per cost centre, lines by model and token type, whole cents that add up and
reconcile with the usage view to the cent; csv and markdown; the CLI, the MCP tool, and the printable page
from the server (same sign-in as the dashboard; a member sees only its own lines)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from pydantic import ValidationError

from tests.servers import serving
from tests.test_dashboard import read
from tokenledger import reports
from tokenledger.catalog import Catalog, cost
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.mcp.http import DASHBOARD_COOKIE
from tokenledger.reports import ReportQuery
from tokenledger.store import Store
from tokenledger.types import PriceSpec, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ADMIN = Principal()
ANA = Principal(role="member", user="ana")
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
CENT = Decimal("0.01")


# --- pure parts ----------------------------------------------------------------------------------


def test_month_window_in_a_time_zone_and_its_bounds() -> None:
    since, until = reports.month_window("2026-03", "Europe/Paris")  # the month DST starts in
    assert since == datetime(2026, 2, 28, 23, tzinfo=UTC) and until == datetime(2026, 3, 31, 22, tzinfo=UTC)
    assert reports.month_window("2026-12", "UTC") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert reports.month_window("2000-01", "UTC")[0].year == 2000
    assert reports.month_window("2100-12", "UTC")[1].year == 2101
    for bad in ("2026-13", "2026-00", "1999-12", "2101-01", "2026-1", "26-11", "2026/11", "nov", ""):
        with pytest.raises(InvalidInput, match=r"period: .* YYYY-MM .* years 2000 to 2100") as raised:
            reports.month_window(bad, "UTC")
        assert raised.value.field == "period" and raised.value.value == bad


@given(
    st.lists(st.decimals(min_value=0, max_value=10_000, places=9), min_size=1, max_size=30),
    st.integers(min_value=-1, max_value=1),
)
def test_allocated_cents_add_up_and_stay_within_a_cent(amounts: list[Decimal], nudge: int) -> None:
    exact = sum(amounts, Decimal(0)) * 100
    target = max(int(exact.to_integral_value(rounding=ROUND_HALF_UP)) + nudge, 0)
    cents = reports.allocate_cents(amounts, target)
    assert sum(cents) == target
    assert all(c >= 0 for c in cents)
    if nudge == 0:
        assert all(abs(c - a * 100) < 1 for c, a in zip(cents, amounts, strict=True))


# --- seeded usage --------------------------------------------------------------------------------


async def seed(ledger: Ledger) -> str:
    """Usage of this month in three teams and none, with fractions of cents everywhere; returns the
    period (YYYY-MM, UTC) it landed in."""
    await ledger.set_price(  # an override in force tomorrow only: unpriced today
        PriceSpec(
            model="house-model",
            input=Decimal("0.000001"),
            output=Decimal("0.000002"),
            effective_from=datetime.now(UTC) + timedelta(days=1),
        )
    )
    await ledger.set_price(
        PriceSpec(
            model=HOSTILE_MODEL,
            input=Decimal("0.000001"),
            output=Decimal("0.000002"),
            effective_from=datetime.now(UTC) - timedelta(days=40),
        )
    )
    calls: list[dict[str, Any]] = [
        # team solo: one call whose parts are whole cents: input $3.00, output $3.00, cache read $0.30,
        # cache write $0.30 (claude-sonnet-4-5 prices)
        dict(team="solo", user="cy", model="claude-sonnet-4-5", input_tokens=1_000_000, output_tokens=200_000,
             cache_read_input_tokens=1_000_000, cache_creation_input_tokens=80_000),
        dict(team="search", user="ana", model="gpt-4o", input_tokens=1_001, output_tokens=333,
             cache_read_input_tokens=4_321),
        dict(team="search", user="ana", model="o3", input_tokens=2_000, output_tokens=800,
             reasoning_output_tokens=500),
        dict(team="search", user="ana", model=HOSTILE_MODEL, input_tokens=1_234, output_tokens=55),
        # a provider-reported cost: kept as the recorded cost, split by the model's prices
        dict(team="ads", user="bob", model="gpt-4o", input_tokens=5_000, output_tokens=100,
             cost_usd=Decimal("0.123456789")),
        dict(user="carol", model="house-model", input_tokens=10, output_tokens=10),  # unpriced, no team
        dict(user="carol", model="gpt-4o-mini", input_tokens=777, output_tokens=123),
    ]  # fmt: skip
    calls += [dict(team="ads", user="bob", model="gpt-4o-mini", input_tokens=777 + i, output_tokens=123)
              for i in range(17)]  # fmt: skip
    occurred = []
    for call in calls:
        occurred.append((await ledger.track_usage(TrackRequest(**call), ADMIN)).occurred_at)
    assert occurred[0].strftime("%Y-%m") == occurred[-1].strftime("%Y-%m"), "seeded across a month end"
    return occurred[0].astimezone(UTC).strftime("%Y-%m")


def statements(report: reports.Report) -> dict[str, dict[str, Any]]:
    """Per cost centre: its lines and its subtotal row."""
    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"lines": []})
    for row in report.rows:
        if row["kind"] == "line":
            found[str(row["cost_centre"])]["lines"].append(row)
        elif row["kind"] == "subtotal":
            found[str(row["cost_centre"])]["subtotal"] = row
    return dict(found)


def cents(value: Any) -> Decimal:
    return Decimal(str(value))


# --- the report ----------------------------------------------------------------------------------


async def test_statements_reconcile_with_the_usage_view_to_the_cent(ledger: Ledger) -> None:
    period = await seed(ledger)
    chargeback = await ledger.report(ReportQuery(view="chargeback", period=period, by="team"))
    since, until = reports.month_window(period, "UTC")
    assert (chargeback.since, chargeback.until) == (since, until)
    usage = await ledger.report(ReportQuery(view="usage", since=since, until=until, group_by=["team"]))
    assert usage.totals is not None and chargeback.totals is not None
    exact = Decimal(str(usage.totals["cost_usd"]))
    assert chargeback.totals["cost_usd"] == str(exact.quantize(CENT, rounding=ROUND_HALF_UP))
    assert chargeback.totals["cost_usd_exact"] == str(usage.totals["cost_usd"])
    assert chargeback.totals["tokens"] == usage.totals["total_tokens"]
    assert chargeback.totals["requests"] == usage.totals["requests"] == 24
    assert chargeback.totals["unpriced_requests"] == 1

    found = statements(chargeback)
    assert set(found) == {"solo", "search", "ads", reports.UNATTRIBUTED}
    assert chargeback.totals["cost_centres"] == 4
    by_team = {row["team"] or reports.UNATTRIBUTED: row for row in usage.rows}
    total_row = chargeback.rows[-1]
    assert total_row["kind"] == "total" and total_row["cost_usd"] == chargeback.totals["cost_usd"]
    lines = [row for row in chargeback.rows if row["kind"] == "line"]
    assert sum(cents(row["cost_usd"]) for row in lines) == cents(total_row["cost_usd"])
    assert sum(cents(s["subtotal"]["cost_usd"]) for s in found.values()) == cents(total_row["cost_usd"])
    assert sum(int(str(row["tokens"])) for row in lines) == usage.totals["total_tokens"]
    for centre, statement in found.items():
        subtotal = statement["subtotal"]
        assert sum(cents(row["cost_usd"]) for row in statement["lines"]) == cents(subtotal["cost_usd"])
        assert sum(row["tokens"] for row in statement["lines"]) == subtotal["tokens"]
        team = by_team[centre]
        assert subtotal["tokens"] == team["total_tokens"] and subtotal["requests"] == team["requests"]
        assert abs(cents(subtotal["cost_usd"]) - Decimal(str(team["cost_usd"]))) < CENT
    shares = sum(Decimal(str(row["share_percent"])) for row in lines)
    assert abs(shares - 100) < Decimal("0.01") * len(lines)


async def test_lines_by_model_and_token_type(ledger: Ledger) -> None:
    period = await seed(ledger)
    found = statements(await ledger.report(ReportQuery(view="chargeback", period=period)))  # by team
    solo = {row["token_type"]: row for row in found["solo"]["lines"]}
    assert {t: (r["tokens"], r["cost_usd"]) for t, r in solo.items()} == {
        "input": (1_000_000, "3.00"),
        "output": (200_000, "3.00"),
        "cache_read": (1_000_000, "0.30"),
        "cache_write": (80_000, "0.30"),
    }
    assert found["solo"]["subtotal"]["cost_usd"] == "6.60" and found["solo"]["subtotal"]["requests"] == 1
    search = {(row["model"], row["token_type"]): row for row in found["search"]["lines"]}
    # Reasoning is part of the output: the output line holds the rest, and the two add up.
    assert search[("o3", "output")]["tokens"] == 300 and search[("o3", "reasoning")]["tokens"] == 500
    assert search[("gpt-4o", "cache_read")]["tokens"] == 4_321
    assert (HOSTILE_MODEL, "input") in search
    assert [row["model"] for row in found["search"]["lines"]] == sorted(
        row["model"] for row in found["search"]["lines"]
    )
    # The provider's reported cost is what is charged, split in proportion to gpt-4o's prices.
    ads = {(row["model"], row["token_type"]): row for row in found["ads"]["lines"]}
    parts = cost(Catalog().resolve("gpt-4o").price, input_tokens=5_000, output_tokens=100)
    assert parts.input_usd is not None and parts.cost_usd is not None
    reported_input = Decimal("0.123456789") * parts.input_usd / parts.cost_usd
    assert abs(cents(ads[("gpt-4o", "input")]["cost_usd"]) - reported_input) < CENT
    unattributed = {(row["model"], row["token_type"]): row for row in found[reports.UNATTRIBUTED]["lines"]}
    assert unattributed[("house-model", "input")]["cost_usd"] == "0.00"  # unpriced: unknown, not charged


async def test_cost_centres_formats_and_time_zone(ledger: Ledger) -> None:
    period = await seed(ledger)
    by_user = await ledger.report(ReportQuery(view="chargeback", period=period, by="user"))
    assert set(statements(by_user)) == {"ana", "bob", "carol", "cy"}
    assert by_user.totals is not None and by_user.totals["by"] == "user"
    text = reports.formatted(by_user, "csv").text or ""
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [row["kind"] for row in parsed].count("subtotal") == 4 and parsed[-1]["kind"] == "total"
    assert list(parsed[0]) == [
        "cost_centre", "kind", "model", "token_type", "requests", "tokens", "cost_usd", "share_percent"
    ]  # fmt: skip
    assert parsed[-1]["cost_usd"] == by_user.totals["cost_usd"]
    markdown = reports.formatted(by_user, "markdown").text or ""
    assert markdown.startswith("| cost_centre | kind | model |") and "_cost centre: user; period" in markdown
    paris = await ledger.report(ReportQuery(view="chargeback", period=period, timezone="Europe/Paris"))
    assert paris.since == reports.month_window(period, "Europe/Paris")[0]
    assert paris.since is not None and paris.since.astimezone(UTC).hour in (22, 23)
    current = await ledger.report(ReportQuery(view="chargeback"))  # default: this month, by team
    assert current.totals is not None and current.totals["period"] == datetime.now(UTC).strftime("%Y-%m")


async def test_refusals_name_the_field(ledger: Ledger) -> None:
    await seed(ledger)
    for bad in ("2026-13", "1999-12", "2101-01", "11-2026"):
        with pytest.raises(InvalidInput, match="period") as raised:
            await ledger.report(ReportQuery(view="chargeback", period=bad))
        assert raised.value.value == bad
    with pytest.raises(InvalidInput, match=r"period: '2026-11' .* only with view 'chargeback'"):
        await ledger.report(ReportQuery(view="usage", period="2026-11"))
    with pytest.raises(InvalidInput, match=r"by: 'team' .* only with view 'chargeback'"):
        await ledger.report(ReportQuery(view="summary", by="team"))
    with pytest.raises(InvalidInput, match=r"since: .* calendar month given by period"):
        await ledger.report(ReportQuery(view="chargeback", since="7d"))
    with pytest.raises(InvalidInput, match="timezone: 'Mars/Olympus'"):
        await ledger.report(ReportQuery(view="chargeback", timezone="Mars/Olympus"))
    with pytest.raises(ValidationError, match="by"):
        ReportQuery.model_validate({"view": "chargeback", "by": "colour"})
    with pytest.raises(ValidationError, match="period"):
        ReportQuery.model_validate({"view": "chargeback", "period": "2026-11" * 3})


async def test_a_member_sees_only_its_own_lines(ledger: Ledger) -> None:
    period = await seed(ledger)
    own = await ledger.report(ReportQuery(view="chargeback", period=period, by="team"), ANA)
    assert set(statements(own)) == {"search"}
    mine = await ledger.report(
        ReportQuery(view="usage", since=own.since, until=own.until, user="ana"), Principal()
    )
    assert own.totals is not None and mine.totals is not None
    assert own.totals["tokens"] == mine.totals["total_tokens"]
    assert "bob" not in json.dumps(own.model_dump(mode="json"))
    by_user = await ledger.report(ReportQuery(view="chargeback", period=period, by="user"), ANA)
    assert set(statements(by_user)) == {"ana"}
    with pytest.raises(PermissionDenied):
        await ledger.report(ReportQuery(view="chargeback", period=period, user="bob"), ANA)


# --- CLI, MCP tool, printable page ---------------------------------------------------------------


def test_cli_chargeback(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seeded() -> str:
        async with Ledger(await Store.open(dsn, migrate=False)) as ledger:
            return await seed(ledger)

    period = anyio.run(seeded)
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    base = ["report", "--view", "chargeback", "--period", period]
    assert main([*base, "--by", "project", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["cost_centre"] for row in rows if row["kind"] == "subtotal"} == {reports.UNATTRIBUTED}
    assert main([*base, "--format", "markdown"]) == 0
    assert "| solo | subtotal |" in capsys.readouterr().out
    assert main([*base, "--timezone", "Europe/Paris"]) == 0  # the aligned table
    assert "solo" in capsys.readouterr().out
    assert main(["report", "--view", "chargeback", "--period", "2026-13"]) == 1
    assert "period: '2026-13' is not allowed; a calendar month as YYYY-MM" in capsys.readouterr().err
    assert main([*base, "--by", "colour"]) == 1
    assert "by" in capsys.readouterr().err


async def test_mcp_report_tool_chargeback(ledger: Ledger) -> None:
    period = await seed(ledger)
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "chargeback" in tools["report"].input_schema["properties"]["view"]["enum"]
        result = await client.call_tool(
            "report", {"view": "chargeback", "period": period, "by": "team", "format": "markdown"}
        )
        assert not result.is_error and result.structured_content is not None
        jsonschema.validate(result.structured_content, tools["report"].output_schema or {})
        assert "| solo | subtotal |" in result.structured_content["text"]
        refused = await client.call_tool("report", {"view": "chargeback", "period": "2026-13"})
        assert refused.is_error and "period" in str(refused.content[0])


async def test_printable_page_signed_in_like_the_dashboard(dsn: str) -> None:
    async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
        period = await seed(served.ledger)
        admin, _ = await served.ledger.create_key(role="viewer", principal=ADMIN)
        member, _ = await served.ledger.create_key(role="member", user="ana", principal=ADMIN)
        url = f"{served.base}/dashboard/chargeback"
        assert "Sign in" in (await http.get(url)).text  # no key: the sign-in form

        signed = await http.get(url, params={"key": admin, "period": period})
        assert signed.status_code == 303  # the key is dropped from the address, kept in the cookie
        assert signed.headers["location"] == f"/dashboard/chargeback?period={period}"
        assert signed.headers["set-cookie"].startswith(f"{DASHBOARD_COOKIE}={admin};")
        http.cookies.clear()
        viewer = {"Cookie": f"{DASHBOARD_COOKIE}={admin}"}
        page = await http.get(url, params={"period": period, "by": "team"}, headers=viewer)
        assert page.status_code == 200 and page.headers["content-security-policy"].startswith("default-src")
        assert "<img" not in page.text and "&lt;img src=x" in page.text
        shown = read(page.text)
        report = await served.ledger.report(ReportQuery(view="chargeback", period=period), ADMIN)
        assert report.totals is not None
        assert shown.find(metric="total-cost")[0].attrs["data-value"] == report.totals["cost_usd"]
        assert {e.attrs["data-centre"] for e in shown.having("centre")} == set(statements(report))
        solo = next(e for e in shown.having("centre") if e.attrs["data-centre"] == "solo")
        assert solo.attrs["data-cost"] == "6.60" and "$6.60" in solo.text
        assert shown.find(token_type="cache_write", cost="0.30")
        assert "@media print" in page.text and "<script" not in page.text

        own = read((await http.get(url, params={"period": period}, headers={
            "Cookie": f"{DASHBOARD_COOKIE}={member}"})).text)  # fmt: skip
        assert {e.attrs["data-centre"] for e in own.having("centre")} == {"search"}
        assert "bob" not in own.text and "ads" not in {e.attrs["data-centre"] for e in own.having("centre")}

        bad = await http.get(url, params={"period": "2026-13"}, headers=viewer)
        assert bad.status_code == 400 and "period" in bad.text and "YYYY-MM" in bad.text
        bad_by = await http.get(url, params={"period": period, "by": "colour"}, headers=viewer)
        assert bad_by.status_code == 400 and "by" in bad_by.text
