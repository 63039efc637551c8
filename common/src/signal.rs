//! Waiting for the signal to stop: Ctrl-C or SIGTERM (what systemd and `kill` send).

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
