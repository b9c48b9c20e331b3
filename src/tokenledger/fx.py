"""Exchange rates: costs stay in USD; a tenant's dated rates show them in its own currency.

A rate is the units of a currency one US dollar buys (EUR 0.92: $1 = €0.92), in force from its
`effective_from` until the next rate of the same currency. Conversion is exact: a USD amount times a rate
is a Decimal product with every digit kept (json carries it whole); tables show 2 decimals, rounded half
up. Codes are ISO 4217 (pycountry's table, from Debian's iso-codes). Nothing is fetched: rates are only
the ones the tenant set. Pure functions over pydantic models, no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Annotated

from pydantic import BeforeValidator, Field

from tokenledger.errors import InvalidInput
from tokenledger.types import FxRate, Model, Moment

__all__ = [
    "BASE",
    "FxRate",
    "FxRateSpec",
    "Rates",
    "check_currency",
    "convert",
    "moment_of",
    "shown",
]

BASE = "USD"  # the ledger's own unit: every cost is recorded in it
MIN_RATE = Decimal("0.000001")
MAX_RATE = Decimal(10_000_000)  # above the weakest currencies' rates to the dollar
MAX_RATES_PER_CURRENCY = 10_000  # a daily rate for 27 years
EARLIEST_RATE = datetime(1970, 1, 1, tzinfo=UTC)
RATES_AHEAD = timedelta(days=366)  # a rate may be set for the coming year (a budget rate), not beyond
_CENT = Decimal("0.01")

Rate = Annotated[Decimal, Field(ge=MIN_RATE, le=MAX_RATE, max_digits=28, decimal_places=12)]


@functools.cache
def _iso_4217() -> frozenset[str]:
    import pycountry

    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


def check_currency(code: object, field: str = "currency", *, allow_base: bool = True) -> str:
    """Return an ISO 4217 code, upper-cased; InvalidInput names the field otherwise. USD, the ledger's
    own unit, is refused where a rate is set (`allow_base=False`)."""
    allowed = "an ISO 4217 currency code such as EUR, GBP or JPY"
    if not isinstance(code, str) or len(code.strip()) != 3:
        raise InvalidInput(field, code, allowed)
    upper = code.strip().upper()
    if upper not in _iso_4217():
        raise InvalidInput(field, code, allowed)
    if upper == BASE and not allow_base:
        raise InvalidInput(field, code, f"a currency other than {BASE}: costs are recorded in {BASE}, 1 to 1")
    return upper


def moment_of(value: str | datetime, field: str = "effective_from") -> datetime:
    """Return `--from` as an aware moment: YYYY-MM-DD is that day's midnight UTC; a timestamp needs its
    offset."""
    moment: datetime | None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            if len(value.strip()) == 10:
                moment = datetime.combine(date.fromisoformat(value.strip()), time(), tzinfo=UTC)
            else:
                moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput(field, value, "YYYY-MM-DD (midnight UTC) or an ISO 8601 timestamp with its offset")
    latest = datetime.now(UTC) + RATES_AHEAD
    if not EARLIEST_RATE <= moment <= latest:
        raise InvalidInput(
            field, moment.isoformat(), f"from {EARLIEST_RATE.date()} to a year ahead ({latest.date()})"
        )
    return moment


def _day_or_moment(value: object) -> object:
    """YYYY-MM-DD is that day's midnight UTC; other values pass on to the Moment rules."""
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return datetime.combine(date.fromisoformat(value.strip()), time(), tzinfo=UTC)
        except ValueError:
            return value
    return value


class FxRateSpec(Model):
    """A dated rate a tenant admin sets: `rate` units of `currency` per 1 USD from `effective_from`."""

    currency: Annotated[str, Field(min_length=3, max_length=3)]
    rate: Rate
    effective_from: Annotated[Moment, BeforeValidator(_day_or_moment)] | None = None  # default: now


class Rates:
    """A tenant's rates of one currency, oldest first; the rate in force at any moment."""

    def __init__(self, currency: str, rates: Sequence[FxRate]) -> None:
        self.currency = currency
        self.rates = sorted(
            (rate for rate in rates if rate.currency == currency), key=lambda rate: rate.effective_from
        )

    def at(self, moment: datetime) -> FxRate | None:
        """The rate in force at `moment` (the latest from at or before it), or None."""
        found = None
        for rate in self.rates:
            if rate.effective_from > moment:
                break
            found = rate
        return found

    def require(self, moment: datetime, what: str) -> FxRate:
        """The rate in force at `moment`; InvalidInput says which rate is missing and how to set it."""
        found = self.at(moment)
        if found is None:
            raise missing_rate(self.currency, moment, what, self.rates[0] if self.rates else None)
        return found

    def in_window(self, since: datetime, until: datetime) -> list[FxRate]:
        """The rates in force at some moment of [since, until), oldest first."""
        first = self.at(since)
        later = [rate for rate in self.rates if since < rate.effective_from < until]
        return ([first] if first is not None else []) + later

    def thresholds(self) -> tuple[list[Decimal], list[datetime]]:
        """The rates and their starts as arrays, for SQL's width_bucket (a cost's rate found per row)."""
        return [rate.rate for rate in self.rates], [rate.effective_from for rate in self.rates]


def missing_rate(currency: str, moment: datetime, what: str, earliest: FxRate | None) -> InvalidInput:
    day = moment.astimezone(UTC).date().isoformat()
    known = (
        f"the earliest {currency} rate is from {earliest.effective_from.date().isoformat()}"
        if earliest is not None
        else f"this tenant has no {currency} rate"
    )
    return InvalidInput(
        "currency",
        currency,
        f"a {currency} rate in force at {moment.isoformat()} ({what}); {known}: set one with "
        f"`tokenledger fx set {currency} RATE --from {day}` (Ledger.set_fx_rate)",
    )


def convert(usd: Decimal, rate: Decimal) -> Decimal:
    """The exact amount of `usd` in the rate's currency (no digit of the product dropped)."""
    with localcontext(prec=80):
        return usd * rate


def shown(amount: Decimal, currency: str) -> str:
    """An amount for a table: 2 decimals, rounded half up, with its code (`EUR 1,234.57`)."""
    return f"{currency} {amount.quantize(_CENT, rounding=ROUND_HALF_UP):,}"


def describe(rates: Sequence[FxRate], currency: str) -> str:
    """The rates a report used, for its notes: `EUR per USD: 0.90 from 2026-10-01, 0.92 from 2026-11-01`."""
    if not rates:
        return f"{currency} per USD: no rate was needed"
    parts = [f"{format(rate.rate.normalize(), 'f')} from {rate.effective_from.isoformat()}" for rate in rates]
    return f"{currency} per USD: " + ", ".join(parts)
