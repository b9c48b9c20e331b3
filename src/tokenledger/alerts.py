"""Deliver the alert outbox to sinks: webhooks (JSON), Slack-compatible webhooks, email, the log.

The ledger writes one alert row per budget, period and threshold at the crossing itself (inside
`tl_track`), per budget and period on a forecast, per budget, period and user on an anomaly. A dispatcher
claims due deliveries with `FOR UPDATE SKIP LOCKED` and a lease, so any number of dispatchers in any
number of processes deliver each alert to each sink once. A failing sink retries with exponential backoff
on its own schedule and never blocks the others.

Before sending, the dispatcher asks the ledger for the alert's context (the budget's figures now, top
spenders, recommendations: `Ledger.alert_context`) once per alert, within a time budget that keeps the
whole delivery inside its lease; an alert whose context fails or runs late goes out with its stable fields
and a note that says so (`tokenledger.alert_notices`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import httpx

from tokenledger.alert_notices import AlertContext, alert_notice
from tokenledger.errors import InvalidInput
from tokenledger.ledger import Ledger
from tokenledger.notices import Notice, email_message
from tokenledger.secrets import resolve_secret

log = logging.getLogger("tokenledger.alerts")


class Sink(Protocol):
    name: str  # stored in the database: never a secret (webhook URLs are; their hash is not)

    # A notice (an alert, a scheduled report, ...); `recipients` replace an email sink's configured ones.
    async def send_notice(self, notice: Notice, recipients: Sequence[str] | None = None) -> None: ...


def _sink_name(kind: str, secret: str) -> str:
    return f"{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}"


@dataclass
class WebhookSink:
    url: str
    timeout: float = 10.0
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = _sink_name("webhook", self.url)

    async def send_notice(self, notice: Notice, recipients: Sequence[str] | None = None) -> None:
        """Post a notice's JSON (its stable `id` included); `recipients` are for email only."""
        await self._post(self.notice_body(notice))

    def notice_body(self, notice: Notice) -> dict[str, Any]:
        return notice.webhook()

    async def _post(self, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url, json=body)
        if response.status_code >= 300:
            raise RuntimeError(f"{self.name} answered HTTP {response.status_code}")


