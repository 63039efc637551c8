//! Keeping up with the fleet: agents' heartbeats from NATS, and a periodic tick that places
//! waiting demos and refreshes the route table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use demofleet_common::topology;
use demofleet_common::wire::{Heartbeat, Step, StepOutcome, StepResult, WIRE_VERSION};

use crate::config::Config;
use crate::db::demos::{self, DeployRequest};
use crate::db::events::{Event, Kind};
use crate::db::{chains, hosts, settings};
use crate::scheduler::Scheduler;
use crate::traefik;

/// What keeping up with the fleet needs.
#[derive(Clone)]
pub struct Fleet {
    /// Starts and advances chains; its pool is the state of record.
    pub scheduler: Scheduler,
    pub config: Arc<Config>,
}

/// Why a heartbeat changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a heartbeat of any version.
    Unreadable,
    /// A heartbeat of another version of the wire format.
    WrongVersion,
    /// A heartbeat naming another host than its subject does.
    WrongSubject,
    /// From a host no enrolment names.
    UnknownHost,
    /// From a host whose enrolment is revoked.
    RevokedHost,
}

impl Refused {
    /// The `reason` label of `demofleet_channel_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Unreadable => "unreadable",
            Refused::WrongVersion => "wrong_version",
            Refused::WrongSubject => "wrong_subject",
            Refused::UnknownHost => "unknown_host",
            Refused::RevokedHost => "revoked_host",
        }
    }
}

/// The heartbeat in `payload`, received on `subject`, if it is one of this version sent on
/// its own host's subject under `prefix`; else why not. Whether the host may send it is the
/// state of record's to say.
pub fn read_heartbeat(prefix: &str, subject: &str, payload: &[u8]) -> Result<Heartbeat, Refused> {
    let beat: Heartbeat = serde_json::from_slice(payload).map_err(|_| Refused::Unreadable)?;
    if beat.version != WIRE_VERSION {
        return Err(Refused::WrongVersion);
    }
    if subject != topology::heartbeat_subject(prefix, &beat.host_id) {
        return Err(Refused::WrongSubject);
    }
    Ok(beat)
}

/// Record every heartbeat from a host with a live enrolment until `stop`. Any other is
/// refused: counted, and audited (and logged as a warning) the first time its host, or
/// its subject when it names no host of its own, is refused for that reason.
pub async fn run_heartbeats(app: Fleet, mut subscriber: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            m = subscriber.next() => m,
        };
        let Some(message) = message else {
            tracing::warn!("heartbeat subscription ended");
            return;
        };
        let began = Instant::now();
        let subject = message.subject.as_str();
        let beat = match read_heartbeat(&app.config.messaging.nats_prefix, subject, &message.payload) {
            Ok(beat) => beat,
            Err(why) => {
                refuse(&app, why, subject, None).await;
                continue;
            }
        };
        match hosts::record_heartbeat(&app.scheduler.db, &beat).await {
            Ok(hosts::Heard::Recorded) => {}
            Ok(hosts::Heard::Unknown) => refuse(&app, Refused::UnknownHost, subject, Some(&beat.host_id)).await,
            Ok(hosts::Heard::Revoked) => refuse(&app, Refused::RevokedHost, subject, Some(&beat.host_id)).await,
            Err(err) => tracing::warn!(host = %beat.host_id, error = %err, "recording a heartbeat failed"),
        }
        app.scheduler.timings.heartbeat.observe(began.elapsed());
    }
}

/// Count a refused heartbeat; audit it if its source (its host, or its subject when it names
/// no host of its own) is refused for that reason for the first time.
async fn refuse(app: &Fleet, why: Refused, subject: &str, host: Option<&str>) {
    let detail = serde_json::json!({ "subject": subject, "host": host });
    app.scheduler.refusals.refuse(&app.scheduler.db, "heartbeat", why.reason(), host.unwrap_or(subject), detail).await;
}

