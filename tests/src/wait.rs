//! Waiting on conditions with a deadline, never on bare sleeps.

use std::future::Future;
use std::time::Duration;

/// Poll `probe` until it returns `Some`, or panic naming `what` after `deadline`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
