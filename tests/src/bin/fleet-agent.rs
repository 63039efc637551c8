//! The agent as a process of its own, for the fleet harness: it runs in a host's network
//! namespace and can be killed like any daemon. Same flags as `demofleet-agent`.

use clap::Parser;
use demofleet_agent::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    demofleet_agent::run(Config::parse(), demofleet_common::signal::shutdown()).await
}