/// Every tick, on the replica holding the fleet lease: reconcile hosts' inventories, move
/// demos off drained and silent hosts, begin the generations no starter began and give
/// waiting chains a host if one is free now, stop
/// expired demos, put idle ones to sleep, write Traefik's file, count the history up to a
/// new mark and remove a batch of what outlived the retention. (Each replica's route table
/// follows the database's changes on its own: [`crate::edge::follow`].)
pub async fn run_tick(app: Fleet, stop: CancellationToken) {
    let mut interval = tokio::time::interval(app.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lease = crate::lease::Lease::new(app.scheduler.db.clone());
    let mut reconciler = crate::reconcile::Reconciler::default();
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        if !lease.hold().await {
            // Differences seen by another holder are its own; start afresh when leading.
            reconciler = crate::reconcile::Reconciler::default();
            continue;
        }
        if let Err(err) = reconciler.run(&app.scheduler, &app.config).await {
            tracing::warn!(error = %err, "reconciling hosts' inventories failed");
        }
        // Hosts look down until their first heartbeat reaches a controller just started.
        let trust_silence = started.elapsed() > app.config.host_timeout;
        if let Err(err) = move_off(&app, trust_silence).await {
            tracing::warn!(error = %err, "moving demos off draining or silent hosts failed");
        }
        if let Err(err) = place_waiting(&app).await {
            tracing::warn!(error = %err, "placing waiting demos failed");
        }
        if let Err(err) = retry_unanswered(&app).await {
            tracing::warn!(error = %err, "retrying unanswered steps failed");
        }
        if let Err(err) = hosts::fold_load(&app.scheduler.db).await {
            tracing::warn!(error = %err, "folding hosts' numbers of demos failed");
        }
        if let Err(err) = stop_expired(&app).await {
            tracing::warn!(error = %err, "stopping expired demos failed");
        }
        if let Err(err) = sleep_idle(&app).await {
            tracing::warn!(error = %err, "putting idle demos to sleep failed");
        }
        if let Some(path) = &app.config.traefik_file {
            if let Err(err) = write_traefik_file(&app, path).await {
                tracing::warn!(error = %err, file = %path.display(), "writing Traefik's configuration failed");
            }
        }
        if let Err(err) = crate::counts::count_up(&app.scheduler.db).await {
            tracing::warn!(error = %err, "counting the history up to a new mark failed");
        }
        if !app.config.retention.is_zero() {
            match crate::retention::prune(&app.scheduler.db, app.config.retention, app.config.retention_batch).await {
                Ok(pruned) if pruned != crate::retention::Pruned::default() => {
                    tracing::debug!(
                        chains = pruned.chains,
                        deliveries = pruned.deliveries,
                        log_lines = pruned.log_lines,
                        "removed what outlived the retention"
                    )
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "removing what outlived the retention failed"),
            }
        }
    }
}

/// Tear down demos whose repository's TTL ran out since their last push.
async fn stop_expired(app: &Fleet) -> sqlx::Result<()> {
    let scheduler = &app.scheduler;
    for id in settings::expired(&scheduler.db).await? {
        let mut tx = scheduler.db.begin().await?;
        let Some(demo) = demos::get_for_update_opt(&mut *tx, id).await? else { continue };
        if demo.desired != "running" {
            continue;
        }
        tracing::info!(demo = %demo.name, "TTL since the last push ran out; stopping");
        let event = Event::pull_request(Kind::Teardown, DeployRequest::of(&demo), "ttl", None);
        let (_, effects) = scheduler.apply_event(&mut tx, &event).await?;
        tx.commit().await?;
        scheduler.apply(effects).await;
    }
    Ok(())
}

/// Note the requests the edge passed since the last tick, then put the demos that had none
/// for their idle time to sleep.
async fn sleep_idle(app: &Fleet) -> sqlx::Result<()> {
    let scheduler = &app.scheduler;
    let visits = scheduler.routes.take_requests();
    if !visits.is_empty() {
        demos::record_requests(&scheduler.db, &visits).await?;
    }
    for id in demos::idle(&scheduler.db, app.config.idle_sleep_seconds()).await? {
        scheduler.transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.sleep(tx, id).await?))).await?;
    }
    Ok(())
}

/// How long a wake request for a demo makes the next ones for it wait: a waking page
/// reloads every few seconds, and each reload asks again.
const WAKE_DEBOUNCE: Duration = Duration::from_secs(1);

/// Wake the sleeping demos that requests at the edge asked for, until `stop`.
pub async fn run_wakes(scheduler: Scheduler, mut asked: mpsc::UnboundedReceiver<Uuid>, stop: CancellationToken) {
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
        let woken = scheduler.transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.wake(tx, demo).await?))).await;
        if let Err(err) = woken {
            tracing::warn!(%demo, error = %err, "waking a demo failed; the next request asks again");
        }
    }
}

async fn write_traefik_file(app: &Fleet, path: &std::path::Path) -> anyhow::Result<()> {
    let config = traefik::current(&app.scheduler.db, &app.config, &app.scheduler.rules.urls).await?;
    if traefik::write_if_changed(path, &config).await? {
        tracing::info!(file = %path.display(), "Traefik configuration written");
    }
    Ok(())
}

