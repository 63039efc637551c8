//! The control channel's checks: who may speak on it. A heartbeat counts only from an
//! enrolled host that is not revoked; a step result only from the broker user enrolled for
//! the host it names. Everything else is refused: counted (`/metrics`,
//! `demofleet_channel_refused_total{channel,reason}`), logged and audited, both at most once
//! per [`REPORT_EVERY`] for each channel and reason, so a flood costs a counter each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::db::{audit, enrolments};

/// How often a kind of refusal is logged and audited at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The channels the controller reads.
pub const HEARTBEAT: &str = "heartbeat";
pub const RESULT: &str = "controller_queue";
pub const LOG: &str = "log";

/// Whom the channel trusts, cached (refreshed each tick, looked up on a miss), and what
/// it refused.
pub struct Trust {
    db: PgPool,
    known: Mutex<Known>,
    refusals: Mutex<BTreeMap<(&'static str, &'static str), Refusal>>,
}

#[derive(Default)]
struct Known {
    hosts: HashSet<String>,
    /// Broker user → the host enrolled with it.
    users: HashMap<String, String>,
}

#[derive(Default)]
struct Refusal {
    total: u64,
    reported: Option<Instant>,
    since_report: u64,
}

impl Trust {
    pub fn new(db: PgPool) -> Trust {
        Trust { db, known: Mutex::default(), refusals: Mutex::default() }
    }

    /// Read the live enrolments again: revoked hosts drop out of the cache.
    pub async fn refresh(&self) -> sqlx::Result<()> {
        let mut known = Known::default();
        for e in enrolments::list(&self.db).await?.into_iter().filter(|e| e.is_live()) {
            if let Some(user) = e.amqp_user {
                known.users.insert(user, e.host_id.clone());
            }
            known.hosts.insert(e.host_id);
        }
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = known;
        Ok(())
    }

    /// Whether `host` is enrolled and not revoked.
    pub async fn host_enrolled(&self, host: &str) -> sqlx::Result<bool> {
        if self.known.lock().unwrap_or_else(|p| p.into_inner()).hosts.contains(host) {
            return Ok(true);
        }
        let live = enrolments::get(&self.db, host).await?.is_some_and(|e| e.is_live());
        if live {
            self.known.lock().unwrap_or_else(|p| p.into_inner()).hosts.insert(host.to_string());
        }
        Ok(live)
    }

    /// The host enrolled with broker user `user`, if any is live.
    pub async fn host_of_user(&self, user: &str) -> sqlx::Result<Option<String>> {
        if let Some(host) = self.known.lock().unwrap_or_else(|p| p.into_inner()).users.get(user) {
            return Ok(Some(host.clone()));
        }
        let host = enrolments::host_of_amqp_user(&self.db, user).await?;
        if let Some(host) = &host {
            self.known.lock().unwrap_or_else(|p| p.into_inner()).users.insert(user.to_string(), host.clone());
        }
        Ok(host)
    }

    /// Refuse something on `channel` for `reason`: count it; log and audit it unless the
    /// same was reported less than [`REPORT_EVERY`] ago.
    pub fn refuse(&self, channel: &'static str, reason: &'static str, detail: serde_json::Value) {
        let report = {
            let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let refusal = refusals.entry((channel, reason)).or_default();
            refusal.total += 1;
            refusal.since_report += 1;
            let due = refusal.reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
            due.then(|| {
                refusal.reported = Some(Instant::now());
                std::mem::take(&mut refusal.since_report)
            })
        };
        let Some(count) = report else { return };
        tracing::warn!(channel, reason, count, %detail, "control channel: refused (count: since the last such report)");
        let db = self.db.clone();
        let detail = serde_json::json!({ "channel": channel, "reason": reason, "count": count, "example": detail });
        tokio::spawn(async move {
            if let Err(err) = audit::record(&db, "control-channel", "channel_refused", None, detail).await {
                tracing::warn!(error = %err, "auditing a refusal failed");
            }
        });
    }

    /// Refusals so far, by channel and reason.
    pub fn refused(&self) -> Vec<(&'static str, &'static str, u64)> {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        refusals.iter().map(|((c, r), n)| (*c, *r, n.total)).collect()
    }
}
