//! Recording events in batches (group commit), and starting the chains they create.
//!
//! Each webhook handler verifies and parses its delivery, then hands the event to the
//! [`Intake`] and waits. Each of [`WRITERS`] writers takes every event waiting in its queue at
//! that moment and records them with one call of [`crate::db::events::record`] (migration
//! 0003): one round trip and one commit for the whole batch. A pull request's events always
//! go to the same writer ([`writer_for`]), so a controller's writers never lock the same demo
//! and one commits while another records its batch. The handler answers 202 once that
//! commit is done, so a 202 still means durable. A deploy's chain is not made then: the
//! [`Starter`] begins it outside the request, for the newest generation of each demo only and
//! at most once per [`START_INTERVAL`] (a teardown's chain, made by the intake, it starts the
//! same way), and the periodic tick begins any generation a crash left not begun.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::events::{record, Event, Recorded};
use crate::scheduler::orchestrate::Start;
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
    /// Each writer's queue.
    queues: Arc<[mpsc::Sender<Pending>]>,
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
    /// The handle, and the [`WRITERS`] writer tasks and the starter task to run.
    pub fn new() -> (Intake, Vec<Writer>, Starter) {
        Intake::with_writers(WRITERS)
    }

    fn with_writers(count: usize) -> (Intake, Vec<Writer>, Starter) {
        let (started, chains) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let (queues, writers): (Vec<_>, Vec<_>) = (0..count)
            .map(|_| {
                let (queue, events) = mpsc::channel(4 * MAX_BATCH);
                (queue, Writer { events, started: started.clone(), stats: stats.clone() })
            })
            .unzip();
        (Intake { queues: queues.into(), stats }, writers, Starter { chains })
    }

    /// Record `event` with whatever else is waiting for its writer, and return once it is
    /// committed.
    pub async fn submit(&self, event: Event) -> Result<sqlx::Result<Recorded>, Stopped> {
        let (answer, answered) = oneshot::channel();
        let queue = &self.queues[writer_for(&event, self.queues.len())];
        queue.send(Pending { event, answer }).await.map_err(|_| Stopped)?;
        answered.await.map_err(|_| Stopped)
    }
}

/// Which of `writers` records `event`: by its pull request, so that a pull request's events
/// are recorded by one writer in the order they came and two writers never wait for each
/// other's locks on a demo; by its delivery when it is about no pull request.
fn writer_for(event: &Event, writers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match event.pull_request_key() {
        Some(pull_request) => pull_request.hash(&mut hasher),
        None => event.delivery.hash(&mut hasher),
    }
    (hasher.finish() % writers as u64) as usize
}

/// Takes the events waiting in its queue in batches and records each batch with one commit.
pub struct Writer {
    events: mpsc::Receiver<Pending>,
    started: mpsc::UnboundedSender<(Uuid, Start)>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Run until `stop`, finishing the batch at hand.
    pub async fn run(mut self, db: PgPool, stop: CancellationToken) {
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

    /// The next batch: the event carried over, else the next to come, then what waits now,
    /// up to the first event that must not share it (carried over to the next), sorted by
    /// pull request so that writers (of other replicas) lock demos in one order; a pull
    /// request's events stay in their order.
    async fn gather(&mut self, carried: &mut Option<Pending>) -> Option<Vec<Pending>> {
        let first = match carried.take() {
            Some(pending) => pending,
            None => self.events.recv().await?,
        };
        let mut held = Held::default();
        held.admit(&first.event);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = self.events.try_recv() else { break };
            if !held.admit(&next.event) {
                *carried = Some(next);
                break;
            }
            batch.push(next);
        }
        batch.sort_by_cached_key(|p| p.event.pull_request_key());
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
        if let Some(start) = answer.as_ref().ok().and_then(Start::of) {
            // Only fails when the starter has stopped; the tick starts it then.
            let _ = self.started.send(start);
        }
        // The handler may have gone (the client hung up); the event is recorded anyway.
        let _ = pending.answer.send(answer);
    }
}

/// The keys a batch's events hold ([`Event::keys`]), each with whether it may be shared.
#[derive(Default)]
struct Held(HashMap<String, bool>);

impl Held {
    /// Take `event`'s keys, unless one of them clashes with a key held already: then take
    /// nothing and say so.
    fn admit(&mut self, event: &Event) -> bool {
        let keys = event.keys();
        let clashes =
            keys.iter().flatten().any(|(key, shared)| self.0.get(key).is_some_and(|held| !(*held && *shared)));
        if !clashes {
            for (key, shared) in keys.into_iter().flatten() {
                *self.0.entry(key).or_insert(shared) &= shared;
            }
        }
        !clashes
    }
}

/// Record `event` alone, trying once more after a unique violation: a writer of another
/// replica may have been creating the same demo at the same moment (the intake's statement
/// inserts a demo it did not find, and the unique indexes refuse the second of two such
/// inserts), or recording the same delivery (a redelivery that came while the first was
/// being recorded), and the second try finds the demo it made or the delivery it recorded.
/// A name another repository holds fails both tries.
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

