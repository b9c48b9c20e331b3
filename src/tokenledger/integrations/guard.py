"""`guard`: reserve before a model call, settle from the provider's usage after it, release on error.

    async with guard(ledger, model="gpt-4o", messages=messages, max_output_tokens=500, user="ana") as grant:
        response = await client.chat.completions.create(...)
        await grant.settle(response.usage)

The same `guard(...)` works as `with` from sync code when given a `SyncLedger`, which runs the async
`Ledger` on an event loop thread of its own (an anyio blocking portal). A denied check raises
`BudgetExceeded` carrying the `CheckResult`, before any call is made. A body that raises releases the
reservation. A body that ends without settling is settled with the counted input and 0 output tokens
(`on_exit="settle_input"`, the default: the call was most likely made) or released (`on_exit="release"`).
A long call keeps its reservation with `grant.keep_alive()`, which extends it once more than half its TTL
has passed (the SDK wrappers' streams call it on every event).
With `fallback=[...]` (and `fallback_at=`), a call its budget cannot afford runs on a cheaper model instead:
`grant.model` is the model to call, `grant.downgrade` says why (see tokenledger.integrations.fallback).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from tokenledger.errors import BudgetExceeded, Conflict, InvalidInput, TokenLedgerError
from tokenledger.integrations.fallback import (
    Downgrade,
    fallback_request_id,
    money_denial,
    past_share,
    validate_fallback,
)
from tokenledger.ledger import Ledger
from tokenledger.settings import Settings
from tokenledger.types import (
    Budget,
    BudgetChange,
    BudgetSpec,
    ChatMessage,
    CheckRequest,
    CheckResult,
    ExtendRequest,
    ExtendResult,
    Principal,
    Priority,
    ReleaseResult,
    TrackRequest,
    TrackResult,
    UsageStatus,
)

__all__ = [
    "Downgrade",
    "Grant",
    "Guard",
    "GuardSpec",
    "LedgerCalls",
    "OnExit",
    "SyncGrant",
    "SyncLedger",
    "Usage",
    "guard",
    "usage_from",
]

log = logging.getLogger("tokenledger.integrations")

T = TypeVar("T")
OnExit = Literal["settle_input", "release"]
ATTRIBUTION_FIELDS = ("user", "session", "project", "team", "feature", "endpoint")


# --- usage as providers report it ----------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """A call's token usage in the ledger's terms: `input_tokens` excludes cached input."""

    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_output_tokens: int = 0


def _field(source: object, name: str) -> Any:
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _tokens(source: object, name: str) -> int:
    value = _field(source, name)
    return value if isinstance(value, int) and value >= 0 else 0


def usage_from(source: object) -> Usage:
    """The `Usage` in a provider's usage object, a response carrying one, or a mapping of our field names.

    OpenAI Chat Completions: `prompt_tokens` includes `prompt_tokens_details.cached_tokens`, so input is
    their difference and the cached part is a cache read; `completion_tokens` includes
    `completion_tokens_details.reasoning_tokens`. OpenAI Responses: the same with `input_tokens` /
    `output_tokens` and `*_details`. Anthropic: `input_tokens`, `cache_read_input_tokens`,
    `cache_creation_input_tokens` and `output_tokens` are already disjoint and map one to one
    (`output_tokens_details.thinking_tokens` as the reasoning part).
    """
    if isinstance(source, Usage):
        return source
    if source is None:
        raise InvalidInput(
            "usage", None, "give the provider's usage object, a response with .usage, or a dict"
        )
    if _field(source, "prompt_tokens") is None and _field(source, "input_tokens") is None:
        inner = _field(source, "usage")
        if inner is not None and inner is not source:
            return usage_from(inner)
        raise InvalidInput(
            "usage", type(source).__name__, "an object with prompt_tokens/completion_tokens or input_tokens"
        )
    if _field(source, "prompt_tokens") is not None:  # OpenAI Chat Completions
        cached = _tokens(_field(source, "prompt_tokens_details") or {}, "cached_tokens")
        reasoning = _tokens(_field(source, "completion_tokens_details") or {}, "reasoning_tokens")
        prompt, completion = _tokens(source, "prompt_tokens"), _tokens(source, "completion_tokens")
        return Usage(
            input_tokens=max(prompt - cached, 0),
            output_tokens=completion,
            cache_read_input_tokens=cached,
            reasoning_output_tokens=min(reasoning, completion),
        )
    if _field(source, "input_tokens_details") is not None:  # OpenAI Responses
        cached = _tokens(_field(source, "input_tokens_details") or {}, "cached_tokens")
        reasoning = _tokens(_field(source, "output_tokens_details") or {}, "reasoning_tokens")
        given, output = _tokens(source, "input_tokens"), _tokens(source, "output_tokens")
        return Usage(
            input_tokens=max(given - cached, 0),
            output_tokens=output,
            cache_read_input_tokens=cached,
            reasoning_output_tokens=min(reasoning, output),
        )
    output = _tokens(source, "output_tokens")
    reasoning = _tokens(source, "reasoning_output_tokens") or _tokens(
        _field(source, "output_tokens_details") or {}, "thinking_tokens"
    )
    return Usage(  # Anthropic, or our own field names
        input_tokens=_tokens(source, "input_tokens"),
        output_tokens=output,
        cache_read_input_tokens=_tokens(source, "cache_read_input_tokens"),
        cache_creation_input_tokens=_tokens(source, "cache_creation_input_tokens"),
        reasoning_output_tokens=min(reasoning, output),
    )


# --- the ledger calls a grant makes --------------------------------------------------------------


class LedgerCalls(Protocol):
    """The `Ledger` methods a guard needs; `Ledger` itself is one."""

    async def check_budget(
        self, request: CheckRequest, principal: Principal | None = None
    ) -> CheckResult: ...

    async def track_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult: ...

    async def release(self, reservation_id: str, principal: Principal | None = None) -> ReleaseResult: ...

    async def extend_reservation(
        self, request: ExtendRequest, principal: Principal | None = None
    ) -> ExtendResult: ...


class _ThroughPortal:
    """A `SyncLedger` seen from async code: each call goes to a worker thread that waits on the portal."""

    def __init__(self, sync_ledger: SyncLedger) -> None:
        self._sync = sync_ledger

    async def check_budget(self, request: CheckRequest, principal: Principal | None = None) -> CheckResult:
        return await anyio.to_thread.run_sync(self._sync.check_budget, request, principal)

    async def track_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult:
        return await anyio.to_thread.run_sync(self._sync.track_usage, request, principal)

    async def release(self, reservation_id: str, principal: Principal | None = None) -> ReleaseResult:
        return await anyio.to_thread.run_sync(self._sync.release, reservation_id, principal)

    async def extend_reservation(
        self, request: ExtendRequest, principal: Principal | None = None
    ) -> ExtendResult:
        return await anyio.to_thread.run_sync(self._sync.extend_reservation, request, principal)


def async_calls(ledger: Ledger | SyncLedger | LedgerCalls) -> LedgerCalls:
    """The ledger as async calls: a `Ledger` as it is, a `SyncLedger` through worker threads."""
    if isinstance(ledger, SyncLedger):
        return _ThroughPortal(ledger)
    return ledger


# --- the grant -------------------------------------------------------------------------------------


class Grant:
    """A reservation held for one model call; `settle` or `record` it once, or `release` it."""

    def __init__(
        self,
        ledger: LedgerCalls,
        check: CheckResult,
        spec: GuardSpec,
        principal: Principal | None,
        downgrade: Downgrade | None = None,
    ) -> None:
        self._ledger = ledger
        self._spec = spec
        self._principal = principal
        self.check = check
        self.downgrade = downgrade  # set when the call runs on a fallback model
        self.started = time.perf_counter()
        self.tracked: TrackResult | None = None
        self.released: ReleaseResult | None = None
        self._done = False
        self._held_since = time.monotonic()  # when the reservation's current TTL began (or a little after)

    @property
    def reservation_id(self) -> str | None:
        return self.check.reservation_id

    @property
    def model(self) -> str:
        """The model to call: the one requested, or the fallback model the budget allowed instead."""
        return self._spec.model

    @property
    def requested_model(self) -> str:
        """The model the caller asked for (`model` unless the call fell back)."""
        return self.downgrade.requested_model if self.downgrade else self._spec.model

    @property
    def input_tokens(self) -> int:
        """The input tokens counted at the check (what a call without reported usage is charged)."""
        return self.check.input_tokens

    @property
    def max_output_tokens(self) -> int:
        """The output tokens granted: pass this as the call's max tokens (lower than asked when partial)."""
        return self.check.granted_output_tokens

    @property
    def settled(self) -> bool:
        """Whether the grant is finished: settled, recorded or released."""
        return self._done

    @property
    def expires_at(self) -> datetime | None:
        """When the reservation expires unless settled, released or extended first."""
        return self.check.expires_at

    @property
    def extension_due(self) -> bool:
        """Whether more than half the reservation's TTL has passed since it was granted or last extended."""
        return (
            self.reservation_id is not None
            and not self._done
            and time.monotonic() - self._held_since > self._spec.ttl_seconds / 2
        )

    async def extend(self) -> ExtendResult:
        """Keep the reservation (its holds) for another `ttl_seconds` from now: a long call's."""
        if self.reservation_id is None or self._done:
            raise Conflict(f"reservation {self.reservation_id}: this grant holds no active reservation")
        asked_at = time.monotonic()
        extended = await self._ledger.extend_reservation(
            ExtendRequest(reservation_id=self.reservation_id, ttl_seconds=self._spec.ttl_seconds),
            self._principal,
        )
        self._held_since = asked_at
        self.check = self.check.model_copy(update={"expires_at": extended.expires_at})
        return extended

    async def keep_alive(self) -> None:
        """Extend the reservation if more than half its TTL has passed; call it as a long call progresses.
        A refusal is logged, not raised: the call goes on, and its settle still records the usage."""
        if not self.extension_due:
            return
        try:
            await self.extend()
        except TokenLedgerError as error:
            self._held_since = time.monotonic()  # retry after another half TTL, not on every event
            log.warning("could not extend reservation %s: %s", self.reservation_id, error)

    async def settle(
        self,
        usage: object,
        *,
        status: UsageStatus = "success",
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tools_used: Sequence[str] = (),
    ) -> TrackResult:
        """Settle with the usage the provider reported (an SDK usage object, a response, a dict, `Usage`)."""
        reported = usage_from(usage)
        return await self.record(
            input_tokens=reported.input_tokens,
            output_tokens=reported.output_tokens,
            cache_read_input_tokens=reported.cache_read_input_tokens,
            cache_creation_input_tokens=reported.cache_creation_input_tokens,
            reasoning_output_tokens=reported.reasoning_output_tokens,
            status=status,
            model=model,
            metadata=metadata,
            tools_used=tools_used,
        )

    async def record(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cache_read_input_tokens: int = 0,
        cache_creation_input_tokens: int = 0,
        reasoning_output_tokens: int = 0,
        input_text: str | None = None,
        output_text: str | None = None,
        cost_usd: Decimal | None = None,
        status: UsageStatus = "success",
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tools_used: Sequence[str] = (),
    ) -> TrackResult:
        """Settle with counts or texts; missing input is the counted input, missing output is 0 tokens."""
        if self._done:
            raise Conflict(f"reservation {self.reservation_id}: this grant was already settled or released")
        if input_tokens is None and input_text is None:
            input_tokens = self.input_tokens
        if output_tokens is None and output_text is None:
            output_tokens = 0
        fell_back = (
            {"fallback_reason": self.downgrade.reason, "fallback_budget": self.downgrade.budget}
            if self.downgrade
            else {}
        )
        request = TrackRequest(
            model=model or self._spec.model,
            reservation_id=self.reservation_id,
            request_id=self._spec.request_id,
            provider=self._spec.provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read_input_tokens,
            cache_creation_input_tokens=cache_creation_input_tokens,
            reasoning_output_tokens=reasoning_output_tokens,
            input_text=input_text if input_tokens is None else None,
            output_text=output_text if output_tokens is None else None,
            cost_usd=cost_usd,
            status=status,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            tools_used=list(tools_used),
            metadata={**self._spec.metadata, **fell_back, **(metadata or {})},
            requested_model=self.downgrade.requested_model if self.downgrade else None,
            **self._spec.attribution,
        )
        self._done = True
        try:
            with anyio.CancelScope(shield=True):  # a cancelled caller still records what it spent
                tracked = await self._ledger.track_usage(request, self._principal)
        except BaseException:
            self._done = False
            raise
        self.tracked = tracked
        return tracked

    async def release(self) -> ReleaseResult | None:
        """Give the reservation back (the call was not made); None when there was nothing to release."""
        if self._done:
            return self.released
        self._done = True
        if self.reservation_id is None:
            return None
        with anyio.CancelScope(shield=True):
            self.released = await self._ledger.release(self.reservation_id, self._principal)
        return self.released

    async def finish(self, on_exit: OnExit) -> None:
        """What a body that ended without settling gets: its counted input settled, or a release."""
        if self._done:
            return
        if on_exit == "release":
            await self.release()
        else:
            await self.record(metadata={"settled_by": "guard_exit"})


