-- 0002: API keys and the audit log
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
