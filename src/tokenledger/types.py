"""The pydantic models that go in and out of `Ledger`, and so of every tool, command and integration.

Field names are a contract with agents and orchestration code: add fields, never rename them.
Money is `Decimal` (a string on the wire), tokens are `int`, timestamps carry their offset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

# --- shared vocabulary -------------------------------------------------------------------------

Method = Literal["exact", "estimate", "provider", "pg_tiktoken"]
Role = Literal["admin", "member", "viewer"]
Priority = Literal["high", "medium", "low"]
Unit = Literal["tokens", "usd"]
Period = Literal["minute", "hour", "day", "week", "month", "year", "total", "24h", "7d", "30d"]
Enforcement = Literal["hard", "soft", "shadow"]
UsageStatus = Literal["success", "error", "cancelled"]
Decision = Literal["allow", "partial", "deny"]
ScopeKind = Literal["global", "team", "project", "user", "session", "feature", "endpoint"]

# Money and amounts travel as plain decimal strings ("0.00000025", never "2.5E-7" or a float).
_plain = PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json")
Amount = Annotated[Decimal, _plain]

# Attribution values are short identifiers: they become report keys and scope values.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/+=-]+$")
]
# Other stored text: no control characters (PostgreSQL text cannot hold NUL).
PRINTABLE_PATTERN = r"^[^\x00-\x1f]+$"
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=PRINTABLE_PATTERN)
]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=PRINTABLE_PATTERN)]
Scope = Annotated[str, StringConstraints(min_length=1, max_length=140, pattern=PRINTABLE_PATTERN)]
TimeZone = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")]
ToolName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE_PATTERN)]
UUID_PATTERN = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
ReservationId = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
# SHA-256 (hex) of a prompt: repeated prompts are found by it, the text is never stored. The ledger stores
# it keyed per tenant (tokenledger.privacy.keyed_prompt_hash), whoever computed it.
PROMPT_HASH_PATTERN = r"^[0-9a-f]{64}$"
PromptHash = Annotated[str, StringConstraints(pattern=PROMPT_HASH_PATTERN)]
BudgetName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
# An ISO 4217 code (EUR, GBP, JPY); tokenledger.fx checks it against the standard's list.
CurrencyCode = Annotated[
    str, StringConstraints(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$", to_upper=True)
]
# What the ledger can hold. One call's token count per field: 10^12 is 100,000 times the largest context
# window, and four such fields still sum far inside bigint (per-call counts are bigint columns; every sum
# across calls is numeric). Budget limits: 10^15 tokens, $10^12.
MAX_TOKENS = 10**12
MAX_TOKEN_LIMIT = 10**15
MAX_USD_LIMIT = 10**12
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Money = Annotated[Decimal, _plain, Field(ge=0, max_digits=38, decimal_places=18)]

# A reservation lives 5 s to a day: shorter would let a stream of instant expiries hold nothing while
# calls still run; a long call extends its reservation instead of asking for hours up front.
MIN_TTL_SECONDS = 5
MAX_TTL_SECONDS = 86_400
TtlSeconds = Annotated[float, Field(ge=MIN_TTL_SECONDS, le=MAX_TTL_SECONDS)]
# When usage happened: direct usage at most MAX_BACKDATE ago, never more than CLOCK_SKEW ahead; a settle
# between its reservation's creation and now (give or take CLOCK_SKEW). An admin imports older usage
# (Ledger.import_usage) back to MAX_IMPORT_AGE.
MAX_BACKDATE = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)
MAX_IMPORT_AGE = timedelta(days=731)

_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d|w)$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Every moment a caller sends lies in this range, so no date arithmetic on it (a window's default start, a
# bucket's boundary, a forecast's horizon) can leave what Python and PostgreSQL can represent.
MAX_DURATION = timedelta(days=36_525)  # 100 years back
EARLIEST_MOMENT = datetime(1900, 1, 1, tzinfo=UTC)  # before any duration can reach
LATEST_MOMENT = datetime(9999, 1, 1, tzinfo=UTC)  # a year short of datetime's end: room for a bucket
MOMENT_RANGE = "between 1900-01-01 and 9999-01-01 (UTC)"


def _moment(value: object) -> object:
    """A duration back from now (`90m`, `24h`, `7d`, at most 100 years) becomes that moment; other values
    pass on."""
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        amount, unit = match.groups()
        duration = timedelta(**{_DURATION_UNITS[unit]: int(amount)})
        if duration > MAX_DURATION:
            raise ValueError(f"a duration back from now of at most {MAX_DURATION.days}d (100 years)")
        return datetime.now(UTC) - duration
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(
            "a timestamp needs its UTC offset, e.g. 2026-11-23T10:00:00+00:00, or a duration like 24h"
        )
    try:
        inside = EARLIEST_MOMENT <= value <= LATEST_MOMENT
    except OverflowError:  # an offset that moves year 1 or 9999 past what datetime holds
        inside = False
    if not inside:
        raise ValueError(f"a timestamp {MOMENT_RANGE}")
    return value


# An ISO 8601 timestamp with its offset, or a duration back from now.
Moment = Annotated[datetime, BeforeValidator(_moment), AfterValidator(_aware)]

MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_MESSAGES = 10_000
MAX_METADATA_BYTES = 16 * 1024


class Model(BaseModel):
    """Base: unknown fields are errors, so a typo never silently drops a value."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class Principal(Model):
    """Who is calling: an API key's tenant and role, or the stdio server's configured identity."""

    tenant_id: Identifier = "default"
    role: Role = "admin"
    user: Identifier | None = None  # a member is bound to this user
    key_id: str | None = None

    @property
    def actor(self) -> str:
        return self.key_id or f"local:{self.role}"


