//! Building and running the service: open the registry, load keys, bind both listeners (port 0
//! works: the real ports are reported), start the rotation task, serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRef;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::domain::secret::{self, KeyFileError};
use crate::domain::{CredentialKey, ServerSecret};
use crate::metrics::Metrics;
use crate::server::api::body::BodyPace;
use crate::server::api::caller::CredentialCheck;
use crate::server::api::observe::Routes;
use crate::server::api::overload::UserInFlight;
use crate::server::api::private::{PrivateMode, PrivateParts};
use crate::server::api::state::{Admin, Public};
use crate::server::api::{
    self, AdminState, AppState, Authenticator, ListenerService, Observe, PublicState, Readiness,
    SharedState, Shed, admin, private, public,
};
use crate::server::config::{Settings, Token};
use crate::server::connection::{self, ConnectionLimits, CutCounter};
use crate::server::ratelimit::{FingerprintLimiter, Limiter, RateLimitConfigError, SharedLimiter};
use crate::store::index::MatchIndex;
use crate::store::private_set::{
    HistoryLimits, PrivateSet, PrivateSetConfig, PrivateSets, run_publisher,
};
use crate::store::registry::{Registry, RegistryError};
use crate::store::replication::{Replica, ReplicationError};
use crate::store::rotation::{LiveIndexes, RotationPolicy, Rotator};
use crate::store::writer::RegistryWriter;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
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
pub fn load_keys(settings: &Settings) -> Result<Keys, KeyFileError> {
    let data_dir = &settings.data_dir;
    let secrets = &settings.secrets;
    secret::ensure_private_dir(data_dir)?;
    let secret = match (&secrets.server_secret, &secrets.server_secret_file) {
        (Some(given), _) => given.key().clone(),
        (None, Some(path)) => ServerSecret::from_bytes(secret::read_key(path)?),
        (None, None) => {
            ServerSecret::from_bytes(secret::read_or_create_key(&data_dir.join("server.secret"))?.0)
        }
    };
    let credential_key = match &secrets.credential_key_file {
        Some(path) => secret::read_key(path)?,
        None => secret::read_or_create_key(&settings.credential_key_path())?.0,
    };
    let previous_credential_key = match &secrets.previous_credential_key_file {
        Some(path) => Some(CredentialKey::from_bytes(secret::read_key(path)?)),
        None => None,
    };
    let token = |setting: &Option<Token>, file: &str| match setting {
        Some(token) => Ok(token.expose().to_owned()),
        None => secret::read_or_create_token(&data_dir.join(file)),
    };
    Ok(Keys {
        secret,
        credential_key: CredentialKey::from_bytes(credential_key),
        previous_credential_key,
        admin_token: token(&secrets.admin_token, "admin.token")?,
        metrics_token: token(&secrets.metrics_token, "metrics.token")?,
    })
}

/// A built service: listeners bound, not yet serving.
pub struct Application {
    public: Bound,
    admin: Bound,
    state: SharedState,
    rotator: Rotator<MatchIndex>,
    /// The private mode's rotator and publisher, when it is served.
    private: PrivateWork,
    /// The shared registry's follower, run with the service.
    replica: Option<Arc<Replica>>,
    limits: ConnectionLimits,
}

/// A bound listener and the address it really has (the port chosen when configured with 0).
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    /// Binds `addr`.
    async fn bind(addr: SocketAddr) -> Result<Self, StartupError> {
        let bind_error = |source| StartupError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self { listener, addr })
    }
}

