//! The JSON API: `GET /api/demos` and `GET /api/hosts`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::actions;
use crate::auth::Principal;
use crate::db::{audit, chains, demos, hosts, secrets, settings};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use demofleet_common::names;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/demos", get(list_demos).post(start_demo))
        .route("/api/demos/{id}/{action}", post(demo_action))
        .route("/api/hosts/{id}/{action}", post(host_action))
        .route("/api/deliveries", get(list_deliveries))
        .route("/api/deliveries/{id}/redeliver", post(redeliver))
        .route("/api/demos/{id}", get(demo_detail))
        .route("/api/hosts", get(list_hosts).post(enrol_host))
        .route("/api/repos/{owner}/{repo}/settings", get(get_settings).put(put_settings))
        .route("/api/repos/{owner}/{repo}/env", get(list_env))
        .route("/api/repos/{owner}/{repo}/env/{name}", put(put_env).delete(delete_env))
        .route("/api/chains/{id}/retry", post(retry_chain))
}

/// A demo as the operator contract lists it.
#[derive(Debug, Serialize)]
pub struct DemoView {
    pub id: Uuid,
    pub owner: String,
    pub repo: String,
    pub pr: i64,
    pub name: String,
    pub state: String,
    pub desired: String,
    pub url: String,
    pub host: Option<String>,
    pub sha: String,
    pub generation: i64,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl DemoView {
    pub fn new(app: &AppState, demo: demos::Demo) -> DemoView {
        DemoView {
            url: app.urls.url(&app.urls.hostname(&demo.name)),
            id: demo.id,
            owner: demo.owner,
            repo: demo.repo,
            pr: demo.pr,
            name: demo.name,
            state: demo.state,
            desired: demo.desired,
            host: demo.host_id,
            sha: demo.sha,
            generation: demo.generation,
            error: demo.error,
            updated_at: demo.updated_at,
        }
    }
}

async fn list_demos(State(app): State<AppState>) -> Result<Json<Vec<DemoView>>, ApiError> {
    let list = demos::list(&app.db).await?;
    Ok(Json(list.into_iter().map(|d| DemoView::new(&app, d)).collect()))
}

/// A host with how long ago it was last heard from.
#[derive(Debug, Serialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: hosts::Host,
    pub seconds_since_seen: f64,
    pub alive: bool,
    /// Short of free disk: gets no new demos.
    pub low_disk: bool,
}

async fn list_hosts(State(app): State<AppState>) -> Result<Json<Vec<HostView>>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let list = hosts::list(&app.db).await?;
    let views = list
        .into_iter()
        .map(|host| {
            let age = (now - host.last_seen).as_seconds_f64().max(0.0);
            let low_disk = host.disk_free_bytes.is_some_and(|free| free < app.config.min_free_disk_bytes());
            HostView { alive: age < app.config.host_timeout.as_secs_f64(), seconds_since_seen: age, low_disk, host }
        })
        .collect();
    Ok(Json(views))
}

/// A demo with its chains, newest first, each with its steps and their attempts.
#[derive(Debug, Serialize)]
pub struct DemoDetail {
    #[serde(flatten)]
    pub demo: DemoView,
    pub chains: Vec<chains::ChainView>,
}

async fn demo_detail(State(app): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<DemoDetail>, ApiError> {
    let demo = demos::get(&app.db, id).await?.ok_or_else(|| ApiError::NotFound(format!("no demo {id}")))?;
    let chains = crate::chain::shown(chains::timeline(&app.db, id).await?);
    Ok(Json(DemoDetail { demo: DemoView::new(&app, demo), chains }))
}

async fn retry_chain(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Accepted, ApiError> {
    actions::retry(&app, id, &who.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "chain": id, "status": "running" }))))
}

/// What `POST /api/demos/{id}/approve` approves.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    /// The head commit approved, in full.
    sha: Option<String>,
}

/// `POST /api/demos/{id}/stop`, `/redeploy`, `/approve` (202; `approve` with
/// `{"sha": "<head commit>"}`).
async fn demo_action(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(Uuid, String)>,
    body: axum::body::Bytes,
) -> Result<Accepted, ApiError> {
    let body: ActionBody = if body.is_empty() {
        ActionBody { sha: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("the body: {e}")))?
    };
    actions::on_demo(&app, id, &action, &who.actor(), body.sha.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "demo": id, "action": action }))))
}

