//! What handlers may reach, per listener. Each router is built with its own listener's state
//! ([`PublicState`] or [`AdminState`]), so a public handler cannot name the registry writer, the
//! registry or the tokens: its state does not hold them. What both listeners' shared routes and
//! middleware need ([`Observe`], [`Readiness`]) is taken out of either with axum's `FromRef`.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRef;

use super::body::BodyPace;
use super::caller::Authenticator;
use super::error::NotReadyCause;
use super::overload::UserInFlight;
use super::private::PrivateMode;
use crate::clock::Clock;
use crate::domain::ServerSecret;
use crate::metrics::Metrics;
use crate::server::ratelimit::Limiter;
use crate::store::index::MatchIndex;
use crate::store::private_set::PrivateSets;
use crate::store::registry::Registry;
use crate::store::replication::Replica;
use crate::store::rotation::LiveIndexes;
use crate::store::writer::RegistryWriter;

/// The hashed mode's live match indexes.
pub type HashedIndexes = LiveIndexes<MatchIndex>;

/// The public listener's state: everything a discovery needs, nothing administrative.
#[derive(Clone)]
pub struct PublicState(Arc<Public>);

/// What [`PublicState`] holds.
pub struct Public {
    /// The live match indexes.
    pub indexes: Arc<HashedIndexes>,
    /// Salts come from here.
    pub secret: ServerSecret,
    /// Who is calling (the [`Caller`](super::caller::Caller) extractor uses it).
    pub authenticator: Authenticator,
    /// Discovery requests in flight per user.
    pub user_in_flight: UserInFlight,
    /// Per-user fingerprint budget.
    pub limiter: Arc<Limiter>,
    /// Slots for public requests in flight; a request that finds none is shed with 503.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// How fast and how soon a request body must arrive.
    pub body_pace: BodyPace,
    /// Most fingerprints per request.
    pub max_batch: usize,
    /// The private mode, if served (its routes take it through the
    /// [`Private`](super::private::Private) extractor).
    pub private: PrivateMode,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Clock,
    /// For the middleware and health routes both listeners share.
    pub observe: Observe,
    /// For `/readyz`.
    pub readiness: Readiness,
}

impl PublicState {
    /// Wraps the public listener's parts.
    pub fn new(public: Public) -> Self {
        Self(Arc::new(public))
    }
}

impl Deref for PublicState {
    type Target = Public;
    fn deref(&self) -> &Public {
        &self.0
    }
}

/// The admin listener's state: registrations, stats and metrics.
#[derive(Clone)]
pub struct AdminState(Arc<Admin>);

/// What [`AdminState`] holds.
pub struct Admin {
    /// Where registry changes go (local log or shared stream).
    pub writer: RegistryWriter,
    /// The registry (read for stats and metrics).
    pub registry: Arc<Registry>,
    /// The shared stream, for stats (`None` when the registry is not shared).
    pub replica: Option<Arc<Replica>>,
    /// The live match indexes (for stats).
    pub indexes: Arc<HashedIndexes>,
    /// Per-user fingerprint budget (for stats).
    pub limiter: Arc<Limiter>,
    /// BLAKE3 hash of the admin token (compared in constant time).
    pub admin_token_hash: blake3::Hash,
    /// BLAKE3 hash of the metrics token (the admin token also reads `/metrics`).
    pub metrics_token_hash: blake3::Hash,
    /// How fast and how soon a request body must arrive.
    pub body_pace: BodyPace,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Clock,
    /// When the process started.
    pub started: Instant,
    /// For the middleware and health routes both listeners share.
    pub observe: Observe,
    /// For `/readyz`.
    pub readiness: Readiness,
}

impl AdminState {
    /// Wraps the admin listener's parts.
    pub fn new(admin: Admin) -> Self {
        Self(Arc::new(admin))
    }
}

impl Deref for AdminState {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.0
    }
}

/// What the request-observing middleware needs.
#[derive(Clone)]
pub struct Observe {
    /// Where request counts and latencies go.
    pub metrics: Arc<Metrics>,
    /// Whether access logs carry the client's truncated address.
    pub log_client_ip: bool,
}

/// `/readyz`'s view of the service. It holds the registry privately, so a handler that has it
/// can ask whether enough is loaded but can never write.
#[derive(Clone)]
pub struct Readiness {
    registry: Arc<Registry>,
    replica: Option<Arc<Replica>>,
    indexes: Arc<HashedIndexes>,
    /// The private sets, when the private mode is served.
    private: Option<Arc<PrivateSets>>,
    clock: Clock,
    min_registrations: u64,
}

impl Readiness {
    /// Ready once the registry holds `min_registrations` numbers, the shared stream (if any) is
    /// caught up, and the current epoch's index (and, when the private mode is served, the
    /// current key epoch's set) is built.
    pub fn new(
        registry: Arc<Registry>,
        replica: Option<Arc<Replica>>,
        indexes: Arc<HashedIndexes>,
        clock: Clock,
        min_registrations: u64,
    ) -> Self {
        Self {
            registry,
            replica,
            indexes,
            private: None,
            clock,
            min_registrations,
        }
    }

    /// The same, also waiting for the private mode's current set.
    pub fn with_private(self, sets: Arc<PrivateSets>) -> Self {
        Self {
            private: Some(sets),
            ..self
        }
    }

    /// Why the service should not receive traffic now, in a fixed order; none when it should.
    pub fn unready_causes(&self) -> Vec<NotReadyCause> {
        let counts = self.registry.counts();
        let now = self.clock.now_secs();
        let checks = [
            (
                counts.discoverable + counts.hidden >= self.min_registrations,
                NotReadyCause::TooFewRegistrations,
            ),
            (
                self.replica.as_ref().is_none_or(|r| r.synced()),
                NotReadyCause::StreamCatchingUp,
            ),
            (self.indexes.is_ready(now), NotReadyCause::IndexBuilding),
            (
                self.private.as_ref().is_none_or(|sets| sets.is_ready(now)),
                NotReadyCause::PrivateSetBuilding,
            ),
        ];
        checks
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, cause)| cause)
            .collect()
    }
}

impl FromRef<PublicState> for Observe {
    fn from_ref(state: &PublicState) -> Self {
        state.observe.clone()
    }
}

impl FromRef<AdminState> for Observe {
    fn from_ref(state: &AdminState) -> Self {
        state.observe.clone()
    }
}

impl FromRef<PublicState> for Readiness {
    fn from_ref(state: &PublicState) -> Self {
        state.readiness.clone()
    }
}

impl FromRef<AdminState> for Readiness {
    fn from_ref(state: &AdminState) -> Self {
        state.readiness.clone()
    }
}