/// A demo's chains start at most once per this long. A burst of events for one pull request
/// (pushes in quick succession) starts its first generation at once, then only the newest of
/// those that came within the interval, when it ends: each older one would have been
/// superseded as soon as it began. A chain's first steps (clone, build) take seconds at
/// least, so a newer push within the interval waits less than the run it replaces would
/// have taken; and pushes seconds apart each start at once.
pub const START_INTERVAL: Duration = Duration::from_secs(2);

/// The longest pause between two starts of one burst (see [`Starter`]).
const MAX_START_PAUSE: Duration = Duration::from_millis(20);

/// Starts what the intake recorded: for each demo only its newest generation (or its
/// teardown), since an older one is superseded already, and no sooner than
/// [`START_INTERVAL`] after its last start. What this task does not start, the tick does.
///
/// Starts due together (many pull requests pushed at once, and each of them again
/// [`START_INTERVAL`] later) are spread out: after each, the starter pauses as long as it
/// took (at most [`MAX_START_PAUSE`]) before the next. A start holds its demo's lock for a
/// few round trips and sets off the chain's first messages and their results; made back to
/// back, fifty of them held up every batch of the intake for 100–370 ms, every two seconds
/// (docs/benchmarks.md, 2026-12-07, open loop). Paced, they take at most half the time of
/// the database connection they use, and a burst of fifty still starts within a fraction
/// of the interval.
pub struct Starter {
    chains: mpsc::UnboundedReceiver<(Uuid, Start)>,
}

impl Starter {
    pub async fn run(mut self, scheduler: Scheduler, stop: CancellationToken) {
        let mut throttle = Throttle::default();
        loop {
            let wake = throttle.next_start();
            let received = tokio::select! {
                received = self.chains.recv() => match received {
                    Some(received) => Some(received),
                    None => return,
                },
                () = until(wake) => None,
                () = stop.cancelled() => return,
            };
            let now = Instant::now();
            for (demo, start) in received.into_iter().chain(std::iter::from_fn(|| self.chains.try_recv().ok())) {
                throttle.offer(demo, start, now);
            }
            let mut pause = Duration::ZERO;
            for (demo, start) in throttle.due(now) {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                let began = Instant::now();
                if let Err(err) = scheduler.start(demo, start).await {
                    tracing::warn!(%demo, ?start, error = %err, "starting a chain failed; the tick retries");
                }
                pause = began.elapsed().min(MAX_START_PAUSE);
            }
        }
    }
}

/// Wait until `at`, or for ever.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What to start when: each demo's newest, at most once per [`START_INTERVAL`].
#[derive(Default)]
struct Throttle {
    /// Demo → when its last start was.
    started: HashMap<Uuid, Instant>,
    /// Demo → its newest start not made yet, and when it may be.
    waiting: HashMap<Uuid, (Instant, Start)>,
}

impl Throttle {
    /// `start`, demo `demo`'s newest, came at `now`.
    fn offer(&mut self, demo: Uuid, start: Start, now: Instant) {
        let at = self.started.get(&demo).map_or(now, |last| (*last + START_INTERVAL).max(now));
        self.waiting.insert(demo, (at, start));
    }

    /// When the next start waiting may be made.
    fn next_start(&self) -> Option<Instant> {
        self.waiting.values().map(|(at, _)| *at).min()
    }

    /// What to start at `now`, each with its demo, noted as started.
    fn due(&mut self, now: Instant) -> Vec<(Uuid, Start)> {
        let demos: Vec<Uuid> = self.waiting.iter().filter(|(_, (at, _))| *at <= now).map(|(demo, _)| *demo).collect();
        let starts = demos
            .into_iter()
            .filter_map(|demo| {
                self.started.insert(demo, now);
                self.waiting.remove(&demo).map(|(_, start)| (demo, start))
            })
            .collect();
        // A start longer ago than the interval holds nothing back.
        self.started.retain(|_, last| now.duration_since(*last) < START_INTERVAL);
        starts
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use time::OffsetDateTime;

    use super::*;
    use crate::db::demos::DeployRequest;
    use crate::db::events::Kind;

    fn pending(event: Event) -> Pending {
        let (answer, _) = oneshot::channel();
        Pending { event, answer }
    }

    fn ping(delivery: &str) -> Pending {
        pending(Event::record(delivery, "ping", None, "ping", None))
    }

    #[test]
    fn a_demo_starts_its_first_generation_at_once_and_then_its_newest_once_per_interval() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let teardown = Start::Chain(Uuid::new_v4());
        let t0 = Instant::now();
        let mut throttle = Throttle::default();
        throttle.offer(a, Start::Generation(1), t0);
        assert_eq!(throttle.due(t0), [(a, Start::Generation(1))], "the first generation starts at once");
        // Two more for demo a within the interval: only the newer, at the interval's end.
        let soon = t0 + START_INTERVAL / 5;
        throttle.offer(a, Start::Generation(2), soon);
        throttle.offer(a, Start::Generation(3), soon);
        // Demo b is held back by nothing.
        throttle.offer(b, Start::Generation(7), soon);
        assert_eq!(throttle.due(soon), [(b, Start::Generation(7))]);
        assert_eq!(throttle.next_start(), Some(t0 + START_INTERVAL));
        assert_eq!(throttle.due(t0 + START_INTERVAL - Duration::from_millis(1)), []);
        assert_eq!(throttle.due(t0 + START_INTERVAL), [(a, Start::Generation(3))]);
        assert_eq!(throttle.next_start(), None);
        // Long after its last start, a demo's teardown starts at once.
        let later = t0 + 10 * START_INTERVAL;
        throttle.offer(a, teardown, later);
        assert_eq!(throttle.due(later), [(a, teardown)]);
    }

