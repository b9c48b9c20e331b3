"""Every table the CLI prints, rendered at 80 and 120 columns: no number, date or name is split."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from tokenledger import reports
from tokenledger.cli import report_cmd, tables
from tokenledger.cli.ledger_cmds import budgets_grid, keys_grid, usage_grid
from tokenledger.ledger import Ledger
from tokenledger.types import BudgetSpec, Principal, TrackRequest, UsageQuery

pytestmark = pytest.mark.anyio
WIDTHS = (80, 120)


def render(grid: tables.Grid, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    tables.show(console, grid)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return [line.rstrip() for line in output.splitlines()]


def assert_readable(grid: tables.Grid, width: int) -> list[str]:
    """Lines fit the width, headers are words, and every value that must not wrap is whole on a line
    (or its column is named as not shown)."""
    lines = render(grid, width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    note = next((number for number, line in enumerate(lines) if line.startswith("not shown at this")), None)
    hidden = " ".join(lines[note:]) if note is not None else ""
    for index, column in enumerate(grid.columns):
        assert "_" not in column.header, column.header
        if column.kind == "prose" or column.header in hidden:
            continue
        for row in [*grid.rows, *([grid.totals] if grid.totals else [])]:
            cell = row[index]
            assert any(cell in line for line in lines), (
                f"{column.header} {cell!r} split at {width}:\n" + "\n".join(lines)
            )
    return lines


async def seeded(ledger: Ledger) -> None:
    day = datetime.now(UTC) - timedelta(hours=3)
    users = ("alice-from-the-search-team", "bob", "carol.long.user.name")
    for number in range(9):
        await ledger.track_usage(
            TrackRequest(
                model=("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5")[number % 3],
                provider=("openai", "openai", "anthropic")[number % 3],
                user=users[number % 3],
                feature="chatbot-conversations",
                input_tokens=120_000 + number,
                output_tokens=20_000,
                cache_read_input_tokens=4_000,
                cache_creation_input_tokens=1_000,
                cost_usd=Decimal("12.345678"),
                occurred_at=day + timedelta(minutes=number),
                request_id=f"request-{number:04d}",
            )
        )
    await ledger.set_budget(
        BudgetSpec(
            name="team-search-daily",
            scope="team:search",
            limit=Decimal(2_000_000),
            period="day",
            timezone="Asia/Tokyo",
            tokens_per_minute=200_000,
            requests_per_minute=60,
        )
    )
    await ledger.set_budget(
        BudgetSpec(
            name="monthly-usd", unit="usd", limit=Decimal(1000), hard_limit=Decimal(1200), period="month"
        )
    )


async def test_every_report_view_fits_80_and_120_columns(ledger: Ledger) -> None:
    await seeded(ledger)
    views = ("summary", "usage", "timeseries", "budgets", "forecast", "top", "recommendations", "accuracy")
    shown = 0
    for view in views:
        query = {"view": view, "since": "24h", "group_by": ["user", "model"] if view == "usage" else []}
        report = await ledger.report(reports.ReportQuery.model_validate(query), Principal())
        if not reports.shown_rows(report):
            continue
        shown += 1
        grid = report_cmd.table(report, "Europe/Paris")
        for width in WIDTHS:
            assert_readable(grid, width)
    assert shown >= 6
    usage = await ledger.report(reports.ReportQuery(view="usage", group_by=["user"]), Principal())
    headers = [column.header for column in report_cmd.table(usage).columns]
    assert "Cache write tokens" in headers and "cache_creation_input_tokens" not in headers


async def test_budget_list_shows_rates_and_resets_in_the_budgets_zone(ledger: Ledger) -> None:
    await seeded(ledger)
    grid = budgets_grid(await ledger.list_budgets(Principal()))
    for width in WIDTHS:
        assert_readable(grid, width)
    wide = "\n".join(render(grid, 200))
    headers = [column.header for column in grid.columns]
    tokyo = grid.rows[[row[0] for row in grid.rows].index("team-search-daily")]
    assert tokyo[headers.index("RPM")] == "60" and tokyo[headers.index("TPM")] == "200000"
    resets = tokyo[headers.index("Resets")]
    midnight = (datetime.now(ZoneInfo("Asia/Tokyo")) + timedelta(days=1)).strftime("%Y-%m-%d 00:00 JST")
    assert resets == midnight and resets in wide
    assert "RPM" in render(grid, 120)[0]  # rates survive at 120 columns


async def test_usage_without_groups_keeps_its_requests_column(ledger: Ledger) -> None:
    await seeded(ledger)
    for query in (UsageQuery(), UsageQuery(group_by=["user", "feature"]), UsageQuery(bucket="hour")):
        grid = usage_grid(await ledger.usage(query, Principal()), query)
        for width in WIDTHS:
            lines = assert_readable(grid, width)
        total = next(line for line in lines if line.startswith("TOTAL")).split()
        assert total[:2] == ["TOTAL", "9"], lines  # the requests column holds the count, TOTAL its label


async def test_keys_table(ledger: Ledger) -> None:
    for user in ("alice-from-the-search-team", "bob"):
        await ledger.create_key(role="member", user=user, name="a key for the nightly batch jobs")
    await ledger.create_key(role="viewer", tenant="acme")
    keys = await ledger.list_keys(Principal())
    assert len(keys) == 2
    for width in WIDTHS:
        lines = assert_readable(keys_grid(keys, "default"), width)
    assert lines[0] == "keys of tenant 'default'"


def test_a_table_too_wide_for_its_kept_columns_becomes_header_value_lines() -> None:
    columns = [tables.Column(f"Column {number}", "number") for number in range(12)]
    grid = tables.Grid(columns=columns, rows=[[str(10**9 + number) for number in range(12)]])
    lines = assert_readable(grid, 80)
    assert lines[0].split() == ["Column", "0:", "1000000000"]
