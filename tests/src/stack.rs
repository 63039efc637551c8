//! A controller and its agents, started in-process on this test's own slice of the services.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use demofleet_agent::Agent;
use demofleet_controller::Controller;

use crate::fake_github::{app_key_pair, FakeGitHub};
use crate::fixtures::sign;
use crate::git_http::GitHttp;
use crate::host::{DemoContainer, Engine, TestHost};
use crate::services::{nats_prefix, Services, TestDb, TestVhost};
use crate::wait;

/// How the controller authenticates to the fake GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitHubAuth {
    /// A plain token.
    Token,
    /// A GitHub App with a freshly made key pair.
    App,
}

/// How a stack is set up.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Agents to start, each with its own host id and demo folder. One runs on the machine's
    /// Docker Engine; two or more each on a test host of its own (tests/src/host.rs): its own
    /// network namespace, address and engine.
    pub agents: usize,
    /// Extra controller flags, e.g. `--webhook-max-bytes 1024`.
    pub controller_args: Vec<String>,
    pub github_auth: GitHubAuth,
    /// A NATS server of the test's own instead of the shared one.
    pub nats_url: Option<String>,
    /// Extra agent flags, e.g. `--demo-opt NAME=VALUE`.
    pub agent_args: Vec<String>,
    /// Serve the fixture repositories over HTTP to clients with this token only, as
    /// private repositories are, instead of from the file system.
    pub private_repos_token: Option<String>,
    /// Give the controller and agents lists of broker URLs whose first node is down, as
    /// when one node of a cluster is.
    pub broker_failover: bool,
    /// Services of the test's own (a private PostgreSQL or RabbitMQ, for a test that stops
    /// or crashes them) instead of the machine's, which other tests share.
    pub services: Option<Services>,
    /// A NATS subject prefix given, instead of one of the stack's own (two fleets sharing
    /// one).
    pub nats_prefix: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            agents: 1,
            controller_args: Vec::new(),
            github_auth: GitHubAuth::Token,
            nats_url: None,
            agent_args: Vec::new(),
            private_repos_token: None,
            broker_failover: false,
            services: None,
            nats_prefix: None,
        }
    }
}

/// The settings a test controller gets from its slice of the services.
pub struct ControllerFlags {
    pub database_url: String,
    pub amqp_url: String,
    pub nats_url: String,
    pub nats_prefix: String,
    pub webhook_secret: String,
    pub git_url: String,
    pub github_api_url: String,
    pub oidc_issuer: String,
}

impl ControllerFlags {
    /// The controller's command line: these settings, loopback listeners on free ports, a
    /// fast tick and host timeout, sign-in for example.com, then `extra` flags.
    pub fn argv(self, extra: impl IntoIterator<Item = (&'static str, String)>) -> Vec<String> {
        let flags = [
            ("--database-url", self.database_url),
            ("--amqp-url", self.amqp_url),
            ("--nats-url", self.nats_url),
            ("--nats-prefix", self.nats_prefix),
            ("--webhook-secret", self.webhook_secret),
            ("--git-url", self.git_url),
            ("--listen", "127.0.0.1:0".into()),
            ("--edge-listen", "127.0.0.1:0".into()),
            ("--tick", "500ms".into()),
            ("--host-timeout", "5s".into()),
            ("--github-api-url", self.github_api_url),
            ("--oidc-issuer", self.oidc_issuer),
            ("--oidc-client-secret", format!("secret-{}", Uuid::new_v4().simple())),
            ("--allow-domains", "example.com".into()),
        ];
        let mut args = vec!["demofleet-controller".to_string()];
        for (flag, value) in flags.into_iter().chain(extra) {
            args.extend([flag.to_string(), value]);
        }
        args
    }
}

/// A test agent's command line: host `host_id` with its demos in `demo_dir`, fetching from
/// the fixture repositories under `repos` (`file://` URLs), heartbeating every 500 ms, on
/// `machine`'s engine and address, else on the machine's engine and 127.0.0.1.
pub fn agent_argv(
    host_id: &str,
    amqp_url: &str,
    nats_url: &str,
    nats_prefix: &str,
    demo_dir: &Path,
    repos: &Path,
    machine: Option<&TestHost>,
) -> Vec<String> {
    let demo_dir = demo_dir.to_str().expect("a UTF-8 demo folder");
    let repos = repos.to_str().expect("a UTF-8 repositories folder");
    let address = machine.map_or("127.0.0.1", |m| m.address.as_str());
    let mut args: Vec<String> = [
        "demofleet-agent",
        "--host-id",
        host_id,
        "--amqp-url",
        amqp_url,
        "--nats-url",
        nats_url,
        "--nats-prefix",
        nats_prefix,
        "--demo-dir",
        demo_dir,
        "--git-local-root",
        repos,
        "--host-address",
        address,
        "--heartbeat-interval",
        "500ms",
    ]
    .map(String::from)
    .to_vec();
    if let Some(engine) = machine.and_then(|m| m.engine().agent_flag()) {
        args.extend(["--docker-host".to_string(), engine]);
    }
    args
}

/// One running agent of a stack.
pub struct TestAgent {
    pub host_id: String,
    pub demo_dir: PathBuf,
    /// The test host it runs on, with an engine of its own; `None`: the machine's engine.
    pub machine: Option<TestHost>,
    /// The flags it was started with.
    args: Vec<String>,
    agent: Option<Agent>,
    /// The agent as a process of its own (`Stack::start_agent_process`), killed when dropped.
    process: Option<std::process::Child>,
}

impl TestAgent {
    /// The value of flag `name` (`--amqp-url`) it was started with.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.args.iter().position(|a| a == name).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        // A test host's engine goes with it, and its containers, images and networks too.
        if self.machine.is_none() {
            remove_host_leftovers(&self.host_id);
        }
    }
}