    /// An intake of one writer, and that writer.
    fn one_writer() -> (Intake, Writer) {
        let (intake, mut writers, _starter) = Intake::with_writers(1);
        (intake, writers.pop().unwrap())
    }

    #[tokio::test]
    async fn a_batch_is_cut_before_a_second_event_of_one_delivery() {
        let (intake, mut writer) = one_writer();
        for delivery in ["a", "b", "a", "c"] {
            intake.queues[0].send(ping(delivery)).await.unwrap();
        }
        let mut carried = None;
        let batch = writer.gather(&mut carried).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|p| p.event.delivery.clone().unwrap()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(carried.as_ref().and_then(|p| p.event.delivery.as_deref()), Some("a"));
        let next = writer.gather(&mut carried).await.unwrap();
        assert_eq!(next.len(), 2, "the carried event first, then what waits");
    }

    fn deploy(pr: i64, delivery: &str, kind: Kind, at: Option<OffsetDateTime>, pusher: Option<&str>) -> Pending {
        let request = DeployRequest {
            owner: "o".into(),
            repo: "r".into(),
            pr,
            name: format!("r-o-pr-{pr}"),
            sha: "0".repeat(40),
            clone_url: "https://github.com/o/r.git".into(),
            github_user: "u".into(),
            pushed_by: pusher.map(Into::into),
            title: None,
        };
        pending(Event::pull_request(kind, request, "github:u", at).delivered(delivery, "pull_request", "x"))
    }

    #[tokio::test]
    async fn deploys_of_one_pull_request_share_a_batch_in_their_order_unless_one_cannot() {
        let (intake, mut writer) = one_writer();
        let at = Some(OffsetDateTime::UNIX_EPOCH);
        let events = [
            deploy(2, "a", Kind::Deploy, at, Some("alice")),
            deploy(1, "b", Kind::Deploy, at, Some("bob")),
            deploy(2, "c", Kind::Deploy, at, Some("carol")),
            // Without its sender it goes to a batch of its own.
            deploy(2, "d", Kind::Deploy, at, None),
            deploy(2, "e", Kind::Deploy, None, Some("erin")),
            deploy(2, "f", Kind::Teardown, at, Some("frank")),
            deploy(3, "g", Kind::Deploy, at, Some("gina")),
        ];
        for pending in events {
            intake.queues[0].send(pending).await.unwrap();
        }
        let mut carried = None;
        let mut batches = Vec::new();
        for _ in 0..4 {
            let batch = writer.gather(&mut carried).await.unwrap();
            batches.push(batch.iter().map(|p| p.event.delivery.clone().unwrap()).collect::<Vec<_>>().join(""));
        }
        assert_eq!(batches, ["bac", "d", "e", "fg"], "sorted by pull request, each one's events in order");
    }

    #[tokio::test]
    async fn a_pull_requests_events_go_to_one_writer_and_the_writers_share_the_pull_requests() {
        let (intake, mut writers, _starter) = Intake::with_writers(WRITERS);
        let at = Some(OffsetDateTime::UNIX_EPOCH);
        // Two deliveries of each of 32 pull requests, then a ping delivered twice.
        let mut events: Vec<Event> = (0..32)
            .flat_map(|pr| (0..2).map(move |n| deploy(pr, &format!("{pr}-{n}"), Kind::Deploy, at, Some("u")).event))
            .collect();
        events.extend((0..2).map(|_| ping("p").event));
        let submitted = events.len();
        for event in events {
            let intake = intake.clone();
            // Never answered: the writers below only take the events from their queues.
            tokio::spawn(async move { intake.submit(event).await });
        }
        let mut keys: Vec<HashSet<String>> = Vec::new();
        let mut taken = 0;
        for writer in &mut writers {
            let mut held = HashSet::new();
            while let Ok(Some(pending)) = tokio::time::timeout(Duration::from_millis(200), writer.events.recv()).await {
                taken += 1;
                held.extend(pending.event.pull_request_key().or(pending.event.delivery));
            }
            keys.push(held);
        }
        assert_eq!(taken, submitted, "every event reaches a writer");
        let sizes: Vec<usize> = keys.iter().map(HashSet::len).collect();
        assert_eq!(
            sizes.iter().sum::<usize>(),
            33,
            "32 pull requests and the ping, each at one writer only: {sizes:?}"
        );
        assert!(sizes.iter().all(|n| *n >= 4), "each writer takes its share: {sizes:?}");
    }
}
