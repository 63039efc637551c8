//! What the controller refused on its channels (a heartbeat from a host that is not
//! enrolled, one it cannot read…): counted for `/metrics` by what and why, and remembered
//! so that each source is audited once per process, not once per message.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

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
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()).entry((what, reason)).or_default() += 1;
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