/// Remove the demo containers, images and networks host `host_id` left, passed or failed.
pub fn remove_host_leftovers(host_id: &str) {
    {
        let filter = format!("label=run.demo.host={host_id}");
        let docker = |args: &[&str]| {
            crate::command::output(std::process::Command::new("docker").args(args), crate::command::DOCKER)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let format = "{{.ID}} {{.Image}} {{.Networks}}";
        let Ok(listed) = docker(&["ps", "-a", "--filter", &filter, "--format", format]) else { return };
        for line in listed.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(id), Some(image), networks) = (parts.next(), parts.next(), parts.next()) {
                let _ = docker(&["rm", "-f", id]);
                let _ = docker(&["rmi", "-f", image]);
                // Each demo has a network of its own; Docker has room for only a few dozen.
                for network in networks.unwrap_or_default().split(',').filter(|n| n.starts_with("demofleet-")) {
                    let _ = docker(&["network", "rm", network]);
                }
            }
        }
    }
}

pub struct Stack {
    pub services: Services,
    /// The fake GitHub the controller talks to.
    pub github: FakeGitHub,
    pub secret: String,
    /// The controller's API and edge addresses (the same across restarts).
    pub http_addr: std::net::SocketAddr,
    pub edge_addr: std::net::SocketAddr,
    /// The controller, in this process until [`Stack::run_controller_as_process`].
    controller: Option<Controller>,
    /// Its flags, and its process once it runs as one.
    controller_argv: Vec<String>,
    controller_process: Option<ControllerProcess>,
    pub agents: Vec<TestAgent>,
    /// The Docker Engines this stack's demos run on, for tests that look at containers.
    pub engines: Vec<Engine>,
    pub db: PgPool,
    pub vhost: TestVhost,
    /// The HTTP git server of private repositories, when asked for.
    pub git_http: Option<GitHttp>,
    /// Holds fixture repositories, demo folders and logs; removed with the stack unless it failed.
    pub scratch: crate::scratch::Scratch,
    /// The NATS subject prefix of this stack's controller and agents.
    pub nats_prefix: String,
    test_db: TestDb,
    http: reqwest::Client,
    /// For demos through the edge: no API token.
    plain: reqwest::Client,
    /// The test's time limit, from the stack's start to its end.
    _time_limit: crate::time_limit::TimeLimit,
    /// The NATS server of a stack with several hosts, stopped with the stack.
    _own_nats: Option<crate::services::PrivateNats>,
}

