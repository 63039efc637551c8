//! Taking steps off this host's queue: at most `concurrency` at a time, one at a time per
//! demo, results published (confirmed) before the step's message is acknowledged.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use demofleet_common::wire::{Cleanup, StepMessage, StepOutcome, StepResult, KIND_CLEANUP, WIRE_VERSION};
use demofleet_common::{consume, retry, topology};

use crate::{steps, AgentContext};

/// Consume this host's queue until `stop`, reconnecting after broker failures.
pub async fn run(ctx: Arc<AgentContext>, stop: CancellationToken) {
    let mut policy = retry::reconnect_policy();
    loop {
        match consume(&ctx, &stop, &mut policy).await {
            Ok(()) => return,
            Err(err) => tracing::warn!(error = %err, "step consumer stopped; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry::next_wait(&mut policy)) => {}
        }
    }
}

/// Which RabbitMQ node of a cluster to try next; reconnects go round them.
static NODE_TURN: AtomicUsize = AtomicUsize::new(0);

async fn consume(
    ctx: &Arc<AgentContext>,
    stop: &CancellationToken,
    policy: &mut ExponentialBackoff,
) -> anyhow::Result<()> {
    let connection = ctx.config.messaging.connect_amqp(&NODE_TURN).await?;
    let channel = connection.create_channel().await?;
    let queue = topology::host_queue(&ctx.host_id);
    let kind = ctx.config.messaging.queue_type();
    topology::declare_queue_as(&channel, &queue, kind).await?;
    topology::declare_queue_as(&channel, topology::CONTROLLER_QUEUE, kind).await?;
    channel.basic_qos(ctx.config.concurrency, BasicQosOptions::default()).await?;
    let results = connection.create_channel().await?;
    results.confirm_select(ConfirmSelectOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            ctx.host_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(%queue, "consuming steps");
    policy.reset();
    let concurrency = usize::from(ctx.config.concurrency);
    let consumed = consume::bounded(consumer, stop, concurrency, ctx.config.shutdown_grace, |delivery| {
        let (ctx, results) = (ctx.clone(), results.clone());
        async move {
            if let Err(err) = handle(&ctx, &results, delivery).await {
                tracing::warn!(error = %err, "step not acknowledged; the broker will redeliver it");
            }
        }
    })
    .await;
    // Steps taken but not acknowledged (abandoned, or prefetched) go back to the queue now.
    let _ = connection.close(200, "agent stopping".into()).await;
    consumed?;
    Ok(())
}

async fn handle(ctx: &AgentContext, results: &Channel, delivery: Delivery) -> anyhow::Result<()> {
    // Only the controller gives work: any other publisher (another host's agent) is refused
    // before a byte of its message is read.
    let sender = delivery.properties.user_id().as_ref().map(|u| u.as_str());
    if sender != Some(ctx.controller_user.as_str()) {
        tracing::error!(sender, controller = %ctx.controller_user, "message not sent by the controller's broker user dropped");
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(KIND_CLEANUP) {
        return clean_up(ctx, delivery).await;
    }
    let message: StepMessage = match serde_json::from_slice(&delivery.data) {
        Ok(m) => m,
        Err(err) => {
            tracing::error!(error = %err, "unreadable step message dropped");
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
    };
    if message.version != WIRE_VERSION || message.host_id != ctx.host_id {
        tracing::error!(version = message.version, host = %message.host_id, "step message for another version or host dropped");
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    // Before anything else, the generation seen included: a forged generation must not
    // make the demo's real steps look superseded.
    if let Err(refused) = crate::validate::spec(&message.demo, ctx.config.git_local_root.as_deref()) {
        tracing::error!(error = %refused, step = message.step.as_str(), "step message refused");
        let outcome = StepOutcome::Failed { error: refused.to_string(), retryable: false };
        topology::publish_result(
            results,
            &ctx.amqp_user,
            &StepResult::of(&message, &ctx.host_id, Default::default(), outcome),
        )
        .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let demo_lock = ctx.demo_lock(message.demo.id);
    let _guard = demo_lock.lock().await;
    if ctx.newest.is_superseded(message.demo.id, message.demo.generation) {
        tracing::debug!(demo = %message.demo.name, "step of a superseded generation dropped");
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    }
    let started = std::time::Instant::now();
    let outcome = steps::run(ctx, message.step, &message.demo).await;
    let result = StepResult::of(&message, &ctx.host_id, started.elapsed(), outcome);
    topology::publish_result(results, &ctx.amqp_user, &result).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Remove the orphaned containers the controller names; a failure leaves the message for
/// the broker to redeliver.
async fn clean_up(ctx: &AgentContext, delivery: Delivery) -> anyhow::Result<()> {
    match serde_json::from_slice::<Cleanup>(&delivery.data) {
        Ok(cleanup) if cleanup.version == WIRE_VERSION && cleanup.host_id == ctx.host_id => {
            if let Some(refused) = cleanup.containers.iter().find_map(|id| crate::validate::container_id(id).err()) {
                tracing::error!(error = %refused, "cleanup message dropped");
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
            let removed = crate::docker::remove_orphans(&ctx.docker, &ctx.host_id, &cleanup.containers).await?;
            tracing::info!(removed, asked = cleanup.containers.len(), "orphaned demo containers removed");
        }
        Ok(cleanup) => {
            tracing::error!(version = cleanup.version, host = %cleanup.host_id, "cleanup for another version or host dropped")
        }
        Err(err) => tracing::error!(error = %err, "unreadable cleanup message dropped"),
    }
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}
