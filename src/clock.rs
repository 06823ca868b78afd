//! Wall-clock time for epochs and credentials, with a manual clock tests can move.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the service reads the time from.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A clock that only moves when told to (unix milliseconds); for tests of epoch rotation.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `unix_secs`.
    pub fn manual(unix_secs: u64) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(unix_secs * 1000)))
    }

    /// Unix time in milliseconds.
    pub fn now_millis(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Unix time in whole seconds.
    pub fn now_secs(&self) -> u64 {
        self.now_millis() / 1000
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock; does nothing to the system clock.
    pub fn set_secs(&self, unix_secs: u64) {
        if let Clock::Manual(ms) = self {
            ms.store(unix_secs * 1000, Ordering::SeqCst);
        }
    }

    /// How often background tasks re-read this clock at the least: a manual clock can jump.
    pub fn poll_interval(&self) -> Duration {
        match self {
            Clock::System => Duration::from_secs(1),
            Clock::Manual(_) => Duration::from_millis(10),
        }
    }
}
