-- tokenledger: the ledger's rules. Each public function (tl_check, tl_track, tl_release, tl_extend,
-- tl_expire_reservations, tl_set_budget, tl_delete_budget, tl_set_price) is one round trip
-- and one transaction. Python prepares, SQL decides, Python explains.
--
-- Lock order, kept by every function so that two requests never deadlock:
--   1. the idempotency row (tl_request) of the call, if any;
--   2. per budget, in budget_id order: the budget row for rolling windows, then its period
--      rows in period_start order;
--   3. rate-limit windows in budget_id order;
--   4. reservation and hold rows.
--
-- Errors use our own SQLSTATEs, mapped to Python exceptions by the store:
--   TL400 invalid input, TL404 not found, TL409 conflict.

-- This file is re-applied whole whenever it changes (see store.migrate), in one transaction: the previous
-- version's functions are dropped first, so that a function may change its signature or return type.
do $$
declare
    previous regprocedure;
begin
    for previous in
        select p.oid::regprocedure from pg_proc p
         where p.pronamespace = current_schema()::regnamespace and p.proname like 'tl\_%' and p.prokind = 'f'
    loop
        execute format('drop function %s', previous);
    end loop;
end $$;

-- The start and end of the period that contains `at`: calendar periods in the budget's time zone,
-- an hourly bucket for rolling windows, the epoch for `total`.
create or replace function tl_period_bounds(p_period text, p_tz text, p_at timestamptz,
                                            out period_start timestamptz, out period_end timestamptz)
language plpgsql immutable as $$
declare
    local_start timestamp;
begin
    if p_period = 'total' then
        period_start := 'epoch'::timestamptz;
        period_end := null;
    elsif p_period in ('24h', '7d', '30d') then
        period_start := date_trunc('hour', p_at);
        period_end := period_start + interval '1 hour';
    else
        local_start := date_trunc(p_period, p_at at time zone p_tz);
        period_start := local_start at time zone p_tz;
        period_end := (local_start + ('1 ' || p_period)::interval) at time zone p_tz;
    end if;
end $$;

create or replace function tl_window_length(p_period text) returns interval
language sql immutable as $$
    select case p_period when '24h' then interval '24 hours'
                         when '7d' then interval '7 days'
                         when '30d' then interval '30 days' end
$$;

-- When the window a rolling budget reports on frees up capacity next, or the period ends.
create or replace function tl_resets_at(b tl_budget, p_at timestamptz) returns timestamptz
language sql stable as $$
    select case when tl_window_length(b.period) is not null then date_trunc('hour', p_at) + interval '1 hour'
                else (tl_period_bounds(b.period, b.timezone, p_at)).period_end end
$$;

-- The period row of budget `b` that contains `p_at`, created if missing and locked FOR UPDATE.
-- A new calendar period carries the unused allowance of the one before when rollover is on.
create or replace function tl_lock_period(b tl_budget, p_at timestamptz) returns tl_budget_period
language plpgsql as $$
declare
    bounds record;
    prev tl_budget_period;
    carried numeric := 0;
    row_out tl_budget_period;
    rolling boolean := tl_window_length(b.period) is not null;
begin
    bounds := tl_period_bounds(b.period, b.timezone, p_at);
    if rolling then
        -- The whole window is one unit of enforcement: serialise on the budget row.
        perform 1 from tl_budget where tenant_id = b.tenant_id and budget_id = b.budget_id for no key update;
    end if;
    select * into row_out from tl_budget_period
     where tenant_id = b.tenant_id and budget_id = b.budget_id and period_start = bounds.period_start
       for update;
    if found then
        return row_out;
    end if;
    if b.rollover = 'carry' and not rolling and b.period <> 'total' then
        select * into prev from tl_budget_period
         where tenant_id = b.tenant_id and budget_id = b.budget_id and period_end = bounds.period_start;
        if found then
            carried := greatest(prev.allowance - prev.committed - prev.overage, 0);
            if b.rollover_cap is not null then
                carried := least(carried, b.rollover_cap);
            end if;
        end if;
    end if;
    insert into tl_budget_period as p (tenant_id, budget_id, period_start, period_end, allowance, cap, carried)
    values (b.tenant_id, b.budget_id, bounds.period_start, bounds.period_end,
            tl_period_limit(b, bounds.period_start, false) + carried,
            case when b.enforcement = 'hard' and not rolling
                 then tl_period_limit(b, bounds.period_start, true) + carried end,
            carried)
    on conflict (tenant_id, budget_id, period_start) do update set requests = p.requests
    returning * into row_out;
    return row_out;
end $$;

-- The figures of one budget in one period, as the rules and BudgetState read them.
do $$
begin
    if to_regtype('tl_usage_figures') is null then
        create type tl_usage_figures as (used numeric, reserved numeric, overage numeric, allowance numeric,
                                         cap numeric, carried numeric, requests bigint, period_start timestamptz,
                                         override_amount numeric);
    elsif not exists (select 1 from pg_type t join pg_attribute a on a.attrelid = t.typrelid
                       where t.oid = 'tl_usage_figures'::regtype and a.attname = 'override_amount') then
        -- 0016: the approved override in force, included in allowance and cap.
        alter type tl_usage_figures add attribute override_amount numeric;
    end if;
end $$;

-- Used and reserved amounts that count against `b` at `p_at`, read from the table: the period row for
-- calendar periods, the sum of the window's hourly buckets for rolling ones. Open holds past their
-- expiry do not count. The approved overrides in force at `p_at` raise allowance and cap, as a check that
-- locked the row would fit them (tl_fit_cap): this read needs no write when one expires.
create or replace function tl_usage_now(b tl_budget, p_at timestamptz) returns tl_usage_figures
language plpgsql stable as $$
declare
    win interval := tl_window_length(b.period);
    bounds record := tl_period_bounds(b.period, b.timezone, p_at);
    raised numeric := tl_override_amount(b, p_at);
    f tl_usage_figures;
    expired numeric;
begin
    if win is null then
        select p.committed + p.overage, p.reserved, p.overage, p.allowance + raised, p.cap, p.carried,
               p.requests, p.period_start, raised
          into f
          from tl_budget_period p
         where p.tenant_id = b.tenant_id and p.budget_id = b.budget_id and p.period_start = bounds.period_start;
        if not found then
            f := row(0, 0, 0, tl_period_limit(b, bounds.period_start, false) + raised,
                     case when b.enforcement = 'hard' then tl_period_limit(b, bounds.period_start, true) + raised end,
                     0, 0, bounds.period_start, raised);
        end if;
    else
        select coalesce(sum(p.committed + p.overage), 0), coalesce(sum(p.reserved), 0), 0, b.limit_amount + raised,
               case when b.enforcement = 'hard' then coalesce(b.hard_limit, b.limit_amount) + raised end, 0,
               coalesce(sum(p.requests), 0), bounds.period_start - win + interval '1 hour', raised
          into f
          from tl_budget_period p
         where p.tenant_id = b.tenant_id and p.budget_id = b.budget_id
           and p.period_start > bounds.period_start - win;
    end if;
    select coalesce(sum(h.amount), 0) into expired
      from tl_reservation_hold h
     where h.tenant_id = b.tenant_id and h.budget_id = b.budget_id and not h.released
       and h.expires_at <= p_at
       and (win is null and h.period_start = bounds.period_start
            or win is not null and h.period_start > bounds.period_start - win);
    f.reserved := f.reserved - expired;
    if win is null and f.cap is not null then
        -- The cap the next check fits (tl_fit_cap): never below what stays committed and held.
        f.cap := greatest(coalesce(b.hard_limit, b.limit_amount) + f.carried + raised,
                          f.used - f.overage + f.reserved);
    end if;
    return f;
end $$;

-- The figures of `b` from its locked period row `per` (calendar periods: no second read), or from the
-- table (rolling windows, or no row at hand).
create or replace function tl_figures_of(b tl_budget, per tl_budget_period, p_at timestamptz)
returns tl_usage_figures
language plpgsql stable as $$
begin
    if per.period_start is null or tl_window_length(b.period) is not null then
        return tl_usage_now(b, p_at);
    end if;
    return row(per.committed + per.overage, per.reserved, per.overage, per.allowance + per.override_amount,
               per.cap, per.carried, per.requests, per.period_start, per.override_amount)::tl_usage_figures;
end $$;

-- A budget's live state, as the BudgetState model expects it.
create or replace function tl_state_json(b tl_budget, f tl_usage_figures, p_at timestamptz) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'name', b.name,
        'scope', case when b.scope_kind = 'global' then 'global' else b.scope_kind || ':' || b.scope_value end,
        'unit', b.unit, 'limit', f.allowance, 'hard_limit', b.hard_limit, 'period', b.period,
        'timezone', b.timezone, 'enforcement', b.enforcement,
        'period_start', case when b.period = 'total' then null else f.period_start end,
        'resets_at', tl_resets_at(b, p_at),
        'used', f.used, 'reserved', f.reserved, 'overage', f.overage, 'carried_over', f.carried,
        'override', coalesce(f.override_amount, 0),
        'remaining', greatest(f.allowance - f.used - f.reserved, 0),
        'percent_used', round(100 * f.used / f.allowance, 2), 'requests', f.requests,
        'status', case when f.used >= f.allowance then 'exceeded'
                       when 100 * f.used / f.allowance
                            >= coalesce((select min(t) from unnest(b.alert_thresholds) t where t >= 75), 75)
                       then 'warning' else 'ok' end)
$$;

create or replace function tl_budget_state(b tl_budget, p_at timestamptz) returns jsonb
language sql stable as $$
    select tl_state_json(b, tl_usage_now(b, p_at), p_at)
$$;

