//! Consuming a RabbitMQ queue with bounded concurrency: each delivery handled in its own
//! task, at most `concurrency` at once (matching the channel's prefetch), and every task
//! finished before returning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::Consumer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why consuming stopped other than being told to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("the broker closed the consumer")]
    Closed,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Hand every delivery of `consumer` to `handle` until `stop` (then `Ok`) or the consumer
/// fails. Handlers already started get `grace` to finish; those still running then are
/// dropped with their deliveries unacknowledged, which the broker gives back to the queue
/// once the caller closes the channel (every handler must be safe to run again).
pub async fn bounded<F, Fut>(
    mut consumer: Consumer,
    stop: &CancellationToken,
    concurrency: usize,
    grace: Duration,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let running = TaskTracker::new();
    let abandon = CancellationToken::new();
    let outcome = loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(err)) => break Err(err.into()),
            None => break Err(ConsumeError::Closed),
        };
        let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let work = handle(delivery);
        let abandon = abandon.clone();
        running.spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = abandon.cancelled() => tracing::warn!("work in flight abandoned at shutdown; the broker gives it back"),
            }
            drop(permit);
        });
    };
    running.close();
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        abandon.cancel();
        running.wait().await;
    }
    outcome
}
