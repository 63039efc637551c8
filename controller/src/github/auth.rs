//! Credentials for GitHub calls: a plain token, or a GitHub App's installation tokens.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use super::api::{Api, GitHubError};

/// An installation token is used until this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

pub enum Auth {
    /// A personal access token or another long-lived token.
    Token(String),
    /// A GitHub App: its id (or client id) and private key.
    App { app_id: String, key: Box<EncodingKey>, tokens: Mutex<HashMap<String, (String, OffsetDateTime)>> },
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

impl Auth {
    /// App authentication from the App's id and its PEM private key.
    pub fn app(app_id: &str, pem: &[u8]) -> anyhow::Result<Auth> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| anyhow::anyhow!("GitHub App private key: {e}"))?;
        Ok(Auth::App { app_id: app_id.to_string(), key: Box::new(key), tokens: Mutex::default() })
    }

    /// The token to call the API for `owner/repo` with.
    pub async fn token(&self, api: &Api, owner: &str, repo: &str) -> Result<String, GitHubError> {
        let (app_id, key, tokens) = match self {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::App { app_id, key, tokens } => (app_id, key, tokens),
        };
        let repo_key = format!("{owner}/{repo}");
        let mut cache = tokens.lock().await;
        if let Some((token, expires)) = cache.get(&repo_key) {
            if *expires - TOKEN_MARGIN > OffsetDateTime::now_utc() {
                return Ok(token.clone());
            }
        }
        let jwt = app_jwt(app_id, key)?;
        let installation = api.send(Method::GET, &format!("/repos/{owner}/{repo}/installation"), &jwt, None).await?;
        let id =
            installation["id"].as_i64().ok_or_else(|| GitHubError::Auth("installation answer has no id".into()))?;
        let path = format!("/app/installations/{id}/access_tokens");
        let answer = api.send(Method::POST, &path, &jwt, None).await?;
        let token = answer["token"].as_str().ok_or_else(|| GitHubError::Auth("token answer has no token".into()))?;
        let expires = answer["expires_at"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
            .ok_or_else(|| GitHubError::Auth("token answer has no valid expires_at".into()))?;
        cache.insert(repo_key, (token.to_string(), expires));
        Ok(token.to_string())
    }
}

/// A JWT for `/app/...` calls: issued a minute in the past for clock drift, valid 9 minutes.
fn app_jwt(app_id: &str, key: &EncodingKey) -> Result<String, GitHubError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = Claims { iat: now - 60, exp: now + 9 * 60, iss: app_id };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key).map_err(|e| GitHubError::Auth(e.to_string()))
}