class Attribution(Model):
    user: Identifier | None = None
    session: Identifier | None = None
    project: Identifier | None = None
    team: Identifier | None = None
    feature: Identifier | None = None
    endpoint: Identifier | None = None


# --- counting ----------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    """An OpenAI-style chat message; `content` is a string or a list of parts."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class TokenCount(Model):
    tokens: int
    method: Method
    encoding: str
    model: str | None = None
    per_text: list[int] | None = None
    # Parts of multi-part content that were not text (images, audio): listed, never counted as 0.
    not_counted: list[str] = Field(default_factory=list)
    # How far the provider's count may be from this one, as a fraction (0.08: within ±8 %); 0 when exact.
    error_band: float = 0.0
    warnings: list[str] = Field(default_factory=list)


class ContextFit(Model):
    context_window: int | None
    remaining_context: int | None
    fits: bool | None
    percent_used: float | None


class CountRequest(Model):
    text: str | None = None
    texts: list[str] | None = None
    messages: list[ChatMessage] | None = None
    tools: list[dict[str, Any]] | None = None
    model: ModelName | None = None
    encoding: str | None = None
    max_output_tokens: NonNegativeInt | None = None
    # Ask the provider's count_tokens API (True), never ask it (False), or follow the tenant's setting.
    provider_count: bool | None = None


class CountResult(Model):
    tokens: int
    method: Method
    encoding: str
    model: str | None = None
    per_text: list[int] | None = None
    not_counted: list[str] = Field(default_factory=list)
    context_window: int | None = None
    remaining_context: int | None = None
    fits: bool | None = None
    percent_used: float | None = None
    estimated_cost_usd: Amount | None = None  # None: the model is unpriced or unknown
    priced: bool = False
    error_band: float = 0.0  # see TokenCount
    warnings: list[str] = Field(default_factory=list)


class TenantSettings(Model):
    """A tenant's settings, stored in tl_tenant_setting: admins change them, each change audited.
    Other features add their keys here."""

    # Count Claude and Gemini requests with the provider's token-counting API when its key is configured.
    provider_counting: bool = False
    # Show viewers (reports, exports, dashboard, scheduled reports) a keyed pseudonym for each user id.
    pseudonymize_users: bool = False


