//! Carrying out the chains' decisions ([`crate::chain`]): what happens to a demo after an
//! event, step by step, against the state of record.
//!
//! Every function here runs inside the caller's transaction and returns [`Effects`] that
//! the caller applies after commit (wake the outbox publisher, reload routes), so nothing
//! leaves the process before the state that caused it is durable.
//!
//! # Layout
//! - [`Scheduler`]: what carrying decisions out needs, handed to whoever starts chains or
//!   records their results: HTTP handlers (through `AppState`), the intake, the broker's
//!   consumer, the fleet's tick.
//! - [`orchestrate`]: read a demo's record, decide, write: starting chains, advancing them,
//!   recording results, approvals and retries.
//! - [`placement`]: choosing a host.
//! - [`authorize`]: recent answers about authors' permissions.

pub mod authorize;
pub mod orchestrate;
pub mod placement;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::chain::record::Rules;
use crate::db::Tx;
use crate::edge::RouteTable;
use crate::timings::Timings;
use authorize::PermissionCache;

/// Orchestration's handles: the state of record, what to tell after a commit, and its rules.
#[derive(Clone)]
pub struct Scheduler {
    /// The state of record.
    pub db: PgPool,
    /// Where the edge proxy sends each demo hostname; reloaded after a commit that changed routes.
    pub routes: RouteTable,
    /// Woken after a commit that put messages in the outbox.
    pub outbox: Arc<Notify>,
    /// The settings the chains' decisions follow.
    pub rules: Arc<Rules>,
    /// A host not heard from for this long is down: no demos are placed on it.
    pub host_timeout: Duration,
    /// A host with less free disk gets no new demos.
    pub min_free_disk_bytes: i64,
    /// Recent answers about authors' permissions.
    pub permissions: Arc<PermissionCache>,
    /// How long placement takes, for `/metrics`.
    pub timings: Arc<Timings>,
    /// Repository secrets' keys: a launch's message carries its repository's variables.
    pub vault: Arc<crate::secrets::Vault>,
    /// What the channels refused (heartbeats, messages, log lines, step results that
    /// changed nothing), counted for `/metrics` and audited once per source.
    pub refusals: Arc<crate::refusals::Refusals>,
}

impl Scheduler {
    /// Run `work` in a transaction of its own, commit, then apply the effects it returns.
    pub async fn transact<T, E: From<sqlx::Error>>(
        &self,
        work: impl for<'t> AsyncFnOnce(&mut Tx<'t>) -> Result<(T, Effects), E>,
    ) -> Result<T, E> {
        let mut tx = self.db.begin().await?;
        let (value, effects) = work(&mut tx).await?;
        tx.commit().await?;
        self.apply(effects).await;
        Ok(value)
    }

    /// Apply what a committed transaction asked for.
    pub async fn apply(&self, effects: Effects) {
        // Routes first: a step queued by the same change (retiring the old container, say)
        // must find the edge already pointing at the new one.
        let reloaded = match effects.routes_changed {
            RouteChange::None => Ok(()),
            RouteChange::Demo(id) => self.routes.reload_demo(&self.db, id).await,
            RouteChange::Many => self.routes.reload(&self.db).await,
        };
        if let Err(err) = reloaded {
            tracing::warn!(error = %err, "route table reload failed; the next tick retries");
        }
        if effects.published {
            self.outbox.notify_one();
        }
    }
}

/// What must happen once the transaction commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Effects {
    /// Messages were put in the outbox.
    pub published: bool,
    /// Routes changed: reload them in the edge's table.
    pub routes_changed: RouteChange,
}

impl Effects {
    /// Messages were put in the outbox, and nothing else.
    pub const PUBLISHED: Effects = Effects { published: true, routes_changed: RouteChange::None };

    pub fn merge(self, other: Effects) -> Effects {
        Effects {
            published: self.published || other.published,
            routes_changed: self.routes_changed.merge(other.routes_changed),
        }
    }
}

/// Whose routes changed: the edge reloads one demo's route, or all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    #[default]
    None,
    Demo(uuid::Uuid),
    Many,
}

impl RouteChange {
    pub fn merge(self, other: RouteChange) -> RouteChange {
        match (self, other) {
            (RouteChange::None, change) | (change, RouteChange::None) => change,
            (RouteChange::Demo(a), RouteChange::Demo(b)) if a == b => RouteChange::Demo(a),
            _ => RouteChange::Many,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RouteChange;

    #[test]
    fn route_changes_of_two_demos_merge_into_many() {
        let (a, b) = (RouteChange::Demo(uuid::Uuid::from_u128(1)), RouteChange::Demo(uuid::Uuid::from_u128(2)));
        assert_eq!(RouteChange::None.merge(a), a);
        assert_eq!(a.merge(RouteChange::None), a);
        assert_eq!(a.merge(a), a);
        assert_eq!(a.merge(b), RouteChange::Many);
        assert_eq!(RouteChange::Many.merge(RouteChange::None), RouteChange::Many);
        assert_eq!(RouteChange::None.merge(RouteChange::None), RouteChange::None);
    }
}
