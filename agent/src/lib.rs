//! The demofleet agent: a daemon on each Docker host. It takes the steps of task chains
//! from its own RabbitMQ queue (checkout, build, launch, health, stop), runs them against
//! the local Docker Engine, reports results, and sends heartbeats with its inventory.
//! It holds no database credentials.
//!
//! # Layout
//! - [`config`]: settings (flags and `DEMOFLEET_*` variables).
//! - [`worker`]: consuming steps and publishing results.
//! - [`steps`]: what each step does.
//! - [`git`]: checking out the head commit.
//! - [`demo_config`]: `.demofleet.toml` and what the agent builds and runs.
//! - [`compose`]: compose mode: a repository's compose file read as a plan of services.
//! - [`services`]: running a compose plan's services, volumes and seed on Docker.
//! - [`confine`]: what a demo container may not do: capabilities, user, log size.
//! - [`docker`]: build, run, inspect and remove demo containers and images.
//! - [`dockerfile`]: refusing Dockerfiles that name demo images.
//! - [`subnets`]: demo networks' subnets from a pool of our own.
//! - [`legacy`]: the `./run serve` mode of the service demofleet replaces.
//! - [`heartbeat`]: the periodic heartbeat with inventory.
//! - [`log_lines`]: demo log lines to the controller, in order.
//! - [`validate`]: every field of a step message checked before the agent acts on it.

pub mod compose;
pub mod config;
pub mod confine;
pub mod demo_config;
pub mod docker;
pub mod dockerfile;
pub mod git;
pub mod heartbeat;
pub mod legacy;
pub mod log_lines;
pub mod services;
pub mod steps;
pub mod subnets;
pub use demofleet_common::validate;
pub mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use uuid::Uuid;

use config::Config;
use demofleet_common::topology;
use demofleet_common::wire::{DemoSpec, NewestGenerations};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every task of the agent shares.
pub struct AgentContext {
    /// Settings.
    pub config: Config,
    /// This host's id.
    pub host_id: String,
    /// The broker user this agent publishes as, and the one the controller's messages come from.
    pub amqp_user: String,
    pub controller_user: String,
    /// The local Docker Engine.
    pub docker: bollard::Docker,
    /// NATS, for heartbeats and logs.
    pub nats: async_nats::Client,
    /// Demo log lines on their way over NATS.
    log_lines: log_lines::LogLines,
    /// The newest generation seen per demo; older steps are dropped.
    newest: NewestGenerations,
    /// One lock per demo so its steps never overlap.
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl AgentContext {
    fn demo_lock(&self, demo: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("lock map").entry(demo).or_default().clone()
    }

    /// Send a line that `step` printed to the demo's log.
    pub fn log(&self, spec: &DemoSpec, step: &str, line: &str) {
        let subject = topology::log_subject(&self.config.messaging.nats_prefix, &self.host_id, &spec.id);
        self.log_lines.send(subject, spec.generation, step, line);
    }

    /// Relay the output of the container `spec` just launched or woke, from `since` (Unix
    /// seconds, 0: all of it), to the demo's live log in the background while it runs.
    pub fn follow_container(&self, spec: &DemoSpec, since: i32) {
        self.follow(spec, docker::container_name(spec), None, since);
    }

    /// The same for the container `container` of a compose demo's other service `service`:
    /// its lines start with `<service> | `.
    pub fn follow_service(&self, spec: &DemoSpec, container: String, service: &str, since: i32) {
        self.follow(spec, container, Some(format!("{service} | ")), since);
    }

    fn follow(&self, spec: &DemoSpec, container: String, prefix: Option<String>, since: i32) {
        let (docker, lines, generation) = (self.docker.clone(), self.log_lines.clone(), spec.generation);
        let subject = topology::log_subject(&self.config.messaging.nats_prefix, &self.host_id, &spec.id);
        tokio::spawn(async move {
            docker::follow_logs(&docker, &container, since, |line| match &prefix {
                Some(prefix) => lines.send(subject.clone(), generation, "run", &format!("{prefix}{line}")),
                None => lines.send(subject.clone(), generation, "run", line),
            })
            .await;
        });
    }
}

/// A started agent and the handle that stops it.
pub struct Agent {
    pub context: Arc<AgentContext>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Agent {
    /// Connect to Docker and NATS, then start consuming steps and sending heartbeats.
    pub async fn start(config: Config) -> anyhow::Result<Agent> {
        let host_id = config.host_id()?;
        config.messaging.validate()?;
        let docker = config.docker().context("connecting to Docker")?;
        docker.ping().await.context("the Docker Engine does not answer")?;
        let nats = config.messaging.connect_nats().await.context("connecting to NATS (DEMOFLEET_NATS_URL)")?;
        tokio::fs::create_dir_all(&config.demo_dir)
            .await
            .with_context(|| format!("creating {}", config.demo_dir.display()))?;
        let (amqp_user, controller_user) = (config.messaging.amqp_user(), config.controller_amqp_user());
        let context = Arc::new(AgentContext {
            config,
            host_id,
            amqp_user,
            controller_user,
            docker,
            log_lines: log_lines::LogLines::start(nats.clone()),
            nats,
            newest: NewestGenerations::default(),
            locks: Mutex::default(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(worker::run(context.clone(), stop.clone()));
        tasks.spawn(heartbeat::run(context.clone(), stop.clone()));
        tasks.close();
        tracing::info!(host = %context.host_id, "agent started");
        Ok(Agent { context, stop, tasks })
    }

    /// Stop taking steps, let running ones finish, and wait for every task.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// Run until `shutdown` resolves.
/// The `demofleet-agent` program: flags and environment, logs to stderr (`DEMOFLEET_LOG`),
/// runs until SIGTERM or SIGINT.
pub async fn main() -> anyhow::Result<()> {
    use clap::Parser;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    run(Config::parse(), demofleet_common::signal::shutdown()).await
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let agent = Agent::start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}
