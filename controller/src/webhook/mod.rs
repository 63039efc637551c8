//! `POST /webhook/github`: verify, record, decide, and answer only once the work is durable.
//!
//! # Layout
//! - [`signature`]: `X-Hub-Signature-256` checking.
//! - [`event`]: the payload fields we read and what each action asks for.
//! - [`delivery`]: content type, body and event header → the event.
//! - [`body`]: reading a body only once its headers allow it, within bounds of size,
//!   memory and time.
//!
//! The first three are pure and live in `demofleet_common::webhook`, where the fuzz targets
//! reach them.

pub mod body;

pub use demofleet_common::webhook::{delivery, event, signature};

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use delivery::{read, Delivery, DeliveryError};
use demofleet_common::names;
use event::{Intent, IssueCommentEvent, PullRequestEvent};

use crate::config::Config;
use crate::db::demos::DeployRequest;
use crate::db::events::{Event, Kind, Recorded};
use crate::db::outbox::{self, Outgoing};
use crate::error::ApiError;
use crate::scheduler::Effects;
use crate::state::AppState;

pub fn router(config: &Config) -> Router<AppState> {
    let bodies = Arc::new(body::Bodies::new(config));
    Router::new().route("/webhook/github", post(receive)).layer(Extension(bodies))
}

type Answer = (StatusCode, Json<Value>);

#[tracing::instrument(skip_all, fields(event, delivery, demo, generation))]
async fn receive(
    State(app): State<AppState>,
    Extension(bodies): Extension<Arc<body::Bodies>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    // What the headers can tell is checked before a byte of the body is read.
    let unauthorized = |err: signature::SignatureError| ApiError::Unauthorized(err.to_string());
    let claimed = signature::parse(headers.get("x-hub-signature-256").map(|v| v.as_bytes())).map_err(unauthorized)?;
    let event = required_header(&headers, "x-github-event")?;
    let delivery = required_header(&headers, "x-github-delivery")?;
    let body = bodies.read(&headers, body).await?;
    signature::check(app.config.webhook_secret.expose().as_bytes(), &body, &claimed).map_err(unauthorized)?;

    tracing::Span::current().record("event", event).record("delivery", delivery);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");

    match read(event, content_type, &body)? {
        Delivery::Ping => record_only(&app, delivery, event, None, "ping", None).await,
        Delivery::PullRequest(payload) => pull_request(&app, delivery, payload).await,
        Delivery::IssueComment(payload) => issue_comment(&app, delivery, payload).await,
        Delivery::Other { action } => {
            record_only(&app, delivery, event, action.as_deref(), "ignored", Some("event not used by demofleet")).await
        }
    }
}

impl From<DeliveryError> for ApiError {
    fn from(err: DeliveryError) -> Self {
        match err {
            DeliveryError::UnsupportedMediaType(_) => ApiError::UnsupportedMediaType(err.to_string()),
            DeliveryError::NoFormPayload | DeliveryError::Payload(_) => ApiError::BadRequest(err.to_string()),
        }
    }
}

async fn pull_request(app: &AppState, delivery: &str, event: PullRequestEvent) -> Result<Answer, ApiError> {
    let action = event.action.as_str();
    let intent = event.intent();
    if intent == Intent::Ignore {
        return record_only(
            app,
            delivery,
            "pull_request",
            Some(action),
            "ignored",
            Some("action not used by demofleet"),
        )
        .await;
    }
    let owner = &event.repository.owner.login;
    let repo = &event.repository.name;
    names::validate_owner(owner).map_err(ApiError::BadRequest)?;
    names::validate_repo(repo).map_err(ApiError::BadRequest)?;
    let pr = pr_number(event.number)?;
    let request = deploy_request(&app.config, &event, owner, repo, pr)?;

    let kind = match intent {
        Intent::Deploy => Kind::Deploy,
        Intent::Teardown => Kind::Teardown,
        Intent::Draft => Kind::Draft,
        Intent::Ignore => unreachable!("ignored actions are recorded above"),
    };
    let actor = format!("github:{}", event.sender.as_ref().unwrap_or(&event.pull_request.user).login);
    let name = request.name.clone();
    let intake = Event::pull_request(kind, request, &actor, event.pull_request.updated_at);
    let recorded = submit(app, intake.delivered(delivery, "pull_request", action), |err| {
        ApiError::conflict_on_unique(err, format!("demo name {name} is taken by another repository"))
    })
    .await?;
    Ok(answer(delivery, recorded))
}

