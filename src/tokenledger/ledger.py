"""`Ledger`: the one API. Every tool, command and integration is a thin mapping onto its methods.

Python prepares (counts tokens, resolves the model and its catalog price, checks the caller's role),
the database decides (one SQL function per operation), and Python explains (pydantic models,
a suggested model when a request is denied).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, get_args

import anyio
from pydantic import TypeAdapter, ValidationError

from tokenledger import alert_notices, anomalies, fx, plpython_counting, privacy, reports, schedules, tokens
from tokenledger import dashboard as dashboards
from tokenledger.catalog import Catalog, CatalogDiff, CatalogUpdate, cost, unknown_model
from tokenledger.errors import InvalidInput, NotFound, PermissionDenied, TokenLedgerError, UnknownModel
from tokenledger.pricefile import PriceFile
from tokenledger.pricing import price_mode
from tokenledger.provider_count import (
    ENCODING_NAMES,
    PROVIDER_ERROR_BAND,
    ProviderCounter,
    ProviderCountFailed,
)
from tokenledger.settings import ProviderCounting, Settings
from tokenledger.store import COUNTING_RANK_TABLE, Store, resolve_dsn
from tokenledger.types import (
    CLOCK_SKEW,
    MAX_BACKDATE,
    MAX_IMPORT_AGE,
    MAX_METADATA_BYTES,
    MAX_OVERRIDE_DAYS,
    MAX_OVERRIDE_FACTOR,
    MAX_OVERRIDE_REASON,
    MAX_PENDING_OVERRIDES,
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
    ExtendRequest,
    ExtendResult,
    FitRequest,
    FitResult,
    FxRate,
    GroupKey,
    Method,
    ModelAlias,
    ModelInfo,
    Override,
    OverrideNotice,
    OverrideReason,
    OverrideRequest,
    OverrideStatus,
    Price,
    PriceSpec,
    Principal,
    ReleaseResult,
    TenantSettings,
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

log = logging.getLogger("tokenledger.ledger")

ATTRIBUTION_FIELDS = ("user", "session", "project", "team", "feature", "endpoint")
SCOPE_KINDS = ("team", "project", "user", "session", "feature", "endpoint")
# Budget fields a `set` may clear with null; null on any other field keeps its value.
CLEARABLE_BUDGET_FIELDS = frozenset(
    {"hard_limit", "priority_shares", "rollover_cap", "tokens_per_minute", "requests_per_minute", "currency"}
)
# Estimates are calibrated from the provider's reported usage, one user one vote: a user's ratio is the
# median of reported / estimated input over its latest settled calls (counted once it has MIN_CALLS). A
# caller with a ratio uses its own; else the tenant's is the median of at least MIN_USERS users' ratios;
# else there is none. No single user's reports move another user's estimates outside what the others
# report. The per-user ratios are kept this long per process, the factor held within these bounds.
CALIBRATION_MIN_CALLS = 5
CALIBRATION_MIN_USERS = 3
CALIBRATION_TTL_SECONDS = 300.0
CALIBRATION_BOUNDS = (0.5, 3.0)
# Texts above this are counted in a worker thread; below it the hand-off costs more than the count.
THREAD_COUNT_THRESHOLD = 64 * 1024
MAX_REPORT_ROWS = 10_000  # time buckets of a timeseries report
# A bucket's nominal length: a window over MAX_REPORT_ROWS of them is refused before any query runs.
BUCKET_LENGTHS = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
    "month": timedelta(days=365.2425 / 12),
}
# A tenant's settings are read at most this often per process; a change made here applies at once.
TENANT_SETTINGS_TTL_SECONDS = 30.0
# A tenant's secret (privacy keys) likewise: a rotation reaches the other processes within this time.
TENANT_SECRET_TTL_SECONDS = 30.0
# An estimate's error band: the 90th percentile of |actual / presented - 1| over the calls calibration
# reads, once it has CALIBRATION_MIN_CALLS of them; never above this.
ERROR_BAND_QUANTILE = 0.9
MAX_ERROR_BAND = 1.0
# The longest a count waits for those two lookups: counting needs no database.
COUNT_LOOKUP_SECONDS = 1.0
# A tenant's model aliases are read at most this often per process (one query per tenant, however many
# calls); a change made here applies at once, one made in another process within this time.
ALIAS_TTL_SECONDS = 30.0
MAX_ALIASES = 1_000  # per tenant
# A name the catalog does not know is remembered this long (at most this many names): finding the closest
# known names for its warning reads the whole catalog (tens of milliseconds).
UNKNOWN_MODEL_TTL_SECONDS = 30.0
MAX_UNKNOWN_MODELS = 1_024
# Request fields added after requests were first hashed: left out at their defaults, so a request sent
# before they existed keeps its hash (its idempotent replay still matches).
_HASHED_ONLY_WHEN_SET = {"batch": False, "service_tier": "standard", "cache_ttl": "5m"}
# What an alert lists its top spenders along, by its budget's scope kind: who (user), what for (feature)
# and with what (model), less what the scope already fixes.
SPENDER_DIMENSIONS: dict[str, tuple[GroupKey, ...]] = {
    "global": ("user", "feature", "model"),
    "team": ("user", "feature", "model"),
    "project": ("user", "feature", "model"),
    "endpoint": ("user", "feature", "model"),
    "feature": ("user", "model"),
    "user": ("feature", "model"),
    "session": ("feature", "model"),
}
ALERT_TOP_SPENDERS = 3  # per dimension
ALERT_TOP_RECOMMENDATIONS = 3
# An alert's spenders and recommendations cover its budget's period so far, at most this far back (a
# yearly or `total` budget would otherwise read years of usage for one message).
ALERT_CONTEXT_WINDOW = timedelta(days=31)
# Catalog entries kept for the check and track path (see Ledger._model_for_call); cleared when full.
CALL_MODEL_CACHE_SIZE = 4096


def _request_hash(request: Any) -> str:
    """A fingerprint of a request's content (its request_id excluded), for idempotent replays."""
    content = request.model_dump(mode="json", exclude={"request_id"}, exclude_none=True)
    for name, default in _HASHED_ONLY_WHEN_SET.items():
        if content.get(name, default) == default:
            content.pop(name, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _price_params(price: Price) -> dict[str, str | None]:
    fields = ("input", "output", "cache_read", "cache_write", "reasoning")  # a tenant override's columns
    return {name: None if (value := getattr(price, name)) is None else str(value) for name in fields}


def _catalog_price(price: Price) -> dict[str, Any]:
    """The catalog price as tl_check and tl_track take it: rates as decimal strings, and the modes,
    tiers and `local` flag only where the model has them (see tokenledger.pricing for the rule)."""
    return price.model_dump(mode="json", exclude_defaults=True)


def _counted_as(model: ModelInfo) -> ModelInfo:
    """The entry counting reads: a tenant alias's target, under the target's name (message overheads, a
    model's own tokenizer and the provider's count API all go by the model's real name)."""
    if model.alias_of is None:
        return model
    return model.model_copy(update={"name": model.alias_of, "alias_of": None})


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Ledger:
    """Counts, checks, reserves, settles and reports. One instance per process, over a connection pool."""

    def __init__(
        self,
        store: Store,
        *,
        catalog: Catalog | None = None,
        counter: tokens.TokenCounter | None = None,
        provider_counter: ProviderCounter | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog or Catalog()
        self.counter = counter or tokens.TokenCounter()
        self.provider_counter = provider_counter or ProviderCounter(ProviderCounting())
        # (tenant, model) -> (per-user ratios, when they go stale): each user's factor derives from them.
        self._calibration: dict[tuple[str, str], tuple[dict[str, list[Decimal]], float]] = {}
        self._settings: dict[str, tuple[TenantSettings, float]] = {}
        # model name -> its catalog entry and current price as tl_check takes it, for self._call_models_of
        self._call_models: dict[str, tuple[ModelInfo, dict[str, Any]]] = {}
        self._call_models_of: Catalog | None = None
        self._keys: dict[str, tuple[privacy.TenantKeys, float]] = {}  # tenant -> keys, when they go stale
        # tenant -> (its aliases by lower-cased name, when they go stale); lower-cased name -> (the entry
        # of a model the catalog does not know, when it goes stale).
        self._aliases: dict[str, tuple[dict[str, ModelAlias], float]] = {}
        self._aliases_unreadable: dict[str, float] = {}  # tenant -> until when counts do not try again
        self._unknown: dict[str, tuple[ModelInfo, float]] = {}
        self.metrics: Metrics | None = None  # the HTTP server's Prometheus metrics, when it serves them
        self._catalog_version = max((update.update_id for update in self.catalog.updates), default=0)
        self._catalog_refresh = anyio.Lock()  # one refresh at a time: a slower one never swaps in an older

    @classmethod
    async def open(
        cls, settings: Settings | None = None, *, dsn: str | None = None, migrate: bool = True
    ) -> Ledger:
        """A ledger over the configured database (the embedded one when none is configured)."""
        settings = settings or Settings.from_env()
        if dsn is None:
            dsn = await anyio.to_thread.run_sync(resolve_dsn, settings)
        store = await Store.open(
            dsn,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            migrate=migrate,
            reports=settings.reports,
        )
        ledger = cls(store, provider_counter=ProviderCounter(settings.provider_counting))
        if migrate:  # the schema is there: take the catalog updates stored so far
            await ledger.refresh_catalog()
        return ledger

    async def close(self) -> None:
        await self.provider_counter.aclose()
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
        """The entry of a model (a tenant alias's: its target's, under its name), with the tenant's price
        override in force now, if any (an alias's own, else its target's). A model the catalog does not
        know is an UnknownModel error here, unless the tenant priced it: this answers what is known."""
        principal = principal or Principal()
        info = await self._model(name, principal.tenant_id)
        overrides = await self.store.price_overrides(tenant=principal.tenant_id, model=info.name)
        if not overrides and info.alias_of is not None:
            overrides = await self.store.price_overrides(tenant=principal.tenant_id, model=info.alias_of)
        if info.source == "unknown" and not overrides:
            self.catalog.resolve(name)  # raises UnknownModel, naming the closest known models
        now = datetime.now(UTC)
        current = next((o for o in overrides if o["effective_from"] <= now), None)
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

    async def _model(self, name: str, tenant: str, *, lenient: bool = False) -> ModelInfo:
        """The model a call names, in this order: the tenant's alias (counted and priced as its target,
        under the alias's name), else the catalog's entry (`Catalog.resolve`), else an unknown model (its
        name's counting rule, unpriced, a warning naming it). `lenient` (counting, which needs no
        database): the aliases read within COUNT_LOOKUP_SECONDS, else the last ones read."""
        alias = (await self._tenant_aliases(tenant, lenient=lenient)).get(name.strip().lower())
        if alias is not None:
            with contextlib.suppress(UnknownModel):  # a target the catalog dropped: the alias is unknown
                target = self.catalog.resolve(alias.target)
                return target.model_copy(update={"name": alias.alias, "alias_of": target.name, "aliases": []})
        key = name.strip().lower()
        remembered = self._unknown.get(key)
        if remembered is not None and remembered[1] > time.monotonic():
            return remembered[0].model_copy(update={"warnings": list(remembered[0].warnings)})
        try:
            return self.catalog.resolve(name)
        except UnknownModel as unknown:
            info = unknown_model(name, unknown.closest)
        if len(self._unknown) >= MAX_UNKNOWN_MODELS:
            self._unknown.pop(next(iter(self._unknown)))  # the oldest
        self._unknown[key] = (info, time.monotonic() + UNKNOWN_MODEL_TTL_SECONDS)
        return info.model_copy(update={"warnings": list(info.warnings)})

    async def _tenant_aliases(self, tenant: str, *, lenient: bool = False) -> dict[str, ModelAlias]:
        """The tenant's aliases by lower-cased name, read at most every ALIAS_TTL_SECONDS. `lenient` (see
        `_model`): after a failed read, counts use the last aliases read (or none) for ALIAS_TTL_SECONDS
        without trying again, while checks and tracks, which need the database anyway, read at once."""
        cached = self._aliases.get(tenant)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        rows: list[dict[str, Any]] | None = None
        if lenient:
            if self._aliases_unreadable.get(tenant, 0.0) <= time.monotonic():
                with contextlib.suppress(TokenLedgerError), anyio.move_on_after(COUNT_LOOKUP_SECONDS):
                    rows = await self.store.aliases(tenant=tenant)
                if rows is None:
                    self._aliases_unreadable[tenant] = time.monotonic() + ALIAS_TTL_SECONDS
            if rows is None:
                return cached[0] if cached is not None else {}
        else:
            rows = await self.store.aliases(tenant=tenant)
        aliases = {row["alias"].lower(): ModelAlias.model_validate(row) for row in rows}
        self._aliases[tenant] = (aliases, time.monotonic() + ALIAS_TTL_SECONDS)
        self._aliases_unreadable.pop(tenant, None)
        return aliases

    async def _model_for_call(
        self, name: str, principal: Principal, at: datetime | None = None
    ) -> tuple[ModelInfo, dict[str, Any]]:
        """The model that counts a call (see `_model`: an alias, the catalog's entry, or an unknown model),
        and its catalog price in force at `at` (default: now) as tl_check and tl_track take it: an alias's
        target's; none for a model the catalog does not know. The database applies the tenant's override in
        force at the call's time itself (an alias's own, else its target's).

        A catalog model's entry and current price come from a per-process cache, kept while the catalog
        in force is the same object (a refresh swaps it whole): resolving a name copies its entry and
        serialising its price cost more than the rest of a check (issue 14). The entry is shared, so
        read-only. A catalog name is never an alias (an alias may not shadow one), so a cached name needs
        no alias lookup. A price at a given time is looked up each time (it may change at any moment)."""
        catalog = self.catalog
        if self._call_models_of is not catalog or len(self._call_models) >= CALL_MODEL_CACHE_SIZE:
            self._call_models, self._call_models_of = {}, catalog
        cached = self._call_models.get(name)
        if cached is None:
            model = await self._model(name, principal.tenant_id)
            if model.source == "unknown":
                return model, _catalog_price(Price())
            if model.alias_of is not None:  # a tenant's name: never cached across tenants
                price = model.price if at is None else catalog.price_at(model.alias_of, at)
                return model, _catalog_price(price)
            cached = self._call_models[name] = (model, _catalog_price(model.price))
        if at is None:
            return cached
        return cached[0], _catalog_price(catalog.price_at(name, at))

    # --- counting ---------------------------------------------------------------------------------

    async def count_tokens(self, request: CountRequest, principal: Principal | None = None) -> CountResult:
        """Count a text, texts or chat messages (with tools) for a model or encoding. Needs no database
        (a tenant's provider-counting setting and measured error band are used when it answers)."""
        given = [name for name in ("text", "texts", "messages") if getattr(request, name) is not None]
        if len(given) != 1:
            raise InvalidInput("text", given or None, "give exactly one of text, texts or messages")
        if request.tools is not None and request.messages is None:
            raise InvalidInput("tools", "...", "tools are counted with messages; give messages too")
        principal = principal or Principal()
        model = await self._model(request.model, principal.tenant_id, lenient=True) if request.model else None
        encoding = request.encoding if model is None else None
        count = await self._count(
            request.text, request.texts, request.messages, request.tools, model, encoding
        )
        if model is not None and count.method == "estimate":
            count = await self._beyond_estimate(count, request, model, principal)
        result = CountResult(**count.model_dump())
        if model is not None:
            fit = tokens.context_fit(count.tokens, model, request.max_output_tokens or 0)
            estimate = cost(
                model.price, input_tokens=count.tokens, output_tokens=request.max_output_tokens or 0
            )
            result = result.model_copy(
                update={
                    **fit.model_dump(),
                    "model": model.name,  # an alias's own name: its target counted it
                    "estimated_cost_usd": estimate.cost_usd,
                    "priced": estimate.priced,
                    "warnings": [*result.warnings, *model.warnings],
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
        model = _counted_as(model) if model is not None else None
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

    async def fit_messages(self, request: FitRequest, principal: Principal | None = None) -> FitResult:
        """Drop the oldest turns until the conversation fits the model's context with room for output.

        The window is `request.context_window`, else the model's; a model without a known window (one
        the catalog does not know) needs `context_window`: a guessed window could overflow the real one."""
        principal = principal or Principal()
        model = await self._model(request.model, principal.tenant_id, lenient=True)
        if request.context_window is not None:
            model = model.model_copy(update={"context_window": request.context_window})
        elif model.context_window is None:
            raise InvalidInput(
                "context_window",
                None,
                f"the window to fit into (tokens), required: {model.name} has no known context window",
            )
        fitted = await anyio.to_thread.run_sync(
            partial(
                self.counter.fit_messages,
                request.messages,
                _counted_as(model),
                request.max_output_tokens,
                keep_system=request.keep_system,
                keep_last=request.keep_last,
            )
        )
        return fitted.model_copy(update={"warnings": [*fitted.warnings, *model.warnings]})

    # --- the ledger -------------------------------------------------------------------------------

    async def check_budget(self, request: CheckRequest, principal: Principal | None = None) -> CheckResult:
        """Check a request against every matching budget and rate limit, and reserve it when allowed."""
        principal = principal or Principal()
        attribution = self._attribution(request, principal, action="check budgets")
        mode = price_mode(request.batch, request.service_tier)
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
            if count.method == "estimate":
                provided, count_warnings = await self._provider_count(request, model, principal)
                count = provided or count.model_copy(update={"warnings": [*count.warnings, *count_warnings]})
            input_tokens, method = count.tokens, count.method
            if method == "estimate":
                counted = input_tokens  # kept raw, so later calibration compares like with like
                if factor := await self.estimate_factor(model.name, principal, user=attribution.get("user")):
                    input_tokens = math.ceil(input_tokens * factor)
                count.error_band = await self._error_band(
                    model, principal, factor, user=attribution.get("user")
                )
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
            catalog_price=catalog_price,
            method=method,
            prompt_hash=await self._stored_prompt_hash(
                principal.tenant_id,
                request.prompt_hash or reports.prompt_hash(request.text, request.messages),
            ),
            counted_input_tokens=counted,
            price_mode=mode,
            alias_of=model.alias_of,
        )
        result = CheckResult.model_validate(answer)
        result.budgets = _visible_states(principal, result.budgets)
        _hint_override(result, principal)
        if factor is not None:
            result.calibration_factor = factor
        if request.input_tokens is None:
            result.error_band = count.error_band
            result.warnings = [*result.warnings, *count.warnings]
        if self.metrics is not None:
            self.metrics.observe_check(result, time.perf_counter() - started, tenant=principal.tenant_id)
        extra_warnings = [
            *model.warnings,
            *self._context_warnings(model, input_tokens, request.max_output_tokens),
        ]
        suggestion = self._suggest_model(result, model, input_tokens, request.max_output_tokens)
        if extra_warnings or suggestion:
            result = result.model_copy(
                update={"warnings": [*result.warnings, *extra_warnings], "suggested_model": suggestion}
            )
        return result

    async def estimate_factor(
        self, model: str, principal: Principal | None = None, *, user: str | None = None
    ) -> float | None:
        """How the provider-reported input for `model` compares with our pre-flight estimates, for `user`
        (a member's own; default the principal's): its own ratio once it has enough settled calls, else
        the median over enough other users, else None. See CALIBRATION_MIN_CALLS."""
        principal = principal or Principal()
        if principal.role == "member" or user is None:
            user = principal.user
        key = (principal.tenant_id, model)
        cached = self._calibration.get(key)
        if cached is None or cached[1] <= time.monotonic():
            ratios = await self.store.estimate_calibration(tenant=principal.tenant_id, model=model)
            cached = (ratios, time.monotonic() + CALIBRATION_TTL_SECONDS)
            self._calibration[key] = cached
        return calibration_factor(cached[0], user or "")

    # --- counting beyond tiktoken: the provider's count, error bands, tenant settings ---------------

    async def _beyond_estimate(
        self, count: TokenCount, request: CountRequest, model: ModelInfo, principal: Principal
    ) -> TokenCount:
        """An estimate replaced by the provider's count where wanted and possible, else given the error
        band this tenant's calls measured (the documented default while the database is away)."""
        if request.text is not None or request.messages is not None:
            provided, warnings = await self._provider_count(request, model, principal)
            if provided is not None:
                return provided
            count = count.model_copy(update={"warnings": [*count.warnings, *warnings]})
        elif request.provider_count:
            warning = (
                "provider_count: the provider counts one request (text or messages), not texts; estimated"
            )
            count = count.model_copy(update={"warnings": [*count.warnings, warning]})
        # count_tokens presents the raw estimate; the factor says whether there are calls to measure.
        factor = None
        with contextlib.suppress(TokenLedgerError), anyio.move_on_after(COUNT_LOOKUP_SECONDS):
            factor = await self.estimate_factor(model.name, principal)
        count.error_band = await self._error_band(model, principal, factor, calibrated=False)
        return count

    async def _provider_count(
        self, request: CountRequest | CheckRequest, model: ModelInfo, principal: Principal
    ) -> tuple[TokenCount | None, list[str]]:
        """The provider's count of the request's text or messages when the call (`provider_count`) or
        the tenant's setting asks for it, or None and why not (a warning when it was asked for)."""
        model = _counted_as(model)
        if self.provider_counter.provider_for(model) is None:  # no key: nothing to look up
            if not request.provider_count:
                return None, []
            reason = f"no {model.provider} count_tokens API key is configured for {model.name}"
            return None, [f"provider_count: {reason}; estimated"]
        wanted = request.provider_count
        if wanted is None:
            wanted = (await self._tenant_settings(principal.tenant_id)).provider_counting
        if not wanted:
            return None, []
        try:
            tokens_ = await self.provider_counter.count(
                tenant=principal.tenant_id, model=model, text=request.text, messages=request.messages
            )
        except ProviderCountFailed as failure:
            return None, [f"provider_count: {failure}; estimated"]
        provider = self.provider_counter.provider_for(model) or ""
        return TokenCount(
            tokens=tokens_,
            method="provider",
            encoding=ENCODING_NAMES.get(provider, provider),
            model=model.name,
            error_band=PROVIDER_ERROR_BAND,
        ), []

    async def _error_band(
        self,
        model: ModelInfo,
        principal: Principal,
        factor: float | None,
        *,
        user: str | None = None,
        calibrated: bool = True,
    ) -> float:
        """How far the provider's count may be from an estimate, presented scaled by the calibration
        `factor` (or raw, `calibrated=False`): the 90th percentile of |actual / presented - 1| over the
        calls that calibration read for it (the caller's own once it has enough, else every voter's); the
        model's documented default while calibration has no factor (nothing is looked up)."""
        if factor is None:
            return tokens.default_error_band(model)
        cached = self._calibration.get((principal.tenant_id, model.name))
        by_user = cached[0] if cached is not None else {}  # estimate_factor filled it to give `factor`
        own = by_user.get(user or principal.user or "", [])
        ratios = own if len(own) >= CALIBRATION_MIN_CALLS else [r for rs in by_user.values() for r in rs]
        if len(ratios) < CALIBRATION_MIN_CALLS:
            return tokens.default_error_band(model)
        deviations = [abs(float(ratio) / (factor if calibrated else 1.0) - 1) for ratio in ratios]
        band = statistics.quantiles(deviations, n=10, method="inclusive")[int(ERROR_BAND_QUANTILE * 10) - 1]
        return round(min(band, MAX_ERROR_BAND), 3)

    async def tenant_settings(self, principal: Principal | None = None) -> TenantSettings:
        """The tenant's settings (defaults where none is stored); admin only."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "read tenant settings")
        stored = await self.store.tenant_settings(tenant=principal.tenant_id)  # what is stored now
        return self._remember_settings(principal.tenant_id, stored)

    async def _tenant_settings(self, tenant: str) -> TenantSettings:
        """The tenant's settings for a count: cached, and the defaults while the database is away."""
        cached = self._settings.get(tenant)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        stored: dict[str, Any] = {}
        with contextlib.suppress(TokenLedgerError), anyio.move_on_after(COUNT_LOOKUP_SECONDS):
            stored = await self.store.tenant_settings(tenant=tenant)
        return self._remember_settings(tenant, stored)

    def _remember_settings(self, tenant: str, stored: dict[str, Any]) -> TenantSettings:
        known = {key: value for key, value in stored.items() if key in TenantSettings.model_fields}
        current = TenantSettings.model_validate(known)
        self._settings[tenant] = (current, time.monotonic() + TENANT_SETTINGS_TTL_SECONDS)
        return current

    async def set_tenant_setting(
        self, key: str, value: Any, principal: Principal | None = None
    ) -> TenantSettings:
        """Change one of the tenant's settings (admin only; audited with its previous value)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "change tenant settings")
        fields = TenantSettings.model_fields
        if key not in fields:
            raise InvalidInput("key", key, f"one of: {', '.join(sorted(fields))}")
        try:
            checked = TenantSettings.model_validate({key: value}, strict=True)
        except ValidationError as error:
            allowed = error.errors(include_url=False)[0]["msg"]
            raise InvalidInput("value", value, f"{key}: {allowed}") from error
        await self.store.set_tenant_setting(
            tenant=principal.tenant_id, key=key, value=getattr(checked, key), actor=principal.actor
        )
        return await self.tenant_settings(principal)

    # --- privacy: pseudonyms for viewers, keyed prompt hashes ----------------------------------------

    async def _tenant_keys(self, tenant: str) -> privacy.TenantKeys:
        """The keys derived from the tenant's secret (created on first use), cached for a short while."""
        cached = self._keys.get(tenant)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        secret = await self.store.tenant_secret(
            tenant=tenant, candidate=secrets.token_bytes(privacy.SECRET_BYTES)
        )
        keys = privacy.TenantKeys.from_secret(secret)
        self._keys[tenant] = (keys, time.monotonic() + TENANT_SECRET_TTL_SECONDS)
        return keys

    async def _stored_prompt_hash(self, tenant: str, plain_hash: str | None) -> str | None:
        """The hash stored for a prompt whose SHA-256 is `plain_hash` (computed here or sent by the
        client): keyed with the tenant's prompt key, so that short prompts cannot be found by guessing."""
        if plain_hash is None:
            return None
        return privacy.keyed_prompt_hash((await self._tenant_keys(tenant)).prompt_key, plain_hash)

    async def user_mask(self, principal: Principal) -> privacy.UserMask | None:
        """What stands for user ids in what `principal` reads: pseudonyms for a viewer of a tenant whose
        `pseudonymize_users` setting is on, else None (real ids: an admin; a member reads only its own
        user). The setting is read now, not from a cache, so a viewer never sees ids it should not."""
        if principal.role != "viewer":
            return None
        stored = await self.store.tenant_settings(tenant=principal.tenant_id)
        if not self._remember_settings(principal.tenant_id, stored).pseudonymize_users:
            return None
        return privacy.UserMask(await self._tenant_keys(principal.tenant_id))

    async def shown_user(self, principal: Principal, user_id: str | None) -> str | None:
        """The user id as `principal` may read it: its pseudonym where `user_mask` gives one, else as is."""
        mask = await self.user_mask(principal)
        return user_id if mask is None else mask.user(user_id)

    async def rotate_tenant_secret(self, principal: Principal | None = None) -> dict[str, Any]:
        """Replace the tenant's secret (admin; audited, the secret never shown). Every pseudonym changes,
        and prompt hashes from now on no longer match earlier ones (repeats group among themselves)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "rotate the tenant's secret")
        rotated_at = await self.store.rotate_tenant_secret(
            tenant=principal.tenant_id,
            secret=secrets.token_bytes(privacy.SECRET_BYTES),
            actor=principal.actor,
        )
        self._keys.pop(principal.tenant_id, None)
        return {"tenant": principal.tenant_id, "rotated_at": rotated_at}

    async def _masked_scope(
        self, query: UsageQuery, principal: Principal, default_window: timedelta
    ) -> tuple[dict[str, str], datetime, datetime, privacy.UserMask | None]:
        """`_report_scope`, and the mask of the principal's user ids: a viewer's user filter must then be
        a pseudonym, which stands for the user of the window's usage that has it (found by hashing the
        window's user ids: one scan, as the report's own)."""
        mask = await self.user_mask(principal)
        filters, since, until = self._report_scope(query, principal, default_window)
        if mask is not None and "user" in filters:
            user_ids = await self.store.usage_user_ids(tenant=principal.tenant_id, since=since, until=until)
            # '' names no user (attributions have at least one character): no rows, as for an unknown id.
            filters["user"] = mask.real_user(filters["user"], user_ids) or ""
        return filters, since, until, mask

    async def _shown_budgets(self, principal: Principal, budgets: list[Budget]) -> list[Budget]:
        """The budgets with their user scopes pseudonymised where `user_mask` says so."""
        mask = await self.user_mask(principal)
        if mask is None:
            return budgets
        return [
            budget.model_copy(
                update={
                    "spec": budget.spec.model_copy(update={"scope": mask.scope(budget.spec.scope)}),
                    "state": budget.state.model_copy(update={"scope": mask.scope(budget.state.scope)}),
                }
            )
            for budget in budgets
        ]

    # --- counting in SQL --------------------------------------------------------------------------

    async def counting_support(self) -> dict[str, Any]:
        """What the database offers for counting in SQL (see `Store.counting_support`), with `backend`:
        "pg_tiktoken", "plpython" (tokenledger's functions), or None."""
        support = dict(await self.store.counting_support())
        language = support["counting_language"]
        support["backend"] = (
            None if language is None else ("plpython" if language == "plpython3u" else "pg_tiktoken")
        )
        support["plpython_package"] = f"postgresql-plpython3-{support['major_version']}"
        return support

    async def install_counting(self, principal: Principal | None = None) -> dict[str, Any]:
        """Create `tiktoken_count` and `tiktoken_encode` in PL/Python where pg_tiktoken is not installed
        (admin; a superuser connection). Refuses, saying what is missing and how to get it, where it
        cannot work; installs nothing unless the new functions count like this process does."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "install counting functions")
        support = await self.counting_support()
        if support["pg_tiktoken"]:
            raise TokenLedgerError("pg_tiktoken is installed: tiktoken_count is already there; nothing to do")
        if not support["plpython"] and not support["plpython_available"]:
            raise TokenLedgerError(
                f"neither pg_tiktoken nor PL/Python (plpython3u) is available on this PostgreSQL "
                f"{support['major_version']} server: install Debian's package {support['plpython_package']} "
                f"(apt-get install {support['plpython_package']}) on the server and run this again, or "
                "install the pg_tiktoken extension"
            )
        if not support["superuser"]:
            raise TokenLedgerError(
                "creating PL/Python (plpython3u) functions needs a superuser connection: run this with a "
                "superuser's TOKENLEDGER_DATABASE_URL"
            )
        encoding, text = "o200k_base", plpython_counting.SELF_TEST
        expected = self.counter.count_text(text, encoding=encoding).tokens
        count_body, encode_body, rank_files = await anyio.to_thread.run_sync(
            lambda: (
                plpython_counting.function_body("tiktoken_count", COUNTING_RANK_TABLE),
                plpython_counting.function_body("tiktoken_encode", COUNTING_RANK_TABLE),
                plpython_counting.rank_files(),
            )
        )
        counted = await self.store.install_counting(
            count_body=count_body,
            encode_body=encode_body,
            rank_files=rank_files,
            self_test=(encoding, text, expected),
        )
        return {**await self.counting_support(), "self_test_tokens": counted}

    async def count_in_database(
        self, texts: Sequence[str], encoding: str = tokens.DEFAULT_ENCODING
    ) -> TokenCount:
        """Count texts with the database's `tiktoken_count` (pg_tiktoken, or tokenledger's PL/Python
        functions): `method: "pg_tiktoken"`, and a `pg_tiktoken` entry in the counter's stats."""
        if encoding not in tokens.ENCODINGS:
            raise InvalidInput("encoding", encoding, f"one of {', '.join(tokens.ENCODINGS)}")
        started = time.perf_counter()
        counts = await self.store.count_in_database(encoding=encoding, texts=list(texts))
        self.counter.record("pg_tiktoken", time.perf_counter() - started)
        return TokenCount(tokens=sum(counts), method="pg_tiktoken", encoding=encoding, per_text=counts)

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
        """Record a call's usage (settling its reservation if given); a replayed request_id counts once.

        Direct usage is dated at most MAX_BACKDATE back and CLOCK_SKEW ahead; a settle counts in its
        reservation's periods, and its occurred_at must fall within the reservation's lifetime."""
        principal = principal or Principal()
        if request.reservation_id is None and request.occurred_at is not None:
            _check_occurred_at(request.occurred_at, MAX_BACKDATE, "direct usage")
        return await self._track(request, principal)

    async def import_usage(self, request: TrackRequest, principal: Principal | None = None) -> TrackResult:
        """Record usage that happened up to MAX_IMPORT_AGE ago (admins: history from another system). It
        posts to the budgets' periods of its own time, as direct usage does."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "import usage")
        if request.reservation_id is not None:
            raise InvalidInput(
                "reservation_id", request.reservation_id, "imported usage settles none; use track_usage"
            )
        if request.occurred_at is None:
            raise InvalidInput("occurred_at", None, "imported usage needs the time it happened")
        _check_occurred_at(request.occurred_at, MAX_IMPORT_AGE, "imported usage")
        return await self._track(request, principal)

    async def _track(self, request: TrackRequest, principal: Principal) -> TrackResult:
        attribution = self._attribution(request, principal, action="track usage")
        price_mode(request.batch, request.service_tier)  # a batch call at flex or priority is refused
        metadata_json = json.dumps(request.metadata, default=str)
        if len(metadata_json) > MAX_METADATA_BYTES:
            raise InvalidInput("metadata", "...", f"at most {MAX_METADATA_BYTES} bytes of JSON")
        if "\\u0000" in metadata_json:
            raise InvalidInput(
                "metadata", "...", "text without NUL characters (PostgreSQL cannot store them)"
            )
        at = request.occurred_at or datetime.now(UTC)  # usage is costed at the price of its own time
        model, catalog_price = await self._model_for_call(request.model, principal, at)
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
            catalog_price=catalog_price,
            method=method,
            status=request.status,
            latency_ms=request.latency_ms,
            tools_used=list(request.tools_used),
            metadata=request.metadata,
            occurred_at=request.occurred_at,
            estimated_input_tokens=None,
            prompt_hash=await self._stored_prompt_hash(
                principal.tenant_id, request.prompt_hash or reports.prompt_hash(request.input_text)
            ),
            member_user=_member_user(principal),
            clock_skew=CLOCK_SKEW,
            requested_model=request.requested_model,
            batch=request.batch,
            service_tier=request.service_tier,
            cache_ttl=request.cache_ttl,
            alias_of=model.alias_of,
        )
        result = TrackResult.model_validate(answer)
        result.budgets = _visible_states(principal, result.budgets)
        shown = {state.name for state in result.budgets}
        result.alerts = [alert for alert in result.alerts if alert.budget in shown]
        if model.warnings:
            result = result.model_copy(update={"warnings": [*result.warnings, *model.warnings]})
        if self.metrics is not None:
            self.metrics.observe_usage(
                result,
                tenant=principal.tenant_id,
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
            tenant=principal.tenant_id, reservation_id=reservation_id, user=_member_user(principal)
        )
        return ReleaseResult.model_validate(answer)

    async def extend_reservation(
        self, request: ExtendRequest, principal: Principal | None = None
    ) -> ExtendResult:
        """Give an active reservation a new expiry, now + ttl_seconds, keeping its holds (a long call)."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "extend reservations")
        answer = await self.store.extend(
            tenant=principal.tenant_id,
            reservation_id=request.reservation_id,
            user=_member_user(principal),
            ttl_seconds=request.ttl_seconds,
        )
        return ExtendResult.model_validate(answer)

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
        _validate_budget(merged, await self.store.timezone_names())
        if merged.currency is not None:  # the database converts the limits at the period start's rate
            fx.check_currency(merged.currency, allow_base=False)
            if merged.unit != "usd":
                raise InvalidInput(
                    "currency", merged.currency, "only with unit usd: a token budget has no price"
                )
        answer = await self.store.set_budget(
            tenant=principal.tenant_id,
            actor=principal.actor,
            spec=merged.model_dump(mode="json"),
            expected_updated_at=None if current is None else current.updated_at,
            reset_counters=reset_counters,
        )
        return (await self._with_currency_state(principal.tenant_id, [Budget.model_validate(answer)]))[0]

    async def get_budget(self, name: str, principal: Principal | None = None) -> Budget:
        """One budget the principal may read; another user's looks absent to a member."""
        principal = principal or Principal()
        found = await self.store.budgets(tenant=principal.tenant_id, name=name)
        visible = _visible_budgets(principal, [Budget.model_validate(b) for b in found])
        if not visible:
            raise NotFound(f"name {name!r}: no such budget in this tenant")
        shown = await self._shown_budgets(principal, visible)
        return (await self._with_currency_state(principal.tenant_id, shown))[0]

    async def list_budgets(self, principal: Principal | None = None) -> list[Budget]:
        """The budgets the principal may read (see `may_read_budget`), by name."""
        principal = principal or Principal()
        found = await self.store.budgets(tenant=principal.tenant_id)
        visible = _visible_budgets(principal, [Budget.model_validate(b) for b in found])
        shown = await self._shown_budgets(principal, visible)
        return await self._with_currency_state(principal.tenant_id, shown)

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
        # Stored under the name calls record (an alias's or the catalog's spelling), where it applies.
        model = await self._model(spec.model, principal.tenant_id)
        await self.store.set_price(
            tenant=principal.tenant_id,
            actor=principal.actor,
            model=model.name,
            effective_from=effective_from,
            price=price,
        )
        return await self.model_info(spec.model, principal)

    async def get_price(self, model: str, principal: Principal | None = None) -> ModelInfo:
        return await self.model_info(model, principal)

    async def list_price_overrides(self, principal: Principal | None = None) -> list[dict[str, Any]]:
        principal = principal or Principal()
        return await self.store.price_overrides(tenant=principal.tenant_id)

    # --- model aliases ----------------------------------------------------------------------------

    async def set_alias(self, alias: str, target: str, principal: Principal | None = None) -> ModelAlias:
        """Name a catalog model as this tenant calls it: an Azure deployment, a fine-tune, a gateway's
        name (admin only; audited). Calls naming `alias` count and price as `target`, unless the tenant
        prices the alias itself. The target must be a catalog model (so never another alias); the alias may
        not be a name the catalog knows. Setting an existing alias points it at the new target."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "change model aliases")
        spec = ModelAlias(alias=alias, target=target)  # names as stored text: printable, bounded
        self._aliases.pop(principal.tenant_id, None)  # judged on what is stored now
        aliases = await self._tenant_aliases(principal.tenant_id)
        try:
            resolved = self.catalog.resolve(spec.target)
        except UnknownModel as unknown:
            chained = aliases.get(spec.target.lower())
            if chained is not None:
                raise InvalidInput(
                    "target",
                    spec.target,
                    f"a catalog model; {chained.alias} is this tenant's alias of {chained.target} "
                    f"(aliases do not chain): alias to {chained.target} itself",
                ) from unknown
            raise UnknownModel(spec.target, unknown.closest, field="target") from unknown
        with contextlib.suppress(UnknownModel):
            shadowed = self.catalog.resolve(spec.alias)
            raise InvalidInput(
                "alias",
                spec.alias,
                f"a name the catalog does not know: it resolves to the catalog's {shadowed.name}, "
                "which an alias may not shadow",
            )
        saved = await self.store.set_alias(
            tenant=principal.tenant_id,
            actor=principal.actor,
            alias=spec.alias,
            target=resolved.name,
            max_aliases=MAX_ALIASES,
        )
        self._aliases.pop(principal.tenant_id, None)
        return ModelAlias.model_validate(saved)

    async def delete_alias(self, alias: str, principal: Principal | None = None) -> ModelAlias:
        """Remove one of the tenant's aliases (admin only; audited): its name is unknown again."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "change model aliases")
        tenant, actor = principal.tenant_id, principal.actor
        removed = await self.store.delete_alias(tenant=tenant, actor=actor, alias=alias)
        self._aliases.pop(principal.tenant_id, None)
        return ModelAlias.model_validate(removed)

    async def list_aliases(self, principal: Principal | None = None) -> list[ModelAlias]:
        """The tenant's model aliases, by name (any role: they name catalog models, like prices)."""
        principal = principal or Principal()
        rows = await self.store.aliases(tenant=principal.tenant_id)
        return [ModelAlias.model_validate(row) for row in rows]

    # --- catalog updates --------------------------------------------------------------------------
    # The catalog is shared by every tenant of every process, so updating it is the operator's action:
    # whoever runs `tokenledger catalog update` with the database's credentials (like `prune`), never a
    # tenant's key through MCP. A tenant keeps its own prices with `set_price`, which win over the catalog.

    async def refresh_catalog(self) -> bool:
        """Take catalog updates stored since this process last looked: one index probe when there are
        none; otherwise the new updates are read, the catalog rebuilt off the event loop and swapped in
        whole. Returns whether the catalog changed. Servers call it every few seconds."""
        async with self._catalog_refresh:
            version = await self.store.catalog_version()
            if version == self._catalog_version:
                return False
            rows = await self.store.catalog_updates(after=self._catalog_version)
            updates = [*self.catalog.updates, *(_catalog_update(row) for row in rows)]
            rebuilt = Catalog(self.catalog.path, updates)
            await anyio.to_thread.run_sync(rebuilt.load)
            self.catalog = rebuilt
            self._unknown.clear()  # a name it did not know, it may know now
            self._catalog_version = max((update.update_id for update in updates), default=0)
            return True

    async def catalog_diff(self, price_file: PriceFile) -> CatalogDiff:
        """What `price_file` would change in the catalog in force (bundled and stored updates)."""
        await self.refresh_catalog()
        return await anyio.to_thread.run_sync(self.catalog.diff, price_file.entries)

    async def update_catalog(self, price_file: PriceFile, *, actor: str) -> tuple[CatalogUpdate, CatalogDiff]:
        """Store a checked price list as a catalog update in force from now (audited under tenant '*'), and
        take it into this process at once; every other server takes it at its next poll. Earlier prices
        stay: usage keeps the price in force at its own time. Returns the update and what it changed."""
        diff = await self.catalog_diff(price_file)
        summary = {
            "added": len(diff.added),
            "relisted": len(diff.relisted),
            "retired": len(diff.retired),
            "changed": len(diff.changed),
            "unchanged": diff.unchanged,
        }
        stored = await self.store.add_catalog_update(
            actor=actor,
            update={
                "effective_from": datetime.now(UTC).isoformat(),
                "source_kind": price_file.source_kind,
                "source_name": price_file.source_name,
                "sha256": price_file.sha256,
                "size_bytes": price_file.size_bytes,
                "models": len(price_file.entries),
                "summary": summary,
                "entries": price_file.entries,
            },
        )
        await self.refresh_catalog()
        update = next(u for u in self.catalog.updates if u.update_id == stored["update_id"])
        return update, diff

    async def catalog_updates(self) -> list[CatalogUpdate]:
        """Every stored catalog update (without its entries), oldest first."""
        return [_catalog_update(row) for row in await self.store.catalog_updates(entries=False)]

    # --- exchange rates ---------------------------------------------------------------------------

    async def set_fx_rate(self, spec: fx.FxRateSpec, principal: Principal | None = None) -> FxRate:
        """Set the tenant's rate of a currency (units per 1 USD) from `effective_from` (default now);
        admin only, audited. Costs stay in USD: rates only change what reports and budgets show."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "set exchange rates")
        currency = fx.check_currency(spec.currency, allow_base=False)
        effective_from = fx.moment_of(spec.effective_from or datetime.now(UTC))
        saved = await self.store.set_fx_rate(
            tenant=principal.tenant_id,
            actor=principal.actor,
            currency=currency,
            effective_from=effective_from,
            rate=spec.rate,
            most=fx.MAX_RATES_PER_CURRENCY,
        )
        return FxRate.model_validate(saved)

    async def list_fx_rates(
        self, principal: Principal | None = None, *, currency: str | None = None
    ) -> list[FxRate]:
        """The tenant's rates (of one currency if given), by currency and date; any role reads them."""
        principal = principal or Principal()
        code = None if currency is None else fx.check_currency(currency)
        rows = await self.store.fx_rates(tenant=principal.tenant_id, currency=code)
        return [FxRate.model_validate(row) for row in rows]

    async def delete_fx_rate(
        self, currency: str, effective_from: datetime | str, principal: Principal | None = None
    ) -> FxRate:
        """Delete the tenant's rate of `currency` from `effective_from` (admin; audited)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "delete exchange rates")
        deleted = await self.store.delete_fx_rate(
            tenant=principal.tenant_id,
            actor=principal.actor,
            currency=fx.check_currency(currency, allow_base=False),
            effective_from=fx.moment_of(effective_from),
        )
        return FxRate.model_validate(deleted)

    async def _rates(self, tenant: str, currency: str | None) -> fx.Rates | None:
        """The tenant's rates of `currency` for a conversion; None for none asked or USD (1 to 1)."""
        if currency is None or fx.check_currency(currency) == fx.BASE:
            return None
        code = fx.check_currency(currency)
        rows = await self.store.fx_rates(tenant=tenant, currency=code)
        return fx.Rates(code, [FxRate.model_validate(row) for row in rows])

    async def _with_currency_state(self, tenant: str, budgets: list[Budget]) -> list[Budget]:
        """Budgets declared in another currency, with the rate that made this period's USD limit."""
        declared = [budget for budget in budgets if budget.spec.currency is not None]
        if not declared:
            return budgets
        rows = await self.store.fx_rates(tenant=tenant)
        for budget in declared:
            code = str(budget.spec.currency)
            rates = fx.Rates(code, [FxRate.model_validate(row) for row in rows])
            rate = rates.at(_limit_moment(budget))
            budget.state.currency, budget.state.currency_limit = code, budget.spec.limit
            if rate is not None:
                budget.state.fx_rate, budget.state.fx_rate_from = rate.rate, rate.effective_from
        return budgets

    async def budget_rates(
        self, budgets: Sequence[Budget], currency: str, principal: Principal | None = None
    ) -> dict[str, FxRate]:
        """The rate each usd budget is shown at in `currency`: the one in force at its period's start
        (calendar periods), or now (total and rolling windows), as declared limits are converted.
        InvalidInput names a missing rate."""
        principal = principal or Principal()
        rates = await self._rates(principal.tenant_id, currency)
        if rates is None:
            return {}
        return {
            budget.spec.name: rates.require(
                _limit_moment(budget), f"the start of budget {budget.spec.name}'s period"
            )
            for budget in budgets
            if budget.spec.unit == "usd"
        }

    # --- usage ------------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery, principal: Principal | None = None) -> UsageResult:
        """Usage aggregated by any of user, session, project, team, feature, endpoint, provider, model and
        a time bucket. A member sees only its own user's usage."""
        principal = principal or Principal()
        filters, since, until, mask = await self._masked_scope(query, principal, timedelta(days=30))
        return await self._usage(
            principal.tenant_id,
            filters,
            since,
            until,
            query.timezone,
            group_by=query.group_by,
            bucket=query.bucket,
            limit=query.limit,
            mask=mask,
            currency=query.currency,
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
        mask: privacy.UserMask | None = None,
        currency: str | None = None,
    ) -> UsageResult:
        """The window's groups (at most `limit`) and its totals, from one scan; user keys pseudonymised
        by `mask`, if given; with a `currency`, each cost also converted at the tenant's rate in force when
        it occurred (a missing rate: InvalidInput)."""
        await self._check_timezone(timezone)
        rates = await self._rates(tenant, currency)
        rows, totals = await self.store.usage_report(
            tenant=tenant,
            since=since,
            until=until,
            filters=filters,
            group_by=group_by,
            bucket=bucket,
            timezone=timezone,
            limit=limit,
            fx=None if rates is None else rates.thresholds(),
        )
        if rates is not None and totals["unconverted_requests"]:
            raise fx.missing_rate(
                rates.currency,
                totals["first_unconverted_at"],
                f"{totals['unconverted_requests']} priced call(s) from then on have none",
                rates.rates[0] if rates.rates else None,
            )
        if mask is not None and "user" in group_by:
            rows = [{**row, "user": mask.user(row["user"])} for row in rows]
        return UsageResult(
            since=since,
            until=until,
            rows=[_usage_row(row, group_by) for row in rows],
            totals=_usage_row(totals, ()),
            currency=None if rates is None else rates.currency,
            fx_rates=[] if rates is None else rates.in_window(since, until),
        )

    # --- reports ----------------------------------------------------------------------------------

    async def report(self, query: reports.ReportQuery, principal: Principal | None = None) -> reports.Report:
        """One report view (rows, totals, notes; json): usage views cover a member's own user only,
        budgets and forecasts the budgets the principal may read. Render it with `reports.formatted`."""
        principal = principal or Principal()
        view = query.view
        if view == "chargeback":
            return await self._chargeback_report(query, principal)
        for name in ("period", "by"):
            if getattr(query, name) is not None:
                raise InvalidInput(name, getattr(query, name), "only with view 'chargeback'")
        if view in ("summary", "usage", "timeseries"):
            return await self._usage_report(query, principal)  # converted in SQL, cost by cost
        report = await self._view_report(query, principal)
        rates = await self._rates(principal.tenant_id, query.currency)
        if rates is None:
            return report
        return await self._report_in(report, rates, query, principal)

    async def _report_in(
        self, report: reports.Report, rates: fx.Rates, query: reports.ReportQuery, principal: Principal
    ) -> reports.Report:
        """A budgets, forecast, top, recommendations or accuracy report with its money also in a currency."""
        rows = report.rows
        row_rates: list[FxRate | None]
        if report.view in ("budgets", "forecast"):
            by_name = await self.budget_rates(await self.list_budgets(principal), rates.currency, principal)
            row_rates = [by_name.get(str(row["name"])) for row in rows]
            return reports.in_currency(report, rates.currency, row_rates)
        if report.view == "top":
            row_rates = [
                rates.require(datetime.fromisoformat(str(row["occurred_at"])), "a call of this report")
                for row in rows
            ]
            return reports.in_currency(report, rates.currency, row_rates)
        if report.view == "recommendations":
            assert report.until is not None
            closing = rates.require(report.until, "the end of the report's window")
            return reports.in_currency(report, rates.currency, [closing] * len(rows), closing)
        return reports.in_currency(report, rates.currency, [None] * len(rows))

    async def _view_report(self, query: reports.ReportQuery, principal: Principal) -> reports.Report:
        """The budgets, forecast, top, recommendations and accuracy views, in USD."""
        view = query.view
        if view == "budgets":
            return reports.budgets_report(await self.list_budgets(principal), now=datetime.now(UTC))
        default_window = reports.FORECAST_WINDOW if view == "forecast" else timedelta(days=30)
        filters, since, until, mask = await self._masked_scope(query, principal, default_window)
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
            if mask is not None:
                rows = [{**row, "user_id": mask.user(row["user_id"])} for row in rows]
            return reports.top_report(rows, since, until)
        if view == "accuracy":
            rows = await self.store.estimate_accuracy(
                tenant=tenant, since=since, until=until, filters=filters
            )
            return reports.accuracy_report(rows, since, until)
        windows = self.catalog.context_windows()
        stats = await self.store.model_usage_stats(
            tenant=tenant, since=since, until=until, filters=filters, context_windows=windows
        )
        return reports.recommendations_report(stats, self.catalog, since, until)

    async def _usage_report(self, query: reports.ReportQuery, principal: Principal) -> reports.Report:
        """Summary, usage or timeseries: the groups and the totals of the window in one scan."""
        filters, since, until, mask = await self._masked_scope(query, principal, timedelta(days=30))
        await self._check_timezone(query.timezone)  # before the bucket query uses it
        group_by = [] if query.view == "summary" else query.group_by
        bucket = (query.bucket or "day") if query.view == "timeseries" else query.bucket
        buckets: list[datetime] = []
        if query.view == "timeseries":
            assert bucket is not None
            _check_bucket_count(since, until, bucket)  # arithmetic: before the series is made in SQL
            buckets = await self.store.usage_buckets(
                since=since, until=until, bucket=bucket, timezone=query.timezone, limit=MAX_REPORT_ROWS + 1
            )
            if len(buckets) > MAX_REPORT_ROWS:  # a window at the limit whose ends fall inside buckets
                raise _too_many_buckets(since, until, bucket, len(buckets))
        result = await self._usage(
            principal.tenant_id,
            filters,
            since,
            until,
            query.timezone,
            group_by=group_by,
            bucket=None if query.view == "summary" else bucket,
            limit=MAX_REPORT_ROWS if query.view == "timeseries" else query.limit,
            mask=mask,
            currency=query.currency,
        )
        if query.view == "timeseries":
            assert bucket is not None
            return reports.timeseries_report(result, buckets, bucket, query.timezone)
        return reports.usage_report(result, "summary" if query.view == "summary" else "usage")

    async def _chargeback_report(self, query: reports.ReportQuery, principal: Principal) -> reports.Report:
        """Statements per cost centre for a calendar month, from the usage view's own query."""
        for name in ("since", "until"):
            if (moment := getattr(query, name)) is not None:
                raise InvalidInput(
                    name,
                    moment.isoformat(),
                    "not with view 'chargeback': it covers the calendar month given by period (YYYY-MM)",
                )
        await self._check_timezone(query.timezone)
        period = query.period or reports.current_month(datetime.now(UTC), query.timezone)
        since, until = reports.month_window(period, query.timezone)
        by = query.by or "team"
        month = query.model_copy(update={"since": since, "until": until})
        filters, since, until, mask = await self._masked_scope(month, principal, timedelta(days=31))
        result = await self._usage(
            principal.tenant_id,
            filters,
            since,
            until,
            query.timezone,
            group_by=[by, "model"],
            bucket=None,
            limit=MAX_REPORT_ROWS,
            mask=mask,
            currency=query.currency,
        )
        if len(result.rows) > MAX_REPORT_ROWS:
            raise InvalidInput(
                "by", by, f"at most {MAX_REPORT_ROWS:,} cost centre and model pairs: filter the report"
            )
        models = {str(row.keys["model"]) for row in result.rows}
        prices = await self._prices_in_force(principal, models, min(until, datetime.now(UTC)))
        return reports.chargeback_report(result, by=by, period=period, timezone=query.timezone, prices=prices)

    async def _prices_in_force(
        self, principal: Principal, models: set[str], at: datetime
    ) -> dict[str, Price | None]:
        """Each model's price at `at`: the tenant's override in force (an alias's own, else its target's),
        else the catalog's (an alias's target's; None: unpriced)."""
        overrides: dict[str, Price] = {}
        for row in await self.store.price_overrides(tenant=principal.tenant_id):  # newest first per model
            if row["model"] not in overrides and row["effective_from"] <= at:
                overrides[row["model"]] = Price(
                    **{k: row[k] for k in ("input", "output", "cache_read", "cache_write", "reasoning")}
                )
        prices: dict[str, Price | None] = {}
        for name in models:
            model = await self._model(name, principal.tenant_id)
            own = overrides.get(name) or overrides.get(model.alias_of or name)
            prices[name] = own or (None if model.source == "unknown" else model.price)
        return prices

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
            self.metrics.observe_alert_delivery(
                delivery["sink"], tenant=delivery["tenant_id"], error=error, retry_seconds=retry_seconds
            )

    async def ensure_usage_partitions(self, months_ahead: int = 3) -> int:
        """Create the monthly usage partitions of the next months; returns how many were new."""
        return await self.store.ensure_usage_partitions(months_ahead)

    async def forecast_alerts(self, *, min_elapsed: float = 0.1) -> int:
        """Write an alert for each budget period on course to run out before it ends."""
        return await self.store.forecast_alerts(min_elapsed=min_elapsed)

    async def anomaly_alerts(self) -> int:
        """Judge the spend of the hour in progress and of the hour before, per budget and per user under a
        shared budget, against the same hour of the week in recent weeks (see `tokenledger.anomalies`);
        write an anomaly alert for each spike, once per budget, period and user. Returns how many were new.
        One read per tenant, on a report connection under the report time limit; a tenant whose read fails
        is logged and skipped until the next run."""
        written = 0
        for tenant in await self.store.alert_tenants():
            try:
                candidates = await self.store.anomaly_candidates(
                    tenant=tenant, weeks=anomalies.BASELINE_WEEKS, floors=dict(anomalies.ANOMALY_FLOOR)
                )
            except TokenLedgerError as error:
                log.warning("anomaly alerts of tenant %r not judged this time: %s", tenant, error)
                continue
            spikes: dict[tuple[int, str], dict[str, Any]] = {}
            for row in candidates:  # by budget, subject and hour: the earlier hour of a pair wins
                verdict = anomalies.judge(row["spend"], row["baseline"], row["unit"])
                key = (row["budget_id"], row["subject"])
                if verdict is None or not verdict.spike or key in spikes:
                    continue
                spikes[key] = {
                    "budget_id": row["budget_id"],
                    "subject": row["subject"],
                    "period": anomalies.anomaly_period(row["period"]),
                    "hour_start": row["hour_start"].isoformat(),
                    "detail": _anomaly_detail(row, verdict),
                }
            if spikes:
                written += await self.store.raise_anomaly_alerts(tenant=tenant, found=list(spikes.values()))
        return written

    async def alert_user_labels(self, tenant: str, users: Collection[str]) -> dict[str, str]:
        """How each user id appears in an alert: as the sinks' recipients may read it. They read as a
        viewer does (scheduled reports to the same sinks are a viewer's): real ids, or pseudonyms where the
        tenant's `pseudonymize_users` setting is on. Every user id an alert shows passes through here, in
        every form (email, Slack, webhook)."""
        mask = await self.user_mask(Principal(tenant_id=tenant, role="viewer", key_id="alerts"))
        return {user: user if mask is None else str(mask.user(user)) for user in users}

    async def alert_context(self, alert: dict[str, Any]) -> alert_notices.AlertContext:
        """What a claimed alert's message adds to its stable fields: the budget's figures now, its top
        spenders along the budget's scope (over the anomalous hour for an anomaly, else the period so far)
        and the top recommendations of the period so far. Reads run on report connections under the
        report time limit; an error is the caller's to turn into a note."""
        tenant, now = alert["tenant_id"], datetime.now(UTC)
        found = await self.store.budgets(tenant=tenant, name=alert["budget"])
        if not found:
            return alert_notices.AlertContext(notes=[f"budget {alert['budget']} no longer exists"])
        budget = Budget.model_validate(found[0])
        state, notes = budget.state, []
        scope_kind, _, scope_value = state.scope.partition(":")
        scope_user = scope_value if scope_kind == "user" else None
        rolling = state.period in ("24h", "7d", "30d")
        figures = alert_notices.AlertFigures(
            scope=state.scope,  # a user scope is labelled below, with the other user ids
            period=state.period,
            timezone=state.timezone,
            unit=state.unit,
            limit=state.limit,
            used=state.used,
            reserved=state.reserved,
            remaining=state.remaining,
            percent_used=state.percent_used,
            period_start=state.period_start,
            period_end=None if rolling else state.resets_at,
            days_left=None if rolling or state.resets_at is None else _days_between(now, state.resets_at),
            as_of=now,
        )
        raised_in = datetime.fromisoformat(str(alert["period_start"]))
        if alert["kind"] != "anomaly" and not rolling and state.period_start not in (None, raised_in):
            notes.append(
                "the period this alert was raised in has ended: the figures are of the current period"
            )
        filters: dict[str, str] = {scope_kind: scope_value} if scope_kind != "global" else {}
        since = max(state.period_start or now - ALERT_CONTEXT_WINDOW, now - ALERT_CONTEXT_WINDOW)
        if state.period_start is None or state.period_start < since:
            notes.append(f"spenders and recommendations cover the last {ALERT_CONTEXT_WINDOW.days} days")
        dimensions = SPENDER_DIMENSIONS[scope_kind]
        spend_since, spend_until, spend_filters = since, now, filters
        subject_user = str(alert.get("subject") or "").removeprefix("user:") or None
        detail = alert.get("detail") or {}
        if alert["kind"] == "anomaly" and detail:
            spend_since = datetime.fromisoformat(detail["hour_start"])
            spend_until = datetime.fromisoformat(detail["hour_end"])
        if subject_user is not None:
            spend_filters = {**filters, "user": subject_user}
            dimensions = tuple(d for d in dimensions if d != "user")
        rows = await self.store.top_spenders(
            tenant=tenant,
            since=spend_since,
            until=spend_until,
            filters=spend_filters,
            dimensions=dimensions,
            unit=state.unit,
            limit=ALERT_TOP_SPENDERS,
        )
        users = {row["name"] for row in rows if row["dimension"] == "user" and row["name"] is not None}
        users |= {user for user in (subject_user, scope_user) if user is not None}
        labels = await self.alert_user_labels(tenant, users)
        if scope_user is not None:
            figures.scope = f"user:{labels[scope_user]}"
        spent = next((row["amount"] for row in rows if row["dimension"] == "total"), Decimal(0))
        spenders: dict[str, list[alert_notices.Spender]] = {}
        for row in rows:
            if row["dimension"] == "total":
                continue
            name = row["name"]
            if name is None:
                shown = reports.UNATTRIBUTED
            else:  # a user only as labelled: never a raw id the labels left out
                shown = labels[name] if row["dimension"] == "user" else name
            share = round(100 * row["amount"] / spent, 1) if spent else None
            spenders.setdefault(row["dimension"], []).append(
                alert_notices.Spender(name=shown, amount=row["amount"], share=share)
            )
        stats = await self.store.model_usage_stats(
            tenant=tenant,
            since=since,
            until=now,
            filters=filters,
            context_windows=self.catalog.context_windows(),
        )
        recommended = reports.recommendations_report(stats, self.catalog, since, now).rows
        return alert_notices.AlertContext(
            figures=figures,
            spenders_since=spend_since,
            spenders_until=spend_until,
            spent=spent,
            spenders={d: spenders[d] for d in dimensions if d in spenders},
            recommendations_since=since,
            recommendations_until=now,
            recommendations=[
                alert_notices.Recommendation(
                    kind=str(row["kind"]),
                    model=str(row["model"]),
                    suggestion=str(row["suggestion"]),
                    saving_usd=Decimal(str(row["saving_usd"])),
                    evidence=str(row["evidence"]),
                )
                for row in recommended[:ALERT_TOP_RECOMMENDATIONS]
            ],
            subject=labels[subject_user] if subject_user else None,
            notes=notes,
        )

    async def prune_usage(self, older_than: timedelta, principal: Principal | None = None) -> dict[str, Any]:
        """Drop whole monthly usage partitions older than `older_than`, keeping their daily totals."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "prune usage")
        if older_than < timedelta(days=1):
            raise InvalidInput("older_than", str(older_than), "at least 1 day")
        return await self.store.prune_usage(before=datetime.now(UTC) - older_than)

    # --- scheduled reports ------------------------------------------------------------------------

    async def add_schedule(
        self, spec: schedules.ScheduleSpec, principal: Principal | None = None
    ) -> schedules.Schedule:
        """Add a scheduled report (admin; audited): its first occurrence is the next one from now."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "manage schedules")
        kind, recipient = schedules.destination(spec.to)
        await self._check_timezone(spec.timezone)
        if spec.by is not None and spec.view not in ("usage", "chargeback"):
            raise InvalidInput(
                "by", spec.by, "only with view usage (a grouping) or chargeback (a cost centre)"
            )
        if spec.view == "chargeback" and spec.by not in (None, *get_args(reports.CostCentre)):
            raise InvalidInput("by", spec.by, "a cost centre: team, project, feature or user")
        now = datetime.now(UTC)
        answer = await self.store.add_schedule(
            tenant=principal.tenant_id,
            actor=principal.actor,
            spec={**spec.model_dump(mode="json"), "destination": kind, "recipient": recipient},
            next_run_at=schedules.next_occurrence(now, spec.every, spec.at, spec.timezone),
            max_schedules=schedules.MAX_SCHEDULES,
        )
        return schedules.Schedule.model_validate(answer)

    async def list_schedules(self, principal: Principal | None = None) -> list[schedules.Schedule]:
        """The tenant's scheduled reports (admin: they name recipients), each with its latest run."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "manage schedules")
        return [
            schedules.Schedule.model_validate(s)
            for s in await self.store.schedules(tenant=principal.tenant_id)
        ]

    async def delete_schedule(self, name: str, principal: Principal | None = None) -> schedules.Schedule:
        """Delete a scheduled report and its pending runs (admin; audited)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "manage schedules")
        answer = await self.store.delete_schedule(
            tenant=principal.tenant_id, actor=principal.actor, name=name
        )
        return schedules.Schedule.model_validate(answer)

    async def run_schedule_now(self, name: str, principal: Principal | None = None) -> schedules.ScheduleRun:
        """Queue a run of a schedule now, over the last day, week or month (admin; audited); a dispatcher
        delivers it like an occurrence."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "manage schedules")
        found = await self.store.schedules(tenant=principal.tenant_id, name=name)
        if not found:
            raise NotFound(f"name {name!r}: no such schedule in this tenant")
        schedule = schedules.Schedule.model_validate(found[0])
        until = datetime.now(UTC)
        answer = await self.store.run_schedule_now(
            tenant=principal.tenant_id,
            actor=principal.actor,
            name=name,
            since=schedules.window_before(until, schedule.every, schedule.timezone),
            until=until,
        )
        return schedules.ScheduleRun.model_validate(answer)

    async def start_due_schedule_runs(self, *, limit: int = 100) -> list[schedules.ScheduleRun]:
        """Record one run for each schedule (all tenants) whose occurrence has come, advancing it to its
        next occurrence; several due occurrences (after downtime) make one catch-up run. A schedule
        another process took meanwhile is skipped: each occurrence is started once."""
        started = []
        for due in await self.store.due_schedules(limit=limit):
            plan = schedules.plan_due(
                due["next_run_at"], due["now"], due["every"], due["at"], due["timezone"]
            )
            run = await self.store.start_schedule_run(
                tenant=due["tenant_id"],
                schedule_id=due["schedule_id"],
                expected=due["next_run_at"],
                next_run_at=plan.next_run_at,
                occurrence=plan.occurrence,
                kind=plan.kind,
                since=plan.since,
                missed=plan.missed,
                missed_from=plan.missed_from,
            )
            if run is not None:
                started.append(schedules.ScheduleRun.model_validate(run))
        return started

    async def claim_schedule_deliveries(
        self,
        sinks: Sequence[str],
        *,
        limit: int = 20,
        lease_seconds: float = 120,
        run: tuple[str, int] | None = None,
    ) -> list[schedules.Delivery]:
        """Runs due for these sinks (all tenants, or the one `run` (tenant, run_id)), each claimed by this
        caller alone for `lease_seconds`."""
        tenant, run_id = run if run is not None else (None, None)
        claimed = await self.store.claim_schedule_deliveries(
            sinks=sinks, limit=limit, lease_seconds=lease_seconds, tenant=tenant, run_id=run_id
        )
        return [schedules.Delivery.model_validate(d) for d in claimed]

    async def finish_schedule_delivery(
        self, delivery: schedules.Delivery, *, error: str | None = None, retry_seconds: float | None = None
    ) -> None:
        """Record a delivery: done when `error` is None, else retried after `retry_seconds` (None: stop)."""
        await self.store.finish_schedule_delivery(
            tenant=delivery.tenant_id,
            run_id=delivery.run_id,
            sink=delivery.sink,
            error=error,
            retry_seconds=retry_seconds,
        )

    async def scheduled_report(self, delivery: schedules.Delivery) -> reports.Report:
        """The report of a claimed run, over its window, as a viewer of its tenant sees it."""
        principal = Principal(
            tenant_id=delivery.tenant_id, role="viewer", key_id=f"schedule:{delivery.schedule}"
        )
        query: dict[str, Any] = {"view": delivery.view, "timezone": delivery.timezone}
        if delivery.view == "chargeback":
            # The month one period before the run: a monthly run on the 1st (and a daily one on the 1st)
            # sends the month just ended; other runs the month to date.
            anchor = schedules.window_before(delivery.until, delivery.every, delivery.timezone)
            query.update(period=reports.current_month(anchor, delivery.timezone), by=delivery.by or "team")
        elif delivery.view != "budgets":
            query.update(since=delivery.since, until=delivery.until)
            if delivery.view == "usage":
                query["group_by"] = [delivery.by or "model"]
        return await self.report(reports.ReportQuery.model_validate(query), principal)

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
        self,
        principal: Principal | None = None,
        *,
        days: int = 30,
        timezone: str = "UTC",
        top: int = 10,
        currency: str | None = None,
    ) -> dashboards.Dashboard:
        """What the web dashboard shows a principal over the last `days` days: a viewer or admin its
        tenant, a member its own user's usage and decisions and the budgets it may read; its money in
        `currency` at the tenant's rates (USD when none is given)."""
        principal = principal or Principal()
        code = None if currency is None else fx.check_currency(currency)
        if not 1 <= days <= 366:
            raise InvalidInput("days", days, "a whole number of days, 1 to 366")
        if not 1 <= top <= 100:
            raise InvalidInput("top", top, "1 to 100")
        await self._check_timezone(timezone)
        until = datetime.now(UTC)
        since = dashboards.window_start(until, days, timezone)
        member = principal.role == "member"
        listed = await self.list_budgets(principal)
        budgets = [b.state for b in listed]
        window = UsageQuery(since=since, until=until, timezone=timezone, currency=code)
        by_day = window.model_copy(update={"bucket": "day", "limit": days + 1})
        daily = await self.usage(by_day, principal)
        tops: dict[str, list[UsageRow]] = {}
        keys: tuple[GroupKey, ...] = ("project", "model") if member else ("user", "project", "model")
        for key in keys:
            grouped = window.model_copy(update={"group_by": [key], "limit": top})
            tops[key] = (await self.usage(grouped, principal)).rows
        data = dashboards.Dashboard(
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
            overrides=[] if principal.role == "viewer" else await self.list_overrides(principal, limit=20),
        )
        if daily.currency is None:
            return data
        return await self._dashboard_in(data, daily, listed, principal)

    async def _dashboard_in(
        self, data: dashboards.Dashboard, daily: UsageResult, budgets: list[Budget], principal: Principal
    ) -> dashboards.Dashboard:
        """The dashboard's money in the currency of `daily` (converted cost by cost in SQL): usage as
        converted, usd budgets and their alerts at the rate of their period's start."""
        currency = str(daily.currency)
        rates = await self._rates(principal.tenant_id, currency)
        assert rates is not None
        by_budget = await self.budget_rates(budgets, currency, principal)

        def usage(rows: list[UsageRow]) -> list[UsageRow]:
            return [row.model_copy(update={"cost_usd": row.cost_converted}) for row in rows]

        def budget(state: BudgetState) -> BudgetState:
            rate = by_budget.get(state.name)
            if rate is None:
                return state
            money = ("limit", "hard_limit", "used", "reserved", "remaining", "overage", "carried_over")
            return state.model_copy(
                update={k: fx.convert(v, rate.rate) for k in money if (v := getattr(state, k)) is not None}
            )

        def alert(item: dashboards.OpenAlert) -> dashboards.OpenAlert:
            if item.unit != "usd":
                return item
            rate = rates.require(item.period_start, f"the period of budget {item.budget}'s alert").rate
            return item.model_copy(
                update={"used": fx.convert(item.used, rate), "limit": fx.convert(item.limit, rate)}
            )

        daily_rows = usage(daily.rows)
        used = {rate.effective_from: rate for rate in [*daily.fx_rates, *by_budget.values()]}
        return data.model_copy(
            update={
                "currency": currency,
                "fx_rates": [used[moment] for moment in sorted(used)],
                "budgets": [budget(state) for state in data.budgets],
                "daily": dashboards.daily_series(
                    daily_rows, since=data.since, days=len(data.daily), timezone=data.timezone
                ),
                "totals": usage([daily.totals])[0],
                "top_users": usage(data.top_users),
                "top_projects": usage(data.top_projects),
                "top_models": usage(data.top_models),
                "alerts": [alert(item) for item in data.alerts],
            }
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
        mask = await self.user_mask(principal)
        return [
            dashboards.Decision(
                decided_at=r["decided_at"],
                budget=r["budget_name"],
                decision=r["decision"],
                reason=r["reason"],
                enforcement=r["enforcement"],
                user=r["user_id"] if mask is None else mask.user(r["user_id"]),
                model=r["model"],
            )
            for r in rows
        ]

    async def open_alerts(
        self, principal: Principal | None = None, *, budgets: Sequence[str] | None = None, limit: int = 20
    ) -> list[dashboards.OpenAlert]:
        """Alerts of the budgets' current periods, newest first: of the budgets the principal may read
        (and of the named ones only, if given); a member never sees one about another user's spend, a
        viewer sees the user an alert is about as `user_mask` says."""
        principal = principal or Principal()
        if principal.role == "member":
            readable = [budget.spec.name for budget in await self.list_budgets(principal)]
            budgets = [name for name in readable if budgets is None or name in budgets]
        rows = await self.store.open_alerts(
            tenant=principal.tenant_id, budgets=budgets, limit=limit, user=_member_user(principal)
        )
        mask = await self.user_mask(principal)
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
                subject=r["subject"] if mask is None else mask.scope(r["subject"]),
                deliveries=r["deliveries"],
            )
            for r in rows
        ]

    # --- override requests ------------------------------------------------------------------------

    async def request_override(
        self, request: OverrideRequest, principal: Principal | None = None
    ) -> Override:
        """Ask for a temporary increase of a budget the principal may read (admin or member; audited). It
        stays pending until an admin approves or denies it; the admins are told through the alert sinks.
        Approved, it raises the budget's limit and hard cap by `amount` from approval until `until`."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "request overrides")
        budget = await self.get_budget(request.budget, principal)
        _check_override(request, budget.spec)
        answer = await self.store.request_override(
            tenant=principal.tenant_id,
            actor=principal.actor,
            member_user=_member_user(principal),
            budget=request.budget,
            amount=request.amount,
            reason=request.reason,
            until=request.until,
            max_factor=MAX_OVERRIDE_FACTOR,
            max_ahead=timedelta(days=MAX_OVERRIDE_DAYS),
            max_pending=MAX_PENDING_OVERRIDES,
        )
        return Override.model_validate(answer)

    async def override_status(self, override_id: int, principal: Principal | None = None) -> Override:
        """One override request: a member's own (another's looks absent), or any of the tenant's (admin)."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "read override requests")
        found = await self.store.overrides(
            tenant=principal.tenant_id,
            member_user=_member_user(principal),
            override_id=_override_id(override_id),
            limit=1,
        )
        if not found:
            raise NotFound(f"override_id {override_id}: no such override request in this tenant")
        return Override.model_validate(found[0])

    async def list_overrides(
        self,
        principal: Principal | None = None,
        *,
        status: OverrideStatus | None = None,
        budget: str | None = None,
        limit: int = 100,
    ) -> list[Override]:
        """Override requests, newest first: a member's own, or the tenant's (admin); of one status (as
        shown, `expired` included) or budget when given."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "read override requests")
        if status is not None and status not in get_args(OverrideStatus):
            raise InvalidInput("status", status, f"one of {', '.join(get_args(OverrideStatus))}")
        if not 1 <= limit <= 500:
            raise InvalidInput("limit", limit, "1 to 500")
        found = await self.store.overrides(
            tenant=principal.tenant_id,
            member_user=_member_user(principal),
            status=status,
            budget=budget,
            limit=limit,
        )
        return [Override.model_validate(o) for o in found]

    async def cancel_override(self, override_id: int, principal: Principal | None = None) -> Override:
        """Withdraw a pending request (audited): a member its own, an admin any."""
        principal = principal or Principal()
        self._require(principal, ("admin", "member"), "cancel override requests")
        answer = await self.store.cancel_override(
            tenant=principal.tenant_id,
            actor=principal.actor,
            member_user=_member_user(principal),
            override_id=_override_id(override_id),
        )
        return Override.model_validate(answer)

    async def approve_override(
        self, override_id: int, principal: Principal | None = None, *, reason: str | None = None
    ) -> Override:
        """Approve a pending request (admin only; audited with `reason`): the override is in force from now
        until its `until`, and then reverts by itself."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "approve override requests")
        return await self._decide_override(override_id, principal, approve=True, reason=reason)

    async def deny_override(
        self, override_id: int, reason: str, principal: Principal | None = None
    ) -> Override:
        """Deny a pending request (admin only; audited with `reason`, which the requester reads)."""
        principal = principal or Principal()
        self._require(principal, ("admin",), "deny override requests")
        return await self._decide_override(override_id, principal, approve=False, reason=reason)

    async def _decide_override(
        self, override_id: int, principal: Principal, *, approve: bool, reason: str | None
    ) -> Override:
        if reason is not None or not approve:
            reason = _override_reason(reason)
        answer = await self.store.decide_override(
            tenant=principal.tenant_id,
            actor=principal.actor,
            override_id=_override_id(override_id),
            approve=approve,
            reason=reason,
        )
        return Override.model_validate(answer)

    async def claim_override_notices(
        self, sinks: Sequence[str], *, limit: int = 50, lease_seconds: float = 60
    ) -> list[OverrideNotice]:
        """Pending requests to tell the admins of (all tenants), each claimed for one sink by this caller
        alone for `lease_seconds`."""
        claimed = await self.store.claim_override_notices(
            sinks=sinks, limit=limit, lease_seconds=lease_seconds
        )
        return [OverrideNotice.model_validate(n) for n in claimed]

    async def finish_override_notice(
        self, notice: OverrideNotice, *, error: str | None = None, retry_seconds: float | None = None
    ) -> None:
        """Record a notice's delivery: done when `error` is None, else retried after `retry_seconds`
        (None: stop)."""
        await self.store.finish_override_notice(
            tenant=notice.tenant_id,
            override_id=notice.override_id,
            sink=notice.sink,
            error=error,
            retry_seconds=retry_seconds,
        )

    # --- access -----------------------------------------------------------------------------------

    async def _check_timezone(self, name: str, field: str = "timezone") -> None:
        """Refuse a time zone that PostgreSQL (buckets, periods) or Python (the dashboard) does not know."""
        _validate_timezone(name, field, await self.store.timezone_names())

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