-- Budgets whose scope matches an attribution, in lock order: a union of one equality per scope kind, so
-- that each is a probe of the (tenant_id, scope_kind, scope_value) index. An OR of the same equalities
-- was planned as a scan of every budget of the tenant (0.5 ms more per check per 1,000 budgets, measured
-- with bench/ledger.py's 1,000 per-user budgets); test_combining reads the plan.
create or replace function tl_matching_budgets(p_tenant text, p_attr jsonb) returns setof tl_budget
language sql stable as $$
    select * from (
        select * from tl_budget where tenant_id = p_tenant and scope_kind = 'global' and scope_value = ''
        union all
        select * from tl_budget where tenant_id = p_tenant and scope_kind = 'user' and scope_value = p_attr ->> 'user'
        union all
        select * from tl_budget where tenant_id = p_tenant and scope_kind = 'team' and scope_value = p_attr ->> 'team'
        union all
        select * from tl_budget
         where tenant_id = p_tenant and scope_kind = 'project' and scope_value = p_attr ->> 'project'
        union all
        select * from tl_budget
         where tenant_id = p_tenant and scope_kind = 'session' and scope_value = p_attr ->> 'session'
        union all
        select * from tl_budget
         where tenant_id = p_tenant and scope_kind = 'feature' and scope_value = p_attr ->> 'feature'
        union all
        select * from tl_budget
         where tenant_id = p_tenant and scope_kind = 'endpoint' and scope_value = p_attr ->> 'endpoint'
    ) b
     order by b.budget_id
$$;

-- The price in force for a model at a time: the tenant's newest override, else the catalog's.
create or replace function tl_price_at(p_tenant text, p_model text, p_at timestamptz, p_catalog jsonb)
returns jsonb language sql stable as $$
    select coalesce(
        (select jsonb_build_object('input', input, 'output', output, 'cache_read', cache_read,
                                   'cache_write', cache_write, 'reasoning', reasoning, 'source', 'tenant')
           from tl_price
          where tenant_id = p_tenant and model = p_model and effective_from <= p_at
          order by effective_from desc limit 1),
        p_catalog || jsonb_build_object('source', 'catalog'))
$$;

-- The context tier of a price that a call reaches: the last (they ascend) whose above_input_tokens its
-- whole input (uncached + cache read + cache write) exceeds; null below every tier.
create or replace function tl_tier(p_price jsonb, p_whole_input bigint) returns jsonb
language sql immutable as $$
    select t from jsonb_array_elements(coalesce(p_price -> 'tiers', '[]')) with ordinality as x(t, n)
     where p_whole_input > (t ->> 'above_input_tokens')::bigint
     order by n desc limit 1
$$;

-- The rate sets of a price that a call reads, most specific first (tokenledger.pricing.rate_sets): the
-- tier reached, its rates for the mode then its standard rates; then the mode's rates; then the standard
-- rates. p_mode: standard, batch, flex or priority. A flat price (a tenant's override) is one set.
create or replace function tl_rate_sets(p_price jsonb, p_mode text, p_whole_input bigint) returns jsonb[]
language plpgsql immutable as $$
declare
    tier jsonb := case when p_price ? 'tiers' then tl_tier(p_price, p_whole_input) end;
    sets jsonb[] := '{}';
begin
    if tier is not null then
        if p_mode <> 'standard' and jsonb_typeof(tier -> p_mode) = 'object' then
            sets := sets || (tier -> p_mode);
        end if;
        sets := sets || tier;
    end if;
    if p_mode <> 'standard' and jsonb_typeof(p_price -> p_mode) = 'object' then
        sets := sets || (p_price -> p_mode);
    end if;
    return sets || p_price;
end $$;

-- The first rate of `p_kind` published in the sets (in their order), or null.
create or replace function tl_rate(p_sets jsonb[], p_kind text) returns numeric
language sql immutable as $$
    select (s ->> p_kind)::numeric from unnest(p_sets) with ordinality as x(s, n)
     where s ->> p_kind is not null order by n limit 1
$$;

-- Whether a price publishes rates for the mode (its own, or the tier's the call reaches); where it does
-- not, the call is priced at standard rates (tokenledger.pricing: the cost's `price_mode`).
create or replace function tl_mode_published(p_price jsonb, p_mode text, p_whole_input bigint) returns boolean
language sql immutable as $$
    select p_mode = 'standard' or coalesce(jsonb_typeof(p_price -> p_mode) = 'object', false)
        or coalesce(jsonb_typeof(tl_tier(p_price, p_whole_input) -> p_mode) = 'object', false)
$$;

-- The exact cost of a usage at a price, or null when the model is unpriced (never $0): exactly the rule
-- of tokenledger.pricing.cost. Each rate is the first published in the call's rate sets (tl_rate_sets).
-- Input excludes cache reads and writes, which are priced at their own rates (else the input rate); a
-- 1-hour cache write (p_cache_ttl '1h') at the 1-hour rate, else the 5-minute one; reasoning is part of
-- output, priced at its rate if published, else the output rate. A local runtime's rates are $0: its
-- cost is 0, a price.
create or replace function tl_cost(p_price jsonb, p_input bigint, p_output bigint, p_cache_read bigint,
                                   p_cache_write bigint, p_reasoning bigint, p_mode text default 'standard',
                                   p_cache_ttl text default '5m') returns numeric
language plpgsql immutable as $$
declare
    rates jsonb;
    rate_in numeric;
    rate_out numeric;
    rate_read numeric;
    rate_write numeric;
    rate_write_1h numeric;
    rate_reasoning numeric;
begin
    foreach rates in array tl_rate_sets(p_price, p_mode, p_input + p_cache_read + p_cache_write) loop
        rate_in := coalesce(rate_in, (rates ->> 'input')::numeric);
        rate_out := coalesce(rate_out, (rates ->> 'output')::numeric);
        rate_read := coalesce(rate_read, (rates ->> 'cache_read')::numeric);
        rate_write := coalesce(rate_write, (rates ->> 'cache_write')::numeric);
        rate_write_1h := coalesce(rate_write_1h, (rates ->> 'cache_write_1h')::numeric);
        rate_reasoning := coalesce(rate_reasoning, (rates ->> 'reasoning')::numeric);
    end loop;
    if rate_in is null or rate_out is null then
        return null;
    end if;
    return p_input * rate_in
         + p_cache_read * coalesce(rate_read, rate_in)
         + p_cache_write * coalesce(case when p_cache_ttl = '1h' then rate_write_1h end, rate_write, rate_in)
         + (p_output - p_reasoning) * rate_out
         + p_reasoning * coalesce(rate_reasoning, rate_out);
end $$;

-- Claims a request_id for this call of user p_user ('' without one): keys are scoped per (tenant, user),
-- so one user's key never replays another's answer. Returns null when the call is new; the stored answer
-- (with duplicate=true) when it is a replay; raises TL409 when the id was used for other content.
-- A concurrent duplicate waits on the primary key until the first call commits.
create or replace function tl_claim_request(p_tenant text, p_user text, p_kind text, p_request_id text,
                                            p_hash text)
returns jsonb language plpgsql as $$
declare
    earlier tl_request;
begin
    if p_request_id is null then
        return null;
    end if;
    insert into tl_request (tenant_id, user_id, kind, request_id, request_hash)
    values (p_tenant, p_user, p_kind, p_request_id, p_hash)
    on conflict do nothing;
    if found then
        return null;
    end if;
    select * into earlier from tl_request
     where tenant_id = p_tenant and user_id = p_user and kind = p_kind and request_id = p_request_id;
    if earlier.request_hash <> p_hash then
        raise exception 'request_id % was already used for a different %: a replay must repeat the same content',
            p_request_id, case p_kind when 'check' then 'check_budget' else 'track_usage' end
            using errcode = 'TL409';
    end if;
    return earlier.response || jsonb_build_object('duplicate', true);
end $$;

create or replace function tl_remember_response(p_tenant text, p_user text, p_kind text, p_request_id text,
                                                p_response jsonb)
returns jsonb language sql as $$
    update tl_request set response = p_response
     where p_request_id is not null and tenant_id = p_tenant and user_id = p_user and kind = p_kind
       and request_id = p_request_id;
    select p_response;
$$;

-- Releases holds on one locked period row whose reservations expired; returns the amount freed.
create or replace function tl_release_expired_holds(p_tenant text, p_budget_id bigint, p_period_start timestamptz,
                                                    p_at timestamptz) returns numeric
language plpgsql as $$
declare
    freed numeric;
begin
    with expired as (
        update tl_reservation_hold h set released = true
         where h.tenant_id = p_tenant and h.budget_id = p_budget_id and h.period_start = p_period_start
           and not h.released and h.expires_at <= p_at
        returning h.amount)
    select coalesce(sum(amount), 0) into freed from expired;
    if freed > 0 then
        update tl_budget_period set reserved = reserved - freed
         where tenant_id = p_tenant and budget_id = p_budget_id and period_start = p_period_start;
    end if;
    return freed;
end $$;

-- Check a request against every matching budget and rate limit and, when allowed and p_reserve,
-- reserve it in all of them atomically. Returns the CheckResult as jsonb.
create or replace function tl_check(
    p_tenant text, p_request_id text, p_request_hash text, p_model text, p_attr jsonb,
    p_input_tokens bigint, p_max_output bigint, p_priority text, p_allow_partial boolean,
    p_reserve boolean, p_ttl_seconds double precision, p_catalog_price jsonb, p_method text,
    p_prompt_hash text default null, p_counted_input bigint default null, p_mode text default 'standard',
    p_alias_of text default null)
returns jsonb language plpgsql
-- Generic plans: the statements here are key lookups, and re-planning them per call cost more
-- than running them (measured: a check 0.83 ms -> 0.29 ms).
set plan_cache_mode = force_generic_plan as $$
declare
    now_at timestamptz := clock_timestamp();
    replay jsonb;
    rate_sets jsonb[];
    rate_in numeric;
    rate_out numeric;
    priced boolean;
    b tl_budget;
    budgets tl_budget[] := '{}';
    periods tl_budget_period[] := '{}';  -- the locked period row of budgets[i] (when reserving)
    per tl_budget_period;
    u tl_usage_figures;
    i integer;
    avail numeric;
    share numeric;
    allowed_amount numeric;
    fit_output numeric;  -- numeric: a large allowance over a tiny rate exceeds bigint
    granted bigint := p_max_output;
    blocked jsonb;
    blocked_reason text;
    retry_after integer;
    warnings text[] := '{}';
    rate tl_rate_window;
    amount numeric;
    reservation uuid;
    expires timestamptz;
    states jsonb := '[]';
    result jsonb;
    decision text;
begin
    if p_reserve and p_request_id is not null then
        replay := tl_claim_request(p_tenant, coalesce(p_attr ->> 'user', ''), 'check', p_request_id,
                                   p_request_hash);
        if replay is not null then
            return replay;
        end if;
    end if;

    -- The tenant's price override in force (for an alias: its own, else its target's), else the
    -- catalog's rates for the mode (p_mode) at the tier the input reaches.
    select t.input, t.output into rate_in, rate_out from tl_price t
     where t.tenant_id = p_tenant and t.model = p_model and t.effective_from <= now_at
     order by t.effective_from desc limit 1;
    if not found and p_alias_of is not null then
        select t.input, t.output into rate_in, rate_out from tl_price t
         where t.tenant_id = p_tenant and t.model = p_alias_of and t.effective_from <= now_at
         order by t.effective_from desc limit 1;
    end if;
    if not found then
        rate_sets := tl_rate_sets(p_catalog_price, p_mode, p_input_tokens);
        rate_in := tl_rate(rate_sets, 'input');
        rate_out := tl_rate(rate_sets, 'output');
    end if;
    priced := rate_in is not null and rate_out is not null;

    -- Pass 1: lock what this request touches (in budget order), freeing holds that expired there.
    for b in select * from tl_matching_budgets(p_tenant, p_attr) loop
        budgets := budgets || b;
        per := null;
        if p_reserve then
            per := tl_lock_period(b, now_at);
            if exists (select 1 from tl_reservation_hold h
                        where h.tenant_id = p_tenant and h.budget_id = b.budget_id
                          and h.period_start = per.period_start and not h.released and h.expires_at <= now_at)
            then
                per.reserved := per.reserved
                                - tl_release_expired_holds(p_tenant, b.budget_id, per.period_start, now_at);
            end if;
            per := tl_fit_cap(b, per, now_at);  -- the overrides in force now (see tl_fit_cap)
        end if;
        periods := periods || per;
    end loop;

    -- Pass 2: the largest output every budget allows.
    for i in 1 .. coalesce(array_length(budgets, 1), 0) loop
        b := budgets[i];
        u := tl_figures_of(b, periods[i], now_at);
        if b.unit = 'usd' and not priced then
            if b.unpriced_policy = 'deny' then
                if blocked is null then
                    blocked := jsonb_build_object('budget', b.name, 'reason', 'unpriced_model',
                        'remaining', greatest(coalesce(u.cap, u.allowance) - u.used - u.reserved, 0),
                        'resets_at', tl_resets_at(b, now_at));
                end if;
                continue;
            end if;
            warnings := warnings || format('model %s has no price: USD budget %s allows it by policy, '
                                           'its cost is not counted', p_model, b.name);
            continue;
        end if;
        avail := coalesce(u.cap, u.allowance) - u.used - u.reserved;
        share := coalesce((b.priority_shares ->> p_priority)::numeric, 1);
        allowed_amount := greatest(least(avail, avail * share), 0);
        -- the largest output that fits in allowed_amount (input counts in full)
        if b.unit = 'tokens' then
            fit_output := floor(allowed_amount - p_input_tokens);
        elsif rate_out = 0 then
            fit_output := case when allowed_amount >= p_input_tokens * rate_in then p_max_output else -1 end;
        else
            fit_output := floor((allowed_amount - p_input_tokens * rate_in) / rate_out);
        end if;
        if fit_output >= p_max_output then
            continue;
        end if;
        blocked_reason := case when share < 1 and avail > 0
                                    and (case when b.unit = 'tokens' then p_input_tokens + p_max_output
                                              else p_input_tokens * rate_in + p_max_output * rate_out end) <= avail
                               then 'priority_share' else 'limit' end;
        if b.enforcement <> 'hard' then
            warnings := warnings || format('%s budget %s would deny this request (%s)', b.enforcement, b.name,
                                           blocked_reason);
            if p_reserve then
                insert into tl_decision (tenant_id, budget_id, budget_name, decision, reason, enforcement,
                                         user_id, model, request_id)
                values (p_tenant, b.budget_id, b.name, 'would_deny', blocked_reason, b.enforcement,
                        p_attr ->> 'user', p_model, p_request_id);
            end if;
            continue;
        end if;
        if p_allow_partial and fit_output >= 1 then
            granted := least(granted, fit_output);
        elsif blocked is null then
            blocked := jsonb_build_object('budget', b.name, 'reason', blocked_reason,
                                          'remaining', greatest(avail, 0), 'resets_at', tl_resets_at(b, now_at));
            retry_after := ceil(extract(epoch from tl_resets_at(b, now_at) - now_at));
        end if;
    end loop;

    -- Rate limits: fixed one-minute windows, shared by every process through these rows.
    if blocked is null then
        foreach b in array budgets loop
            continue when b.tokens_per_minute is null and b.requests_per_minute is null;
            if p_reserve then
                insert into tl_rate_window as w (tenant_id, budget_id, window_start)
                values (p_tenant, b.budget_id, date_trunc('minute', now_at))
                on conflict (tenant_id, budget_id, window_start) do update set requests = w.requests
                returning * into rate;
            else
                select * into rate from tl_rate_window
                 where tenant_id = p_tenant and budget_id = b.budget_id
                   and window_start = date_trunc('minute', now_at);
            end if;
            if b.requests_per_minute is not null and coalesce(rate.requests, 0) + 1 > b.requests_per_minute then
                blocked_reason := 'rate_limit_requests';
            elsif b.tokens_per_minute is not null
                  and coalesce(rate.tokens, 0) + p_input_tokens + granted > b.tokens_per_minute then
                blocked_reason := 'rate_limit_tokens';
            else
                continue;
            end if;
            blocked := jsonb_build_object('budget', b.name, 'reason', blocked_reason, 'remaining',
                case when blocked_reason = 'rate_limit_requests'
                     then greatest(b.requests_per_minute - coalesce(rate.requests, 0), 0)
                     else greatest(b.tokens_per_minute - coalesce(rate.tokens, 0), 0) end,
                'resets_at', date_trunc('minute', now_at) + interval '1 minute');
            retry_after := greatest(ceil(extract(epoch from date_trunc('minute', now_at) + interval '1 minute'
                                                 - now_at)), 1);
            exit;
        end loop;
    end if;

    if blocked is not null then
        decision := 'deny';
        granted := 0;
        if p_reserve then
            insert into tl_decision (tenant_id, budget_id, budget_name, decision, reason, enforcement,
                                     user_id, model, request_id)
            select p_tenant, x.budget_id, x.name, 'deny', blocked ->> 'reason', 'hard',
                   p_attr ->> 'user', p_model, p_request_id
              from unnest(budgets) x where x.name = blocked ->> 'budget';
        end if;
    else
        decision := case when granted < p_max_output then 'partial' else 'allow' end;
    end if;

    -- Pass 3: reserve the granted amount in every budget (rows already locked in pass 1).
    if decision <> 'deny' and p_reserve then
        reservation := gen_random_uuid();
        expires := now_at + make_interval(secs => p_ttl_seconds);
        insert into tl_reservation (tenant_id, reservation_id, request_id, expires_at, model, priority,
                                    input_tokens, granted_output_tokens, estimated_cost_usd, attribution,
                                    prompt_hash, counted_input_tokens, count_method)
        values (p_tenant, reservation, p_request_id, expires, p_model, p_priority, p_input_tokens, granted,
                case when priced then p_input_tokens * rate_in + granted * rate_out end, p_attr,
                p_prompt_hash, p_counted_input, p_method);
        for i in 1 .. coalesce(array_length(budgets, 1), 0) loop
            b := budgets[i];
            amount := case when b.unit = 'tokens' then p_input_tokens + granted
                           when priced then p_input_tokens * rate_in + granted * rate_out
                           else 0 end;
            update tl_budget_period p set reserved = p.reserved + amount, requests = p.requests + 1
             where p.tenant_id = p_tenant and p.budget_id = b.budget_id and p.period_start = periods[i].period_start
            returning * into per;
            periods[i] := per;
            insert into tl_reservation_hold (tenant_id, reservation_id, budget_id, period_start, amount, expires_at)
            values (p_tenant, reservation, b.budget_id, per.period_start, amount, expires);
            if b.tokens_per_minute is not null or b.requests_per_minute is not null then
                update tl_rate_window set tokens = tokens + p_input_tokens + granted, requests = requests + 1
                 where tenant_id = p_tenant and budget_id = b.budget_id
                   and window_start = date_trunc('minute', now_at);
            end if;
        end loop;
    end if;

    for i in 1 .. coalesce(array_length(budgets, 1), 0) loop
        b := budgets[i];
        u := tl_figures_of(b, periods[i], now_at);
        states := states || tl_state_json(b, u, now_at);
        if decision <> 'deny' and b.hard_limit is not null and u.used + u.reserved > u.allowance then
            warnings := warnings || format('budget %s is in its overage band (limit %s, hard limit %s)',
                                           b.name, u.allowance, b.hard_limit);
        end if;
    end loop;
    if not priced then
        warnings := warnings || format('model %s is unpriced: cost cannot be estimated', p_model);
    end if;

    result := jsonb_build_object(
        'allowed', decision <> 'deny', 'decision', decision,
        'reservation_id', reservation, 'input_tokens', p_input_tokens,
        'requested_output_tokens', p_max_output, 'granted_output_tokens', granted,
        'expires_at', expires,
        'estimated_cost_usd', case when priced then p_input_tokens * rate_in + granted * rate_out end,
        'method', p_method, 'blocked_by', blocked, 'budgets', states,
        'retry_after_seconds', retry_after, 'warnings', to_jsonb(warnings), 'duplicate', false);
    if p_reserve and p_request_id is not null then
        perform tl_remember_response(p_tenant, coalesce(p_attr ->> 'user', ''), 'check', p_request_id, result);
    end if;
    return result;
end $$;

-- The period rows a track changes, in lock order: those of every budget matching `p_attr` at `p_post_at`
-- (where the usage posts) and those the reservation still holds. tl_track locks them; tl_track_many locks
-- every request's before applying any, so that batches keep the lock order too.
create or replace function tl_track_lock_keys(p_tenant text, p_reservation_id uuid, p_attr jsonb,
                                              p_post_at timestamptz)
returns table (budget_id bigint, period_start timestamptz) language sql stable as $$
    select x.budget_id, x.period_start from (
        select m.budget_id, (tl_period_bounds(m.period, m.timezone, p_post_at)).period_start
          from tl_matching_budgets(p_tenant, p_attr) m
        union
        select h.budget_id, h.period_start from tl_reservation_hold h
         where h.tenant_id = p_tenant and h.reservation_id = p_reservation_id and not h.released
    ) x order by 1, 2
$$;

-- Record one usage event and post it to every matching budget; settles its reservation if given.
-- Returns the TrackResult as jsonb.
--
-- A settle records its usage exactly once, whatever freed the reservation's hold before it (its settle,
-- an explicit release, expiry by the sweeper or lazily by another call): status says how the hold ended,
-- settled_at and usage_id that the usage was recorded. It posts to the periods the reservation was taken
-- in, whatever occurred_at says, and occurred_at must lie between the reservation's creation and now
-- (each less or plus p_clock_skew). A member (p_member_user) settles only its own user's reservations.
-- Every refusal raises before anything is written: the transaction rolls back whole.
-- p_requested_model: the model the caller asked for when a fallback model ran instead (kept when it differs).
create or replace function tl_track(
    p_tenant text, p_request_id text, p_request_hash text, p_reservation_id uuid, p_model text,
    p_provider text, p_attr jsonb, p_input bigint, p_output bigint, p_cache_read bigint, p_cache_write bigint,
    p_reasoning bigint, p_reported_cost numeric, p_catalog_price jsonb, p_method text, p_status text,
    p_latency_ms integer, p_tools text[], p_metadata jsonb, p_occurred_at timestamptz,
    p_estimated_input bigint, p_prompt_hash text, p_member_user text, p_clock_skew interval,
    p_requested_model text default null, p_batch boolean default false,
    p_service_tier text default 'standard', p_cache_ttl text default '5m', p_alias_of text default null)
returns jsonb language plpgsql
-- Generic plans: the statements here are key lookups, and re-planning them per call cost more
-- than running them (measured: a check 0.83 ms -> 0.29 ms).
set plan_cache_mode = force_generic_plan as $$
declare
    now_at timestamptz := clock_timestamp();
    at timestamptz := coalesce(p_occurred_at, now_at);  -- when the usage happened: its row and its price
    post_at timestamptz := at;  -- the moment whose periods the usage counts in (a settle: its reservation's)
    replay jsonb;
    res tl_reservation;
    attr jsonb := p_attr;
    key text;
    price jsonb;
    mode text;
    cost numeric;
    cost_source text;
    total bigint := p_input + p_output + p_cache_read + p_cache_write;
    b tl_budget;
    budgets tl_budget[] := '{}';
    lock_keys record;
    per tl_budget_period;
    u tl_usage_figures;
    amount numeric;
    room numeric;
    before_pct numeric;
    after_pct numeric;
    threshold numeric;
    alert_row tl_alert;
    alerts jsonb := '[]';
    states jsonb := '[]';
    warnings text[] := '{}';
    usage uuid := gen_random_uuid();
    result jsonb;
begin
    if p_request_id is not null then
        replay := tl_claim_request(p_tenant, coalesce(p_attr ->> 'user', ''), 'track', p_request_id,
                                   p_request_hash);
        if replay is not null then
            return replay;
        end if;
    end if;

    if p_reservation_id is not null then
        select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id;
        -- A member settles only its own user's reservations; others look absent to it.
        if not found
           or (p_member_user is not null and coalesce(res.attribution ->> 'user', '') <> p_member_user) then
            raise exception 'reservation_id %: no such reservation in this tenant', p_reservation_id
                using errcode = 'TL404';
        end if;
        -- The reservation's attribution holds; a track may add fields but not contradict it.
        for key in select jsonb_object_keys(res.attribution) loop
            if attr ? key and attr ->> key <> res.attribution ->> key then
                raise exception '%: % does not match the reservation''s attribution', key, attr ->> key
                    using errcode = 'TL400';
            end if;
        end loop;
        if p_occurred_at is not null
           and (p_occurred_at < res.created_at - p_clock_skew or p_occurred_at > now_at + p_clock_skew) then
            raise exception 'occurred_at %: not when this reservation''s call ran; allowed: from its creation (%) '
                            'to now (%), give or take % of clock skew', p_occurred_at, res.created_at, now_at,
                            p_clock_skew using errcode = 'TL400';
        end if;
        if res.settled_at is not null then
            raise exception 'reservation_id %: already settled at % (usage_id %); its usage is recorded once: '
                            'a retry must repeat the first settle''s request_id', p_reservation_id, res.settled_at,
                            res.usage_id using errcode = 'TL409';
        end if;
        attr := attr || res.attribution;
        post_at := res.created_at;
    end if;

    for b in select * from tl_matching_budgets(p_tenant, attr) loop
        budgets := budgets || b;
    end loop;

    -- Lock every period row this call changes (those it posts to and those the reservation holds),
    -- in (budget_id, period_start) order.
    for lock_keys in select * from tl_track_lock_keys(p_tenant, p_reservation_id, attr, post_at) loop
        select * into b from tl_budget where tenant_id = p_tenant and budget_id = lock_keys.budget_id;
        per := tl_lock_period(b, lock_keys.period_start);
        -- Holds that expired here free their capacity before this usage is posted (else it would
        -- count as overage against capacity nobody holds any more).
        if exists (select 1 from tl_reservation_hold h
                    where h.tenant_id = p_tenant and h.budget_id = b.budget_id
                      and h.period_start = per.period_start and not h.released and h.expires_at <= now_at)
        then
            per.reserved := per.reserved
                            - tl_release_expired_holds(p_tenant, b.budget_id, per.period_start, now_at);
        end if;
        -- Fitted while this settle's own holds still count: what they free stays room for its usage.
        perform tl_fit_cap(b, per, now_at);
    end loop;

    if p_reservation_id is not null then
        select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id
           for update;
        if res.settled_at is not null then  -- a concurrent settle committed while this one waited
            raise exception 'reservation_id %: already settled at % (usage_id %); its usage is recorded once: '
                            'a retry must repeat the first settle''s request_id', p_reservation_id, res.settled_at,
                            res.usage_id using errcode = 'TL409';
        end if;
        with freed as (
            update tl_reservation_hold h set released = true
             where h.tenant_id = p_tenant and h.reservation_id = p_reservation_id and not h.released
            returning h.budget_id, h.period_start, h.amount)
        update tl_budget_period p set reserved = p.reserved - f.amount
          from freed f
         where p.tenant_id = p_tenant and p.budget_id = f.budget_id and p.period_start = f.period_start;
        if res.status <> 'active' or res.expires_at <= now_at then
            warnings := warnings || format(
                'reservation %s was %s at %s, before this settle: its usage is recorded in its period, '
                'as overage where its capacity was taken meanwhile', p_reservation_id,
                case when res.status = 'released' then 'released' else 'expired' end,
                case when res.status = 'released' then res.finished_at else res.expires_at end);
        end if;
        update tl_reservation
           set status = case when res.status <> 'active' then res.status
                             when res.expires_at <= now_at then 'expired' else 'settled' end,
               finished_at = coalesce(res.finished_at, now_at), settled_at = now_at, usage_id = usage
         where tenant_id = p_tenant and reservation_id = p_reservation_id;
    end if;

    -- An alias prices as its target: its own override, else the target's, else the target's catalog price.
    price := tl_price_at(p_tenant, p_model, at, case when p_alias_of is null then p_catalog_price end);
    if price is null then
        price := tl_price_at(p_tenant, p_alias_of, at, p_catalog_price);
    end if;
    if p_reported_cost is not null then
        cost := p_reported_cost;
        cost_source := 'provider';
    else
        mode := case when p_batch then 'batch' else p_service_tier end;
        cost := tl_cost(price, p_input, p_output, p_cache_read, p_cache_write, p_reasoning, mode, p_cache_ttl);
        cost_source := case when cost is not null then price ->> 'source' end;
        if cost is not null and not tl_mode_published(price, mode, p_input + p_cache_read + p_cache_write) then
            warnings := warnings || format('%s publishes no %s price: priced at standard rates', p_model, mode);
        end if;
    end if;
    if cost is null then
        warnings := warnings || format('model %s is unpriced: its cost is unknown, not $0', p_model);
    end if;

    foreach b in array budgets loop
        if b.unit = 'usd' and cost is null then
            warnings := warnings || format('USD budget %s did not count this unpriced usage', b.name);
            states := states || tl_budget_state(b, post_at);
            continue;
        end if;
        amount := case when b.unit = 'tokens' then total else cost end;
        per := tl_lock_period(b, post_at);
        u := tl_figures_of(b, per, post_at);
        before_pct := 100 * u.used / u.allowance;
        room := case when per.cap is null then amount
                     else least(amount, greatest(per.cap - per.committed - per.reserved, 0)) end;
        update tl_budget_period p
           set committed = p.committed + room, overage = p.overage + (amount - room),
               requests = p.requests + case when p_reservation_id is null then 1 else 0 end
         where p.tenant_id = p_tenant and p.budget_id = b.budget_id and p.period_start = per.period_start
        returning * into per;
        if amount > room then
            warnings := warnings || format('budget %s: %s %s recorded as overage beyond its hard limit',
                                           b.name, amount - room, b.unit);
        end if;
        if p_reservation_id is null and (b.tokens_per_minute is not null or b.requests_per_minute is not null) then
            insert into tl_rate_window as w (tenant_id, budget_id, window_start, tokens, requests)
            values (p_tenant, b.budget_id, date_trunc('minute', now_at), total, 1)
            on conflict (tenant_id, budget_id, window_start)
            do update set tokens = w.tokens + excluded.tokens, requests = w.requests + 1;
        end if;
        u := tl_figures_of(b, per, post_at);
        after_pct := 100 * u.used / u.allowance;
        foreach threshold in array b.alert_thresholds loop
            continue when not (before_pct < threshold and after_pct >= threshold);
            insert into tl_alert (tenant_id, budget_id, budget_name, period_start, threshold, percent_used,
                                  used, limit_amount, unit)
            values (p_tenant, b.budget_id, b.name, u.period_start, threshold, round(after_pct, 2), u.used,
                    u.allowance, b.unit)
            on conflict do nothing
            returning * into alert_row;
            if found then
                alerts := alerts || jsonb_build_object('budget', b.name, 'threshold', threshold,
                    'period_start', case when b.period = 'total' then null else u.period_start end,
                    'percent_used', round(after_pct, 2));
            end if;
        end loop;
        states := states || tl_state_json(b, u, post_at);
    end loop;

    insert into tl_usage (tenant_id, usage_id, occurred_at, request_id, reservation_id, user_id, session_id,
                          project, team, feature, endpoint, provider, model, input_tokens, output_tokens,
                          cache_read_input_tokens, cache_creation_input_tokens, reasoning_output_tokens,
                          total_tokens, cost_usd, cost_source, estimated_input_tokens, estimated_cost_usd,
                          method, status, latency_ms, tools_used, metadata, prompt_hash, requested_model,
                          batch, service_tier, cache_ttl, alias_of)
    values (p_tenant, usage, at, p_request_id, p_reservation_id, attr ->> 'user', attr ->> 'session',
            attr ->> 'project', attr ->> 'team', attr ->> 'feature', attr ->> 'endpoint', p_provider, p_model,
            p_input, p_output, p_cache_read, p_cache_write, p_reasoning, total, cost, cost_source,
            coalesce(p_estimated_input, res.input_tokens), res.estimated_cost_usd, p_method, p_status,
            p_latency_ms, p_tools, p_metadata, coalesce(p_prompt_hash, res.prompt_hash),
            nullif(p_requested_model, p_model), p_batch, p_service_tier, p_cache_ttl, p_alias_of);

    result := jsonb_build_object(
        'usage_id', usage, 'duplicate', false, 'input_tokens', p_input, 'output_tokens', p_output,
        'cache_read_input_tokens', p_cache_read, 'cache_creation_input_tokens', p_cache_write,
        'reasoning_output_tokens', p_reasoning, 'total_tokens', total, 'cost_usd', cost,
        'priced', cost is not null, 'method', p_method, 'budgets', states, 'alerts', alerts,
        'warnings', to_jsonb(warnings), 'occurred_at', at);
    if p_request_id is not null then
        perform tl_remember_response(p_tenant, coalesce(p_attr ->> 'user', ''), 'track', p_request_id, result);
    end if;
    return result;
end $$;

-- Give a reservation's capacity back without recording usage (the call was not made).
create or replace function tl_release(p_tenant text, p_reservation_id uuid, p_user text) returns jsonb
language plpgsql
-- Generic plans: the statements here are key lookups, and re-planning them per call cost more
-- than running them (measured: a check 0.83 ms -> 0.29 ms).
set plan_cache_mode = force_generic_plan as $$
declare
    now_at timestamptz := clock_timestamp();
    res tl_reservation;
    lock_keys record;
    b tl_budget;
    per tl_budget_period;
    freed numeric;
begin
    select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id;
    -- A member may release only its own user's reservations; others look absent to it.
    if not found or (p_user is not null and coalesce(res.attribution ->> 'user', '') <> p_user) then
        raise exception 'reservation_id %: no such reservation in this tenant', p_reservation_id
            using errcode = 'TL404';
    end if;
    for lock_keys in
        select h.budget_id, h.period_start from tl_reservation_hold h
         where h.tenant_id = p_tenant and h.reservation_id = p_reservation_id and not h.released
         order by 1, 2
    loop
        select * into b from tl_budget where tenant_id = p_tenant and budget_id = lock_keys.budget_id;
        per := tl_lock_period(b, lock_keys.period_start);
    end loop;
    select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id
       for update;
    if res.settled_at is not null then
        raise exception 'reservation_id %: already settled at %; a settled reservation cannot be released',
            p_reservation_id, res.settled_at using errcode = 'TL409';
    end if;
    with released as (
        update tl_reservation_hold h set released = true
         where h.tenant_id = p_tenant and h.reservation_id = p_reservation_id and not h.released
        returning h.budget_id, h.period_start, h.amount),
    applied as (
        update tl_budget_period p set reserved = p.reserved - r.amount
          from released r
         where p.tenant_id = p_tenant and p.budget_id = r.budget_id and p.period_start = r.period_start
        returning r.amount)
    select coalesce(sum(amount), 0) into freed from applied;
    if res.status = 'active' then
        update tl_reservation set status = case when res.expires_at <= now_at then 'expired' else 'released' end,
               finished_at = now_at
         where tenant_id = p_tenant and reservation_id = p_reservation_id;
    end if;
    return jsonb_build_object('reservation_id', p_reservation_id,
        'status', case when res.status <> 'active' then 'already_released'
                       when res.expires_at <= now_at then 'expired' else 'released' end,
        'released', freed);
end $$;

-- --- batches: many requests, one round trip, one transaction, one commit ------------------------------
-- tl_check_many, tl_track_many and tl_release_many take a JSON array of requests (the store builds each
-- element, one key per parameter) and apply tl_check, tl_track or tl_release to each, in array order, in
-- this one transaction: the same rules, one lock per hot row and one commit for all. The answer is an
-- array in the same order: {"ok": <the function's answer>} or {"error": {"sqlstate", "message",
-- "constraint"}}.
-- A refusal (TL400, TL404, TL409, malformed data, the invariant's CHECK) raises out of the batch and rolls
-- it back whole; the store then sends the same batch again with p_isolated, where each request runs in its
-- own subtransaction, so that the refused one rolls back its own changes and no one else's. Not isolating
-- by default is measured: a subtransaction per request (and the multixact each one's update of a row the
-- batch locked needs) doubled the server's time per check and per settle. Any other error (deadlock,
-- serialization failure, lost resources) aborts the batch in both modes.
-- Lock order holds across the batch: the period rows every request will lock are locked first, in
-- (tenant_id, budget_id, period_start) order, before any request is applied. (At a period's boundary a
-- request may lock a row the batch did not: a deadlock then rolls one batch back, and the store runs it
-- again. The idempotency rows of two concurrent replays are the other such case. Lock order keeps
-- batches live; zero overspend rests on the row locks and the period row's CHECK, in any order.)

-- A refused request's error, as the store translates it.
create or replace function tl_request_error(p_state text, p_message text, p_constraint text) returns jsonb
language sql immutable as $$
    select jsonb_build_object('error', jsonb_build_object('sqlstate', p_state, 'message', p_message,
                                                          'constraint', nullif(p_constraint, '')))
$$;

-- One element of a check batch as tl_check's arguments: the one place that maps element keys to them.
create or replace function tl_check_request(r jsonb) returns jsonb language sql as $$
    select tl_check(r ->> 'tenant', r ->> 'request_id', r ->> 'request_hash', r ->> 'model', r -> 'attr',
                    (r ->> 'input_tokens')::bigint, (r ->> 'max_output_tokens')::bigint, r ->> 'priority',
                    (r ->> 'allow_partial')::boolean, (r ->> 'reserve')::boolean,
                    (r ->> 'ttl_seconds')::double precision, r -> 'catalog_price', r ->> 'method',
                    r ->> 'prompt_hash', (r ->> 'counted_input_tokens')::bigint,
                    coalesce(r ->> 'price_mode', 'standard'), r ->> 'alias_of')
$$;

create or replace function tl_check_many(p_requests jsonb, p_isolated boolean) returns jsonb
language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    b tl_budget;
    r jsonb;
    tenant text;
    attr jsonb;
    matching tl_budget[] := '{}';
begin
    -- Per request with plain variables, so that each lookup probes the scope index (a join over the
    -- array's elements let the generic plan scan every budget of the tenant for each request). A batch of
    -- one needs no pre-locking: its request locks in order by itself.
    for r in select value from jsonb_array_elements(p_requests) where jsonb_array_length(p_requests) > 1 loop
        continue when not (r ->> 'reserve')::boolean;
        tenant := r ->> 'tenant';
        attr := r -> 'attr';
        matching := matching || array(select m from tl_matching_budgets(tenant, attr) m);
    end loop;
    for b in
        select distinct on (m.tenant_id, m.budget_id) m.* from unnest(matching) m order by m.tenant_id, m.budget_id
    loop
        perform tl_lock_period(b, clock_timestamp());
    end loop;
    return tl_apply_requests('check', p_requests, p_isolated);
end $$;

-- One element of a track batch as tl_track's arguments.
create or replace function tl_track_request(r jsonb) returns jsonb language sql as $$
    select tl_track(r ->> 'tenant', r ->> 'request_id', r ->> 'request_hash', (r ->> 'reservation_id')::uuid,
                    r ->> 'model', r ->> 'provider', r -> 'attr', (r ->> 'input_tokens')::bigint,
                    (r ->> 'output_tokens')::bigint, (r ->> 'cache_read_input_tokens')::bigint,
                    (r ->> 'cache_creation_input_tokens')::bigint, (r ->> 'reasoning_output_tokens')::bigint,
                    (r ->> 'reported_cost')::numeric, r -> 'catalog_price', r ->> 'method', r ->> 'status',
                    (r ->> 'latency_ms')::integer,
                    array(select jsonb_array_elements_text(r -> 'tools_used')), r -> 'metadata',
                    (r ->> 'occurred_at')::timestamptz, (r ->> 'estimated_input_tokens')::bigint,
                    r ->> 'prompt_hash', r ->> 'member_user',
                    make_interval(secs => (r ->> 'clock_skew_seconds')::double precision), r ->> 'requested_model',
                    coalesce((r ->> 'batch')::boolean, false), coalesce(r ->> 'service_tier', 'standard'),
                    coalesce(r ->> 'cache_ttl', '5m'), r ->> 'alias_of')
$$;

-- The period rows one element of a track batch will lock, as tl_track computes them: a settle posts with
-- its reservation's attribution, in its reservation's periods. (plpgsql, so that the reservation is read
-- by its key with a cached plan.)
create or replace function tl_track_request_keys(r jsonb)
returns table (tenant_id text, budget_id bigint, period_start timestamptz)
language plpgsql stable
set plan_cache_mode = force_generic_plan as $$
declare
    tenant text := r ->> 'tenant';
    reservation uuid := (r ->> 'reservation_id')::uuid;
    res tl_reservation;
    attr jsonb;
    post_at timestamptz;
begin
    if reservation is not null then
        select * into res from tl_reservation t where t.tenant_id = tenant and t.reservation_id = reservation;
    end if;
    attr := (r -> 'attr') || coalesce(res.attribution, '{}');
    post_at := coalesce(res.created_at, (r ->> 'occurred_at')::timestamptz, clock_timestamp());
    return query select tenant, k.budget_id, k.period_start from tl_track_lock_keys(tenant, reservation, attr, post_at) k;
end $$;

create or replace function tl_track_many(p_requests jsonb, p_isolated boolean) returns jsonb
language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    tenants text[] := '{}';  -- the period rows to lock, as three arrays: (tenant, budget, period start)
    budget_ids bigint[] := '{}';
    period_starts timestamptz[] := '{}';
    lock_keys record;
    r jsonb;
begin
    for r in select value from jsonb_array_elements(p_requests) where jsonb_array_length(p_requests) > 1 loop
        for lock_keys in select * from tl_track_request_keys(r) loop
            tenants := tenants || lock_keys.tenant_id;
            budget_ids := budget_ids || lock_keys.budget_id;
            period_starts := period_starts || lock_keys.period_start;
        end loop;
    end loop;
    perform tl_lock_periods(tenants, budget_ids, period_starts);
    return tl_apply_requests('track', p_requests, p_isolated);
end $$;

create or replace function tl_release_request(r jsonb) returns jsonb language sql as $$
    select tl_release(r ->> 'tenant', (r ->> 'reservation_id')::uuid, r ->> 'user')
$$;

-- A batch's requests applied in order: each answer {"ok": ...}; isolated, each request in its own
-- subtransaction, a refused one answered {"error": ...} with only its own changes rolled back.
create or replace function tl_apply_requests(p_kind text, p_requests jsonb, p_isolated boolean) returns jsonb
language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    r jsonb;
    answers jsonb[] := '{}';
    failed_constraint text;
begin
    for r in select value from jsonb_array_elements(p_requests) loop
        if not p_isolated then
            answers := answers || jsonb_build_object('ok', tl_apply_request(p_kind, r));
            continue;
        end if;
        begin
            answers := answers || jsonb_build_object('ok', tl_apply_request(p_kind, r));
        exception when sqlstate 'TL400' or sqlstate 'TL404' or sqlstate 'TL409' or data_exception
                       or integrity_constraint_violation then
            get stacked diagnostics failed_constraint = constraint_name;
            answers := answers || tl_request_error(sqlstate, sqlerrm, failed_constraint);
        end;
    end loop;
    return to_jsonb(answers);
end $$;

create or replace function tl_apply_request(p_kind text, r jsonb) returns jsonb language sql as $$
    select case p_kind when 'check' then tl_check_request(r)
                       when 'track' then tl_track_request(r)
                       when 'release' then tl_release_request(r) end
$$;

-- Lock the period rows a batch will change, each once, in (tenant_id, budget_id, period_start) order.
create or replace function tl_lock_periods(tenants text[], budget_ids bigint[], period_starts timestamptz[])
returns void language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    lock_keys record;
    b tl_budget;
begin
    for lock_keys in
        select distinct k.tenant_id, k.budget_id, k.period_start
          from unnest(tenants, budget_ids, period_starts) k (tenant_id, budget_id, period_start)
         order by 1, 2, 3
    loop
        select * into b from tl_budget where tenant_id = lock_keys.tenant_id and budget_id = lock_keys.budget_id;
        perform tl_lock_period(b, lock_keys.period_start);
    end loop;
end $$;

create or replace function tl_release_many(p_requests jsonb, p_isolated boolean) returns jsonb
language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    tenant text;
    reservation uuid;
    tenants text[] := '{}';
    budget_ids bigint[] := '{}';
    period_starts timestamptz[] := '{}';
    lock_keys record;
    r jsonb;
begin
    for r in select value from jsonb_array_elements(p_requests) where jsonb_array_length(p_requests) > 1 loop
        tenant := r ->> 'tenant';
        reservation := (r ->> 'reservation_id')::uuid;
        for lock_keys in
            select h.budget_id, h.period_start from tl_reservation_hold h
             where h.tenant_id = tenant and h.reservation_id = reservation and not h.released
        loop
            tenants := tenants || tenant;
            budget_ids := budget_ids || lock_keys.budget_id;
            period_starts := period_starts || lock_keys.period_start;
        end loop;
    end loop;
    perform tl_lock_periods(tenants, budget_ids, period_starts);
    return tl_apply_requests('release', p_requests, p_isolated);
end $$;

-- Give an active reservation a new expiry, now + p_ttl_seconds, keeping its holds: a long call (a stream)
-- keeps what it was granted. Refused once the reservation is settled, released or past its expiry (its
-- capacity may be someone else's by then). A member extends only its own user's reservations.
create or replace function tl_extend(p_tenant text, p_reservation_id uuid, p_user text,
                                     p_ttl_seconds double precision) returns jsonb
language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    now_at timestamptz := clock_timestamp();
    expires timestamptz := now_at + make_interval(secs => p_ttl_seconds);
    res tl_reservation;
    lock_keys record;
    b tl_budget;
    per tl_budget_period;
begin
    select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id;
    if not found or (p_user is not null and coalesce(res.attribution ->> 'user', '') <> p_user) then
        raise exception 'reservation_id %: no such reservation in this tenant', p_reservation_id
            using errcode = 'TL404';
    end if;
    -- The hold rows' periods first (lock order): no check frees these holds while they are moved.
    for lock_keys in
        select h.budget_id, h.period_start from tl_reservation_hold h
         where h.tenant_id = p_tenant and h.reservation_id = p_reservation_id and not h.released
         order by 1, 2
    loop
        select * into b from tl_budget where tenant_id = p_tenant and budget_id = lock_keys.budget_id;
        per := tl_lock_period(b, lock_keys.period_start);
    end loop;
    select * into res from tl_reservation where tenant_id = p_tenant and reservation_id = p_reservation_id
       for update;
    if res.settled_at is not null or res.status <> 'active' or res.expires_at <= now_at then
        raise exception 'reservation_id %: %; only an active reservation can be extended (check_budget again)',
            p_reservation_id,
            case when res.settled_at is not null then format('already settled at %s', res.settled_at)
                 when res.status = 'released' then format('already released at %s', res.finished_at)
                 else format('already expired at %s', res.expires_at) end
            using errcode = 'TL409';
    end if;
    update tl_reservation set expires_at = expires
     where tenant_id = p_tenant and reservation_id = p_reservation_id;
    update tl_reservation_hold set expires_at = expires
     where tenant_id = p_tenant and reservation_id = p_reservation_id and not released;
    return jsonb_build_object('reservation_id', p_reservation_id, 'expires_at', expires);
end $$;

-- Release up to p_limit reservations past their expiry (any tenant when p_tenant is null).
-- Checks and tracks free expired holds on the rows they touch; this sweeps the rest.
create or replace function tl_expire_reservations(p_tenant text, p_limit integer) returns integer
language plpgsql
-- Generic plans: the statements here are key lookups, and re-planning them per call cost more
-- than running them (measured: a check 0.83 ms -> 0.29 ms).
set plan_cache_mode = force_generic_plan as $$
declare
    now_at timestamptz := clock_timestamp();
    expiring uuid[];
    lock_keys record;
    b tl_budget;
    per tl_budget_period;
    expired_count integer;
begin
    select array_agg(reservation_id) into expiring from (
        select r.reservation_id from tl_reservation r
         where r.status = 'active' and r.expires_at <= now_at and (p_tenant is null or r.tenant_id = p_tenant)
         order by r.expires_at limit p_limit) picked;
    for lock_keys in
        select distinct h.tenant_id, h.budget_id, h.period_start
          from tl_reservation_hold h
         where h.reservation_id = any(expiring) and not h.released
         order by 1, 2, 3
    loop
        select * into b from tl_budget where tenant_id = lock_keys.tenant_id and budget_id = lock_keys.budget_id;
        per := tl_lock_period(b, lock_keys.period_start);
        perform tl_release_expired_holds(lock_keys.tenant_id, lock_keys.budget_id, lock_keys.period_start, now_at);
    end loop;
    update tl_reservation r set status = 'expired', finished_at = now_at
     where r.reservation_id = any(expiring) and r.status = 'active' and r.expires_at <= now_at;
    get diagnostics expired_count = row_count;
    return expired_count;
end $$;

create or replace function tl_budget_json(b tl_budget) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'name', b.name,
        'scope', case when b.scope_kind = 'global' then 'global' else b.scope_kind || ':' || b.scope_value end,
        'unit', b.unit, 'limit', b.limit_amount, 'period', b.period, 'timezone', b.timezone,
        'enforcement', b.enforcement, 'hard_limit', b.hard_limit, 'alert_thresholds', to_jsonb(b.alert_thresholds),
        'priority_shares', b.priority_shares, 'rollover', b.rollover, 'rollover_cap', b.rollover_cap,
        'tokens_per_minute', b.tokens_per_minute, 'requests_per_minute', b.requests_per_minute,
        'unpriced_policy', b.unpriced_policy)
        -- A budget declared in another currency shows its limits as declared.
        || case when b.currency is null then '{}'::jsonb
                else jsonb_build_object('currency', b.currency, 'limit', b.currency_limit,
                                        'hard_limit', b.currency_hard_limit) end
$$;

-- Create a budget, or update the one by that name to p_spec: the whole spec, which the caller merged from
-- the fields it was given over the row it read (p_expected: that row's updated_at; null for a new
-- budget). A row changed since, by another call, is refused, so no concurrent change is lost. A change
-- of scope, unit, period or timezone (where the period depends on it) discards the counters, so it is
-- refused while the current period has usage or reservations unless p_reset_counters confirms it. Keeps
-- the current period's counters consistent with a new limit, and writes the change to the audit log.
-- Returns the budget with its live state.
create or replace function tl_set_budget(p_tenant text, p_actor text, p_spec jsonb, p_expected timestamptz,
                                         p_reset_counters boolean) returns jsonb
language plpgsql as $$
declare
    now_at timestamptz := clock_timestamp();
    old tl_budget;
    b tl_budget;
    current_use tl_usage_figures;
    remeasured text[] := '{}';
    scope text := p_spec ->> 'scope';
    kind text := case when scope = 'global' then 'global' else split_part(scope, ':', 1) end;
    value text := case when scope = 'global' then '' else substr(scope, length(split_part(scope, ':', 1)) + 2) end;
    currency text := nullif(p_spec ->> 'currency', '');
    usd_limit numeric := (p_spec ->> 'limit')::numeric;
    usd_hard numeric := (p_spec ->> 'hard_limit')::numeric;
begin
    if not exists (select 1 from pg_timezone_names where name = p_spec ->> 'timezone') then
        raise exception 'timezone %: unknown to this PostgreSQL server; use an IANA name such as Europe/Paris',
            p_spec ->> 'timezone' using errcode = 'TL400';
    end if;
    if currency is not null then  -- limits declared in another currency: in USD at the period start's rate
        select l.usd_limit, l.usd_hard into usd_limit, usd_hard from tl_declared_limits(p_tenant, p_spec, now_at) l;
    end if;
    select * into old from tl_budget where tenant_id = p_tenant and name = p_spec ->> 'name' for update;
    if old.updated_at is distinct from p_expected then
        raise exception 'name %: the budget was % by another call while this one was prepared; nothing was '
            'changed: repeat the call', p_spec ->> 'name',
            case when old.budget_id is null then 'deleted' when p_expected is null then 'created'
                 else 'changed' end using errcode = 'TL409';
    end if;
    if old.budget_id is not null then
        if old.scope_kind <> kind or old.scope_value <> value then
            remeasured := remeasured || format('scope %s -> %s',
                case when old.scope_kind = 'global' then 'global' else old.scope_kind || ':' || old.scope_value end,
                scope);
        end if;
        if old.unit <> p_spec ->> 'unit' then
            remeasured := remeasured || format('unit %s -> %s', old.unit, p_spec ->> 'unit');
        end if;
        if old.period <> p_spec ->> 'period' then
            remeasured := remeasured || format('period %s -> %s', old.period, p_spec ->> 'period');
        end if;
        -- `total` and rolling windows are the same whatever the zone: their counters stay.
        if old.timezone <> p_spec ->> 'timezone' and old.period not in ('total', '24h', '7d', '30d') then
            remeasured := remeasured || format('timezone %s -> %s', old.timezone, p_spec ->> 'timezone');
        end if;
        if cardinality(remeasured) > 0 and not p_reset_counters then
            current_use := tl_usage_now(old, now_at);
            if current_use.used > 0 or current_use.reserved > 0 then
                raise exception '%: budget % has used % and reserved % % in its current period, which this '
                    'change would discard; nothing was changed. Confirm with reset_counters: true (CLI '
                    '--reset-counters), or leave these fields out', array_to_string(remeasured, ', '), old.name,
                    current_use.used, current_use.reserved, old.unit using errcode = 'TL409';
            end if;
        end if;
    end if;
    insert into tl_budget as t (tenant_id, name, scope_kind, scope_value, unit, limit_amount, hard_limit, period,
                                timezone, enforcement, alert_thresholds, priority_shares, rollover, rollover_cap,
                                tokens_per_minute, requests_per_minute, unpriced_policy, currency, currency_limit,
                                currency_hard_limit)
    values (p_tenant, p_spec ->> 'name', kind, value, p_spec ->> 'unit', usd_limit,
            usd_hard, p_spec ->> 'period', p_spec ->> 'timezone',
            p_spec ->> 'enforcement',
            array(select jsonb_array_elements_text(p_spec -> 'alert_thresholds')::numeric order by 1),
            nullif(p_spec -> 'priority_shares', 'null'::jsonb), p_spec ->> 'rollover',
            (p_spec ->> 'rollover_cap')::numeric, (p_spec ->> 'tokens_per_minute')::bigint,
            (p_spec ->> 'requests_per_minute')::bigint, p_spec ->> 'unpriced_policy', currency,
            case when currency is not null then (p_spec ->> 'limit')::numeric end,
            case when currency is not null then (p_spec ->> 'hard_limit')::numeric end)
    on conflict (tenant_id, name) do update set
        scope_kind = excluded.scope_kind, scope_value = excluded.scope_value, unit = excluded.unit,
        limit_amount = excluded.limit_amount, hard_limit = excluded.hard_limit, period = excluded.period,
        timezone = excluded.timezone, enforcement = excluded.enforcement,
        alert_thresholds = excluded.alert_thresholds, priority_shares = excluded.priority_shares,
        rollover = excluded.rollover, rollover_cap = excluded.rollover_cap,
        tokens_per_minute = excluded.tokens_per_minute, requests_per_minute = excluded.requests_per_minute,
        unpriced_policy = excluded.unpriced_policy, currency = excluded.currency,
        currency_limit = excluded.currency_limit, currency_hard_limit = excluded.currency_hard_limit,
        updated_at = now_at
        where t.updated_at is not distinct from p_expected  -- a budget created meanwhile is not overwritten
    returning * into b;
    if not found then
        raise exception 'name %: the budget was created by another call while this one was prepared; nothing '
            'was changed: repeat the call', p_spec ->> 'name' using errcode = 'TL409';
    end if;
    if old.budget_id is not null then
        if cardinality(remeasured) > 0 then
            -- A different measure: the old counters mean nothing for it. Open holds go with them.
            delete from tl_budget_period where tenant_id = p_tenant and budget_id = b.budget_id;
        else
            -- The same measure with a new limit: spend above the new cap becomes overage, so the
            -- CHECK keeps holding and nothing is lost.
            update tl_budget_period p set
                allowance = b.limit_amount + p.carried,
                cap = case when new_cap.v is not null then greatest(new_cap.v, p.reserved) end,
                overage = p.overage + new_cap.moved,
                committed = p.committed - new_cap.moved
              from tl_budget_period q
              cross join lateral (
                  select v, case when v is null then 0
                                 else least(q.committed, greatest(q.committed + q.reserved - v, 0)) end as moved
                    from (select case when b.enforcement = 'hard' and tl_window_length(b.period) is null
                                      then coalesce(b.hard_limit, b.limit_amount) + q.carried + q.override_amount
                                      end as v) c
              ) new_cap
             where q.tenant_id = p.tenant_id and q.budget_id = p.budget_id and q.period_start = p.period_start
               and p.tenant_id = p_tenant and p.budget_id = b.budget_id
               and (p.period_end is null or p.period_end > now_at);
        end if;
    end if;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor,
            case when old.budget_id is null then 'create'
                 when cardinality(remeasured) > 0 then 'update, counters reset' else 'update' end,
            'budget', b.name, case when old.budget_id is not null then tl_budget_json(old) end, tl_budget_json(b));
    return jsonb_build_object('spec', tl_budget_json(b), 'state', tl_budget_state(b, now_at),
                              'created_at', b.created_at, 'updated_at', b.updated_at);
end $$;

create or replace function tl_delete_budget(p_tenant text, p_actor text, p_name text) returns jsonb
language plpgsql as $$
declare
    old tl_budget;
begin
    delete from tl_budget where tenant_id = p_tenant and name = p_name returning * into old;
    if not found then
        raise exception 'name %: no such budget in this tenant', p_name using errcode = 'TL404';
    end if;
    -- Open reservations lose their holds with the budget's periods; they still settle in other budgets.
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'delete', 'budget', p_name, tl_budget_json(old), null);
    return tl_budget_json(old);
end $$;

create or replace function tl_set_price(p_tenant text, p_actor text, p_model text, p_effective_from timestamptz,
                                        p_price jsonb) returns jsonb
language plpgsql as $$
declare
    before jsonb := tl_price_at(p_tenant, p_model, p_effective_from, null);
begin
    insert into tl_price (tenant_id, model, effective_from, input, output, cache_read, cache_write, reasoning,
                          created_by)
    values (p_tenant, p_model, p_effective_from, (p_price ->> 'input')::numeric, (p_price ->> 'output')::numeric,
            (p_price ->> 'cache_read')::numeric, (p_price ->> 'cache_write')::numeric,
            (p_price ->> 'reasoning')::numeric, p_actor)
    on conflict (tenant_id, model, effective_from) do update set
        input = excluded.input, output = excluded.output, cache_read = excluded.cache_read,
        cache_write = excluded.cache_write, reasoning = excluded.reasoning, created_by = excluded.created_by;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'set', 'price', p_model, before,
            p_price || jsonb_build_object('effective_from', p_effective_from));
    return tl_price_at(p_tenant, p_model, p_effective_from, null)
           || jsonb_build_object('effective_from', p_effective_from);
end $$;

-- --- model aliases ------------------------------------------------------------------------------------
-- A tenant's own name for a catalog model. Python checks that the alias names no catalog model and that
-- the target is one (so no alias is another's target: no chains); these functions write and audit.

create or replace function tl_alias_json(a tl_model_alias) returns jsonb
language sql immutable as $$
    select jsonb_build_object('alias', a.alias, 'target', a.target, 'created_at', a.created_at,
                              'created_by', a.created_by)
$$;

-- Create an alias, or point an existing one (matched case-insensitively) at a new target; audited with
-- the alias before and after. A tenant holds at most p_max aliases.
create or replace function tl_set_alias(p_tenant text, p_actor text, p_alias text, p_target text,
                                        p_max integer) returns jsonb
language plpgsql as $$
declare
    earlier tl_model_alias;
    saved tl_model_alias;
begin
    perform pg_advisory_xact_lock(hashtextextended('tl_model_alias:' || p_tenant, 0));  -- the count is per tenant
    select * into earlier from tl_model_alias where tenant_id = p_tenant and lower(alias) = lower(p_alias);
    if not found and (select count(*) from tl_model_alias where tenant_id = p_tenant) >= p_max then
        raise exception 'alias %: this tenant has % aliases, the most allowed; remove one first (unalias)',
            p_alias, p_max using errcode = 'TL400';
    end if;
    insert into tl_model_alias (tenant_id, alias, target, created_by)
    values (p_tenant, p_alias, p_target, p_actor)
    on conflict (tenant_id, lower(alias)) do update
       set alias = excluded.alias, target = excluded.target, created_at = now(), created_by = excluded.created_by
    returning * into saved;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'set', 'model_alias', saved.alias,
            case when earlier.alias is not null then tl_alias_json(earlier) end, tl_alias_json(saved));
    return tl_alias_json(saved);
end $$;

create or replace function tl_delete_alias(p_tenant text, p_actor text, p_alias text) returns jsonb
language plpgsql as $$
declare
    gone tl_model_alias;
begin
    delete from tl_model_alias where tenant_id = p_tenant and lower(alias) = lower(p_alias) returning * into gone;
    if not found then
        raise exception 'alias %: no such alias in this tenant', p_alias using errcode = 'TL404';
    end if;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'delete', 'model_alias', gone.alias, tl_alias_json(gone), null);
    return tl_alias_json(gone);