class SyncGrant:
    """A `Grant` for sync code: the same methods, run on the `SyncLedger`'s event loop thread."""

    def __init__(self, grant: Grant, portal: anyio.from_thread.BlockingPortal) -> None:
        self.grant = grant
        self._portal = portal

    @property
    def check(self) -> CheckResult:
        return self.grant.check

    @property
    def reservation_id(self) -> str | None:
        return self.grant.reservation_id

    @property
    def model(self) -> str:
        return self.grant.model

    @property
    def requested_model(self) -> str:
        return self.grant.requested_model

    @property
    def downgrade(self) -> Downgrade | None:
        return self.grant.downgrade

    @property
    def input_tokens(self) -> int:
        return self.grant.input_tokens

    @property
    def max_output_tokens(self) -> int:
        return self.grant.max_output_tokens

    @property
    def settled(self) -> bool:
        return self.grant.settled

    @property
    def tracked(self) -> TrackResult | None:
        return self.grant.tracked

    def settle(self, usage: object, **options: Any) -> TrackResult:
        """Settle with the usage the provider reported; see `Grant.settle`."""
        return self._portal.call(partial(self.grant.settle, usage, **options))

    def record(self, **counts: Any) -> TrackResult:
        """Settle with counts or texts; see `Grant.record`."""
        return self._portal.call(partial(self.grant.record, **counts))

    def release(self) -> ReleaseResult | None:
        return self._portal.call(self.grant.release)

    def extend(self) -> ExtendResult:
        """Keep the reservation for another `ttl_seconds` from now; see `Grant.extend`."""
        return self._portal.call(self.grant.extend)

    def keep_alive(self) -> None:
        """Extend the reservation if more than half its TTL has passed; see `Grant.keep_alive`."""
        if self.grant.extension_due:  # checked here: no hop to the ledger's thread when not due
            self._portal.call(self.grant.keep_alive)

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine function on the ledger's event loop thread (with this grant, say)."""
        return self._portal.call(func, *args)

    def finish(self, on_exit: OnExit) -> None:
        self._portal.call(self.grant.finish, on_exit)


