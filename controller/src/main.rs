#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demofleet_controller::cli::main().await
}
