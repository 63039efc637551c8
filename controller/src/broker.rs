//! RabbitMQ: one connection, opened again on demand after it drops; the outbox publisher
//! (confirmed publishes, deleted only once confirmed) and the consumer of step results.

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use demofleet_common::messaging::Messaging;
use demofleet_common::wire::KIND_RESULT;
use demofleet_common::{consume, retry, topology};

use crate::db::outbox;
use crate::jobs;
use crate::state::AppState;

/// Outbox messages published per batch.
const BATCH: i64 = 100;
/// Controller-queue messages handled at once (and the consumer's prefetch).
const CONCURRENCY: u16 = 16;
/// On shutdown, how long results and jobs in hand may take; the rest go back to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub struct Broker {
    messaging: Messaging,
    /// Which node of a cluster to try next.
    turn: AtomicUsize,
    connection: Mutex<Option<Connection>>,
}

impl Broker {
    /// Connect now, so a wrong URL or credentials stop the start-up with a clear error.
    pub async fn connect(messaging: &Messaging) -> lapin::Result<Broker> {
        let turn = AtomicUsize::new(0);
        let connection = messaging.connect_amqp(&turn).await?;
        Ok(Broker { messaging: messaging.clone(), turn, connection: Mutex::new(Some(connection)) })
    }

    /// A new channel, reconnecting first if the connection dropped.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        let mut guard = self.connection.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| c.status().connected()) {
            if let Ok(channel) = conn.create_channel().await {
                return Ok(channel);
            }
        }
        // A connection still up that refused a channel is closed, not left open beside the
        // new one by the channels that still hold it.
        if let Some(old) = guard.take().filter(|c| c.status().connected()) {
            let _ = old.close(lapin::protocol::constants::REPLY_SUCCESS, "replaced by a new connection".into()).await;
        }
        let conn = self.messaging.connect_amqp(&self.turn).await?;
        let channel = conn.create_channel().await?;
        *guard = Some(conn);
        Ok(channel)
    }

    pub async fn is_connected(&self) -> bool {
        self.connection.lock().await.as_ref().is_some_and(|c| c.status().connected())
    }
}

/// Publish outbox messages whenever woken (and every tick), until `stop`.
pub async fn run_publisher(app: AppState, stop: CancellationToken) {
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

async fn open_confirm_channel(app: &AppState) -> lapin::Result<Channel> {
    let channel = app.broker.channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    topology::declare_retries_as(&channel, &app.config.retry_delays, app.config.messaging.queue_type()).await?;
    Ok(channel)
}

/// Publish every outbox message in batches; each batch is deleted only after RabbitMQ
/// confirmed all of it.
async fn publish_pending(app: &AppState, channel: &Channel, declared: &mut HashSet<String>) -> anyhow::Result<()> {
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
                .with_type(message.kind.as_str().into());
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

/// Consume the controller queue until `stop`, reconnecting as needed.
pub async fn run_result_consumer(app: AppState, stop: CancellationToken) {
    let mut policy = retry::reconnect_policy();
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = consume_results(&app, &stop, &mut policy) => r,
        };
        match result {
            Ok(()) => return,
            Err(err) => tracing::warn!(error = %err, "controller queue consumer stopped; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry::next_wait(&mut policy)) => {}
        }
    }
}

async fn consume_results(
    app: &AppState,
    stop: &CancellationToken,
    policy: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let channel = app.broker.channel().await?;
    topology::declare_queue_as(&channel, topology::CONTROLLER_QUEUE, app.config.messaging.queue_type()).await?;
    channel.basic_qos(CONCURRENCY, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            topology::CONTROLLER_QUEUE.into(),
            "demofleet-controller".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    policy.reset();
    consume::bounded(consumer, stop, usize::from(CONCURRENCY), SHUTDOWN_GRACE, |delivery| {
        let app = app.clone();
        async move {
            let kind = delivery.properties.kind().as_ref().map_or(KIND_RESULT, |k| k.as_str()).to_string();
            let settled = match jobs::handle(&app, &kind, &delivery.data).await {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop),
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        kind,
                        "controller message not handled; it will be redelivered"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.map(drop)
                }
            };
            if let Err(err) = settled {
                tracing::warn!(error = %err, "settling a controller message failed; the broker will redeliver it");
            }
        }
    })
    .await?;
    Ok(())
}
