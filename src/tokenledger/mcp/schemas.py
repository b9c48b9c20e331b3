"""The tools' input and output models, and the compact JSON schemas agents read.

Inputs subclass the `tokenledger.types` requests, so a tool validates exactly as the library does; they
only add terse field descriptions. Every agent pays for these schemas in context on every turn, so
`compact` strips what pydantic adds for people (titles, `null` branches of optional inputs, model
docstrings, the Identifier pattern repeated per field) without changing what is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from tokenledger.reports import ReportQuery
from tokenledger.schedules import Every, LocalTime, Schedule, ScheduleName, ScheduleRun, ScheduleView
from tokenledger.types import (
    PRINTABLE_PATTERN,
    PROMPT_HASH_PATTERN,
    UUID_PATTERN,
    Budget,
    BudgetChange,
    BudgetName,
    CheckRequest,
    CountRequest,
    CurrencyCode,
    ExtendRequest,
    FitRequest,
    GroupKey,
    Model,
    ModelInfo,
    ModelName,
    Moment,
    Money,
    Override,
    OverrideId,
    OverrideReason,
    OverrideStatus,
    ReservationId,
    TrackRequest,
)

__all__ = [
    "BudgetOverrideInput",
    "BudgetsResult",
    "CheckInput",
    "CountInput",
    "ExtendInput",
    "FitInput",
    "ManageBudgetInput",
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

_ID_PATTERN = r"^[A-Za-z0-9_.:@/+=-]+$"
_STRING = WithJsonSchema({"type": "string"})
_ID_SCHEMA = {"pattern": _ID_PATTERN, "type": "string"}  # lengths unpublished, as everywhere


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
    model_config = _config(
        text="Or texts, or messages",
        messages="[{role, content}]",
        tools="Tool definitions, with messages",
        model="Catalog name; or encoding",
        encoding="e.g. o200k_base",
    )


class CheckInput(CheckRequest):
    model_config = _config(
        input_tokens="Or text, or messages",
        reserve="Hold until track_usage/release",
        request_id="Idempotency key",
    )


class TrackInput(TrackRequest):
    model_config = _config(
        reservation_id="From check_budget",
        request_id="Idempotency key",
        input_tokens="Or input_text",
        output_tokens="Or output_text",
        occurred_at="ISO 8601 or 24h ago",
    )


class ReleaseInput(Model):
    reservation_id: ReservationId


ExtendInput = ExtendRequest  # its fields say all an agent needs


class FitInput(FitRequest):
    model_config = _config(max_tokens="Output room")


class ReportInput(ReportQuery):
    """A report query (the view to show) and its format."""

    format: Literal["json", "markdown", "csv"] = "json"
    # Published as a plain string (the ISO 4217 check still applies): every agent pays for the schema.
    currency: Annotated[CurrencyCode, _STRING] | None = None

    model_config = _config(
        view="usage: by group_by/bucket; forecast: per budget; top: dearest calls",
        since="ISO 8601 or 90m/24h/7d ago; default 30d (forecast 24h)",
        period="chargeback month YYYY-MM",
    )


class ManageBudgetInput(BudgetChange):
    """An action on budgets. `set` creates a budget, or changes only the fields given of an existing one
    (see BudgetChange); `reset_counters` confirms a change of scope, unit, period or timezone that
    discards the current period's usage and reservations."""

    action: Literal["set", "get", "list", "delete"] = "list"
    name: BudgetName | None = None  # type: ignore[assignment]  # optional here: `list` needs none
    reset_counters: bool = False

    model_config = _config(
        scope="global or kind:value (team, project, user, session, feature, endpoint)",
        limit="Required to create",
        alert_thresholds="Percents",
        priority_shares="{high, medium, low}: share of the rest; null: none",
    )

    def change(self) -> BudgetChange:
        """The budget fields this call gave (a `set`, with its name)."""
        given = self.model_fields_set & set(BudgetChange.model_fields)
        return BudgetChange.model_validate(self.model_dump(include=given))


class ManageScheduleInput(Model):
    """An action on scheduled reports; `add` takes the ScheduleSpec fields."""

    action: Literal["add", "list", "run_now", "delete"] = "list"
    # Published as plain strings (the patterns still apply): every agent pays for the schema.
    name: Annotated[ScheduleName, _STRING] | None = None
    view: ScheduleView | None = None
    every: Every | None = None
    at: Annotated[LocalTime, _STRING] | None = None
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64), _STRING] | None = None
    to: Annotated[str, StringConstraints(min_length=1, max_length=260), _STRING] | None = None
    by: GroupKey | None = None

    model_config = _config(at="HH:MM local", to="email[:ADDR], slack or webhook")

    def spec_fields(self) -> dict[str, Any]:
        """The ScheduleSpec fields that were given."""
        return self.model_dump(exclude={"action"}, exclude_none=True)


