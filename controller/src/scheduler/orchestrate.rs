//! Carrying out the chains' decisions ([`crate::chain`]): each function here reads a demo's
//! record in the caller's transaction (the demo locked, then its chain), asks the decision,
//! and writes what it says through `db/` in that same transaction, messages into the outbox.
//! It returns the [`Effects`] to apply once the transaction commits.

use std::time::Instant;

use uuid::Uuid;

use super::{placement, Effects, RouteChange, Scheduler};
use crate::chain::record::{Facts, Placement, Record};
use crate::chain::write::{Decision, Refusal, Write};
use crate::chain::{self, decide, Kind};
use crate::db::chains::{self, ChainStep};
use crate::db::demos::{self, Demo};
use crate::db::events::{self, Event, Recorded};
use crate::db::outbox::{self, Outgoing};
use crate::db::{audit, settings, Tx};
use demofleet_common::wire::{Step, StepMessage, StepResult};

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

impl From<Refusal> for ActionError {
    fn from(refusal: Refusal) -> ActionError {
        ActionError::Refused(refusal.0)
    }
}

/// What an event recorded leaves to start for its demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A chain the intake made (a teardown's).
    Chain(Uuid),
    /// The deploy chain of this generation, made as it begins ([`Scheduler::begin_generation`]).
    Generation(i64),
}

impl Start {
    /// What `recorded` leaves to start, and for which demo; none if nothing.
    pub fn of(recorded: &Recorded) -> Option<(Uuid, Start)> {
        let demo = recorded.demo.as_ref()?;
        match recorded.chain {
            Some(chain) => Some((demo.id, Start::Chain(chain))),
            None if recorded.outcome == "deploy_queued" => Some((demo.id, Start::Generation(demo.generation))),
            None => None,
        }
    }
}

/// What writes are about: a demo, its chain, and the chain's planned steps (by index).
struct Target<'a> {
    demo: &'a Demo,
    chain: Uuid,
    steps: &'a [ChainStep],
}

impl Scheduler {
    /// Record `event` in the caller's transaction and start what it asks for there and then.
    /// For events of the controller's own and people's actions; webhooks go through the
    /// batching [`crate::intake::Intake`] instead.
    pub async fn apply_event(&self, tx: &mut Tx<'_>, event: &Event) -> sqlx::Result<(Recorded, Effects)> {
        let recorded =
            events::record(&mut **tx, std::slice::from_ref(event)).await?.pop().expect("one answer per event")?;
        let effects = match Start::of(&recorded) {
            Some((demo, start)) => self.begin(tx, demo, start).await?,
            None => Effects::default(),
        };
        Ok((recorded, effects))
    }

    /// Start what an event left for demo `demo_id`, in a transaction of its own, and apply
    /// what that asked for.
    pub async fn start(&self, demo_id: Uuid, start: Start) -> sqlx::Result<()> {
        self.transact(async |tx| Ok(((), self.begin(tx, demo_id, start).await?))).await
    }

    async fn begin(&self, tx: &mut Tx<'_>, demo_id: Uuid, start: Start) -> sqlx::Result<Effects> {
        match start {
            Start::Chain(chain) => self.advance(tx, chain).await,
            Start::Generation(generation) => self.begin_generation(tx, demo_id, generation).await,
        }
    }

    /// Begin the deploy chain of the demo's `generation` and advance it; nothing if the demo
    /// has moved on (a newer generation begins by its own event) or the generation has begun.
    pub async fn begin_generation(&self, tx: &mut Tx<'_>, demo_id: Uuid, generation: i64) -> sqlx::Result<Effects> {
        // The demo first, as every writer of its chains locks it.
        let Some(demo) = demos::get_for_update_opt(&mut **tx, demo_id).await? else { return Ok(Effects::default()) };
        let Some(chain) = chains::begin_generation(&mut **tx, demo_id, generation).await? else {
            return Ok(Effects::default());
        };
        // Its record is at hand: the demo as locked (making the chain did not change it),
        // the chain just made, no step stored yet.
        let steps = chain::planned(&chain, &[]);
        self.go_on(tx, Record { demo, chain, steps }).await
    }

