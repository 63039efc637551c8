//! The outbox: broker messages committed with the change that caused them.

use std::time::Duration;

use serde::Serialize;
use sqlx::{FromRow, PgExecutor};

use demofleet_common::topology;
use demofleet_common::wire::{Cleanup, DeadStep, StepMessage, KIND_CLEANUP, KIND_DEAD, KIND_STEP};

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
