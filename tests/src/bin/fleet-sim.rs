//! Simulated agents for scale benchmarks (`scripts/bench`, part `scale`): N hosts in one
//! process, each speaking the agent's protocol as `demofleet-agent` does — its own durable
//! host queue, steps taken with the agent's prefetch and answered with confirmed results
//! before the ack, cleanups obeyed, and a heartbeat with its inventory every interval — but
//! with no Docker, git or demo behind it: every step succeeds at once, and the inventory
//! is the made-up containers the steps "launched".
//!
//! One AMQP channel pair per agent over a few shared connections (made again after a
//! broker failure, each agent then consuming again with the agent's back-off), one NATS
//! connection for all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use clap::Parser;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use demofleet_common::duration::parse_duration;
use demofleet_common::messaging::Messaging;
use demofleet_common::wire::{
    Cleanup, DemoSpec, Disk, Heartbeat, InventoryItem, NewestGenerations, Step, StepMessage, StepOutcome, StepOutput,
    StepResult, KIND_CLEANUP, WIRE_VERSION,
};
use demofleet_common::{consume, retry, topology};

/// Simulated agents: N hosts on one broker and NATS server.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    messaging: Messaging,

    /// How many agents (hosts) to simulate.
    #[arg(long, default_value_t = 100)]
    agents: u32,

    /// Host ids are `<prefix>-001`, `<prefix>-002`, …
    #[arg(long, default_value = "sim")]
    host_prefix: String,

    /// How many demos each host may run.
    #[arg(long, default_value_t = 60)]
    capacity: u32,

    /// Steps each agent takes at once (the agent's `DEMOFLEET_CONCURRENCY`).
    #[arg(long, default_value_t = 4)]
    concurrency: u16,

    /// How often each agent sends a heartbeat; the agents' first beats are spread over one interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// AMQP connections the agents share.
    #[arg(long, default_value_t = 4)]
    connections: u32,

    /// Containers the hosts run from the start, one a line: `host demo generation port
    /// running|exited` (as `bench-history --inventory` writes them).
    #[arg(long)]
    inventory: Option<std::path::PathBuf>,
}

/// Steps answered and heartbeats sent by all agents, for the summary at exit.
#[derive(Default)]
struct Counters {
    steps: AtomicU64,
    heartbeats: AtomicU64,
}

/// A container the simulated host "runs".
#[derive(Debug, Clone)]
struct Container {
    generation: i64,
    id: String,
    port: u16,
    running: bool,
}

/// One simulated host.
struct SimAgent {
    index: u32,
    host_id: String,
    address: String,
    capacity: u32,
    /// The broker user results are sent as.
    amqp_user: String,
    /// Containers by demo: what the inventory reports.
    demos: Mutex<HashMap<Uuid, Vec<Container>>>,
    /// The newest generation seen per demo; older steps are dropped, as the agent does.
    newest: NewestGenerations,
    next_port: AtomicU32,
}

impl SimAgent {
    fn new(index: u32, args: &Args) -> SimAgent {
        SimAgent {
            amqp_user: args.messaging.amqp_user(),
            index,
            host_id: format!("{}-{:03}", args.host_prefix, index + 1),
            address: format!("10.99.{}.{}", index / 250, index % 250 + 1),
            capacity: args.capacity,
            demos: Mutex::default(),
            newest: NewestGenerations::default(),
            next_port: AtomicU32::new(0),
        }
    }

    /// Run `step` on the simulated host: bookkeeping of containers, nothing else.
    fn run(&self, step: Step, spec: &DemoSpec) -> StepOutcome {
        let mut demos = self.demos.lock().expect("container map");
        let mut output = StepOutput::default();
        match step {
            Step::Checkout => {}
            Step::Build => output.image = Some(demofleet_agent::docker::new_image_tag(spec, None)),
            Step::Launch => {
                let containers = demos.entry(spec.id).or_default();
                // Launching again (a redelivered step) finds the container it made.
                let container = match containers.iter().position(|c| c.generation == spec.generation) {
                    Some(i) => &containers[i],
                    None => {
                        let port = 20_000 + self.next_port.fetch_add(1, Ordering::Relaxed) % 40_000;
                        let id = format!("{}{:016x}{:016x}", spec.id.simple(), spec.generation, self.index);
                        let port = u16::try_from(port).expect("ports stay below 60,000");
                        containers.push(Container { generation: spec.generation, id, port, running: true });
                        containers.last().expect("just pushed")
                    }
                };
                output.container_id = Some(container.id.clone());
                output.host_port = Some(container.port);
            }
            Step::Health => {
                let container = demos.get(&spec.id).and_then(|cs| cs.iter().find(|c| c.generation == spec.generation));
                match container {
                    Some(c) if c.running => output.host_port = Some(c.port),
                    _ => return failed(format!("no running container of generation {}", spec.generation), true),
                }
            }
            Step::Retire => {
                if let Some(containers) = demos.get_mut(&spec.id) {
                    containers.retain(|c| c.generation >= spec.generation);
                }
            }
            Step::Stop => {
                demos.remove(&spec.id);
            }
            Step::Sleep | Step::Wake => {
                for container in demos.get_mut(&spec.id).into_iter().flatten() {
                    container.running = step == Step::Wake;
                }
            }
            Step::Authorize | Step::Route | Step::Unroute => {
                return failed(format!("{} is a controller step", step.as_str()), false);
            }
        }
        StepOutcome::Succeeded(output)
    }

