"""The provider's own count of a request, from its token-counting API, through the official SDKs:
Anthropic's `POST /v1/messages/count_tokens` (the `anthropic` SDK) and Gemini's
`models/{model}:countTokens` (the `google-genai` SDK).

This is for models whose tokenizer cannot be had (Claude, Gemini), when the user configured the
provider's key and the tenant or the call opted in. Answers are cached by a hash of the tenant, model and
request content (a bounded LRU), and every call is bounded by the configured timeout (retries off):
on a timeout or an error `count` raises ProviderCountFailed with a reason that names the kind of failure
and never the key, and the ledger falls back to the calibrated estimate.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from tokenledger.errors import TokenLedgerError
from tokenledger.secrets import SecretError, resolve_secret
from tokenledger.settings import ProviderCounting
from tokenledger.types import ChatMessage, ModelInfo

log = logging.getLogger("tokenledger.provider_count")

ANTHROPIC = "anthropic"
GEMINI = "gemini"
ENCODING_NAMES = {ANTHROPIC: "anthropic:count_tokens", GEMINI: "gemini:countTokens"}
# Anthropic documents its count as an estimate that "may differ by a small amount" from the billed input.
PROVIDER_ERROR_BAND = 0.01


class ProviderCountFailed(TokenLedgerError):
    """The provider gave no count (timeout, error, no key, a request it cannot count): say why, fall back."""


@dataclass
class ProviderCountStats:
    calls: int = 0  # requests sent to a provider
    cache_hits: int = 0
    timeouts: int = 0
    errors: int = 0


class ProviderCounter:
    """Asks Anthropic or Gemini for a request's input tokens; one per ledger, used from its event loop."""

    def __init__(self, config: ProviderCounting, *, max_entries: int = 4096) -> None:
        self.config = config
        self.max_entries = max_entries
        self.stats = ProviderCountStats()
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._clients: dict[str, Any] = {}
        # The SDKs load now, not inside a count's time bound (importing one takes about a second).
        for configured, module in (
            (config.anthropic_api_key, "anthropic"),
            (config.gemini_api_key, "google.genai"),
        ):
            if configured:
                with contextlib.suppress(ImportError):  # said when a count is asked for
                    importlib.import_module(module)

    def provider_for(self, model: ModelInfo) -> str | None:
        """The API that can count this model's requests with a configured key, or None."""
        if model.provider == "anthropic" and self.config.anthropic_api_key:
            return ANTHROPIC
        if model.provider == "google" and model.name.startswith("gemini") and self.config.gemini_api_key:
            return GEMINI
        return None

    async def count(
        self,
        *,
        tenant: str,
        model: ModelInfo,
        text: str | None = None,
        messages: Sequence[ChatMessage | Mapping[str, Any]] | None = None,
    ) -> int:
        """The provider's input-token count of a text (one user turn) or text-only chat messages."""
        provider = self.provider_for(model)
        if provider is None:
            raise ProviderCountFailed(f"no {model.provider} key is configured for provider counting")
        turns = _turns(text, messages)
        key = _cache_key(tenant, provider, model.name, turns)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return cached
        timeout = self.config.timeout_seconds
        try:
            with anyio.fail_after(timeout):
                client = await self._client(provider)
                self.stats.calls += 1
                if provider == ANTHROPIC:
                    tokens = await _anthropic_count(client, model.name, turns)
                else:
                    tokens = await _gemini_count(client, model.name, turns)
        except TimeoutError:
            self.stats.timeouts += 1
            raise ProviderCountFailed(f"{provider} did not answer within {timeout:g} s") from None
        except ProviderCountFailed:
            self.stats.errors += 1
            raise
        except Exception as error:  # the SDKs' errors: reduced to kind and status, never the key
            self.stats.errors += 1
            reason = _describe(error)
            log.warning("provider count failed: %s %s", provider, reason)
            raise ProviderCountFailed(f"{provider} count failed: {reason}") from None
        self._cache[key] = tokens
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return tokens

    async def _client(self, provider: str) -> Any:
        client = self._clients.get(provider)
        if client is None:
            client = self._clients[provider] = await self._new_client(provider)
        return client

    async def _new_client(self, provider: str) -> Any:
        config = self.config
        reference = config.anthropic_api_key if provider == ANTHROPIC else config.gemini_api_key
        assert reference is not None
        try:
            key = await anyio.to_thread.run_sync(
                lambda: resolve_secret(reference, config=config.vault), abandon_on_cancel=True
            )
        except SecretError as error:  # its message names the reference and why, never a value
            raise ProviderCountFailed(f"{provider} key: {error}") from None
        if provider == ANTHROPIC:
            try:
                from anthropic import AsyncAnthropic
            except ImportError:
                raise ProviderCountFailed("install tokenledger[anthropic] to count with Anthropic") from None
            return AsyncAnthropic(
                api_key=key, base_url=config.anthropic_base_url, timeout=config.timeout_seconds, max_retries=0
            )
        try:
            from google import genai
            from google.genai import types
        except ImportError:
            raise ProviderCountFailed("install tokenledger[gemini] to count with Gemini") from None
        options = types.HttpOptions(
            base_url=config.gemini_base_url,
            timeout=int(config.timeout_seconds * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        return genai.Client(api_key=key, http_options=options).aio

    async def aclose(self) -> None:
        for provider, client in self._clients.items():
            close = (
                getattr(client, "close", None) if provider == ANTHROPIC else getattr(client, "aclose", None)
            )
            if close is not None:
                await close()
        self._clients.clear()


# --- requests in each API's shape ----------------------------------------------------------------


@dataclass(frozen=True)
class _Turns:
    system: list[str]
    turns: list[tuple[str, str]]  # (user | assistant, text)


def _turns(text: str | None, messages: Sequence[ChatMessage | Mapping[str, Any]] | None) -> _Turns:
    """The request as system texts and user/assistant text turns; anything else cannot be counted here."""
    if text is not None:
        return _Turns([], [("user", text)])
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages or ()):
        fields = message.model_dump(exclude_none=True) if isinstance(message, ChatMessage) else dict(message)
        role, content = fields.get("role"), fields.get("content")
        if role not in ("system", "developer", "user", "assistant") or set(fields) - {
            "role",
            "content",
            "name",
        }:
            raise ProviderCountFailed(f"messages[{index}]: provider counting covers text turns only")
        if isinstance(content, list):
            if any(not isinstance(p, Mapping) or p.get("type") != "text" for p in content):
                raise ProviderCountFailed(f"messages[{index}]: provider counting covers text content only")
            content = "".join(str(part.get("text", "")) for part in content)
        if not isinstance(content, str):
            raise ProviderCountFailed(f"messages[{index}]: provider counting covers text content only")
        if role in ("system", "developer"):
            system.append(content)
        else:
            turns.append((str(role), content))
    if not turns:
        raise ProviderCountFailed("provider counting needs a user or assistant turn")
    return _Turns(system, turns)


def _cache_key(tenant: str, provider: str, model: str, turns: _Turns) -> str:
    content = json.dumps([tenant, provider, model, turns.system, turns.turns], separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


async def _anthropic_count(client: Any, model: str, turns: _Turns) -> int:
    extra: dict[str, Any] = {}
    if turns.system:
        extra["system"] = [{"type": "text", "text": text} for text in turns.system]
    messages = [{"role": role, "content": text} for role, text in turns.turns]
    answer = await client.messages.count_tokens(model=model, messages=messages, **extra)
    return int(answer.input_tokens)


async def _gemini_count(client: Any, model: str, turns: _Turns) -> int:
    # The Gemini API's countTokens takes no system instruction through the SDK: system text is counted as
    # the conversation's first user turn (the same text, a few framing tokens apart).
    contents = [{"role": "user", "parts": [{"text": text}]} for text in turns.system]
    contents += [
        {"role": "model" if role == "assistant" else "user", "parts": [{"text": text}]}
        for role, text in turns.turns
    ]
    answer = await client.models.count_tokens(model=model, contents=contents)
    if answer.total_tokens is None:
        raise ProviderCountFailed("gemini answered without total_tokens")
    return int(answer.total_tokens)


def _describe(error: BaseException) -> str:
    """An SDK error as its class and HTTP status only: bodies and messages may echo request headers."""
    status = getattr(error, "status_code", None) or getattr(error, "code", None)
    return type(error).__name__ + (f" (HTTP {status})" if isinstance(status, int) else "")
