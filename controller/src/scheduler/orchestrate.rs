//! Starting chains for events, advancing them step by step, and recording agents' results.
//!
//! A chain belongs to one generation of its demo. Anything that arrives for an older
//! generation (a late result, a waiting chain) is dropped by comparing generations.

use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{DeadStep, DemoSpec, Step, StepMessage, StepOutcome, StepResult, WIRE_VERSION};

use super::{placement, Effects};
use crate::db::demos::{self, Demo, DeployRequest};
use crate::db::outbox::{self, Outgoing};
use crate::db::{audit, chains, Tx};
use crate::state::AppState;

/// Ask for `req`'s demo to run its head commit, as a new generation.
pub async fn deploy(
    tx: &mut Tx<'_>,
    app: &AppState,
    req: &DeployRequest,
    delivery_id: Option<&str>,
) -> sqlx::Result<(Demo, Effects)> {
    let demo = demos::upsert_for_deploy(&mut **tx, req).await?;
    let chain = chains::create(tx, demo.id, demo.generation, "deploy", &Step::DEPLOY, delivery_id).await?;
    let effects = advance(tx, app, chain).await?;
    Ok((demo, effects))
}

/// Ask for the demo of `owner/repo#pr` to be torn down. `None` when there is no such demo.
pub async fn teardown(
    tx: &mut Tx<'_>,
    app: &AppState,
    owner: &str,
    repo: &str,
    pr: i64,
    delivery_id: Option<&str>,
) -> sqlx::Result<Option<(Demo, Effects)>> {
    let Some(demo) = demos::mark_for_teardown(&mut **tx, owner, repo, pr).await? else {
        return Ok(None);
    };
    let chain = chains::create(tx, demo.id, demo.generation, "teardown", &Step::TEARDOWN, delivery_id).await?;
    let effects = advance(tx, app, chain).await?;
    Ok(Some((demo, effects)))
}

/// Run controller steps and queue the next agent step, until the chain waits or ends.
pub async fn advance(tx: &mut Tx<'_>, app: &AppState, chain_id: Uuid) -> sqlx::Result<Effects> {
    let mut effects = Effects::default();
    let Some(chain) = chains::get_for_update(&mut **tx, chain_id).await? else {
        return Ok(effects);
    };
    if !matches!(chain.status.as_str(), "running" | "waiting") {
        return Ok(effects);
    }
    let mut demo = demos::get_for_update(&mut **tx, chain.demo_id).await?;
    if demo.generation != chain.generation {
        chains::set_status(&mut **tx, chain.id, "superseded", None).await?;
        return Ok(effects);
    }
    let deploying = chain.kind == "deploy";
    loop {
        let Some(step_row) = chains::next_step(&mut **tx, chain.id).await? else {
            chains::set_status(&mut **tx, chain.id, "succeeded", None).await?;
            if deploying {
                demos::set_state(&mut **tx, demo.id, "running", None).await?;
            } else {
                demos::set_state(&mut **tx, demo.id, "stopped", None).await?;
                demos::set_host(&mut **tx, demo.id, None).await?;
            }
            return Ok(effects);
        };
        if step_row.status == "queued" {
            return Ok(effects);
        }
        let step = Step::parse(&step_row.name).expect("chain steps are written from Step names");
        if !step.runs_on_agent() {
            demos::set_routed(&mut **tx, demo.id, step == Step::Route).await?;
            chains::mark_step(&mut **tx, chain.id, step_row.position, "succeeded", None, None).await?;
            effects.routes_changed = true;
            continue;
        }
        let host = if deploying {
            placement::place(tx, demo.host_id.as_deref(), app.config.host_timeout).await?
        } else {
            demo.host_id.clone()
        };
        let Some(host) = host else {
            if deploying {
                chains::set_status(&mut **tx, chain.id, "waiting", None).await?;
                demos::set_state(&mut **tx, demo.id, "pending", None).await?;
                return Ok(effects);
            }
            // Never placed: there is nothing on any host to stop.
            chains::mark_step(&mut **tx, chain.id, step_row.position, "skipped", None, None).await?;
            continue;
        };
        if demo.host_id.as_deref() != Some(host.as_str()) {
            demos::set_host(&mut **tx, demo.id, Some(&host)).await?;
            demo.host_id = Some(host.clone());
        }
        chains::set_status(&mut **tx, chain.id, "running", None).await?;
        if deploying && demo.state != "starting" {
            demos::set_state(&mut **tx, demo.id, "starting", None).await?;
            demo.state = "starting".into();
        }
        let attempt = step_row.attempts + 1;
        let message = step_message(app, &demo, chain.id, step, attempt, &host);
        outbox::push(&mut **tx, &Outgoing::step(topology::host_queue(&host), &message)).await?;
        chains::mark_step(&mut **tx, chain.id, step_row.position, "queued", None, None).await?;
        effects.published = true;
        return Ok(effects);
    }
}

