//! Reconcile: each live host's inventory (from its heartbeats) against the state of record.
//!
//! - A demo container that belongs to no demo of that host (unknown, moved, stopped) or to
//!   a generation older than the one running is an orphan: the agent is told to remove it.
//!   A demo moving to another host keeps its old container until the new one answers.
//! - A running demo whose container is not running on its host, or a sleeping one whose
//!   stopped container is gone, is missing: it is launched again, as a new generation of
//!   the same commit.
//!
//! A difference is acted on only once it has lasted the grace period
//! (`DEMOFLEET_RECONCILE_GRACE`): heartbeats lag behind launches and removals.
//!
//! A host is compared when a heartbeat newer than the one last compared has come (every
//! 5 s by default, against a tick of 2 s); until then its differences are those found
//! then. An inventory is news only with a heartbeat, and reading every live host's
//! inventory and demos on every tick was most of what reconcile cost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use time::OffsetDateTime;
use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{Cleanup, InventoryItem, WIRE_VERSION};

use crate::config::Config;
use crate::db::demos::{self, DeployRequest};
use crate::db::events::{Event, Kind};
use crate::db::outbox::{self, Outgoing};
use crate::scheduler::{Effects, Scheduler};

/// A difference between a host and the state of record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Difference {
    Orphan { host: String, container: String },
    Missing { demo: Uuid },
}

/// Differences seen so far, with when each was first seen.
#[derive(Debug, Default)]
pub struct Reconciler {
    seen: HashMap<Difference, Instant>,
    compared: Compared,
}

/// Each live host's differences, as found when its heartbeat of the time noted was compared.
#[derive(Debug, Default)]
struct Compared {
    hosts: HashMap<String, (OffsetDateTime, HashSet<Difference>)>,
}

impl Compared {
    /// Forget the hosts not in `live` (each live host with its newest heartbeat's time); the
    /// live hosts whose newest heartbeat is not the one compared.
    fn due(&mut self, live: &HashMap<String, OffsetDateTime>) -> Vec<String> {
        self.hosts.retain(|host, _| live.contains_key(host));
        live.iter()
            .filter(|(host, beat)| self.hosts.get(*host).is_none_or(|(compared, _)| compared != *beat))
            .map(|(host, _)| host.clone())
            .collect()
    }

    fn record(&mut self, host: String, beat: OffsetDateTime, found: HashSet<Difference>) {
        self.hosts.insert(host, (beat, found));
    }

    /// The differences of every host, as last compared.
    fn differences(&self) -> HashSet<Difference> {
        self.hosts.values().flat_map(|(_, found)| found.iter().cloned()).collect()
    }
}

#[derive(sqlx::FromRow)]
struct DemoRow {
    id: Uuid,
    generation: i64,
    desired: String,
    state: String,
    host_id: Option<String>,
    serving_host: Option<String>,
}

impl Reconciler {
    /// Compare, and act on the differences that outlasted the grace period.
    pub async fn run(&mut self, scheduler: &Scheduler, config: &Config) -> sqlx::Result<()> {
        let now = Instant::now();
        self.compare_new_heartbeats(&scheduler.db, config).await?;
        let current = self.compared.differences();
        self.seen.retain(|difference, _| current.contains(difference));
        for difference in current {
            self.seen.entry(difference).or_insert(now);
        }
        let due: Vec<Difference> = self
            .seen
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= config.reconcile_grace)
            .map(|(difference, _)| difference.clone())
            .collect();
        let mut orphans: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for difference in due {
            self.seen.remove(&difference);
            match difference {
                Difference::Orphan { host, container } => orphans.entry(host).or_default().push(container),
                Difference::Missing { demo } => relaunch(scheduler, demo).await?,
            }
        }
        for (host, containers) in orphans {
            tracing::warn!(%host, ?containers, "removing orphaned demo containers");
            let cleanup = Cleanup { version: WIRE_VERSION, host_id: host.clone(), containers };
            outbox::push(&scheduler.db, &Outgoing::cleanup(topology::host_queue(&host), &cleanup)).await?;
            scheduler.apply(Effects::PUBLISHED).await;
        }
        Ok(())
    }

    /// Forget hosts no longer live; compare each live host whose newest heartbeat is not
    /// the one last compared.
    async fn compare_new_heartbeats(&mut self, db: &sqlx::PgPool, config: &Config) -> sqlx::Result<()> {
        let live: HashMap<String, OffsetDateTime> =
            sqlx::query_as("select id, last_seen from hosts where last_seen > now() - make_interval(secs => $1)")
                .bind(config.host_timeout.as_secs_f64())
                .fetch_all(db)
                .await?
                .into_iter()
                .collect();
        let due = self.compared.due(&live);
        if due.is_empty() {
            return Ok(());
        }
        let beats: Vec<(String, OffsetDateTime, serde_json::Value)> =
            sqlx::query_as("select id, last_seen, inventory from hosts where id = any($1)")
                .bind(&due)
                .fetch_all(db)
                .await?;
        for (host, beat, inventory) in beats {
            let found = differences(db, &host, inventory).await?;
            self.compared.record(host, beat, found);
        }
        Ok(())
    }
}

