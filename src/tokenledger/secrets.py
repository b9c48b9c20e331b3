"""Secrets in configuration: a plain value, or a `vault:` reference read from a Vault/OpenBao KV v2 engine.

`vault:secret/data/tokenledger#dsn` names the secret by its KV v2 HTTP API path (mount, `data`, path)
and, after `#`, the key in the secret's data. Reads use `VAULT_ADDR` with `VAULT_TOKEN`, or with
AppRole (`VAULT_ROLE_ID` and `VAULT_SECRET_ID`); `VAULT_NAMESPACE` and `VAULT_CACERT` are honoured.

A secret read is cached for its lease, or for `TOKENLEDGER_SECRET_TTL` seconds (default 300) when it
has none (KV v2 reads never do), then read again. The Vault token is renewed once half of its TTL has
passed; an AppRole login is repeated when the token cannot be renewed any more.

No secret value reaches a log line, an error or a repr: errors name the reference and the reason,
and values travel in `Secret`, which shows itself redacted.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio.to_thread

from tokenledger.errors import InvalidInput, TokenLedgerError

log = logging.getLogger("tokenledger.secrets")

PREFIX = "vault:"
REFERENCE_FORM = "vault:<mount>/data/<path>#<field>, e.g. vault:secret/data/tokenledger#dsn"
DEFAULT_CACHE_TTL = 300.0  # seconds a read without a lease (every KV v2 read) is trusted
DEFAULT_TIMEOUT = 10.0  # seconds for one HTTP request to Vault
REDACTED = "**********"
_DENIED = "permission denied: the token's policies do not allow reading it"

_SEGMENT = r"[A-Za-z0-9_.@=+\-]+"
_REFERENCE = re.compile(
    rf"(?P<mount>{_SEGMENT}(?:/{_SEGMENT})*?)/data/(?P<path>{_SEGMENT}(?:/{_SEGMENT})*)#(?P<field>[^#\s]+)"
)
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_ERROR_COUNT = re.compile(r"\d+ errors? occurred:")


class SecretError(TokenLedgerError):
    """A secret could not be resolved. The message names the reference and why, never a value."""

    def __init__(self, message: str, *, reference: str | None = None) -> None:
        self.reference = reference
        super().__init__(message)


class VaultUnreachable(SecretError):
    """Vault did not answer (refused, timed out, TLS failed): nothing can be read from it."""

    def __init__(self, message: str, *, reference: str | None = None, addr: str) -> None:
        self.addr = addr
        super().__init__(message, reference=reference)


class Secret:
    """A secret value that never shows itself: `repr` and `str` are redacted; `reveal()` gives it."""

    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str | None = None) -> None:
        self._value = value
        self.reference = reference  # where it came from (a `vault:` reference), or None for a plain value

    def reveal(self) -> str:
        """The value itself: hand it straight to the one call that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference or REDACTED})"

    def __str__(self) -> str:
        return REDACTED


@dataclass(frozen=True)
class VaultReference:
    """A parsed `vault:` reference: the KV v2 API path (after /v1/) and the field in its data."""

    path: str
    field: str

    @classmethod
    def parse(cls, text: str) -> VaultReference:
        """The reference in `text`, or InvalidReference naming the expected form."""
        match = _REFERENCE.fullmatch(text.removeprefix(PREFIX)) if text.startswith(PREFIX) else None
        if match is None or {".", ".."} & set(f"{match['mount']}/{match['path']}".split("/")):
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise InvalidReference(f"malformed secret reference {shown!r}: expected {REFERENCE_FORM}")
        return cls(path=f"{match['mount']}/data/{match['path']}", field=match["field"])

    def __str__(self) -> str:
        return f"{PREFIX}{self.path}#{self.field}"


class InvalidReference(SecretError, ValueError):
    """A `vault:` value that is not of the form vault:<mount>/data/<path>#<field>."""


def is_reference(value: str) -> bool:
    """Whether `value` is a `vault:` reference rather than a plain value."""
    return value.startswith(PREFIX)


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also catches NaN
        raise InvalidInput(name, raw, "a number of seconds, 0 or more")
    return seconds


