//! The demofleet controller: takes GitHub webhooks, keeps the fleet's state in Postgres,
//! places demos on hosts, drives their task chains over RabbitMQ, hears agents over NATS,
//! and routes demo hostnames through its edge proxy.
//!
//! # Layout
//! From the edges in to the chain logic, and down to the state of record
//! (`docs/architecture.md` draws it; no two modules refer to each other in a circle):
//! - The program: [`cli`] (run the controller, or administer the fleet: `tokens`, `migrate`).
//! - Wiring: [`Controller::start`] here, and [`state`], the HTTP handlers' state.
//! - HTTP: [`webhook`] (`POST /webhook/github`: signatures, payloads, intake), [`http`] (the
//!   API, health, metrics, live logs; every router merged), [`dashboard`], [`auth`] (sign-in,
//!   sessions, the SSO gate), [`traefik`] (Traefik's dynamic configuration), [`actions`] (what
//!   people do from the dashboard or the API), [`error`] (the HTTP error type).
//! - Background: [`intake`] (events recorded in batches, one commit each; their chains
//!   started), [`broker`] (RabbitMQ: outbox publisher, consumer of the controller's queue),
//!   [`jobs`] (that queue's messages: results, `authorize`, notifications, comment approvals),
//!   [`fleet`] (heartbeats, the periodic tick, wakes), [`reconcile`] (hosts' inventories
//!   against the record), [`lease`] (which replica does the fleet's once-only work), [`edge`]
//!   (the built-in edge proxy and its route table), [`retention`] (what outlived the
//!   retention removed).
//! - [`scheduler`]: carrying out the chains' decisions in the caller's transaction; placement.
//! - [`chain`]: the chain logic as decisions on plain data: each chain's order, what happens
//!   next.
//! - Below: [`db`] (queries, one module per table group), [`github`] (the GitHub client and
//!   PR feedback), [`urls`] (demo hostnames and URLs), [`config`] (settings), [`timings`]
//!   (latency histograms for `/metrics`), [`refusals`] (what the channels refused, counted),
//!   [`counts`] (the history's counts for `/metrics`, tallied up to a mark).

pub mod actions;
pub mod auth;
pub mod broker;
pub mod chain;
pub mod cli;
pub mod config;
pub mod counts;
pub mod dashboard;
pub mod db;
pub mod edge;
pub mod enrolment;
pub mod error;
pub mod fleet;
pub mod github;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod keep_logs;
pub mod lease;
pub mod listener;
pub mod reconcile;
pub mod refusals;
pub mod retention;
pub mod scheduler;
pub mod secrets;
pub mod state;
pub mod timings;
pub mod traefik;
pub mod urls;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use config::Config;
use state::AppState;
use urls::DemoUrls;

