"""`tokenledger models`, `prices` and `cost`: read the bundled catalog; no database needed."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from typing import Any

from tokenledger import catalog
from tokenledger.cli import tables
from tokenledger.errors import InvalidInput
from tokenledger.types import ModelInfo

_MILLION = Decimal(1_000_000)
_PRICE_LABELS = {
    "input": "input",
    "output": "output",
    "cache_read": "cache read",
    "cache_write": "cache write",
    "reasoning": "reasoning",
}
# What `cost` charges where a model publishes no rate of its own (see tokenledger.catalog.cost).
_FALLBACK = {"cache_read": "input rate", "cache_write": "input rate", "reasoning": "output rate"}
_COUNT_FLAGS = {
    "input": "--input",
    "output": "--output",
    "cache_read": "--cache-read",
    "cache_write": "--cache-write",
    "reasoning": "--reasoning",
}


def register(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="search the model catalog")
    models.add_argument("query", nargs="?", default="", help="words the model name must contain")
    models.add_argument("--provider", help="only this provider (openai, anthropic, google, ...)")
    models.add_argument("--limit", default="50", help="at most this many rows (default 50)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=models_command)

    prices = subparsers.add_parser("prices", help="show a model's prices, context window and counting")
    prices.add_argument("model")
    prices.add_argument("--json", action="store_true", help="print JSON")
    prices.set_defaults(handler=prices_command)

    cost = subparsers.add_parser("cost", help="price one request exactly")
    cost.add_argument("--model", required=True)
    cost.add_argument("--input", required=True, metavar="N", help="uncached input tokens")
    cost.add_argument("--output", required=True, metavar="N", help="output tokens, reasoning included")
    cost.add_argument("--cache-read", default="0", metavar="N", help="input tokens read from cache")
    cost.add_argument("--cache-write", default="0", metavar="N", help="input tokens written to cache")
    cost.add_argument("--reasoning", default="0", metavar="N", help="reasoning tokens (part of --output)")
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(handler=cost_command)


def models_command(args: argparse.Namespace) -> int:
    limit = _whole_number("--limit", args.limit, minimum=1)
    found = catalog.search(args.query, provider=args.provider, limit=10**6)
    shown = found[:limit]
    snapshot = catalog.default_catalog().snapshot
    if args.json:
        models = [_model_json(model) for model in shown]
        _print_json({"snapshot": _snapshot_json(), "matched": len(found), "models": models})
        return 0
    if not found:
        print(f"tokenledger: no models match {args.query!r}; try a shorter query", file=sys.stderr)
        return 1
    tables.show(tables.console(), models_grid(shown))
    if len(found) > limit:
        print(
            f"showing {limit} of {len(found)} models (snapshot {snapshot.date}); use --limit or a query",
            file=sys.stderr,
        )
    return 0


def models_grid(models: list[ModelInfo]) -> tables.Grid:
    """Catalog models with their context window, prices per million tokens and counting method."""
    columns = [
        tables.Column("Model"),
        tables.Column("Provider", drop=2),
        tables.Column("Context", "number"),
        tables.Column("In $/Mtok", "number"),
        tables.Column("Out $/Mtok", "number"),
        tables.Column("Counting", drop=1),
    ]
    rows = [
        [
            model.name,
            model.provider,
            _tokens(model.context_window),
            _per_million(model.price.input) if model.price.priced else "unpriced",
            _per_million(model.price.output) if model.price.priced else "unpriced",
            _method(model),
        ]
        for model in models
    ]
    return tables.Grid(columns=columns, rows=rows)


def prices_command(args: argparse.Namespace) -> int:
    model = catalog.resolve(args.model)
    snapshot = catalog.default_catalog().snapshot
    if args.json:
        _print_json({**_model_json(model), "snapshot": _snapshot_json()})
        return 0
    lines = [
        ("model", model.name),
        ("provider", model.provider),
        ("aliases", ", ".join(model.aliases) or "-"),
        ("context window", _tokens(model.context_window)),
        ("max output", _tokens(model.max_output_tokens)),
        ("counting", _method(model) + f" ({model.encoding})"),
    ]
    if model.estimate_rule:
        lines.append(("estimate rule", model.estimate_rule))
    if model.price.priced:
        lines.append(("prices (USD)", "per token / per million tokens"))
        for field, label in _PRICE_LABELS.items():
            rate: Decimal | None = getattr(model.price, field)
            shown = (
                f"{_plain(rate)} / {_per_million(rate)}" if rate is not None else f"- ({_FALLBACK[field]})"
            )
            lines.append((f"  {label}", shown))
    else:
        lines.append(("prices (USD)", "unpriced: no published input/output price (cost unknown, not $0)"))
    lines.append(("snapshot", f"{snapshot.date}, litellm {snapshot.version}"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    return 0


def cost_command(args: argparse.Namespace) -> int:
    counts = {field: _whole_number(flag, getattr(args, field)) for field, flag in _COUNT_FLAGS.items()}
    model = catalog.resolve(args.model)
    breakdown = catalog.cost(
        model.price,
        input_tokens=counts["input"],
        output_tokens=counts["output"],
        cache_read_input_tokens=counts["cache_read"],
        cache_creation_input_tokens=counts["cache_write"],
        reasoning_output_tokens=counts["reasoning"],
    )
    if args.json:
        fields = breakdown.model_dump()
        _print_json({"model": model.name, "provider": model.provider, **_plain_all(fields)})
        return 0
    if breakdown.cost_usd is None:
        print(f"{model.name}: unpriced: the snapshot has no input/output price for it (cost unknown, not $0)")
        return 0
    parts = [
        ("input", counts["input"], breakdown.input_usd),
        (
            "output" if not counts["reasoning"] else "output (not reasoning)",
            counts["output"] - counts["reasoning"],
            breakdown.output_usd,
        ),
        ("reasoning", counts["reasoning"], breakdown.reasoning_usd),
        ("cache read", counts["cache_read"], breakdown.cache_read_usd),
        ("cache write", counts["cache_write"], breakdown.cache_write_usd),
    ]
    rows = [["", "TOKENS", "USD"]]
    rows += [[label, f"{tokens:,}", _plain(usd)] for label, tokens, usd in parts if tokens]
    rows.append(["total", f"{sum(counts.values()) - counts['reasoning']:,}", _plain(breakdown.cost_usd)])
    print(f"{model.name} ({model.provider})")
    _print_table(rows, right_aligned={1, 2})
    return 0


def _whole_number(flag: str, text: str, minimum: int = 0) -> int:
    """Return `text` as an int of at least `minimum`; InvalidInput naming `flag` otherwise."""
    allowed = f"a whole number, {minimum} or more"
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(flag, text, allowed) from None
    if value < minimum:
        raise InvalidInput(flag, value, allowed)
    return value


def _plain(value: Decimal | None) -> str:
    """Return a Decimal in plain notation without trailing zeros ('0.0000025', not '2.5E-6')."""
    if value is None:
        return "-"
    return format(value.normalize(), "f")


def _per_million(value: Decimal | None) -> str:
    return "-" if value is None else _plain(value * _MILLION)


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _method(model: ModelInfo) -> str:
    if model.count_method == "estimate":
        return f"estimate x{model.estimate_factor:g}"
    return model.count_method


def _plain_all(fields: dict[str, Any]) -> dict[str, Any]:
    """Return `fields` with every Decimal as a plain-notation string (JSON carries money as text)."""
    return {key: _plain(value) if isinstance(value, Decimal) else value for key, value in fields.items()}


def _model_json(model: ModelInfo) -> dict[str, Any]:
    data = model.model_dump(mode="json", exclude={"price", "source", "effective_from"})
    rates = model.price.model_dump()
    data["priced"] = model.price.priced
    data["price"] = _plain_all(rates)
    data["price_per_million"] = {
        field: None if rate is None else _per_million(rate) for field, rate in rates.items()
    }
    return data


def _snapshot_json() -> dict[str, Any]:
    snapshot = catalog.default_catalog().snapshot
    return {"date": snapshot.date.isoformat(), "source": snapshot.source, "litellm_version": snapshot.version}


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))


def _print_table(rows: list[list[str]], right_aligned: set[int]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(widths[column]) if column in right_aligned else cell.ljust(widths[column])
            for column, cell in enumerate(row)
        ]
        print("  ".join(cells).rstrip())
