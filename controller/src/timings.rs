//! How long the controller's hot paths take, kept in process for `/metrics`: fixed-bucket
//! histograms updated with atomics, so timing a call costs a few relaxed adds and no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, `+Inf`, is implicit).
pub const BUCKETS_MICROS: [u64; 11] = [100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000];

/// The timed paths.
#[derive(Debug, Default)]
pub struct Timings {
    /// Choosing a host for a demo ([`crate::scheduler::placement::place`]), lock waits included.
    pub placement: Histogram,
    /// Handling one heartbeat: reading it and recording it.
    pub heartbeat: Histogram,
}

/// A Prometheus-style histogram of durations with the fixed [`BUCKETS_MICROS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A copy of a histogram at one moment, with cumulative bucket counts as Prometheus wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound in seconds, observations at or below it)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKETS_MICROS.iter().position(|bound| micros <= *bound).unwrap_or(BUCKETS_MICROS.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The count is the buckets' total, so a scrape is consistent with itself even while
    /// observations go on; the sum may run a few observations ahead.
    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0;
        let bounds = BUCKETS_MICROS.iter().map(|micros| *micros as f64 / 1e6).chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        Snapshot { buckets, count: cumulative, sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        for micros in [50, 100, 101, 4_999, 5_000, 5_001, 300_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 7);
        let at = |bound: f64| snapshot.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0001), 2, "50 µs and exactly 100 µs");
        assert_eq!(at(0.00025), 3);
        assert_eq!(at(0.002), 3);
        assert_eq!(at(0.005), 5, "4,999 and exactly 5,000 µs");
        assert_eq!(at(0.01), 6);
        assert_eq!(at(0.25), 6);
        assert_eq!(at(f64::INFINITY), 7, "300 ms is only below +Inf");
        let total_micros = 50 + 100 + 101 + 4_999 + 5_000 + 5_001 + 300_000;
        assert!((snapshot.sum_seconds - total_micros as f64 / 1e6).abs() < 1e-9);
    }

    #[test]
    fn buckets_are_cumulative_and_end_with_inf() {
        let snapshot = Histogram::default().snapshot();
        assert_eq!(snapshot.buckets.len(), BUCKETS_MICROS.len() + 1);
        assert_eq!(snapshot.buckets.last(), Some(&(f64::INFINITY, 0)));
        let histogram = Histogram::default();
        for _ in 0..3 {
            histogram.observe(Duration::from_millis(1));
        }
        let counts: Vec<u64> = histogram.snapshot().buckets.iter().map(|(_, n)| *n).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(counts[..3], [0, 0, 0]);
        assert!(counts[3..].iter().all(|n| *n == 3));
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let histogram = std::sync::Arc::new(Histogram::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| histogram.observe(Duration::from_micros(700))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 40_000);
        assert!((snapshot.sum_seconds - 28.0).abs() < 1e-6);
    }
}
