//! Load shedding: a fixed number of public requests may be in flight; one more is answered
//! `503 overloaded` with `Retry-After` at once instead of waiting in an unbounded queue (taken in
//! [`super::observe`], around the router). Within that, one user may have only a few in flight
//! (`429 user_in_flight`).

use super::ApiError;
use crate::domain::UserId;
use crate::server::keyed_cap::{KeyedCap, KeyedSlot};

/// Seconds a shed client is told to wait before retrying.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Requests in flight per user, so one credential cannot hold every in-flight slot (for
/// example with bodies it never sends). Keyed by the credential's user id only.
pub struct UserInFlight(KeyedCap<UserId>);

impl UserInFlight {
    /// At most `max` requests in flight per user (0: no cap).
    pub fn new(max: usize) -> Self {
        Self(KeyedCap::new(max))
    }

    /// A slot for one more request of `user` (held until it drops), or `user_in_flight` when
    /// the user has `max` already.
    pub fn enter(&self, user: &UserId) -> Result<KeyedSlot<UserId>, ApiError> {
        self.0.enter(user).ok_or(ApiError::UserInFlight {
            max: self.0.max(),
            retry_after: RETRY_AFTER_SECS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_over_the_cap_gets_user_in_flight_with_retry_after() {
        let caps = UserInFlight::new(3);
        let alice = UserId::parse("alice").unwrap();
        let _held: Vec<_> = (0..3).map(|_| caps.enter(&alice).unwrap()).collect();
        let refused = caps.enter(&alice).err();
        let seen = refused.as_ref().map(|e| (e.code(), e.status().as_u16()));
        assert_eq!(seen, Some(("user_in_flight", 429)));
        assert!(
            matches!(
                refused,
                Some(ApiError::UserInFlight {
                    max: 3,
                    retry_after: RETRY_AFTER_SECS
                })
            ),
            "{refused:?}"
        );
        assert!(caps.enter(&UserId::parse("bob").unwrap()).is_ok());
    }
}
