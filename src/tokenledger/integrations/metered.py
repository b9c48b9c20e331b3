"""Metering calls: the `@metered` decorator, and the parts the SDK wrappers share (proxies, streams).

    @metered(ledger, model="gpt-4o-mini", max_output_tokens=300, feature="summaries")
    async def summarize(prompt: str) -> str: ...

The decorated function is reserved for before it runs (its prompt counted, `max_output_tokens`
reserved; a denial raises `BudgetExceeded` and the function is not called) and settled after it: from
the provider's usage when it returns a response carrying `.usage`, else by counting the `str` it
returns. The prompt is the `messages` argument (chat messages), else the `prompt` argument, else every
`str` argument joined by newlines. A function that raises releases its reservation.
Async functions take a `Ledger` or a `SyncLedger`; sync functions a `SyncLedger`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, cast

import anyio

from tokenledger.errors import InvalidInput
from tokenledger.integrations.fallback import validate_fallback
from tokenledger.integrations.guard import (
    ATTRIBUTION_FIELDS,
    Grant,
    GuardSpec,
    LedgerCalls,
    SyncGrant,
    SyncLedger,
    Usage,
    async_calls,
    check_request,
    make_spec,
    reserve,
    usage_from,
)
from tokenledger.ledger import Ledger
from tokenledger.types import CheckRequest, Principal, Priority, UsageStatus

__all__ = [
    "CallSettings",
    "GuardedAsyncStream",
    "GuardedStream",
    "Proxy",
    "StreamTally",
    "metered",
    "settle_stream",
]

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E")


# --- the decorator -------------------------------------------------------------------------------


def _prompt(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The check's input: `messages`, else `prompt`, else the str arguments joined by newlines."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return {"input_tokens": 0}
    arguments = bound.arguments
    messages = arguments.get("messages")
    if isinstance(messages, list) and messages:
        return {"messages": [message_dict(m) for m in messages]}
    prompt = arguments.get("prompt")
    if isinstance(prompt, str):
        return {"text": prompt}
    texts = [value for value in arguments.values() if isinstance(value, str)]
    texts += [
        v
        for value in arguments.values()
        if isinstance(value, dict)
        for v in value.values()
        if isinstance(v, str)
    ]
    return {"text": "\n".join(texts)} if texts else {"input_tokens": 0}


def _output(result: object) -> dict[str, Any]:
    """How to settle a function's result: its provider usage, else its text, else 0 output tokens."""
    if isinstance(result, str):
        return {"output_text": result}
    if result is not None and not isinstance(result, (int, float, bool, bytes)):
        try:
            return {"usage": usage_from(result)}
        except InvalidInput:
            pass
    return {"output_tokens": 0}


async def _settle_result(grant: Grant, result: object) -> None:
    outcome = _output(result)
    if "usage" in outcome:
        await grant.settle(outcome["usage"])
    else:
        await grant.record(**outcome)


