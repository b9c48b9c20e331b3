"""The exact USD cost of one request at a price, as the providers bill it.

Token conventions (the same for every provider):
- `input_tokens` are uncached input tokens; cache reads and cache writes are counted separately
  (Anthropic's convention) and priced at their own rates, or at the input rate where the provider
  publishes none, so a missing rate over-charges, never under-charges;
- `reasoning_output_tokens` are part of `output_tokens` (OpenAI's convention) and priced at the
  reasoning rate where one is published, else at the output rate;
- a model without an input or output price is unpriced: its cost is None, never $0.

Which rates apply (`Price` holds them; `tl_cost` in SQL must follow the same rule):
- the context tier: the highest tier whose `above_input_tokens` the request's whole input (uncached +
  cache read + cache write) exceeds; the whole request is billed at it, as providers bill long contexts;
- the mode: `batch` (a Batch API call) or the service tier `flex`/`priority`; standard by default;
- each rate is the most specific one published, in this order: the tier's rate for the mode, the
  tier's standard rate, the mode's rate, the standard rate. A 1-hour cache write takes the 1-hour
  rate by that order, else the 5-minute one.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import get_args

from tokenledger.errors import InvalidInput
from tokenledger.types import CacheTTL, CostBreakdown, Price, PriceMode, PriceRates, ServiceTier

_TOKENS_ALLOWED = "a whole number of tokens, 0 or more"


def _tokens(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(field, value, _TOKENS_ALLOWED)
    return value


def price_mode(batch: bool, service_tier: str) -> PriceMode:
    """Return the price mode of a call, after checking the options; InvalidInput names a bad one."""
    if not isinstance(batch, bool):
        raise InvalidInput("batch", batch, "true or false")
    if service_tier not in get_args(ServiceTier):
        raise InvalidInput("service_tier", service_tier, f"one of: {', '.join(get_args(ServiceTier))}")
    if batch and service_tier != "standard":
        raise InvalidInput(
            "service_tier", service_tier, "standard for a batch call: the Batch API has its own price"
        )
    if batch:
        return "batch"
    return "standard" if service_tier == "standard" else service_tier  # type: ignore[return-value]


def rate_sets(
    price: Price, mode: PriceMode, whole_input: int
) -> tuple[list[PriceRates], PriceMode, int | None]:
    """Return the rate sets to read, most specific first, the mode whose rates apply and the tier reached."""
    tier = None
    for candidate in price.tiers:
        if whole_input > candidate.above_input_tokens:
            tier = candidate
    sets: list[PriceRates | None] = []
    if tier is not None:
        sets += [getattr(tier, mode, None) if mode != "standard" else None, tier]
    sets += [getattr(price, mode, None) if mode != "standard" else None, price]
    published = (
        mode == "standard"
        or getattr(price, mode) is not None
        or (tier is not None and getattr(tier, mode) is not None)
    )
    applied: PriceMode = mode if published else "standard"
    threshold = None if tier is None else tier.above_input_tokens
    return [rates for rates in sets if rates is not None], applied, threshold


def _rate(sets: list[PriceRates], kind: str) -> Decimal | None:
    return next((rate for rates in sets if (rate := getattr(rates, kind)) is not None), None)


def _first(sets: list[PriceRates], kinds: tuple[str, ...], fallback: Decimal) -> Decimal:
    """Return the first published rate of `kinds` (each searched through every set), else `fallback`."""
    for kind in kinds:
        rate = _rate(sets, kind)
        if rate is not None:
            return rate
    return fallback


def cost(
    price: Price,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    reasoning_output_tokens: int = 0,
    batch: bool = False,
    service_tier: ServiceTier = "standard",
    cache_ttl: CacheTTL = "5m",
) -> CostBreakdown:
    """Return the exact USD cost of one request at `price`, by part; cost None if unpriced.

    `batch`, `service_tier` and `cache_ttl` choose the rates (see the module docstring). `output_usd`
    covers the output other than reasoning, so the parts add up to `cost_usd`.
    """
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "cache_creation_input_tokens": cache_creation_input_tokens,
        "reasoning_output_tokens": reasoning_output_tokens,
    }
    for field, value in counts.items():
        _tokens(field, value)
    if reasoning_output_tokens > output_tokens:
        raise InvalidInput(
            "reasoning_output_tokens",
            reasoning_output_tokens,
            f"at most output_tokens ({output_tokens}): reasoning tokens are part of the output",
        )
    mode = price_mode(batch, service_tier)
    if cache_ttl not in get_args(CacheTTL):
        raise InvalidInput("cache_ttl", cache_ttl, f"one of: {', '.join(get_args(CacheTTL))}")
    whole_input = input_tokens + cache_read_input_tokens + cache_creation_input_tokens
    sets, applied, tier = rate_sets(price, mode, whole_input)
    input_rate, output_rate = _rate(sets, "input"), _rate(sets, "output")
    if input_rate is None or output_rate is None:
        return CostBreakdown(cost_usd=None, priced=False)
    write_kinds = ("cache_write_1h", "cache_write") if cache_ttl == "1h" else ("cache_write",)
    charges = {
        "input_usd": (input_tokens, input_rate),
        "output_usd": (output_tokens - reasoning_output_tokens, output_rate),
        "cache_read_usd": (cache_read_input_tokens, _first(sets, ("cache_read",), input_rate)),
        "cache_write_usd": (cache_creation_input_tokens, _first(sets, write_kinds, input_rate)),
        "reasoning_usd": (reasoning_output_tokens, _first(sets, ("reasoning",), output_rate)),
    }
    # Enough precision that token count x per-token price is never rounded.
    with localcontext(prec=60):
        parts = {part: tokens * rate if tokens else Decimal(0) for part, (tokens, rate) in charges.items()}
        total = sum(parts.values(), Decimal(0))
    return CostBreakdown(
        cost_usd=total, priced=True, price_mode=applied, tier_above_input_tokens=tier, **parts
    )
