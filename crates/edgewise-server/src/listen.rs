//! Accepting HTTP connections under the node's connection limits (`limits.connections`,
//! `limits.request_head_timeout`). `axum::serve` has neither a cap on open connections nor a
//! timer for hyper's header timeout, so one client could hold every socket it opens, forever,
//! by sending nothing or a byte at a time (slowloris).
//!
//! Invariant: every accepted connection either holds one of `limits.connections` slots (and one
//! of its address's `limits.connections_per_client`) until it closes, or is answered 503 and
//! closed at once. A connection is closed when it waits for a request head (the first or the next
//! on a kept-alive connection) longer than `request_head_timeout`, when a response write makes no
//! progress for `send_timeout` (a client that stops reading), and a request body must arrive
//! within `request_body_timeout`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

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
    let slots = Arc::new(Semaphore::new(
        limits.connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let per_client: PerClient = Arc::default();
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
        let slot = slots.clone().try_acquire_owned().ok();
        let client_slot = ClientSlot::take(&per_client, peer.ip(), limits.connections_per_client);
        let (Some(slot), Some(client_slot)) = (slot, client_slot) else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: limits.connections or connections_per_client reached");
            tokio::spawn(refuse(tcp));
            continue;
        };
        // No Nagle: streamed answers (SSE tokens, offloaded bodies) are many small writes, and a
        // client that delays its ACKs would otherwise see each held back by up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let io = SendDeadline {
            inner: tcp,
            timeout: limits.send_timeout,
            stalled: None,
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        let metrics = metrics.clone();
        metrics.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.open.fetch_sub(1, Ordering::Relaxed);
            drop((slot, client_slot));
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

/// The 503 for a connection beyond the limits: written without waiting, then the write side is
/// shut and the request drained for a moment, so the client reads the answer instead of a reset.
async fn refuse(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    // A fresh socket's send buffer has room: this never blocks.
    let _ = tcp.try_write(&FULL);
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tcp).await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Open connections per client address.
type PerClient = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of an address's `limits.connections_per_client`, given back on drop.
struct ClientSlot {
    table: PerClient,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(table: &PerClient, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut open = table.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A socket whose writes fail once they have made no progress for `timeout`: a client that
/// stops reading cannot hold its connection (and the node's buffers) forever.
struct SendDeadline {
    inner: TcpStream,
    timeout: Duration,
    /// Armed when a write could not proceed; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl SendDeadline {
    fn after<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing for limits.send_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncRead for SendDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.after(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Gives every request body `limits.request_body_timeout` in all to arrive.
pub async fn body_deadline(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let deadline = state.limits.request_body_timeout;
    let req = req.map(|body| {
        axum::body::Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(deadline)),
        })
    });
    next.run(req).await
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: Pin<Box<Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(
                "the request body did not arrive within limits.request_body_timeout".into(),
            )));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
