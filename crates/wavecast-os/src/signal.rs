//! The signal every long-running wavecast process stops on.

/// Resolves on SIGTERM or Ctrl-C (SIGINT), whichever comes first. If the SIGTERM handler cannot
/// be installed, only Ctrl-C stops the process, rather than stopping it at once.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