/// Record an event with the intake's next batch; `on_error` says what a database error means.
async fn submit(
    app: &AppState,
    event: Event,
    on_error: impl FnOnce(sqlx::Error) -> ApiError,
) -> Result<Recorded, ApiError> {
    let recorded = app.intake.submit(event).await.map_err(|stopped| ApiError::Unavailable(stopped.to_string()))?;
    let recorded = recorded.map_err(on_error)?;
    let span = tracing::Span::current();
    if let Some(demo) = &recorded.demo {
        span.record("demo", tracing::field::display(demo.id)).record("generation", demo.generation);
    }
    Ok(recorded)
}

/// The answer for a recorded delivery: 200 for a ping or a redelivery, else 202.
fn answer(delivery: &str, recorded: Recorded) -> Answer {
    let status = match recorded.outcome.as_str() {
        "ping" | "duplicate" => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    let mut answer = json!({ "delivery": delivery, "outcome": recorded.outcome });
    if let Some(demo) = recorded.demo {
        answer["demo"] = json!({ "id": demo.id, "name": demo.name, "generation": demo.generation });
    }
    if let Some(detail) = recorded.detail {
        answer["detail"] = json!(detail);
    }
    (status, Json(answer))
}

/// `issue_comment`: `/demo approve <sha>` on a pull request asks for its demo's head commit
/// `sha` to be approved; whether the commenter may is checked with GitHub, after the answer.
/// A comment approves once: delivered again under another delivery id, it does nothing.
async fn issue_comment(app: &AppState, delivery: &str, event: IssueCommentEvent) -> Result<Answer, ApiError> {
    let action = Some(event.action.as_str());
    if !event.is_approval() {
        return record_only(app, delivery, "issue_comment", action, "ignored", Some("not an approval")).await;
    }
    let sha = match event.approved_sha() {
        Ok(sha) => sha,
        Err(why) => return record_only(app, delivery, "issue_comment", action, "approval_refused", Some(&why)).await,
    };
    let owner = &event.repository.owner.login;
    let repo = &event.repository.name;
    names::validate_owner(owner).map_err(ApiError::BadRequest)?;
    names::validate_repo(repo).map_err(ApiError::BadRequest)?;
    names::validate_owner(&event.comment.user.login).map_err(ApiError::BadRequest)?;
    let pr = pr_number(event.issue.number)?;
    let mut tx = app.db.begin().await?;
    if !insert_delivery(&mut tx, delivery, "issue_comment", Some(&event.action)).await? {
        return Ok(duplicate(delivery));
    }
    let comment = i64::try_from(event.comment.id)
        .map_err(|_| ApiError::BadRequest("payload field `comment.id`: not a comment id".into()))?;
    let first_use = sqlx::query(
        "insert into approval_comments (comment_id, delivery_id) values ($1, $2) on conflict (comment_id) do nothing",
    )
    .bind(comment)
    .bind(delivery)
    .execute(&mut *tx)
    .await?;
    if first_use.rows_affected() == 0 {
        let detail = format!("comment {comment} was delivered before; a comment approves once");
        set_outcome(&mut tx, delivery, "ignored", Some(&detail), None).await?;
        tx.commit().await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "delivery": delivery, "outcome": "ignored", "detail": detail })),
        ));
    }
    let approval = Outgoing::approve_by_comment(owner, repo, pr, &event.comment.user.login, &sha);
    outbox::push(&mut *tx, &approval).await?;
    set_outcome(&mut tx, delivery, "approval_requested", None, None).await?;
    tx.commit().await?;
    app.scheduler.apply(Effects::PUBLISHED).await;
    Ok((StatusCode::ACCEPTED, Json(json!({ "delivery": delivery, "outcome": "approval_requested" }))))
}

