//! Who may start a demo: authors with write, maintain or admin on the repository, or
//! anyone once someone approved this very commit. Decided inline when no GitHub call is
//! needed (an approval, no GitHub configured, or a recent answer from GitHub in the cache);
//! otherwise the `authorize` step is queued and asks GitHub.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::demos::Demo;
use crate::state::AppState;

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

/// The decision for `demo`'s current commit if it needs no GitHub call.
pub fn decide_locally(app: &AppState, demo: &Demo) -> Option<bool> {
    if demo.approved_sha.as_deref() == Some(demo.sha.as_str()) {
        return Some(true);
    }
    if app.github.is_none() {
        let user = &demo.github_user;
        return Some(app.config.trusted_authors.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(user)));
    }
    app.permissions.get(&demo.owner, &demo.repo, &demo.github_user)
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
