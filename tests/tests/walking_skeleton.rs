//! One pull request's demo end to end on real services: opened → built and running on its
//! hostname through the edge → closed → everything of it removed, the hostname a 404.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder};
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

const DEPLOY_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_demo_lives_and_dies_with_the_pull_request() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = &stack.agents[0];
    let repo_name = format!("hello-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let marker = format!("demo of {repo_name}");
    let files = fixtures::static_site(&stack.services.base_image, &marker);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("a demo", &files);

    // opened: accepted, and durable before the answer.
    let opened = fixtures::pull_request("pull_request.opened.json", &repo, &sha);
    let (delivery, response) = stack.deliver("pull_request", &opened).await;
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "deploy_queued");
    let name = format!("{repo_name}-fixture-owner-pr-2");
    assert_eq!(answer["demo"]["name"], name.as_str());
    let recorded: String = sqlx::query_scalar("select outcome from webhook_deliveries where delivery_id = $1")
        .bind(&delivery)
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(recorded, "deploy_queued");
    // The generation's chain follows the answer: the starter begins it at once.
    wait::until("the deploy chain begun", Duration::from_secs(10), || async {
        (stack.count("chains").await == 1).then_some(())
    })
    .await;

    // The same delivery again is a no-op.
    let again = stack.deliver_raw("pull_request", &delivery, &serde_json::to_vec(&opened).unwrap()).await;
    assert_eq!(again.status(), 200);
    assert_eq!(stack.count("chains").await, 1);

    let demo = stack.wait_for_state(&name, "running", DEPLOY_DEADLINE).await;
    assert_eq!(demo["owner"], "fixture-owner");
    assert_eq!(demo["repo"], repo_name.as_str());
    assert_eq!(demo["pr"], 2);
    assert_eq!(demo["sha"], sha.as_str());
    assert_eq!(demo["host"], agent.host_id.as_str());
    assert_eq!(demo["generation"], 1);
    let hostname = format!("{name}.localhost");
    let url = format!("http://{hostname}:{}", stack.edge_addr.port());
    assert_eq!(demo["url"], url.as_str());
    let demo_id = demo["id"].as_str().unwrap().to_string();

    // The clone sits in DEMO_DIR/<name> at the head commit.
    let clone = agent.demo_dir.join(&name);
    assert_eq!(fixtures::git_output(&clone, &["rev-parse", "HEAD"]), sha);
    let git_config = std::fs::read_to_string(clone.join(".git/config")).unwrap();
    assert!(!git_config.contains("url ="), "the clone URL is not stored: {git_config}");

    // The container carries every label of the design.
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let containers = demo_containers(&docker, &demo_id).await;
    assert_eq!(containers.len(), 1, "one container for the demo");
    let labels = containers[0].labels.clone().unwrap();
    let expected = [
        ("run.demo", "true".to_string()),
        ("run.demo.url", hostname.clone()),
        ("run.demo.url_full", url.clone()),
        ("run.demo.github_user", "fixture-owner".into()),
        ("run.demo.github_repo", repo_name.clone()),
        ("run.demo.github_pr", "2".into()),
        ("run.demo.id", demo_id.clone()),
        ("run.demo.host", agent.host_id.clone()),
        ("run.demo.sha", sha.clone()),
        ("run.demo.generation", "1".into()),
        ("traefik.frontend.rule", format!("Host:{hostname}")),
        ("traefik.port", "8080".into()),
        (&format!("traefik.http.routers.{name}.rule"), format!("Host(`{hostname}`)")),
        (&format!("traefik.http.services.{name}.loadbalancer.server.port"), "8080".into()),
    ];
    for (key, value) in expected {
        assert_eq!(labels.get(key), Some(&value), "label {key}");
    }

    // The edge answers the demo's hostname with the demo's own page.
    let (status, body) = stack.edge_get(&hostname, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains(&marker), "{body}");
    let (status, _) = stack.edge_get(&format!("{hostname}:{}", stack.edge_addr.port()), "/").await;
    assert_eq!(status, 200, "a Host header with a port routes too");

    // closed: container, image and clone go; the hostname becomes a clear 404.
    let closed = fixtures::pull_request("pull_request.closed.json", &repo, &sha);
    let (closing, response) = stack.deliver("pull_request", &closed).await;
    assert_eq!(response.status(), 202);
    // Each delivery names the chain it started (retention keeps it while that chain lives).
    for (delivery, kind) in [(&delivery, "deploy"), (&closing, "teardown")] {
        let named: Option<String> = sqlx::query_scalar(
            "select c.kind from webhook_deliveries w join chains c on c.id = w.chain_id where w.delivery_id = $1",
        )
        .bind(delivery)
        .fetch_optional(&stack.db)
        .await
        .unwrap();
        assert_eq!(named.as_deref(), Some(kind), "delivery {delivery} names no {kind} chain");
    }
    let demo = stack.wait_for_state(&name, "stopped", DEPLOY_DEADLINE).await;
    assert_eq!(demo["generation"], 2);
    assert!(demo_containers(&docker, &demo_id).await.is_empty(), "container removed");
    let filters = HashMap::from([("label", vec![format!("run.demo.id={demo_id}")])]);
    let images = docker.list_images(Some(ListImagesOptionsBuilder::default().filters(&filters).build())).await.unwrap();
    assert!(images.is_empty(), "image removed: {images:?}");
    assert!(!clone.exists(), "clone folder removed");
    let (status, body) = stack.edge_get(&hostname, "/").await;
    assert_eq!(status, 404);
    assert!(body.contains("No demo here"), "{body}");
    assert!(!body.contains(&name), "the 404 page reveals nothing: {body}");

    // Every step of both chains is recorded as succeeded.
    let steps: Vec<(String, String)> = sqlx::query_as(
        "select s.name, s.status from chain_steps s join chains c on c.id = s.chain_id order by c.created_at, s.position",
    )
    .fetch_all(&stack.db)
    .await
    .unwrap();
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["authorize", "checkout", "build", "launch", "health", "route", "retire", "unroute", "stop"]);
    assert!(steps.iter().all(|(_, s)| s == "succeeded"), "{steps:?}");
    stack.stop().await;
}

async fn demo_containers(docker: &bollard::Docker, demo_id: &str) -> Vec<bollard::models::ContainerSummary> {
    let filters = HashMap::from([("label", vec![format!("run.demo.id={demo_id}")])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    docker.list_containers(Some(options)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_visible_and_the_controller_reports_ready() {
    let stack = Stack::start(StackOptions::default()).await;
    let host_id = stack.agents[0].host_id.clone();
    let hosts = stack.get_json("/api/hosts").await;
    let host = hosts.as_array().unwrap().iter().find(|h| h["id"] == host_id.as_str()).unwrap().clone();
    assert_eq!(host["address"], "127.0.0.1");
    assert_eq!(host["alive"], true);
    assert!(host["last_seen"].as_str().is_some());
    // last_seen moves on with the heartbeats.
    let first = host["last_seen"].as_str().unwrap().to_string();
    wait::until("a newer heartbeat", Duration::from_secs(10), || async {
        let hosts = stack.get_json("/api/hosts").await;
        let seen = hosts[0]["last_seen"].as_str()?.to_string();
        (seen != first).then_some(())
    })
    .await;

    let health = stack.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = stack.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready, serde_json::json!({"ready": true, "postgres": true, "rabbitmq": true, "nats": true}));

    // The dashboard is there, behind sign-in.
    let index = stack.get("/").await;
    assert_eq!(index.status(), 302);
    assert_eq!(index.headers()["location"], "/auth/login?next=%2F");
    stack.stop().await;
}
