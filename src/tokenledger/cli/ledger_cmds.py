"""`tokenledger migrate | budget | usage | keys | doctor`: the ledger from the shell.

Each command opens the ledger (the embedded PostgreSQL unless TOKENLEDGER_DATABASE_URL is set)
and acts as the configured local principal (TOKENLEDGER_TENANT, default `default`; admin).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from tokenledger.cli import tables
from tokenledger.errors import InvalidInput, TokenLedgerError
from tokenledger.fx import convert, describe, shown
from tokenledger.ledger import CLEARABLE_BUDGET_FIELDS, Ledger, money
from tokenledger.settings import Settings
from tokenledger.types import (
    Budget,
    BudgetChange,
    BudgetState,
    FxRate,
    Principal,
    UsageQuery,
    UsageResult,
    UsageRow,
)

DEFAULT_PERIOD = "month"  # of a new budget set without --period


def register(subparsers: Any) -> None:
    migrate = subparsers.add_parser("migrate", help="create or upgrade the ledger's schema")
    migrate.set_defaults(handler=_run(migrate_command, migrate=False))

    doctor = subparsers.add_parser("doctor", help="check the database, encodings and catalog")
    doctor.set_defaults(handler=_run(doctor_command))

    budget = subparsers.add_parser("budget", help="set, list, show or delete budgets")
    actions = budget.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = actions.add_parser("set", help="create a budget, or change the options given of one")
    setter.add_argument("name")
    setter.add_argument("--limit", help="tokens, or USD for --unit usd (required to create)")
    setter.add_argument("--scope", help="global (default), or KIND:VALUE (user:ana, team:search, ...)")
    setter.add_argument("--unit", help="tokens (default) or usd")
    setter.add_argument(
        "--period",
        help=f"minute hour day week month year total 24h 7d 30d (default for a new budget: {DEFAULT_PERIOD})",
    )
    setter.add_argument("--timezone", help="IANA zone for calendar periods (default UTC)")
    setter.add_argument("--enforcement", help="hard (deny, default), soft (warn) or shadow (record)")
    setter.add_argument("--hard-limit", help="allow overage up to this (above --limit), or 'none'")
    setter.add_argument("--alert-thresholds", help="percentages, comma-separated (default 50,75,90,100)")
    setter.add_argument(
        "--priority-shares",
        help="share of what remains one request may take (default high=0.5,medium=0.3,low=0.2), or 'none'",
    )
    setter.add_argument("--rollover", help="none (default), or carry unused allowance")
    setter.add_argument("--rollover-cap", help="carry at most this much, or 'none'")
    setter.add_argument("--tpm", help="tokens per minute, or 'none'")
    setter.add_argument("--rpm", help="requests per minute, or 'none'")
    setter.add_argument("--unpriced-policy", help="deny (default) or allow unpriced models (usd budgets)")
    setter.add_argument(
        "--currency",
        help="a usd budget's --limit and --hard-limit are in this ISO 4217 currency (converted at the "
        "tenant's rate at each period's start; tokenledger fx), or 'none'",
    )
    setter.add_argument(
        "--reset-counters",
        action="store_true",
        help="confirm a change of scope, unit, period or timezone that discards this period's counters",
    )
    setter.add_argument("--json", action="store_true")
    setter.set_defaults(handler=_run(budget_set_command))
    for name, handler, help_text in (
        ("show", budget_show_command, "one budget and its live state"),
        ("delete", budget_delete_command, "delete a budget"),
    ):
        parser = actions.add_parser(name, help=help_text)
        parser.add_argument("name")
        parser.add_argument("--json", action="store_true")
        if name == "show":
            parser.add_argument("--currency", help=_CURRENCY_HELP)
        parser.set_defaults(handler=_run(handler))
    lister = actions.add_parser("list", help="every budget with its live state")
    lister.add_argument("--json", action="store_true")
    lister.add_argument("--currency", help=_CURRENCY_HELP)
    lister.set_defaults(handler=_run(budget_list_command))

    usage = subparsers.add_parser("usage", help="usage aggregated by attribution, model and time")
    usage.add_argument("--since", help="ISO timestamp with offset, or a duration back (90m, 24h, 7d)")
    usage.add_argument("--until", help="ISO timestamp with offset, or a duration back; default now")
    usage.add_argument(
        "--group-by", default="", help="comma-separated: user session project team feature ..."
    )
    usage.add_argument("--bucket", help="hour, day, week or month")
    usage.add_argument("--timezone", default="UTC")
    for key in ("user", "session", "project", "team", "feature", "endpoint", "model", "provider"):
        usage.add_argument(f"--{key}")
    usage.add_argument("--limit", default="50")
    usage.add_argument(
        "--currency",
        help="also show costs in this ISO 4217 currency, each at its date's rate (tokenledger fx)",
    )
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(handler=_run(usage_command))

    prune = subparsers.add_parser("prune", help="drop whole monthly usage partitions, keeping daily totals")
    prune.add_argument(
        "--older-than", help="a duration such as 90d (default: TOKENLEDGER_RETENTION, else 90d)"
    )
    prune.set_defaults(handler=_run(prune_command))

    keys = subparsers.add_parser("keys", help="create, list or revoke API keys")
    key_actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = key_actions.add_parser("create", help="create a key; it is printed once")
    create.add_argument("--role", required=True, help="admin, member or viewer")
    create.add_argument("--user", help="the user a member key acts for")
    create.add_argument("--tenant", help="the key's tenant (default: yours)")
    create.add_argument("--name", help="a label")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_run(keys_create_command))
    listing = key_actions.add_parser("list", help="keys of a tenant (never the keys themselves)")
    listing.add_argument("--tenant", help="the tenant whose keys to list (default: yours)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_run(keys_list_command))
    revoke = key_actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_run(keys_revoke_command))


_CURRENCY_HELP = (
    "show usd budgets' amounts in this ISO 4217 currency, at the rate of their period's start "
    "(tokenledger fx)"
)

Command = Callable[[Ledger, Principal, argparse.Namespace], Awaitable[int]]


def _run(command: Command, *, migrate: bool = True) -> Callable[[argparse.Namespace], int]:
    """A sync handler that opens the ledger, runs the command as the local principal and closes it."""

    def handler(args: argparse.Namespace) -> int:
        async def main() -> int:
            settings = Settings.from_env()
            principal = Principal(
                tenant_id=settings.stdio_tenant,
                role=settings.stdio_role,
                user=settings.stdio_user,
            )
            async with await Ledger.open(settings, migrate=migrate) as ledger:
                return await command(ledger, principal, args)

        return anyio.run(main)

    return handler


# --- commands ------------------------------------------------------------------------------------


async def migrate_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    applied = await ledger.store.migrate()
    print("schema up to date" + (f" (applied: {', '.join(applied)})" if applied else ""))
    return 0


async def doctor_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    await ledger.store.ping()
    snapshot = ledger.catalog.snapshot
    count = ledger.counter.count_text("tokenledger doctor", encoding="o200k_base")
    print("database: ok")
    print(f"encodings: ok (o200k_base counted {count.tokens} tokens offline)")
    print(f"catalog: {snapshot.models} models, snapshot {snapshot.date} ({snapshot.source})")
    from tokenledger.cli.counting_cmds import describe_counting

    print(f"counting in SQL: {describe_counting(await ledger.counting_support())}")
    return 0


async def budget_set_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {"name": args.name}
    for field, option in _BUDGET_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue  # not given: an existing budget keeps its value
        if field in CLEARABLE_BUDGET_FIELDS and value.strip().lower() == "none":
            changes[field] = None  # cleared: no hard limit, no cap, no rate limit, no shares
        elif field == "alert_thresholds":
            changes[field] = _split(value)
        elif field == "priority_shares":
            changes[field] = _shares(value)
        else:
            changes[field] = value
    change = BudgetChange.model_validate(changes)
    budget = await ledger.set_budget(change, principal, reset_counters=args.reset_counters)
    _print_budgets([budget], args.json)
    created = budget.created_at == budget.updated_at
    if created and args.period is None and not args.json:
        print(f"period: {budget.spec.period} (the default for a new budget; --period sets another)")
    return 0


# BudgetChange fields -> `budget set` options (argparse names); the clearable fields accept 'none'.
_BUDGET_OPTIONS = {field: field for field in BudgetChange.model_fields if field != "name"} | {
    "tokens_per_minute": "tpm",
    "requests_per_minute": "rpm",
}


async def budget_list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    budgets = await ledger.list_budgets(principal)
    rates = await ledger.budget_rates(budgets, args.currency, principal) if args.currency else {}
    _print_budgets(budgets, args.json, args.currency, rates)
    return 0


async def budget_show_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    budgets = [await ledger.get_budget(args.name, principal)]
    rates = await ledger.budget_rates(budgets, args.currency, principal) if args.currency else {}
    _print_budgets(budgets, args.json, args.currency, rates)
    return 0


async def budget_delete_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    deleted = await ledger.delete_budget(args.name, principal)
    if args.json:
        print_json(deleted)
    else:
        print(f"deleted budget {deleted.name}")
    return 0


async def usage_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    check_window(args)
    filters = {k: getattr(args, k) for k in ("user", "session", "project", "team", "feature", "endpoint")}
    query = UsageQuery.model_validate(
        {
            **{k: v for k, v in filters.items() if v is not None},
            "model": args.model,
            "provider": args.provider,
            "since": args.since,
            "until": args.until,
            "group_by": _split(args.group_by),
            "bucket": args.bucket,
            "timezone": args.timezone,
            "limit": args.limit,
            "currency": args.currency,
        }
    )
    result = await ledger.usage(query, principal)
    if args.json:
        print_json(result)
        return 0
    tables.show(tables.console(), usage_grid(result, query))
    return 0


def usage_grid(result: UsageResult, query: UsageQuery) -> tables.Grid:
    """Usage rows under their group keys (or time buckets), then a TOTAL row; a window without groups
    shows its TOTAL alone."""
    labels = [tables.Column(tables.header(key)) for key in query.group_by]
    if query.bucket:
        labels.append(tables.Column("Bucket", "date"))
    rows = result.rows if labels else []
    if not labels:
        labels = [tables.Column("Window")]
    numbers = [
        tables.Column("Requests", "number"),
        tables.Column("Input tokens", "number", drop=2),
        tables.Column("Output tokens", "number", drop=1),
        tables.Column("Total tokens", "number"),
        tables.Column("Cost (USD)", "number"),
        *([tables.Column(f"Cost ({result.currency})", "number")] if result.currency else []),
    ]

    def counts(row: UsageRow) -> list[str]:
        values = (row.requests, row.input_tokens, row.output_tokens, row.total_tokens)
        converted = [shown(row.cost_converted or Decimal(0), result.currency)] if result.currency else []
        return [*(str(value) for value in values), money(row.cost_usd), *converted]

    def label(row: UsageRow) -> list[str]:
        cells = [row.keys.get(key) or "-" for key in query.group_by]
        if query.bucket:
            cells.append(tables.moment(row.bucket))
        return cells

    totals = ["TOTAL", *([""] * (len(labels) - 1)), *counts(result.totals)]
    since, until = (tables.moment(moment) for moment in (result.since, result.until))
    notes = (
        [f"{describe(result.fx_rates, result.currency)}; each cost at the rate in force when it occurred"]
        if result.currency
        else []
    )
    return tables.Grid(
        columns=[*labels, *numbers],
        rows=[[*label(row), *counts(row)] for row in rows],
        totals=totals,
        title=f"usage from {since} to {until}",
        notes=notes,
    )


async def prune_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    older_than = parse_duration(
        args.older_than or os.environ.get("TOKENLEDGER_RETENTION") or "90d", "--older-than"
    )
    result = await ledger.prune_usage(older_than, principal)
    dropped = result["dropped_partitions"]
    print(
        f"dropped {len(dropped)} partition(s){': ' + ', '.join(dropped) if dropped else ''}; "
        f"kept their totals in {result['rollup_rows']} daily rollup row(s)"
    )
    return 0


def check_window(args: argparse.Namespace) -> None:
    """Refuse a bare number for --since / --until: pydantic would read `7` as seconds after 1970."""
    for flag in ("since", "until"):
        value = getattr(args, flag, None)
        if value is not None and re.fullmatch(r"\s*[+-]?\d+(\.\d*)?\s*", value):
            raise InvalidInput(
                f"--{flag}",
                value,
                f"a duration with its unit (did you mean {value.strip()}d? also 90m, 24h, 2w) "
                "or an ISO 8601 timestamp with its offset",
            )


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be created: a directory, or a file in a
    directory that does not exist."""
    if path.is_dir():
        raise InvalidInput(flag, str(path), "a file to write, not a directory")
    parent = path.parent
    if not parent.is_dir():
        raise InvalidInput(flag, str(path), f"a file in an existing directory ({parent} does not exist)")


