"""`Ledger`: the one API. Every tool, command and integration is a thin mapping onto its methods.

Python prepares (counts tokens, resolves the model and its catalog price, checks the caller's role),
the database decides (one SQL function per operation), and Python explains (pydantic models,
a suggested model when a request is denied).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from tokenledger import dashboard as dashboards
from tokenledger import reports, tokens
from tokenledger.catalog import Catalog, cost
from tokenledger.errors import InvalidInput, NotFound, PermissionDenied, UnknownModel
from tokenledger.settings import Settings
from tokenledger.store import Store, resolve_dsn
from tokenledger.types import (
    MAX_METADATA_BYTES,
    Attribution,
    Budget,
    BudgetChange,
    BudgetSpec,
    BudgetState,
    ChatMessage,
    CheckRequest,
    CheckResult,
    CountRequest,
    CountResult,
    FitRequest,
    FitResult,
    GroupKey,
    Method,
    ModelInfo,
    Price,
    PriceSpec,
    Principal,
    ReleaseResult,
    TokenCount,
    TrackRequest,
    TrackResult,
    UsageQuery,
    UsageResult,
    UsageRow,
)

if TYPE_CHECKING:
    from tokenledger.metrics import Metrics

__all__ = ["Ledger"]

ATTRIBUTION_FIELDS = ("user", "session", "project", "team", "feature", "endpoint")
SCOPE_KINDS = ("team", "project", "user", "session", "feature", "endpoint")
# Budget fields a `set` may clear with null; null on any other field keeps its value.
CLEARABLE_BUDGET_FIELDS = frozenset(
    {"hard_limit", "priority_shares", "rollover_cap", "tokens_per_minute", "requests_per_minute"}
)
# Estimates are calibrated from the provider's reported usage once a model has this many settled calls;
# the factor is kept this long per process, and held within these bounds.
CALIBRATION_MIN_CALLS = 5
CALIBRATION_TTL_SECONDS = 300.0
CALIBRATION_BOUNDS = (0.5, 3.0)
# Texts above this are counted in a worker thread; below it the hand-off costs more than the count.
THREAD_COUNT_THRESHOLD = 64 * 1024
MAX_REPORT_ROWS = 10_000  # time buckets of a timeseries report


def _request_hash(request: Any) -> str:
    """A fingerprint of a request's content (its request_id excluded), for idempotent replays."""
    content = request.model_dump(mode="json", exclude={"request_id"}, exclude_none=True)
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _price_params(price: Price) -> dict[str, str | None]:
    return {name: None if value is None else str(value) for name, value in price.model_dump().items()}


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Ledger:
    """Counts, checks, reserves, settles and reports. One instance per process, over a connection pool."""

    def __init__(
        self, store: Store, *, catalog: Catalog | None = None, counter: tokens.TokenCounter | None = None
    ) -> None:
        self.store = store
        self.catalog = catalog or Catalog()
        self.counter = counter or tokens.TokenCounter()
        self._calibration: dict[tuple[str, str], tuple[float | None, float]] = {}
        self.metrics: Metrics | None = None  # the HTTP server's Prometheus metrics, when it serves them

    @classmethod
    async def open(
        cls, settings: Settings | None = None, *, dsn: str | None = None, migrate: bool = True
    ) -> Ledger:
        """A ledger over the configured database (the embedded one when none is configured)."""
        settings = settings or Settings.from_env()
        if dsn is None:
            dsn = await anyio.to_thread.run_sync(resolve_dsn, settings)
        store = await Store.open(
            dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size, migrate=migrate
        )
        return cls(store)

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def ping(self) -> None:
        """Return when PostgreSQL answers; raise StoreUnavailable otherwise."""
        await self.store.ping()

    # --- models -----------------------------------------------------------------------------------

    async def model_info(self, name: str, principal: Principal | None = None) -> ModelInfo:
        """The catalog entry of a model, with the tenant's price override in force now, if any."""
        principal = principal or Principal()
        overrides = await self.store.price_overrides(tenant=principal.tenant_id, model=name)
        now = datetime.now(UTC)
        current = next((o for o in overrides if o["effective_from"] <= now), None)
        try:
            info = self.catalog.resolve(name)
        except UnknownModel:
            if not overrides:
                raise
            # A model the catalog does not know but the tenant priced: count it as an estimate.
            info = ModelInfo(
                name=name,
                provider="custom",
                encoding="o200k_base",
                count_method="estimate",
                estimate_rule="o200k_base count: the catalog does not know this model",
            )
        if current is not None:
            info = info.model_copy(
                update={
                    "price": Price(
                        **{
                            k: current[k]
                            for k in ("input", "output", "cache_read", "cache_write", "reasoning")
                        }
                    ),
                    "source": "tenant override",
                    "effective_from": current["effective_from"],
                }
            )
        return info

    def _catalog_model(self, name: str) -> ModelInfo:
        return self.catalog.resolve(name)

    async def _model_for_call(self, name: str, principal: Principal) -> tuple[ModelInfo, Price]:
        """The model that counts a call, and its bundled price. The database is asked only for a model the
        catalog does not know (a tenant may price its own); it applies the tenant's override in force at
        the call's time itself, so the price passed down is the catalog's (none for such a model)."""
        try:
            model = self.catalog.resolve(name)
        except UnknownModel:
            return await self.model_info(name, principal), Price()
        return model, model.price

    # --- counting ---------------------------------------------------------------------------------

    async def count_tokens(self, request: CountRequest) -> CountResult:
        """Count a text, texts or chat messages (with tools) for a model or encoding. Needs no database."""
        given = [name for name in ("text", "texts", "messages") if getattr(request, name) is not None]
        if len(given) != 1:
            raise InvalidInput("text", given or None, "give exactly one of text, texts or messages")
        if request.tools is not None and request.messages is None:
            raise InvalidInput("tools", "...", "tools are counted with messages; give messages too")
        model = self._catalog_model(request.model) if request.model else None
        encoding = request.encoding if model is None else None
        count = await self._count(
            request.text, request.texts, request.messages, request.tools, model, encoding
        )
        result = CountResult(**count.model_dump())
        if model is not None:
            fit = tokens.context_fit(count.tokens, model, request.max_output_tokens or 0)
            estimate = cost(
                model.price, input_tokens=count.tokens, output_tokens=request.max_output_tokens or 0
            )
            result = result.model_copy(
                update={
                    **fit.model_dump(),
                    "estimated_cost_usd": estimate.cost_usd,
                    "priced": estimate.priced,
                }
            )
        return result

    async def _count(
        self,
        text: str | None,
        texts: list[str] | None,
        messages: list[ChatMessage] | None,
        tools_: list[dict[str, Any]] | None,
        model: ModelInfo | None,
        encoding: str | None,
    ) -> TokenCount:
        size = (
            len(text or "")
            + sum(len(t) for t in texts or ())
            + sum(len(str(m.content or "")) for m in messages or ())
        )
        work: Callable[[], TokenCount]
        if text is not None:
            work = partial(self.counter.count_text, text, model=model, encoding=encoding)
        elif texts is not None:
            work = partial(self.counter.count_texts, texts, model=model, encoding=encoding)
        else:
            assert messages is not None
            work = partial(
                self.counter.count_messages, messages, model=model, encoding=encoding, tools=tools_
            )
        if size >= THREAD_COUNT_THRESHOLD:
            return await anyio.to_thread.run_sync(work)
        return work()

    async def fit_messages(self, request: FitRequest) -> FitResult:
        """Drop the oldest turns until the conversation fits the model's context with room for output."""
        model = self._catalog_model(request.model)
        return await anyio.to_thread.run_sync(
            partial(
                self.counter.fit_messages,
                request.messages,
                model,
                request.max_tokens,
                keep_system=request.keep_system,
                keep_last=request.keep_last,
            )
        )

    # --- the ledger -------------------------------------------------------------------------------

    async def check_budget(self, request: CheckRequest, principal: Principal | None = None) -> CheckResult:
        """Check a request against every matching budget and rate limit, and reserve it when allowed."""
        principal = principal or Principal()
        attribution = self._attribution(request, principal, action="check budgets")
        model, catalog_price = await self._model_for_call(request.model, principal)
        given = [n for n in ("input_tokens", "text", "messages") if getattr(request, n) is not None]
        if len(given) != 1:
            raise InvalidInput(
                "input_tokens", given or None, "give exactly one of input_tokens, text or messages"
            )
        method: Method
        factor: float | None = None
        counted: int | None = None
        if request.input_tokens is not None:
            input_tokens, method = request.input_tokens, "provider"
        else:
            count = await self._count(request.text, None, request.messages, None, model, None)
            input_tokens, method = count.tokens, count.method
            if method == "estimate":
                counted = input_tokens  # kept raw, so later calibration compares like with like
                if factor := await self.estimate_factor(model.name, principal):
                    input_tokens = math.ceil(input_tokens * factor)
        started = time.perf_counter()
        answer = await self.store.check(
            tenant=principal.tenant_id,
            request_id=request.request_id,
            request_hash=_request_hash(request) if request.request_id else "",
            model=model.name,
            attribution=attribution,
            input_tokens=input_tokens,
            max_output_tokens=request.max_output_tokens,
            priority=request.priority,
            allow_partial=request.allow_partial,
            reserve=request.reserve,
            ttl_seconds=request.ttl_seconds,
            catalog_price=_price_params(catalog_price),
            method=method,
            prompt_hash=request.prompt_hash or reports.prompt_hash(request.text, request.messages),
            counted_input_tokens=counted,
        )
        result = CheckResult.model_validate(answer)
        result.budgets = _visible_states(principal, result.budgets)
        if factor is not None:
            result.calibration_factor = factor
        if self.metrics is not None:
            self.metrics.observe_check(result, time.perf_counter() - started)
        extra_warnings = self._context_warnings(model, input_tokens, request.max_output_tokens)
        suggestion = self._suggest_model(result, model, input_tokens, request.max_output_tokens)
        if extra_warnings or suggestion:
            result = result.model_copy(
                update={"warnings": [*result.warnings, *extra_warnings], "suggested_model": suggestion}
            )
        return result

    async def estimate_factor(self, model: str, principal: Principal | None = None) -> float | None:
        """How this tenant's provider-reported input for `model` compares with our pre-flight estimates
        (actual / estimated over its latest settled calls), or None until there are enough calls."""
        principal = principal or Principal()
        key = (principal.tenant_id, model)
        cached = self._calibration.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        seen = await self.store.estimate_calibration(tenant=principal.tenant_id, model=model)
        factor = None
        if seen["calls"] >= CALIBRATION_MIN_CALLS and seen["estimated"] > 0:
            low, high = CALIBRATION_BOUNDS
            factor = round(min(max(seen["actual"] / seen["estimated"], low), high), 4)
        self._calibration[key] = (factor, time.monotonic() + CALIBRATION_TTL_SECONDS)
        return factor

    def _context_warnings(self, model: ModelInfo, input_tokens: int, max_output: int) -> list[str]:
        if model.context_window and input_tokens + max_output > model.context_window:
            return [
                f"input {input_tokens} + output {max_output} tokens exceed {model.name}'s context window "
                f"of {model.context_window}"
            ]
        return []

    def _suggest_model(
        self, result: CheckResult, model: ModelInfo, input_tokens: int, max_output: int
    ) -> str | None:
        """The cheapest catalog model that fits the context and what the blocking USD budget has left."""
        if result.decision != "deny" or result.blocked_by is None:
            return None
        blocking = next((b for b in result.budgets if b.name == result.blocked_by.budget), None)
        if (
            blocking is None
            or blocking.unit != "usd"
            or not result.blocked_by.reason.endswith(("limit", "share"))
        ):
            return None
        cheaper = self.catalog.cheapest(
            input_tokens, max(max_output, 1), max_cost_usd=result.blocked_by.remaining, exclude=model.name
        )
        return cheaper.name if cheaper else None

    async def track_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult:
        """Record a call's usage (settling its reservation if given); a replayed request_id counts once."""
        principal = principal or Principal()
        attribution = self._attribution(request, principal, action="track usage")
        metadata_json = json.dumps(request.metadata, default=str)
        if len(metadata_json) > MAX_METADATA_BYTES:
            raise InvalidInput("metadata", "...", f"at most {MAX_METADATA_BYTES} bytes of JSON")
        if "\\u0000" in metadata_json:
            raise InvalidInput(
                "metadata", "...", "text without NUL characters (PostgreSQL cannot store them)"
            )
        model, catalog_price = await self._model_for_call(request.model, principal)
        input_tokens, output_tokens, method = await self._usage_counts(request, model)
        if request.reasoning_output_tokens > output_tokens:
            raise InvalidInput(
                "reasoning_output_tokens",
                request.reasoning_output_tokens,
                f"reasoning tokens are part of output_tokens ({output_tokens}); at most that",
            )
        answer = await self.store.track(
            tenant=principal.tenant_id,
            request_id=request.request_id,
            request_hash=_request_hash(request) if request.request_id else "",
            reservation_id=request.reservation_id,
            model=model.name,
            provider=request.provider or model.provider,
            attribution=attribution,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=request.cache_read_input_tokens,
            cache_creation_input_tokens=request.cache_creation_input_tokens,
            reasoning_output_tokens=request.reasoning_output_tokens,
            reported_cost=request.cost_usd,
            catalog_price=_price_params(catalog_price),
            method=method,
            status=request.status,
            latency_ms=request.latency_ms,
            tools_used=list(request.tools_used),
            metadata=request.metadata,
            occurred_at=request.occurred_at,
            estimated_input_tokens=None,
            prompt_hash=request.prompt_hash or reports.prompt_hash(request.input_text),
        )
        result = TrackResult.model_validate(answer)
        result.budgets = _visible_states(principal, result.budgets)
        shown = {state.name for state in result.budgets}
        result.alerts = [alert for alert in result.alerts if alert.budget in shown]
        if self.metrics is not None:
            self.metrics.observe_usage(
                result,
                provider=request.provider or model.provider,
                model=model.name,
                status=request.status,
                latency_ms=request.latency_ms,
            )
        return result

    async def _usage_counts(self, request: TrackRequest, model: ModelInfo) -> tuple[int, int, Method]:
        """Token counts given win; texts are counted when counts are absent."""
        if request.input_tokens is None and request.input_text is None:
            raise InvalidInput("input_tokens", None, "give input_tokens or input_text")
        if request.output_tokens is None and request.output_text is None:
            raise InvalidInput("output_tokens", None, "give output_tokens or output_text")
        methods: list[Method] = []
        input_tokens, output_tokens = request.input_tokens, request.output_tokens
        if input_tokens is None:
            count = await self._count(request.input_text, None, None, None, model, None)
            input_tokens = count.tokens
            methods.append(count.method)
        if output_tokens is None:
            count = await self._count(request.output_text, None, None, None, model, None)
            output_tokens = count.tokens
            methods.append(count.method)
        method: Method = "provider" if not methods else ("estimate" if "estimate" in methods else "exact")
        return input_tokens, output_tokens, method

    async def release(self, reservation_id: str, principal: Principal | None = None) -> ReleaseResult:
        """Give a reservation's capacity back: the call it was for was not made."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "release reservations")
        answer = await self.store.release(
            tenant=principal.tenant_id,
            reservation_id=reservation_id,
            user=principal.user if principal.role == "member" else None,
        )
        return ReleaseResult.model_validate(answer)

    async def expire_reservations(self, limit: int = 500) -> int:
        """Release every reservation past its expiry (all tenants); returns how many."""
        return await self.store.expire_reservations(limit=limit)

    # --- budgets ----------------------------------------------------------------------------------

    async def set_budget(
        self,
        spec: BudgetSpec | BudgetChange,
        principal: Principal | None = None,
        *,
        reset_counters: bool = False,
    ) -> Budget:
        """Create a budget, or change only the fields `spec` gives of the one by that name (the others
        keep their values). A change of scope, unit, period or timezone would discard the current period's
        usage and reservations: it is refused while there are any, unless `reset_counters` confirms it."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "change budgets")
        changes = _given_budget_fields(spec)
        found = await self.store.budgets(tenant=principal.tenant_id, name=spec.name)
        current = Budget.model_validate(found[0]) if found else None
        if current is None and changes.get("limit") is None:
            raise InvalidInput("limit", None, f"a positive amount, required to create budget {spec.name!r}")
        base = current.spec.model_dump(mode="json") if current is not None else {}
        merged = BudgetSpec.model_validate({**base, **changes})
        _validate_budget(merged)
        answer = await self.store.set_budget(
            tenant=principal.tenant_id,
            actor=principal.actor,
            spec=merged.model_dump(mode="json"),
            expected_updated_at=None if current is None else current.updated_at,
            reset_counters=reset_counters,
        )
        return Budget.model_validate(answer)

    async def get_budget(self, name: str, principal: Principal | None = None) -> Budget:
        """One budget the principal may read; another user's looks absent to a member."""
        principal = principal or Principal()
        found = await self.store.budgets(tenant=principal.tenant_id, name=name)
        visible = _visible_budgets(principal, [Budget.model_validate(b) for b in found])
        if not visible:
            raise NotFound(f"name {name!r}: no such budget in this tenant")
        return visible[0]

    async def list_budgets(self, principal: Principal | None = None) -> list[Budget]:
        """The budgets the principal may read (see `may_read_budget`), by name."""
        principal = principal or Principal()
        found = await self.store.budgets(tenant=principal.tenant_id)
        return _visible_budgets(principal, [Budget.model_validate(b) for b in found])

    async def delete_budget(self, name: str, principal: Principal | None = None) -> BudgetSpec:
        principal = principal or Principal()
        self._require(principal, ("admin",), "change budgets")
        answer = await self.store.delete_budget(tenant=principal.tenant_id, actor=principal.actor, name=name)
        return BudgetSpec.model_validate(answer)

    # --- prices -----------------------------------------------------------------------------------

    async def set_price(self, spec: PriceSpec, principal: Principal | None = None) -> ModelInfo:
        """Override a model's catalog price for this tenant from `effective_from` (default: now)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "change prices")
        effective_from = spec.effective_from or datetime.now(UTC)
        price = _price_params(Price(**spec.model_dump(exclude={"model", "effective_from"})))
        await self.store.set_price(
            tenant=principal.tenant_id,
            actor=principal.actor,
            model=spec.model,
            effective_from=effective_from,
            price=price,
        )
        return await self.model_info(spec.model, principal)

    async def get_price(self, model: str, principal: Principal | None = None) -> ModelInfo:
        return await self.model_info(model, principal)

    async def list_price_overrides(self, principal: Principal | None = None) -> list[dict[str, Any]]:
        principal = principal or Principal()
        return await self.store.price_overrides(tenant=principal.tenant_id)

    # --- usage ------------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery, principal: Principal | None = None) -> UsageResult:
        """Usage aggregated by any of user, session, project, team, feature, endpoint, provider, model and
        a time bucket. A member sees only its own user's usage."""
        principal = principal or Principal()
        filters, since, until = self._report_scope(query, principal, timedelta(days=30))
        return await self._usage(
            principal.tenant_id,
            filters,
            since,
            until,
            query.timezone,
            group_by=query.group_by,
            bucket=query.bucket,
            limit=query.limit,
        )

    async def _usage(
        self,
        tenant: str,
        filters: dict[str, str],
        since: datetime,
        until: datetime,
        timezone: str,
        *,
        group_by: Sequence[str],
        bucket: str | None,
        limit: int,
    ) -> UsageResult:
        """The window's groups (at most `limit`) and its totals, from one scan."""
        _validate_timezone(timezone, "timezone")
        rows, totals = await self.store.usage_report(
            tenant=tenant,
            since=since,
            until=until,
            filters=filters,
            group_by=group_by,
            bucket=bucket,
            timezone=timezone,
            limit=limit,
        )
        return UsageResult(
            since=since,
            until=until,
            rows=[_usage_row(row, group_by) for row in rows],
            totals=_usage_row(totals, ()),
        )

    # --- reports ----------------------------------------------------------------------------------

    async def report(self, query: reports.ReportQuery, principal: Principal | None = None) -> reports.Report:
        """One report view (rows, totals, notes; json): usage views cover a member's own user only,
        budgets and forecasts the budgets the principal may read. Render it with `reports.formatted`."""
        principal = principal or Principal()
        view = query.view
        if view == "budgets":
            return reports.budgets_report(await self.list_budgets(principal), now=datetime.now(UTC))
        if view in ("summary", "usage", "timeseries"):
            return await self._usage_report(query, principal)
        default_window = reports.FORECAST_WINDOW if view == "forecast" else timedelta(days=30)
        filters, since, until = self._report_scope(query, principal, default_window)
        tenant = principal.tenant_id
        if view == "forecast":
            budgets = await self.list_budgets(principal)
            kinds = [budget.spec.scope.partition(":")[0] for budget in budgets]
            use = await self.store.budget_window_use(
                tenant=tenant, since=since, until=until, scope_kinds=kinds
            )
            return reports.forecast_report(budgets, use, since, until)
        if view == "top":
            rows = await self.store.top_usage(
                tenant=tenant, since=since, until=until, filters=filters, limit=query.limit
            )
            return reports.top_report(rows, since, until)
        if view == "accuracy":
            rows = await self.store.estimate_accuracy(
                tenant=tenant, since=since, until=until, filters=filters
            )
            return reports.accuracy_report(rows, since, until)
        windows = {m.name: m.context_window for m in self.catalog.search(limit=10_000) if m.context_window}
        stats = await self.store.model_usage_stats(
            tenant=tenant, since=since, until=until, filters=filters, context_windows=windows
        )
        return reports.recommendations_report(stats, self.catalog, since, until)

    async def _usage_report(self, query: reports.ReportQuery, principal: Principal) -> reports.Report:
        """Summary, usage or timeseries: the groups and the totals of the window in one scan."""
        filters, since, until = self._report_scope(query, principal, timedelta(days=30))
        _validate_timezone(query.timezone, "timezone")  # before the bucket query uses it
        group_by = [] if query.view == "summary" else query.group_by
        bucket = (query.bucket or "day") if query.view == "timeseries" else query.bucket
        buckets: list[datetime] = []
        if query.view == "timeseries":
            assert bucket is not None
            buckets = await self.store.usage_buckets(
                since=since, until=until, bucket=bucket, timezone=query.timezone, limit=MAX_REPORT_ROWS + 1
            )
            if len(buckets) > MAX_REPORT_ROWS:
                raise InvalidInput(
                    "bucket", bucket, f"at most {MAX_REPORT_ROWS:,} buckets: a coarser bucket or window"
                )
        result = await self._usage(
            principal.tenant_id,
            filters,
            since,
            until,
            query.timezone,
            group_by=group_by,
            bucket=None if query.view == "summary" else bucket,
            limit=MAX_REPORT_ROWS if query.view == "timeseries" else query.limit,
        )
        if query.view == "timeseries":
            assert bucket is not None
            return reports.timeseries_report(result, buckets, bucket, query.timezone)
        return reports.usage_report(result, "summary" if query.view == "summary" else "usage")

    def _report_scope(
        self, query: UsageQuery, principal: Principal, default_window: timedelta
    ) -> tuple[dict[str, str], datetime, datetime]:
        """The filters (a member's bound to its own user) and the window [since, until) of a report."""
        filters = {
            k: v for k in (*ATTRIBUTION_FIELDS, "model", "provider") if (v := getattr(query, k)) is not None
        }
        if principal.role == "member":
            if filters.get("user", principal.user) != principal.user:
                raise PermissionDenied(
                    f"user {filters['user']!r}: a member key reads only its own user's usage"
                )
            filters["user"] = principal.user or ""
        until = query.until or datetime.now(UTC)
        since = query.since or until - default_window
        if since >= until:
            raise InvalidInput("since", since.isoformat(), f"must be before until ({until.isoformat()})")
        return filters, since, until

    # --- alerts and retention ---------------------------------------------------------------------

    async def claim_alert_deliveries(
        self, sinks: Sequence[str], *, limit: int = 100, lease_seconds: float = 30
    ) -> list[dict[str, Any]]:
        """Alerts due for these sinks (all tenants), claimed by this caller alone for `lease_seconds`."""
        return await self.store.claim_alert_deliveries(sinks=sinks, limit=limit, lease_seconds=lease_seconds)

    async def finish_alert_delivery(
        self, delivery: dict[str, Any], *, error: str | None = None, retry_seconds: float | None = None
    ) -> None:
        """Record a delivery: done when `error` is None, else retried after `retry_seconds` (None: stop)."""
        await self.store.finish_alert_delivery(
            tenant=delivery["tenant_id"],
            alert_id=delivery["alert_id"],
            sink=delivery["sink"],
            error=error,
            retry_seconds=retry_seconds,
        )
        if self.metrics is not None:
            self.metrics.observe_alert_delivery(delivery["sink"], error=error, retry_seconds=retry_seconds)

    async def ensure_usage_partitions(self, months_ahead: int = 3) -> int:
        """Create the monthly usage partitions of the next months; returns how many were new."""
        return await self.store.ensure_usage_partitions(months_ahead)

    async def forecast_alerts(self, *, min_elapsed: float = 0.1) -> int:
        """Write an alert for each budget period on course to run out before it ends."""
        return await self.store.forecast_alerts(min_elapsed=min_elapsed)

    async def prune_usage(self, older_than: timedelta, principal: Principal | None = None) -> dict[str, Any]:
        """Drop whole monthly usage partitions older than `older_than`, keeping their daily totals."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "prune usage")
        if older_than < timedelta(days=1):
            raise InvalidInput("older_than", str(older_than), "at least 1 day")
        return await self.store.prune_usage(before=datetime.now(UTC) - older_than)

    # --- API keys ---------------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        role: str,
        user: str | None = None,
        tenant: str | None = None,
        name: str | None = None,
        principal: Principal | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A new API key (shown once) and its stored record; only the key's hash is kept."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "create keys")
        tenant = tenant or principal.tenant_id
        checked = Principal.model_validate({"tenant_id": tenant, "role": role, "user": user})
        if checked.role == "member" and not checked.user:
            raise InvalidInput("user", None, "a member key is bound to a user: give --user")
        key_id = secrets.token_hex(6)
        key = f"tl_{key_id}_{secrets.token_urlsafe(24)}"
        record = await self.store.create_key(
            tenant=tenant,
            key_id=key_id,
            key_hash=_hash_key(key),
            role=checked.role,
            user=user,
            name=name,
            actor=principal.actor,
        )
        return key, record

    async def list_keys(self, principal: Principal | None = None) -> list[dict[str, Any]]:
        principal = principal or Principal()
        self._require(principal, ("admin",), "list keys")
        return await self.store.list_keys(tenant=principal.tenant_id)

    async def revoke_key(self, key_id: str, principal: Principal | None = None) -> dict[str, Any]:
        principal = principal or Principal()
        self._require(principal, ("admin",), "revoke keys")
        return await self.store.revoke_key(tenant=principal.tenant_id, key_id=key_id, actor=principal.actor)

    async def authenticate(self, key: str) -> Principal | None:
        """The principal of a live API key, or None for an unknown or revoked key."""
        if not key.startswith("tl_") or len(key) > 200:
            return None
        record = await self.store.key_by_hash(_hash_key(key))
        if record is None:
            return None
        return Principal(
            tenant_id=record["tenant_id"],
            role=record["role"],
            user=record["user_id"],
            key_id=record["key_id"],
        )

    # --- dashboard --------------------------------------------------------------------------------

    async def dashboard(
        self, principal: Principal | None = None, *, days: int = 30, timezone: str = "UTC", top: int = 10
    ) -> dashboards.Dashboard:
        """What the web dashboard shows a principal over the last `days` days: a viewer or admin its
        tenant, a member its own user's usage and decisions and the budgets it may read."""
        principal = principal or Principal()
        if not 1 <= days <= 366:
            raise InvalidInput("days", days, "a whole number of days, 1 to 366")
        if not 1 <= top <= 100:
            raise InvalidInput("top", top, "1 to 100")
        _validate_timezone(timezone, "timezone")
        until = datetime.now(UTC)
        since = dashboards.window_start(until, days, timezone)
        member = principal.role == "member"
        budgets = [b.state for b in await self.list_budgets(principal)]
        window = UsageQuery(since=since, until=until, timezone=timezone)
        by_day = window.model_copy(update={"bucket": "day", "limit": days + 1})
        daily = await self.usage(by_day, principal)
        tops: dict[str, list[UsageRow]] = {}
        keys: tuple[GroupKey, ...] = ("project", "model") if member else ("user", "project", "model")
        for key in keys:
            grouped = window.model_copy(update={"group_by": [key], "limit": top})
            tops[key] = (await self.usage(grouped, principal)).rows
        return dashboards.Dashboard(
            tenant=principal.tenant_id,
            role=principal.role,
            user=principal.user if member else None,
            timezone=timezone,
            since=since,
            until=until,
            budgets=budgets,
            daily=dashboards.daily_series(daily.rows, since=since, days=days, timezone=timezone),
            totals=daily.totals,
            top_users=tops.get("user", []),
            top_projects=tops["project"],
            top_models=tops["model"],
            decisions=await self.recent_decisions(principal),
            alerts=await self.open_alerts(principal),
        )

    async def recent_decisions(
        self, principal: Principal | None = None, *, limit: int = 20
    ) -> list[dashboards.Decision]:
        """The newest denials and would-be denials: the tenant's, or a member's own."""
        principal = principal or Principal()
        rows = await self.store.recent_decisions(
            tenant=principal.tenant_id,
            user=(principal.user or "") if principal.role == "member" else None,
            limit=limit,
        )
        return [
            dashboards.Decision(
                decided_at=r["decided_at"],
                budget=r["budget_name"],
                decision=r["decision"],
                reason=r["reason"],
                enforcement=r["enforcement"],
                user=r["user_id"],
                model=r["model"],
            )
            for r in rows
        ]

    async def open_alerts(
        self, principal: Principal | None = None, *, budgets: Sequence[str] | None = None, limit: int = 20
    ) -> list[dashboards.OpenAlert]:
        """Alerts of the budgets' current periods, newest first: of the budgets the principal may read
        (and of the named ones only, if given)."""
        principal = principal or Principal()
        if principal.role == "member":
            readable = [budget.spec.name for budget in await self.list_budgets(principal)]
            budgets = [name for name in readable if budgets is None or name in budgets]
        rows = await self.store.open_alerts(tenant=principal.tenant_id, budgets=budgets, limit=limit)
        return [
            dashboards.OpenAlert(
                alert_id=r["alert_id"],
                budget=r["budget_name"],
                kind=r["kind"],
                threshold=r["threshold"],
                percent_used=r["percent_used"],
                used=r["used"],
                limit=r["limit_amount"],
                unit=r["unit"],
                period_start=r["period_start"],
                created_at=r["created_at"],
                delivered_at=r["delivered_at"],
            )
            for r in rows
        ]

    # --- access -----------------------------------------------------------------------------------

    @staticmethod
    def _require(principal: Principal, roles: Sequence[str], action: str) -> None:
        if principal.role not in roles:
            raise PermissionDenied(f"role {principal.role!r} cannot {action}; allowed: {', '.join(roles)}")

    def _attribution(self, request: Attribution, principal: Principal, *, action: str) -> dict[str, str]:
        """The request's attribution; a member's is bound to its own user."""
        self._require(principal, ("admin", "member"), action)
        attribution = {k: v for k in ATTRIBUTION_FIELDS if (v := getattr(request, k)) is not None}
        if principal.role == "member":
            if attribution.get("user", principal.user) != principal.user:
                raise PermissionDenied(
                    f"user {attribution['user']!r}: a member key acts only for its own user"
                )
            if principal.user:
                attribution["user"] = principal.user
        return attribution


