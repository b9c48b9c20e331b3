"""Reports over ledger results: rows, totals, notes, and their markdown and CSV renderings.

Plain functions over what `Ledger` hands over (`UsageResult`, `Budget`, store rows as dicts) and the
catalog: no I/O. Money stays exact and travels as a decimal string; tokens are integers; timestamps are
ISO 8601 with their offset. One implementation serves the `report` tool, `tokenledger report` and the
library (`Ledger.report`).

Views: `summary`, `usage`, `timeseries`, `budgets`, `forecast`, `top`, `recommendations`, `accuracy`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field

from tokenledger.catalog import Catalog, cost
from tokenledger.errors import UnknownModel
from tokenledger.types import Budget, ChatMessage, Model, UsageQuery, UsageResult, UsageRow

__all__ = [
    "FORECAST_WINDOW",
    "Report",
    "ReportQuery",
    "accuracy_report",
    "budgets_report",
    "csv_lines",
    "forecast_report",
    "formatted",
    "prompt_hash",
    "recommendations_report",
    "render",
    "summary_totals",
    "timeseries_report",
    "top_report",
    "usage_report",
]

View = Literal["summary", "usage", "timeseries", "budgets", "forecast", "top", "recommendations", "accuracy"]
Format = Literal["json", "markdown", "csv"]
Cell = str | int | float | bool | None

# The default window of the recent rate a forecast extrapolates (`since` overrides it).
FORECAST_WINDOW = timedelta(hours=24)

# Recommendation thresholds: stated in each recommendation's evidence.
PROMPT_HEAVY_RATIO = 20  # input tokens per output token
PROMPT_HEAVY_TRIM = Decimal("0.5")  # the share of input a trimmed context saves
CACHE_MIN_AVG_INPUT = 1024  # providers cache prompt prefixes of 1,024 tokens and more
CACHE_LOW_SHARE = Decimal("0.1")  # cache reads below this share of input count as low use
CACHE_ASSUMED_PREFIX = Decimal("0.5")  # the share of input assumed to be a stable, cacheable prefix
NEAR_LIMIT_SHARE = Decimal("0.9")  # of the context window
NEAR_LIMIT_TARGET = Decimal("0.75")  # trim calls near the limit down to this share of the window
ERROR_RATE = Decimal("0.05")

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
_TOP_COLUMNS = (
    "occurred_at",
    "user",
    "session",
    "project",
    "team",
    "feature",
    "endpoint",
    "provider",
    "model",
    *_TOKEN_FIELDS,
    "cost_usd",
    "status",
    "latency_ms",
    "request_id",
    "usage_id",
)


class ReportQuery(UsageQuery):
    """A usage query (window, filters, grouping) and the view to show."""

    view: View = "summary"


class Report(Model):
    """A report: its rows, totals, notes (how numbers were made) and, for markdown or csv, the text."""

    view: View
    format: Format = "json"
    since: datetime | None = None
    until: datetime | None = None
    rows: list[dict[str, Cell]] = Field(default_factory=list)
    totals: dict[str, Cell] | None = None
    notes: list[str] = Field(default_factory=list)
    text: str | None = None


# --- cells ---------------------------------------------------------------------------------------


def _cell(value: object) -> Cell:
    """A JSON-ready cell: money as a plain decimal string, times in ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _money(value: Decimal) -> str:
    """Money rounded to a millionth of a dollar for sums that are estimates, not bills."""
    return format(value.quantize(Decimal("0.000001")), "f")


def _percent(part: Decimal | int, whole: Decimal | int) -> float | None:
    return round(float(100 * Decimal(part) / Decimal(whole)), 2) if whole else None


# --- summary, usage, timeseries ------------------------------------------------------------------


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
    report = Report(view=view, since=result.since, until=result.until, rows=rows, totals=totals)
    return formatted(report, fmt)