impl Application {
    /// Builds the service on the system clock.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Clock::System).await
    }

    /// Builds the service on `clock` (tests move a manual clock across epochs): loads the keys,
    /// opens the registry, then assembles the state the handlers share, the rotator and the
    /// listeners.
    pub async fn build_with_clock(config: &Settings, clock: Clock) -> Result<Self, StartupError> {
        let keys = load_keys(config)?;
        let registry = open_registry(&config.data_dir)?;
        let metrics = registry_metrics(&registry)?;
        let indexes = Arc::new(LiveIndexes::new(
            RotationPolicy::new(
                config.epochs.length.schedule(),
                config.epochs.grace.as_secs(),
            ),
            keys.secret.clone(),
        ));
        warn_if_insecure(config);
        let replica = start_replica(config, &keys, &registry, &metrics, &clock)?;
        let limiter = Arc::new(limiter(config, &keys, &metrics, &clock)?);
        let writer = registry_writer(&registry, replica.as_ref(), &metrics);
        let observe = Observe {
            metrics: Arc::clone(&metrics),
            log_client_ip: config.log_client_ip,
        };
        let private = PrivateWork::new(config, &keys, &registry, &clock, &metrics);
        let readiness = private.readiness(Readiness::new(
            Arc::clone(&registry),
            replica.clone(),
            Arc::clone(&indexes),
            clock.clone(),
            config.ready_min_registrations,
        ));
        let body_pace = BodyPace {
            timeout: config.limits.body_read_timeout,
            min_bytes_per_sec: config.limits.min_body_bytes_per_second,
        };
        let public = PublicState::new(Public {
            indexes: Arc::clone(&indexes),
            secret: keys.secret.clone(),
            authenticator: authenticator(config, &keys),
            user_in_flight: UserInFlight::new(config.limits.max_in_flight_per_user),
            limiter: Arc::clone(&limiter),
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.limits.in_flight_permits(),
            )),
            body_pace,
            max_batch: config.limits.max_batch.get(),
            private: private.mode(config),
            metrics: Arc::clone(&metrics),
            clock: clock.clone(),
            observe: observe.clone(),
            readiness: readiness.clone(),
        });
        let admin = AdminState::new(Admin {
            writer,
            registry: Arc::clone(&registry),
            replica: replica.clone(),
            indexes: Arc::clone(&indexes),
            limiter,
            admin_token_hash: admin::hash_token(&keys.admin_token),
            metrics_token_hash: admin::hash_token(&keys.metrics_token),
            body_pace,
            metrics: Arc::clone(&metrics),
            clock: clock.clone(),
            started: Instant::now(),
            observe,
            readiness,
        });
        let state = Arc::new(AppState { public, admin });
        let rotator = Rotator::hashed(indexes, registry, clock, &metrics, ());
        Ok(Self {
            public: Bound::bind(config.listeners.listen).await?,
            admin: Bound::bind(config.listeners.admin_listen).await?,
            state,
            rotator,
            private,
            replica,
            limits: config.connections.limits(),
        })
    }

    /// The bound public address (the real port when configured with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public.addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
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

    /// [`warm_up`](Self::warm_up), and the private mode's current set too. `serve` does not
    /// wait for the set (it takes ~65 µs per registered number per core, minutes at scale):
    /// the process answers `/healthz` while its rotator builds the set, and `/readyz` once it
    /// is built. Tests and small demos wait for it here.
    pub async fn warm_up_all(&self) {
        self.warm_up().await;
        if let PrivateWork::On { rotator, .. } = &self.private {
            rotator.warm_up().await;
        }
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
        let private = self
            .private
            .spawn(&self.state.public.clock, &self.state.public.metrics);
        let follower = self.replica.clone().map(|r| tokio::spawn(r.run()));
        let limiter = Arc::clone(&self.state.public.limiter);
        let gc = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter.forget_idle();
            }
        });

        let cuts = self.state.public.metrics.connections_cut.clone();
        let public = connection::serve(
            self.public.listener,
            public_router(&self.state),
            self.limits,
            CutCounter::new(cuts.clone(), "public"),
            stop_rx.clone(),
        );
        let admin = connection::serve(
            self.admin.listener,
            admin_router(&self.state),
            self.limits,
            CutCounter::new(cuts, "admin"),
            stop_rx,
        );
        let (public, admin) = tokio::join!(public, admin);
        rotation.abort();
        for task in private {
            task.abort();
        }
        if let Some(follower) = follower {
            follower.abort();
        }
        gc.abort();
        if let Err(err) = self.state.admin.registry.flush() {
            crate::safe_error!("registry flush at shutdown failed", error = err);
        }
        crate::safe_info!("stopped");
        public.and(admin)
    }
}

/// The private mode's background work: its own rotator over the registry (OPRF key epochs,
/// sets built ahead by the configured lead) and the publisher that folds registry changes into
/// the current sets.
enum PrivateWork {
    /// `private_mode = false`.
    Off,
    /// Served.
    On {
        sets: Arc<PrivateSets>,
        rotator: Rotator<PrivateSet>,
        publish_interval: Duration,
    },
}

