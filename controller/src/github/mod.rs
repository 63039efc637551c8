//! The GitHub REST API as demofleet uses it: collaborator permissions, deployments and
//! their statuses, commit statuses, and one PR comment kept up to date.
//!
//! Authenticates as a GitHub App (a JWT signed RS256 with the App's key buys an
//! installation token per repository, cached until shortly before it expires) or with a
//! plain token. Rate limits are honoured: 403/429 with `Retry-After` or
//! `x-ratelimit-remaining: 0` wait as told before the call is tried again.
//!
//! # Layout
//! - [`api`]: one request with GitHub's headers; error answers and rate limits.
//! - [`auth`]: App JWTs and installation tokens.
//! - [`feedback`]: turning a demo's state into deployment, status and comment calls.

pub mod api;
pub mod auth;
pub mod feedback;

pub use api::GitHubError;

use std::time::Duration;

use backoff::ExponentialBackoff;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use api::Api;
use auth::Auth;

/// Longest wait for a rate limit inside one call; longer waits fail the call, and the
/// notification is retried later through the broker.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// A GitHub API client for one App or token.
pub struct GitHub {
    api: Api,
    auth: Auth,
    /// How long one call keeps retrying transient failures.
    patience: Duration,
}

/// What a user may do on a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// `admin`, `write`, `read` or `none` (GitHub maps maintain to write, triage to read).
    pub permission: String,
    pub role_name: Option<String>,
}

impl Permission {
    /// Write, maintain or admin: may start demos and approve them.
    pub fn can_write(&self) -> bool {
        matches!(self.permission.as_str(), "admin" | "write")
            || matches!(self.role_name.as_deref(), Some("admin" | "maintain" | "write"))
    }
}

impl GitHub {
    pub fn new(api: &str, auth: Auth, patience: Duration) -> anyhow::Result<GitHub> {
        Ok(GitHub { api: Api::new(api)?, auth, patience })
    }

    /// `username`'s permission on `owner/repo`.
    pub async fn permission(&self, owner: &str, repo: &str, username: &str) -> Result<Permission, GitHubError> {
        let path = format!("/repos/{owner}/{repo}/collaborators/{username}/permission");
        let body = self.call(Method::GET, &path, owner, repo, None).await?;
        Ok(Permission {
            permission: body["permission"].as_str().unwrap_or("none").to_string(),
            role_name: body["role_name"].as_str().map(String::from),
        })
    }

    /// The pull request `owner/repo#number`, as the REST API returns it.
    pub async fn pull_request(&self, owner: &str, repo: &str, number: i64) -> Result<Value, GitHubError> {
        self.call(Method::GET, &format!("/repos/{owner}/{repo}/pulls/{number}"), owner, repo, None).await
    }

    pub async fn create_comment(&self, owner: &str, repo: &str, pr: i64, body: &str) -> Result<i64, GitHubError> {
        let path = format!("/repos/{owner}/{repo}/issues/{pr}/comments");
        let answer = self.call(Method::POST, &path, owner, repo, Some(json!({ "body": body }))).await?;
        id_of(&answer, &path)
    }

    pub async fn edit_comment(&self, owner: &str, repo: &str, id: i64, body: &str) -> Result<(), GitHubError> {
        let path = format!("/repos/{owner}/{repo}/issues/comments/{id}");
        self.call(Method::PATCH, &path, owner, repo, Some(json!({ "body": body }))).await?;
        Ok(())
    }

    pub async fn create_deployment(
        &self,
        owner: &str,
        repo: &str,
        sha: &str,
        environment: &str,
    ) -> Result<i64, GitHubError> {
        let path = format!("/repos/{owner}/{repo}/deployments");
        let body = json!({
            "ref": sha,
            "environment": environment,
            "auto_merge": false,
            "required_contexts": [],
            "transient_environment": true,
            "production_environment": false,
            "description": "demofleet pull request demo",
        });
        let answer = self.call(Method::POST, &path, owner, repo, Some(body)).await?;
        id_of(&answer, &path)
    }

    pub async fn deployment_status(
        &self,
        owner: &str,
        repo: &str,
        deployment: i64,
        state: &str,
        environment_url: Option<&str>,
        description: &str,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{owner}/{repo}/deployments/{deployment}/statuses");
        let mut body = json!({ "state": state, "description": description });
        if let Some(url) = environment_url {
            body["environment_url"] = url.into();
        }
        self.call(Method::POST, &path, owner, repo, Some(body)).await?;
        Ok(())
    }

    pub async fn commit_status(
        &self,
        owner: &str,
        repo: &str,
        sha: &str,
        state: &str,
        target_url: Option<&str>,
        description: &str,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{owner}/{repo}/statuses/{sha}");
        let mut body = json!({ "state": state, "description": description, "context": "demofleet/demo" });
        if let Some(url) = target_url {
            body["target_url"] = url.into();
        }
        self.call(Method::POST, &path, owner, repo, Some(body)).await?;
        Ok(())
    }

    /// One API call on behalf of `owner/repo`, retried with exponential back-off while the
    /// failure is transient (5xx, network, rate limits within [`MAX_RATE_LIMIT_WAIT`]).
    async fn call(
        &self,
        method: Method,
        path: &str,
        owner: &str,
        repo: &str,
        body: Option<Value>,
    ) -> Result<Value, GitHubError> {
        let policy = ExponentialBackoff {
            current_interval: Duration::from_millis(250),
            initial_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(10),
            max_elapsed_time: Some(self.patience),
            ..ExponentialBackoff::default()
        };
        backoff::future::retry(policy, || async {
            let token = self.auth.token(&self.api, owner, repo).await.map_err(backoff::Error::permanent)?;
            self.api.send(method.clone(), path, &token, body.as_ref()).await.map_err(classify)
        })
        .await
    }
}

fn id_of(answer: &Value, path: &str) -> Result<i64, GitHubError> {
    answer["id"].as_i64().ok_or_else(|| GitHubError::Status {
        method: Method::POST,
        path: path.to_string(),
        status: StatusCode::OK,
        message: "answer has no id".into(),
    })
}

/// Which failures are worth another try, and when.
fn classify(err: GitHubError) -> backoff::Error<GitHubError> {
    match &err {
        GitHubError::RateLimited(wait) if *wait <= MAX_RATE_LIMIT_WAIT => {
            let wait = *wait;
            tracing::info!(?wait, "GitHub rate limit; waiting as told");
            backoff::Error::retry_after(err, wait)
        }
        GitHubError::Http(_) => backoff::Error::transient(err),
        GitHubError::Status { status, .. } if status.is_server_error() => backoff::Error::transient(err),
        _ => backoff::Error::permanent(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_maintain_and_admin_may_start_demos() {
        let p = |permission: &str, role: Option<&str>| Permission {
            permission: permission.into(),
            role_name: role.map(String::from),
        };
        assert!(p("admin", Some("admin")).can_write());
        assert!(p("write", Some("maintain")).can_write());
        assert!(p("write", None).can_write());
        assert!(!p("read", Some("triage")).can_write());
        assert!(!p("none", None).can_write());
    }
}
