//! Heartbeats: every interval, this host's capacity and demo inventory on NATS.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use demofleet_common::topology;
use demofleet_common::wire::{Heartbeat, WIRE_VERSION};

use crate::{docker, AgentContext};

pub async fn run(ctx: Arc<AgentContext>, stop: CancellationToken) {
    let subject = topology::heartbeat_subject(&ctx.config.messaging.nats_prefix, &ctx.host_id);
    let mut interval = tokio::time::interval(ctx.config.heartbeat_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let inventory = docker::inventory(&ctx.docker).await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "reading the inventory failed; sending an empty one");
            Vec::new()
        });
        let beat = Heartbeat {
            version: WIRE_VERSION,
            host_id: ctx.host_id.clone(),
            address: ctx.config.host_address.clone(),
            capacity: ctx.config.capacity,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            inventory,
        };
        let payload = serde_json::to_vec(&beat).expect("heartbeats serialize");
        if let Err(err) = ctx.nats.publish(subject.clone(), payload.into()).await {
            tracing::warn!(error = %err, "sending a heartbeat failed");
        }
    }
}
