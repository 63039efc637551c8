//! Logs that last: a failed build's output is kept in PostgreSQL with its generation and
//! step, and is still there — on the demo page, replayed by `GET /api/demos/{id}/logs`,
//! as a download — after the agent that built it was stopped. A reconnect with
//! `Last-Event-ID` goes on after the last line seen, repeating none.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::oidc::{self, get_with};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

/// The `(id, data)` of the events in `response` until `until` is seen or `wait` passes
/// without a chunk.
async fn events(mut response: reqwest::Response, until: &str, wait: Duration) -> Vec<(String, String)> {
    let mut received = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(wait, response.chunk()).await {
        received.push_str(&String::from_utf8_lossy(&chunk));
        if received.contains(until) && received.ends_with("\n\n") {
            break;
        }
    }
    let mut parsed = Vec::new();
    for block in received.split("\n\n") {
        let id = block.lines().find_map(|l| l.strip_prefix("id: "));
        // An event's data lines are one value, joined by newlines.
        let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        if let (Some(id), false) = (id, data.is_empty()) {
            parsed.push((id.to_string(), data.join("\n")));
        }
    }
    parsed
}

/// `lines` are the newest lines of generation `generation`'s build, each kept as a line of
/// its own, in the order printed, the last one included.
fn newest_in_order(lines: &[(String, String)], marker: &str, generation: u32) {
    let first = 300 - lines.len();
    for (i, (id, data)) in lines.iter().enumerate() {
        let printed = format!("{marker}-g{generation}-line-{}-padding-padding-padding", first + i);
        assert_eq!(data, &printed, "line {id} of {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_builds_output_outlives_its_agent() {
    let options = StackOptions { controller_args: vec!["--retry-delays".into(), "100ms".into()], ..Default::default() };
    let mut stack = Stack::start(options).await;
    let repo_name = format!("kept-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let marker = format!("kept-build-output-{repo_name}");
    let dockerfile = format!(
        "FROM {}\nRUN echo {marker}-one && sleep 0.3 && echo {marker}-two && sleep 0.3 && echo {marker}-three \\
         && sleep 1 && exit 3\n",
        stack.services.base_image
    );
    let sha = repo.commit("a build that fails", &[("Dockerfile", &dockerfile)]);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();

    // The agent that built it goes; nobody was watching the build.
    stack.stop_agent(0).await;

    // Replayed, in order (a failed build is tried again: the first attempt's lines first).
    let path = format!("/api/demos/{id}/logs");
    let replay = events(stack.follow(&path).await, "build failed", Duration::from_secs(5)).await;
    let mine: Vec<&(String, String)> = replay.iter().filter(|(_, d)| d.starts_with(&marker)).collect();
    let data: Vec<&str> = mine.iter().map(|(_, d)| d.as_str()).collect();
    let expected = [format!("{marker}-one"), format!("{marker}-two"), format!("{marker}-three")];
    assert!(data.len() >= 3, "{replay:?}");
    assert_eq!(data[..3], expected.iter().map(String::as_str).collect::<Vec<_>>(), "{replay:?}");
    assert!(replay.iter().any(|(_, d)| d.starts_with("build failed")), "the step's failure too: {replay:?}");
    let ids: Vec<i64> = replay.iter().map(|(i, _)| i.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // Resumed after the first of the three: what came after it, from the next line on,
    // none lost and none repeated.
    let first: i64 = mine[0].0.parse().unwrap();
    let resumed = events(stack.follow_after(&path, &mine[0].0).await, "build failed", Duration::from_secs(5)).await;
    let resumed_ids: Vec<i64> = resumed.iter().map(|(i, _)| i.parse().unwrap()).collect();
    let after: Vec<i64> = ids.iter().copied().filter(|i| *i > first).collect();
    let n = resumed_ids.len().min(after.len());
    assert!(n >= 2, "{resumed:?}");
    assert_eq!(resumed_ids[..n], after[..n], "{resumed:?}");
    let data: Vec<&str> = resumed.iter().map(|(_, d)| d.as_str()).filter(|d| d.starts_with(&marker)).collect();
    assert_eq!(data[..2], [expected[1].as_str(), expected[2].as_str()], "{resumed:?}");

    // Kept per generation and step, and downloadable as text.
    let text = stack.get(&format!("{path}?format=text&generation=1&step=build")).await;
    assert_eq!(text.status(), 200);
    assert!(text.headers()["content-disposition"].to_str().unwrap().contains(&format!("{name}-g1-build.log")));
    let text = text.text().await.unwrap();
    assert!(text.contains(&format!("[g1 build] {marker}-two")), "{text}");
    assert!(!text.contains("[g1 checkout]"), "only the build step: {text}");

    // The demo page shows it without anyone having watched.
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let page = get_with(&stack, &format!("/demos/{id}"), &session).await.text().await.unwrap();
    assert!(page.contains(&format!("[build] {marker}-three")), "{page}");
    assert!(page.contains("Kept output of generation 1") && !page.contains("Waiting for output"), "{page}");
    stack.stop().await;
}

/// The lines of a replay of `path` that start with `marker`, with their ids, once `done`
/// holds of them (the keeper writes and trims a little after the demo's state changes).
async fn kept(
    stack: &Stack,
    path: &str,
    marker: &str,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut previous = None;
    loop {
        let replay = events(stack.follow(path).await, "\u{0}", Duration::from_secs(2)).await;
        let mine: Vec<(String, String)> = replay.into_iter().filter(|(_, d)| d.starts_with(marker)).collect();
        // Settled: done, and the same twice (the step's failure, which quotes the last
        // lines, may be kept a moment after them).
        if done(&mine) && previous.as_ref() == Some(&mine) {
            return mine;
        }
        previous = Some(mine.clone());
        assert!(std::time::Instant::now() < deadline, "the kept lines never settled: {mine:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_logs_are_bounded_and_resume_across_a_controller_restart() {
    const KEEP_BYTES: usize = 3000;
    let flags = ["--retry-delays", "100ms", "--log-keep-bytes", "3000", "--log-keep-generations", "1"];
    let options = StackOptions { controller_args: flags.iter().map(|f| f.to_string()).collect(), ..Default::default() };
    let mut stack = Stack::start(options).await;
    stack.run_controller_as_process(env!("CARGO_BIN_EXE_fleet-controller")).await;
    let repo_name = format!("bounded-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let marker = format!("bounded-{repo_name}");
    // 300 lines of about 60 bytes: six times what a generation keeps.
    let base_image = stack.services.base_image.clone();
    let noisy = |generation: u32| {
        format!(
            "FROM {}\nRUN i=0; while [ $i -lt 300 ]; do echo {marker}-g{generation}-line-$i-padding-padding-padding; \
             i=$((i+1)); done; exit 3\n",
            base_image
        )
    };
    let sha = repo.commit("a noisy build that fails", &[("Dockerfile", &noisy(1))]);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = stack.wait_for_state(&name, "failed", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();
    let path = format!("/api/demos/{id}/logs");

    // Bounded: the newest lines of the generation that fit in its bytes, the last one among them.
    let last = format!("{marker}-g1-line-299-");
    let first = format!("{marker}-g1-line-0-");
    let g1 = kept(&stack, &path, &marker, |lines| {
        lines.iter().any(|(_, d)| d.starts_with(&last)) && !lines.iter().any(|(_, d)| d.starts_with(&first))
    })
    .await;
    let bytes: usize = g1.iter().map(|(_, d)| d.len() + 1).sum();
    assert!(bytes <= KEEP_BYTES, "{bytes} bytes of build output kept: {g1:?}");
    assert!(g1.len() >= 20, "the newest lines are kept: {g1:?}");
    newest_in_order(&g1, &marker, 1);

    // The controller is killed and started again: a client resuming after a line it saw gets
    // the lines after it, none lost and none repeated.
    let middle = g1.len() / 2;
    stack.kill_controller();
    stack.start_controller().await;
    let resumed = events(stack.follow_after(&path, &g1[middle].0).await, &last, Duration::from_secs(5)).await;
    let resumed: Vec<&(String, String)> = resumed.iter().filter(|(_, d)| d.starts_with(&marker)).collect();
    let expected: Vec<&(String, String)> = g1[middle + 1..].iter().collect();
    assert_eq!(resumed, expected, "resumed after {:?}", g1[middle]);

    // A new generation's log replaces the old one's (one generation kept).
    let sha = repo.commit("another noisy build", &[("Dockerfile", &noisy(2))]);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.synchronize.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let last2 = format!("{marker}-g2-line-299-");
    let g2 = kept(&stack, &path, &marker, |lines| {
        lines.iter().any(|(_, d)| d.starts_with(&last2)) && !lines.iter().any(|(_, d)| d.contains("-g1-line-"))
    })
    .await;
    newest_in_order(&g2, &marker, 2);
    let newest_g1: i64 = g1.last().unwrap().0.parse().unwrap();
    assert!(g2.iter().all(|(i, _)| i.parse::<i64>().unwrap() > newest_g1), "{g2:?}");
    let text = stack.get(&format!("{path}?format=text&generation=1")).await.text().await.unwrap();
    assert!(!text.contains(&marker), "generation 1 is no longer kept: {text}");
    stack.stop().await;
}
