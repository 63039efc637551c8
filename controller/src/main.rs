/// mimalloc instead of the system allocator: the edge allocates and frees a few small blocks
/// per forwarded request, and glibc's malloc and free were a twentieth of its profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    demofleet_controller::cli::main().await
}
