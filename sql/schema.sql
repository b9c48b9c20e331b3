-- tokenledger: the current schema, applied as a whole on a fresh install.
-- The numbered files in migrations/ build the same schema step by step (a test proves it);
-- functions.sql holds the ledger's rules and is re-applied whenever it changes.
-- Every table leads with tenant_id, and no hot path joins across tenants.

create table tl_budget (
    tenant_id           text        not null,
    budget_id           bigint      generated always as identity,
    name                text        not null,
    scope_kind          text        not null,
    scope_value         text        not null default '',
    unit                text        not null,
    limit_amount        numeric     not null,
    hard_limit          numeric,
    period              text        not null,
    timezone            text        not null default 'UTC',
    enforcement         text        not null default 'hard',
    alert_thresholds    numeric[]   not null default '{50,75,90,100}',
    priority_shares     jsonb,
    rollover            text        not null default 'none',
    rollover_cap        numeric,
    tokens_per_minute   bigint,
    requests_per_minute bigint,
    unpriced_policy     text        not null default 'deny',
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    primary key (tenant_id, budget_id),
    unique (tenant_id, name),
    check (scope_kind in ('global', 'team', 'project', 'user', 'session', 'feature', 'endpoint')),
    check ((scope_kind = 'global') = (scope_value = '')),
    check (unit in ('tokens', 'usd')),
    check (limit_amount > 0),
    check (hard_limit is null or hard_limit >= limit_amount),
    check (period in ('minute', 'hour', 'day', 'week', 'month', 'year', 'total', '24h', '7d', '30d')),
    check (enforcement in ('hard', 'soft', 'shadow')),
    check (rollover in ('none', 'carry')),
    check (rollover_cap is null or rollover_cap >= 0),
    check (tokens_per_minute is null or tokens_per_minute > 0),
    check (requests_per_minute is null or requests_per_minute > 0),
    check (unpriced_policy in ('deny', 'allow'))
);
create index tl_budget_scope on tl_budget (tenant_id, scope_kind, scope_value);

-- One row per budget and period (calendar periods, `total`), or per hourly bucket (rolling windows).
-- A new period starts at zero because its row is keyed by its start: no reset job exists.
create table tl_budget_period (
    tenant_id    text        not null,
    budget_id    bigint      not null,
    period_start timestamptz not null,
    period_end   timestamptz,
    allowance    numeric     not null,           -- the limit for this period, rollover included
    cap          numeric,                        -- hard ceiling of committed + reserved; null: not enforced here
    carried      numeric     not null default 0, -- unused allowance rolled over from the previous period
    committed    numeric     not null default 0, -- spend within the cap
    overage      numeric     not null default 0, -- spend reported beyond the cap: recorded, never hidden
    reserved     numeric     not null default 0,
    requests     bigint      not null default 0,
    primary key (tenant_id, budget_id, period_start),
    foreign key (tenant_id, budget_id) references tl_budget on delete cascade,
    check (committed >= 0 and overage >= 0 and reserved >= 0),
    -- Zero overspend, enforced by the database itself: no code path can commit or reserve past the cap.
    check (cap is null or committed + reserved <= cap)
);

create table tl_rate_window (
    tenant_id    text        not null,
    budget_id    bigint      not null,
    window_start timestamptz not null,
    tokens       numeric     not null default 0,  -- numeric: no number of calls overflows it
    requests     bigint      not null default 0,
    primary key (tenant_id, budget_id, window_start),
    foreign key (tenant_id, budget_id) references tl_budget on delete cascade
);

create table tl_reservation (
    tenant_id             text        not null,
    reservation_id        uuid        not null,
    request_id            text,
    created_at            timestamptz not null default now(),
    expires_at            timestamptz not null,
    status                text        not null default 'active',
    finished_at           timestamptz,
    model                 text        not null,
    priority              text        not null,
    input_tokens          bigint      not null,
    granted_output_tokens bigint      not null,
    estimated_cost_usd    numeric,
    attribution           jsonb       not null default '{}',
    -- How the hold ended is `status`; whether the usage was recorded is settled_at and usage_id: an
    -- expired or released reservation is still settled, once.
    settled_at            timestamptz,
    usage_id              uuid,
    primary key (tenant_id, reservation_id),
    check (status in ('active', 'settled', 'released', 'expired')),
    check (status <> 'settled' or settled_at is not null)
);
create index tl_reservation_active on tl_reservation (tenant_id, expires_at) where status = 'active';

