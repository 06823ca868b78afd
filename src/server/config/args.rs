//! The `serve` command line: the top layer over the configuration. Every flag is also read from
//! `CONTACT_DISCOVERY_<NAME>`; a flag left unset falls through to the TOML file, then to the
//! defaults (`Config::default`). The sections mirror the configuration's, so the flags
//! serialise onto the same keys the file uses and figment merges them.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

use serde::Serialize;
use serde_with::skip_serializing_none;

use super::secret::SecretText;

/// `serve` flags.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServeArgs {
    /// TOML file with any of the settings below: each under its section's table (`[limits]`
    /// for `max_batch`), named as its flag in snake_case.
    #[arg(long, env = "CONTACT_DISCOVERY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub listeners: ListenerArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub epochs: EpochArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub replication: ReplicationArgs,
    #[command(flatten)]
    pub private: PrivateArgs,
}

/// Settings of the process as a whole (the file's top level).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ProcessArgs {
    /// Data directory [default: data].
    #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter, RUST_LOG syntax [default: info].
    #[arg(long, env = "CONTACT_DISCOVERY_LOG")]
    pub log: Option<String>,
    /// Put the client's address, truncated to /24 or /48, in access logs (off: no address).
    #[arg(long, env = "CONTACT_DISCOVERY_LOG_CLIENT_IP", num_args = 0..=1, default_missing_value = "true")]
    pub log_client_ip: Option<bool>,
    /// Seed a synthetic registry if empty and print a ready-to-paste request.
    #[arg(long, env = "CONTACT_DISCOVERY_DEMO", num_args = 0..=1, default_missing_value = "true")]
    pub demo: Option<bool>,
    /// Lock all memory into RAM (mlockall) so the index and request buffers never reach swap.
    #[arg(long, env = "CONTACT_DISCOVERY_MLOCK", num_args = 0..=1, default_missing_value = "true")]
    pub mlock: Option<bool>,
    /// Not ready while fewer numbers are registered, so an empty replica takes no traffic [default: 0].
    #[arg(long, env = "CONTACT_DISCOVERY_READY_MIN_REGISTRATIONS")]
    pub ready_min_registrations: Option<u64>,
}

