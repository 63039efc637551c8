//! A fleet of agent hosts, each a machine of its own on this one (tests/src/host.rs): a
//! network namespace with its own address (`10.231.x.2`), its own Docker Engine, and its agent
//! (a process of its own, `fleet-agent`) inside it, with its own demo folder, its own RabbitMQ
//! user (allowed its own queue only) and its own subnet pool for demo networks. The edge,
//! Traefik and the agent's own health check reach a demo at `host address:port`, through the
//! host's link: cut the link and its demos, heartbeats and tasks are cut off with it; kill the
//! agent and its containers stay; kill the host and its engine and demos die with it.
//! The agents reach the brokers in plain text over their links ([`Fleet::start`]), or over TLS
//! to brokers of the fleet's own ([`Fleet::start_tls`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::cluster::{RabbitCluster, RabbitOptions, RabbitTls};
use crate::host::{DemoContainer, Engine, TestHost};
use crate::pki::{CertFiles, TestPki, Usage};
use crate::relay::Relay;
use crate::services::{NatsTls, PrivateNats};
use crate::stack::{authorized_nats, Stack, StackOptions};
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

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
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

/// Where a fleet's agents find the brokers, from their side of their host's link.
pub enum Brokers {
    /// The machine's RabbitMQ (relayed from each host's gateway) and the fleet's NATS server
    /// (listening on the hosts' links too), in plain text: the links are this machine's.
    Plain(PrivateNats),
    /// A RabbitMQ node and a NATS server of the fleet's own that speak TLS only.
    Tls(Box<TlsBrokers>),
}

/// Brokers over TLS: a RabbitMQ node and a NATS server listening on the hosts' gateways too,
/// with a certificate for those addresses from the fleet's own CA, taking only clients with a
/// certificate of that CA (the controller's and each agent's own).
pub struct TlsBrokers {
    pub rabbit: RabbitCluster,
    pub nats: PrivateNats,
    pub pki: TestPki,
    /// The brokers' certificate and key (both brokers read the same files).
    pub server: CertFiles,
    /// The controller's NATS user and password.
    pub nats_user: (String, String),
}

impl Brokers {
    pub fn nats(&self) -> &PrivateNats {
        match self {
            Brokers::Plain(nats) => nats,
            Brokers::Tls(tls) => &tls.nats,
        }
    }

    /// Host `host_id`'s broker flags: its URLs at `gateway`, as the broker user and NATS user
    /// its enrolment gave it, and how they are reached.
    fn agent_flags(&self, vhost: &str, host_id: &str, settings: &serde_json::Value, gateway: &str) -> Vec<String> {
        let (user, password) = crate::stack::broker_credentials(settings);
        let (nats_user, nats_password) = crate::stack::nats_credentials(settings);
        let nats_url = self.nats().url_as(gateway, &nats_user, &nats_password);
        let flags = match self {
            Brokers::Plain(_) => vec![
                ("--amqp-url", format!("amqp://{user}:{password}@{gateway}:5672/{vhost}")),
                ("--nats-url", nats_url),
            ],
            Brokers::Tls(tls) => {
                let port = tls.rabbit.nodes[0].amqp_port;
                let mut flags = vec![
                    ("--amqp-url", format!("amqps://{user}:{password}@{gateway}:{port}/{vhost}")),
                    ("--nats-url", nats_url),
                ];
                flags.extend(tls_flags(&tls.pki, host_id));
                flags
            }
        };
        let mut args: Vec<String> = flags.into_iter().flat_map(|(flag, value)| [flag.to_string(), value]).collect();
        if let Brokers::Plain(_) = self {
            args.push("--allow-plaintext".into());
        }
        args
    }
}

/// The flags of a client of `pki`'s brokers: trust its CA, show a certificate of its own.
pub fn tls_flags(pki: &TestPki, name: &str) -> Vec<(&'static str, String)> {
    let own = pki.issue(name, &[], Usage::Client);
    let path = |p: &std::path::Path| p.to_str().expect("a UTF-8 path").to_string();
    vec![("--tls-ca-file", path(&pki.ca)), ("--tls-cert-file", path(&own.cert)), ("--tls-key-file", path(&own.key))]
}

/// A controller (in-process, on its stack) and agent hosts with addresses of their own.
pub struct Fleet {
    pub stack: Stack,
    pub hosts: Vec<FleetHost>,
    pub brokers: Brokers,
    /// The machine's RabbitMQ (on loopback) at each host's gateway, for plain-text fleets.
    broker_links: Vec<Relay>,
}

impl Fleet {
    /// Start a stack without agents and one host per entry of `capacities`, each taking
    /// that many demos, its agent `agent_binary` (a test's `CARGO_BIN_EXE_fleet-agent`);
    /// wait until every host has been heard from.
    pub async fn start(agent_binary: &str, capacities: &[u32], mut options: StackOptions) -> Fleet {
        let machines = spawn_machines(capacities.len()).await;
        let (nats, _) = authorized_nats("0.0.0.0", None, &mut options);
        let rabbitmq: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let broker_links = machines
            .iter()
            .filter_map(|m| Relay::start(SocketAddr::new(m.gateway.parse().unwrap(), 5672), rabbitmq))
            .collect();
        let mut fleet = Fleet::launch(agent_binary, capacities, options, machines, Brokers::Plain(nats)).await;
        fleet.broker_links = broker_links;
        fleet
    }