def parse_duration(value: str, field: str) -> timedelta:
    match = re.fullmatch(r"(\d{1,5})([hdw])", value.strip())
    if not match:
        raise InvalidInput(field, value, "a duration like 36h, 90d or 12w")
    amount, unit = int(match[1]), match[2]
    return timedelta(hours=amount) if unit == "h" else timedelta(days=amount * (7 if unit == "w" else 1))


async def keys_create_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    if args.role == "member" and not args.user:
        raise TokenLedgerError("--user: missing; a member key acts for one user: give --user NAME")
    key, record = await ledger.create_key(
        role=args.role, user=args.user, tenant=args.tenant, name=args.name, principal=principal
    )
    if args.json:
        print_json({"key": key, **record})
    else:
        print(key)
        print(
            f"key_id {record['key_id']}, role {record['role']}, tenant {record['tenant_id']}"
            + (f", user {record['user_id']}" if record["user_id"] else "")
            + ". Store the key now: it is not shown again."
        )
    return 0


async def keys_list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    if args.tenant:  # the local operator may read any tenant's keys, as `keys create --tenant` writes them
        principal = principal.model_copy(update={"tenant_id": Principal(tenant_id=args.tenant).tenant_id})
    keys = await ledger.list_keys(principal)
    if args.json:
        print_json(keys)
        return 0
    if not keys:
        print(f"keys of tenant {principal.tenant_id!r}: none")
        return 0
    tables.show(tables.console(), keys_grid(keys, principal.tenant_id))
    return 0


