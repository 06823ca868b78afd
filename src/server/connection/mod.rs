//! The HTTP/1.1 connection loop both listeners run. Everything a peer could hold here is bounded:
//!
//! - **open connections**: a cap per listener (more wait in the kernel's accept queue) and a cap
//!   per client address (more are closed at once), so one host cannot take every slot;
//! - **a silent or trickling request head**: hyper's header read timeout (slowloris; it also
//!   bounds idle keep-alive);
//! - **a peer that stops reading its responses**: a write-progress deadline on the socket
//!   (`tokio-io-timeout`): a write that makes no progress for `write_timeout` fails and the
//!   connection closes, whatever is queued behind it;
//! - **pipelined requests**: hyper reads ahead at most `READ_BUFFER_BYTES` of a connection, so
//!   requests queued behind the one being served stay in the peer's socket, and a connection
//!   serves at most `max_requests` requests before it is closed;
//! - **connection lifetime**: after `max_age` the connection finishes the request it is on and
//!   closes.
//!
//! Body timeouts, the minimum body rate and load shedding live in the API layer (`api::body`,
//! `api::overload`), where they can answer with JSON errors. hyper's own answers to requests it
//! cannot parse are rewritten into the API's JSON errors by [`error_reply`].
//!
//! It uses hyper's HTTP/1 server directly rather than `axum::serve`, which offers no header read
//! timeout, and rather than hyper-util's protocol-sniffing builder, whose version detection runs
//! before any timer and would let a silent connection stay open forever.

mod error_reply;

// hyper's connection errors describe the transport (timeouts, resets), never payloads.
impl crate::log_safe::LogSafe for hyper::Error {}

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_io_timeout::TimeoutStream;

use error_reply::ErrorReplies;

use crate::server::api::ListenerService;
use crate::server::api::observe::ResponseFuture;
use crate::server::keyed_cap::KeyedCap;

/// How long shutdown waits for open connections to finish their requests before giving up on
/// them (a client that never reads its response must not hold the process forever).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Most bytes hyper reads ahead on one connection (its read buffer; also the largest request
/// head). hyper's default is ~400 KiB; 64 KiB holds any head a client of ours sends, and keeps
/// what pipelined requests can queue inside the process small. Bodies stream through it.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Connection-level limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request head must arrive within this long of the connection waiting for one.
    pub header_read_timeout: Duration,
    /// A write to the socket that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// A connection finishes the request it is on and closes after this long.
    pub max_age: Duration,
    /// Most requests served on one connection; the last one is answered `Connection: close`.
    pub max_requests: u32,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: u32,
    /// Most connections served at once from one client address; further ones are closed at
    /// once (0: no per-address cap, for listeners behind a proxy that enforces its own).
    pub max_connections_per_address: u32,
}

/// Where a listener reports connections it cut short (`contact_discovery_connections_cut_total`).
#[derive(Clone)]
pub struct CutCounter {
    counter: IntCounterVec,
    listener: &'static str,
}

/// Why a connection is cut short (the `reason` label).
const CUT_REASONS: [&str; 3] = ["per_address_cap", "write_timeout", "max_age"];

impl CutCounter {
    /// Counts into `counter` (labels `listener`, `reason`) under `listener`. Every reason is
    /// exported from the start, at 0, so a rate over it has data before the first cut.
    pub fn new(counter: IntCounterVec, listener: &'static str) -> Self {
        for reason in CUT_REASONS {
            counter.with_label_values(&[listener, reason]);
        }
        Self { counter, listener }
    }

    fn inc(&self, reason: &'static str) {
        self.counter
            .with_label_values(&[self.listener, reason])
            .inc();
    }
}

