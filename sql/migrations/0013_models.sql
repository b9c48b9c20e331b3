-- 0013: tenant model aliases, and the bill mode of each usage
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

-- A tenant's own names for catalog models (an Azure deployment, a fine-tune, a gateway's name): a call
-- naming the alias counts and prices as its target. Matched case-insensitively, as catalog names are;
-- changed by admins only, each change audited in tl_audit.
create table tl_model_alias (
    tenant_id  text        not null,
    alias      text        not null,  -- as the tenant wrote it
    target     text        not null,  -- a catalog model, never another alias
    created_at timestamptz not null default now(),
    created_by text        not null,
    primary key (tenant_id, alias)
);
create unique index tl_model_alias_name on tl_model_alias (tenant_id, lower(alias));

-- How the call was billed (a Batch API call, a service tier, the lifetime of its cache writes), and the
-- catalog model a tenant alias named in `model` counted and priced as.
alter table tl_usage add column batch boolean not null default false;
alter table tl_usage add column service_tier text not null default 'standard';
alter table tl_usage add column cache_ttl text not null default '5m';
alter table tl_usage add column alias_of text;
alter table tl_usage add check (service_tier in ('standard', 'flex', 'priority') and cache_ttl in ('5m', '1h')
                                and not (batch and service_tier <> 'standard'));
