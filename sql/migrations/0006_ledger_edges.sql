-- 0006: the ledger's edges: usage recorded once per reservation whoever freed it, idempotency keys per
-- user, and sums that cannot overflow bigint
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

-- How a reservation's hold ended (status) and whether its usage was recorded (settled_at, usage_id) are
-- two facts: an expired or released reservation is still settled once, late.
alter table tl_reservation add column settled_at timestamptz;
alter table tl_reservation add column usage_id uuid;
-- Usage already recorded for a reservation, whatever its status says (a late settle left it 'expired').
update tl_reservation r set settled_at = u.recorded_at, usage_id = u.usage_id
  from tl_usage u
 where u.tenant_id = r.tenant_id and u.reservation_id = r.reservation_id;
-- Settled reservations whose usage rows were pruned by retention.
update tl_reservation set settled_at = finished_at where status = 'settled' and settled_at is null;
alter table tl_reservation add check (status <> 'settled' or settled_at is not null);

-- Idempotency keys are scoped per (tenant, user): one user's key never replays another's answer.
-- '' stands for calls without a user.
alter table tl_request add column user_id text not null default '';
update tl_request q set user_id = coalesce(r.attribution ->> 'user', '')
  from tl_reservation r
 where q.kind = 'check' and r.tenant_id = q.tenant_id and r.request_id = q.request_id;
update tl_request q set user_id = coalesce(u.user_id, '')
  from tl_usage u
 where q.kind = 'track' and u.tenant_id = q.tenant_id and u.request_id = q.request_id;
alter table tl_request drop constraint tl_request_pkey;
alter table tl_request add primary key (tenant_id, user_id, kind, request_id);

-- Token sums that grow with the number of calls are numeric: no number of calls overflows them.
alter table tl_rate_window alter column tokens type numeric;
alter table tl_usage_daily alter column input_tokens type numeric,
    alter column output_tokens type numeric,
    alter column cache_read_input_tokens type numeric,
    alter column cache_creation_input_tokens type numeric,
    alter column reasoning_output_tokens type numeric,
    alter column total_tokens type numeric;
