-- Retention (DEMOFLEET_RETENTION, controller/src/retention.rs): webhook deliveries and
-- finished chains older than the retention period are removed in small batches by the
-- replica holding the fleet lease, so the tables the intake writes stay the size of the
-- period, not of the fleet's whole history. The newest chain of every demo is kept, and
-- so is the delivery that started it.

-- Finding what is old without reading everything.
create index webhook_deliveries_received on webhook_deliveries (received_at);
create index chains_finished on chains (finished_at) where status in ('succeeded', 'failed', 'superseded');
-- Removing a delivery looks for chains that name it (the foreign key, and the kept newest chain).
create index chains_delivery on chains (delivery_id) where delivery_id is not null;

-- What was removed still counts in /metrics: its counters never go down.
create table webhook_delivery_counts (
    event   text not null,
    outcome text not null,
    pruned  bigint not null,
    primary key (event, outcome)
);
create table step_attempt_counts (
    step    text not null,
    outcome text not null,
    pruned  bigint not null,
    seconds float8 not null,
    primary key (step, outcome)
);
