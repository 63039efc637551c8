//! `POST /webhook/github`: verify, record, decide, and answer only once the work is durable.
//!
//! # Layout
//! - [`signature`]: `X-Hub-Signature-256` checking.
//! - [`event`]: the payload fields we read and what each action asks for.

pub mod event;
pub mod signature;

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use demofleet_common::names;
use event::{Intent, IssueCommentEvent, PullRequestEvent};

use crate::config::Config;
use crate::db::demos::DeployRequest;
use crate::db::demos::NewDelivery;
use crate::db::{outbox, settings};
use crate::error::ApiError;
use crate::jobs;
use crate::scheduler::orchestrate::{self, Applied, Cause};
use crate::scheduler::Effects;
use crate::state::AppState;

pub fn router(config: &Config) -> Router<AppState> {
    Router::new().route("/webhook/github", post(receive)).layer(DefaultBodyLimit::max(config.webhook_max_bytes))
}

type Answer = (StatusCode, Json<Value>);

#[tracing::instrument(skip_all, fields(event, delivery))]
async fn receive(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Answer, ApiError> {
    let signature = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    signature::verify(app.config.webhook_secret.expose().as_bytes(), &body, signature)
        .map_err(|err| ApiError::Unauthorized(err.to_string()))?;

    let event = required_header(&headers, "x-github-event")?;
    let delivery = required_header(&headers, "x-github-delivery")?;
    tracing::Span::current().record("event", event).record("delivery", delivery);
    let payload = json_payload(&headers, &body)?;

    match event {
        "ping" => record_only(&app, delivery, event, None, "ping", None).await,
        "pull_request" => pull_request(&app, delivery, &payload).await,
        "issue_comment" => issue_comment(&app, delivery, &payload).await,
        _ => {
            let action = event::parse::<Value>(&payload).ok().and_then(|v| v["action"].as_str().map(String::from));
            record_only(&app, delivery, event, action.as_deref(), "ignored", Some("event not used by demofleet")).await
        }
    }
}

async fn pull_request(app: &AppState, delivery: &str, payload: &[u8]) -> Result<Answer, ApiError> {
    let event: PullRequestEvent = event::parse(payload).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let action = event.action.as_str();
    let mut intent = event.intent();
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
    let request = deploy_request(app, &event, owner, repo, pr)?;

    let mut tx = app.db.begin().await?;
    // A deploy records its delivery together with the demo; the rest record it first.
    if intent != Intent::Deploy && !insert_delivery(&mut tx, delivery, "pull_request", Some(action)).await? {
        return Ok(duplicate(delivery));
    }
    if intent == Intent::Draft {
        let policy = settings::get(&mut *tx, owner, repo).await?.draft_policy;
        if policy == "keep" {
            set_outcome(&mut tx, delivery, "ignored", Some("draft policy: keep running"), None).await?;
            tx.commit().await?;
            return Ok((StatusCode::ACCEPTED, Json(json!({ "delivery": delivery, "outcome": "ignored" }))));
        }
        intent = Intent::Teardown;
    }
    let actor = format!("github:{}", event.sender.as_ref().unwrap_or(&event.pull_request.user).login);
    let cause = Cause { actor: &actor, event_at: event.pull_request.updated_at, delivery_id: Some(delivery) };
    let applied = if intent == Intent::Deploy {
        let record = NewDelivery { id: delivery, event: "pull_request", action: Some(action) };
        orchestrate::deploy(&mut tx, app, &request, cause, Some(record)).await
    } else {
        orchestrate::teardown(&mut tx, app, &request, cause).await
    };
    let name_taken = format!("demo name {} is taken by another repository", request.name);
    let applied = applied.map_err(|e| ApiError::conflict_on_unique(e, name_taken))?;
    // A started chain records its delivery's outcome itself; the rest are recorded here.
    let (outcome, unrecorded, demo, effects) = match applied {
        Applied::Started(demo, effects) => {
            let outcome = if intent == Intent::Deploy { "deploy_queued" } else { "teardown_queued" };
            (outcome, None, Some(demo), effects)
        }
        Applied::Stale(demo) => {
            ("stale", Some("a newer event for this pull request was already applied"), Some(demo), Effects::default())
        }
        Applied::NoDemo => ("ignored", Some("no demo for this pull request"), None, Effects::default()),
        Applied::Duplicate => return Ok(duplicate(delivery)),
    };
    if let Some(detail) = unrecorded {
        set_outcome(&mut tx, delivery, outcome, Some(detail), demo.as_ref().map(|d| d.id)).await?;
    }
    tx.commit().await?;
    app.apply(effects).await;
    let mut answer = json!({ "delivery": delivery, "outcome": outcome });
    if let Some(demo) = demo {
        answer["demo"] = json!({ "id": demo.id, "name": demo.name, "generation": demo.generation });
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `issue_comment`: `/demo approve` on a pull request asks for its demo to be approved;
/// whether the commenter may is checked with GitHub, after the answer.
async fn issue_comment(app: &AppState, delivery: &str, payload: &[u8]) -> Result<Answer, ApiError> {
    let event: IssueCommentEvent = event::parse(payload).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !event.is_approval() {
        return record_only(app, delivery, "issue_comment", Some(&event.action), "ignored", Some("not an approval"))
            .await;
    }
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
    outbox::push(&mut *tx, &jobs::approve_by_comment(owner, repo, pr, &event.comment.user.login)).await?;
    set_outcome(&mut tx, delivery, "approval_requested", None, None).await?;
    tx.commit().await?;
    app.outbox.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({ "delivery": delivery, "outcome": "approval_requested" }))))
}

fn pr_number(number: u64) -> Result<i64, ApiError> {
    i64::try_from(number)
        .ok()
        .filter(|n| *n > 0 && *n <= i64::from(i32::MAX))
        .ok_or_else(|| ApiError::BadRequest(format!("payload field `number`: {number} is not a pull request number")))
}

fn deploy_request(
    app: &AppState,
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
    names::validate_repo(head_repo).map_err(|e| ApiError::BadRequest(format!("head repository: {e}")))?;
    let name = names::demo_name(repo, owner, pr as u64).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(DeployRequest {
        owner: owner.to_string(),
        repo: repo.to_string(),
        pr,
        name,
        sha: head.sha.to_ascii_lowercase(),
        clone_url: app.config.clone_url(head_owner, head_repo),
        github_user: event.pull_request.user.login.clone(),
    })
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
    let mut tx = app.db.begin().await?;
    if !insert_delivery(&mut tx, delivery, event, action).await? {
        return Ok(duplicate(delivery));
    }
    set_outcome(&mut tx, delivery, outcome, detail, None).await?;
    tx.commit().await?;
    let status = if outcome == "ping" { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(json!({ "delivery": delivery, "outcome": outcome }))))
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

/// The JSON document of a delivery: the body itself, or the `payload` field of a form.
fn json_payload<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<Cow<'b, [u8]>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Cow::Borrowed(body)),
        "application/x-www-form-urlencoded" => url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| Cow::Owned(v.into_owned().into_bytes()))
            .ok_or_else(|| ApiError::BadRequest("form body has no `payload` field".into())),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "content type {other:?} is not supported; use application/json or application/x-www-form-urlencoded"
        ))),
    }
}