def _member_user(principal: Principal) -> str | None:
    """The user a member acts for ('' for one bound to none), whose reservations alone it may touch;
    None for an admin."""
    return (principal.user or "") if principal.role == "member" else None


def _check_occurred_at(occurred_at: datetime, max_age: timedelta, what: str) -> None:
    now = datetime.now(UTC)
    if not now - max_age <= occurred_at <= now + CLOCK_SKEW:
        raise InvalidInput(
            "occurred_at",
            occurred_at.isoformat(),
            f"{what} is dated at most {max_age.days} days back and {CLOCK_SKEW.seconds // 60} minutes ahead "
            f"of now ({now.isoformat(timespec='seconds')})"
            + ("; an admin imports older usage with import_usage" if max_age == MAX_BACKDATE else ""),
        )


def calibration_factor(ratios: dict[str, list[Decimal]], user: str) -> float | None:
    """The factor for `user`'s estimates from each user's ratios (newest first): its own median once it
    has CALIBRATION_MIN_CALLS of them, else the median of at least CALIBRATION_MIN_USERS users' medians
    (one vote each), else None; held within CALIBRATION_BOUNDS."""
    own = ratios.get(user, [])
    if len(own) >= CALIBRATION_MIN_CALLS:
        ratio = statistics.median(own)
    else:
        votes = [statistics.median(r) for r in ratios.values() if len(r) >= CALIBRATION_MIN_CALLS]
        if len(votes) < CALIBRATION_MIN_USERS:
            return None
        ratio = statistics.median(votes)
    low, high = CALIBRATION_BOUNDS
    return round(min(max(float(ratio), low), high), 4)


