"""Reports over ledger results: rows, totals, notes, and their markdown and CSV renderings.

Plain functions over what `Ledger` hands over (`UsageResult`, `Budget`, store rows as dicts) and the
catalog: no I/O. Money stays exact and travels as a decimal string; tokens are integers; timestamps are
ISO 8601 with their offset. One implementation serves the `report` tool, `tokenledger report` and the
library (`Ledger.report`).

Views: `summary`, `usage`, `timeseries`, `budgets`, `forecast`, `top`, `recommendations`, `accuracy`,
`chargeback`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, StringConstraints

from tokenledger import fx
from tokenledger.catalog import Catalog, cost
from tokenledger.errors import InvalidInput, UnknownModel
from tokenledger.types import Budget, ChatMessage, FxRate, Model, Price, UsageQuery, UsageResult, UsageRow

__all__ = [
    "FORECAST_WINDOW",
    "Report",
    "ReportQuery",
    "accuracy_report",
    "allocate_cents",
    "budgets_report",
    "chargeback_report",
    "csv_lines",
    "forecast_report",
    "formatted",
    "in_currency",
    "month_window",
    "prompt_hash",
    "recommendations_report",
    "render",
    "summary_totals",
    "timeseries_report",
    "top_report",
    "usage_report",
]

View = Literal[
    "summary",
    "usage",
    "timeseries",
    "budgets",
    "forecast",
    "top",
    "recommendations",
    "accuracy",
    "chargeback",
]
CostCentre = Literal["team", "project", "feature", "user"]
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
    # chargeback only: the calendar month (YYYY-MM, in `timezone`; default the current one) and the
    # attribution that names the cost centres (default team). Validated by `month_window`.
    period: Annotated[str, StringConstraints(min_length=1, max_length=16)] | None = None
    by: CostCentre | None = None


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
    currency: str | None = None  # amounts also shown in it (columns ending _<code>), at fx_rates
    fx_rates: list[FxRate] = Field(default_factory=list)  # the rates used, oldest first


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


def usage_row(row: UsageRow, currency: str | None = None) -> dict[str, Cell]:
    """One grouped usage row, its group keys and bucket first; with `currency`, its converted cost
    after cost_usd."""
    cells: dict[str, Cell] = {key: value for key, value in row.keys.items()}
    if row.bucket is not None:
        cells["bucket"] = _cell(row.bucket)
    cells["requests"] = row.requests
    cells.update({name: getattr(row, name) for name in _TOKEN_FIELDS})
    cells["cost_usd"] = _cell(row.cost_usd)
    if currency is not None:
        cells[_in(currency, "cost_usd")] = _cell(row.cost_converted)
    cells["unpriced_requests"] = row.unpriced_requests
    cells["errors"] = row.errors
    cells["downgrades"] = row.downgrades
    return cells


def summary_totals(totals: UsageRow, currency: str | None = None) -> dict[str, Cell]:
    """Requests, tokens by type, cost, success rate and average tokens per request."""
    cells = usage_row(totals.model_copy(update={"keys": {}, "bucket": None}), currency)
    requests = totals.requests
    cells["success_rate"] = round((requests - totals.errors) / requests, 4) if requests else None
    cells["avg_tokens_per_request"] = round(totals.total_tokens / requests, 1) if requests else None
    return cells


def usage_report(result: UsageResult, view: Literal["summary", "usage"], fmt: Format = "json") -> Report:
    """The summary (totals only) or usage (grouped rows and totals) view of a usage answer."""
    totals = summary_totals(result.totals, result.currency)
    rows = [] if view == "summary" else [usage_row(row, result.currency) for row in result.rows]
    notes = [downgrades_note(result.totals.downgrades)] if result.totals.downgrades else []
    report = Report(view=view, since=result.since, until=result.until, rows=rows, totals=totals, notes=notes)
    return formatted(_stated(report, result), fmt)


def downgrades_note(downgrades: int) -> str:
    return (
        f"downgrades: {downgrades} call(s) ran on a fallback model instead of the model requested; model is "
        "the model used (group by requested_model to see what was asked for)"
    )


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
        zero = zero.model_copy(
            update={"cost_usd": Decimal(0), "cost_converted": Decimal(0) if result.currency else None}
        )
        rows = [
            found.get(start) or zero.model_copy(update={"bucket": start, "keys": {}}) for start in buckets
        ]
    report = Report(
        view="timeseries",
        since=result.since,
        until=result.until,
        rows=[usage_row(row, result.currency) for row in rows],
        totals=summary_totals(result.totals, result.currency),
        notes=[
            f"buckets: {bucket} in {timezone}; a bucket starts at its local {bucket} boundary",
            *([downgrades_note(result.totals.downgrades)] if result.totals.downgrades else []),
        ],
    )
    return formatted(_stated(report, result), fmt)


# --- currencies ----------------------------------------------------------------------------------

# Money columns of the views converted row by row in Python (usage views are converted in SQL); budgets and
# forecasts convert only their usd rows.
MONEY_COLUMNS = {
    "budgets": ("limit", "used", "reserved", "remaining", "projected_used"),
    "forecast": ("limit", "used", "reserved", "remaining", "window_use", "rate_per_hour", "projected_used"),
    "top": ("cost_usd",),
    "recommendations": ("saving_usd",),
}
_RULES = {
    "usage": "each cost at the rate in force when it occurred (a pruned month's daily totals at their day's)",
    "budgets": "each usd budget at the rate in force at its period's start (total and rolling windows: now), "
    "the rate that converts a limit declared in a currency",
    "top": "each call at the rate in force when it occurred",
    "recommendations": "at the rate in force at the window's end",
}


def _in(currency: str, column: str) -> str:
    """The name of a money column in `currency`: cost_usd -> cost_eur, limit -> limit_eur."""
    return f"{column.removesuffix('_usd')}_{currency.lower()}"


def _fx_note(currency: str, rule: str, rates: Sequence[FxRate]) -> str:
    return (
        f"{currency}: the tenant's rates (units per 1 USD), {rule}; exact in json, rounded to 2 decimals in "
        f"tables; costs are recorded in USD. {fx.describe(rates, currency)}"
    )


def _stated(report: Report, result: UsageResult) -> Report:
    """A usage report with the currency and rates its converted costs used, stated in its notes."""
    if result.currency is None:
        return report
    note = _fx_note(result.currency, _RULES["usage"], result.fx_rates)
    return report.model_copy(
        update={"currency": result.currency, "fx_rates": result.fx_rates, "notes": [*report.notes, note]}
    )


def in_currency(
    report: Report, currency: str, row_rates: Sequence[FxRate | None], totals_rate: FxRate | None = None
) -> Report:
    """The report with each money column followed by its amount in `currency` at the row's rate (None:
    a row without money in USD, such as a token budget); totals at `totals_rate`, or, where rows each have
    their own rate (top), as the sum of the converted rows. Exact products, no rounding."""
    columns = MONEY_COLUMNS.get(report.view, ())
    rows = [
        _converted_cells(row, columns, currency, rate)
        for row, rate in zip(report.rows, row_rates, strict=True)
    ]
    totals = report.totals
    if totals is not None and totals_rate is not None:
        totals = _converted_cells(totals, columns, currency, totals_rate)
    elif totals is not None and any(column in totals for column in columns):
        totals = dict(totals)
        for column in columns:
            if column in totals:
                total = sum(
                    (
                        Decimal(str(row[_in(currency, column)]))
                        for row in rows
                        if row.get(_in(currency, column)) is not None
                    ),
                    Decimal(0),
                )
                totals[_in(currency, column)] = _cell(total)
    used = sorted(
        {rate.effective_from: rate for rate in [*row_rates, totals_rate] if rate}.values(),
        key=lambda rate: rate.effective_from,
    )
    rule = _RULES["budgets" if report.view in ("budgets", "forecast") else report.view]
    note = _fx_note(currency, rule, used) if columns else f"{currency}: this view has no amounts of money"
    converted = report.model_copy(
        update={
            "rows": rows,
            "totals": totals,
            "currency": currency,
            "fx_rates": used,
            "notes": [*report.notes, note],
        }
    )
    return formatted(converted, report.format)


def _converted_cells(
    row: Mapping[str, Cell], columns: Sequence[str], currency: str, rate: FxRate | None
) -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    for column, value in row.items():
        cells[column] = value
        if column in columns and rate is not None:
            cells[_in(currency, column)] = (
                None if value is None else _cell(fx.convert(Decimal(str(value)), rate.rate))
            )
    return cells


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
            # The calendar's end bounds it too: a window may end as late as 9999 (types.LATEST_MOMENT).
            horizon = min(horizon, (_CALENDAR_END - until).total_seconds() / 3600)
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
_CALENDAR_END = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
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


# --- chargeback ----------------------------------------------------------------------------------

CHARGEBACK_YEARS = (2000, 2100)  # the months a chargeback period may name
UNATTRIBUTED = "(unattributed)"  # the cost centre of usage without that attribution (never an identifier)
# Token types as statements list them: (name, UsageRow field, catalog.cost part). "output" is the output
# other than reasoning, so a line's tokens add up to the usage's total_tokens.
TOKEN_TYPES = (
    ("input", "input_tokens", "input_usd"),
    ("output", "output_tokens", "output_usd"),
    ("cache_read", "cache_read_input_tokens", "cache_read_usd"),
    ("cache_write", "cache_creation_input_tokens", "cache_write_usd"),
    ("reasoning", "reasoning_output_tokens", "reasoning_usd"),
)
_CENT = Decimal("0.01")


def month_window(period: str, timezone: str) -> tuple[datetime, datetime]:
    """The calendar month `period` (YYYY-MM) in `timezone`, as [start, end) instants in UTC."""
    first, last = CHARGEBACK_YEARS
    match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", period)
    year, month = (int(match[1]), int(match[2])) if match else (0, 0)
    if not (first <= year <= last and 1 <= month <= 12):
        raise InvalidInput(
            "period", period, f"a calendar month as YYYY-MM (e.g. 2026-11), years {first} to {last}"
        )
    zone = ZoneInfo(timezone)
    start = datetime(year, month, 1, tzinfo=zone)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def current_month(now: datetime, timezone: str) -> str:
    """The YYYY-MM of the month `now` falls in, in `timezone`."""
    return now.astimezone(ZoneInfo(timezone)).strftime("%Y-%m")


def allocate_cents(amounts: Sequence[Decimal], total_cents: int) -> list[int]:
    """Whole cents for each amount that add up to `total_cents` exactly: every amount gets its floor in
    cents, and the cents left go to the largest remainders (ties: the earlier amount)."""
    scaled = [amount * 100 for amount in amounts]
    cents = [int(value.to_integral_value(rounding=ROUND_FLOOR)) for value in scaled]
    by_remainder = sorted(range(len(cents)), key=lambda i: (-(scaled[i] - cents[i]), i))
    short = total_cents - sum(cents)
    for nth in range(max(short, 0)):  # more cents short than amounts only when the total was nudged
        cents[by_remainder[nth % len(cents)]] += 1
    for index in reversed(by_remainder):  # only from rounding noise in the amounts: give back the smallest
        if short >= 0:
            break
        if cents[index] > 0:
            cents[index] -= 1
            short += 1
    return cents


def _cents(value: int) -> str:
    return format((Decimal(value) / 100).quantize(_CENT), "f")


def _split_by_token_type(row: UsageRow, price: Price | None) -> list[tuple[str, int, Decimal]]:
    """(token type, tokens, cost) of one model's usage: its recorded cost split in proportion to what each
    type costs at `price` (by tokens where the model has no price), so the parts add up to the cost."""
    tokens = {name: int(getattr(row, field)) for name, field, _ in TOKEN_TYPES}
    tokens["output"] -= row.reasoning_output_tokens
    weights = {name: Decimal(count) for name, count in tokens.items()}
    if price is not None and price.priced:
        parts = cost(
            price,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cache_read_input_tokens=row.cache_read_input_tokens,
            cache_creation_input_tokens=row.cache_creation_input_tokens,
            reasoning_output_tokens=row.reasoning_output_tokens,
        )
        priced = {name: getattr(parts, part) or Decimal(0) for name, _, part in TOKEN_TYPES}
        if sum(priced.values()) > 0:
            weights = priced
    whole = sum(weights.values())
    if whole <= 0:  # no tokens at all: a reported cost still shows, on the input line
        weights, whole = {**{name: Decimal(0) for name in tokens}, "input": Decimal(1)}, Decimal(1)
    with localcontext(prec=60):
        lines = [(name, tokens[name], row.cost_usd * weights[name] / whole) for name, _, _ in TOKEN_TYPES]
    return [line for line in lines if line[1] or line[2]]


def chargeback_report(
    result: UsageResult,
    *,
    by: CostCentre,
    period: str,
    timezone: str,
    prices: Mapping[str, Price | None],
) -> Report:
    """One statement per cost centre (the `by` attribution) of the month: lines by model and token type
    with tokens, cost and share of the total, then the statement's subtotal; a last row for the total.

    `result` is the usage of the month grouped by (`by`, model): the usage view's query, so the total is
    that view's cost to the cent. Costs are whole cents that add up exactly: the total is the exact cost
    rounded half up, statements share it by largest remainder, and each statement's lines share its cents
    the same way. `prices` (per model, None when unpriced) only weigh a model's cost across token types.
    With a currency in `result`, the statement is in that currency (each cost at its date's rate), in
    whole cents of it by the same rule.
    """
    usd_result = result
    if result.currency is not None:
        result = result.model_copy(
            update={
                "rows": [row.model_copy(update={"cost_usd": row.cost_converted}) for row in result.rows],
                "totals": result.totals.model_copy(update={"cost_usd": result.totals.cost_converted}),
            }
        )
    statements: dict[str, list[UsageRow]] = {}
    for row in result.rows:
        statements.setdefault(row.keys.get(by) or UNATTRIBUTED, []).append(row)
    exact_total = result.totals.cost_usd
    total_cents = int((exact_total * 100).to_integral_value(rounding=ROUND_HALF_UP))
    order = sorted(statements, key=lambda centre: (-sum(r.cost_usd for r in statements[centre]), centre))
    statement_cents = allocate_cents(
        [sum((r.cost_usd for r in statements[centre]), Decimal(0)) for centre in order], total_cents
    )
    rows: list[dict[str, Cell]] = []
    for centre, cents in zip(order, statement_cents, strict=True):
        groups = sorted(statements[centre], key=lambda r: str(r.keys.get("model")))
        lines = [
            (str(group.keys.get("model")), name, count, amount)
            for group in groups
            for name, count, amount in _split_by_token_type(group, prices.get(str(group.keys.get("model"))))
        ]
        line_cents = allocate_cents([amount for *_, amount in lines], cents)
        for (model, name, count, amount), line_cost in zip(lines, line_cents, strict=True):
            rows.append(
                _chargeback_row(centre, "line", model, name, count, None, line_cost, amount, exact_total)
            )
        rows.append(
            _chargeback_row(
                centre,
                "subtotal",
                None,
                None,
                sum(group.total_tokens for group in groups),
                sum(group.requests for group in groups),
                cents,
                sum((group.cost_usd for group in groups), Decimal(0)),
                exact_total,
            )
        )
    totals = result.totals
    rows.append(
        _chargeback_row(
            None,
            "total",
            None,
            None,
            totals.total_tokens,
            totals.requests,
            total_cents,
            exact_total,
            exact_total,
        )
    )
    since, until = result.since, result.until
    notes = [
        f"cost centre: {by}; period {period} in {timezone} ({since.isoformat()} to {until.isoformat()}); "
        f"{UNATTRIBUTED}: usage without a {by}",
        "cost_usd in whole cents: the total is the usage view's cost of the same window rounded half up; "
        "statements share it, and lines their statement, by largest remainder, so every sum is exact",
        "a model's cost is split across token types by its current prices per type (exact where one price "
        "applied all month; by tokens for a model without prices); share_percent is of the total",
    ]
    if totals.unpriced_requests:
        notes.append(
            f"{totals.unpriced_requests} call(s) used unpriced models: their cost is unknown, not counted"
        )
    summary: dict[str, Cell] = {
        "period": period,
        "timezone": timezone,
        "by": by,
        "cost_centres": len(order),
        "requests": totals.requests,
        "tokens": totals.total_tokens,
        "cost_usd": _cents(total_cents),
        "cost_usd_exact": _cell(exact_total),
        "unpriced_requests": totals.unpriced_requests,
    }
    report = Report(view="chargeback", since=since, until=until, rows=rows, totals=summary, notes=notes)
    if result.currency is not None:
        report = _statement_in(report, result.currency, usd_result)
    return formatted(report, "json")


def _statement_in(report: Report, currency: str, result: UsageResult) -> Report:
    """A chargeback whose amounts are in `currency`: its cost columns and notes named for it."""
    names = {"cost_usd": _in(currency, "cost_usd"), "cost_usd_exact": _in(currency, "cost_usd") + "_exact"}

    def renamed(cells: Mapping[str, Cell]) -> dict[str, Cell]:
        return {names.get(column, column): value for column, value in cells.items()}

    notes = [note.replace("cost_usd", names["cost_usd"]) for note in report.notes]
    notes.append(_fx_note(currency, _RULES["usage"], result.fx_rates))
    return report.model_copy(
        update={
            "rows": [renamed(row) for row in report.rows],
            "totals": renamed(report.totals or {}),
            "notes": notes,
            "currency": currency,
            "fx_rates": result.fx_rates,
        }
    )


def _chargeback_row(
    centre: str | None,
    kind: str,
    model: str | None,
    token_type: str | None,
    tokens: int,
    requests: int | None,
    cents: int,
    exact: Decimal,
    exact_total: Decimal,
) -> dict[str, Cell]:
    return {
        "cost_centre": centre,
        "kind": kind,
        "model": model,
        "token_type": token_type,
        "requests": requests,
        "tokens": tokens,
        "cost_usd": _cents(cents),
        "share_percent": _percent(exact, exact_total),
    }


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
    """CSV text line by line (header first), for writing long exports as they are made. Every cell is
    quoted, and one a spreadsheet would run as a formula is neutralised (`csv_cell`)."""
    columns = columns_of(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow([csv_cell(column) for column in columns])
    yield out.getvalue()
    for row in rows:
        out.seek(0)
        out.truncate()
        writer.writerow([csv_cell(row.get(column)) for column in columns])
        yield out.getvalue()


# What makes a spreadsheet read a cell as a formula (OWASP, CSV injection): =, +, -, @, tab and carriage
# return first; and the full-width forms of the four that some spreadsheets fold into them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# A negative amount or count: a spreadsheet reads it as a number, and it cannot hold a formula.
_PLAIN_NUMBER = re.compile(r"-\d+(\.\d+)?")


def csv_cell(value: Cell) -> str:
    """A cell's CSV text; one that would start a formula gets a leading ' so that it is shown as text
    (plain negative numbers stay numbers)."""
    text = _text(value)
    if text.startswith(_FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


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


# Markdown that stored text could start: links and images ([ ]), raw HTML and autolinks (< >), code spans,
# emphasis, strikethrough, entities, table cells (|); and the backslash itself, so none is unescaped.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~\[\]<>&|])")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n]")


def _markdown(value: Cell) -> str:
    """A cell's text in a markdown table: shown as written, never as markup, on one line."""
    return _LINE_BREAKS.sub(" ", _MARKDOWN_SPECIAL.sub(r"\\\1", _text(value)))