end $$;

-- Monthly usage partitions from the month of p_from, p_months ahead, created where missing.
create or replace function tl_ensure_usage_partitions(p_from timestamptz, p_months integer) returns integer
language plpgsql as $$
declare
    month_start date := date_trunc('month', p_from at time zone 'UTC')::date;
    created integer := 0;
    part text;
begin
    for i in 0 .. p_months loop
        part := format('tl_usage_%s', to_char(month_start + make_interval(months => i), 'YYYYMM'));
        if to_regclass(part) is null then
            execute format('create table %I partition of tl_usage for values from (%L) to (%L)', part,
                           (month_start + make_interval(months => i))::timestamp at time zone 'UTC',
                           (month_start + make_interval(months => i + 1))::timestamp at time zone 'UTC');
            created := created + 1;
        end if;
    end loop;
    return created;
end $$;

-- Alerts due for delivery to these sinks, claimed for p_lease_seconds: concurrent dispatchers in any
-- number of processes skip each other's claims, so each alert reaches each sink once.
create or replace function tl_claim_alert_deliveries(p_sinks text[], p_limit integer, p_lease_seconds double precision)
returns setof jsonb language plpgsql as $$
begin
    insert into tl_alert_delivery (tenant_id, alert_id, sink)
    select a.tenant_id, a.alert_id, s.sink
      from tl_alert a cross join unnest(p_sinks) as s(sink)
     where a.delivered_at is null
    on conflict do nothing;
    return query
    with due as (
        select d.tenant_id, d.alert_id, d.sink from tl_alert_delivery d
         where d.delivered_at is null and d.next_attempt_at <= now() and d.sink = any(p_sinks)
           and (d.claimed_until is null or d.claimed_until < now())
         order by d.next_attempt_at
         limit p_limit
           for update skip locked),
    claimed as (
        update tl_alert_delivery d
           set claimed_until = now() + make_interval(secs => p_lease_seconds), attempts = d.attempts + 1
          from due
         where d.tenant_id = due.tenant_id and d.alert_id = due.alert_id and d.sink = due.sink
        returning d.tenant_id, d.alert_id, d.sink, d.attempts)
    select jsonb_build_object(
               'tenant_id', c.tenant_id, 'alert_id', c.alert_id, 'sink', c.sink, 'attempt', c.attempts,
               'budget', a.budget_name, 'kind', a.kind, 'threshold', a.threshold,
               'percent_used', a.percent_used, 'used', a.used, 'limit', a.limit_amount, 'unit', a.unit,
               'period_start', a.period_start, 'created_at', a.created_at, 'subject', a.subject,
               'detail', a.detail)
      from claimed c join tl_alert a on a.tenant_id = c.tenant_id and a.alert_id = c.alert_id;