    /// [`Fleet::start`] with brokers of the fleet's own that speak TLS only ([`TlsBrokers`]):
    /// the controller reaches them on 127.0.0.1, each agent at its host's gateway.
    pub async fn start_tls(agent_binary: &str, capacities: &[u32], mut options: StackOptions) -> Fleet {
        let machines = spawn_machines(capacities.len()).await;
        let gateways: Vec<String> = machines.iter().map(|m| m.gateway.clone()).collect();
        let pki = TestPki::new("demofleet test CA");
        let addresses = std::iter::once("127.0.0.1").chain(gateways.iter().map(String::as_str));
        let sans: Vec<String> = addresses.map(|address| format!("IP:{address}")).collect();
        let server = pki.issue("broker", &sans, Usage::Server);
        let tls = RabbitTls { ca: pki.ca.clone(), server: server.clone(), addresses: gateways };
        let server_files = server.clone();
        let rabbit_options = RabbitOptions { tls: Some(tls), ..Default::default() };
        let rabbit = tokio::task::spawn_blocking(move || RabbitCluster::start_with(1, &rabbit_options)).await.unwrap();
        options.services = Some(rabbit.services(0));
        let (nats, nats_user) = authorized_nats("0.0.0.0", Some(NatsTls { ca: pki.ca.clone(), server }), &mut options);
        for (flag, value) in tls_flags(&pki, "controller") {
            options.controller_args.extend([flag.to_string(), value]);
        }
        let brokers = Brokers::Tls(Box::new(TlsBrokers { rabbit, nats, pki, server: server_files, nats_user }));
        Fleet::launch(agent_binary, capacities, options, machines, brokers).await
    }

    /// The stack, then an agent on each machine; wait until every host has been heard from.
    async fn launch(
        agent_binary: &str,
        capacities: &[u32],
        mut options: StackOptions,
        machines: Vec<TestHost>,
        brokers: Brokers,
    ) -> Fleet {
        options.agents = 0;
        let mut stack = Stack::start(options).await;
        let mut hosts = Vec::new();
        for (index, (machine, capacity)) in machines.into_iter().zip(capacities).enumerate() {
            let mut host = create_host(&stack, &brokers, machine, index, *capacity).await;
            host.binary = agent_binary.to_string();
            host.start_agent();
            stack.engines.push(host.machine.engine());
            hosts.push(host);
        }
        let fleet = Fleet { stack, hosts, brokers, broker_links: Vec::new() };
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
        self.brokers.nats().port
    }

    pub fn host(&self, id: &str) -> &FleetHost {
        self.hosts.iter().find(|h| h.host_id == id).unwrap_or_else(|| panic!("no host {id}"))
    }

    /// Every agent's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.hosts.iter().map(|h| format!("--- {} ---\n{}", h.host_id, h.log())).collect()
    }

    /// Stop the agents, remove the hosts, then stop the stack and the brokers.
    pub async fn stop(mut self) {
        self.hosts.clear();
        self.stack.stop().await;
    }
}

/// `count` machines, each with its engine.
async fn spawn_machines(count: usize) -> Vec<TestHost> {
    let base_image = crate::services::Services::from_env().base_image;
    let mut machines = Vec::new();
    for _ in 0..count {
        machines.push(TestHost::spawn(&base_image).await);
    }
    machines
}

/// Make host `index` of the stack on `machine`: enrolled (its broker user made by the
/// controller), a demo folder and the agent's flags.
async fn create_host(stack: &Stack, brokers: &Brokers, machine: TestHost, index: usize, capacity: u32) -> FleetHost {
    let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
    // Enrolled: NATS is told to read its users again; the agent starts once it has.
    let reloads = brokers.nats().reloads();
    let settings = stack.enrol(&host_id).await;
    crate::stack::nats_reloaded(Some(brokers.nats()), reloads).await;
    let controller_user = settings["controller_amqp_user"].as_str().expect("the controller's broker user");
    let demo_dir = stack.scratch.path().join("demos").join(&host_id);
    std::fs::create_dir_all(&demo_dir).unwrap();
    let log = stack.scratch.path().join(format!("{host_id}.log"));
    let mut args = brokers.agent_flags(&stack.vhost.name, &host_id, &settings, &machine.gateway);
    let own: Vec<String> = [
        ("--host-id", host_id.clone()),
        // Steps come from the controller's user, not the host's own.
        ("--controller-amqp-user", controller_user.to_string()),
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
    args.extend(own);
    FleetHost { host_id, machine, demo_dir, binary: String::new(), args, log, agent: None }
}

/// Every demo container of `hosts`, on their own engines: (demo id, host id, running).
pub fn demo_containers(hosts: &[&FleetHost]) -> Vec<(String, String, bool)> {
    let engines: Vec<Engine> = hosts.iter().map(|h| h.machine.engine()).collect();
    engines.iter().flat_map(|e| e.demo_containers(&[])).map(|c| (c.demo_id, c.host_id, c.running)).collect()
}
