//! Consuming a RabbitMQ queue with bounded concurrency: each delivery handled in its own
//! task, at most `concurrency` at once (matching the channel's prefetch), and every task
//! finished before returning.

use std::future::Future;
use std::sync::Arc;

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
/// fails; waits for the handlers already started either way.
pub async fn bounded<F, Fut>(
    mut consumer: Consumer,
    stop: &CancellationToken,
    concurrency: usize,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let running = TaskTracker::new();
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
        running.spawn(async move {
            work.await;
            drop(permit);
        });
    };
    running.close();
    running.wait().await;
    outcome
}
