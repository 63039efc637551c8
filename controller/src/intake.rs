//! Recording events in batches (group commit), and starting the chains they create.
//!
//! Each webhook handler verifies and parses its delivery, then hands the event to the
//! [`Intake`] writer and waits. The writer takes every event waiting at that moment and
//! records them with one call of [`crate::db::events::record`] (migration 0003): one
//! round trip and one commit for the whole batch. The handler answers 202 once that commit
//! is done, so a 202 still means durable. New chains are created `waiting`; the
//! [`Starter`] then advances them outside the request, newest generation of each demo
//! only, and the periodic tick starts any that a crash left waiting.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::events::{record, Event, Recorded};
use crate::scheduler::Scheduler;

/// At most this many events share one commit.
const MAX_BATCH: usize = 128;
/// Writers recording batches side by side.
pub const WRITERS: usize = 2;

struct Pending {
    event: Event,
    answer: oneshot::Sender<sqlx::Result<Recorded>>,
}

/// The handle handlers record events through.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Pending>,
    pub stats: Arc<Stats>,
}

/// Counters for `/metrics`: how full batches are and how long their commits take.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub busy_micros: AtomicU64,
}

/// The intake has stopped: the controller is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the controller is shutting down")]
pub struct Stopped;

impl Intake {
    /// The handle, and the writer and starter tasks to run.
    pub fn new() -> (Intake, Writer, Starter) {
        let (queue, events) = mpsc::channel(4 * MAX_BATCH);
        let (started, chains) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let writer = Writer { events: Arc::new(Mutex::new(events)), started, stats: stats.clone() };
        (Intake { queue, stats }, writer, Starter { chains })
    }

    /// Record `event` with whatever else is waiting, and return once it is committed.
    pub async fn submit(&self, event: Event) -> Result<sqlx::Result<Recorded>, Stopped> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Pending { event, answer }).await.map_err(|_| Stopped)?;
        answered.await.map_err(|_| Stopped)
    }
}

/// Takes waiting events in batches and records each batch with one commit. Clones share
/// the queue, so while one commits, another gathers the next batch.
#[derive(Clone)]
pub struct Writer {
    events: Arc<Mutex<mpsc::Receiver<Pending>>>,
    started: mpsc::UnboundedSender<(Uuid, Uuid)>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Run until `stop`, finishing the batch at hand.
    pub async fn run(self, db: PgPool, stop: CancellationToken) {
        let mut carried: Option<Pending> = None;
        loop {
            let batch = tokio::select! {
                batch = self.gather(&mut carried) => match batch {
                    Some(batch) => batch,
                    None => return,
                },
                () = stop.cancelled() => return,
            };
            self.commit(&db, batch).await;
        }
    }

    /// The next batch: what waits now, up to the first event that must not share it
    /// (carried over to the next), sorted by pull request so that writers running side by
    /// side lock demos in one order.
    async fn gather(&self, carried: &mut Option<Pending>) -> Option<Vec<Pending>> {
        let (first, mut events) = match carried.take() {
            // With an event in hand, never wait for the queue: the other writer may hold it
            // while it waits for events that will not come until this one is answered.
            Some(pending) => (pending, self.events.try_lock().ok()),
            None => {
                let mut events = self.events.lock().await;
                let first = events.recv().await?;
                (first, Some(events))
            }
        };
        let mut keys: HashSet<String> = first.event.keys().into_iter().flatten().collect();
        let mut batch = vec![first];
        while let Some(events) = events.as_mut().filter(|_| batch.len() < MAX_BATCH) {
            let Ok(next) = events.try_recv() else { break };
            let next_keys: Vec<String> = next.event.keys().into_iter().flatten().collect();
            if next_keys.iter().any(|k| keys.contains(k)) {
                *carried = Some(next);
                break;
            }
            keys.extend(next_keys);
            batch.push(next);
        }
        drop(events);
        batch.sort_by_cached_key(|p| p.event.keys());
        Some(batch)
    }

    async fn commit(&self, db: &PgPool, batch: Vec<Pending>) {
        let events: Vec<Event> = batch.iter().map(|p| p.event.clone()).collect();
        let began = Instant::now();
        let recorded = record(db, &events).await;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.events.fetch_add(events.len() as u64, Ordering::Relaxed);
        self.stats.busy_micros.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        match recorded {
            Ok(answers) => {
                for (pending, answer) in batch.into_iter().zip(answers) {
                    self.answer(pending, answer);
                }
            }
            // One bad event (a demo name another repository holds, say) fails its batch:
            // record each alone, so it alone gets the error.
            Err(err) if batch.len() > 1 => {
                tracing::debug!(error = %err, size = batch.len(), "batch failed; recording its events one by one");
                for pending in batch {
                    let answer = record_alone(db, &pending.event).await;
                    self.answer(pending, answer);
                }
            }
            Err(err) => {
                if let Some(pending) = batch.into_iter().next() {
                    // Tried alone already: a unique violation gets its one more try here.
                    let answer =
                        if is_unique_violation(&err) { record_once(db, &pending.event).await } else { Err(err) };
                    self.answer(pending, answer);
                }
            }
        }
    }

