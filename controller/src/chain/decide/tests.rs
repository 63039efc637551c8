//! Each decision on plain records: what it records and sends, in a few words each.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use demofleet_common::wire::{Step, StepOutcome, StepOutput, StepResult, WIRE_VERSION};

use super::*;
use crate::chain::planned;
use crate::db::chains::Chain;
use crate::db::demos::Demo;
use crate::urls::DemoUrls;

fn demo(state: &str) -> Demo {
    Demo {
        id: Uuid::from_u128(1),
        owner: "octo".into(),
        repo: "site".into(),
        pr: 7,
        name: "site-octo-pr-7".into(),
        desired: "running".into(),
        state: state.into(),
        generation: 3,
        sha: "abc123".into(),
        clone_url: "https://example.com/octo/site.git".into(),
        github_user: "alice".into(),
        pushed_by: None,
        host_id: None,
        host_port: None,
        serving_host: None,
        routed: false,
        error: None,
        event_at: None,
        deployed_at: None,
        approved_sha: None,
        approved_by: None,
        notify: true,
        legacy_run: false,
        closed_outbound: false,
        last_request_at: None,
        created_at: OffsetDateTime::UNIX_EPOCH,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    }
}

fn on_host(mut demo: Demo, host: &str) -> Demo {
    demo.host_id = Some(host.into());
    demo
}

/// A chain of `kind` for `demo`'s generation, its steps `(status, attempts)` in order (the
/// rest pending).
fn record(kind: Kind, status: &str, demo: Demo, reached: &[(&str, i32)]) -> Record {
    let chain = Chain {
        id: Uuid::from_u128(2),
        demo_id: demo.id,
        generation: demo.generation,
        kind: kind.as_str().into(),
        status: status.into(),
    };
    let mut steps = planned(&chain, &[]);
    for (step, (status, attempts)) in steps.iter_mut().zip(reached) {
        step.status = status.to_string();
        step.attempts = *attempts;
    }
    Record { demo, chain, steps }
}

fn rules(github: bool) -> Rules {
    Rules {
        github,
        trusted_authors: vec!["alice".into()],
        retry_delays: vec![Duration::from_secs(2), Duration::from_secs(4)],
        urls: DemoUrls { base_domain: "localhost".into(), scheme: "http".into(), port: None },
    }
}

fn facts(rules: &Rules, author_may_write: Option<bool>, placement: Placement) -> Facts<'_> {
    Facts { rules, author_may_write, placement }
}

fn offered(host: &str) -> Placement {
    Placement::Offered(Some(host.into()))
}

/// The decision in a few words.
fn said(decision: Decision) -> Vec<String> {
    match decision {
        Decision::Ignore(why) => vec![format!("ignore: {why}")],
        Decision::Place => vec!["place".into()],
        Decision::Do(writes) => writes.iter().map(Write::to_string).collect(),
    }
}

fn outcome(record: &Record, step: Step, attempt: u32, outcome: StepOutcome) -> StepResult {
    StepResult {
        version: WIRE_VERSION,
        chain_id: record.chain.id,
        demo_id: record.demo.id,
        generation: record.chain.generation,
        step,
        attempt,
        host_id: if step.runs_on_agent() { "a" } else { "controller" }.into(),
        duration_ms: 10,
        outcome,
    }
}

fn succeeded(record: &Record, step: Step, attempt: u32) -> StepResult {
    outcome(record, step, attempt, StepOutcome::Succeeded(StepOutput::default()))
}

fn failed(record: &Record, step: Step, attempt: u32, retryable: bool) -> StepResult {
    outcome(record, step, attempt, StepOutcome::Failed { error: "no space left".into(), retryable })
}

#[test]
fn a_new_deploy_asks_for_a_host_then_sends_its_first_agent_step_there() {
    let rules = rules(false);
    let new = record(Kind::Deploy, "waiting", demo("pending"), &[]);
    assert_eq!(said(advance(&new, &facts(&rules, None, Placement::NotAsked))), ["place"]);
    assert_eq!(
        said(advance(&new, &facts(&rules, None, offered("a")))),
        ["step 0 succeeded", "host a", "chain running", "queue step 1 checkout #1 to demofleet.host.a, demo starting",],
        "a trusted author needs no approval; without GitHub nobody is told"
    );
}

