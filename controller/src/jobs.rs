//! Work the controller takes from its own queue, `demofleet.controller`: agents' step
//! results, its own queued steps (`authorize`), GitHub notifications, and approvals asked
//! for in PR comments. Each message's AMQP `type` says which.
//!
//! Notifications and comment approvals call GitHub; when that fails they are retried
//! through the same TTL queues as steps, and after the last delay kept in the dead-letter
//! queue. They never touch the demo's chain: a failing notification never restarts a demo.
//!
//! Who sent a message is what RabbitMQ vouches for, its `user_id`: the controller's own
//! broker user may send anything; an enrolled host's user only results of steps it was given
//! ([`may_send`]). Anything else is dropped, counted and audited once per sender.

use std::sync::Arc;

use demofleet_common::topology;
use demofleet_common::wire::{
    Step, StepMessage, StepOutcome, StepOutput, StepResult, KIND_DEAD, KIND_RESULT, KIND_STEP, WIRE_VERSION,
};

use crate::db::outbox::{self, ApproveJob, NotifyJob, Outgoing, KIND_APPROVE, KIND_NOTIFY};
use crate::db::{audit, chains, demos, enrolments};
use crate::github::{feedback, GitHub};
use crate::scheduler::orchestrate::ActionError;
use crate::scheduler::{Effects, Scheduler};

/// What the controller's own work needs.
#[derive(Clone)]
pub struct Jobs {
    /// Records results and moves chains on.
    pub scheduler: Scheduler,
    /// The GitHub API, when credentials are configured.
    pub github: Option<Arc<GitHub>>,
    /// The controller's own broker user.
    pub controller_user: String,
}

/// Who sent a message on the controller's queue, by its broker user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// The controller's own user (and, on one machine, agents sharing it).
    Controller,
    /// The user a live enrolment gave this host.
    Host(String),
    /// Any other user, or none named.
    Unknown,
}

/// Whether `sender` may send a message of `kind` (a result's naming the step's `host`): the
/// controller anything, a host only results of its own steps. Else the refusal's reason.
pub fn may_send(sender: &Sender, kind: &str, host: Option<&str>) -> Result<(), &'static str> {
    match sender {
        Sender::Controller => Ok(()),
        Sender::Host(own) if kind == KIND_RESULT => {
            if host == Some(own.as_str()) {
                Ok(())
            } else {
                Err("another_hosts_result")
            }
        }
        Sender::Host(_) => Err("not_a_result"),
        Sender::Unknown => Err("unknown_sender"),
    }
}

impl Jobs {
    /// Who the broker user `user` (a message's `user_id`) is.
    async fn sender(&self, user: Option<&str>) -> sqlx::Result<Sender> {
        let Some(user) = user else { return Ok(Sender::Unknown) };
        if user == self.controller_user {
            return Ok(Sender::Controller);
        }
        Ok(enrolments::host_of_amqp_user(&self.scheduler.db, user).await?.map_or(Sender::Unknown, Sender::Host))
    }

    /// Count a refused message; audit it the first time its sender is refused for `reason`.
    async fn refuse(&self, kind: &str, user: Option<&str>, reason: &'static str, detail: serde_json::Value) {
        let user = user.unwrap_or("(none)");
        let detail = serde_json::json!({ "kind": kind, "user": user, "message": detail });
        self.scheduler.refusals.refuse(&self.scheduler.db, "message", reason, user, detail).await;
    }
}

