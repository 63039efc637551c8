//! Hosts' enrolments (migration 18): which hosts are trusted, under which broker and NATS
//! users, and the fleet's identity.

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct HostEnrolment {
    pub host_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub enrolled_at: OffsetDateTime,
    pub enrolled_by: String,
    pub amqp_user: Option<String>,
    pub nats_user: Option<String>,
    #[serde(skip)]
    pub nats_password_hash: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
}

impl HostEnrolment {
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// Record (or renew, after a revocation) the enrolment of `host_id`.
pub async fn enrol(
    db: impl PgExecutor<'_>,
    host_id: &str,
    actor: &str,
    amqp_user: Option<&str>,
    nats_user: &str,
    nats_password_hash: &str,
) -> sqlx::Result<HostEnrolment> {
    sqlx::query_as(
        "insert into host_enrolments (host_id, enrolled_by, amqp_user, nats_user, nats_password_hash)
         values ($1, $2, $3, $4, $5)
         on conflict (host_id) do update set enrolled_at = now(), enrolled_by = excluded.enrolled_by,
             amqp_user = excluded.amqp_user, nats_user = excluded.nats_user,
             nats_password_hash = excluded.nats_password_hash, revoked_at = null, revoked_by = null
         returning *",
    )
    .bind(host_id)
    .bind(actor)
    .bind(amqp_user)
    .bind(nats_user)
    .bind(nats_password_hash)
    .fetch_one(db)
    .await
}

/// Mark the enrolment of `host_id` revoked; `None` when it has none live.
pub async fn revoke(db: impl PgExecutor<'_>, host_id: &str, actor: &str) -> sqlx::Result<Option<HostEnrolment>> {
    sqlx::query_as(
        "update host_enrolments set revoked_at = now(), revoked_by = $2
         where host_id = $1 and revoked_at is null returning *",
    )
    .bind(host_id)
    .bind(actor)
    .fetch_optional(db)
    .await
}

/// Take the host off placement at once: draining, and silent since long ago, so the tick
/// moves its demos elsewhere.
pub async fn retire_host(db: impl PgExecutor<'_>, host_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "update hosts set draining = true, last_seen = least(last_seen, now() - interval '1 day') where id = $1",
    )
    .bind(host_id)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, host_id: &str) -> sqlx::Result<Option<HostEnrolment>> {
    sqlx::query_as("select * from host_enrolments where host_id = $1").bind(host_id).fetch_optional(db).await
}

/// Every enrolment, revoked ones too, by host.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<HostEnrolment>> {
    sqlx::query_as("select * from host_enrolments order by host_id").fetch_all(db).await
}

/// The hosts enrolled and not revoked.
pub async fn live_hosts(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("select host_id from host_enrolments where revoked_at is null order by host_id")
        .fetch_all(db)
        .await
}

/// The host a live enrolment gave the broker user `amqp_user`.
pub async fn host_of_amqp_user(db: impl PgExecutor<'_>, amqp_user: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select host_id from host_enrolments where amqp_user = $1 and revoked_at is null")
        .bind(amqp_user)
        .fetch_optional(db)
        .await
}

/// The fleet's identity, made by the first caller.
pub async fn fleet_identity(db: &sqlx::PgPool) -> sqlx::Result<Uuid> {
    sqlx::query("insert into fleet_identity (id) values ($1) on conflict (single) do nothing")
        .bind(Uuid::new_v4())
        .execute(db)
        .await?;
    sqlx::query_scalar("select id from fleet_identity").fetch_one(db).await
}
