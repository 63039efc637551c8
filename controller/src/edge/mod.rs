//! The built-in edge proxy for one machine without Traefik: routes `<name>.<base domain>`
//! and `<name>.localhost` by `Host` header to the demo's host address and port.
//!
//! # Layout
//! - [`RouteTable`]: the routed demos, reloaded from Postgres.
//! - [`proxy`]: the hyper server that forwards requests.
//! - [`pages`]: the 404 and 502 pages.

pub mod pages;
pub mod proxy;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;

use crate::db::demos;

/// Demo name → `address:port` of its container on its host.
#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<String, String>>>,
}

impl RouteTable {
    pub fn get(&self, name: &str) -> Option<String> {
        self.inner.read().expect("route table lock").get(name).cloned()
    }

    /// Replace the table with the routed demos in the database.
    pub async fn reload(&self, db: &PgPool) -> sqlx::Result<()> {
        let routes = demos::routes(db).await?;
        let table = routes.into_iter().map(|r| (r.name, format!("{}:{}", r.address, r.host_port))).collect();
        *self.inner.write().expect("route table lock") = table;
        Ok(())
    }
}
