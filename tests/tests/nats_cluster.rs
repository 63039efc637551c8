//! A NATS cluster of three servers of the test's own on this machine (routes between them,
//! distinct ports); the controller and two agents get the list of the three URLs. While a
//! demo runs and a client follows its live log, the server the controller is connected to
//! is killed with SIGKILL: its clients reconnect to the others (the controller with its
//! subscriptions), heartbeats go on (every host stays alive, no demo moves), the log keeps
//! streaming, and a demo opened afterwards is placed, built and run. The longest silence of
//! a host and the reconnection time are printed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use demofleet_common::topology;
use demofleet_tests::cluster::NatsCluster;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

/// The controller's `--host-timeout` in the harness: a host silent this long is dead.
const HOST_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_logs_carry_on_when_a_nats_server_dies() {
    let mut nats = NatsCluster::start(3).await;
    let options = StackOptions { agents: 2, nats_url: Some(nats.urls()), ..Default::default() };
    let stack = Stack::start(options).await;

    // A demo whose container prints a numbered line every second.
    let name = open_demo(&stack, "nats-cluster", true).await;
    let demo = stack.wait_for_state(&name, "running", Duration::from_secs(120)).await;
    let id = demo["id"].as_str().unwrap().to_string();
    let host = demo["host"].as_str().unwrap().to_string();
    let chains = chains_of(&stack, &id).await;
    let lines = follow_log(&stack, &id).await;
    wait::until("a line of the demo's log", Duration::from_secs(30), || async {
        (!lines.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    // The clients (the controller and the two agents) spread over the servers; the
    // controller is the one subscribed to every host's heartbeats.
    let heartbeats = topology::all_heartbeats(&stack.nats_prefix);
    let spread = wait::until("the three clients connected", Duration::from_secs(20), || async {
        let mut spread = Vec::new();
        for index in 0..nats.servers.len() {
            spread.push(nats.subscriptions(index).await?);
        }
        (spread.iter().map(Vec::len).sum::<usize>() == 3).then_some(spread)
    })
    .await;
    let victim = spread.iter().position(|clients| clients.iter().any(|subs| subs.contains(&heartbeats))).unwrap();
    let counts: Vec<usize> = spread.iter().map(Vec::len).collect();
    println!("clients per NATS server {counts:?}; killing server {victim}, the controller's");
    nats.kill(victim);
    let killed = Instant::now();

    // For three host timeouts: every host stays alive, and the clients come back.
    let mut longest_silence = 0.0_f64;
    let mut reconnected_after = None;
    while killed.elapsed() < 3 * HOST_TIMEOUT {
        let hosts = stack.get_json("/api/hosts").await;
        for host in hosts.as_array().unwrap() {
            assert_eq!(host["alive"], true, "a host died with the NATS server: {host}");
            longest_silence = longest_silence.max(host["seconds_since_seen"].as_f64().unwrap());
        }
        if reconnected_after.is_none() {
            let mut clients = Vec::new();
            for index in (0..nats.servers.len()).filter(|i| *i != victim) {
                clients.extend(nats.subscriptions(index).await.unwrap_or_default());
            }
            if clients.len() == 3 && clients.iter().any(|subs| subs.contains(&heartbeats)) {
                reconnected_after = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reconnected_after =
        reconnected_after.expect("the clients, the controller's subscriptions too, on the other servers");

    // The log kept streaming: lines printed well after the kill reached the client.
    let late = lines.lock().unwrap().iter().filter(|(at, _)| *at > killed + HOST_TIMEOUT).count();
    assert!(late > 0, "log lines after the kill: {:?}", lines.lock().unwrap());
    // No demo moved: same host, same generation, no new chain.
    let now = stack.demo(&name).await.unwrap();
    assert_eq!(now["state"], "running");
    assert_eq!(now["host"], host.as_str());
    assert_eq!(now["generation"], demo["generation"]);
    assert_eq!(chains_of(&stack, &id).await, chains, "no chain after the kill");

    // A new demo is placed (on hosts known alive by heartbeats), built and run.
    let second = open_demo(&stack, "nats-after", false).await;
    stack.wait_for_state(&second, "running", Duration::from_secs(120)).await;
    println!(
        "NATS server killed: clients on the others after {reconnected_after:.1?}, longest host silence \
         {longest_silence:.1} s (timeout {HOST_TIMEOUT:?}), {late} log lines streamed after the kill"
    );
    stack.stop().await;
}

/// Open a pull request of a new fixture repository; its container prints `tick-<n>`
/// every second when `ticking`. The demo's name.
async fn open_demo(stack: &Stack, prefix: &str, ticking: bool) -> String {
    let repo_name = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let mut files = fixtures::static_site(&stack.services.base_image, prefix);
    if ticking {
        let cmd = "CMD [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done & \
                   exec httpd -f -p 8080 -h /www\"]";
        files[0].1 =
            files[0].1.lines().map(|l| if l.starts_with("CMD") { cmd } else { l }).collect::<Vec<_>>().join("\n");
    }
    let sha = repo.commit("a demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let (_, response) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    assert_eq!(response.status(), 202);
    format!("{repo_name}-fixture-owner-pr-2")
}

/// The demo's chains, oldest first.
async fn chains_of(stack: &Stack, demo_id: &str) -> Vec<(String, i64)> {
    sqlx::query_as("select kind, generation from chains where demo_id = $1::uuid order by created_at")
        .bind(demo_id)
        .fetch_all(&stack.db)
        .await
        .unwrap()
}

/// Follow the demo's live log; the lines, each with when it arrived.
async fn follow_log(stack: &Stack, demo_id: &str) -> Arc<Mutex<Vec<(Instant, String)>>> {
    let mut stream = stack.follow(&format!("/api/demos/{demo_id}/logs")).await;
    assert_eq!(stream.status(), 200);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut pending = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some((line, rest)) = pending.split_once('\n') {
                if let Some(data) = line.strip_prefix("data: ") {
                    sink.lock().unwrap().push((Instant::now(), data.to_string()));
                }
                pending = rest.to_string();
            }
        }
    });
    lines
}