    /// Move a chain on from where it stands ([`decide::advance`]).
    pub async fn advance(&self, tx: &mut Tx<'_>, chain_id: Uuid) -> sqlx::Result<Effects> {
        let Some(record) = self.read(tx, chain_id).await? else { return Ok(Effects::default()) };
        self.go_on(tx, record).await
    }

    /// Ask [`decide::advance`] about `record` (read, locked, in this transaction) and carry
    /// out what it says.
    async fn go_on(&self, tx: &mut Tx<'_>, record: Record) -> sqlx::Result<Effects> {
        let decision = self.decide(tx, &record, |facts| decide::advance(&record, facts)).await?;
        self.carry_out(tx, &record, decision).await
    }

    /// Record a step's result and move its chain on ([`decide::result`]).
    pub async fn record_result(&self, tx: &mut Tx<'_>, result: &StepResult) -> sqlx::Result<Effects> {
        let Some(record) = self.read(tx, result.chain_id).await? else {
            tracing::warn!(chain = %result.chain_id, "result for an unknown chain dropped");
            self.refusals.count("result", "unknown_chain");
            return Ok(Effects::default());
        };
        let decision = self.decide(tx, &record, |facts| decide::result(&record, result, facts)).await?;
        if let Decision::Ignore(why) = &decision {
            tracing::info!(chain = %result.chain_id, step = result.step.as_str(), attempt = result.attempt, host = %result.host_id, why, "step result ignored");
            self.refusals.count("result", ignored_reason(why));
        }
        self.carry_out(tx, &record, decision).await
    }

    /// Run a failed chain again from its failed step ([`decide::retry`]).
    pub async fn retry_chain(&self, tx: &mut Tx<'_>, chain_id: Uuid, actor: &str) -> Result<Effects, ActionError> {
        let (chain, demo) = self.lock(tx, chain_id).await?.ok_or(ActionError::NotFound("chain"))?;
        let writes = decide::retry(&demo, &chain, actor, &self.rules)?;
        let effects = self.write(tx, &Target { demo: &demo, chain: chain.id, steps: &[] }, writes).await?;
        Ok(effects.merge(self.advance(tx, chain.id).await?))
    }

    /// Approve commit `sha`, the head of a demo that waits for approval ([`decide::approve`]).
    pub async fn approve(
        &self,
        tx: &mut Tx<'_>,
        demo_id: Uuid,
        actor: &str,
        sha: &str,
    ) -> Result<Effects, ActionError> {
        let demo = demos::get_for_update_opt(&mut **tx, demo_id).await?.ok_or(ActionError::NotFound("demo"))?;
        let waiting = chains::awaiting_approval(&mut **tx, demo.id, demo.generation).await?;
        let (chain, writes) = decide::approve(&demo, waiting, actor, sha)?;
        let effects = self.write(tx, &Target { demo: &demo, chain, steps: &[] }, writes).await?;
        Ok(effects.merge(self.advance(tx, chain).await?))
    }

    /// Put an idle demo to sleep: a sleep chain of its current generation unroutes it and
    /// stops its container. Only a running demo with nothing under way goes to sleep.
    pub async fn sleep(&self, tx: &mut Tx<'_>, demo_id: Uuid) -> sqlx::Result<Effects> {
        self.own_chain(tx, demo_id, Kind::Sleep).await
    }

    /// Wake a sleeping demo that a request asked for: a wake chain starts its container,
    /// waits for it to answer and routes it again. Nothing happens while a chain is under way
    /// (the sleep chain still stopping it, or an earlier wake).
    pub async fn wake(&self, tx: &mut Tx<'_>, demo_id: Uuid) -> sqlx::Result<Effects> {
        self.own_chain(tx, demo_id, Kind::Wake).await
    }

    /// Whether `demo`'s author may start its current commit without asking GitHub
    /// ([`decide::authorized`], with the cache's recent answer).
    pub fn decide_locally(&self, demo: &Demo) -> Option<bool> {
        decide::authorized(demo, &self.rules, self.permissions.get(&demo.owner, &demo.repo, demo.vouched_by()))
    }