end $$;

-- Record a delivery attempt: delivered (p_error null), retry after p_retry_seconds, or give up (both null
-- retry and an error). An alert is delivered once every sink has it.
create or replace function tl_finish_alert_delivery(p_tenant text, p_alert_id bigint, p_sink text, p_error text,
                                                    p_retry_seconds double precision) returns void
language plpgsql as $$
begin
    -- Finishes of one alert's sinks take turns on the alert's row: without that, two sinks finishing at
    -- once would each see the other still undelivered, and the alert would never be marked delivered.
    perform 1 from tl_alert where tenant_id = p_tenant and alert_id = p_alert_id for no key update;
    update tl_alert_delivery
       set delivered_at = case when p_error is null then now() end,
           last_error = p_error,
           claimed_until = null,
           next_attempt_at = case when p_error is null then next_attempt_at
                                  when p_retry_seconds is null then 'infinity'
                                  else now() + make_interval(secs => p_retry_seconds) end
     where tenant_id = p_tenant and alert_id = p_alert_id and sink = p_sink;
    update tl_alert a
       set delivered_at = now(), attempts = a.attempts + 1, last_error = p_error
     where a.tenant_id = p_tenant and a.alert_id = p_alert_id and a.delivered_at is null
       and not exists (select 1 from tl_alert_delivery d
                        where d.tenant_id = a.tenant_id and d.alert_id = a.alert_id and d.delivered_at is null);
