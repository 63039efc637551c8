//! Retention: webhook deliveries and finished chains (with their steps and attempts) older
//! than `DEMOFLEET_RETENTION`, and the kept log lines of demos stopped for longer, are removed, a bounded batch at a time, by the replica holding
//! the fleet lease (from its tick). Each batch is one short transaction over rows nothing
//! else writes any more (`for update skip locked`), so the intake never waits for it.
//!
//! Kept whatever their age: every demo's newest chain, chains still live, and the deliveries
//! those chains name. What is removed still counts in `/metrics`: what its tallies
//! (`webhook_delivery_counts`, `step_attempt_counts`) do not hold yet, the rows at or after
//! their mark (see [`crate::counts`]), is added to them in the same transaction.

use std::time::Duration;

use sqlx::PgPool;

use crate::counts;

/// What one batch removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub chains: u64,
    pub deliveries: u64,
    pub log_lines: u64,
}

/// Remove at most `batch` old chains, then at most `batch` old deliveries, then at most
/// `batch` kept log lines of demos stopped before the retention period.
pub async fn prune(db: &PgPool, retention: Duration, batch: i64) -> sqlx::Result<Pruned> {
    let seconds = retention.as_secs_f64();
    let mut tx = db.begin().await?;
    counts::hold_mark(&mut tx, counts::ATTEMPTS).await?;
    let chains = sqlx::query(
        "with old as (
             select c.id from chains c
             where c.status in ('succeeded', 'failed', 'superseded')
               and c.finished_at < now() - make_interval(secs => $1)
               and exists (select 1 from chains n where n.demo_id = c.demo_id and n.created_at > c.created_at)
             order by c.finished_at
             limit $2
             for update of c skip locked
         ),
         attempts as (
             select s.name as step, a.outcome, count(*) as n, coalesce(sum(a.duration_ms), 0)::float8 / 1000 as seconds
             from step_attempts a join chain_steps s on s.chain_id = a.chain_id and s.position = a.position
             where a.chain_id in (select id from old)
               and a.finished_at >= (select until from count_marks where counted = $3)
             group by 1, 2
         ),
         counted as (
             insert into step_attempt_counts (step, outcome, counted, seconds)
             select step, outcome, n, seconds from attempts
             on conflict (step, outcome) do update
                 set counted = step_attempt_counts.counted + excluded.counted,
                     seconds = step_attempt_counts.seconds + excluded.seconds
         )
         delete from chains where id in (select id from old)",
    )
    .bind(seconds)
    .bind(batch)
    .bind(counts::ATTEMPTS)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;

    let mut tx = db.begin().await?;
    counts::hold_mark(&mut tx, counts::DELIVERIES).await?;
    let deliveries = sqlx::query(
        "with old as (
             select w.delivery_id, w.event, w.outcome, w.received_at from webhook_deliveries w
             where w.received_at < now() - make_interval(secs => $1)
               and not exists (select 1 from chains c where c.id = w.chain_id)
             order by w.received_at
             limit $2
             for update of w skip locked
         ),
         counted as (
             insert into webhook_delivery_counts (event, outcome, counted)
             select event, outcome, count(*) from old
             where received_at >= (select until from count_marks where counted = $3) group by 1, 2
             on conflict (event, outcome) do update set counted = webhook_delivery_counts.counted + excluded.counted
         )
         delete from webhook_deliveries where delivery_id in (select delivery_id from old)",
    )
    .bind(seconds)
    .bind(batch)
    .bind(counts::DELIVERIES)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;

    let log_lines = sqlx::query(
        "delete from demo_logs where id in (
             select l.id from demos d join demo_logs l on l.demo_id = d.id
             where d.stopped_at < now() - make_interval(secs => $1) and d.desired <> 'running'
             limit $2)",
    )
    .bind(seconds)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected();
    Ok(Pruned { chains, deliveries, log_lines })
}