def keys_grid(keys: Sequence[dict[str, Any]], tenant: str) -> tables.Grid:
    columns = [
        tables.Column("Key id"),
        tables.Column("Role"),
        tables.Column("User"),
        tables.Column("Name", "prose", drop=1),
        tables.Column("Created", "date"),
        tables.Column("Revoked", "date"),
    ]
    rows = [
        [
            key["key_id"],
            key["role"],
            key["user_id"] or "-",
            key["name"] or "-",
            tables.moment(key["created_at"]),
            tables.moment(key["revoked_at"]) if key["revoked_at"] else "-",
        ]
        for key in keys
    ]
    return tables.Grid(columns=columns, rows=rows, title=f"keys of tenant {tenant!r}")


async def keys_revoke_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    revoked = await ledger.revoke_key(args.key_id, principal)
    print(f"revoked {revoked['key_id']} at {revoked['revoked_at'].isoformat(timespec='seconds')}")
    return 0


# --- parsing and printing ------------------------------------------------------------------------


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _shares(value: str) -> dict[str, str]:
    shares = {}
    for part in _split(value):
        priority, sep, share = part.partition("=")
        if not sep:
            raise InvalidInput(
                "--priority-shares", value, "PRIORITY=SHARE pairs like high=0.5,low=0.2, or none"
            )
        shares[priority.strip()] = share.strip()
    return shares