# --- the guard ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardSpec:
    model: str
    max_output_tokens: int
    priority: Priority
    allow_partial: bool
    ttl_seconds: float
    request_id: str | None
    provider: str | None
    attribution: dict[str, str]
    metadata: dict[str, Any]
    on_exit: OnExit
    fallback: tuple[str, ...] = ()  # cheaper models to run the call on when its budget is tight
    fallback_at: Decimal | None = None  # ... or when it would take a USD budget to this share of its limit


def _check_request(
    spec: GuardSpec,
    messages: Sequence[Mapping[str, Any] | ChatMessage] | None,
    text: str | None,
    input_tokens: int | None,
) -> CheckRequest:
    if messages is None and text is None and input_tokens is None:
        input_tokens = 0
    return CheckRequest(
        model=spec.model,
        messages=None if messages is None else [ChatMessage.model_validate(m) for m in messages],
        text=text,
        input_tokens=input_tokens,
        max_output_tokens=spec.max_output_tokens,
        priority=spec.priority,
        allow_partial=spec.allow_partial,
        ttl_seconds=spec.ttl_seconds,
        request_id=spec.request_id,
        **spec.attribution,
    )


def denial_message(check: CheckResult) -> str:
    """One line saying which budget blocked, why, and when to retry."""
    blocked = check.blocked_by
    if blocked is None:
        return f"budget check denied ({check.decision})"
    message = f"budget {blocked.budget!r} denied the call: {blocked.reason}"
    if blocked.remaining is not None:
        message += f", {blocked.remaining} remaining"
    if check.retry_after_seconds is not None:
        message += f"; retry in {check.retry_after_seconds} s"
    if check.suggested_model:
        message += f"; {check.suggested_model} would fit"
    return message