-- What a reservation holds in each budget's period; released exactly once (settle, release or expiry).
create table tl_reservation_hold (
    tenant_id      text        not null,
    reservation_id uuid        not null,
    budget_id      bigint      not null,
    period_start   timestamptz not null,
    amount         numeric     not null check (amount >= 0),
    expires_at     timestamptz not null,
    released       boolean     not null default false,
    primary key (tenant_id, reservation_id, budget_id),
    foreign key (tenant_id, reservation_id) references tl_reservation on delete cascade,
    foreign key (tenant_id, budget_id, period_start) references tl_budget_period on delete cascade
);
create index tl_hold_open on tl_reservation_hold (tenant_id, budget_id, period_start, expires_at)
    where not released;

-- Append-only usage events, partitioned by month: retention drops whole partitions.
create table tl_usage (
    tenant_id                   text        not null,
    usage_id                    uuid        not null,
    occurred_at                 timestamptz not null,
    recorded_at                 timestamptz not null default now(),
    request_id                  text,
    reservation_id              uuid,
    user_id                     text,
    session_id                  text,
    project                     text,
    team                        text,
    feature                     text,
    endpoint                    text,
    provider                    text,
    model                       text        not null,
    input_tokens                bigint      not null,
    output_tokens               bigint      not null,
    cache_read_input_tokens     bigint      not null default 0,
    cache_creation_input_tokens bigint      not null default 0,
    reasoning_output_tokens     bigint      not null default 0,
    total_tokens                bigint      not null,
    cost_usd                    numeric,    -- null: unpriced, never $0
    cost_source                 text,       -- catalog, tenant, provider
    estimated_input_tokens      bigint,
    estimated_cost_usd          numeric,
    method                      text        not null,
    status                      text        not null,
    latency_ms                  integer,
    tools_used                  text[]      not null default '{}',
    metadata                    jsonb       not null default '{}',
    primary key (tenant_id, occurred_at, usage_id),
    check (status in ('success', 'error', 'cancelled')),
    check (input_tokens >= 0 and output_tokens >= 0 and cache_read_input_tokens >= 0
           and cache_creation_input_tokens >= 0 and reasoning_output_tokens >= 0)
) partition by range (occurred_at);
create table tl_usage_default partition of tl_usage default;
create index tl_usage_user on tl_usage (tenant_id, user_id, occurred_at);
create index tl_usage_model on tl_usage (tenant_id, model, occurred_at);

-- Idempotency: the first answer to a request_id, returned to every replay. Keys are scoped per
-- (tenant, user): one user's key never replays another's answer ('' for calls without a user).
create table tl_request (
    tenant_id    text        not null,
    user_id      text        not null default '',
    kind         text        not null,
    request_id   text        not null,
    request_hash text        not null,
    response     jsonb,
    created_at   timestamptz not null default now(),
    primary key (tenant_id, user_id, kind, request_id)
);

-- Decisions worth showing later: denials, and what shadow or soft budgets would have denied.
create table tl_decision (
    tenant_id   text        not null,
    decision_id bigint      generated always as identity,
    decided_at  timestamptz not null default now(),
    budget_id   bigint,
    budget_name text,
    decision    text        not null,
    reason      text        not null,
    enforcement text,
    user_id     text,
    model       text,
    amount      numeric,
    request_id  text,
    primary key (tenant_id, decision_id)
);

-- The alert outbox: one row per budget, period and threshold, written by the crossing itself.
create table tl_alert (
    tenant_id       text        not null,
    alert_id        bigint      generated always as identity,
    budget_id       bigint      not null,
    budget_name     text        not null,
    period_start    timestamptz not null,
    threshold       numeric     not null,
    kind            text        not null default 'threshold',
    percent_used    numeric     not null,
    used            numeric     not null,
    limit_amount    numeric     not null,
    unit            text        not null,
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz,
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error      text,
    primary key (tenant_id, alert_id),
    unique (tenant_id, budget_id, period_start, threshold, kind)
);
create index tl_alert_pending on tl_alert (next_attempt_at) where delivered_at is null;

