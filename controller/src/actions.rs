//! What people do to the fleet, from the dashboard's forms or the JSON API: start a demo
//! from a pull request, stop, redeploy, approve, retry, drain a host. Each runs in one
//! transaction, records who did it, and applies its effects after commit.

use uuid::Uuid;

use crate::db::audit;
use crate::db::demos::{self, DeployRequest};
use crate::db::events::{Event, Kind};
use crate::error::ApiError;
use crate::scheduler::Effects;
use crate::state::AppState;

/// Tear a demo down, as a closed pull request would.
pub async fn stop(app: &AppState, demo_id: Uuid, actor: &str) -> Result<(), ApiError> {
    app.scheduler
        .transact(async |tx| {
            let demo = demos::get_for_update_opt(&mut **tx, demo_id).await?.ok_or_else(|| no_demo(demo_id))?;
            if demo.desired == "stopped" {
                return Err(ApiError::Conflict(format!("{} is already stopped", demo.name)));
            }
            let event = Event::pull_request(Kind::Teardown, DeployRequest::of(&demo), actor, None);
            let (_, effects) = app.scheduler.apply_event(tx, &event).await?;
            Ok(((), effects))
        })
        .await
}

/// Deploy the demo's commit again, as a new generation (it may have been stopped).
pub async fn redeploy(app: &AppState, demo_id: Uuid, actor: &str) -> Result<(), ApiError> {
    app.scheduler
        .transact(async |tx| {
            let demo = demos::get_for_update_opt(&mut **tx, demo_id).await?.ok_or_else(|| no_demo(demo_id))?;
            let event = Event::pull_request(Kind::Deploy, DeployRequest::of(&demo), actor, None);
            let (_, effects) = app.scheduler.apply_event(tx, &event).await?;
            Ok(((), effects))
        })
        .await
}

/// `stop`, `redeploy` or `approve` the demo, as named in a URL; an approval names the
/// commit it approves (`sha`).
pub async fn on_demo(
    app: &AppState,
    demo_id: Uuid,
    action: &str,
    actor: &str,
    sha: Option<&str>,
) -> Result<(), ApiError> {
    match action {
        "stop" => stop(app, demo_id, actor).await,
        "redeploy" => redeploy(app, demo_id, actor).await,
        "approve" => {
            let sha = sha
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::BadRequest("an approval names the head commit it approves: `sha`".into()))?;
            approve(app, demo_id, actor, sha).await
        }
        other => Err(ApiError::NotFound(format!("no action {other:?} on demos: stop, redeploy or approve"))),
    }
}

/// `drain` or `undrain` the host, as named in a URL.
pub async fn on_host(app: &AppState, host: &str, action: &str, actor: &str) -> Result<(), ApiError> {
    match action {
        "drain" => set_draining(app, host, true, actor).await,
        "undrain" => set_draining(app, host, false, actor).await,
        "revoke" => Ok(app.enrolment.revoke(host, actor).await?),
        other => Err(ApiError::NotFound(format!("no action {other:?} on hosts: drain, undrain or revoke"))),
    }
}

pub async fn approve(app: &AppState, demo_id: Uuid, actor: &str, sha: &str) -> Result<(), ApiError> {
    app.scheduler.transact(async |tx| Ok(((), app.scheduler.approve(tx, demo_id, actor, sha).await?))).await
}

pub async fn retry(app: &AppState, chain_id: Uuid, actor: &str) -> Result<(), ApiError> {
    app.scheduler.transact(async |tx| Ok(((), app.scheduler.retry_chain(tx, chain_id, actor).await?))).await
}

/// Stop (or resume) giving the host new demos.
pub async fn set_draining(app: &AppState, host: &str, draining: bool, actor: &str) -> Result<(), ApiError> {
    app.scheduler
        .transact(async |tx| {
            let found = sqlx::query("update hosts set draining = $2 where id = $1")
                .bind(host)
                .bind(draining)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if found == 0 {
                return Err(ApiError::NotFound(format!("no host {host}")));
            }
            let action = if draining { "drain" } else { "undrain" };
            audit::record(&mut **tx, actor, action, None, serde_json::json!({ "host": host })).await?;
            Ok(((), Effects::default()))
        })
        .await
}