def _print_budgets(
    budgets: Sequence[Budget],
    as_json: bool,
    currency: str | None = None,
    rates: dict[str, FxRate] | None = None,
) -> None:
    """Budgets as JSON or a table; usd amounts in `currency` where a rate is given for the budget (at its
    period start)."""
    rates = rates or {}
    if as_json:
        print_json(
            [
                {**budget.model_dump(mode="json"), "shown_in": _shown_in(budget, rates[budget.spec.name])}
                if budget.spec.name in rates
                else budget
                for budget in budgets
            ]
        )
        return
    tables.show(tables.console(), budgets_grid(budgets, currency, rates))


def _shown_in(budget: Budget, rate: FxRate) -> dict[str, Any]:
    """A usd budget's amounts in a currency, for JSON: exact, with the rate and its date."""
    state = budget.state
    amounts = {
        k: format(convert(getattr(state, k), rate.rate), "f")
        for k in ("limit", "used", "reserved", "remaining")
    }
    return {
        "currency": rate.currency,
        "rate": format(rate.rate, "f"),
        "rate_from": rate.effective_from.isoformat(),
        **amounts,
    }


def _declared(state: BudgetState) -> str | None:
    """How a budget declared in another currency got this period's USD limit."""
    if not state.currency or state.currency_limit is None:
        return None
    rate = (
        f"{state.fx_rate.normalize():f} per USD from {state.fx_rate_from.isoformat()}"
        if state.fx_rate is not None and state.fx_rate_from is not None
        else "no rate found now"
    )
    return (
        f"{state.name}: declared as {shown(state.currency_limit, state.currency)}; this period's limit "
        f"{money(state.limit)} at {state.currency} {rate}"
    )


