//! Live logs: the agent's build output reaches a client of the controller's SSE endpoint
//! while the build runs, and then the running container's own output.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_and_container_output_stream_to_the_client_as_they_happen() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("logs-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let mut files = fixtures::static_site(&stack.services.base_image, "logged");
    // The marker is printed a second into the build, well after the client connects; the
    // repository name keeps Docker's build cache from skipping the step.
    let run = format!("RUN sleep 1 && echo build-says-hello-$((40 + 2))-{repo_name}\nEXPOSE 8080");
    files[0].1 = files[0].1.replace("EXPOSE 8080", &run);
    let runtime = format!("runtime-says-hello-{repo_name}");
    let cmd = format!("CMD [\"sh\", \"-c\", \"echo {runtime}; exec httpd -f -p 8080 -h /www\"]");
    files[0].1 =
        files[0].1.lines().map(|l| if l.starts_with("CMD") { cmd.as_str() } else { l }).collect::<Vec<_>>().join("\n");
    let marker = format!("build-says-hello-42-{repo_name}");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());

    let unknown = stack.get(&format!("/api/demos/{}/logs", Uuid::new_v4())).await;
    assert_eq!(unknown.status(), 404);

    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let answer: serde_json::Value = response.json().await.unwrap();
    let id = answer["demo"]["id"].as_str().unwrap().to_string();
    let mut stream = stack.follow(&format!("/api/demos/{id}/logs")).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut received = String::new();
    let mut found = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            received.push_str(&String::from_utf8_lossy(&chunk));
            found = [&marker, &runtime]
                .into_iter()
                .filter(|m| received.lines().any(|l| l == format!("data: {m}")))
                .cloned()
                .collect();
            if found.len() == 2 {
                return;
            }
        }
    })
    .await;
    assert_eq!(
        found,
        vec![marker.clone(), runtime.clone()],
        "build output and the container's; stream so far:\n{received}"
    );
    // In that order: the build's line reached the client before the container's first one.
    let line = |m: &str| received.lines().position(|l| l == format!("data: {m}")).expect("found above");
    assert!(line(&marker) < line(&runtime), "the build's output came after the container's:\n{received}");
    assert!(received.contains("event: log"), "{received}");
    drop(stream);
    stack.stop().await;
}
