//! A push to an open pull request updates its demo without downtime: the new generation
//! starts beside the old one, the route switches once it is healthy, and only then is the
//! old one removed. A client requesting in a loop through the edge sees no failure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptionsBuilder;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronize_switches_to_the_new_commit_with_no_failed_request() {
    let stack = Stack::start(StackOptions::default()).await;
    let repo_name = format!("upd-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let host = format!("{name}.localhost");
    let site = |marker: &str| fixtures::static_site(&stack.services.base_image, marker);
    let first = site("first version");
    let sha1 = repo.commit("one", &first.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha1)).await;
    stack.wait_for_state(&name, "running", DEADLINE).await;

    // A client asks for the page every 20 ms for the whole update.
    let running = Arc::new(AtomicBool::new(true));
    let client = {
        let (running, edge, host) = (running.clone(), stack.edge_addr, host.clone());
        tokio::spawn(async move {
            let http = demofleet_tests::http_client().build().unwrap();
            let mut seen: HashMap<String, usize> = HashMap::new();
            while running.load(Ordering::Relaxed) {
                let answer = http.get(format!("http://{edge}/")).header("host", &host).send().await;
                let key = match answer {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if body.contains("second version") { "second" } else { "first" }.to_string()
                    }
                    Ok(r) => format!("status {}", r.status()),
                    Err(err) => format!("error {err}"),
                };
                *seen.entry(key).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };

    let second = site("second version");
    let sha2 = repo.commit("two", &second.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.synchronize.json", &repo, &sha2)).await;
    assert_eq!(response.status(), 202);
    wait::until("the demo to run the second commit", DEADLINE, || async {
        let demo = stack.demo(&name).await?;
        (demo["state"] == "running" && demo["sha"] == sha2.as_str()).then_some(())
    })
    .await;
    // Keep asking a little longer, past the old container's removal.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let demo_id = stack.demo(&name).await.unwrap()["id"].as_str().unwrap().to_string();
    let filters = HashMap::from([("label", vec![format!("run.demo.id={demo_id}")])]);
    let containers = wait::until("the old generation to be removed", DEADLINE, || async {
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = docker.list_containers(Some(options)).await.ok()?;
        (list.len() == 1).then_some(list)
    })
    .await;
    assert_eq!(containers[0].labels.as_ref().unwrap()["run.demo.generation"], "2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    let seen = client.await.unwrap();

    let failures: Vec<(&String, &usize)> = seen.iter().filter(|(k, _)| *k != "first" && *k != "second").collect();
    assert!(failures.is_empty(), "requests failed during the update: {seen:?}");
    assert!(seen.get("first").copied().unwrap_or(0) > 0 && seen.get("second").copied().unwrap_or(0) > 0, "{seen:?}");
    let (_, body) = stack.edge_get(&host, "/").await;
    assert!(body.contains("second version"));
    stack.stop().await;
}
