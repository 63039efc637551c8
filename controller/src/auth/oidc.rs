//! The OpenID Connect authorization-code flow with PKCE, state and nonce.
//!
//! `GET /auth/login?next=…` sends the visitor to the provider (or, already signed in, straight
//! on); `GET /auth/callback` checks the answer against the stored attempt, verifies the ID
//! token, applies the allow-list and starts a session; `POST /auth/logout` ends it. `next` is
//! a path of the controller's own or a preview URL under the base domain, nothing else, so
//! sign-in never redirects anywhere a stranger chooses.
//!
//! A sign-in is bound to the browser that began it: `/auth/login` gives it a cookie with a
//! random value whose hash is kept with the attempt, and the callback is refused without it,
//! so nobody can sign a victim in to the attacker's account by sending them the attacker's
//! callback URL (login CSRF). Under https the cookie is `__Host-` prefixed, so a preview on a
//! sibling host cannot plant one.

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
};
use serde::Deserialize;

use super::cookies::{cookie, found, same_site_path, set_cookie};
use super::{allowed, create_session, end_session, random_token, session, token_hash, Identity, SESSION_COOKIE};
use crate::error::ApiError;
use crate::state::AppState;

/// How long a sign-in may take at the provider.
const ATTEMPT_MINUTES: i32 = 10;

/// The cookie that binds a sign-in to its browser, and its name under https, where the
/// `__Host-` prefix keeps other hosts of the domain from setting it.
const SIGNIN_COOKIE: (&str, &str) = ("demofleet_signin", "__Host-demofleet_signin");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
}

/// Where to go once signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// A path of the controller's own.
    Local(String),
    /// A preview, reached through its gate with a ticket.
    Preview { scheme: String, host: String, path: String },
}

impl Next {
    fn parse(app: &AppState, raw: &str) -> Option<Next> {
        if raw.starts_with('/') {
            return same_site_path(raw).then(|| Next::Local(raw.to_string()));
        }
        let url = url::Url::parse(raw).ok()?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        app.urls.name_from_host(&host)?;
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        if !same_site_path(&path) {
            return None;
        }
        Some(Next::Preview { scheme: url.scheme().into(), host, path })
    }

    fn stored(&self) -> String {
        match self {
            Next::Local(path) => path.clone(),
            Next::Preview { scheme, host, path } => format!("{scheme}://{host}{path}"),
        }
    }