#[test]
fn with_github_the_pull_request_hears_of_each_state_and_unknown_authors_are_asked_about() {
    let rules = rules(true);
    let new = record(Kind::Deploy, "waiting", demo("pending"), &[]);
    assert_eq!(
        said(advance(&new, &facts(&rules, None, Placement::NotAsked))),
        ["notify", "chain running", "queue step 0 authorize #1 to demofleet.controller, demo starting", "notify"],
        "no answer in the cache: the controller's authorize step asks GitHub"
    );
    assert_eq!(
        said(advance(&new, &facts(&rules, Some(false), Placement::NotAsked))),
        ["notify", "step 0 waiting", "chain awaiting_approval", "demo awaiting_approval", "notify"]
    );
    let mut approved = new.clone();
    approved.demo.approved_sha = Some("abc123".into());
    assert_eq!(said(advance(&approved, &facts(&rules, Some(false), Placement::NotAsked))), ["place"]);
}

#[test]
fn a_deploy_with_no_free_host_waits_and_a_teardown_of_a_demo_never_placed_has_nothing_to_stop() {
    let rules = rules(true);
    let new = record(Kind::Deploy, "waiting", demo("pending"), &[]);
    assert_eq!(
        said(advance(&new, &facts(&rules, Some(true), Placement::Offered(None)))),
        ["notify", "step 0 succeeded", "park"]
    );
    let starting = record(Kind::Deploy, "waiting", demo("starting"), &[("succeeded", 0)]);
    assert_eq!(said(advance(&starting, &facts(&rules, None, Placement::Offered(None)))), ["park", "notify"]);
    let teardown = record(Kind::Teardown, "waiting", demo("stopping"), &[]);
    assert_eq!(
        said(advance(&teardown, &facts(&rules, None, Placement::NotAsked))),
        [
            "notify",
            "unroute",
            "step 0 succeeded",
            "step 1 skipped",
            "chain succeeded",
            "no host",
            "demo stopped",
            "notify"
        ]
    );
}

#[test]
fn a_teardown_unroutes_at_once_and_stops_on_the_demos_host() {
    let rules = rules(false);
    let teardown = record(Kind::Teardown, "waiting", on_host(demo("stopping"), "a"), &[]);
    assert_eq!(
        said(advance(&teardown, &facts(&rules, None, Placement::NotAsked))),
        ["unroute", "step 0 succeeded", "chain running", "queue step 1 stop #1 to demofleet.host.a"]
    );
    let stopped = record(Kind::Teardown, "running", on_host(demo("stopping"), "a"), &[("succeeded", 0), ("queued", 1)]);
    assert_eq!(
        said(result(&stopped, &succeeded(&stopped, Step::Stop, 1), &facts(&rules, None, Placement::NotAsked))),
        ["attempt 1 of step 1", "step 1 succeeded", "chain succeeded", "no host", "demo stopped"]
    );
}

#[test]
fn each_result_moves_the_deploy_on_until_the_demo_runs() {
    let rules = rules(true);
    let facts = facts(&rules, None, Placement::NotAsked);
    let demo = on_host(demo("starting"), "a");
    let checked_out = record(Kind::Deploy, "running", demo.clone(), &[("succeeded", 0), ("queued", 1)]);
    assert_eq!(
        said(result(&checked_out, &succeeded(&checked_out, Step::Checkout, 1), &facts)),
        ["attempt 1 of step 1", "step 1 succeeded", "queue step 2 build #1 to demofleet.host.a"],
        "begun on its host, the chain stays there: no placement"
    );
    let healthy = record(
        Kind::Deploy,
        "running",
        demo.clone(),
        &[("succeeded", 0), ("succeeded", 1), ("succeeded", 1), ("succeeded", 1), ("queued", 1)],
    );
    let answer = StepOutcome::Succeeded(StepOutput { host_port: Some(32768), ..StepOutput::default() });
    assert_eq!(
        said(result(&healthy, &outcome(&healthy, Step::Health, 1, answer), &facts)),
        [
            "attempt 1 of step 4",
            "step 4 succeeded",
            "port 32768",
            "route",
            "step 5 succeeded",
            "queue step 6 retire #1 to demofleet.host.a"
        ],
        "the route follows the new container once it answers"
    );
    let mut reached = vec![("succeeded", 1); 6];
    reached.push(("queued", 1));
    let retired = record(Kind::Deploy, "running", demo, &reached);
    assert_eq!(
        said(result(&retired, &succeeded(&retired, Step::Retire, 1), &facts)),
        ["attempt 1 of step 6", "step 6 succeeded", "chain succeeded", "demo running", "notify"]
    );
}

