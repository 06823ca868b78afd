//! The service's configuration: one typed struct, layered from built-in defaults, an optional
//! TOML file, `CONTACT_DISCOVERY_*` environment variables and command-line flags (last wins).
//! The defaults run out of the box on one machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "data";

/// Every setting of `serve`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Registry, generated keys and the admin token live here.
    pub data_dir: PathBuf,
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener (registrations, stats, metrics). Keep it internal.
    pub admin_listen: SocketAddr,
    /// Admin bearer token; generated into `<data-dir>/admin.token` when unset.
    pub admin_token: Option<String>,
    /// Credential key file (64 hex chars); `<data-dir>/credential.key`, generated, when unset.
    pub credential_key_file: Option<PathBuf>,
    /// The credential key being rotated out: credentials it minted are still accepted (until
    /// they expire, at most `max_credential_ttl_seconds`), so the backend and the replicas need
    /// not switch at the same instant. Unset outside a rotation.
    pub previous_credential_key_file: Option<PathBuf>,
    /// Server secret file (64 hex chars); `<data-dir>/server.secret`, generated, when unset.
    pub server_secret_file: Option<PathBuf>,
    /// Server secret as 64 hex chars (from the environment); overrides the file.
    pub server_secret: Option<String>,
    /// Epoch length in seconds (at least 60).
    pub epoch_seconds: u64,
    /// How long after a rotation the previous epoch is still answered (clamped to one epoch).
    pub epoch_grace_seconds: u64,
    /// Most fingerprints per discovery request.
    pub max_batch: usize,
    /// Fingerprints a user may look up at once (the bucket size).
    pub rate_limit_burst: u32,
    /// Fingerprints added back to a user's bucket per day.
    pub rate_limit_refill_per_day: u32,
    /// Longest credential lifetime accepted, seconds.
    pub max_credential_ttl_seconds: u64,
    /// Accept discovery requests without credentials (demos only; loud).
    pub insecure_no_auth: bool,
    /// Seed a synthetic registry when empty and print a ready-to-paste request.
    pub demo: bool,
    /// Lock all memory (index, in-flight buffers) into RAM so it never reaches swap.
    pub mlock: bool,
    /// Log the client's address in access logs, truncated to /24 (IPv4) or /48 (IPv6).
    pub log_client_ip: bool,
    /// `/readyz` stays false while fewer numbers are registered (a replica started on an empty
    /// data directory must not take traffic and answer "not registered" for everyone).
    pub ready_min_registrations: u64,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `contact_discovery=debug`.
    pub log: String,
    /// A connection must deliver a complete request head within this many milliseconds of
    /// waiting for one (slowloris guard; also bounds idle keep-alive), or it is closed.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive within this many milliseconds, or the answer is 408.
    pub body_read_timeout_ms: u64,
    /// Most open connections per listener; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most public requests in flight; more are shed with 503 `overloaded` and `Retry-After`.
    pub max_in_flight: usize,
    /// Most discovery requests one user may have in flight; more get 429 `user_in_flight`
    /// (0: no cap).
    pub max_in_flight_per_user: usize,
    /// After its first second, a request body must average at least this many bytes per second,
    /// or the answer is 408 `body_too_slow` (0: no minimum rate).
    pub min_body_bytes_per_second: u64,
    /// A write to a connection that makes no progress for this many milliseconds (the peer
    /// stopped reading) closes the connection.
    pub write_timeout_ms: u64,
    /// A connection finishes its current request and closes after this many seconds.
    pub max_connection_age_seconds: u64,
    /// Most requests served on one connection before it is closed.
    pub max_requests_per_connection: u32,
    /// Most open connections from one client address per listener; more are closed at once
    /// (0: no cap; behind a proxy, set it above the proxy's connection pool or to 0).
    pub max_connections_per_address: u32,
    /// Bearer token that may read `/metrics` (the admin token may too); generated into
    /// `<data-dir>/metrics.token` when unset.
    pub metrics_token: Option<String>,
    /// Redis holding the registry's change stream and snapshot, shared by every replica
    /// (`redis://host:port/db`); unset: this process's registry stands alone.
    pub registry_redis_url: Option<String>,
    /// With a registry stream: once it holds this many entries, a replica publishes a shared
    /// snapshot and trims the stream (a new replica loads the snapshot, then follows).
    pub registry_snapshot_every: u64,
    /// Redis holding rate-limit budgets shared by every replica, so a user who spreads requests
    /// over N replicas gets one budget, not N; unset: each process limits on its own.
    pub rate_limit_redis_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            credential_key_file: None,
            previous_credential_key_file: None,
            server_secret_file: None,
            server_secret: None,
            epoch_seconds: 86_400,
            epoch_grace_seconds: 3_600,
            max_batch: 50_000,
            rate_limit_burst: 50_000,
            rate_limit_refill_per_day: 2_000,
            max_credential_ttl_seconds: 7 * 86_400,
            insecure_no_auth: false,
            demo: false,
            mlock: false,
            log_client_ip: false,
            ready_min_registrations: 0,
            log: "info".to_owned(),
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 4_096,
            max_in_flight: 1_024,
            max_in_flight_per_user: 4,
            min_body_bytes_per_second: 1_024,
            write_timeout_ms: 10_000,
            max_connection_age_seconds: 600,
            max_requests_per_connection: 1_000,
            max_connections_per_address: 128,
            metrics_token: None,
            registry_redis_url: None,
            registry_snapshot_every: 10_000,
            rate_limit_redis_url: None,
        }
    }
}