    /// A container the host already runs (or keeps stopped) when the simulator starts.
    fn adopt(&self, demo: Uuid, generation: i64, port: u16, running: bool) {
        let id = format!("{}{:016x}{:016x}", demo.simple(), generation, self.index);
        let mut demos = self.demos.lock().expect("container map");
        demos.entry(demo).or_default().push(Container { generation, id, port, running });
    }

    fn clean_up(&self, ids: &[String]) {
        let mut demos = self.demos.lock().expect("container map");
        for containers in demos.values_mut() {
            containers.retain(|c| !ids.contains(&c.id));
        }
        demos.retain(|_, containers| !containers.is_empty());
    }

    fn heartbeat(&self) -> Heartbeat {
        let demos = self.demos.lock().expect("container map");
        let inventory = demos
            .iter()
            .flat_map(|(demo, containers)| {
                containers.iter().map(|c| InventoryItem {
                    demo_id: *demo,
                    generation: c.generation,
                    container_id: c.id.clone(),
                    state: if c.running { "running" } else { "exited" }.to_string(),
                })
            })
            .collect();
        Heartbeat {
            version: WIRE_VERSION,
            host_id: self.host_id.clone(),
            address: self.address.clone(),
            capacity: self.capacity,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            inventory,
            disk: Some(Disk { total_bytes: 200 << 30, free_bytes: 150 << 30 }),
        }
    }
}

fn failed(error: String, retryable: bool) -> StepOutcome {
    StepOutcome::Failed { error, retryable }
}

// One thread: the simulator should leave the controller most of the machine.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.agents >= 1 && args.connections >= 1, "--agents and --connections must be at least 1");
    args.messaging.validate()?;
    let nats = args.messaging.connect_nats().await?;
    let shared = Arc::new(Shared {
        connections: Connections::new(args.messaging.clone(), args.connections.min(args.agents)),
        concurrency: args.concurrency,
        counters: Counters::default(),
    });
    // Fail at once on a wrong URL or credentials; later failures are retried.
    shared.connections.channel(0).await?.close(200, "checked".into()).await?;
    let agents: Vec<Arc<SimAgent>> = (0..args.agents).map(|index| Arc::new(SimAgent::new(index, &args))).collect();
    if let Some(path) = &args.inventory {
        adopt_inventory(&agents, path)?;
    }
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    for (index, agent) in (0u32..).zip(agents) {
        tasks.spawn(run_worker(agent.clone(), shared.clone(), stop.clone()));
        // The first beats are spread over one interval, as independent agents' are.
        let offset = args.heartbeat_interval.mul_f64(f64::from(index) / f64::from(args.agents));
        let subject = topology::heartbeat_subject(&args.messaging.nats_prefix, &agent.host_id);
        let beat =
            heartbeats(agent, nats.clone(), subject, args.heartbeat_interval, offset, stop.clone(), shared.clone());
        tasks.spawn(beat);
    }
    tasks.close();
    tracing::info!(agents = args.agents, capacity = args.capacity, "simulated agents started");

    demofleet_common::signal::shutdown().await;
    stop.cancel();
    tasks.wait().await;
    shared.connections.close().await;
    tracing::info!(
        steps = shared.counters.steps.load(Ordering::Relaxed),
        heartbeats = shared.counters.heartbeats.load(Ordering::Relaxed),
        "simulated agents stopped"
    );
    Ok(())
}

/// Give each host the containers `path` lists for it (see `--inventory`).
fn adopt_inventory(agents: &[Arc<SimAgent>], path: &std::path::Path) -> anyhow::Result<()> {
    let by_host: HashMap<&str, &SimAgent> = agents.iter().map(|a| (a.host_id.as_str(), a.as_ref())).collect();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut adopted = 0;
    for (number, line) in (1..).zip(text.lines().filter(|l| !l.trim().is_empty())) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [host, demo, generation, port, state @ ("running" | "exited")] => Some((
                *host,
                demo.parse::<Uuid>().ok(),
                generation.parse().ok(),
                port.parse().ok(),
                *state == "running",
            )),
            _ => None,
        };
        let Some((host, Some(demo), Some(generation), Some(port), running)) = parsed else {
            anyhow::bail!(
                "{}:{number}: expected `host demo generation port running|exited`, got {line:?}",
                path.display()
            );
        };
        let agent = by_host
            .get(host)
            .with_context(|| format!("{}:{number}: host {host} is not one of the simulated hosts", path.display()))?;
        agent.adopt(demo, generation, port, running);
        adopted += 1;
    }
    tracing::info!(containers = adopted, "inventory adopted");
    Ok(())
}

/// What every simulated agent uses.
struct Shared {
    connections: Connections,
    /// Steps each agent takes at once.
    concurrency: u16,
    counters: Counters,
}

