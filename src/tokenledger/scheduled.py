"""Deliver scheduled reports: start each due occurrence once, then hand each run to its sinks once.

Any number of server processes run a `ScheduleDispatcher` over one database. Starting an occurrence is a
compare-and-set on the schedule's next occurrence (one process wins; after downtime the due occurrences
become one catch-up run); delivering a run is claimed per sink with `FOR UPDATE SKIP LOCKED` and a lease,
as alert deliveries are, and retried with backoff when a sink fails. The sinks are the alert sinks
(`tokenledger.alerts.sinks_from_env`): a schedule sent to `email`, `slack` or `webhook` goes to the
configured sinks of that kind; `email:ADDRESS` to that address through the configured SMTP server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from tokenledger.alerts import Sink
from tokenledger.digest import report_notice
from tokenledger.ledger import Ledger
from tokenledger.schedules import Delivery

log = logging.getLogger("tokenledger.scheduled")

__all__ = ["ScheduleDispatcher"]

DESTINATIONS = ("email", "slack", "webhook")


@dataclass
class ScheduleDispatcher:
    """Starts due occurrences and delivers runs; run one per server process (or several: they share)."""

    ledger: Ledger
    sinks: Sequence[Sink]
    lease_seconds: float = 120  # a report is made and sent well within it
    max_attempts: int = 10
    base_backoff: float = 5.0
    max_backoff: float = 1800.0
    send_timeout: float = 60.0

    def backoff(self, attempt: int) -> float | None:
        """Seconds before the next try after `attempt` failures; None once the attempts are spent."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.base_backoff * 2 ** (attempt - 1), self.max_backoff))

    @property
    def _by_name(self) -> dict[str, Sink]:
        return {sink.name: sink for sink in self.sinks if sink.name.split(":")[0] in DESTINATIONS}

    async def run_once(self, *, limit: int = 20, run: tuple[str, int] | None = None) -> int:
        """Start what is due, then deliver what is claimable now (only `run`, (tenant, run_id), when
        given); returns how many deliveries succeeded."""
        if run is None:
            for started in await self.ledger.start_due_schedule_runs(limit=limit):
                log.info("schedule %s: %s run for %s", started.schedule, started.kind, started.occurrence)
        by_name = self._by_name
        if not by_name:
            return 0
        claimed = await self.ledger.claim_schedule_deliveries(
            list(by_name), limit=limit, lease_seconds=self.lease_seconds, run=run
        )
        results = await asyncio.gather(*(self._deliver(by_name[d.sink], d) for d in claimed))
        return sum(results)

    async def _deliver(self, sink: Sink, delivery: Delivery) -> bool:
        try:
            with anyio.fail_after(self.send_timeout):
                report = await self.ledger.scheduled_report(delivery)
                recipients = [delivery.recipient] if delivery.recipient else None
                await sink.send_notice(report_notice(report, delivery), recipients)
        except Exception as error:  # any failure is retried later, never raised into the server
            retry = self.backoff(delivery.attempt)
            log.warning(
                "schedule %s run %s to %s failed (attempt %s): %s",
                delivery.schedule,
                delivery.run_id,
                sink.name,
                delivery.attempt,
                type(error).__name__,
            )
            await self.ledger.finish_schedule_delivery(delivery, error=_describe(error), retry_seconds=retry)
            return False
        await self.ledger.finish_schedule_delivery(delivery)
        return True

    async def run_forever(self, *, interval: float = 5.0) -> None:
        """Poll every `interval` seconds: an occurrence goes out within that of its local time."""
        while True:
            try:
                await self.run_once()
            except Exception:  # the database may be away; keep trying, the runs wait in the database
                log.exception("scheduled report dispatch failed; retrying in %s s", interval)
            await anyio.sleep(interval)


def _describe(error: Exception) -> str:
    # Never a URL (a webhook URL is a secret): the exception type and a short message.
    text = str(error).split("\n")[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
