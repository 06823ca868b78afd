//! Load shedding: a fixed number of public requests may be in flight; one more is answered
//! `503 overloaded` with `Retry-After` at once instead of waiting in an unbounded queue. Within
//! that, one user may have only a few in flight (`429 user_in_flight`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, SharedState};
use crate::domain::UserId;

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

/// Requests in flight per user, so one credential cannot hold every in-flight slot (for
/// example with bodies it never sends). Keyed by the credential's user id only.
pub struct UserInFlight {
    max: usize,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One request of a user in flight; the user's count goes down when it drops.
pub struct UserSlot {
    open: Arc<Mutex<HashMap<UserId, usize>>>,
    user: UserId,
}

impl UserInFlight {
    /// At most `max` requests in flight per user (0: no cap).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more request of `user`, or `user_in_flight` when it has `max` already.
    pub fn enter(&self, user: &UserId) -> Result<Option<UserSlot>, ApiError> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock();
        let count = open.entry(user.clone()).or_insert(0);
        if *count >= self.max {
            return Err(ApiError::UserInFlight {
                max: self.max,
                retry_after: RETRY_AFTER_SECS,
            });
        }
        *count += 1;
        Ok(Some(UserSlot {
            open: Arc::clone(&self.open),
            user: user.clone(),
        }))
    }

    /// Users with requests in flight now.
    pub fn users(&self) -> usize {
        self.open.lock().len()
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Only users with requests in flight are remembered.
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_the_cap_and_slots_come_back() {
        let caps = UserInFlight::new(2);
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let first = caps.enter(&alice).unwrap();
        let _second = caps.enter(&alice).unwrap();
        let refused = caps.enter(&alice).err().map(|e| e.code());
        assert_eq!(refused, Some("user_in_flight"));
        assert!(caps.enter(&bob).is_ok());
        drop(first);
        let third = caps.enter(&alice).unwrap();
        assert!(third.is_some());
        drop((third, _second));
        assert_eq!(caps.users(), 0, "nobody in flight is forgotten");
        let uncapped = UserInFlight::new(0);
        assert!((0..50).all(|_| uncapped.enter(&alice).is_ok_and(|s| s.is_none())));
    }
}
