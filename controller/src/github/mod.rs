//! The GitHub REST API as demofleet uses it: collaborator permissions, deployments and
//! their statuses, commit statuses, and one PR comment kept up to date.
//!
//! Authenticates as a GitHub App (a JWT signed RS256 with the App's key buys an
//! installation token per repository, cached until shortly before it expires) or with a
//! plain token. Rate limits are honoured: 403/429 with `Retry-After` or
//! `x-ratelimit-remaining: 0` wait as told before the call is tried again.
//!
//! # Layout
//! - [`auth`]: App JWTs and installation tokens.
//! - [`feedback`]: turning a demo's state into deployment, status and comment calls.

pub mod auth;
pub mod feedback;

use std::time::Duration;

use backoff::ExponentialBackoff;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use auth::Auth;

/// The API version we speak (`X-GitHub-Api-Version`).
const API_VERSION: &str = "2022-11-28";
/// Longest wait for a rate limit inside one call; longer waits fail the call, and the
/// notification is retried later through the broker.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub answered {status} to {method} {path}: {message}")]
    Status { method: Method, path: String, status: StatusCode, message: String },
    #[error("GitHub rate limit: {0:?} to wait")]
    RateLimited(Duration),
    #[error("GitHub request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("GitHub App authentication: {0}")]
    Auth(String),
}

impl GitHubError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, GitHubError::Status { status: StatusCode::NOT_FOUND, .. })
    }
}

/// A GitHub API client for one App or token.
pub struct GitHub {
    api: String,
    http: reqwest::Client,
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
        let http = reqwest::Client::builder()
            .user_agent(concat!("demofleet/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(GitHub { api: api.trim_end_matches('/').to_string(), http, auth, patience })
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
            let token = self.auth.token(self, owner, repo).await.map_err(backoff::Error::permanent)?;
            self.send(method.clone(), path, &token, body.as_ref()).await.map_err(classify)
        })
        .await
    }

    /// One HTTP request with GitHub's headers; maps error answers to [`GitHubError`].
    async fn send(&self, method: Method, path: &str, token: &str, body: Option<&Value>) -> Result<Value, GitHubError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        if let Some(wait) = rate_limit_wait(status, response.headers()) {
            return Err(GitHubError::RateLimited(wait));
        }
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(GitHubError::Status { method, path: path.to_string(), status, message });
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) })
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

/// How long a rate-limited answer asks us to wait, if it is one. GitHub signals primary
/// limits by 403/429 with `x-ratelimit-remaining: 0` (wait until `x-ratelimit-reset`) and
/// secondary limits by 403/429 with `retry-after` seconds.
pub fn rate_limit_wait(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(seconds) = header("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    if header("x-ratelimit-remaining") == Some(0) {
        let reset = header("x-ratelimit-reset").unwrap_or(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn rate_limit_answers_are_recognised() {
        let mut headers = HeaderMap::new();
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &headers), None, "a plain 403 is a refusal");
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &headers), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit_wait(StatusCode::OK, &headers), None);
        let mut headers = HeaderMap::new();
        let reset = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 30;
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&reset.to_string()).unwrap());
        let wait = rate_limit_wait(StatusCode::FORBIDDEN, &headers).unwrap();
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28), "{wait:?}");
    }

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
