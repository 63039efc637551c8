//! Signing in: OpenID Connect against the configured provider, sessions in Postgres, the
//! allow-list, and the SSO gate in front of preview URLs.
//!
//! # Layout
//! - [`oidc`]: `/auth/login`, `/auth/callback`, `/auth/logout`: the authorization-code flow
//!   with PKCE, state and nonce; the provider is found by discovery from its issuer URL.
//! - [`gate`]: signed per-host cookies for gated previews, checked by the edge proxy and by
//!   [`forward`]: `/auth/forward` (Traefik's forwardAuth).
//! - [`guard`]: who may reach the API and the dashboard.
//! - [`cookies`]: reading and setting cookies, and sign-in's redirects.
//! - Sessions, API tokens and the allow-list: here.

pub mod cookies;
pub mod forward;
pub mod gate;
pub mod guard;
pub mod oidc;
pub mod tokens;

use std::time::Duration;

use axum::http::HeaderMap;
use rand::RngCore;
use sqlx::{FromRow, PgExecutor, PgPool};
use time::OffsetDateTime;

use crate::config::Config;
use cookies::cookie;
pub use tokens::{random_token, token_hash};

/// The cookie that holds a session's token.
pub const SESSION_COOKIE: &str = "demofleet_session";

/// What the controller keeps for sign-ins: the provider (found once), the gate's key.
pub struct Auth {
    pub gate: gate::Gate,
    provider: tokio::sync::OnceCell<openidconnect::core::CoreProviderMetadata>,
    http: reqwest::Client,
}

impl Auth {
    /// `gate_key`: the key gate cookies are signed with, shared by every replica.
    pub fn new(config: &Config, gate_key: Vec<u8>, db: PgPool) -> anyhow::Result<Auth> {
        // Following redirects from the provider's endpoints would invite request forgery.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Auth { gate: gate::Gate::new(config, gate_key, db), provider: tokio::sync::OnceCell::new(), http })
    }
}

/// Who the provider says someone is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: String,
    /// As the provider states it; absent: not stated.
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// A signed-in person.
#[derive(Debug, Clone, FromRow)]
pub struct Session {
    /// The SHA-256 of the session's token (the token itself is only in the cookie).
    pub token_hash: Vec<u8>,
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
    pub csrf: String,
    pub expires_at: OffsetDateTime,
}

/// Who is asking: a signed-in person, or a script with an API token.
#[derive(Debug, Clone)]
pub enum Principal {
    Person(Session),
    Token { name: String, created_by: String },
}

impl Principal {
    /// The name audit events record.
    pub fn actor(&self) -> String {
        match self {
            Principal::Person(session) => session.email.clone(),
            Principal::Token { name, created_by } => format!("token {name} ({created_by})"),
        }
    }
}

/// The prefix of API tokens, so they are recognisable in a leaked file.
const API_TOKEN_PREFIX: &str = "dft_";

/// Who the request comes from: a bearer API token if it has one (and then only that), else
/// the session cookie.
pub async fn principal(db: &PgPool, headers: &HeaderMap) -> sqlx::Result<Option<Principal>> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        let found: Option<(String, String)> = sqlx::query_as(
            "update api_tokens set last_used_at = now() where token_hash = $1 and revoked_at is null
             returning name, created_by",
        )
        .bind(token_hash(token.trim()))
        .fetch_optional(db)
        .await?;
        return Ok(found.map(|(name, created_by)| Principal::Token { name, created_by }));
    }
    Ok(session(db, headers).await?.map(Principal::Person))
}

/// A new API token called `name`; returns it (shown once: only its hash is kept).
pub async fn create_api_token(db: impl PgExecutor<'_>, name: &str, created_by: &str) -> sqlx::Result<String> {
    let token = format!("{API_TOKEN_PREFIX}{}", random_token());
    crate::db::tokens::insert(db, name, &token_hash(&token), created_by).await?;
    Ok(token)
}

/// The live API token `token` is, if it is one; its last use is left as it was.
pub async fn live_api_token(db: impl PgExecutor<'_>, token: &str) -> sqlx::Result<Option<crate::db::tokens::Token>> {
    crate::db::tokens::live_by_hash(db, &token_hash(token.trim())).await
}