class BudgetOverrideInput(Model):
    """An action on override requests: `request` takes budget, amount, reason and until (OverrideRequest);
    status, cancel, approve and deny take id; deny takes a reason, approve may."""

    action: Literal["request", "status", "cancel", "list", "approve", "deny"] = "list"
    id: OverrideId | None = None
    budget: Annotated[BudgetName, _STRING] | None = None
    amount: Annotated[Decimal, Field(max_digits=38, decimal_places=18)] | None = None  # > 0: OverrideRequest
    reason: Annotated[OverrideReason, _STRING] | None = None
    until: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    status: OverrideStatus | None = None  # list: only these

    model_config = _config(amount="More, in the budget's unit", until="ISO 8601, or 2h/3d ahead")

    def request_fields(self) -> dict[str, Any]:
        """The OverrideRequest fields that were given."""
        return self.model_dump(include={"budget", "amount", "reason", "until"}, exclude_none=True)


class PricesInput(Model):
    """An action on prices: the entry of a model, a catalog search, or a tenant override (USD per token)."""

    action: Literal["get", "list", "set"] = "get"
    model: ModelName | None = None
    query: Annotated[str, StringConstraints(max_length=200)] = ""
    provider: Annotated[str, StringConstraints(max_length=100)] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 20
    input: Money | None = None
    output: Money | None = None
    cache_read: Money | None = None
    cache_write: Money | None = None
    reasoning: Money | None = None
    effective_from: Moment | None = None

    model_config = _config(
        action="list: catalog search by query, and overrides; set: override",
        input="USD per token",
    )


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


# --- compact schemas ---------------------------------------------------------------------------

_BIG_INT = 2**31
# Keys the agent does not need to read; validation still applies them (the input model is the judge).
_DROP_INPUT = ("title", "default", "format", "minLength", "maxLength", "maxItems")
# "no control characters" and "a UUID": agents never send otherwise by accident; still enforced.
_UNPUBLISHED_PATTERNS = (PRINTABLE_PATTERN, UUID_PATTERN, PROMPT_HASH_PATTERN)


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A tool's input schema in few tokens: see the module docstring."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    schema.pop("description", None)
    # Nested models (chat messages) are published as objects with their required keys only.
    nested = {f"#/$defs/{name}": sub.get("required") for name, sub in schema.pop("$defs", {}).items()}
    result: dict[str, Any] = _walk(schema, nested)
    if _uses_id(result):
        result["$defs"] = {"Id": dict(_ID_SCHEMA)}
    return result


def output_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A tool's output schema in few tokens: each field's JSON type (nested objects only as `object`)
    and the enums of top-level fields."""
    schema = model.model_json_schema(mode="serialization")
    properties = {name: _shallow(prop, top=True) for name, prop in schema["properties"].items()}
    return {"type": "object", "properties": properties}


def _shallow(prop: dict[str, Any], *, top: bool = False) -> dict[str, Any]:
    branches = prop.get("anyOf", [prop])
    kinds: list[str] = []
    shown: dict[str, Any] = {}
    for branch in branches:
        kind = "object" if "$ref" in branch else branch.get("type", "object")
        kinds.append(kind)
        if top and "enum" in branch:
            shown["enum"] = branch["enum"]
    shown["type"] = kinds[0] if len(kinds) == 1 else kinds
    if "enum" in shown and "null" in kinds:
        shown["enum"] = [*shown["enum"], None]
    return shown


def _uses_id(node: Any) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == "#/$defs/Id" or any(_uses_id(v) for v in node.values())
    if isinstance(node, list):
        return any(_uses_id(v) for v in node)
    return False


def _walk(node: Any, nested: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_walk(item, nested) for item in node]
    if not isinstance(node, dict):
        return node
    for key in _DROP_INPUT:
        node.pop(key, None)
    if "properties" in node:
        node.pop("description", None)  # a model's docstring: the tool description says it
    if node.get("pattern") in _UNPUBLISHED_PATTERNS:
        del node["pattern"]
    if isinstance(node.get("maximum"), int) and node["maximum"] >= _BIG_INT:
        del node["maximum"]
    if "anyOf" in node:
        node = _merge_any_of(node, nested)
    if node == _ID_SCHEMA:
        return {"$ref": "#/$defs/Id"}
    if "$ref" in node and node["$ref"] != "#/$defs/Id":
        required = {"required": nested[node["$ref"]]} if nested.get(node["$ref"]) else {}
        return {"type": "object", **required, **{k: v for k, v in node.items() if k != "$ref"}}
    for key in ("properties", "$defs"):
        if isinstance(node.get(key), dict):
            node[key] = {name: _walk(sub, nested) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "anyOf", "propertyNames"):
        if isinstance(node.get(key), dict | list):
            node[key] = _walk(node[key], nested)
    return node


def _merge_any_of(node: dict[str, Any], nested: dict[str, Any]) -> dict[str, Any]:
    """`anyOf [X, null]` becomes X (an absent input is null); a decimal's `anyOf [number, string]`
    becomes one type list."""
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    others = [_walk(b, nested) for b in node["anyOf"] if b != {"type": "null"}]
    if len(others) == 2 and {b.get("type") for b in others} == {"number", "string"}:
        number = next(b for b in others if b.get("type") == "number")
        others = [{**{k: v for k, v in number.items() if k != "type"}, "type": ["number", "string"]}]
    if len(others) == 1:
        return {**others[0], **rest}
    return {**rest, "anyOf": others}