-- Per-tenant price overrides, versioned: usage is costed with the price in force at its time.
create table tl_price (
    tenant_id      text        not null,
    model          text        not null,
    effective_from timestamptz not null,
    input          numeric     not null check (input >= 0),
    output         numeric     not null check (output >= 0),
    cache_read     numeric     check (cache_read >= 0),
    cache_write    numeric     check (cache_write >= 0),
    reasoning      numeric     check (reasoning >= 0),
    created_at     timestamptz not null default now(),
    created_by     text,
    primary key (tenant_id, model, effective_from)
);

create table tl_api_key (
    tenant_id    text        not null,
    key_id       text        not null,
    key_hash     text        not null,
    role         text        not null,
    user_id      text,
    name         text,
    created_at   timestamptz not null default now(),
    created_by   text,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    primary key (tenant_id, key_id),
    check (role in ('admin', 'member', 'viewer'))
);
create unique index tl_api_key_hash on tl_api_key (key_hash);

create table tl_audit (
    tenant_id   text        not null,
    audit_id    bigint      generated always as identity,
    at          timestamptz not null default now(),
    actor       text        not null,
    action      text        not null,
    object_kind text        not null,
    object_id   text        not null,
    before      jsonb,
    after       jsonb,
    primary key (tenant_id, audit_id)
);

-- One row per alert and sink: a failing sink retries on its own schedule and never blocks the others.
create table tl_alert_delivery (
    tenant_id       text        not null,
    alert_id        bigint      not null,
    sink            text        not null,
    delivered_at    timestamptz,
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    claimed_until   timestamptz,
    last_error      text,
    primary key (tenant_id, alert_id, sink),
    foreign key (tenant_id, alert_id) references tl_alert on delete cascade
);
create index tl_alert_delivery_due on tl_alert_delivery (next_attempt_at) where delivered_at is null;

-- Daily totals of usage, written before a monthly partition is dropped: reports keep their totals.
create table tl_usage_daily (
    tenant_id                   text    not null,
    day                         date    not null,
    user_id                     text,
    session_id                  text,
    project                     text,
    team                        text,
    feature                     text,
    endpoint                    text,
    provider                    text,
    model                       text    not null,
    requests                    bigint  not null,
    input_tokens                numeric not null,  -- token sums are numeric: they cannot overflow
    output_tokens               numeric not null,
    cache_read_input_tokens     numeric not null,
    cache_creation_input_tokens numeric not null,
    reasoning_output_tokens     numeric not null,
    total_tokens                numeric not null,
    cost_usd                    numeric not null,
    unpriced_requests           bigint  not null,
    errors                      bigint  not null
);
create index tl_usage_daily_tenant_day on tl_usage_daily (tenant_id, day);

-- Reports: a hash of each call's prompt (never its text), to find repeated prompts. SHA-256 (hex) of the
-- prompt text or of its messages' canonical JSON; null when the caller sent neither. The reservation
-- keeps the hash check_budget took, for the usage that settles it.
alter table tl_usage add column prompt_hash text;
alter table tl_reservation add column prompt_hash text;
-- Repeated prompts per model, found by one ordered pass over this index (index-only: no heap reads,
-- no hash table of every distinct prompt of the month). Measured by bench/reports.py.
create index tl_usage_prompt on tl_usage (tenant_id, prompt_hash, model) include (occurred_at, cost_usd)
    where prompt_hash is not null;

-- For an estimated model, the count before calibration (input_tokens holds what was reserved).
alter table tl_reservation add column counted_input_tokens bigint;

-- A tenant's settings, one JSON value per key (provider counting; other features add their keys).
-- Changed by admins only, each change audited in tl_audit.
create table tl_tenant_setting (
    tenant_id  text        not null,
    key        text        not null,
    value      jsonb       not null,
    updated_at timestamptz not null default now(),
    updated_by text        not null,
    primary key (tenant_id, key)
);

-- How the reserved input was counted (exact, estimate, provider, pg_tiktoken): the accuracy report
-- compares each method's counts with what the provider then reported.
alter table tl_reservation add column count_method text;

