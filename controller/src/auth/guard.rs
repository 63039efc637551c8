//! Who may reach what. The JSON API wants a principal (an API token, or a session), else
//! 401; the dashboard wants a session, else a redirect to sign in. A change made through
//! the API with a session (the dashboard's own scripts) carries the session's CSRF token in
//! `X-CSRF-Token`; one made with an API token needs none.

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::cookies::found;
use super::{principal, session, Principal};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn api(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let who = match principal(&app.db, request.headers()).await {
        Ok(Some(who)) => who,
        Ok(None) => {
            let body = Json(serde_json::json!({
                "error": "authentication required: sign in, or send an API token as `Authorization: Bearer <token>`"
            }));
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        Err(err) => return ApiError::Database(err).into_response(),
    };
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if let (true, Principal::Person(session)) = (changes, &who) {
        let sent = request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok());
        if sent != Some(session.csrf.as_str()) {
            return ApiError::Forbidden("a change with a session needs its CSRF token in X-CSRF-Token".into())
                .into_response();
        }
    }
    request.extensions_mut().insert(who);
    next.run(request).await
}

pub async fn dashboard(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    match session(&app.db, request.headers()).await {
        Ok(Some(session)) => {
            request.extensions_mut().insert(Principal::Person(session));
            next.run(request).await
        }
        Ok(None) => {
            let here = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let next: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            found(&format!("/auth/login?next={next}"))
        }
        Err(err) => ApiError::Database(err).into_response(),
    }
}
