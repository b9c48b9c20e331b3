"""`tokenledger report`: every report view from the shell, as an aligned table, json, markdown or csv.

The same implementation as the `report` tool and `Ledger.report`; it acts as the configured local
principal (TOKENLEDGER_TENANT / TOKENLEDGER_ROLE / TOKENLEDGER_USER; admin of `default` by default).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TextIO, get_args

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tokenledger import reports
from tokenledger.ledger import Ledger
from tokenledger.settings import Settings
from tokenledger.types import Principal

FORMATS = ("table", "json", "markdown", "csv")
FILTERS = ("user", "session", "project", "team", "feature", "endpoint", "model", "provider")
PROGRESS_MIN_ROWS = 1_000  # exports this long show a progress bar (on a terminal)
# Views whose totals row sums the rows above it.
SUMMED_VIEWS = ("usage", "timeseries")


def register(subparsers: Any) -> None:
    report = subparsers.add_parser(
        "report",
        help="usage, timeseries, budgets, forecast, top calls, recommendations, accuracy, chargeback",
        description="One report view as an aligned table (default), json, markdown or csv.",
    )
    report.add_argument("--view", default="summary", choices=get_args(reports.View))
    report.add_argument("--since", help="ISO timestamp with offset, or a duration back (90m, 24h, 7d)")
    report.add_argument("--until", help="ISO timestamp with offset, or a duration back; default now")
    report.add_argument("--group-by", default="", help="comma-separated: " + " ".join(FILTERS))
    report.add_argument("--bucket", help="hour, day, week or month (timeseries: default day)")
    report.add_argument("--timezone", default="UTC", help="IANA zone of the buckets and of --period")
    report.add_argument("--period", help="chargeback: the calendar month, YYYY-MM (default: this month)")
    report.add_argument(
        "--by", help="chargeback: the cost centres, team project feature or user (default team)"
    )
    for key in FILTERS:
        report.add_argument(f"--{key}", help=f"only this {key}")
    report.add_argument("--limit", default="50", help="rows of usage and top (1 .. 10000)")
    report.add_argument(
        "--currency", help="also show money in this ISO 4217 currency, at the tenant's rates (tokenledger fx)"
    )
    report.add_argument("--format", default="table", choices=FORMATS)
    report.add_argument("--output", type=Path, help="write to this file instead of stdout")
    report.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    query = reports.ReportQuery.model_validate(
        {
            **{key: value for key in FILTERS if (value := getattr(args, key)) is not None},
            "view": args.view,
            "since": args.since,
            "until": args.until,
            "group_by": [part.strip() for part in args.group_by.split(",") if part.strip()],
            "bucket": args.bucket,
            "timezone": args.timezone,
            "limit": args.limit,
            **{
                key: value
                for key in ("period", "by", "currency")
                if (value := getattr(args, key)) is not None
            },
        }
    )

    async def run() -> reports.Report:
        settings = Settings.from_env()
        principal = Principal(
            tenant_id=settings.stdio_tenant, role=settings.stdio_role, user=settings.stdio_user
        )
        async with await Ledger.open(settings) as ledger:
            return await ledger.report(query, principal)

    report = anyio.run(run)
    if args.output is None:
        write(report, args.format, sys.stdout, interactive=sys.stdout.isatty())
        return 0
    with args.output.open("w", encoding="utf-8", newline="") as out:
        rows = write(report, args.format, out, interactive=False)
    print(f"wrote {rows} row(s) of {report.view} to {args.output}", file=sys.stderr)
    return 0


def write(report: reports.Report, fmt: str, out: TextIO, *, interactive: bool) -> int:
    """Write the report to `out` in `fmt`; returns the number of rows written."""
    rows = reports.shown_rows(report)
    if fmt == "table":
        console = Console(file=out, width=None if interactive else 10_000, highlight=False)
        grid = table(report)
        # A table without rows has no columns either, and rich prints nothing for it: say so instead.
        console.print(grid if rows else f"{grid.title}: no rows")
        for note in report.notes:
            console.print(note, style="dim", soft_wrap=True)
    elif fmt == "json":
        out.write(report.model_dump_json(indent=2) + "\n")
    elif fmt == "csv":
        for line in _with_progress(reports.csv_lines(rows), len(rows) + 1, "csv"):
            out.write(line)
    else:
        out.write(reports.render(rows, "markdown", notes=report.notes) or "")
    return len(rows)


def table(report: reports.Report) -> Table:
    """The report as a rich table: its rows, then a TOTAL row for summed views."""
    rows = reports.shown_rows(report)
    title: str = report.view
    if report.since and report.until:
        since, until = (moment.isoformat(timespec="seconds") for moment in (report.since, report.until))
        title += f" from {since} to {until}"
    grid = Table(title=title, title_justify="left", header_style="bold")
    columns = reports.columns_of(rows)
    for column in columns:
        numeric = any(_numeric(row.get(column)) for row in rows)
        grid.add_column(column, justify="right" if numeric else "left", overflow="fold")
    converted = _converted_columns(report, columns)
    for row in rows:
        # Text, not str: rich would read "[link=...]" in a stored name as its own markup.
        grid.add_row(*(Text(_shown(row.get(column), column in converted)) for column in columns))
    if report.view in SUMMED_VIEWS and report.totals and rows:
        grid.add_section()
        totals = report.totals
        cells = [
            _shown(totals.get(column), column in converted) if column in totals else "" for column in columns
        ]
        cells[0] = "TOTAL"
        grid.add_row(*cells, style="bold")
    return grid


def _numeric(value: reports.Cell) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


def _converted_columns(report: reports.Report, columns: list[str]) -> set[str]:
    """The columns holding money converted to the report's currency: a table rounds them to 2 decimals."""
    if report.currency is None:
        return set()
    suffix = "_" + report.currency.lower()
    return {column for column in columns if column.endswith(suffix) or column.endswith(suffix + "_exact")}


def _shown(value: reports.Cell, money: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if money and isinstance(value, str):
        return f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):f}"
    return str(value)


def _with_progress(lines: Iterable[str], total: int, label: str) -> Iterator[str]:
    """The lines, with a progress bar on stderr when the export is long and stderr is a terminal."""
    stderr = Console(stderr=True)
    if total < PROGRESS_MIN_ROWS or not stderr.is_terminal:
        yield from lines
        return
    columns = (TextColumn(f"writing {label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total)
        for line in lines:
            yield line
            progress.advance(task)
