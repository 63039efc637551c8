//! The controller as a process of its own, for tests that kill it (SIGKILL) and start it
//! again. Same flags as `demofleet-controller`.

use clap::Parser;
use demofleet_controller::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    demofleet_controller::run(Config::parse(), demofleet_common::signal::shutdown()).await
}
