//! The controller's HTTP side: one router per area, merged here.

pub mod api;
pub mod health;
pub mod index;
pub mod logs;
pub mod metrics;

use axum::Router;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::webhook::router(&state.config))
        .merge(api::router())
        .merge(health::router())
        .merge(index::router())
        .merge(metrics::router())
        .merge(logs::router())
        .merge(crate::traefik::router())
        .merge(crate::auth::oidc::router())
        .merge(crate::auth::gate::router())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
