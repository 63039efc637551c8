//! Log lines on their way to the controller's keeper over NATS, sent by one task: each
//! demo's in the order they were printed, the demos' in turn. A demo that prints faster
//! than NATS takes its lines loses its own lines beyond its share of the queue, not another
//! demo's, nor the agent's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use demofleet_common::topology;
use tokio::sync::Notify;

/// Bytes of one demo's lines waiting to be sent, at most.
const DEMO_BYTES: usize = 4 << 20;
/// Bytes of all demos' lines waiting to be sent, at most.
const TOTAL_BYTES: usize = 64 << 20;
/// What a line costs beyond its text (its headers, its place in the queue), counted
/// against the bounds so that a flood of empty lines is bounded too.
const LINE_OVERHEAD: usize = 128;

struct Line {
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
}

impl Line {
    fn cost(&self) -> usize {
        self.payload.len() + LINE_OVERHEAD
    }
}

/// One demo's lines waiting, oldest first.
#[derive(Default)]
struct DemoLines {
    lines: VecDeque<Line>,
    bytes: usize,
}

/// The lines waiting, by demo (by subject: one per demo), and whose turn is next.
struct Waiting {
    demos: HashMap<String, DemoLines>,
    /// The subjects with lines waiting, in the order they take turns.
    turns: VecDeque<String>,
    bytes: usize,
    demo_bytes: usize,
    total_bytes: usize,
}

/// The queue had no room for a line: its demo's share, or the whole, is full.
#[derive(Debug, PartialEq)]
struct Full;

impl Waiting {
    fn new(demo_bytes: usize, total_bytes: usize) -> Waiting {
        Waiting { demos: HashMap::new(), turns: VecDeque::new(), bytes: 0, demo_bytes, total_bytes }
    }

    /// Queue `line` for `subject`, unless its demo's share or the whole is full.
    fn push(&mut self, subject: &str, line: Line) -> Result<(), Full> {
        let cost = line.cost();
        let held = self.demos.get(subject).map_or(0, |demo| demo.bytes);
        if held + cost > self.demo_bytes || self.bytes + cost > self.total_bytes {
            return Err(Full);
        }
        let demo = self.demos.entry(subject.to_string()).or_default();
        if demo.lines.is_empty() {
            self.turns.push_back(subject.to_string());
        }
        demo.lines.push_back(line);
        demo.bytes += cost;
        self.bytes += cost;
        Ok(())
    }

    /// The oldest line of the demo whose turn it is; that demo then waits behind the others.
    fn pop(&mut self) -> Option<(String, Line)> {
        let subject = self.turns.pop_front()?;
        let demo = self.demos.get_mut(&subject).expect("a demo takes turns while it has lines");
        let line = demo.lines.pop_front().expect("a demo takes turns while it has lines");
        demo.bytes -= line.cost();
        self.bytes -= line.cost();
        if demo.lines.is_empty() {
            self.demos.remove(&subject);
        } else {
            self.turns.push_back(subject.clone());
        }
        Some((subject, line))
    }
}

/// What the senders and the task share.
struct Shared {
    waiting: Mutex<Waiting>,
    /// Woken when a line is queued or the last sender is gone.
    ready: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
}

/// Closes the queue when the last [`LogLines`] clone is dropped, so the task ends.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

/// The sending end; clones share the queue.
#[derive(Clone)]
pub struct LogLines {
    shared: Arc<Closer>,
}

impl LogLines {
    /// The queue, and the task that empties it into `nats` (it ends with the last clone).
    pub fn start(nats: async_nats::Client) -> LogLines {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::new(DEMO_BYTES, TOTAL_BYTES)),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let task = shared.clone();
        tokio::spawn(async move {
            loop {
                let next = task.waiting.lock().expect("log queue").pop();
                match next {
                    Some((subject, line)) => {
                        if let Err(err) = nats.publish_with_headers(subject, line.headers, line.payload.into()).await {
                            tracing::warn!(error = %err, "a log line was not sent");
                        }
                    }
                    None if task.closed.load(Ordering::Acquire) => return,
                    None => task.ready.notified().await,
                }
            }
        });
        LogLines { shared: Arc::new(Closer(shared)) }
    }

    /// Send `line`, printed by `step` of generation `generation`, to `subject` (its
    /// demo's); the generation and step go in headers.
    pub fn send(&self, subject: String, generation: i64, step: &str, line: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(topology::LOG_GENERATION_HEADER, generation.to_string().as_str());
        headers.insert(topology::LOG_STEP_HEADER, step);
        let shared = &self.shared.0;
        let queued = shared.waiting.lock().expect("log queue").push(&subject, Line { headers, payload: line.into() });
        match queued {
            Ok(()) => shared.ready.notify_one(),
            Err(Full) => {
                let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, %subject, "log lines dropped: a demo printed more than NATS took");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Line {
        Line { headers: async_nats::HeaderMap::new(), payload: text.as_bytes().to_vec() }
    }

    fn drain(waiting: &mut Waiting) -> Vec<(String, String)> {
        std::iter::from_fn(|| waiting.pop())
            .map(|(subject, line)| (subject, String::from_utf8(line.payload).unwrap()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected.iter().map(|(s, l)| (s.to_string(), l.to_string())).collect()
    }

    #[test]
    fn each_demos_lines_go_in_order_the_demos_in_turn() {
        let mut waiting = Waiting::new(DEMO_BYTES, TOTAL_BYTES);
        for (subject, text) in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"), ("b", "b2")] {
            waiting.push(subject, line(text)).unwrap();
        }
        let sent = drain(&mut waiting);
        assert_eq!(sent, pairs(&[("a", "a1"), ("b", "b1"), ("c", "c1"), ("a", "a2"), ("b", "b2"), ("a", "a3")]));
        assert_eq!((waiting.bytes, waiting.demos.len(), waiting.turns.len()), (0, 0, 0));
    }

    #[test]
    fn a_flooding_demo_loses_its_own_lines_not_anothers() {
        let each = line("flood").cost();
        let mut waiting = Waiting::new(10 * each, 100 * each);
        let kept = (0..1_000).filter(|i| waiting.push("flood", line(&format!("f{i}"))).is_ok()).count();
        assert_eq!(kept, 10, "the flooding demo keeps its share");
        waiting.push("quiet", line("q0")).expect("another demo's line finds room");
        let sent = drain(&mut waiting);
        assert_eq!(sent[..3], pairs(&[("flood", "f0"), ("quiet", "q0"), ("flood", "f1")]));
        let flood: Vec<&str> = sent.iter().filter(|(s, _)| s == "flood").map(|(_, l)| l.as_str()).collect();
        assert_eq!(flood, (0..10).map(|i| format!("f{i}")).collect::<Vec<_>>(), "the oldest kept, in order");
        // Room again once sent.
        waiting.push("flood", line("f1000")).unwrap();
    }

    #[test]
    fn all_demos_together_are_bounded_too() {
        let each = line("x").cost();
        let mut waiting = Waiting::new(2 * each, 5 * each);
        for demo in ["a", "b"] {
            for _ in 0..2 {
                waiting.push(demo, line("x")).unwrap();
            }
        }
        waiting.push("c", line("x")).unwrap();
        assert_eq!(waiting.push("d", line("x")), Err(Full), "the whole is full");
        assert_eq!(waiting.push("c", line("x")), Err(Full));
        waiting.pop().unwrap();
        waiting.push("d", line("x")).expect("room once a line is sent");
        // A line bigger than a demo's share is never queued.
        assert_eq!(Waiting::new(each, 5 * each).push("e", line("xx")), Err(Full));
    }
}
