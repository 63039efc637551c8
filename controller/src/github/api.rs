//! One request to GitHub's REST API: its headers, error answers as [`GitHubError`], and how
//! long a rate-limited answer asks us to wait. Retrying is the caller's.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The API version we speak (`X-GitHub-Api-Version`).
const API_VERSION: &str = "2022-11-28";

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

/// The API at one base URL, over one HTTP client.
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("demofleet/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Api { base: base.trim_end_matches('/').to_string(), http })
    }

    /// One HTTP request with GitHub's headers; maps error answers to [`GitHubError`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Value, GitHubError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
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
}