/// `[listeners]`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Listeners ([listeners] in the file)")]
pub struct ListenerArgs {
    /// Public listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "CONTACT_DISCOVERY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090].
    #[arg(long, env = "CONTACT_DISCOVERY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

/// `[secrets]`: held as [`SecretText`] (never printed) and checked when the configuration loads.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Keys and tokens ([secrets])")]
pub struct SecretArgs {
    /// Admin bearer token, at least 16 characters [default: generated into DATA_DIR/admin.token].
    #[arg(long, env = "CONTACT_DISCOVERY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretText>,
    /// Bearer token for /metrics (the admin token works too) [default: generated into DATA_DIR/metrics.token].
    #[arg(long, env = "CONTACT_DISCOVERY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretText>,
    /// Server secret as 64 hex chars; overrides the file. Prefer the environment to the flag.
    #[arg(long, env = "CONTACT_DISCOVERY_SERVER_SECRET", hide_env_values = true)]
    pub server_secret: Option<SecretText>,
    /// Server secret file, 64 hex chars [default: generated DATA_DIR/server.secret].
    #[arg(long, env = "CONTACT_DISCOVERY_SERVER_SECRET_FILE")]
    pub server_secret_file: Option<PathBuf>,
    /// Credential key file, 64 hex chars [default: generated DATA_DIR/credential.key].
    #[arg(long, env = "CONTACT_DISCOVERY_CREDENTIAL_KEY_FILE")]
    pub credential_key_file: Option<PathBuf>,
    /// Credential key being rotated out, still accepted for verifying [default: none].
    #[arg(long, env = "CONTACT_DISCOVERY_PREVIOUS_CREDENTIAL_KEY_FILE")]
    pub previous_credential_key_file: Option<PathBuf>,
}

/// `[auth]`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Credentials ([auth])")]
pub struct AuthArgs {
    /// Longest credential lifetime accepted, seconds [default: 604800].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CREDENTIAL_TTL_SECONDS")]
    pub max_credential_ttl_seconds: Option<u64>,
    /// Accept requests without credentials. For local demos only.
    #[arg(long, env = "CONTACT_DISCOVERY_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
}

/// `[epochs]`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Epochs ([epochs])")]
pub struct EpochArgs {
    /// Epoch length in seconds, at least 60 [default: 86400].
    #[arg(long, env = "CONTACT_DISCOVERY_EPOCH_SECONDS")]
    pub epoch_seconds: Option<u64>,
    /// Seconds the previous epoch is still answered after a rotation [default: 3600].
    #[arg(long, env = "CONTACT_DISCOVERY_EPOCH_GRACE_SECONDS")]
    pub epoch_grace_seconds: Option<u64>,
}

/// `[private]`: the private mode.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Private mode ([private])")]
pub struct PrivateArgs {
    /// Serve the private mode (/v1/private/*) [default: true].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_MODE", num_args = 0..=1, default_missing_value = "true")]
    pub private_mode: Option<bool>,
    /// OPRF key epoch in seconds, at least 60 [default: 31536000, a year].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_KEY_EPOCH_SECONDS")]
    pub private_key_epoch_seconds: Option<u64>,
    /// Seconds the previous key is still served after a key change [default: 86400].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_KEY_GRACE_SECONDS")]
    pub private_key_grace_seconds: Option<u64>,
    /// Seconds before a key epoch starts that its set is built [default: 86400].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_KEY_LEAD_SECONDS")]
    pub private_key_lead_seconds: Option<u64>,
    /// Chance that one unregistered contact matches the set [default: 1e-6].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_FALSE_POSITIVE_RATE")]
    pub private_false_positive_rate: Option<f64>,
    /// Milliseconds between publications of registry changes into the set [default: 5000].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_PUBLISH_INTERVAL_MS")]
    pub private_publish_interval_ms: Option<u64>,
    /// Most elements per evaluation request [default: 4096].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_MAX_BATCH")]
    pub private_max_batch: Option<NonZeroUsize>,
    /// Seconds published changes are kept for deltas [default: 691200].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_DELTA_HISTORY_SECONDS")]
    pub private_delta_history_seconds: Option<u64>,
    /// Most changed values kept for deltas [default: 4000000].
    #[arg(long, env = "CONTACT_DISCOVERY_PRIVATE_DELTA_HISTORY_MAX_CHANGES")]
    pub private_delta_history_max_changes: Option<NonZeroUsize>,
}

/// `[limits]`: what one request, one user and the public listener may take.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Request limits ([limits])")]
pub struct LimitArgs {
    /// Most fingerprints per request [default: 50000].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_BATCH")]
    pub max_batch: Option<NonZeroUsize>,
    /// Per-user bucket of fingerprint lookups [default: 50000].
    #[arg(long, env = "CONTACT_DISCOVERY_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<NonZeroU32>,
    /// Lookups added back to the bucket per day [default: 2000].
    #[arg(long, env = "CONTACT_DISCOVERY_RATE_LIMIT_REFILL_PER_DAY")]
    pub rate_limit_refill_per_day: Option<NonZeroU32>,
    /// Most public requests in flight before shedding with 503 [default: 1024].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<NonZeroU32>,
    /// Most discovery requests of one user in flight, 0 for no cap [default: 4].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_IN_FLIGHT_PER_USER")]
    pub max_in_flight_per_user: Option<usize>,
    /// Milliseconds a request body may take to arrive [default: 30000].
    #[arg(long, env = "CONTACT_DISCOVERY_BODY_READ_TIMEOUT_MS")]
    pub body_read_timeout_ms: Option<u64>,
    /// Slowest average body rate after the first second, bytes/s, 0 for none [default: 1024].
    #[arg(long, env = "CONTACT_DISCOVERY_MIN_BODY_BYTES_PER_SECOND")]
    pub min_body_bytes_per_second: Option<u64>,
}

/// `[connections]`: what one connection may take, on both listeners.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Connection limits ([connections])")]
pub struct ConnectionArgs {
    /// Milliseconds a connection may take to send a request head [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Milliseconds a write may make no progress before the connection closes [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_WRITE_TIMEOUT_MS")]
    pub write_timeout_ms: Option<u64>,
    /// Seconds after which a connection closes once its current request is done [default: 600].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTION_AGE_SECONDS")]
    pub max_connection_age_seconds: Option<u64>,
    /// Most requests served on one connection [default: 1000].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_REQUESTS_PER_CONNECTION")]
    pub max_requests_per_connection: Option<NonZeroU32>,
    /// Most open connections per listener [default: 4096].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTIONS")]
    pub max_connections: Option<NonZeroU32>,
    /// Most open connections per client address and listener, 0 for no cap [default: 128].
    #[arg(long, env = "CONTACT_DISCOVERY_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<u32>,
}

/// `[replication]`: state shared by every replica through Redis.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[command(next_help_heading = "Replication ([replication])")]
pub struct ReplicationArgs {
    /// Redis URL of the registry change stream shared by all replicas [default: none, standalone].
    #[arg(
        long,
        env = "CONTACT_DISCOVERY_REGISTRY_REDIS_URL",
        hide_env_values = true
    )]
    pub registry_redis_url: Option<SecretText>,
    /// Stream entries after which a shared registry snapshot is published [default: 10000].
    #[arg(long, env = "CONTACT_DISCOVERY_REGISTRY_SNAPSHOT_EVERY")]
    pub registry_snapshot_every: Option<NonZeroU64>,
    /// Redis URL of rate-limit budgets shared by all replicas [default: none, per process].
    #[arg(
        long,
        env = "CONTACT_DISCOVERY_RATE_LIMIT_REDIS_URL",
        hide_env_values = true
    )]
    pub rate_limit_redis_url: Option<SecretText>,
}
