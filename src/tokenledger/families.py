"""Which counting rule a model follows: exact with a tiktoken encoding, or an estimate from one.

The rule follows the model's family (who made it), not who serves it: `azure/gpt-4o` counts exactly
with o200k_base like `gpt-4o`, and Claude on Bedrock or Vertex AI is a Claude estimate.
"""

from __future__ import annotations

import re
from typing import Any

# The makers whose own API the catalog lists; any other provider is a host (it serves their models).
FIRST_PARTY = ("openai", "anthropic", "google", "mistral", "cohere", "deepseek", "xai", "meta")

# tiktoken's own model-name table (tiktoken/model.py): these OpenAI names are counted exactly.
_OPENAI_EXACT = [
    (re.compile(r"^(ft:)?(o1|o3|o4-mini|gpt-5|gpt-4\.5|gpt-4\.1|chatgpt-4o|gpt-4o)($|[-.])"), "o200k_base"),
    (re.compile(r"^(ft:)?(gpt-4|gpt-3\.5-turbo|gpt-35-turbo)($|-)"), "cl100k_base"),
]

# A model's family from its bare name (host, region and vendor prefixes removed), first match wins.
_FAMILY_PATTERNS = [
    (re.compile(r"claude"), "anthropic"),
    (re.compile(r"gemini|gemma|learnlm|bison|gecko"), "google"),
    (re.compile(r"mistral|mixtral|codestral|ministral|magistral|devstral|pixtral|voxtral"), "mistral"),
    (re.compile(r"llama-?2|llama-v2|code-?llama"), "other"),  # Llama 2's 32k SentencePiece vocabulary
    (re.compile(r"llama"), "meta"),
    (re.compile(r"^(command|c4ai|aya)"), "cohere"),
    (re.compile(r"deepseek"), "deepseek"),
    (re.compile(r"grok"), "xai"),
    (re.compile(r"^(ft:)?(gpt|o\d|chatgpt|text-davinci|davinci|babbage|codex|computer-use)"), "openai"),
]
# Prefixes that name where a model runs rather than what it is: Bedrock geographies and vendors.
_GEOGRAPHY = re.compile(r"^(us|eu|apac|global|au|jp|ca|us-gov)\.")
_VENDOR = re.compile(
    r"^(anthropic|meta|mistral|amazon|cohere|ai21|openai|deepseek|qwen|xai|google|minimax|moonshot"
    r"|moonshotai|nvidia|writer|zai)\."
)

