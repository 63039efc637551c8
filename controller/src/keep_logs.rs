//! Logs that last: every log line the agents publish on NATS (`<prefix>.demo.<id>.log`,
//! generation and step in headers) is written to `demo_logs`, by one controller replica
//! (a queue group), in batches, in the order it arrived; then each generation written to is
//! trimmed to `DEMOFLEET_LOG_KEEP_BYTES` and its demo to `DEMOFLEET_LOG_KEEP_GENERATIONS`.
//! `GET /api/demos/{id}/logs` reads them back (crate::http::logs).

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use demofleet_common::topology;

use crate::db::logs::{self, NewLine};

/// Lines written at once, at most; a batch is written at least this often.
const BATCH: usize = 2_000;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often generations written to are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(5);

pub struct Keeper {
    pub db: sqlx::PgPool,
    pub keep_bytes: i64,
    pub keep_generations: i64,
}

/// The lines a NATS message carries, if it is a demo's log line (a chunk of several lines
/// is kept as one row per line).
pub fn lines_of(message: &async_nats::Message) -> Vec<NewLine> {
    let Some(demo_id) = message
        .subject
        .as_str()
        .strip_suffix(".log")
        .and_then(|s| s.rsplit('.').next())
        .and_then(|id| Uuid::parse_str(id).ok())
    else {
        return Vec::new();
    };
    let header = |name: &str| message.headers.as_ref()?.get(name).map(|v| v.as_str().to_string());
    let generation = header(topology::LOG_GENERATION_HEADER).and_then(|g| g.parse().ok()).unwrap_or(0);
    let step = header(topology::LOG_STEP_HEADER).unwrap_or_else(|| "unknown".into());
    // PostgreSQL text holds no NUL; SSE data no carriage returns.
    let text = String::from_utf8_lossy(&message.payload).replace(['\0', '\r'], "");
    text.split('\n').map(|line| NewLine { demo_id, generation, step: step.clone(), line: line.to_string() }).collect()
}

pub async fn run(keeper: Keeper, mut lines: async_nats::Subscriber, stop: CancellationToken) {
    let mut batch: Vec<NewLine> = Vec::new();
    let mut touched: HashSet<(Uuid, i64)> = HashSet::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut trim = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            message = lines.next() => match message {
                Some(message) => {
                    batch.extend(lines_of(&message));
                    if batch.len() < BATCH {
                        continue;
                    }
                }
                None => break,
            },
            _ = flush.tick() => {}
            _ = trim.tick() => {
                for (demo, generation) in touched.drain() {
                    if let Err(err) =
                        logs::trim(&keeper.db, demo, generation, keeper.keep_bytes, keeper.keep_generations).await
                    {
                        tracing::warn!(error = %err, %demo, "trimming kept logs failed");
                    }
                }
                continue;
            }
            _ = stop.cancelled() => break,
        }
        write(&keeper, &mut batch, &mut touched).await;
    }
    write(&keeper, &mut batch, &mut touched).await;
}

async fn write(keeper: &Keeper, batch: &mut Vec<NewLine>, touched: &mut HashSet<(Uuid, i64)>) {
    if batch.is_empty() {
        return;
    }
    touched.extend(batch.iter().map(|l| (l.demo_id, l.generation)));
    // A database that is down loses the lines of its outage, never the keeper.
    for attempt in 0..3 {
        match logs::append(&keeper.db, batch).await {
            Ok(_) => break,
            Err(err) if attempt == 2 => tracing::warn!(error = %err, lines = batch.len(), "kept logs lost"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    batch.clear();
}