#[test]
fn a_failed_step_is_retried_after_its_delays_then_fails_its_chain() {
    let rules = rules(true);
    let facts = facts(&rules, None, Placement::NotAsked);
    let demo = on_host(demo("starting"), "a");
    let building = |attempts| {
        record(Kind::Deploy, "running", demo.clone(), &[("succeeded", 0), ("succeeded", 1), ("queued", attempts)])
    };
    let first = building(1);
    assert_eq!(
        said(result(&first, &failed(&first, Step::Build, 1, true), &facts)),
        ["attempt 1 of step 2", "retry step 2 build #2 in 2s"]
    );
    let second = building(2);
    assert_eq!(
        said(result(&second, &failed(&second, Step::Build, 2, true), &facts)),
        ["attempt 2 of step 2", "retry step 2 build #3 in 4s"]
    );
    let last = building(3);
    assert_eq!(
        said(result(&last, &failed(&last, Step::Build, 3, true), &facts)),
        [
            "attempt 3 of step 2",
            "step 2 failed (no space left)",
            "chain failed (build failed: no space left)",
            "dead build #3",
            "demo failed (build failed: no space left)",
            "notify"
        ]
    );
    let hopeless = building(1);
    assert_eq!(
        said(result(&hopeless, &failed(&hopeless, Step::Build, 1, false), &facts))[1],
        "step 2 failed (no space left)"
    );
}

#[test]
fn late_duplicate_and_superseded_results_change_nothing_but_the_superseded_chain() {
    let rules = rules(false);
    let facts = facts(&rules, None, Placement::NotAsked);
    let building = record(
        Kind::Deploy,
        "running",
        on_host(demo("starting"), "a"),
        &[("succeeded", 0), ("succeeded", 1), ("queued", 2)],
    );
    assert_eq!(
        said(result(&building, &failed(&building, Step::Build, 1, true), &facts)),
        ["ignore: a duplicate or out-of-order result"]
    );
    assert_eq!(
        said(result(&building, &succeeded(&building, Step::Checkout, 1), &facts)),
        ["ignore: a duplicate or out-of-order result"]
    );
    let mut older = succeeded(&building, Step::Build, 2);
    older.generation = 2;
    assert_eq!(said(result(&building, &older, &facts)), ["ignore: a result for a finished or superseded chain"]);
    let mut moved_on = building.clone();
    moved_on.demo.generation = 4;
    assert_eq!(said(result(&moved_on, &succeeded(&moved_on, Step::Build, 2), &facts)), ["chain superseded"]);
    assert_eq!(said(advance(&moved_on, &facts)), ["chain superseded"]);
    let finished = record(Kind::Deploy, "succeeded", demo("running"), &[]);
    assert_eq!(said(advance(&finished, &facts)), ["ignore: the chain is not under way"]);
}

#[test]
fn a_result_from_another_host_than_the_demos_changes_nothing() {
    let rules = rules(false);
    let facts = facts(&rules, None, Placement::NotAsked);
    let building = record(
        Kind::Deploy,
        "running",
        on_host(demo("starting"), "a"),
        &[("succeeded", 0), ("succeeded", 1), ("queued", 1)],
    );
    let mut forged = succeeded(&building, Step::Build, 1);
    forged.host_id = "b".into();
    assert_eq!(said(result(&building, &forged, &facts)), ["ignore: a result from a host the step was not sent to"]);
    let unplaced = record(Kind::Deploy, "running", demo("starting"), &[("succeeded", 0), ("queued", 1)]);
    assert_eq!(
        said(result(&unplaced, &succeeded(&unplaced, Step::Checkout, 1), &facts)),
        ["ignore: a result from a host the step was not sent to"],
        "a demo without a host sent no agent step"
    );
    assert_eq!(
        said(result(&building, &succeeded(&building, Step::Build, 1), &facts)),
        ["attempt 1 of step 2", "step 2 succeeded", "queue step 3 launch #1 to demofleet.host.a"],
        "its own host's result is taken"
    );
}

#[test]
fn an_authorize_result_without_write_access_waits_for_approval() {
    let rules = rules(true);
    let asked = record(Kind::Deploy, "running", demo("starting"), &[("queued", 1)]);
    let refused = StepOutcome::Succeeded(StepOutput { awaiting_approval: true, ..StepOutput::default() });
    assert_eq!(
        said(result(&asked, &outcome(&asked, Step::Authorize, 1, refused), &facts(&rules, None, Placement::NotAsked))),
        ["attempt 1 of step 0", "step 0 waiting", "chain awaiting_approval", "demo awaiting_approval", "notify"]
    );
    let allowed = succeeded(&asked, Step::Authorize, 1);
    assert_eq!(said(result(&asked, &allowed, &facts(&rules, None, Placement::NotAsked))), ["place"]);
}

