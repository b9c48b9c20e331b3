"""Exact tokenizers beyond OpenAI's: a model's own tokenizer, where one ships in a registry package
under an open licence, hash-verified before use. `exact_tokenizer(model)` is the one hook the counter
calls; it returns None for every model without one (the counter then estimates, as before).

What was checked, and why each family is or is not here, is in the README's counting table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tokenledger.types import ModelInfo


class ExactTokenizer(Protocol):
    """A model's own tokenizer: counts as the provider's tokenizer does."""

    @property
    def name(self) -> str:
        """What `TokenCount.encoding` says, e.g. "tekken_240718"."""
        ...

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of `text` alone, without begin/end-of-sequence tokens."""
        ...

    def count_text(self, text: str) -> int:
        """The tokens of `text` alone, without begin/end-of-sequence tokens."""
        ...

    def count_chat(
        self, messages: list[dict[str, object]], tools: list[dict[str, object]] | None
    ) -> int | None:
        """The prompt tokens of a text-only chat request as the model renders it, or None when the
        tokenizer's own rules refuse this conversation's shape."""
        ...


def exact_tokenizer(model: ModelInfo) -> ExactTokenizer | None:
    """The exact tokenizer of `model`, or None: not a model we map, or its package is not installed
    or failed its hash check (`unavailable_reason` says which)."""
    from tokenledger.tokenizers import mistral

    return mistral.tokenizer_for(model)


def unavailable_reason(model: ModelInfo) -> str | None:
    """Why a model that has an exact tokenizer is counted as an estimate here, or None."""
    from tokenledger.tokenizers import mistral

    return mistral.unavailable_reason(model)


def text_only_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, object]], list[str]]:
    """Chat messages with only their text content parts, and the parts left out (images, audio): an
    exact tokenizer counts text, and must never fetch an image's URL to count it."""
    converted: list[dict[str, object]] = []
    left_out: list[str] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            texts: list[dict[str, object]] = []
            for part_index, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "text":
                    texts.append({"type": "text", "text": part.get("text", "")})
                else:
                    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                    left_out.append(f"messages[{index}].content[{part_index}]: {kind}")
            message = {**message, "content": texts}
        converted.append(dict(message))
    return converted, left_out
