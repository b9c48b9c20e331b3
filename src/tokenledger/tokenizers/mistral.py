"""Mistral models counted exactly with Mistral's own tokenizers, from `mistral-common` (Apache-2.0).

`pip install 'tokenledger[mistral]'` brings mistral-common, whose wheel ships the Tekken and
SentencePiece tokenizer files as package data. Each file is checked against the SHA-256 pinned here
before it is loaded (as the bundled tiktoken files are), so a count is either made with exactly the file
we tested or not made at all: without the package, or with a file that fails its check, Mistral models
are estimated as before and the count says why.

Which model uses which file is mistral-common's own table (`MODEL_NAME_TO_TOKENIZER_CLS`, 1.13), plus
the API names that only ever pointed at one of its models. Newer Mistral models (Mistral Large 3,
Medium 3, Small 3.x, Magistral, Devstral, Codestral 25.08, Ministral 3) load their tokenizer from the
Hugging Face Hub, not from the package: they stay estimates, since nothing offline can verify them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenledger.families import bare_name
from tokenledger.types import ModelInfo

# SHA-256 of each tokenizer file as mistral-common 1.13.1 ships it.
PINNED_FILES = {
    "tokenizer.model.v1": "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
    "mistral_instruct_tokenizer_240216.model.v2": (
        "37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89"
    ),
    "mistral_instruct_tokenizer_240323.model.v3": (
        "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33"
    ),
    "mistral_instruct_tokenizer_241114.model.v7": (
        "1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a"
    ),
    "mistral_instruct_tokenizer_241114.model.v7m1": (
        "1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a"
    ),
    "tekken_240718.json": "eccd1665d2e477697c33cb7f0daa6f6dfefc57a0a6bceb66d4be52952f827516",
    "tekken_240911.json": "1948e2d48b0e7377f1bb5f1210f1ae5f984934e75713fc07e2452729b8365316",
}

# mistral-common's MODEL_NAME_TO_TOKENIZER_CLS, each constructor replaced by the file it loads
# (tests/test_tokenizers.py checks this against the installed package's table).
MODEL_FILES = {
    "mistral-medium-2312": "tokenizer.model.v1",
    "mistral-tiny-2312": "mistral_instruct_tokenizer_240216.model.v2",
    "mistral-small-2312": "mistral_instruct_tokenizer_240216.model.v2",
    "mistral-small-2402": "mistral_instruct_tokenizer_240216.model.v2",
    "mistral-large-2402": "mistral_instruct_tokenizer_240216.model.v2",
    "mistral-tiny-2407": "mistral_instruct_tokenizer_240323.model.v3",
    "open-mixtral-8x22b-2404": "mistral_instruct_tokenizer_240323.model.v3",
    "mistral-large-2407": "mistral_instruct_tokenizer_240323.model.v3",
    "codestral-2405": "mistral_instruct_tokenizer_240323.model.v3",
    "codestral-mamba-2407": "mistral_instruct_tokenizer_240323.model.v3",
    "mistral-large-2411": "mistral_instruct_tokenizer_241114.model.v7",
    "pixtral-large-2411": "mistral_instruct_tokenizer_241114.model.v7m1",
    "ministral-8b-2410": "tekken_240718.json",
    "open-mistral-nemo-2407": "tekken_240718.json",
    "mistral-small-2409": "tekken_240718.json",
    "pixtral-12b-2409": "tekken_240911.json",
}
# API names that only ever pointed at one dated model of the table (Mistral's model list).
MODEL_ALIASES = {
    "open-mistral-nemo": "open-mistral-nemo-2407",
    "codestral-mamba-latest": "codestral-mamba-2407",
    "open-codestral-mamba": "codestral-mamba-2407",
    "pixtral-large-latest": "pixtral-large-2411",
    "pixtral-12b": "pixtral-12b-2409",
    "pixtral-12b-latest": "pixtral-12b-2409",
    "open-mixtral-8x22b": "open-mixtral-8x22b-2404",
}
INSTALL_HINT = "pip install 'tokenledger[mistral]'"


def model_file(model: ModelInfo) -> str | None:
    """The tokenizer file of a model (by its name or an alias), or None for a model we do not map."""
    for name in (model.name, *model.aliases):
        key = bare_name(name)  # a host's or router's name of the model: azure_ai/, bedrock's mistral.
        key = MODEL_ALIASES.get(key, key)
        if key in MODEL_FILES:
            return MODEL_FILES[key]
    return None


@dataclass(frozen=True)
class MistralTokenizer:
    """One of mistral-common's tokenizers, loaded from a verified file."""

    name: str
    instruct: Any  # mistral_common's MistralTokenizer
    encode_ordinary: Callable[[str], list[int]]  # text -> token ids, without BOS/EOS

    def count_text(self, text: str) -> int:
        return len(self.encode_ordinary(text))

    def count_chat(
        self, messages: list[dict[str, object]], tools: list[dict[str, object]] | None
    ) -> int | None:
        from mistral_common.exceptions import MistralCommonException
        from mistral_common.protocol.instruct.request import ChatCompletionRequest
        from pydantic import ValidationError

        try:
            request = ChatCompletionRequest.from_openai(messages, tools)  # type: ignore[arg-type]
            return len(self.instruct.encode_chat_completion(request).tokens)
        except (MistralCommonException, ValidationError, ValueError, AssertionError):
            return None