def may_read_budget(principal: Principal, scope: str) -> bool:
    """The one rule of who reads which budget. Admins and viewers read every budget of their tenant. A
    member reads its own user's budgets in full and the shared ones (global, team, project, session,
    feature, endpoint) as the aggregate state that explains its own decisions; never another user's."""
    if principal.role != "member":
        return True
    kind, _, value = scope.partition(":")
    return kind != "user" or (principal.user is not None and value == principal.user)


def _visible_budgets(principal: Principal, budgets: Sequence[Budget]) -> list[Budget]:
    return [budget for budget in budgets if may_read_budget(principal, budget.spec.scope)]


def _visible_states(principal: Principal, states: Sequence[BudgetState]) -> list[BudgetState]:
    """The budget states of a check or track answer that the principal may read."""
    return [state for state in states if may_read_budget(principal, state.scope)]


def _given_budget_fields(spec: BudgetSpec | BudgetChange) -> dict[str, Any]:
    """The budget fields a caller gave, as JSON values: a null clears only a clearable field."""
    given = spec.model_dump(mode="json", include=spec.model_fields_set)
    return {k: v for k, v in given.items() if v is not None or k in CLEARABLE_BUDGET_FIELDS}


def _validate_timezone(name: str, field: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidInput(field, name, "an IANA time zone such as UTC or Europe/Paris") from error


def _validate_budget(spec: BudgetSpec) -> None:
    """Rules a single field cannot express; each error names its field."""
    if spec.scope != "global":
        kind, sep, value = spec.scope.partition(":")
        if not sep or kind not in SCOPE_KINDS or not value:
            raise InvalidInput(
                "scope", spec.scope, f"'global' or KIND:VALUE with KIND one of {', '.join(SCOPE_KINDS)}"
            )
        Attribution(**{kind: value})  # the value must be a valid identifier, as attributions are
    _validate_timezone(spec.timezone, "timezone")
    if spec.hard_limit is not None and spec.hard_limit < spec.limit:
        raise InvalidInput("hard_limit", str(spec.hard_limit), f"at least the limit ({spec.limit})")
    if spec.rollover == "carry" and spec.period in ("total", "24h", "7d", "30d"):
        raise InvalidInput("rollover", spec.rollover, "carry works with calendar periods (minute .. year)")
    if spec.rollover_cap is not None and spec.rollover != "carry":
        raise InvalidInput("rollover_cap", str(spec.rollover_cap), "only with rollover 'carry'")
    if len(spec.alert_thresholds) > 20:
        raise InvalidInput("alert_thresholds", len(spec.alert_thresholds), "at most 20 thresholds")


def _usage_row(row: dict[str, Any], group_by: Sequence[str]) -> UsageRow:
    return UsageRow(
        keys={k: row.get(k) for k in group_by},
        bucket=row.get("bucket"),
        **{k: row[k] for k in UsageRow.model_fields if k not in ("keys", "bucket")},
    )


def money(value: Decimal | None) -> str:
    """A cost for people: exact, or 'unpriced'."""
    return "unpriced" if value is None else f"${value.normalize():f}"