/// What a pull request as GitHub's REST API returns it (`GET /repos/{owner}/{repo}/pulls/{n}`)
/// asks for, checked exactly as a webhook's would be; and whether it is open.
pub(crate) fn request_of_pull(config: &Config, pull: &serde_json::Value) -> Result<(DeployRequest, bool), ApiError> {
    let as_event = serde_json::json!({
        "action": "opened", "number": pull["number"], "pull_request": pull, "repository": pull["base"]["repo"],
    });
    let bytes = serde_json::to_vec(&as_event).map_err(anyhow::Error::from)?;
    let event: PullRequestEvent = event::parse(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (owner, repo) = (&event.repository.owner.login, &event.repository.name);
    names::validate_owner(owner).map_err(ApiError::BadRequest)?;
    names::validate_repo(repo).map_err(ApiError::BadRequest)?;
    let request = deploy_request(config, &event, owner, repo, pr_number(event.number)?)?;
    Ok((request, pull["state"] == "open"))
}

fn pr_number(number: u64) -> Result<i64, ApiError> {
    i64::try_from(number)
        .ok()
        .filter(|n| *n > 0 && *n <= i64::from(i32::MAX))
        .ok_or_else(|| ApiError::BadRequest(format!("payload field `number`: {number} is not a pull request number")))
}

fn deploy_request(
    config: &Config,
    event: &PullRequestEvent,
    owner: &str,
    repo: &str,
    pr: i64,
) -> Result<DeployRequest, ApiError> {
    let head = &event.pull_request.head;
    if !event::is_commit_sha(&head.sha) {
        return Err(ApiError::BadRequest("payload field `pull_request.head.sha`: not a commit id".into()));
    }
    // Fork PRs build from the fork; a deleted fork leaves only the base repository.
    let (head_owner, head_repo) = match &head.repo {
        Some(r) => (r.owner.login.as_str(), r.name.as_str()),
        None => (owner, repo),
    };
    names::validate_owner(head_owner).map_err(|e| ApiError::BadRequest(format!("head repository: {e}")))?;
    // Both go to GitHub's API (a permission check names the user in its path) and to agents.
    names::validate_login(&event.pull_request.user.login)
        .map_err(|e| ApiError::BadRequest(format!("payload field `pull_request.user.login`: {e}")))?;
    if let Some(sender) = &event.sender {
        names::validate_login(&sender.login)
            .map_err(|e| ApiError::BadRequest(format!("payload field `sender.login`: {e}")))?;
    }
    names::validate_repo(head_repo).map_err(|e| ApiError::BadRequest(format!("head repository: {e}")))?;
    let name = names::demo_name(repo, owner, pr as u64).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(DeployRequest {
        owner: owner.to_string(),
        repo: repo.to_string(),
        pr,
        name,
        sha: head.sha.to_ascii_lowercase(),
        clone_url: config.clone_url(head_owner, head_repo),
        github_user: event.pull_request.user.login.clone(),
        pushed_by: event.sender.as_ref().map(|s| s.login.clone()),
        title: event.pull_request.title.as_deref().map(shown_title),
    })
}

/// A title as the dashboard shows it: one line, no control characters, at most 200 characters.
fn shown_title(title: &str) -> String {
    let line: String = title.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    line.trim().chars().take(200).collect()
}

/// Record a delivery that starts no work, and answer for it.
async fn record_only(
    app: &AppState,
    delivery: &str,
    event: &str,
    action: Option<&str>,
    outcome: &str,
    detail: Option<&str>,
) -> Result<Answer, ApiError> {
    let recorded = submit(app, Event::record(delivery, event, action, outcome, detail), ApiError::Database).await?;
    Ok(answer(delivery, recorded))
}

fn duplicate(delivery: &str) -> Answer {
    (StatusCode::OK, Json(json!({ "delivery": delivery, "outcome": "duplicate" })))
}

/// False when this delivery id was already recorded (a redelivery).
async fn insert_delivery(
    tx: &mut crate::db::Tx<'_>,
    delivery: &str,
    event: &str,
    action: Option<&str>,
) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "insert into webhook_deliveries (delivery_id, event, action, outcome) values ($1, $2, $3, 'received')
         on conflict (delivery_id) do nothing",
    )
    .bind(delivery)
    .bind(event)
    .bind(action)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

async fn set_outcome(
    tx: &mut crate::db::Tx<'_>,
    delivery: &str,
    outcome: &str,
    detail: Option<&str>,
    demo: Option<uuid::Uuid>,
) -> sqlx::Result<()> {
    sqlx::query("update webhook_deliveries set outcome = $2, detail = $3, demo_id = $4 where delivery_id = $1")
        .bind(delivery)
        .bind(outcome)
        .bind(detail)
        .bind(demo)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn required_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, ApiError> {
    let value = headers.get(name).ok_or_else(|| ApiError::BadRequest(format!("missing {name} header")))?;
    let value = value.to_str().map_err(|_| ApiError::BadRequest(format!("{name} header is not text")))?;
    if value.is_empty() || value.len() > 200 {
        return Err(ApiError::BadRequest(format!("{name} header must be 1-200 characters")));
    }
    Ok(value)
}
