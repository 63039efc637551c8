//! `GET /auth/forward`: the SSO gate for Traefik's forwardAuth, in front of gated demos that
//! Traefik routes (the edge proxy checks the gate itself).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::gate::Decision;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/forward", get(forward))
}

/// Traefik's forwardAuth: 2xx lets the request through (with `X-Forwarded-User`); anything
/// else is what the visitor gets, here a redirect to sign in or one that sets the cookie.
async fn forward(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let forwarded = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(host) = forwarded("x-forwarded-host").map(|h| h.to_ascii_lowercase()) else {
        return (StatusCode::BAD_REQUEST, "X-Forwarded-Host is missing: call this through Traefik's forwardAuth\n")
            .into_response();
    };
    let uri = forwarded("x-forwarded-uri").unwrap_or_else(|| "/".into());
    let scheme = forwarded("x-forwarded-proto").unwrap_or_else(|| app.urls.scheme.clone());
    // An ungated demo passes; anything else (gated, or not a demo we know) is checked.
    let gated = app.urls.name_from_host(&host).and_then(|name| app.routes.gated(name)).unwrap_or(true);
    if !gated {
        return StatusCode::OK.into_response();
    }
    let decision = app.auth.gate.check(&scheme, &host, &uri, &headers);
    match decision.redirect() {
        Some(response) => response,
        None => {
            let Decision::Pass { email } = decision else { unreachable!("a decision is a pass or a redirect") };
            let mut response = StatusCode::OK.into_response();
            if let Ok(value) = email.parse() {
                response.headers_mut().insert("x-forwarded-user", value);
            }
            response
        }
    }
}
