"""`tokenledger models`, `prices` and `cost`: read the bundled catalog; no database needed.

`tokenledger catalog diff | update | status`: catalog updates from a price list the user saved (or, only
when given a URL, fetched once), stored in the database and taken by every server. An operator's action:
it needs the database's credentials, as `prune` does; no tenant key can do it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time as clock
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import anyio

from tokenledger import catalog
from tokenledger.catalog import CatalogDiff, ModelChange
from tokenledger.cli import tables
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.pricefile import MAX_FILE_BYTES, PriceFile, read_price_file
from tokenledger.types import CacheTTL, ModelInfo, Price, PriceRates, Principal, ServiceTier

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
    models.add_argument(
        "--retired", action="store_true", help="list retired models (kept at their last price)"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=models_command)

    prices = subparsers.add_parser("prices", help="show a model's prices, context window and counting")
    prices.add_argument("model")
    prices.add_argument("--history", action="store_true", help="show every dated price, oldest first")
    prices.add_argument("--json", action="store_true", help="print JSON")
    prices.set_defaults(handler=prices_command)

    cost = subparsers.add_parser("cost", help="price one request exactly")
    cost.add_argument("--model", required=True)
    cost.add_argument("--input", required=True, metavar="N", help="uncached input tokens")
    cost.add_argument("--output", required=True, metavar="N", help="output tokens, reasoning included")
    cost.add_argument("--cache-read", default="0", metavar="N", help="input tokens read from cache")
    cost.add_argument("--cache-write", default="0", metavar="N", help="input tokens written to cache")
    cost.add_argument("--reasoning", default="0", metavar="N", help="reasoning tokens (part of --output)")
    cost.add_argument("--batch", action="store_true", help="a Batch API call, at batch prices")
    cost.add_argument("--service-tier", default="standard", help="standard (default), flex or priority")
    cost.add_argument("--cache-ttl", default="5m", help="lifetime of the cache writes: 5m (default) or 1h")
    cost.add_argument(
        "--at", metavar="WHEN", help="price in force then: YYYY-MM-DD (UTC) or ISO 8601 with offset"
    )
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(handler=cost_command)

    updates = subparsers.add_parser(
        "catalog",
        help="update the catalog from a saved price list (operator): diff, update, status",
        description="Catalog updates without a release: a litellm-format price map or an OpenRouter "
        "/api/v1/models answer, checked, stored in the database and taken by every server. Nothing is "
        "fetched unless --from is an http(s) URL.",
    )
    actions = updates.add_subparsers(dest="action", metavar="ACTION", required=True)
    source_help = (
        f"a saved price list (at most {MAX_FILE_BYTES // 2**20} MiB), or an http(s) URL to fetch it from once"
    )
    diff = actions.add_parser("diff", help="what a price list would change: added, retired, new prices")
    diff.add_argument("--from", dest="source", required=True, metavar="FILE|URL", help=source_help)
    diff.add_argument("--json", action="store_true", help="print JSON")
    diff.set_defaults(handler=_with_ledger(catalog_diff_command))
    update = actions.add_parser("update", help="show the diff, then store the price list as an update")
    update.add_argument("--from", dest="source", required=True, metavar="FILE|URL", help=source_help)
    update.add_argument("--yes", action="store_true", help="apply without asking (after reading the diff)")
    update.set_defaults(handler=_with_ledger(catalog_update_command))
    status = actions.add_parser("status", help="the bundled snapshot and the updates over it")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_with_ledger(catalog_status_command))


def models_command(args: argparse.Namespace) -> int:
    limit = _whole_number("--limit", args.limit, minimum=1)
    shown = catalog.search(args.query, provider=args.provider, limit=limit, retired=args.retired)
    matched = catalog.default_catalog().count(args.query, provider=args.provider, retired=args.retired)
    snapshot = catalog.default_catalog().snapshot
    if args.json:
        models = [_model_json(model) for model in shown]
        _print_json({"snapshot": _snapshot_json(), "matched": matched, "models": models})
        return 0
    if not shown:
        kind = "retired models" if args.retired else "models"
        print(f"tokenledger: no {kind} match {args.query!r}; try a shorter query", file=sys.stderr)
        return 1
    tables.show(tables.console(), models_grid(shown, retired=args.retired))
    if matched > limit:
        print(
            f"showing {limit} of {matched} models (snapshot {snapshot.date}); use --limit or a query",
            file=sys.stderr,
        )
    return 0


def models_grid(models: list[ModelInfo], *, retired: bool = False) -> tables.Grid:
    """Catalog models with their context window, prices per million tokens and counting method (retired
    models: the date the price list last listed them)."""
    columns = [
        tables.Column("Model"),
        tables.Column("Provider", drop=2),
        tables.Column("Context", "number"),
        tables.Column("In $/Mtok", "number"),
        tables.Column("Out $/Mtok", "number"),
        tables.Column("Last listed", "date") if retired else tables.Column("Counting", drop=1),
    ]
    rows = [
        [
            model.name,
            model.provider,
            _tokens(model.context_window),
            _per_million(model.price.input) if model.price.priced else "unpriced",
            _per_million(model.price.output) if model.price.priced else "unpriced",
            str(model.last_listed) if retired else _method(model),
        ]
        for model in models
    ]
    return tables.Grid(columns=columns, rows=rows)


def prices_command(args: argparse.Namespace) -> int:
    model = catalog.resolve(args.model)
    snapshot = catalog.default_catalog().snapshot
    history = catalog.default_catalog().price_history(args.model) if args.history else []
    _warn(model.warnings)
    if args.json:
        document = {**_model_json(model), "snapshot": _snapshot_json()}
        if args.history:
            document["history"] = [dated.model_dump(mode="json") for dated in history]
        _print_json(document)
        return 0
    if args.history:
        _print_history(model, history)
        return 0
    lines = [
        ("model", model.name),
        ("provider", model.provider),
        ("aliases", ", ".join(model.aliases) or "-"),
        ("context window", _tokens(model.context_window)),
        ("max output", _tokens(model.max_output_tokens)),
        ("counting", _method(model) + f" ({model.encoding})"),
    ]
    if model.base_model:
        lines.append(("serves", model.base_model))
    if model.estimate_rule:
        lines.append(("estimate rule", model.estimate_rule))
    if model.price.local:
        lines.append(
            ("prices (USD)", "$0: a local runtime, no per-token bill (a stated price, not unpriced)")
        )
    elif model.price.priced:
        lines.append(("prices (USD)", "per token / per million tokens"))
        for field, label in _PRICE_LABELS.items():
            rate: Decimal | None = getattr(model.price, field)
            shown = (
                f"{_plain(rate)} / {_per_million(rate)}" if rate is not None else f"- ({_FALLBACK[field]})"
            )
            lines.append((f"  {label}", shown))
        if model.price.cache_write_1h is not None:
            rate = model.price.cache_write_1h
            lines.append(("  cache write 1h", f"{_plain(rate)} / {_per_million(rate)}"))
        lines += _mode_lines(model.price)
    else:
        lines.append(("prices (USD)", "unpriced: no published input/output price (cost unknown, not $0)"))
    if model.effective_from is not None:
        lines.append(("in force since", f"{model.effective_from.date()} (--history shows earlier prices)"))
    if model.retired:
        lines.append(("retired", f"last listed {model.last_listed}; priced at its last listed price"))
    lines.append(("snapshot", f"{snapshot.date}, litellm {snapshot.version}"))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    return 0


def cost_command(args: argparse.Namespace) -> int:
    counts = {field: _whole_number(flag, getattr(args, field)) for field, flag in _COUNT_FLAGS.items()}
    service_tier: ServiceTier = _choice("--service-tier", args.service_tier, get_args(ServiceTier))
    cache_ttl: CacheTTL = _choice("--cache-ttl", args.cache_ttl, get_args(CacheTTL))
    if args.batch and service_tier != "standard":
        raise InvalidInput("--service-tier", service_tier, "standard with --batch: a batch has its own price")
    model = catalog.resolve(args.model)
    price = (
        model.price if args.at is None else catalog.default_catalog().price_at(args.model, _moment(args.at))
    )
    breakdown = catalog.cost(
        price,
        input_tokens=counts["input"],
        output_tokens=counts["output"],
        cache_read_input_tokens=counts["cache_read"],
        cache_creation_input_tokens=counts["cache_write"],
        reasoning_output_tokens=counts["reasoning"],
        batch=args.batch,
        service_tier=service_tier,
        cache_ttl=cache_ttl,
    )
    _warn(model.warnings)
    if args.json:
        fields = breakdown.model_dump()
        document = {"model": model.name, "provider": model.provider, **_plain_all(fields)}
        _print_json({**document, "local": price.local, "warnings": model.warnings})
        return 0
    if breakdown.cost_usd is None:
        print(f"{model.name}: unpriced: the catalog has no input/output price for it (cost unknown, not $0)")
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
    rates = [f"{breakdown.price_mode} rates"]
    if breakdown.tier_above_input_tokens is not None:
        rates.append(f"above {breakdown.tier_above_input_tokens:,} input tokens")
    if price.local:
        rates = ["$0: a local runtime"]
    print(f"{model.name} ({model.provider}; {', '.join(rates)})")
    _print_table(rows, right_aligned={1, 2})
    asked = "batch" if args.batch else service_tier
    if breakdown.price_mode != asked and not price.local:
        print(
            f"tokenledger: warning: {model.name} publishes no {asked} price; standard rates applied",
            file=sys.stderr,
        )
    return 0


def _mode_lines(price: Price) -> list[tuple[str, str]]:
    """Return the lines of a price's batch, flex and priority rates and context tiers, per million."""
    lines = []
    for mode in ("batch", "flex", "priority"):
        rates: PriceRates | None = getattr(price, mode)
        if rates is not None:
            lines.append((f"  {mode}", _rates_per_million(rates)))
    for tier in price.tiers:
        lines.append((f"  above {tier.above_input_tokens:,} input", _rates_per_million(tier)))
        for mode in ("batch", "flex", "priority"):
            rates = getattr(tier, mode)
            if rates is not None:
                lines.append((f"    {mode}", _rates_per_million(rates)))
    return lines


