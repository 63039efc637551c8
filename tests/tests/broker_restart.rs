//! RabbitMQ and NATS restarts: the controller and agent reconnect by themselves, and a
//! delivery accepted while RabbitMQ is down is published once it is back. Both brokers are
//! the test's own (a RabbitMQ node from `tests/src/cluster.rs`, a NATS server), so the
//! machine's, which other tests use, stay up.

use std::time::Duration;

use demofleet_tests::cluster::RabbitCluster;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::services::PrivateNats;
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_recover_after_broker_restarts_and_nothing_is_lost() {
    let mut nats = PrivateNats::start();
    let rabbitmq = tokio::task::spawn_blocking(|| RabbitCluster::start(1)).await.unwrap();
    let options =
        StackOptions { nats_url: Some(nats.url()), services: Some(rabbitmq.services(0)), ..Default::default() };
    let stack = Stack::start(options).await;
    let repo_name = format!("restart-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "survived");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("demo", &files);
    let name = format!("{repo_name}-fixture-owner-pr-2");

    // RabbitMQ goes away; a delivery is still accepted, durably.
    rabbitmq.ctl(0, &["stop_app"]);
    wait::until("readiness to report RabbitMQ down", DEADLINE, || async {
        let ready: serde_json::Value = stack.get("/readyz").await.json().await.ok()?;
        (ready["rabbitmq"] == false).then_some(())
    })
    .await;
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    wait::until("the first step to wait in the outbox", DEADLINE, || async {
        (stack.count("outbox").await >= 1).then_some(())
    })
    .await;

    rabbitmq.ctl(0, &["start_app"]);
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!((status, body.contains("survived")), (200, true));
    wait::until("readiness to recover", DEADLINE, || async {
        (stack.get("/readyz").await.status() == 200).then_some(())
    })
    .await;

    // NATS crashes and comes back: heartbeats resume.
    nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let after_restart = time::OffsetDateTime::now_utc();
    wait::until("a heartbeat through the restarted NATS", DEADLINE, || async {
        let hosts = stack.get_json("/api/hosts").await;
        let seen = hosts[0]["last_seen"].as_str()?;
        let seen = time::OffsetDateTime::parse(seen, &time::format_description::well_known::Rfc3339).ok()?;
        (seen > after_restart).then_some(())
    })
    .await;

    // And the chain machinery still works end to end: closing tears the demo down.
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.closed.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    stack.stop().await;
}
