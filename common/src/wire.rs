//! Messages between controller and agents. Every message carries [`WIRE_VERSION`]; a
//! receiver refuses versions it does not know instead of guessing.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of every message defined here.
pub const WIRE_VERSION: u32 = 1;

/// AMQP `type` of a [`StepMessage`].
pub const KIND_STEP: &str = "step";
/// AMQP `type` of a [`StepResult`].
pub const KIND_RESULT: &str = "result";
/// AMQP `type` of a [`DeadStep`] in the dead-letter queue.
pub const KIND_DEAD: &str = "dead";
/// AMQP `type` of a [`Cleanup`] on a host queue.
pub const KIND_CLEANUP: &str = "cleanup";

/// Everything an agent needs to know about the demo a step works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoSpec {
    pub id: Uuid,
    /// Sanitized `<repo>-<owner>-pr-<n>`: the DNS label and the clone folder name.
    pub name: String,
    pub owner: String,
    pub repo: String,
    pub pr: u64,
    /// Head commit to check out.
    pub sha: String,
    /// Where to fetch the head commit from (the head repository for fork PRs).
    pub clone_url: String,
    /// `<name>.<base domain>`.
    pub hostname: String,
    /// Full URL of the demo, as shown to people.
    pub url: String,
    /// The PR author's login.
    pub github_user: String,
    /// Bumped for every event that changes what the demo should be.
    pub generation: i64,
    /// An admin let the repository's legacy `./run` run on the host (repository setting
    /// `legacy_run`); without it, a repository with only `./run` is refused.
    #[serde(default)]
    pub legacy_run: bool,
    /// The repository's previews may not open connections beyond their host (repository
    /// setting `closed_outbound`): the demo's network is one the host's firewall closes.
    #[serde(default)]
    pub closed_outbound: bool,
    /// The repository's environment variables for the container (repository secrets), set
    /// in launch steps only: sealed with the key controller and agents share, never in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<DemoEnv>,
}

/// A demo's environment variables as a step message carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoEnv {
    /// `NAME`/value pairs sealed (hex) by [`crate::sealed::seal_env`] with the transport key, for
    /// [`crate::sealed::transport_aad`] of the demo's id and generation.
    Sealed(String),
    /// The repository has variables the controller could not send; the launch fails saying
    /// why (no values in it).
    Unavailable(String),
}

/// The steps of a chain. Agent steps run on the demo's host; controller steps in the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Authorize,
    Checkout,
    Build,
    Launch,
    Health,
    Route,
    /// Remove older generations once the route points at the new one.
    Retire,
    Unroute,
    Stop,
    /// Stop an idle demo's container, keeping it, its image and its clone.
    Sleep,
    /// Start a sleeping demo's container again.
    Wake,
}

impl Step {
    /// Every step. Which chain runs which, in what order, is the controller's (`chain::steps`).
    pub const ALL: [Step; 11] = [
        Step::Authorize,
        Step::Checkout,
        Step::Build,
        Step::Launch,
        Step::Health,
        Step::Route,
        Step::Retire,
        Step::Unroute,
        Step::Stop,
        Step::Sleep,
        Step::Wake,
    ];

    /// True for steps an agent runs.
    pub fn runs_on_agent(self) -> bool {
        !matches!(self, Step::Authorize | Step::Route | Step::Unroute)
    }

    /// True for controller steps that only change the database, run within the
    /// transaction that reaches them.
    pub fn is_inline(self) -> bool {
        matches!(self, Step::Route | Step::Unroute)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Authorize => "authorize",
            Step::Checkout => "checkout",
            Step::Build => "build",
            Step::Launch => "launch",
            Step::Health => "health",
            Step::Route => "route",
            Step::Retire => "retire",
            Step::Unroute => "unroute",
            Step::Stop => "stop",
            Step::Sleep => "sleep",
            Step::Wake => "wake",
        }
    }

    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One step of a chain, sent to the queue of the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMessage {
    pub version: u32,
    pub chain_id: Uuid,
    pub step: Step,
    pub attempt: u32,
    pub host_id: String,
    pub demo: DemoSpec,
}