def timeseries_report(
    result: UsageResult, buckets: Sequence[datetime], bucket: str, timezone: str, fmt: Format = "json"
) -> Report:
    """Usage per time bucket in order; without group keys every bucket of the window has a row (zeros
    where nothing happened)."""
    grouped = any(row.keys for row in result.rows)
    rows = sorted(result.rows, key=lambda row: (row.bucket or datetime.min, *map(str, row.keys.values())))
    if not grouped:
        found = {row.bucket: row for row in rows}
        zero = result.totals.model_copy(
            update={name: 0 for name in UsageRow.model_fields if name not in ("keys", "bucket")}
        )
        zero = zero.model_copy(update={"cost_usd": Decimal(0)})
        rows = [
            found.get(start) or zero.model_copy(update={"bucket": start, "keys": {}}) for start in buckets
        ]
    report = Report(
        view="timeseries",
        since=result.since,
        until=result.until,
        rows=[usage_row(row) for row in rows],
        totals=summary_totals(result.totals),
        notes=[f"buckets: {bucket} in {timezone}; a bucket starts at its local {bucket} boundary"],
    )
    return formatted(report, fmt)


# --- budgets and forecasts -----------------------------------------------------------------------


def _projected(budget: Budget, now: datetime) -> Decimal | None:
    """Use at the end of a calendar period if the period-to-date rate holds; None for rolling
    windows and `total`, which have no end to project to."""
    state = budget.state
    if state.period in ("total", "24h", "7d", "30d") or state.period_start is None or state.resets_at is None:
        return None
    elapsed = (now - state.period_start).total_seconds()
    length = (state.resets_at - state.period_start).total_seconds()
    if elapsed <= 0 or length <= 0:
        return None
    return state.used * Decimal(length) / Decimal(elapsed)


def budget_row(budget: Budget, now: datetime | None = None) -> dict[str, Cell]:
    state = budget.state
    cells = {column: _cell(getattr(state, column)) for column in _BUDGET_COLUMNS}
    projected = _projected(budget, now) if now is not None else None
    cells["projected_used"] = None if projected is None else _amount(projected, state.unit)
    cells["projected_percent"] = None if projected is None else _percent(projected, state.limit)
    return cells


def budgets_report(budgets: Sequence[Budget], fmt: Format = "json", now: datetime | None = None) -> Report:
    """The tenant's budgets with their live state in the current period and, given `now`, the use
    projected to the period's end at the period-to-date rate."""
    rows = [budget_row(budget, now) for budget in budgets]
    exceeded = sum(1 for budget in budgets if budget.state.status == "exceeded")
    warning = sum(1 for budget in budgets if budget.state.status == "warning")
    totals: dict[str, Cell] = {"budgets": len(rows), "warning": warning, "exceeded": exceeded}
    notes = (
        ["projected_used: period-to-date use x period length / time elapsed (calendar periods only)"]
        if now is not None
        else []
    )
    return formatted(Report(view="budgets", rows=rows, totals=totals, notes=notes), fmt)


def _amount(value: Decimal, unit: str) -> str:
    """Tokens as whole numbers, USD to a millionth of a dollar (projections, not bills)."""
    if unit == "tokens":
        return format(value.quantize(Decimal(1)), "f")
    return _money(value)