impl Stack {
    pub async fn start(mut options: StackOptions) -> Stack {
        let time_limit = crate::time_limit::start();
        crate::init_tracing();
        // Several hosts: a NATS server of the stack's own that lets in only enrolled hosts.
        let own_nats = (options.agents > 1 && options.nats_url.is_none())
            .then(|| authorized_nats("127.0.0.1", None, &mut options).0);
        let mut services = options.services.clone().unwrap_or_else(Services::from_env);
        if let Some(url) = &options.nats_url {
            services.nats_url = url.clone();
        }
        let test_db = TestDb::create(&services).await;
        let vhost = TestVhost::create(&services).await;
        let prefix = options.nats_prefix.clone().unwrap_or_else(nats_prefix);
        let scratch = crate::scratch::Scratch::new("demofleet-test-");
        let secret = format!("secret-{}", Uuid::new_v4());
        let repos = scratch.path().join("repos");
        let git_http = match &options.private_repos_token {
            Some(token) => Some(GitHttp::start(repos.clone(), token).await),
            None => None,
        };
        let git_url = match &git_http {
            Some(server) => format!("{}/{{owner}}/{{repo}}.git", server.url),
            None => format!("file://{}/{{owner}}/{{repo}}.git", repos.display()),
        };
        let token = format!("ghp_{}", Uuid::new_v4().simple());
        let (github, github_flags) = match options.github_auth {
            GitHubAuth::Token => (FakeGitHub::start(&token, None).await, vec![("--github-token", token.clone())]),
            GitHubAuth::App => {
                let (key_file, public) = app_key_pair(scratch.path());
                let flags = vec![
                    ("--github-app-id", "421337".to_string()),
                    ("--github-app-key-file", key_file.to_str().unwrap().to_string()),
                ];
                (FakeGitHub::start(&token, Some(("421337", &public))).await, flags)
            }
        };
        let (amqp_url, nats_url) = if options.broker_failover {
            let down = vhost.amqp_url.replacen(":5672/", ":1/", 1);
            (format!("{down},{}", vhost.amqp_url), format!("nats://127.0.0.1:1,{}", services.nats_url))
        } else {
            (vhost.amqp_url.clone(), services.nats_url.clone())
        };
        let mut args = ControllerFlags {
            database_url: test_db.url.clone(),
            amqp_url: amqp_url.clone(),
            nats_url: nats_url.clone(),
            nats_prefix: prefix.clone(),
            webhook_secret: secret.clone(),
            git_url,
            github_api_url: github.url.clone(),
            oidc_issuer: services.oidc_issuer.clone(),
        }
        .argv(github_flags);
        // Enrolment makes hosts' broker users through the management API, named after the
        // test's vhost so that they go with it.
        args.extend(["--amqp-management-url".to_string(), services.amqp_management_url.clone()]);
        args.extend(["--agent-user-prefix".to_string(), vhost.agent_user_prefix()]);
        args.extend(options.controller_args.iter().cloned());
        let config = demofleet_controller::config::Config::try_parse_from(&args).expect("controller flags");
        let controller = Controller::start(config).await.expect("controller starts");
        let (http_addr, edge_addr) = (controller.http_addr, controller.edge_addr);
        let db = PgPool::connect(&test_db.url).await.unwrap();
        let api_token = demofleet_controller::auth::create_api_token(&db, "tests", "test harness").await.unwrap();
        let http = api_client(&api_token);

        let mut agents = Vec::new();
        for _ in 0..options.agents {
            let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
            let reloads = own_nats.as_ref().map_or(0, |n| n.reloads());
            let settings = enrol_at(&http, http_addr, &host_id).await;
            nats_reloaded(own_nats.as_ref(), reloads).await;
            let demo_dir = scratch.path().join("demos").join(&host_id);
            let machine = if options.agents > 1 { Some(TestHost::spawn(&services.base_image).await) } else { None };
            // The host's own broker (and NATS) user from its enrolment; steps come from the
            // controller's user.
            let url = |key: &str| settings[key].as_str().unwrap_or_else(|| panic!("{key} in {settings}")).to_string();
            let (amqp_url, nats_url) = (url("amqp_url"), url("nats_url"));
            let mut args = agent_argv(&host_id, &amqp_url, &nats_url, &prefix, &demo_dir, &repos, machine.as_ref());
            args.extend(["--controller-amqp-user".to_string(), url("controller_amqp_user")]);
            args.extend(options.agent_args.iter().cloned());
            let agent = start_agent(&args, &[]).await;
            agents.push(TestAgent { host_id, demo_dir, machine, args, agent: Some(agent), process: None });
        }
        let engines = match options.agents {
            0 => Vec::new(),
            1 => vec![Engine::machine()],
            _ => agents.iter().filter_map(|a| Some(a.machine.as_ref()?.engine())).collect(),
        };
        let stack = Stack {
            services,
            github,
            secret,
            http_addr,
            edge_addr,
            controller: Some(controller),
            controller_argv: args,
            controller_process: None,
            agents,
            engines,
            db,
            vhost,
            git_http,
            scratch,
            nats_prefix: prefix,
            test_db,
            http,
            plain: crate::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            _time_limit: time_limit,
            _own_nats: own_nats,
        };
        for agent in &stack.agents {
            let id = agent.host_id.clone();
            wait::until(&format!("host {id} in /api/hosts"), Duration::from_secs(20), || async {
                let hosts = stack.get_json("/api/hosts").await;
                hosts.as_array()?.iter().any(|h| h["id"] == id.as_str()).then_some(())
            })
            .await;
        }
        stack
    }