def metered(
    ledger: Ledger | SyncLedger,
    *,
    model: str,
    max_output_tokens: int = 0,
    priority: Priority = "medium",
    principal: Principal | None = None,
    provider: str | None = None,
    ttl_seconds: float = 600,
    user: str | None = None,
    session: str | None = None,
    project: str | None = None,
    team: str | None = None,
    feature: str | None = None,
    endpoint: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator that reserves before each call of a sync or async function and settles after it."""
    spec = make_spec(
        model=model,
        max_output_tokens=max_output_tokens,
        priority=priority,
        ttl_seconds=ttl_seconds,
        provider=provider,
        metadata={"settled_by": "metered"},
        attribution={
            "user": user,
            "session": session,
            "project": project,
            "team": team,
            "feature": feature,
            "endpoint": endpoint,
        },
    )

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        if inspect.iscoroutinefunction(func):
            calls = async_calls(ledger)

            @functools.wraps(func)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                request = check_request(spec, **_prompt(signature, args, kwargs))
                grant = await reserve(calls, request, principal, spec)
                try:
                    result = await cast(Callable[P, Awaitable[Any]], func)(*args, **kwargs)
                except BaseException:
                    await grant.release()
                    raise
                await _settle_result(grant, result)
                return result

            return cast(Callable[P, R], run_async)

        if not isinstance(ledger, SyncLedger):
            raise TypeError(
                f"@metered on the sync function {func.__qualname__} needs a SyncLedger "
                "(tokenledger.integrations.SyncLedger.open()), which runs the ledger on its own thread"
            )
        sync_ledger = ledger

        @functools.wraps(func)
        def run_sync(*args: P.args, **kwargs: P.kwargs) -> R:
            request = check_request(spec, **_prompt(signature, args, kwargs))
            grant = sync_ledger.portal.call(reserve, sync_ledger.ledger, request, principal, spec)
            try:
                result = func(*args, **kwargs)
            except BaseException:
                sync_ledger.portal.call(grant.release)
                raise
            sync_ledger.portal.call(_settle_result, grant, result)
            return result

        return run_sync

    return decorate


# --- what the SDK wrappers share -------------------------------------------------------------------


def message_dict(message: object) -> dict[str, Any]:
    """A chat message as a plain dict (SDK message objects are pydantic models)."""
    if isinstance(message, Mapping):
        plain = dict(message)
    elif callable(dump := getattr(message, "model_dump", None)):
        plain = cast(dict[str, Any], dump(exclude_none=True))
    else:
        raise InvalidInput(
            "messages", type(message).__name__, "chat messages as dicts or SDK message objects"
        )
    content = plain.get("content")
    if isinstance(content, list):  # content blocks may be SDK objects too (an earlier response's content)
        plain["content"] = [part if isinstance(part, Mapping) else message_dict(part) for part in content]
    return plain


@dataclass(frozen=True)
class CallSettings:
    """How a wrapped client meters its calls: the ledger, who calls, the attribution, the priority."""

    ledger: Ledger | SyncLedger
    principal: Principal | None = None
    priority: Priority = "medium"
    allow_partial: bool = False
    ttl_seconds: float = 600
    attribution: dict[str, str] = field(default_factory=dict)
    fallback: tuple[str, ...] = ()  # cheaper models a call may run on instead (see integrations.fallback)
    fallback_at: Decimal | None = None

    def with_fallback(self, fallback: Sequence[str], fallback_at: float | Decimal | None) -> CallSettings:
        """A copy that falls back to these models (checked now, so a wrong list fails at wrap time)."""
        models, share = validate_fallback("", fallback, fallback_at)
        return replace(self, fallback=models, fallback_at=share)

    def with_attribution(self, **attribution: str | None) -> CallSettings:
        unknown = set(attribution) - set(ATTRIBUTION_FIELDS)
        if unknown:
            raise InvalidInput("attribution", sorted(unknown), f"one of {', '.join(ATTRIBUTION_FIELDS)}")
        merged = {**self.attribution, **{k: v for k, v in attribution.items() if v is not None}}
        return replace(self, attribution=merged)

    def request(
        self, *, model: str, max_output_tokens: int, provider: str, messages: list[dict[str, Any]]
    ) -> tuple[CheckRequest, GuardSpec]:
        """The check of one call and its spec (a call to a fallback model falls back to the others only)."""
        fallback = tuple(name for name in self.fallback if name != model)
        spec = make_spec(
            model=model,
            max_output_tokens=max_output_tokens,
            priority=self.priority,
            allow_partial=self.allow_partial,
            ttl_seconds=self.ttl_seconds,
            provider=provider,
            attribution=dict(self.attribution),
            fallback=fallback,
            fallback_at=self.fallback_at if fallback else None,
        )
        return check_request(spec, messages=messages), spec

    async def reserve(self, request: CheckRequest, spec: GuardSpec) -> Grant:
        """A grant for an async client's call (`BudgetExceeded` when denied)."""
        calls: LedgerCalls = async_calls(self.ledger)
        return await reserve(calls, request, self.principal, spec)

    def reserve_sync(self, request: CheckRequest, spec: GuardSpec) -> SyncGrant:
        """A grant for a sync client's call (`BudgetExceeded` when denied)."""
        sync_ledger = self.sync_ledger()
        grant = sync_ledger.portal.call(reserve, sync_ledger.ledger, request, self.principal, spec)
        return SyncGrant(grant, sync_ledger.portal)

    def sync_ledger(self) -> SyncLedger:
        if not isinstance(self.ledger, SyncLedger):
            raise TypeError(
                "a sync SDK client needs a SyncLedger (tokenledger.integrations.SyncLedger.open()); "
                "an async client takes a Ledger"
            )
        return self.ledger


class Proxy:
    """An object that answers as `target` does, except for the attributes given in `overrides`."""

    def __init__(self, target: object, overrides: Mapping[str, object]) -> None:
        self._target = target
        self._overrides = dict(overrides)

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__.get("_overrides", {})
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["_target"], name)

    def __repr__(self) -> str:
        return f"<metered {self._target!r}>"


# --- streams ---------------------------------------------------------------------------------------


