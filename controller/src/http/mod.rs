//! The controller's HTTP side: one router per area, merged here.

pub mod api;
pub mod health;
pub mod logs;
pub mod metrics;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn_with_state, map_request, map_response};
use axum::response::Response;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::auth::guard;
use crate::listener::Deadline;
use crate::state::AppState;

/// Open: the webhook (signed), health, metrics, Traefik's provider, sign-in. Behind a
/// principal: the JSON API. Behind a session: the dashboard. Every request's body must be
/// complete within DEMOFLEET_HTTP_BODY_TIMEOUT of its headers.
pub fn router(state: AppState) -> Router {
    let body_timeout = state.config.http_body_timeout;
    let api = api::router().merge(logs::router()).route_layer(from_fn_with_state(state.clone(), guard::api));
    let dashboard = crate::dashboard::router().route_layer(from_fn_with_state(state.clone(), guard::dashboard));
    Router::new()
        .merge(crate::webhook::router(&state.config))
        .merge(api)
        .merge(dashboard)
        .merge(health::router())
        .merge(metrics::router())
        .merge(crate::traefik::router())
        .merge(crate::auth::oidc::router())
        .merge(crate::auth::forward::router())
        .layer(map_response(no_framing))
        .layer(map_request(
            move |req: Request| async move { req.map(|body| Body::new(Deadline::new(body, body_timeout))) },
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// No page of the controller may be shown in another site's frame (clickjacking): every
/// answer says so, the old way (`X-Frame-Options`) and the new (CSP `frame-ancestors`).
async fn no_framing(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let csp = match headers.get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok()) {
        Some(csp) if csp.contains("frame-ancestors") => None,
        Some(csp) => HeaderValue::try_from(format!("{csp}; frame-ancestors 'none'")).ok(),
        None => Some(HeaderValue::from_static("frame-ancestors 'none'")),
    };
    if let Some(csp) = csp {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}