_loaded: dict[str, MistralTokenizer | str] = {}  # file -> tokenizer, or why it cannot be used
_lock = threading.Lock()


def tokenizer_for(model: ModelInfo) -> MistralTokenizer | None:
    """The verified tokenizer of a mapped model, or None (unmapped, not installed, or failed its check)."""
    file = model_file(model)
    if file is None:
        return None
    loaded = _loaded.get(file) or _load(file)
    return loaded if isinstance(loaded, MistralTokenizer) else None


def unavailable_reason(model: ModelInfo) -> str | None:
    """Why a mapped model is estimated here (package missing, file changed), or None."""
    file = model_file(model)
    if file is None:
        return None
    loaded = _loaded.get(file) or _load(file)
    return loaded if isinstance(loaded, str) else None


def _load(file: str) -> MistralTokenizer | str:
    with _lock:
        if file not in _loaded:
            _loaded[file] = _load_verified(file)
        return _loaded[file]


def _load_verified(file: str) -> MistralTokenizer | str:
    try:
        import mistral_common
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer as Loader
    except ImportError:
        return f"{file}: mistral-common is not installed ({INSTALL_HINT})"
    path = Path(mistral_common.__file__).parent / "data" / file
    try:
        contents = path.read_bytes()
    except OSError as error:
        return f"{file}: not in the installed mistral-common ({error.strerror}); {INSTALL_HINT}"
    if hashlib.sha256(contents).hexdigest() != PINNED_FILES[file]:
        return f"{file} in mistral-common {mistral_common.__version__} does not match its pinned SHA-256"
    try:
        instruct = Loader.from_file(str(path))
    except ImportError as error:  # the SentencePiece files need the sentencepiece package
        return f"{file}: {error} ({INSTALL_HINT})"
    raw = instruct.instruct_tokenizer.tokenizer
    # Tekken's own `encode` is its tiktoken model's `encode` with no special tokens, shifted past the
    # special ids: the same length as `encode_ordinary`, which skips building the shifted list.
    inner = getattr(raw, "_model", None)
    encode_ordinary = getattr(inner, "encode_ordinary", None)
    if file.startswith("tekken") and callable(encode_ordinary):
        return MistralTokenizer(file.removesuffix(".json"), instruct, encode_ordinary)
    return MistralTokenizer(file, instruct, lambda text: raw.encode(text, bos=False, eos=False))
