//! The controller as a process of its own, for tests that kill it (SIGKILL) and start it
//! again. The same program as `demofleet-controller`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demofleet_controller::cli::main().await
}
