//! The decisions: what happens to a chain, given its demo's record and what happened.
//!
//! - [`advance`]: move a chain on from where it stands (a new chain, a host now free, an
//!   approval or a retry): inline steps are done on the spot, the next other step queued for
//!   whoever runs it, or the chain ends and the demo takes its state.
//! - [`result`]: a step's result arrived: record it; then advance, retry the step after its
//!   delay, or fail the chain.
//! - [`approve`], [`retry`]: a person's action on a waiting or failed chain.
//! - [`begin_own`]: whether an idle demo sleeps, or a visited one wakes, by a chain of its own.
//! - [`authorized`]: whether an author may start a demo without asking GitHub.

use uuid::Uuid;

use demofleet_common::wire::{DeadStep, Step, StepMessage, StepOutcome, StepResult};

use super::message::{queue_of, step_message};
use super::record::{Facts, Placement, Record, Rules};
use super::write::{Decision, Refusal, Write};
use super::Kind;
use crate::db::chains::Chain;
use crate::db::demos::Demo;

/// Move the chain on from where its record stands.
pub fn advance(record: &Record, facts: &Facts) -> Decision {
    let (chain, demo) = (&record.chain, &record.demo);
    if !matches!(chain.status.as_str(), "running" | "waiting") {
        return Decision::Ignore("the chain is not under way");
    }
    if demo.generation != chain.generation {
        return Decision::Do(vec![Write::chain("superseded")]);
    }
    let mut writes = Vec::new();
    // A chain just created: its demo is `pending`, `stopping` or `sleeping` now; tell
    // GitHub. (Waking up shows there only once it runs again.)
    let fresh = chain.status == "waiting" && record.steps.iter().all(|s| s.status == "pending" && s.attempts == 0);
    if fresh && Kind::parse(&chain.kind) != Kind::Wake {
        notify(facts.rules, &mut writes);
    }
    go_on(record, facts, writes)
}

/// Why [`result`] ignores a result: its chain is finished or superseded.
pub const FINISHED_CHAIN: &str = "a result for a finished or superseded chain";
/// Why [`result`] ignores a result: the step was sent to another host.
pub const OTHER_HOST: &str = "a result from a host the step was not sent to";
/// Why [`result`] ignores a result: its step is not waiting for that attempt's answer (a
/// replay, a redelivered duplicate, one that arrived late).
pub const DUPLICATE: &str = "a duplicate or out-of-order result";

/// A step's result arrived for the chain.
pub fn result(record: &Record, result: &StepResult, facts: &Facts) -> Decision {
    let (chain, demo, rules) = (&record.chain, &record.demo, facts.rules);
    if chain.status != "running" || chain.generation != result.generation {
        return Decision::Ignore(FINISHED_CHAIN);
    }
    // An agent step is sent to the demo's host; a result from another host is not its answer.
    if result.step.runs_on_agent() && demo.host_id.as_deref() != Some(result.host_id.as_str()) {
        return Decision::Ignore(OTHER_HOST);
    }
    if demo.generation != chain.generation {
        return Decision::Do(vec![Write::chain("superseded")]);
    }
    let current = record.steps.iter().position(|s| s.status != "succeeded" && s.status != "skipped");
    let Some(index) = current.filter(|i| {
        let s = &record.steps[*i];
        s.status == "queued" && s.name == result.step.as_str() && i64::from(s.attempts) == i64::from(result.attempt)
    }) else {
        return Decision::Ignore(DUPLICATE);
    };
    let step = &record.steps[index];
    let mut writes = vec![Write::Attempt { index, result: result.clone() }];
    match &result.outcome {
        StepOutcome::Succeeded(output) if output.awaiting_approval => {
            await_approval(rules, index, &mut writes);
            Decision::Do(writes)
        }
        StepOutcome::Succeeded(output) => {
            let output_json = serde_json::to_value(output).ok();
            writes.push(Write::Step { index, status: "succeeded", error: None, output: output_json });
            // The route follows a new container only once it answers its health check.
            if let Some(port) = output.host_port.filter(|_| result.step == Step::Health) {
                writes.push(Write::Port(port));
            }
            let mut after = record.clone();
            after.steps[index].status = "succeeded".into();
            go_on(&after, facts, writes)
        }
        StepOutcome::Failed { error, retryable } => {
            let used = usize::try_from(step.attempts - step.budget_from).unwrap_or(usize::MAX);
            let host = demo.host_id.as_deref();
            let message = step_message(rules, demo, host, chain.id, result.step, step.attempts + 1);
            let queue = queue_of(result.step, host);
            if let Some(delay) = rules.retry_delays.get(used.wrapping_sub(1)).filter(|_| *retryable) {
                writes.push(Write::Retry { index, queue, delay: *delay, message, error: error.clone() });
                return Decision::Do(writes);
            }
            writes.push(Write::Step { index, status: "failed", error: Some(error.clone()), output: None });
            let summary = format!("{} failed: {error}", result.step.as_str());
            writes.push(Write::Chain { status: "failed", error: Some(summary.clone()) });
            let message = StepMessage { attempt: result.attempt, ..message };
            writes.push(Write::Dead(DeadStep { version: message.version, message, error: error.clone() }));
            transition(rules, &mut writes, "failed", Some(summary));
            Decision::Do(writes)
        }
    }
}

