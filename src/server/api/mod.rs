//! The HTTP API: the public listener (epoch, discover, health) and the admin listener
//! (registrations, stats, metrics), with the middleware both share.

pub mod admin;
pub mod body;
pub mod error;
pub mod overload;
pub mod public;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use error::ApiError;

impl crate::log_safe::LogSafe for axum::http::StatusCode {}

use crate::clock::Clock;
use crate::domain::{CredentialKey, ServerSecret};
use crate::metrics::Metrics;
use crate::server::ratelimit::FingerprintLimiter;
use crate::store::registry::Registry;
use crate::store::rotation::LiveIndexes;

/// Everything a handler needs, shared by both listeners.
pub struct AppState {
    /// The live match indexes.
    pub indexes: Arc<LiveIndexes>,
    /// The durable registry.
    pub registry: Arc<Registry>,
    /// Salts come from here.
    pub secret: ServerSecret,
    /// Verifies caller credentials; `None` when auth is switched off for a demo.
    pub credential_key: Option<CredentialKey>,
    /// The key being rotated out, still accepted (`--previous-credential-key-file`).
    pub previous_credential_key: Option<CredentialKey>,
    /// Longest credential lifetime accepted, seconds.
    pub max_credential_ttl: u64,
    /// BLAKE3 hash of the admin token (compared in constant time).
    pub admin_token_hash: blake3::Hash,
    /// Per-user fingerprint budget of this process (alone, or the fallback of the shared one).
    pub limiter: FingerprintLimiter,
    /// The budget shared by all replicas in Redis, when configured.
    pub shared_limiter: Option<crate::server::ratelimit::SharedLimiter>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Clock,
    /// Most fingerprints per request.
    pub max_batch: usize,
    /// When the process started.
    pub started: Instant,
    /// Whether access logs carry the client's truncated address.
    pub log_client_ip: bool,
    /// `/readyz` is false while fewer numbers are registered.
    pub ready_min_registrations: u64,
    /// How fast and how soon a request body must arrive.
    pub body_pace: body::BodyPace,
    /// Slots for public requests in flight; a request that finds none is shed with 503.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Discovery requests in flight per user.
    pub user_in_flight: overload::UserInFlight,
    /// BLAKE3 hash of the metrics token (the admin token also reads `/metrics`).
    pub metrics_token_hash: blake3::Hash,
    /// The shared registry stream, when replicas share one (`--registry-redis-url`).
    pub replica: Option<Arc<crate::store::replication::Replica>>,
}

/// Shared state as handlers see it.
pub type SharedState = Arc<AppState>;

/// Fingerprints in a discovery request, attached to its response for the access log.
#[derive(Clone, Copy)]
pub struct BatchSize(pub usize);

/// Which listener a request came in on (a metric label).
#[derive(Clone, Copy)]
pub struct Listener(pub &'static str);

/// Counts and times every request by listener, route template and status, and marks every
/// response `Cache-Control: no-store`. Route templates only: never the raw path or query.
pub async fn observe(
    State((state, listener)): State<(SharedState, Listener)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Read before the request moves on; kept only if the operator asked for it.
    let client_ip = state
        .log_client_ip
        .then(|| {
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .flatten();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let status = response.status();
    let labels = [listener.0, route.as_str(), status.as_str()];
    state.metrics.http_requests.with_label_values(&labels).inc();
    state
        .metrics
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    let batch = response.extensions().get::<BatchSize>().map_or(0, |b| b.0);
    crate::safe_debug!(
        "request",
        listener = listener.0,
        route = crate::log_safe::RouteTemplate(&route),
        status = status,
        micros = started.elapsed().as_micros() as u64,
        batch = batch,
        client = crate::log_safe::ClientNetwork(client_ip),
    );
    response
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// JSON 404 for unknown routes.
pub async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

/// JSON 405 for known routes with the wrong method.
pub async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

/// Turns a handler panic into a fixed JSON 500. The panic payload is dropped unread, so nothing
/// it might contain reaches the client.
pub fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    crate::safe_error!("a request handler panicked; answered 500");
    ApiError::Panic.into_response()
}
