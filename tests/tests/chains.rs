//! Task chains: failed steps retry through the TTL queues with back-off, then go to the
//! dead-letter queue; a failed chain is visible and can be retried through the API.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn options() -> StackOptions {
    StackOptions { controller_args: vec!["--retry-delays".into(), "300ms,600ms".into()], ..Default::default() }
}

fn unique_repo(stack: &Stack) -> (FixtureRepo, String) {
    let name = format!("chain-{}", &Uuid::new_v4().simple().to_string()[..8]);
    (FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &name), format!("{name}-fixture-owner-pr-2"))
}

fn step<'a>(chain: &'a Value, name: &str) -> &'a Value {
    chain["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

fn at(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_steps_back_off_dead_letter_and_can_be_retried() {
    let stack = Stack::start(options()).await;
    let (repo, name) = unique_repo(&stack);
    let files = fixtures::static_site(&stack.services.base_image, "retried");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("demo", &files);
    // The repository is unreachable for now: every checkout fails.
    let hidden = repo.bare.with_extension("hidden");
    std::fs::rename(&repo.bare, &hidden).unwrap();

    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    assert!(demo["error"].as_str().unwrap().starts_with("checkout failed: git fetch failed"), "{demo}");

    let detail = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    let chain = &detail["chains"][0];
    assert_eq!(chain["status"], "failed");
    let checkout = step(chain, "checkout");
    assert_eq!(checkout["status"], "failed");
    assert_eq!(checkout["attempts"], 3, "one attempt and two retries");
    let history = checkout["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|a| a["outcome"] == "failed" && a["error"].as_str().unwrap().contains("git fetch")));
    // Each retry waited at least its delay in the TTL queue.
    let gaps: Vec<Duration> =
        history.windows(2).map(|w| (at(&w[1]["finished_at"]) - at(&w[0]["finished_at"])).unsigned_abs()).collect();
    assert!(gaps[0] >= Duration::from_millis(300) && gaps[1] >= Duration::from_millis(600), "{gaps:?}");
    assert_eq!(step(chain, "build")["status"], "pending", "later steps never ran");

    // The exhausted step is kept in the dead-letter queue.
    demofleet_tests::wait::until("the dead-letter queue to hold the step", DEADLINE, || async {
        (stack.vhost.messages("demofleet.dead").await == 1).then_some(())
    })
    .await;

    // Repaired, the chain is retried through the API and the demo comes up.
    std::fs::rename(&hidden, &repo.bare).unwrap();
    let chain_id = chain["id"].as_str().unwrap();
    let retried = stack.post(&format!("/api/chains/{chain_id}/retry")).await;
    assert_eq!(retried.status(), 202);
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains("retried")), (200, true));

    // Only failed chains can be retried; unknown ones are 404.
    let again = stack.post(&format!("/api/chains/{chain_id}/retry")).await;
    assert_eq!(again.status(), 409);
    let unknown = stack.post(&format!("/api/chains/{}/retry", Uuid::new_v4())).await;
    assert_eq!(unknown.status(), 404);
    let actor: String =
        sqlx::query_scalar("select actor from audit_events where action = 'retry'").fetch_one(&stack.db).await.unwrap();
    assert_eq!(actor, "token tests (test harness)", "the audit names the API token that asked");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_with_nothing_to_build_fails_at_once_saying_so() {
    let stack = Stack::start(options()).await;
    let (repo, name) = unique_repo(&stack);
    let sha = repo.commit("no demo here", &[("README.md", "just words\n")]);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    assert!(
        demo["error"].as_str().unwrap().contains("has no .demofleet.toml, compose file, Dockerfile or ./run"),
        "{demo}"
    );
    let detail = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    let build = step(&detail["chains"][0], "build");
    assert_eq!(build["attempts"], 1, "a permanent failure is not retried");
    assert_eq!(step(&detail["chains"][0], "checkout")["status"], "succeeded");
    stack.stop().await;
}

/// A step whose answer never comes (its message or its result lost, or a host that takes
/// work and never answers) counts as a failed attempt after the step deadline and is sent
/// again; once the retries are used up, the chain and the demo fail saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_left_unanswered_is_retried_after_the_deadline_then_fails() {
    let mut options = options();
    options.agents = 0;
    options.controller_args.extend(["--step-deadline", "2s"].map(String::from));
    let stack = Stack::start(options).await;
    // A host that looks alive (seen an hour ahead, past the stack's host timeout) and never
    // takes a step off its queue.
    sqlx::query("insert into hosts (id, address, capacity, last_seen) values ('mute-host', '127.0.0.1', 5, now() + interval '1 hour')")
        .execute(&stack.db)
        .await
        .unwrap();
    let (repo, name) = unique_repo(&stack);
    let sha = repo.commit("a demo", &[("README.md", "words\n")]);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let error = demo["error"].as_str().unwrap();
    assert!(error.contains("checkout failed: no answer from mute-host within 2s"), "{demo}");
    let detail = stack.get_json(&format!("/api/demos/{}", demo["id"].as_str().unwrap())).await;
    let checkout = step(&detail["chains"][0], "checkout");
    // Two retry delays: three attempts, each given up on after the deadline.
    assert_eq!(checkout["attempts"], 3, "{checkout}");
    assert_eq!(checkout["status"], "failed");
    let attempts: Vec<(i32, Option<String>, String)> = sqlx::query_as(
        "select attempt, host_id, outcome from step_attempts a join chain_steps s
         on s.chain_id = a.chain_id and s.position = a.position where s.name = 'checkout' order by attempt",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    let given_up = |attempt| (attempt, Some("mute-host".to_string()), "failed".to_string());
    assert_eq!(attempts, [given_up(1), given_up(2), given_up(3)]);
    stack.stop().await;
}
