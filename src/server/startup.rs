//! Building and running the service: open the registry, load keys, bind both listeners (port 0
//! works: the real ports are reported), start the rotation task, serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

use crate::clock::Clock;
use crate::domain::secret::{self, KeyFileError, parse_hex32};
use crate::domain::{CredentialKey, EpochSchedule, ServerSecret};
use crate::metrics::Metrics;
use crate::server::api::body::BodyPace;
use crate::server::api::overload::UserInFlight;
use crate::server::api::{self, AppState, Listener, SharedState, admin, overload, public};
use crate::server::config::Config;
use crate::server::connection::{self, ConnectionLimits, CutCounter};
use crate::server::ratelimit::{FingerprintLimiter, RateLimitConfigError, SharedLimiter};
use crate::store::registry::{Registry, RegistryError};
use crate::store::replication::{Replica, ReplicationError};
use crate::store::rotation::{LiveIndexes, RotationPolicy, Rotator};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::server::config::ConfigError),
    /// Key material could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Rate limit settings are unusable.
    #[error(transparent)]
    RateLimit(#[from] RateLimitConfigError),
    /// The shared rate-limit Redis URL is unusable.
    #[error("rate_limit_redis_url: {0}")]
    SharedRateLimit(redis::RedisError),
    /// The shared registry stream settings are unusable.
    #[error(transparent)]
    Replication(ReplicationError),
}

/// Key material the service runs with.
pub struct Keys {
    /// Salts are derived from it.
    pub secret: ServerSecret,
    /// Verifies credentials.
    pub credential_key: CredentialKey,
    /// Also verifies credentials during a key rotation (never mints).
    pub previous_credential_key: Option<CredentialKey>,
    /// The admin bearer token.
    pub admin_token: String,
    /// The bearer token that reads `/metrics` (the admin token does too).
    pub metrics_token: String,
}

/// Loads the server secret, credential key, admin and metrics tokens: an explicit setting wins, otherwise
/// each is read from (or generated on first start into) the data directory with mode 0600. The
/// data directory is made private (0700, see [`secret::ensure_private_dir`]); every key file
/// read must be private too ([`secret::check_private`]), and a token file must hold at least 16
/// characters, as the flags and the environment must.
pub fn load_keys(config: &Config) -> Result<Keys, KeyFileError> {
    secret::ensure_private_dir(&config.data_dir)?;
    let secret = match (&config.server_secret, &config.server_secret_file) {
        (Some(hex), _) => parse_hex32(hex).ok_or(KeyFileError::EnvFormat {
            name: "server_secret",
        })?,
        (None, Some(path)) => secret::read_key(path)?,
        (None, None) => secret::read_or_create_key(&config.data_dir.join("server.secret"))?.0,
    };
    let credential_key = match &config.credential_key_file {
        Some(path) => secret::read_key(path)?,
        None => secret::read_or_create_key(&config.credential_key_path())?.0,
    };
    let previous_credential_key = match &config.previous_credential_key_file {
        Some(path) => Some(CredentialKey::from_bytes(secret::read_key(path)?)),
        None => None,
    };
    let token = |setting: &Option<String>, file: &str| match setting {
        Some(token) => Ok(token.trim().to_owned()),
        None => secret::read_or_create_token(&config.data_dir.join(file)),
    };
    Ok(Keys {
        secret: ServerSecret::from_bytes(secret),
        credential_key: CredentialKey::from_bytes(credential_key),
        previous_credential_key,
        admin_token: token(&config.admin_token, "admin.token")?,
        metrics_token: token(&config.metrics_token, "metrics.token")?,
    })
}

/// A built service: listeners bound, not yet serving.
pub struct Application {
    public: TcpListener,
    admin: TcpListener,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: SharedState,
    rotator: Rotator,
    limits: ConnectionLimits,
}