/// Record an agent's result for a step and move its chain on.
pub async fn record_result(tx: &mut Tx<'_>, app: &AppState, result: &StepResult) -> sqlx::Result<Effects> {
    let Some(chain) = chains::get_for_update(&mut **tx, result.chain_id).await? else {
        tracing::warn!(chain = %result.chain_id, "result for an unknown chain dropped");
        return Ok(Effects::default());
    };
    if chain.status != "running" || chain.generation != result.generation {
        tracing::debug!(chain = %chain.id, status = %chain.status, "result for a finished or superseded chain dropped");
        return Ok(Effects::default());
    }
    let demo = demos::get_for_update(&mut **tx, chain.demo_id).await?;
    if demo.generation != chain.generation {
        chains::set_status(&mut **tx, chain.id, "superseded", None).await?;
        return Ok(Effects::default());
    }
    let current = chains::next_step(&mut **tx, chain.id).await?;
    let Some(step_row) = current.filter(|s| {
        s.status == "queued" && s.name == result.step.as_str() && i64::from(s.attempts) == i64::from(result.attempt)
    }) else {
        tracing::debug!(chain = %chain.id, step = result.step.as_str(), "duplicate or out-of-order result dropped");
        return Ok(Effects::default());
    };
    chains::record_attempt(&mut **tx, chain.id, step_row.position, result).await?;
    match &result.outcome {
        StepOutcome::Succeeded(output) => {
            let output_json = serde_json::to_value(output).ok();
            chains::mark_step(&mut **tx, chain.id, step_row.position, "succeeded", None, output_json).await?;
            if let Some(port) = output.host_port {
                demos::set_host_port(&mut **tx, demo.id, port).await?;
            }
            advance(tx, app, chain.id).await
        }
        StepOutcome::Failed { error, retryable } => {
            let used = usize::try_from(step_row.attempts - step_row.budget_from).unwrap_or(usize::MAX);
            let host = demo.host_id.clone().unwrap_or_else(|| result.host_id.clone());
            let message = step_message(app, &demo, chain.id, result.step, step_row.attempts + 1, &host);
            if let Some(delay) = app.config.retry_delays.get(used.wrapping_sub(1)).filter(|_| *retryable) {
                tracing::info!(demo = %demo.name, step = result.step.as_str(), attempt = result.attempt, ?delay, %error, "step failed; retrying");
                let queue = topology::host_queue(&host);
                outbox::push(&mut **tx, &Outgoing::retry(queue, *delay, &message)).await?;
                chains::mark_step(&mut **tx, chain.id, step_row.position, "queued", Some(error), None).await?;
                return Ok(Effects { published: true, ..Effects::default() });
            }
            tracing::warn!(demo = %demo.name, step = result.step.as_str(), attempt = result.attempt, %error, "step failed for good");
            chains::mark_step(&mut **tx, chain.id, step_row.position, "failed", Some(error), None).await?;
            let summary = format!("{} failed: {error}", result.step.as_str());
            chains::set_status(&mut **tx, chain.id, "failed", Some(&summary)).await?;
            demos::set_state(&mut **tx, demo.id, "failed", Some(&summary)).await?;
            let dead = DeadStep {
                version: WIRE_VERSION,
                message: StepMessage { attempt: result.attempt, ..message },
                error: error.clone(),
            };
            outbox::push(&mut **tx, &Outgoing::dead(&dead)).await?;
            Ok(Effects { published: true, ..Effects::default() })
        }
    }
}

/// Run a failed chain again from its failed step, with a fresh retry budget.
pub async fn retry_chain(tx: &mut Tx<'_>, app: &AppState, chain_id: Uuid, actor: &str) -> Result<Effects, RetryError> {
    let chain = chains::get_for_update(&mut **tx, chain_id).await?.ok_or(RetryError::NotFound)?;
    if chain.status != "failed" {
        return Err(RetryError::NotFailed(chain.status));
    }
    let demo = demos::get_for_update(&mut **tx, chain.demo_id).await?;
    if demo.generation != chain.generation {
        return Err(RetryError::Superseded);
    }
    chains::reset_failed_step(&mut **tx, chain.id).await?;
    chains::set_status(&mut **tx, chain.id, "running", None).await?;
    let state = if chain.kind == "deploy" { "starting" } else { "stopping" };
    demos::set_state(&mut **tx, demo.id, state, None).await?;
    audit::record(&mut **tx, actor, "retry", Some(demo.id), serde_json::json!({ "chain": chain.id })).await?;
    Ok(advance(tx, app, chain.id).await?)
}

/// Why a chain cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no such chain")]
    NotFound,
    #[error("only failed chains can be retried; this one is {0}")]
    NotFailed(String),
    #[error("the demo has moved on to a newer generation; this chain is superseded")]
    Superseded,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn step_message(app: &AppState, demo: &Demo, chain_id: Uuid, step: Step, attempt: i32, host: &str) -> StepMessage {
    StepMessage {
        version: WIRE_VERSION,
        chain_id,
        step,
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        host_id: host.to_string(),
        demo: spec(app, demo),
    }
}

/// What the agent is told about a demo.
pub fn spec(app: &AppState, demo: &Demo) -> DemoSpec {
    let hostname = app.urls.hostname(&demo.name);
    DemoSpec {
        id: demo.id,
        name: demo.name.clone(),
        owner: demo.owner.clone(),
        repo: demo.repo.clone(),
        pr: u64::try_from(demo.pr).unwrap_or_default(),
        sha: demo.sha.clone(),
        clone_url: demo.clone_url.clone(),
        url: app.urls.url(&hostname),
        hostname,
        github_user: demo.github_user.clone(),
        generation: demo.generation,
    }
}