@dataclass
class SlackSink(WebhookSink):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): blocks, and `text` as the
    notification and the fallback of clients without blocks."""

    def __post_init__(self) -> None:
        self.name = _sink_name("slack", self.url)

    def notice_body(self, notice: Notice) -> dict[str, Any]:
        return notice.slack()


@dataclass
class EmailSink:
    """Email over SMTP: `smtp://[user:password@]host[:port]?from=a@x&to=b@y,c@z[&starttls=1]`."""

    host: str
    port: int
    sender: str
    recipients: list[str]
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = _sink_name("email", f"{self.host}:{self.port}:{','.join(self.recipients)}")

    @classmethod
    def from_url(cls, url: str) -> EmailSink:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        recipients = [r for value in query.get("to", []) for r in value.split(",") if r]
        if parts.scheme != "smtp" or not parts.hostname or not recipients or not query.get("from"):
            raise InvalidInput(
                "TOKENLEDGER_ALERT_SMTP",
                "(hidden)",
                "smtp://[user:password@]host[:port]?from=ADDR&to=ADDR[,ADDR]",
            )
        return cls(
            host=parts.hostname,
            port=parts.port or 25,
            sender=query["from"][0],
            recipients=recipients,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            starttls=query.get("starttls", ["0"])[0] in ("1", "true", "yes"),
        )

    def _send_blocking(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username and self.password:
                smtp.login(self.username, self.password)
            smtp.send_message(message)

    async def send_notice(self, notice: Notice, recipients: Sequence[str] | None = None) -> None:
        """Send a notice as a multipart email (text and HTML), to `recipients` instead of the configured
        ones when given."""
        message = email_message(notice, sender=self.sender, recipients=list(recipients or self.recipients))
        await anyio.to_thread.run_sync(self._send_blocking, message)


@dataclass
class LogSink:
    name: str = "log"

    async def send_notice(self, notice: Notice, recipients: Sequence[str] | None = None) -> None:
        if notice.payload.get("type") == "alert":
            log.warning("alert: %s", notice.payload.get("text", notice.subject))
        else:
            log.info("notice: %s", notice.subject)


def sinks_from_env(environ: dict[str, str] | None = None) -> list[Sink]:
    """Sinks configured by TOKENLEDGER_ALERT_WEBHOOK and _SLACK_WEBHOOK (comma-separated URLs), _SMTP (one
    URL), each of them possibly a `vault:` reference, and TOKENLEDGER_ALERT_LOG (on unless `0`)."""
    env = dict(os.environ if environ is None else environ)

    def values(name: str) -> list[str]:
        return [resolve_secret(v.strip(), env) for v in env.get(name, "").split(",") if v.strip()]

    sinks: list[Sink] = []
    sinks += [WebhookSink(url) for url in values("TOKENLEDGER_ALERT_WEBHOOK")]
    sinks += [SlackSink(url) for url in values("TOKENLEDGER_ALERT_SLACK_WEBHOOK")]
    if smtp := env.get("TOKENLEDGER_ALERT_SMTP", "").strip():  # one URL: its `to=` may list several
        sinks.append(EmailSink.from_url(resolve_secret(smtp, env)))
    if env.get("TOKENLEDGER_ALERT_LOG", "1") != "0":
        sinks.append(LogSink())
    return sinks


@dataclass
class Dispatcher:
    """Delivers due alerts to every sink; run one per server process (or several: they share the work).
    `public_url` (TOKENLEDGER_PUBLIC_URL): the messages link its dashboard."""

    ledger: Ledger
    sinks: Sequence[Sink]
    lease_seconds: float = 60
    max_attempts: int = 10
    base_backoff: float = 2.0
    max_backoff: float = 600.0
    send_timeout: float = 20.0
    public_url: str | None = None
    # Contexts of a claimed batch are computed this many at a time, and only within this many seconds of
    # the claim: with send_timeout, a batch is sent well within its lease, so no other dispatcher claims
    # a delivery again while this one is still sending it.
    context_concurrency: int = 1  # of the report connections (2 by default): one stays free for people
    context_seconds: float = 25.0

    def backoff(self, attempt: int) -> float | None:
        """Seconds before the next try after `attempt` failures; None once the attempts are spent."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.base_backoff * 2 ** (attempt - 1), self.max_backoff))

    @property
    def dashboard_url(self) -> str | None:
        return f"{self.public_url}/dashboard" if self.public_url else None

    async def run_once(self, *, limit: int = 100) -> int:
        """Deliver what is due now; returns how many deliveries succeeded."""
        by_name = {sink.name: sink for sink in self.sinks}
        claimed = await self.ledger.claim_alert_deliveries(
            list(by_name), limit=limit, lease_seconds=self.lease_seconds
        )
        by_alert: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for delivery in claimed:
            by_alert.setdefault((delivery["tenant_id"], delivery["alert_id"]), []).append(delivery)
        deadline = anyio.current_time() + self.context_seconds
        limiter = anyio.CapacityLimiter(self.context_concurrency)
        results = await asyncio.gather(
            *(self._deliver_alert(deliveries, by_name, limiter, deadline) for deliveries in by_alert.values())
        )
        return sum(results)

    async def _deliver_alert(
        self,
        deliveries: list[dict[str, Any]],
        by_name: dict[str, Sink],
        limiter: anyio.CapacityLimiter,
        deadline: float,
    ) -> int:
        """One alert to each of its claimed sinks, with its context computed once."""
        alert = deliveries[0]
        context, note = await self._context(alert, limiter, deadline)
        notice = alert_notice(alert, context, dashboard_url=self.dashboard_url, notes=[note] if note else [])
        results = await asyncio.gather(*(self._deliver(by_name[d["sink"]], d, notice) for d in deliveries))
        return sum(results)

    async def _context(
        self, alert: dict[str, Any], limiter: anyio.CapacityLimiter, deadline: float
    ) -> tuple[AlertContext | None, str | None]:
        """The alert's context, or None and a note saying why there is none: it never raises."""
        unavailable = "the budget's figures, top spenders and recommendations could not be computed"
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
            try:
                async with limiter:
                    return await self.ledger.alert_context(alert), None
            except Exception as error:  # the alert goes out all the same, with its stable fields
                log.warning("alert %s: no context: %s", alert["alert_id"], _describe_error(error))
                return None, f"{unavailable} ({_describe_error(error)}); see the dashboard"
        assert scope.cancelled_caught
        return None, f"{unavailable} in time ({self.context_seconds:g} s); see the dashboard"

    async def _deliver(self, sink: Sink, delivery: dict[str, Any], notice: Notice) -> bool:
        try:
            with anyio.fail_after(self.send_timeout):
                await sink.send_notice(notice)
        except Exception as error:  # any sink failure is retried later, never raised into the server
            retry = self.backoff(delivery["attempt"])
            log.warning(
                "alert %s to %s failed (attempt %s): %s",
                delivery["alert_id"],
                sink.name,
                delivery["attempt"],
                type(error).__name__,
            )
            await self.ledger.finish_alert_delivery(
                delivery, error=_describe_error(error), retry_seconds=retry
            )
            return False
        await self.ledger.finish_alert_delivery(delivery)
        return True

    async def run_forever(self, *, interval: float = 5.0, forecast_every: float = 60.0) -> None:
        """Poll for due alerts every `interval` seconds (a crossing is delivered well within 60 s)."""
        since_forecast = forecast_every
        while True:
            try:
                if since_forecast >= forecast_every:
                    await self.ledger.forecast_alerts()
                    since_forecast = 0.0
                await self.run_once()
            except Exception:  # the database may be away; keep trying, the outbox keeps the alerts
                log.exception("alert dispatch failed; retrying in %s s", interval)
            await anyio.sleep(interval)
            since_forecast += interval


def _describe_error(error: Exception) -> str:
    # Never the URL (a webhook URL is a secret): the exception type and a short message.
    text = str(error).split("\n")[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