end $$;

-- Forecast alerts: a calendar period whose spend so far, continued at the same rate, runs past its
-- allowance before the period ends. Judged once at least p_min_elapsed of the period has passed.
-- Written once per budget and period (kind 'forecast'); percent_used is the projected percentage.
create or replace function tl_forecast_alerts(p_min_elapsed double precision) returns integer
language plpgsql as $$
declare
    written integer;
begin
    insert into tl_alert (tenant_id, budget_id, budget_name, period_start, threshold, kind, percent_used, used,
                          limit_amount, unit)
    select p.tenant_id, b.budget_id, b.name, p.period_start, 100, 'forecast',
           round(100 * f.projected / p.allowance, 2), p.committed + p.overage, p.allowance, b.unit
      from tl_budget_period p
      join tl_budget b on b.tenant_id = p.tenant_id and b.budget_id = p.budget_id
      cross join lateral (
          select (p.committed + p.overage) * extract(epoch from p.period_end - p.period_start)
                 / greatest(extract(epoch from now() - p.period_start), 1) as projected) f
     where p.period_end > now() and p.period_start <= now()
       and tl_window_length(b.period) is null
       and p.committed + p.overage < p.allowance
       and extract(epoch from now() - p.period_start)
           >= p_min_elapsed * extract(epoch from p.period_end - p.period_start)
       and f.projected > p.allowance
    on conflict do nothing;
    get diagnostics written = row_count;
    return written;
