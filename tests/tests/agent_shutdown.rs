//! Graceful shutdown of an agent process on SIGTERM: a step in flight finishes and its
//! result is reported before the process exits; a step that outlasts the shutdown grace goes
//! back to the queue and the agent's next start runs it. Either way the demo ends up running
//! once, with no container left half-launched. The signal is sent once the build is seen
//! running: its first line of output reached the demo's live log.

use std::process::Command;
use std::time::Duration;

use demofleet_tests::fixtures::FixtureRepo;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::{command, fixtures, wait};
use serde_json::Value;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(180);

/// A demo whose build takes a few seconds (`unique` keeps Docker's build cache out).
fn slow_site(base_image: &str, unique: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {base_image}\nRUN echo building-{unique} && sleep 6 && echo {unique}\nCOPY index.html /www/index.html\nEXPOSE 8080\n\
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
    let output = command::output(
        Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=run.demo.id={demo_id}")]),
        command::DOCKER,
    )
    .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// Open a PR with the slow demo and wait until the agent is building it: the build's first
/// line, printed before it sleeps, reached the demo's live log.
async fn start_building(stack: &Stack, pr: u64) -> String {
    let repo_name = format!("term-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = slow_site(&stack.services.base_image, &repo_name);
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let mut body = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
    body["number"] = pr.into();
    body["pull_request"]["number"] = pr.into();
    let (_, response) = stack.deliver("pull_request", &body).await;
    let answer: Value = response.json().await.unwrap();
    let id = answer["demo"]["id"].as_str().expect("the demo's id in the answer").to_string();
    let mut log = stack.follow(&format!("/api/demos/{id}/logs")).await;
    let marker = format!("data: building-{repo_name}");
    let mut received = String::new();
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = log.chunk().await.expect("the live log") {
            received.push_str(&String::from_utf8_lossy(&chunk));
            if received.lines().any(|l| l == marker) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(seen, Ok(true)), "the build's first line in the live log; it said:\n{received}");
    format!("{repo_name}-fixture-owner-pr-{pr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_finishes_or_gives_back_its_steps() {
    let mut stack = Stack::start(StackOptions::default()).await;
    let agent = env!("CARGO_BIN_EXE_fleet-agent");
    stack.start_agent_process(0, agent, &[]).await;

    // Within the grace (10 minutes by default) the build finishes and is reported before the
    // process exits, though it was told to stop; the next step waits for the host to come back.
    let finished = start_building(&stack, 2).await;
    let (status, took) = stack.terminate_agent_process(0, DEADLINE).await;
    assert!(status.success(), "{status}:\n{}", stack.agent_process_log(0));
    // The build had seconds to go: the process waited for it.
    assert!(took >= Duration::from_secs(3), "exited {took:?} after SIGTERM, mid-build");
    let build = wait::until("the finished build to be recorded", Duration::from_secs(20), || async {
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
    stack.start_agent_process(0, agent, &["--shutdown-grace", "1s"]).await;
    stack.wait_for_state(&finished, "running", DEADLINE).await;
    assert_eq!(containers_of(&id), 1);

    // Past a grace of 1 s the build is dropped unfinished, unreported, and given back to the
    // queue: the agent's next start builds it again, and the demo runs once.
    let given_back = start_building(&stack, 3).await;
    let (status, took) = stack.terminate_agent_process(0, DEADLINE).await;
    assert!(status.success(), "{status}:\n{}", stack.agent_process_log(0));
    assert!(took < Duration::from_secs(5), "exited {took:?} after SIGTERM, with a grace of 1 s");
    // Had the build gone on, it would have finished (6 s) and been reported by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let build = step(&stack, &given_back, "build").await.unwrap();
    assert_eq!((build["status"].as_str(), build["attempts"].as_i64()), (Some("queued"), Some(1)), "{build}");
    let id = stack.demo(&given_back).await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(containers_of(&id), 0);
    stack.start_agent_process(0, agent, &[]).await;
    let demo = stack.wait_for_state(&given_back, "running", DEADLINE).await;
    let build = step(&stack, &given_back, "build").await.unwrap();
    assert_eq!((build["status"].as_str(), build["attempts"].as_i64()), (Some("succeeded"), Some(1)), "{build}");
    assert_eq!(containers_of(&id), 1, "one container: {demo}");
    let (status, body) = stack.edge_get(&format!("{given_back}.localhost"), "/").await;
    assert_eq!((status, body.contains("patient")), (200, true));
    stack.stop().await;
}
