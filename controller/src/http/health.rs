//! `/healthz` (the process answers) and `/readyz` (Postgres, RabbitMQ and NATS reachable).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let postgres = sqlx::query("select 1").execute(&app.db).await.is_ok();
    let rabbitmq = app.broker.is_connected().await || app.broker.channel().await.is_ok();
    let nats = app.nats.connection_state() == async_nats::connection::State::Connected;
    let ready = postgres && rabbitmq && nats;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "postgres": postgres, "rabbitmq": rabbitmq, "nats": nats })))
}