impl std::fmt::Debug for Config {
    /// Secrets are shown as set or unset, never by value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| if o.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &set(&self.admin_token))
            .field("credential_key_file", &self.credential_key_file)
            .field(
                "previous_credential_key_file",
                &self.previous_credential_key_file,
            )
            .field("server_secret_file", &self.server_secret_file)
            .field("server_secret", &set(&self.server_secret))
            .field("epoch_seconds", &self.epoch_seconds)
            .field("epoch_grace_seconds", &self.epoch_grace_seconds)
            .field("max_batch", &self.max_batch)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("rate_limit_refill_per_day", &self.rate_limit_refill_per_day)
            .field(
                "max_credential_ttl_seconds",
                &self.max_credential_ttl_seconds,
            )
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("demo", &self.demo)
            .field("mlock", &self.mlock)
            .field("log_client_ip", &self.log_client_ip)
            .field("ready_min_registrations", &self.ready_min_registrations)
            .field("log", &self.log)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("body_read_timeout_ms", &self.body_read_timeout_ms)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_per_user", &self.max_in_flight_per_user)
            .field("min_body_bytes_per_second", &self.min_body_bytes_per_second)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field(
                "max_connection_age_seconds",
                &self.max_connection_age_seconds,
            )
            .field(
                "max_requests_per_connection",
                &self.max_requests_per_connection,
            )
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("metrics_token", &set(&self.metrics_token))
            // A Redis URL may carry a password.
            .field("registry_redis_url", &set(&self.registry_redis_url))
            .field("registry_snapshot_every", &self.registry_snapshot_every)
            .field("rate_limit_redis_url", &set(&self.rate_limit_redis_url))
            .finish()
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
    /// A layer could not be read or has the wrong shape.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// `serve` flags; each is also read from `CONTACT_DISCOVERY_<NAME>`. Unset flags fall through to
/// the config file, then to the defaults.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "CONTACT_DISCOVERY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: data].
    #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Public listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "CONTACT_DISCOVERY_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, env = "CONTACT_DISCOVERY_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Admin bearer token [default: generated into DATA_DIR/admin.token].
    #[arg(long, env = "CONTACT_DISCOVERY_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Credential key file, 64 hex chars [default: generated DATA_DIR/credential.key].
    #[arg(long, env = "CONTACT_DISCOVERY_CREDENTIAL_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_key_file: Option<PathBuf>,
    /// Credential key being rotated out, still accepted for verifying [default: none].
    #[arg(long, env = "CONTACT_DISCOVERY_PREVIOUS_CREDENTIAL_KEY_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_credential_key_file: Option<PathBuf>,
    /// Server secret file, 64 hex chars [default: generated DATA_DIR/server.secret].
    #[arg(long, env = "CONTACT_DISCOVERY_SERVER_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_secret_file: Option<PathBuf>,
    /// Server secret as 64 hex chars; overrides the file. Prefer the environment to the flag.
    #[arg(long, env = "CONTACT_DISCOVERY_SERVER_SECRET", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_secret: Option<String>,
    /// Epoch length in seconds, at least 60 [default: 86400].
    #[arg(long, env = "CONTACT_DISCOVERY_EPOCH_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_seconds: Option<u64>,
    /// Seconds the previous epoch is still answered after a rotation [default: 3600].
    #[arg(long, env = "CONTACT_DISCOVERY_EPOCH_GRACE_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_grace_seconds: Option<u64>,
    /// Most fingerprints per request [default: 50000].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_BATCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// Per-user bucket of fingerprint lookups [default: 50000].
    #[arg(long, env = "CONTACT_DISCOVERY_RATE_LIMIT_BURST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
    /// Lookups added back to the bucket per day [default: 2000].
    #[arg(long, env = "CONTACT_DISCOVERY_RATE_LIMIT_REFILL_PER_DAY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_refill_per_day: Option<u32>,
    /// Longest credential lifetime accepted, seconds [default: 604800].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CREDENTIAL_TTL_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_credential_ttl_seconds: Option<u64>,
    /// Accept requests without credentials. For local demos only.
    #[arg(long, env = "CONTACT_DISCOVERY_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_no_auth: Option<bool>,
    /// Seed a synthetic registry if empty and print a ready-to-paste request.
    #[arg(long, env = "CONTACT_DISCOVERY_DEMO", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo: Option<bool>,
    /// Lock all memory into RAM (mlockall) so the index and request buffers never reach swap.
    #[arg(long, env = "CONTACT_DISCOVERY_MLOCK", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlock: Option<bool>,
    /// Put the client's address, truncated to /24 or /48, in access logs (off: no address).
    #[arg(long, env = "CONTACT_DISCOVERY_LOG_CLIENT_IP", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_client_ip: Option<bool>,
    /// Not ready while fewer numbers are registered, so an empty replica takes no traffic [default: 0].
    #[arg(long, env = "CONTACT_DISCOVERY_READY_MIN_REGISTRATIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_min_registrations: Option<u64>,
    /// Log filter, RUST_LOG syntax [default: info].
    #[arg(long, env = "CONTACT_DISCOVERY_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Milliseconds a connection may take to send a request head [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_HEADER_READ_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds a request body may take to arrive [default: 30000].
    #[arg(long, env = "CONTACT_DISCOVERY_BODY_READ_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_read_timeout_ms: Option<u64>,
    /// Most open connections per listener [default: 4096].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most public requests in flight before shedding with 503 [default: 1024].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_IN_FLIGHT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Most discovery requests of one user in flight, 0 for no cap [default: 4].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_IN_FLIGHT_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_user: Option<usize>,
    /// Slowest average body rate after the first second, bytes/s, 0 for none [default: 1024].
    #[arg(long, env = "CONTACT_DISCOVERY_MIN_BODY_BYTES_PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_body_bytes_per_second: Option<u64>,
    /// Milliseconds a write may make no progress before the connection closes [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_WRITE_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout_ms: Option<u64>,
    /// Seconds after which a connection closes once its current request is done [default: 600].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTION_AGE_SECONDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age_seconds: Option<u64>,
    /// Most requests served on one connection [default: 1000].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_REQUESTS_PER_CONNECTION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Most open connections per client address and listener, 0 for no cap [default: 128].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTIONS_PER_ADDRESS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<u32>,
    /// Bearer token for /metrics (the admin token works too) [default: generated into DATA_DIR/metrics.token].
    #[arg(long, env = "CONTACT_DISCOVERY_METRICS_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<String>,
    /// Redis URL of the registry change stream shared by all replicas [default: none, standalone].
    #[arg(long, env = "CONTACT_DISCOVERY_REGISTRY_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_redis_url: Option<String>,
    /// Stream entries after which a shared registry snapshot is published [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_REGISTRY_SNAPSHOT_EVERY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_snapshot_every: Option<u64>,
    /// Redis URL of rate-limit budgets shared by all replicas [default: none, per process].
    #[arg(long, env = "CONTACT_DISCOVERY_RATE_LIMIT_REDIS_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_redis_url: Option<String>,
}

