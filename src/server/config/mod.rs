//! The service's configuration, in sections, layered from built-in defaults, an optional TOML
//! file, then `CONTACT_DISCOVERY_*` environment variables and command-line flags (last wins;
//! clap reads both, see [`args`]). Values are parsed into their types as the layers are merged
//! (addresses, non-zero counts, durations, checked secrets); [`Settings`] is a configuration
//! that also passed the checks that span fields, and is what the service is built from.
//! The defaults run out of the box on one machine.

pub mod args;
pub mod secret;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use serde_with::{DurationMilliSeconds, DurationSeconds, serde_as};

pub use args::ServeArgs;
pub use secret::{HexSecret, RedisUrl, SecretText, Token};

use crate::domain::EpochSchedule;
use crate::server::connection::ConnectionLimits;

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "data";

/// Every setting of `serve`. In the TOML file each section is a table and each key is the
/// setting's flag in snake_case (`[limits]` / `max_batch = 100`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Registry, generated keys and the generated tokens live here.
    pub data_dir: PathBuf,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `contact_discovery=debug`.
    pub log: String,
    /// Log the client's address in access logs, truncated to /24 (IPv4) or /48 (IPv6).
    pub log_client_ip: bool,
    /// Seed a synthetic registry when empty and print a ready-to-paste request.
    pub demo: bool,
    /// Lock all memory (index, in-flight buffers) into RAM so it never reaches swap.
    pub mlock: bool,
    /// `/readyz` stays false while fewer numbers are registered (a replica started on an empty
    /// data directory must not take traffic and answer "not registered" for everyone).
    pub ready_min_registrations: u64,
    /// Where the service listens.
    pub listeners: Listeners,
    /// Key material and bearer tokens.
    pub secrets: Secrets,
    /// Which callers are accepted.
    pub auth: Auth,
    /// Epoch length and overlap.
    pub epochs: Epochs,
    /// What one request, one user and the public listener may take.
    pub limits: Limits,
    /// What one connection may take, on both listeners.
    pub connections: Connections,
    /// State shared by every replica through Redis.
    pub replication: Replication,
    /// The private mode (OPRF plus a downloaded set).
    pub private: Private,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: "info".to_owned(),
            log_client_ip: false,
            demo: false,
            mlock: false,
            ready_min_registrations: 0,
            listeners: Listeners::default(),
            secrets: Secrets::default(),
            auth: Auth::default(),
            epochs: Epochs::default(),
            limits: Limits::default(),
            connections: Connections::default(),
            replication: Replication::default(),
            private: Private::default(),
        }
    }
}

