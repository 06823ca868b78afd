//! Registry replication for several replicas, through Redis: a **change stream** with resume
//! points plus a **shared snapshot**. Optional; without `--registry-redis-url` the registry
//! stands alone.
//!
//! - Every admin change becomes one entry of the stream `cd:registry:stream` (`XADD`), holding
//!   the same checksummed record the local log uses, **sealed** (`seal.rs`: XChaCha20-Poly1305
//!   under a key derived from the server secret, bound to the entry's id) in the field `sealed`.
//!   Its entry id is the resume point. The writer picks the id (`<ms>-0`, past the stream's
//!   top), so a record cannot be replayed under another id; one write per millisecond.
//! - Every replica (the one that took the write included) follows the stream (`XREAD`) and
//!   applies each batch of entries to its own durable registry, then records the last id in
//!   `replication.pos` beside it. Ops set absolute state, so applying an entry twice after a
//!   crash between the two writes is harmless.
//! - Once the stream holds `snapshot_every` entries, one replica (a `SET NX` lock decides)
//!   publishes its registry as the shared snapshot (in chunks, tagged with the id it is
//!   consistent with) and trims the stream up to it. A new replica, or one whose resume point
//!   was trimmed away while it lagged, loads that snapshot and follows from its id.
//! - `/readyz` stays false until the snapshot is loaded and the stream is caught up to its head
//!   at start. A replica that falls behind later keeps answering from what it has and reports
//!   `contact_discovery_replication_lag_seconds`.
//!
//! Nothing of a query ever reaches Redis: only numbers the backend registers, and those only
//! sealed. Nothing read from Redis is trusted or allocated before it is bounded and
//! authenticated: entries over `MAX_ENTRY_BYTES` are refused by a script inside Redis before
//! they are sent, a batch is at most `READ_BUDGET` bytes, a snapshot description must carry a
//! valid keyed BLAKE3 MAC and sane lengths before a chunk is read, each chunk is length-checked
//! in Redis and opened (authenticated) before it is appended. What fails is not applied, logged
//! with a fixed reason and counted in `contact_discovery_replication_rejected_total{reason}`
//! (`format`, `mac`, `bounds`). Whoever can write to Redis can still delete entries or the
//! snapshot (and so stall or roll back a new replica), never forge, alter, move, replay or read
//! one.

//!
//! Files: `stream.rs` (appending, reading and opening entries), `shared_snapshot.rs` (the
//! snapshot's layout in Redis, loading and publishing it), `follow.rs` (the follower loop),
//! `position.rs` (the resume point), `seal.rs` (sealing and MACs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::domain::ServerSecret;
use crate::metrics::Metrics;
use crate::store::redis_link::RedisLink;
use crate::store::registry::record::{RECORD_HEADER, encode_record};
use crate::store::registry::{Op, Registry, RegistryError, SnapshotError};

mod follow;
mod position;
mod seal;
mod shared_snapshot;
mod stream;

pub use position::{BadStreamPos, StreamPos};
pub use stream::MAX_STREAM_RECORD;

use position::{read_position, write_position};
use seal::{OpenError, Sealer};
use shared_snapshot::{MetaState, read_meta, trimmed_past};
use stream::{APPEND_TRIES, End, append_sealed, stream_end};

/// Why a value read from Redis was refused: the label of
/// `contact_discovery_replication_rejected_total`, defined with the metric.
pub use crate::metrics::Refusal;

impl From<OpenError> for Refusal {
    fn from(err: OpenError) -> Self {
        match err {
            OpenError::Format => Refusal::Format,
            OpenError::Auth => Refusal::Mac,
        }
    }
}

