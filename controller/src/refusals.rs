//! What the controller refused on its channels (a heartbeat from a host that is not
//! enrolled, one it cannot read…): counted for `/metrics` by what and why, and remembered
//! so that each source is audited once per process, not once per message.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::db::audit;

/// How many sources [`Refusals::first`] remembers; past it, no new source is audited (the
/// counts go on), so a flood of invented host ids costs bounded memory and audit rows.
pub const REMEMBERED: usize = 1000;

/// Refusals by what was refused and why, and the sources already audited.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    audited: Mutex<Remembered>,
}

impl Refusals {
    /// Count one refusal of `what` (`heartbeat`) for `reason` (`unknown_host`).
    pub fn count(&self, what: &'static str, reason: &'static str) {
        self.count_by(what, reason, 1);
    }

    /// Count `n` refusals of `what` for `reason`.
    pub fn count_by(&self, what: &'static str, reason: &'static str, n: u64) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((what, reason)).or_default() += n;
    }

    /// Every count so far: `((what, reason), n)`, in order.
    pub fn counts(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Whether `source` is refused for the first time in this process (and so is to be
    /// audited and logged as a warning): false when it was before, or when
    /// [`REMEMBERED`] sources are remembered already.
    pub fn first(&self, source: &str) -> bool {
        self.audited.lock().unwrap_or_else(|e| e.into_inner()).first(source)
    }

    /// Refuse one `what` (`heartbeat`, `message`, `log`) from `source` (a host id, a broker
    /// user, a subject) for `reason`: counted; the first time `source` is refused for
    /// `reason` in this process, also logged as a warning and audited as `<what>_refused`
    /// (actor `channel`) with `detail`; later ones only logged at debug. The count comes
    /// after the audit row, so a refusal seen in `/metrics` is audited already.
    pub async fn refuse(
        &self,
        db: &sqlx::PgPool,
        what: &'static str,
        reason: &'static str,
        source: &str,
        detail: serde_json::Value,
    ) {
        self.note(db, what, reason, source, detail).await;
        self.count(what, reason);
    }

    /// What [`Refusals::refuse`] does but count: the warning and the audit row the first
    /// time `source` is refused for `reason`. The caller counts after it.
    pub async fn note(
        &self,
        db: &sqlx::PgPool,
        what: &'static str,
        reason: &'static str,
        source: &str,
        detail: serde_json::Value,
    ) {
        if !self.first(&format!("{what} {reason} {source}")) {
            tracing::debug!(what, reason, source, %detail, "refused");
            return;
        }
        tracing::warn!(what, reason, source, %detail, "refused (warned once for its source)");
        let mut detail = detail;
        if let Some(fields) = detail.as_object_mut() {
            fields.insert("reason".into(), reason.into());
        }
        if let Err(err) = audit::record(db, "channel", &format!("{what}_refused"), None, detail).await {
            tracing::warn!(what, source, error = %err, "auditing a refusal failed");
        }
    }
}

/// A set of at most `limit` keys that only grows.
#[derive(Debug)]
struct Remembered {
    keys: HashSet<String>,
    limit: usize,
}

impl Default for Remembered {
    fn default() -> Self {
        Remembered { keys: HashSet::new(), limit: REMEMBERED }
    }
}

impl Remembered {
    fn first(&mut self, key: &str) -> bool {
        if self.keys.contains(key) || self.keys.len() >= self.limit {
            return false;
        }
        self.keys.insert(key.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_first_once_and_the_memory_is_bounded() {
        let mut remembered = Remembered { keys: HashSet::new(), limit: 3 };
        assert!(remembered.first("a"));
        assert!(!remembered.first("a"), "once per source");
        assert!(remembered.first("b"));
        assert!(remembered.first("c"));
        assert!(!remembered.first("d"), "full: a new source is not audited");
        assert!(!remembered.first("a"));
        assert_eq!(remembered.keys.len(), 3);
        assert_eq!(Refusals::default().audited.lock().unwrap().limit, REMEMBERED);
    }

    #[test]
    fn refusals_are_counted_by_what_and_why() {
        let refusals = Refusals::default();
        refusals.count("heartbeat", "unknown_host");
        refusals.count("heartbeat", "revoked_host");
        refusals.count("heartbeat", "unknown_host");
        assert_eq!(refusals.counts(), vec![(("heartbeat", "revoked_host"), 1), (("heartbeat", "unknown_host"), 2)]);
    }
}
