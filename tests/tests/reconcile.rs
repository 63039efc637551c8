//! Reconcile: a demo whose container vanished is launched again; a demo container the
//! controller knows nothing of is removed, while containers of other hosts and containers
//! that are not demos survive.

use std::process::Command;
use std::time::Duration;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> String {
    let output = command::output(Command::new("docker").args(args), command::DOCKER).expect("docker runs");
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Ids of the containers carrying `label` (`key=value`), running or not.
fn containers_with(label: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("label={label}")]).lines().map(String::from).collect()
}

/// A container that sleeps, with `labels`; returns its id.
fn sleeper(image: &str, labels: &[String]) -> String {
    let mut args = vec!["run", "-d", "--rm"];
    for label in labels {
        args.extend(["--label", label.as_str()]);
    }
    args.extend([image, "sleep", "600"]);
    docker(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_containers_come_back_and_orphans_go() {
    let options = StackOptions { controller_args: vec!["--reconcile-grace".into(), "2s".into()], ..Default::default() };
    let stack = Stack::start(options).await;
    let host_id = stack.agents[0].host_id.clone();
    let repo_name = format!("rec-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "reconciled");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let demo_label = format!("run.demo.id={}", demo["id"].as_str().unwrap());
    let first = containers_with(&demo_label);
    assert_eq!(first.len(), 1);

    // The container vanishes behind the controller's back: it is launched again.
    docker(&["rm", "-f", &first[0]]);
    let relaunched = wait::until("the demo to run a new container", DEADLINE, || async {
        let demo = stack.demo(&name).await?;
        let containers = containers_with(&demo_label);
        let fresh = demo["state"] == "running" && containers.len() == 1 && containers[0] != first[0];
        fresh.then_some(demo)
    })
    .await;
    assert!(relaunched["generation"].as_i64() > demo["generation"].as_i64(), "{relaunched}");
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains("reconciled")), (200, true));

    // A demo container of no known demo on this host is removed; one of another host and a
    // container that is no demo are left alone.
    let image = stack.services.base_image.clone();
    let unknown = |host: &str| {
        vec![
            "run.demo=true".to_string(),
            format!("run.demo.host={host}"),
            format!("run.demo.id={}", Uuid::new_v4()),
            "run.demo.generation=1".to_string(),
        ]
    };
    let orphan = sleeper(&image, &unknown(&host_id));
    let other_host = sleeper(&image, &unknown(&format!("{host_id}-elsewhere")));
    let not_a_demo = sleeper(&image, &[format!("reconcile-test={host_id}")]);
    wait::until("the orphan to be removed", DEADLINE, || async {
        (!docker(&["ps", "-aq", "--no-trunc"]).contains(&orphan)).then_some(())
    })
    .await;
    let left = docker(&["ps", "-aq", "--no-trunc"]);
    assert!(left.contains(&other_host) && left.contains(&not_a_demo), "bystanders survive");
    assert_eq!(containers_with(&demo_label).len(), 1, "the demo's own container stays");
    docker(&["rm", "-f", &other_host, &not_a_demo]);
    stack.stop().await;
}
