"""Anomaly alerts: is an hour's spend a spike against the same hour of the week in recent weeks? Pure
functions, no I/O: the store reads the hours (`Store.anomaly_candidates`), the database writes each alert
once (`tl_anomaly_alerts`).

The baseline of an hour is the spend of the same local hour of the week (Monday 09:00 in the budget's time
zone) in each of the last BASELINE_WEEKS weeks, zero where nothing was spent, for the weeks since the
tenant's usage history begins. It is robust by construction: the median and the median absolute deviation
(MAD) ignore the odd holiday or the odd spike of earlier weeks, where a mean and a standard deviation would
be dragged by them. An hour is a spike when its spend

- exceeds median + MAD_CUTOFF x 1.4826 x MAD: 1.4826 x MAD estimates the standard deviation of normally
  distributed spend, and 3.5 is the cut-off Iglewicz and Hoaglin recommend for such modified z-scores;
- is at least SPIKE_RATIO times the median: a steady baseline has a MAD of zero, and a cent over it would
  otherwise count;
- reaches the absolute floor of its unit (ANOMALY_FLOOR): an hour of a few cents or a few thousand tokens
  never pages anybody, whatever it is compared with.

A weekly rhythm (a Monday-morning peak every week) is the baseline of Monday morning, so it never alerts;
the same peak on a Sunday night does.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

__all__ = [
    "ANOMALY_FLOOR",
    "BASELINE_WEEKS",
    "MAD_CUTOFF",
    "MIN_BASELINE_WEEKS",
    "SPIKE_RATIO",
    "Judgement",
    "anomaly_period",
    "judge",
]

BASELINE_WEEKS: Final = 8  # two months: enough weeks for a median, recent enough to follow growth
MIN_BASELINE_WEEKS: Final = 4  # fewer weeks of history than this: no judgement yet
MAD_CUTOFF: Final = Decimal("3.5")
MAD_TO_SIGMA: Final = Decimal("1.4826")  # 1 / Φ⁻¹(3/4): the MAD of a normal distribution times this is σ
SPIKE_RATIO: Final = Decimal(2)
# The least an hour must spend to be a spike, per budget unit.
ANOMALY_FLOOR: Final = {"usd": Decimal("1.00"), "tokens": Decimal(100_000)}

# The period an anomaly alert is raised once in: the budget's own, except where that is an hour or less
# (a spike would page every hour), a rolling window (no fixed start) or the whole life of the budget.
_ANOMALY_PERIODS: Final = {
    "minute": "day",
    "hour": "day",
    "24h": "day",
    "7d": "week",
    "30d": "month",
    "total": "month",
}


@dataclass(frozen=True)
class Judgement:
    """An hour's spend against its baseline, and whether it is a spike."""

    spend: Decimal
    baseline: tuple[Decimal, ...]
    median: Decimal
    mad: Decimal
    bar: Decimal  # the spend above which the hour is a spike (floor aside)
    floor: Decimal
    spike: bool


def judge(spend: Decimal, baseline: Sequence[Decimal], unit: str) -> Judgement | None:
    """The judgement of one hour's `spend` against the same hour in earlier weeks (`baseline`, zeros
    included), or None when there are fewer than MIN_BASELINE_WEEKS of them."""
    if len(baseline) < MIN_BASELINE_WEEKS:
        return None
    median = Decimal(statistics.median(baseline))
    mad = Decimal(statistics.median([abs(value - median) for value in baseline]))
    bar = max(median + MAD_CUTOFF * MAD_TO_SIGMA * mad, SPIKE_RATIO * median)
    floor = ANOMALY_FLOOR[unit]
    return Judgement(
        spend=spend,
        baseline=tuple(baseline),
        median=median,
        mad=mad,
        bar=bar,
        floor=floor,
        spike=spend > bar and spend >= floor,
    )


def anomaly_period(period: str) -> str:
    """The calendar period (in the budget's time zone) an anomaly alert of a budget with `period` is
    raised once in: per budget and user."""
    return _ANOMALY_PERIODS.get(period, period)
