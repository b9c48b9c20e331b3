-- 0015: anomaly alerts: an alert about one user's spend under a shared budget, with what it was judged on
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

-- What within its budget an alert is about: '' for the budget as a whole, 'user:X' for one user's spend
-- under a shared budget (anomaly alerts). Part of the key that writes each alert once: an anomaly alert
-- is raised once per budget, period and subject.
alter table tl_alert add column subject text not null default '';
-- The facts an alert was judged on, for kinds that have more than the stable fields (an anomaly: the
-- hour, its spend, the baseline's median and MAD, the bar it crossed); null for threshold and forecast.
alter table tl_alert add column detail jsonb;
alter table tl_alert drop constraint tl_alert_tenant_id_budget_id_period_start_threshold_kind_key;
alter table tl_alert add constraint tl_alert_once
    unique (tenant_id, budget_id, period_start, threshold, kind, subject);
