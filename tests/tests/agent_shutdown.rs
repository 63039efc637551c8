//! Graceful shutdown of an agent (what SIGTERM does): a step in flight finishes and its
//! result is reported; a step that outlasts the shutdown grace goes back to the queue and
//! the agent's next start runs it. Either way the demo ends up running once, with no
//! container left half-launched.

use std::process::Command;
use std::time::Duration;

use demofleet_tests::fixtures::FixtureRepo;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::{fixtures, wait};
use serde_json::Value;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(180);

/// A demo whose build takes a few seconds (`unique` keeps Docker's build cache out).
fn slow_site(base_image: &str, unique: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {base_image}\nRUN sleep 6 && echo {unique}\nCOPY index.html /www/index.html\nEXPOSE 8080\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("index.html", "<!doctype html><title>fixture</title><h1>patient</h1>\n".into()),
    ]
}

/// The current chain's step `name` of the demo `name`.
async fn step(stack: &Stack, demo: &str, name: &str) -> Option<Value> {
    let id = stack.demo(demo).await?["id"].as_str()?.to_string();
    let detail = stack.get_json(&format!("/api/demos/{id}")).await;
    detail["chains"][0]["steps"].as_array()?.iter().find(|s| s["name"] == name).cloned()
}

fn containers_of(demo_id: &str) -> usize {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=run.demo.id={demo_id}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Open a PR with the slow demo and wait until the agent is building it.
async fn start_building(stack: &Stack, pr: u64) -> String {
    let repo_name = format!("term-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = slow_site(&stack.services.base_image, &repo_name);
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let mut body = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
    body["number"] = pr.into();
    body["pull_request"]["number"] = pr.into();
    stack.deliver("pull_request", &body).await;
    let name = format!("{repo_name}-fixture-owner-pr-{pr}");
    wait::until("the build step to be sent", DEADLINE, || async {
        let build = step(stack, &name, "build").await?;
        (build["status"] == "queued").then_some(())
    })
    .await;
    // The agent takes it at once; give it a moment to be well into the build.
    tokio::time::sleep(Duration::from_secs(2)).await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_finishes_or_gives_back_its_steps() {
    let mut stack = Stack::start(StackOptions::default()).await;

    // Within the grace (10 minutes by default) the build finishes and is reported, though
    // the agent is stopping; the next step waits for the host to come back.
    let finished = start_building(&stack, 2).await;
    stack.stop_agent(0).await;
    let build = wait::until("the finished build to be recorded", DEADLINE, || async {
        let build = step(&stack, &finished, "build").await?;
        (build["status"] == "succeeded").then_some(build)
    })
    .await;
    assert_eq!(build["attempts"], 1, "{build}");
    // The chain stays on the host that built: the launch waits in that host's queue.
    let launch = step(&stack, &finished, "launch").await.unwrap();
    let unrun = launch["history"].as_array().is_some_and(|h| h.is_empty()) && launch["finished_at"].is_null();
    assert!(unrun, "never run by a stopped agent: {launch}");
    let id = stack.demo(&finished).await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(containers_of(&id), 0);
    stack.start_agent(0, &["--shutdown-grace", "1s"]).await;
    stack.wait_for_state(&finished, "running", DEADLINE).await;
    assert_eq!(containers_of(&id), 1);

    // Past a grace of 1 s the build is dropped unfinished, unreported, and given back to the
    // queue: the agent's next start builds it again, and the demo runs once.
    let given_back = start_building(&stack, 3).await;
    stack.stop_agent(0).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let build = step(&stack, &given_back, "build").await.unwrap();
    assert_eq!((build["status"].as_str(), build["attempts"].as_i64()), (Some("queued"), Some(1)), "{build}");
    let id = stack.demo(&given_back).await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(containers_of(&id), 0);
    stack.start_agent(0, &[]).await;
    let demo = stack.wait_for_state(&given_back, "running", DEADLINE).await;
    let build = step(&stack, &given_back, "build").await.unwrap();
    assert_eq!((build["status"].as_str(), build["attempts"].as_i64()), (Some("succeeded"), Some(1)), "{build}");
    assert_eq!(containers_of(&id), 1, "one container: {demo}");
    let (status, body) = stack.edge_get(&format!("{given_back}.localhost"), "/").await;
    assert_eq!((status, body.contains("patient")), (200, true));
    stack.stop().await;
}