/// Approve commit `sha`, the head of a demo that waits for approval, in `actor`'s name;
/// `waiting`: the chain of its generation that waits, if any. That chain is advanced next.
/// An approval of any other commit (one the head moved from since) approves nothing.
pub fn approve(demo: &Demo, waiting: Option<Uuid>, actor: &str, sha: &str) -> Result<(Uuid, Vec<Write>), Refusal> {
    if !sha.eq_ignore_ascii_case(&demo.sha) {
        return Err(Refusal(format!("the demo's head commit is {}, not {sha}: approve that one", demo.sha)));
    }
    if demo.state != "awaiting_approval" {
        return Err(Refusal(format!("the demo is {}, not awaiting approval", demo.state)));
    }
    let Some(chain) = waiting else {
        return Err(Refusal("no chain of the current generation awaits approval".into()));
    };
    let detail = serde_json::json!({ "sha": demo.sha, "generation": demo.generation });
    let writes = vec![
        Write::Approval { sha: demo.sha.clone(), actor: actor.into() },
        Write::ApprovedStep,
        Write::chain("running"),
        Write::Audit { actor: actor.into(), action: "approve", detail },
    ];
    Ok((chain, writes))
}

/// Run a failed chain again from its failed step, with a fresh budget of attempts, in
/// `actor`'s name. Then the chain is advanced.
pub fn retry(demo: &Demo, chain: &Chain, actor: &str, rules: &Rules) -> Result<Vec<Write>, Refusal> {
    if chain.status != "failed" {
        return Err(Refusal(format!("only failed chains can be retried; this one is {}", chain.status)));
    }
    if demo.generation != chain.generation {
        return Err(Refusal("the demo has moved on to a newer generation; this chain is superseded".into()));
    }
    let state = match Kind::parse(&chain.kind) {
        Kind::Deploy => "starting",
        Kind::Teardown => "stopping",
        Kind::Sleep | Kind::Wake => "sleeping",
    };
    let mut writes = vec![Write::ResetFailedStep, Write::chain("running")];
    transition(rules, &mut writes, state, None);
    let detail = serde_json::json!({ "chain": chain.id });
    writes.push(Write::Audit { actor: actor.into(), action: "retry", detail });
    Ok(writes)
}

/// For a demo that should run, is placed and has nothing under way: what begins a chain of
/// the controller's own, `sleep` (a running demo nobody visited for its idle time) or `wake`
/// (a sleeping demo a request asked for), once the chain is created. `None`: the demo is not
/// in the state for it.
pub fn begin_own(demo: &Demo, kind: Kind) -> Option<Vec<Write>> {
    let (state, actor, then) = match kind {
        Kind::Sleep => ("running", "idle", Write::State { state: "sleeping", error: None }),
        Kind::Wake => ("sleeping", "visitor", Write::Touch),
        Kind::Deploy | Kind::Teardown => return None,
    };
    if demo.desired != "running" || demo.state != state || demo.host_id.is_none() {
        return None;
    }
    let detail = serde_json::json!({ "generation": demo.generation });
    Some(vec![Write::Audit { actor: actor.into(), action: kind.as_str(), detail }, then])
}

