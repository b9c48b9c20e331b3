"""Reports over ledger results: rows, totals, and their markdown and CSV renderings.

Plain functions over `Ledger` answers (`UsageResult`, `Budget`): no I/O. Money stays exact and travels as a
decimal string; tokens are integers; timestamps are ISO 8601 with their offset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field

from tokenledger.types import Budget, Model, UsageResult, UsageRow

__all__ = ["Report", "budgets_report", "render", "summary_totals", "usage_report"]

View = Literal["summary", "usage", "budgets"]
Format = Literal["json", "markdown", "csv"]
Cell = str | int | float | bool | None

_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_output_tokens",
    "total_tokens",
)
_BUDGET_COLUMNS = (
    "name",
    "scope",
    "unit",
    "limit",
    "period",
    "enforcement",
    "used",
    "reserved",
    "remaining",
    "percent_used",
    "status",
    "resets_at",
)


class Report(Model):
    """A report: its rows, totals and, for markdown or csv, the rendered text."""

    view: View
    format: Format = "json"
    since: datetime | None = None
    until: datetime | None = None
    rows: list[dict[str, Cell]] = Field(default_factory=list)
    totals: dict[str, Cell] | None = None
    text: str | None = None


def _cell(value: object) -> Cell:
    """A JSON-ready cell: money as a plain decimal string, times in ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def usage_row(row: UsageRow) -> dict[str, Cell]:
    """One grouped usage row, its group keys and bucket first."""
    cells: dict[str, Cell] = {key: value for key, value in row.keys.items()}
    if row.bucket is not None:
        cells["bucket"] = _cell(row.bucket)
    cells["requests"] = row.requests
    cells.update({name: getattr(row, name) for name in _TOKEN_FIELDS})
    cells["cost_usd"] = _cell(row.cost_usd)
    cells["unpriced_requests"] = row.unpriced_requests
    cells["errors"] = row.errors
    return cells


def summary_totals(totals: UsageRow) -> dict[str, Cell]:
    """Requests, tokens by type, cost, success rate and average tokens per request."""
    cells = usage_row(totals.model_copy(update={"keys": {}, "bucket": None}))
    requests = totals.requests
    cells["success_rate"] = round((requests - totals.errors) / requests, 4) if requests else None
    cells["avg_tokens_per_request"] = round(totals.total_tokens / requests, 1) if requests else None
    return cells


def usage_report(result: UsageResult, view: Literal["summary", "usage"], fmt: Format = "json") -> Report:
    """The summary (totals only) or usage (grouped rows and totals) view of a usage answer."""
    totals = summary_totals(result.totals)
    rows = [] if view == "summary" else [usage_row(row) for row in result.rows]
    shown = [totals] if view == "summary" else rows
    return Report(
        view=view,
        format=fmt,
        since=result.since,
        until=result.until,
        rows=rows,
        totals=totals,
        text=render(shown, fmt),
    )


def budget_row(budget: Budget) -> dict[str, Cell]:
    state = budget.state
    return {column: _cell(getattr(state, column)) for column in _BUDGET_COLUMNS}


def budgets_report(budgets: Sequence[Budget], fmt: Format = "json") -> Report:
    """The tenant's budgets with their live state in the current period."""
    rows = [budget_row(budget) for budget in budgets]
    exceeded = sum(1 for budget in budgets if budget.state.status == "exceeded")
    warning = sum(1 for budget in budgets if budget.state.status == "warning")
    totals: dict[str, Cell] = {"budgets": len(rows), "warning": warning, "exceeded": exceeded}
    return Report(view="budgets", format=fmt, rows=rows, totals=totals, text=render(rows, fmt))


def render(rows: Sequence[dict[str, Cell]], fmt: Format) -> str | None:
    """Rows as a markdown table or CSV (None for json); columns in first-seen order."""
    if fmt == "json":
        return None
    columns = list(dict.fromkeys(column for row in rows for column in row))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(row.get(column)) for column in columns] for row in rows)
        return out.getvalue()
    if not columns:
        return "_no rows_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_markdown(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _markdown(value: Cell) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")
