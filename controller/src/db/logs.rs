//! Kept log lines (`demo_logs`): appended in batches, bounded per generation and per demo,
//! read back in order.

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

/// One line as the agent published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLine {
    pub demo_id: Uuid,
    pub generation: i64,
    pub step: String,
    pub line: String,
}

/// What the state of record says of a host sending a demo's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The host is enrolled (not revoked) and the demo placed on it, or served from it
    /// while it moves.
    PlacedHere,
    /// The host is enrolled, the demo (if it exists) is not on it.
    NotPlacedHere,
    /// No live enrolment names the host.
    NotEnrolled,
}

/// For each `(host, demo)` of `pairs`, in order, whether that host may send that demo's
/// lines.
pub async fn senders(db: impl PgExecutor<'_>, pairs: &[(String, Uuid)]) -> sqlx::Result<Vec<Sender>> {
    let hosts: Vec<&str> = pairs.iter().map(|(h, _)| h.as_str()).collect();
    let demos: Vec<Uuid> = pairs.iter().map(|(_, d)| *d).collect();
    let rows: Vec<(bool, bool)> = sqlx::query_as(
        "select exists (select 1 from host_enrolments e where e.host_id = p.host and e.revoked_at is null),
                exists (select 1 from demos d where d.id = p.demo and p.host in (d.host_id, d.serving_host))
         from unnest($1::text[], $2::uuid[]) with ordinality as p (host, demo, n)
         order by p.n",
    )
    .bind(hosts)
    .bind(demos)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(enrolled, placed)| match (enrolled, placed) {
            (false, _) => Sender::NotEnrolled,
            (true, true) => Sender::PlacedHere,
            (true, false) => Sender::NotPlacedHere,
        })
        .collect())
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub generation: i64,
    pub step: String,
    pub line: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Append `lines` in their order; lines of demos that no longer exist are dropped. Appends
/// take turns (a transaction lock), so ids are given in the order they become visible: a
/// reader that saw id N never sees a smaller id appear afterwards.
pub async fn append(db: &sqlx::PgPool, lines: &[NewLine]) -> sqlx::Result<u64> {
    let mut tx = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock(hashtext('demofleet.demo_logs'))").execute(&mut *tx).await?;
    let ids: Vec<Uuid> = lines.iter().map(|l| l.demo_id).collect();
    let generations: Vec<i64> = lines.iter().map(|l| l.generation).collect();
    let steps: Vec<&str> = lines.iter().map(|l| l.step.as_str()).collect();
    let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    let done = sqlx::query(
        "insert into demo_logs (demo_id, generation, step, line)
         select l.demo_id, l.generation, l.step, l.line
         from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]) with ordinality
              as l (demo_id, generation, step, line, n)
         where exists (select 1 from demos d where d.id = l.demo_id)
         order by l.n",
    )
    .bind(ids)
    .bind(generations)
    .bind(steps)
    .bind(texts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Keep, of demo `demo`, the newest `generations` generations, and of generation
/// `generation` only the newest lines that fit in `bytes`.
pub async fn trim(db: &sqlx::PgPool, demo: Uuid, generation: i64, bytes: i64, generations: i64) -> sqlx::Result<u64> {
    let old = sqlx::query(
        "delete from demo_logs where demo_id = $1 and generation < (
             select coalesce(min(g), 0) from (
                 select distinct generation as g from demo_logs where demo_id = $1
                 order by generation desc limit $2) newest)",
    )
    .bind(demo)
    .bind(generations)
    .execute(db)
    .await?;
    let over = sqlx::query(
        "delete from demo_logs where id in (
             select id from (
                 select id, sum(octet_length(line) + 1) over (order by id desc) as kept
                 from demo_logs where demo_id = $1 and generation = $2) sized
             where kept > $3)",
    )
    .bind(demo)
    .bind(generation)
    .bind(bytes)
    .execute(db)
    .await?;
    Ok(old.rows_affected() + over.rows_affected())
}

/// What to read: lines after `after` (an id), of one generation or step, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub after: i64,
    pub generation: Option<i64>,
    pub step: Option<String>,
    pub limit: i64,
}

/// Kept lines of `demo` in their order.
pub async fn read(db: impl PgExecutor<'_>, demo: Uuid, query: &Query) -> sqlx::Result<Vec<LogLine>> {
    sqlx::query_as(
        "select id, generation, step, line, at from demo_logs
         where demo_id = $1 and id > $2 and ($3::bigint is null or generation = $3)
           and ($4::text is null or step = $4)
         order by id limit $5",
    )
    .bind(demo)
    .bind(query.after)
    .bind(query.generation)
    .bind(query.step.as_deref())
    .bind(query.limit)
    .fetch_all(db)
    .await
}

/// The generations of `demo` with kept lines, oldest first.
pub async fn generations(db: impl PgExecutor<'_>, demo: Uuid) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("select distinct generation from demo_logs where demo_id = $1 order by 1")
        .bind(demo)
        .fetch_all(db)
        .await
}

/// The last `limit` kept lines of generation `generation` of `demo`, in their order.
pub async fn tail(db: impl PgExecutor<'_>, demo: Uuid, generation: i64, limit: i64) -> sqlx::Result<Vec<LogLine>> {
    let mut lines: Vec<LogLine> = sqlx::query_as(
        "select id, generation, step, line, at from demo_logs where demo_id = $1 and generation = $2
         order by id desc limit $3",
    )
    .bind(demo)
    .bind(generation)
    .bind(limit)
    .fetch_all(db)
    .await?;
    lines.reverse();
    Ok(lines)
}