/// Host `host`'s differences, its heartbeat's `inventory` against its demos' state of record.
async fn differences(db: &sqlx::PgPool, host: &str, inventory: serde_json::Value) -> sqlx::Result<HashSet<Difference>> {
    let mut found = HashSet::new();
    let items: Vec<InventoryItem> = serde_json::from_value(inventory).unwrap_or_default();
    let ids: Vec<Uuid> = items.iter().map(|i| i.demo_id).collect();
    let rows: Vec<DemoRow> = sqlx::query_as(
        "select id, generation, desired, state, host_id, serving_host from demos
         where id = any($1) or host_id = $2",
    )
    .bind(&ids)
    .bind(host)
    .fetch_all(db)
    .await?;
    for item in &items {
        let orphan = match rows.iter().find(|d| d.id == item.demo_id) {
            None => true,
            Some(d) => {
                let here = Some(host);
                (d.host_id.as_deref() != here && d.serving_host.as_deref() != here)
                    || (d.desired == "stopped" && d.state == "stopped")
                    || (item.generation < d.generation && d.state == "running")
            }
        };
        if orphan {
            found.insert(Difference::Orphan { host: host.to_owned(), container: item.container_id.clone() });
        }
    }
    let running_here =
        rows.iter().filter(|d| d.host_id.as_deref() == Some(host) && d.desired == "running" && d.state == "running");
    for demo in running_here {
        let up = items.iter().any(|i| i.demo_id == demo.id && i.generation == demo.generation && i.state == "running");
        if !up {
            found.insert(Difference::Missing { demo: demo.id });
        }
    }
    let sleeping_here =
        rows.iter().filter(|d| d.host_id.as_deref() == Some(host) && d.desired == "running" && d.state == "sleeping");
    for demo in sleeping_here {
        if !items.iter().any(|i| i.demo_id == demo.id && i.generation == demo.generation) {
            found.insert(Difference::Missing { demo: demo.id });
        }
    }
    Ok(found)
}

/// Launch a running demo whose container is gone again, as a new generation of its commit.
async fn relaunch(scheduler: &Scheduler, id: Uuid) -> sqlx::Result<()> {
    launch_again(
        scheduler,
        id,
        &["running", "sleeping"],
        "reconcile",
        "the demo's container is gone; launching it again",
    )
    .await
}

/// Deploy demo `id`'s commit again as a new generation, if it should run and is in one of
/// `states`; placement then keeps it where it is or, when that host drains or is down,
/// picks another. Audited as `actor`.
pub async fn launch_again(
    scheduler: &Scheduler,
    id: Uuid,
    states: &[&str],
    actor: &str,
    why: &str,
) -> sqlx::Result<()> {
    let mut tx = scheduler.db.begin().await?;
    let Some(demo) = demos::get_for_update_opt(&mut *tx, id).await? else { return Ok(()) };
    if demo.desired != "running" || !states.contains(&demo.state.as_str()) {
        return Ok(());
    }
    tracing::warn!(demo = %demo.name, host = ?demo.host_id, state = %demo.state, "{why}");
    let event = Event::pull_request(Kind::Deploy, DeployRequest::of(&demo), actor, None);
    let (_, effects) = scheduler.apply_event(&mut tx, &event).await?;
    tx.commit().await?;
    scheduler.apply(effects).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    fn live(hosts: &[(&str, i64)]) -> HashMap<String, OffsetDateTime> {
        hosts.iter().map(|(host, beat)| (host.to_string(), at(*beat))).collect()
    }

    fn sorted(mut hosts: Vec<String>) -> Vec<String> {
        hosts.sort();
        hosts
    }

    #[test]
    fn a_host_is_compared_again_only_after_a_newer_heartbeat_and_forgotten_when_it_goes_silent() {
        let mut compared = Compared::default();
        let orphan = Difference::Orphan { host: "a".into(), container: "c1".into() };
        let missing = Difference::Missing { demo: Uuid::from_u128(7) };

        assert_eq!(sorted(compared.due(&live(&[("a", 0), ("b", 0)]))), ["a", "b"]);
        compared.record("a".into(), at(0), HashSet::from([orphan.clone()]));
        compared.record("b".into(), at(0), HashSet::from([missing.clone()]));
        // The same heartbeats: nothing to compare; the differences found stand.
        assert!(compared.due(&live(&[("a", 0), ("b", 0)])).is_empty());
        assert_eq!(compared.differences(), HashSet::from([orphan.clone(), missing.clone()]));

        // A newer heartbeat of one host: that host alone.
        assert_eq!(compared.due(&live(&[("a", 5), ("b", 0)])), ["a"]);
        compared.record("a".into(), at(5), HashSet::new());
        assert_eq!(compared.differences(), HashSet::from([missing.clone()]));

        // A host no longer live takes its differences with it; back again, it is compared.
        assert!(compared.due(&live(&[("a", 5)])).is_empty());
        assert!(compared.differences().is_empty());
        assert_eq!(compared.due(&live(&[("a", 5), ("b", 0)])), ["b"]);
    }
}