/// Serves `service` (a listener's router and what surrounds it) on `listener` until `stop`
/// turns true; then stops accepting, lets every open connection finish the request it is on
/// (closing idle ones), and returns once all are closed or [`DRAIN_TIMEOUT`] has passed.
pub async fn serve(
    listener: TcpListener,
    service: ListenerService,
    limits: ConnectionLimits,
    cuts: CutCounter,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let peers = KeyedCap::new(limits.max_connections_per_address as usize);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(READ_BUFFER_BYTES)
        // hyper would otherwise read the socket while each request is answered, only to notice
        // a client that closes early (and then drop the handler). That read finds the read
        // buffer still shared with the request's headers and allocates a fresh 8 KiB one, per
        // request, which the allocator then wipes and frees: ~12,000 of a 10-fingerprint
        // request's 64,500 instructions. Without it the buffer is reused; a request whose client
        // left is answered into a closed socket, its work bounded by the same deadlines and caps.
        .half_close(true);
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
        // Over the per-address cap: closed at once (dropping the stream), the slot freed.
        let Some(peer_slot) = peers.enter(&peer.ip()) else {
            cuts.inc("per_address_cap");
            continue;
        };
        let connection = Connection {
            stream,
            peer,
            limits,
            service: service.clone(),
            cuts: cuts.clone(),
        };
        let stop = stop.clone();
        let http = http.clone();
        tokio::spawn(async move {
            connection.serve(&http, stop).await;
            drop((slot, peer_slot));
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

/// One accepted connection and what it is served with.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
    service: ListenerService,
    cuts: CutCounter,
}

impl Connection {
    /// Serves requests until the peer closes, a limit cuts the connection, or `stop` turns true
    /// (then the request in progress finishes first).
    async fn serve(
        self,
        http: &hyper::server::conn::http1::Builder,
        mut stop: watch::Receiver<bool>,
    ) {
        let Connection {
            stream,
            peer,
            limits,
            service,
            cuts,
        } = self;
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(ErrorReplies::new(stream));
        stream.set_write_timeout(Some(limits.write_timeout));
        let service = PerConnection {
            // The peer address is available to handlers as ConnectInfo only when the access log
            // wants it (--log-client-ip): an extension costs an allocation per request.
            peer: service.wants_client_address().then_some(peer),
            service,
            served: AtomicU32::new(0),
            max_requests: limits.max_requests,
        };
        let connection = http.serve_connection(TokioIo::new(Box::pin(stream)), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stopped(&mut stop) => {
                // Finish the request in progress (if any), then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            () = tokio::time::sleep(limits.max_age) => {
                cuts.inc("max_age");
                connection.as_mut().graceful_shutdown();
                tokio::time::timeout(DRAIN_TIMEOUT, connection)
                    .await
                    .unwrap_or(Ok(()))
            }
        };
        if let Err(err) = result {
            if is_write_timeout(&err) {
                cuts.inc("write_timeout");
            }
            // Timeouts, resets and malformed requests from clients: routine, not errors.
            crate::safe_debug!("connection closed with an error", error = err);
        }
    }
}

/// One connection's view of its listener's service: adds the peer address when wanted and
/// counts the connection's responses.
struct PerConnection {
    service: ListenerService,
    peer: Option<SocketAddr>,
    served: AtomicU32,
    max_requests: u32,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerConnection {
    type Response = Response;
    type Error = Infallible;
    type Future = CloseAfter;

    fn call(&self, mut request: hyper::Request<Incoming>) -> CloseAfter {
        if let Some(peer) = self.peer {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        let served = self
            .served
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        CloseAfter {
            response: self.service.handle(request),
            close: served >= self.max_requests,
        }
    }
}

/// A response; the one that reaches the connection's `max_requests` says `Connection: close`,
/// so hyper closes the connection once it is written.
struct CloseAfter {
    response: ResponseFuture,
    close: bool,
}

impl Future for CloseAfter {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let close = self.close;
        self.response.as_mut().poll(cx).map(|mut response| {
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
}

/// Whether hyper gave up on the connection because a write made no progress in time.
fn is_write_timeout(err: &hyper::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
}

/// Completes once `stop` is true (or its sender is gone). The borrow of the value ends here, so
/// callers may await after it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
