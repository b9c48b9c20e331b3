"""Configuration, read once from the environment into a settings object that is passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tokenledger.errors import InvalidInput
from tokenledger.secrets import VaultConfig

DEFAULT_HOME = Path("~/.local/share/tokenledger")
# The longest a count waits for a provider's token-counting API (TOKENLEDGER_PROVIDER_COUNT_TIMEOUT).
PROVIDER_COUNT_TIMEOUT = (0.05, 30.0)
MAX_PUBLIC_URL_LENGTH = 2000  # an address every mail client and Slack keep whole


@dataclass(frozen=True)
class ProviderCounting:
    """Keys (plain, or `vault:` references) for the providers' token-counting APIs, from the variables
    their SDKs read: ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL, GEMINI_API_KEY (or GOOGLE_API_KEY) /
    GOOGLE_GEMINI_BASE_URL. Keys never appear in a repr."""

    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    gemini_api_key: str | None = field(default=None, repr=False)
    gemini_base_url: str | None = None
    timeout_seconds: float = 2.0
    vault: VaultConfig = field(default_factory=VaultConfig)

    @classmethod
    def from_env(cls, env: dict[str, str], vault: VaultConfig) -> ProviderCounting:
        text = env.get("TOKENLEDGER_PROVIDER_COUNT_TIMEOUT", "2")
        low, high = PROVIDER_COUNT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not low <= timeout <= high:
            raise ValueError(f"TOKENLEDGER_PROVIDER_COUNT_TIMEOUT={text!r}: seconds, {low:g} to {high:g}")
        return cls(
            anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
            anthropic_base_url=env.get("ANTHROPIC_BASE_URL") or None,
            gemini_api_key=env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or None,
            gemini_base_url=env.get("GOOGLE_GEMINI_BASE_URL") or None,
            timeout_seconds=timeout,
            vault=vault,
        )


@dataclass(frozen=True)
class ReportLimits:
    """How reports share PostgreSQL with checks and settles: they run on their own `concurrency`
    connections (never the ledger pool's), each query is stopped after `timeout_seconds`, and a report
    that finds every report connection taken for `wait_seconds` is refused as busy."""

    concurrency: int = 2
    timeout_seconds: float = 30.0
    wait_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> ReportLimits:
        return cls(
            concurrency=int(
                _number(env, "TOKENLEDGER_REPORT_CONCURRENCY", cls.concurrency, 1, 64, whole=True)
            ),
            timeout_seconds=_number(env, "TOKENLEDGER_REPORT_TIMEOUT", cls.timeout_seconds, 0.1, 3600),
            wait_seconds=_number(env, "TOKENLEDGER_REPORT_WAIT", cls.wait_seconds, 0, 600),
        )


def _number(
    env: dict[str, str], name: str, default: float, low: float, high: float, *, whole: bool = False
) -> float:
    """A number from the environment within [low, high] (whole if `whole`); the default when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high or (whole and not value.is_integer()):  # NaN fails too
        raise InvalidInput(name, raw, f"a {'whole ' if whole else ''}number from {low:g} to {high:g}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None  # None: the embedded PostgreSQL under `home`
    pool_min_size: int = 1
    pool_max_size: int = 10
    stdio_tenant: str = "default"
    stdio_role: str = "admin"
    stdio_user: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    vault: VaultConfig = field(default_factory=VaultConfig)  # how `vault:` references are read
    reports: ReportLimits = field(default_factory=ReportLimits)
    provider_counting: ProviderCounting = field(default_factory=ProviderCounting)
    public_url: str | None = None  # where people reach this server (alerts link its dashboard); no link: None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("TOKENLEDGER_HOME") or DEFAULT_HOME).expanduser()
        vault = VaultConfig.from_env(env)
        return cls(
            home=home,
            database_url=env.get("TOKENLEDGER_DATABASE_URL") or None,
            pool_min_size=int(env.get("TOKENLEDGER_POOL_MIN", "1")),
            pool_max_size=int(env.get("TOKENLEDGER_POOL_MAX", "10")),
            stdio_tenant=env.get("TOKENLEDGER_TENANT", "default"),
            stdio_role=env.get("TOKENLEDGER_ROLE", "admin"),
            stdio_user=env.get("TOKENLEDGER_USER") or None,
            vault=vault,
            reports=ReportLimits.from_env(env),
            provider_counting=ProviderCounting.from_env(env, vault),
            public_url=public_url(env.get("TOKENLEDGER_PUBLIC_URL", "")),
        )


def public_url(value: str) -> str | None:
    """TOKENLEDGER_PUBLIC_URL as a base for links (without a trailing slash), or None when unset. It goes
    into emails and Slack messages as it is, so it must be a plain http(s) address: a host, an optional port
    and path, and nothing that could carry a secret or break out of a link (credentials, a query or
    fragment, spaces, quotes, angle brackets)."""
    text = value.strip()
    if not text:
        return None
    try:
        parts = urlsplit(text)
        plain = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and parts.username is None
            and (parts.port is None or parts.port > 0)  # .port raises on a port that is no number
            and len(text) <= MAX_PUBLIC_URL_LENGTH
            and not any(c.isspace() or ord(c) < 32 or c in _NOT_IN_PUBLIC_URL for c in text)
        )
    except ValueError:
        plain = False
    if not plain:
        shown = "(hidden: it names credentials)" if "@" in text else text[:200]
        raise InvalidInput(
            "TOKENLEDGER_PUBLIC_URL",
            shown,
            "an http:// or https:// address with a host and an optional port and path (e.g. "
            f"https://ledger.example.com), at most {MAX_PUBLIC_URL_LENGTH} characters, without credentials, "
            "query or fragment",
        )
    return text.rstrip("/")


_NOT_IN_PUBLIC_URL = frozenset("?#@<>\"'`|\\^{}")
