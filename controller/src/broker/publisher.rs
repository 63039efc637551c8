//! The outbox publisher: messages committed in the outbox go to RabbitMQ with publisher
//! confirms, and are deleted from the outbox only once RabbitMQ confirmed them.

use std::collections::HashSet;
use std::sync::Arc;

use backoff::backoff::Backoff;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use demofleet_common::{retry, topology};

use super::Broker;
use crate::config::Config;
use crate::db::outbox;

/// Outbox messages published per batch.
const BATCH: i64 = 100;

/// What the publisher needs.
pub struct Publisher {
    pub broker: Arc<Broker>,
    /// The state of record, whose outbox it empties.
    pub db: PgPool,
    /// Rung after a commit that put messages in the outbox.
    pub outbox: Arc<Notify>,
    pub config: Arc<Config>,
}

/// Publish outbox messages whenever woken (and every tick), until `stop`.
pub async fn run(app: Publisher, stop: CancellationToken) {
    let mut channel: Option<Channel> = None;
    let mut declared = HashSet::new();
    let mut policy = retry::reconnect_policy();
    loop {
        if channel.as_ref().is_none_or(|c| !c.status().connected()) {
            declared.clear();
            channel = match open_confirm_channel(&app).await {
                Ok(c) => Some(c),
                Err(err) => {
                    tracing::warn!(error = %err, "broker unavailable; outbox messages wait");
                    None
                }
            };
        }
        if let Some(ch) = &channel {
            match publish_pending(&app, ch, &mut declared).await {
                Ok(()) => policy.reset(),
                Err(err) => {
                    tracing::warn!(error = %err, "publishing the outbox failed; retrying");
                    channel = None;
                }
            }
        }
        let pause = if channel.is_some() { app.config.tick } else { retry::next_wait(&mut policy) };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = app.outbox.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn open_confirm_channel(app: &Publisher) -> lapin::Result<Channel> {
    let channel = app.broker.channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    topology::declare_retries_as(&channel, &app.config.retry_delays, app.config.messaging.queue_type()).await?;
    Ok(channel)
}

/// Publish every outbox message in batches; each batch is deleted only after RabbitMQ
/// confirmed all of it.
async fn publish_pending(app: &Publisher, channel: &Channel, declared: &mut HashSet<String>) -> anyhow::Result<()> {
    // Sent as the controller's user, which RabbitMQ checks: agents take work only from it.
    let user = app.config.messaging.amqp_user();
    loop {
        let mut tx = app.db.begin().await?;
        let batch = outbox::take(&mut *tx, BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut confirms = Vec::with_capacity(batch.len());
        for message in &batch {
            if message.exchange == topology::EXCHANGE && declared.insert(message.routing_key.clone()) {
                topology::declare_queue_as(channel, &message.routing_key, app.config.messaging.queue_type()).await?;
            }
            let body = serde_json::to_vec(&message.payload)?;
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_type(message.kind.as_str().into())
                .with_user_id(user.as_str().into());
            let confirm = channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &body,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            if !confirmation.is_ack() {
                anyhow::bail!("RabbitMQ refused a message");
            }
            if confirmation.take_message().is_some() {
                anyhow::bail!("a message could not be routed");
            }
        }
        let ids: Vec<i64> = batch.iter().map(|m| m.id).collect();
        outbox::delete(&mut *tx, &ids).await?;
        tx.commit().await?;
    }
}
