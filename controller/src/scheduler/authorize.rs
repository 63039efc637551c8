//! Who may start a demo: authors with write, maintain or admin on the repository, or
//! anyone once someone approved this very commit. Decided inline when no GitHub call is
//! needed (an approval, no GitHub configured, or a recent answer from GitHub in the cache:
//! [`crate::chain::decide::authorized`]); otherwise the `authorize` step is queued and asks
//! GitHub. Here: the cache of GitHub's answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `(owner, repo, user)`, lowercased.
type Key = (String, String, String);

/// Recent answers of the collaborator-permission API: may `user` write to `owner/repo`?
pub struct PermissionCache {
    ttl: Duration,
    answers: Mutex<HashMap<Key, (bool, Instant)>>,
}

impl PermissionCache {
    pub fn new(ttl: Duration) -> PermissionCache {
        PermissionCache { ttl, answers: Mutex::default() }
    }

    pub fn get(&self, owner: &str, repo: &str, user: &str) -> Option<bool> {
        let answers = self.answers.lock().expect("permission cache lock");
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase(), user.to_ascii_lowercase());
        answers.get(&key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(can_write, _)| *can_write)
    }

    pub fn put(&self, owner: &str, repo: &str, user: &str, can_write: bool) {
        let mut answers = self.answers.lock().expect("permission cache lock");
        if answers.len() > 10_000 {
            answers.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        let key = (owner.to_ascii_lowercase(), repo.to_ascii_lowercase(), user.to_ascii_lowercase());
        answers.insert(key, (can_write, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_ignore_case() {
        let cache = PermissionCache::new(Duration::from_millis(50));
        cache.put("Owner", "Repo", "Alice", true);
        assert_eq!(cache.get("owner", "repo", "alice"), Some(true));
        assert_eq!(cache.get("owner", "repo", "bob"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("owner", "repo", "alice"), None);
    }
}