/// True when the allow-list lets `who` in: an allowed email, an email in an allowed domain,
/// or an allowed group. An email counts only when the provider says it is verified
/// (`email_verified: true`); one it says nothing about is not, unless
/// `DEMOFLEET_TRUST_UNSTATED_EMAILS` says so.
pub fn allowed(config: &Config, who: &Identity) -> bool {
    let email = who.email.trim().to_ascii_lowercase();
    let verified = match who.email_verified {
        Some(stated) => stated,
        None => config.trust_unstated_emails,
    };
    let by_email = verified
        && (config.allow_emails.iter().any(|e| e.trim().eq_ignore_ascii_case(&email))
            || email.rsplit_once('@').is_some_and(|(_, domain)| {
                config.allow_domains.iter().any(|d| d.trim().trim_start_matches('@').eq_ignore_ascii_case(domain))
            }));
    by_email || who.groups.iter().any(|g| config.allow_groups.iter().any(|a| a.trim() == g))
}

/// Start a session for `who`; returns the token for the cookie.
pub async fn create_session(db: &PgPool, who: &Identity, ttl: Duration) -> sqlx::Result<String> {
    let token = random_token();
    sqlx::query(
        "insert into sessions (token_hash, subject, email, name, groups, csrf, expires_at)
         values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
    )
    .bind(token_hash(&token))
    .bind(&who.subject)
    .bind(&who.email)
    .bind(&who.name)
    .bind(serde_json::json!(who.groups))
    .bind(random_token())
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    sqlx::query("delete from sessions where expires_at < now()").execute(db).await?;
    Ok(token)
}

/// The live session the request's cookie names, if any.
pub async fn session(db: impl PgExecutor<'_>, headers: &HeaderMap) -> sqlx::Result<Option<Session>> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    sqlx::query_as(
        "select token_hash, subject, email, name, csrf, expires_at from sessions
         where token_hash = $1 and expires_at > now()",
    )
    .bind(token_hash(token))
    .fetch_optional(db)
    .await
}

/// End the session the request's cookie names.
pub async fn end_session(db: impl PgExecutor<'_>, headers: &HeaderMap) -> sqlx::Result<()> {
    if let Some(token) = cookie(headers, SESSION_COOKIE) {
        sqlx::query("delete from sessions where token_hash = $1").bind(token_hash(token)).execute(db).await?;
    }
    Ok(())
}

/// The key called `name`, made at random the first time any replica asks.
pub async fn signing_key(db: &PgPool, name: &str) -> sqlx::Result<Vec<u8>> {
    let mut fresh = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut fresh);
    sqlx::query("insert into signing_keys (name, key) values ($1, $2) on conflict (name) do nothing")
        .bind(name)
        .bind(fresh.as_slice())
        .execute(db)
        .await?;
    sqlx::query_scalar("select key from signing_keys where name = $1").bind(name).fetch_one(db).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn who(email: &str, verified: Option<bool>, groups: &[&str]) -> Identity {
        Identity {
            subject: email.into(),
            email: email.into(),
            email_verified: verified,
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn the_allow_list_lets_in_emails_domains_and_groups_only() {
        let config = Config::try_parse_from([
            "demofleet-controller",
            "--webhook-secret",
            "s",
            "--allow-emails",
            "Boss@Elsewhere.org",
            "--allow-domains",
            "example.com",
            "--allow-groups",
            "demo-admins",
        ])
        .unwrap();
        assert!(allowed(&config, &who("alice@example.com", Some(true), &[])));
        assert!(allowed(&config, &who("ALICE@EXAMPLE.COM", Some(true), &[])));
        assert!(allowed(&config, &who("boss@elsewhere.org", Some(true), &[])));
        assert!(allowed(&config, &who("carol@contractor.net", None, &["demo-admins"])));
        assert!(!allowed(&config, &who("mallory@evil.test", Some(true), &["users"])));
        assert!(!allowed(&config, &who("alice@example.com.evil.test", Some(true), &[])));
        assert!(!allowed(&config, &who("alice@example.com", Some(false), &[])), "unverified email");
        assert!(!allowed(&config, &who("alice@example.com", None, &[])), "an email not stated verified");
        let trusting = Config { trust_unstated_emails: true, ..config.clone() };
        assert!(allowed(&trusting, &who("alice@example.com", None, &[])), "unstated, trusted by setting");
        assert!(!allowed(&trusting, &who("alice@example.com", Some(false), &[])), "stated unverified, never");
        let nobody = Config::try_parse_from(["demofleet-controller", "--webhook-secret", "s"]).unwrap();
        assert!(!allowed(&nobody, &who("alice@example.com", Some(true), &[])), "empty lists let nobody in");
    }
}
