//! The fleet lease: of several controller replicas, one at a time does the work that must
//! happen once (reconcile, moving demos off drained and silent hosts, placing waiting
//! chains, TTL expiry, idle sleep, writing Traefik's file).
//!
//! The lease is a session-level PostgreSQL advisory lock held on a connection of its own.
//! It ends with that session: when its holder stops, is killed or loses PostgreSQL, the
//! server drops the lock and another replica takes it at its next tick. A holder checks its
//! session every tick, so one that lost it stops acting at once. Everything else (webhooks,
//! results, the outbox relay, heartbeats, the edge, the dashboard) runs on every replica
//! and is coordinated by row locks.

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// The advisory lock's key: "demoflt" and a version.
pub const KEY: i64 = 0x0064_656d_6f66_6c74;

/// This replica's side of the lease.
pub struct Lease {
    db: PgPool,
    /// The session that holds the lock, or asks for it at each tick; it is taken out of
    /// the pool for good, since the lock belongs to it.
    session: Option<sqlx::PgConnection>,
    held: bool,
}

impl Lease {
    pub fn new(db: PgPool) -> Lease {
        Lease { db, session: None, held: false }
    }

    /// Whether this replica holds the lease now: it keeps it while its session lives, and
    /// otherwise asks for it.
    pub async fn hold(&mut self) -> bool {
        let held = self.ask().await;
        if held != self.held {
            if held {
                tracing::info!("took the fleet lease: this controller does the fleet's once-only work");
            } else {
                tracing::warn!("lost the fleet lease with its database session");
            }
            self.held = held;
        }
        held
    }

    async fn ask(&mut self) -> bool {
        if self.session.is_none() {
            let Ok(connection) = self.db.acquire().await else { return false };
            self.session = Some(PoolConnection::<Postgres>::detach(connection));
        }
        let session = self.session.as_mut().expect("a session");
        // A holder only checks that its session is alive.
        let asked = if self.held {
            sqlx::query_scalar("select true").fetch_one(&mut *session).await
        } else {
            sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(KEY).fetch_one(&mut *session).await
        };
        match asked {
            Ok(held) => held,
            Err(_) => {
                self.session = None;
                false
            }
        }
    }
}

/// How many sessions hold the lease of this database (0 or 1), for tests and operators.
/// (Advisory locks are per database; other databases on the server have leases of their own.)
pub async fn holders(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select count(*) from pg_locks
         where locktype = 'advisory' and granted and ((classid::bigint << 32) | objid::bigint) = $1
           and database = (select oid from pg_database where datname = current_database())",
    )
    .bind(KEY)
    .fetch_one(db)
    .await
}
