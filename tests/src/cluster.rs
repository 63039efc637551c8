//! Brokers of several nodes on this one machine, of a test's own: a RabbitMQ cluster of
//! nodes joined as an operator joins them (`stop_app`, `join_cluster`, `start_app`), and
//! NATS servers routed to each other. Every node has its own name, ports and folders in a
//! temporary directory; the machine's own RabbitMQ node and NATS server are left alone.
//! Nodes are killed with SIGKILL, as in a crash, and all of them are stopped on drop.
//! RabbitMQ nodes may listen for AMQP over TLS only ([`RabbitTls`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

use crate::command::{self, Group};
use crate::fake_github::FakeGitHub;
use crate::host::TestHost;
use crate::pki::CertFiles;
use crate::services::{free_port, Services};
use crate::stack::{agent_argv, ControllerFlags, Stack};
use crate::wait;

/// The broker user every node of a [`RabbitCluster`] has, an administrator.
pub const RABBITMQ_USER: &str = "demofleet";
pub const RABBITMQ_PASSWORD: &str = "demofleet";

/// One RabbitMQ node of a [`RabbitCluster`].
pub struct RabbitNode {
    /// Its Erlang node name, `dfq<n>-<tag>@localhost`.
    pub name: String,
    pub amqp_port: u16,
    pub management_port: u16,
    dir: PathBuf,
    env: Vec<(String, String)>,
    process: Group,
}

/// AMQP over TLS as a node's only AMQP listener: no plain-text one, and clients must show a
/// certificate signed by the CA (mutual TLS).
#[derive(Debug, Clone)]
pub struct RabbitTls {
    /// The CA the node trusts for clients' certificates (and that signed its own).
    pub ca: PathBuf,
    /// The node's certificate, valid for every address it listens on.
    pub server: CertFiles,
    /// Addresses the listener binds besides 127.0.0.1 (a test fleet's gateways).
    pub addresses: Vec<String>,
}

/// How a [`RabbitCluster`]'s nodes are configured beyond their own ports and folders.
#[derive(Debug, Clone, Default)]
pub struct RabbitOptions {
    /// AMQP over TLS only.
    pub tls: Option<RabbitTls>,
    /// A folder of further configuration files, read after the node's own file as
    /// `/etc/rabbitmq/conf.d` is (`RABBITMQ_CONFIG_FILES`): what a deployment writes there
    /// applies to the node when it (re)starts.
    pub conf_d: Option<PathBuf>,
}

/// RabbitMQ nodes joined into one cluster, with the user [`RABBITMQ_USER`] and the
/// management plugin on each.
pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
    /// `amqps` when the nodes listen over TLS only, else `amqp`.
    scheme: &'static str,
    /// The nodes' folders and the shared Erlang cookie (the `HOME` of every node and CLI call).
    home: TempDir,
}

impl RabbitCluster {
    /// Start `size` nodes and join the others to the first; blocks until all run in one
    /// cluster (about half a minute for three).
    pub fn start(size: usize) -> RabbitCluster {
        RabbitCluster::start_with(size, &RabbitOptions::default())
    }