/// What an agent reports after running a step, sent to the controller queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub version: u32,
    pub chain_id: Uuid,
    pub demo_id: Uuid,
    pub generation: i64,
    pub step: Step,
    pub attempt: u32,
    pub host_id: String,
    /// How long the step ran.
    #[serde(default)]
    pub duration_ms: u64,
    pub outcome: StepOutcome,
}

impl StepResult {
    /// The result of running `message` on `host_id` for `duration`.
    pub fn of(message: &StepMessage, host_id: &str, duration: std::time::Duration, outcome: StepOutcome) -> StepResult {
        StepResult {
            version: WIRE_VERSION,
            chain_id: message.chain_id,
            demo_id: message.demo.id,
            generation: message.demo.generation,
            step: message.step,
            attempt: message.attempt,
            host_id: host_id.to_string(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            outcome,
        }
    }
}

/// A step that used up its attempts, kept in `demofleet.dead` for people to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadStep {
    pub version: u32,
    pub message: StepMessage,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded(StepOutput),
    Failed {
        error: String,
        /// False when trying again cannot help (nothing to build, say).
        #[serde(default = "yes")]
        retryable: bool,
    },
}

fn yes() -> bool {
    true
}

/// What a successful step learned, for the steps after it and for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Port on the host's address where the demo answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Set by `authorize` when the author may not start demos: the chain waits for approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_approval: bool,
}

/// Sent by every agent every few seconds on NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub version: u32,
    pub host_id: String,
    /// Where the edge reaches this host's demos.
    pub address: String,
    /// How many demos this host may run.
    pub capacity: u32,
    pub agent_version: String,
    /// Demo containers on this host, from Docker's labels.
    pub inventory: Vec<InventoryItem>,
    /// The file system of the demo directory (clones; Docker's images usually share it).
    #[serde(default)]
    pub disk: Option<Disk>,
}

/// Controller → agent: remove these demo containers, which belong to no demo the
/// controller knows on this host (orphans after a host came back, say) or to a generation
/// long replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    pub version: u32,
    pub host_id: String,
    pub containers: Vec<String>,
}

/// Size and free space of a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    pub demo_id: Uuid,
    pub generation: i64,
    pub container_id: String,
    /// Docker's container state: `running`, `exited`, …
    pub state: String,
}

/// The newest generation of each demo that a receiver of steps has seen. Chains of one demo
/// may arrive out of order (a redelivery, a retry's delay); a step of a generation older than
/// one already seen is superseded and dropped.
#[derive(Debug, Default)]
pub struct NewestGenerations(std::sync::Mutex<std::collections::HashMap<Uuid, i64>>);

impl NewestGenerations {
    /// Record `generation` of `demo` as seen and say whether a newer one was seen before.
    pub fn is_superseded(&self, demo: Uuid, generation: i64) -> bool {
        let mut newest = self.0.lock().expect("generation map");
        let seen = newest.entry(demo).or_insert(generation);
        if generation < *seen {
            return true;
        }
        *seen = generation;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_generations_are_superseded_once_a_newer_one_was_seen() {
        let newest = NewestGenerations::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(!newest.is_superseded(a, 2));
        assert!(!newest.is_superseded(a, 2), "the same generation again is not superseded");
        assert!(newest.is_superseded(a, 1));
        assert!(!newest.is_superseded(b, 1), "each demo on its own");
        assert!(!newest.is_superseded(a, 3));
        assert!(newest.is_superseded(a, 2));
    }

    #[test]
    fn step_names_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(json, format!("\"{}\"", step.as_str()));
        }
        assert_eq!(Step::parse("deploy"), None);
    }

    #[test]
    fn outcome_is_tagged_by_status() {
        let ok = StepOutcome::Succeeded(StepOutput { host_port: Some(3000), ..Default::default() });
        assert_eq!(serde_json::to_value(&ok).unwrap(), serde_json::json!({"status": "succeeded", "host_port": 3000}));
        let failed = StepOutcome::Failed { error: "no Dockerfile".into(), retryable: false };
        let back: StepOutcome = serde_json::from_value(serde_json::to_value(&failed).unwrap()).unwrap();
        assert_eq!(back, failed);
        let old: StepOutcome = serde_json::from_str(r#"{"status":"failed","error":"x"}"#).unwrap();
        assert_eq!(old, StepOutcome::Failed { error: "x".into(), retryable: true });
    }
}