# Estimates for families that publish no tiktoken-compatible encoding: the o200k_base count times a
# factor chosen to err high, so budgets reserve too much rather than too little.
_TAIL = " Non-English text and code can differ more; the ledger calibrates from provider-reported usage."
RULES: dict[str, tuple[float, str]] = {
    "openai-unlisted": (
        1.0,
        "Estimate: o200k_base count. OpenAI has not published this model's encoding in tiktoken; "
        "o200k_base is the encoding of every OpenAI chat model since gpt-4o.",
    ),
    "anthropic": (
        1.25,
        "Estimate: o200k_base count x 1.25, rounded up. Anthropic publishes no tokenizer; Claude 3 "
        "through 4.6 produce roughly 10-25% more tokens than o200k_base for English prose, so 1.25 "
        "errs high." + _TAIL,
    ),
    "anthropic-4.7": (
        1.70,
        "Estimate: o200k_base count x 1.70, rounded up. Claude Opus 4.7 and later use a new tokenizer "
        "that Anthropic says yields 1.0-1.35x the tokens of earlier Claude models (themselves up to "
        "1.25x o200k_base); 1.25 x 1.35 = 1.69." + _TAIL,
    ),
    "google": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Gemini's 256k SentencePiece vocabulary splits "
        "English about as finely as o200k_base; the 10% margin errs high." + _TAIL,
    ),
    "mistral": (
        1.15,
        "Estimate: o200k_base count x 1.15, rounded up. Mistral's Tekken tokenizer (131k vocabulary) "
        "splits English slightly finer than o200k_base, and its older 32k SentencePiece models finer "
        "still; 1.15 errs high." + _TAIL,
    ),
    "cohere": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Cohere's tokenizer is not tiktoken-compatible; "
        "its large multilingual BPE vocabulary splits English close to o200k_base." + _TAIL,
    ),
    "deepseek": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. DeepSeek V3/R1 use a 128k byte-level BPE "
        "vocabulary; DeepSeek documents about 0.3 tokens per English character, close to "
        "o200k_base." + _TAIL,
    ),
    "xai": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. xAI publishes no tokenizer; Grok's usage for "
        "English text sits close to o200k_base counts, and the 10% margin errs high." + _TAIL,
    ),
    "meta": (
        1.10,
        "Estimate: o200k_base count x 1.10, rounded up. Llama 3 and 4 use a 128k tiktoken-style "
        "vocabulary built on cl100k_base, about 5% more tokens than o200k_base for English." + _TAIL,
    ),
    "other": (
        1.30,
        "Estimate: o200k_base count x 1.30, rounded up. tokenledger does not know this model's "
        "tokenizer; 32k-vocabulary SentencePiece models (Llama 2, Mistral 7B, Phi-3) produce up to "
        "about 30% more tokens than o200k_base for English, so 1.30 errs high." + _TAIL,
    ),
}
# Claude generations with the Opus 4.7 tokenizer: version 4.7 and up, and unversioned previews.
_CLAUDE_VERSION = re.compile(r"claude-[a-z]+-v?(\d+)(?:[-.](\d{1,2}))?(?:[-.@:]|$)")  # claude-sonnet-4-5
_CLAUDE_OLD_STYLE = re.compile(r"claude-v?(\d+)(?:[-.](\d{1,2}))?(?:-[a-z]|[:@]|$)")  # claude-3-5-sonnet


def bare_name(name: str) -> str:
    """Return the model part of a routed or hosted name, lower-cased: `bedrock/us.anthropic.claude-x`
    gives `claude-x`, `together_ai/meta-llama/Llama-3-8b` gives `llama-3-8b`."""
    bare = name.strip().lower().rsplit("/", 1)[-1]
    bare = _GEOGRAPHY.sub("", bare)
    return _VENDOR.sub("", bare)


def family_of(name: str, provider: str) -> str:
    """Return whose tokenizer counts `name`: a first-party provider, a family its name shows, or `other`."""
    bare = bare_name(name)
    for pattern, family in _FAMILY_PATTERNS:
        if pattern.search(bare):
            return family
    return provider if provider in FIRST_PARTY else "other"


def counting(name: str, family: str) -> dict[str, Any]:
    """Return ModelInfo's counting fields (encoding, count_method, estimate_factor, estimate_rule)."""
    bare = bare_name(name)
    if family == "openai":
        for pattern, encoding in _OPENAI_EXACT:
            if pattern.match(bare):
                return {"encoding": encoding, "count_method": "exact"}
        rule = "openai-unlisted"
    elif family == "anthropic":
        rule = "anthropic" if _claude_before_4_7(bare) else "anthropic-4.7"
    else:
        rule = family if family in RULES else "other"
    factor, text = RULES[rule]
    return {
        "encoding": "o200k_base",
        "count_method": "estimate",
        "estimate_factor": factor,
        "estimate_rule": text,
    }


def _claude_before_4_7(bare: str) -> bool:
    """Return whether a Claude name is a generation before Opus 4.7's tokenizer (claude-3-5-haiku,
    claude-sonnet-4-5, claude-2); unversioned names and previews count as the newest."""
    old_style = _CLAUDE_OLD_STYLE.search(bare)
    match = old_style or _CLAUDE_VERSION.search(bare)
    if match is None:
        return False
    return (int(match[1]), int(match[2] or 0)) < (4, 7)
