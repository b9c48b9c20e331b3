"""The MCP server: tools, resources and a prompt, each a thin mapping onto one `Ledger` method.

`build_server(ledger, default_principal=...)` gives an `MCPServer` over an open ledger (the caller owns
its lifecycle). Every tool takes one validated input model and returns one output model, published as the
tool's input and output schema. Refusals reach the agent as tool errors (`isError`) whose text names the
field, the value given and what is allowed; nothing else (no traceback, no SQL) leaves the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from mcp_types import Tool as ListedTool
from pydantic import BaseModel, ValidationError

from tokenledger import __version__, reports
from tokenledger.errors import NotFound, TokenLedgerError, UnknownModel, internal_error
from tokenledger.ledger import Ledger
from tokenledger.mcp import prompts
from tokenledger.mcp.access import PrincipalMiddleware, principal_of, request_principal
from tokenledger.mcp.schemas import (
    BudgetOverrideInput,
    BudgetsResult,
    CheckInput,
    CountInput,
    ExtendInput,
    FitInput,
    LookupInput,
    LookupResult,
    ManageBudgetInput,
    ManagePricesInput,
    ManageScheduleInput,
    OverridesResult,
    PricesInput,
    PricesResult,
    ReleaseInput,
    ReportInput,
    SchedulesResult,
    TrackInput,
    input_schema,
    output_schema,
)
from tokenledger.schedules import ScheduleSpec
from tokenledger.types import (
    MAX_MESSAGES,
    MAX_TEXT_BYTES,
    CheckResult,
    CountResult,
    ExtendResult,
    FitResult,
    OverrideRequest,
    PriceSpec,
    Principal,
    ReleaseResult,
    Role,
    TrackResult,
    explain_validation_error,
)

__all__ = ["build_server", "describe_validation_error"]

log = logging.getLogger("tokenledger.mcp")

InputT = TypeVar("InputT", bound=BaseModel)
Handler = Callable[[Any, Context[Any, Any]], Awaitable[BaseModel]]

INSTRUCTIONS = (
    "Token ledger: count_tokens before a call, check_budget to reserve, track_usage after it "
    "(release if the call is not made), report to read usage and budgets. A field sent as null is "
    "not given: it takes its default."
)
# Fields only counted, never stored: any text is fine there.
COUNTED_ONLY = frozenset({"text", "texts", "messages", "tools", "input_text", "output_text"})
# Annotations say what every action of a tool may do: reads never sit in a tool that writes. Only what
# differs from MCP's defaults is sent (readOnlyHint false; idempotentHint means nothing on a read-only
# tool), except destructiveHint, said on every write since clients gate on it.
READ = ToolAnnotations(readOnlyHint=True)
WRITE = ToolAnnotations(destructiveHint=False)  # idempotentHint is false by default
WRITE_IDEMPOTENT = ToolAnnotations(destructiveHint=False, idempotentHint=True)
# set overwrites fields and delete destroys; repeating either leaves the same state.
ADMIN = ToolAnnotations(destructiveHint=True, idempotentHint=True)
# add refuses a taken name and run_now queues another delivery each time: not idempotent; delete destroys.
SCHEDULE = ToolAnnotations(destructiveHint=True)

ANY_ROLE: tuple[Role, ...] = ("admin", "member", "viewer")
CALLERS: tuple[Role, ...] = ("admin", "member")
ADMINS: tuple[Role, ...] = ("admin",)

# Actions that moved to another tool when reads and writes were split (0.2): a call naming one is told
# where it went.
MOVED = {
    "manage_budget": {"list": "lookup what=budgets", "get": "lookup what=budgets name=NAME"},
    "manage_schedule": {"list": "lookup what=schedules"},
    "budget_override": {"list": "lookup what=overrides", "status": "lookup what=overrides id=ID"},
    "prices": {action: f"manage_prices action={action}" for action in ("set", "alias", "unalias")},
}


# --- the tools ---------------------------------------------------------------------------------


class TokenLedgerServer(MCPServer):
    """The SDK's server, with each role's tool list and the spec's error for an unknown tool or prompt.

    A role sees only the tools it may call (a member no admin tools, a viewer no writes): every agent
    pays for the list in context. A hidden tool still answers, with the ledger's refusal naming the role.
    mcp 2.3 answers an unknown tool with an `isError` result and an unknown prompt with error code 0;
    MCP asks for JSON-RPC -32602 (invalid params) for both.
    """

    def __init__(
        self, *args: Any, default_principal: Principal, roles: dict[str, tuple[Role, ...]], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._default_principal = default_principal
        self._roles = roles

    def tool_names(self) -> list[str]:
        """Every tool of the server, whoever asks."""
        return list(self._roles)

    async def list_tools(self) -> list[ListedTool]:
        role = request_principal(self._default_principal).role
        return [tool for tool in await super().list_tools() if role in self._roles.get(tool.name, ANY_ROLE)]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        if name not in self._roles:  # ours have roles; a tool added to the server by its embedder counts too
            registered = [tool.name for tool in await super().list_tools()]
            if name not in registered:
                raise MCPError(INVALID_PARAMS, f"Unknown tool: {name!r}; allowed: {', '.join(registered)}")
        return await super().call_tool(name, arguments, context)

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[Any, Any] | None = None
    ) -> Any:
        known = [prompt.name for prompt in await self.list_prompts()]
        if name not in known:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name!r}; allowed: {', '.join(known)}")
        return await super().get_prompt(name, arguments, context)


def build_server(ledger: Ledger, *, default_principal: Principal) -> MCPServer:
    """An MCP server over `ledger`; stdio and in-memory clients act as `default_principal`.

    Over HTTP/SSE the principal is the one the transport's auth middleware put on the request
    (`request.state.principal`); a request without one is refused (see `tokenledger.mcp.access`).
    """

    def who(ctx: Context[Any, Any]) -> Principal:
        return principal_of(ctx, default_principal)

    async def count_tokens(request: CountInput, ctx: Context[Any, Any]) -> CountResult:
        """Count tokens of text or chat messages for a model, with context fit and cost."""
        return await ledger.count_tokens(request, who(ctx))

    async def check_budget(request: CheckInput, ctx: Context[Any, Any]) -> CheckResult:
        """Check a planned LLM call against every matching budget; reserve it if allowed."""
        return await ledger.check_budget(request, who(ctx))

    async def track_usage(request: TrackInput, ctx: Context[Any, Any]) -> TrackResult:
        """Record a call's actual usage, settling its reservation; a replayed request_id counts once."""
        return await ledger.track_usage(request, who(ctx))

    async def release(request: ReleaseInput, ctx: Context[Any, Any]) -> ReleaseResult:
        """Release a reservation whose call was not made."""
        return await ledger.release(request.reservation_id, who(ctx))

    async def extend_reservation(request: ExtendInput, ctx: Context[Any, Any]) -> ExtendResult:
        """Extend an active reservation to ttl_seconds from now."""
        return await ledger.extend_reservation(request, who(ctx))

    async def report(request: ReportInput, ctx: Context[Any, Any]) -> reports.Report:
        """Usage, budget, forecast, savings and chargeback reports, as json, markdown or csv."""
        return reports.formatted(await ledger.report(request, who(ctx)), request.format)

    async def lookup(request: LookupInput, ctx: Context[Any, Any]) -> LookupResult:
        """Read budgets (spec and live state), scheduled reports or override requests."""
        return await _lookup(ledger, request, who(ctx))

    async def prices(request: PricesInput, ctx: Context[Any, Any]) -> PricesResult:
        """A model's prices and context window, or a catalog search with tenant overrides and aliases."""
        return await _prices(ledger, request, who(ctx))

    async def fit_messages(request: FitInput, ctx: Context[Any, Any]) -> FitResult:
        """Drop the oldest turns until messages fit the model's context with max_output_tokens to spare."""
        fitted = await ledger.fit_messages(request, who(ctx))
        if request.used_old_name:
            renamed = "max_tokens is deprecated and goes in the next release: send max_output_tokens"
            fitted = fitted.model_copy(update={"warnings": [*fitted.warnings, renamed]})
        return fitted

    async def budget_override(request: BudgetOverrideInput, ctx: Context[Any, Any]) -> OverridesResult:
        """Temporary budget increase: request or cancel one; approve or deny (admin)."""
        return await _budget_override(ledger, request, who(ctx))

    async def manage_budget(request: ManageBudgetInput, ctx: Context[Any, Any]) -> BudgetsResult:
        """Set (only the fields given) or delete a budget (admin)."""
        return await _manage_budget(ledger, request, who(ctx))

    async def manage_schedule(request: ManageScheduleInput, ctx: Context[Any, Any]) -> SchedulesResult:
        """Add, run now or delete a scheduled report (admin)."""
        return await _manage_schedule(ledger, request, who(ctx))

    async def manage_prices(request: ManagePricesInput, ctx: Context[Any, Any]) -> PricesResult:
        """Set a tenant price override, or alias a name to a catalog model or remove it (admin)."""
        return await _manage_prices(ledger, request, who(ctx))

    tools = [
        (_tool(count_tokens, CountInput, CountResult, READ), ANY_ROLE),
        (_tool(check_budget, CheckInput, CheckResult, WRITE), CALLERS),
        (_tool(track_usage, TrackInput, TrackResult, WRITE), CALLERS),
        (_tool(release, ReleaseInput, ReleaseResult, WRITE_IDEMPOTENT), CALLERS),
        (_tool(extend_reservation, ExtendInput, ExtendResult, WRITE), CALLERS),
        (_tool(report, ReportInput, reports.Report, READ), ANY_ROLE),
        (_tool(lookup, LookupInput, LookupResult, READ), ANY_ROLE),
        (_tool(prices, PricesInput, PricesResult, READ), ANY_ROLE),
        (_tool(fit_messages, FitInput, FitResult, READ), ANY_ROLE),
        (_tool(budget_override, BudgetOverrideInput, OverridesResult, WRITE), CALLERS),
        (_tool(manage_budget, ManageBudgetInput, BudgetsResult, ADMIN), ADMINS),
        (_tool(manage_schedule, ManageScheduleInput, SchedulesResult, SCHEDULE), ADMINS),
        (_tool(manage_prices, ManagePricesInput, PricesResult, ADMIN), ADMINS),
    ]
    server = TokenLedgerServer(
        "tokenledger",
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[tool for tool, _ in tools],
        middleware=[PrincipalMiddleware()],
        default_principal=default_principal,
        roles={tool.name: roles for tool, roles in tools},
    )
    _add_resources(server, ledger, default_principal)
    _add_prompts(server, default_principal)
    return server


