//! `GET /api/demos/{id}/logs`: the demo's live log lines (checkout, build output, step
//! failures) as server-sent events, relayed from NATS `demofleet.demo.<id>.log` as the
//! agent publishes them. Lines sent before the client connected are not replayed.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use uuid::Uuid;

use demofleet_common::topology;

use crate::db::demos;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/demos/{id}/logs", get(logs))
}

async fn logs(
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    demos::get(&app.db, id).await?.ok_or_else(|| ApiError::NotFound(format!("no demo {id}")))?;
    let subject = topology::log_subject(&app.config.messaging.nats_prefix, &id);
    let lines = app.nats.subscribe(subject).await.map_err(|e| ApiError::Internal(e.into()))?;
    let events = lines.take_until(app.stopping.clone().cancelled_owned()).map(|message| {
        // SSE data may not hold carriage returns; newlines become separate data lines.
        let line = String::from_utf8_lossy(&message.payload).replace('\r', "");
        Ok(Event::default().event("log").data(line))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
