//! End-to-end harness: a controller and agents started in-process against the real
//! PostgreSQL, RabbitMQ, NATS and Docker that `scripts/test` starts, each test on its own
//! database (cloned from a migrated template), its own RabbitMQ vhost and its own NATS
//! subject prefix; demo fixtures as local git repositories; GitHub's real webhook payloads,
//! edited and re-signed.
//!
//! # Layout
//! - [`ansible`]: the ansible tools, and `site.yml` applied to this machine.
//! - [`services`]: where the services are, per-test databases and vhosts.
//! - [`cluster`]: RabbitMQ and NATS clusters of a test's own, on this machine.
//! - [`postgres`]: a PostgreSQL server of a test's own, to restart or crash.
//! - [`command`]: external commands with a deadline.
//! - [`fake_github`]: the GitHub API, faithfully faked, recording every call.
//! - [`fixtures`]: demo repositories and webhook payloads.
//! - [`stack`]: a running controller (and agents) with helpers to drive and observe it.
//! - [`host`]: test hosts: a network namespace, an address and a Docker Engine of their own.
//! - [`fleet`]: agent hosts as processes on test hosts, to be killed and cut off.
//! - [`lone_agent`]: one agent driven by the test in the controller's place.
//! - [`pki`]: a private CA of a test's own and the certificates it signs (TLS between hosts).
//! - [`wait`]: waiting for conditions with deadlines.
//! - [`time_limit`]: a time limit for each test (every stack holds one).
//! - [`spy`]: proof that nothing was sent to the controller's or the agents' queues.

pub mod ansible;
pub mod burst;
pub mod cluster;
pub mod command;
pub mod fake_github;
pub mod fixtures;
pub mod fleet;
pub mod git_http;
pub mod host;
pub mod lone_agent;
pub mod oidc;
pub mod pki;
pub mod postgres;
pub mod relay;
pub mod rng;
pub mod scratch;
pub mod services;
pub mod spy;
pub mod stack;
pub mod time_limit;
pub mod wait;

use std::time::Duration;

/// How long the harness waits for an HTTP request to be answered, body and all: a server
/// that stopped answering fails the test with the request's error instead of hanging it.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// An HTTP client of the harness: every request has [`REQUEST_DEADLINE`] (a streamed answer,
/// such as a live log, sets a longer one of its own).
pub fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(REQUEST_DEADLINE).connect_timeout(Duration::from_secs(10))
}

/// The workspace's root: the project's checkout.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Log to the test's output when `DEMOFLEET_LOG` is set.
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("DEMOFLEET_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
