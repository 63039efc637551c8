//! Names on the broker and on NATS (those of NATS from [`crate::subjects`]), and declaring the
//! RabbitMQ side of them.
//!
//! Both sides declare what they use with the same arguments, so whichever starts first
//! creates it and the other finds it.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

pub use crate::messaging::QueueType;
pub use crate::subjects::*;

/// The direct exchange every task and result goes through.
pub const EXCHANGE: &str = "demofleet.tasks";
/// Controller steps and agents' step results.
pub const CONTROLLER_QUEUE: &str = "demofleet.controller";

/// Steps that used up their attempts, for people to look at.
pub const DEAD_QUEUE: &str = "demofleet.dead";

/// The fanout exchange (and its queue) that holds messages for `delay` before they return
/// to [`EXCHANGE`] with their original routing key.
pub fn retry_exchange(delay: std::time::Duration) -> String {
    format!("demofleet.retry.{}ms", delay.as_millis())
}

/// The queue (and routing key) of one host's agent.
pub fn host_queue(host_id: &str) -> String {
    format!("demofleet.host.{host_id}")
}

/// The arguments that make a queue of `kind`.
fn queue_args(kind: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if kind == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    args
}

/// Declare the retry exchanges and queues for `delays`, and the dead-letter queue.
pub async fn declare_retries(channel: &Channel, delays: &[std::time::Duration]) -> lapin::Result<()> {
    declare_retries_as(channel, delays, QueueType::Classic).await
}

/// [`declare_retries`] with queues of `kind`.
pub async fn declare_retries_as(
    channel: &Channel,
    delays: &[std::time::Duration],
    kind: QueueType,
) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(EXCHANGE.into(), ExchangeKind::Direct, durable_exchange, FieldTable::default()).await?;
    for delay in delays {
        let name = retry_exchange(*delay);
        channel
            .exchange_declare(name.as_str().into(), ExchangeKind::Fanout, durable_exchange, FieldTable::default())
            .await?;
        let mut args = queue_args(kind);
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(EXCHANGE.into()));
        channel.queue_declare(name.as_str().into(), durable_queue, args).await?;
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.queue_declare(DEAD_QUEUE.into(), durable_queue, queue_args(kind)).await?;
    Ok(())
}

/// Declare the exchange and a durable queue bound to it under its own name.
pub async fn declare_queue(channel: &Channel, queue: &str) -> lapin::Result<()> {
    declare_queue_as(channel, queue, QueueType::Classic).await
}

/// [`declare_queue`] with a queue of `kind`.
pub async fn declare_queue_as(channel: &Channel, queue: &str, kind: QueueType) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(EXCHANGE.into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, queue_args(kind)).await?;
    channel
        .queue_bind(queue.into(), EXCHANGE.into(), queue.into(), QueueBindOptions::default(), FieldTable::default())
        .await?;
    Ok(())
}

/// Publish a step's result to the controller's queue on `channel` (in confirm mode) as broker
/// user `user` (RabbitMQ checks it is the channel's) and wait until RabbitMQ has it: an agent
/// acknowledges the step only after this.
pub async fn publish_result(channel: &Channel, user: &str, result: &crate::wire::StepResult) -> anyhow::Result<()> {
    use lapin::options::BasicPublishOptions;
    use lapin::BasicProperties;
    let body = serde_json::to_vec(result)?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_type(crate::wire::KIND_RESULT.into())
        .with_user_id(user.into());
    let confirmation = channel
        .basic_publish(
            EXCHANGE.into(),
            CONTROLLER_QUEUE.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &body,
            properties,
        )
        .await?
        .await?;
    anyhow::ensure!(confirmation.is_ack(), "RabbitMQ refused the step result");
    // A mandatory message that reached no queue comes back, and is confirmed all the same.
    anyhow::ensure!(confirmation.take_message().is_none(), "the step result reached no queue");
    Ok(())
}
