"""tokenledger: a token ledger for LLM agents."""

from tokenledger.errors import (
    BudgetExceeded,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
    TokenLedgerError,
    UnknownModel,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExceeded",
    "Conflict",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "StoreUnavailable",
    "TokenLedgerError",
    "UnknownModel",
    "__version__",
]
