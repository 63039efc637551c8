//! Placement and chain orchestration: what happens to a demo after an event, step by step.
//!
//! Every function here runs inside the caller's transaction and returns [`Effects`] that
//! the caller applies after commit (wake the outbox publisher, reload routes), so nothing
//! leaves the process before the state that caused it is durable.

pub mod authorize;
pub mod orchestrate;
pub mod placement;

/// What must happen once the transaction commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Effects {
    /// Messages were put in the outbox.
    pub published: bool,
    /// Routes changed: reload the edge's table.
    pub routes_changed: bool,
}

impl Effects {
    pub fn merge(self, other: Effects) -> Effects {
        Effects {
            published: self.published || other.published,
            routes_changed: self.routes_changed || other.routes_changed,
        }
    }
}
