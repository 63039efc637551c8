//! The fleet under fire: four agent hosts with addresses of their own (tests/src/fleet.rs).
//! One scenario after another on the same fleet, each checking that every demo ends up
//! running exactly once, on a live host, answering on its hostname through the edge:
//!
//! 1. 30 demos spread over the hosts by their capacity;
//! 2. a host drains: its demos move to the others, answering all along; it is emptied;
//! 3. a host is killed (its agent, Docker Engine and containers at once, as a machine that
//!    loses power): it goes silent, its demos are launched again elsewhere; when it comes back,
//!    its engine starts the old containers again (their restart policy), and they are removed;
//! 4. a host's link is cut, then healed: its demos run on, unreachable, and are launched again
//!    elsewhere; once healed, its leftover containers are removed.
//!
//! Every host is a machine of its own with its own Docker Engine (tests/src/host.rs).
//!
//! The time each took to converge is printed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::fleet::{demo_containers, Fleet, FleetHost};
use demofleet_tests::stack::StackOptions;
use demofleet_tests::wait;

const DEMOS: u64 = 30;
/// Most free capacity first: 30 demos leave each host with 4 free.
const CAPACITIES: [u32; 4] = [14, 12, 10, 10];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demos_survive_drains_dead_agents_and_cut_links() {
    let options =
        StackOptions { controller_args: ["--reconcile-grace", "2s"].map(String::from).to_vec(), ..Default::default() };
    let mut fleet = Fleet::start(env!("CARGO_BIN_EXE_fleet-agent"), &CAPACITIES, options).await;
    let repo_name = format!("fleet-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&fleet.stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&fleet.stack.services.base_image, "fleet demo");
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = repo.commit("a demo", &files);

    // 1. 30 demos, placed by capacity.
    let started = Instant::now();
    for pr in 1..=DEMOS {
        let body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &sha, pr);
        let (_, response) = fleet.stack.deliver("pull_request", &body).await;
        assert_eq!(response.status(), 202);
    }
    let demos = converged(&fleet, "30 demos placed", &[]).await;
    println!("scenario 1: {DEMOS} demos running and answering after {:.1?}", started.elapsed());
    let per_host = count_per_host(&demos);
    for (host, capacity) in fleet.hosts.iter().zip(CAPACITIES) {
        assert_eq!(per_host.get(host.host_id.as_str()), Some(&(capacity as usize - 4)), "{per_host:?}");
    }
    routes_use_host_addresses(&fleet).await;

    // 2. Drain the fullest host: its demos move, none dropped, and they answer all along
    // (each keeps its old container until the new one does); then it takes demos again.
    let drained = fleet.hosts[0].host_id.clone();
    // Times each demo was moved off its host (by id), for its story at the end.
    let mut moves: HashMap<String, i64> = HashMap::new();
    count_moves(&mut moves, &demos, &drained);
    let moving: Vec<String> = demos
        .iter()
        .filter(|d| d["host"] == drained.as_str())
        .map(|d| format!("{}.localhost", d["name"].as_str().unwrap()))
        .collect();
    let started = Instant::now();
    let probing = AtomicBool::new(true);
    let probe = async {
        let (mut requests, mut failed) = (0, Vec::new());
        while probing.load(Ordering::Relaxed) {
            for hostname in &moving {
                let (status, body) = fleet.stack.edge_get(hostname, "/").await;
                requests += 1;
                if status != 200 || !body.contains("fleet demo") {
                    failed.push(format!("{hostname}: {status} {body}"));
                }
            }
        }
        (requests, failed)
    };
    let drain = async {
        let response = fleet.stack.post(&format!("/api/hosts/{drained}/drain")).await;
        assert_eq!(response.status(), 200);
        let demos = converged(&fleet, "the drained host emptied", &[&drained]).await;
        no_containers_left_on(&fleet.hosts[0]).await;
        probing.store(false, Ordering::Relaxed);
        demos
    };
    let ((requests, failed), demos) = tokio::join!(probe, drain);
    println!(
        "scenario 2: {} demos moved off a draining host in {:.1?}; {requests} requests to them meanwhile, {} failed",
        moving.len(),
        started.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed while the demos moved: {failed:#?}");
    assert_eq!(demos.len() as u64, DEMOS);
    let response = fleet.stack.post(&format!("/api/hosts/{drained}/undrain")).await;
    assert_eq!(response.status(), 200);

    // 3. Kill a host: agent, engine and containers die at once; its demos are launched
    // elsewhere. When it comes back, its engine starts the old containers again (restart
    // policy `unless-stopped`, as after a reboot), and they are removed.
    let victim = fleet.hosts[1].host_id.clone();
    let moving = count_per_host(&demos)[victim.as_str()];
    count_moves(&mut moves, &demos, &victim);
    let addresses = published_addresses(&fleet, &fleet.hosts[1]).await;
    assert_eq!(addresses.len(), moving, "a published address per demo of {victim}");
    let started = Instant::now();
    fleet.hosts[1].kill_host();
    for address in &addresses {
        assert!(!answers(address).await, "{address} answers after its host was killed");
    }
    converged(&fleet, "the killed host's demos placed elsewhere", &[&victim]).await;
    println!("scenario 3: {moving} demos of a killed host answering elsewhere after {:.1?}", started.elapsed());
    fleet.hosts[1].restart_host();
    let leftovers = fleet.hosts[1].containers();
    assert_eq!(leftovers.len(), moving, "the restarted engine's containers: {leftovers:?}");
    let started = Instant::now();
    no_containers_left_on(&fleet.hosts[1]).await;
    println!("scenario 3: the restarted host's {moving} leftovers removed after {:.1?}", started.elapsed());

    // 4. Cut a host's link, then heal it.
    let cut = fleet.hosts[2].host_id.clone();
    let demos = converged(&fleet, "before the cut", &[]).await;
    let moving = count_per_host(&demos).get(cut.as_str()).copied().unwrap_or_default();
    count_moves(&mut moves, &demos, &cut);
    assert!(moving > 0, "the host to cut runs demos: {demos:?}");
    let addresses = published_addresses(&fleet, &fleet.hosts[2]).await;
    let started = Instant::now();
    fleet.hosts[2].set_link(false);
    converged(&fleet, "the cut-off host's demos placed elsewhere", &[&cut]).await;
    println!("scenario 4: {moving} demos of a cut-off host answering elsewhere after {:.1?}", started.elapsed());
    // Cut off, its demos run on, out of reach.
    let running = fleet.hosts[2].containers().iter().filter(|c| c.running).count();
    assert_eq!(running, moving, "the cut-off host's containers");
    for address in &addresses {
        assert!(!answers(address).await, "{address} answers across a cut link");
    }
    fleet.hosts[2].set_link(true);
    let started = Instant::now();
    no_containers_left_on(&fleet.hosts[2]).await;
    println!("scenario 4: the healed host's {moving} leftovers removed after {:.1?}", started.elapsed());
    let demos = converged(&fleet, "after healing", &[]).await;
    assert_eq!(demos.len() as u64, DEMOS);

    // Nothing was lost: every delivery recorded its outcome, and each demo's story is one
    // start per delivery plus one per move.
    let unrecorded: i64 = sqlx::query_scalar("select count(*) from webhook_deliveries where outcome is null")
        .fetch_one(&fleet.stack.db)
        .await
        .unwrap();
    assert_eq!(unrecorded, 0);
    let deliveries: i64 =
        sqlx::query_scalar("select count(*) from webhook_deliveries").fetch_one(&fleet.stack.db).await.unwrap();
    assert_eq!(deliveries, DEMOS as i64, "one delivery per pull request");
    let starts: Vec<(Uuid, i64)> =
        sqlx::query_as("select demo_id, count(*) from chains where kind = 'deploy' group by 1")
            .fetch_all(&fleet.stack.db)
            .await
            .unwrap();
    assert_eq!(starts.len() as u64, DEMOS, "{starts:?}");
    let wrong: Vec<String> = starts
        .iter()
        .filter_map(|(id, n)| {
            let expected = 1 + moves.get(&id.to_string()).copied().unwrap_or_default();
            (*n != expected).then(|| format!("{id}: {n} deploy chains, {expected} expected"))
        })
        .collect();
    assert!(wrong.is_empty(), "demos started other than once per delivery and once per move: {wrong:#?}");
    fleet.stop().await;
}

/// Wait (60 s at most) until all 30 demos run, each on a live host not in `avoid`, each
/// with exactly one running container (on its host) and no other container anywhere, and
/// each answering on its hostname through the edge. Returns the demos.
async fn converged(fleet: &Fleet, what: &str, avoid: &[&str]) -> Vec<Value> {
    let hosts: Vec<&FleetHost> = fleet.hosts.iter().collect();
    let deadline = Duration::from_secs(if avoid.is_empty() { 240 } else { 60 });
    let found = tokio::time::timeout(
        deadline,
        wait::until(what, deadline, || async {
            let demos = fleet.stack.get_json("/api/demos").await;
            let demos = demos.as_array()?.clone();
            if demos.len() as u64 != DEMOS {
                return None;
            }
            for demo in &demos {
                let host = demo["host"].as_str()?;
                if demo["state"] != "running" || avoid.contains(&host) {
                    return None;
                }
            }
            let containers = demo_containers(&hosts);
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (id, host, _) in &containers {
                if avoid.contains(&host.as_str()) {
                    continue; // A cut-off or dead host is cleaned up when it returns.
                }
                *seen.entry(id.as_str()).or_default() += 1;
            }
            for demo in &demos {
                let id = demo["id"].as_str()?;
                let host = demo["host"].as_str()?;
                let ok = seen.get(id) == Some(&1)
                    && containers.iter().any(|(i, h, running)| i == id && h == host && *running);
                if !ok {
                    return None;
                }
            }
            for demo in &demos {
                let hostname = format!("{}.localhost", demo["name"].as_str()?);
                let (status, body) = fleet.stack.edge_get(&hostname, "/").await;
                if status != 200 || !body.contains("fleet demo") {
                    return None;
                }
            }
            Some(demos)
        }),
    )
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not converged in {deadline:?}\n{}", fleet.logs()))
}

/// Wait until `host`'s engine has no demo container left.
async fn no_containers_left_on(host: &FleetHost) {
    wait::until_seen(&format!("{} without containers", host.host_id), Duration::from_secs(60), || async {
        let left = host.containers();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

/// Where the edge reaches `host`'s demos (`address:port`), from Traefik's configuration.
async fn published_addresses(fleet: &Fleet, host: &FleetHost) -> Vec<String> {
    let config = fleet.stack.get_json("/traefik/dynamic").await;
    let services = config["http"]["services"].as_object().expect("services");
    let prefix = format!("http://{}:", host.address());
    services
        .values()
        .filter_map(|s| s["loadBalancer"]["servers"][0]["url"].as_str()?.strip_prefix("http://").map(String::from))
        .filter(|a| format!("http://{a}").starts_with(&prefix))
        .collect()
}

/// Whether something answers HTTP at `address` within two seconds.
async fn answers(address: &str) -> bool {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    client.get(format!("http://{address}/")).send().await.is_ok()
}

/// Count a move for each of `demos` on `host`.
fn count_moves(moves: &mut HashMap<String, i64>, demos: &[Value], host: &str) {
    for demo in demos.iter().filter(|d| d["host"] == host) {
        *moves.entry(demo["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
}

fn count_per_host(demos: &[Value]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for demo in demos {
        *counts.entry(demo["host"].as_str().unwrap()).or_default() += 1;
    }
    counts
}

/// Traefik's services point at the hosts' own addresses, never at loopback.
async fn routes_use_host_addresses(fleet: &Fleet) {
    let config = fleet.stack.get_json("/traefik/dynamic").await;
    let services = config["http"]["services"].as_object().expect("services");
    assert_eq!(services.len() as u64, DEMOS, "{config}");
    for service in services.values() {
        let url = service["loadBalancer"]["servers"][0]["url"].as_str().unwrap();
        let ok = fleet.hosts.iter().any(|h| url.starts_with(&format!("http://{}:", h.address())));
        assert!(ok, "{url} is not on a host's address");
    }
}
