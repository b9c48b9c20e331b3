"""Prometheus metrics of one server process: tokens, cost, budget decisions, latencies, alert deliveries.

Names follow the OpenTelemetry GenAI semantic conventions where they exist, as the OpenTelemetry
Prometheus exporter spells them (`gen_ai.client.token.usage` -> `gen_ai_client_token_usage`, a
duration in seconds gains `_seconds`); the ledger's own live under `tokenledger_*`.

Every observation is kept per tenant, and a scrape is either one tenant's (what an API key of that
tenant reads) or the whole process's (the operator's scrape token), summed over tenants. The tenant is
an internal label that no scrape shows: both scrapes have the same series, so one Grafana board reads
either. Labels never carry a user, session, tenant or budget name. Model and provider values come from
the bundled catalog only (anything else is `other`), so one tenant's custom names can neither fill the
label space nor show in another tenant's scrape; tool, reason and sink values come from fixed lists.

Each `Metrics` owns its own `CollectorRegistry`, never the global one, so several servers (and tests)
can run in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, Metric, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from tokenledger.types import CheckResult, TrackResult

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "Metrics"]

log = logging.getLogger("tokenledger.metrics")

# Every name here is a legacy (ASCII) name: the classic text format, which every Prometheus reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
OTHER: Final = "other"
# The internal label that keeps each series to one tenant; dropped from every scrape.
TENANT: Final = "tenant"
# Where observations go without a tenant, or past `max_tenants`: in the process total, no tenant's scrape
# (a tenant id is never empty).
NO_TENANT: Final = ""

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


class Metrics:
    """The metrics of one server process, per tenant, in a registry of their own.

    `models` and `providers` are the label values allowed (the catalog's); others count as `other`.
    Past `max_tenants` distinct tenants, newcomers are counted in the process total only (logged once).
    """

    def __init__(
        self,
        *,
        models: Collection[str] = (),
        providers: Collection[str] = (),
        max_tenants: int = 1000,
        process: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._models = frozenset(models)
        self._providers = frozenset(providers)
        self._tenants: set[str] = set()
        self.max_tenants = max_tenants
        self._tools: frozenset[str] | None = None
        registry = self.registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per recorded LLM call, by type (input is uncached input; reasoning is part of output)",
            [TENANT, "gen_ai_token_type", *GENAI_LABELS],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of LLM calls as reported to track_usage (latency_ms)",
            [TENANT, *GENAI_LABELS, "status"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.cost = Counter(
            "tokenledger_cost_usd",
            "USD cost of recorded usage (unpriced calls add nothing: see tokenledger_usage_records_total)",
            [TENANT, *GENAI_LABELS],
            registry=registry,
        )
        self.usage_records = Counter(
            "tokenledger_usage_records",
            "Usage records written by track_usage, by call status and whether the model was priced",
            [TENANT, *GENAI_LABELS, "status", "priced"],
            registry=registry,
        )
        self.decisions = Counter(
            "tokenledger_budget_decisions",
            "check_budget decisions: allow, partial (fewer output tokens) or deny, with the blocking reason",
            [TENANT, "decision", "reason"],
            registry=registry,
        )
        self.reservation_seconds = Histogram(
            "tokenledger_reservation_seconds",
            "Time of the ledger's check-and-reserve (one SQL function call), by decision",
            [TENANT, "decision"],
            buckets=LEDGER_BUCKETS,
            registry=registry,
        )
        self.tool_seconds = Histogram(
            "tokenledger_tool_seconds",
            "MCP tool call time in the server, by tool and outcome (ok, error)",
            [TENANT, "tool", "outcome"],
            buckets=LEDGER_BUCKETS,
            registry=registry,
        )
        self.alert_deliveries = Counter(
            "tokenledger_alert_deliveries",
            "Alert deliveries by sink kind and result: delivered, retry (failed, retried later), failed",
            [TENANT, "sink", "result"],
            registry=registry,
        )
        ledger_metrics = (
            self.token_usage,
            self.operation_duration,
            self.cost,
            self.usage_records,
            self.decisions,
            self.reservation_seconds,
            self.tool_seconds,
            self.alert_deliveries,
        )
        # The families kept per tenant (as the registry names them: a counter without `_total`).
        self._families = frozenset(described.name for m in ledger_metrics for described in m.describe())

    # --- observations (called by the ledger and the HTTP app) --------------------------------------

    def observe_check(self, result: CheckResult, seconds: float, *, tenant: str) -> None:
        """A check_budget answer; a replay of an earlier answer is not counted again."""
        if result.duplicate:
            return
        owner = self._tenant(tenant)
        reason = result.blocked_by.reason if result.blocked_by is not None else "none"
        self.decisions.labels(owner, result.decision, _bounded_reason(reason)).inc()
        self.reservation_seconds.labels(owner, result.decision).observe(seconds)

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
            self._tenant(tenant),
            provider if provider in self._providers else OTHER,
            model if model in self._models else OTHER,
        )
        for token_type, count in _token_counts(result):
            self.token_usage.labels(labels[0], token_type, *labels[1:]).observe(count)
        if result.cost_usd is not None:
            self.cost.labels(*labels).inc(float(result.cost_usd))
        self.usage_records.labels(*labels, status, "true" if result.priced else "false").inc()
        if latency_ms is not None:
            self.operation_duration.labels(*labels, status).observe(latency_ms / 1000)

    def known_tools(self, names: Collection[str]) -> None:
        """The server's tool names: only these become `tool` label values, others count as `other`."""
        self._tools = frozenset(names)

    def observe_tool(self, tool: str, seconds: float, *, ok: bool, tenant: str) -> None:
        name = tool if self._tools is not None and tool in self._tools else OTHER
        self.tool_seconds.labels(self._tenant(tenant), name, "ok" if ok else "error").observe(seconds)

    def observe_alert_delivery(
        self, sink: str, *, tenant: str, error: str | None, retry_seconds: float | None
    ) -> None:
        """One delivery attempt; `sink` is a sink name such as `webhook:3fa1...` (only its kind is kept)."""
        kind = sink.partition(":")[0]
        result = "delivered" if error is None else ("retry" if retry_seconds is not None else "failed")
        sink_kind = kind if kind in _SINK_KINDS else OTHER
        self.alert_deliveries.labels(self._tenant(tenant), sink_kind, result).inc()

    def _tenant(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) >= self.max_tenants:
            if NO_TENANT not in self._tenants:
                self._tenants.add(NO_TENANT)
                log.warning(
                    "metrics: over %d tenants in this process; the metrics of further tenants count in "
                    "the process total only",
                    self.max_tenants,
                )
            return NO_TENANT
        self._tenants.add(tenant)
        return tenant

    # --- exposition --------------------------------------------------------------------------------

    def tenant_exposition(self, tenant: str) -> bytes:
        """One tenant's series, in the Prometheus text format (0.0.4); nothing of any other tenant, and
        nothing of the process (its CPU and memory are every tenant's)."""
        if not tenant:  # never the process view by accident
            raise ValueError("a tenant scrape needs a tenant id")
        return generate_latest(_View(self.registry, self._families, tenant=tenant))

    def process_exposition(self) -> bytes:
        """Every tenant's series summed, with the process's own (CPU, memory), for the operator."""
        return generate_latest(_View(self.registry, self._families, tenant=None))


class _View:
    """A registry's ledger families without their tenant label: one tenant's samples, or all summed.

    A tenant view (`tenant` given) leaves out every other family; the process view keeps them.
    """

    def __init__(self, registry: CollectorRegistry, families: frozenset[str], *, tenant: str | None) -> None:
        self.registry = registry
        self.families = families
        self.tenant = tenant

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name not in self.families:
                if self.tenant is None:
                    yield family
                continue
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = dict(sample.labels)
                owner = labels.pop(TENANT)
                if self.tenant is not None and owner != self.tenant:
                    continue
                key = (sample.name, tuple(labels.items()))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):  # a start time: the earliest, not a sum
                    merged[key] = min(merged[key], sample.value)
                else:
                    merged[key] += sample.value
            view = Metric(family.name, family.documentation, family.type, family.unit)
            for (name, label_pairs), value in merged.items():
                view.add_sample(name, dict(label_pairs), value)
            yield view


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