/// A pull request reference: `https://github.com/<owner>/<repo>/pull/<n>` (any host, for
/// GitHub Enterprise) or `<owner>/<repo>#<n>`.
pub fn parse_pull_reference(reference: &str) -> Option<(String, String, i64)> {
    let reference = reference.trim();
    let (owner, repo, number) = if let Some((path, number)) = reference.split_once('#') {
        let (owner, repo) = path.split_once('/')?;
        (owner, repo, number)
    } else {
        let path = reference.split_once("://").map_or(reference, |(_, rest)| rest);
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            [_host, owner, repo, "pull" | "pulls", number, ..] => (*owner, *repo, *number),
            _ => return None,
        }
    };
    let number: i64 = number.parse().ok().filter(|n| *n > 0)?;
    let valid =
        demofleet_common::names::validate_owner(owner).is_ok() && demofleet_common::names::validate_repo(repo).is_ok();
    valid.then(|| (owner.to_string(), repo.to_string(), number))
}

/// Start (or update) the demo of an open pull request by hand, as its author's push would,
/// with the starter's approval; `notify`: whether GitHub hears of it.
pub async fn start(app: &AppState, reference: &str, notify: bool, actor: &str) -> Result<demos::Demo, ApiError> {
    let (owner, repo, number) = parse_pull_reference(reference).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{reference:?} is not a pull request: give https://github.com/<owner>/<repo>/pull/<n> or <owner>/<repo>#<n>"
        ))
    })?;
    let github = app.github.as_ref().ok_or_else(|| {
        ApiError::Unavailable("GitHub is not configured, so the pull request cannot be looked up".into())
    })?;
    let pull = github.pull_request(&owner, &repo, number).await.map_err(|err| {
        if err.is_not_found() {
            ApiError::NotFound(format!("GitHub has no pull request {owner}/{repo}#{number}"))
        } else {
            ApiError::Unavailable(err.to_string())
        }
    })?;
    let (request, open) = crate::webhook::request_of_pull(&app.config, &pull)?;
    if !open {
        return Err(ApiError::Conflict(format!("{owner}/{repo}#{number} is closed")));
    }
    app.scheduler
        .transact(async |tx| {
            let event = Event::pull_request(Kind::Deploy, request, actor, None);
            let (recorded, mut effects) = app.scheduler.apply_event(tx, &event).await?;
            let demo_id = recorded.demo.map(|d| d.id).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no demo")))?;
            sqlx::query("update demos set notify = $2 where id = $1")
                .bind(demo_id)
                .bind(notify)
                .execute(&mut **tx)
                .await?;
            let demo = demos::get_for_update(&mut **tx, demo_id).await?;
            // Started by an admin: approved by them.
            if demo.state == "awaiting_approval" {
                effects = effects.merge(app.scheduler.approve(tx, demo_id, actor, &demo.sha).await?);
            } else {
                demos::set_approval(&mut **tx, demo_id, &demo.sha, actor).await?;
            }
            Ok((demos::get_for_update(&mut **tx, demo_id).await?, effects))
        })
        .await
}

