-- 0012: scheduled reports: schedules, their occurrences (runs) and per-sink delivery state
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
