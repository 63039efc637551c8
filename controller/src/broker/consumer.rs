//! The consumer of the controller's queue: agents' step results and the controller's own
//! jobs, each handed to [`jobs::handle`], acknowledged once handled and otherwise delivered
//! again.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use demofleet_common::messaging::QueueType;
use demofleet_common::wire::KIND_RESULT;
use demofleet_common::{consume, retry, topology};

use super::Broker;
use crate::jobs::{self, Jobs};

/// Controller-queue messages handled at once (and the consumer's prefetch).
const CONCURRENCY: u16 = 16;
/// On shutdown, how long results and jobs in hand may take; the rest go back to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the consumer needs.
pub struct Consumer {
    pub broker: std::sync::Arc<Broker>,
    /// The kind of queue the controller's is declared as.
    pub queue_type: QueueType,
    /// What handles each message.
    pub jobs: Jobs,
}

/// Consume the controller queue until `stop`, reconnecting as needed.
pub async fn run(app: Consumer, stop: CancellationToken) {
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
    app: &Consumer,
    stop: &CancellationToken,
    policy: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let channel = app.broker.channel().await?;
    topology::declare_queue_as(&channel, topology::CONTROLLER_QUEUE, app.queue_type).await?;
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
        let jobs = app.jobs.clone();
        async move {
            let kind = delivery.properties.kind().as_ref().map_or(KIND_RESULT, |k| k.as_str()).to_string();
            let user = delivery.properties.user_id().as_ref().map(|u| u.to_string());
            let settled = match jobs::handle(&jobs, &kind, user.as_deref(), &delivery.data).await {
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
