//! A fleet of agent hosts, each with an address of its own, on this one machine.
//!
//! Each host is a network namespace joined to the root namespace by a veth pair: the agent
//! (a process of its own, `fleet-agent`) runs inside it with the host's address
//! (`10.231.x.2`), its own demo folder, its own RabbitMQ user (allowed its own queue only)
//! and its own subnet pool for demo networks. Docker's daemon is the machine's one, in the
//! root namespace, so the agent has it publish demo ports on the root end of its link
//! (`10.231.x.1`); inside the namespace, NAT forwards the host address's ephemeral ports
//! there. So the edge, Traefik and the agent's own health check reach a demo at
//! `host address:port` through the host's link: cut the link and its demos, heartbeats and
//! tasks are cut off with it; kill the agent and its containers stay, as on a real host.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::services::PrivateNats;
use crate::stack::{remove_host_leftovers, Stack, StackOptions};
use crate::wait;

/// One simulated machine: its namespace, link, addresses and agent.
pub struct FleetHost {
    pub host_id: String,
    /// The host's own address, where its demos answer.
    pub address: String,
    /// The root namespace's end of the link, where Docker publishes this host's demos.
    pub gateway: String,
    pub demo_dir: PathBuf,
    netns: String,
    link: String,
    /// The `fleet-agent` program.
    binary: String,
    args: Vec<String>,
    log: PathBuf,
    agent: Option<Child>,
}

impl FleetHost {
    /// Kill the agent with SIGKILL; its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the agent (again) in the host's namespace.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent of {} runs", self.host_id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, &self.binary])
            .args(&self.args)
            .env("DEMOFLEET_LOG", "info,demofleet_agent=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("ip netns exec fleet-agent");
        self.agent = Some(child);
    }

    /// Take the host's link down (`false`) or up again.
    pub fn set_link(&self, up: bool) {
        run("ip", &["link", "set", &self.link, if up { "up" } else { "down" }]);
    }

    /// The agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
        remove_host_leftovers(&self.host_id);
    }
}

/// A controller (in-process, on its stack) and agent hosts with addresses of their own.
pub struct Fleet {
    pub stack: Stack,
    pub hosts: Vec<FleetHost>,
    /// A NATS server listening on the hosts' links too.
    _nats: PrivateNats,
}

impl Fleet {
    /// Start a stack without agents and one host per entry of `capacities`, each taking
    /// that many demos, its agent `agent_binary` (a test's `CARGO_BIN_EXE_fleet-agent`);
    /// wait until every host has been heard from.
    pub async fn start(agent_binary: &str, capacities: &[u32], mut options: StackOptions) -> Fleet {
        let nats = PrivateNats::start_on("0.0.0.0");
        options.agents = 0;
        options.nats_url = Some(nats.url());
        let stack = Stack::start(options).await;
        let mut hosts = Vec::new();
        for (index, capacity) in capacities.iter().enumerate() {
            let mut host = create_host(&stack, &nats, index, *capacity).await;
            host.binary = agent_binary.to_string();
            host.start_agent();
            hosts.push(host);
        }
        let fleet = Fleet { stack, hosts, _nats: nats };
        for host in &fleet.hosts {
            let id = host.host_id.clone();
            wait::until(&format!("host {id} heard from"), Duration::from_secs(30), || async {
                let hosts = fleet.stack.get_json("/api/hosts").await;
                hosts.as_array()?.iter().any(|h| h["id"] == id.as_str() && h["alive"] == true).then_some(())
            })
            .await;
        }
        fleet
    }

    pub fn host(&self, id: &str) -> &FleetHost {
        self.hosts.iter().find(|h| h.host_id == id).unwrap_or_else(|| panic!("no host {id}"))
    }

    /// Every agent's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.hosts.iter().map(|h| format!("--- {} ---\n{}", h.host_id, h.log())).collect()
    }

    /// Stop the agents, remove the hosts, then stop the stack.
    pub async fn stop(mut self) {
        self.hosts.clear();
        self.stack.stop().await;
    }
}