end $$;

-- Retention: roll every monthly usage partition that ends before p_before up into daily totals,
-- then drop it whole; rows of the default partition older than p_before go the same way.
create or replace function tl_prune_usage(p_before timestamptz) returns jsonb
language plpgsql as $$
declare
    part record;
    month_start timestamptz;
    dropped text[] := '{}';
    rolled bigint := 0;
    n bigint;
    rollup text := $q$
        insert into tl_usage_daily
        select tenant_id, (occurred_at at time zone 'UTC')::date, user_id, session_id, project, team, feature,
               endpoint, provider, model, count(*), sum(input_tokens), sum(output_tokens),
               sum(cache_read_input_tokens), sum(cache_creation_input_tokens), sum(reasoning_output_tokens),
               sum(total_tokens), coalesce(sum(cost_usd), 0), count(*) filter (where cost_usd is null),
               count(*) filter (where status = 'error'), requested_model
          from %s
         group by 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21 $q$;
begin
    for part in
        select c.relname::text as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'tl_usage'::regclass and c.relname ~ '^tl_usage_[0-9]{6}$'
         order by 1
    loop
        month_start := to_date(substr(part.name, 10), 'YYYYMM')::timestamp at time zone 'UTC';
        continue when month_start + interval '1 month' > p_before;
        execute format(rollup, quote_ident(part.name));
        get diagnostics n = row_count;
        rolled := rolled + n;
        execute format('drop table %I', part.name);
        dropped := dropped || part.name;
    end loop;
    create temporary table tl_pruned_default on commit drop as
        with gone as (delete from tl_usage_default where occurred_at < p_before returning *) select * from gone;
    execute format(rollup, 'tl_pruned_default');
    get diagnostics n = row_count;
    rolled := rolled + n;
    return jsonb_build_object('dropped_partitions', to_jsonb(dropped), 'rollup_rows', rolled);
end $$;

-- --- scheduled reports ----------------------------------------------------------------------------
-- Python computes occurrences (zoneinfo: the schedule's local time, across DST changes); the database
-- decides which process takes each one (a compare-and-set on next_run_at, a unique occurrence per
-- schedule) and hands each run to each sink once (claims with FOR UPDATE SKIP LOCKED and a lease).

-- A schedule as the Schedule model reads it, with its latest run.
create or replace function tl_schedule_json(s tl_schedule) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'name', s.name, 'view', s.report_view, 'every', s.every, 'at', to_char(s.at_local, 'HH24:MI'),
        'timezone', s.timezone,
        'to', s.destination || coalesce(':' || s.recipient, ''), 'by', s.group_by,
        'next_run_at', s.next_run_at, 'created_at', s.created_at, 'created_by', s.created_by,
        'last_occurrence', r.occurrence, 'last_delivered_at', r.delivered_at, 'last_error', d.last_error)
      from (select 1) one
      left join lateral (select * from tl_schedule_run r
                          where r.tenant_id = s.tenant_id and r.schedule_id = s.schedule_id
                          order by r.occurrence desc limit 1) r on true
      left join lateral (select d.last_error from tl_schedule_delivery d
                          where d.tenant_id = r.tenant_id and d.run_id = r.run_id and d.last_error is not null
                          order by d.sink limit 1) d on true
$$;

-- Add a schedule (at most p_max per tenant; names are unique) and audit it.
create or replace function tl_add_schedule(p_tenant text, p_actor text, p_spec jsonb, p_next_run_at timestamptz,
                                           p_max integer) returns jsonb
language plpgsql as $$
declare
    s tl_schedule;
begin
    perform pg_advisory_xact_lock(hashtextextended('tl_schedule:' || p_tenant, 0));  -- the count is per tenant
    if (select count(*) from tl_schedule where tenant_id = p_tenant) >= p_max then
        raise exception 'name %: this tenant has % schedules, the most allowed; delete one first',
            p_spec ->> 'name', p_max using errcode = 'TL400';
    end if;
    insert into tl_schedule (tenant_id, name, report_view, every, at_local, timezone, destination, recipient,
                             group_by, next_run_at, created_by)
    values (p_tenant, p_spec ->> 'name', p_spec ->> 'view', p_spec ->> 'every', (p_spec ->> 'at')::time,
            p_spec ->> 'timezone', p_spec ->> 'destination', p_spec ->> 'recipient', p_spec ->> 'by',
            p_next_run_at, p_actor)
    on conflict (tenant_id, name) do nothing
    returning * into s;
    if s.schedule_id is null then
        raise exception 'name %: a schedule of this name exists; delete it first or choose another name',
            p_spec ->> 'name' using errcode = 'TL409';
    end if;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'create', 'schedule', s.name, null, tl_schedule_json(s));
    return tl_schedule_json(s);
end $$;

create or replace function tl_delete_schedule(p_tenant text, p_actor text, p_name text) returns jsonb
language plpgsql as $$
declare
    s tl_schedule;
    shown jsonb;
begin
    select * into s from tl_schedule where tenant_id = p_tenant and name = p_name for update;
    if not found then
        raise exception 'name %: no such schedule in this tenant', p_name using errcode = 'TL404';
    end if;
    shown := tl_schedule_json(s);
    delete from tl_schedule where tenant_id = p_tenant and schedule_id = s.schedule_id;  -- runs go with it
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'delete', 'schedule', p_name, shown, null);
    return shown;
end $$;

create or replace function tl_schedule_run_json(s tl_schedule, r tl_schedule_run) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'schedule', s.name, 'run_id', r.run_id, 'occurrence', r.occurrence,
        'kind', r.kind, 'since', r.since, 'until', r.until, 'missed', r.missed, 'missed_from', r.missed_from)
$$;