/// Replication failures. Messages name keys and files, never numbers.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Talking to Redis failed.
    #[error("registry stream: {0}")]
    Redis(#[from] redis::RedisError),
    /// Writing the local registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The resume point file could not be read or written.
    #[error("resume point {path}: {source}")]
    Position {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The shared snapshot's bytes (authentic, so written by another build) are not a
    /// registry snapshot.
    #[error("shared registry snapshot is unusable: {0}")]
    BadSnapshot(#[from] SnapshotError),
    /// A chunk of the shared snapshot vanished while it was read (a newer snapshot replaced
    /// it); the next attempt loads the newer one.
    #[error("shared registry snapshot is unusable: chunk missing")]
    SnapshotChunkMissing,
    /// The local registry is larger than a shared snapshot may be.
    #[error("the registry exceeds the shared snapshot cap")]
    SnapshotTooLarge,
    /// A stream entry id Redis returned is not `<ms>-<seq>`.
    #[error("registry stream: an entry id is not <ms>-<seq>")]
    BadEntryId,
    /// Redis does not report the stream's entries-added counter.
    #[error("XINFO STREAM has no entries-added (Redis 7 or newer is needed)")]
    NoEntriesAdded,
    /// A value read from Redis failed its bounds or authentication (counted and logged).
    #[error("shared registry snapshot refused: {}", .0.label())]
    Refused(Refusal),
    /// A change too large for one stream record.
    #[error("registry change exceeds the stream record cap")]
    RecordTooLarge,
    /// Other writers kept taking the stream ids this replica chose.
    #[error("registry stream: no free entry id after {APPEND_TRIES} attempts")]
    Contended,
    /// The local registry holds numbers that did not come from the shared stream, and the
    /// stream already has state: merging them silently could resurrect removed numbers.
    #[error(
        "the data directory holds a registry that did not come from the shared stream, which already has state; move it away (or import its numbers through the admin API) and restart"
    )]
    ForeignLocalRegistry,
    /// A blocking task failed.
    #[error("registry task failed")]
    Task,
}

// Errors reach logs: their messages name keys and settings, never numbers.
impl crate::log_safe::LogSafe for ReplicationError {}

/// This process's end of the shared registry: appends admin changes to the stream, follows it
/// into the local registry, loads and publishes snapshots.
pub struct Replica {
    redis: RedisLink,
    sealer: Sealer,
    /// The digest of the last snapshot description refused, so each is counted once.
    refused_meta: parking_lot::Mutex<Option<[u8; 32]>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    applied: tokio::sync::watch::Sender<StreamPos>,
    synced: AtomicBool,
    snapshot_every: u64,
    /// Wall time: the ids of appended entries, the lag. Tests move a manual one.
    clock: Clock,
    /// Wall-clock milliseconds of the last successful read of the stream.
    last_contact_ms: AtomicU64,
}

impl Replica {
    /// Checks the URL (connecting happens in [`Replica::run`], so a replica can start while
    /// Redis is down) and reads the local resume point. `clock` names entries and measures lag.
    pub fn new(
        url: &str,
        secret: &ServerSecret,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        snapshot_every: u64,
        clock: Clock,
    ) -> Result<Arc<Self>, ReplicationError> {
        let redis = RedisLink::open(url)?;
        let start = read_position(registry.dir())?.unwrap_or_default();
        metrics.replication.synced.set(0);
        Ok(Arc::new(Self {
            redis,
            sealer: Sealer::new(secret),
            refused_meta: parking_lot::Mutex::new(None),
            registry,
            metrics,
            applied: tokio::sync::watch::channel(start).0,
            synced: AtomicBool::new(false),
            snapshot_every: snapshot_every.max(1),
            last_contact_ms: AtomicU64::new(clock.now_millis()),
            clock,
        }))
    }

    /// True once the shared snapshot is loaded and the stream caught up to its head at start.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The last stream entry applied to the local registry.
    pub fn position(&self) -> StreamPos {
        *self.applied.borrow()
    }

    /// Appends `ops` to the shared stream as one sealed entry and returns its id. Once this
    /// returns, the change is as durable as Redis is (run it with `appendfsync always`).
    pub async fn append(&self, ops: &[Op]) -> Result<StreamPos, ReplicationError> {
        let record = Zeroizing::new(encode_record(ops));
        if record.len() - RECORD_HEADER > MAX_STREAM_RECORD {
            return Err(ReplicationError::RecordTooLarge);
        }
        let mut conn = self.redis.shared().await?;
        let result = append_sealed(&mut conn, &self.sealer, &self.clock, &record).await;
        if matches!(result, Err(ReplicationError::Redis(_))) {
            self.redis.forget();
            self.metrics.replication.errors.inc();
        }
        result
    }

