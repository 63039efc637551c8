//! Starting chains for events, advancing them step by step, and recording results.
//!
//! A chain belongs to one generation of its demo. Anything that arrives for an older
//! generation (a late result, a waiting chain) is dropped by comparing generations. An
//! event older than the newest one applied to its demo (by the event's own time, not by
//! arrival) changes nothing.

use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{DeadStep, DemoSpec, Step, StepMessage, StepOutcome, StepResult, WIRE_VERSION};

use super::{placement, Effects, RouteChange, Scheduler};
use crate::db::chains::{Chain, ChainStep};
use crate::db::demos::{self, Demo};
use crate::db::events::{self, Event, Recorded};
use crate::db::outbox::{self, Outgoing};
use crate::db::{audit, chains, settings, Tx};

/// Why an action on a chain or demo is refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Scheduler {
    /// Record `event` in the caller's transaction and advance the chain it creates there and
    /// then. For events of the controller's own (a TTL running out); webhooks go through the
    /// batching [`crate::intake::Intake`] instead.
    pub async fn apply_event(&self, tx: &mut Tx<'_>, event: &Event) -> sqlx::Result<(Recorded, Effects)> {
        let recorded =
            events::record(&mut **tx, std::slice::from_ref(event)).await?.pop().expect("one answer per event")?;
        let effects = match recorded.chain {
            Some(chain) => self.advance(tx, chain).await?,
            None => Effects::default(),
        };
        Ok((recorded, effects))
    }

    /// Advance a chain in a transaction of its own, and apply what that asked for.
    pub async fn start(&self, chain_id: Uuid) -> sqlx::Result<()> {
        self.transact(async |tx| Ok(((), self.advance(tx, chain_id).await?))).await
    }

    /// Set the demo's state and, when GitHub is configured, queue a notification of it.
    async fn transition(
        &self,
        tx: &mut Tx<'_>,
        demo_id: Uuid,
        state: &str,
        error: Option<&str>,
    ) -> sqlx::Result<Effects> {
        demos::set_state(&mut **tx, demo_id, state, error).await?;
        self.notify(tx, demo_id).await
    }

    /// Queue a GitHub notification of the demo's state, when GitHub is configured.
    async fn notify(&self, tx: &mut Tx<'_>, demo_id: Uuid) -> sqlx::Result<Effects> {
        if !self.rules.github {
            return Ok(Effects::default());
        }
        outbox::push(&mut **tx, &Outgoing::notify(demo_id)).await?;
        Ok(Effects { published: true, ..Effects::default() })
    }

    /// Run inline steps and queue the next other step, until the chain waits or ends.
    pub async fn advance(&self, tx: &mut Tx<'_>, chain_id: Uuid) -> sqlx::Result<Effects> {
        let Some((mut chain, mut demo)) = self.lock(tx, chain_id).await? else {
            return Ok(Effects::default());
        };
        if !matches!(chain.status.as_str(), "running" | "waiting") {
            return Ok(Effects::default());
        }
        if demo.generation != chain.generation {
            chains::set_status(&mut **tx, chain.id, "superseded", None).await?;
            return Ok(Effects::default());
        }
        let steps = chains::steps(&mut **tx, &chain).await?;
        // A chain just created: its demo is `pending`, `stopping` or `sleeping` now; tell
        // GitHub. (Waking up shows there only once it runs again.)
        let fresh = chain.status == "waiting" && steps.iter().all(|s| s.status == "pending" && s.attempts == 0);
        let mut effects = Effects::default();
        if fresh && chain.kind != "wake" {
            effects = self.notify(tx, demo.id).await?;
        }
        Ok(effects.merge(self.advance_loaded(tx, &mut chain, &mut demo, steps).await?))
    }

    /// [`advance`] for a chain and demo already locked and checked, with the chain's steps.
    async fn advance_loaded(
        &self,
        tx: &mut Tx<'_>,
        chain: &mut Chain,
        demo: &mut Demo,
        steps: Vec<ChainStep>,
    ) -> sqlx::Result<Effects> {
        let mut effects = Effects::default();
        let deploying = chain.kind == "deploy";
        // Once a step ran on a host, the chain's later steps need what it left there.
        let begun_on_host = steps
            .iter()
            .any(|s| s.status == "succeeded" && Step::parse(&s.name).is_some_and(|step| step.runs_on_agent()));
        for step_row in steps.iter().filter(|s| s.status != "succeeded" && s.status != "skipped") {
            if step_row.status != "pending" {
                return Ok(effects);
            }
            let step = Step::parse(&step_row.name).expect("chain steps are written from Step names");
            if step == Step::Authorize {
                match self.decide_locally(demo) {
                    Some(true) => {
                        chains::mark_step(&mut **tx, step_row, "succeeded", None, None).await?;
                        continue;
                    }
                    Some(false) => {
                        chains::mark_step(&mut **tx, step_row, "waiting", None, None).await?;
                        chains::set_status(&mut **tx, chain.id, "awaiting_approval", None).await?;
                        return Ok(effects.merge(self.transition(tx, demo.id, "awaiting_approval", None).await?));
                    }
                    None => {}
                }
            }
            if step.is_inline() {
                demos::set_routed(&mut **tx, demo.id, step == Step::Route).await?;
                chains::mark_step(&mut **tx, step_row, "succeeded", None, None).await?;
                effects.routes_changed = effects.routes_changed.merge(RouteChange::Demo(demo.id));
                continue;
            }
            let queue = if step.runs_on_agent() {
                let host = if deploying && !begun_on_host {
                    let began = std::time::Instant::now();
                    let candidate = placement::place(
                        tx,
                        demo.host_id.as_deref(),
                        self.rules.host_timeout,
                        self.rules.min_free_disk_bytes,
                    )
                    .await?;
                    self.timings.placement.observe(began.elapsed());
                    let newly_placed = candidate.is_some() && demo.host_id.is_none();
                    if newly_placed && settings::repo_is_full(&mut **tx, &demo.owner, &demo.repo, demo.id).await? {
                        None
                    } else {
                        candidate
                    }
                } else {
                    demo.host_id.clone()
                };
                let Some(host) = host else {
                    if deploying {
                        chains::park(&mut **tx, chain.id, demo.id).await?;
                        if demo.state != "pending" {
                            effects = effects.merge(self.notify(tx, demo.id).await?);
                        }
                        return Ok(effects);
                    }
                    // Never placed: there is nothing on any host to stop.
                    chains::mark_step(&mut **tx, step_row, "skipped", None, None).await?;
                    continue;
                };
                if demo.host_id.as_deref() != Some(host.as_str()) {
                    demos::set_host(&mut **tx, demo.id, Some(&host)).await?;
                    demo.host_id = Some(host.clone());
                }
                topology::host_queue(&host)
            } else {
                topology::CONTROLLER_QUEUE.to_string()
            };
            if chain.status != "running" {
                chains::set_status(&mut **tx, chain.id, "running", None).await?;
                chain.status = "running".into();
            }
            let new_state = (deploying && demo.state != "starting").then_some("starting");
            let message = self.step_message(demo, chain.id, step, step_row.attempts + 1);
            chains::queue_step(&mut **tx, step_row, &Outgoing::step(queue, &message), new_state.map(|s| (demo.id, s)))
                .await?;
            effects.published = true;
            if let Some(state) = new_state {
                demo.state = state.into();
                effects = effects.merge(self.notify(tx, demo.id).await?);
            }
            return Ok(effects);
        }
        chains::set_status(&mut **tx, chain.id, "succeeded", None).await?;
        let state = match chain.kind.as_str() {
            "deploy" | "wake" => "running",
            // Asleep since the chain began.
            "sleep" => return Ok(effects),
            _ => {
                demos::set_host(&mut **tx, demo.id, None).await?;
                "stopped"
            }
        };
        Ok(effects.merge(self.transition(tx, demo.id, state, None).await?))
    }

    /// Put an idle demo to sleep: a sleep chain of its current generation unroutes it and
    /// stops its container. Only a running demo with nothing under way goes to sleep.
    pub async fn sleep(&self, tx: &mut Tx<'_>, demo_id: Uuid) -> sqlx::Result<Effects> {
        let Some(demo) = self.own_chain(tx, demo_id, "running", "sleep", "idle").await? else {
            return Ok(Effects::default());
        };
        tracing::info!(demo = %demo.0, "no requests for the idle time; putting the demo to sleep");
        demos::set_state(&mut **tx, demo_id, "sleeping", None).await?;
        self.advance(tx, demo.1).await
    }

    /// Wake a sleeping demo that a request asked for: a wake chain starts its container, waits
    /// for it to answer and routes it again. Nothing happens while a chain is under way (the
    /// sleep chain still stopping it, or an earlier wake).
    pub async fn wake(&self, tx: &mut Tx<'_>, demo_id: Uuid) -> sqlx::Result<Effects> {
        let Some(demo) = self.own_chain(tx, demo_id, "sleeping", "wake", "visitor").await? else {
            return Ok(Effects::default());
        };
        tracing::info!(demo = %demo.0, "a request for a sleeping demo; waking it");
        demos::touch(&mut **tx, demo_id).await?;
        self.advance(tx, demo.1).await
    }

    /// A chain of the controller's own (`kind`, same generation) for a placed demo that should
    /// run, is `state` and has nothing under way, audited as `actor`; its name and the chain.
    async fn own_chain(
        &self,
        tx: &mut Tx<'_>,
        demo_id: Uuid,
        state: &str,
        kind: &str,
        actor: &str,
    ) -> sqlx::Result<Option<(String, Uuid)>> {
        let Some(demo) = demos::get_for_update_opt(&mut **tx, demo_id).await? else { return Ok(None) };
        if demo.desired != "running" || demo.state != state || demo.host_id.is_none() {
            return Ok(None);
        }
        let Some(chain) = chains::create_if_idle(&mut **tx, demo.id, demo.generation, kind).await? else {
            return Ok(None);
        };
        audit::record(&mut **tx, actor, kind, Some(demo.id), serde_json::json!({ "generation": demo.generation }))
            .await?;
        Ok(Some((demo.name, chain)))
    }

    /// Record a step's result and move its chain on: next step, retry, approval or failure.
    pub async fn record_result(&self, tx: &mut Tx<'_>, result: &StepResult) -> sqlx::Result<Effects> {
        let Some((chain, demo)) = self.lock(tx, result.chain_id).await? else {
            tracing::warn!(chain = %result.chain_id, "result for an unknown chain dropped");
            return Ok(Effects::default());
        };
        if chain.status != "running" || chain.generation != result.generation {
            tracing::debug!(chain = %chain.id, status = %chain.status, "result for a finished or superseded chain dropped");
            return Ok(Effects::default());
        }
        if demo.generation != chain.generation {
            chains::set_status(&mut **tx, chain.id, "superseded", None).await?;
            return Ok(Effects::default());
        }
        let mut steps = chains::steps(&mut **tx, &chain).await?;
        let current = steps.iter().position(|s| s.status != "succeeded" && s.status != "skipped");
        let Some(index) = current.filter(|i| {
            let s = &steps[*i];
            s.status == "queued" && s.name == result.step.as_str() && i64::from(s.attempts) == i64::from(result.attempt)
        }) else {
            tracing::debug!(chain = %chain.id, step = result.step.as_str(), "duplicate or out-of-order result dropped");
            return Ok(Effects::default());
        };
        let step_row = steps[index].clone();
        chains::record_attempt(&mut **tx, chain.id, step_row.position, result).await?;
        match &result.outcome {
            StepOutcome::Succeeded(output) if output.awaiting_approval => {
                chains::mark_step(&mut **tx, &step_row, "waiting", None, None).await?;
                chains::set_status(&mut **tx, chain.id, "awaiting_approval", None).await?;
                self.transition(tx, demo.id, "awaiting_approval", None).await
            }
            StepOutcome::Succeeded(output) => {
                let output_json = serde_json::to_value(output).ok();
                chains::mark_step(&mut **tx, &step_row, "succeeded", None, output_json).await?;
                // The route follows a new container only once it answers its health check.
                if let Some(port) = output.host_port.filter(|_| result.step == Step::Health) {
                    demos::set_host_port(&mut **tx, demo.id, port).await?;
                }
                steps[index].status = "succeeded".into();
                let (mut chain, mut demo) = (chain, demo);
                self.advance_loaded(tx, &mut chain, &mut demo, steps).await
            }
            StepOutcome::Failed { error, retryable } => {
                let used = usize::try_from(step_row.attempts - step_row.budget_from).unwrap_or(usize::MAX);
                let message = self.step_message(&demo, chain.id, result.step, step_row.attempts + 1);
                let queue = match &demo.host_id {
                    Some(host) if result.step.runs_on_agent() => topology::host_queue(host),
                    _ => topology::CONTROLLER_QUEUE.to_string(),
                };
                if let Some(delay) = self.rules.retry_delays.get(used.wrapping_sub(1)).filter(|_| *retryable) {
                    tracing::info!(demo = %demo.name, step = result.step.as_str(), attempt = result.attempt, ?delay, %error, "step failed; retrying");
                    outbox::push(&mut **tx, &Outgoing::retry(queue, *delay, &message)).await?;
                    chains::mark_step(&mut **tx, &step_row, "queued", Some(error), None).await?;
                    return Ok(Effects { published: true, ..Effects::default() });
                }
                tracing::warn!(demo = %demo.name, step = result.step.as_str(), attempt = result.attempt, %error, "step failed for good");
                chains::mark_step(&mut **tx, &step_row, "failed", Some(error), None).await?;
                let summary = format!("{} failed: {error}", result.step.as_str());
                chains::set_status(&mut **tx, chain.id, "failed", Some(&summary)).await?;
                let dead = DeadStep {
                    version: WIRE_VERSION,
                    message: StepMessage { attempt: result.attempt, ..message },
                    error: error.clone(),
                };
                outbox::push(&mut **tx, &Outgoing::dead(&dead)).await?;
                let effects = self.transition(tx, demo.id, "failed", Some(&summary)).await?;
                Ok(effects.merge(Effects { published: true, ..Effects::default() }))
            }
        }
    }

    /// Run a failed chain again from its failed step, with a fresh retry budget.
    pub async fn retry_chain(&self, tx: &mut Tx<'_>, chain_id: Uuid, actor: &str) -> Result<Effects, ActionError> {
        let (chain, demo) = self.lock(tx, chain_id).await?.ok_or(ActionError::NotFound("chain"))?;
        if chain.status != "failed" {
            return Err(ActionError::Refused(format!(
                "only failed chains can be retried; this one is {}",
                chain.status
            )));
        }
        if demo.generation != chain.generation {
            return Err(ActionError::Refused(
                "the demo has moved on to a newer generation; this chain is superseded".into(),
            ));
        }
        chains::reset_failed_step(&mut **tx, chain.id).await?;
        chains::set_status(&mut **tx, chain.id, "running", None).await?;
        let state = match chain.kind.as_str() {
            "deploy" => "starting",
            "teardown" => "stopping",
            _ => "sleeping",
        };
        let effects = self.transition(tx, demo.id, state, None).await?;
        audit::record(&mut **tx, actor, "retry", Some(demo.id), serde_json::json!({ "chain": chain.id })).await?;
        Ok(effects.merge(self.advance(tx, chain.id).await?))
    }

    /// Approve the head commit of a demo that waits for approval, and let its chain go on.
    pub async fn approve(&self, tx: &mut Tx<'_>, demo_id: Uuid, actor: &str) -> Result<Effects, ActionError> {
        let demo = demos::get_for_update_opt(&mut **tx, demo_id).await?.ok_or(ActionError::NotFound("demo"))?;
        if demo.state != "awaiting_approval" {
            return Err(ActionError::Refused(format!("the demo is {}, not awaiting approval", demo.state)));
        }
        let chain = chains::awaiting_approval(&mut **tx, demo.id, demo.generation)
            .await?
            .ok_or_else(|| ActionError::Refused("no chain of the current generation awaits approval".into()))?;
        demos::set_approval(&mut **tx, demo.id, &demo.sha, actor).await?;
        chains::approve_waiting_step(&mut **tx, chain).await?;
        chains::set_status(&mut **tx, chain, "running", None).await?;
        let detail = serde_json::json!({ "sha": demo.sha, "generation": demo.generation });
        audit::record(&mut **tx, actor, "approve", Some(demo.id), detail).await?;
        Ok(self.advance(tx, chain).await?)
    }

    /// Lock a chain's demo, then the chain: always in this order (intake locks the demo before
    /// it supersedes chains), so concurrent transactions never deadlock.
    async fn lock(&self, tx: &mut Tx<'_>, chain_id: Uuid) -> sqlx::Result<Option<(Chain, Demo)>> {
        let Some(demo_id) = chains::demo_of(&mut **tx, chain_id).await? else { return Ok(None) };
        let demo = demos::get_for_update(&mut **tx, demo_id).await?;
        let chain = chains::get_for_update(&mut **tx, chain_id).await?;
        Ok(chain.map(|c| (c, demo)))
    }

    fn step_message(&self, demo: &Demo, chain_id: Uuid, step: Step, attempt: i32) -> StepMessage {
        let host_id = if step.runs_on_agent() { demo.host_id.clone().unwrap_or_default() } else { "controller".into() };
        StepMessage {
            version: WIRE_VERSION,
            chain_id,
            step,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            host_id,
            demo: self.spec(demo),
        }
    }

    /// What a step is told about a demo.
    pub fn spec(&self, demo: &Demo) -> DemoSpec {
        let urls = &self.rules.urls;
        let hostname = urls.hostname(&demo.name);
        DemoSpec {
            id: demo.id,
            name: demo.name.clone(),
            owner: demo.owner.clone(),
            repo: demo.repo.clone(),
            pr: u64::try_from(demo.pr).unwrap_or_default(),
            sha: demo.sha.clone(),
            clone_url: demo.clone_url.clone(),
            url: urls.url(&hostname),
            hostname,
            github_user: demo.github_user.clone(),
            generation: demo.generation,
        }
    }

    /// Whether `demo`'s author may start its current commit, when that needs no GitHub call:
    /// an approval of this very commit, no GitHub configured (then the trusted authors), or
    /// a recent answer in the cache; `None` when GitHub must be asked.
    pub fn decide_locally(&self, demo: &Demo) -> Option<bool> {
        if demo.approved_sha.as_deref() == Some(demo.sha.as_str()) {
            return Some(true);
        }
        if !self.rules.github {
            let user = &demo.github_user;
            return Some(self.rules.trusted_authors.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(user)));
        }
        self.permissions.get(&demo.owner, &demo.repo, &demo.github_user)
    }
}
