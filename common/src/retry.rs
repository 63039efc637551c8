//! How long to wait before reconnecting to a broker: exponential back-off with jitter from
//! the `backoff` crate, never giving up, reset once a connection works again.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

/// Back-off for reconnect loops: 250 ms doubling (with jitter) up to 10 s, forever.
pub fn reconnect_policy() -> ExponentialBackoff {
    ExponentialBackoff {
        current_interval: Duration::from_millis(250),
        initial_interval: Duration::from_millis(250),
        max_interval: Duration::from_secs(10),
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// The next wait of `policy` (which never runs out).
pub fn next_wait(policy: &mut ExponentialBackoff) -> Duration {
    policy.next_backoff().unwrap_or(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_reset() {
        let mut policy = reconnect_policy();
        let waits: Vec<Duration> = (0..12).map(|_| next_wait(&mut policy)).collect();
        assert!(waits[0] <= Duration::from_millis(375), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(15)), "{waits:?}");
        assert!(waits[11] >= Duration::from_secs(5), "{waits:?}");
        policy.reset();
        assert!(next_wait(&mut policy) <= Duration::from_millis(375));
    }
}