class FitRequest(Model):
    messages: list[ChatMessage]
    model: ModelName
    max_output_tokens: NonNegativeInt = 0  # output tokens to leave room for
    keep_system: bool = True
    keep_last: NonNegativeInt = 1
    # The window to fit into: default the model's; required for a model whose window is not known (one
    # the catalog does not know, or lists without a window), since a guessed window could not be trusted.
    context_window: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None


class FitResult(Model):
    messages: list[dict[str, Any]]
    dropped: int
    tokens: int
    original_tokens: int
    context_window: int
    fits: bool
    method: Method
    encoding: str
    warnings: list[str] = Field(default_factory=list)


# --- catalog -----------------------------------------------------------------------------------


ServiceTier = Literal["standard", "flex", "priority"]
CacheTTL = Literal["5m", "1h"]
PriceMode = Literal["standard", "batch", "flex", "priority"]


class PriceRates(Model):
    """Per-token USD rates of one way of calling a model; None where the provider publishes none.

    Immutable, so copies of a price may share them (Price itself stays mutable)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Amount | None = None
    output: Amount | None = None
    cache_read: Amount | None = None
    cache_write: Amount | None = None  # a cache write kept 5 minutes (the default lifetime)
    reasoning: Amount | None = None
    cache_write_1h: Amount | None = None  # a cache write kept 1 hour


class PriceTier(PriceRates):
    """The rates of a request whose input (uncached + cache read + cache write) exceeds
    `above_input_tokens`: the whole request is billed at them, as the providers bill long contexts."""

    above_input_tokens: Annotated[int, Field(gt=0)]
    batch: PriceRates | None = None
    flex: PriceRates | None = None
    priority: PriceRates | None = None


class Price(PriceRates):
    """Per-token USD prices; None where the provider publishes none.

    The top-level rates are the standard ones (synchronous call, 5-minute cache write, below every
    context tier). `batch`, `flex` and `priority` hold the rates of those modes, `tiers` the rates above
    a context threshold (ascending); a rate a mode or tier does not publish is the standard one.
    `local`: a model run on the caller's own machine, priced $0 as a stated price, not unpriced.
    """

    model_config = ConfigDict(extra="forbid", frozen=False)

    batch: PriceRates | None = None
    flex: PriceRates | None = None
    priority: PriceRates | None = None
    tiers: list[PriceTier] = Field(default_factory=list)
    local: bool = False

    @field_validator("tiers")
    @classmethod
    def _tiers_ascend(cls, tiers: list[PriceTier]) -> list[PriceTier]:
        thresholds = [tier.above_input_tokens for tier in tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError(f"tiers must ascend by above_input_tokens without repeats; got {thresholds}")
        return tiers

    @property
    def priced(self) -> bool:
        return self.input is not None and self.output is not None


class ModelInfo(Model):
    name: str
    provider: str
    # The tiktoken encoding used to count: exact for OpenAI models, the base of an estimate otherwise.
    encoding: str
    count_method: Method  # "exact" or "estimate"
    estimate_factor: float = 1.0  # estimate = ceil(count with `encoding` * factor)
    estimate_rule: str | None = None  # how estimates are made, in words, for non-OpenAI models
    context_window: int | None = None
    max_output_tokens: int | None = None
    price: Price = Field(default_factory=Price)
    aliases: list[str] = Field(default_factory=list)
    source: str = "catalog"  # "catalog", "tenant override", or "unknown" (a model the catalog does not know)
    effective_from: datetime | None = None
    # Whose tokenizer counts it: the maker (anthropic for Claude on Bedrock), not the host.
    family: str | None = None
    # The first-party model a hosted name serves (azure/gpt-4o -> gpt-4o), where the catalog knows it.
    base_model: str | None = None
    # The catalog model a tenant alias (`name`) counts and prices as.
    alias_of: str | None = None
    retired: bool = False  # no longer listed by the price source: priced at its last listed price
    last_listed: date | None = None  # for a retired model, the date of the last release listing it
    warnings: list[str] = Field(default_factory=list)  # said with every answer about this model


class ModelAlias(Model):
    """A tenant's own name for a catalog model (an Azure deployment, a fine-tune, a gateway's name)."""

    alias: ModelName
    target: ModelName  # a catalog model, never another alias
    created_at: datetime | None = None
    created_by: str | None = None


class DatedPrice(Model):
    """A catalog price and the time it was in force. The first price of a model also prices usage from
    before its date: it is the earliest price known."""

    effective_from: datetime
    effective_until: datetime | None = None  # None: in force now
    price: Price
    source: str  # the price-list release that first listed this price


class CostBreakdown(Model):
    cost_usd: Amount | None  # None: unpriced
    priced: bool
    input_usd: Amount | None = None
    output_usd: Amount | None = None
    cache_read_usd: Amount | None = None
    cache_write_usd: Amount | None = None
    reasoning_usd: Amount | None = None
    # Which published rates applied: the mode asked for, or "standard" where the model publishes none
    # for it; and the context tier reached (its threshold in input tokens), if any.
    price_mode: PriceMode | None = None
    tier_above_input_tokens: int | None = None


# --- budgets -----------------------------------------------------------------------------------


def _default_shares() -> dict[Priority, Decimal]:
    return {"high": Decimal("0.5"), "medium": Decimal("0.3"), "low": Decimal("0.2")}


class BudgetSpec(Model):
    """What an admin sets. `scope` is `global` or `kind:value` (e.g. `user:alice`)."""

    name: BudgetName
    scope: Annotated[str, StringConstraints(min_length=1, max_length=140, pattern=r"^[^\x00-\x1f]+$")] = (
        "global"
    )
    unit: Unit = "tokens"
    limit: Annotated[Decimal, _plain, Field(gt=0, max_digits=38, decimal_places=18)]
    period: Period = "month"
    timezone: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")
    ] = "UTC"
    enforcement: Enforcement = "hard"
    hard_limit: Annotated[Decimal, _plain, Field(gt=0, max_digits=38, decimal_places=18)] | None = None
    alert_thresholds: list[Annotated[Decimal, _plain, Field(gt=0, le=1000)]] = Field(
        default_factory=lambda: [Decimal(50), Decimal(75), Decimal(90), Decimal(100)]
    )
    priority_shares: dict[Priority, Annotated[Decimal, _plain, Field(gt=0, le=1)]] | None = Field(
        default_factory=_default_shares
    )

    rollover: Literal["none", "carry"] = "none"
    rollover_cap: Annotated[Decimal, _plain, Field(ge=0, max_digits=38, decimal_places=18)] | None = None
    tokens_per_minute: Annotated[int, Field(gt=0, le=2**53)] | None = None
    requests_per_minute: Annotated[int, Field(gt=0, le=2**31)] | None = None
    unpriced_policy: Literal["deny", "allow"] = "deny"
    # A usd budget's limits declared in this currency (ISO 4217): the ledger counts USD, the limits are
    # converted at the tenant's rate in force at each period's start (see tokenledger.fx).
    currency: CurrencyCode | None = None

    @field_validator("limit", "hard_limit", "rollover_cap")
    @classmethod
    def _within_what_the_ledger_holds(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        unit = info.data.get("unit", "tokens")
        bound = MAX_TOKEN_LIMIT if unit == "tokens" else MAX_USD_LIMIT
        if value is not None and value > bound:
            raise ValueError(f"at most {bound:,} for a {unit} budget")
        return value


class BudgetChange(Model):
    """A `set` that names only what changes. A field left out (or `null` where a value is required) keeps
    the budget's value, or takes BudgetSpec's default for a new budget; `null` clears an optional field
    (`priority_shares: null`: no shares). The merged budget is validated as a BudgetSpec."""

    name: BudgetName
    scope: Annotated[str, StringConstraints(min_length=1, max_length=140)] | None = None
    unit: Unit | None = None
    limit: Money | None = None
    period: Period | None = None
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    enforcement: Enforcement | None = None
    hard_limit: Money | None = None
    alert_thresholds: list[Annotated[float, Field(gt=0, le=1000)]] | None = None
    priority_shares: Annotated[
        dict[Priority, Annotated[float, Field(gt=0, le=1)]] | None,
        WithJsonSchema({"type": ["object", "null"]}),
    ] = None
    rollover: Literal["none", "carry"] | None = None
    rollover_cap: Money | None = None
    tokens_per_minute: Annotated[int, Field(gt=0, le=2**53)] | None = None
    requests_per_minute: Annotated[int, Field(gt=0, le=2**31)] | None = None
    unpriced_policy: Literal["deny", "allow"] | None = None
    currency: CurrencyCode | None = None


class BudgetState(Model):
    """A budget and its live counters in the current period."""

    name: str
    scope: str
    unit: Unit
    limit: Amount
    hard_limit: Amount | None = None
    period: Period
    timezone: str
    enforcement: Enforcement
    period_start: datetime | None = None
    resets_at: datetime | None = None
    used: Amount
    reserved: Amount
    remaining: Amount
    overage: Amount = Decimal(0)
    carried_over: Amount = Decimal(0)
    override: Amount = Decimal(0)  # approved overrides in force, included in limit (and the hard cap)
    percent_used: float
    status: Literal["ok", "warning", "exceeded"]
    requests: int = 0
    # A budget declared in another currency (budget list and show fill these): its limit as declared,
    # and the rate that made `limit` of it for this period, with the moment that rate is in force from.
    currency: str | None = None
    currency_limit: Amount | None = None
    fx_rate: Amount | None = None
    fx_rate_from: datetime | None = None


class Budget(Model):
    spec: BudgetSpec
    state: BudgetState
    created_at: datetime
    updated_at: datetime


class BlockedBy(Model):
    budget: str
    reason: str  # "limit", "priority_share", "rate_limit_tokens", "rate_limit_requests", "unpriced_model"
    remaining: Amount | None = None
    resets_at: datetime | None = None


class CheckRequest(Attribution):
    model: ModelName
    input_tokens: NonNegativeInt | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = None
    max_output_tokens: NonNegativeInt = 0
    priority: Priority = "medium"
    reserve: bool = True
    allow_partial: bool = False
    ttl_seconds: TtlSeconds = 600
    request_id: RequestId | None = None
    prompt_hash: PromptHash | None = None  # default: hashed from text or messages
    provider_count: bool | None = None  # see CountRequest
    # The rates the estimate reserves at (see TrackRequest): a priority call costs more than standard.
    batch: bool = False
    service_tier: ServiceTier = "standard"


class CheckResult(Model):
    allowed: bool
    decision: Decision
    reservation_id: str | None = None
    input_tokens: int
    requested_output_tokens: int
    granted_output_tokens: int
    expires_at: datetime | None = None
    estimated_cost_usd: Amount | None = None
    method: Method
    blocked_by: BlockedBy | None = None
    budgets: list[BudgetState] = Field(default_factory=list)
    retry_after_seconds: int | None = None
    suggested_model: str | None = None
    warnings: list[str] = Field(default_factory=list)
    duplicate: bool = False
    # An estimated count scaled by what the provider reported for this model's recent calls.
    calibration_factor: float | None = None
    error_band: float = 0.0  # how far input_tokens may be from the provider's count (0.08: ±8 %)
    # On a denial by a budget's limit that the caller may ask to raise: how to ask (see OverrideRequest).
    override_hint: str | None = None


class TrackRequest(Attribution):
    model: ModelName
    reservation_id: ReservationId | None = None
    request_id: RequestId | None = None
    provider: Identifier | None = None
    input_tokens: NonNegativeInt | None = None
    output_tokens: NonNegativeInt | None = None
    cache_read_input_tokens: NonNegativeInt = 0
    cache_creation_input_tokens: NonNegativeInt = 0
    reasoning_output_tokens: NonNegativeInt = 0
    input_text: str | None = None
    output_text: str | None = None
    cost_usd: Money | None = None  # a cost the provider reported; otherwise priced from the catalog
    status: UsageStatus = "success"
    latency_ms: Annotated[int, Field(ge=0, le=86_400_000)] | None = None
    tools_used: list[
        Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
    ] = Field(default_factory=list, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict)
    occurred_at: Moment | None = None  # usage reported after the fact lands in its own period
    prompt_hash: PromptHash | None = None  # default: hashed from input_text, else the reservation's
    # The model the caller asked for, when a fallback model ran instead (`model`): a downgrade.
    requested_model: ModelName | None = None
    # How the call was billed (tokenledger.pricing): a Batch API call, a service tier (batch takes only
    # standard), the lifetime of its cache writes. Stored on the usage row.
    batch: bool = False
    service_tier: ServiceTier = "standard"
    cache_ttl: CacheTTL = "5m"


class AlertInfo(Model):
    budget: str
    threshold: Amount
    period_start: datetime | None
    percent_used: float


class TrackResult(Model):
    usage_id: str
    duplicate: bool = False
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_output_tokens: int = 0
    total_tokens: int
    cost_usd: Amount | None  # None: unpriced, never $0
    priced: bool
    method: Method
    budgets: list[BudgetState] = Field(default_factory=list)
    alerts: list[AlertInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    occurred_at: datetime


class ReleaseResult(Model):
    reservation_id: str
    status: Literal["released", "already_released", "expired"]
    released: Amount = Decimal(0)


class ExtendRequest(Model):
    """A new expiry for an active reservation: now + ttl_seconds; its holds stay."""

    reservation_id: ReservationId
    ttl_seconds: TtlSeconds = 600


class ExtendResult(Model):
    reservation_id: str
    expires_at: datetime


# --- override requests -------------------------------------------------------------------------

OverrideStatus = Literal["pending", "approved", "denied", "expired", "cancelled"]
# What one request may ask: at most MAX_OVERRIDE_FACTOR times the budget's limit (a slip of a few zeros
# is refused, a real need of a few times the limit is not), for at most MAX_OVERRIDE_DAYS; and at most
# MAX_PENDING_OVERRIDES of one requester (a member's user, else the API key) pending at once.
MAX_OVERRIDE_FACTOR = 10
MAX_OVERRIDE_DAYS = 31
MAX_PENDING_OVERRIDES = 20
MAX_OVERRIDE_REASON = 500
OverrideReason = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_OVERRIDE_REASON, strip_whitespace=True, pattern=PRINTABLE_PATTERN
    ),
]
OverrideId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _ahead(value: object) -> object:
    """A duration ahead of now (`90m`, `24h`, `7d`, at most 100 years) becomes that moment; other values
    pass on."""
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        amount, unit = match.groups()
        duration = timedelta(**{_DURATION_UNITS[unit]: int(amount)})
        if duration > MAX_DURATION:
            raise ValueError(f"a duration ahead of now of at most {MAX_DURATION.days}d (100 years)")
        return datetime.now(UTC) + duration
    return value


# An ISO 8601 timestamp with its offset, or a duration ahead of now (`until: 2h`).
Until = Annotated[datetime, BeforeValidator(_ahead), AfterValidator(_aware)]


class OverrideRequest(Model):
    """A temporary increase of a budget: `amount` more (in the budget's unit) from approval until `until`."""

    budget: BudgetName
    amount: Annotated[Decimal, _plain, Field(gt=0, max_digits=38, decimal_places=18)]
    reason: OverrideReason
    until: Until


class Override(Model):
    """An override request and its state: pending, approved (in force), denied, cancelled, or expired (its
    `until` passed, approved or not)."""

    override_id: int
    budget: str
    scope: str
    unit: Unit
    amount: Amount
    reason: str
    until: datetime
    status: OverrideStatus
    requested_by: str  # the API key id (or local:ROLE) that asked
    user: str | None = None  # the member's user that asked; None for an admin
    requested_at: datetime
    decided_at: datetime | None = None  # approved (the override's start), denied or cancelled
    decided_by: str | None = None
    decision_reason: str | None = None


class OverrideNotice(Override):
    """A pending request claimed for one sink, to tell the tenant's admins."""

    tenant_id: str
    sink: str
    attempt: int


# --- prices ------------------------------------------------------------------------------------


class PriceSpec(Model):
    """A tenant's override of the catalog price for a model, in USD per token."""

    model: ModelName
    input: Money
    output: Money
    cache_read: Money | None = None
    cache_write: Money | None = None
    reasoning: Money | None = None
    effective_from: Moment | None = None  # default: now


# --- usage and reports -------------------------------------------------------------------------

GroupKey = Literal[
    "user", "session", "project", "team", "feature", "endpoint", "provider", "model", "requested_model"
]
Bucket = Literal["hour", "day", "week", "month"]


class UsageQuery(Attribution):
    model: ModelName | None = None
    provider: Identifier | None = None
    since: Moment | None = None
    until: Moment | None = None
    group_by: list[GroupKey] = Field(default_factory=list, max_length=4)
    bucket: Bucket | None = None
    timezone: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$")
    ] = "UTC"
    limit: Annotated[int, Field(ge=1, le=10_000)] = 50
    currency: CurrencyCode | None = None  # costs also shown in it, at the tenant's rates (USD stays)


