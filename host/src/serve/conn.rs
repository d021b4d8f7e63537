//! Connections: how many, how slow, and how they end.
//!
//! A client that sends half a header, or a body that never ends, held a
//! connection (and its buffer) for as long as it liked; 280 of them under a
//! 300-descriptor limit made `/healthz` unreachable, and SIGTERM waited for
//! a stalled client to leave. Here every connection has a header timeout
//! (which also bounds the quiet between keep-alive requests), a capped
//! header buffer and a body timeout; at most `max_connections` are open
//! (more are closed at once, before any byte is read); and stopping gives
//! in-flight requests `grace` to finish, then closes what is left.

use std::sync::Arc;
use std::time::Duration;

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time for a request's headers to arrive, counted from the end of the
    /// previous request on the connection (so also the idle limit).
    pub header_timeout: Duration,
    /// Time for a request's body to arrive once its headers did.
    pub body_timeout: Duration,
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// After a stop is asked for: how long in-flight requests may run.
    pub grace: Duration,
    /// This host's workers for the run queue.
    pub workers: crate::agent::queue::Workers,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: default_max_connections(),
            max_header_bytes: 64 << 10,
            grace: Duration::from_secs(10),
            workers: Default::default(),
        }
    }
}

/// 1,024, or half the process's descriptor limit when that is lower: the
/// other half stays for the store, components, logs and model calls.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        });
    soft.map_or(1024, |n| (n / 2).clamp(16, 1024))
}

/// Serves `app` on `listener` until `shutdown`, within `options`.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut saturated = false;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            // Finished connections are reaped as they go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of
                // spinning, and keep serving the connections we have.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Said once per episode, not once per refused connection: a
            // flood of them must not become a flood of log lines.
            if !saturated {
                tracing::warn!(
                    max = options.max_connections,
                    "connection limit reached; closing new connections until one ends"
                );
                saturated = true;
            }
            drop(tcp);
            continue;
        };
        saturated = false;
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            .max_buf_size(options.max_header_bytes.max(8192))
            .keep_alive(true)
            .serve_connection(TokioIo::new(super::canned::Canned::new(tcp)), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    // In-flight requests get the grace period; then whatever is left
    // (a client stalled mid-request, a run still going) is closed.
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "grace period over; closing the connections still open"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}
