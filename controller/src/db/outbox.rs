//! The outbox: broker messages committed with the change that caused them, and the
//! messages the controller sends (steps, retries, clean-ups, dead letters, and its own jobs).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{Cleanup, DeadStep, StepMessage, KIND_CLEANUP, KIND_DEAD, KIND_STEP, WIRE_VERSION};

/// A message waiting to be published.
#[derive(Debug, FromRow)]
pub struct OutboxMessage {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub kind: String,
    pub payload: serde_json::Value,
}

/// A message to publish after commit.
#[derive(Debug)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub kind: &'static str,
    pub payload: serde_json::Value,
}

impl Outgoing {
    /// A step for the queue `queue` now.
    pub fn step(queue: String, message: &StepMessage) -> Outgoing {
        Outgoing { exchange: topology::EXCHANGE.into(), routing_key: queue, kind: KIND_STEP, payload: json(message) }
    }

    /// A step for the queue `queue`, delivered after `delay` through its retry queue.
    pub fn retry(queue: String, delay: Duration, message: &StepMessage) -> Outgoing {
        Outgoing {
            exchange: topology::retry_exchange(delay),
            routing_key: queue,
            kind: KIND_STEP,
            payload: json(message),
        }
    }

    /// Orphaned containers for a host's agent to remove.
    pub fn cleanup(queue: String, cleanup: &Cleanup) -> Outgoing {
        Outgoing { exchange: topology::EXCHANGE.into(), routing_key: queue, kind: KIND_CLEANUP, payload: json(cleanup) }
    }

    /// Tell GitHub about demo `demo_id`'s state (a [`NotifyJob`] for the controller).
    pub fn notify(demo_id: Uuid) -> Outgoing {
        to_controller(KIND_NOTIFY, &NotifyJob { version: WIRE_VERSION, demo_id, attempt: 1 })
    }

    /// Check and apply a `/demo approve <sha>` comment (an [`ApproveJob`] for the controller).
    pub fn approve_by_comment(owner: &str, repo: &str, pr: i64, commenter: &str, sha: &str) -> Outgoing {
        let job = ApproveJob {
            version: WIRE_VERSION,
            owner: owner.into(),
            repo: repo.into(),
            pr,
            commenter: commenter.into(),
            sha: sha.into(),
            attempt: 1,
        };
        to_controller(KIND_APPROVE, &job)
    }

    /// A step that used up its attempts, for the dead-letter queue.
    pub fn dead(dead: &DeadStep) -> Outgoing {
        Outgoing {
            exchange: String::new(),
            routing_key: topology::DEAD_QUEUE.into(),
            kind: KIND_DEAD,
            payload: json(dead),
        }
    }
}

fn to_controller(kind: &'static str, job: &impl Serialize) -> Outgoing {
    Outgoing {
        exchange: topology::EXCHANGE.into(),
        routing_key: topology::CONTROLLER_QUEUE.into(),
        kind,
        payload: json(job),
    }
}

/// AMQP `type` of a [`NotifyJob`].
pub const KIND_NOTIFY: &str = "notify";
/// AMQP `type` of an [`ApproveJob`].
pub const KIND_APPROVE: &str = "approve";

/// Bring GitHub up to date with a demo's state.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotifyJob {
    pub version: u32,
    pub demo_id: Uuid,
    #[serde(default = "first")]
    pub attempt: u32,
}

/// Someone commented `/demo approve <sha>` on a pull request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApproveJob {
    pub version: u32,
    pub owner: String,
    pub repo: String,
    pub pr: i64,
    pub commenter: String,
    /// The commit the comment approves (a job queued before approvals named one: none, which
    /// approves nothing).
    #[serde(default)]
    pub sha: String,
    #[serde(default = "first")]
    pub attempt: u32,
}

fn first() -> u32 {
    1
}

fn json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("wire messages serialize")
}

pub async fn push(db: impl PgExecutor<'_>, message: &Outgoing) -> sqlx::Result<()> {
    sqlx::query("insert into outbox (exchange, routing_key, kind, payload) values ($1, $2, $3, $4)")
        .bind(&message.exchange)
        .bind(&message.routing_key)
        .bind(message.kind)
        .bind(&message.payload)
        .execute(db)
        .await?;
    Ok(())
}

/// Take up to `limit` of the oldest messages, locked so another publisher skips them.
pub async fn take(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<OutboxMessage>> {
    sqlx::query_as(
        "select id, exchange, routing_key, kind, payload from outbox order by id limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("delete from outbox where id = any($1)").bind(ids).execute(db).await?;
    Ok(())
}