@dataclass(frozen=True)
class VaultConfig:
    """Where Vault is and how to log in to it, read once from the environment."""

    addr: str | None = None
    token: Secret | None = None
    role_id: Secret | None = None
    secret_id: Secret | None = None
    namespace: str | None = None
    cacert: str | None = None
    approle_mount: str = "approle"
    cache_ttl: float = DEFAULT_CACHE_TTL
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VaultConfig:
        env = os.environ if environ is None else environ

        def secret(name: str) -> Secret | None:
            value = env.get(name)
            return Secret(value, f"${name}") if value else None

        return cls(
            addr=(env.get("VAULT_ADDR") or "").rstrip("/") or None,
            token=secret("VAULT_TOKEN"),
            role_id=secret("VAULT_ROLE_ID"),
            secret_id=secret("VAULT_SECRET_ID"),
            namespace=env.get("VAULT_NAMESPACE") or None,
            cacert=env.get("VAULT_CACERT") or None,
            approle_mount=env.get("TOKENLEDGER_VAULT_APPROLE_MOUNT") or "approle",
            cache_ttl=_seconds(env, "TOKENLEDGER_SECRET_TTL", DEFAULT_CACHE_TTL),
            timeout=_seconds(env, "TOKENLEDGER_VAULT_TIMEOUT", DEFAULT_TIMEOUT),
        )

    @property
    def uses_approle(self) -> bool:
        return self.role_id is not None and self.secret_id is not None


@dataclass
class VaultStats:
    """What a resolver asked of Vault: for `doctor` and for tests."""

    reads: int = 0  # secret reads sent to Vault (cache misses)
    logins: int = 0  # AppRole logins
    renewals: int = 0  # token renewals (renew-self)


@dataclass
class _CachedSecret:
    fields: dict[str, Secret | None]  # None: a value that is not a string
    expires_at: float


def _hvac() -> Any:
    """hvac, imported on the first `vault:` reference: it takes 150 ms, and most runs never need it."""
    import hvac
    import hvac.exceptions

    return hvac


def _reason(error: BaseException) -> str:
    """A short, value-free reason for a failed request, on one line."""
    if isinstance(error, _hvac().exceptions.VaultError):
        text = "; ".join(str(line) for line in (error.errors or []))
        text = _ERROR_COUNT.sub("", text)  # Vault's "1 error occurred:\n\t* ..." wrapper
        return " ".join(text.replace("* ", " ").split()) or type(error).__name__
    found = _ERRNO.search(str(error))
    if found:
        return found[1].strip().lower()
    if isinstance(error, TimeoutError) or "timed out" in str(error).lower():
        return "timed out"
    return type(error).__name__