/// Launch the demos of draining hosts, and of hosts silent for longer than the host
/// timeout when `trust_silence`, again elsewhere (placement skips such hosts). A draining
/// host's demo moves once nothing is under way for it; a silent host's demo also when its
/// chain is stuck there. The old container serves until the new one answers, and is then
/// an orphan that reconcile removes, at once or when its host is heard from again. With no
/// other live host to go to, demos stay where they are.
async fn move_off(app: &Fleet, trust_silence: bool) -> sqlx::Result<()> {
    let moving: Vec<(Uuid, bool)> = sqlx::query_as(
        "select d.id, h.last_seen < now() - make_interval(secs => $1) as silent
         from demos d join hosts h on h.id = d.host_id
         where d.desired = 'running' and d.state in ('running', 'starting', 'sleeping')
           and (h.draining or ($2 and h.last_seen < now() - make_interval(secs => $1)))
           and (select c.status from chains c where c.demo_id = d.id and c.generation = d.generation
                order by c.created_at desc limit 1)
               = any(case when $2 and h.last_seen < now() - make_interval(secs => $1)
                          then array['running', 'succeeded'] else array['succeeded'] end)
           and exists (select 1 from hosts o where o.id <> h.id and not o.draining
                                                and o.last_seen > now() - make_interval(secs => $1))
         order by d.id limit 100",
    )
    .bind(app.config.host_timeout.as_secs_f64())
    .bind(trust_silence)
    .fetch_all(&app.scheduler.db)
    .await?;
    for (id, silent) in moving {
        let (actor, why) = if silent {
            ("host_down", "the demo's host is silent; launching the demo elsewhere")
        } else {
            ("drain", "the demo's host drains; launching the demo elsewhere")
        };
        crate::reconcile::launch_again(&app.scheduler, id, &["running", "starting", "sleeping"], actor, why).await?;
    }
    Ok(())
}

/// How long a recorded generation may stay not begun before the tick begins it: the
/// intake's starter begins each within [`crate::intake::START_INTERVAL`], unless its
/// controller stopped first.
const NOT_BEGUN_GRACE: Duration = Duration::from_secs(5);

async fn place_waiting(app: &Fleet) -> sqlx::Result<()> {
    let scheduler = &app.scheduler;
    for (demo, generation) in demos::not_begun(&scheduler.db, NOT_BEGUN_GRACE, 100).await? {
        tracing::info!(%demo, generation, "beginning a generation no starter began");
        scheduler
            .transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.begin_generation(tx, demo, generation).await?)))
            .await?;
    }
    for chain in chains::waiting(&scheduler.db, 100).await? {
        scheduler.transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.advance(tx, chain).await?))).await?;
    }
    Ok(())
}

/// Steps unanswered for the step deadline: each counts as a failed attempt of the host it
/// went to, and is retried (or fails its chain) as any failure ([`Scheduler::record_result`]).
/// An answer that comes after all is one for an attempt already settled, and is ignored.
async fn retry_unanswered(app: &Fleet) -> sqlx::Result<()> {
    let scheduler = &app.scheduler;
    let deadline = app.config.step_deadline;
    for step in chains::unanswered(&scheduler.db, deadline, 100).await? {
        let Some(kind) = Step::parse(&step.name) else { continue };
        let host = step.host_id.unwrap_or_else(|| "controller".into());
        let error = format!("no answer from {host} within {}s: the step or its result was lost", deadline.as_secs());
        tracing::warn!(chain = %step.chain_id, step = step.name, attempt = step.attempts, %host, "{error}");
        let result = StepResult {
            version: WIRE_VERSION,
            chain_id: step.chain_id,
            demo_id: step.demo_id,
            generation: step.generation,
            step: kind,
            attempt: u32::try_from(step.attempts).unwrap_or_default(),
            host_id: host,
            duration_ms: 0,
            outcome: StepOutcome::Failed { error, retryable: true },
        };
        scheduler.transact(async |tx| Ok::<_, sqlx::Error>(((), scheduler.record_result(tx, &result).await?))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(host: &str, version: u32) -> Vec<u8> {
        let beat = Heartbeat {
            version,
            host_id: host.into(),
            address: "10.0.0.2".into(),
            capacity: 4,
            agent_version: "1".into(),
            inventory: Vec::new(),
            disk: None,
        };
        serde_json::to_vec(&beat).unwrap()
    }

    #[test]
    fn a_heartbeat_counts_only_on_its_own_hosts_subject_and_version() {
        let own = topology::heartbeat_subject("fleet", "host-a");
        assert_eq!(read_heartbeat("fleet", &own, &beat("host-a", WIRE_VERSION)).unwrap().host_id, "host-a");
        assert_eq!(read_heartbeat("fleet", &own, &beat("host-b", WIRE_VERSION)), Err(Refused::WrongSubject));
        let other_prefix = topology::heartbeat_subject("other", "host-a");
        assert_eq!(read_heartbeat("fleet", &other_prefix, &beat("host-a", WIRE_VERSION)), Err(Refused::WrongSubject));
        assert_eq!(read_heartbeat("fleet", &own, &beat("host-a", WIRE_VERSION + 1)), Err(Refused::WrongVersion));
        for garbage in [&b""[..], b"null", b"{}", b"\xff\xfe", br#"{"version":1}"#] {
            assert_eq!(read_heartbeat("fleet", &own, garbage), Err(Refused::Unreadable), "{garbage:?}");
        }
        let reasons: Vec<&str> = [
            Refused::Unreadable,
            Refused::WrongVersion,
            Refused::WrongSubject,
            Refused::UnknownHost,
            Refused::RevokedHost,
        ]
        .map(Refused::reason)
        .to_vec();
        assert_eq!(reasons, ["unreadable", "wrong_version", "wrong_subject", "unknown_host", "revoked_host"]);
    }
}
