"""The tools' input and output models, and the compact, strict-compatible JSON schemas agents read.

Inputs subclass the `tokenledger.types` requests, so a tool validates exactly as the library does; they
only add terse field descriptions. Every agent pays for these schemas in context on every turn, so
`input_schema` publishes types, enums, required fields and descriptions only: titles, defaults (stated in
descriptions where they change behaviour), patterns, lengths and numeric bounds stay with the server,
which still enforces them and names the field on a refusal.

The published schemas convert to OpenAI strict mode (every object closed, every nested object typed, no
`$ref`): strict clients send every field, `null` for those they do not mean, so a field that may be left
out is published nullable and the server takes `null` as absent (see `server._without_nulls`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from tokenledger.reports import ReportQuery
from tokenledger.schedules import Every, LocalTime, Schedule, ScheduleName, ScheduleRun, ScheduleView
from tokenledger.types import (
    Budget,
    BudgetChange,
    BudgetName,
    ChatMessage,
    CheckRequest,
    CountRequest,
    CurrencyCode,
    ExtendRequest,
    FitRequest,
    GroupKey,
    Model,
    ModelAlias,
    ModelInfo,
    ModelName,
    Moment,
    Money,
    Override,
    OverrideId,
    OverrideReason,
    OverrideStatus,
    Priority,
    ReservationId,
    TrackRequest,
)

__all__ = [
    "CLEARABLE",
    "BudgetOverrideInput",
    "BudgetsResult",
    "CheckInput",
    "CountInput",
    "ExtendInput",
    "FitInput",
    "LookupInput",
    "LookupResult",
    "ManageBudgetInput",
    "ManagePricesInput",
    "ManageScheduleInput",
    "OverridesResult",
    "PricesInput",
    "PricesResult",
    "ReleaseInput",
    "ReportInput",
    "SchedulesResult",
    "TrackInput",
    "input_schema",
    "output_schema",
]

_STRING = WithJsonSchema({"type": "string"})
# A chat message as strict clients can send it: role, content (a string or typed parts) and name. The
# server also takes the other keys of OpenAI's messages (tool_calls, ...) from clients that send them.
_PART = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "text": {"type": ["string", "null"]}},
    "required": ["type"],
    "additionalProperties": False,
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string"},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}, {"type": "null"}]},
        "name": {"type": ["string", "null"]},
    },
    "required": ["role"],
    "additionalProperties": False,
}
_MESSAGES = WithJsonSchema({"type": "array", "items": _MESSAGE})


def _json_object(value: object) -> object:
    """A JSON object given as its text (strict clients cannot send free-form objects) decoded; anything
    else as it came, for the model's own validation to judge."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except ValueError as error:
            raise ValueError(f"a JSON object ({error})") from error
    return value


# Free-form objects travel as JSON text in the published schema; objects are accepted too.
JsonObject = Annotated[dict[str, Any], BeforeValidator(_json_object), _STRING]


