"""One exception tree: every message says what was wrong, the value, and what is allowed."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence


class TokenLedgerError(Exception):
    """Base of every error tokenledger raises on purpose."""


class InvalidInput(TokenLedgerError, ValueError):
    """A field had a value that is not allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        if value is None:  # a value that was needed and not given
            super().__init__(f"{field}: missing; {allowed}")
            return
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field}: {shown} is not allowed; {allowed}")


class UnknownModel(InvalidInput):
    """A model name that neither the catalog nor its aliases know."""

    def __init__(self, model: str, closest: Sequence[str], field: str = "model") -> None:
        self.closest = list(closest)
        hint = f"closest known: {', '.join(self.closest)}" if self.closest else "see `tokenledger models`"
        super().__init__(field, model, f"unknown model; {hint}")


class UnknownEncoding(InvalidInput):
    def __init__(self, encoding: str, known: Sequence[str], field: str = "encoding") -> None:
        super().__init__(field, encoding, f"unknown encoding; known: {', '.join(known)}")


class NotFound(TokenLedgerError, LookupError):
    """A budget, reservation, price or key that does not exist in this tenant."""


class Conflict(TokenLedgerError):
    """A request contradicts an earlier one (an idempotency key reused with other content,
    a reservation already settled)."""


class PermissionDenied(TokenLedgerError, PermissionError):
    """The principal's role or user does not allow this."""


class StoreUnavailable(TokenLedgerError):
    """PostgreSQL cannot be reached; checks fail closed until it returns."""


class InternalError(TokenLedgerError):
    """Something unforeseen failed. The server logged it, with its traceback, under `error_id`; the
    message carries the same id and nothing else of it (no SQL, no internals)."""

    def __init__(self, error_id: str) -> None:
        self.error_id = error_id
        super().__init__(
            f"internal error {error_id}: the ledger could not complete this call; "
            "the server logged it under this id"
        )


def internal_error(log: logging.Logger, error: BaseException, doing: str) -> InternalError:
    """Log an unforeseen `error` (with its traceback) under a new id; the InternalError to raise."""
    error_id = secrets.token_hex(6)
    log.error("internal error %s while %s: %s", error_id, doing, error, exc_info=error)
    return InternalError(error_id)


class BudgetExceeded(TokenLedgerError):
    """Raised by integrations when a check is denied; carries the decision."""

    def __init__(self, decision: object, message: str) -> None:
        self.decision = decision
        super().__init__(message)


class ReportBusy(TokenLedgerError):
    """Every report slot stayed taken for as long as a report may wait: nothing ran; retry shortly.
    Reports have their own connections, so checks and settles never wait behind them."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message)


class ReportTimeout(TokenLedgerError):
    """A report query ran past the report time limit and PostgreSQL stopped it: narrow the window."""