impl Application {
    /// Builds the service on the system clock.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        Self::build_with_clock(config, Clock::System).await
    }

    /// Builds the service on `clock` (tests move a manual clock across epochs).
    pub async fn build_with_clock(config: Config, clock: Clock) -> Result<Self, StartupError> {
        config.validate()?;
        let keys = load_keys(&config)?;
        let (registry, report) = Registry::open(&config.data_dir)?;
        crate::safe_info!(
            "registry opened",
            snapshot_entries = report.snapshot_entries,
            log_records = report.log_records,
            truncated_bytes = report.truncated_bytes,
        );
        let registry = Arc::new(registry);
        let metrics = Arc::new(Metrics::new()?);
        registry.counts().export_to(&metrics);

        let schedule =
            EpochSchedule::new(NonZeroU64::new(config.epoch_seconds).ok_or_else(|| {
                crate::server::config::ConfigError::Invalid("epoch_seconds".into())
            })?);
        let indexes = Arc::new(LiveIndexes::new(RotationPolicy::new(
            schedule,
            config.epoch_grace_seconds,
        )));
        if config.insecure_no_auth {
            crate::safe_warn!(
                "INSECURE: --insecure-no-auth is set; anyone who can reach the public listener can query without a credential. Never use this in production.",
                listen = config.listen,
            );
        }
        let replica = match &config.registry_redis_url {
            Some(url) => Some(
                Replica::new(
                    url,
                    &keys.secret,
                    Arc::clone(&registry),
                    Arc::clone(&metrics),
                    config.registry_snapshot_every,
                    clock.clone(),
                )
                .map_err(StartupError::Replication)?,
            ),
            None => {
                metrics.replication.synced.set(1);
                None
            }
        };
        let shared_limiter = match &config.rate_limit_redis_url {
            Some(url) => Some(
                SharedLimiter::new(
                    url,
                    &keys.secret,
                    config.rate_limit_burst,
                    config.rate_limit_refill_per_day,
                    metrics.rate_limit_fallbacks.clone(),
                )
                .map_err(StartupError::SharedRateLimit)?
                .with_clock(clock.clone()),
            ),
            None => None,
        };
        let state = Arc::new(AppState {
            indexes: Arc::clone(&indexes),
            registry: Arc::clone(&registry),
            secret: keys.secret.clone(),
            credential_key: (!config.insecure_no_auth).then(|| keys.credential_key.clone()),
            previous_credential_key: keys
                .previous_credential_key
                .clone()
                .filter(|_| !config.insecure_no_auth),
            max_credential_ttl: config.max_credential_ttl_seconds,
            admin_token_hash: admin::hash_token(&keys.admin_token),
            limiter: FingerprintLimiter::new(
                config.rate_limit_burst,
                config.rate_limit_refill_per_day,
            )?,
            metrics: Arc::clone(&metrics),
            clock: clock.clone(),
            max_batch: config.max_batch,
            started: Instant::now(),
            log_client_ip: config.log_client_ip,
            ready_min_registrations: config.ready_min_registrations,
            body_pace: BodyPace {
                timeout: Duration::from_millis(config.body_read_timeout_ms),
                min_bytes_per_sec: config.min_body_bytes_per_second,
            },
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            user_in_flight: UserInFlight::new(config.max_in_flight_per_user),
            metrics_token_hash: admin::hash_token(&keys.metrics_token),
            replica,
            shared_limiter,
        });
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            max_age: Duration::from_secs(config.max_connection_age_seconds),
            max_requests: config.max_requests_per_connection,
            max_connections: u32::try_from(config.max_connections).map_err(|_| {
                crate::server::config::ConfigError::Invalid("max_connections is too large".into())
            })?,
            max_connections_per_address: config.max_connections_per_address,
        };
        let rotator = Rotator {
            indexes,
            registry,
            secret: keys.secret,
            clock,
            metrics,
        };

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })
        };
        let public = bind(config.listen).await?;
        let admin = bind(config.admin_listen).await?;
        let public_addr = public.local_addr().map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartupError::Bind {
            addr: config.admin_listen,
            source,
        })?;
        Ok(Self {
            public,
            admin,
            public_addr,
            admin_addr,
            state,
            rotator,
            limits,
        })
    }

    /// The bound public address (the real port when configured with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state (tests and the demo read from it).
    pub fn state(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// Builds the current epoch's index before serving, so the service is ready from its first
    /// request; the other live epochs are built right after, while serving.
    pub async fn warm_up(&self) {
        self.rotator.warm_up().await;
    }

    /// Serves both listeners until `shutdown` completes, then drains in-flight requests, flushes
    /// the registry and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let rotation = tokio::spawn(self.rotator.run());
        let follower = self.state.replica.clone().map(|r| tokio::spawn(r.run()));
        let limiter_state = Arc::clone(&self.state);
        let gc = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter_state.limiter.forget_idle();
            }
        });

        let cuts = self.state.metrics.connections_cut.clone();
        let public = connection::serve(
            self.public,
            public_router(Arc::clone(&self.state)),
            self.limits,
            CutCounter::new(cuts.clone(), "public"),
            stop_rx.clone(),
        );
        let admin = connection::serve(
            self.admin,
            admin_router(Arc::clone(&self.state)),
            self.limits,
            CutCounter::new(cuts, "admin"),
            stop_rx,
        );
        let (public, admin) = tokio::join!(public, admin);
        rotation.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        gc.abort();
        if let Err(err) = self.state.registry.flush() {
            crate::safe_error!("registry flush at shutdown failed", error = err);
        }
        crate::safe_info!("stopped");
        public.and(admin)
    }
}

/// The public routes: epoch, discover, health. Nothing administrative is ever mounted here.
/// Epoch and discovery requests beyond the in-flight cap are shed with 503; health checks are
/// not, so an overloaded replica is not mistaken for a dead one.
pub fn public_router(state: SharedState) -> Router {
    let shed = Router::new()
        .route("/v1/epoch", get(public::get_epoch))
        .route("/v1/discover", post(public::discover))
        .route_layer(from_fn_with_state(Arc::clone(&state), overload::shed_load));
    with_common_routes(shed, state, "public")
}

/// The admin routes: registrations and stats behind the admin token; metrics behind the
/// metrics token (or the admin token).
pub fn admin_router(state: SharedState) -> Router {
    let protected = Router::new()
        .route("/admin/v1/registrations", post(admin::change_registrations))
        .route("/admin/v1/stats", get(admin::stats))
        .route_layer(from_fn_with_state(Arc::clone(&state), admin::require_token));
    let metrics = Router::new()
        .route("/metrics", get(admin::metrics))
        .route_layer(from_fn_with_state(
            Arc::clone(&state),
            admin::require_metrics_token,
        ));
    let routes = protected.merge(metrics);
    with_common_routes(routes, state, "admin")
}

/// What both listeners have: health routes, JSON 404/405, panics caught into a fixed 500, and
/// the metrics and access-log middleware outermost (so it sees every answer, panics included).
fn with_common_routes(
    routes: Router<SharedState>,
    state: SharedState,
    listener: &'static str,
) -> Router {
    routes
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(CatchPanicLayer::custom(api::panic_response))
        .layer(from_fn_with_state(
            (Arc::clone(&state), Listener(listener)),
            api::observe,
        ))
        .with_state(state)
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    crate::safe_info!("shutdown requested; draining in-flight requests");
}
