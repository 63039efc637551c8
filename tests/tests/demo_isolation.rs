//! A demo is a stranger's code: with the agent host's firewall policy
//! (dist/firewall/demofleet-firewall) applied on each test host, a demo tries to open a
//! connection to everything it must not reach and writes what happened into its page:
//!
//! - the control plane as its host reaches it (RabbitMQ, its management API, Erlang
//!   distribution and epmd, NATS, PostgreSQL, the controller's port), each reachable from
//!   the host itself, so the refusal is the policy's doing;
//! - its own host's address (another demo's published port on it);
//! - another demo's network, by its container's address;
//! - another host's published demo port.
//!
//! Every one is refused or times out, while an address outside the private ranges (the
//! "internet", a dummy interface on this machine) stays reachable, and the edge still
//! reaches the demo; a repository that closes its previews' outbound traffic
//! (`closed_outbound`) finds the internet refused too. A gated demo's published port is refused from another test host (only
//! the edge may connect to it) and answers through the edge after sign-in, and Traefik's
//! provider endpoint, which lists every demo's address and port, answers only with its token.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::fleet::{Fleet, FleetHost};
use demofleet_tests::oidc;
use demofleet_tests::stack::StackOptions;

const DEADLINE: Duration = Duration::from_secs(180);
const TRAEFIK_TOKEN: &str = "traefik-provider-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_demo_reaches_neither_its_host_nor_the_control_plane_nor_other_demos() {
    let options =
        StackOptions { controller_args: vec!["--traefik-token".into(), TRAEFIK_TOKEN.into()], ..Default::default() };
    let fleet = Fleet::start(env!("CARGO_BIN_EXE_fleet-agent"), &[4, 4], options).await;
    for host in &fleet.hosts {
        // The edge (in the root namespace) reaches a host from its end of the link.
        apply_firewall(host, &host.machine.gateway);
    }
    let internet = Internet::start();
    let repo_name = format!("iso-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&fleet.stack.repos_dir(), "fixture-owner", &repo_name);
    let put = fleet.stack.put_settings(&repo.owner, &repo.repo, &json!({ "gated": true })).await;
    assert_eq!(put.status(), 200);

    // Three demos to attack, placed one after the other (most free capacity first, ties to
    // the smaller host id), then the attacker.
    let files = fixtures::static_site(&fleet.stack.services.base_image, "a victim");
    let sha = repo.commit("victim", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let mut victims = Vec::new();
    for pr in 1..=3 {
        let body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &sha, pr);
        assert_eq!(fleet.stack.deliver("pull_request", &body).await.1.status(), 202);
        let name = format!("{repo_name}-fixture-owner-pr-{pr}");
        victims.push(fleet.stack.wait_for_state(&name, "running", DEADLINE).await);
    }
    let config = traefik_provider(&fleet);
    let published = |demo: &Value| -> String {
        let url = config["http"]["services"][demo["name"].as_str().unwrap()]["loadBalancer"]["servers"][0]["url"]
            .as_str()
            .unwrap();
        url.trim_start_matches("http://").to_string()
    };
    // Where the attacker will be placed: the host with the most room (ties: smaller id).
    let free = |host: &FleetHost| 4 - victims.iter().filter(|d| d["host"] == host.host_id.as_str()).count();
    let target_host = fleet.hosts.iter().min_by_key(|h| (std::cmp::Reverse(free(h)), h.host_id.clone())).unwrap();
    let same_host: Vec<&Value> = victims.iter().filter(|d| d["host"] == target_host.host_id.as_str()).collect();
    let other_host: Vec<&Value> = victims.iter().filter(|d| d["host"] != target_host.host_id.as_str()).collect();
    assert!(!same_host.is_empty() && !other_host.is_empty(), "victims on both hosts: {victims:?}");

    // What the attacker tries, by name.
    let gateway = &target_host.machine.gateway;
    let controller_port = fleet.stack.http_addr.port();
    let mut targets: BTreeMap<String, String> = [
        ("rabbitmq", format!("{gateway}:5672")),
        ("rabbitmq-management", format!("{gateway}:15672")),
        ("rabbitmq-distribution", format!("{gateway}:25672")),
        ("epmd", format!("{gateway}:4369")),
        ("nats", format!("{gateway}:{}", fleet.nats_port())),
        ("postgresql", format!("{gateway}:5432")),
        ("controller", format!("{gateway}:{controller_port}")),
    ]
    .into_iter()
    .map(|(name, address)| (name.to_string(), address))
    .collect();
    let reachable_from_host: Vec<String> =
        targets.iter().filter(|(_, address)| host_connects(target_host, address)).map(|(n, _)| n.clone()).collect();
    // RabbitMQ (relayed from the link, as on a broker host) and NATS answer the host itself;
    // the machine's management API, Erlang distribution and epmd listen on loopback only
    // (scripts/lib.sh), and are tried in case they do not.
    for needed in ["rabbitmq", "nats"] {
        assert!(reachable_from_host.contains(&needed.to_string()), "{needed} from the host: {reachable_from_host:?}");
    }
    for (index, victim) in same_host.iter().enumerate() {
        let port = published(victim).rsplit_once(':').unwrap().1.to_string();
        targets.insert(format!("own-host-{index}"), format!("{}:{port}", target_host.address()));
        targets.insert(format!("demo-network-{index}"), format!("{}:8080", container_address(target_host, victim)));
    }
    for (index, victim) in other_host.iter().enumerate() {
        targets.insert(format!("other-host-{index}"), published(victim));
    }
    targets.insert("internet".into(), internet.address.clone());

    let files = attacker_files(&fleet.stack.services.base_image, &targets);
    let attacker = repo.commit("attacker", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let body = fixtures::numbered_pull_request("pull_request.opened.json", &repo, &attacker, 9);
    assert_eq!(fleet.stack.deliver("pull_request", &body).await.1.status(), 202);
    let name = format!("{repo_name}-fixture-owner-pr-9");
    let demo = fleet.stack.wait_for_state(&name, "running", DEADLINE).await;
    assert_eq!(demo["host"], target_host.host_id.as_str(), "placed as expected");

    // Through the edge, after sign-in (the repository is gated): the attacker's page.
    let edge_host = format!("{name}.localhost:{}", fleet.stack.edge_addr.port());
    let anonymous = fleet.stack.edge_request(&format!("{name}.localhost"), "/").await;
    assert_eq!(anonymous.status(), 302, "gated: anonymous visitors go to sign in");
    let cookie = oidc::through_gate(&fleet.stack, &edge_host, "alice@example.com").await;
    let page = oidc::client()
        .get(format!("http://{}/", fleet.stack.edge_addr))
        .header("host", &edge_host)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let results: BTreeMap<&str, &str> = page.lines().filter_map(|l| l.split_once(' ')).collect();
    println!("from inside the demo: {results:?}; from the host itself: {reachable_from_host:?}");
    for name in targets.keys() {
        let expected = if name == "internet" { "open" } else { "blocked" };
        assert_eq!(results.get(name.as_str()).copied(), Some(expected), "{name} ({}): {page}", targets[name]);
    }

    // A gated demo's published port: refused from another test host, open to the edge only.
    let victim = other_host[0];
    let address = published(victim);
    assert!(!host_connects(target_host, &address), "{address} from another test host");
    let from_edge = std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2));
    assert!(from_edge.is_ok(), "{address} from the edge's address: {from_edge:?}");
    let victim_host = format!("{}.localhost:{}", victim["name"].as_str().unwrap(), fleet.stack.edge_addr.port());
    let cookie = oidc::through_gate(&fleet.stack, &victim_host, "alice@example.com").await;
    let page = oidc::client()
        .get(format!("http://{}/", fleet.stack.edge_addr))
        .header("host", &victim_host)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("a victim"));

    // A repository whose previews may not reach the internet: the same attacker, on a
    // network the policy closes, finds the internet refused too; the edge still reaches it.
    let closed_name = format!("closed-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let closed = FixtureRepo::create(&fleet.stack.repos_dir(), "fixture-owner", &closed_name);
    let put = fleet.stack.put_settings(&closed.owner, &closed.repo, &json!({ "closed_outbound": true })).await;
    assert_eq!(put.status(), 200);
    let targets = BTreeMap::from([("internet".to_string(), internet.address.clone())]);
    let files = attacker_files(&fleet.stack.services.base_image, &targets);
    let sha = closed.commit("attacker", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    let body = fixtures::numbered_pull_request("pull_request.opened.json", &closed, &sha, 1);
    assert_eq!(fleet.stack.deliver("pull_request", &body).await.1.status(), 202);
    let name = format!("{closed_name}-fixture-owner-pr-1");
    fleet.stack.wait_for_state(&name, "running", DEADLINE).await;
    let page = fleet.stack.edge_request(&format!("{name}.localhost"), "/").await;
    assert_eq!(page.status(), 200, "the edge reaches a closed demo");
    let page = page.text().await.unwrap();
    assert!(page.lines().any(|l| l == "internet blocked"), "closed outbound: {page}");
    fleet.stop().await;
}

/// Traefik's dynamic configuration (every demo's host address and port) as Traefik reads
/// it, with the token (as a bearer token or in the endpoint's query); without it, or with
/// a wrong one, the controller refuses, even on loopback. (The controller listens on
/// loopback here; that a client elsewhere is refused when no token is set is the unit test
/// `traefik::tests::only_traefik_reads_the_configuration`.)
fn traefik_provider(fleet: &Fleet) -> Value {
    let fetch = |query: &str, header: Option<&str>| {
        let url = format!("http://{}/traefik/dynamic{query}", fleet.stack.http_addr);
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        if let Some(header) = header {
            curl.args(["-H", header]);
        }
        let out = curl.arg(&url).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", ""));
        (status.to_string(), body.to_string())
    };
    for (query, header, expected) in
        [("", None, "401"), ("?token=guess", None, "403"), ("", Some("Authorization: Bearer guess"), "403")]
    {
        let (status, body) = fetch(query, header);
        assert_eq!(status, expected, "{query} {header:?}: {body}");
        assert!(body.contains("DEMOFLEET_TRAEFIK_TOKEN") && !body.contains("loadBalancer"), "{body}");
    }
    let (status, by_header) = fetch("", Some(&format!("Authorization: Bearer {TRAEFIK_TOKEN}")));
    assert_eq!(status, "200", "{by_header}");
    let (status, by_query) = fetch(&format!("?token={TRAEFIK_TOKEN}"), None);
    assert_eq!(status, "200", "{by_query}");
    let config: Value = serde_json::from_str(&by_query).unwrap();
    assert_eq!(config, serde_json::from_str::<Value>(&by_header).unwrap());
    config
}

/// Apply the agent host's firewall policy inside `host`'s namespace, the edge at `edge`.
fn apply_firewall(host: &FleetHost, edge: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/firewall/demofleet-firewall");
    let out = host.machine.command_inside(script).arg("apply").env("DEMOFLEET_FIREWALL_EDGE", edge).output().unwrap();
    assert!(out.status.success(), "demofleet-firewall apply: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether a TCP connection to `address` opens from `host`'s namespace (not from a demo).
fn host_connects(host: &FleetHost, address: &str) -> bool {
    let (ip, port) = address.rsplit_once(':').unwrap();
    host.machine
        .command_inside("busybox")
        .args(["nc", "-w", "2", ip, port])
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The address of `demo`'s container on its network, from its host's engine.
fn container_address(host: &FleetHost, demo: &Value) -> String {
    let engine = host.machine.engine();
    let filter = format!("label=run.demo.id={}", demo["id"].as_str().unwrap());
    let id = engine.docker(&["ps", "-q", "--filter", &filter]).unwrap();
    let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
    engine.docker(&["inspect", "--format", format, id.trim()]).unwrap().trim().to_string()
}

/// A demo that, when it starts, tries each of `targets` (name → address:port) and writes
/// `name open` or `name blocked` per line into its page, then serves it.
fn attacker_files(base_image: &str, targets: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let list: String = targets.iter().map(|(name, address)| format!("{name}={address} ")).collect();
    let script = format!(
        "#!/bin/sh\n\
         for target in {list}; do\n\
           name=${{target%%=*}}; address=${{target#*=}}\n\
           if nc -w 3 ${{address%:*}} ${{address##*:}} </dev/null >/dev/null 2>&1; then\n\
             echo \"$name open\" >>/www/index.html\n\
           else\n\
             echo \"$name blocked\" >>/www/index.html\n\
           fi\n\
         done\n\
         exec httpd -f -p 8080 -h /www\n"
    );
    // The page is written at start by whatever user the agent runs the demo as (nobody).
    let dockerfile = format!(
        "FROM {base_image}\nCOPY probe.sh /probe.sh\nRUN mkdir -p /www && chmod 777 /www\nEXPOSE 8080\n\
         CMD [\"/bin/sh\", \"/probe.sh\"]\n"
    );
    vec![("Dockerfile", dockerfile), ("probe.sh", script)]
}

/// An address outside every private range, on this machine's loopback interface, with a
/// listener: what the internet is to a demo here (the hosts' default route leads to it).
struct Internet {
    address: String,
    ip: String,
}

impl Internet {
    fn start() -> Internet {
        // 198.51.100.0/24: TEST-NET-2, documentation only, never routed anywhere.
        let ip = format!("198.51.100.{}", 1 + Uuid::new_v4().as_u128() % 254);
        run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        let listener = TcpListener::bind((ip.as_str(), 0)).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        Internet { address, ip }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["addr", "del", &format!("{}/32", self.ip), "dev", "lo"]).output();
    }
}

fn run(args: &[&str]) {
    let out = command::output(Command::new(args[0]).args(&args[1..]), command::QUICK).unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