#[test]
fn sleep_and_wake_chains_end_without_telling_github_of_the_sleep() {
    let rules = rules(true);
    let facts = facts(&rules, None, Placement::NotAsked);
    let asleep = on_host(demo("sleeping"), "a");
    let sleep = record(Kind::Sleep, "waiting", asleep.clone(), &[]);
    assert_eq!(
        said(advance(&sleep, &facts)),
        ["notify", "unroute", "step 0 succeeded", "chain running", "queue step 1 sleep #1 to demofleet.host.a"]
    );
    let slept = record(Kind::Sleep, "running", asleep.clone(), &[("succeeded", 0), ("queued", 1)]);
    assert_eq!(
        said(result(&slept, &succeeded(&slept, Step::Sleep, 1), &facts)),
        ["attempt 1 of step 1", "step 1 succeeded", "chain succeeded"]
    );
    let wake = record(Kind::Wake, "waiting", asleep, &[]);
    assert_eq!(said(advance(&wake, &facts)), ["chain running", "queue step 0 wake #1 to demofleet.host.a"]);
}

#[test]
fn approvals_and_retries_are_refused_unless_the_chain_waits_or_failed() {
    let rules = rules(true);
    let waiting = record(Kind::Deploy, "awaiting_approval", demo("awaiting_approval"), &[("waiting", 0)]);
    let words = |writes: Vec<Write>| writes.iter().map(Write::to_string).collect::<Vec<_>>();
    let (chain, writes) = approve(&waiting.demo, Some(waiting.chain.id), "bob@example.com", "abc123").unwrap();
    assert_eq!(chain, waiting.chain.id);
    assert_eq!(
        words(writes),
        ["approve abc123 by bob@example.com", "approved step", "chain running", "audit approve by bob@example.com"]
    );
    assert_eq!(
        approve(&demo("running"), Some(waiting.chain.id), "bob", "abc123").unwrap_err(),
        Refusal("the demo is running, not awaiting approval".into())
    );
    assert!(approve(&waiting.demo, None, "bob", "abc123").is_err());
    let moved = approve(&waiting.demo, Some(waiting.chain.id), "bob", "def456").unwrap_err();
    assert_eq!(moved.0, "the demo's head commit is abc123, not def456: approve that one");

    let failed = record(Kind::Teardown, "failed", on_host(demo("failed"), "a"), &[("succeeded", 0), ("failed", 3)]);
    assert_eq!(
        words(retry(&failed.demo, &failed.chain, "bob", &rules).unwrap()),
        ["reset failed step", "chain running", "demo stopping", "notify", "audit retry by bob"]
    );
    assert!(retry(&waiting.demo, &waiting.chain, "bob", &rules).unwrap_err().0.contains("only failed chains"));
    let mut newer = failed.demo.clone();
    newer.generation += 1;
    assert!(retry(&newer, &failed.chain, "bob", &rules).unwrap_err().0.contains("superseded"));
}

#[test]
fn only_a_placed_running_demo_sleeps_and_only_a_sleeping_one_wakes() {
    let running = on_host(demo("running"), "a");
    let words = |writes: Option<Vec<Write>>| writes.map(|w| w.iter().map(Write::to_string).collect::<Vec<_>>());
    assert_eq!(
        words(begin_own(&running, Kind::Sleep)),
        Some(vec!["audit sleep by idle".into(), "demo sleeping".into()])
    );
    assert_eq!(begin_own(&running, Kind::Wake), None);
    let asleep = on_host(demo("sleeping"), "a");
    assert_eq!(words(begin_own(&asleep, Kind::Wake)), Some(vec!["audit wake by visitor".into(), "touch".into()]));
    assert_eq!(begin_own(&demo("running"), Kind::Sleep), None, "placed nowhere");
    let mut closing = running.clone();
    closing.desired = "stopped".into();
    assert_eq!(begin_own(&closing, Kind::Sleep), None);
}

#[test]
fn authors_are_trusted_approved_or_asked_about() {
    let (without, with) = (rules(false), rules(true));
    let mut bob = demo("pending");
    bob.github_user = "bob".into();
    assert_eq!(authorized(&demo("pending"), &without, None), Some(true), "alice is trusted");
    assert_eq!(authorized(&bob, &without, Some(true)), Some(false), "without GitHub, only the trusted");
    assert_eq!(authorized(&bob, &with, None), None, "GitHub must be asked");
    assert_eq!(authorized(&bob, &with, Some(true)), Some(true));
    bob.approved_sha = Some(bob.sha.clone());
    assert_eq!(authorized(&bob, &with, Some(false)), Some(true), "this commit was approved");
    // Alice's pull request, a push by bob: bob is the one to trust.
    let mut pushed = demo("pending");
    pushed.pushed_by = Some("bob".into());
    assert_eq!(authorized(&pushed, &without, None), Some(false), "bob's push is not alice's");
    let anyone = Rules { trusted_authors: vec!["*".into()], ..without };
    bob.approved_sha = None;
    assert_eq!(authorized(&bob, &anyone, None), Some(true));
}
