//! The HTTP API: the public listener (epoch, discover, the private mode, health) and the admin listener
//! (registrations, stats, metrics), with the middleware both share.

pub mod admin;
pub mod body;
pub mod caller;
pub mod error;
pub mod observe;
pub mod overload;
pub mod private;
pub mod public;
pub mod state;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};

pub use caller::{Authenticator, Caller, bearer_token};
pub use error::{ApiError, NotReadyCause};
pub use observe::{BatchSize, ListenerService, Shed};
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

/// Which listener a request came in on (a metric label).
#[derive(Clone, Copy)]
pub struct Listener(pub &'static str);

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
