-- 0016: override requests: a temporary increase of a budget's limit, asked for and approved
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
