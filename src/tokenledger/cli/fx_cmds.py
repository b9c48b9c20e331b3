"""`tokenledger fx set | list | delete`: the tenant's dated exchange rates (units of a currency per 1 USD).

Costs stay in USD; these rates show reports, the dashboard and budgets in another currency, and turn a
USD budget's limit declared in a currency into USD. Nothing is fetched: a rate is what an admin sets.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from tokenledger import fx
from tokenledger.cli import tables
from tokenledger.cli.ledger_cmds import _run, print_json
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.types import FxRate, Principal


def register(subparsers: Any) -> None:
    rates = subparsers.add_parser(
        "fx",
        help="set, list or delete the tenant's dated exchange rates (per 1 USD)",
        description="Exchange rates: RATE units of CURRENCY per 1 USD, in force from --from until the next "
        "rate of that currency. Costs stay in USD; reports, the dashboard and budgets show them converted.",
    )
    actions = rates.add_subparsers(dest="action", metavar="ACTION", required=True)
    setter = actions.add_parser("set", help="set a rate (admin; audited)")
    setter.add_argument("currency", help="ISO 4217 code: EUR, GBP, JPY, ...")
    setter.add_argument("rate", help=f"units of the currency per 1 USD, {fx.MIN_RATE} to {fx.MAX_RATE:,}")
    setter.add_argument(
        "--from", dest="effective_from", help="YYYY-MM-DD (midnight UTC) or ISO 8601 with offset; default now"
    )
    setter.add_argument("--json", action="store_true")
    setter.set_defaults(handler=_run(fx_set_command))
    lister = actions.add_parser("list", help="the tenant's rates, by currency and date")
    lister.add_argument("currency", nargs="?", help="only this currency")
    lister.add_argument("--json", action="store_true")
    lister.set_defaults(handler=_run(fx_list_command))
    deleter = actions.add_parser("delete", help="delete the rate of a currency from a date (admin; audited)")
    deleter.add_argument("currency")
    deleter.add_argument(
        "--from", dest="effective_from", required=True, help="the rate's date, as it was set"
    )
    deleter.set_defaults(handler=_run(fx_delete_command))


async def fx_set_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    try:
        rate = Decimal(args.rate)
    except InvalidOperation:
        raise InvalidInput("rate", args.rate, f"a decimal number, {fx.MIN_RATE} to {fx.MAX_RATE:,}") from None
    spec = fx.FxRateSpec(
        currency=fx.check_currency(args.currency, allow_base=False),
        rate=rate,
        effective_from=None if args.effective_from is None else fx.moment_of(args.effective_from),
    )
    saved = await ledger.set_fx_rate(spec, principal)
    if args.json:
        print_json(saved)
    else:
        print(f"{saved.currency} {_plain(saved.rate)} per USD from {saved.effective_from.isoformat()}")
    return 0


async def fx_list_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    rates = await ledger.list_fx_rates(principal, currency=args.currency)
    if args.json:
        print_json(rates)
        return 0
    if not rates:
        print("no exchange rates (tokenledger fx set EUR 0.92 --from 2026-11-01 sets one)")
        return 0
    _print_rates(rates)
    return 0


async def fx_delete_command(ledger: Ledger, principal: Principal, args: argparse.Namespace) -> int:
    deleted = await ledger.delete_fx_rate(args.currency, args.effective_from, principal)
    print(
        f"deleted {deleted.currency} {_plain(deleted.rate)} per USD from {deleted.effective_from.isoformat()}"
    )
    return 0


def _print_rates(rates: list[FxRate]) -> None:
    columns = [
        tables.Column("Currency"),
        tables.Column("Per USD", "number"),
        tables.Column("From", "date"),
        tables.Column("Until", "date"),
        tables.Column("Set by", drop=1),
    ]
    rows = []
    for index, rate in enumerate(rates):
        following = rates[index + 1] if index + 1 < len(rates) else None
        same = following is not None and following.currency == rate.currency
        until = following.effective_from.isoformat() if following is not None and same else "now"
        rows.append(
            [rate.currency, _plain(rate.rate), rate.effective_from.isoformat(), until, rate.created_by or "-"]
        )
    tables.show(tables.console(), tables.Grid(columns=columns, rows=rows))


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")
