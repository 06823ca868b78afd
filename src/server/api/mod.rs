//! The HTTP API: the public listener (epoch, discover, health) and the admin listener
//! (registrations, stats, metrics), with the middleware both share.

pub mod admin;
pub mod body;
pub mod caller;
pub mod error;
pub mod overload;
pub mod public;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use caller::{Authenticator, Caller, bearer_token};
pub use error::ApiError;
pub use state::{AdminState, Observe, PublicState, Readiness};

impl crate::log_safe::LogSafe for axum::http::StatusCode {}

/// The running service's two listener states, for start-up, tests, the demo and benchmarks.
/// No handler gets this whole: each router is built with its own listener's state.
pub struct AppState {
    /// The public listener's state.
    pub public: PublicState,
    /// The admin listener's state.
    pub admin: AdminState,
}

/// The application's states, shared.
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
    State((state, listener)): State<(Observe, Listener)>,
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