async def _manage_budget(ledger: Ledger, request: ManageBudgetInput, principal: Principal) -> BudgetsResult:
    if request.action == "delete":
        deleted = await ledger.delete_budget(request.name, principal)
        return BudgetsResult(action=request.action, deleted=deleted.name)
    changed = await ledger.set_budget(request.change(), principal, reset_counters=request.reset_counters)
    return BudgetsResult(action=request.action, budgets=[changed])


async def _manage_schedule(
    ledger: Ledger, request: ManageScheduleInput, principal: Principal
) -> SchedulesResult:
    action = request.action
    if action == "run_now":
        return SchedulesResult(action=action, run=await ledger.run_schedule_now(request.name, principal))
    if action == "delete":
        return SchedulesResult(
            action=action, schedules=[await ledger.delete_schedule(request.name, principal)]
        )
    spec = ScheduleSpec.model_validate(request.spec_fields())
    return SchedulesResult(action=action, schedules=[await ledger.add_schedule(spec, principal)])


async def _budget_override(
    ledger: Ledger, request: BudgetOverrideInput, principal: Principal
) -> OverridesResult:
    action = request.action
    if action == "request":
        asked = OverrideRequest.model_validate(request.request_fields())
        return OverridesResult(action=action, overrides=[await ledger.request_override(asked, principal)])
    if request.id is None:
        raise ToolError(f"id: missing; allowed: an override request's id, required for action {action!r}")
    if action == "cancel":
        return OverridesResult(action=action, overrides=[await ledger.cancel_override(request.id, principal)])
    if action == "approve":
        approved = await ledger.approve_override(request.id, principal, reason=request.reason)
        return OverridesResult(action=action, overrides=[approved])
    if request.reason is None:
        raise ToolError("reason: missing; allowed: why the request is denied, required for action 'deny'")
    return OverridesResult(
        action=action, overrides=[await ledger.deny_override(request.id, request.reason, principal)]
    )