/// Deliver a recorded webhook's event again, as the new delivery `<id>.redelivery-<n>` in
/// the name of `actor`; returns its id and outcome. Judged by the event's own time, like any
/// event: stale if the demo has applied a newer one since.
pub async fn redeliver(app: &AppState, delivery_id: &str, actor: &str) -> Result<(String, String), ApiError> {
    app.scheduler
        .transact(async |tx| {
            let stored: Option<Option<sqlx::types::Json<Event>>> =
                sqlx::query_scalar("select item from webhook_deliveries where delivery_id = $1")
                    .bind(delivery_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            let Some(stored) = stored else {
                return Err(ApiError::NotFound(format!("no delivery {delivery_id}")));
            };
            let Some(sqlx::types::Json(mut event)) = stored else {
                return Err(ApiError::Conflict(format!(
                "delivery {delivery_id} asked for no work (it was only recorded): there is nothing to deliver again"
            )));
            };
            let earlier: i64 = sqlx::query_scalar(
                "select count(*) from webhook_deliveries where starts_with(delivery_id, $1 || '.redelivery-')",
            )
            .bind(delivery_id)
            .fetch_one(&mut **tx)
            .await?;
            let again = format!("{delivery_id}.redelivery-{}", earlier + 1);
            event.delivery = Some(again.clone());
            event.actor = actor.to_string();
            let (recorded, effects) = app.scheduler.apply_event(tx, &event).await?;
            Ok(((again, recorded.outcome), effects))
        })
        .await
}

fn no_demo(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no demo {id}"))
}

/// Set `owner/repo`'s variable `name` to `value`, sealed; audited by name only.
pub async fn set_secret(
    app: &AppState,
    owner: &str,
    repo: &str,
    name: &str,
    value: &str,
    actor: &str,
) -> Result<(), ApiError> {
    check_repo(owner, repo)?;
    let sealed = app.scheduler.vault.seal(owner, repo, name, value).map_err(secret_refused)?;
    let mut tx = app.db.begin().await?;
    crate::db::secrets::put(&mut *tx, owner, repo, name, &sealed, actor).await?;
    let detail = serde_json::json!({ "repo": format!("{owner}/{repo}"), "text": format!("set secret {name}") });
    audit::record(&mut *tx, actor, "secret", None, detail).await?;
    tx.commit().await?;
    Ok(())
}

/// Remove `owner/repo`'s variable `name`.
pub async fn delete_secret(app: &AppState, owner: &str, repo: &str, name: &str, actor: &str) -> Result<(), ApiError> {
    check_repo(owner, repo)?;
    crate::secrets::check_name(name).map_err(secret_refused)?;
    let mut tx = app.db.begin().await?;
    if !crate::db::secrets::delete(&mut *tx, owner, repo, name).await? {
        return Err(ApiError::NotFound(format!("{owner}/{repo} has no secret {name}")));
    }
    let detail = serde_json::json!({ "repo": format!("{owner}/{repo}"), "text": format!("deleted secret {name}") });
    audit::record(&mut *tx, actor, "secret", None, detail).await?;
    tx.commit().await?;
    Ok(())
}

/// Share `owner/repo`'s secrets with its forks' previews, or stop sharing them.
pub async fn set_secrets_for_forks(
    app: &AppState,
    owner: &str,
    repo: &str,
    shared: bool,
    actor: &str,
) -> Result<(), ApiError> {
    check_repo(owner, repo)?;
    let mut tx = app.db.begin().await?;
    let mut settings = crate::db::settings::get(&mut *tx, owner, repo).await?;
    settings.secrets_for_forks = shared;
    crate::db::settings::put(&mut *tx, owner, repo, &settings).await?;
    let detail = serde_json::json!({ "repo": format!("{owner}/{repo}"), "secrets_for_forks": shared });
    audit::record(&mut *tx, actor, "settings", None, detail).await?;
    tx.commit().await?;
    Ok(())
}

fn check_repo(owner: &str, repo: &str) -> Result<(), ApiError> {
    demofleet_common::names::validate_owner(owner).map_err(ApiError::BadRequest)?;
    demofleet_common::names::validate_repo(repo).map_err(ApiError::BadRequest)
}

fn secret_refused(err: crate::secrets::VaultError) -> ApiError {
    use crate::secrets::VaultError;
    match err {
        VaultError::NoKey | VaultError::NoTransportKey => ApiError::Unavailable(err.to_string()),
        VaultError::BadName(_) | VaultError::BadValue(_) => ApiError::BadRequest(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pull_reference;

    #[test]
    fn pull_references() {
        let expected = Some(("canonical".to_string(), "ubuntu.com".to_string(), 42));
        assert_eq!(parse_pull_reference("https://github.com/canonical/ubuntu.com/pull/42"), expected);
        assert_eq!(parse_pull_reference("https://github.com/canonical/ubuntu.com/pull/42/files"), expected);
        assert_eq!(parse_pull_reference(" canonical/ubuntu.com#42 "), expected);
        for bad in
            ["canonical/ubuntu.com", "canonical#42", "a/b#0", "a/b#x", "https://github.com/a/b/issues/1", "../x/y#1"]
        {
            assert_eq!(parse_pull_reference(bad), None, "{bad}");
        }
    }
}
