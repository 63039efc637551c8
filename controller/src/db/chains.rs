//! Chains and their steps.

use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use demofleet_common::wire::Step;

#[derive(Debug, Clone, FromRow)]
pub struct Chain {
    pub id: Uuid,
    pub demo_id: Uuid,
    pub generation: i64,
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ChainStep {
    pub chain_id: Uuid,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub attempts: i32,
}

/// Create a chain of `steps` for the demo's `generation`, superseding its unfinished chains.
pub async fn create(
    tx: &mut super::Tx<'_>,
    demo_id: Uuid,
    generation: i64,
    kind: &str,
    steps: &[Step],
    delivery_id: Option<&str>,
) -> sqlx::Result<Uuid> {
    sqlx::query(
        "update chains set status = 'superseded', finished_at = now()
         where demo_id = $1 and status in ('waiting', 'running')",
    )
    .bind(demo_id)
    .execute(&mut **tx)
    .await?;
    let id = Uuid::new_v4();
    sqlx::query("insert into chains (id, demo_id, generation, kind, status, delivery_id) values ($1, $2, $3, $4, 'running', $5)")
        .bind(id)
        .bind(demo_id)
        .bind(generation)
        .bind(kind)
        .bind(delivery_id)
        .execute(&mut **tx)
        .await?;
    let names: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
    sqlx::query(
        "insert into chain_steps (chain_id, position, name, status)
         select $1, ordinality::int, name, 'pending' from unnest($2::text[]) with ordinality as name",
    )
    .bind(id)
    .bind(&names)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

pub async fn get_for_update(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Chain>> {
    sqlx::query_as("select id, demo_id, generation, kind, status from chains where id = $1 for update")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The first step not yet finished.
pub async fn next_step(db: impl PgExecutor<'_>, chain_id: Uuid) -> sqlx::Result<Option<ChainStep>> {
    sqlx::query_as(
        "select chain_id, position, name, status, attempts from chain_steps
         where chain_id = $1 and status in ('pending', 'queued') order by position limit 1",
    )
    .bind(chain_id)
    .fetch_optional(db)
    .await
}

pub async fn mark_step(
    db: impl PgExecutor<'_>,
    chain_id: Uuid,
    position: i32,
    status: &str,
    error: Option<&str>,
    output: Option<serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update chain_steps set status = $3, error = $4, output = coalesce($5, output),
             attempts = case when $3 = 'queued' then attempts + 1 else attempts end,
             queued_at = case when $3 = 'queued' then now() else queued_at end,
             finished_at = case when $3 in ('succeeded', 'failed', 'skipped') then now() else finished_at end
         where chain_id = $1 and position = $2",
    )
    .bind(chain_id)
    .bind(position)
    .bind(status)
    .bind(error)
    .bind(output)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_status(db: impl PgExecutor<'_>, id: Uuid, status: &str, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "update chains set status = $2, error = $3,
             finished_at = case when $2 in ('succeeded', 'failed', 'superseded') then now() else null end
         where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// Chains waiting for a host, oldest first.
pub async fn waiting(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("select id from chains where status = 'waiting' order by created_at limit $1")
        .bind(limit)
        .fetch_all(db)
        .await
}