impl Config {
    /// Layers defaults, the optional file, then environment and flags (already merged by clap).
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config {
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Serialized::defaults(args))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.epoch_seconds < 60 {
            return invalid("epoch_seconds must be at least 60");
        }
        if self.max_batch == 0 {
            return invalid("max_batch must be at least 1");
        }
        if self.rate_limit_burst == 0 || self.rate_limit_refill_per_day == 0 {
            return invalid("rate_limit_burst and rate_limit_refill_per_day must be positive");
        }
        if self.max_batch > self.rate_limit_burst as usize {
            return invalid(
                "max_batch must not exceed rate_limit_burst, or a full batch could never pass",
            );
        }
        if self.registry_snapshot_every == 0 {
            return invalid("registry_snapshot_every must be at least 1");
        }
        if self.max_credential_ttl_seconds == 0 {
            return invalid("max_credential_ttl_seconds must be positive");
        }
        if self.header_read_timeout_ms == 0
            || self.body_read_timeout_ms == 0
            || self.write_timeout_ms == 0
        {
            return invalid(
                "header_read_timeout_ms, body_read_timeout_ms and write_timeout_ms must be positive",
            );
        }
        if self.max_connection_age_seconds == 0 || self.max_requests_per_connection == 0 {
            return invalid(
                "max_connection_age_seconds and max_requests_per_connection must be positive",
            );
        }
        let permits = 1..=(u32::MAX as usize);
        if !permits.contains(&self.max_connections) || !permits.contains(&self.max_in_flight) {
            return invalid("max_connections and max_in_flight must be between 1 and 2^32 - 1");
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            return invalid("admin_token must be at least 16 characters");
        }
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            return invalid("metrics_token must be at least 16 characters");
        }
        Ok(())
    }

    /// Where the credential key is read from.
    pub fn credential_key_path(&self) -> PathBuf {
        self.credential_key_file
            .clone()
            .unwrap_or_else(|| default_credential_key_path(&self.data_dir))
    }
}

/// `<data-dir>/credential.key`.
pub fn default_credential_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credential.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        let loaded = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(loaded.listen, Config::default().listen);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "epoch_seconds = 120\nmax_batch = 10\n").unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            max_batch: Some(20),
            ..ServeArgs::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!((c.epoch_seconds, c.max_batch), (120, 20));
        assert_eq!(c.epoch_grace_seconds, 3_600);
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "epoch_secondz = 120\n").unwrap();
        let args = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        assert!(Config::load(&args).is_err());
        let args = ServeArgs {
            epoch_seconds: Some(59),
            ..ServeArgs::default()
        };
        assert!(Config::load(&args).is_err());
        let args = ServeArgs {
            max_batch: Some(60_000),
            ..ServeArgs::default()
        };
        assert!(Config::load(&args).is_err());
        let missing = ServeArgs {
            config: Some(dir.path().join("nope.toml")),
            ..ServeArgs::default()
        };
        assert!(Config::load(&missing).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config {
            admin_token: Some("super-secret-admin-token".into()),
            metrics_token: Some("super-secret-metrics-token".into()),
            server_secret: Some("ab".repeat(32)),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret"));
        assert!(!shown.contains("abab"));
    }
}