def forecast_report(
    budgets: Sequence[Budget],
    window_use: Mapping[str, Decimal],
    since: datetime,
    until: datetime,
    fmt: Format = "json",
) -> Report:
    """Per budget: the rate of the window [since, until), the use projected at the period's end at that
    rate, and the moment the budget runs out at that rate (None: not within the period).

    `window_use` maps a budget name to what its scope used in the window, in the budget's unit.
    """
    hours = Decimal((until - since).total_seconds()) / 3600
    method = (
        f"linear extrapolation of the rate over the last {hours.normalize():f} h "
        f"({since.isoformat()} to {until.isoformat()}): projected_used = used + rate x hours to period_end; "
        "runs_out_at = until + remaining / rate, if before period_end"
    )
    rows: list[dict[str, Cell]] = []
    for budget in budgets:
        state = budget.state
        used_in_window = window_use.get(state.name, Decimal(0))
        rate = used_in_window / hours if hours > 0 else Decimal(0)
        rolling = _ROLLING_HOURS.get(state.period)
        ends_at = None if state.period == "total" or rolling is not None else state.resets_at
        projected: Decimal | None = None
        if rolling is not None:  # a rolling window never ends: its use over one full window at this rate
            projected = rate * rolling
        elif ends_at is not None:
            projected = state.used + rate * Decimal(max((ends_at - until).total_seconds(), 0)) / 3600
        runs_out_at: datetime | None = None
        if state.remaining <= 0:
            runs_out_at = until
        elif rate > 0:
            hours_left = state.remaining / rate
            horizon = (ends_at - until).total_seconds() / 3600 if ends_at is not None else _HORIZON_HOURS
            # None: the period resets first (or, without a period end, not within a century).
            runs_out_at = until + timedelta(hours=float(hours_left)) if hours_left < horizon else None
        rows.append(
            {
                "name": state.name,
                "scope": state.scope,
                "unit": state.unit,
                "limit": _cell(state.limit),
                "used": _cell(state.used),
                "reserved": _cell(state.reserved),
                "remaining": _cell(state.remaining),
                "window_use": _cell(used_in_window),
                "rate_per_hour": _amount(rate, state.unit) if state.unit == "usd" else _rate(rate),
                "period_end": _cell(ends_at),
                "projected_used": None if projected is None else _amount(projected, state.unit),
                "projected_percent": None if projected is None else _percent(projected, state.limit),
                "runs_out_at": _cell(runs_out_at),
            }
        )
    totals: dict[str, Cell] = {
        "budgets": len(rows),
        "running_out": sum(1 for row in rows if row["runs_out_at"] is not None),
        "method": "linear",
        "window_hours": float(hours),
    }
    report = Report(view="forecast", since=since, until=until, rows=rows, totals=totals, notes=[method])
    return formatted(report, fmt)


