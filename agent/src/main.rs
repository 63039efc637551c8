#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demofleet_agent::main().await
}
