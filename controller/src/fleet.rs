//! Keeping up with the fleet: agents' heartbeats from NATS, and a periodic tick that places
//! waiting demos and refreshes the route table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{Heartbeat, WIRE_VERSION};

use crate::db::demos::{self, DeployRequest};
use crate::db::{chains, hosts, settings};
use crate::intake::{Event, Kind};
use crate::scheduler::orchestrate;
use crate::state::AppState;
use crate::traefik;

/// Record every heartbeat until `stop`.
pub async fn run_heartbeats(app: AppState, mut subscriber: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = subscriber.next() => m,
        };
        let Some(message) = message else {
            tracing::warn!("heartbeat subscription ended");
            return;
        };
        let beat: Heartbeat = match serde_json::from_slice(&message.payload) {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(subject = %message.subject, error = %err, "unreadable heartbeat dropped");
                continue;
            }
        };
        let expected = topology::heartbeat_subject(&app.config.messaging.nats_prefix, &beat.host_id);
        if beat.version != WIRE_VERSION || message.subject.as_str() != expected {
            tracing::warn!(subject = %message.subject, host = %beat.host_id, "heartbeat of another version or subject dropped");
            continue;
        }
        if let Err(err) = hosts::record_heartbeat(&app.db, &beat).await {
            tracing::warn!(host = %beat.host_id, error = %err, "recording a heartbeat failed");
        }
    }
}

/// Every tick: reconcile hosts' inventories, give waiting chains a host if one is free now,
/// stop expired demos, put idle ones to sleep, and reload the route table.
pub async fn run_tick(app: AppState, stop: CancellationToken) {
    let mut interval = tokio::time::interval(app.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciler = crate::reconcile::Reconciler::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        if let Err(err) = reconciler.run(&app).await {
            tracing::warn!(error = %err, "reconciling hosts' inventories failed");
        }
        if let Err(err) = place_waiting(&app).await {
            tracing::warn!(error = %err, "placing waiting demos failed");
        }
        if let Err(err) = stop_expired(&app).await {
            tracing::warn!(error = %err, "stopping expired demos failed");
        }
        if let Err(err) = sleep_idle(&app).await {
            tracing::warn!(error = %err, "putting idle demos to sleep failed");
        }
        if let Err(err) = app.routes.reload(&app.db).await {
            tracing::warn!(error = %err, "route table reload failed");
        }
        if let Some(path) = &app.config.traefik_file {
            if let Err(err) = write_traefik_file(&app, path).await {
                tracing::warn!(error = %err, file = %path.display(), "writing Traefik's configuration failed");
            }
        }
    }
}

/// Tear down demos whose repository's TTL ran out since their last push.
async fn stop_expired(app: &AppState) -> sqlx::Result<()> {
    for id in settings::expired(&app.db).await? {
        let mut tx = app.db.begin().await?;
        let Some(demo) = demos::get_for_update_opt(&mut *tx, id).await? else { continue };
        if demo.desired != "running" {
            continue;
        }
        tracing::info!(demo = %demo.name, "TTL since the last push ran out; stopping");
        let event = Event::pull_request(Kind::Teardown, DeployRequest::of(&demo), "ttl", None);
        let (_, effects) = orchestrate::apply(&mut tx, app, &event).await?;
        tx.commit().await?;
        app.apply(effects).await;
    }
    Ok(())
}

/// Note the requests the edge passed since the last tick, then put the demos that had none
/// for their idle time to sleep.
async fn sleep_idle(app: &AppState) -> sqlx::Result<()> {
    let visits = app.routes.take_requests();
    if !visits.is_empty() {
        demos::record_requests(&app.db, &visits).await?;
    }
    for id in demos::idle(&app.db, app.config.idle_sleep_seconds()).await? {
        app.transact(async |tx| Ok::<_, sqlx::Error>(((), orchestrate::sleep(tx, app, id).await?))).await?;
    }
    Ok(())
}

/// How long a wake request for a demo makes the next ones for it wait: a waking page
/// reloads every few seconds, and each reload asks again.
const WAKE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Wake the sleeping demos that requests at the edge asked for, until `stop`.
pub async fn run_wakes(app: AppState, mut asked: mpsc::UnboundedReceiver<Uuid>, stop: CancellationToken) {
    let mut recent: HashMap<Uuid, Instant> = HashMap::new();
    loop {
        let demo = tokio::select! {
            _ = stop.cancelled() => return,
            d = asked.recv() => match d {
                Some(d) => d,
                None => return,
            },
        };
        let now = Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < WAKE_DEBOUNCE);
        if recent.contains_key(&demo) {
            continue;
        }
        recent.insert(demo, now);
        let woken = app.transact(async |tx| Ok::<_, sqlx::Error>(((), orchestrate::wake(tx, &app, demo).await?))).await;
        if let Err(err) = woken {
            tracing::warn!(%demo, error = %err, "waking a demo failed; the next request asks again");
        }
    }
}

async fn write_traefik_file(app: &AppState, path: &std::path::Path) -> anyhow::Result<()> {
    let config = traefik::current(app).await?;
    if traefik::write_if_changed(path, &config).await? {
        tracing::info!(file = %path.display(), "Traefik configuration written");
    }
    Ok(())
}

async fn place_waiting(app: &AppState) -> sqlx::Result<()> {
    for chain in chains::waiting(&app.db, 100).await? {
        app.transact(async |tx| Ok::<_, sqlx::Error>(((), orchestrate::advance(tx, app, chain).await?))).await?;
    }
    Ok(())
}
