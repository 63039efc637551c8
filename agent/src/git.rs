//! Checking out the exact head commit into the demo's folder: a shallow fetch of that one
//! commit, reusing the folder when it is already a clone.

use std::path::Path;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {step} failed: {message}")]
    Failed { step: &'static str, message: String },
    #[error("running git: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Make `dir` a checkout of `sha` from `url`, fetching only that commit.
pub async fn checkout(dir: &Path, url: &str, sha: &str) -> Result<(), GitError> {
    if !dir.join(".git").is_dir() {
        tokio::fs::create_dir_all(dir).await?;
        git(dir, "init", &["init", "--quiet"]).await?;
    }
    // The URL is passed on the command line, never stored in .git/config.
    git(dir, "fetch", &["fetch", "--quiet", "--depth", "1", "--no-tags", url, sha]).await?;
    git(dir, "checkout", &["checkout", "--quiet", "--force", "--detach", sha]).await?;
    git(dir, "clean", &["clean", "--quiet", "-ffdx"]).await?;
    Ok(())
}

async fn git(dir: &Path, step: &'static str, args: &[&str]) -> Result<(), GitError> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .kill_on_drop(true)
        .output()
        .await?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(GitError::Failed { step, message: redact(stderr.trim()) })
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
    fn credentials_never_reach_messages() {
        let message = super::redact("fatal: could not read from https://x-access-token:ghs_abc@github.com/o/r.git");
        assert_eq!(message, "fatal: could not read from https://***@github.com/o/r.git");
    }
}
