-- 0003: per-sink delivery state of the alert outbox, and daily usage rollups kept after retention
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
    input_tokens                bigint  not null,
    output_tokens               bigint  not null,
    cache_read_input_tokens     bigint  not null,
    cache_creation_input_tokens bigint  not null,
    reasoning_output_tokens     bigint  not null,
    total_tokens                bigint  not null,
    cost_usd                    numeric not null,
    unpriced_requests           bigint  not null,
    errors                      bigint  not null
);
create index tl_usage_daily_tenant_day on tl_usage_daily (tenant_id, day);
