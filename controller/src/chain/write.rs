//! What a decision asks for: nothing, a host first, or writes to carry out in order.

use std::fmt;
use std::time::Duration;

use demofleet_common::wire::{DeadStep, StepMessage, StepResult};

/// What a decision asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to record; why, for the log.
    Ignore(&'static str),
    /// Record and send these, in order, in the transaction that read the record.
    Do(Vec<Write>),
    /// A host must be chosen first: decide again with [`super::record::Facts::placement`] offered. (Placement
    /// takes a lock, so it is asked only when a chain reaches its first step on a host.)
    Place,
}

/// Why a person's action on a chain or demo is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// One thing to record or send, about the decision's demo and chain. Messages are sent
/// through the outbox: only once the transaction commits.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// The chain's status, and its error.
    Chain { status: &'static str, error: Option<String> },
    /// Step `index` of the planned steps: its status, error and output.
    Step { index: usize, status: &'static str, error: Option<String>, output: Option<serde_json::Value> },
    /// The demo's state, and its error.
    State { state: &'static str, error: Option<String> },
    /// Tell the pull request the demo's state (a job for the controller's queue).
    Notify,
    /// Requests for the demo go to its container (`true`), or nowhere.
    Routed(bool),
    /// The demo is placed on this host; none: on no host any more.
    Host(Option<String>),
    /// The demo's newest container answers on this port: the route follows it.
    Port(u16),
    /// The chain waits for a free host; the demo is `pending`.
    Park,
    /// Send step `index` to `queue`, and set the demo's state if given.
    Queue { index: usize, queue: String, message: StepMessage, state: Option<&'static str> },
    /// An attempt at step `index` ended with `result`: its history keeps it.
    Attempt { index: usize, result: StepResult },
    /// Send step `index` to `queue` again after `delay`; its last attempt failed with `error`.
    Retry { index: usize, queue: String, delay: Duration, message: StepMessage, error: String },
    /// A step that used up its attempts, to the dead-letter queue.
    Dead(DeadStep),
    /// The demo's commit `sha` is approved by `actor`.
    Approval { sha: String, actor: String },
    /// The step that waited for approval is done.
    ApprovedStep,
    /// The failed step is pending again, with a fresh budget of attempts.
    ResetFailedStep,
    /// Note a request for the demo now (a visit that woke it).
    Touch,
    /// An audit event about the demo.
    Audit { actor: String, action: &'static str, detail: serde_json::Value },
}

impl Write {
    /// Step `index`'s status, no error or output.
    pub fn step(index: usize, status: &'static str) -> Write {
        Write::Step { index, status, error: None, output: None }
    }

    /// The chain's status, no error.
    pub fn chain(status: &'static str) -> Write {
        Write::Chain { status, error: None }
    }
}

/// In a few words, for logs and tests.
impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = |e: &Option<String>| e.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
        match self {
            Write::Chain { status, error: e } => write!(f, "chain {status}{}", error(e)),
            Write::Step { index, status, error: e, .. } => write!(f, "step {index} {status}{}", error(e)),
            Write::State { state, error: e } => write!(f, "demo {state}{}", error(e)),
            Write::Notify => write!(f, "notify"),
            Write::Routed(routed) => write!(f, "{}", if *routed { "route" } else { "unroute" }),
            Write::Host(Some(host)) => write!(f, "host {host}"),
            Write::Host(None) => write!(f, "no host"),
            Write::Port(port) => write!(f, "port {port}"),
            Write::Park => write!(f, "park"),
            Write::Queue { index, queue, message, state } => {
                let state = state.map(|s| format!(", demo {s}")).unwrap_or_default();
                write!(f, "queue step {index} {} #{} to {queue}{state}", message.step.as_str(), message.attempt)
            }
            Write::Attempt { index, result } => write!(f, "attempt {} of step {index}", result.attempt),
            Write::Retry { index, delay, message, .. } => {
                write!(f, "retry step {index} {} #{} in {}s", message.step.as_str(), message.attempt, delay.as_secs())
            }
            Write::Dead(dead) => write!(f, "dead {} #{}", dead.message.step.as_str(), dead.message.attempt),
            Write::Approval { sha, actor } => write!(f, "approve {sha} by {actor}"),
            Write::ApprovedStep => write!(f, "approved step"),
            Write::ResetFailedStep => write!(f, "reset failed step"),
            Write::Touch => write!(f, "touch"),
            Write::Audit { actor, action, .. } => write!(f, "audit {action} by {actor}"),
        }
    }
}
