//! Telling a pull request about its demo: a Deployment per head commit with statuses, a
//! commit status, and ONE comment created once and edited in place. Idempotent: the last
//! state sent is remembered and a repeated notification sends nothing.

use sqlx::FromRow;
use uuid::Uuid;

use super::GitHub;
use crate::db::demos::{self, Demo};
use crate::urls::DemoUrls;

#[derive(Debug, Default, FromRow)]
struct Feedback {
    comment_id: Option<i64>,
    deployment_id: Option<i64>,
    deployment_sha: Option<String>,
    synced: Option<String>,
}

/// Bring GitHub up to date with the demo's current state.
pub async fn sync(db: &sqlx::PgPool, urls: &DemoUrls, github: &GitHub, demo_id: Uuid) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    // The row lock serialises notifications of one demo across controllers.
    sqlx::query("insert into github_feedback (demo_id) values ($1) on conflict do nothing")
        .bind(demo_id)
        .execute(&mut *tx)
        .await?;
    let mut feedback: Feedback = sqlx::query_as(
        "select comment_id, deployment_id, deployment_sha, synced from github_feedback where demo_id = $1 for update",
    )
    .bind(demo_id)
    .fetch_one(&mut *tx)
    .await?;
    let Some(demo) = demos::get(&mut *tx, demo_id).await? else { return Ok(()) };
    if !demo.notify {
        // Started by hand with GitHub kept out of it.
        return Ok(());
    }
    let key = format!("{}:{}:{}", demo.state, demo.generation, demo.sha);
    if feedback.synced.as_deref() == Some(key.as_str()) {
        return Ok(());
    }
    let url = urls.url(&urls.hostname(&demo.name));
    let (owner, repo) = (demo.owner.as_str(), demo.repo.as_str());
    let view = StateView::of(&demo);

    if let Some(deployment_state) = view.deployment {
        let deployment = match (feedback.deployment_id, &feedback.deployment_sha) {
            (Some(id), Some(sha)) if *sha == demo.sha || deployment_state == "inactive" => Some(id),
            _ if deployment_state == "inactive" => None,
            _ => {
                let environment = format!("demo-pr-{}", demo.pr);
                let id = github.create_deployment(owner, repo, &demo.sha, &environment).await?;
                feedback.deployment_id = Some(id);
                feedback.deployment_sha = Some(demo.sha.clone());
                Some(id)
            }
        };
        if let Some(id) = deployment {
            let environment_url = (deployment_state == "success").then_some(url.as_str());
            github.deployment_status(owner, repo, id, deployment_state, environment_url, view.description).await?;
        }
    }
    if let Some(commit_state) = view.commit {
        let target = (commit_state == "success").then_some(url.as_str());
        github.commit_status(owner, repo, &demo.sha, commit_state, target, view.description).await?;
    }
    let body = comment_body(&demo, &url, &view);
    let edited = match feedback.comment_id {
        Some(id) => match github.edit_comment(owner, repo, id, &body).await {
            Ok(()) => true,
            Err(err) if err.is_not_found() => false,
            Err(err) => return Err(err.into()),
        },
        None => false,
    };
    if !edited {
        feedback.comment_id = Some(github.create_comment(owner, repo, demo.pr, &body).await?);
    }
    sqlx::query(
        "update github_feedback set comment_id = $2, deployment_id = $3, deployment_sha = $4, synced = $5 where demo_id = $1",
    )
    .bind(demo_id)
    .bind(feedback.comment_id)
    .bind(feedback.deployment_id)
    .bind(&feedback.deployment_sha)
    .bind(&key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What a demo state means in GitHub's terms.
struct StateView {
    deployment: Option<&'static str>,
    commit: Option<&'static str>,
    description: &'static str,
    headline: &'static str,
}

impl StateView {
    fn of(demo: &Demo) -> StateView {
        let (deployment, commit, description, headline) = match demo.state.as_str() {
            "pending" => (Some("queued"), Some("pending"), "Waiting for a free host", "is waiting for a free host"),
            "starting" => (Some("in_progress"), Some("pending"), "Building the demo", "is being built"),
            "running" => (Some("success"), Some("success"), "Demo is running", "is running"),
            "failed" => (Some("failure"), Some("failure"), "Demo failed", "failed"),
            "awaiting_approval" => {
                (None, Some("pending"), "Waiting for approval", "waits for a maintainer's approval of its head commit")
            }
            "sleeping" => (None, None, "Demo is asleep", "is asleep and wakes on the next visit"),
            _ => (Some("inactive"), None, "Demo stopped", "has been stopped"),
        };
        StateView { deployment, commit, description, headline }
    }
}

fn comment_body(demo: &Demo, url: &str, view: &StateView) -> String {
    let short = &demo.sha[..demo.sha.len().min(7)];
    let mut body =
        format!("<!-- demofleet:{} -->\n**demofleet**: the demo of this pull request {}.\n\n", demo.id, view.headline);
    if matches!(demo.state.as_str(), "running" | "sleeping") {
        body.push_str(&format!("- Open it: {url}\n"));
    }
    body.push_str(&format!("- Commit: `{short}`\n- State: `{}`\n", demo.state));
    if demo.state == "awaiting_approval" {
        // The full commit: an approval names what it approves, never a later push.
        body.push_str(&format!("\nTo start it, a maintainer comments:\n\n```\n/demo approve {}\n```\n", demo.sha));
    }
    if let Some(error) = demo.error.as_deref().filter(|_| demo.state == "failed") {
        let error: String = error.chars().take(600).collect();
        body.push_str(&format!("\n```\n{}\n```\n", error.replace("```", "'''")));
    }
    body
}
