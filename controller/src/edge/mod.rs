//! The built-in edge proxy for one machine without Traefik: routes `<name>.<base domain>`
//! and `<name>.localhost` by `Host` header to the demo's host address and port, notes each
//! demo's last request (for idle sleep) and wakes sleeping demos.
//!
//! # Layout
//! - [`RouteTable`]: the routed and sleeping demos, reloaded from Postgres, with the time
//!   of each one's last request.
//! - [`proxy`]: the hyper server that forwards requests.
//! - [`pages`]: the 404, 502 and "waking up" pages.

pub mod pages;
pub mod proxy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::demos;

/// Where a request for a demo goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// To its container at `address:port`.
    Up(String),
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
}

impl RouteTable {
    pub fn new(idle_sleep_seconds: i32) -> RouteTable {
        RouteTable { inner: Arc::default(), idle_sleep_seconds }
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

    /// Replace the table with the routed and sleeping demos in the database. Requests
    /// noted and not yet taken stay noted.
    pub async fn reload(&self, db: &PgPool) -> sqlx::Result<()> {
        let routes = demos::routes(db, self.idle_sleep_seconds).await?;
        let mut table = self.inner.write().expect("route table lock");
        let mut old = std::mem::take(&mut *table);
        for route in routes {
            let target = match route.host_port.filter(|_| route.routed) {
                Some(port) => Target::Up(format!("{}:{port}", route.address)),
                None => Target::Asleep(route.id),
            };
            let last_request = old.remove(&route.name).map(|e| e.last_request).unwrap_or_default();
            table.insert(route.name, Entry { target, gated: route.gated, last_request });
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