    /// Stop agent `index` as SIGTERM does: steps in flight finish within its shutdown
    /// grace or go back to the queue.
    pub async fn stop_agent(&mut self, index: usize) {
        if let Some(agent) = self.agents[index].agent.take() {
            agent.shutdown().await;
        }
    }

    /// Start agent `index` again, with its flags and `extra` ones.
    pub async fn start_agent(&mut self, index: usize, extra: &[&str]) {
        let agent = &mut self.agents[index];
        assert!(agent.agent.is_none(), "agent {index} is running");
        agent.agent = Some(start_agent(&agent.args, extra).await);
    }

    /// Run agent `index` as process `binary` (a test's `CARGO_BIN_EXE_fleet-agent`) with its
    /// flags and `extra` ones instead of in the test's process (stopping that one first), so
    /// that it can be sent signals. Its output goes to `agent-<index>.log` in the scratch folder.
    pub async fn start_agent_process(&mut self, index: usize, binary: &str, extra: &[&str]) {
        self.stop_agent(index).await;
        let log = self.scratch.path().join(format!("agent-{index}.log"));
        let agent = &mut self.agents[index];
        assert!(agent.process.is_none(), "agent {index} runs as a process");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = std::process::Command::new(binary)
            .args(&agent.args[1..])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("the agent starts");
        agent.process = Some(child);
    }

