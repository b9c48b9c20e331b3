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

from tokenledger import reports
from tokenledger.cli import tables
from tokenledger.cli.ledger_cmds import check_output_path, check_window
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
    report.add_argument(
        "--group-by", default="", help="comma-separated: " + " ".join(FILTERS) + " requested_model"
    )
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
    check_window(args)
    if args.output is not None:
        check_output_path(args.output, "--output")
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
        write(report, args.format, sys.stdout, timezone=args.timezone)
        return 0
    with args.output.open("w", encoding="utf-8", newline="") as out:
        rows = write(report, args.format, out, timezone=args.timezone)
    print(f"wrote {rows} row(s) of {report.view} to {args.output}", file=sys.stderr)
    return 0


def write(report: reports.Report, fmt: str, out: TextIO, *, timezone: str | None = None) -> int:
    """Write the report to `out` in `fmt` (a table fits a terminal's width; elsewhere COLUMNS, else
    any width); returns the number of rows written."""
    rows = reports.shown_rows(report)
    if fmt == "table":
        console = tables.console(out)
        grid = table(report, timezone)
        if rows:
            tables.show(console, grid)
        else:  # an empty table would print nothing: say so instead
            console.print(f"{grid.title}: no rows", soft_wrap=True)
    elif fmt == "json":
        out.write(report.model_dump_json(indent=2) + "\n")
    elif fmt == "csv":
        for line in _with_progress(reports.csv_lines(rows), len(rows) + 1, "csv"):
            out.write(line)
    else:
        out.write(reports.render(rows, "markdown", notes=report.notes) or "")
    return len(rows)


# Per view, the columns dropped first when a table is too wide (the first named goes first).
DROPPED_FIRST = {
    "usage": ("unpriced_requests", "reasoning_output_tokens", "cache_creation_input_tokens",
              "cache_read_input_tokens", "errors", "input_tokens", "output_tokens"),
    "timeseries": ("unpriced_requests", "reasoning_output_tokens", "cache_creation_input_tokens",
                   "cache_read_input_tokens", "errors", "input_tokens", "output_tokens"),
    "budgets": ("projected_percent", "projected_used", "reserved", "enforcement", "unit", "used",
                "percent_used", "resets_at"),
    "forecast": ("rate_per_hour", "window_use", "reserved", "used", "unit", "projected_percent",
                 "period_end", "remaining"),
    "top": ("usage_id", "request_id", "latency_ms", "reasoning_output_tokens",
            "cache_creation_input_tokens", "cache_read_input_tokens", "endpoint", "feature", "team",
            "session", "project", "provider", "status", "input_tokens", "output_tokens"),
    "accuracy": ("under_estimates", "over_estimates", "worst_error_percent", "worst_error_tokens"),
}  # fmt: skip


def table(report: reports.Report, timezone: str | None = None) -> tables.Grid:
    """The report as a table: its rows, then a TOTAL row for summed views; a summary (one row) as
    `Header: value` lines. Times show in `timezone` when given."""
    rows = reports.shown_rows(report)
    title: str = report.view
    if report.since and report.until:
        title += f" from {tables.moment(report.since, timezone)} to {tables.moment(report.until, timezone)}"
    names = reports.columns_of(rows)
    dropped = DROPPED_FIRST.get(report.view, ())
    money = _converted_columns(report, names)
    columns = [
        tables.Column(
            _header(name, report.currency) if name in money else tables.header(name),
            _kind(name, rows),
            drop=len(dropped) - dropped.index(name) if name in dropped else 0,
        )
        for name in names
    ]
    cells = [[_shown(row.get(name), name, timezone, name in money) for name in names] for row in rows]
    totals = None
    if report.view in SUMMED_VIEWS and report.totals and rows:
        summed = report.totals
        totals = [
            _shown(summed.get(name), name, timezone, name in money) if name in summed else ""
            for name in names
        ]
        totals[0] = "TOTAL"
    if report.view == "summary":  # one row of many fields: reads best as one field a line
        columns = [tables.Column(column.header, column.kind, drop=0) for column in columns]
    return tables.Grid(columns=columns, rows=cells, title=title, totals=totals, notes=list(report.notes))


def _kind(name: str, rows: list[dict[str, reports.Cell]]) -> tables.Kind:
    if name in tables.DATES:
        return "date"
    if name in tables.PROSE:
        return "prose"
    return "number" if any(_numeric(row.get(name)) for row in rows) else "text"


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


def _header(name: str, currency: str | None) -> str:
    """A converted money column's header: `cost_eur` -> `Cost (EUR)`."""
    code = str(currency)
    base = name.replace(f"_{code.lower()}", "")
    return f"{tables.header(base)} ({code})"


def _shown(value: reports.Cell, name: str = "", timezone: str | None = None, money: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name in tables.DATES and isinstance(value, str):
        return tables.moment(value, timezone)
    if money and isinstance(value, str):  # converted money: 2 decimals, half up (json keeps every digit)
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
