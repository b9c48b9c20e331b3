"""Prometheus metrics of one server process: tokens, cost, budget decisions, latencies, alert deliveries.

Names follow the OpenTelemetry GenAI semantic conventions where they exist, as the OpenTelemetry
Prometheus exporter spells them (`gen_ai.client.token.usage` -> `gen_ai_client_token_usage`, a
duration in seconds gains `_seconds`); the ledger's own live under `tokenledger_*`.

A scrape is one tenant's (what an API key of that tenant reads) or the whole process's (the operator's
scrape token). So every observation goes to two registries: its tenant's own and the process's, which
sums all tenants and adds the process collectors (CPU, memory). A registry per tenant, rather than a
`tenant` label filtered at scrape time, keeps a tenant's scrape to its own series (with a label, every
scrape would walk every tenant's: O(tenants) work per scrape, O(tenants^2) for all of them) and needs no
merging code; the price is one more `observe` per metric on the hot path, microseconds against a
database round trip. Both scrapes have the same series, so one Grafana board reads either.

Labels never carry a user, session, tenant or budget name. Model and provider values come from the
bundled catalog only (anything else is `other`), so one tenant's custom names can neither fill the label
space nor show in another tenant's scrape; tool, reason and sink values come from fixed lists. Past
`max_tenants` tenants, further ones count in the process's registry only.

Each `Metrics` owns its registries, never the global one, so several servers (and tests) can run in one
process.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tokenledger.types import CheckResult, TrackResult

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "Metrics"]

log = logging.getLogger("tokenledger.metrics")

# Every name here is a legacy (ASCII) name: the classic text format, which every Prometheus reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
OTHER: Final = "other"

# The OpenTelemetry GenAI conventions' advised bucket boundaries.
TOKEN_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
OPERATION_BUCKETS: Final = tuple(round(0.01 * 2**power, 2) for power in range(14))  # 0.01 s .. 81.92 s
# A reservation is one SQL function call: sub-millisecond to a few hundred under contention.
LEDGER_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

GENAI_LABELS: Final = ("gen_ai_provider_name", "gen_ai_request_model")

# Every metric family this module exposes (histograms add _bucket, _sum and _count; counters _total).
METRIC_NAMES: Final = frozenset(
    {
        "gen_ai_client_token_usage",
        "gen_ai_client_operation_duration_seconds",
        "tokenledger_cost_usd_total",
        "tokenledger_usage_records_total",
        "tokenledger_budget_decisions_total",
        "tokenledger_reservation_seconds",
        "tokenledger_tool_seconds",
        "tokenledger_alert_deliveries_total",
    }
)


class _Families:
    """The ledger's metric families, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per recorded LLM call, by type (input is uncached input; reasoning is part of output)",
            ["gen_ai_token_type", *GENAI_LABELS],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of LLM calls as reported to track_usage (latency_ms)",
            [*GENAI_LABELS, "status"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.cost = Counter(
            "tokenledger_cost_usd",
            "USD cost of recorded usage (unpriced calls add nothing: see tokenledger_usage_records_total)",
            list(GENAI_LABELS),
            registry=registry,
        )
        self.usage_records = Counter(
            "tokenledger_usage_records",
            "Usage records written by track_usage, by call status and whether the model was priced",
            [*GENAI_LABELS, "status", "priced"],
            registry=registry,
        )
        self.decisions = Counter(
            "tokenledger_budget_decisions",
            "check_budget decisions: allow, partial (fewer output tokens) or deny, with the blocking reason",
            ["decision", "reason"],
            registry=registry,
        )
        self.reservation_seconds = Histogram(
            "tokenledger_reservation_seconds",
            "Time of the ledger's check-and-reserve (one SQL function call), by decision",
            ["decision"],
            buckets=LEDGER_BUCKETS,
            registry=registry,
        )
        self.tool_seconds = Histogram(
            "tokenledger_tool_seconds",
            "MCP tool call time in the server, by tool and outcome (ok, error)",
            ["tool", "outcome"],
            buckets=LEDGER_BUCKETS,
            registry=registry,
        )
        self.alert_deliveries = Counter(
            "tokenledger_alert_deliveries",
            "Alert deliveries by sink kind and result: delivered, retry (failed, retried later), failed",
            ["sink", "result"],
            registry=registry,
        )


class Metrics:
    """The metrics of one server process: per tenant, and for the whole process.

    `models` (lower-cased) and `providers` are the label values allowed (the catalog's); others count
    as `other`.
    Past `max_tenants` distinct tenants, newcomers count in the process's metrics only (logged once).
    """

    def __init__(
        self,
        *,
        models: Collection[str] = (),
        providers: Collection[str] = (),
        max_tenants: int = 1000,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)  # the process's
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._process = _Families(self.registry)
        self._tenants: dict[str, _Families] = {}
        self._no_tenant = _Families(CollectorRegistry())  # what a tenant with no observations reads
        self._models = frozenset(name.lower() for name in models)
        self._providers = frozenset(providers)
        self.max_tenants = max_tenants
        self._warned = False
        self._tools: frozenset[str] | None = None

    # --- observations (called by the ledger and the HTTP app) --------------------------------------

    def observe_check(self, result: CheckResult, seconds: float, *, tenant: str) -> None:
        """A check_budget answer; a replay of an earlier answer is not counted again."""
        if result.duplicate:
            return
        reason = result.blocked_by.reason if result.blocked_by is not None else "none"
        for families in self._targets(tenant):
            families.decisions.labels(result.decision, _bounded_reason(reason)).inc()
            families.reservation_seconds.labels(result.decision).observe(seconds)

    def observe_usage(
        self,
        result: TrackResult,
        *,
        tenant: str,
        provider: str | None,
        model: str,
        status: str,
        latency_ms: int | None,
    ) -> None:
        """A recorded call's tokens, cost and duration; a replay (counted once by the ledger) adds nothing."""
        if result.duplicate:
            return
        labels = (
            provider if provider in self._providers else OTHER,
            model if model.lower() in self._models else OTHER,
        )
        counts = _token_counts(result)
        for families in self._targets(tenant):
            for token_type, count in counts:
                families.token_usage.labels(token_type, *labels).observe(count)
            if result.cost_usd is not None:
                families.cost.labels(*labels).inc(float(result.cost_usd))
            families.usage_records.labels(*labels, status, "true" if result.priced else "false").inc()
            if latency_ms is not None:
                families.operation_duration.labels(*labels, status).observe(latency_ms / 1000)

    def known_tools(self, names: Collection[str]) -> None:
        """The server's tool names: only these become `tool` label values, others count as `other`."""
        self._tools = frozenset(names)

    def observe_tool(self, tool: str, seconds: float, *, ok: bool, tenant: str) -> None:
        name = tool if self._tools is not None and tool in self._tools else OTHER
        for families in self._targets(tenant):
            families.tool_seconds.labels(name, "ok" if ok else "error").observe(seconds)

    def observe_alert_delivery(
        self, sink: str, *, tenant: str, error: str | None, retry_seconds: float | None
    ) -> None:
        """One delivery attempt; `sink` is a sink name such as `webhook:3fa1...` (only its kind is kept)."""
        kind = sink.partition(":")[0]
        result = "delivered" if error is None else ("retry" if retry_seconds is not None else "failed")
        for families in self._targets(tenant):
            families.alert_deliveries.labels(kind if kind in _SINK_KINDS else OTHER, result).inc()

    def _targets(self, tenant: str) -> tuple[_Families, ...]:
        """Where an observation of `tenant` goes: the process's metrics and, within the bound, its own."""
        own = self._tenants.get(tenant)
        if own is None and tenant:
            if len(self._tenants) < self.max_tenants:
                own = self._tenants[tenant] = _Families(CollectorRegistry())
            elif not self._warned:
                self._warned = True
                log.warning(
                    "metrics: over %d tenants in this process; further tenants count in the process's "
                    "metrics only",
                    self.max_tenants,
                )
        return (self._process,) if own is None else (self._process, own)

    # --- exposition --------------------------------------------------------------------------------

    def tenant_exposition(self, tenant: str) -> bytes:
        """One tenant's series, in the Prometheus text format (0.0.4): nothing of any other tenant, and
        nothing of the process (its CPU and memory are every tenant's)."""
        return generate_latest(self._tenants.get(tenant, self._no_tenant).registry)

    def process_exposition(self) -> bytes:
        """Every tenant's series summed, with the process's own (CPU, memory), for the operator."""
        return generate_latest(self.registry)


_SINK_KINDS: Final = frozenset({"webhook", "slack", "email", "log"})
_REASONS: Final = frozenset(
    {"none", "limit", "priority_share", "rate_limit_tokens", "rate_limit_requests", "unpriced_model"}
)


def _bounded_reason(reason: str) -> str:
    return reason if reason in _REASONS else OTHER


def _token_counts(result: TrackResult) -> list[tuple[str, int]]:
    """(gen_ai_token_type, count): input and output always, the cache and reasoning types when present."""
    counts = [("input", result.input_tokens), ("output", result.output_tokens)]
    extra = (
        ("cache_read", result.cache_read_input_tokens),
        ("cache_creation", result.cache_creation_input_tokens),
        ("reasoning", result.reasoning_output_tokens),
    )
    counts += [(name, count) for name, count in extra if count > 0]
    return counts