    fn answer(&self, pending: Pending, answer: sqlx::Result<Recorded>) {
        if let Ok(Recorded { demo: Some(demo), chain: Some(chain), .. }) = &answer {
            // Only fails when the starter has stopped; the tick starts the chain then.
            let _ = self.started.send((demo.id, *chain));
        }
        // The handler may have gone (the client hung up); the event is recorded anyway.
        let _ = pending.answer.send(answer);
    }
}

/// Record `event` alone, trying once more after a unique violation: the other writer may
/// have been creating the same demo at the same moment (its insert's `on conflict` covers
/// `(owner, repo, pr)`, not the name index a concurrent insert of the same demo trips
/// first), or recording the same delivery (a redelivery that came while the first was being
/// recorded), and the second try finds the demo it made or the delivery it recorded. A name
/// another repository holds fails both tries.
async fn record_alone(db: &PgPool, event: &Event) -> sqlx::Result<Recorded> {
    match record_once(db, event).await {
        Err(err) if is_unique_violation(&err) => {
            tracing::debug!(error = %err, "event refused by a unique index; trying it once more");
            record_once(db, event).await
        }
        answer => answer,
    }
}

/// Record `event` in a batch of its own.
async fn record_once(db: &PgPool, event: &Event) -> sqlx::Result<Recorded> {
    record(db, std::slice::from_ref(event)).await.and_then(|mut answers| answers.pop().expect("one answer per event"))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Starts the chains the intake created: for each demo only its newest, since an older one
/// is superseded already.
pub struct Starter {
    chains: mpsc::UnboundedReceiver<(Uuid, Uuid)>,
}

impl Starter {
    pub async fn run(mut self, scheduler: Scheduler, stop: CancellationToken) {
        let mut newest: Vec<(Uuid, Uuid)> = Vec::new();
        loop {
            let first = tokio::select! {
                started = self.chains.recv() => match started {
                    Some(started) => started,
                    None => return,
                },
                () = stop.cancelled() => return,
            };
            newest.clear();
            newest.push(first);
            while let Ok((demo, chain)) = self.chains.try_recv() {
                match newest.iter_mut().find(|(d, _)| *d == demo) {
                    Some(entry) => entry.1 = chain,
                    None => newest.push((demo, chain)),
                }
            }
            for (_, chain) in &newest {
                if let Err(err) = scheduler.start(*chain).await {
                    tracing::warn!(%chain, error = %err, "starting a chain failed; the tick retries");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pending(delivery: &str) -> Pending {
        let (answer, _) = oneshot::channel();
        Pending { event: Event::record(delivery, "ping", None, "ping", None), answer }
    }

    #[tokio::test]
    async fn a_batch_is_cut_before_a_second_event_of_one_delivery() {
        let (intake, writer, _starter) = Intake::new();
        for delivery in ["a", "b", "a", "c"] {
            intake.queue.send(pending(delivery)).await.unwrap();
        }
        let mut carried = None;
        let batch = writer.gather(&mut carried).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|p| p.event.delivery.clone().unwrap()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(carried.as_ref().and_then(|p| p.event.delivery.as_deref()), Some("a"));
        let next = writer.gather(&mut carried).await.unwrap();
        assert_eq!(next.len(), 2, "the carried event first, then what waits");
    }

    #[tokio::test]
    async fn an_event_in_hand_is_never_held_up_by_the_other_writer() {
        let (intake, writer, _starter) = Intake::new();
        // One writer waits for events, holding the queue.
        let idle = writer.clone();
        let waiting = tokio::spawn(async move { idle.gather(&mut None).await.map(|batch| batch.len()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The other has an event carried over: it goes out now, alone.
        let mut carried = Some(pending("carried"));
        let batch = tokio::time::timeout(Duration::from_secs(5), writer.gather(&mut carried))
            .await
            .expect("not held up by the idle writer")
            .unwrap();
        assert_eq!(batch.len(), 1);
        intake.queue.send(pending("next")).await.unwrap();
        assert_eq!(waiting.await.unwrap(), Some(1), "the idle writer takes the next event");
    }
}
