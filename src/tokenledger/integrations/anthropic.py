"""`wrap_anthropic`: an Anthropic SDK client whose `messages.create` is checked before and tracked after.

    client = wrap_anthropic(AsyncAnthropic(), ledger, user="ana")
    message = await client.messages.create(model="claude-sonnet-4-5", max_tokens=500, messages=...)

Before each call `system` and `messages` are counted (an estimate for Anthropic models) and
`max_tokens` is reserved; a denial raises `BudgetExceeded` and no request is sent; a partial grant
(`allow_partial=True`) lowers `max_tokens` to what was granted. After it the reported usage is
tracked one to one (input_tokens, cache_read_input_tokens, cache_creation_input_tokens,
output_tokens). Streams (`stream=True`) settle from `message_start`'s input usage and the last
`message_delta`'s output usage; a stream cut short is charged the input `message_start` reported
plus the text it delivered, counted for the model. `messages.stream()`, `messages.count_tokens`,
`with_raw_response` and the rest are the client's own, unmetered.
The SDK is an optional extra: `pip install tokenledger[anthropic]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar, cast

from tokenledger.integrations.guard import Grant, SyncGrant, SyncLedger, Usage, usage_from
from tokenledger.integrations.metered import (
    CallSettings,
    GuardedAsyncStream,
    GuardedStream,
    Proxy,
    StreamTally,
    message_dict,
)
from tokenledger.ledger import Ledger
from tokenledger.types import CheckRequest, Principal, Priority

__all__ = ["wrap_anthropic"]

C = TypeVar("C")
PROVIDER = "anthropic"


def wrap_anthropic(
    client: C,
    ledger: Ledger | SyncLedger,
    *,
    principal: Principal | None = None,
    priority: Priority = "medium",
    allow_partial: bool = False,
    ttl_seconds: float = 600,
    user: str | None = None,
    session: str | None = None,
    project: str | None = None,
    team: str | None = None,
    feature: str | None = None,
    endpoint: str | None = None,
    fallback: Sequence[str] = (),
    fallback_at: float | Decimal | None = None,
) -> C:
    """The client, metered: an `AsyncAnthropic` with a `Ledger` (or `SyncLedger`), an `Anthropic` with a
    `SyncLedger`. `.with_attribution(user=..., ...)` on the result gives a copy with other attribution."""
    settings = CallSettings(
        ledger=ledger,
        principal=principal,
        priority=priority,
        allow_partial=allow_partial,
        ttl_seconds=ttl_seconds,
    ).with_attribution(
        user=user, session=session, project=project, team=team, feature=feature, endpoint=endpoint
    )
    if fallback or fallback_at is not None:  # a call the budget cannot afford runs on a cheaper model
        settings = settings.with_fallback(fallback, fallback_at)
    return cast(C, _wrap(client, settings))


def _wrap(client: Any, settings: CallSettings) -> Proxy:
    import anthropic

    if isinstance(client, anthropic.AsyncAnthropic):
        create: Any = _async_create(client.messages.create, settings)
    elif isinstance(client, anthropic.Anthropic):
        settings.sync_ledger()  # fail at wrap time, not at the first call
        create = _sync_create(client.messages.create, settings)
    else:
        raise TypeError(
            "wrap_anthropic takes an anthropic.Anthropic or anthropic.AsyncAnthropic client, "
            f"not {type(client)}"
        )
    messages = Proxy(client.messages, {"create": create})

    def with_attribution(**attribution: str | None) -> Proxy:
        return _wrap(client, settings.with_attribution(**attribution))

    return Proxy(client, {"messages": messages, "with_attribution": with_attribution})


def _prepare(kwargs: dict[str, Any], settings: CallSettings) -> tuple[CheckRequest, Any]:
    model, max_tokens = kwargs.get("model"), kwargs.get("max_tokens")
    if not isinstance(model, str) or not isinstance(max_tokens, int):
        raise TypeError("messages.create needs model= (a string) and max_tokens= (an int)")
    messages = [message_dict(m) for m in kwargs.get("messages") or ()]
    system = kwargs.get("system")
    if isinstance(system, str) and system:
        messages.insert(0, {"role": "system", "content": system})
    elif isinstance(system, list) and system:
        messages.insert(0, {"role": "system", "content": [message_dict(block) for block in system]})
    return settings.request(model=model, max_output_tokens=max_tokens, provider=PROVIDER, messages=messages)


def _apply(kwargs: dict[str, Any], granted: int, requested: int) -> dict[str, Any]:
    call = dict(kwargs)
    if granted < requested:
        call["max_tokens"] = max(granted, 1)
    return call


def _observe(event: Any, tally: StreamTally) -> bool:
    kind = getattr(event, "type", None)
    if kind == "message_start":
        started = usage_from(getattr(getattr(event, "message", None), "usage", None) or {"input_tokens": 0})
        tally.input_usage = replace(started, output_tokens=0, reasoning_output_tokens=0)
    elif kind == "content_block_delta":
        delta = getattr(event, "delta", None)
        for name in ("text", "partial_json", "thinking"):
            value = getattr(delta, name, None)
            if isinstance(value, str):
                tally.parts.append(value)
    elif kind == "message_delta":
        tally.usage = _final_usage(tally.input_usage, getattr(event, "usage", None))
    return True


def _final_usage(started: Usage | None, delta: Any) -> Usage:
    """message_delta's usage is cumulative; its input fields, when present, replace message_start's."""
    base = started or Usage(input_tokens=0, output_tokens=0)

    def latest(name: str, before: int) -> int:
        value = getattr(delta, name, None)
        return value if isinstance(value, int) else before

    output = latest("output_tokens", 0)
    details = getattr(delta, "output_tokens_details", None)
    thinking = getattr(details, "thinking_tokens", None)
    return Usage(
        input_tokens=latest("input_tokens", base.input_tokens),
        output_tokens=output,
        cache_read_input_tokens=latest("cache_read_input_tokens", base.cache_read_input_tokens),
        cache_creation_input_tokens=latest("cache_creation_input_tokens", base.cache_creation_input_tokens),
        reasoning_output_tokens=min(thinking, output) if isinstance(thinking, int) else 0,
    )


def _response_text(response: Any) -> str:
    return "".join(
        text
        for block in getattr(response, "content", None) or ()
        if isinstance(text := getattr(block, "text", None), str)
    )


async def _settle(grant: Grant, response: Any) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None:
        await grant.settle(usage)
    else:
        await grant.record(output_text=_response_text(response), metadata={"settled_by": "response_text"})


def _async_create(original: Any, settings: CallSettings) -> Any:
    async def create(**kwargs: Any) -> Any:
        request, spec = _prepare(kwargs, settings)
        grant = await settings.reserve(request, spec)
        call = _apply(kwargs, grant.max_output_tokens, request.max_output_tokens)
        call["model"] = grant.model  # a fallback model, where the budget allowed only that
        try:
            response = await original(**call)
        except BaseException:
            await grant.release()
            raise
        if call.get("stream") is True:
            return GuardedAsyncStream[Any](response, grant, _observe)
        await _settle(grant, response)
        return response

    return create


def _sync_create(original: Any, settings: CallSettings) -> Any:
    def create(**kwargs: Any) -> Any:
        request, spec = _prepare(kwargs, settings)
        grant: SyncGrant = settings.reserve_sync(request, spec)
        call = _apply(kwargs, grant.max_output_tokens, request.max_output_tokens)
        call["model"] = grant.model  # a fallback model, where the budget allowed only that
        try:
            response = original(**call)
        except BaseException:
            grant.release()
            raise
        if call.get("stream") is True:
            return GuardedStream[Any](response, grant, _observe)
        grant.run(_settle, grant.grant, response)
        return response

    return create
