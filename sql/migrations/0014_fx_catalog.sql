-- 0014: catalog updates without a release, and exchange rates per tenant
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
