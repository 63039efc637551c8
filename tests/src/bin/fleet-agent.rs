//! The agent as a process of its own, for the fleet harness: it runs in a host's network
//! namespace and can be killed like any daemon. The same program as `demofleet-agent`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demofleet_agent::main().await
}