async def reserve(
    ledger: LedgerCalls,
    request: CheckRequest,
    principal: Principal | None,
    spec: GuardSpec,
) -> Grant:
    """A `Grant` for an allowed check; raises `BudgetExceeded` with the decision when denied.

    With `spec.fallback`, a check denied for money (or, with `spec.fallback_at`, a call that would take a
    USD budget to that share) runs on the first fallback model the budgets allow: the grant's `model` and
    `downgrade` say so. Each fallback is checked in order; only the one that passes reserves."""
    tried = False
    if spec.fallback_at is not None:
        probe = await ledger.check_budget(request.model_copy(update={"reserve": False}), principal)
        budget = past_share(probe, spec.fallback_at) if probe.allowed else None
        if budget is not None:
            tried = True
            if grant := await _first_fallback(ledger, request, principal, spec, "fallback_at", budget):
                return grant
    check = await ledger.check_budget(request, principal)
    if check.allowed:
        return Grant(ledger, check, spec, principal)
    denial = money_denial(check) if spec.fallback else None
    if denial is None:
        raise BudgetExceeded(check, denial_message(check))
    budget, reason = denial
    if not tried and (grant := await _first_fallback(ledger, request, principal, spec, reason, budget)):
        return grant
    message = f"{denial_message(check)}; no fallback model fits either ({', '.join(spec.fallback)})"
    raise BudgetExceeded(check, message)


