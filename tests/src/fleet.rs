//! A fleet of agent hosts, each a machine of its own on this one (tests/src/host.rs): a
//! network namespace with its own address (`10.231.x.2`), its own Docker Engine, and its agent
//! (a process of its own, `fleet-agent`) inside it, with its own demo folder, its own RabbitMQ
//! user (allowed its own queue only) and its own subnet pool for demo networks. The edge,
//! Traefik and the agent's own health check reach a demo at `host address:port`, through the
//! host's link: cut the link and its demos, heartbeats and tasks are cut off with it; kill the
//! agent and its containers stay; kill the host and its engine and demos die with it.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::host::{DemoContainer, Engine, TestHost};
use crate::services::PrivateNats;
use crate::stack::{Stack, StackOptions};
use crate::wait;

/// One simulated machine: its namespace, link, addresses, engine and agent.
pub struct FleetHost {
    pub host_id: String,
    pub machine: TestHost,
    pub demo_dir: PathBuf,
    /// The `fleet-agent` program.
    binary: String,
    args: Vec<String>,
    log: PathBuf,
    agent: Option<Child>,
}

impl FleetHost {
    /// The host's own address, where its demos answer.
    pub fn address(&self) -> &str {
        &self.machine.address
    }

    /// Kill the agent with SIGKILL; its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the whole machine: the agent, the engine and every container, at once.
    pub fn kill_host(&mut self) {
        self.kill_agent();
        self.machine.kill_engine();
    }

    /// Start the machine again after [`FleetHost::kill_host`]: its engine, then its agent.
    pub fn restart_host(&mut self) {
        self.machine.start_engine();
        self.start_agent();
    }

    /// Start the agent (again) in the host's namespace.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent of {} runs", self.host_id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = self
            .machine
            .command_inside(&self.binary)
            .args(&self.args)
            .env("DEMOFLEET_LOG", "info,demofleet_agent=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nsenter fleet-agent");
        self.agent = Some(child);
    }

    /// Take the host's link down (`false`) or up again.
    pub fn set_link(&self, up: bool) {
        self.machine.set_link(up);
    }

    /// The demo containers on this host's engine (none while it is down).
    pub fn containers(&self) -> Vec<DemoContainer> {
        self.machine.engine().demo_containers(&[])
    }

    /// The agent's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// A controller (in-process, on its stack) and agent hosts with addresses of their own.
pub struct Fleet {
    pub stack: Stack,
    pub hosts: Vec<FleetHost>,
    /// A NATS server listening on the hosts' links too.
    nats: PrivateNats,
}

impl Fleet {
    /// Start a stack without agents and one host per entry of `capacities`, each taking
    /// that many demos, its agent `agent_binary` (a test's `CARGO_BIN_EXE_fleet-agent`);
    /// wait until every host has been heard from.
    pub async fn start(agent_binary: &str, capacities: &[u32], mut options: StackOptions) -> Fleet {
        let nats = PrivateNats::start_on("0.0.0.0");
        options.agents = 0;
        options.nats_url = Some(nats.url());
        let mut stack = Stack::start(options).await;
        let mut hosts = Vec::new();
        for (index, capacity) in capacities.iter().enumerate() {
            let mut host = create_host(&stack, &nats, index, *capacity).await;
            host.binary = agent_binary.to_string();
            host.start_agent();
            stack.engines.push(host.machine.engine());
            hosts.push(host);
        }
        let fleet = Fleet { stack, hosts, nats };
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

    /// The port of the fleet's NATS server, on every host's link.
    pub fn nats_port(&self) -> u16 {
        self.nats.port
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

/// Make host `index` of the stack: a machine with its engine, a broker user and a demo folder.
async fn create_host(stack: &Stack, nats: &PrivateNats, index: usize, capacity: u32) -> FleetHost {
    let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let machine = TestHost::spawn(&stack.services.base_image).await;
    let gateway = &machine.gateway;
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
        ("--git-local-root", stack.repos_dir().to_str().unwrap().to_string()),
        ("--docker-host", machine.engine().agent_flag().expect("the host's own engine")),
        ("--host-address", machine.address.clone()),
        ("--capacity", capacity.to_string()),
        ("--heartbeat-interval", "500ms".into()),
        ("--demo-subnets", format!("10.{}.0.0/16", 232 + index)),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value])
    .collect();
    FleetHost { host_id, machine, demo_dir, binary: String::new(), args, log, agent: None }
}

/// Every demo container of `hosts`, on their own engines: (demo id, host id, running).
pub fn demo_containers(hosts: &[&FleetHost]) -> Vec<(String, String, bool)> {
    let engines: Vec<Engine> = hosts.iter().map(|h| h.machine.engine()).collect();
    engines.iter().flat_map(|e| e.demo_containers(&[])).map(|c| (c.demo_id, c.host_id, c.running)).collect()
}