async def _lookup(ledger: Ledger, request: LookupInput, principal: Principal) -> LookupResult:
    what = request.what
    for field, applies in (("id", "overrides"), ("status", "overrides")):
        if getattr(request, field) is not None and what != applies:
            raise ToolError(f"{field}: given with what={what!r}; allowed: only with what={applies!r}")
    if what == "budgets":
        if request.name is not None:
            return LookupResult(what=what, budgets=[await ledger.get_budget(request.name, principal)])
        return LookupResult(what=what, budgets=await ledger.list_budgets(principal))
    if what == "schedules":
        if request.name is not None:
            raise ToolError("name: given with what='schedules'; allowed: only with budgets or overrides")
        return LookupResult(what=what, schedules=await ledger.list_schedules(principal))
    if request.id is not None:
        return LookupResult(what=what, overrides=[await ledger.override_status(request.id, principal)])
    found = await ledger.list_overrides(principal, status=request.status, budget=request.name)
    return LookupResult(what=what, overrides=found)


async def _prices(ledger: Ledger, request: PricesInput, principal: Principal) -> PricesResult:
    action = request.action
    if action == "list":
        found = ledger.catalog.search(request.query, provider=request.provider, limit=request.limit)
        overrides = await ledger.list_price_overrides(principal)
        aliases = await ledger.list_aliases(principal)
        jsonable = [_jsonable(o) for o in overrides]
        return PricesResult(action=action, models=found, overrides=jsonable, aliases=aliases)
    if request.model is None:
        raise ToolError(f"model: missing; allowed: a model name, required for action {action!r}")
    return PricesResult(action=action, models=[await ledger.get_price(request.model, principal)])


