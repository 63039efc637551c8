//! The outbox: broker messages committed with the change that caused them.

use sqlx::{FromRow, PgExecutor};

#[derive(Debug, FromRow)]
pub struct OutboxMessage {
    pub id: i64,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

pub async fn push(db: impl PgExecutor<'_>, routing_key: &str, payload: serde_json::Value) -> sqlx::Result<()> {
    sqlx::query("insert into outbox (routing_key, payload) values ($1, $2)")
        .bind(routing_key)
        .bind(payload)
        .execute(db)
        .await?;
    Ok(())
}

/// Take up to `limit` of the oldest messages, locked so another publisher skips them.
pub async fn take(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<OutboxMessage>> {
    sqlx::query_as("select id, routing_key, payload from outbox order by id limit $1 for update skip locked")
        .bind(limit)
        .fetch_all(db)
        .await
}

pub async fn delete(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("delete from outbox where id = any($1)").bind(ids).execute(db).await?;
    Ok(())
}