-- Scheduled reports (0012): schedules, their occurrences (runs) and per-sink delivery state.
-- A report delivered every day, week (Mondays) or month (the 1st) at a local time. next_run_at is the
-- next occurrence, computed by Python (zoneinfo) and advanced by one compare-and-set per occurrence.
create table tl_schedule (
    tenant_id   text        not null,
    schedule_id bigint      generated always as identity,
    name        text        not null,
    report_view text        not null,
    every       text        not null,
    at_local    time        not null,
    timezone    text        not null,
    destination text        not null,
    recipient   text,                   -- email only: overrides the configured recipients
    group_by    text,                   -- usage: the grouping; chargeback: the cost centre
    next_run_at timestamptz not null,
    created_at  timestamptz not null default now(),
    created_by  text        not null,
    primary key (tenant_id, schedule_id),
    unique (tenant_id, name),
    check (report_view in ('summary', 'usage', 'budgets', 'forecast', 'recommendations', 'chargeback')),
    check (every in ('day', 'week', 'month')),
    check (destination in ('email', 'slack', 'webhook')),
    check (recipient is null or destination = 'email')
);
create index tl_schedule_due on tl_schedule (next_run_at);

-- One row per occurrence delivered (or a run-now): the unique key is what makes it happen once.
-- A catch-up after downtime is one run standing for `missed` earlier occurrences.
create table tl_schedule_run (
    tenant_id    text        not null,
    run_id       bigint      generated always as identity,
    schedule_id  bigint      not null,
    occurrence   timestamptz not null,
    kind         text        not null,
    since        timestamptz not null,  -- the window the report covers
    until        timestamptz not null,
    missed       integer     not null default 0,
    missed_from  timestamptz,
    created_at   timestamptz not null default now(),
    delivered_at timestamptz,
    primary key (tenant_id, run_id),
    unique (tenant_id, schedule_id, occurrence),
    foreign key (tenant_id, schedule_id) references tl_schedule on delete cascade,
    check (kind in ('scheduled', 'catch_up', 'manual')),
    check (since < until and missed >= 0)
);
create index tl_schedule_run_pending on tl_schedule_run (tenant_id, run_id) where delivered_at is null;

-- One row per run and sink, claimed like alert deliveries (FOR UPDATE SKIP LOCKED and a lease).
create table tl_schedule_delivery (
    tenant_id       text        not null,
    run_id          bigint      not null,
    sink            text        not null,
    delivered_at    timestamptz,
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    claimed_until   timestamptz,
    last_error      text,
    primary key (tenant_id, run_id, sink),
    foreign key (tenant_id, run_id) references tl_schedule_run on delete cascade
);
create index tl_schedule_delivery_due on tl_schedule_delivery (next_attempt_at) where delivered_at is null;

-- Catalog updates and exchange rates (0014).

