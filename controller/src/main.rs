use clap::Parser;
use demofleet_controller::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let config = Config::parse();
    if config.migrate_only {
        return demofleet_controller::migrate(&config).await;
    }
    demofleet_controller::run(config, demofleet_common::signal::shutdown()).await
}
