//! The counts of webhook deliveries and step attempts that `/metrics` reports, read without
//! reading the whole history: a tally holds every row stamped before a mark (kept or since
//! removed), and a scrape adds the few rows at or after it. The replica holding the fleet
//! lease moves the marks forward at each tick ([`count_up`]); migration 27 says what keeps
//! the tallies exact meanwhile.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// The mark of `webhook_deliveries` (by `received_at`).
pub const DELIVERIES: &str = "webhook_deliveries";
/// The mark of `step_attempts` (by `finished_at`).
pub const ATTEMPTS: &str = "step_attempts";

/// How far behind now a mark stays: what a scrape reads row by row.
const LAG: Duration = Duration::from_secs(10);
/// At most this many rows of each table are counted into the tally per tick, so that a
/// history counted for the first time (after the upgrade) is many short transactions (about
/// 100 s of 2 s ticks per million rows), not one long one.
const MOST_PER_TICK: i32 = 20_000;

/// Move the marks forward, counting the rows they pass: one mark a transaction.
pub async fn count_up(db: &PgPool) -> sqlx::Result<()> {
    for counted in [DELIVERIES, ATTEMPTS] {
        sqlx::query("select demofleet_count_up($1, make_interval(secs => $2), $3)")
            .bind(counted)
            .bind(LAG.as_secs_f64())
            .bind(MOST_PER_TICK)
            .execute(db)
            .await?;
    }
    Ok(())
}

/// Hold the mark `counted` (one of [`DELIVERIES`], [`ATTEMPTS`]) until `tx` ends, for a
/// statement that counts removed rows against it: the mark cannot move meanwhile, and the
/// next statement reads it as it is now.
pub async fn hold_mark(tx: &mut PgConnection, counted: &str) -> sqlx::Result<()> {
    sqlx::query("select 1 from count_marks where counted = $1 for share").bind(counted).execute(tx).await?;
    Ok(())
}

/// Deliveries by event and outcome, ever recorded.
pub async fn deliveries(db: &PgPool) -> sqlx::Result<Vec<(String, String, i64)>> {
    read(
        db,
        DELIVERIES,
        "select event, outcome, sum(n)::int8 from (
             select event, outcome, count(*) as n from webhook_deliveries where received_at >= $1::timestamptz
             group by 1, 2
             union all select event, outcome, counted from webhook_delivery_counts
         ) as counts group by 1, 2 order by 1, 2",
    )
    .await
}

/// Step attempts by step and outcome, ever recorded, with the seconds they took.
pub async fn attempts(db: &PgPool) -> sqlx::Result<Vec<(String, String, i64, f64)>> {
    read(
        db,
        ATTEMPTS,
        "select step, outcome, sum(n)::int8, sum(seconds)::float8 from (
             select s.name as step, a.outcome, count(*) as n, coalesce(sum(a.duration_ms), 0)::float8 / 1000 as seconds
             from step_attempts a join chain_steps s on s.chain_id = a.chain_id and s.position = a.position
             where a.finished_at >= $1::timestamptz
             group by 1, 2
             union all select step, outcome, counted, seconds from step_attempt_counts
         ) as counts group by 1, 2 order by 1, 2",
    )
    .await
}

/// The rows of `query` given the mark `counted` as `$1`, the mark and the tally read in one
/// snapshot (a read-only repeatable-read transaction), as one tick left them.
async fn read<T>(db: &PgPool, counted: &str, query: &'static str) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let mut tx = db.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only").execute(&mut *tx).await?;
    let mark = mark(&mut tx, counted).await?;
    let rows = sqlx::query_as(query).bind(mark).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// The mark as text (it starts at `-infinity`), bound as a value so that the planner reads
/// the rows after it through their index.
async fn mark(tx: &mut PgConnection, counted: &str) -> sqlx::Result<String> {
    sqlx::query_scalar("select until::text from count_marks where counted = $1").bind(counted).fetch_one(tx).await
}