/// The migrations in `migrations/`, applied at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A started controller: its listening addresses, and the handle that stops it.
pub struct Controller {
    pub http_addr: SocketAddr,
    pub edge_addr: SocketAddr,
    pub state: AppState,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Controller {
    /// Connect to everything, migrate, bind both listeners and start every task.
    pub async fn start(mut config: Config) -> anyhow::Result<Controller> {
        config.read_secret_files()?;
        config.validate()?;
        let db = connect_db(&config.database_url, config.db_pool).await?;
        MIGRATOR.run(&db).await.context("applying migrations")?;
        let broker =
            broker::Broker::connect(&config.messaging).await.context("connecting to RabbitMQ (DEMOFLEET_AMQP_URL)")?;
        let enrolment = enrolment::Enrolment {
            db: db.clone(),
            settings: config.enrolment.clone(),
            messaging: config.messaging.clone(),
        };
        // The NATS authorization file, before connecting: it holds this controller's own user.
        enrolment.write_nats_file().await.context("writing the NATS authorization file (DEMOFLEET_NATS_AUTH_FILE)")?;
        let nats = config.messaging.connect_nats().await.context("connecting to NATS (DEMOFLEET_NATS_URL)")?;
        // A queue group of this fleet's replicas: each heartbeat is recorded by one of them,
        // and another fleet's controllers on the same NATS server (the same prefix) each get
        // every heartbeat too, and ignore those of hosts not enrolled with them.
        let fleet_id = db::enrolments::fleet_identity(&db).await.context("reading the fleet's identity")?;
        let all_heartbeats = demofleet_common::topology::all_heartbeats(&config.messaging.nats_prefix);
        let heartbeats = nats.queue_subscribe(all_heartbeats, format!("demofleet-controllers-{fleet_id}")).await?;
        // Each log line is kept by one replica too.
        let all_logs = demofleet_common::topology::all_logs(&config.messaging.nats_prefix);
        let log_lines = nats.queue_subscribe(all_logs, format!("demofleet-log-keepers-{fleet_id}")).await?;

        let http_listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let edge_listener =
            TcpListener::bind(config.edge_listen).await.with_context(|| format!("binding {}", config.edge_listen))?;
        let http_addr = http_listener.local_addr()?;
        let edge_addr = edge_listener.local_addr()?;
        // The ports bound, when the settings asked for any free one.
        config.edge_url.get_or_insert_with(|| format!("http://{edge_addr}"));
        config.public_url.get_or_insert_with(|| format!("http://{http_addr}"));
        config.forward_auth_url.get_or_insert_with(|| format!("http://{http_addr}/auth/forward"));
        let public_port =
            config.public_port.or_else(|| (config.base_domain == "localhost").then_some(edge_addr.port()));
        let urls = DemoUrls {
            base_domain: config.base_domain.clone(),
            scheme: config.public_scheme.clone(),
            port: public_port,
        };

        let github = github_client(&config)?;
        let (intake, intake_writers, starter) = intake::Intake::new();
        let routes = edge::RouteTable::new(config.idle_sleep_seconds());
        let auth = Arc::new(auth::Auth::new(&config, auth::signing_key(&db, "gate").await?, db.clone())?);
        let timings = Arc::new(timings::Timings::default());
        let refusals = Arc::new(refusals::Refusals::default());
        let scheduler = scheduler::Scheduler {
            db: db.clone(),
            routes: routes.clone(),
            outbox: Arc::new(Notify::new()),
            rules: Arc::new(chain::record::Rules {
                github: github.is_some(),
                trusted_authors: config.trusted_authors.clone(),
                retry_delays: config.retry_delays.clone(),
                urls: urls.clone(),
            }),
            host_timeout: config.host_timeout,
            min_free_disk_bytes: config.min_free_disk_bytes(),
            permissions: Arc::new(scheduler::authorize::PermissionCache::new(config.permission_cache)),
            timings: timings.clone(),
            refusals: refusals.clone(),
            vault: Arc::new(
                secrets::Vault::load(
                    config.secrets_key_file.as_deref(),
                    config.secrets_transport_key_file.as_deref(),
                    &config.git_url,
                )
                .context(
                    "reading the secrets' keys (DEMOFLEET_SECRETS_KEY_FILE, DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE)",
                )?,
            ),
        };
        let config = Arc::new(config);
        let broker = Arc::new(broker);
        let urls = Arc::new(urls);
        routes.reload(&db).await?;

        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        for writer in intake_writers {
            tasks.spawn(writer.run(db.clone(), stop.clone()));
        }
        tasks.spawn(starter.run(scheduler.clone(), stop.clone()));
        let publisher = broker::publisher::Publisher {
            broker: broker.clone(),
            db: db.clone(),
            outbox: scheduler.outbox.clone(),
            config: config.clone(),
        };
        tasks.spawn(broker::publisher::run(publisher, stop.clone()));
        let jobs = jobs::Jobs {
            scheduler: scheduler.clone(),
            github: github.clone(),
            controller_user: config.messaging.amqp_user(),
        };
        let consumer =
            broker::consumer::Consumer { broker: broker.clone(), queue_type: config.messaging.queue_type(), jobs };
        tasks.spawn(broker::consumer::run(consumer, stop.clone()));
        let keeper = keep_logs::Keeper {
            db: db.clone(),
            keep_bytes: config.log_keep_bytes,
            keep_generations: config.log_keep_generations,
            prefix: config.messaging.nats_prefix.clone(),
            refusals: refusals.clone(),
        };
        tasks.spawn(keep_logs::run(keeper, log_lines, stop.clone()));
        let fleet = fleet::Fleet { scheduler: scheduler.clone(), config: config.clone() };
        tasks.spawn(fleet::run_heartbeats(fleet.clone(), heartbeats, stop.clone()));
        tasks.spawn(fleet::run_tick(fleet, stop.clone()));
        tasks.spawn(edge::follow::run(routes.clone(), db.clone(), config.database_url.clone(), stop.clone()));
        let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn(fleet::run_wakes(scheduler.clone(), wake_rx, stop.clone()));
        let limits = listener::Limits {
            max_connections: config.edge_max_connections,
            header_timeout: config.edge_header_timeout,
        };
        let edge = Arc::new(edge::proxy::Edge::new(routes.clone(), urls.clone(), auth.clone(), wake_tx, limits));
        tasks.spawn(edge.serve(edge_listener, stop.clone()));
        let state = AppState {
            enrolment,
            config,
            db,
            broker,
            nats,
            routes,
            auth,
            urls,
            github,
            intake,
            timings,
            scheduler,
            stopping: stop.clone(),
        };
        let app = http::router(state.clone());
        let http_limits = listener::Limits {
            max_connections: state.config.http_max_connections,
            header_timeout: state.config.http_header_timeout,
        };
        tasks.spawn(listener::serve(http_listener, http_limits, stop.clone(), move |peer| {
            // What axum's ConnectInfo<SocketAddr> extractor reads.
            let connected = ConnectInfo(peer);
            TowerToHyperService::new(app.clone().map_request(move |mut req: axum::extract::Request<Incoming>| {
                req.extensions_mut().insert(connected);
                req
            }))
        }));
        tasks.close();
        tracing::info!(%http_addr, %edge_addr, "controller started");
        Ok(Controller { http_addr, edge_addr, state, stop, tasks })
    }

    /// Stop every task and wait for them to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// The GitHub client the configuration asks for: App, token, or none.
fn github_client(config: &Config) -> anyhow::Result<Option<Arc<github::GitHub>>> {
    let auth = match (&config.github_app_id, &config.github_app_key_file, &config.github_token) {
        (Some(id), Some(file), _) => {
            let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            github::auth::Auth::app(id, &pem)?
        }
        (_, _, Some(token)) => github::auth::Auth::Token(token.expose().to_string()),
        _ => {
            tracing::warn!(
                "no GitHub credentials: no PR feedback; only DEMOFLEET_TRUSTED_AUTHORS start demos unapproved"
            );
            return Ok(None);
        }
    };
    Ok(Some(Arc::new(github::GitHub::new(&config.github_api_url, auth, config.github_patience)?)))
}

/// A pool of at most `pool` connections (at least 2) to the database at `url`.
pub async fn connect_db(url: &str, pool: u32) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(pool.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to PostgreSQL (DEMOFLEET_DATABASE_URL)")
}

/// Apply the migrations to the database at `url` and return.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let db = connect_db(url, 2).await?;
    MIGRATOR.run(&db).await.context("applying migrations")?;
    db.close().await;
    Ok(())
}

/// Run until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let controller = Controller::start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    controller.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Two migrations with one version would be applied in an order nobody chose (and a
    /// database that has one of them would refuse the other): every version is its own.
    #[test]
    fn each_migration_has_a_version_of_its_own() {
        let mut versions: Vec<i64> = super::MIGRATOR.iter().map(|m| m.version).collect();
        let count = versions.len();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), count, "two files in migrations/ share a version number");
    }
}
