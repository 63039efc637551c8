//! Audit events: every start, stop, approval and retry, naming who asked.

use sqlx::PgExecutor;
use uuid::Uuid;

pub async fn record(
    db: impl PgExecutor<'_>,
    actor: &str,
    action: &str,
    demo_id: Option<Uuid>,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("insert into audit_events (actor, action, demo_id, detail) values ($1, $2, $3, $4)")
        .bind(actor)
        .bind(action)
        .bind(demo_id)
        .bind(detail)
        .execute(db)
        .await?;
    Ok(())
}
