//! A RabbitMQ cluster of three nodes of the test's own on this machine (distinct node
//! names and ports, joined with `join_cluster`), with quorum queues; the controller and two
//! agents get the list of the three nodes' URLs. During a burst of 1,000 deliveries the node
//! the controller is connected to is killed with SIGKILL: every accepted delivery is
//! recorded with its outcome, every pull request's demo ends in the state its newest event
//! asks for with one container and no chain under way, every queue is a quorum queue, and
//! the clients that were on the dead node reconnect to the others. The node then comes
//! back and rejoins. Convergence times are printed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use demofleet_common::topology;
use demofleet_tests::burst::{self, send_all, Bursts, Sending, BURST};
use demofleet_tests::cluster::{ClusterFleet, RabbitCluster, RABBITMQ_USER};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;

/// The node dies once this many deliveries of the burst were answered.
const KILL_AFTER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_loses_nothing_when_the_controllers_rabbitmq_node_dies() {
    let began = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(|| RabbitCluster::start(3)).await.unwrap();
    println!("three RabbitMQ nodes in one cluster after {:.1?}", began.elapsed());
    let quorum = ["--amqp-quorum-queues"];
    let options = StackOptions {
        agents: 0,
        controller_args: quorum.map(String::from).to_vec(),
        services: Some(cluster.services(0)),
        ..Default::default()
    };
    let mut stack = Stack::start(options).await;
    let vhost = stack.vhost.name.clone();
    let fleet = ClusterFleet::start(
        &mut stack,
        env!("CARGO_BIN_EXE_fleet-controller"),
        |user, password| cluster.amqp_urls(user, password, &vhost),
        &[&["--amqp-quorum-queues"][..], &burst::FAULT_FLAGS].concat(),
        2,
        &quorum,
    )
    .await;

    // Which node each client is on: the controller is the only client with the admin user.
    let mut users: HashSet<String> = fleet.agents.iter().map(|(_, user, _)| user.clone()).collect();
    users.insert(RABBITMQ_USER.to_string());
    // A loaded machine may leave a connection the controller replaced listed until the
    // broker notices it is gone; the wait allows for that, and says what it saw.
    let before = wait::until_seen("every client connected", Duration::from_secs(90), || async {
        let connections = cluster.connections(&vhost).await.ok_or("no connection list from the management API")?;
        let seen: HashSet<String> = connections.iter().map(|(u, _)| u.clone()).collect();
        let controllers = connections.iter().filter(|(u, _)| u == RABBITMQ_USER).count();
        if seen == users && controllers == 1 {
            Ok(connections)
        } else {
            Err(format!("{connections:?} (users wanted: {users:?})"))
        }
    })
    .await;
    let victim = before.iter().find(|(u, _)| u == RABBITMQ_USER).unwrap().1;
    let moved: Vec<&String> = before.iter().filter(|(_, node)| *node == victim).map(|(u, _)| u).collect();
    println!("clients on {} (the controller's node): {moved:?}", cluster.nodes[victim].name);

    let mut bursts = Bursts::new(&stack, "rabbitmq-cluster");
    let deliveries = bursts.next_burst();
    let started = Instant::now();
    let sending = Sending::default();
    let urls = [stack.url("/webhook/github")];
    let sent = send_all(&urls, &stack.secret, &deliveries, &sending);
    let killing = async {
        burst::answered(&sending, KILL_AFTER).await;
        cluster.kill(victim);
        let killed = Instant::now();
        let killed_at = sending.answered.load(Ordering::Relaxed);
        // When each client that was on the dead node shows up on another one.
        let back: Mutex<HashMap<String, (usize, Duration)>> = Mutex::default();
        wait::until("every client on another node", Duration::from_secs(60), || async {
            let connections = cluster.connections(&vhost).await?;
            for (user, node) in connections.iter().filter(|(_, node)| *node != victim) {
                back.lock().unwrap().entry(user.clone()).or_insert((*node, killed.elapsed()));
            }
            let seen: HashSet<String> = connections.iter().map(|(u, _)| u.clone()).collect();
            (seen == users && connections.iter().all(|(_, node)| *node != victim)).then_some(())
        })
        .await;
        (killed_at, back.into_inner().unwrap())
    };
    let (statuses, (killed_at, back)) = tokio::join!(sent, killing);
    assert!(statuses.iter().all(|s| matches!(s, 200 | 202)), "{statuses:?}");
    bursts.settled(&stack).await;
    let reconnected: Vec<String> = moved
        .iter()
        .map(|user| {
            let (node, after) = back[*user];
            let who = if *user == RABBITMQ_USER { "the controller".to_string() } else { format!("agent user {user}") };
            format!("{who} on {} after {after:.1?}", cluster.nodes[node].name)
        })
        .collect();
    println!(
        "{} killed after {killed_at} of {BURST} deliveries; reconnected: {}; all recorded, all settled {:.1?} \
         after the burst began",
        cluster.nodes[victim].name,
        reconnected.join(", "),
        started.elapsed()
    );

    // The queues the fleet uses are quorum queues, still there with one node of three gone.
    let queues = cluster.queues(&vhost).await.expect("the queues, from a surviving node");
    let mut wanted = vec![topology::CONTROLLER_QUEUE.to_string(), topology::DEAD_QUEUE.to_string()];
    wanted.extend(fleet.agents.iter().map(|(host, _, _)| topology::host_queue(host)));
    for queue in &wanted {
        assert!(queues.iter().any(|(name, _, _)| name == queue), "queue {queue} exists: {queues:?}");
    }
    for (name, kind, members) in &queues {
        assert_eq!(kind, "quorum", "queue {name}");
        assert_eq!(*members, 3, "queue {name} has a replica on each node");
    }

    // The node comes back and rejoins the cluster.
    let restarted = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(victim));
    wait::until("three running nodes", Duration::from_secs(60), || async {
        let nodes = cluster.management_get("/nodes").await?;
        let running = nodes.as_array()?.iter().filter(|n| n["running"] == true).count();
        (running == 3).then_some(())
    })
    .await;
    println!("{} back in the cluster after {:.1?}", cluster.nodes[victim].name, restarted.elapsed());

    fleet.stop().await;
    stack.stop().await;
}
