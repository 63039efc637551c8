//! What a decision reads: the demo's record, the settings, and what was asked of the world
//! for it.

use std::time::Duration;

use crate::db::chains::{Chain, ChainStep};
use crate::db::demos::Demo;
use crate::urls::DemoUrls;

/// A demo's current record, as a decision reads it.
#[derive(Debug, Clone)]
pub struct Record {
    pub demo: Demo,
    pub chain: Chain,
    /// The chain's steps as planned ([`super::planned`]).
    pub steps: Vec<ChainStep>,
}

/// The settings decisions follow, fixed at start.
#[derive(Debug, Clone)]
pub struct Rules {
    /// GitHub is configured: pull requests hear of their demos' states, and authors'
    /// permissions are asked there.
    pub github: bool,
    /// Authors whose demos start unapproved when GitHub is not configured (`*`: anyone).
    pub trusted_authors: Vec<String>,
    /// The waits before each retry of a failed step; their number is the retries allowed.
    pub retry_delays: Vec<Duration>,
    /// How demos are addressed, for what steps are told.
    pub urls: DemoUrls,
}

/// What a decision reads besides the record.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub rules: &'a Rules,
    /// A recent answer from GitHub: may the demo's author write to its repository?
    pub author_may_write: Option<bool>,
    /// The host placement offered, once a decision asked for one ([`super::write::Decision::Place`]).
    pub placement: Placement,
}

/// Placement's answer for a demo that needs a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    NotAsked,
    /// The host to use; none: no host can take the demo now.
    Offered(Option<String>),
}