class StreamTally:
    """What a stream has delivered so far: its text, and the usage the provider reported, if any."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.usage: Usage | None = None  # the final usage, when the provider sent it
        self.input_usage: Usage | None = None  # input usage reported at the start (Anthropic)
        self.events = 0

    @property
    def text(self) -> str:
        return "".join(self.parts)


# observe(event, tally) notes what an event carries and says whether to pass it on to the consumer.
Observer = Callable[[Any, StreamTally], bool]


async def settle_stream(grant: Grant, tally: StreamTally, status: UsageStatus) -> None:
    """Settle a stream: the provider's final usage when it came, else the text received so far.

    A stream cut short (the consumer stopped, the connection dropped) is charged its input (the
    provider's when it reported it at the start, else our count) plus the output text it delivered,
    counted for the model (`method` exact or estimate).
    """
    if grant.settled:
        return
    if tally.usage is not None:
        await grant.settle(tally.usage, status=status)
        return
    started = tally.input_usage
    await grant.record(
        input_tokens=started.input_tokens if started else grant.input_tokens,
        cache_read_input_tokens=started.cache_read_input_tokens if started else 0,
        cache_creation_input_tokens=started.cache_creation_input_tokens if started else 0,
        output_text=tally.text,
        status=status,
        metadata={"settled_by": "stream_text", "events": tally.events},
    )


class GuardedAsyncStream(Generic[E]):
    """An SDK's async stream that settles its grant when it ends, fails, or is closed early.

    Iterate it as the SDK's stream. An `async for` left early settles what was received when the stream
    is closed: `async with stream:` or `await stream.close()` do it at once (the SDKs ask for the same);
    without them it happens soon after, when the event loop finalizes the abandoned loop.
    """

    def __init__(self, stream: Any, grant: Grant, observe: Observer) -> None:
        self.stream = stream
        self.grant = grant
        self.tally = StreamTally()
        self._observe = observe
        self._events: AsyncIterator[E] = self._iterate()
        self._closed = False
        self._closing: anyio.Event | None = None

    def __aiter__(self) -> AsyncIterator[E]:
        return self._loop()

    async def _loop(self) -> AsyncIterator[E]:
        # A loop of its own: when the consumer leaves it, closing it ends the stream too.
        try:
            async for event in self._events:
                yield event
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def __anext__(self) -> E:
        return await self._events.__anext__()

    async def _iterate(self) -> AsyncIterator[E]:
        status: UsageStatus = "cancelled"
        try:
            async for event in self.stream:
                self.tally.events += 1
                await self.grant.keep_alive()  # a long stream keeps its reservation
                if self._observe(event, self.tally):
                    yield event
            status = "success"
        except Exception:
            status = "error"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(status)

    async def _finish(self, status: UsageStatus) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.stream, "close", None)
            if close is not None:
                await close()
        finally:
            await settle_stream(self.grant, self.tally, status)

    async def close(self) -> None:
        """Close the SDK stream and settle what it delivered (waits for a close already under way)."""
        if self._closing is not None:
            await self._closing.wait()
            return
        self._closing = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()  # type: ignore[attr-defined]
                await self._finish("cancelled")
        finally:
            self._closing.set()

    aclose = close

    async def __aenter__(self) -> GuardedAsyncStream[E]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class GuardedStream(Generic[E]):
    """An SDK's sync stream that settles its grant (through a `SyncGrant`) when it ends, fails or closes.

    A `for` loop left with `break` settles at once on CPython (the loop's generator is closed when
    dropped); `with stream:` or `stream.close()` make it explicit.
    """

    def __init__(self, stream: Any, grant: SyncGrant, observe: Observer) -> None:
        self.stream = stream
        self.grant = grant
        self.tally = StreamTally()
        self._observe = observe
        self._events: Iterator[E] = self._iterate()
        self._closed = False

    def __iter__(self) -> Iterator[E]:
        return self._loop()

    def _loop(self) -> Iterator[E]:
        # A loop of its own: dropped by a `for` left early, it is closed, which closes the stream.
        yield from self._events
        self.close()

    def __next__(self) -> E:
        return next(self._events)

    def _iterate(self) -> Iterator[E]:
        status: UsageStatus = "cancelled"
        try:
            for event in self.stream:
                self.tally.events += 1
                self.grant.keep_alive()  # a long stream keeps its reservation
                if self._observe(event, self.tally):
                    yield event
            status = "success"
        except Exception:
            status = "error"
            raise
        finally:
            self._finish(status)

    def _finish(self, status: UsageStatus) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
        finally:
            self.grant.run(settle_stream, self.grant.grant, self.tally, status)

    def close(self) -> None:
        """Close the SDK stream and settle what it delivered."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()
        self._finish("cancelled")

    def __enter__(self) -> GuardedStream[E]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
