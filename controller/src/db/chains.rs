//! Chains and their steps.

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

use demofleet_common::wire::{StepOutcome, StepResult};

use super::outbox::Outgoing;

#[derive(Debug, Clone, FromRow)]
pub struct Chain {
    pub id: Uuid,
    pub demo_id: Uuid,
    pub generation: i64,
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct ChainStep {
    pub chain_id: Uuid,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub attempts: i32,
    pub budget_from: i32,
}

/// Park a chain until a host is free, and mark its demo `pending`, in one round trip.
pub async fn park(db: impl PgExecutor<'_>, chain_id: Uuid, demo_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "with chain as (update chains set status = 'waiting', finished_at = null where id = $1)
         update demos set state = 'pending', error = null, updated_at = now() where id = $2",
    )
    .bind(chain_id)
    .bind(demo_id)
    .execute(db)
    .await?;
    Ok(())
}

/// The steps of a chain stored so far (those reached), in order. [`crate::chain::planned`]
/// adds the rest.
pub async fn steps(db: impl PgExecutor<'_>, chain_id: Uuid) -> sqlx::Result<Vec<ChainStep>> {
    sqlx::query_as(
        "select chain_id, position, name, status, attempts, budget_from from chain_steps
         where chain_id = $1 order by position",
    )
    .bind(chain_id)
    .fetch_all(db)
    .await
}

/// Mark a step queued and put its message in the outbox (and, when given, set the demo's
/// state), in one round trip.
pub async fn queue_step(
    db: impl PgExecutor<'_>,
    step: &ChainStep,
    message: &Outgoing,
    new_state: Option<(Uuid, &str)>,
) -> sqlx::Result<()> {
    sqlx::query(
        "with queued as (
             insert into chain_steps (chain_id, position, name, status, attempts, queued_at)
             values ($1, $2, $9, 'queued', 1, now())
             on conflict (chain_id, position) do update set status = 'queued', error = null,
                 attempts = chain_steps.attempts + 1, queued_at = now()
         ), state as (
             update demos set state = $8, error = null, updated_at = now() where id = $7 and $8 is not null
         )
         insert into outbox (exchange, routing_key, kind, payload) values ($3, $4, $5, $6)",
    )
    .bind(step.chain_id)
    .bind(step.position)
    .bind(&message.exchange)
    .bind(&message.routing_key)
    .bind(message.kind)
    .bind(&message.payload)
    .bind(new_state.map(|(id, _)| id))
    .bind(new_state.map(|(_, s)| s))
    .bind(&step.name)
    .execute(db)
    .await?;
    Ok(())
}

/// True while the chain runs and belongs to its demo's newest generation.
pub async fn is_current(db: impl PgExecutor<'_>, chain_id: Uuid, generation: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from chains c join demos d on d.id = c.demo_id
                        where c.id = $1 and c.status = 'running' and c.generation = $2 and d.generation = $2)",
    )
    .bind(chain_id)
    .bind(generation)
    .fetch_one(db)
    .await
}