def _rates_per_million(rates: PriceRates) -> str:
    shown = [
        f"{label} {_per_million(getattr(rates, field))}"
        for field, label in (*_PRICE_LABELS.items(), ("cache_write_1h", "cache write 1h"))
        if getattr(rates, field) is not None
    ]
    return " / ".join(shown) + " per million"


def _print_history(model: ModelInfo, history: list[Any]) -> None:
    rows = [["FROM", "UNTIL", "IN $/MTOK", "OUT $/MTOK", "CACHE READ", "CACHE WRITE", "SOURCE"]]
    for dated in history:
        price = dated.price
        rows.append(
            [
                str(dated.effective_from.date()),
                "now" if dated.effective_until is None else str(dated.effective_until.date()),
                _per_million(price.input) if price.priced else "unpriced",
                _per_million(price.output) if price.priced else "unpriced",
                _per_million(price.cache_read),
                _per_million(price.cache_write),
                dated.source,
            ]
        )
    if model.retired and len(rows) > 1:
        rows[-1][1] = f"retired {model.last_listed}"
    print(f"{model.name} ({model.provider}): catalog prices in USD; the first also prices earlier usage")
    _print_table(rows, right_aligned={2, 3, 4, 5})


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"tokenledger: warning: {warning}", file=sys.stderr)


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        raise InvalidInput(flag, value, f"one of: {', '.join(allowed)}")
    return value


