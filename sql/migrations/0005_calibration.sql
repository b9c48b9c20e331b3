-- 0005: the raw count behind a pre-flight estimate, so estimates can be calibrated from provider usage
-- Applied in a transaction by `tokenledger migrate`; recorded in tl_migrations.

-- For an estimated model, the count before calibration (input_tokens holds what was reserved).
alter table tl_reservation add column counted_input_tokens bigint;
