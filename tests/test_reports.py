"""Every report view on seeded usage with hand-computed numbers, every format, the CLI and the MCP tool."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from mcp import Client

from tokenledger import reports
from tokenledger.catalog import cost
from tokenledger.cli import main
from tokenledger.errors import PermissionDenied
from tokenledger.ledger import Ledger
from tokenledger.mcp import build_server
from tokenledger.reports import ReportQuery
from tokenledger.store import Store
from tokenledger.types import BudgetSpec, CheckRequest, Principal, TrackRequest

pytestmark = pytest.mark.anyio

ADMIN = Principal()
BOB = Principal(role="member", user="bob")
# A fixed past day, so buckets are known: 10:15, 10:45 and 12:30 UTC.
DAY = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
WINDOW = {"since": DAY + timedelta(hours=10), "until": DAY + timedelta(hours=13)}


def at(hour: int, minute: int) -> datetime:
    return DAY + timedelta(hours=hour, minutes=minute)


async def track(ledger: Ledger, principal: Principal = ADMIN, **fields: Any) -> None:
    await ledger.track_usage(TrackRequest(**fields), principal)


async def seed(ledger: Ledger) -> None:
    """Four calls: alice's two gpt-4o calls ($0.50, $1.00), bob's two gpt-4o-mini calls (one failed)."""
    common = {"provider": "openai"}
    await track(ledger, model="gpt-4o", user="alice", project="demo", input_tokens=1_000, output_tokens=100,
                cost_usd=Decimal("0.50"), occurred_at=at(10, 15), request_id="a1", **common)  # fmt: skip
    await track(ledger, model="gpt-4o", user="alice", project="demo", input_tokens=2_000, output_tokens=200,
                cost_usd=Decimal("1.00"), occurred_at=at(10, 45), request_id="a2", **common)  # fmt: skip
    await track(ledger, model="gpt-4o-mini", user="bob", input_tokens=500, output_tokens=50, status="error",
                cost_usd=Decimal("0.10"), occurred_at=at(12, 30), request_id="b1", **common)  # fmt: skip
    await track(ledger, model="gpt-4o-mini", user="bob", input_tokens=300, output_tokens=30,
                cache_read_input_tokens=100, cost_usd=Decimal("0.05"), occurred_at=at(12, 30),
                request_id="b2", **common)  # fmt: skip


async def report(ledger: Ledger, principal: Principal = ADMIN, **fields: Any) -> reports.Report:
    return await ledger.report(ReportQuery.model_validate({**WINDOW, **fields}), principal)


# --- views ---------------------------------------------------------------------------------------


async def test_summary_totals(ledger: Ledger) -> None:
    await seed(ledger)
    summary = await report(ledger)
    assert summary.rows == []
    assert summary.totals == {
        "requests": 4,
        "input_tokens": 3_800,
        "output_tokens": 380,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 0,
        "reasoning_output_tokens": 0,
        "total_tokens": 4_280,
        "cost_usd": "1.65",
        "unpriced_requests": 0,
        "errors": 1,
        "downgrades": 0,
        "success_rate": 0.75,
        "avg_tokens_per_request": 1_070.0,
    }


async def test_usage_grouped_and_limited(ledger: Ledger) -> None:
    await seed(ledger)
    usage = await report(ledger, view="usage", group_by=["user", "model"])
    assert [(r["user"], r["model"], r["requests"], r["cost_usd"]) for r in usage.rows] == [
        ("alice", "gpt-4o", 2, "1.50"),
        ("bob", "gpt-4o-mini", 2, "0.15"),
    ]
    assert usage.totals is not None and usage.totals["cost_usd"] == "1.65"
    first = await report(ledger, view="usage", group_by=["user"], limit=1)
    # The totals cover the whole window even when the rows are cut at the limit.
    assert len(first.rows) == 1 and first.totals is not None and first.totals["requests"] == 4
    by_day = await report(ledger, view="usage", group_by=["project"], bucket="day")
    assert {(r["project"], r["requests"]) for r in by_day.rows} == {("demo", 2), (None, 2)}


async def test_timeseries_fills_empty_buckets(ledger: Ledger) -> None:
    await seed(ledger)
    hourly = await report(ledger, view="timeseries", bucket="hour")
    assert [(r["bucket"], r["requests"], r["cost_usd"]) for r in hourly.rows] == [
        (at(10, 0).isoformat(), 2, "1.50"),
        (at(11, 0).isoformat(), 0, "0"),
        (at(12, 0).isoformat(), 2, "0.15"),
    ]
    # Days in New York start at local midnight (UTC-5 or UTC-4); the whole UTC window is one local day.
    daily = await report(ledger, view="timeseries", timezone="America/New_York")
    assert len(daily.rows) == 1 and daily.rows[0]["requests"] == 4
    start = datetime.fromisoformat(str(daily.rows[0]["bucket"]))
    assert start.astimezone(UTC).hour in (4, 5) and "America/New_York" in daily.notes[0]


async def test_top_is_most_expensive_first_and_members_see_their_own(ledger: Ledger) -> None:
    await seed(ledger)
    top = await report(ledger, view="top", limit=3)
    assert [(r["request_id"], r["cost_usd"], r["user"]) for r in top.rows] == [
        ("a2", "1.00", "alice"),
        ("a1", "0.50", "alice"),
        ("b1", "0.10", "bob"),
    ]
    assert top.rows[0]["total_tokens"] == 2_200 and top.rows[0]["occurred_at"] == at(10, 45).isoformat()
    own = await report(ledger, BOB, view="top")
    assert {r["user"] for r in own.rows} == {"bob"} and len(own.rows) == 2
    with pytest.raises(PermissionDenied, match="own user"):
        await report(ledger, BOB, view="top", user="alice")
    for view in ("accuracy", "recommendations", "summary", "timeseries"):
        shown = await report(ledger, BOB, view=view)
        assert "alice" not in json.dumps(shown.model_dump(mode="json")), view
    viewer = await report(ledger, Principal(role="viewer"), view="top")
    assert len(viewer.rows) == 4


async def test_accuracy_compares_counts_with_actual_input_per_model_and_method(ledger: Ledger) -> None:
    for estimate, actual in ((100, 80), (100, 125)):
        check = await ledger.check_budget(
            CheckRequest(model="gpt-4o", input_tokens=estimate, max_output_tokens=10, user="ana")
        )
        await track(ledger, model="gpt-4o", reservation_id=check.reservation_id, input_tokens=actual,
                    output_tokens=10, user="ana")  # fmt: skip
    await track(ledger, model="gpt-4o", input_tokens=50, output_tokens=5)  # no estimate: not counted
    # The same model counted exactly from its text: a row of its own, the counts it would report.
    exact = await ledger.check_budget(CheckRequest(model="gpt-4o", text="hello world", max_output_tokens=1))
    await track(ledger, model="gpt-4o", reservation_id=exact.reservation_id, input_tokens=2, output_tokens=1)
    accuracy = await ledger.report(ReportQuery(view="accuracy", since="1h"))
    assert accuracy.rows[1] == {
        "model": "gpt-4o",
        "method": "exact",
        "samples": 1,
        "mean_error_tokens": "0.00",
        "mean_abs_error_percent": 0.0,
        "worst_error_tokens": 0,
        "worst_error_percent": 0.0,
        "over_estimates": 0,
        "under_estimates": 0,
    }
    assert accuracy.totals == {"models": 1, "samples": 3}
    # Given counts ("provider": the caller's): +20 tokens (+25 % of 80) and -25 tokens (-20 % of 125).
    assert accuracy.rows[:1] == [
        {
            "model": "gpt-4o",
            "method": "provider",
            "samples": 2,
            "mean_error_tokens": "-2.50",
            "mean_abs_error_percent": 22.5,
            "worst_error_tokens": -25,
            "worst_error_percent": 25.0,
            "over_estimates": 1,
            "under_estimates": 1,
        }
    ]


async def test_recommendations_name_a_cheaper_model_repeats_and_errors(ledger: Ledger) -> None:
    gpt4o = ledger.catalog.resolve("gpt-4o")
    spent = Decimal(0)
    for i in range(10):
        await track(ledger, model="gpt-4o", input_tokens=1_000, output_tokens=100, request_id=f"big-{i}")
        spent += cost(gpt4o.price, input_tokens=1_000, output_tokens=100).cost_usd or Decimal(0)
    # Three calls of one prompt (its hash, set directly until the ledger fills it), $0.30 + $0.20 + $0.10.
    for i, usd in enumerate(("0.30", "0.20", "0.10")):
        await track(ledger, model="claude-sonnet-4-5", input_tokens=400, output_tokens=40,
                    cost_usd=Decimal(usd), request_id=f"same-{i}")  # fmt: skip
    async with ledger.store.pool.connection() as conn:
        await conn.execute(
            "update tl_usage set prompt_hash = %s where request_id like 'same-%%'",
            (reports.prompt_hash("What is the capital of France?"),),
        )
    await track(ledger, model="gpt-4o-mini", input_tokens=500, output_tokens=50, status="error",
                cost_usd=Decimal("0.10"))  # fmt: skip
    await track(ledger, model="gpt-4o-mini", input_tokens=300, output_tokens=30, cost_usd=Decimal("0.05"))

    found = await ledger.report(ReportQuery(view="recommendations", since="1h"))
    by_kind = {(r["kind"], r["model"]): r for r in found.rows}

    cheaper = by_kind["cheaper_model", "gpt-4o"]
    expected = ledger.catalog.cheapest(1_000, 100, provider="openai", exclude="gpt-4o")
    assert expected is not None and cheaper["suggestion"] == expected.name
    repriced = cost(expected.price, input_tokens=10_000, output_tokens=1_000).cost_usd
    assert repriced is not None
    assert Decimal(str(cheaper["saving_usd"])) == (spent - repriced).quantize(Decimal("0.000001")) > 0
    assert "1000 input" in str(cheaper["evidence"]) and "100 output" in str(cheaper["evidence"])

    repeated = by_kind["repeated_prompts", "claude-sonnet-4-5"]
    assert repeated["saving_usd"] == "0.300000"  # $0.60 of calls, keeping the dearest ($0.30)
    assert "2 of 3 calls" in str(repeated["evidence"])

    errors = by_kind["errors", "gpt-4o-mini"]
    assert errors["saving_usd"] == "0.100000" and "1 of 2 calls failed (50.0%" in str(errors["evidence"])
    savings = [Decimal(str(r["saving_usd"])) for r in found.rows]
    assert savings == sorted(savings, reverse=True)
    assert found.totals is not None and Decimal(str(found.totals["saving_usd"])) == sum(savings)


def test_recommendations_for_prompt_heavy_uncached_and_near_limit_traffic() -> None:
    window = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    stats = {
        "model": "claude-sonnet-4-5",
        "provider": "anthropic",
        "requests": 10,
        "input_tokens": 1_900_000,
        "output_tokens": 1_000,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "reasoning_output_tokens": 0,
        "total_tokens": 1_901_000,
        "cost_usd": Decimal("5.715"),
        "unpriced_requests": 0,
        "max_input_tokens": 190_000,
        "max_output_tokens": 100,
        "errors": 0,
        "error_cost_usd": Decimal(0),
        "error_tokens": 0,
        "near_limit_requests": 10,
        "near_limit_tokens": 1_901_000,
        "repeated_prompts": 0,
        "repeated_requests": 0,
        "repeated_cost_usd": Decimal(0),
    }
    from tokenledger.catalog import Catalog

    catalog = Catalog()
    price = catalog.resolve("claude-sonnet-4-5").price
    window_tokens = catalog.resolve("claude-sonnet-4-5").context_window
    assert price.input is not None and price.cache_read is not None and window_tokens
    found = reports.recommendations_report([stats], catalog, *window)
    by_kind = {r["kind"]: r for r in found.rows}
    assert by_kind["prompt_heavy"]["saving_usd"] == reports._money(Decimal(1_900_000) * price.input / 2)
    assert by_kind["prompt_caching"]["saving_usd"] == reports._money(
        Decimal(950_000) * (price.input - price.cache_read)
    )
    excess = Decimal(1_901_000) - 10 * Decimal("0.75") * window_tokens
    assert by_kind["near_context_limit"]["saving_usd"] == reports._money(
        max(excess, Decimal(0)) * price.input
    )
    assert "10 of 10 calls used over 90%" in str(by_kind["near_context_limit"]["evidence"])


async def test_budgets_and_forecast(ledger: Ledger) -> None:
    await ledger.set_budget(BudgetSpec(name="forever", limit=Decimal(10_000), period="total"))
    await ledger.set_budget(
        BudgetSpec(name="yearly", scope="user:ana", limit=Decimal(100_000), period="year")
    )
    for _ in range(2):
        await track(ledger, model="gpt-4o", input_tokens=1_000, output_tokens=200, user="ana")
    budgets = await ledger.report(ReportQuery(view="budgets"))
    rows = {r["name"]: r for r in budgets.rows}
    assert rows["forever"]["used"] == "2400" and rows["forever"]["projected_used"] is None
    assert int(str(rows["yearly"]["projected_used"])) >= 2_400 and rows["yearly"]["resets_at"]

    forecast = await ledger.report(ReportQuery(view="forecast"))
    assert forecast.until is not None and forecast.since == forecast.until - timedelta(hours=24)
    assert forecast.totals is not None and forecast.totals["window_hours"] == 24.0
    assert "linear extrapolation" in forecast.notes[0] and "24 h" in forecast.notes[0]
    rows = {r["name"]: r for r in forecast.rows}
    # 2,400 tokens in 24 h: 100 tokens an hour; 7,600 left run out in 76 h.
    assert rows["forever"]["window_use"] == "2400" and rows["forever"]["rate_per_hour"] == "100.00"
    assert rows["forever"]["runs_out_at"] == (forecast.until + timedelta(hours=76)).isoformat()
    assert rows["forever"]["projected_used"] is None
    yearly = rows["yearly"]
    end = datetime.fromisoformat(str(yearly["period_end"]))
    hours_left = Decimal((end - forecast.until).total_seconds()) / 3600
    assert yearly["projected_used"] == format((2_400 + 100 * hours_left).quantize(Decimal(1)), "f")


# --- formats -------------------------------------------------------------------------------------


async def test_markdown_and_csv_match_json(ledger: Ledger) -> None:
    await seed(ledger)
    query = ReportQuery.model_validate({**WINDOW, "view": "usage", "group_by": ["user"]})
    shown = await ledger.report(query)
    markdown = reports.formatted(shown, "markdown").text or ""
    lines = markdown.splitlines()
    assert lines[0].startswith("| user | requests | input_tokens |") and lines[1].startswith("|---|")
    assert lines[2].startswith("| alice | 2 | 3000 |") and "| 1.50 |" in lines[2]
    text = reports.formatted(shown, "csv").text or ""
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed == [{k: reports._text(v) for k, v in row.items()} for row in shown.rows]
    assert reports.formatted(shown, "json").text is None
    forecast = reports.formatted(await ledger.report(ReportQuery(view="forecast")), "markdown")
    assert "_no rows_" in (forecast.text or "") and "linear extrapolation" in (forecast.text or "")


# --- the CLI and the MCP tool --------------------------------------------------------------------


def test_cli_report(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def seeded() -> None:
        async with Ledger(await Store.open(dsn, migrate=False)) as ledger:
            await seed(ledger)

    anyio.run(seeded)
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    since, until = (WINDOW["since"].isoformat(), WINDOW["until"].isoformat())
    base = ["report", "--since", since, "--until", until]

    def run(*args: str) -> str:
        assert main([*base, *args]) == 0
        return capsys.readouterr().out

    table = run("--view", "usage", "--group-by", "user")
    assert "alice" in table and "1.50" in table and "TOTAL" in table and "1.65" in table
    assert "4280" in run()  # the summary's total tokens
    top = json.loads(run("--view", "top", "--format", "json", "--user", "bob"))
    assert [row["request_id"] for row in top["rows"]] == ["b1", "b2"]
    assert run("--view", "usage", "--group-by", "model", "--format", "markdown").startswith("| model |")
    out = tmp_path / "usage.csv"
    assert (
        main([*base, "--view", "timeseries", "--bucket", "hour", "--format", "csv", "--output", str(out)])
        == 0
    )
    assert "wrote 3 row(s) of timeseries" in capsys.readouterr().err
    assert [row["requests"] for row in csv.DictReader(io.StringIO(out.read_text()))] == ["2", "0", "2"]
    assert main([*base, "--view", "usage", "--group-by", "colour"]) == 1
    assert "group_by" in capsys.readouterr().err


async def test_mcp_report_tool_new_views(ledger: Ledger) -> None:
    await seed(ledger)
    window = {key: value.isoformat() for key, value in WINDOW.items()}
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        listed = await client.list_tools()
        schema = next(tool.output_schema for tool in listed.tools if tool.name == "report")
        assert schema is not None

        async def call(**arguments: Any) -> dict[str, Any]:
            result = await client.call_tool("report", {**window, **arguments})
            assert not result.is_error, result.content
            assert result.structured_content is not None
            jsonschema.validate(result.structured_content, schema)
            return result.structured_content

        hourly = await call(view="timeseries", bucket="hour")
        assert [row["requests"] for row in hourly["rows"]] == [2, 0, 2]
        top = await call(view="top", limit=1, format="markdown")
        assert top["rows"][0]["request_id"] == "a2" and "| 1.00 |" in top["text"]
        assert (await call(view="recommendations"))["view"] == "recommendations"
        assert (await call(view="accuracy"))["rows"] == []
        forecast = await call(view="forecast", since="24h", until="0s")
        assert forecast["totals"]["method"] == "linear" and forecast["notes"]
        refused = await client.call_tool("report", {"view": "cheapest"})
        assert refused.is_error
    async with Client(build_server(ledger, default_principal=BOB)) as client:
        result = await client.call_tool("report", {**window, "view": "top"})
        assert result.structured_content is not None
        assert {row["user"] for row in result.structured_content["rows"]} == {"bob"}


def test_an_empty_report_says_so_in_the_table(dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from tokenledger.cli import main

    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["report", "--view", "top"]) == 0
    assert capsys.readouterr().out.strip().endswith(": no rows")
