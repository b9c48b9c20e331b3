"""Tell a tenant's admins of override requests through the alert sinks: each request to each sink once.

`Ledger.request_override` writes a pending request. An `OverrideNoticeDispatcher` claims it for each
configured sink (`FOR UPDATE SKIP LOCKED` and a lease, as alert deliveries are), so any number of server
processes send each request to each sink once; a failing sink retries with backoff on its own schedule. A
request decided, cancelled or expired before its notice went out is not sent.

The message (email text and HTML, Slack blocks, webhook JSON: `tokenledger.notices`) says who asks how much
more of which budget, why and until when, and how to decide: the CLI commands, the MCP tool and the
dashboard. Every text the requester wrote is escaped for HTML and for Slack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from html import escape
from typing import Any

import anyio

from tokenledger.alerts import Sink
from tokenledger.ledger import Ledger
from tokenledger.notices import Notice, html_document, slack_escape
from tokenledger.types import OverrideNotice

log = logging.getLogger("tokenledger.overrides")

__all__ = ["OverrideNoticeDispatcher", "override_notice"]


def _amount(value: Decimal, unit: str) -> str:
    plain = format(value.normalize(), "f")
    return f"${plain}" if unit == "usd" else f"{plain} tokens"


def override_notice(request: OverrideNotice, *, dashboard_url: str | None = None) -> Notice:
    """The message that asks the admins to decide on one request."""
    amount = _amount(request.amount, request.unit)
    until = request.until.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    who = f"user {request.user}" if request.user else request.requested_by
    number = request.override_id
    subject = (
        f"[tokenledger] override request #{number}: {amount} more on budget {request.budget} until {until}"
    )
    asks = f"{who} asks for {amount} more on budget {request.budget} ({request.scope}) until {until}."
    approve = f"tokenledger override approve {number}"
    deny = f"tokenledger override deny {number} --reason '...'"
    tool = f'the MCP tool budget_override (action "approve" or "deny", id {number})'
    board = "the dashboard"
    if dashboard_url:
        board += f": {dashboard_url.rstrip('/')}/dashboard#overrides"
    sent_by = f"Sent by tokenledger for tenant {request.tenant_id}; id {request.tenant_id}:override:{number}"
    text = "\n".join(
        [
            asks,
            f"Reason: {request.reason}",
            "",
            "Approved, it raises the budget's limit (and hard cap) by that much from approval until then,",
            "and reverts by itself. Decide with:",
            f"  {approve}",
            f"  {deny}",
            f"or {tool}, or {board}.",
            "",
            sent_by,
        ]
    )
    html = html_document(
        subject,
        f'<h2 style="font-size:17px;margin:0 0 10px">Override request #{number}</h2>'
        f"<p>{escape(asks)}</p>"
        f"<p><strong>Reason:</strong> {escape(request.reason)}</p>"
        "<p>Approved, it raises the budget's limit (and hard cap) by that much from approval until then, "
        "and reverts by itself. Decide with:</p>"
        f'<pre style="background:#f6f7fb;padding:8px 10px">{escape(approve)}\n{escape(deny)}</pre>'
        f"<p>or {escape(tool)}, or {escape(board)}.</p>"
        f'<p style="color:#5f6b7a;font-size:12px">{escape(sent_by)}</p>',
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Override request #{number}"[:150]}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": slack_escape(f"{asks}\nReason: {request.reason}")[:2_900],
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(f"`{approve}`\n`{deny}`")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(sent_by)}]},
    ]
    payload: dict[str, Any] = {
        "kind": "override_request",
        "tenant_id": request.tenant_id,
        "override_id": number,
        "budget": request.budget,
        "scope": request.scope,
        "unit": request.unit,
        "amount": format(request.amount, "f"),
        "reason": request.reason,
        "until": request.until.isoformat(),
        "requested_by": request.requested_by,
        "user": request.user,
        "requested_at": request.requested_at.isoformat(),
        "approve": approve,
        "deny": deny,
    }
    if dashboard_url:
        payload["dashboard"] = f"{dashboard_url.rstrip('/')}/dashboard#overrides"
    return Notice(
        id=f"{request.tenant_id}:override:{number}",
        subject=subject,
        text=text,
        html=html,
        slack_blocks=blocks,
        payload=payload,
    )


@dataclass
class OverrideNoticeDispatcher:
    """Sends each pending request to every sink once; run one per server process (or several: they share
    the work)."""

    ledger: Ledger
    sinks: Sequence[Sink]
    dashboard_url: str | None = None  # TOKENLEDGER_PUBLIC_URL: the messages link to its dashboard
    lease_seconds: float = 60
    max_attempts: int = 10
    base_backoff: float = 2.0
    max_backoff: float = 600.0
    send_timeout: float = 20.0

    def backoff(self, attempt: int) -> float | None:
        """Seconds before the next try after `attempt` failures; None once the attempts are spent."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.base_backoff * 2 ** (attempt - 1), self.max_backoff))

    async def run_once(self, *, limit: int = 50) -> int:
        """Send what is due now; returns how many deliveries succeeded."""
        by_name = {sink.name: sink for sink in self.sinks}
        if not by_name:
            return 0
        claimed = await self.ledger.claim_override_notices(
            list(by_name), limit=limit, lease_seconds=self.lease_seconds
        )
        results = await asyncio.gather(*(self._deliver(by_name[n.sink], n) for n in claimed))
        return sum(results)

    async def _deliver(self, sink: Sink, request: OverrideNotice) -> bool:
        try:
            with anyio.fail_after(self.send_timeout):
                await sink.send_notice(override_notice(request, dashboard_url=self.dashboard_url))
        except Exception as error:  # any sink failure is retried later, never raised into the server
            log.warning(
                "override request %s to %s failed (attempt %s): %s",
                request.override_id,
                sink.name,
                request.attempt,
                type(error).__name__,
            )
            await self.ledger.finish_override_notice(
                request, error=_describe(error), retry_seconds=self.backoff(request.attempt)
            )
            return False
        await self.ledger.finish_override_notice(request)
        return True

    async def run_forever(self, *, interval: float = 5.0) -> None:
        """Poll every `interval` seconds: admins hear of a request within about that."""
        while True:
            try:
                await self.run_once()
            except Exception:  # the database may be away; keep trying, the requests wait in it
                log.exception("override notice dispatch failed; retrying in %s s", interval)
            await anyio.sleep(interval)


def _describe(error: Exception) -> str:
    # Never a URL (a webhook URL is a secret): the exception type and a short message.
    text = str(error).split("\n")[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