def _moment(text: str) -> datetime:
    """Return `--at` as an aware datetime: a date is its midnight UTC; a timestamp needs its offset."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput("--at", text, "YYYY-MM-DD (midnight UTC) or an ISO 8601 timestamp with its offset")
    return moment


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
    data = model.model_dump(mode="json", exclude={"price", "source"})
    data["priced"] = model.price.priced
    data["price"] = model.price.model_dump(mode="json", exclude_defaults=True)
    data["price_per_million"] = {
        field: _per_million(getattr(model.price, field)) if getattr(model.price, field) is not None else None
        for field in (*_PRICE_LABELS, "cache_write_1h")
    }
    return data


def _snapshot_json() -> dict[str, Any]:
    snapshot = catalog.default_catalog().snapshot
    return {
        "date": snapshot.date.isoformat(),
        "source": snapshot.source,
        "litellm_version": snapshot.version,
        "releases": [{"litellm": version, "date": day.isoformat()} for version, day in snapshot.releases],
    }


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


# --- catalog updates -----------------------------------------------------------------------------

FETCH_TIMEOUT_SECONDS = 30.0
DIFF_LINES = 20  # models listed per section of the diff table (--json lists every one)


def _with_ledger(command: Any) -> Any:
    from tokenledger.cli.ledger_cmds import _run

    async def run(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
        return int(await command(ledger, args))

    return _run(run)


def operator() -> str:
    """Who runs a catalog update, for its record and the audit log: the OS user and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return f"operator:{user}@{socket.gethostname()}"