async def _manage_prices(ledger: Ledger, request: ManagePricesInput, principal: Principal) -> PricesResult:
    action = request.action
    if action == "unalias":
        return PricesResult(action=action, aliases=[await ledger.delete_alias(request.model, principal)])
    if action == "alias":
        if request.target is None:
            raise ToolError("target: missing; allowed: the catalog model the alias counts and prices as")
        alias = await ledger.set_alias(request.model, request.target, principal)
        return PricesResult(action=action, aliases=[alias])
    fields = request.model_dump(include=set(PriceSpec.model_fields), exclude_none=True)
    spec = PriceSpec.model_validate(fields)
    return PricesResult(action=action, models=[await ledger.set_price(spec, principal)])


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A store row as JSON values: money as decimal strings, times in ISO 8601."""
    return {key: reports._cell(value) for key, value in row.items()}


# --- resources and prompts ---------------------------------------------------------------------


def _add_resources(server: MCPServer, ledger: Ledger, default: Principal) -> None:
    @server.resource(
        "tokenledger://budgets",
        name="budgets",
        description="The budgets you may read, with live state",
        mime_type="application/json",
    )
    async def budgets() -> str:
        return await _read(lambda: _budgets_report(ledger, request_principal(default)))

    @server.resource(
        "tokenledger://budgets/{name}",
        name="budget",
        description="One budget you may read, with live state",
        mime_type="application/json",
    )
    async def budget(name: str, ctx: Context[Any, Any]) -> str:
        return await _read(lambda: ledger.get_budget(name, principal_of(ctx, default)))

    @server.resource(
        "tokenledger://models/{name}",
        name="model",
        description="A model's catalog entry: prices, context window, counting method",
        mime_type="application/json",
    )
    async def model(name: str, ctx: Context[Any, Any]) -> str:
        return await _read(lambda: ledger.model_info(name, principal_of(ctx, default)))


def _refusing_bad_arguments(render: Callable[..., Any]) -> Callable[..., Any]:
    """A prompt's render whose refused arguments reach the client as invalid params (-32602) naming
    the field, the value and what is allowed, not as an internal error."""

    def checked(**arguments: Any) -> Any:
        try:
            return render(**arguments)
        except ValidationError as error:
            raise MCPError(INVALID_PARAMS, describe_validation_error(error)) from error
        except ValueError as error:
            raise MCPError(INVALID_PARAMS, str(error)) from error

    return checked


async def _budgets_report(ledger: Ledger, principal: Principal) -> reports.Report:
    return reports.budgets_report(await ledger.list_budgets(principal))


async def _read(read: Callable[[], Awaitable[BaseModel]]) -> str:
    """A resource's JSON; a ledger refusal becomes a resource error carrying the ledger's message."""
    try:
        return (await read()).model_dump_json(exclude_none=True)
    except (NotFound, UnknownModel) as error:
        raise ResourceNotFoundError(str(error)) from error
    except ValidationError as error:
        raise ResourceError(describe_validation_error(error)) from error
    except (TokenLedgerError, ToolError) as error:
        raise ResourceError(_public_message(error)) from error
    except Exception as error:  # a bug: logged under an id, which the reader sees
        raise ResourceError(str(internal_error(log, error, "reading a resource"))) from error


def _add_prompts(server: MCPServer, default: Principal) -> None:
    # The Token Checker's three jobs (the agent files in tokenledger/data/agents use them too).
    for job in (prompts.usage_analysis, prompts.cost_tracking_setup, prompts.budget_enforcement):
        prompt = Prompt.from_function(job)
        server.add_prompt(prompt.model_copy(update={"fn": _refusing_bad_arguments(prompt.fn)}))

    @server.prompt(name="cost_review", description="Review token spend and budgets for a period")
    def cost_review(ctx: Context[Any, Any], since: str = "7d") -> list[UserMessage]:
        if principal_of(ctx, default).role == "member":
            # A member's reports hold its own user's usage only: no per-user breakdown to ask for.
            return [
                UserMessage(
                    f"Review my LLM token spend since {since}. Call the `report` tool three times: "
                    f'view="summary" since="{since}" for totals; view="usage" since="{since}" '
                    'group_by=["model"] for the models I spend most on; view="budgets" for the budgets that '
                    "apply to me, near or over their limit. Then summarise: total cost and tokens, the top "
                    "models by cost, budgets at warning or exceeded and when they reset, the error rate, and "
                    "two or three concrete savings (cheaper models via `prices`, trimming context with "
                    "`fit_messages`)."
                )
            ]
        return [
            UserMessage(
                f"Review our LLM token spend since {since}. Call the `report` tool three times: "
                f'view="summary" since="{since}" for totals; view="usage" since="{since}" '
                'group_by=["model"] and then group_by=["user"] for the biggest spenders; '
                'view="budgets" for budgets near or over their limit. Then summarise: total cost and tokens, '
                "the top models and users by cost, budgets at warning or exceeded and when they reset, the "
                "error rate, and two or three concrete savings (cheaper models via `prices`, trimming "
                "context with `fit_messages`, tighter budgets via `manage_budget`)."
            )
        ]


# --- tool plumbing: validation, size limits, error messages --------------------------------------


class _WholeArguments(FuncMetadata):
    """Hands the tool the raw argument object: the tool validates it with its own input model."""

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        return {"arguments": arguments_to_validate}


def _tool(
    handler: Callable[[InputT, Context[Any, Any]], Awaitable[BaseModel]],
    input_model: type[InputT],
    output_model: type[BaseModel],
    annotations: ToolAnnotations,
) -> Tool:
    """A tool whose arguments are one `input_model` (unknown fields refused) and whose result is one
    `output_model`, published as its input and output schema."""
    parameters = input_schema(input_model)
    collections = {
        name
        for name, prop in parameters.get("properties", {}).items()
        if {"array", "object"} & set(_types(prop))
    }
    moved = MOVED.get(handler.__name__, {})

    async def run(arguments: dict[str, Any], ctx: Context[Any, Any]) -> BaseModel | CallToolResult:
        _screen(arguments)
        arguments = _without_nulls(arguments)
        if isinstance(action := arguments.get("action"), str) and action in moved:
            raise ToolError(f"action: {action!r} moved to another tool; use {moved[action]}")
        try:
            request = input_model.model_validate(_parse_json_strings(arguments, collections))
            return _as_text(await handler(request, ctx))
        except ValidationError as error:
            raise ToolError(describe_validation_error(error, list(input_model.model_fields))) from error
        except TokenLedgerError as error:
            raise ToolError(_public_message(error)) from error
        except ToolError:
            raise
        except Exception as error:  # a bug: logged under an id, which the agent reads
            raise ToolError(str(internal_error(log, error, f"running tool {handler.__name__}"))) from error

    metadata = _WholeArguments(
        arg_model=ArgModelBase,
        output_model=output_model,
        output_schema=output_schema(output_model),
    )
    return Tool(
        fn=run,
        name=handler.__name__,
        description=handler.__doc__ or "",
        parameters=parameters,
        fn_metadata=metadata,
        is_async=True,
        context_kwarg="ctx",
        annotations=annotations,
    )


def _types(prop: dict[str, Any]) -> list[str]:
    kinds = prop.get("type", [])
    return kinds if isinstance(kinds, list) else [kinds]


def _without_nulls(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments without the fields sent as null, here and in messages, their parts and priority
    shares: strict clients send every field, null for those they do not mean (null is "not given")."""
    given = {name: value for name, value in arguments.items() if value is not None}
    if isinstance(given.get("messages"), list):
        given["messages"] = [_message_without_nulls(message) for message in given["messages"]]
    if isinstance(given.get("priority_shares"), dict):
        given["priority_shares"] = {k: v for k, v in given["priority_shares"].items() if v is not None}
    return given