    /// [`RabbitCluster::start`], the nodes configured with `options`.
    pub fn start_with(size: usize, options: &RabbitOptions) -> RabbitCluster {
        let home = tempfile::Builder::new().prefix("demofleet-rabbitmq-").tempdir().unwrap();
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(&cookie, Uuid::new_v4().simple().to_string()).unwrap();
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        let tag = &Uuid::new_v4().simple().to_string()[..6];
        let nodes = (1..=size)
            .map(|n| RabbitNode::configure(home.path(), &format!("dfq{n}-{tag}@localhost"), options))
            .collect();
        let scheme = if options.tls.is_some() { "amqps" } else { "amqp" };
        let mut cluster = RabbitCluster { nodes, scheme, home };
        for index in 0..size {
            cluster.start_node(index);
        }
        for index in 0..size {
            cluster.await_startup(index);
        }
        let first = cluster.nodes[0].name.clone();
        for index in 1..size {
            cluster.ctl(index, &["stop_app"]);
            cluster.ctl(index, &["join_cluster", &first]);
            cluster.ctl(index, &["start_app"]);
        }
        let status = cluster.ctl(0, &["cluster_status", "--formatter", "json"]);
        let status: Value = serde_json::from_str(&status).expect("cluster_status as JSON");
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, size, "every node runs in the cluster: {status}");
        cluster
    }

    /// URL of node `index` on 127.0.0.1, on `vhost`.
    pub fn amqp_url(&self, index: usize, vhost: &str) -> String {
        let port = self.nodes[index].amqp_port;
        format!("{}://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@127.0.0.1:{port}/{vhost}", self.scheme)
    }

    /// Every node's URL on `vhost` for `user`, separated by commas, as `DEMOFLEET_AMQP_URL`
    /// takes them.
    pub fn amqp_urls(&self, user: &str, password: &str, vhost: &str) -> String {
        let scheme = self.scheme;
        let url = |node: &RabbitNode| format!("{scheme}://{user}:{password}@127.0.0.1:{}/{vhost}", node.amqp_port);
        self.nodes.iter().map(url).collect::<Vec<_>>().join(",")
    }

    /// The management API of node `index`, with the user in it.
    pub fn management_url(&self, index: usize) -> String {
        format!("http://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@127.0.0.1:{}", self.nodes[index].management_port)
    }

    /// The machine's services with RabbitMQ replaced by node `index` of this cluster, for
    /// [`crate::stack::StackOptions::services`]: a stack makes its vhost there.
    pub fn services(&self, index: usize) -> Services {
        Services {
            amqp_url: self.amqp_url(index, "demofleet"),
            amqp_management_url: self.management_url(index),
            ..Services::from_env()
        }
    }

    /// Stop node `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].process.kill();
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].process.running()
    }

    /// Start node `index` (again); it rejoins the cluster it was in.
    pub fn restart(&mut self, index: usize) {
        self.start_node(index);
        self.await_startup(index);
    }

    /// GET `path` of the management API from the first running node that answers.
    pub async fn management_get(&self, path: &str) -> Option<Value> {
        let client = crate::http_client().timeout(Duration::from_secs(5)).build().unwrap();
        for (index, node) in self.nodes.iter().enumerate() {
            if !self.is_running(index) {
                continue;
            }
            let url = format!("http://127.0.0.1:{}/api{path}", node.management_port);
            let Ok(response) = client.get(url).basic_auth(RABBITMQ_USER, Some(RABBITMQ_PASSWORD)).send().await else {
                continue;
            };
            if let Ok(body) = response.error_for_status() {
                if let Ok(value) = body.json().await {
                    return Some(value);
                }
            }
        }
        None
    }

    /// Close every client connection to `vhost` (as a broker going away would), through the
    /// management API of the first running node; the clients connect again.
    pub async fn close_connections(&self, vhost: &str) {
        let listed = self.management_get(&format!("/vhosts/{vhost}/connections")).await.unwrap_or_default();
        let index = (0..self.nodes.len()).find(|i| self.is_running(*i)).expect("a running node");
        let client = crate::http_client().build().unwrap();
        for connection in listed.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(name) = connection["name"].as_str() else { continue };
            let url = format!(
                "http://127.0.0.1:{}/api/connections/{}",
                self.nodes[index].management_port,
                crate::fixtures::urlencode(name)
            );
            let closed = client.delete(url).basic_auth(RABBITMQ_USER, Some(RABBITMQ_PASSWORD)).send().await;
            assert!(closed.is_ok_and(|r| r.status().is_success()), "closing {name}");
        }
    }

    /// The clients connected to `vhost`: (user, index of the node they are connected to).
    /// A connection the management API lists without a user (its statistics not in yet)
    /// shows as user "?"; one on a node not of this cluster makes the answer `None`.
    pub async fn connections(&self, vhost: &str) -> Option<Vec<(String, usize)>> {
        let listed = self.management_get(&format!("/vhosts/{vhost}/connections")).await?;
        let mut connections = Vec::new();
        for connection in listed.as_array()? {
            let node = connection["node"].as_str()?;
            let index = self.nodes.iter().position(|n| n.name == node)?;
            connections.push((connection["user"].as_str().unwrap_or("?").to_string(), index));
        }
        Some(connections)
    }

    /// The queues of `vhost`: (name, type, nodes holding a replica).
    pub async fn queues(&self, vhost: &str) -> Option<Vec<(String, String, usize)>> {
        let listed = self.management_get(&format!("/queues/{vhost}")).await?;
        listed
            .as_array()?
            .iter()
            .map(|q| {
                let members = q["members"].as_array().map_or(1, Vec::len);
                Some((q["name"].as_str()?.to_string(), q["type"].as_str()?.to_string(), members))
            })
            .collect()
    }

    /// The log of node `index`, for a failing test's message.
    pub fn log(&self, index: usize) -> String {
        let node = &self.nodes[index];
        let mut text = std::fs::read_to_string(node.dir.join("stdout.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(node.dir.join("log")) {
            for entry in entries.flatten() {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }

    fn start_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(!node.process.running(), "{} runs", node.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("stdout.log")).unwrap();
        node.process = Group::spawn(
            Command::new(rabbitmq_bin("rabbitmq-server"))
                .current_dir(&node.dir)
                .env("HOME", self.home.path())
                .envs(node.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log)),
        );
    }

    /// Wait until node `index` has booted; it registers with epmd a moment after it starts.
    fn await_startup(&mut self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.ctl_output(index, &["await_startup", "--timeout", "60"]);
            if out.is_ok_and(|out| out.status.success()) {
                return;
            }
            let exited = self.nodes[index].process.exited();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "RabbitMQ node {} did not start ({}):\n{}",
                self.nodes[index].name,
                exited.map_or("still booting after 120 s".to_string(), |status| format!("it ended: {status}")),
                self.log(index)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Write an executable script at `path` that runs `rabbitmqctl` against node `index`
    /// with its arguments, as the machine's `rabbitmqctl` runs against the machine's node.
    pub fn write_ctl_script(&self, index: usize, path: &Path) {
        let script = format!(
            "#!/bin/sh\nHOME='{}' exec '{}' -n '{}' \"$@\"\n",
            self.home.path().display(),
            rabbitmq_bin("rabbitmqctl"),
            self.nodes[index].name
        );
        std::fs::write(path, script).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    /// `rabbitmqctl -n <node> ARGS`, which must succeed; its output.
    pub fn ctl(&self, index: usize, args: &[&str]) -> String {
        let out = self.ctl_output(index, args).unwrap_or_else(|e| panic!("rabbitmqctl: {e}"));
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}{}",
            self.nodes[index].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rabbitmqctl -n <node> ARGS` within 90 s (`await_startup` waits up to 60 s itself).
    fn ctl_output(&self, index: usize, args: &[&str]) -> std::io::Result<std::process::Output> {
        command::output(
            Command::new(rabbitmq_bin("rabbitmqctl"))
                .env("HOME", self.home.path())
                .args(["-q", "-n", &self.nodes[index].name])
                .args(args),
            Duration::from_secs(90),
        )
    }
}

impl RabbitNode {
    /// Folders, ports and configuration of node `name`, not yet started.
    fn configure(home: &Path, name: &str, options: &RabbitOptions) -> RabbitNode {
        let dir = home.join(name.split('@').next().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let (amqp_port, management_port, dist_port) = (free_port(), free_port(), free_port());
        let listeners = match &options.tls {
            None => format!("listeners.tcp.default = 127.0.0.1:{amqp_port}\n"),
            Some(tls) => tls_listeners(tls, amqp_port),
        };
        let config = format!(
            "{listeners}\
             management.tcp.port = {management_port}\n\
             management.tcp.ip = 127.0.0.1\n\
             collect_statistics_interval = 1000\n\
             default_user = {RABBITMQ_USER}\n\
             default_pass = {RABBITMQ_PASSWORD}\n\
             default_user_tags.administrator = true\n\
             default_vhost = demofleet\n"
        );
        std::fs::write(dir.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_management].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let path = |file: &str| dir.join(file).to_str().unwrap().to_string();
        let mut env = vec![
            ("RABBITMQ_NODENAME", name.to_string()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config")),
            ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
        ];
        if options.tls.is_none() {
            env.push(("RABBITMQ_NODE_PORT", amqp_port.to_string()));
        }
        if let Some(conf_d) = &options.conf_d {
            env.push(("RABBITMQ_CONFIG_FILES", conf_d.to_str().expect("a UTF-8 path").to_string()));
        }
        let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        RabbitNode { name: name.to_string(), amqp_port, management_port, dir, env, process: Group::none() }
    }
}

/// The configuration of AMQP over TLS on `port` of 127.0.0.1 and `tls.addresses`, and of no
/// plain-text listener.
fn tls_listeners(tls: &RabbitTls, port: u16) -> String {
    let addresses = std::iter::once("127.0.0.1").chain(tls.addresses.iter().map(String::as_str));
    let mut config = String::from("listeners.tcp = none\n");
    for (index, address) in addresses.enumerate() {
        config.push_str(&format!("listeners.ssl.{} = {address}:{port}\n", index + 1));
    }
    let file = |path: &Path| path.to_str().expect("a UTF-8 path").to_string();
    config.push_str(&format!(
        "ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n",
        file(&tls.ca),
        file(&tls.server.cert),
        file(&tls.server.key)
    ));
    config
}

/// RabbitMQ's own scripts, not Debian's wrappers (which switch to the `rabbitmq` user).
fn rabbitmq_bin(name: &str) -> String {
    let own = format!("/usr/lib/rabbitmq/bin/{name}");
    if Path::new(&own).exists() {
        own
    } else {
        name.to_string()
    }
}

/// One NATS server of a [`NatsCluster`].
pub struct NatsServer {
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    process: Group,
}

/// NATS servers routed to each other into one cluster.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `size` servers, each with routes to the others, and wait until every one
    /// has a route to every other.
    pub async fn start(size: usize) -> NatsCluster {
        let name = format!("dfn-{}", &Uuid::new_v4().simple().to_string()[..6]);
        let mut servers: Vec<NatsServer> = (0..size)
            .map(|_| NatsServer {
                client_port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                process: Group::none(),
            })
            .collect();
        let routes: Vec<String> = servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.cluster_port)).collect();
        for (index, server) in servers.iter_mut().enumerate() {
            let others: Vec<&str> =
                routes.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, r)| r.as_str()).collect();
            server.process = Group::spawn(
                Command::new("nats-server")
                    .args(["-a", "127.0.0.1", "-p", &server.client_port.to_string()])
                    .args(["-m", &server.monitor_port.to_string()])
                    .args(["--cluster_name", &name, "--cluster", &routes[index]])
                    .args(["--routes", &others.join(",")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
        }
        let cluster = NatsCluster { servers };
        for index in 0..size {
            wait::until(&format!("NATS server {index} routed to the others"), Duration::from_secs(20), || async {
                let routes = cluster.monitor(index, "/routez").await?;
                (routes["num_routes"].as_u64()? as usize >= size - 1).then_some(())
            })
            .await;
        }
        cluster
    }

    /// Every server's client URL, separated by commas, as `DEMOFLEET_NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.servers.iter().map(|s| format!("nats://127.0.0.1:{}", s.client_port)).collect::<Vec<_>>().join(",")
    }

    /// Stop server `index` with SIGKILL.
    pub fn kill(&mut self, index: usize) {
        self.servers[index].process.kill();
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.servers[index].process.running()
    }

    /// The subscriptions of each client connected to server `index`, one list per client
    /// (`None` when the server does not answer).
    pub async fn subscriptions(&self, index: usize) -> Option<Vec<Vec<String>>> {
        let connz = self.monitor(index, "/connz?subs=1").await?;
        let clients = connz["connections"].as_array().map(Vec::as_slice).unwrap_or_default();
        let subjects = |client: &Value| {
            let list = client["subscriptions_list"].as_array().map(Vec::as_slice).unwrap_or_default();
            list.iter().filter_map(|s| s.as_str().map(String::from)).collect()
        };
        Some(clients.iter().map(subjects).collect())
    }

    /// GET `path` of server `index`'s monitoring endpoint.
    pub async fn monitor(&self, index: usize, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.servers[index].monitor_port);
        let client = crate::http_client().timeout(Duration::from_secs(5)).build().unwrap();
        client.get(url).send().await.ok()?.json().await.ok()
    }
}

