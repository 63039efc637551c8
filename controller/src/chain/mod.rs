//! The chain logic, as decisions: plain functions from a demo's current record (its row, its
//! chain and the chain's steps) and what happened (a chain to move on, a step's result, an
//! approval, a retry) to what to record and what to send. They read no database and send
//! nothing: [`crate::scheduler::orchestrate`] reads the record, asks here, and carries the
//! answer out in the transaction that read it, so these are unit-tested on plain data.
//!
//! A chain is a list of steps run in order ([`steps`]). Agent steps run on the demo's host,
//! `authorize` in the controller (asking GitHub), and `route`/`unroute` inline, in the
//! transaction that reaches them. A chain belongs to one generation of its demo; whatever
//! arrives for an older one is dropped by comparing generations, never by timing.
//!
//! # Layout
//! - [`steps`] (here): the order of each kind of chain, and chains planned from it.
//! - [`decide`]: the decisions.
//! - [`record`]: what they read ([`record::Record`], [`record::Rules`], [`record::Facts`]).
//! - [`write`](mod@write): what they ask for ([`write::Decision`], [`write::Write`]).
//! - [`message`]: what a step is told, and the queue it goes to.

pub mod decide;
pub mod message;
pub mod record;
pub mod write;

use uuid::Uuid;

use demofleet_common::wire::Step;

use crate::db::chains::{Chain, ChainStep, ChainView, StepView};

/// What a chain does to its demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Run a new generation: build, launch, route.
    Deploy,
    /// Stop the demo and remove what it left on its host.
    Teardown,
    /// Stop an idle demo's container, keeping it for a quick wake.
    Sleep,
    /// Start a sleeping demo's container again.
    Wake,
}

impl Kind {
    /// The kind stored as `kind` (chains are written from these names).
    pub fn parse(kind: &str) -> Kind {
        match kind {
            "deploy" => Kind::Deploy,
            "sleep" => Kind::Sleep,
            "wake" => Kind::Wake,
            _ => Kind::Teardown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Teardown => "teardown",
            Kind::Sleep => "sleep",
            Kind::Wake => "wake",
        }
    }
}

/// The steps of a chain of `kind`, in order: the one place a chain's order is written. The
/// controller plans, advances and shows chains from it; [`decide`] knows each step only by
/// where it runs (`Step::runs_on_agent`, `Step::is_inline`).
pub fn steps(kind: Kind) -> &'static [Step] {
    match kind {
        Kind::Deploy => {
            &[Step::Authorize, Step::Checkout, Step::Build, Step::Launch, Step::Health, Step::Route, Step::Retire]
        }
        Kind::Teardown => &[Step::Unroute, Step::Stop],
        Kind::Sleep => &[Step::Unroute, Step::Sleep],
        Kind::Wake => &[Step::Wake, Step::Health, Step::Route],
    }
}

/// A chain's steps as its kind plans them: those reached as `stored`, the rest pending.
pub fn planned(chain: &Chain, stored: &[ChainStep]) -> Vec<ChainStep> {
    plan(chain.id, Kind::parse(&chain.kind))
        .into_iter()
        .map(|step| stored.iter().find(|s| s.position == step.position).cloned().unwrap_or(step))
        .collect()
}

/// Chains as people see them: every planned step, those not reached yet as pending.
pub fn shown(chains: Vec<ChainView>) -> Vec<ChainView> {
    chains
        .into_iter()
        .map(|mut chain| {
            let plan = plan(chain.id, Kind::parse(&chain.kind));
            let mut stored = std::mem::take(&mut chain.steps);
            chain.steps = plan
                .iter()
                .map(|step| match stored.iter().position(|s| s.position == step.position) {
                    Some(i) => stored.swap_remove(i),
                    None => StepView::pending(step),
                })
                .collect();
            chain
        })
        .collect()
}

/// The steps of a new chain of `kind`, all pending.
fn plan(chain_id: Uuid, kind: Kind) -> Vec<ChainStep> {
    steps(kind)
        .iter()
        .enumerate()
        .map(|(i, step)| ChainStep {
            chain_id,
            position: i as i32 + 1,
            name: step.as_str().to_string(),
            status: "pending".into(),
            attempts: 0,
            budget_from: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_plans_its_steps_in_order() {
        let names = |kind| steps(kind).iter().map(|s| s.as_str()).collect::<Vec<_>>();
        assert_eq!(names(Kind::Deploy), ["authorize", "checkout", "build", "launch", "health", "route", "retire"]);
        assert_eq!(names(Kind::Teardown), ["unroute", "stop"]);
        assert_eq!(names(Kind::Sleep), ["unroute", "sleep"]);
        assert_eq!(names(Kind::Wake), ["wake", "health", "route"]);
        for kind in [Kind::Deploy, Kind::Teardown, Kind::Sleep, Kind::Wake] {
            assert_eq!(Kind::parse(kind.as_str()), kind);
        }
    }

    #[test]
    fn a_chain_is_planned_around_its_stored_steps() {
        let chain = Chain {
            id: Uuid::from_u128(1),
            demo_id: Uuid::from_u128(2),
            generation: 1,
            kind: "teardown".into(),
            status: "running".into(),
        };
        let stored = ChainStep {
            chain_id: chain.id,
            position: 1,
            name: "unroute".into(),
            status: "succeeded".into(),
            attempts: 0,
            budget_from: 0,
        };
        let steps = planned(&chain, std::slice::from_ref(&stored));
        let seen: Vec<(i32, &str, &str)> =
            steps.iter().map(|s| (s.position, s.name.as_str(), s.status.as_str())).collect();
        assert_eq!(seen, [(1, "unroute", "succeeded"), (2, "stop", "pending")]);
    }
}
