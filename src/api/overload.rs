//! Load shedding: a fixed number of public requests may be in flight; one more is answered
//! `503 overloaded` with `Retry-After` at once instead of waiting in an unbounded queue.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, SharedState};

/// Seconds a shed client is told to wait before retrying.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Runs the request if an in-flight slot is free, holding it until the handler has answered;
/// otherwise sheds it. Never waits for a slot.
pub async fn shed_load(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    match Arc::clone(&state.in_flight).try_acquire_owned() {
        Ok(slot) => {
            let response = next.run(request).await;
            drop(slot);
            response
        }
        Err(_) => ApiError::Overloaded {
            retry_after: RETRY_AFTER_SECS,
        }
        .into_response(),
    }
}