def _rate(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01")), "f")


_HORIZON_HOURS = 100 * 365 * 24
_ROLLING_HOURS = {"24h": Decimal(24), "7d": Decimal(168), "30d": Decimal(720)}


# --- top requests --------------------------------------------------------------------------------


def top_report(
    rows: Sequence[Mapping[str, Any]], since: datetime, until: datetime, fmt: Format = "json"
) -> Report:
    """The most expensive requests of the window, most expensive first (unpriced ones last)."""
    cells = [
        {column: _cell(row.get(column, row.get(f"{column}_id"))) for column in _TOP_COLUMNS} for row in rows
    ]
    total = sum((Decimal(row["cost_usd"]) for row in rows if row["cost_usd"] is not None), Decimal(0))
    totals: dict[str, Cell] = {"requests": len(cells), "cost_usd": _cell(total)}
    return formatted(Report(view="top", since=since, until=until, rows=cells, totals=totals), fmt)


# --- estimate accuracy ---------------------------------------------------------------------------


def accuracy_report(
    rows: Sequence[Mapping[str, Any]], since: datetime, until: datetime, fmt: Format = "json"
) -> Report:
    """Pre-flight input counts (the reservation's input tokens) against the input the provider
    reported (uncached + cache read + cache write), per model and the method that counted them (exact,
    estimate, provider, pg_tiktoken). Error = count - actual: positive over-estimates, negative
    under-estimates; percent of the actual."""
    cells: list[dict[str, Cell]] = []
    for row in rows:
        worst_tokens = (
            row["max_error"] if abs(row["max_error"]) >= abs(row["min_error"]) else row["min_error"]
        )
        high, low = row["max_error_percent"], row["min_error_percent"]
        worst_percent = high if low is None or (high is not None and abs(high) >= abs(low)) else low
        cells.append(
            {
                "model": row["model"],
                "method": row["method"],
                "samples": row["samples"],
                "mean_error_tokens": _cell(row["mean_error_tokens"]),
                "mean_abs_error_percent": None
                if row["mean_abs_error_percent"] is None
                else float(row["mean_abs_error_percent"]),
                "worst_error_tokens": worst_tokens,
                "worst_error_percent": None if worst_percent is None else float(worst_percent),
                "over_estimates": row["over_estimates"],
                "under_estimates": row["under_estimates"],
            }
        )
    totals: dict[str, Cell] = {
        "models": len({row["model"] for row in rows}),
        "samples": sum(row["samples"] for row in rows),
    }
    notes = ["error = estimated input - actual input (uncached + cache read + cache write); % of actual"]
    report = Report(view="accuracy", since=since, until=until, rows=cells, totals=totals, notes=notes)
    return formatted(report, fmt)


# --- recommendations -----------------------------------------------------------------------------


def recommendations_report(
    stats: Sequence[Mapping[str, Any]],
    catalog: Catalog,
    since: datetime,
    until: datetime,
    fmt: Format = "json",
) -> Report:
    """Ways to spend less, each with its evidence and the USD it would have saved over the window,
    largest saving first. `stats` are per-model aggregates of the window (see `Store.model_usage_stats`)."""
    found: list[tuple[Decimal, dict[str, Cell]]] = []
    for row in stats:
        for kind, saving, evidence, suggestion in _recommend(row, catalog):
            found.append(
                (
                    saving,
                    {
                        "kind": kind,
                        "model": row["model"],
                        "suggestion": suggestion,
                        "saving_usd": _money(saving),
                        "evidence": evidence,
                    },
                )
            )
    found.sort(key=lambda item: (-item[0], str(item[1]["kind"]), str(item[1]["model"])))
    rows = [cells for _, cells in found]
    total = sum((saving for saving, _ in found), Decimal(0))
    totals: dict[str, Cell] = {"recommendations": len(rows), "saving_usd": _money(total)}
    notes = ["saving_usd: what the window's traffic would have cost less; see each row's evidence"]
    report = Report(view="recommendations", since=since, until=until, rows=rows, totals=totals, notes=notes)
    return formatted(report, fmt)


def _recommend(row: Mapping[str, Any], catalog: Catalog) -> Iterator[tuple[str, Decimal, str, str]]:
    """(kind, saving, evidence, suggestion) for one model's traffic."""
    requests: int = row["requests"]
    if not requests:
        return
    model = row["model"]
    spent = Decimal(row["cost_usd"])
    try:
        info = catalog.resolve(model)
    except UnknownModel:
        info = None
    input_tokens, output_tokens = int(row["input_tokens"]), int(row["output_tokens"])
    cache_read, cache_write = int(row["cache_read_input_tokens"]), int(row["cache_creation_input_tokens"])
    all_input = input_tokens + cache_read + cache_write

    # A cheaper model of the same provider whose context holds the largest call seen.
    if info is not None and spent > 0 and not row["unpriced_requests"]:
        max_input, max_output = int(row["max_input_tokens"]), int(row["max_output_tokens"])
        cheaper = catalog.cheapest(max_input, max(max_output, 1), provider=info.provider, exclude=info.name)
        if cheaper is not None:
            repriced = cost(
                cheaper.price,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_input_tokens=cache_read,
                cache_creation_input_tokens=cache_write,
                reasoning_output_tokens=int(row["reasoning_output_tokens"]),
            ).cost_usd
            if repriced is not None and repriced < spent:
                yield (
                    "cheaper_model",
                    spent - repriced,
                    f"{requests} calls cost ${_money(spent)}; the largest took {max_input} input and "
                    f"{max_output} output tokens, which fit {cheaper.name} "
                    f"(context {cheaper.context_window}); "
                    f"the same tokens at its prices cost ${_money(repriced)}",
                    cheaper.name,
                )

    price = info.price if info is not None else None
    # Prompt-heavy traffic: input far above output.
    if (
        price is not None
        and price.input is not None
        and output_tokens
        and all_input >= PROMPT_HEAVY_RATIO * output_tokens
    ):
        saving = Decimal(input_tokens) * price.input * PROMPT_HEAVY_TRIM
        if saving > 0:
            yield (
                "prompt_heavy",
                saving,
                f"{all_input} input vs {output_tokens} output tokens ({all_input // output_tokens}:1, "
                f"threshold {PROMPT_HEAVY_RATIO}:1); saving if the uncached input were halved",
                "trim context (fit_messages), summarise history, retrieve less",
            )

    # Identical prompts (same hash) sent again: a response cache keyed by the hash would answer them.
    repeated = int(row["repeated_requests"])
    if repeated:
        saving = Decimal(row["repeated_cost_usd"])
        yield (
            "repeated_prompts",
            saving,
            f"{repeated} of {requests} calls repeated one of {row['repeated_prompts']} identical prompts "
            "(by prompt hash); saving: their cost, keeping the dearest call of each prompt",
            "cache responses by prompt hash",
        )

    # Little use of the provider's prompt caching.
    if (
        price is not None
        and price.input is not None
        and price.cache_read is not None
        and price.cache_read < price.input
        and all_input >= CACHE_MIN_AVG_INPUT * requests
        and Decimal(cache_read) < CACHE_LOW_SHARE * all_input
    ):
        cacheable = Decimal(input_tokens) * CACHE_ASSUMED_PREFIX
        saving = cacheable * (price.input - price.cache_read)
        yield (
            "prompt_caching",
            saving,
            f"cache reads are {_percent(cache_read, all_input)}% of {all_input} input tokens "
            f"(average {all_input // requests} per call); saving if half the uncached input were a cached "
            f"prefix read at ${format(price.cache_read, 'f')} instead of "
            f"${format(price.input, 'f')} per token",
            "put stable content (system prompt, tools) first and enable prompt caching",
        )

    # Calls near the context limit.
    near = int(row["near_limit_requests"])
    if near and info is not None and info.context_window:
        window = info.context_window
        excess = Decimal(row["near_limit_tokens"]) - near * NEAR_LIMIT_TARGET * window
        saving = max(excess, Decimal(0)) * (price.input if price and price.input is not None else Decimal(0))
        yield (
            "near_context_limit",
            saving,
            f"{near} of {requests} calls used over {int(NEAR_LIMIT_SHARE * 100)}% of the {window}-token "
            f"context window (truncation and failures ahead); saving if trimmed to "
            f"{int(NEAR_LIMIT_TARGET * 100)}% of it",
            "fit_messages before the call, or a longer-context model",
        )

    # Errors that still cost tokens.
    errors = int(row["errors"])
    if errors and Decimal(errors) >= ERROR_RATE * requests:
        saving = Decimal(row["error_cost_usd"])
        yield (
            "errors",
            saving,
            f"{errors} of {requests} calls failed ({_percent(errors, requests)}%, threshold "
            f"{int(ERROR_RATE * 100)}%) and used {row['error_tokens']} tokens",
            "fix the failing calls; retry with backoff only on retryable errors",
        )


# --- prompt hashes -------------------------------------------------------------------------------


def prompt_hash(text: str | None = None, messages: Sequence[ChatMessage] | None = None) -> str | None:
    """The SHA-256 (hex) of a prompt: of its text, or of the canonical JSON of its messages (sorted keys,
    no spaces). Repeated prompts are found by this hash; the text itself is never stored."""
    if text is not None:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if messages is not None:
        content = [message.model_dump(mode="json", exclude_none=True) for message in messages]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    return None


# --- rendering -----------------------------------------------------------------------------------


def shown_rows(report: Report) -> list[dict[str, Cell]]:
    """The rows a table of the report shows: the totals alone for a summary."""
    if report.view == "summary":
        return [report.totals] if report.totals is not None else []
    return report.rows


def formatted(report: Report, fmt: Format) -> Report:
    """The report in `fmt`: json keeps rows and totals only; markdown and csv add the rendered text."""
    return report.model_copy(
        update={"format": fmt, "text": render(shown_rows(report), fmt, notes=report.notes)}
    )


def columns_of(rows: Sequence[Mapping[str, Cell]]) -> list[str]:
    return list(dict.fromkeys(column for row in rows for column in row))


def csv_lines(rows: Sequence[Mapping[str, Cell]]) -> Iterator[str]:
    """CSV text line by line (header first), for writing long exports as they are made."""
    columns = columns_of(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    yield out.getvalue()
    for row in rows:
        out.seek(0)
        out.truncate()
        writer.writerow([_text(row.get(column)) for column in columns])
        yield out.getvalue()


def render(rows: Sequence[Mapping[str, Cell]], fmt: Format, notes: Sequence[str] = ()) -> str | None:
    """Rows as a markdown table (notes below it) or CSV (None for json); columns in first-seen order."""
    if fmt == "json":
        return None
    if fmt == "csv":
        return "".join(csv_lines(rows))
    columns = columns_of(rows)
    if not columns:
        text = "_no rows_\n"
    else:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(_markdown(row.get(column)) for column in columns) + " |" for row in rows]
        text = "\n".join(lines) + "\n"
    return text + "".join(f"\n_{_markdown(note)}_\n" for note in notes)


def _text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _markdown(value: Cell) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")
