//! Demo repositories on disk and GitHub's webhook payloads from `tests/data`.

use std::path::{Path, PathBuf};
use std::process::Command;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::services::test_data_dir;

/// A bare git repository at `<root>/<owner>/<repo>.git`, served like GitHub serves
/// repositories: a single commit can be fetched by its id.
pub struct FixtureRepo {
    pub owner: String,
    pub repo: String,
    pub bare: PathBuf,
    work: PathBuf,
}

impl FixtureRepo {
    pub fn create(root: &Path, owner: &str, repo: &str) -> FixtureRepo {
        let bare = root.join(owner).join(format!("{repo}.git"));
        let work = root.join("work").join(owner).join(repo);
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&bare, &["init", "--quiet", "--bare"]);
        git(&bare, &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        git(&work, &["init", "--quiet", "-b", "main"]);
        FixtureRepo { owner: owner.into(), repo: repo.into(), bare, work }
    }

    /// Commit `files` (path, content) on top of what is there, push, and return the commit id.
    /// A file that starts with `#!` is committed executable.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        use std::os::unix::fs::PermissionsExt;
        for (path, content) in files {
            let path = self.work.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            if content.starts_with("#!") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        git(&self.work, &["add", "--all"]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        let bare = self.bare.to_str().unwrap();
        git(&self.work, &["push", "--quiet", "--force", bare, "HEAD:refs/heads/main"]);
        git_output(&self.work, &["rev-parse", "HEAD"])
    }

    /// Put a symlink `path` → `target` in the work tree; the next commit holds it.
    pub fn symlink(&self, path: &str, target: &str) {
        let path = self.work.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// Declare a submodule at `path` fetched from `url` (its commit made up); the next
    /// commit holds it.
    pub fn submodule(&self, path: &str, url: &str) {
        let entry = format!("[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n");
        std::fs::write(self.work.join(".gitmodules"), entry).unwrap();
        std::fs::create_dir_all(self.work.join(path)).unwrap();
        let gitlink = format!("160000,{},{path}", "a".repeat(40));
        git(&self.work, &["update-index", "--add", "--cacheinfo", &gitlink]);
    }
}

/// A demo that serves `marker` in its page, built FROM the local base image.
pub fn static_site(base_image: &str, marker: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {base_image}\nCOPY index.html /www/index.html\nEXPOSE 8080\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("index.html", format!("<!doctype html><title>fixture</title><h1>{marker}</h1>\n")),
    ]
}

pub fn git(dir: &Path, args: &[&str]) {
    git_output(dir, args);
}

pub fn git_output(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.invalid")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A payload from `tests/data/github/`, as GitHub sent it.
pub fn payload(file: &str) -> Value {
    let path = test_data_dir().join("github").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A real `pull_request` payload edited to point at `repo` and its commit `sha`, as if the
/// PR were opened against `repo` from a branch of the same repository.
pub fn pull_request(file: &str, repo: &FixtureRepo, sha: &str) -> Value {
    let mut value = payload(file);
    for path in ["/repository", "/pull_request/head/repo", "/pull_request/base/repo"] {
        let target = value.pointer_mut(path).unwrap_or_else(|| panic!("{file} has {path}"));
        target["name"] = repo.repo.clone().into();
        target["full_name"] = format!("{}/{}", repo.owner, repo.repo).into();
        target["owner"]["login"] = repo.owner.clone().into();
    }
    value["pull_request"]["head"]["sha"] = sha.into();
    value
}

/// [`pull_request`] for pull request number `pr`.
pub fn numbered_pull_request(file: &str, repo: &FixtureRepo, sha: &str, pr: u64) -> Value {
    let mut value = pull_request(file, repo, sha);
    value["number"] = pr.into();
    value["pull_request"]["number"] = pr.into();
    value
}

/// `X-Hub-Signature-256` for `body`, as GitHub computes it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `raw` percent-encoded: every byte but letters, digits and `-._~` (a form value, one
/// segment of a URL path).
pub fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A heartbeat as host `host` sends it (forged: nobody's inventory, a made-up address).
pub fn heartbeat(host: &str) -> Vec<u8> {
    let beat = demofleet_common::wire::Heartbeat {
        version: demofleet_common::wire::WIRE_VERSION,
        host_id: host.to_string(),
        address: "10.0.0.7".into(),
        capacity: 4,
        agent_version: "forged".into(),
        inventory: Vec::new(),
        disk: None,
    };
    serde_json::to_vec(&beat).unwrap()
}
