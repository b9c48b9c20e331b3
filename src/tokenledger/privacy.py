"""Pseudonyms of user ids and keyed prompt hashes: HMAC-SHA256 under a secret of the tenant's own.

The secret (32 bytes from `secrets`, kept in tl_tenant_secret) is never logged and never returned. Two keys
are derived from it, one per purpose, so a pseudonym and a prompt hash never share a key:

- A user's pseudonym is `user-` and the first 12 hex digits (48 bits) of HMAC(pseudonym key, user id):
  the same in every report for as long as the tenant keeps its secret, different in every other tenant,
  and not reversible without the secret. 48 bits keep two of a tenant's users apart (at 100,000 users the
  chance that any two share a pseudonym is below 2 in 100,000); 32 bits would not (1 in 100 at 10,000).
- A prompt's stored hash is HMAC(prompt key, SHA-256 of the prompt), in hex. A plain SHA-256 of a short
  prompt ("yes", a name, a number) can be found by hashing guesses; the keyed one cannot without the
  secret. Repeated prompts still share a hash within the tenant; the same prompt in two tenants does not.

Plain functions, no I/O: the ledger reads the secret and decides who sees pseudonyms.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenledger.errors import InvalidInput

__all__ = [
    "PSEUDONYM_PATTERN",
    "SECRET_BYTES",
    "TenantKeys",
    "UserMask",
    "keyed_prompt_hash",
    "pseudonym",
]

SECRET_BYTES = 32
PSEUDONYM_PREFIX = "user-"
PSEUDONYM_HEX_DIGITS = 12
PSEUDONYM_PATTERN = re.compile(rf"{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX_DIGITS}}}")
# Labels of the derived keys: changing one changes every pseudonym or prompt hash of every tenant.
_PSEUDONYM_LABEL = b"tokenledger user pseudonym v1"
_PROMPT_LABEL = b"tokenledger prompt hash v1"


@dataclass(frozen=True)
class TenantKeys:
    """The keys derived from a tenant's secret. Their repr shows neither key."""

    pseudonym_key: bytes = field(repr=False)
    prompt_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> TenantKeys:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"a tenant secret has at least {SECRET_BYTES} bytes")
        return cls(
            pseudonym_key=hmac.digest(secret, _PSEUDONYM_LABEL, hashlib.sha256),
            prompt_key=hmac.digest(secret, _PROMPT_LABEL, hashlib.sha256),
        )


def pseudonym(key: bytes, user: str) -> str:
    """The pseudonym of `user` under a tenant's pseudonym key: `user-` and 12 hex digits."""
    digest = hmac.digest(key, user.encode("utf-8"), "sha256").hex()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def keyed_prompt_hash(key: bytes, plain_hash: str | None) -> str | None:
    """The hash stored for a prompt whose SHA-256 (64 hex digits, as `reports.prompt_hash` makes it or a
    client sends it) is `plain_hash`: HMAC-SHA256 of its bytes under the tenant's prompt key."""
    if plain_hash is None:
        return None
    return hmac.digest(key, bytes.fromhex(plain_hash), "sha256").hex()


class UserMask:
    """What a viewer is shown for each user id of a tenant that pseudonymises users."""

    def __init__(self, keys: TenantKeys) -> None:
        self._key = keys.pseudonym_key

    def __repr__(self) -> str:
        return "<UserMask>"

    def user(self, user: str | None) -> str | None:
        """The pseudonym of a user id (None stays None: usage without a user)."""
        return None if user is None else pseudonym(self._key, user)

    def scope(self, scope: str) -> str:
        """A budget scope with its user pseudonymised (`user:alice` -> `user:user-…`); others unchanged."""
        kind, sep, value = scope.partition(":")
        return f"user:{pseudonym(self._key, value)}" if kind == "user" and sep else scope

    def real_user(self, shown: str, user_ids: Iterable[str]) -> str | None:
        """The user id among `user_ids` whose pseudonym is `shown` (a viewer's filter), None when none has
        it. Anything but a pseudonym is refused: accepting a real id would tell a viewer whose it is."""
        if not PSEUDONYM_PATTERN.fullmatch(shown):
            raise InvalidInput(
                "user",
                shown,
                f"a pseudonym as this tenant's reports show it ({PSEUDONYM_PREFIX} and "
                f"{PSEUDONYM_HEX_DIGITS} hex digits): this tenant pseudonymises users for viewers",
            )
        return next(
            (user for user in user_ids if hmac.compare_digest(pseudonym(self._key, user), shown)), None
        )
