//! Hosts: what their agents last said, and placement of demos on them.

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;

use demofleet_common::wire::Heartbeat;

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Host {
    pub id: String,
    pub address: String,
    pub capacity: i32,
    pub agent_version: String,
    pub draining: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    pub inventory: serde_json::Value,
    pub disk_total_bytes: Option<i64>,
    pub disk_free_bytes: Option<i64>,
}

/// What became of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The host is enrolled: it is alive now, with this inventory.
    Recorded,
    /// No enrolment names the host: nothing recorded.
    Unknown,
    /// The host's enrolment is revoked: nothing recorded.
    Revoked,
}

/// Record a heartbeat of a host with a live enrolment: the host exists, is alive now, and
/// has this inventory. Any other host's heartbeat changes nothing. One round trip.
pub async fn record_heartbeat(db: impl PgExecutor<'_>, beat: &Heartbeat) -> sqlx::Result<Heard> {
    let capacity = i32::try_from(beat.capacity).unwrap_or(i32::MAX);
    let live: Option<bool> = sqlx::query_scalar(
        "with enrolment as (select revoked_at is null as live from host_enrolments where host_id = $1),
         recorded as (
             insert into hosts (id, address, capacity, agent_version, inventory, disk_total_bytes, disk_free_bytes)
             select $1, $2, $3, $4, $5, $6, $7 where exists (select 1 from enrolment where live)
             on conflict (id) do update set address = excluded.address, capacity = excluded.capacity,
                 agent_version = excluded.agent_version, inventory = excluded.inventory, last_seen = now(),
                 disk_total_bytes = excluded.disk_total_bytes, disk_free_bytes = excluded.disk_free_bytes
         )
         select (select live from enrolment)",
    )
    .bind(&beat.host_id)
    .bind(&beat.address)
    .bind(capacity)
    .bind(&beat.agent_version)
    .bind(serde_json::to_value(&beat.inventory).unwrap_or_default())
    .bind(beat.disk.map(|d| i64::try_from(d.total_bytes).unwrap_or(i64::MAX)))
    .bind(beat.disk.map(|d| i64::try_from(d.free_bytes).unwrap_or(i64::MAX)))
    .fetch_one(db)
    .await?;
    Ok(match live {
        Some(true) => Heard::Recorded,
        Some(false) => Heard::Revoked,
        None => Heard::Unknown,
    })
}

/// Fold the noted changes of hosts' numbers of demos (migration 10) into the numbers, so
/// that placement reads few rows. Atomic: a reader sees the changes either noted or folded, once.
pub async fn fold_load(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "with folded as (delete from host_load_changes returning host_id, delta)
         insert into host_load (host_id, demos) select host_id, sum(delta) from folded group by host_id
         on conflict (host_id) do update set demos = host_load.demos + excluded.demos",
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The hosts of the fleet: revoked ones have left it.
pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Host>> {
    sqlx::query_as(
        "select h.* from hosts h
         where not exists (select 1 from host_enrolments e where e.host_id = h.id and e.revoked_at is not null)
         order by h.id",
    )
    .fetch_all(db)
    .await
}
