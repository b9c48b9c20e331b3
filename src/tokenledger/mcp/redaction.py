"""Keeping secrets out of the server's log: API keys, the scrape token, query strings.

Two layers, because a secret reaches a log line by many roads (a query string in the access log, a header
echoed in a refusal, an exception's text, a library's own INFO line), in any encoding:

- `AccessLogRedaction`, on uvicorn's access logger: a request target is logged without its query string
  (the only place a client could put a key in a URL; `/dashboard?key=` is documented), and key-shaped
  text in the rest is blanked. In-process servers (the tests) get this layer too.
- `RedactingFormatter`, on the handler `tokenledger serve` logs through: every formatted line, traceback
  included, is scanned last for anything that decodes (percent-encoding, up to three times) to an API key
  or to a secret the process holds (the scrape token), and that text is blanked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, unquote_plus

__all__ = ["REDACTED", "AccessLogRedaction", "RedactingFormatter", "redact"]

REDACTED: Final = "[redacted]"
# `tl_<key id: 12 hex>_<secret>`: what `Ledger.create_key` makes.
API_KEY: Final = re.compile(r"tl_[0-9a-f]{12}_[A-Za-z0-9_-]{16,}")
# A run of URL-ish characters or percent escapes: a key, raw or encoded, lies within one such run.
_RUN: Final = re.compile(r"(?:[A-Za-z0-9._~+\-]|%[0-9A-Fa-f]{2})+")
_QUERY: Final = re.compile(r"^(/[^?\s]*)\?\S*$")
_DECODE_ROUNDS: Final = 3


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every API key and every one of `secrets` blanked, raw or percent-encoded."""
    known = [secret for secret in secrets if secret]
    for secret in known:
        for form in {secret, quote(secret, safe=""), quote(secret), _percent_every_byte(secret)}:
            text = text.replace(form, REDACTED)

    def scrub(run: re.Match[str]) -> str:
        decoded = run.group(0)
        for _ in range(_DECODE_ROUNDS + 1):  # as given, then decoded once, twice, three times
            if API_KEY.search(decoded) or any(secret in decoded for secret in known):
                return REDACTED
            once = unquote_plus(decoded)
            if once == decoded:
                break
            decoded = once
        return run.group(0)

    return _RUN.sub(scrub, text)


def _percent_every_byte(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


class AccessLogRedaction(logging.Filter):
    """On `uvicorn.access`: request targets lose their query string; key-shaped text is blanked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True

    @staticmethod
    def _clean(value: str) -> str:
        return redact(_QUERY.sub(rf"\1?{REDACTED}", value))

    @classmethod
    def install(cls) -> None:
        """Add the filter to uvicorn's access logger, once per process."""
        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, cls) for f in access.filters):
            access.addFilter(cls())


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line (with its traceback) has API keys and the known secrets blanked."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._secrets: set[str] = set()

    def add_secret(self, secret: str) -> None:
        """Blank this text from now on (the scrape token, once it is resolved)."""
        if secret:
            self._secrets.add(secret)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)
