//! What a step is told, and where it is sent.

use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{DemoSpec, Step, StepMessage, WIRE_VERSION};

use super::record::Rules;
use crate::db::demos::Demo;
use crate::urls::DemoUrls;

/// What step `step` of `chain` is told about `demo`, on `host`, as attempt `attempt`.
pub fn step_message(
    rules: &Rules,
    demo: &Demo,
    host: Option<&str>,
    chain_id: Uuid,
    step: Step,
    attempt: i32,
) -> StepMessage {
    let host_id = if step.runs_on_agent() { host.unwrap_or_default().to_string() } else { "controller".into() };
    StepMessage {
        version: WIRE_VERSION,
        chain_id,
        step,
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        host_id,
        demo: spec(&rules.urls, demo),
    }
}

/// The queue of whoever runs `step` of a demo on `host`.
pub fn queue_of(step: Step, host: Option<&str>) -> String {
    match host {
        Some(host) if step.runs_on_agent() => topology::host_queue(host),
        _ => topology::CONTROLLER_QUEUE.to_string(),
    }
}

/// What a step is told about a demo.
pub fn spec(urls: &DemoUrls, demo: &Demo) -> DemoSpec {
    let hostname = urls.hostname(&demo.name);
    DemoSpec {
        id: demo.id,
        name: demo.name.clone(),
        owner: demo.owner.clone(),
        repo: demo.repo.clone(),
        pr: u64::try_from(demo.pr).unwrap_or_default(),
        sha: demo.sha.clone(),
        clone_url: demo.clone_url.clone(),
        url: urls.url(&hostname),
        hostname,
        github_user: demo.github_user.clone(),
        generation: demo.generation,
        legacy_run: demo.legacy_run,
        closed_outbound: demo.closed_outbound,
        env: None,
    }
}