    /// A chain of the controller's own, `kind`, of the demo's current generation, begun if
    /// the demo is in the state for it and has nothing else under way ([`decide::begin_own`]).
    async fn own_chain(&self, tx: &mut Tx<'_>, demo_id: Uuid, kind: Kind) -> sqlx::Result<Effects> {
        let Some(demo) = demos::get_for_update_opt(&mut **tx, demo_id).await? else { return Ok(Effects::default()) };
        let Some(writes) = decide::begin_own(&demo, kind) else { return Ok(Effects::default()) };
        let Some(chain) = chains::create_if_idle(&mut **tx, demo.id, demo.generation, kind.as_str()).await? else {
            return Ok(Effects::default());
        };
        match kind {
            Kind::Sleep => {
                tracing::info!(demo = %demo.name, "no requests for the idle time; putting the demo to sleep")
            }
            _ => tracing::info!(demo = %demo.name, "a request for a sleeping demo; waking it"),
        }
        let effects = self.write(tx, &Target { demo: &demo, chain, steps: &[] }, writes).await?;
        Ok(effects.merge(self.advance(tx, chain).await?))
    }

    /// The chain's record, its demo and chain locked, or none if there is no such chain.
    async fn read(&self, tx: &mut Tx<'_>, chain_id: Uuid) -> sqlx::Result<Option<Record>> {
        let Some((chain, demo)) = self.lock(tx, chain_id).await? else { return Ok(None) };
        let stored = chains::steps(&mut **tx, chain.id).await?;
        let steps = chain::planned(&chain, &stored);
        Ok(Some(Record { demo, chain, steps }))
    }

    /// Lock a chain's demo, then the chain: always in this order (intake locks the demo
    /// before it supersedes chains), so concurrent transactions never deadlock.
    async fn lock(&self, tx: &mut Tx<'_>, chain_id: Uuid) -> sqlx::Result<Option<(chains::Chain, Demo)>> {
        let Some(demo) = demos::get_for_update_of_chain(&mut **tx, chain_id).await? else { return Ok(None) };
        let chain = chains::get_for_update(&mut **tx, chain_id).await?;
        Ok(chain.map(|c| (c, demo)))
    }

    /// Ask `decision` with what it reads besides the record; when it asks for a host,
    /// choose one (in this transaction: placement's lock is held until commit) and ask again.
    async fn decide(
        &self,
        tx: &mut Tx<'_>,
        record: &Record,
        decision: impl Fn(&Facts) -> Decision,
    ) -> sqlx::Result<Decision> {
        let demo = &record.demo;
        let mut facts = Facts {
            rules: &self.rules,
            author_may_write: self.permissions.get(&demo.owner, &demo.repo, demo.vouched_by()),
            placement: Placement::NotAsked,
        };
        let first = decision(&facts);
        if first != Decision::Place {
            return Ok(first);
        }
        facts.placement = Placement::Offered(self.place(tx, demo).await?);
        let second = decision(&facts);
        assert!(second != Decision::Place, "a decision offered a host asks for none");
        Ok(second)
    }

    /// The host for `demo` now: placement's choice, unless the demo is new to any host and
    /// its repository already runs as many demos as it may.
    async fn place(&self, tx: &mut Tx<'_>, demo: &Demo) -> sqlx::Result<Option<String>> {
        let began = Instant::now();
        let current = demo.host_id.as_deref();
        let candidate = placement::place(tx, current, self.host_timeout, self.min_free_disk_bytes).await?;
        self.timings.placement.observe(began.elapsed());
        let newly_placed = candidate.is_some() && current.is_none();
        if newly_placed && settings::repo_is_full(&mut **tx, &demo.owner, &demo.repo, demo.id).await? {
            return Ok(None);
        }
        Ok(candidate)
    }

    async fn carry_out(&self, tx: &mut Tx<'_>, record: &Record, decision: Decision) -> sqlx::Result<Effects> {
        match decision {
            Decision::Ignore(why) => {
                tracing::debug!(chain = %record.chain.id, status = %record.chain.status, why, "nothing to do");
                Ok(Effects::default())
            }
            Decision::Do(writes) => {
                let target = Target { demo: &record.demo, chain: record.chain.id, steps: &record.steps };
                self.write(tx, &target, writes).await
            }
            Decision::Place => unreachable!("placement is answered before a decision is carried out"),
        }
    }

