//! The built-in edge proxy for one machine without Traefik: routes `<name>.<base domain>`
//! and `<name>.localhost` by `Host` header to the demo's host address and port, notes each
//! demo's last request (for idle sleep) and wakes sleeping demos.
//!
//! # Layout
//! - [`RouteTable`]: the routed and sleeping demos, reloaded from Postgres, with the time
//!   of each one's last request; reloads asked for at once share one.
//! - [`follow`]: the table kept in step with the changes every replica commits, as
//!   PostgreSQL announces them.
//! - [`proxy`]: the hyper server that forwards requests.
//! - [`pool`]: the connections to demos kept open between requests.
//! - [`pages`]: the 404, 502 and "waking up" pages.

pub mod follow;
pub mod pages;
pub mod pool;
pub mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::demos;

/// Where a request for a demo goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// To its container at `address:port` (shared: each request takes a copy).
    Up(Arc<str>),
    /// Nowhere yet: the demo sleeps (or is waking up); the request wakes it.
    Asleep(Uuid),
}

/// Where a request goes, and whether the SSO gate stands before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub target: Target,
    pub gated: bool,
}

struct Entry {
    target: Target,
    gated: bool,
    /// Unix time of the last request not yet written to the database; 0: none.
    last_request: Arc<AtomicI64>,
}

/// Demo name → where its requests go.
#[derive(Clone)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<String, Entry>>>,
    /// The controller's default idle time (`DEMOFLEET_IDLE_SLEEP`), in seconds.
    idle_sleep_seconds: i32,
    reloads: Arc<Coalesced>,
}

impl RouteTable {
    pub fn new(idle_sleep_seconds: i32) -> RouteTable {
        RouteTable { inner: Arc::default(), idle_sleep_seconds, reloads: Arc::default() }
    }

    /// Where requests for `name` go now, without noting a request.
    pub fn target(&self, name: &str) -> Option<Target> {
        self.inner.read().expect("route table lock").get(name).map(|e| e.target.clone())
    }

    /// Whether the demo `name` is gated, if it is in the table.
    pub fn gated(&self, name: &str) -> Option<bool> {
        self.inner.read().expect("route table lock").get(name).map(|e| e.gated)
    }

    /// Where a request for `name` goes, noting the request.
    pub fn visit(&self, name: &str) -> Option<Visit> {
        let table = self.inner.read().expect("route table lock");
        let entry = table.get(name)?;
        entry.last_request.store(OffsetDateTime::now_utc().unix_timestamp(), Ordering::Relaxed);
        Some(Visit { target: entry.target.clone(), gated: entry.gated })
    }

    /// Replace the table with the routed and sleeping demos in the database, as they are
    /// at the call or later. Requests noted and not yet taken stay noted. Each reload reads
    /// every route, so callers that arrive while one runs share the next one.
    pub async fn reload(&self, db: &PgPool) -> sqlx::Result<()> {
        self.reloads.run(|| self.load(db)).await
    }

    /// Update demo `id`'s entry alone from the database, as it is at the call or later: a
    /// chain's route step changes one route, and reloading all of them for each one made a
    /// burst of 5,000 demos quadratic.
    pub async fn reload_demo(&self, db: &PgPool, id: Uuid) -> sqlx::Result<()> {
        // In turn with every other reload, so an older read never overwrites a newer one.
        let _turn = self.reloads.succeeded.lock().await;
        let route = demos::route(db, id, self.idle_sleep_seconds).await?;
        let name = match &route {
            Some(route) => route.name.clone(),
            None => match demos::name(db, id).await? {
                Some(name) => name,
                None => return Ok(()),
            },
        };
        let mut table = self.inner.write().expect("route table lock");
        let Some(route) = route else {
            table.remove(&name);
            return Ok(());
        };
        let last_request = table.remove(&name).map(|e| e.last_request).unwrap_or_default();
        table.insert(name, Entry { target: target(&route), gated: route.gated, last_request });
        Ok(())
    }

    async fn load(&self, db: &PgPool) -> sqlx::Result<()> {
        let routes = demos::routes(db, self.idle_sleep_seconds).await?;
        let mut table = self.inner.write().expect("route table lock");
        let mut old = std::mem::take(&mut *table);
        for route in routes {
            let last_request = old.remove(&route.name).map(|e| e.last_request).unwrap_or_default();
            let entry = Entry { target: target(&route), gated: route.gated, last_request };
            table.insert(route.name, entry);
        }
        Ok(())
    }

    /// The requests noted since the last call: each demo's newest.
    pub fn take_requests(&self) -> Vec<(String, OffsetDateTime)> {
        let table = self.inner.read().expect("route table lock");
        table
            .iter()
            .filter_map(|(name, entry)| {
                let at = entry.last_request.swap(0, Ordering::Relaxed);
                let at = OffsetDateTime::from_unix_timestamp(at).ok().filter(|_| at > 0)?;
                Some((name.clone(), at))
            })
            .collect()
    }
}

/// Where a listed demo's requests go.
fn target(route: &demos::Route) -> Target {
    match route.host_port.filter(|_| route.routed) {
        Some(port) => Target::Up(format!("{}:{port}", route.address).into()),
        None => Target::Asleep(route.id),
    }
}

/// A refresh that callers need begun after their call: one runs at a time, and callers
/// that arrive while it runs share the next one.
#[derive(Debug, Default)]
struct Coalesced {
    /// Refreshes begun so far.
    begun: AtomicU64,
    /// Held while a refresh runs; the number of the last one that succeeded.
    succeeded: tokio::sync::Mutex<u64>,
}

impl Coalesced {
    /// Return once a refresh begun after this call has succeeded, running it if no other
    /// caller has; its error when this caller ran it and it failed.
    async fn run<E, F: Future<Output = Result<(), E>>>(&self, refresh: impl FnOnce() -> F) -> Result<(), E> {
        // The next refresh to begin, or any later one, begins after this call.
        let needed = self.begun.load(Ordering::SeqCst) + 1;
        let mut succeeded = self.succeeded.lock().await;
        if *succeeded >= needed {
            return Ok(());
        }
        let number = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        refresh().await?;
        *succeeded = number;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Coalesced;

    #[tokio::test]
    async fn callers_at_once_share_refreshes_and_each_sees_one_begun_after_its_call() {
        let coalesced = Arc::new(Coalesced::default());
        // `begun`: refreshes started; `done`: one more than the newest finished refresh's index.
        let (begun, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let callers: Vec<_> = (0..50)
            .map(|i| {
                let (coalesced, begun, done) = (coalesced.clone(), begun.clone(), done.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i % 10)).await;
                    let before = begun.load(Ordering::SeqCst);
                    coalesced
                        .run(|| async {
                            let index = begun.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            done.store(index + 1, Ordering::SeqCst);
                            Ok::<_, ()>(())
                        })
                        .await
                        .unwrap();
                    // The refresh numbered `before` was the first to begin after the call.
                    assert!(done.load(Ordering::SeqCst) > before, "returned before a later refresh finished");
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        let refreshes = begun.load(Ordering::SeqCst);
        assert!((1..25).contains(&refreshes), "{refreshes} refreshes for 50 callers");
    }

    #[tokio::test]
    async fn a_failed_refresh_is_not_shared() {
        let coalesced = Coalesced::default();
        assert_eq!(coalesced.run(|| async { Err("down") }).await, Err("down"));
        let ran = AtomicU64::new(0);
        let refresh = || async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, &str>(())
        };
        assert_eq!(coalesced.run(refresh).await, Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "a caller after a failure runs its own refresh");
    }
}
