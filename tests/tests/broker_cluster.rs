//! Brokers of more than one node, as the controller and agents see them: lists of RabbitMQ
//! and NATS URLs whose first node is down, and quorum queues. A demo still runs end to end,
//! and every task queue is a quorum queue.

use std::time::Duration;

use demofleet_common::topology;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_runs_over_quorum_queues_with_a_node_of_each_broker_down() {
    let quorum = vec!["--amqp-quorum-queues".to_string()];
    let options = StackOptions {
        broker_failover: true,
        controller_args: quorum.clone(),
        agent_args: quorum,
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let repo_name = format!("quorum-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "over quorum queues");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("a demo", &files);
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.wait_for_state(&name, "running", Duration::from_secs(120)).await;
    let (status, body) = stack.edge_get(&format!("{name}.localhost"), "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("over quorum queues"), "{body}");

    let host_queue = topology::host_queue(&stack.agents[0].host_id);
    for queue in [topology::CONTROLLER_QUEUE, host_queue.as_str(), topology::DEAD_QUEUE] {
        assert_eq!(stack.vhost.queue_type(queue).await.as_deref(), Some("quorum"), "{queue}");
    }
    stack.stop().await;
}
