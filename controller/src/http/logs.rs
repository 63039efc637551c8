//! `GET /api/demos/{id}/logs`: the demo's kept log lines (checkout, build, launch, health
//! and the running container's output; crate::keep_logs), replayed from PostgreSQL, then
//! followed as they are kept, as server-sent events (`event: log`, `id:` the line's id).
//! `Last-Event-ID` (or `?after=ID`) resumes after a line, across reconnects and controller
//! restarts, without losing or repeating one. `?generation=N` and `?step=build` choose
//! lines; `?format=text` downloads them as a text file instead (no following).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use uuid::Uuid;

use crate::db::{demos, logs};
use crate::error::ApiError;
use crate::state::AppState;

/// How often a follower looks for newly kept lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// Lines read at once.
const PAGE: i64 = 1_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/demos/{id}/logs", get(logs))
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct LogParams {
    pub generation: Option<i64>,
    pub step: Option<String>,
    pub after: Option<i64>,
    pub format: Option<String>,
}

async fn logs(
    State(app): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<LogParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let demo = demos::get(&app.db, id).await?.ok_or_else(|| ApiError::NotFound(format!("no demo {id}")))?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let query = logs::Query {
        after: resume.or(params.after).unwrap_or(0),
        generation: params.generation,
        step: params.step.clone(),
        limit: PAGE,
    };
    if params.format.as_deref() == Some("text") {
        return Ok(text(&app, &demo.name, id, query, &params).await?.into_response());
    }
    Ok(Sse::new(follow(app.clone(), id, query)).keep_alive(KeepAlive::default()).into_response())
}

/// Every kept line after `query.after`, then each line as it is kept, until the controller stops.
fn follow(app: AppState, id: Uuid, query: logs::Query) -> impl Stream<Item = Result<Event, Infallible>> {
    let stopping = app.stopping.clone();
    futures::stream::unfold((app, query), move |(app, mut query)| async move {
        loop {
            match logs::read(&app.db, id, &query).await {
                Ok(lines) if !lines.is_empty() => {
                    query.after = lines.last().map_or(query.after, |l| l.id);
                    let events: Vec<Result<Event, Infallible>> = lines.iter().map(|l| Ok(event(l))).collect();
                    return Some((futures::stream::iter(events), (app, query)));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, demo = %id, "reading kept logs failed"),
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    })
    .flatten()
    .take_until(stopping.cancelled_owned())
}

fn event(line: &logs::LogLine) -> Event {
    // SSE data may not hold carriage returns; newlines become separate data lines.
    Event::default().event("log").id(line.id.to_string()).data(line.line.replace('\r', ""))
}

/// The kept lines as a text file, each `[generation step] line`.
async fn text(
    app: &AppState,
    name: &str,
    id: Uuid,
    mut query: logs::Query,
    params: &LogParams,
) -> Result<impl IntoResponse, ApiError> {
    let mut body = String::new();
    loop {
        let lines = logs::read(&app.db, id, &query).await?;
        let Some(last) = lines.last() else { break };
        query.after = last.id;
        for line in &lines {
            body.push_str(&format!("[g{} {}] {}\n", line.generation, line.step, line.line));
        }
    }
    let mut file = name.to_string();
    if let Some(generation) = params.generation {
        file.push_str(&format!("-g{generation}"));
    }
    if let Some(step) = &params.step {
        let step: String = step.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(20).collect();
        file.push_str(&format!("-{step}"));
    }
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file}.log\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    ))
}
