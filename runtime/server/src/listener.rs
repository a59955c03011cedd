//! The accept loop, with the limits a server open to strangers needs.
//!
//! Why not `axum::serve`: it has no connection cap and no header-read timeout, so a client
//! that opens connections and sends a byte a second (slowloris) holds a task and a buffer
//! each for as long as it likes. Here every connection takes a permit from a fixed pool (one
//! over the cap is answered `503` with `Retry-After` and closed), hyper closes a connection
//! whose request head has not fully arrived within `header_timeout` (an idle keep-alive
//! connection included), request heads are capped at `max_header_bytes`, and
//! [`body_timeout`] answers `408` to a body that does not arrive in time. Memory per
//! connection is bounded by hyper's read buffer (`max_header_bytes`) plus the body limit
//! (`MAX_BODY_BYTES`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits on what one client can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; one more is refused with a 503.
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive within this, counted from
    /// when the server starts waiting for it: a new or kept-alive connection that sends
    /// nothing for this long is closed.
    pub header_timeout: Duration,
    /// A request body must arrive within this once its head has.
    pub body_timeout: Duration,
    /// The largest request head.
    pub max_header_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
        }
    }
}

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Retry-After: 1\r\nConnection: close\r\nContent-Length: 114\r\n\r\n\
{\"error\":{\"message\":\"too many open connections\",\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

/// Accepts connections on `listener` and serves `app` on each, under `limits`, until
/// `shutdown` resolves; then stops accepting and waits for the open connections to finish
/// their requests (the caller bounds that wait).
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let builder = Arc::new(builder.http1_only());
    tokio::pin!(shutdown);
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                // Out of file descriptors or a connection reset before accept: the
                // listener itself is fine, so wait a moment and go on.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream.write_all(REFUSAL).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's header timer starts at a request's first byte: a connection that
            // sends nothing at all is closed here after the same time.
            let mut first = [0u8; 1];
            let arrived = tokio::time::timeout(limits.header_timeout, stream.peek(&mut first));
            if !matches!(arrived.await, Ok(Ok(n)) if n > 0) {
                drop(permit);
                return;
            }
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Middleware: reads the request body within `limit` and answers 408 if it does not arrive
/// in time (the handlers then read it from memory).
pub async fn body_timeout(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let collected =
        tokio::time::timeout(limit, axum::body::to_bytes(body, crate::MAX_BODY_BYTES + 1)).await;
    match collected {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                crate::ApiError::too_large(crate::MAX_BODY_BYTES).into_response()
            } else {
                let msg = format!("cannot read the request body: {inner}");
                crate::ApiError::bad_request(msg, None).into_response()
            }
        }
        Err(_) => crate::ApiError::timeout(limit).into_response(),
    }
}