async def _first_fallback(
    ledger: LedgerCalls,
    request: CheckRequest,
    principal: Principal | None,
    spec: GuardSpec,
    reason: str,
    budget: str,
) -> Grant | None:
    """A grant on the first of `spec.fallback` that the budgets allow (a check each, in order), or None."""
    for position, model in enumerate(spec.fallback, start=1):
        request_id = fallback_request_id(request.request_id, position)
        check = await ledger.check_budget(
            request.model_copy(update={"model": model, "request_id": request_id}), principal
        )
        if check.allowed:
            downgrade = Downgrade(requested_model=spec.model, model=model, reason=reason, budget=budget)
            return Grant(ledger, check, replace(spec, model=model), principal, downgrade)
    return None


class Guard:
    """`async with` (any ledger) or `with` (a `SyncLedger`): a `Grant` inside, settled or released after."""

    def __init__(
        self,
        ledger: Ledger | SyncLedger | LedgerCalls,
        request: CheckRequest,
        spec: GuardSpec,
        principal: Principal | None,
    ) -> None:
        self._ledger = ledger
        self.request = request
        self.spec = spec
        self.principal = principal
        self.grant: Grant | None = None
        self._sync_grant: SyncGrant | None = None

    async def __aenter__(self) -> Grant:
        self.grant = await reserve(async_calls(self._ledger), self.request, self.principal, self.spec)
        return self.grant

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.grant is not None, "exit without enter"
        if exc is not None:
            await self.grant.release()
        else:
            await self.grant.finish(self.spec.on_exit)

    def __enter__(self) -> SyncGrant:
        if not isinstance(self._ledger, SyncLedger):
            raise TypeError(
                "`with guard(...)` needs a SyncLedger (tokenledger.integrations.SyncLedger.open()); "
                "use `async with` with a Ledger"
            )
        sync_ledger = self._ledger
        grant = sync_ledger.portal.call(reserve, sync_ledger.ledger, self.request, self.principal, self.spec)
        self.grant = grant
        self._sync_grant = SyncGrant(grant, sync_ledger.portal)
        return self._sync_grant

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._sync_grant is not None, "exit without enter"
        if exc is not None:
            self._sync_grant.release()
        else:
            self._sync_grant.finish(self.spec.on_exit)