/// The AMQP connections the agents share, each made again once it has failed.
struct Connections {
    messaging: Messaging,
    slots: Vec<tokio::sync::Mutex<Option<Connection>>>,
    /// Which node of a cluster to try next.
    turn: AtomicUsize,
}

impl Connections {
    fn new(messaging: Messaging, count: u32) -> Connections {
        let slots = (0..count).map(|_| tokio::sync::Mutex::new(None)).collect();
        Connections { messaging, slots, turn: AtomicUsize::new(0) }
    }

    /// A channel on agent `index`'s connection, connecting first when it is down.
    async fn channel(&self, index: u32) -> lapin::Result<Channel> {
        let mut slot = self.slots[index as usize % self.slots.len()].lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| c.status().connected()) {
            return connection.create_channel().await;
        }
        let connection = self.messaging.connect_amqp(&self.turn).await?;
        let channel = connection.create_channel().await?;
        *slot = Some(connection);
        Ok(channel)
    }

    async fn close(&self) {
        for slot in &self.slots {
            if let Some(connection) = slot.lock().await.take() {
                let _ = connection.close(200, "simulator stopping".into()).await;
            }
        }
    }
}

/// Consume the agent's queue until `stop`, reconnecting after broker failures, as the
/// agent's worker does.
async fn run_worker(agent: Arc<SimAgent>, shared: Arc<Shared>, stop: CancellationToken) {
    let mut policy = retry::reconnect_policy();
    loop {
        match consume_steps(&agent, &shared, &stop, &mut policy).await {
            Ok(()) => return,
            Err(err) => tracing::warn!(host = %agent.host_id, error = %err, "step consumer stopped; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry::next_wait(&mut policy)) => {}
        }
    }
}

async fn consume_steps(
    agent: &Arc<SimAgent>,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    policy: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let channel = shared.connections.channel(agent.index).await?;
    let queue = topology::host_queue(&agent.host_id);
    let kind = shared.connections.messaging.queue_type();
    topology::declare_queue_as(&channel, &queue, kind).await?;
    topology::declare_queue_as(&channel, topology::CONTROLLER_QUEUE, kind).await?;
    channel.basic_qos(shared.concurrency, BasicQosOptions::default()).await?;
    let results = shared.connections.channel(agent.index).await?;
    results.confirm_select(ConfirmSelectOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            agent.host_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    policy.reset();
    let consumed =
        consume::bounded(consumer, stop, usize::from(shared.concurrency), Duration::from_secs(5), |delivery| {
            let (agent, shared, results) = (agent.clone(), shared.clone(), results.clone());
            async move {
                match handle(&agent, &results, delivery).await {
                    Ok(()) => _ = shared.counters.steps.fetch_add(1, Ordering::Relaxed),
                    Err(err) => tracing::warn!(host = %agent.host_id, error = %err, "step not acknowledged"),
                }
            }
        })
        .await;
    // Steps taken but not acknowledged go back to the queue with the channel.
    let _ = channel.close(200, "consumer stopping".into()).await;
    let _ = results.close(200, "consumer stopping".into()).await;
    consumed?;
    Ok(())
}

/// As the agent's worker: a cleanup or a step; the result published and confirmed before
/// the step's message is acknowledged.
async fn handle(agent: &SimAgent, results: &Channel, delivery: Delivery) -> anyhow::Result<()> {
    if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(KIND_CLEANUP) {
        match serde_json::from_slice::<Cleanup>(&delivery.data) {
            Ok(cleanup) if cleanup.version == WIRE_VERSION && cleanup.host_id == agent.host_id => {
                agent.clean_up(&cleanup.containers)
            }
            _ => tracing::error!(host = %agent.host_id, "cleanup for another version or host, or unreadable, dropped"),
        }
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let message = match serde_json::from_slice::<StepMessage>(&delivery.data) {
        Ok(m) if m.version == WIRE_VERSION && m.host_id == agent.host_id => m,
        _ => {
            tracing::error!(host = %agent.host_id, "step for another version or host, or unreadable, dropped");
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    if agent.newest.is_superseded(message.demo.id, message.demo.generation) {
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let started = Instant::now();
    let outcome = agent.run(message.step, &message.demo);
    let result = StepResult::of(&message, &agent.host_id, started.elapsed(), outcome);
    topology::publish_result(results, &agent.amqp_user, &result).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Every `interval` after `offset`, the agent's heartbeat on `subject`, until `stop`.
async fn heartbeats(
    agent: Arc<SimAgent>,
    nats: async_nats::Client,
    subject: String,
    interval: Duration,
    offset: Duration,
    stop: CancellationToken,
    shared: Arc<Shared>,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(offset) => {}
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let payload = serde_json::to_vec(&agent.heartbeat()).expect("heartbeats serialize");
        match nats.publish(subject.clone(), payload.into()).await {
            Ok(()) => _ = shared.counters.heartbeats.fetch_add(1, Ordering::Relaxed),
            Err(err) => tracing::warn!(host = %agent.host_id, error = %err, "sending a heartbeat failed"),
        }
    }
}