/// `[listeners]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener (registrations, stats, metrics). Keep it internal.
    pub admin_listen: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[secrets]`. Unset secrets are read from, or generated into, the data directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// Admin bearer token; generated into `<data-dir>/admin.token` when unset.
    pub admin_token: Option<Token>,
    /// Bearer token that may read `/metrics` (the admin token may too); generated into
    /// `<data-dir>/metrics.token` when unset.
    pub metrics_token: Option<Token>,
    /// Server secret (from the environment); overrides the file.
    pub server_secret: Option<HexSecret>,
    /// Server secret file (64 hex chars); `<data-dir>/server.secret`, generated, when unset.
    pub server_secret_file: Option<PathBuf>,
    /// Credential key file (64 hex chars); `<data-dir>/credential.key`, generated, when unset.
    pub credential_key_file: Option<PathBuf>,
    /// The credential key being rotated out: credentials it minted are still accepted (until
    /// they expire, at most `max_credential_ttl_seconds`), so the backend and the replicas need
    /// not switch at the same instant. Unset outside a rotation.
    pub previous_credential_key_file: Option<PathBuf>,
}

/// `[auth]`.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Longest credential lifetime accepted.
    #[serde(rename = "max_credential_ttl_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub max_credential_ttl: Duration,
    /// Accept discovery requests without credentials (demos only; loud).
    pub insecure_no_auth: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            max_credential_ttl: Duration::from_secs(7 * 86_400),
            insecure_no_auth: false,
        }
    }
}

/// `[epochs]`.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Epochs {
    /// Epoch length.
    #[serde(rename = "epoch_seconds")]
    pub length: EpochLength,
    /// How long after a rotation the previous epoch is still answered (clamped to one epoch).
    #[serde(rename = "epoch_grace_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub grace: Duration,
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            length: EpochLength(const { NonZeroU64::new(86_400).unwrap() }),
            grace: Duration::from_secs(3_600),
        }
    }
}

/// `[private]`: the private mode's key schedule, its set and its evaluations.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Private {
    /// Serve the private mode (`/v1/private/*`). Its set is built in the background at start
    /// (about 25 µs per registered number per core), so `/readyz` does not wait for it.
    #[serde(rename = "private_mode")]
    pub enabled: bool,
    /// OPRF key epoch length. Long, because a new key means every client downloads the whole
    /// set and evaluates every contact again.
    #[serde(rename = "private_key_epoch_seconds")]
    pub key_epoch: EpochLength,
    /// How long after a key change the previous key is still served (clamped to one key epoch).
    #[serde(rename = "private_key_grace_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub key_grace: Duration,
    /// How long before a key epoch starts its set is built and served.
    #[serde(rename = "private_key_lead_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub key_lead: Duration,
    /// The chance that one unregistered contact matches the set (the set's size follows it:
    /// about 2.7 bytes per registered number at 1e-6, 3.9 at 1e-9).
    #[serde(rename = "private_false_positive_rate")]
    pub false_positive_rate: f64,
    /// How often registry changes are folded into the published set (and its deltas).
    #[serde(rename = "private_publish_interval_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub publish_interval: Duration,
    /// Most elements per evaluation request (each costs the server about 25 µs); at most
    /// `rate_limit_burst` is used, so a full batch can always pass.
    #[serde(rename = "private_max_batch")]
    pub max_batch: NonZeroUsize,
    /// How long published changes are kept for deltas.
    #[serde(rename = "private_delta_history_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub delta_history: Duration,
    /// Most changed values kept for deltas (8 bytes each); older ones are dropped first.
    #[serde(rename = "private_delta_history_max_changes")]
    pub delta_history_max_changes: NonZeroUsize,
}

impl Default for Private {
    fn default() -> Self {
        Self {
            enabled: true,
            key_epoch: EpochLength(const { NonZeroU64::new(365 * 86_400).unwrap() }),
            key_grace: Duration::from_secs(86_400),
            key_lead: Duration::from_secs(86_400),
            false_positive_rate: 1e-6,
            publish_interval: Duration::from_secs(5),
            max_batch: const { NonZeroUsize::new(4_096).unwrap() },
            delta_history: Duration::from_secs(8 * 86_400),
            delta_history_max_changes: const { NonZeroUsize::new(4_000_000).unwrap() },
        }
    }
}

impl Private {
    /// `1 / false_positive_rate`, what the set is sized by.
    pub fn inverse_false_positive_rate(&self) -> u64 {
        (1.0 / self.false_positive_rate).round() as u64
    }
}

/// An epoch length in whole seconds, at least [`EpochLength::MIN_SECS`]: shorter epochs would
/// rotate salts faster than clients fetch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct EpochLength(NonZeroU64);

impl EpochLength {
    /// The shortest epoch accepted.
    pub const MIN_SECS: u64 = 60;

    /// The length in seconds.
    pub fn secs(self) -> NonZeroU64 {
        self.0
    }

    /// The schedule of epochs this long.
    pub fn schedule(self) -> EpochSchedule {
        EpochSchedule::new(self.0)
    }
}

/// An epoch length under [`EpochLength::MIN_SECS`].
#[derive(Debug, thiserror::Error)]
#[error("epoch_seconds must be at least 60")]
pub struct EpochTooShort;

impl TryFrom<u64> for EpochLength {
    type Error = EpochTooShort;

    fn try_from(secs: u64) -> Result<Self, Self::Error> {
        NonZeroU64::new(secs)
            .filter(|s| s.get() >= Self::MIN_SECS)
            .map(Self)
            .ok_or(EpochTooShort)
    }
}

impl From<EpochLength> for u64 {
    fn from(length: EpochLength) -> Self {
        length.0.get()
    }
}

/// `[limits]`.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most fingerprints per discovery request (at most `rate_limit_burst`).
    pub max_batch: NonZeroUsize,
    /// Fingerprints a user may look up at once (the bucket size).
    pub rate_limit_burst: NonZeroU32,
    /// Fingerprints added back to a user's bucket per day.
    pub rate_limit_refill_per_day: NonZeroU32,
    /// Most public requests in flight; more are shed with 503 `overloaded` and `Retry-After`.
    pub max_in_flight: NonZeroU32,
    /// Most discovery requests one user may have in flight; more get 429 `user_in_flight`
    /// (0: no cap).
    pub max_in_flight_per_user: usize,
    /// A request body must arrive within this long, or the answer is 408.
    #[serde(rename = "body_read_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub body_read_timeout: Duration,
    /// After its first second, a request body must average at least this many bytes per second,
    /// or the answer is 408 `body_too_slow` (0: no minimum rate).
    pub min_body_bytes_per_second: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: const { NonZeroUsize::new(50_000).unwrap() },
            rate_limit_burst: const { NonZeroU32::new(50_000).unwrap() },
            rate_limit_refill_per_day: const { NonZeroU32::new(2_000).unwrap() },
            max_in_flight: const { NonZeroU32::new(1_024).unwrap() },
            max_in_flight_per_user: 4,
            body_read_timeout: Duration::from_millis(30_000),
            min_body_bytes_per_second: 1_024,
        }
    }
}

impl Limits {
    /// Permits of the public listener's in-flight semaphore.
    pub fn in_flight_permits(&self) -> usize {
        usize::try_from(self.max_in_flight.get()).unwrap_or(usize::MAX)
    }
}

/// `[connections]`.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connections {
    /// A connection must deliver a complete request head within this long of waiting for one
    /// (slowloris guard; also bounds idle keep-alive), or it is closed.
    #[serde(rename = "header_read_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub header_read_timeout: Duration,
    /// A write to a connection that makes no progress this long (the peer stopped reading)
    /// closes the connection.
    #[serde(rename = "write_timeout_ms")]
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub write_timeout: Duration,
    /// A connection finishes its current request and closes after this long.
    #[serde(rename = "max_connection_age_seconds")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub max_connection_age: Duration,
    /// Most requests served on one connection before it is closed.
    pub max_requests_per_connection: NonZeroU32,
    /// Most open connections per listener; more wait in the kernel's accept queue.
    pub max_connections: NonZeroU32,
    /// Most open connections from one client address per listener; more are closed at once
    /// (0: no cap; behind a proxy, set it above the proxy's connection pool or to 0).
    pub max_connections_per_address: u32,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_millis(10_000),
            write_timeout: Duration::from_millis(10_000),
            max_connection_age: Duration::from_secs(600),
            max_requests_per_connection: const { NonZeroU32::new(1_000).unwrap() },
            max_connections: const { NonZeroU32::new(4_096).unwrap() },
            max_connections_per_address: 128,
        }
    }
}

impl Connections {
    /// The limits the connection loop enforces.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            write_timeout: self.write_timeout,
            max_age: self.max_connection_age,
            max_requests: self.max_requests_per_connection.get(),
            max_connections: self.max_connections.get(),
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

/// `[replication]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Redis holding the registry's change stream and snapshot, shared by every replica;
    /// unset: this process's registry stands alone.
    pub registry_redis_url: Option<RedisUrl>,
    /// With a registry stream: once it holds this many entries, a replica publishes a shared
    /// snapshot and trims the stream (a new replica loads the snapshot, then follows).
    pub registry_snapshot_every: NonZeroU64,
    /// Redis holding rate-limit budgets shared by every replica, so a user who spreads requests
    /// over N replicas gets one budget, not N; unset: each process limits on its own.
    pub rate_limit_redis_url: Option<RedisUrl>,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            registry_redis_url: None,
            registry_snapshot_every: const { NonZeroU64::new(10_000).unwrap() },
            rate_limit_redis_url: None,
        }
    }
}

impl std::fmt::Display for Config {
    /// The same redacted view as `Debug`, so the configuration can be logged at start.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl crate::log_safe::LogSafe for Config {}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read, has the wrong shape, or holds a value out of range.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Settings that are valid alone but not together.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl crate::log_safe::LogSafe for ConfigError {}

/// A configuration that passed every check: only loading ([`Settings::load`], or
/// [`Settings::try_from`] a [`Config`] built in code) makes one, and the service is built only
/// from one, so nothing after loading checks a setting again.
#[derive(Debug, Clone)]
pub struct Settings(Config);

impl Settings {
    /// Layers defaults, the optional file, then environment and flags (already merged by clap),
    /// and checks the result.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Serialized::defaults(args))
            .extract()
            .map_err(Box::new)?;
        Self::try_from(config)
    }

    /// Where the credential key is read from.
    pub fn credential_key_path(&self) -> PathBuf {
        self.secrets
            .credential_key_file
            .clone()
            .unwrap_or_else(|| default_credential_key_path(&self.data_dir))
    }
}

impl TryFrom<Config> for Settings {
    type Error = ConfigError;

    /// The checks no type expresses: limits that must agree, and durations that must not be
    /// zero.
    fn try_from(config: Config) -> Result<Self, Self::Error> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        let limits = &config.limits;
        if limits.max_batch.get() > limits.rate_limit_burst.get() as usize {
            return invalid(
                "max_batch must not exceed rate_limit_burst, or a full batch could never pass",
            );
        }
        let private = &config.private;
        if !(1e-12..=1e-2).contains(&private.false_positive_rate) {
            return invalid("private_false_positive_rate must be between 1e-12 and 0.01");
        }
        if private.publish_interval.is_zero() {
            return invalid("private_publish_interval_ms must be positive");
        }
        if config.auth.max_credential_ttl.is_zero() {
            return invalid("max_credential_ttl_seconds must be positive");
        }
        let connections = &config.connections;
        if connections.header_read_timeout.is_zero()
            || limits.body_read_timeout.is_zero()
            || connections.write_timeout.is_zero()
        {
            return invalid(
                "header_read_timeout_ms, body_read_timeout_ms and write_timeout_ms must be positive",
            );
        }
        if connections.max_connection_age.is_zero() {
            return invalid(
                "max_connection_age_seconds and max_requests_per_connection must be positive",
            );
        }
        Ok(Self(config))
    }
}

impl Deref for Settings {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl std::fmt::Display for Settings {
    /// The configuration's redacted view.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl crate::log_safe::LogSafe for Settings {}

/// `<data-dir>/credential.key`.
pub fn default_credential_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credential.key")
}

#[cfg(test)]
mod tests;