def _validate_timezone(name: str, field: str, known: Collection[str]) -> None:
    """Refuse a zone not in `known` (the names PostgreSQL accepts: Store.timezone_names) or that zoneinfo
    cannot load. Python alone is not enough: it loads files such as posixrules, localtime or
    posix/Europe/Paris that PostgreSQL refuses."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    allowed = "an IANA time zone such as UTC or Europe/Paris (see pg_timezone_names)"
    if name not in known:
        raise InvalidInput(field, name, allowed)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidInput(field, name, allowed) from error


def _check_bucket_count(since: datetime, until: datetime, bucket: str) -> None:
    """Refuse a timeseries window of more than MAX_REPORT_ROWS buckets by arithmetic alone, so that the
    bucket series PostgreSQL makes for a window it accepts holds about that many rows at most."""
    count = math.ceil((until - since) / BUCKET_LENGTHS[bucket])
    if count > MAX_REPORT_ROWS:
        raise _too_many_buckets(since, until, bucket, count)


def _too_many_buckets(since: datetime, until: datetime, bucket: str, count: int) -> InvalidInput:
    longest = BUCKET_LENGTHS[bucket] * MAX_REPORT_ROWS
    return InvalidInput(
        "bucket",
        bucket,
        f"at most {MAX_REPORT_ROWS:,} buckets; since {since.isoformat()} to {until.isoformat()} spans "
        f"{count:,} {bucket}s: with bucket {bucket!r} the window (since, until) may span at most "
        f"{longest.days:,} days, or use a coarser bucket",
    )


def _validate_budget(spec: BudgetSpec, timezones: Collection[str]) -> None:
    """Rules a single field cannot express; each error names its field. `timezones`: the zone names
    PostgreSQL accepts."""
    if spec.scope != "global":
        kind, sep, value = spec.scope.partition(":")
        if not sep or kind not in SCOPE_KINDS or not value:
            raise InvalidInput(
                "scope", spec.scope, f"'global' or KIND:VALUE with KIND one of {', '.join(SCOPE_KINDS)}"
            )
        Attribution(**{kind: value})  # the value must be a valid identifier, as attributions are
    _validate_timezone(spec.timezone, "timezone", timezones)
    if spec.hard_limit is not None and spec.hard_limit < spec.limit:
        raise InvalidInput("hard_limit", str(spec.hard_limit), f"at least the limit ({spec.limit})")
    if spec.rollover == "carry" and spec.period in ("total", "24h", "7d", "30d"):
        raise InvalidInput("rollover", spec.rollover, "carry works with calendar periods (minute .. year)")
    if spec.rollover_cap is not None and spec.rollover != "carry":
        raise InvalidInput("rollover_cap", str(spec.rollover_cap), "only with rollover 'carry'")
    if len(spec.alert_thresholds) > 20:
        raise InvalidInput("alert_thresholds", len(spec.alert_thresholds), "at most 20 thresholds")


# --- override requests -----------------------------------------------------------------------------

# A check denied by one of these reasons has a budget an override could raise.
OVERRIDABLE_REASONS = frozenset({"limit", "priority_share"})
_OVERRIDE_REASON: TypeAdapter[str] = TypeAdapter(OverrideReason)


def _hint_override(result: CheckResult, principal: Principal) -> None:
    """On a denial by a budget's limit that the principal may ask to raise, say how to ask."""
    blocked = result.blocked_by
    if (
        result.decision != "deny"
        or blocked is None
        or blocked.reason not in OVERRIDABLE_REASONS
        or principal.role not in ("admin", "member")
        or not any(state.name == blocked.budget for state in result.budgets)
    ):
        return
    result.override_hint = f"budget_override action=request budget={blocked.budget}"
    result.warnings.append(f"budget {blocked.budget}: an override may be requested (override_hint)")