class UsageRow(Model):
    keys: dict[str, str | None] = Field(default_factory=dict)
    bucket: datetime | None = None
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    reasoning_output_tokens: int
    total_tokens: int
    cost_usd: Amount
    unpriced_requests: int
    errors: int
    downgrades: int = 0  # calls that ran on a fallback model instead of the one requested
    cost_converted: Amount | None = None  # cost_usd in the query's currency, each cost at its date's rate


class FxRate(Model):
    """A tenant's rate: `rate` units of `currency` per 1 USD from `effective_from` (see tokenledger.fx)."""

    currency: str
    rate: Amount
    effective_from: datetime
    created_at: datetime | None = None
    created_by: str | None = None


class UsageResult(Model):
    since: datetime
    until: datetime
    rows: list[UsageRow]
    totals: UsageRow
    currency: str | None = None  # of cost_converted
    fx_rates: list[FxRate] = Field(default_factory=list)  # the rates in force in the window, oldest first


MOMENT_HELP = (
    "an ISO 8601 timestamp with its offset (2026-11-23T10:00:00+00:00), or a duration ago (90m, 24h, 7d)"
)


def explain_validation_error(error: ValidationError, fields: Sequence[str] = (), limit: int = 5) -> str:
    """Each refused field as `field: got VALUE; allowed: ...` (loc joined by dots, the value truncated),
    top-level fields first; past `limit`, the other fields are named only."""
    items = sorted(error.errors(include_url=False), key=lambda item: len(item["loc"]))
    parts = []
    for item in items[:limit]:
        field = _field_path(item["loc"])
        kind = item["type"]
        if kind == "missing":
            parts.append(f"{field}: missing; allowed: required")
        elif kind == "extra_forbidden":
            known = f": {', '.join(fields)}" if fields else ""
            parts.append(f"{field}: unknown field; allowed fields{known}")
        elif kind.startswith(("datetime", "date_")):
            parts.append(f"{field}: got {_shown(item.get('input'))}; allowed: {MOMENT_HELP}")
        else:
            allowed = item["msg"].removeprefix("Value error, ")  # our validators' words, without pydantic's
            parts.append(f"{field}: got {_shown(item.get('input'))}; allowed: {allowed}")
    rest = list(dict.fromkeys(_field_path(item["loc"]) for item in items[limit:]))
    return "; ".join(parts) + (f"; also invalid: {', '.join(rest[:20])}" if rest else "")


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
