//! Waiting on conditions with a deadline, never on bare sleeps.

use std::future::Future;
use std::time::Duration;

/// Poll `probe` until it returns `Some`, or panic naming `what` after `deadline`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(what, deadline, || {
        let probing = probe();
        async move { probing.await.ok_or(None) }
    })
    .await
}

/// Like [`until`], but `probe` says what it saw when the condition does not hold yet, and a
/// timeout's message carries the last of those.
pub async fn until_seen<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(what, deadline, || {
        let probing = probe();
        async move { probing.await.map_err(Some) }
    })
    .await
}

/// Poll `probe` every 100 ms until it returns `Ok`; after `deadline`, panic naming `what`
/// and the last thing `probe` saw, if it said. A probe still running at the deadline (a
/// request to a server that stopped answering) is abandoned.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Option<String>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut seen = None;
    loop {
        let began = tokio::time::Instant::now();
        match tokio::time::timeout_at(end, probe()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(now)) => seen = now,
            // The deadline fell on a probe under way; one that took long says so.
            Err(_) if began.elapsed() >= Duration::from_secs(1) => {
                let before = seen.unwrap_or_else(|| "nothing said".to_string());
                seen = Some(format!("a probe unanswered after {:?} (the one before it: {before})", began.elapsed()));
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= end {
            match seen {
                Some(seen) => panic!("timed out after {deadline:?} waiting for {what}; last seen: {seen}"),
                None => panic!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "waiting for a condition that never holds; last seen: still 7")]
    async fn a_timeout_says_what_the_probe_last_saw() {
        until_seen("a condition that never holds", Duration::from_millis(250), || async {
            Err::<(), _>("still 7".to_string())
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a probe that hangs; last seen: a probe unanswered after")]
    async fn a_probe_that_hangs_ends_at_the_deadline() {
        until("a probe that hangs", Duration::from_millis(1500), std::future::pending::<Option<()>>).await;
    }

    #[tokio::test]
    async fn the_value_of_the_first_probe_that_holds_is_returned() {
        let mut probes = 0;
        let value = until("the third probe", Duration::from_secs(5), || {
            probes += 1;
            let n = probes;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(value, 3);
    }
}
