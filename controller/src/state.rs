//! The application state of the HTTP handlers: wiring, assembled at start. Background tasks
//! and domain modules take the parts they need instead (a [`Scheduler`], a pool, a client).

use std::sync::Arc;

use sqlx::PgPool;

use crate::broker::Broker;
use crate::config::Config;
use crate::edge::RouteTable;
use crate::github::GitHub;
use crate::scheduler::Scheduler;
use crate::urls::DemoUrls;

#[derive(Clone)]
pub struct AppState {
    /// Settings, validated.
    pub config: Arc<Config>,
    /// The state of record.
    pub db: PgPool,
    /// RabbitMQ, reconnecting on demand.
    pub broker: Arc<Broker>,
    /// NATS, for heartbeats and live logs.
    pub nats: async_nats::Client,
    /// Where the edge proxy sends each demo hostname.
    pub routes: RouteTable,
    /// Sign-in and the preview gate.
    pub auth: Arc<crate::auth::Auth>,
    /// How demo hostnames and URLs are spelled.
    pub urls: Arc<DemoUrls>,
    /// The GitHub API, when credentials are configured.
    pub github: Option<Arc<GitHub>>,
    /// Records webhook events in batches.
    pub intake: crate::intake::Intake,
    /// How long placement and heartbeat handling take, for `/metrics`.
    pub timings: Arc<crate::timings::Timings>,
    /// Starts and advances chains, and applies what commits ask for.
    pub scheduler: Scheduler,
    /// Enrols and revokes hosts.
    pub enrolment: crate::enrolment::Enrolment,
    /// Cancelled when the controller shuts down; endless responses (live logs) end with it.
    pub stopping: tokio_util::sync::CancellationToken,
}
