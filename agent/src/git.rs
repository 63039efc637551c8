//! Checking out the exact head commit into the demo's folder: a shallow fetch of that one
//! commit, reusing the folder when it is already a clone.
//!
//! A token for private repositories goes to git as an `Authorization` header in the fetch's
//! environment (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`): it is never
//! written to the clone's `.git/config` or anywhere else on disk, never on the command line
//! (where `ps` would show it), and scrubbed from any message git prints.
//!
//! The URL and commit come from a step message, checked by [`crate::validate`]; git is
//! still run as if they were hostile: `--` before them, only the transports the agent
//! allows (`GIT_ALLOW_PROTOCOL`: https, http, and file when `DEMOFLEET_GIT_LOCAL_ROOT` is
//! set; never `ext::` or `fd::`), no hooks, no submodules, no system or user
//! configuration, and an environment holding nothing of the agent's.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use demofleet_common::secret::Secret;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {step} failed: {message}")]
    Failed { step: &'static str, message: String },
    #[error("running git: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("fetching and checking out the commit took longer than {0:?} (DEMOFLEET_CHECKOUT_TIMEOUT)")]
    Timeout(Duration),
}

/// Where a checkout may fetch from, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `file://` URLs are allowed (they were checked to lie under the local root).
    pub local: bool,
    pub timeout: Duration,
}

/// Make `dir` a checkout of `sha` from `url`, fetching only that commit; with `token` when
/// the URL is http(s).
pub async fn checkout(
    dir: &Path,
    url: &str,
    sha: &str,
    token: Option<&Secret>,
    policy: Policy,
) -> Result<(), GitError> {
    tokio::time::timeout(policy.timeout, async {
        if !dir.join(".git").is_dir() {
            tokio::fs::create_dir_all(dir).await?;
            // No template: no sample hooks or other files from the system's git.
            git(dir, "init", &["init", "--quiet", "--template="], None, policy).await?;
        }
        // The URL is passed on the command line, never stored in .git/config.
        let token = token.filter(|_| url.starts_with("https://") || url.starts_with("http://"));
        let fetch = ["fetch", "--quiet", "--depth", "1", "--no-tags", "--no-recurse-submodules", "--", url, sha];
        git(dir, "fetch", &fetch, token, policy).await?;
        let checkout = ["checkout", "--quiet", "--force", "--detach", "--no-recurse-submodules", sha, "--"];
        git(dir, "checkout", &checkout, None, policy).await?;
        git(dir, "clean", &["clean", "--quiet", "-ffdx"], None, policy).await
    })
    .await
    .map_err(|_| GitError::Timeout(policy.timeout))?
}

/// The agent's variables git still gets: how to reach the network and whom to trust there.
const PASSED_ON: [&str; 8] =
    ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"];

/// Settings every git command gets before its own arguments.
const HARDENING: [&str; 10] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "submodule.recurse=false",
    "-c",
    "fetch.recurseSubmodules=false",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.allow=never",
];

/// The `Authorization` header GitHub takes for a token over HTTPS.
fn authorization(token: &Secret) -> String {
    let credentials = format!("x-access-token:{}", token.expose());
    format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

async fn git(
    dir: &Path,
    step: &'static str,
    args: &[&str],
    token: Option<&Secret>,
    policy: Policy,
) -> Result<(), GitError> {
    let mut command = Command::new("git");
    command
        .args(HARDENING)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("GIT_ALLOW_PROTOCOL", if policy.local { "https:http:file" } else { "https:http" })
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .kill_on_drop(true);
    for (name, value) in std::env::vars_os().filter(|(name, _)| PASSED_ON.iter().any(|p| name == *p)) {
        command.env(name, value);
    }
    if let Some(token) = token {
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", authorization(token));
    }
    let output = command.output().await?;
    if output.status.success() {
        return Ok(());
    }
    let mut message = redact(String::from_utf8_lossy(&output.stderr).trim());
    if let Some(token) = token.filter(|t| !t.expose().is_empty()) {
        message = message.replace(token.expose(), "***");
    }
    Err(GitError::Failed { step, message })
}

/// Remove credentials from URLs in git's messages before they reach logs or results.
fn redact(message: &str) -> String {
    message
        .split(' ')
        .map(|word| match (word.find("://"), word.find('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &word[..scheme], &word[at..])
            }
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_goes_as_githubs_basic_header() {
        let header = super::authorization(&super::Secret::new("ghs_abc"));
        // base64("x-access-token:ghs_abc")
        assert_eq!(header, "Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hzX2FiYw==");
    }

    #[test]
    fn credentials_never_reach_messages() {
        let message = super::redact("fatal: could not read from https://x-access-token:ghs_abc@github.com/o/r.git");
        assert_eq!(message, "fatal: could not read from https://***@github.com/o/r.git");
    }
}