    /// Send SIGTERM to agent `index`'s process and wait until it exits (panicking after
    /// `deadline`): its exit status and how long it took.
    pub async fn terminate_agent_process(
        &mut self,
        index: usize,
        deadline: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let mut child = self.agents[index].process.take().expect("the agent runs as a process");
        let sent = crate::command::output(
            std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]),
            crate::command::QUICK,
        )
        .expect("kill runs");
        assert!(sent.status.success(), "kill -TERM: {}", String::from_utf8_lossy(&sent.stderr));
        let began = std::time::Instant::now();
        let status = wait::until("the agent process to exit after SIGTERM", deadline, || {
            let exited = child.try_wait().expect("waiting for the agent");
            async move { exited }
        })
        .await;
        (status, began.elapsed())
    }

    /// What agent `index`'s process printed so far.
    pub fn agent_process_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.scratch.path().join(format!("agent-{index}.log"))).unwrap_or_default()
    }

    /// The URL of this stack's database.
    pub fn test_db_url(&self) -> String {
        self.test_db.url.clone()
    }

    /// The in-process controller's state.
    pub fn controller_state(&self) -> &demofleet_controller::state::AppState {
        &self.controller.as_ref().expect("the controller runs in this process").state
    }

    /// A stack that keeps repository secrets (its keys made in `keys`), its controller and
    /// first agent run as processes (`controller`, `agent`: a test's `CARGO_BIN_EXE_…`)
    /// whose logs, with our crates' debug lines, a test can search for a secret; the agent
    /// opens secrets with the controllers' transport key.
    pub async fn start_keeping_secrets(keys: &Path, controller: &str, agent: &str) -> Stack {
        let key_file = |name: &str| {
            let path = keys.join(name);
            let key: String = (0..2).map(|_| Uuid::new_v4().simple().to_string()).collect();
            std::fs::write(&path, format!("{key}\n")).unwrap();
            path.to_str().unwrap().to_string()
        };
        let transport = key_file("transport.key");
        let controller_args = vec![
            "--secrets-key-file".into(),
            key_file("secrets.key"),
            "--secrets-transport-key-file".into(),
            transport.clone(),
        ];
        let mut stack = Stack::start(StackOptions { controller_args, ..Default::default() }).await;
        std::env::set_var("DEMOFLEET_LOG", "info,demofleet_controller=debug,demofleet_agent=debug");
        stack.run_controller_as_process(controller).await;
        stack.start_agent_process(0, agent, &["--secrets-transport-key-file", &transport]).await;
        stack
    }

    /// Stop the in-process controller and run it as process `binary` (a test's
    /// `CARGO_BIN_EXE_fleet-controller`) with the same flags and addresses, so that it can
    /// be killed.
    pub async fn run_controller_as_process(&mut self, binary: &str) {
        if let Some(controller) = self.controller.take() {
            controller.shutdown().await;
        }
        let argv = self.controller_argv_on(self.http_addr, self.edge_addr);
        let log = self.scratch.path().join("controller.log");
        self.controller_process = Some(ControllerProcess { binary: binary.into(), argv, log, child: None });
        self.start_controller().await;
    }

    /// Another controller process (`binary`, a test's `CARGO_BIN_EXE_fleet-controller`)
    /// with the same flags on ports of its own, started and ready: a replica.
    pub async fn start_replica(&self, binary: &str) -> Replica {
        let free = || std::net::SocketAddr::from(([127, 0, 0, 1], crate::services::free_port()));
        let (http_addr, edge_addr) = (free(), free());
        let argv = self.controller_argv_on(http_addr, edge_addr);
        let log = self.scratch.path().join(format!("replica-{}.log", http_addr.port()));
        let mut replica =
            Replica { http_addr, process: ControllerProcess { binary: binary.into(), argv, log, child: None } };
        replica.start().await;
        replica
    }

    /// The controller's flags, listening on `http_addr` and `edge_addr`.
    fn controller_argv_on(&self, http_addr: std::net::SocketAddr, edge_addr: std::net::SocketAddr) -> Vec<String> {
        let mut argv = self.controller_argv[1..].to_vec();
        for i in 1..argv.len() {
            match argv[i - 1].as_str() {
                "--listen" => argv[i] = http_addr.to_string(),
                "--edge-listen" => argv[i] = edge_addr.to_string(),
                _ => {}
            }
        }
        argv
    }

    /// The controller process's id, once it runs as one.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller_process.as_ref()?.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the controller process.
    pub fn kill_controller(&mut self) {
        self.controller_process.as_mut().expect("a controller process").kill();
    }

    /// Start the controller process again and wait until it is ready.
    pub async fn start_controller(&mut self) {
        self.controller_process.as_mut().expect("a controller process").start();
        ready(self.http_addr).await;
    }

    /// The containers of demo `demo_id` on the stack's engines.
    pub fn containers_of(&self, demo_id: &str) -> Vec<DemoContainer> {
        crate::host::containers_of_demo(&self.engines, demo_id)
    }

    /// The URL of the stack's own database, for a program run beside it.
    pub fn database_url(&self) -> &str {
        &self.test_db.url
    }

    /// Where fixture repositories go (matches the controller's `--git-url`).
    pub fn repos_dir(&self) -> PathBuf {
        self.scratch.path().join("repos")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// Enrol host `host_id` through `POST /api/hosts`, as an operator does before starting
    /// its agent (the controller takes heartbeats only from enrolled hosts): its agent's
    /// settings, with a broker user of its own (`amqp_url`).
    pub async fn enrol(&self, host_id: &str) -> Value {
        enrol_at(&self.http, self.http_addr, host_id).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.http.get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    /// POST `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// The value of `demofleet_channel_refused_total` for `what` (`heartbeat`, `message`,
    /// `log`) refused for `reason`, on `/metrics` (0 when absent).
    pub async fn refused(&self, what: &str, reason: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        let series = format!("demofleet_channel_refused_total{{what=\"{what}\",reason=\"{reason}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0.0)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// GET a streamed answer (a live log): its body may take up to five minutes.
    pub async fn follow(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).timeout(Duration::from_secs(300)).send().await.unwrap()
    }

    /// [`Stack::follow`], resuming after the event `last_event_id` as a browser does.
    pub async fn follow_after(&self, path: &str, last_event_id: &str) -> reqwest::Response {
        let request = self.http.get(self.url(path)).header("last-event-id", last_event_id);
        request.timeout(Duration::from_secs(300)).send().await.unwrap()
    }

    /// PUT `body` as JSON.
    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.put(self.url(path)).json(body).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.http.delete(self.url(path)).send().await.unwrap()
    }

    /// PUT a repository's settings.
    pub async fn put_settings(&self, owner: &str, repo: &str, settings: &Value) -> reqwest::Response {
        self.http.put(self.url(&format!("/api/repos/{owner}/{repo}/settings"))).json(settings).send().await.unwrap()
    }

    /// Send `body` as GitHub would: JSON, signed with the stack's secret, with a fresh
    /// delivery id. Returns the delivery id and the response.
    pub async fn deliver(&self, event: &str, body: &Value) -> (String, reqwest::Response) {
        let delivery = Uuid::new_v4().to_string();
        let response = self.deliver_raw(event, &delivery, &serde_json::to_vec(body).unwrap()).await;
        (delivery, response)
    }

    /// Send `body` signed, under a given delivery id.
    pub async fn deliver_raw(&self, event: &str, delivery: &str, body: &[u8]) -> reqwest::Response {
        let signature = sign(&self.secret, body);
        self.webhook(event, delivery, "application/json", Some(&signature), body.to_vec()).await
    }

    /// A webhook request with every part chosen by the caller.
    pub async fn webhook(
        &self,
        event: &str,
        delivery: &str,
        content_type: &str,
        signature: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/webhook/github"))
            .header("content-type", content_type)
            .header("user-agent", "GitHub-Hookshot/044aadd")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-github-hook-id", "292430182")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send().await.unwrap()
    }

    /// The demo of `name` as `/api/demos` lists it.
    pub async fn demo(&self, name: &str) -> Option<Value> {
        let demos = self.get_json("/api/demos").await;
        demos.as_array()?.iter().find(|d| d["name"] == name).cloned()
    }

    /// Wait until the demo `name` is in `state`, and return it.
    pub async fn wait_for_state(&self, name: &str, state: &str, deadline: Duration) -> Value {
        let what = format!("demo {name} to be {state}");
        let found = wait::until(&what, deadline, || async {
            let demo = self.demo(name).await?;
            if demo["state"] == "failed" && state != "failed" {
                return Some(Err(demo));
            }
            (demo["state"] == state).then_some(Ok(demo))
        })
        .await;
        found.unwrap_or_else(|demo| panic!("demo {name} failed while waiting for {state}: {demo}"))
    }

    /// GET `path` through the edge proxy with `Host: host`: status and body.
    pub async fn edge_get(&self, host: &str, path: &str) -> (u16, String) {
        let response = self.edge_request(host, path).await;
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// GET `path` through the edge proxy with `Host: host`: the whole response.
    pub async fn edge_request(&self, host: &str, path: &str) -> reqwest::Response {
        self.plain.get(format!("http://{}{path}", self.edge_addr)).header("host", host).send().await.unwrap()
    }

    /// Rows in `table` of this test's database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(&self.db).await.unwrap()
    }

    /// Stop everything and remove this test's database and vhost.
    pub async fn stop(self) {
        for mut agent in self.agents {
            if let Some(running) = agent.agent.take() {
                running.shutdown().await;
            }
        }
        if let Some(controller) = self.controller {
            controller.shutdown().await;
        }
        drop(self.controller_process);
        self.db.close().await;
        self.test_db.drop_db().await;
        self.vhost.delete().await;
    }
}

async fn start_agent(args: &[String], extra: &[&str]) -> Agent {
    let args = args.iter().cloned().chain(extra.iter().map(|s| s.to_string()));
    let config = demofleet_agent::config::Config::try_parse_from(args).expect("agent flags");
    Agent::start(config).await.expect("agent starts")
}

/// A NATS server of a stack's own on `address` (`0.0.0.0`: also on test hosts' links),
/// speaking TLS when `tls` is given, whose users are those of the controller's authorization
/// file: `options` get the controller's URL (with its user) and the file's and pid file's
/// flags. Also the controller's user and password.
pub fn authorized_nats(
    address: &str,
    tls: Option<crate::services::NatsTls>,
    options: &mut StackOptions,
) -> (crate::services::PrivateNats, (String, String)) {
    use demofleet_controller::enrolment::nats::{authorization, hash};
    let (user, password) = ("controller", Uuid::new_v4().simple().to_string());
    let first = authorization("unused", Some((user.to_string(), hash(&password).unwrap())), &[]).unwrap();
    let nats = crate::services::PrivateNats::start_authorized(address, tls, &first);
    options.nats_url = Some(nats.url_as("127.0.0.1", user, &password));
    let path = |p: PathBuf| p.to_str().expect("a UTF-8 path").to_string();
    options.controller_args.extend([
        "--nats-auth-file".to_string(),
        path(nats.auth_file()),
        "--nats-pid-file".to_string(),
        path(nats.pid_file()),
    ]);
    (nats, (user.to_string(), password))
}

/// Wait until `nats` (when the stack has a server of its own) has read its users again, so
/// that a host enrolled before the call may connect.
pub async fn nats_reloaded(nats: Option<&crate::services::PrivateNats>, before: usize) {
    let Some(nats) = nats else { return };
    wait::until("NATS reading the host's user", Duration::from_secs(10), || async {
        (nats.reloads() > before).then_some(())
    })
    .await;
}

/// The broker user and password in an enrolled host's settings (`amqp_url`).
pub fn broker_credentials(settings: &Value) -> (String, String) {
    credentials_in(settings, "amqp_url")
}

/// The NATS user and password in an enrolled host's settings (`nats_url`; with the
/// controller's DEMOFLEET_NATS_AUTH_FILE only).
pub fn nats_credentials(settings: &Value) -> (String, String) {
    credentials_in(settings, "nats_url")
}

fn credentials_in(settings: &Value, key: &str) -> (String, String) {
    let urls = settings[key].as_str().unwrap_or_else(|| panic!("no {key} in {settings}"));
    let url = reqwest::Url::parse(urls.split(',').next().unwrap_or_default()).expect("a URL");
    let password = url.password().unwrap_or_else(|| panic!("an enrolled host's {key} carries its password: {url}"));
    assert!(!url.username().is_empty(), "an enrolled host's {key} names its user: {url}");
    (url.username().to_string(), password.to_string())
}

/// Enrol host `host_id` at the controller at `addr` through `POST /api/hosts` with
/// `client` (an API token's): the agent's settings it answers.
async fn enrol_at(client: &reqwest::Client, addr: std::net::SocketAddr, host_id: &str) -> Value {
    let response = client.post(format!("http://{addr}/api/hosts")).json(&serde_json::json!({ "id": host_id })).send();
    let response = response.await.expect("POST /api/hosts");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 201, "enrolling host {host_id}: {body}");
    serde_json::from_str(&body).expect("the agent's settings")
}

/// A client that sends the stack's API token with every request and follows no redirects.
fn api_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    crate::http_client().redirect(reqwest::redirect::Policy::none()).default_headers(headers).build().unwrap()
}

/// Wait until the controller at `addr` answers `/readyz` with 200.
async fn ready(addr: std::net::SocketAddr) {
    let url = format!("http://{addr}/readyz");
    let client = crate::http_client().build().unwrap();
    wait::until(&format!("the controller at {addr} to be ready"), Duration::from_secs(60), || async {
        let response = client.get(&url).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

/// A second controller of a stack, as a process of its own.
pub struct Replica {
    pub http_addr: std::net::SocketAddr,
    process: ControllerProcess,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.child.as_ref().map(|c| c.id())
    }

    /// Start it (again) and wait until it is ready.
    pub async fn start(&mut self) {
        self.process.start();
        ready(self.http_addr).await;
    }
}

/// The controller as a process of its own (`fleet-controller`), to be killed and restarted.
struct ControllerProcess {
    binary: String,
    argv: Vec<String>,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl ControllerProcess {
    fn start(&mut self) {
        assert!(self.child.is_none(), "the controller runs");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = std::process::Command::new(&self.binary)
            .args(&self.argv)
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("the controller starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