pub async fn get_for_update(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Chain>> {
    sqlx::query_as("select id, demo_id, generation, kind, status from chains where id = $1 for update")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Set a step's status (creating its row: steps are stored from when they are reached).
pub async fn mark_step(
    db: impl PgExecutor<'_>,
    step: &ChainStep,
    status: &str,
    error: Option<&str>,
    output: Option<serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into chain_steps (chain_id, position, name, status, error, output, attempts, queued_at, finished_at)
         values ($1, $2, $6, $3, $4, $5,
                 case when $3 = 'queued' then 1 else 0 end,
                 case when $3 = 'queued' then now() end,
                 case when $3 in ('succeeded', 'failed', 'skipped') then now() end)
         on conflict (chain_id, position) do update set status = $3, error = $4,
             output = coalesce($5, chain_steps.output),
             attempts = case when $3 = 'queued' then chain_steps.attempts + 1 else chain_steps.attempts end,
             queued_at = case when $3 = 'queued' then now() else chain_steps.queued_at end,
             finished_at = case when $3 in ('succeeded', 'failed', 'skipped') then now() else chain_steps.finished_at end",
    )
    .bind(step.chain_id)
    .bind(step.position)
    .bind(status)
    .bind(error)
    .bind(output)
    .bind(&step.name)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_status(db: impl PgExecutor<'_>, id: Uuid, status: &str, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "update chains set status = $2, error = $3,
             finished_at = case when $2 in ('succeeded', 'failed', 'superseded') then now() else null end
         where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// A new `waiting` chain of `kind` for the demo's `generation`, unless the demo has a
/// chain under way (waiting, running or awaiting approval). Call with the demo locked.
pub async fn create_if_idle(
    db: impl PgExecutor<'_>,
    demo_id: Uuid,
    generation: i64,
    kind: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "insert into chains (id, demo_id, generation, kind, status)
         select gen_random_uuid(), $1, $2, $3, 'waiting'
         where not exists (select 1 from chains
                           where demo_id = $1 and status in ('waiting', 'running', 'awaiting_approval'))
         returning id",
    )
    .bind(demo_id)
    .bind(generation)
    .bind(kind)
    .fetch_optional(db)
    .await
}

/// Begin the deploy chain of the demo's `generation` (migrations 0030 and 0031): a new
/// `waiting` chain named by the delivery that brought the generation, that delivery naming it,
/// and the `start` audit row of whoever asked for the generation. None when the demo has moved
/// on (a newer generation, or it is to stop) or the generation has a chain already, or the
/// demo is no deploy waiting to begin (it left `pending`). Call with the demo locked.
pub async fn begin_generation(db: impl PgExecutor<'_>, demo_id: Uuid, generation: i64) -> sqlx::Result<Option<Chain>> {
    sqlx::query_as(
        "with made as (
             insert into chains (id, demo_id, generation, kind, status, delivery_id)
             select gen_random_uuid(), d.id, d.generation, 'deploy', 'waiting', d.delivery_id from demos d
             where d.id = $1 and d.generation = $2 and d.desired = 'running' and d.state = 'pending'
               and not exists (select 1 from chains c where c.demo_id = d.id and c.generation = d.generation)
             returning id, demo_id, generation, kind, status, delivery_id
         ), named as (
             update webhook_deliveries w set chain_id = m.id from made m where w.delivery_id = m.delivery_id
         ), audited as (
             -- A generation recorded before migration 0031 names no one who asked for it.
             insert into audit_events (actor, action, demo_id, detail)
             select coalesce(d.started_by, 'unknown'), 'start', d.id,
                    jsonb_build_object('generation', d.generation, 'sha', d.sha, 'delivery', d.delivery_id)
             from made m join demos d on d.id = $1
         )
         select id, demo_id, generation, kind, status from made",
    )
    .bind(demo_id)
    .bind(generation)
    .fetch_optional(db)
    .await
}

/// A step of a running chain sent and not answered: the chain's, the step's and the host's
/// (the demo's, where an agent's step went) names.
#[derive(Debug, Clone, FromRow)]
pub struct Unanswered {
    pub chain_id: Uuid,
    pub demo_id: Uuid,
    pub generation: i64,
    pub name: String,
    pub attempts: i32,
    pub host_id: Option<String>,
}

/// The steps of running chains queued longer ago than `deadline` and not answered, oldest
/// first.
pub async fn unanswered(
    db: impl PgExecutor<'_>,
    deadline: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<Unanswered>> {
    sqlx::query_as(
        "select c.id as chain_id, c.demo_id, c.generation, s.name, s.attempts, d.host_id
         from chains c join chain_steps s on s.chain_id = c.id join demos d on d.id = c.demo_id
         where c.status = 'running' and s.status = 'queued' and s.queued_at < now() - make_interval(secs => $1)
         order by s.queued_at limit $2",
    )
    .bind(deadline.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Chains waiting for a host, oldest first.
pub async fn waiting(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("select id from chains where status = 'waiting' order by created_at limit $1")
        .bind(limit)
        .fetch_all(db)
        .await
}

/// The chain of `generation` that waits for approval, locked.
pub async fn awaiting_approval(db: impl PgExecutor<'_>, demo_id: Uuid, generation: i64) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "select id from chains where demo_id = $1 and generation = $2 and status = 'awaiting_approval' for update",
    )
    .bind(demo_id)
    .bind(generation)
    .fetch_optional(db)
    .await
}

/// Mark the step that waited for approval as done.
pub async fn approve_waiting_step(db: impl PgExecutor<'_>, chain_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "update chain_steps set status = 'succeeded', finished_at = now() where chain_id = $1 and status = 'waiting'",
    )
    .bind(chain_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Record one attempt's outcome and duration.
pub async fn record_attempt(
    db: impl PgExecutor<'_>,
    chain_id: Uuid,
    position: i32,
    result: &StepResult,
) -> sqlx::Result<()> {
    let (outcome, error) = match &result.outcome {
        StepOutcome::Succeeded(_) => ("succeeded", None),
        StepOutcome::Failed { error, .. } => ("failed", Some(error.as_str())),
    };
    sqlx::query(
        "insert into step_attempts (chain_id, position, attempt, host_id, outcome, error, duration_ms)
         values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing",
    )
    .bind(chain_id)
    .bind(position)
    .bind(i64::from(result.attempt) as i32)
    .bind(&result.host_id)
    .bind(outcome)
    .bind(error)
    .bind(i64::try_from(result.duration_ms).unwrap_or(i64::MAX))
    .execute(db)
    .await?;
    Ok(())
}

/// Put a chain's failed step back to pending with a fresh retry budget.
pub async fn reset_failed_step(db: impl PgExecutor<'_>, chain_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "update chain_steps set status = 'pending', budget_from = attempts, finished_at = null
         where chain_id = $1 and status = 'failed'",
    )
    .bind(chain_id)
    .execute(db)
    .await?;
    Ok(())
}

/// A chain as the API shows it: its steps, each with its attempts.
#[derive(Debug, Serialize)]
pub struct ChainView {
    pub id: Uuid,
    pub generation: i64,
    pub kind: String,
    pub status: String,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct StepView {
    #[serde(skip)]
    pub chain_id: Uuid,
    pub position: i32,
    pub name: String,
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub output: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub queued_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// Every attempt: `{attempt, host_id, outcome, error, duration_ms, finished_at}`.
    pub history: serde_json::Value,
}

impl StepView {
    /// A step not reached yet.
    pub fn pending(step: &ChainStep) -> StepView {
        StepView {
            chain_id: step.chain_id,
            position: step.position,
            name: step.name.clone(),
            status: "pending".into(),
            attempts: 0,
            error: None,
            output: None,
            queued_at: None,
            finished_at: None,
            history: serde_json::json!([]),
        }
    }
}

/// The demo's chains, newest first, with the steps reached and their attempts
/// ([`crate::chain::shown`] adds the rest).
pub async fn timeline(db: &sqlx::PgPool, demo_id: Uuid) -> sqlx::Result<Vec<ChainView>> {
    #[derive(FromRow)]
    struct Row {
        id: Uuid,
        generation: i64,
        kind: String,
        status: String,
        error: Option<String>,
        created_at: OffsetDateTime,
        finished_at: Option<OffsetDateTime>,
    }
    let chains: Vec<Row> = sqlx::query_as(
        "select id, generation, kind, status, error, created_at, finished_at from chains
         where demo_id = $1 order by created_at desc, generation desc",
    )
    .bind(demo_id)
    .fetch_all(db)
    .await?;
    let ids: Vec<Uuid> = chains.iter().map(|c| c.id).collect();
    let mut steps: Vec<StepView> = sqlx::query_as(
        "select s.chain_id, s.position, s.name, s.status, s.attempts, s.error, s.output, s.queued_at, s.finished_at,
                coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'host_id', a.host_id,
                                 'outcome', a.outcome, 'error', a.error, 'duration_ms', a.duration_ms,
                                 'finished_at', a.finished_at) order by a.attempt)
                          from step_attempts a where a.chain_id = s.chain_id and a.position = s.position), '[]') as history
         from chain_steps s where s.chain_id = any($1) order by s.chain_id, s.position",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    Ok(chains
        .into_iter()
        .map(|c| {
            let (stored, rest): (Vec<StepView>, Vec<StepView>) = steps.drain(..).partition(|s| s.chain_id == c.id);
            steps = rest;
            ChainView {
                id: c.id,
                generation: c.generation,
                kind: c.kind,
                status: c.status,
                error: c.error,
                created_at: c.created_at,
                finished_at: c.finished_at,
                steps: stored,
            }
        })
        .collect())
}
