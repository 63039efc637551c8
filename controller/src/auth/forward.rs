//! `GET /auth/forward`: the SSO gate for Traefik's forwardAuth, in front of gated demos that
//! Traefik routes (the edge proxy checks the gate itself).
//!
//! `X-Forwarded-Host` is whatever the caller says, so it is taken only for a preview host
//! of this fleet (`<name>.<base domain>` or `<name>.localhost`): any other host is refused,
//! and no ticket, cookie or redirect is ever made for it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::cookies::same_site_path;
use super::gate::Decision;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/forward", get(forward))
}

/// Traefik's forwardAuth: 2xx lets the request through (with `X-Forwarded-User`); anything
/// else is what the visitor gets, here a redirect to sign in or one that sets the cookie.
async fn forward(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let forwarded = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let refuse = |status: StatusCode, message: String| (status, format!("{message}\n")).into_response();
    let Some(host) = forwarded("x-forwarded-host").map(|h| h.trim().to_ascii_lowercase()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "X-Forwarded-Host is missing: call this through Traefik's forwardAuth".into(),
        );
    };
    let valid_host = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    let Some(name) = app.urls.name_from_host(&host).filter(|_| valid_host) else {
        tracing::warn!(%host, "forwardAuth asked about a host this fleet does not serve");
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "X-Forwarded-Host {host:?} is not a preview of this fleet (<name>.{} or <name>.localhost)",
                app.urls.base_domain
            ),
        );
    };
    let uri = forwarded("x-forwarded-uri").unwrap_or_else(|| "/".into());
    if !same_site_path(&uri) {
        return refuse(StatusCode::BAD_REQUEST, "X-Forwarded-Uri must be a path of the preview".into());
    }
    let scheme = forwarded("x-forwarded-proto").unwrap_or_else(|| app.urls.scheme.clone());
    if !matches!(scheme.as_str(), "http" | "https") {
        return refuse(StatusCode::BAD_REQUEST, "X-Forwarded-Proto must be http or https".into());
    }
    // An ungated demo passes; anything else (gated, or a name not in the table yet) is checked.
    if !app.routes.gated(name).unwrap_or(true) {
        return StatusCode::OK.into_response();
    }
    let decision = app.auth.gate.check(&scheme, &host, &uri, &headers).await;
    match decision.response() {
        Some(response) => response,
        None => {
            let Decision::Pass { email } = decision else { unreachable!("only a pass has no response") };
            let mut response = StatusCode::OK.into_response();
            if let Ok(value) = email.parse() {
                response.headers_mut().insert("x-forwarded-user", value);
            }
            response
        }
    }
}
