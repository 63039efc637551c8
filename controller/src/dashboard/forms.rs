//! The dashboard's forms: each checks the session's CSRF token, acts through
//! [`crate::actions`] in the signed-in person's name, and redirects back (303).

use axum::extract::{Form, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::layout::{render, Layout, PageError};
use super::pages::{token_rows, TokensPage};
use crate::actions;
use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/demos/{id}/{action}", post(demo_action))
        .route("/chains/{id}/retry", post(retry))
        .route("/hosts/{id}/{action}", post(host_action))
        .route("/start", post(start))
        .route("/deliveries/{id}/redeliver", post(redeliver))
        .route("/tokens", post(make_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/repos/{owner}/{repo}/env", post(set_secret))
        .route("/repos/{owner}/{repo}/env/forks", post(secrets_for_forks))
        .route("/repos/{owner}/{repo}/env/{name}/delete", post(delete_secret))
}

/// The fields every form has; `back` (a path) says where to go afterwards.
#[derive(Deserialize)]
struct Plain {
    csrf: String,
    back: Option<String>,
    demo: Option<Uuid>,
    /// The commit an approval approves: the head the page showed.
    sha: Option<String>,
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_string())]).into_response()
}

/// A local path to go back to, never another site.
fn back_to(back: Option<&str>, default: String) -> String {
    back.filter(|b| b.starts_with('/') && !b.starts_with("//")).map(String::from).unwrap_or(default)
}

/// Check the form's CSRF token, run `act` as the signed-in person, redirect to `to`.
async fn act(
    who: &Principal,
    csrf: &str,
    to: String,
    act: impl AsyncFnOnce(&str) -> Result<(), ApiError>,
) -> Result<Response, PageError> {
    let layout = Layout::of(who);
    if let Err(refused) = layout.check_csrf(csrf) {
        return Err(PageError::new(layout, refused));
    }
    match act(&who.actor()).await {
        Ok(()) => Ok(see_other(&to)),
        Err(err) => Err(PageError::new(layout, err)),
    }
}

/// `stop`, `redeploy` or `approve` a demo.
async fn demo_action(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(Uuid, String)>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    let to = back_to(form.back.as_deref(), format!("/demos/{id}"));
    act(&who, &form.csrf, to, async |actor| actions::on_demo(&app, id, &action, actor, form.sha.as_deref()).await).await
}

async fn retry(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    let to = form.demo.map_or_else(|| "/".to_string(), |demo| format!("/demos/{demo}"));
    act(&who, &form.csrf, to, async |actor| actions::retry(&app, id, actor).await).await
}

/// `drain` or `undrain` a host.
async fn host_action(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    act(&who, &form.csrf, "/hosts".into(), async |actor| actions::on_host(&app, &id, &action, actor).await).await
}

async fn redeliver(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    act(&who, &form.csrf, "/deliveries".into(), async |actor| actions::redeliver(&app, &id, actor).await.map(drop))
        .await
}

#[derive(Deserialize)]
struct StartForm {
    csrf: String,
    reference: String,
    /// A checkbox: present when ticked.
    notify: Option<String>,
}

async fn start(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Form(form): Form<StartForm>,
) -> Result<Response, PageError> {
    let layout = Layout::of(&who);
    if let Err(refused) = layout.check_csrf(&form.csrf) {
        return Err(PageError::new(layout, refused));
    }
    match actions::start(&app, &form.reference, form.notify.is_some(), &who.actor()).await {
        Ok(demo) => Ok(see_other(&format!("/demos/{}", demo.id))),
        Err(err) => Err(PageError::new(layout, err)),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
}

async fn make_token(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Form(form): Form<TokenForm>,
) -> Result<Response, PageError> {
    let layout = Layout::of(&who);
    let made = async {
        layout.check_csrf(&form.csrf)?;
        let name = crate::db::tokens::check_name(&form.name).map_err(ApiError::BadRequest)?;
        let token = auth::create_api_token(&app.db, name, &who.actor()).await?;
        let detail = serde_json::json!({ "token": name });
        crate::db::audit::record(&app.db, &who.actor(), "token", None, detail).await?;
        let tokens = token_rows(&app.db).await?;
        render(&TokensPage { layout: &layout, tokens, created: Some(token) })
    }
    .await;
    match made {
        Ok(page) => Ok(([(header::CACHE_CONTROL, "no-store")], page).into_response()),
        Err(err) => Err(PageError::new(layout, err)),
    }
}

async fn revoke_token(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    act(&who, &form.csrf, "/tokens".into(), async |actor| {
        if !crate::db::tokens::revoke(&app.db, id).await? {
            return Err(ApiError::NotFound("no such live token".into()));
        }
        crate::db::audit::record(&app.db, actor, "revoke_token", None, serde_json::json!({ "token": id })).await?;
        Ok(())
    })
    .await
}

#[derive(Deserialize)]
struct SecretForm {
    csrf: String,
    name: String,
    value: String,
}

/// Set a repository's secret; back to its page, which lists names only.
async fn set_secret(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    Form(form): Form<SecretForm>,
) -> Result<Response, PageError> {
    let to = format!("/repos/{owner}/{repo}/env");
    let name = form.name.trim();
    act(&who, &form.csrf, to, async |actor| actions::set_secret(&app, &owner, &repo, name, &form.value, actor).await)
        .await
}

async fn delete_secret(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo, name)): Path<(String, String, String)>,
    Form(form): Form<Plain>,
) -> Result<Response, PageError> {
    let to = format!("/repos/{owner}/{repo}/env");
    act(&who, &form.csrf, to, async |actor| actions::delete_secret(&app, &owner, &repo, &name, actor).await).await
}

#[derive(Deserialize)]
struct ForksForm {
    csrf: String,
    /// A checkbox: present when ticked.
    forks: Option<String>,
}

async fn secrets_for_forks(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    Form(form): Form<ForksForm>,
) -> Result<Response, PageError> {
    let to = format!("/repos/{owner}/{repo}/env");
    let shared = form.forks.is_some();
    act(&who, &form.csrf, to, async |actor| actions::set_secrets_for_forks(&app, &owner, &repo, shared, actor).await)
        .await
}
