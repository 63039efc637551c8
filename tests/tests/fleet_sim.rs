//! The scale benchmark's simulated agents (`fleet-sim`, `scripts/bench` part `scale`) against
//! a real controller, small: five simulated hosts take 30 demos through their whole deploy
//! chains, spread evenly by placement, heartbeat their inventories (so reconcile finds
//! nothing to do), stop demos when pull requests close, and the hosts' numbers of demos that
//! placement reads stay equal to a count. The benchmark's numbers mean something only while
//! this holds.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use uuid::Uuid;

const HOSTS: u32 = 5;
const CAPACITY: u32 = 8;
const DEMOS: u64 = 30;

/// The simulator's process, killed when dropped.
struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Running demos per host, from the API.
async fn running_per_host(stack: &Stack) -> BTreeMap<String, u32> {
    let demos = stack.get_json("/api/demos").await;
    let mut per_host = BTreeMap::new();
    for demo in demos.as_array().expect("a list of demos") {
        if demo["state"] == "running" {
            *per_host.entry(demo["host"].as_str().expect("a running demo has a host").to_string()).or_insert(0) += 1;
        }
    }
    per_host
}

/// The value of an unlabelled series in `/metrics`.
async fn metric(stack: &Stack, name: &str) -> f64 {
    let text = stack.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_take_demos_through_their_chains_and_report_them() {
    // A short reconcile grace, so that an inventory differing from the record would be acted
    // on (a demo relaunched) well within the wait below.
    let options = StackOptions {
        agents: 0,
        controller_args: ["--reconcile-grace", "1s"].map(String::from).to_vec(),
        ..Default::default()
    };
    let stack = Stack::start(options).await;
    let prefix = format!("sim{}", &Uuid::new_v4().simple().to_string()[..6]);
    // Enrolled as real hosts are, under the ids the simulator gives them.
    for index in 1..=HOSTS {
        stack.enrol(&format!("{prefix}-{index:03}")).await;
    }
    let simulator = Simulator(
        Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
            .args(["--agents", &HOSTS.to_string(), "--capacity", &CAPACITY.to_string()])
            .args(["--heartbeat-interval", "500ms", "--host-prefix", &prefix])
            .args(["--amqp-url", &stack.vhost.amqp_url, "--nats-url", &stack.services.nats_url])
            .args(["--nats-prefix", &stack.nats_prefix])
            .env("DEMOFLEET_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("fleet-sim starts"),
    );
    wait::until("the simulated hosts alive in /api/hosts", Duration::from_secs(30), || async {
        let hosts = stack.get_json("/api/hosts").await;
        let alive = hosts
            .as_array()?
            .iter()
            .filter(|h| h["alive"] == true && h["id"].as_str().is_some_and(|id| id.starts_with(&prefix)));
        (alive.count() == HOSTS as usize).then_some(())
    })
    .await;

    let repo_name = format!("sim-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "never built: the hosts are simulated");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("a demo", &files);
    let began = Instant::now();
    for pr in 1..=DEMOS {
        let payload = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &sha, pr);
        let (_, response) = stack.deliver("pull_request", &payload).await;
        assert_eq!(response.status(), 202, "PR {pr}");
    }
    wait::until("every demo running on a simulated host", Duration::from_secs(90), || async {
        (running_per_host(&stack).await.values().sum::<u32>() == DEMOS as u32).then_some(())
    })
    .await;
    println!("{DEMOS} demos running on {HOSTS} simulated hosts after {:.1?}", began.elapsed());

    // Equal capacities, most free first: an even spread, each within its capacity.
    let per_host = running_per_host(&stack).await;
    assert_eq!(per_host.len(), HOSTS as usize, "{per_host:?}");
    assert!(per_host.values().all(|n| *n == DEMOS as u32 / HOSTS), "{per_host:?}");
    assert!(per_host.keys().all(|host| host.starts_with(&prefix)), "{per_host:?}");
    // The controller timed each first placement, and heartbeats reached it.
    assert!(metric(&stack, "demofleet_placement_seconds_count").await >= DEMOS as f64);
    assert!(metric(&stack, "demofleet_heartbeat_seconds_count").await >= f64::from(HOSTS));

    // The simulated inventories match the record: after several reconcile graces (1 s, checked
    // every 500 ms tick), nothing was relaunched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let relaunched: i64 =
        sqlx::query_scalar("select count(*) from chains where kind = 'deploy'").fetch_one(&stack.db).await.unwrap();
    assert_eq!(relaunched, DEMOS as i64, "one deploy chain per demo: reconcile found nothing missing");

    for pr in 1..=5u64 {
        let payload = fixtures::numbered_pull_request("pull_request.closed.json", &repo, &sha, pr);
        let (_, response) = stack.deliver("pull_request", &payload).await;
        assert_eq!(response.status(), 202, "closing PR {pr}");
    }
    wait::until("five demos stopped", Duration::from_secs(60), || async {
        let stopped: i64 =
            sqlx::query_scalar("select count(*) from demos where state = 'stopped'").fetch_one(&stack.db).await.ok()?;
        (stopped == 5).then_some(())
    })
    .await;
    assert_eq!(running_per_host(&stack).await.values().sum::<u32>(), DEMOS as u32 - 5);

    // What placement reads (migration 10: kept numbers plus changes not yet folded) equals a count.
    let differing: i64 = sqlx::query_scalar(
        "select count(*) from
             (select host_id, count(*) n from demos where desired = 'running' and host_id is not null group by 1) c
         full join
             (select host_id, sum(demos) n from (select host_id, demos from host_load
                                                 union all select host_id, delta from host_load_changes) l
              group by 1) k
         using (host_id) where coalesce(c.n, 0) <> coalesce(k.n, 0)",
    )
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!(differing, 0, "hosts whose kept number of demos differs from a count");
    drop(simulator);
    stack.stop().await;
}