class SecretResolver:
    """Resolves configuration values: plain values pass through, `vault:` references are read.

    One per process: it holds the Vault client, the token's lifetime and the cache of reads.
    Thread-safe; `aresolve` runs a read in a worker thread for async callers.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        config: VaultConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else VaultConfig.from_env(environ)
        self._clock = clock
        self._lock = threading.RLock()
        self._client: Any = None  # hvac.Client, created on the first `vault:` reference
        self._token_ttl = 0.0  # seconds granted at the last login or renewal; 0: never expires
        self._token_expires_at: float | None = None
        self._token_renewable = False
        self._warned_unrenewable = False
        self._contacted = False  # Vault has answered once: a later failure is a refresh, not a start
        self._cache: dict[str, _CachedSecret] = {}
        self.stats = VaultStats()

    def __enter__(self) -> SecretResolver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cache and the HTTP session (the token is left to expire)."""
        with self._lock:
            self._cache.clear()
            if self._client is not None:
                self._client.adapter.close()
                self._client = None

    def resolve(self, value: str) -> str:
        """The value itself: `value` unchanged, or the secret its `vault:` reference names."""
        return self.secret(value).reveal()

    async def aresolve(self, value: str) -> str:
        """`resolve`, with any Vault request made in a worker thread."""
        if not is_reference(value):
            return value
        return await anyio.to_thread.run_sync(self.resolve, value)

    def secret(self, value: str) -> Secret:
        """`value` as a Secret: wrapped as it is, or read from Vault (cached) for a `vault:` reference."""
        if not is_reference(value):
            return Secret(value)
        reference = VaultReference.parse(value)
        with self._lock:
            cached = self._cache.get(reference.path)
            if cached is None or self._clock() >= cached.expires_at:
                cached = self._read(reference)
        if reference.field not in cached.fields:
            known = ", ".join(sorted(cached.fields)) or "none"
            raise SecretError(
                f"{reference}: the secret has no field {reference.field!r} (its fields: {known})",
                reference=str(reference),
            )
        found = cached.fields[reference.field]
        if found is None:
            raise SecretError(f"{reference}: the field's value is not a string", reference=str(reference))
        return Secret(found.reveal(), str(reference))

    # -- reading --------------------------------------------------------------------------------------

    def _read(self, reference: VaultReference) -> _CachedSecret:
        self._ensure_token(reference)
        started = self._clock()
        try:
            response = self._client.read(reference.path)
        except _hvac().exceptions.Forbidden as error:
            if self.config.uses_approle:
                # The token may have ended early (revoked, or past its max TTL): log in again once.
                self._login(reference)
                response = self._call(reference, self._client.read, reference.path, denied_is=_DENIED)
            else:
                raise self._denied(reference) from error
        except Exception as error:
            raise self._failure(reference, error) from error
        self._contacted = True
        self.stats.reads += 1
        secret = response.get("data") if isinstance(response, dict) else None
        if not isinstance(secret, dict) or not isinstance(secret.get("data"), dict):
            raise SecretError(
                f"{reference}: no secret at this path (or its latest version is deleted); "
                f"expected a KV v2 secret at {reference.path}",
                reference=str(reference),
            )
        lease = float(response.get("lease_duration") or 0)
        ttl = lease if lease > 0 else self.config.cache_ttl
        fields = {
            str(key): Secret(value, str(reference)) if isinstance(value, str) else None
            for key, value in secret["data"].items()
        }
        cached = _CachedSecret(fields=fields, expires_at=started + ttl)
        self._cache[reference.path] = cached
        log.info("read secret %s (cached for %.0f s)", reference.path, ttl)
        return cached

    def _call(
        self, reference: VaultReference | None, method: Any, *args: Any, denied_is: str, **kw: Any
    ) -> Any:
        try:
            return method(*args, **kw)
        except _hvac().exceptions.Forbidden as error:
            reason = _reason(error)
            explained = denied_is if reason == "permission denied" else f"{denied_is} ({reason})"
            raise self._error(reference, explained) from error
        except Exception as error:
            raise self._failure(reference, error) from error

    def _denied(self, reference: VaultReference) -> SecretError:
        """Why a token was refused a read: its policies, or the token itself is no longer valid."""
        try:
            self._client.auth.token.lookup_self()
        except _hvac().exceptions.Forbidden:
            return self._error(reference, "permission denied: the Vault token has expired or was revoked")
        except Exception as error:
            return self._failure(reference, error)
        return self._error(reference, _DENIED)

    def _error(self, reference: VaultReference | None, reason: str) -> SecretError:
        where = str(reference) if reference else f"Vault at {self.config.addr}"
        return SecretError(f"{where}: {reason}", reference=str(reference) if reference else None)

    def _failure(self, reference: VaultReference | None, error: Exception) -> SecretError:
        addr = self.config.addr or "?"
        target = f" to read {reference}" if reference else ""
        if isinstance(error, OSError):  # requests' ConnectionError, Timeout and SSLError are OSErrors
            if not self._contacted:
                consequence = "; tokenledger refuses to start without its secrets"
            elif reference is not None and reference.path in self._cache:
                consequence = "; its cached value has expired and could not be refreshed"
            else:
                consequence = ""
            return VaultUnreachable(
                f"Vault at {addr} could not be reached ({_reason(error)}){target}{consequence}",
                reference=str(reference) if reference else None,
                addr=addr,
            )
        if isinstance(error, _hvac().exceptions.VaultDown):
            return self._error(reference, f"Vault at {addr} is sealed or unavailable: {_reason(error)}")
        if isinstance(error, _hvac().exceptions.VaultError):
            return self._error(reference, f"Vault at {addr} refused: {_reason(error)}")
        return self._error(reference, f"reading it failed ({type(error).__name__})")

    # -- the token ------------------------------------------------------------------------------------

    def _ensure_token(self, reference: VaultReference) -> None:
        config = self.config
        if self._client is None:
            if not config.addr:
                raise SecretError(
                    f"{reference}: VAULT_ADDR is not set; it names the Vault or OpenBao server, "
                    "e.g. https://vault.example.com:8200",
                    reference=str(reference),
                )
            if not config.addr.startswith(("http://", "https://")):
                raise SecretError(
                    f"{reference}: VAULT_ADDR {config.addr!r} is not an http:// or https:// URL",
                    reference=str(reference),
                )
            if not config.uses_approle and config.token is None:
                raise SecretError(
                    f"{reference}: no Vault credentials; set VAULT_TOKEN, or VAULT_ROLE_ID and "
                    "VAULT_SECRET_ID for AppRole",
                    reference=str(reference),
                )
            self._client = _hvac().Client(
                url=config.addr,
                token="",  # never the caller's ~/.vault-token or os.environ: only the configured one
                namespace=config.namespace,
                verify=config.cacert or True,
                timeout=config.timeout,
            )
            if config.uses_approle:
                self._login(reference)
            else:
                assert config.token is not None
                self._client.token = config.token.reveal()
                self._lookup_token(reference)
            return
        expires_at = self._token_expires_at
        if expires_at is not None and self._clock() >= expires_at - self._token_ttl / 2:
            self._refresh_token(reference)

    def _granted(self, started: float, ttl: float, renewable: bool) -> None:
        self._token_ttl = ttl
        self._token_expires_at = started + ttl if ttl > 0 else None
        self._token_renewable = renewable

    def _login(self, reference: VaultReference | None) -> None:
        config = self.config
        assert config.role_id is not None and config.secret_id is not None
        started = self._clock()
        response = self._call(
            reference,
            self._client.auth.approle.login,
            role_id=config.role_id.reveal(),
            secret_id=config.secret_id.reveal(),
            mount_point=config.approle_mount,
            use_token=True,
            denied_is=f"the AppRole login at auth/{config.approle_mount} was refused",
        )
        self._contacted = True
        self.stats.logins += 1
        auth = response["auth"]
        self._granted(started, float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        log.info("logged in to Vault with AppRole (token ttl %.0f s)", self._token_ttl)

    def _lookup_token(self, reference: VaultReference) -> None:
        started = self._clock()
        response = self._call(
            reference,
            self._client.auth.token.lookup_self,
            denied_is="VAULT_TOKEN was refused: it is invalid or expired",
        )
        self._contacted = True
        data = response["data"]
        remaining = float(data.get("ttl") or 0)
        self._granted(started, remaining, bool(data.get("renewable")))
        if remaining > 0:
            self._token_ttl = max(remaining, float(data.get("creation_ttl") or 0))

    def _refresh_token(self, reference: VaultReference) -> None:
        """Renew the token (renew-self), or log in again with AppRole when it cannot be renewed."""
        granted_before = self._token_ttl
        if self._token_renewable:
            started = self._clock()
            try:
                response = self._client.auth.token.renew_self(increment=f"{round(granted_before)}s")
            except _hvac().exceptions.VaultError as error:
                if not self.config.uses_approle:
                    reason = (
                        f"the Vault token could not be renewed ({_reason(error)}): it has expired or was "
                        "revoked; set a fresh VAULT_TOKEN, or use AppRole (VAULT_ROLE_ID, VAULT_SECRET_ID)"
                    )
                    raise self._error(reference, reason) from error
                log.info("renewing the Vault token failed (%s); logging in again", _reason(error))
                self._login(reference)
                return
            except Exception as error:
                raise self._failure(reference, error) from error
            self.stats.renewals += 1
            auth = response["auth"]
            renewed = float(auth.get("lease_duration") or 0)
            self._granted(started, renewed, bool(auth.get("renewable")))
            self._token_ttl = granted_before  # renew again at half the original TTL, not of what's left
            log.info("renewed the Vault token (ttl %.0f s)", renewed)
            if renewed > granted_before / 2:
                return  # renewed for long enough
            # The token reached its max TTL: renewing will not extend it any more.
        if self.config.uses_approle:
            self._login(reference)
        elif not self._warned_unrenewable:
            self._warned_unrenewable = True
            log.warning(
                "the Vault token expires in %.0f s and cannot be renewed further; "
                "use AppRole (VAULT_ROLE_ID, VAULT_SECRET_ID) for a long-running server",
                max(0.0, (self._token_expires_at or 0) - self._clock()),
            )


def resolve_secret(
    value: str, environ: Mapping[str, str] | None = None, *, config: VaultConfig | None = None
) -> str:
    """The value itself: `value` unchanged, or read once from Vault if it is a `vault:` reference.

    Vault is configured by `config`, else by `environ` (default: os.environ). For start-up (the
    database URL): a server that reads secrets repeatedly keeps one SecretResolver, whose cache and
    token outlive a single call.
    """
    if not is_reference(value):
        return value
    with SecretResolver(environ, config=config) as resolver:
        return resolver.resolve(value)