def read_source(source: str) -> PriceFile:
    """The checked price list of a file, or of a URL fetched once (bounded in size and time)."""
    if source.startswith(("https://", "http://")):
        return read_price_file(fetch(source), source)
    path = Path(source).expanduser()
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise InvalidInput(
            "--from", source, f"a readable file or an http(s) URL ({error.strerror})"
        ) from None
    return read_price_file(raw, path.name)


def fetch(url: str) -> bytes:
    """GET `url` once: at most MAX_FILE_BYTES, within FETCH_TIMEOUT_SECONDS; said on stderr first."""
    import httpx

    limit = f"at most {MAX_FILE_BYTES // 2**20} MiB within {FETCH_TIMEOUT_SECONDS:g} s"
    print(f"tokenledger: fetching {url} ({limit}); nothing else is fetched", file=sys.stderr)
    deadline = clock.monotonic() + FETCH_TIMEOUT_SECONDS
    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=True) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_FILE_BYTES:
                    raise InvalidInput("--from", url, f"an answer of {limit}; it is longer")
                if clock.monotonic() > deadline:
                    raise InvalidInput("--from", url, f"an answer of {limit}; it took longer")
    except httpx.HTTPStatusError as error:
        raise InvalidInput(
            "--from", url, f"a URL that answers 200 (it answered {error.response.status_code})"
        ) from None
    except httpx.HTTPError as error:
        raise InvalidInput("--from", url, f"a URL that answers ({type(error).__name__}: {error})") from None
    return bytes(body)


async def catalog_diff_command(ledger: Ledger, args: argparse.Namespace) -> int:
    price_file = read_source(args.source)
    diff = await ledger.catalog_diff(price_file)
    if args.json:
        _print_json({"source": _source_json(price_file), **diff.model_dump(mode="json")})
    else:
        _print_diff(ledger, price_file, diff)
    return 0


