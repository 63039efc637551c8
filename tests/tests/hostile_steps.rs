//! Step messages as an intruder on the broker would write them, sent to a real agent: every
//! field that is not what the controller sends is refused by name, for good (no retries),
//! before git or Docker see it, and the agent goes on serving honest steps. Honest steps of
//! hostile repositories run no code of theirs: no submodules, no hooks.

use std::path::Path;

use demofleet_common::wire::{DemoSpec, Step, StepOutcome};
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::lone_agent::LoneAgent;

/// The error of a refused step, or a panic saying how it went instead.
fn refusal(outcome: &StepOutcome, what: &str) -> String {
    match outcome {
        StepOutcome::Failed { error, retryable: false } => error.clone(),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_step_messages_are_refused_by_field_and_run_nothing() {
    let mut agent = LoneAgent::start(&[]).await;
    let markers = tempfile::tempdir().unwrap();
    let marker = |n: u32| markers.path().join(format!("pwned-{n}"));
    let touch = |n: u32| format!("touch {}", marker(n).display());
    let repo = FixtureRepo::create(&agent.repos_dir(), "fixture-owner", "site");
    let sha = repo.commit("site", &[("index.html", "hello")]);
    let honest = agent.spec(&repo, &sha, 1);
    let outside = std::fs::canonicalize(agent.repos_dir()).unwrap().join("../../..");

    type Edit<'a> = Box<dyn Fn(&mut DemoSpec) + 'a>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "an option as the clone URL",
            "clone_url",
            Box::new(move |s| s.clone_url = format!("--upload-pack={}", touch(1))),
        ),
        (
            "git's ext:: transport",
            "clone_url",
            Box::new(move |s| s.clone_url = format!("ext::sh -c {}", touch(2).replace(' ', "% "))),
        ),
        ("git's ext:: transport, no spaces", "clone_url", Box::new(|s| s.clone_url = "ext::id".into())),
        ("git's fd:: transport", "clone_url", Box::new(|s| s.clone_url = "fd::17".into())),
        ("ssh with an option as host", "clone_url", Box::new(|s| s.clone_url = "ssh://-oProxyCommand=id/x".into())),
        ("a scp-like address", "clone_url", Box::new(|s| s.clone_url = "git@github.com:o/r.git".into())),
        ("a local path outside the allowed root", "clone_url", Box::new(|s| s.clone_url = "file:///etc".into())),
        (
            "a local path climbing out of the root",
            "clone_url",
            Box::new(move |s| s.clone_url = format!("file://{}", outside.display())),
        ),
        ("credentials in the URL", "clone_url", Box::new(|s| s.clone_url = "https://u:p@github.com/o/r.git".into())),
        ("an option as the commit", "sha", Box::new(move |s| s.sha = format!("--upload-pack={}", touch(3)))),
        ("a ref instead of a commit", "sha", Box::new(|s| s.sha = "HEAD".into())),
        ("a name climbing out of the demo folder", "name", Box::new(|s| s.name = "../../../tmp/evil".into())),
        (
            "a hostname breaking out of Traefik's rule",
            "hostname",
            Box::new(|s| s.hostname = format!("{}.localhost`) || Host(`evil.example", s.name)),
        ),
        ("a URL of another site", "url", Box::new(|s| s.url = "http://evil.example/".into())),
        ("generation 0", "generation", Box::new(|s| s.generation = 0)),
        ("a negative generation", "generation", Box::new(|s| s.generation = -5)),
        ("an owner with a semicolon", "owner", Box::new(|s| s.owner = "a;b".into())),
        ("a repository named ..", "repo", Box::new(|s| s.repo = "..".into())),
        ("pull request 0", "pr", Box::new(|s| s.pr = 0)),
        ("an author with a backtick", "github_user", Box::new(|s| s.github_user = "x`id`".into())),
    ];
    let mut failures = Vec::new();
    for (what, field, edit) in &cases {
        for step in [Step::Checkout, Step::Build, Step::Launch, Step::Stop] {
            let mut spec = honest.clone();
            edit(&mut spec);
            let result = agent.run(step, &spec).await;
            let error = refusal(&result.outcome, what);
            if !error.starts_with(&format!("refusing the step: {field} ")) {
                failures.push(format!("{what} ({}): {error}", step.as_str()));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    for n in 1..=3 {
        assert!(!marker(n).exists(), "no command ran ({})", marker(n).display());
    }
    assert!(!Path::new("/tmp/evil").exists());
    let left: Vec<_> = std::fs::read_dir(&agent.demo_dir).unwrap().collect();
    assert!(left.is_empty(), "nothing was cloned or made: {left:?}");

    // The agent still serves honest steps.
    let result = agent.run(Step::Checkout, &honest).await;
    assert!(matches!(result.outcome, StepOutcome::Succeeded(_)), "{:?}", result.outcome);
    let page = std::fs::read_to_string(agent.demo_dir.join(&honest.name).join("index.html")).unwrap();
    assert_eq!(page, "hello");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_runs_no_submodule_and_no_hook() {
    let mut agent = LoneAgent::start(&[]).await;
    let markers = tempfile::tempdir().unwrap();
    let (by_submodule, by_hook) = (markers.path().join("by-submodule"), markers.path().join("by-hook"));
    let repo = FixtureRepo::create(&agent.repos_dir(), "fixture-owner", "tricky");
    repo.submodule("vendor/lib", &format!("ext::sh -c touch% {}", by_submodule.display()));
    let first = repo.commit("with a submodule", &[("index.html", "one")]);
    let spec = agent.spec(&repo, &first, 1);
    let result = agent.run(Step::Checkout, &spec).await;
    assert!(matches!(result.outcome, StepOutcome::Succeeded(_)), "{:?}", result.outcome);
    let clone = agent.demo_dir.join(&spec.name);
    assert!(!by_submodule.exists(), "the submodule's URL ran");
    let vendored: Vec<_> = std::fs::read_dir(clone.join("vendor/lib")).unwrap().collect();
    assert!(vendored.is_empty(), "the submodule was not fetched: {vendored:?}");

    // A hook planted in the clone (by a legacy ./run, say) does not run at the next checkout.
    let hook = clone.join(".git/hooks/post-checkout");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", by_hook.display())).unwrap();
    fixtures::git(&clone, &["config", "core.hooksPath", hook.parent().unwrap().to_str().unwrap()]);
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let second = repo.commit("second", &[("index.html", "two")]);
    let result = agent.run(Step::Checkout, &agent.spec(&repo, &second, 1)).await;
    assert!(matches!(result.outcome, StepOutcome::Succeeded(_)), "{:?}", result.outcome);
    assert_eq!(std::fs::read_to_string(clone.join("index.html")).unwrap(), "two");
    assert!(!by_hook.exists(), "the planted hook ran");
    agent.stop().await;
}

/// Another host of the fleet may publish on the tasks exchange (its results go through it),
/// so it could route a step to this host's queue: the agent takes work only from the
/// controller's broker user, which RabbitMQ vouches for, and the intruder cannot claim it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_work_only_from_the_controllers_broker_user() {
    let mut agent = LoneAgent::start(&[]).await;
    let repo = FixtureRepo::create(&agent.repos_dir(), "fixture-owner", "site");
    let sha = repo.commit("site", &[("index.html", "hello")]);
    let spec = agent.spec(&repo, &sha, 1);
    let clone = agent.demo_dir.join(&spec.name);

    // As itself: dropped unanswered, nothing checked out.
    let wait = std::time::Duration::from_secs(5);
    let answered = agent.run_as_another_host(Step::Checkout, &spec, None, wait).await.expect("the broker takes it");
    assert!(answered.is_none(), "the agent answered another host's step: {answered:?}");
    assert!(!clone.exists(), "another host's step was carried out");

    // Claiming the controller's user: RabbitMQ itself refuses the message.
    let controller = agent.controller_user();
    let forged = agent.run_as_another_host(Step::Checkout, &spec, Some(&controller), wait).await;
    assert!(forged.is_err(), "a message claiming another broker user was taken: {forged:?}");

    // The controller's own step is carried out.
    let result = agent.run(Step::Checkout, &spec).await;
    assert!(matches!(result.outcome, StepOutcome::Succeeded(_)), "{:?}", result.outcome);
    assert!(clone.join("index.html").exists());
    agent.stop().await;
}