-- Price lists an operator loaded with `tokenledger catalog update`, applied over the bundled catalog by
-- every server process. The catalog is process-wide, shared by every tenant, so this is a reference
-- table without tenant_id (a tenant prices its own models with tl_price); a sharded PostgreSQL (Citus)
-- would replicate it to every node. Append-only: history is never rewritten.
create table tl_catalog_update (
    update_id      bigint      generated always as identity primary key,
    effective_from timestamptz not null,   -- its prices are in force from this moment (the update's)
    source_kind    text        not null,
    source_name    text        not null,   -- the file's name, or the URL it was fetched from
    sha256         text        not null,   -- of the file's bytes
    size_bytes     bigint      not null,
    models         integer     not null,
    entries        jsonb       not null,   -- the models it lists, as catalog entries (tokenledger.pricefile)
    created_at     timestamptz not null default now(),
    created_by     text        not null,
    check (source_kind in ('litellm', 'openrouter')),
    check (sha256 ~ '^[0-9a-f]{64}$'),
    check (size_bytes >= 0 and models >= 0)
);

-- A tenant's exchange rates, dated: units of `currency` per 1 USD from effective_from on. Costs stay in
-- USD; reports, the dashboard and budgets show them in a currency at these rates.
create table tl_fx_rate (
    tenant_id      text        not null,
    currency       text        not null,
    effective_from timestamptz not null,
    rate           numeric     not null,
    created_at     timestamptz not null default now(),
    created_by     text        not null,
    primary key (tenant_id, currency, effective_from),
    check (currency ~ '^[A-Z]{3}$' and currency <> 'USD'),
    check (rate > 0)
);

-- A USD budget declared in another currency: its limits as declared; limit_amount and hard_limit hold
-- them in USD at the rate in force when the budget was set, each calendar period's at its own start.
alter table tl_budget add column currency text;
alter table tl_budget add column currency_limit numeric;
alter table tl_budget add column currency_hard_limit numeric;
alter table tl_budget add constraint tl_budget_currency
    check (currency is null or (unit = 'usd' and currency_limit > 0 and currency ~ '^[A-Z]{3}$'));

-- Privacy and fallback models (0017).
-- One secret per tenant: 32 random bytes from Python's `secrets`, created on first use. HMAC-SHA256 keys
-- derived from it make user pseudonyms (shown to viewers when the tenant's pseudonymize_users setting is
-- on) and the keyed prompt hashes of tl_usage and tl_reservation. Never logged, never returned; an admin's
-- rotation replaces it (every pseudonym changes; new prompt hashes no longer match older ones).
create table tl_tenant_secret (
    tenant_id  text        not null primary key,
    secret     bytea       not null check (length(secret) >= 32),
    created_at timestamptz not null default now(),
    rotated_at timestamptz
);

-- A call made on a fallback model: the model asked for (model holds the one used); null otherwise.
alter table tl_usage add column requested_model text;
alter table tl_usage_daily add column requested_model text;

-- Override requests (0016): a temporary increase of a budget's limit, asked for and approved.
-- A member (or an admin) asks for `amount` more (in the budget's unit) until `until`; an admin approves or
-- denies it. An approved override raises the limit and the hard cap of every period of its budget while
-- it is in force, from its approval until `until`; expiry needs no job (the rules sum the overrides in
-- force at the moment they judge). `status` holds what people did; 'expired' is derived from `until`.
create table tl_override (
    tenant_id       text        not null,
    override_id     bigint      generated always as identity,
    budget_id       bigint      not null,
    unit            text        not null,  -- the budget's unit when asked: the override applies only in it
    amount          numeric     not null,
    reason          text        not null,
    until           timestamptz not null,
    status          text        not null default 'pending',
    requested_by    text        not null,  -- the actor (API key id, or local:ROLE)
    user_id         text,                  -- a member's user (its own requests); null for an admin's
    requested_at    timestamptz not null default now(),
    decided_at      timestamptz,           -- approved (the override's start), denied or cancelled
    decided_by      text,
    decision_reason text,
    notified_at     timestamptz,           -- every sink told the admins of the request
    primary key (tenant_id, override_id),
    foreign key (tenant_id, budget_id) references tl_budget on delete cascade,
    check (status in ('pending', 'approved', 'denied', 'cancelled')),
    check (unit in ('tokens', 'usd')),
    check (amount > 0),
    check ((status = 'pending') = (decided_at is null))
);
-- The overrides in force for a budget: probed by every check that locks one of its periods.
create index tl_override_in_force on tl_override (tenant_id, budget_id, until) where status = 'approved';
create index tl_override_requester on tl_override (tenant_id, user_id, status);
create index tl_override_unnotified on tl_override (requested_at) where notified_at is null and status = 'pending';

-- The approved override amount a period row's cap and allowance include (set when a check or settle
-- fits the row's cap to the overrides in force; see tl_fit_cap).
alter table tl_budget_period add column override_amount numeric not null default 0;

-- One row per override request and sink, claimed like alert deliveries (FOR UPDATE SKIP LOCKED, a lease).
create table tl_override_delivery (
    tenant_id       text        not null,
    override_id     bigint      not null,
    sink            text        not null,
    delivered_at    timestamptz,
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    claimed_until   timestamptz,
    last_error      text,
    primary key (tenant_id, override_id, sink),
    foreign key (tenant_id, override_id) references tl_override on delete cascade
);
create index tl_override_delivery_due on tl_override_delivery (next_attempt_at) where delivered_at is null;
