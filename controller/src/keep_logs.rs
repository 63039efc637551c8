//! Logs that last: every log line the agents publish on NATS
//! (`<prefix>.host.<host>.demo.<id>.log`, generation and step in headers) is written to
//! `demo_logs`, by one controller replica (a queue group), in batches, in the order it
//! arrived; then each generation written to is trimmed to `DEMOFLEET_LOG_KEEP_BYTES` and its
//! demo to `DEMOFLEET_LOG_KEEP_GENERATIONS`. `GET /api/demos/{id}/logs` reads them back
//! (crate::http::logs).
//!
//! A line is kept only from the host its demo is placed on (the demo's host, or the host
//! still serving it while it moves), and that host only while enrolled: NATS lets a host's
//! user publish only under its own `<prefix>.host.<id>.`, so a host cannot speak for
//! another, and this check keeps it from writing into demos that are not its own. Anything
//! else is refused: counted as `demofleet_channel_refused_total{what="log"}` and audited
//! once per host and reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use demofleet_common::topology;

use crate::db::logs::{self, NewLine, Sender};
use crate::refusals::Refusals;

/// Lines written at once, at most; a batch is written at least this often.
const BATCH: usize = 2_000;
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often generations written to are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// The longest step name kept as sent; any other is kept as `unknown`.
const STEP_MAX: usize = 32;

pub struct Keeper {
    pub db: sqlx::PgPool,
    pub keep_bytes: i64,
    pub keep_generations: i64,
    /// The NATS prefix lines are published under.
    pub prefix: String,
    pub refusals: Arc<Refusals>,
}

/// A log message as heard: the host whose subject it came on, the demo it names, and its
/// lines (a chunk of several lines is kept as one row per line).
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    pub host: String,
    pub demo_id: Uuid,
    pub lines: Vec<NewLine>,
}

