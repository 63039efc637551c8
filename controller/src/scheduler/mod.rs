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
    /// Routes changed: reload them in the edge's table.
    pub routes_changed: RouteChange,
}

impl Effects {
    pub fn merge(self, other: Effects) -> Effects {
        Effects {
            published: self.published || other.published,
            routes_changed: self.routes_changed.merge(other.routes_changed),
        }
    }
}

/// Whose routes changed: the edge reloads one demo's route, or all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    #[default]
    None,
    Demo(uuid::Uuid),
    Many,
}

impl RouteChange {
    pub fn merge(self, other: RouteChange) -> RouteChange {
        match (self, other) {
            (RouteChange::None, change) | (change, RouteChange::None) => change,
            (RouteChange::Demo(a), RouteChange::Demo(b)) if a == b => RouteChange::Demo(a),
            _ => RouteChange::Many,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RouteChange;

    #[test]
    fn route_changes_of_two_demos_merge_into_many() {
        let (a, b) = (RouteChange::Demo(uuid::Uuid::from_u128(1)), RouteChange::Demo(uuid::Uuid::from_u128(2)));
        assert_eq!(RouteChange::None.merge(a), a);
        assert_eq!(a.merge(RouteChange::None), a);
        assert_eq!(a.merge(a), a);
        assert_eq!(a.merge(b), RouteChange::Many);
        assert_eq!(RouteChange::Many.merge(RouteChange::None), RouteChange::Many);
        assert_eq!(RouteChange::None.merge(RouteChange::None), RouteChange::None);
    }
}
