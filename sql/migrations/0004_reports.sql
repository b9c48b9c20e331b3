-- 0004: reports: a hash of each call's prompt (never its text), to find repeated prompts
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

-- SHA-256 (hex) of the prompt text or of its messages' canonical JSON; null when the caller sent neither.
alter table tl_usage add column prompt_hash text;
-- Taken at check_budget (which sees the prompt) and carried to the usage that settles the reservation.
alter table tl_reservation add column prompt_hash text;

-- Repeated prompts per model, found by one ordered pass over this index (index-only: no heap reads,
-- no hash table of every distinct prompt of the month). Measured by bench/reports.py.
create index tl_usage_prompt on tl_usage (tenant_id, prompt_hash, model) include (occurred_at, cost_usd)
    where prompt_hash is not null;