def _described(**descriptions: str) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` hook that sets the description of each named property."""

    def extra(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name, text in descriptions.items():
            properties[name]["description"] = text

    return extra


def _config(**descriptions: str) -> ConfigDict:
    return ConfigDict(json_schema_extra=_described(**descriptions))


# --- inputs ------------------------------------------------------------------------------------


class CountInput(CountRequest):
    messages: Annotated[list[ChatMessage] | None, _MESSAGES] = None
    tools: list[JsonObject] | None = None

    model_config = _config(
        text="Or texts, or messages",
        tools="Tool definitions (JSON), with messages",
        model="Catalog name; or encoding",
        encoding="e.g. o200k_base",
    )


class CheckInput(CheckRequest):
    messages: Annotated[list[ChatMessage] | None, _MESSAGES] = None

    model_config = _config(
        input_tokens="Or text, or messages",
        reserve="Default true: holds capacity until track_usage/release, else ttl_seconds",
        ttl_seconds="Default 600",
        priority="Default medium",
        request_id="Idempotency key",
    )


class TrackInput(TrackRequest):
    metadata: JsonObject = Field(default_factory=dict)

    model_config = _config(
        reservation_id="From check_budget",
        request_id="Idempotency key",
        input_tokens="Or input_text",
        output_tokens="Or output_text",
        occurred_at="ISO 8601 or 24h ago",
        metadata="JSON object",
    )


class ReleaseInput(Model):
    reservation_id: ReservationId


class ExtendInput(ExtendRequest):
    model_config = _config(ttl_seconds="Default 600")


class FitInput(FitRequest):
    """FitRequest; `max_tokens`, this field's name before 0.2, is still taken for one release."""

    messages: Annotated[list[ChatMessage], _MESSAGES]
    _old_name: bool = PrivateAttr(default=False)

    model_config = _config(max_output_tokens="Room to leave; default 0")

    @model_validator(mode="wrap")
    @classmethod
    def _takes_max_tokens(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        old = isinstance(data, dict) and "max_tokens" in data
        if old:
            if "max_output_tokens" in data:
                raise ValueError("max_tokens: give max_output_tokens only (max_tokens is its old name)")
            data = {("max_output_tokens" if key == "max_tokens" else key): v for key, v in data.items()}
        fitted = handler(data)
        fitted._old_name = old
        return fitted

    @property
    def used_old_name(self) -> bool:
        return self._old_name


class ReportInput(ReportQuery):
    """A report query (the view to show) and its format."""

    format: Literal["json", "markdown", "csv"] = "json"
    # Published as a plain string (the ISO 4217 check still applies): every agent pays for the schema.
    currency: Annotated[CurrencyCode, _STRING] | None = None

    model_config = _config(
        view="Default summary; usage: by group_by/bucket; top: dearest calls",
        since="ISO 8601 or 90m/24h/7d ago; default 30d (forecast 24h)",
        period="chargeback month YYYY-MM",
    )


# Optional budget fields `clear` may unset (null cannot: strict clients send null for every field).
Clearable = Literal[
    "hard_limit", "rollover_cap", "tokens_per_minute", "requests_per_minute", "priority_shares"
]
CLEARABLE: tuple[str, ...] = get_args(Clearable)
_SHARES = WithJsonSchema(
    {
        "type": ["object", "null"],
        "properties": {level: {"type": ["number", "null"]} for level in ("high", "medium", "low")},
        "additionalProperties": False,
    }
)


class ManageBudgetInput(BudgetChange):
    """A write to budgets. `set` creates a budget, or changes only the fields given of an existing one
    (see BudgetChange); `clear` unsets optional fields; `reset_counters` confirms a change of scope, unit,
    period or timezone that discards the current period's usage and reservations."""

    action: Literal["set", "delete"]
    priority_shares: Annotated[dict[Priority, Annotated[float, Field(gt=0, le=1)]] | None, _SHARES] = None
    clear: list[Clearable] = Field(default_factory=list)
    reset_counters: bool = False

    model_config = _config(
        scope="global or kind:value, e.g. team:search",
        limit="Required to create",
        alert_thresholds="Percents",
        priority_shares="Share of the rest per priority",
        clear="Fields to unset",
    )

    def change(self) -> BudgetChange:
        """The budget fields this call gave (a `set`, with its name), `clear`ed ones as null."""
        given = self.model_fields_set & set(BudgetChange.model_fields)
        fields = self.model_dump(include=given)
        return BudgetChange.model_validate({**fields, **dict.fromkeys(self.clear)})


class ManageScheduleInput(Model):
    """A write to scheduled reports; `add` takes the ScheduleSpec fields."""

    action: Literal["add", "run_now", "delete"]
    name: ScheduleName
    view: ScheduleView | None = None
    every: Every | None = None
    at: LocalTime | None = None
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    to: Annotated[str, StringConstraints(min_length=1, max_length=260)] | None = None
    by: GroupKey | None = None

    model_config = _config(at="HH:MM local; default 08:00", to="email[:ADDR], slack or webhook")

    def spec_fields(self) -> dict[str, Any]:
        """The ScheduleSpec fields that were given."""
        return self.model_dump(exclude={"action"}, exclude_none=True)


class BudgetOverrideInput(Model):
    """An action on override requests: `request` takes budget, amount, reason and until (OverrideRequest);
    cancel, approve and deny take id; deny takes a reason, approve may."""

    action: Literal["request", "cancel", "approve", "deny"]
    id: OverrideId | None = None
    budget: BudgetName | None = None
    amount: Annotated[Decimal, Field(max_digits=38, decimal_places=18)] | None = None  # > 0: OverrideRequest
    reason: OverrideReason | None = None
    until: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None

    model_config = _config(amount="More, in the budget's unit", until="ISO 8601, or 2h/3d ahead")

    def request_fields(self) -> dict[str, Any]:
        """The OverrideRequest fields that were given."""
        return self.model_dump(include={"budget", "amount", "reason", "until"}, exclude_none=True)


class LookupInput(Model):
    """A read of budgets (spec and live state), scheduled reports or override requests."""

    what: Literal["budgets", "schedules", "overrides"]
    name: BudgetName | None = None
    id: OverrideId | None = None
    status: OverrideStatus | None = None

    model_config = _config(name="A budget: only this one", id="An override request", status="Overrides only")


class PricesInput(Model):
    """A read of prices: the entry of a model, or a catalog search with the tenant's overrides and aliases."""

    action: Literal["get", "list"] = "get"
    model: ModelName | None = None
    query: Annotated[str, StringConstraints(max_length=200)] = ""
    provider: Annotated[str, StringConstraints(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 20

    model_config = _config(action="Default get: model; list: search query, overrides, aliases")


class ManagePricesInput(Model):
    """A write to the tenant's prices: an override (USD per token) or an alias of a catalog model
    (`model` counts and prices as `target`), set or removed."""

    action: Literal["set", "alias", "unalias"]
    model: ModelName
    target: ModelName | None = None
    input: Money | None = None
    output: Money | None = None
    cache_read: Money | None = None
    cache_write: Money | None = None
    reasoning: Money | None = None
    effective_from: Moment | None = None

    model_config = _config(input="USD per token", target="alias: the catalog model")


# --- outputs -----------------------------------------------------------------------------------


class BudgetsResult(Model):
    action: str
    budgets: list[Budget] = Field(default_factory=list)
    deleted: str | None = None  # the name of the budget deleted


class SchedulesResult(Model):
    action: str
    schedules: list[Schedule] = Field(default_factory=list)
    run: ScheduleRun | None = None  # run_now: the run queued


class OverridesResult(Model):
    action: str
    overrides: list[Override] = Field(default_factory=list)


class PricesResult(Model):
    action: str
    models: list[ModelInfo] = Field(default_factory=list)
    overrides: list[dict[str, Any]] = Field(default_factory=list)
    aliases: list[ModelAlias] = Field(default_factory=list)


class LookupResult(Model):
    what: str
    budgets: list[Budget] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)


# --- compact schemas ---------------------------------------------------------------------------

# What a published schema keeps: the rest (titles, defaults, patterns, lengths, bounds) the server enforces.
_KEPT = frozenset({"type", "enum", "items", "properties", "required", "additionalProperties", "anyOf"})
# Structured output: an object, validated on the server against the tool's output model. Its fields are in
# the JSON text every result carries; publishing them would cost every agent ~900 tokens of context.
_OUTPUT_SCHEMA = {"type": "object"}


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A tool's input schema in few tokens, strict-compatible: see the module docstring."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = schema.get("required", [])
    properties = {
        name: _published(prop, defs, nullable=name not in required and prop.get("default", 0) is None)
        for name, prop in schema["properties"].items()
    }
    published: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        published["required"] = required
    return published


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A tool's published output schema: see `_OUTPUT_SCHEMA`."""
    del model  # every result is one of the tool's output models, checked by the SDK before it is sent
    return dict(_OUTPUT_SCHEMA)


def _published(prop: dict[str, Any], defs: dict[str, Any], *, nullable: bool = False) -> dict[str, Any]:
    """One property as published: refs inlined, `anyOf [X, null]` as X, a decimal's `number | string` as
    a string (exact), only the `_KEPT` keys, and `null` added where the field may be left out."""
    if "$ref" in prop:
        prop = {
            **defs[prop["$ref"].removeprefix("#/$defs/")],
            **{k: v for k, v in prop.items() if k != "$ref"},
        }
    description = prop.get("description")
    if "anyOf" in prop:
        branches = [branch for branch in prop["anyOf"] if branch != {"type": "null"}]
        if {branch.get("type") for branch in branches} == {"number", "string"}:
            branches = [{"type": "string"}]
        if len(branches) == 1:
            prop = {**branches[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
        else:
            prop = {**prop, "anyOf": [_published(branch, defs) for branch in branches]}
    shown = {key: value for key, value in prop.items() if key in _KEPT}
    if isinstance(shown.get("items"), dict):
        shown["items"] = _published(shown["items"], defs)
    if isinstance(shown.get("properties"), dict):
        inner = shown.get("required", [])
        shown["properties"] = {
            name: _published(sub, defs, nullable=name not in inner and sub.get("default", 0) is None)
            for name, sub in shown["properties"].items()
        }
        shown["additionalProperties"] = False
    if nullable:
        shown = _nullable(shown)
    if "enum" in shown:
        shown.pop("type", None)  # the values say it, in fewer tokens
    if description:
        shown["description"] = description
    return shown


def _nullable(shown: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in shown:
        return {**shown, "anyOf": [*shown["anyOf"], {"type": "null"}]}
    if "enum" in shown and None not in shown["enum"]:
        shown = {**shown, "enum": [*shown["enum"], None]}
    kinds = shown.get("type")
    if kinds is None:
        return shown
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return {**shown, "type": kinds if "null" in kinds else [*kinds, "null"]}
