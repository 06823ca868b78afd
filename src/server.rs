//! The HTTP/1.1 connection loop both listeners run: a cap on open connections, a header read
//! timeout (slowloris), and a graceful drain on shutdown. Body timeouts and load shedding live
//! in the API layer (`api::body`, `api::overload`), where they can answer with JSON errors.
//!
//! It uses hyper's HTTP/1 server directly rather than `axum::serve`, which offers no header read
//! timeout, and rather than hyper-util's protocol-sniffing builder, whose version detection runs
//! before any timer and would let a silent connection stay open forever.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How long shutdown waits for open connections to finish their requests before giving up on
/// them (a client that never reads its response must not hold the process forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connection-level limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head must arrive within this long of the connection waiting for one.
    pub header_read_timeout: Duration,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: u32,
}

/// Serves `router` on `listener` until `stop` turns true; then stops accepting, lets every open
/// connection finish the request it is on (closing idle ones), and returns once all are closed
/// or [`DRAIN_TIMEOUT`] has passed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        // Take a connection slot before accepting: at the cap, new connections are not accepted
        // (they queue in the kernel backlog) until a served one closes.
        let slot = tokio::select! {
            () = stopped(&mut stop) => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    crate::safe_warn!("accept failed; backing off", error = err);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |request: Request<Incoming>| {
                // The peer address is available to handlers as ConnectInfo; only the access
                // log reads it, and only when --log-client-ip is on.
                let mut request = request.map(Body::new);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_connection_end(result),
                () = stopped(&mut stop) => {
                    // Finish the request in progress (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    log_connection_end(connection.await);
                }
            }
        });
    }
    drop(listener); // new connections are refused from here on
    let all = limits.max_connections;
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        crate::safe_warn!(
            "connections still open after the drain timeout; closing them",
            open = all as usize - slots.available_permits(),
        );
    }
    Ok(())
}

/// Completes once `stop` is true (or its sender is gone). The borrow of the value ends here, so
/// callers may await after it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(err) = result {
        // Timeouts, resets and malformed requests from clients: routine, not errors.
        crate::safe_debug!("connection closed with an error", error = err);
    }
}