/// Whether `demo`'s current commit may start, when no GitHub call is needed: an approval of
/// this very commit; with no GitHub configured, the trusted authors; else the recent answer
/// `author_may_write`, if any. `None`: GitHub must be asked. The one trusted is who brought
/// the commit ([`Demo::vouched_by`]: who pushed it), not the pull request's author.
pub fn authorized(demo: &Demo, rules: &Rules, author_may_write: Option<bool>) -> Option<bool> {
    if demo.approved_sha.as_deref() == Some(demo.sha.as_str()) {
        return Some(true);
    }
    if !rules.github {
        let user = demo.vouched_by();
        return Some(rules.trusted_authors.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(user)));
    }
    author_may_write
}

/// Do the steps that need no one else, queue the next one, or end the chain.
fn go_on(record: &Record, facts: &Facts, mut writes: Vec<Write>) -> Decision {
    let (chain, demo, rules) = (&record.chain, &record.demo, facts.rules);
    let kind = Kind::parse(&chain.kind);
    let deploying = kind == Kind::Deploy;
    // Once a step ran on a host, the chain's later steps need what it left there.
    let begun_on_host =
        record.steps.iter().any(|s| s.status == "succeeded" && Step::parse(&s.name).is_some_and(Step::runs_on_agent));
    let mut host = demo.host_id.clone();
    for (index, row) in
        record.steps.iter().enumerate().filter(|(_, s)| s.status != "succeeded" && s.status != "skipped")
    {
        if row.status != "pending" {
            // Under way: queued, waiting for approval, or failed.
            return Decision::Do(writes);
        }
        let step = Step::parse(&row.name).expect("chain steps are written from Step names");
        if step == Step::Authorize {
            match authorized(demo, rules, facts.author_may_write) {
                Some(true) => {
                    writes.push(Write::step(index, "succeeded"));
                    continue;
                }
                Some(false) => {
                    await_approval(rules, index, &mut writes);
                    return Decision::Do(writes);
                }
                None => {}
            }
        }
        if step.is_inline() {
            writes.push(Write::Routed(step == Step::Route));
            writes.push(Write::step(index, "succeeded"));
            continue;
        }
        if step.runs_on_agent() {
            let target = if deploying && !begun_on_host {
                match &facts.placement {
                    Placement::NotAsked => return Decision::Place,
                    Placement::Offered(offered) => offered.clone(),
                }
            } else {
                host.clone()
            };
            let Some(target) = target else {
                if deploying {
                    writes.push(Write::Park);
                    if demo.state != "pending" {
                        notify(rules, &mut writes);
                    }
                    return Decision::Do(writes);
                }
                // Never placed: there is nothing on any host to stop.
                writes.push(Write::step(index, "skipped"));
                continue;
            };
            if host.as_deref() != Some(target.as_str()) {
                writes.push(Write::Host(Some(target.clone())));
                host = Some(target);
            }
        }
        if chain.status != "running" {
            writes.push(Write::chain("running"));
        }
        let state = (deploying && demo.state != "starting").then_some("starting");
        let message = step_message(rules, demo, host.as_deref(), chain.id, step, row.attempts + 1);
        writes.push(Write::Queue { index, queue: queue_of(step, host.as_deref()), message, state });
        if state.is_some() {
            notify(rules, &mut writes);
        }
        return Decision::Do(writes);
    }
    writes.push(Write::chain("succeeded"));
    match kind {
        Kind::Deploy | Kind::Wake => transition(rules, &mut writes, "running", None),
        // Asleep since the chain began.
        Kind::Sleep => {}
        Kind::Teardown => {
            writes.push(Write::Host(None));
            transition(rules, &mut writes, "stopped", None);
        }
    }
    Decision::Do(writes)
}

/// Step `index` waits for a person's approval, and so do its chain and demo.
fn await_approval(rules: &Rules, index: usize, writes: &mut Vec<Write>) {
    writes.push(Write::step(index, "waiting"));
    writes.push(Write::chain("awaiting_approval"));
    transition(rules, writes, "awaiting_approval", None);
}

/// The demo's new state, told to GitHub.
fn transition(rules: &Rules, writes: &mut Vec<Write>, state: &'static str, error: Option<String>) {
    writes.push(Write::State { state, error });
    notify(rules, writes);
}

/// Tell GitHub the demo's state, when GitHub is configured.
fn notify(rules: &Rules, writes: &mut Vec<Write>) {
    if rules.github {
        writes.push(Write::Notify);
    }
}

#[cfg(test)]
mod tests;
