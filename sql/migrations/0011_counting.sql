-- 0011: tenant settings, and the method behind each pre-flight count
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