    /// The URL to send `email`, signed in with the session whose token hashes to `session`,
    /// on to.
    fn location(&self, app: &AppState, email: &str, session: &[u8]) -> String {
        match self {
            Next::Local(path) => path.clone(),
            Next::Preview { scheme, host, path } => app.auth.gate.ticket_url(scheme, host, email, session, path),
        }
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login(
    State(app): State<AppState>,
    Query(query): Query<LoginQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let next = Next::parse(&app, query.next.as_deref().unwrap_or("/")).ok_or_else(|| {
        ApiError::BadRequest(
            "`next` must be a path of this controller (one leading `/`, no `\\`, no control characters, \
             also once percent-decoded) or a preview URL under the base domain"
                .into(),
        )
    })?;
    if let Some(session) = session(&app.db, &headers).await? {
        return Ok(found(&next.location(&app, &session.email, &session.token_hash)));
    }
    let client = client(&app, provider(&app).await?.clone())?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    sqlx::query("delete from login_attempts where created_at < now() - make_interval(mins => $1)")
        .bind(ATTEMPT_MINUTES)
        .execute(&app.db)
        .await?;
    let browser = random_token();
    sqlx::query("insert into login_attempts (state, nonce, verifier, next, browser) values ($1, $2, $3, $4, $5)")
        .bind(state.secret())
        .bind(nonce.secret())
        .bind(verifier.secret())
        .bind(next.stored())
        .bind(token_hash(&browser))
        .execute(&app.db)
        .await?;
    let mut response = found(url.as_str());
    let ttl = std::time::Duration::from_secs(ATTEMPT_MINUTES as u64 * 60);
    let cookie = set_cookie(signin_cookie(&app), &browser, ttl, secure(&app));
    response.headers_mut().insert(header::SET_COOKIE, cookie.parse().map_err(anyhow::Error::from)?);
    Ok(response)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(app): State<AppState>,
    Query(query): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(error) = &query.error {
        let detail = query.error_description.as_deref().unwrap_or_default();
        return Err(ApiError::Unauthorized(format!("the sign-in provider refused: {error} {detail}").trim().into()));
    }
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return Err(ApiError::BadRequest("the provider's answer lacks `code` or `state`".into()));
    };
    let attempt: Option<(String, String, String, Option<Vec<u8>>)> = sqlx::query_as(
        "delete from login_attempts where state = $1 and created_at > now() - make_interval(mins => $2)
         returning nonce, verifier, next, browser",
    )
    .bind(&state)
    .bind(ATTEMPT_MINUTES)
    .fetch_optional(&app.db)
    .await?;
    let Some((nonce, verifier, next, browser)) = attempt else {
        return Err(ApiError::BadRequest("unknown or expired sign-in (`state`); start again".into()));
    };
    // The browser that began this sign-in, and no other, may finish it.
    let brought = cookie(&headers, signin_cookie(&app)).map(token_hash);
    if browser.is_none() || brought != browser {
        tracing::warn!("a sign-in callback came without the cookie of the browser that began it");
        return Err(ApiError::Forbidden(
            "this sign-in was not begun in this browser (its sign-in cookie is missing or another's): \
             start again from the sign-in page"
                .into(),
        ));
    }
    let next = Next::parse(&app, &next).unwrap_or(Next::Local("/".into()));
    let who = identify(&app, code, nonce, verifier).await?;
    if !allowed(&app.config, &who) {
        tracing::info!(email = %who.email, verified = ?who.email_verified, "sign-in refused by the allow-list");
        let why = match who.email_verified {
            Some(true) => "ask an administrator".to_string(),
            _ => "the sign-in provider does not say this address is verified (email_verified); \
                  verify it there, or ask an administrator"
                .to_string(),
        };
        return Err(ApiError::Forbidden(format!("{} is not allowed in: {why}", who.email)));
    }
    let token = create_session(&app.db, &who, app.config.session_ttl).await?;
    tracing::info!(email = %who.email, "signed in");
    let mut response = found(&next.location(&app, &who.email, &token_hash(&token)));
    let cookie = set_cookie(SESSION_COOKIE, &token, app.config.session_ttl, secure(&app));
    response.headers_mut().insert(header::SET_COOKIE, cookie.parse().map_err(anyhow::Error::from)?);
    let done = set_cookie(signin_cookie(&app), "", std::time::Duration::ZERO, secure(&app));
    response.headers_mut().append(header::SET_COOKIE, done.parse().map_err(anyhow::Error::from)?);
    Ok(response)
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ApiError> {
    let Some(session) = session(&app.db, &headers).await? else {
        return Ok(found("/"));
    };
    if session.csrf != form.csrf {
        return Err(ApiError::Forbidden("the form's CSRF token does not match this session".into()));
    }
    end_session(&app.db, &headers).await?;
    let mut response = found("/");
    let cookie = set_cookie(SESSION_COOKIE, "", std::time::Duration::ZERO, secure(&app));
    response.headers_mut().insert(header::SET_COOKIE, cookie.parse().map_err(anyhow::Error::from)?);
    Ok(response)
}

fn secure(app: &AppState) -> bool {
    app.config.public_url().starts_with("https://")
}

/// The sign-in cookie's name: `__Host-` prefixed under https.
fn signin_cookie(app: &AppState) -> &'static str {
    if secure(app) {
        SIGNIN_COOKIE.1
    } else {
        SIGNIN_COOKIE.0
    }
}

/// The provider's metadata, found by discovery the first time it is needed.
async fn provider(app: &AppState) -> Result<&CoreProviderMetadata, ApiError> {
    let Some(issuer) = app.config.oidc_issuer.clone() else {
        return Err(ApiError::Unavailable("sign-in is not configured (DEMOFLEET_OIDC_ISSUER)".into()));
    };
    app.auth
        .provider
        .get_or_try_init(|| async {
            let issuer = IssuerUrl::new(issuer).map_err(|e| ApiError::Internal(e.into()))?;
            CoreProviderMetadata::discover_async(issuer, &app.auth.http).await.map_err(|err| {
                tracing::warn!(error = %err, "OpenID provider discovery failed");
                ApiError::Unavailable(format!("the sign-in provider cannot be reached: {err}"))
            })
        })
        .await
}

type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn client(app: &AppState, metadata: CoreProviderMetadata) -> Result<Client, ApiError> {
    let secret = match (&app.config.oidc_client_secret, &app.config.oidc_client_secret_file) {
        (Some(secret), _) => Some(secret.expose().to_string()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading {}: {e}", file.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let redirect = RedirectUrl::new(format!("{}/auth/callback", app.config.public_url()))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(app.config.oidc_client_id.clone()),
        secret.map(ClientSecret::new),
    )
    .set_redirect_uri(redirect))
}

/// Trade the code for tokens and read who signed in from the verified ID token.
async fn identify(app: &AppState, code: String, nonce: String, verifier: String) -> Result<Identity, ApiError> {
    let client = client(app, provider(app).await?.clone())?;
    let refused = |what: String| ApiError::Unauthorized(format!("sign-in failed: {what}"));
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| refused(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&app.auth.http)
        .await
        .map_err(|e| refused(format!("the provider did not exchange the code: {e}")))?;
    let id_token = tokens.id_token().ok_or_else(|| refused("the provider sent no ID token".into()))?;
    let claims = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(nonce))
        .map_err(|e| refused(format!("the ID token does not verify: {e}")))?;
    let email = claims.email().map(|e| e.as_str().to_string()).ok_or_else(|| {
        ApiError::Forbidden("the provider gave no email address for this account; one is needed".into())
    })?;
    let name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_string());
    // Groups are no standard claim: read them from the verified token's payload.
    let groups = id_token
        .to_string()
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|payload| payload.get(&app.config.oidc_groups_claim).cloned())
        .and_then(|groups| serde_json::from_value::<Vec<String>>(groups).ok())
        .unwrap_or_default();
    Ok(Identity {
        subject: claims.subject().as_str().to_string(),
        email,
        email_verified: claims.email_verified(),
        name,
        groups,
    })
}
