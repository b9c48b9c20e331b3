"""Tables a person reads in a terminal of 80 to 120 columns (and wider), with rich.

A value is never split: numbers, money, dates and identifiers never wrap, only prose does (at spaces).
When the columns do not fit the width, the optional ones are dropped in their stated order (and the
table says which); when even the kept ones do not fit, each row is shown as `Header: value` lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TextIO
from zoneinfo import ZoneInfo

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

Kind = Literal["text", "number", "date", "prose"]

# Headers a person reads, for the field names reports and records use.
HEADERS: Final[dict[str, str]] = {
    "input_tokens": "Input tokens",
    "output_tokens": "Output tokens",
    "cache_read_input_tokens": "Cache read tokens",
    "cache_creation_input_tokens": "Cache write tokens",
    "reasoning_output_tokens": "Reasoning tokens",
    "total_tokens": "Total tokens",
    "cost_usd": "Cost (USD)",
    "unpriced_requests": "Unpriced requests",
    "success_rate": "Success rate",
    "avg_tokens_per_request": "Tokens per request",
    "percent_used": "Used %",
    "resets_at": "Resets",
    "projected_used": "Projected use",
    "projected_percent": "Projected %",
    "window_use": "Use in window",
    "rate_per_hour": "Rate per hour",
    "period_end": "Period ends",
    "runs_out_at": "Runs out",
    "occurred_at": "When",
    "latency_ms": "Latency (ms)",
    "request_id": "Request id",
    "usage_id": "Usage id",
    "saving_usd": "Saving (USD)",
    "mean_error_tokens": "Mean error (tokens)",
    "mean_abs_error_percent": "Mean error %",
    "worst_error_tokens": "Worst error (tokens)",
    "worst_error_percent": "Worst error %",
    "over_estimates": "Over-estimates",
    "under_estimates": "Under-estimates",
    "running_out": "Running out",
    "window_hours": "Window (hours)",
}
# Columns whose text reads as sentences: the only ones that may wrap, at spaces.
PROSE: Final = frozenset({"suggestion", "evidence", "name", "description"})
DATES: Final = frozenset({"bucket", "resets_at", "period_end", "runs_out_at", "occurred_at", "created_at"})
UNLIMITED_WIDTH: Final = 10_000
_GAP: Final = 2  # columns are separated by two spaces (one of padding on each side)


def header(column: str) -> str:
    """The words a person reads for a field name (`cache_creation_input_tokens` → `Cache write tokens`)."""
    return HEADERS.get(column) or column.replace("_", " ").capitalize()


@dataclass(frozen=True)
class Column:
    header: str
    kind: Kind = "text"
    drop: int = 0  # 0: always shown; otherwise dropped when too wide, the highest number first


@dataclass
class Grid:
    """What a table shows: its columns, rows of text cells and an optional totals row."""

    columns: list[Column]
    rows: list[list[str]]
    title: str | None = None
    totals: list[str] | None = None
    notes: list[str] = field(default_factory=list)


def console(out: TextIO | None = None) -> Console:
    """A console for `out` (stdout by default): the terminal's width on a terminal; elsewhere (a pipe,
    a file) COLUMNS if set, else no limit, so that no line is ever cut."""
    stream = out or sys.stdout
    width: int | None = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else UNLIMITED_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def show(out: Console, grid: Grid) -> None:
    """Print `grid` as a table that fits `out.width`, else as `Header: value` blocks."""
    shown = list(range(len(grid.columns)))
    while _min_width(grid, shown) > out.width:
        optional = [index for index in shown if grid.columns[index].drop]
        if not optional:
            _show_records(out, grid)
            return
        shown.remove(max(optional, key=lambda index: grid.columns[index].drop))
    out.print(_table(grid, shown, out.width))
    hidden = [grid.columns[index].header for index in range(len(grid.columns)) if index not in shown]
    if hidden:
        out.print(Text(f"not shown at this width: {', '.join(hidden)} (--json shows every field)", "dim"))
    for note in grid.notes:
        out.print(Text(note, "dim"))


def _min_width(grid: Grid, shown: Sequence[int]) -> int:
    """The narrowest the table can be without splitting a value."""
    return sum(_widths(grid, index)[0] for index in shown) + _GAP * (len(shown) - 1)


def _widths(grid: Grid, index: int) -> tuple[int, int]:
    """A column's least and natural width: whole cells for every kind but prose (whose longest word is
    its least); a header may wrap between its words."""
    column = grid.columns[index]
    cells = [row[index] for row in grid.rows] + ([grid.totals[index]] if grid.totals else [])
    least = max((_longest_word(cell) for cell in [column.header, *cells]), default=1)
    natural = max((cell_len(cell) for cell in [column.header, *cells]), default=1)
    if column.kind != "prose":
        least = max([least, *(cell_len(cell) for cell in cells)])
    return least, natural


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def _fitted(grid: Grid, shown: Sequence[int], width: int) -> dict[int, int | None]:
    """Column widths for a table that fits `width`: none fixed when every column fits its natural
    width; else each column at its least, the room left given to the first ones up to their natural
    width (headers then wrap less), prose taking what remains."""
    ranges = {index: _widths(grid, index) for index in shown}
    gaps = _GAP * (len(shown) - 1)
    if sum(natural for _, natural in ranges.values()) + gaps <= width:
        return dict.fromkeys(shown)
    spare = width - gaps - sum(least for least, _ in ranges.values())
    fixed: dict[int, int | None] = {}
    for index in shown:
        least, natural = ranges[index]
        if grid.columns[index].kind == "prose":
            fixed[index] = None
            continue
        extra = min(spare, natural - least)
        fixed[index] = least + extra
        spare -= extra
    return fixed


def _table(grid: Grid, shown: Sequence[int], width: int) -> Table:
    table = Table(
        title=grid.title,
        title_justify="left",
        title_style="bold",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    widths = _fitted(grid, shown, width)
    for index in shown:
        column = grid.columns[index]
        table.add_column(
            Text(column.header, no_wrap=False),  # a header may wrap between words; its values never do
            justify="right" if column.kind == "number" else "left",
            no_wrap=column.kind != "prose",
            overflow="fold",
            width=widths[index],
        )
    for row in grid.rows:
        table.add_row(*(Text(row[index]) for index in shown))
    if grid.totals is not None:
        table.add_section()
        table.add_row(*(Text(grid.totals[index], "bold") for index in shown))
    return table


def _show_records(out: Console, grid: Grid) -> None:
    """Each row as `Header: value` lines, a blank line between rows: for tables too wide to fit."""
    if grid.title:
        out.print(Text(grid.title, "bold"))
    records = [*grid.rows, *([grid.totals] if grid.totals is not None else [])]
    width = max(cell_len(column.header) for column in grid.columns) + 1
    for number, row in enumerate(records):
        if number:
            out.print()
        for column, cell in zip(grid.columns, row, strict=True):
            line = Text(f"{column.header + ':':<{width}} ", "bold")
            line.append(cell, style="" if row is not grid.totals else "bold")
            out.print(line, no_wrap=column.kind != "prose", overflow="fold", crop=False)
    for note in grid.notes:
        out.print(Text(note, "dim"))


# --- cells ----------------------------------------------------------------------------------------


def moment(value: datetime | str | None, timezone: str | None = None) -> str:
    """A time to the minute, in `timezone` when given (`2026-12-01 00:00 CET`), else with its offset."""
    if value is None:
        return "-"
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if timezone:
        when = when.astimezone(ZoneInfo(timezone))
        return when.strftime("%Y-%m-%d %H:%M ") + (when.tzname() or timezone)
    return when.strftime("%Y-%m-%d %H:%M") + (when.strftime(" %z") if when.tzinfo else "")