-- Take the due occurrence of a schedule: advances next_run_at from p_expected to p_next and records the
-- run, or returns null when another process took it first (next_run_at has moved on).
create or replace function tl_start_schedule_run(p_tenant text, p_schedule_id bigint, p_expected timestamptz,
                                                 p_next timestamptz, p_occurrence timestamptz, p_kind text,
                                                 p_since timestamptz, p_missed integer, p_missed_from timestamptz)
returns jsonb language plpgsql as $$
declare
    s tl_schedule;
    r tl_schedule_run;
begin
    update tl_schedule set next_run_at = p_next
     where tenant_id = p_tenant and schedule_id = p_schedule_id and next_run_at = p_expected
    returning * into s;
    if not found then
        return null;
    end if;
    insert into tl_schedule_run (tenant_id, schedule_id, occurrence, kind, since, until, missed, missed_from)
    values (p_tenant, p_schedule_id, p_occurrence, p_kind, p_since, p_occurrence, p_missed, p_missed_from)
    on conflict (tenant_id, schedule_id, occurrence) do nothing
    returning * into r;
    return case when r.run_id is not null then tl_schedule_run_json(s, r) end;
end $$;

-- Run a schedule now, outside its recurrence, over [p_since, p_until); audited.
create or replace function tl_run_schedule_now(p_tenant text, p_actor text, p_name text, p_since timestamptz,
                                               p_until timestamptz) returns jsonb
language plpgsql as $$
declare
    s tl_schedule;
    r tl_schedule_run;
begin
    select * into s from tl_schedule where tenant_id = p_tenant and name = p_name;
    if not found then
        raise exception 'name %: no such schedule in this tenant', p_name using errcode = 'TL404';
    end if;
    insert into tl_schedule_run (tenant_id, schedule_id, occurrence, kind, since, until)
    values (p_tenant, s.schedule_id, p_until, 'manual', p_since, p_until)
    returning * into r;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'run_now', 'schedule', p_name, null, tl_schedule_run_json(s, r));
    return tl_schedule_run_json(s, r);
end $$;

-- Runs due for these sinks (a sink serves the runs whose destination is its kind, the part of its name
-- before ':'), claimed for p_lease_seconds: concurrent dispatchers in any number of processes skip each
-- other's claims, so each run reaches each sink once. p_tenant and p_run_id narrow it to one run.
create or replace function tl_claim_schedule_deliveries(p_sinks text[], p_limit integer,
                                                        p_lease_seconds double precision,
                                                        p_tenant text default null, p_run_id bigint default null)
returns setof jsonb language plpgsql as $$
begin
    insert into tl_schedule_delivery (tenant_id, run_id, sink)
    select r.tenant_id, r.run_id, k.sink
      from tl_schedule_run r
      join tl_schedule s on s.tenant_id = r.tenant_id and s.schedule_id = r.schedule_id
      join unnest(p_sinks) as k(sink) on split_part(k.sink, ':', 1) = s.destination
     where r.delivered_at is null
       and (p_run_id is null or (r.tenant_id = p_tenant and r.run_id = p_run_id))
    on conflict do nothing;
    return query
    with due as (
        select d.tenant_id, d.run_id, d.sink from tl_schedule_delivery d
         where d.delivered_at is null and d.next_attempt_at <= now() and d.sink = any(p_sinks)
           and (d.claimed_until is null or d.claimed_until < now())
           and (p_run_id is null or (d.tenant_id = p_tenant and d.run_id = p_run_id))
         order by d.next_attempt_at
         limit p_limit
           for update skip locked),
    claimed as (
        update tl_schedule_delivery d
           set claimed_until = now() + make_interval(secs => p_lease_seconds), attempts = d.attempts + 1
          from due
         where d.tenant_id = due.tenant_id and d.run_id = due.run_id and d.sink = due.sink
        returning d.tenant_id, d.run_id, d.sink, d.attempts)
    select tl_schedule_run_json(s, r) || jsonb_build_object(
               'tenant_id', c.tenant_id, 'sink', c.sink, 'attempt', c.attempts, 'view', s.report_view, 'every', s.every,
               'at', to_char(s.at_local, 'HH24:MI'), 'timezone', s.timezone, 'destination', s.destination,
               'recipient', s.recipient, 'by', s.group_by)
      from claimed c
      join tl_schedule_run r on r.tenant_id = c.tenant_id and r.run_id = c.run_id
      join tl_schedule s on s.tenant_id = r.tenant_id and s.schedule_id = r.schedule_id;
end $$;

-- Record a delivery attempt, as tl_finish_alert_delivery does; a run is delivered once every sink has it.
create or replace function tl_finish_schedule_delivery(p_tenant text, p_run_id bigint, p_sink text, p_error text,
                                                       p_retry_seconds double precision) returns void
language plpgsql as $$
begin
    -- One run's sinks finish in turn (see tl_finish_alert_delivery).
    perform 1 from tl_schedule_run where tenant_id = p_tenant and run_id = p_run_id for no key update;
    update tl_schedule_delivery
       set delivered_at = case when p_error is null then now() end,
           last_error = p_error,
           claimed_until = null,
           next_attempt_at = case when p_error is null then next_attempt_at
                                  when p_retry_seconds is null then 'infinity'
                                  else now() + make_interval(secs => p_retry_seconds) end
     where tenant_id = p_tenant and run_id = p_run_id and sink = p_sink;
    update tl_schedule_run r
       set delivered_at = now()
     where r.tenant_id = p_tenant and r.run_id = p_run_id and r.delivered_at is null
       and not exists (select 1 from tl_schedule_delivery d
                        where d.tenant_id = r.tenant_id and d.run_id = r.run_id and d.delivered_at is null);
end $$;

-- --- exchange rates and budgets declared in a currency (0014) ------------------------------------
-- Costs stay in USD. A tenant's dated rates (units of a currency per 1 USD) convert what is shown, and
-- turn a USD budget's limits declared in another currency into USD at the rate of each period's start.

-- The tenant's rate of `p_currency` in force at `p_at` (the latest from at or before it); null if none.
create or replace function tl_fx_rate_at(p_tenant text, p_currency text, p_at timestamptz) returns numeric
language sql stable as $$
    select rate from tl_fx_rate
     where tenant_id = p_tenant and currency = p_currency and effective_from <= p_at
     order by effective_from desc limit 1
$$;

-- A budget's limit (or, p_hard, its hard ceiling) in USD for the period starting at p_period_start: a
-- limit declared in another currency at the rate in force at that start, rounded down to a millionth of a
-- dollar (never above what was declared); `total` and rolling windows, and a period without a rate, keep
-- the USD limits taken when the budget was set.
create or replace function tl_period_limit(b tl_budget, p_period_start timestamptz, p_hard boolean)
returns numeric
language sql stable as $$
    select coalesce(
        case when b.currency is not null and b.period <> 'total' and tl_window_length(b.period) is null then
            trunc(case when p_hard then coalesce(b.currency_hard_limit, b.currency_limit) else b.currency_limit end
                  / tl_fx_rate_at(b.tenant_id, b.currency, p_period_start), 6) end,
        case when p_hard then coalesce(b.hard_limit, b.limit_amount) else b.limit_amount end)
$$;

-- The USD limits of a budget spec declared in `currency`, at the rate in force at the start of its current
-- period (now, for `total` and rolling windows); refused (TL400) when no rate is in force then or the
-- result leaves what a USD budget may hold.
create or replace function tl_declared_limits(p_tenant text, p_spec jsonb, p_now timestamptz,
                                              out usd_limit numeric, out usd_hard numeric)
language plpgsql stable as $$
declare
    currency text := p_spec ->> 'currency';
    starts timestamptz := case when p_spec ->> 'period' in ('total', '24h', '7d', '30d') then p_now
                               else (tl_period_bounds(p_spec ->> 'period', p_spec ->> 'timezone', p_now)).period_start
                          end;
    rate numeric := tl_fx_rate_at(p_tenant, currency, starts);
begin
    if p_spec ->> 'unit' <> 'usd' then
        raise exception 'currency %: only a usd budget is declared in a currency (this one counts %)', currency,
            p_spec ->> 'unit' using errcode = 'TL400';
    end if;
    if rate is null then
        raise exception 'currency %: no % rate in force at % (the start of the budget''s current period); set one '
            'with `tokenledger fx set % RATE --from %` (Ledger.set_fx_rate)', currency, currency, starts, currency,
            to_char(starts at time zone 'UTC', 'YYYY-MM-DD') using errcode = 'TL400';
    end if;
    usd_limit := trunc((p_spec ->> 'limit')::numeric / rate, 6);
    usd_hard := trunc((p_spec ->> 'hard_limit')::numeric / rate, 6);
    if usd_limit <= 0 or usd_limit > 1e12 or usd_hard > 1e12 then
        raise exception 'limit %: % % at % % per USD is % USD; allowed: at least 0.000001 and at most 1,000,000,000,000 USD',
            p_spec ->> 'limit', p_spec ->> 'limit', currency, rate, currency, coalesce(usd_hard, usd_limit)
            using errcode = 'TL400';
    end if;
end $$;

create or replace function tl_fx_rate_json(r tl_fx_rate) returns jsonb
language sql stable as $$
    select jsonb_build_object('currency', r.currency, 'rate', r.rate, 'effective_from', r.effective_from,
                              'created_at', r.created_at, 'created_by', r.created_by)
$$;

-- Set a dated rate (replacing one of the same currency and moment), at most p_max per currency; audited.
create or replace function tl_set_fx_rate(p_tenant text, p_actor text, p_currency text, p_from timestamptz,
                                          p_rate numeric, p_max integer) returns jsonb
language plpgsql as $$
declare
    old tl_fx_rate;
    saved tl_fx_rate;
begin
    perform pg_advisory_xact_lock(hashtextextended('tl_fx_rate:' || p_tenant || ':' || p_currency, 0));
    select * into old from tl_fx_rate where tenant_id = p_tenant and currency = p_currency and effective_from = p_from;
    if old.tenant_id is null
       and (select count(*) from tl_fx_rate where tenant_id = p_tenant and currency = p_currency) >= p_max then
        raise exception 'currency %: this tenant has % dated % rates, the most allowed; delete old ones first',
            p_currency, p_max, p_currency using errcode = 'TL400';
    end if;
    insert into tl_fx_rate (tenant_id, currency, effective_from, rate, created_by)
    values (p_tenant, p_currency, p_from, p_rate, p_actor)
    on conflict (tenant_id, currency, effective_from) do update
       set rate = excluded.rate, created_at = now(), created_by = excluded.created_by
    returning * into saved;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, case when old.tenant_id is null then 'create' else 'update' end, 'fx_rate',
            p_currency || '@' || to_char(p_from at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
            case when old.tenant_id is not null then tl_fx_rate_json(old) end, tl_fx_rate_json(saved));
    return tl_fx_rate_json(saved);
end $$;

create or replace function tl_delete_fx_rate(p_tenant text, p_actor text, p_currency text, p_from timestamptz)
returns jsonb
language plpgsql as $$
declare
    old tl_fx_rate;
begin
    delete from tl_fx_rate where tenant_id = p_tenant and currency = p_currency and effective_from = p_from
    returning * into old;
    if not found then
        raise exception 'currency %: no % rate from % in this tenant (see tokenledger fx list)', p_currency,
            p_currency, p_from using errcode = 'TL404';
    end if;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'delete', 'fx_rate',
            p_currency || '@' || to_char(p_from at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
            tl_fx_rate_json(old), null);
    return tl_fx_rate_json(old);
end $$;

-- --- catalog updates (0014) -------------------------------------------------------------------------
-- An operator's action, not a tenant's: the catalog is shared by every tenant. Audited under tenant '*'
-- (no tenant id can be '*': identifiers are [A-Za-z0-9_.:@/+=-]).

create or replace function tl_add_catalog_update(p_actor text, p_update jsonb) returns jsonb
language plpgsql as $$
declare
    saved tl_catalog_update;
begin
    insert into tl_catalog_update (effective_from, source_kind, source_name, sha256, size_bytes, models, entries,
                                   created_by)
    values ((p_update ->> 'effective_from')::timestamptz, p_update ->> 'source_kind', p_update ->> 'source_name',
            p_update ->> 'sha256', (p_update ->> 'size_bytes')::bigint, (p_update ->> 'models')::integer,
            p_update -> 'entries', p_actor)
    returning * into saved;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values ('*', p_actor, 'update', 'catalog', saved.update_id::text, null,
            (p_update - 'entries') || jsonb_build_object('update_id', saved.update_id));
    return jsonb_build_object('update_id', saved.update_id, 'effective_from', saved.effective_from,
                              'created_at', saved.created_at, 'created_by', saved.created_by);
end $$;

-- --- override requests ----------------------------------------------------------------------------
-- A member (or an admin) asks for a temporary increase of a budget; an admin approves or denies it. An
-- approved override raises the budget's limit and hard cap by its amount in every period while it is in
-- force: from its approval until `until`, a period that starts meanwhile included. Nothing runs at
-- expiry: the rules sum the overrides in force at the moment they judge (tl_override_amount) and fit the
-- cap of each period row they lock to that sum (tl_fit_cap). Every step is audited in tl_audit.

-- The approved overrides of `b` in force at `p_at`, in the budget's unit (an override asked for in
-- another unit, before the budget's unit changed, does not apply).
create or replace function tl_override_amount(b tl_budget, p_at timestamptz) returns numeric
language sql stable as $$
    select coalesce(sum(o.amount), 0) from tl_override o
     where o.tenant_id = b.tenant_id and o.budget_id = b.budget_id and o.status = 'approved'
       and o.until > p_at and o.decided_at <= p_at and o.unit = b.unit
$$;

