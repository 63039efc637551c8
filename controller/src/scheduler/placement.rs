//! Choosing a host: sticky to the one that already has the demo, else the live, not
//! draining host with enough free disk and the most free capacity. To choose, eligible
//! hosts are locked in id order, so two concurrent placements see each other's result and
//! never overfill a host; staying put takes no lock. Hosts' numbers of demos are kept by
//! the database as demos change (migration 10), so choosing reads no demo.

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
    // `low_disk`: the host keeps its demos but gets no new ones. A host that does not
    // report its disk is taken at its word. `no key update`: placements exclude each
    // other, but not the key-share locks that demos referencing a host take.
    let hosts: Vec<(String, i32, bool)> = sqlx::query_as(
        "select id, capacity, coalesce(disk_free_bytes < $2, false) from hosts
         where not draining and last_seen > now() - make_interval(secs => $1)
         order by id for no key update",
    )
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
    let hosts: Vec<(String, i32)> =
        hosts.into_iter().filter(|(.., low_disk)| !low_disk).map(|(id, capacity, _)| (id, capacity)).collect();
    // Read after the hosts are locked, so it counts every placement before this one.
    let used = crate::db::hosts::load(&mut **tx).await?;
    let free = |id: &str, capacity: i32| i64::from(capacity) - used.get(id).copied().unwrap_or(0);
    Ok(hosts
        .iter()
        .map(|(id, capacity)| (free(id, *capacity), id))
        .filter(|(free, _)| *free > 0)
        // Most free first; ties go to the smallest id, for predictability.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, id)| id.clone()))
}