impl PrivateWork {
    fn new(
        settings: &Settings,
        keys: &Keys,
        registry: &Arc<Registry>,
        clock: &Clock,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let private = &settings.private;
        if !private.enabled {
            return PrivateWork::Off;
        }
        let policy = RotationPolicy::new(private.key_epoch.schedule(), private.key_grace.as_secs())
            .with_lead(private.key_lead.as_secs());
        let sets = Arc::new(PrivateSets::new(policy, keys.secret.clone()));
        metrics.private.enabled.set(1);
        let config = PrivateSetConfig {
            inverse_fpr: private.inverse_false_positive_rate(),
            history: HistoryLimits {
                max_age_secs: private.delta_history.as_secs(),
                max_values: private.delta_history_max_changes.get(),
            },
        };
        let rotator = Rotator::new(
            Arc::clone(&sets),
            Arc::clone(registry),
            clock.clone(),
            metrics.private.rotator.clone(),
            config,
            "private set",
        );
        PrivateWork::On {
            sets,
            rotator,
            publish_interval: private.publish_interval,
        }
    }

    /// What the public routes see.
    fn mode(&self, settings: &Settings) -> PrivateMode {
        match self {
            PrivateWork::Off => PrivateMode::Off,
            PrivateWork::On { sets, .. } => PrivateMode::On(PrivateParts {
                sets: Arc::clone(sets),
                max_batch: settings
                    .private
                    .max_batch
                    .get()
                    .min(settings.limits.rate_limit_burst.get() as usize),
            }),
        }
    }

    /// `readiness`, also waiting for the current set when served.
    fn readiness(&self, readiness: Readiness) -> Readiness {
        match self {
            PrivateWork::Off => readiness,
            PrivateWork::On { sets, .. } => readiness.with_private(Arc::clone(sets)),
        }
    }

    /// Starts the rotator and the publisher; their tasks, to stop at shutdown.
    fn spawn(self, clock: &Clock, metrics: &Arc<Metrics>) -> Vec<tokio::task::JoinHandle<()>> {
        match self {
            PrivateWork::Off => Vec::new(),
            PrivateWork::On {
                sets,
                rotator,
                publish_interval,
            } => vec![
                tokio::spawn(rotator.run()),
                tokio::spawn(run_publisher(
                    sets,
                    clock.clone(),
                    publish_interval,
                    Arc::clone(metrics),
                )),
            ],
        }
    }
}

/// Opens the registry in `data_dir`, logging what was recovered.
fn open_registry(data_dir: &Path) -> Result<Arc<Registry>, StartupError> {
    let (registry, report) = Registry::open(data_dir)?;
    crate::safe_info!(
        "registry opened",
        snapshot_entries = report.snapshot_entries,
        log_records = report.log_records,
        truncated_bytes = report.truncated_bytes,
    );
    Ok(Arc::new(registry))
}

/// The service's metrics, starting from the registry's counts.
fn registry_metrics(registry: &Registry) -> Result<Arc<Metrics>, StartupError> {
    let metrics = Arc::new(Metrics::new()?);
    registry.counts().export_to(&metrics);
    Ok(metrics)
}

/// Says loudly, at every start, that credentials are not checked.
fn warn_if_insecure(settings: &Settings) {
    if settings.auth.insecure_no_auth {
        crate::safe_warn!(
            "INSECURE: --insecure-no-auth is set; anyone who can reach the public listener can query without a credential. Never use this in production.",
            listen = settings.listeners.listen,
        );
    }
}

/// The follower of the shared registry stream, when one is configured; a standalone registry
/// is in sync by definition.
fn start_replica(
    settings: &Settings,
    keys: &Keys,
    registry: &Arc<Registry>,
    metrics: &Arc<Metrics>,
    clock: &Clock,
) -> Result<Option<Arc<Replica>>, StartupError> {
    let replication = &settings.replication;
    let Some(url) = &replication.registry_redis_url else {
        metrics.replication.synced.set(1);
        return Ok(None);
    };
    Replica::new(
        url.expose(),
        &keys.secret,
        Arc::clone(registry),
        Arc::clone(metrics),
        replication.registry_snapshot_every.get(),
        clock.clone(),
    )
    .map(Some)
    .map_err(StartupError::Replication)
}

