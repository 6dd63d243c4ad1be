//! Graceful shutdown: one token, cancelled by Ctrl+C or SIGTERM, that every task watches.

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Cancels `token` on Ctrl+C or SIGTERM.
pub fn cancel_on_signal(token: Shutdown) {
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = terminate => {},
        }
        tracing::info!("shutdown signal received: draining");
        token.cancel();
    });
}