/// Handle one message of the controller queue, sent by broker user `user`. An error means
/// "not done, deliver again" (the database was unreachable, say); everything else is settled
/// here.
pub async fn handle(app: &Jobs, kind: &str, user: Option<&str>, data: &[u8]) -> anyhow::Result<()> {
    let sender = app.sender(user).await?;
    if kind != KIND_RESULT {
        if let Err(reason) = may_send(&sender, kind, None) {
            app.refuse(kind, user, reason, serde_json::Value::Null).await;
            return Ok(());
        }
    }
    match kind {
        KIND_RESULT => {
            let Some(result) = parse::<StepResult>(app, kind, data, |r| r.version) else { return Ok(()) };
            if let Err(reason) = may_send(&sender, kind, Some(&result.host_id)) {
                let detail =
                    serde_json::json!({ "host": result.host_id, "demo": result.demo_id, "step": result.step.as_str() });
                app.refuse(kind, user, reason, detail).await;
                return Ok(());
            }
            record(app, &result).await
        }
        KIND_STEP => {
            let Some(message) = parse::<StepMessage>(app, kind, data, |m| m.version) else { return Ok(()) };
            if !chains::is_current(&app.scheduler.db, message.chain_id, message.demo.generation).await? {
                tracing::debug!(chain = %message.chain_id, "step of a superseded chain dropped");
                return Ok(());
            }
            let started = std::time::Instant::now();
            let outcome = run_step(app, &message).await?;
            let result = StepResult::of(&message, "controller", started.elapsed(), outcome);
            record(app, &result).await
        }
        KIND_NOTIFY => {
            let Some(job) = parse::<NotifyJob>(app, kind, data, |j| j.version) else { return Ok(()) };
            let Some(github) = &app.github else { return Ok(()) };
            match feedback::sync(&app.scheduler.db, &app.scheduler.rules.urls, github, job.demo_id).await {
                Ok(()) => Ok(()),
                Err(err) => {
                    tracing::warn!(demo = %job.demo_id, attempt = job.attempt, error = format!("{err:#}"), "notifying GitHub failed");
                    retry_later(app, KIND_NOTIFY, job.attempt, data, &err.to_string()).await
                }
            }
        }
        KIND_APPROVE => {
            let Some(job) = parse::<ApproveJob>(app, kind, data, |j| j.version) else { return Ok(()) };
            match approve_by_comment_now(app, &job).await {
                Ok(()) => Ok(()),
                Err(err) => {
                    tracing::warn!(
                        pr = job.pr,
                        attempt = job.attempt,
                        error = format!("{err:#}"),
                        "comment approval failed"
                    );
                    retry_later(app, KIND_APPROVE, job.attempt, data, &err.to_string()).await
                }
            }
        }
        other => {
            tracing::error!(kind = other, "message of an unknown type on the controller queue dropped");
            app.scheduler.refusals.count("message", "unknown_type");
            Ok(())
        }
    }
}

/// The message of `kind` in `data`, if it reads and is of this version; else dropped, logged
/// and counted (`demofleet_channel_refused_total{what="message"}`, `unreadable` or
/// `wrong_version`).
fn parse<T: serde::de::DeserializeOwned>(
    app: &Jobs,
    kind: &str,
    data: &[u8],
    version: impl Fn(&T) -> u32,
) -> Option<T> {
    match serde_json::from_slice::<T>(data) {
        Ok(value) if version(&value) == WIRE_VERSION => Some(value),
        Ok(_) => {
            tracing::error!(kind, "message of an unknown version dropped");
            app.scheduler.refusals.count("message", "wrong_version");
            None
        }
        Err(err) => {
            tracing::error!(kind, error = %err, "unreadable message dropped");
            app.scheduler.refusals.count("message", "unreadable");
            None
        }
    }
}

async fn record(app: &Jobs, result: &StepResult) -> anyhow::Result<()> {
    let scheduler = &app.scheduler;
    scheduler.transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.record_result(tx, result).await?))).await?;
    Ok(())
}

/// Controller steps that are queued rather than run inline.
async fn run_step(app: &Jobs, message: &StepMessage) -> anyhow::Result<StepOutcome> {
    match message.step {
        Step::Authorize => authorize(app, message).await,
        other => {
            Ok(StepOutcome::Failed { error: format!("{} is not a controller step", other.as_str()), retryable: false })
        }
    }
}

/// May the PR's author start a demo? What needs no GitHub call was decided when the step
/// was reached; this asks GitHub and remembers the answer for a while.
async fn authorize(app: &Jobs, message: &StepMessage) -> anyhow::Result<StepOutcome> {
    let spec = &message.demo;
    let allowed = |yes: bool| StepOutcome::Succeeded(StepOutput { awaiting_approval: !yes, ..StepOutput::default() });
    let Some(demo) = demos::get(&app.scheduler.db, spec.id).await? else {
        return Ok(StepOutcome::Failed { error: "the demo is gone".into(), retryable: false });
    };
    if let Some(decided) = app.scheduler.decide_locally(&demo) {
        return Ok(allowed(decided));
    }
    let Some(github) = &app.github else {
        return Ok(StepOutcome::Failed { error: "no GitHub client to ask".into(), retryable: false });
    };
    let user = demo.vouched_by();
    Ok(match github.permission(&spec.owner, &spec.repo, user).await {
        Ok(permission) => {
            app.scheduler.permissions.put(&spec.owner, &spec.repo, user, permission.can_write());
            allowed(permission.can_write())
        }
        Err(err) => StepOutcome::Failed { error: format!("checking the author's permission: {err}"), retryable: true },
    })
}