/// Make host `index` of the stack: namespace, link, NAT, broker user and demo folder.
async fn create_host(stack: &Stack, nats: &PrivateNats, index: usize, capacity: u32) -> FleetHost {
    let tag = &Uuid::new_v4().simple().to_string()[..10];
    let host_id = format!("host-{tag}");
    let netns = format!("dfh{}", &tag[..8]);
    let link = format!("dfr{}", &tag[..8]);
    let inner = format!("dfn{}", &tag[..8]);
    let (gateway, address) = free_link_addresses();
    run("ip", &["netns", "add", &netns]);
    run("ip", &["link", "add", &link, "type", "veth", "peer", "name", &inner]);
    run("ip", &["link", "set", &inner, "netns", &netns]);
    run("ip", &["addr", "add", &format!("{gateway}/30"), "dev", &link]);
    run("ip", &["link", "set", &link, "up"]);
    let inside = |args: &[&str]| {
        let mut all = vec!["netns", "exec", &netns];
        all.extend_from_slice(args);
        run("ip", &all);
    };
    inside(&["ip", "addr", "add", &format!("{address}/30"), "dev", &inner]);
    inside(&["ip", "link", "set", &inner, "up"]);
    inside(&["ip", "link", "set", "lo", "up"]);
    inside(&["ip", "route", "add", "default", "via", &gateway]);
    inside(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Docker publishes on ephemeral ports (32768 and up); the agent's own connections go out.
    for chain in ["PREROUTING", "OUTPUT"] {
        inside(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            chain,
            "-d",
            &address,
            "-p",
            "tcp",
            "--dport",
            "32768:65535",
            "-j",
            "DNAT",
            "--to-destination",
            &gateway,
        ]);
    }
    inside(&["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &inner, "-j", "MASQUERADE"]);

    let (user, password) = stack.vhost.create_agent_user(&host_id).await;
    let amqp_url = format!("amqp://{user}:{password}@{gateway}:5672/{}", stack.vhost.name);
    let nats_url = format!("nats://{gateway}:{}", nats.port);
    let demo_dir = stack.scratch.path().join("demos").join(&host_id);
    std::fs::create_dir_all(&demo_dir).unwrap();
    let log = stack.scratch.path().join(format!("{host_id}.log"));
    let args: Vec<String> = [
        ("--host-id", host_id.clone()),
        ("--amqp-url", amqp_url),
        ("--nats-url", nats_url),
        ("--nats-prefix", stack.nats_prefix.clone()),
        ("--demo-dir", demo_dir.to_str().unwrap().to_string()),
        ("--host-address", address.clone()),
        ("--publish-address", gateway.clone()),
        ("--capacity", capacity.to_string()),
        ("--heartbeat-interval", "500ms".into()),
        // Docker's default pools hold about 30 networks in all; each host gets a /16 of its own.
        ("--demo-subnets", format!("10.{}.0.0/16", 232 + index)),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    FleetHost { host_id, address, gateway, demo_dir, netns, link, binary: String::new(), args, log, agent: None }
}

/// A /30 of 10.231.0.0/16 that no interface here uses: (root end, host end).
fn free_link_addresses() -> (String, String) {
    let used = String::from_utf8(Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout)
        .unwrap_or_default();
    loop {
        let n = Uuid::new_v4().as_u128();
        let (third, fourth) = ((n % 256) as u8, ((n >> 8) % 64) as u8 * 4);
        let gateway = format!("10.231.{third}.{}", fourth + 1);
        if !used.contains(&format!("inet {gateway}/")) {
            return (gateway, format!("10.231.{third}.{}", fourth + 2));
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every demo container on this machine of the given hosts: (demo id, host id, running).
pub fn demo_containers(host_ids: &[&str]) -> Vec<(String, String, bool)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=run.demo",
            "--format",
            "{{.Label \"run.demo.id\"}} {{.Label \"run.demo.host\"}} {{.State}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (id, host, state) = (parts.next()?, parts.next()?, parts.next()?);
            host_ids.contains(&host).then(|| (id.to_string(), host.to_string(), state == "running"))
        })
        .collect()
}
