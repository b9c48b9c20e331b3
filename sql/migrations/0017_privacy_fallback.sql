-- 0017: a per-tenant secret (pseudonyms of user ids, keyed prompt hashes), and the model a fallback replaced
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

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
