"""The pydantic models that go in and out of `Ledger`, and so of every tool, command and integration.

Field names are a contract with agents and orchestration code: add fields, never rename them.
Money is `Decimal` (a string on the wire), tokens are `int`, timestamps carry their offset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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
    WithJsonSchema,
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
# SHA-256 (hex) of a prompt: repeated prompts are found by it, the text is never stored.
PROMPT_HASH_PATTERN = r"^[0-9a-f]{64}$"
PromptHash = Annotated[str, StringConstraints(pattern=PROMPT_HASH_PATTERN)]
BudgetName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
NonNegativeInt = Annotated[int, Field(ge=0, le=2**53)]
Money = Annotated[Decimal, _plain, Field(ge=0, max_digits=38, decimal_places=18)]

_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d|w)$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _moment(value: object) -> object:
    """A duration back from now (`90m`, `24h`, `7d`) becomes that moment; other values pass on."""
    if isinstance(value, str) and (match := _DURATION.match(value.strip())):
        amount, unit = match.groups()
        return datetime.now(UTC) - timedelta(**{_DURATION_UNITS[unit]: int(amount)})
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(
            "a timestamp needs its UTC offset, e.g. 2026-11-23T10:00:00+00:00, or a duration like 24h"
        )
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


class FitRequest(Model):
    messages: list[ChatMessage]
    model: ModelName
    max_tokens: NonNegativeInt = 0  # output tokens to leave room for
    keep_system: bool = True
    keep_last: NonNegativeInt = 1


class FitResult(Model):
    messages: list[dict[str, Any]]
    dropped: int
    tokens: int
    original_tokens: int
    context_window: int
    fits: bool
    method: Method
    encoding: str


# --- catalog -----------------------------------------------------------------------------------


class Price(Model):
    """Per-token USD prices; None where the provider publishes none."""

    input: Amount | None = None
    output: Amount | None = None
    cache_read: Amount | None = None
    cache_write: Amount | None = None
    reasoning: Amount | None = None

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
    source: str = "catalog"  # "catalog" or "tenant override"
    effective_from: datetime | None = None


class CostBreakdown(Model):
    cost_usd: Amount | None  # None: unpriced
    priced: bool
    input_usd: Amount | None = None
    output_usd: Amount | None = None
    cache_read_usd: Amount | None = None
    cache_write_usd: Amount | None = None
    reasoning_usd: Amount | None = None


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
    percent_used: float
    status: Literal["ok", "warning", "exceeded"]
    requests: int = 0


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
    ttl_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600
    request_id: RequestId | None = None
    prompt_hash: PromptHash | None = None  # default: hashed from text or messages


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

GroupKey = Literal["user", "session", "project", "team", "feature", "endpoint", "provider", "model"]
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


class UsageResult(Model):
    since: datetime
    until: datetime
    rows: list[UsageRow]
    totals: UsageRow


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
            parts.append(f"{field}: got {_shown(item.get('input'))}; allowed: {item['msg']}")
    rest = list(dict.fromkeys(_field_path(item["loc"]) for item in items[limit:]))
    return "; ".join(parts) + (f"; also invalid: {', '.join(rest[:20])}" if rest else "")


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
