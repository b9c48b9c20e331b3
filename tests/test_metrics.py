"""Prometheus metrics: what the ledger observes, `/metrics` on a real server, and the Grafana dashboard.

The server is the real ASGI app under uvicorn on 127.0.0.1, driven by the official MCP client over
streamable HTTP; the scrape is parsed with prometheus_client's own parser. The Grafana dashboard's
every PromQL expression is checked against the metric and label names a scrape actually exposes.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Served, serving
from tokenledger.metrics import METRIC_NAMES, Metrics
from tokenledger.types import BudgetState, CheckResult, TrackResult

MODEL = "gpt-4o-mini"
TEST_TIMEOUT = 60
GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "tokenledger.json"
SECRET_USER = "ana-private-user"
SECRET_BUDGET = "secret-budget-name"

pytestmark = pytest.mark.anyio


# --- a server on loopback ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(served: Served, key: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30)
    ) as http:
        transport = streamable_http_client(f"{served.base}/mcp", http_client=http)
        async with Client(transport, read_timeout_seconds=30) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {result.content}"
    assert isinstance(result.structured_content, dict)
    return result.structured_content


# --- parsing a scrape --------------------------------------------------------------------------


@dataclass
class Scrape:
    text: str
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    @property
    def label_names(self) -> set[str]:
        return {label for series in self.samples.values() for labels, _ in series for label in labels}


def parse(text: str) -> Scrape:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(text, samples)


async def scrape_after_traffic(served: Served) -> tuple[Scrape, dict[str, Any]]:
    """Drive every observed path (allow, deny, usage with every token type, a tool error, alert
    deliveries) and return the scrape with what the calls answered."""
    admin, _ = await served.ledger.create_key(role="admin")
    seen: dict[str, Any] = {}
    async with mcp_client(served, admin) as client:
        await call(
            client,
            "manage_budget",
            action="set",
            name=SECRET_BUDGET,
            limit="1000",
            unit="tokens",
            period="day",
        )
        await call(
            client,
            "manage_budget",
            action="set",
            name="tiny",
            scope="feature:expensive",
            limit="10",
            unit="tokens",
            period="day",
        )
        allowed = await call(
            client, "check_budget", model=MODEL, input_tokens=100, max_output_tokens=200, user=SECRET_USER
        )
        seen["tracked"] = await call(
            client,
            "track_usage",
            model=MODEL,
            reservation_id=allowed["reservation_id"],
            user=SECRET_USER,
            input_tokens=100,
            output_tokens=150,
            cache_read_input_tokens=400,
            reasoning_output_tokens=50,
            latency_ms=1234,
            request_id="call-1",
        )
        replay = await call(
            client,
            "track_usage",
            model=MODEL,
            reservation_id=allowed["reservation_id"],
            user=SECRET_USER,
            input_tokens=100,
            output_tokens=150,
            cache_read_input_tokens=400,
            reasoning_output_tokens=50,
            latency_ms=1234,
            request_id="call-1",
        )
        assert replay["duplicate"] is True  # counted once, in the ledger and in the metrics
        denied = await call(client, "check_budget", model=MODEL, input_tokens=100, feature="expensive")
        assert denied["decision"] == "deny" and denied["blocked_by"]["reason"] == "limit"
        bad = await client.call_tool("check_budget", {"model": MODEL, "input_tokens": -1})
        assert bad.is_error
    # Over 50% of the budget: an alert in the outbox; deliver it to two sinks, one of them failing.
    deliveries = await served.ledger.claim_alert_deliveries(["webhook:0123456789ab", "log"])
    assert {d["sink"] for d in deliveries} == {"webhook:0123456789ab", "log"}
    for delivery in deliveries:
        if delivery["sink"] == "log":
            await served.ledger.finish_alert_delivery(delivery)
        else:
            await served.ledger.finish_alert_delivery(delivery, error="RuntimeError: 500", retry_seconds=2)
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{served.base}/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text), seen


# --- the ledger's observations ------------------------------------------------------------------


def _state(name: str) -> BudgetState:
    return BudgetState(
        name=name,
        scope=f"user:{SECRET_USER}",
        unit="tokens",
        limit=Decimal(10),
        period="day",
        timezone="UTC",
        enforcement="hard",
        used=Decimal(0),
        reserved=Decimal(0),
        remaining=Decimal(10),
        percent_used=0.0,
        status="ok",
    )


def test_observations_count_once_and_carry_no_user_or_budget() -> None:
    metrics = Metrics(process=False, models={"m1", "m2"}, providers={"openai"})
    check = CheckResult(
        allowed=True,
        decision="allow",
        input_tokens=10,
        requested_output_tokens=5,
        granted_output_tokens=5,
        method="provider",
        budgets=[_state(SECRET_BUDGET)],
    )
    metrics.observe_check(check, 0.002, tenant="acme")
    metrics.observe_check(check.model_copy(update={"duplicate": True}), 0.002, tenant="acme")
    tracked = TrackResult(
        usage_id="u1",
        input_tokens=10,
        output_tokens=5,
        total_tokens=15,
        cost_usd=Decimal("0.25"),
        priced=True,
        method="provider",
        budgets=[_state(SECRET_BUDGET)],
        occurred_at="2026-01-01T00:00:00+00:00",
    )
    for model in ("m1", "m2", "m3", "m4"):
        metrics.observe_usage(
            tracked, tenant="acme", provider="openai", model=model, status="success", latency_ms=None
        )
    metrics.observe_usage(
        tracked.model_copy(update={"duplicate": True}),
        tenant="acme",
        provider="x",
        model="m1",
        status="success",
        latency_ms=5,
    )
    metrics.known_tools(["check_budget"])
    metrics.observe_tool("check_budget", 0.01, ok=True, tenant="acme")
    metrics.observe_tool("no-such-tool-" + "x" * 50, 0.01, ok=False, tenant="acme")
    metrics.observe_alert_delivery("webhook:abc", tenant="acme", error=None, retry_seconds=None)
    metrics.observe_alert_delivery("custom:thing", tenant="acme", error="boom", retry_seconds=None)
    scrape = parse(metrics.tenant_exposition("acme").decode())
    # One tenant: its scrape is the process's total (but for the series' creation times).
    assert _without_created(scrape.text) == _without_created(metrics.process_exposition().decode())

    assert scrape.value("tokenledger_budget_decisions_total", decision="allow", reason="none") == 1
    assert scrape.value("tokenledger_reservation_seconds_count") == 1
    # The catalog's models by name, anything else `other`: a bounded label, whatever callers send.
    models = {labels["gen_ai_request_model"] for labels, _ in scrape.samples["tokenledger_cost_usd_total"]}
    assert models == {"m1", "m2", "other"}
    assert scrape.value("tokenledger_cost_usd_total") == pytest.approx(1.0)
    assert scrape.value("gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 40
    assert scrape.value("gen_ai_client_operation_duration_seconds_count") == 0  # the replay added nothing
    assert scrape.value("tokenledger_tool_seconds_count", tool="check_budget", outcome="ok") == 1
    assert scrape.value("tokenledger_tool_seconds_count", tool="other", outcome="error") == 1
    assert scrape.value("tokenledger_alert_deliveries_total", sink="webhook", result="delivered") == 1
    assert scrape.value("tokenledger_alert_deliveries_total", sink="other", result="failed") == 1
    assert SECRET_USER not in scrape.text and SECRET_BUDGET not in scrape.text
    assert "tenant" not in scrape.label_names and "acme" not in scrape.text


def _without_created(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_created" not in line]


def test_tenants_past_the_bound_count_in_the_process_total_only(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(process=False, max_tenants=2)
    check = CheckResult(
        allowed=True,
        decision="allow",
        input_tokens=1,
        requested_output_tokens=1,
        granted_output_tokens=1,
        method="provider",
    )
    for tenant in ("a", "b", "c", "d"):
        metrics.observe_check(check, 0.001, tenant=tenant)

    def decisions(text: bytes) -> float:
        return parse(text.decode()).value("tokenledger_budget_decisions_total")

    assert [decisions(metrics.tenant_exposition(t)) for t in "abcd"] == [1, 1, 0, 0]
    assert decisions(metrics.process_exposition()) == 4
    assert sum("over 2 tenants" in r.getMessage() for r in caplog.records) == 1
    metrics.observe_check(check, 0.001, tenant="")  # no tenant (no principal): the process's only
    assert decisions(metrics.tenant_exposition("")) == 0 and decisions(metrics.process_exposition()) == 5


# --- /metrics on a real server ------------------------------------------------------------------


async def test_metrics_after_traffic(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            scrape, seen = await scrape_after_traffic(served)
    tracked = seen["tracked"]
    model = {"gen_ai_request_model": MODEL, "gen_ai_provider_name": "openai"}
    for token_type, expected in [("input", 100), ("output", 150), ("cache_read", 400), ("reasoning", 50)]:
        assert (
            scrape.value("gen_ai_client_token_usage_sum", gen_ai_token_type=token_type, **model) == expected
        )
        assert scrape.value("gen_ai_client_token_usage_count", gen_ai_token_type=token_type, **model) == 1
    assert scrape.value("gen_ai_client_token_usage_count", gen_ai_token_type="cache_creation") == 0
    assert scrape.value("tokenledger_cost_usd_total", **model) == pytest.approx(float(tracked["cost_usd"]))
    assert scrape.value("tokenledger_usage_records_total", status="success", priced="true") == 1
    assert scrape.value("gen_ai_client_operation_duration_seconds_sum", **model) == pytest.approx(1.234)
    assert scrape.value("tokenledger_budget_decisions_total", decision="allow") == 1
    assert scrape.value("tokenledger_budget_decisions_total", decision="deny", reason="limit") == 1
    assert scrape.value("tokenledger_reservation_seconds_count") == 2
    assert 0 < scrape.value("tokenledger_reservation_seconds_sum") < 5
    assert scrape.value("tokenledger_tool_seconds_count", tool="check_budget", outcome="ok") == 2
    assert scrape.value("tokenledger_tool_seconds_count", tool="check_budget", outcome="error") == 1
    assert scrape.value("tokenledger_tool_seconds_count", tool="track_usage", outcome="ok") == 2
    assert scrape.value("tokenledger_alert_deliveries_total", sink="log", result="delivered") == 1
    assert scrape.value("tokenledger_alert_deliveries_total", sink="webhook", result="retry") == 1
    # A tenant's scrape leaves out the process's own figures (CPU, memory): every tenant's load.
    assert "process_cpu_seconds_total" not in scrape.samples
    # Privacy and cardinality: no user, budget or tenant appears anywhere in a scrape.
    assert SECRET_USER not in scrape.text and SECRET_BUDGET not in scrape.text
    assert not {"user", "user_id", "budget", "tenant", "tenant_id"} & scrape.label_names
    exposed = {name.removesuffix("_total") for name in scrape.samples} | {
        re.sub(r"_(bucket|sum|count)$", "", name) for name in scrape.samples
    }
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= exposed


async def test_metrics_need_an_admin_or_viewer_key(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served, httpx2.AsyncClient(timeout=10) as http:
            url = f"{served.base}/metrics"
            viewer, _ = await served.ledger.create_key(role="viewer")
            member, _ = await served.ledger.create_key(role="member", user="ana")
            assert (await http.get(url)).status_code == 401
            assert (await http.get(url, headers={"Authorization": "Bearer tl_nope"})).status_code == 401
            refused = await http.get(url, headers={"Authorization": f"Bearer {member}"})
            assert refused.status_code == 403 and "admin, viewer" in refused.json()["error_description"]
            answer = await http.get(url, headers={"Authorization": f"Bearer {viewer}"})
            assert answer.status_code == 200 and "tokenledger_budget_decisions" in answer.text
            wrong_host = await http.get(
                url, headers={"Authorization": f"Bearer {viewer}", "Host": "evil.example"}
            )
            assert wrong_host.status_code == 421


async def test_the_scrape_token_reads_the_whole_process(dsn: str) -> None:
    token = "scrape-" + "s3cret" * 4
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn, metrics_token=token) as served, httpx2.AsyncClient(timeout=10) as http:
            url = f"{served.base}/metrics"
            admin, _ = await served.ledger.create_key(role="admin")
            process = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            assert process.status_code == 200 and parse(process.text).value("process_cpu_seconds_total") > 0
            tenant = await http.get(url, headers={"Authorization": f"Bearer {admin}"})
            assert tenant.status_code == 200 and "process_cpu_seconds_total" not in tenant.text
            assert (await http.get(url, headers={"Authorization": f"Bearer {token}x"})).status_code == 401
            assert (await http.get(url)).status_code == 401
            # The token opens /metrics only: it is no API key.
            mcp = await http.post(f"{served.base}/mcp", json={}, headers={"Authorization": f"Bearer {token}"})
            assert mcp.status_code == 401


# --- the Grafana dashboard ----------------------------------------------------------------------

PROMQL_WORDS = {
    # functions
    "rate", "irate", "increase", "sum", "avg", "min", "max", "count", "histogram_quantile", "topk",
    "bottomk", "clamp_min", "clamp_max", "abs", "round", "vector", "scalar", "delta", "deriv",
    "label_replace", "sort_desc", "sort", "time", "absent", "quantile", "stddev", "group", "count_values",
    "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "last_over_time",
    # keywords
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
}  # fmt: skip


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression."""
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {name.strip() for name in grouping.split(",") if name.strip()}
    bare = re.sub(r"\{[^}]*\}", " ", expr)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # ranges, $__rate_interval included
    bare = re.sub(r'"[^"]*"', " ", bare)
    bare = re.sub(r"\$\w+", " ", bare)
    identifiers = set(re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", bare))
    return {word for word in identifiers if word not in PROMQL_WORDS and not word.isdigit()}, labels


def grafana_expressions() -> list[str]:
    board = json.loads(GRAFANA.read_text())
    expressions: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                expressions.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(board)
    return expressions


def test_grafana_dashboard_is_importable() -> None:
    board = json.loads(GRAFANA.read_text())
    assert board["title"] and board["uid"] and board["panels"]
    titles = " ".join(panel["title"].lower() for panel in board["panels"])
    for subject in ("token", "cost", "decision", "reservation", "alert"):
        assert subject in titles, subject
    # A datasource variable (not an import-time input), so file provisioning works as well as import.
    variables = {item["name"]: item for item in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])
    assert len(grafana_expressions()) >= 6


async def test_grafana_queries_use_only_exposed_names(dsn: str) -> None:
    with anyio.fail_after(TEST_TIMEOUT):
        async with serving(dsn) as served:
            scrape, _ = await scrape_after_traffic(served)
    exposed_labels = scrape.label_names | {"le"}
    for expr in grafana_expressions():
        metrics, labels = promql_names(expr)
        assert metrics, f"no metric in {expr!r}"
        unknown = metrics - set(scrape.samples)
        assert not unknown, f"{expr!r} uses {sorted(unknown)}, which /metrics does not expose"
        assert labels <= exposed_labels, f"{expr!r} uses labels {sorted(labels - exposed_labels)}"


def test_promql_names() -> None:
    metrics, labels = promql_names(
        'histogram_quantile(0.99, sum by (le) (rate(tokenledger_reservation_seconds_bucket{decision!="deny"}'
        "[$__rate_interval])))"
    )
    assert metrics == {"tokenledger_reservation_seconds_bucket"} and labels == {"le", "decision"}
