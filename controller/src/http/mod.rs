//! The controller's HTTP side: one router per area, merged here.

pub mod api;
pub mod health;
pub mod logs;
pub mod metrics;

use axum::middleware::from_fn_with_state;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::auth::guard;
use crate::state::AppState;

/// Open: the webhook (signed), health, metrics, Traefik's provider, sign-in. Behind a
/// principal: the JSON API. Behind a session: the dashboard.
pub fn router(state: AppState) -> Router {
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
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