-- Fit the cap of budget b's period row `per` (locked by the caller, and as it is now: reserved net of the
-- holds the caller freed) to the overrides in force at p_now, and record their sum in override_amount
-- (allowance and cap include it); returns the row. A row whose period does not contain p_now (a settle
-- into a past period) gets no override. Costs one index probe when nothing changes.
--
-- An override that expires (or a limit an admin lowers) while reservations granted under the higher cap
-- are still open: the cap comes down only as far as what is committed and reserved, never below. So the
-- row's CHECK (committed + reserved <= cap) keeps holding; those reservations keep what they were granted
-- and their settles commit within it (tl_track fits before it frees the settled hold); no new grant fits,
-- as tl_check finds no room, until settles, releases and expiries bring committed + reserved under the
-- lower cap; and each later fit lowers the cap again, down to the limit itself. Every grant was within
-- the cap in force when it was made: zero overspend holds.
create or replace function tl_fit_cap(b tl_budget, per tl_budget_period, p_now timestamptz)
returns tl_budget_period language plpgsql
set plan_cache_mode = force_generic_plan as $$
declare
    raised numeric := 0;
    fitted_cap numeric;
begin
    if tl_window_length(b.period) is not null then
        return per;  -- rolling windows keep no cap in their rows: tl_usage_now adds the override
    end if;
    if per.period_start <= p_now and (per.period_end is null or p_now < per.period_end) then
        select coalesce(sum(o.amount), 0) into raised from tl_override o  -- as tl_override_amount
         where o.tenant_id = b.tenant_id and o.budget_id = b.budget_id and o.status = 'approved'
           and o.until > p_now and o.decided_at <= p_now and o.unit = b.unit;
    end if;
    fitted_cap := case when per.cap is not null and b.enforcement = 'hard'
                       then greatest(tl_period_limit(b, per.period_start, true) + per.carried + raised,
                                     per.committed + per.reserved)
                       else per.cap end;
    if fitted_cap is distinct from per.cap or raised <> per.override_amount then
        update tl_budget_period set cap = fitted_cap, override_amount = raised
         where tenant_id = per.tenant_id and budget_id = per.budget_id and period_start = per.period_start
        returning * into per;
    end if;
    return per;
end $$;

-- An override request as the Override model reads it; 'expired' once `until` has passed.
create or replace function tl_override_json(o tl_override, p_now timestamptz) returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'override_id', o.override_id, 'budget', b.name,
        'scope', case when b.scope_kind = 'global' then 'global' else b.scope_kind || ':' || b.scope_value end,
        'unit', o.unit, 'amount', o.amount, 'reason', o.reason, 'until', o.until,
        'status', case when o.status in ('pending', 'approved') and o.until <= p_now then 'expired'
                       else o.status end,
        'requested_by', o.requested_by, 'user', o.user_id, 'requested_at', o.requested_at,
        'decided_at', o.decided_at, 'decided_by', o.decided_by, 'decision_reason', o.decision_reason)
      from tl_budget b
     where b.tenant_id = o.tenant_id and b.budget_id = o.budget_id
$$;

-- Ask for `p_amount` more of budget `p_budget` until `p_until`: at most p_max_factor times its limit
-- (whole tokens for a token budget), until after now and at most p_max_ahead ahead, and at most
-- p_max_pending requests of one requester (a member's user, else the actor) pending at once.
-- p_member_user: a member's user, who asks only for budgets it may read (its own user's and shared ones).
create or replace function tl_request_override(p_tenant text, p_actor text, p_member_user text, p_budget text,
                                               p_amount numeric, p_reason text, p_until timestamptz,
                                               p_max_factor numeric, p_max_ahead interval, p_max_pending integer)
returns jsonb language plpgsql as $$
declare
    now_at timestamptz := clock_timestamp();
    b tl_budget;
    o tl_override;
    requester text := coalesce(p_member_user, p_actor);
begin
    select * into b from tl_budget where tenant_id = p_tenant and name = p_budget;
    if not found or (p_member_user is not null and b.scope_kind = 'user' and b.scope_value <> p_member_user) then
        raise exception 'budget %: no such budget in this tenant', p_budget using errcode = 'TL404';
    end if;
    if p_amount <= 0 or p_amount > b.limit_amount * p_max_factor
       or (b.unit = 'tokens' and p_amount <> trunc(p_amount)) then
        raise exception 'amount %: not allowed; % above 0, at most % (% times the limit of budget %)',
            p_amount, case when b.unit = 'tokens' then 'whole tokens' else 'USD' end,
            b.limit_amount * p_max_factor, p_max_factor, b.name using errcode = 'TL400';
    end if;
    if p_until <= now_at or p_until > now_at + p_max_ahead then
        raise exception 'until %: not allowed; a moment after now (%) and at most % ahead', p_until, now_at,
            p_max_ahead using errcode = 'TL400';
    end if;
    perform pg_advisory_xact_lock(hashtextextended('tl_override:' || p_tenant || ':' || requester, 0));
    if (select count(*) from tl_override
         where tenant_id = p_tenant and status = 'pending' and until > now_at
           and coalesce(user_id, requested_by) = requester) >= p_max_pending then
        raise exception 'budget %: % override requests of yours are pending, the most allowed; cancel one or '
            'wait for a decision', p_budget, p_max_pending using errcode = 'TL409';
    end if;
    insert into tl_override (tenant_id, budget_id, unit, amount, reason, until, requested_by, user_id,
                             requested_at)
    values (p_tenant, b.budget_id, b.unit, p_amount, p_reason, p_until, p_actor, p_member_user, now_at)
    returning * into o;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'request', 'override', o.override_id::text, null, tl_override_json(o, now_at));
    return tl_override_json(o, now_at);
end $$;

-- Approve (p_approve) or deny a pending request that has not expired; audited with the admin's reason.
-- Approval starts the override: from now until its `until`.
create or replace function tl_decide_override(p_tenant text, p_actor text, p_override_id bigint,
                                              p_approve boolean, p_reason text) returns jsonb
language plpgsql as $$
declare
    now_at timestamptz := clock_timestamp();
    o tl_override;
    b tl_budget;
    before jsonb;
begin
    select * into o from tl_override where tenant_id = p_tenant and override_id = p_override_id for update;
    if not found then
        raise exception 'override_id %: no such override request in this tenant', p_override_id
            using errcode = 'TL404';
    end if;
    before := tl_override_json(o, now_at);
    if o.status <> 'pending' or o.until <= now_at then
        raise exception 'override_id %: %; only a pending request can be approved or denied', p_override_id,
            case when o.status = 'pending' then format('expired at %s', o.until)
                 else format('already %s at %s by %s', o.status, o.decided_at, o.decided_by) end
            using errcode = 'TL409';
    end if;
    select * into b from tl_budget where tenant_id = p_tenant and budget_id = o.budget_id;
    if p_approve and b.unit <> o.unit then
        raise exception 'override_id %: budget % is counted in % since this request asked for %; deny it and '
            'ask again', p_override_id, b.name, b.unit, o.unit using errcode = 'TL409';
    end if;
    update tl_override
       set status = case when p_approve then 'approved' else 'denied' end, decided_at = now_at,
           decided_by = p_actor, decision_reason = p_reason
     where tenant_id = p_tenant and override_id = p_override_id
    returning * into o;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, case when p_approve then 'approve' else 'deny' end, 'override',
            p_override_id::text, before, tl_override_json(o, now_at));
    return tl_override_json(o, now_at);
end $$;

-- Withdraw a pending request; a member (p_member_user) only its own: others look absent to it.
create or replace function tl_cancel_override(p_tenant text, p_actor text, p_member_user text,
                                              p_override_id bigint) returns jsonb
language plpgsql as $$
declare
    now_at timestamptz := clock_timestamp();
    o tl_override;
    before jsonb;
begin
    select * into o from tl_override where tenant_id = p_tenant and override_id = p_override_id for update;
    if not found or (p_member_user is not null and o.user_id is distinct from p_member_user) then
        raise exception 'override_id %: no such override request in this tenant', p_override_id
            using errcode = 'TL404';
    end if;
    before := tl_override_json(o, now_at);
    if o.status <> 'pending' or o.until <= now_at then
        raise exception 'override_id %: %; only a pending request can be cancelled', p_override_id,
            case when o.status = 'pending' then format('expired at %s', o.until)
                 else format('already %s at %s by %s', o.status, o.decided_at, o.decided_by) end
            using errcode = 'TL409';
    end if;
    update tl_override set status = 'cancelled', decided_at = now_at, decided_by = p_actor
     where tenant_id = p_tenant and override_id = p_override_id
    returning * into o;
    insert into tl_audit (tenant_id, actor, action, object_kind, object_id, before, after)
    values (p_tenant, p_actor, 'cancel', 'override', p_override_id::text, before, tl_override_json(o, now_at));
    return tl_override_json(o, now_at);
end $$;

-- Override requests, newest first: a member's own (p_member_user), else the tenant's; narrowed to one id,
-- one status (as shown: 'expired' included) or one budget when given.
create or replace function tl_overrides(p_tenant text, p_member_user text, p_override_id bigint, p_status text,
                                        p_budget text, p_limit integer) returns setof jsonb
language sql stable as $$
    select shown from (
        select tl_override_json(o, clock_timestamp()) as shown, o.override_id
          from tl_override o
         where o.tenant_id = p_tenant
           and (p_member_user is null or o.user_id = p_member_user)
           and (p_override_id is null or o.override_id = p_override_id)
           and (p_budget is null or o.budget_id in (select budget_id from tl_budget
                                                     where tenant_id = p_tenant and name = p_budget))
    ) listed
     where p_status is null or shown ->> 'status' = p_status
     order by override_id desc
     limit p_limit
$$;

-- Pending requests to tell the admins of, claimed per sink for p_lease_seconds as alert deliveries are:
-- concurrent dispatchers in any number of processes skip each other's claims, so each request reaches
-- each sink once. A request decided, cancelled or expired before its notice went out is not sent.
create or replace function tl_claim_override_notices(p_sinks text[], p_limit integer,
                                                     p_lease_seconds double precision)
returns setof jsonb language plpgsql as $$
begin
    insert into tl_override_delivery (tenant_id, override_id, sink)
    select o.tenant_id, o.override_id, s.sink
      from tl_override o cross join unnest(p_sinks) as s(sink)
     where o.notified_at is null and o.status = 'pending'
    on conflict do nothing;
    return query
    with due as (
        select d.tenant_id, d.override_id, d.sink from tl_override_delivery d
          join tl_override o on o.tenant_id = d.tenant_id and o.override_id = d.override_id
         where d.delivered_at is null and d.next_attempt_at <= now() and d.sink = any(p_sinks)
           and (d.claimed_until is null or d.claimed_until < now())
           and o.status = 'pending' and o.until > now()
         order by d.next_attempt_at
         limit p_limit
           for update of d skip locked),
    claimed as (
        update tl_override_delivery d
           set claimed_until = now() + make_interval(secs => p_lease_seconds), attempts = d.attempts + 1
          from due
         where d.tenant_id = due.tenant_id and d.override_id = due.override_id and d.sink = due.sink
        returning d.tenant_id, d.override_id, d.sink, d.attempts)
    select tl_override_json(o, now())
           || jsonb_build_object('tenant_id', c.tenant_id, 'sink', c.sink, 'attempt', c.attempts)
      from claimed c join tl_override o on o.tenant_id = c.tenant_id and o.override_id = c.override_id;
end $$;

-- Record a notice's delivery attempt, as tl_finish_alert_delivery does; a request is notified once every
-- sink has it.
create or replace function tl_finish_override_notice(p_tenant text, p_override_id bigint, p_sink text,
                                                     p_error text, p_retry_seconds double precision) returns void
language plpgsql as $$
begin
    -- One request's sinks finish in turn (see tl_finish_alert_delivery).
    perform 1 from tl_override where tenant_id = p_tenant and override_id = p_override_id for no key update;
    update tl_override_delivery
       set delivered_at = case when p_error is null then now() end,
           last_error = p_error,
           claimed_until = null,
           next_attempt_at = case when p_error is null then next_attempt_at
                                  when p_retry_seconds is null then 'infinity'
                                  else now() + make_interval(secs => p_retry_seconds) end
     where tenant_id = p_tenant and override_id = p_override_id and sink = p_sink;
    update tl_override o set notified_at = now()
     where o.tenant_id = p_tenant and o.override_id = p_override_id and o.notified_at is null
       and not exists (select 1 from tl_override_delivery d
                        where d.tenant_id = o.tenant_id and d.override_id = o.override_id
                          and d.delivered_at is null);
end $$;

-- --- anomaly alerts ------------------------------------------------------------------------------
-- Python judges each hour's spend against its baseline (tokenledger.anomalies); this writes the spikes
-- (p_found: [{budget_id, subject, period, hour_start, detail}]) as alerts of kind 'anomaly', once per
-- budget, anomaly period (`period`, in the budget's time zone) and subject: however many processes judge
-- the same hour, the unique key keeps one. The stable fields are the budget's figures now, as other kinds'
-- are at their crossing; threshold is 0 (an anomaly has none). Returns how many were new.
create or replace function tl_anomaly_alerts(p_tenant text, p_found jsonb) returns integer
language plpgsql as $$
declare
    written integer;
begin
    insert into tl_alert (tenant_id, budget_id, budget_name, period_start, threshold, kind, subject, detail,
                          percent_used, used, limit_amount, unit)
    select b.tenant_id, b.budget_id, b.name,
           (tl_period_bounds(x ->> 'period', b.timezone, (x ->> 'hour_start')::timestamptz)).period_start,
           0, 'anomaly', x ->> 'subject', x -> 'detail', round(100 * u.used / u.allowance, 2), u.used,
           u.allowance, b.unit
      from jsonb_array_elements(p_found) with ordinality as found(x, n)
      join tl_budget b on b.tenant_id = p_tenant and b.budget_id = (x ->> 'budget_id')::bigint
      cross join lateral tl_usage_now(b, clock_timestamp()) u
     order by found.n
    on conflict do nothing;
    get diagnostics written = row_count;
    return written;
end $$;