def _check_override(request: OverrideRequest, spec: BudgetSpec) -> None:
    """The bounds of an override request against its budget and the clock; each error names its field."""
    bound = spec.limit * MAX_OVERRIDE_FACTOR
    if request.amount > bound or (spec.unit == "tokens" and request.amount != request.amount.to_integral()):
        what = "whole tokens" if spec.unit == "tokens" else "USD"
        raise InvalidInput(
            "amount",
            format(request.amount, "f"),
            f"{what} above 0, at most {format(bound.normalize(), 'f')} ({MAX_OVERRIDE_FACTOR} times the "
            f"limit of budget {spec.name})",
        )
    now = datetime.now(UTC)
    latest = now + timedelta(days=MAX_OVERRIDE_DAYS)
    if not now < request.until <= latest:
        raise InvalidInput(
            "until",
            request.until.isoformat(),
            f"a moment after now ({now.isoformat(timespec='seconds')}) and at most {MAX_OVERRIDE_DAYS} days "
            "ahead: an ISO 8601 timestamp with its offset, or a duration such as 2h or 3d",
        )


def _override_reason(reason: str | None) -> str:
    """A decision's reason, bounded as a request's is."""
    try:
        return _OVERRIDE_REASON.validate_python(reason)
    except ValidationError as error:
        raise InvalidInput(
            "reason", reason, f"text of 1 to {MAX_OVERRIDE_REASON} characters without control characters"
        ) from error