def guard(
    ledger: Ledger | SyncLedger | LedgerCalls,
    *,
    model: str,
    messages: Sequence[Mapping[str, Any] | ChatMessage] | None = None,
    text: str | None = None,
    input_tokens: int | None = None,
    max_output_tokens: int = 0,
    priority: Priority = "medium",
    allow_partial: bool = False,
    ttl_seconds: float = 600,
    request_id: str | None = None,
    provider: str | None = None,
    principal: Principal | None = None,
    on_exit: OnExit = "settle_input",
    metadata: Mapping[str, Any] | None = None,
    fallback: Sequence[str] = (),
    fallback_at: float | Decimal | None = None,
    user: str | None = None,
    session: str | None = None,
    project: str | None = None,
    team: str | None = None,
    feature: str | None = None,
    endpoint: str | None = None,
) -> Guard:
    """A guard around one model call: reserve on enter, settle or release on exit.

    The input is counted from `messages` or `text` (or given as `input_tokens`; none of them means 0),
    and `max_output_tokens` is reserved. `async with` works with a `Ledger` or a `SyncLedger`; plain
    `with` needs a `SyncLedger`. `fallback` (and `fallback_at`): cheaper models to call instead when the
    budget is tight; call `grant.model`.
    """
    spec = make_spec(
        model=model,
        max_output_tokens=max_output_tokens,
        priority=priority,
        allow_partial=allow_partial,
        ttl_seconds=ttl_seconds,
        request_id=request_id,
        provider=provider,
        on_exit=on_exit,
        metadata=metadata,
        fallback=fallback,
        fallback_at=fallback_at,
        attribution={
            "user": user,
            "session": session,
            "project": project,
            "team": team,
            "feature": feature,
            "endpoint": endpoint,
        },
    )
    return Guard(ledger, _check_request(spec, messages, text, input_tokens), spec, principal)