async def catalog_update_command(ledger: Ledger, args: argparse.Namespace) -> int:
    price_file = read_source(args.source)
    _print_diff(ledger, price_file, await ledger.catalog_diff(price_file))
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidInput(
                "--yes", None, "given to apply without a terminal to confirm on (read the diff first)"
            )
        answer = await anyio.to_thread.run_sync(input, "apply this catalog update? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    update, _ = await ledger.update_catalog(price_file, actor=operator())
    print(
        f"catalog update {update.update_id} stored: its prices are in force from "
        f"{update.effective_from.isoformat(timespec='seconds')}; earlier usage keeps the prices of its time. "
        "Every server takes it at its next poll (TOKENLEDGER_CATALOG_POLL_SECONDS)."
    )
    return 0


async def catalog_status_command(ledger: Ledger, args: argparse.Namespace) -> int:
    current = ledger.catalog
    snapshot = current.snapshot
    applied = {update.update_id for update in current.applied_updates}
    updates = await ledger.catalog_updates()
    if args.json:
        _print_json(
            {
                "bundled": _snapshot_json(),
                "models": len(current.model_names()),
                "updates": [
                    {**_update_json(update), "applied": update.update_id in applied} for update in updates
                ],
            }
        )
        return 0
    print(f"bundled: snapshot {snapshot.date} (litellm {snapshot.version}), {snapshot.models:,} models")
    if not updates:
        print("updates: none (tokenledger catalog update --from FILE adds one)")
        return 0
    rows = [["UPDATE", "IN FORCE FROM", "SOURCE", "MODELS", "SHA-256", "BY", "STATE"]]
    for update in updates:
        rows.append(
            [
                str(update.update_id),
                update.effective_from.isoformat(timespec="seconds"),
                f"{update.source_name} ({update.source_kind})",
                f"{update.models:,}",
                update.sha256[:12],
                update.created_by or "-",
                "applied" if update.update_id in applied else "superseded by the bundled snapshot",
            ]
        )
    _print_table(rows, right_aligned={3})
    print(f"catalog in force: {len(current.model_names()):,} models")
    return 0


def _source_json(price_file: PriceFile) -> dict[str, Any]:
    return {
        "name": price_file.source_name,
        "kind": price_file.source_kind,
        "sha256": price_file.sha256,
        "bytes": price_file.size_bytes,
        "models": len(price_file.entries),
        "skipped": list(price_file.skipped),
    }


def _update_json(update: catalog.CatalogUpdate) -> dict[str, Any]:
    return {
        "update_id": update.update_id,
        "effective_from": update.effective_from.isoformat(),
        "source": update.source_name,
        "kind": update.source_kind,
        "sha256": update.sha256,
        "models": update.models,
        "created_at": update.created_at.isoformat() if update.created_at else None,
        "created_by": update.created_by,
    }


def _print_diff(ledger: Ledger, price_file: PriceFile, diff: CatalogDiff) -> None:
    snapshot = ledger.catalog.snapshot
    applied = len(ledger.catalog.applied_updates)
    print(
        f"catalog diff: {price_file.source_name} ({price_file.source_kind}, "
        f"{len(price_file.entries):,} models, sha256 {price_file.sha256[:12]}) against the catalog in force: "
        f"bundled {snapshot.date} (litellm {snapshot.version}) + {applied} update(s)"
    )
    print(f"providers it covers: {', '.join(diff.providers)}")
    for skipped in price_file.skipped:
        print(f"skipped: {skipped}")
    sections = [
        ("added", diff.added, _listing_line),
        ("listed again", diff.relisted, _change_line),
        ("retired (no longer listed)", diff.retired, lambda change: f"{change.name} ({change.provider})"),
        ("price changes, USD per million tokens", diff.changed, _change_line),
    ]
    for title, changes, line in sections:
        print(f"{title}: {len(changes):,}")
        for change in changes[:DIFF_LINES]:
            print(f"  {line(change)}")
        if len(changes) > DIFF_LINES:
            print(f"  ... and {len(changes) - DIFF_LINES:,} more (--json lists every one)")
    print(f"unchanged: {diff.unchanged:,}")


def _listing_line(change: ModelChange) -> str:
    return (
        f"{change.name} ({change.provider}): input {_per_million(change.input)} / output "
        f"{_per_million(change.output)} per million, context {_tokens(change.context_window)}"
    )


def _change_line(change: ModelChange) -> str:
    rates = "; ".join(
        f"{rate.rate} {_per_million(rate.old)} -> {_per_million(rate.new)}" for rate in change.changes
    )
    return f"{change.name} ({change.provider}): {rates or 'same prices'}"
