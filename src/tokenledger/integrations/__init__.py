"""tokenledger in one line wherever models are called: a guard, a decorator, SDK wrappers, ASGI middleware.

    from tokenledger.integrations import guard, metered, SyncLedger
    from tokenledger.integrations.openai import wrap_openai          # needs the `openai` extra
    from tokenledger.integrations.anthropic import wrap_anthropic    # needs the `anthropic` extra
    from tokenledger.integrations.asgi import TokenLedgerMiddleware

Nothing here imports an SDK at import time: the wrappers import theirs when called.
"""

from tokenledger.integrations.guard import Grant, Guard, SyncGrant, SyncLedger, Usage, guard, usage_from
from tokenledger.integrations.metered import metered

__all__ = ["Grant", "Guard", "SyncGrant", "SyncLedger", "Usage", "guard", "metered", "usage_from"]
