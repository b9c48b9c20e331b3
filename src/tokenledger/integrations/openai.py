"""`wrap_openai`: an OpenAI SDK client whose chat completions are checked before and tracked after.

    client = wrap_openai(AsyncOpenAI(), ledger, user="ana", feature="chat")
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=..., max_tokens=300)

Before each `chat.completions.create` the messages are counted and `max_completion_tokens` /
`max_tokens` (else the model's catalog maximum, else 4096) times `n` is reserved; a denial raises
`BudgetExceeded` and no request is sent. A partial grant (`allow_partial=True`) lowers the request's
max tokens to what was granted. After the call the usage the response reports is tracked:
input = prompt_tokens - cached_tokens, cache reads = cached_tokens, output = completion_tokens
(reasoning_tokens as their reasoning part). Streams ask for `stream_options.include_usage` and settle
from the final usage chunk (hidden from the consumer unless it asked for it itself); a stream cut
short is charged the counted input plus the output text it delivered. Every other attribute of the
client (`responses`, `embeddings`, `with_raw_response`, ...) is the client's own, unmetered.
The SDK is an optional extra: `pip install tokenledger[openai]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeVar, cast

from tokenledger.errors import UnknownModel
from tokenledger.integrations.guard import Grant, SyncGrant, SyncLedger, usage_from
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

__all__ = ["wrap_openai"]

C = TypeVar("C")
PROVIDER = "openai"
FALLBACK_MAX_OUTPUT_TOKENS = 4096


def wrap_openai(
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
    """The client, metered: an `AsyncOpenAI` with a `Ledger` (or `SyncLedger`), an `OpenAI` with a
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
    import openai

    if isinstance(client, openai.AsyncOpenAI):
        create: Any = _async_create(client.chat.completions.create, settings)
    elif isinstance(client, openai.OpenAI):
        settings.sync_ledger()  # fail at wrap time, not at the first call
        create = _sync_create(client.chat.completions.create, settings)
    else:
        raise TypeError(
            f"wrap_openai takes an openai.OpenAI or openai.AsyncOpenAI client, not {type(client)}"
        )
    completions = Proxy(client.chat.completions, {"create": create})
    chat = Proxy(client.chat, {"completions": completions})

    def with_attribution(**attribution: str | None) -> Proxy:
        return _wrap(client, settings.with_attribution(**attribution))

    return Proxy(client, {"chat": chat, "with_attribution": with_attribution})


def _max_output(kwargs: dict[str, Any], settings: CallSettings, model: str) -> int:
    asked = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
    if not isinstance(asked, int):
        asked = FALLBACK_MAX_OUTPUT_TOKENS
        ledger = settings.ledger.ledger if isinstance(settings.ledger, SyncLedger) else settings.ledger
        with contextlib.suppress(UnknownModel):  # the check itself reports an unknown model
            asked = ledger.catalog.resolve(model).max_output_tokens or asked
    choices = kwargs.get("n")
    return asked * (choices if isinstance(choices, int) and choices > 0 else 1)


def _prepare(kwargs: dict[str, Any], settings: CallSettings) -> tuple[CheckRequest, Any, bool]:
    """The check of a `create` call, its spec, and whether the caller asked for usage chunks itself."""
    model = kwargs.get("model")
    if not isinstance(model, str):
        raise TypeError("chat.completions.create needs model= as a string")
    messages = [message_dict(m) for m in kwargs.get("messages") or ()]
    request, spec = settings.request(
        model=model,
        max_output_tokens=_max_output(kwargs, settings, model),
        provider=PROVIDER,
        messages=messages,
    )
    options = kwargs.get("stream_options")
    asked_usage = isinstance(options, dict) and options.get("include_usage") is True
    return request, spec, asked_usage


def _apply(kwargs: dict[str, Any], granted: int, requested: int) -> dict[str, Any]:
    """The call's arguments: max tokens lowered to a partial grant, usage asked for on streams."""
    call = dict(kwargs)
    if granted < requested:
        choices = call.get("n")
        per_choice = max(granted // (choices if isinstance(choices, int) and choices > 0 else 1), 1)
        key = (
            "max_tokens"
            if "max_tokens" in call and "max_completion_tokens" not in call
            else "max_completion_tokens"
        )
        call[key] = per_choice
    if call.get("stream") is True:
        options = dict(call.get("stream_options") or {})
        options["include_usage"] = True
        call["stream_options"] = options
    return call


def _observer(asked_usage: bool) -> Any:
    def observe(chunk: Any, tally: StreamTally) -> bool:
        choices = getattr(chunk, "choices", None) or []
        for choice in choices:
            delta = getattr(choice, "delta", None)
            content = getattr(delta, "content", None)
            if isinstance(content, str):
                tally.parts.append(content)
            for call in getattr(delta, "tool_calls", None) or ():
                arguments = getattr(getattr(call, "function", None), "arguments", None)
                if isinstance(arguments, str):
                    tally.parts.append(arguments)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            tally.usage = usage_from(usage)
            # The usage chunk has no choices: code written without it in mind reads choices[0].
            return asked_usage or bool(choices)
        return True

    return observe


def _response_text(response: Any) -> str:
    parts = []
    for choice in getattr(response, "choices", None) or ():
        content = getattr(getattr(choice, "message", None), "content", None)
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


async def _settle(grant: Grant, response: Any) -> None:
    usage = getattr(response, "usage", None)
    if usage is not None:
        await grant.settle(usage)
    else:
        await grant.record(output_text=_response_text(response), metadata={"settled_by": "response_text"})


def _async_create(original: Any, settings: CallSettings) -> Any:
    async def create(**kwargs: Any) -> Any:
        request, spec, asked_usage = _prepare(kwargs, settings)
        grant = await settings.reserve(request, spec)
        call = _apply(kwargs, grant.max_output_tokens, request.max_output_tokens)
        call["model"] = grant.model  # a fallback model, where the budget allowed only that
        try:
            response = await original(**call)
        except BaseException:
            await grant.release()
            raise
        if call.get("stream") is True:
            return GuardedAsyncStream[Any](response, grant, _observer(asked_usage))
        await _settle(grant, response)
        return response

    return create


def _sync_create(original: Any, settings: CallSettings) -> Any:
    def create(**kwargs: Any) -> Any:
        request, spec, asked_usage = _prepare(kwargs, settings)
        grant: SyncGrant = settings.reserve_sync(request, spec)
        call = _apply(kwargs, grant.max_output_tokens, request.max_output_tokens)
        call["model"] = grant.model  # a fallback model, where the budget allowed only that
        try:
            response = original(**call)
        except BaseException:
            grant.release()
            raise
        if call.get("stream") is True:
            return GuardedStream[Any](response, grant, _observer(asked_usage))
        grant.run(_settle, grant.grant, response)
        return response

    return create