def make_spec(
    *,
    model: str,
    max_output_tokens: int = 0,
    priority: Priority = "medium",
    allow_partial: bool = False,
    ttl_seconds: float = 600,
    request_id: str | None = None,
    provider: str | None = None,
    on_exit: OnExit = "settle_input",
    metadata: Mapping[str, Any] | None = None,
    attribution: Mapping[str, str | None] | None = None,
    fallback: Sequence[str] = (),
    fallback_at: float | Decimal | None = None,
) -> GuardSpec:
    """The settings of one guarded call (what the wrappers and the middleware build per call)."""
    given = {k: v for k, v in (attribution or {}).items() if v is not None}
    unknown = set(given) - set(ATTRIBUTION_FIELDS)
    if unknown:
        raise InvalidInput("attribution", sorted(unknown), f"one of {', '.join(ATTRIBUTION_FIELDS)}")
    fallback_models, fallback_share = validate_fallback(model, fallback, fallback_at)
    return GuardSpec(
        model=model,
        max_output_tokens=max_output_tokens,
        priority=priority,
        allow_partial=allow_partial,
        ttl_seconds=ttl_seconds,
        request_id=request_id,
        provider=provider,
        attribution=given,
        metadata=dict(metadata or {}),
        on_exit=on_exit,
        fallback=fallback_models,
        fallback_at=fallback_share,
    )


def check_request(
    spec: GuardSpec,
    *,
    messages: Sequence[Mapping[str, Any] | ChatMessage] | None = None,
    text: str | None = None,
    input_tokens: int | None = None,
) -> CheckRequest:
    """The `CheckRequest` of a guarded call: its spec and its input (messages, text or a count)."""
    return _check_request(spec, messages, text, input_tokens)


# --- sync code ---------------------------------------------------------------------------------------


class SyncLedger:
    """A `Ledger` for sync code: it runs on an event loop thread of its own (an anyio blocking portal).

    `SyncLedger.open()` starts the thread and opens the ledger on it; `close()` (or `with`) stops both.
    Its methods block the calling thread, never an event loop; do not call them from async code
    (`guard(sync_ledger, ...)` with `async with` is fine: it hands each call to a worker thread).
    """

    def __init__(
        self,
        ledger: Ledger,
        portal: anyio.from_thread.BlockingPortal,
        exit_stack: contextlib.ExitStack | None = None,
    ) -> None:
        self.ledger = ledger
        self.portal = portal
        self._exit_stack = exit_stack

    @classmethod
    def open(
        cls, settings: Settings | None = None, *, dsn: str | None = None, migrate: bool = True
    ) -> SyncLedger:
        """A ledger over the configured database, run on a new event loop thread."""
        stack = contextlib.ExitStack()
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        try:
            ledger = portal.call(partial(Ledger.open, settings, dsn=dsn, migrate=migrate))
        except BaseException:
            stack.close()
            raise
        return cls(ledger, portal, stack)

    def close(self) -> None:
        """Close the ledger and stop its thread (when this object started them)."""
        if self._exit_stack is None:
            return
        stack, self._exit_stack = self._exit_stack, None
        try:
            self.portal.call(self.ledger.close)
        finally:
            stack.close()

    def __enter__(self) -> SyncLedger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """The result of any async `Ledger` method (or coroutine function), run on the ledger's thread."""
        return self.portal.call(func, *args)

    def check_budget(self, request: CheckRequest, principal: Principal | None = None) -> CheckResult:
        return self.portal.call(self.ledger.check_budget, request, principal)

    def track_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult:
        return self.portal.call(self.ledger.track_usage, request, principal)

    def release(self, reservation_id: str, principal: Principal | None = None) -> ReleaseResult:
        return self.portal.call(self.ledger.release, reservation_id, principal)

    def extend_reservation(self, request: ExtendRequest, principal: Principal | None = None) -> ExtendResult:
        return self.portal.call(self.ledger.extend_reservation, request, principal)

    def set_budget(
        self,
        spec: BudgetSpec | BudgetChange,
        principal: Principal | None = None,
        *,
        reset_counters: bool = False,
    ) -> Budget:
        return self.portal.call(
            partial(self.ledger.set_budget, spec, principal, reset_counters=reset_counters)
        )

    def get_budget(self, name: str, principal: Principal | None = None) -> Budget:
        return self.portal.call(self.ledger.get_budget, name, principal)

    def guard(self, **options: Any) -> Guard:
        """`guard(self, **options)`: use it with `with` here, or `async with` from async code."""
        return guard(self, **options)