/// Approve the PR's demo if the commenter may write to the repository.
async fn approve_by_comment_now(app: &Jobs, job: &ApproveJob) -> anyhow::Result<()> {
    let allowed = match &app.github {
        Some(github) => github.permission(&job.owner, &job.repo, &job.commenter).await?.can_write(),
        None => false,
    };
    let actor = format!("github:{}", job.commenter);
    let mut tx = app.scheduler.db.begin().await?;
    let demo = demos::find_for_update(&mut *tx, &job.owner, &job.repo, job.pr).await?;
    let Some(demo) = demo else { return Ok(()) };
    if !allowed {
        let detail = serde_json::json!({ "reason": "commenter lacks write access" });
        audit::record(&mut *tx, &actor, "approval_refused", Some(demo.id), detail).await?;
        tx.commit().await?;
        return Ok(());
    }
    match app.scheduler.approve(&mut tx, demo.id, &actor, &job.sha).await {
        Ok(effects) => {
            tx.commit().await?;
            app.scheduler.apply(effects).await;
            Ok(())
        }
        Err(ActionError::Database(err)) => Err(err.into()),
        Err(refused) => {
            tracing::info!(pr = job.pr, reason = %refused, "comment approval approved nothing");
            let detail = serde_json::json!({ "reason": refused.to_string(), "sha": job.sha });
            audit::record(&mut *tx, &actor, "approval_refused", Some(demo.id), detail).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// Send a failed job around again through a retry queue, or to the dead-letter queue
/// when its attempts are used up.
async fn retry_later(app: &Jobs, kind: &'static str, attempt: u32, data: &[u8], error: &str) -> anyhow::Result<()> {
    let mut payload: serde_json::Value = serde_json::from_slice(data)?;
    let used = usize::try_from(attempt).unwrap_or(usize::MAX);
    let outgoing = match app.scheduler.rules.retry_delays.get(used.wrapping_sub(1)) {
        Some(delay) => {
            payload["attempt"] = (attempt + 1).into();
            Outgoing {
                exchange: topology::retry_exchange(*delay),
                routing_key: topology::CONTROLLER_QUEUE.into(),
                kind,
                payload,
            }
        }
        None => Outgoing {
            exchange: String::new(),
            routing_key: topology::DEAD_QUEUE.into(),
            kind: KIND_DEAD,
            payload: serde_json::json!({ "version": WIRE_VERSION, "kind": kind, "job": payload, "error": error }),
        },
    };
    outbox::push(&app.scheduler.db, &outgoing).await?;
    app.scheduler.apply(Effects::PUBLISHED).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use demofleet_common::wire::{KIND_RESULT, KIND_STEP};

    use super::{may_send, Sender};
    use crate::db::outbox::{KIND_APPROVE, KIND_NOTIFY};

    #[test]
    fn a_host_sends_only_results_of_its_own_steps_and_the_controller_anything() {
        let host = Sender::Host("h1".into());
        assert_eq!(may_send(&host, KIND_RESULT, Some("h1")), Ok(()));
        assert_eq!(may_send(&host, KIND_RESULT, Some("h2")), Err("another_hosts_result"));
        for kind in [KIND_STEP, KIND_NOTIFY, KIND_APPROVE, "anything"] {
            assert_eq!(may_send(&host, kind, None), Err("not_a_result"), "{kind}");
            assert_eq!(may_send(&Sender::Controller, kind, None), Ok(()), "{kind}");
            assert_eq!(may_send(&Sender::Unknown, kind, None), Err("unknown_sender"), "{kind}");
        }
        assert_eq!(may_send(&Sender::Controller, KIND_RESULT, Some("h2")), Ok(()), "agents sharing its user");
        assert_eq!(may_send(&Sender::Unknown, KIND_RESULT, Some("h1")), Err("unknown_sender"));
    }
}