/// What `POST /api/hosts` enrols.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolRequest {
    id: String,
}

/// `POST /api/hosts {"id": ...}`: enrol a host (again, with new credentials, if it was);
/// answers the agent's settings, with its credentials, once.
async fn enrol_host(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<EnrolRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<crate::enrolment::AgentSettings>), ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let settings = app.enrolment.enrol(&request.id, &who.actor()).await?;
    Ok((StatusCode::CREATED, Json(settings)))
}

/// `POST /api/hosts/{id}/drain`, `/undrain`, `/revoke`.
async fn host_action(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    actions::on_host(&app, &id, &action, &who.actor()).await?;
    if action == "revoke" {
        return Ok(Json(serde_json::json!({ "host": id, "revoked": true })));
    }
    Ok(Json(serde_json::json!({ "host": id, "draining": action == "drain" })))
}

/// `POST /api/demos`: start the demo of a pull request by hand.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    /// `https://github.com/<owner>/<repo>/pull/<n>` or `<owner>/<repo>#<n>`.
    pull_request: String,
    /// Tell the pull request on GitHub (default: yes).
    #[serde(default = "yes")]
    notify: bool,
}

fn yes() -> bool {
    true
}

async fn start_demo(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DemoView>), ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let demo = actions::start(&app, &request.pull_request, request.notify, &who.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(DemoView::new(&app, demo))))
}

/// One webhook delivery and what became of it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct DeliveryView {
    delivery_id: String,
    event: String,
    action: Option<String>,
    outcome: String,
    detail: Option<String>,
    demo_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    received_at: OffsetDateTime,
}

async fn redeliver(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Accepted, ApiError> {
    let (delivery, outcome) = actions::redeliver(&app, &id, &who.actor()).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "delivery": delivery, "outcome": outcome }))))
}

async fn list_deliveries(State(app): State<AppState>) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    let list = sqlx::query_as(
        "select delivery_id, event, action, outcome, detail, demo_id, received_at from webhook_deliveries
         order by received_at desc limit 100",
    )
    .fetch_all(&app.db)
    .await?;
    Ok(Json(list))
}

type Accepted = (StatusCode, Json<serde_json::Value>);

async fn get_settings(
    State(app): State<AppState>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Json<settings::RepoSettings>, ApiError> {
    Ok(Json(settings::get(&app.db, &owner, &repo).await?))
}

async fn put_settings(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    body: Result<Json<settings::RepoSettings>, JsonRejection>,
) -> Result<Json<settings::RepoSettings>, ApiError> {
    let Json(new) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    names::validate_owner(&owner).map_err(ApiError::BadRequest)?;
    names::validate_repo(&repo).map_err(ApiError::BadRequest)?;
    if let Some(problem) = new.problem() {
        return Err(ApiError::BadRequest(problem));
    }
    let mut tx = app.db.begin().await?;
    settings::put(&mut *tx, &owner, &repo, &new).await?;
    let detail = serde_json::to_value(&new).unwrap_or_default();
    audit::record(
        &mut *tx,
        &who.actor(),
        "settings",
        None,
        serde_json::json!({ "repo": format!("{owner}/{repo}"), "settings": detail }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(new))
}

/// The names of a repository's variables, never their values.
async fn list_env(
    State(app): State<AppState>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let names = secrets::names(&app.db, &owner, &repo).await?;
    Ok(Json(serde_json::json!({ "repo": format!("{owner}/{repo}"), "env": names })))
}

/// The body of `PUT /api/repos/{owner}/{repo}/env/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvValue {
    value: String,
}

/// Set a repository's variable; the answer names it, without its value.
async fn put_env(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo, name)): Path<(String, String, String)>,
    body: Result<Json<EnvValue>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    names::validate_owner(&owner).map_err(ApiError::BadRequest)?;
    names::validate_repo(&repo).map_err(ApiError::BadRequest)?;
    // The rejection's text may quote the body: say only what was expected.
    let Json(body) =
        body.map_err(|_| ApiError::BadRequest("the body must be JSON: {\"value\": \"<the value>\"}".into()))?;
    actions::set_secret(&app, &owner, &repo, &name, &body.value, &who.actor()).await?;
    Ok(Json(serde_json::json!({ "repo": format!("{owner}/{repo}"), "name": name, "set": true })))
}

async fn delete_env(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    actions::delete_secret(&app, &owner, &repo, &name, &who.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