    /// Waits until the local registry has applied `pos`, at most `timeout`; true if it has.
    pub async fn wait_applied(&self, pos: StreamPos, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= pos))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows the stream forever: connects (retrying with backoff), syncs, applies entries.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = async {
                let mut conn = self.redis.connect().await?;
                let head = self.initial_sync(&mut conn).await?;
                backoff = Duration::from_millis(100);
                self.follow(&mut conn, head).await
            }
            .await;
            if let Err(err) = result {
                self.metrics.replication.errors.inc();
                crate::safe_warn!(
                    "registry stream unavailable; serving the registry as it is and retrying",
                    error = err,
                    retry_ms = backoff.as_millis() as u64,
                );
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            self.report_unreachable_lag();
        }
    }

    /// Unreachable: behind by at least the time since the stream was last read.
    fn report_unreachable_lag(&self) {
        let since = self
            .clock
            .now_millis()
            .saturating_sub(self.last_contact_ms.load(Ordering::Relaxed));
        self.metrics
            .replication
            .lag_seconds
            .set((since / 1000) as i64);
    }

    /// Decides where to resume: the local resume point, or the shared snapshot when there is
    /// none or it was trimmed away; publishes the local registry as the first snapshot when
    /// Redis is empty. Returns the stream's head at this moment (the catch-up target).
    async fn initial_sync(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<StreamPos>, ReplicationError> {
        let meta = match self.read_meta(conn).await? {
            MetaState::None => None,
            MetaState::Valid(meta) => Some(meta),
            MetaState::Refused(why, _) => return Err(ReplicationError::Refused(why)),
        };
        let first = stream_end(conn, End::First).await?;
        let head = stream_end(conn, End::Last).await?;
        let local = read_position(self.registry.dir())?;
        let counts = self.registry.counts();
        let local_numbers = counts.discoverable + counts.hidden;
        match (local, meta.clone()) {
            (Some(pos), Some(meta)) if trimmed_past(pos, &meta, first) => {
                crate::safe_info!(
                    "resume point was trimmed from the registry stream; loading the shared snapshot",
                    resume_point = pos,
                    snapshot = meta.id,
                );
                self.load_snapshot(conn, meta).await?;
            }
            (Some(pos), _) => {
                crate::safe_info!("resuming the registry stream", resume_point = pos);
            }
            (None, _) if meta.is_none() && first.is_none() => {
                if local_numbers > 0 {
                    crate::safe_info!(
                        "registry stream is empty; publishing the local registry as the first shared snapshot",
                        numbers = local_numbers,
                    );
                    // Two replicas seeded at once: only one snapshot can be the first.
                    if !self.publish_snapshot(conn).await? {
                        return Err(ReplicationError::ForeignLocalRegistry);
                    }
                }
                self.set_position(StreamPos::ZERO).await?;
            }
            (None, _) if local_numbers > 0 => return Err(ReplicationError::ForeignLocalRegistry),
            (None, Some(meta)) => self.load_snapshot(conn, meta).await?,
            (None, None) => self.set_position(StreamPos::ZERO).await?,
        }
        Ok(head)
    }

    fn refused(&self, why: Refusal) {
        self.metrics
            .replication
            .rejected
            .with_label_values(&[why.label()])
            .inc();
    }

    /// Reads, bounds and authenticates the snapshot description. A refused one is counted and
    /// logged the first time it is seen.
    async fn read_meta(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<MetaState, ReplicationError> {
        let state = read_meta(conn, &self.sealer).await?;
        let mut last = self.refused_meta.lock();
        match &state {
            MetaState::Refused(why, digest) => {
                if last.as_ref() != Some(digest) {
                    *last = Some(*digest);
                    self.refused(*why);
                    crate::safe_error!(
                        "refused the shared registry snapshot description; not used",
                        reason = why.label(),
                    );
                }
            }
            _ => *last = None,
        }
        Ok(state)
    }

    /// Records `pos` durably and tells writers waiting for it.
    async fn set_position(&self, pos: StreamPos) -> Result<(), ReplicationError> {
        let dir = self.registry.dir().to_owned();
        tokio::task::spawn_blocking(move || write_position(&dir, pos))
            .await
            .map_err(|_| ReplicationError::Task)??;
        self.applied.send_replace(pos);
        Ok(())
    }
}
