//! End-to-end harness: a controller and agents started in-process against the real
//! PostgreSQL, RabbitMQ, NATS and Docker that `scripts/test` starts, each test on its own
//! database (cloned from a migrated template), its own RabbitMQ vhost and its own NATS
//! subject prefix; demo fixtures as local git repositories; GitHub's real webhook payloads,
//! edited and re-signed.
//!
//! # Layout
//! - [`services`]: where the services are, per-test databases and vhosts.
//! - [`cluster`]: RabbitMQ and NATS clusters of a test's own, on this machine.
//! - [`fake_github`]: the GitHub API, faithfully faked, recording every call.
//! - [`fixtures`]: demo repositories and webhook payloads.
//! - [`stack`]: a running controller (and agents) with helpers to drive and observe it.
//! - [`host`]: test hosts: a network namespace, an address and a Docker Engine of their own.
//! - [`fleet`]: agent hosts as processes on test hosts, to be killed and cut off.
//! - [`wait`]: waiting for conditions with deadlines.

pub mod burst;
pub mod cluster;
pub mod fake_github;
pub mod fixtures;
pub mod fleet;
pub mod git_http;
pub mod host;
pub mod oidc;
pub mod rng;
pub mod services;
pub mod stack;
pub mod wait;

/// Log to the test's output when `DEMOFLEET_LOG` is set.
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("DEMOFLEET_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