def _message_without_nulls(message: object) -> object:
    if not isinstance(message, dict):
        return message
    given = {key: value for key, value in message.items() if value is not None}
    if isinstance(given.get("content"), list):
        given["content"] = [
            {key: value for key, value in part.items() if value is not None}
            if isinstance(part, dict)
            else part
            for part in given["content"]
        ]
    return given


def _as_text(result: BaseModel) -> BaseModel | CallToolResult:
    """A report in markdown or csv reaches the agent as that table (its text content), with the whole
    report as structured content beside it; any other result as its JSON."""
    if not (isinstance(result, reports.Report) and result.text is not None):
        return result
    structured = result.model_dump(mode="json", by_alias=True)
    return CallToolResult(content=[TextContent(type="text", text=result.text)], structured_content=structured)


def _parse_json_strings(arguments: dict[str, Any], collections: set[str]) -> dict[str, Any]:
    """Lists and objects some clients send JSON-encoded as strings, decoded."""
    parsed = dict(arguments)
    for name in collections & arguments.keys():
        value = arguments[name]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError, RecursionError):
                parsed[name] = json.loads(value)
    return parsed


def _screen(arguments: dict[str, Any]) -> None:
    """Refuse, before any processing, a text over 8 MB (one field or all together), a list over 10,000
    items, or a NUL character where the value is stored (PostgreSQL text cannot hold one)."""
    total = 0
    for name, value in arguments.items():
        if isinstance(value, list) and len(value) > MAX_MESSAGES:
            raise ToolError(f"{name}: got {len(value)} items; allowed: at most {MAX_MESSAGES:,}")
        size, has_nul = _text_bytes(value, MAX_TEXT_BYTES - total)
        if size > MAX_TEXT_BYTES:
            raise ToolError(f"{name}: got more than 8 MB of text; allowed: at most {MAX_TEXT_BYTES:,} bytes")
        total += size
        if total > MAX_TEXT_BYTES:
            raise ToolError(
                f"{name}: the arguments' text totals over 8 MB; allowed: at most {MAX_TEXT_BYTES:,} bytes"
            )
        if has_nul and name not in COUNTED_ONLY:
            raise ToolError(f"{name}: got a NUL character (\\u0000); allowed: text without NUL characters")


def _text_bytes(value: object, budget: int) -> tuple[int, bool]:
    """UTF-8 bytes of the strings in `value` (keys included), counted until past `budget`, and whether
    any holds a NUL character."""
    total, has_nul, stack = 0, False, [value]
    while stack and total <= budget:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode("utf-8", "surrogatepass"))
            has_nul = has_nul or "\x00" in item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total, has_nul


def describe_validation_error(error: ValidationError, fields: Sequence[str] = ()) -> str:
    """Each refused field: where, what was given, what is allowed (see `types.explain_validation_error`)."""
    return explain_validation_error(error, fields)


def _public_message(error: Exception) -> str:
    """What an agent may read: our errors name the field; anything unforeseen is logged under an id and
    shown as that id only."""
    if type(error) is TokenLedgerError:
        return str(internal_error(log, error, "serving an MCP call"))
    return str(error)  # an InternalError says only its id: it was logged where it arose
