//! Choosing a host: sticky to the one that already has the demo, else the live, not
//! draining host with enough free disk and the most free capacity. To choose, a placement
//! takes the placement lock (a transaction-scoped advisory lock, not the hosts' rows:
//! heartbeats update those 20 times a second with 100 hosts, and each waited for the
//! other), so two concurrent placements see each other's result and never overfill a
//! host; staying put takes no lock. Hosts' numbers of demos are kept by the database as
//! demos change (migration 10), so choosing reads no demo; the lock and the read are one
//! call (migration 11).

use std::time::Duration;

use crate::db::Tx;

/// The host for a demo now on `current` (if any), or `None` when no host can take it.
pub async fn place(
    tx: &mut Tx<'_>,
    current: Option<&str>,
    host_timeout: Duration,
    min_free_disk_bytes: i64,
) -> sqlx::Result<Option<String>> {
    let timeout_secs = host_timeout.as_secs_f64();
    // Staying where it is takes no room anyone else could want: no lock. (Every step of
    // a chain asks; only the first placement of a demo needs the hosts locked.)
    if let Some(current) = current {
        let stays: bool = sqlx::query_scalar(
            "select exists (select 1 from hosts
                            where id = $1 and not draining and last_seen > now() - make_interval(secs => $2))",
        )
        .bind(current)
        .bind(timeout_secs)
        .fetch_one(&mut **tx)
        .await?;
        if stays {
            return Ok(Some(current.to_string()));
        }
    }
    // The lock is held until commit. `low_disk`: the host keeps its demos but gets no new
    // ones; a host that does not report its disk is taken at its word.
    let hosts: Vec<(String, i32, bool, i64)> =
        sqlx::query_as("select id, capacity, low_disk, demos from demofleet_placement_candidates($1, $2)")
            .bind(timeout_secs)
            .bind(min_free_disk_bytes)
            .fetch_all(&mut **tx)
            .await?;
    if hosts.is_empty() {
        return Ok(None);
    }
    if let Some(current) = current {
        if hosts.iter().any(|(id, ..)| id == current) {
            return Ok(Some(current.to_string()));
        }
    }
    Ok(hosts
        .iter()
        .filter(|(_, _, low_disk, _)| !low_disk)
        .map(|(id, capacity, _, demos)| (i64::from(*capacity) - demos, id))
        .filter(|(free, _)| *free > 0)
        // Most free first; ties go to the smallest id, for predictability.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, id)| id.clone()))
}