/// The per-user budget: shared by every replica through Redis when configured (this process's
/// own as its fallback), else this process's own.
fn limiter(
    settings: &Settings,
    keys: &Keys,
    metrics: &Metrics,
    clock: &Clock,
) -> Result<Limiter, StartupError> {
    let limits = &settings.limits;
    let local = FingerprintLimiter::new(
        limits.rate_limit_burst.get(),
        limits.rate_limit_refill_per_day.get(),
    )?;
    let Some(url) = &settings.replication.rate_limit_redis_url else {
        return Ok(Limiter::Local(local));
    };
    let shared = SharedLimiter::new(
        url.expose(),
        &keys.secret,
        limits.rate_limit_burst.get(),
        limits.rate_limit_refill_per_day.get(),
        metrics.rate_limit_fallbacks.clone(),
    )
    .map_err(StartupError::SharedRateLimit)?
    .with_clock(clock.clone());
    Ok(Limiter::Shared {
        shared: Box::new(shared),
        fallback: local,
    })
}

/// Where registry changes go: through the shared stream when there is one, else to the local
/// log.
fn registry_writer(
    registry: &Arc<Registry>,
    replica: Option<&Arc<Replica>>,
    metrics: &Arc<Metrics>,
) -> RegistryWriter {
    match replica {
        Some(replica) => RegistryWriter::replicated(
            Arc::clone(registry),
            Arc::clone(replica),
            Arc::clone(metrics),
        ),
        None => RegistryWriter::local(Arc::clone(registry), Arc::clone(metrics)),
    }
}

/// How callers are identified: by credential, unless `--insecure-no-auth` (where a valid
/// credential still names its user and anything else is the anonymous user).
fn authenticator(settings: &Settings, keys: &Keys) -> Authenticator {
    let check = CredentialCheck {
        key: keys.credential_key.clone(),
        previous: keys.previous_credential_key.clone(),
        max_ttl_secs: settings.auth.max_credential_ttl.as_secs(),
    };
    if settings.auth.insecure_no_auth {
        Authenticator::InsecureNoAuth(check)
    } else {
        Authenticator::Credentials(check)
    }
}

/// The public routes: epoch, discover, health. Nothing administrative is ever mounted here, and
/// the router holds only the public listener's state. Epoch and discovery requests beyond the
/// in-flight cap are shed with 503; health checks are not, so an overloaded replica is not
/// mistaken for a dead one.
pub fn public_router(state: &AppState) -> ListenerService {
    let state = state.public.clone();
    let shed = Routes::new()
        .route("/v1/epoch", get(public::get_epoch))
        .post_direct("/v1/discover", public::discover)
        .route("/v1/private/evaluate", post(private::evaluate))
        .route("/v1/private/set", get(private::manifest))
        .route("/v1/private/set/shards/{index}", get(private::shard))
        .route("/v1/private/set/delta", get(private::delta));
    let slots = Arc::clone(&state.in_flight);
    with_common_routes(shed, state, "public", Some(slots))
}

/// The admin routes: registrations and stats behind the admin token; metrics behind the
/// metrics token (or the admin token).
pub fn admin_router(state: &AppState) -> ListenerService {
    let state = state.admin.clone();
    let protected = Routes::new()
        .route("/admin/v1/registrations", post(admin::change_registrations))
        .route("/admin/v1/stats", get(admin::stats))
        .map_router(|r| r.route_layer(from_fn_with_state(state.clone(), admin::require_token)));
    let metrics = Routes::new()
        .route("/metrics", get(admin::metrics))
        .map_router(|r| {
            r.route_layer(from_fn_with_state(
                state.clone(),
                admin::require_metrics_token,
            ))
        });
    let routes = protected.merge(metrics);
    with_common_routes(routes, state, "admin", None)
}

/// What both listeners have: health routes, JSON 404/405, and around the router (outermost, so
/// it sees every answer, panics included) load shedding of `routes` by `shed` when given, panics
/// caught into a fixed 500, `no-store`, metrics and the access log ([`ListenerService`]).
fn with_common_routes<S>(
    routes: Routes<S>,
    state: S,
    listener: &'static str,
    shed: Option<Arc<tokio::sync::Semaphore>>,
) -> ListenerService
where
    S: Clone + Send + Sync + 'static,
    Observe: FromRef<S>,
    Readiness: FromRef<S>,
{
    let shed = shed.map(|slots| Shed {
        slots,
        routes: routes.paths().to_vec(),
    });
    let (router, table) = routes
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .finish(state.clone());
    ListenerService::new(router, table, Observe::from_ref(&state), listener, shed)
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
