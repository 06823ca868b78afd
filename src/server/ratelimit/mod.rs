//! Per-user rate limit on fingerprints looked up (not requests), with `governor`'s GCRA.
//!
//! Keyed by the credential's user id and nothing else: never by a fingerprint or anything
//! derived from one, so the limiter's memory says who asked, never what. With several replicas
//! the budget lives in Redis instead (`shared.rs`), so N replicas do not give a user N budgets.

mod shared;

pub use shared::SharedLimiter;

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::domain::UserId;

/// Why a limiter could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitConfigError {
    /// Burst or refill is zero.
    #[error("rate limit burst and refill must be positive")]
    Zero,
}

/// The per-user fingerprint budget.
pub struct FingerprintLimiter {
    limiter: RateLimiter<UserId, DefaultKeyedStateStore<UserId>, DefaultClock>,
    clock: DefaultClock,
    full_refill_secs: u64,
}

/// A refused lookup: when the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds to wait (at least 1).
    pub retry_after_secs: u64,
}

impl FingerprintLimiter {
    /// A limiter allowing `burst` fingerprints at once, refilled at `refill_per_day` per day.
    pub fn new(burst: u32, refill_per_day: u32) -> Result<Self, RateLimitConfigError> {
        let burst = NonZeroU32::new(burst).ok_or(RateLimitConfigError::Zero)?;
        let refill = NonZeroU32::new(refill_per_day).ok_or(RateLimitConfigError::Zero)?;
        let period = Duration::from_secs(86_400) / refill.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or(RateLimitConfigError::Zero)?
            .allow_burst(burst);
        Ok(Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            full_refill_secs: (period * burst.get()).as_secs().max(1),
        })
    }

    /// Takes `n` fingerprints from `user`'s budget, or says how long until they fit.
    /// `n` larger than the burst can never fit; the API caps batches below the burst.
    pub fn check(&self, user: &UserId, n: usize) -> Result<(), Limited> {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match self.limiter.check_key_n(user, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Limited {
                    retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
                })
            }
            // More than the whole burst: it would never fit; say when the bucket is full again.
            Err(_insufficient) => Err(Limited {
                retry_after_secs: self.full_refill_secs,
            }),
        }
    }

    /// Forgets users whose budget is full again, so memory tracks active users only.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Users currently tracked.
    pub fn tracked_users(&self) -> usize {
        self.limiter.len()
    }
}

/// The per-user budget a request is charged against: this process's alone, or the one shared
/// by every replica in Redis with this process's as its fallback. Handlers call
/// [`Limiter::check`] and never learn which; the mode is chosen once, at start-up.
pub enum Limiter {
    /// This process's budget only (one replica, or replicas with separate budgets).
    Local(FingerprintLimiter),
    /// The budget in Redis; `fallback` answers while Redis fails or is slow.
    Shared {
        /// The shared budget (boxed: it is much larger than the local one).
        shared: Box<SharedLimiter>,
        /// This process's budget, asked when the shared one cannot be.
        fallback: FingerprintLimiter,
    },
}

impl Limiter {
    /// Takes `n` fingerprints from `user`'s budget, all or nothing, or says how long until they
    /// fit.
    pub async fn check(&self, user: &UserId, n: usize) -> Result<(), Limited> {
        if n == 0 {
            return Ok(());
        }
        match self {
            Limiter::Local(local) => local.check(user, n),
            // Boxed: the Redis round trip's future is kilobytes, and inline it would make every
            // caller's future (every request's, allocated and wiped on free) that much larger,
            // whichever limiter runs.
            Limiter::Shared { shared, fallback } => Box::pin(shared.check(user, n, fallback)).await,
        }
    }

    /// This process's budget (the fallback of a shared one).
    fn local(&self) -> &FingerprintLimiter {
        match self {
            Limiter::Local(local)
            | Limiter::Shared {
                fallback: local, ..
            } => local,
        }
    }

    /// Forgets users whose local budget is full again (run every minute).
    pub fn forget_idle(&self) {
        self.local().forget_idle();
    }

    /// Users the local budget tracks (for stats).
    pub fn tracked_users(&self) -> usize {
        self.local().tracked_users()
    }

    /// Where budgets live, for stats: `local` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self {
            Limiter::Local(_) => "local",
            Limiter::Shared { .. } => "redis",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_per_user_and_counted_in_fingerprints() {
        let limiter = FingerprintLimiter::new(100, 86_400).unwrap();
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        assert!(limiter.check(&alice, 60).is_ok());
        assert!(limiter.check(&alice, 40).is_ok());
        let refused = limiter.check(&alice, 10).unwrap_err();
        assert!((1..=11).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(limiter.check(&bob, 100).is_ok());
        assert!(limiter.check(&alice, 0).is_ok());
    }
}
