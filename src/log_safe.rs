//! What may reach a log line, decided at compile time.
//!
//! Only values of types that implement [`LogSafe`] can be passed to the logging macros
//! ([`safe_info!`](crate::safe_info) and friends), and the message itself must be a string
//! literal, so request data cannot reach a log by accident: `E164`, `Fingerprint`, `UserId`,
//! `String` and request bodies do not implement the trait. Direct use of `tracing`'s macros (or
//! printing) anywhere else in `src/` is refused by `tests/log_policy.rs`.
//! The idea is libsignal's `LogSafeDisplay`.

use std::fmt;

/// A type whose `Display` output may appear in logs: it never carries a phone number, a
/// fingerprint, a credential, a user id or anything else derived from a request's payload.
pub trait LogSafe: fmt::Display {}

macro_rules! log_safe {
    ($($t:ty),* $(,)?) => { $(impl LogSafe for $t {})* };
}

log_safe!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool
);
log_safe!(std::net::SocketAddr, std::net::IpAddr);

impl LogSafe for &'static str {}
impl LogSafe for std::io::Error {}
#[cfg(feature = "client")]
impl LogSafe for tokio::task::JoinError {}
impl<T: LogSafe + ?Sized> LogSafe for &T {}

/// A path the operator configured (data directory, key file): shown, never read from requests.
pub struct SafePath<'a>(pub &'a std::path::Path);

impl fmt::Display for SafePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}
impl LogSafe for SafePath<'_> {}

/// A client's network for access logs: the address cut to /24 (IPv4) or /48 (IPv6), enough for
/// abuse forensics but not to single out a subscriber line; `-` when not logged.
pub struct ClientNetwork(pub Option<std::net::IpAddr>);

impl fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some(std::net::IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                write!(f, "{a}.{b}.{c}.0/24")
            }
            Some(std::net::IpAddr::V6(v6)) => {
                let s = v6.segments();
                write!(f, "{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        }
    }
}
impl LogSafe for ClientNetwork {}

/// A route template from the router (`/v1/discover`), never the raw request path.
pub struct RouteTemplate<'a>(pub &'a str);

impl fmt::Display for RouteTemplate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl LogSafe for RouteTemplate<'_> {}

/// Logs at a level with a literal message and `key = value` fields whose values are
/// [`LogSafe`]. Used through [`safe_info!`](crate::safe_info) and friends. The event is emitted
/// from a function local to the call site (so its file, line and module are the caller's) that
/// takes its fields as `&dyn LogSafe`: the only way a value gets in.
#[macro_export]
macro_rules! safe_event {
    ($level:ident, $msg:literal $(, $key:ident = $value:expr)* $(,)?) => {{
        fn emit($( $key: &dyn $crate::log_safe::LogSafe, )*) {
            ::tracing::$level!($( $key = %$key, )* $msg);
        }
        emit($( &$value, )*);
    }};
}

/// `info` with log-safe fields only.
#[macro_export]
macro_rules! safe_info {
    ($($t:tt)*) => { $crate::safe_event!(info, $($t)*) };
}

/// `warn` with log-safe fields only.
#[macro_export]
macro_rules! safe_warn {
    ($($t:tt)*) => { $crate::safe_event!(warn, $($t)*) };
}

/// `error` with log-safe fields only.
#[macro_export]
macro_rules! safe_error {
    ($($t:tt)*) => { $crate::safe_event!(error, $($t)*) };
}

/// Whether debug events can be logged at all now (the global level filter): a caller may skip
/// gathering what only a debug event would carry.
pub fn debug_enabled() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    tracing::Level::DEBUG <= STATIC_MAX_LEVEL && tracing::Level::DEBUG <= LevelFilter::current()
}

/// `debug` with log-safe fields only.
#[macro_export]
macro_rules! safe_debug {
    ($($t:tt)*) => { $crate::safe_event!(debug, $($t)*) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn safe_values_log() {
        let n = 3usize;
        crate::safe_info!(
            "counted",
            n = n,
            route = super::RouteTemplate("/v1/discover")
        );
        crate::safe_warn!("plain message");
    }

    #[test]
    fn client_addresses_are_truncated() {
        use super::ClientNetwork;
        let v4: std::net::IpAddr = "203.0.113.77".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap();
        assert_eq!(ClientNetwork(Some(v4)).to_string(), "203.0.113.0/24");
        assert_eq!(ClientNetwork(Some(v6)).to_string(), "2001:db8:abcd::/48");
        assert_eq!(ClientNetwork(None).to_string(), "-");
    }
}