/// The log message on `subject` under `prefix`, with its `Demofleet-Generation` and
/// `Demofleet-Step` headers, if the subject is a demo's log subject.
pub fn read(
    prefix: &str,
    subject: &str,
    generation: Option<&str>,
    step: Option<&str>,
    payload: &[u8],
) -> Option<Heard> {
    let (host, demo_id) = topology::read_log_subject(prefix, subject)?;
    let generation = generation.and_then(|g| g.parse().ok()).filter(|g| *g >= 0).unwrap_or(0);
    let step = step
        .filter(|s| !s.is_empty() && s.len() <= STEP_MAX)
        .filter(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'))
        .unwrap_or("unknown");
    // PostgreSQL text holds no NUL; SSE data no carriage returns.
    let text = String::from_utf8_lossy(payload).replace(['\0', '\r'], "");
    let lines = text
        .split('\n')
        .map(|line| NewLine { demo_id, generation, step: step.to_string(), line: line.to_string() })
        .collect();
    Some(Heard { host: host.to_string(), demo_id, lines })
}

fn read_message(prefix: &str, message: &async_nats::Message) -> Option<Heard> {
    let header = |name: &str| message.headers.as_ref()?.get(name).map(|v| v.as_str().to_string());
    let (generation, step) = (header(topology::LOG_GENERATION_HEADER), header(topology::LOG_STEP_HEADER));
    read(prefix, message.subject.as_str(), generation.as_deref(), step.as_deref(), &message.payload)
}

pub async fn run(keeper: Keeper, mut messages: async_nats::Subscriber, stop: CancellationToken) {
    let mut batch: Vec<Heard> = Vec::new();
    let mut lines = 0;
    let mut touched: HashSet<(Uuid, i64)> = HashSet::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut trim = tokio::time::interval(TRIM_EVERY);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => {
                    match read_message(&keeper.prefix, &message) {
                        Some(heard) => {
                            lines += heard.lines.len();
                            batch.push(heard);
                        }
                        None => {
                            // Audited once per host its subject names, however many subjects.
                            let subject = message.subject.as_str();
                            let host = topology::host_of(&keeper.prefix, subject).map_or(subject, |(host, _)| host);
                            let detail = serde_json::json!({ "subject": subject });
                            keeper.refusals.refuse(&keeper.db, "log", "unreadable", host, detail).await;
                        }
                    }
                    if lines < BATCH {
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
        lines = 0;
    }
    write(&keeper, &mut batch, &mut touched).await;
}

/// The lines of `batch` whose host may write them; the others refused.
async fn admitted(keeper: &Keeper, batch: &mut Vec<Heard>) -> sqlx::Result<Vec<NewLine>> {
    let pairs: Vec<(String, Uuid)> =
        batch.iter().map(|h| (h.host.clone(), h.demo_id)).collect::<HashSet<_>>().into_iter().collect();
    let senders: HashMap<(String, Uuid), Sender> =
        pairs.iter().cloned().zip(logs::senders(&keeper.db, &pairs).await?).collect();
    let mut kept = Vec::new();
    let mut refused: HashMap<(String, Uuid), (&'static str, usize)> = HashMap::new();
    for heard in batch.drain(..) {
        let reason = match senders.get(&(heard.host.clone(), heard.demo_id)) {
            Some(Sender::PlacedHere) => {
                kept.extend(heard.lines);
                continue;
            }
            Some(Sender::NotEnrolled) | None => "unknown_host",
            Some(Sender::NotPlacedHere) => "not_its_demo",
        };
        let entry = refused.entry((heard.host, heard.demo_id)).or_insert((reason, 0));
        entry.1 += heard.lines.len();
    }
    for ((host, demo), (reason, n)) in refused {
        let detail = serde_json::json!({ "host": host, "demo": demo, "lines": n });
        keeper.refusals.note(&keeper.db, "log", reason, &host, detail).await;
        keeper.refusals.count_by("log", reason, n as u64);
    }
    Ok(kept)
}

async fn write(keeper: &Keeper, batch: &mut Vec<Heard>, touched: &mut HashSet<(Uuid, i64)>) {
    if batch.is_empty() {
        return;
    }
    let lines = match admitted(keeper, batch).await {
        Ok(lines) => lines,
        Err(err) => {
            tracing::warn!(error = %err, messages = batch.len(), "kept logs lost: their senders could not be checked");
            batch.clear();
            return;
        }
    };
    if lines.is_empty() {
        return;
    }
    touched.extend(lines.iter().map(|l| (l.demo_id, l.generation)));
    // A database that is down loses the lines of its outage, never the keeper.
    for attempt in 0..3 {
        match logs::append(&keeper.db, &lines).await {
            Ok(_) => break,
            Err(err) if attempt == 2 => tracing::warn!(error = %err, lines = lines.len(), "kept logs lost"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_message_names_its_host_and_keeps_each_line() {
        let demo = Uuid::new_v4();
        let subject = topology::log_subject("df", "host-a", &demo);
        let heard = read("df", &subject, Some("3"), Some("build"), b"one\r\ntwo\0").unwrap();
        assert_eq!(heard.host, "host-a");
        let lines: Vec<(&str, i64, &str)> =
            heard.lines.iter().map(|l| (l.line.as_str(), l.generation, l.step.as_str())).collect();
        assert_eq!(lines, [("one", 3, "build"), ("two", 3, "build")]);
        assert!(heard.lines.iter().all(|l| l.demo_id == demo));
    }

    #[test]
    fn what_a_host_cannot_mean_is_not_taken_as_it_came() {
        let demo = Uuid::new_v4();
        let subject = topology::log_subject("df", "host-a", &demo);
        // Headers that are not a generation or a step name: generation 0, step unknown.
        let long = "x".repeat(STEP_MAX + 1);
        for (generation, step) in [(Some("-1"), Some("Build")), (Some("many"), Some(long.as_str())), (None, Some(""))] {
            let heard = read("df", &subject, generation, step, b"line").unwrap();
            assert_eq!((heard.lines[0].generation, heard.lines[0].step.as_str()), (0, "unknown"));
        }
        // Not a log subject of this prefix: nothing.
        assert_eq!(read("other", &subject, None, None, b"line"), None);
        assert_eq!(read("df", "df.host.host-a.demo.not-a-uuid.log", None, None, b"line"), None);
        // Bytes that are not UTF-8 are kept, replaced.
        let heard = read("df", &subject, None, None, &[0xff, b'a']).unwrap();
        assert_eq!(heard.lines[0].line, "\u{fffd}a");
    }
}