def _override_id(override_id: int) -> int:
    if isinstance(override_id, bool) or not isinstance(override_id, int) or not 1 <= override_id < 2**63:
        raise InvalidInput("override_id", override_id, "a request's id: a whole number from 1")
    return override_id


def _usage_row(row: dict[str, Any], group_by: Sequence[str]) -> UsageRow:
    return UsageRow(
        keys={k: row.get(k) for k in group_by},
        bucket=row.get("bucket"),
        **{k: row[k] for k in UsageRow.model_fields if k not in ("keys", "bucket") and k in row},
    )


def _catalog_update(row: dict[str, Any]) -> CatalogUpdate:
    return CatalogUpdate(
        update_id=row["update_id"],
        effective_from=row["effective_from"],
        source_name=row["source_name"],
        source_kind=row["source_kind"],
        sha256=row["sha256"],
        models=row["models"],
        entries=row["entries"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _limit_moment(budget: Budget) -> datetime:
    """When a budget's USD limit takes its rate: a calendar period's start; for `total` and rolling
    windows, when the budget was last set (limits declared in a currency) or now (a display)."""
    state = budget.state
    if state.period in ("total", "24h", "7d", "30d") or state.period_start is None:
        return budget.updated_at if budget.spec.currency is not None else datetime.now(UTC)
    return state.period_start


def _days_between(start: datetime, end: datetime) -> Decimal:
    """Days from `start` to `end`, to a tenth (never negative)."""
    seconds = max((end - start).total_seconds(), 0.0)
    return Decimal(str(round(seconds / 86_400, 1)))


def _anomaly_detail(row: dict[str, Any], verdict: anomalies.Judgement) -> dict[str, Any]:
    """What an anomaly alert was judged on, as its `detail` (amounts as strings: exact)."""
    return {
        "hour_start": row["hour_start"].isoformat(),
        "hour_end": row["hour_end"].isoformat(),
        "timezone": row["timezone"],
        "spend": str(verdict.spend),
        "median": str(verdict.median),
        "mad": str(verdict.mad),
        "bar": str(verdict.bar),
        "floor": str(verdict.floor),
        "weeks": len(verdict.baseline),
        "baseline": [str(value) for value in verdict.baseline],
    }


def money(value: Decimal | None) -> str:
    """A cost for people: exact, or 'unpriced'."""
    return "unpriced" if value is None else f"${value.normalize():f}"
