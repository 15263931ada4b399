//! Accepting HTTP connections under the node's connection limits (`limits.connections`,
//! `limits.request_head_timeout`). `axum::serve` has neither a cap on open connections nor a
//! timer for hyper's header timeout, so one client could hold every socket it opens, forever,
//! by sending nothing or a byte at a time (slowloris).
//!
//! Invariant: every accepted connection either holds one of `limits.connections` slots until it
//! closes, or is answered 503 and closed at once; a connection waiting for a request head (the
//! first or the next on a kept-alive connection) is closed after `request_head_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What the connection layer counts for `/metrics`.
#[derive(Default)]
pub struct ConnectionMetrics {
    pub open: AtomicU64,
    /// Connections answered 503 because `limits.connections` were open.
    pub refused: AtomicU64,
}

/// How long connections in flight get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(15);

/// The answer to a connection beyond the limit: written without waiting, then closed.
static FULL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = r#"{"error":{"message":"this node has limits.connections connections open; retry later","type":"overloaded"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections finish
/// (at most [`DRAIN`]).
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: &edgewise_core::NodeLimits,
    metrics: Arc<ConnectionMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    // HTTP/1.1 only, as before: the node speaks plain HTTP, where browsers and the usual
    // clients do not use HTTP/2.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            // A fresh socket's send buffer has room: this never blocks.
            let _ = tcp.try_write(&FULL);
            tracing::debug!(%peer, "connection refused: limits.connections reached");
            continue;
        };
        // No Nagle: streamed answers (SSE tokens, offloaded bodies) are many small writes, and a
        // client that delays its ACKs would otherwise see each held back by up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        let metrics = metrics.clone();
        metrics.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN:?} after shutdown began; closing them");
    }
}
