//! Checking out the exact head commit into the demo's folder: a shallow fetch of that one
//! commit, reusing the folder when it is already a clone.
//!
//! A token for private repositories goes to git as an `Authorization` header in the fetch's
//! environment (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0`): it is never
//! written to the clone's `.git/config` or anywhere else on disk, never on the command line
//! (where `ps` would show it), and scrubbed from any message git prints.

use std::path::Path;

use base64::Engine;
use demofleet_common::secret::Secret;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {step} failed: {message}")]
    Failed { step: &'static str, message: String },
    #[error("running git: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Make `dir` a checkout of `sha` from `url`, fetching only that commit; with `token` when
/// the URL is http(s).
pub async fn checkout(dir: &Path, url: &str, sha: &str, token: Option<&Secret>) -> Result<(), GitError> {
    if !dir.join(".git").is_dir() {
        tokio::fs::create_dir_all(dir).await?;
        git(dir, "init", &["init", "--quiet"], None).await?;
    }
    // The URL is passed on the command line, never stored in .git/config.
    let token = token.filter(|_| url.starts_with("https://") || url.starts_with("http://"));
    git(dir, "fetch", &["fetch", "--quiet", "--depth", "1", "--no-tags", url, sha], token).await?;
    git(dir, "checkout", &["checkout", "--quiet", "--force", "--detach", sha], None).await?;
    git(dir, "clean", &["clean", "--quiet", "-ffdx"], None).await?;
    Ok(())
}

/// The `Authorization` header GitHub takes for a token over HTTPS.
fn authorization(token: &Secret) -> String {
    let credentials = format!("x-access-token:{}", token.expose());
    format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

async fn git(dir: &Path, step: &'static str, args: &[&str], token: Option<&Secret>) -> Result<(), GitError> {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .kill_on_drop(true);
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