def budgets_grid(
    budgets: Sequence[Budget], currency: str | None = None, rates: dict[str, FxRate] | None = None
) -> tables.Grid:
    """Budgets with their live state; each reset time in its budget's own time zone; usd amounts in
    `currency` at a budget's rate in `rates` (its period start's), and a note on each budget declared in
    a currency."""
    rates = rates or {}
    columns = [
        tables.Column("Name"),
        tables.Column("Scope"),
        tables.Column("Period"),
        tables.Column("Limit", "number"),
        tables.Column("Hard limit", "number", drop=8),
        tables.Column("Used", "number", drop=6),
        tables.Column("Reserved", "number", drop=7),
        tables.Column("Remaining", "number"),
        tables.Column("Used %", "number", drop=5),
        tables.Column("RPM", "number", drop=3),
        tables.Column("TPM", "number", drop=4),
        tables.Column("Resets", "date", drop=2),
        tables.Column("Status", drop=1),
    ]
    rows = []
    for budget in budgets:
        state, spec = budget.state, budget.spec

        rate = rates.get(state.name)

        def amount(value: Decimal | None, unit: str = state.unit, rate: FxRate | None = rate) -> str:
            if value is None:
                return "-"
            if rate is not None:
                return shown(convert(value, rate.rate), rate.currency)
            return money(value) if unit == "usd" else f"{value.normalize():f}"

        rows.append(
            [
                state.name,
                state.scope,
                f"{state.period}, {state.enforcement}",
                amount(state.limit),
                amount(state.hard_limit),
                amount(state.used),
                amount(state.reserved),
                amount(state.remaining),
                f"{state.percent_used:.1f}",
                _rate(spec.requests_per_minute),
                _rate(spec.tokens_per_minute),
                tables.moment(state.resets_at, state.timezone) if state.resets_at else "never",
                state.status,
            ]
        )
    notes = [note for budget in budgets if (note := _declared(budget.state))]
    if rates and currency:
        used = sorted(
            {rate.effective_from: rate for rate in rates.values()}.values(), key=lambda r: r.effective_from
        )
        notes.append(
            f"usd amounts in {currency.upper()} at the rate of each period's start; "
            f"{describe(used, currency.upper())}"
        )
    return tables.Grid(columns=columns, rows=rows, title=None if budgets else "no budgets", notes=notes)


def _rate(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_json(value: Any) -> None:
    def plain(item: Any) -> Any:
        if isinstance(item, BaseModel):
            return item.model_dump(mode="json")
        if isinstance(item, Decimal):
            return format(item, "f")
        if hasattr(item, "isoformat"):
            return item.isoformat()
        raise TypeError(f"cannot print {type(item).__name__} as JSON")

    if isinstance(value, list):
        value = [plain(v) if isinstance(v, BaseModel) else v for v in value]
    print(json.dumps(value, indent=2, default=plain))
