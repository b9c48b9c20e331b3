"""Graceful degradation: which model a guarded call runs on when its budget is tight.

`guard(...)`, `wrap_openai` and `wrap_anthropic` take `fallback=["gpt-4o-mini", ...]` and, optionally,
`fallback_at=0.9`. The call runs on the first fallback model that the budgets allow when

- the check of the requested model is denied for money: a hard USD budget's limit or priority share
  (`blocked_by.reason` "limit" or "priority_share"); or
- with `fallback_at`, the call would bring a USD budget (hard or soft) to that share of its limit or past
  it (used + reserved + the call's estimated cost, read by a check that reserves nothing).

Fallbacks are checked in order and only the one that passes reserves. A denial for anything else (a token
budget, a rate limit, an unpriced model) raises `BudgetExceeded` as without fallbacks, and so does a money
denial that no fallback passes either. A partial grant is an allowed call: it does not fall back.

Pure functions over `CheckResult`s: `guard.reserve` makes the checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tokenledger.errors import InvalidInput
from tokenledger.types import CheckResult

__all__ = [
    "MAX_FALLBACK_MODELS",
    "MONEY_REASONS",
    "Downgrade",
    "fallback_request_id",
    "money_denial",
    "past_share",
    "validate_fallback",
]

# Why a USD budget denies that a cheaper model can fix: its limit, or the share a priority may take of it.
MONEY_REASONS = ("limit", "priority_share")
MAX_FALLBACK_MODELS = 8  # each costs a check when the requested model is denied
MAX_REQUEST_ID = 200  # types.RequestId


@dataclass(frozen=True)
class Downgrade:
    """A call made on a fallback model: the model asked for, the model used, and why."""

    requested_model: str
    model: str
    # "limit" or "priority_share": the requested model was denied; "fallback_at": it would pass the share.
    reason: str
    budget: str  # the budget that made the call fall back


def validate_fallback(
    model: str, fallback: Sequence[str], fallback_at: float | Decimal | str | None
) -> tuple[tuple[str, ...], Decimal | None]:
    """The fallback models and share, checked: names other than `model`, each once, at most
    MAX_FALLBACK_MODELS; a share in (0, 1], and only with fallback models."""
    if isinstance(fallback, str):
        raise InvalidInput("fallback", fallback, "a list of model names, e.g. ['gpt-4o-mini']")
    models = tuple(fallback)
    allowed = f"up to {MAX_FALLBACK_MODELS} model names, each once, other than the model requested ({model})"
    if len(models) > MAX_FALLBACK_MODELS or len(set(models)) != len(models) or model in models:
        raise InvalidInput("fallback", list(models), allowed)
    for name in models:
        if not isinstance(name, str) or not 0 < len(name.strip()) <= 200:
            raise InvalidInput("fallback", name, allowed)
    if fallback_at is None:
        return models, None
    try:
        share = Decimal(str(fallback_at))
    except InvalidOperation:
        share = Decimal(-1)
    if not models:
        raise InvalidInput("fallback_at", str(fallback_at), "only with fallback models to fall back to")
    if not (share.is_finite() and 0 < share <= 1):
        raise InvalidInput(
            "fallback_at", str(fallback_at), "a share of a USD budget's limit: above 0, up to 1"
        )
    return models, share


def money_denial(check: CheckResult) -> tuple[str, str] | None:
    """(budget, reason) when a USD budget denied the check for its limit or priority share; else None."""
    blocked = check.blocked_by
    if check.allowed or blocked is None or blocked.reason not in MONEY_REASONS:
        return None
    state = next((s for s in check.budgets if s.name == blocked.budget), None)
    if state is None or state.unit != "usd":
        return None
    return blocked.budget, blocked.reason


def past_share(check: CheckResult, share: Decimal) -> str | None:
    """The first USD budget (hard or soft) that the checked call, at its estimated cost, brings to `share`
    of its limit or past it; None when there is none or the call is unpriced. `check` reserved nothing."""
    cost = check.estimated_cost_usd
    if cost is None:
        return None
    for state in check.budgets:
        counted = state.unit == "usd" and state.enforcement != "shadow"
        if counted and state.used + state.reserved + cost >= share * state.limit:
            return state.name
    return None


def fallback_request_id(request_id: str | None, position: int) -> str | None:
    """The request_id of the check of the fallback at `position` (1-based): a replay of the guarded call
    replays each of its checks (the requested model's denial, then the fallback's grant)."""
    if request_id is None:
        return None
    suffix = f"#fallback{position}"
    if len(request_id) + len(suffix) > MAX_REQUEST_ID:
        request_id = hashlib.sha256(request_id.encode()).hexdigest()
    return request_id + suffix
