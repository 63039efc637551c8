//! Log lines on their way to the controller's keeper over NATS, sent by one task in the
//! order they were printed. A demo that prints faster than NATS takes its lines loses the
//! ones that find the queue full, not the agent's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use demofleet_common::topology;
use tokio::sync::mpsc;

/// Lines waiting to be sent, at most.
const QUEUE: usize = 10_000;

struct Line {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
}

/// The sending end; clones share the queue and its order.
#[derive(Clone)]
pub struct LogLines {
    queue: mpsc::Sender<Line>,
    dropped: Arc<AtomicU64>,
}

impl LogLines {
    /// The queue, and the task that empties it into `nats` (it ends with the last clone).
    pub fn start(nats: async_nats::Client) -> LogLines {
        let (queue, mut lines) = mpsc::channel::<Line>(QUEUE);
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                if let Err(err) = nats.publish_with_headers(line.subject, line.headers, line.payload.into()).await {
                    tracing::warn!(error = %err, "a log line was not sent");
                }
            }
        });
        LogLines { queue, dropped: Arc::default() }
    }

    /// Send `line`, printed by `step` of generation `generation`, to `subject`; the
    /// generation and step go in headers.
    pub fn send(&self, subject: String, generation: i64, step: &str, line: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(topology::LOG_GENERATION_HEADER, generation.to_string().as_str());
        headers.insert(topology::LOG_STEP_HEADER, step);
        let line = Line { subject, headers, payload: line.as_bytes().to_vec() };
        if self.queue.try_send(line).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "log lines dropped: more came than NATS took");
            }
        }
    }
}