/// A controller and agents in this process on a stack's database, NATS and fixtures, with
/// broker URLs of their own (such as a cluster's list), since a stack gives its controller
/// and agents the harness's one URL. The stack's own controller is stopped, and the
/// stack's HTTP helpers then talk to this controller.
pub struct ClusterFleet {
    pub controller: Option<demofleet_controller::Controller>,
    /// (host id, its broker user, the agent).
    pub agents: Vec<(String, String, Option<demofleet_agent::Agent>)>,
    /// The agents' machines, each with an engine of its own.
    machines: Vec<TestHost>,
    /// The GitHub this controller talks to.
    pub github: FakeGitHub,
}

impl ClusterFleet {
    /// Stop `stack`'s controller (`binary` is the test's `CARGO_BIN_EXE_fleet-controller`,
    /// run and killed in its stead), start one with broker URLs `amqp_urls(user, password)`
    /// and flags `controller_args`, and `agents` agents with flags `agent_args`, each with a
    /// broker user and a test host (network namespace, address, Docker Engine) of its own;
    /// wait until every agent has been heard from.
    pub async fn start(
        stack: &mut Stack,
        binary: &str,
        amqp_urls: impl Fn(&str, &str) -> String,
        controller_args: &[&str],
        agents: usize,
        agent_args: &[&str],
    ) -> ClusterFleet {
        stack.run_controller_as_process(binary).await;
        stack.kill_controller();
        let token = format!("ghp_{}", Uuid::new_v4().simple());
        let github = FakeGitHub::start(&token, None).await;
        let database = stack.db.connect_options().get_database().expect("a database name").to_string();
        let (base, _) = stack.services.database_url.rsplit_once('/').expect("database URL has a path");
        let git_url = format!("file://{}/{{owner}}/{{repo}}.git", stack.repos_dir().display());
        let mut args = ControllerFlags {
            database_url: format!("{base}/{database}"),
            amqp_url: amqp_urls(RABBITMQ_USER, RABBITMQ_PASSWORD),
            nats_url: stack.services.nats_url.clone(),
            nats_prefix: stack.nats_prefix.clone(),
            webhook_secret: stack.secret.clone(),
            git_url,
            github_api_url: github.url.clone(),
            oidc_issuer: stack.services.oidc_issuer.clone(),
        }
        .argv([("--github-token", token)]);
        // Enrolment makes hosts' broker users through the stack's management API, named
        // after its vhost so that they go with it (as Stack::start has it).
        args.extend(["--amqp-management-url".to_string(), stack.services.amqp_management_url.clone()]);
        args.extend(["--agent-user-prefix".to_string(), stack.vhost.agent_user_prefix()]);
        args.extend(controller_args.iter().map(|s| s.to_string()));
        let config = demofleet_controller::config::Config::try_parse_from(&args).expect("controller flags");
        let controller = demofleet_controller::Controller::start(config).await.expect("controller starts");
        stack.http_addr = controller.http_addr;
        stack.edge_addr = controller.edge_addr;

        let mut fleet = ClusterFleet { controller: Some(controller), agents: Vec::new(), machines: Vec::new(), github };
        for _ in 0..agents {
            let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
            // Enrolled through the controller, which makes the host's broker user.
            let settings = stack.enrol(&host_id).await;
            let (user, password) = crate::stack::broker_credentials(&settings);
            let demo_dir = stack.scratch.path().join("demos").join(&host_id);
            let machine = TestHost::spawn(&stack.services.base_image).await;
            stack.engines.push(machine.engine());
            let mut args = agent_argv(
                &host_id,
                &amqp_urls(&user, &password),
                &stack.services.nats_url,
                &stack.nats_prefix,
                &demo_dir,
                &stack.repos_dir(),
                Some(&machine),
            );
            fleet.machines.push(machine);
            // Steps come from the controller's user, not the host's own.
            let controller_user = settings["controller_amqp_user"].as_str().expect("the controller's broker user");
            args.extend(["--controller-amqp-user".to_string(), controller_user.to_string()]);
            args.extend(agent_args.iter().map(|s| s.to_string()));
            let config = demofleet_agent::config::Config::try_parse_from(&args).expect("agent flags");
            let agent = demofleet_agent::Agent::start(config).await.expect("agent starts");
            fleet.agents.push((host_id, user, Some(agent)));
        }
        for (id, _, _) in &fleet.agents {
            wait::until(&format!("host {id} heard from"), Duration::from_secs(30), || async {
                let hosts = stack.get_json("/api/hosts").await;
                hosts.as_array()?.iter().any(|h| h["id"] == id.as_str() && h["alive"] == true).then_some(())
            })
            .await;
        }
        fleet
    }

    /// Stop the agents, then the controller.
    pub async fn stop(mut self) {
        for (_, _, agent) in &mut self.agents {
            if let Some(agent) = agent.take() {
                agent.shutdown().await;
            }
        }
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
    }
}