    /// A launch creates the container: its message carries the repository's variables,
    /// sealed for the agent (read now, so a value set since the last push is used).
    async fn with_env(&self, tx: &mut Tx<'_>, demo: &Demo, message: &mut StepMessage) -> sqlx::Result<()> {
        if message.step == Step::Launch {
            message.demo.env = self.vault.env_for(tx, demo).await?;
        }
        Ok(())
    }

    /// Record and send `writes` about `target`, in order.
    async fn write(&self, tx: &mut Tx<'_>, target: &Target<'_>, writes: Vec<Write>) -> sqlx::Result<Effects> {
        let (demo, chain) = (target.demo, target.chain);
        let mut effects = Effects::default();
        for write in writes {
            match write {
                Write::Chain { status, error } => {
                    chains::set_status(&mut **tx, chain, status, error.as_deref()).await?
                }
                Write::Step { index, status, error, output } => {
                    chains::mark_step(&mut **tx, &target.steps[index], status, error.as_deref(), output).await?
                }
                Write::State { state, error } => demos::set_state(&mut **tx, demo.id, state, error.as_deref()).await?,
                Write::Notify => {
                    outbox::push(&mut **tx, &Outgoing::notify(demo.id)).await?;
                    effects.published = true;
                }
                Write::Routed(routed) => {
                    demos::set_routed(&mut **tx, demo.id, routed).await?;
                    effects.routes_changed = effects.routes_changed.merge(RouteChange::Demo(demo.id));
                }
                Write::Host(host) => demos::set_host(&mut **tx, demo.id, host.as_deref()).await?,
                Write::Port(port) => demos::set_host_port(&mut **tx, demo.id, port).await?,
                Write::Park => chains::park(&mut **tx, chain, demo.id).await?,
                Write::Queue { index, queue, mut message, state } => {
                    self.with_env(tx, demo, &mut message).await?;
                    let outgoing = Outgoing::step(queue, &message);
                    chains::queue_step(&mut **tx, &target.steps[index], &outgoing, state.map(|s| (demo.id, s))).await?;
                    effects.published = true;
                }
                Write::Attempt { index, result } => {
                    chains::record_attempt(&mut **tx, chain, target.steps[index].position, &result).await?
                }
                Write::Retry { index, queue, delay, mut message, error } => {
                    self.with_env(tx, demo, &mut message).await?;
                    let (step, attempt) = (message.step.as_str(), message.attempt - 1);
                    tracing::info!(demo = %demo.name, step, attempt, ?delay, %error, "step failed; retrying");
                    outbox::push(&mut **tx, &Outgoing::retry(queue, delay, &message)).await?;
                    chains::mark_step(&mut **tx, &target.steps[index], "queued", Some(&error), None).await?;
                    effects.published = true;
                }
                Write::Dead(dead) => {
                    let (step, attempt, error) = (dead.message.step.as_str(), dead.message.attempt, &dead.error);
                    tracing::warn!(demo = %demo.name, step, attempt, %error, "step failed for good");
                    outbox::push(&mut **tx, &Outgoing::dead(&dead)).await?;
                    effects.published = true;
                }
                Write::Approval { sha, actor } => demos::set_approval(&mut **tx, demo.id, &sha, &actor).await?,
                Write::ApprovedStep => chains::approve_waiting_step(&mut **tx, chain).await?,
                Write::ResetFailedStep => chains::reset_failed_step(&mut **tx, chain).await?,
                Write::Touch => demos::touch(&mut **tx, demo.id).await?,
                Write::Audit { actor, action, detail } => {
                    audit::record(&mut **tx, &actor, action, Some(demo.id), detail).await?
                }
            }
        }
        Ok(effects)
    }
}

/// The `reason` label of a step result [`decide::result`] ignored for `why`.
fn ignored_reason(why: &str) -> &'static str {
    match why {
        decide::DUPLICATE => "duplicate",
        decide::FINISHED_CHAIN => "finished_chain",
        decide::OTHER_HOST => "other_host",
        _ => "ignored",
    }
}
