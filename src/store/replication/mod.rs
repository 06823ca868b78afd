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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::domain::ServerSecret;
use crate::domain::secret::{parse_hex32, to_hex};
use crate::metrics::Metrics;
use crate::store::redis_link::RedisLink;
use crate::store::registry::record::{RECORD_HEADER, decode_record, encode_record};
use crate::store::registry::{Op, Registry, RegistryError, decode_snapshot, encode_snapshot};

mod seal;

// Errors and positions reach logs: their messages name keys and settings, never numbers.
impl crate::log_safe::LogSafe for ReplicationError {}
impl crate::log_safe::LogSafe for StreamPos {}

use seal::{OpenError, SEAL_OVERHEAD, Sealer, binding};

/// The change stream.
const STREAM: &str = "cd:registry:stream";
/// The shared snapshot's description: `id`, `chunks`, `bytes`, `prefix` (of the chunk keys),
/// `added` (the stream's entries-added counter when it was taken).
const META: &str = "cd:registry:snapshot";
/// Held by the replica publishing a snapshot.
const PUBLISH_LOCK: &str = "cd:registry:snapshot:lock";
/// Bytes per snapshot chunk before sealing (Redis strings are limited to 512 MiB; small chunks
/// keep Redis responsive while a large snapshot moves).
const CHUNK_BYTES: usize = 8 << 20;
/// Largest snapshot a replica loads: 16 GiB, two billion numbers. A description claiming more
/// is refused before anything is read or allocated.
const MAX_SNAPSHOT_BYTES: u64 = 16 << 30;
/// Longest field of a snapshot description (ids, counts, the chunk key prefix, the MAC).
const MAX_META_FIELD: usize = 256;
/// The stream field of a sealed record. Entries with the pre-sealing field `ops` (or none) are
/// refused as `format`.
const FIELD: &str = "sealed";
/// Largest record payload the stream carries: 1 MiB, 116,508 operations of 9 bytes. An admin
/// request is capped well below (100,000 operations, 900,008 bytes with its header).
pub const MAX_STREAM_RECORD: usize = 1 << 20;
/// Largest stream entry read, counted in Redis as its values' bytes plus 64 per field (so a
/// flood of empty fields counts too). Larger entries are refused without being sent.
const MAX_ENTRY_BYTES: usize = RECORD_HEADER + MAX_STREAM_RECORD + SEAL_OVERHEAD + 1024;
/// Entries read per round.
const READ_COUNT: usize = 64;
/// Bytes read per round, at most (plus one entry): so a batch never exceeds ~33 MiB however
/// the stream was filled.
const READ_BUDGET: usize = 32 << 20;
/// How long the follower waits before asking again when the stream had nothing new. (A
/// blocking `XREAD` would send entries of any size; the bounded read is a script, which
/// cannot block.)
const IDLE_POLL: Duration = Duration::from_millis(50);
/// `XADD` attempts when other writers take the chosen ids first.
const APPEND_TRIES: usize = 16;
/// The resume point, beside the registry files.
const POSITION_FILE: &str = "replication.pos";

/// Switches the snapshot description only to a newer snapshot (or sets the first one, or
/// replaces one that is malformed), and returns the description it replaced (empty when none
/// or malformed; bounded either way).
const SWITCH_META: &str = r#"
local function newer(a, b)
  local am, as = string.match(a, "^(%d+)-(%d+)$")
  local bm, bs = string.match(b, "^(%d+)-(%d+)$")
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local old = redis.call('HMGET', KEYS[1], 'id', 'chunks', 'prefix')
-- What was there is not authenticated here: compared and returned only if it looks like ours.
local sane = old[1] and #old[1] <= 64 and string.match(old[1], "^%d+-%d+$")
if sane and not newer(ARGV[1], old[1]) then return -1 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'chunks', ARGV[2], 'bytes', ARGV[3], 'prefix', ARGV[4],
  'added', ARGV[5], 'mac', ARGV[6])
if sane and old[2] and old[3] and #old[2] <= 32 and #old[3] <= 256 then
  return {old[2], old[3], old[1]}
end
return {}
"#;

/// Up to ARGV[2] entries after ARGV[1], at most ARGV[3] bytes in all (at least one entry);
/// an entry over ARGV[4] bytes is returned as its id and the field `oversized` only.
const READ_ENTRIES: &str = r#"
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local budget, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, used = {}, 0
for _, e in ipairs(entries) do
  local size = 0
  for _, v in ipairs(e[2]) do size = size + #v + 64 end
  if size > cap then
    out[#out + 1] = {e[1], {'oversized', '1'}}
  else
    if #out > 0 and used + size > budget then break end
    used = used + size
    out[#out + 1] = e
  end
end
return out
"#;

/// The first (ARGV[1] = `first`) or last entry id of the stream, never its contents.
const STREAM_END: &str = r#"
local e
if ARGV[1] == 'first' then
  e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
else
  e = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
end
if e[1] then return e[1][1] end
return false
"#;

/// The stream's entries-added counter (Redis 7): 0 when the stream does not exist, -1 when
/// Redis does not report it.
const ENTRIES_ADDED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then return info[i + 1] end
end
return -1
"#;

/// The snapshot description's fields, or -1 if one is longer than ARGV[1].
const READ_META: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'id', 'chunks', 'bytes', 'prefix', 'added', 'mac')
for i = 1, 6 do
  if v[i] and #v[i] > tonumber(ARGV[1]) then return -1 end
end
return v
"#;

/// A string no longer than ARGV[1] bytes, or -1 (and nothing of it) if it is longer.
const GET_BOUNDED: &str = r#"
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return -1 end
return redis.call('GET', KEYS[1])
"#;

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

/// A Redis stream entry id, `<milliseconds>-<sequence>`: the resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPos {
    ms: u64,
    seq: u64,
}

impl StreamPos {
    /// Before every entry.
    pub const ZERO: StreamPos = StreamPos { ms: 0, seq: 0 };
}

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Text that is not a stream entry id.
#[derive(Debug, thiserror::Error)]
#[error("not a stream entry id (expected <ms>-<seq>)")]
pub struct BadStreamPos;

impl FromStr for StreamPos {
    type Err = BadStreamPos;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.trim().split_once('-').ok_or(BadStreamPos)?;
        Ok(StreamPos {
            ms: ms.parse().map_err(|_| BadStreamPos)?,
            seq: seq.parse().map_err(|_| BadStreamPos)?,
        })
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
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The shared snapshot is damaged or incomplete.
    #[error("shared registry snapshot is unusable: {0}")]
    BadSnapshot(&'static str),
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

/// The shared snapshot's description: absent, authentic, or refused.
#[derive(Debug, Clone)]
enum MetaState {
    None,
    Valid(SnapshotMeta),
    /// Refused for this reason; the digest of its fields, to count one description once.
    Refused(Refusal, [u8; 32]),
}

/// The shared snapshot's description.
#[derive(Debug, Clone)]
struct SnapshotMeta {
    id: StreamPos,
    chunks: u64,
    bytes: u64,
    /// Chunk `i` is at `<prefix>:<i>`; unique per publication, so a losing publisher's
    /// clean-up never touches the winner's chunks.
    prefix: String,
    /// The stream's entries-added counter when the snapshot was taken.
    added: u64,
}

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
    /// Wall-clock milliseconds of the last successful read of the stream.
    last_contact_ms: AtomicU64,
}

impl Replica {
    /// Checks the URL (connecting happens in [`Replica::run`], so a replica can start while
    /// Redis is down) and reads the local resume point.
    pub fn new(
        url: &str,
        secret: &ServerSecret,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        snapshot_every: u64,
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
            last_contact_ms: AtomicU64::new(Clock::System.now_millis()),
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
        let result = self.append_on(&mut conn, &record).await;
        if matches!(result, Err(ReplicationError::Redis(_))) {
            self.redis.forget();
            self.metrics.replication.errors.inc();
        }
        result
    }

    /// `XADD` with an id of our choosing (`<ms>-0`, ms the clock or past the stream's top), so
    /// the seal can bind it: a sealed record opens only at the id it was written at.
    async fn append_on(
        &self,
        conn: &mut MultiplexedConnection,
        record: &[u8],
    ) -> Result<StreamPos, ReplicationError> {
        let mut floor = 0;
        for _ in 0..APPEND_TRIES {
            let id = StreamPos {
                ms: Clock::System.now_millis().max(floor),
                seq: 0,
            };
            let sealed = self.sealer.seal(&record_binding(id), record);
            let added: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(STREAM)
                .arg(id.to_string())
                .arg(FIELD)
                .arg(sealed)
                .query_async(conn)
                .await;
            match added {
                Ok(_) => return Ok(id),
                // "The ID specified in XADD is equal or smaller than the target stream top
                // item": another writer (or a clock ahead of ours) got there first.
                Err(err) if err.to_string().contains("equal or smaller") => {
                    let top = stream_end(conn, End::Last).await?;
                    floor = top.map_or(id.ms, |t| t.ms).max(id.ms).saturating_add(1);
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ReplicationError::Contended)
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
            // Unreachable: behind by at least the time since the stream was last read.
            let since = Clock::System
                .now_millis()
                .saturating_sub(self.last_contact_ms.load(Ordering::Relaxed));
            self.metrics
                .replication
                .lag_seconds
                .set((since / 1000) as i64);
        }
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

    /// Applies stream entries as they come; marks the replica synced once it reaches `head`.
    async fn follow(
        &self,
        conn: &mut MultiplexedConnection,
        head: Option<StreamPos>,
    ) -> Result<(), ReplicationError> {
        loop {
            let pos = self.position();
            if !self.synced() && head.is_none_or(|h| pos >= h) {
                self.synced.store(true, Ordering::Release);
                self.metrics.replication.synced.set(1);
                crate::safe_info!("registry stream caught up", position = pos);
            }
            let reply: StreamRangeReply = redis::Script::new(READ_ENTRIES)
                .key(STREAM)
                .arg(pos.to_string())
                .arg(READ_COUNT)
                .arg(READ_BUDGET)
                .arg(MAX_ENTRY_BYTES)
                .invoke_async(conn)
                .await?;
            self.last_contact_ms
                .store(Clock::System.now_millis(), Ordering::Relaxed);
            let entries = reply.ids;
            // A refused description is counted once, and neither trims nor publishes: no
            // snapshot is published over it, no stream entry is skipped for it.
            let meta = match self.read_meta(conn).await? {
                MetaState::Valid(meta) => Some(meta),
                MetaState::None => None,
                MetaState::Refused(why, _) => {
                    if entries.is_empty() {
                        tokio::time::sleep(IDLE_POLL).await;
                        continue;
                    }
                    // Without an authentic description we cannot tell whether entries after
                    // `pos` were trimmed away: apply only while the stream still holds `pos`
                    // itself, else stop (and keep serving) until Redis is repaired.
                    if stream_end(conn, End::First)
                        .await?
                        .is_none_or(|first| first > pos)
                    {
                        return Err(ReplicationError::Refused(why));
                    }
                    None
                }
            };
            let meta_refused = meta.is_none() && self.refused_meta.lock().is_some();
            if entries.is_empty() {
                self.metrics.replication.lag_seconds.set(0);
                self.maybe_publish(conn, meta.as_ref()).await?;
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            // A snapshot newer than our position may have trimmed entries we never saw.
            // (`meta.id > pos` first: it spares the XRANGE when no newer snapshot exists.)
            if let Some(meta) = &meta
                && meta.id > pos
                && trimmed_past(pos, meta, stream_end(conn, End::First).await?)
            {
                crate::safe_warn!(
                    "this replica fell behind a trimmed registry stream; loading the shared snapshot",
                    resume_point = pos,
                    snapshot = meta.id,
                );
                self.load_snapshot(conn, meta.clone()).await?;
                continue;
            }
            let full = entries.len() == READ_COUNT;
            let mut ops = Vec::new();
            let mut last = pos;
            for entry in &entries {
                let id: StreamPos = entry
                    .id
                    .parse()
                    .map_err(|_| ReplicationError::BadSnapshot("stream entry id"))?;
                match self.open_entry(id, &entry.map) {
                    Ok(decoded) => ops.extend(decoded),
                    Err(why) => self.refuse_entry(id, why),
                }
                last = id;
            }
            if !ops.is_empty() {
                let registry = Arc::clone(&self.registry);
                tokio::task::spawn_blocking(move || registry.apply(&ops))
                    .await
                    .map_err(|_| ReplicationError::Task)??;
                self.registry.counts().export_to(&self.metrics);
            }
            self.metrics
                .replication
                .entries_applied
                .inc_by(entries.len() as u64);
            self.set_position(last).await?;
            // A full batch means more is waiting: report how old the last applied entry is.
            let lag = if full {
                Clock::System.now_millis().saturating_sub(last.ms) / 1000
            } else {
                0
            };
            self.metrics.replication.lag_seconds.set(lag as i64);
            if !meta_refused {
                self.maybe_publish(conn, meta.as_ref()).await?;
            }
        }
    }

    /// The operations of a stream entry, if it is a sealed record bound to its id.
    fn open_entry(
        &self,
        id: StreamPos,
        fields: &HashMap<String, redis::Value>,
    ) -> Result<Vec<Op>, Refusal> {
        if fields.contains_key("oversized") {
            return Err(Refusal::Bounds);
        }
        let Some(redis::Value::BulkString(sealed)) = fields.get(FIELD) else {
            return Err(Refusal::Format);
        };
        let record = self.sealer.open(&record_binding(id), sealed)?;
        match decode_record(&record) {
            Ok((ops, used)) if used == record.len() => Ok(ops),
            // Authentic but not a record: only a replica of another build could write it.
            _ => Err(Refusal::Format),
        }
    }

    fn refuse_entry(&self, id: StreamPos, why: Refusal) {
        self.refused(why);
        crate::safe_error!(
            "refused a registry stream entry; not applied",
            entry = id,
            reason = why.label(),
        );
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

    /// Replaces the local registry with the shared snapshot and resumes from its id.
    async fn load_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
        meta: SnapshotMeta,
    ) -> Result<(), ReplicationError> {
        match self.read_snapshot(conn, &meta).await? {
            Ok(bytes) => self.install_snapshot(meta, bytes).await,
            Err(why) => {
                self.refused(why);
                crate::safe_error!(
                    "refused the shared registry snapshot; not loaded",
                    snapshot = meta.id,
                    reason = why.label(),
                );
                Err(ReplicationError::Refused(why))
            }
        }
    }

    /// The snapshot's content: every chunk bounded in Redis and opened before it is appended.
    async fn read_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
        meta: &SnapshotMeta,
    ) -> Result<Result<Zeroizing<Vec<u8>>, Refusal>, ReplicationError> {
        // `meta.bytes` is bounded and authenticated (its MAC verified) by now, so the buffer is
        // allocated once at its size: growing it would free copies of the numbers unwiped.
        let expected = usize::try_from(meta.bytes).unwrap_or(usize::MAX);
        let mut bytes = Zeroizing::new(Vec::with_capacity(expected));
        for i in 0..meta.chunks {
            let chunk: redis::Value = redis::Script::new(GET_BOUNDED)
                .key(chunk_key(&meta.prefix, i))
                .arg(CHUNK_BYTES + SEAL_OVERHEAD)
                .invoke_async(conn)
                .await?;
            let sealed = match chunk {
                redis::Value::BulkString(sealed) => sealed,
                redis::Value::Int(-1) => return Ok(Err(Refusal::Bounds)),
                // A newer snapshot replaced this one while we read it; the caller retries.
                _ => return Err(ReplicationError::BadSnapshot("chunk missing")),
            };
            let plain = match self.sealer.open(&chunk_binding(meta, i), &sealed) {
                Ok(plain) => plain,
                Err(err) => return Ok(Err(err.into())),
            };
            if plain.len() > CHUNK_BYTES || bytes.len() + plain.len() > expected {
                return Ok(Err(Refusal::Bounds));
            }
            bytes.extend_from_slice(&plain);
        }
        if bytes.len() != expected {
            return Ok(Err(Refusal::Bounds));
        }
        Ok(Ok(bytes))
    }

    /// Replaces the local registry with authenticated snapshot bytes and resumes from its id.
    async fn install_snapshot(
        &self,
        meta: SnapshotMeta,
        bytes: Zeroizing<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let registry = Arc::clone(&self.registry);
        let entries = tokio::task::spawn_blocking(move || {
            let entries = decode_snapshot(&bytes).map_err(ReplicationError::BadSnapshot)?;
            let n = entries.len();
            registry.replace_all(entries)?;
            Ok::<_, ReplicationError>(n)
        })
        .await
        .map_err(|_| ReplicationError::Task)??;
        self.registry.counts().export_to(&self.metrics);
        self.metrics.replication.snapshots_loaded.inc();
        crate::safe_info!(
            "shared registry snapshot loaded",
            snapshot = meta.id,
            numbers = entries,
        );
        self.set_position(meta.id).await
    }

    /// Publishes a snapshot once `snapshot_every` entries were added since the last one
    /// (`meta`, as read this round).
    async fn maybe_publish(
        &self,
        conn: &mut MultiplexedConnection,
        meta: Option<&SnapshotMeta>,
    ) -> Result<(), ReplicationError> {
        let since = entries_added(conn)
            .await?
            .saturating_sub(meta.map_or(0, |m| m.added));
        if since >= self.snapshot_every {
            self.publish_snapshot(conn).await?;
        }
        Ok(())
    }

    /// Writes the local registry (consistent with the current position: only this task
    /// writes it) as the shared snapshot, switches to it if it is the newest, and trims the
    /// stream entries it covers. One replica at a time, by a lock in Redis. True if this
    /// replica's snapshot became the shared one.
    async fn publish_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<bool, ReplicationError> {
        let token = format!("{}-{}", std::process::id(), Clock::System.now_millis());
        let locked: Option<String> = redis::cmd("SET")
            .arg(PUBLISH_LOCK)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(600_000)
            .query_async(conn)
            .await?;
        if locked.is_none() {
            return Ok(false);
        }
        let result = self.publish_locked(conn, &token).await;
        // Released whatever happened; it also expires on its own if this process dies.
        let _: Result<(), _> = conn.del(PUBLISH_LOCK).await;
        result
    }

    async fn publish_locked(
        &self,
        conn: &mut MultiplexedConnection,
        token: &str,
    ) -> Result<bool, ReplicationError> {
        let pos = self.position();
        let added = entries_added(conn).await?;
        let prefix = format!("{META}:{pos}:{token}");
        let entries = self.registry.raw_entries();
        let bytes = tokio::task::spawn_blocking(move || encode_snapshot(&entries))
            .await
            .map_err(|_| ReplicationError::Task)?;
        let bytes = Zeroizing::new(bytes);
        if bytes.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(ReplicationError::BadSnapshot(
                "the registry exceeds the shared snapshot cap",
            ));
        }
        let meta = SnapshotMeta {
            id: pos,
            chunks: expected_chunks(bytes.len() as u64),
            bytes: bytes.len() as u64,
            prefix: prefix.clone(),
            added,
        };
        let chunks = meta.chunks;
        for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let sealed = self.sealer.seal(&chunk_binding(&meta, i as u64), chunk);
            let () = conn.set(chunk_key(&prefix, i as u64), sealed).await?;
        }
        let mac = to_hex(
            &self
                .sealer
                .mac(&meta_fields(&meta).each_ref().map(|f| f.as_bytes())),
        );
        let replaced: redis::Value = redis::Script::new(SWITCH_META)
            .key(META)
            .arg(pos.to_string())
            .arg(chunks)
            .arg(bytes.len())
            .arg(&prefix)
            .arg(added)
            .arg(mac)
            .invoke_async(conn)
            .await?;
        match replaced {
            // Someone published a snapshot at least as new: ours is not needed.
            redis::Value::Int(-1) => {
                delete_chunks(conn, &prefix, chunks).await?;
                return Ok(false);
            }
            redis::Value::Array(old) if old.len() == 3 => {
                let text = |v: &redis::Value| match v {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                // The replaced description was not authenticated here: delete only chunk keys
                // of our own shape, at most as many as a snapshot can have.
                let old_prefix = text(&old[1]);
                if let Ok(old_chunks) = text(&old[0]).parse::<u64>()
                    && old_chunks <= expected_chunks(MAX_SNAPSHOT_BYTES)
                    && prefix_is_ours(&old_prefix)
                {
                    delete_chunks(conn, &old_prefix, old_chunks).await?;
                }
                // Trim only what the *previous* snapshot covers: a replica less than one
                // snapshot interval behind still resumes from the stream instead of reloading.
                // Never past ours, whatever the replaced description claimed.
                if let Ok(previous) = text(&old[2]).parse::<StreamPos>() {
                    let _: u64 = redis::cmd("XTRIM")
                        .arg(STREAM)
                        .arg("MINID")
                        .arg(previous.min(pos).to_string())
                        .query_async(conn)
                        .await?;
                }
            }
            _ => {}
        }
        self.metrics.replication.snapshots_published.inc();
        crate::safe_info!(
            "shared registry snapshot published",
            snapshot = pos,
            bytes = bytes.len(),
        );
        Ok(true)
    }
}

/// Whether entries after `pos` may be gone: a newer snapshot exists and the stream now starts
/// after `pos` (or is empty), so resuming from `pos` could skip changes; load the snapshot.
fn trimmed_past(pos: StreamPos, meta: &SnapshotMeta, first: Option<StreamPos>) -> bool {
    pos < meta.id && first.is_none_or(|f| f > pos)
}

fn chunk_key(prefix: &str, i: u64) -> String {
    format!("{prefix}:{i}")
}

async fn delete_chunks(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    chunks: u64,
) -> Result<(), ReplicationError> {
    for i in 0..chunks {
        let _: u64 = conn.del(chunk_key(prefix, i)).await?;
    }
    Ok(())
}

/// What a snapshot description's MAC covers, in order.
fn meta_fields(meta: &SnapshotMeta) -> [String; 6] {
    [
        "cd:registry:snapshot v1".to_owned(),
        meta.id.to_string(),
        meta.chunks.to_string(),
        meta.bytes.to_string(),
        meta.prefix.clone(),
        meta.added.to_string(),
    ]
}

/// Chunks of a snapshot of `bytes` bytes (at least one: an empty registry still has a header).
fn expected_chunks(bytes: u64) -> u64 {
    bytes.div_ceil(CHUNK_BYTES as u64).max(1)
}

/// Whether `prefix` is one this code publishes: `<META>:<id>:<token>`.
fn prefix_is_ours(prefix: &str) -> bool {
    prefix.strip_prefix(META).is_some_and(|rest| {
        rest.starts_with(':')
            && rest.len() <= MAX_META_FIELD
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
    })
}

/// What a stream record's seal is bound to: the stream and the entry id.
fn record_binding(id: StreamPos) -> Vec<u8> {
    binding(&[
        b"stream record",
        STREAM.as_bytes(),
        id.to_string().as_bytes(),
    ])
}

/// What a snapshot chunk's seal is bound to: its snapshot (id, publication, length, chunk
/// count) and its place, so chunks cannot be swapped, reordered, dropped or mixed.
fn chunk_binding(meta: &SnapshotMeta, i: u64) -> Vec<u8> {
    binding(&[
        b"snapshot chunk",
        meta.id.to_string().as_bytes(),
        meta.prefix.as_bytes(),
        &meta.bytes.to_le_bytes(),
        &meta.chunks.to_le_bytes(),
        &i.to_le_bytes(),
    ])
}

/// Reads the snapshot description with every field bounded in Redis, then checks its lengths
/// and its MAC before anything else uses it.
async fn read_meta(
    conn: &mut MultiplexedConnection,
    sealer: &Sealer,
) -> Result<MetaState, ReplicationError> {
    let reply: redis::Value = redis::Script::new(READ_META)
        .key(META)
        .arg(MAX_META_FIELD)
        .invoke_async(conn)
        .await?;
    let fields: Vec<Option<String>> = match reply {
        redis::Value::Int(-1) => return Ok(MetaState::Refused(Refusal::Bounds, [0xff; 32])),
        other => match redis::from_redis_value(other) {
            Ok(fields) => fields,
            Err(_) => return Ok(MetaState::Refused(Refusal::Format, [0xfe; 32])),
        },
    };
    let digest = {
        let mut hasher = blake3::Hasher::new();
        for field in &fields {
            let field = field.as_deref().unwrap_or("\0");
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
        *hasher.finalize().as_bytes()
    };
    let refused = |why| Ok(MetaState::Refused(why, digest));
    let [id, chunks, bytes, prefix, added, mac] = match <[Option<String>; 6]>::try_from(fields) {
        Ok(fields) => fields,
        Err(_) => return refused(Refusal::Format),
    };
    let Some(id) = id else {
        return Ok(MetaState::None);
    };
    let number = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<u64>().ok());
    let (Ok(id), Some(chunks), Some(bytes), Some(prefix), Some(added), Some(mac)) = (
        id.parse::<StreamPos>(),
        number(&chunks),
        number(&bytes),
        prefix,
        number(&added),
        mac.as_deref().and_then(parse_hex32),
    ) else {
        return refused(Refusal::Format);
    };
    if bytes > MAX_SNAPSHOT_BYTES || chunks != expected_chunks(bytes) || !prefix_is_ours(&prefix) {
        return refused(Refusal::Bounds);
    }
    let meta = SnapshotMeta {
        id,
        chunks,
        bytes,
        prefix,
        added,
    };
    if !sealer.verify_mac(&meta_fields(&meta).each_ref().map(|f| f.as_bytes()), &mac) {
        return refused(Refusal::Mac);
    }
    Ok(MetaState::Valid(meta))
}

/// How many entries were ever added to the stream (`XINFO STREAM`'s `entries-added`, Redis 7);
/// 0 before the stream exists (checked with `EXISTS` in the same script: `XINFO` on a missing
/// key is an error, which once left seeding from a local registry retrying forever).
async fn entries_added(conn: &mut MultiplexedConnection) -> Result<u64, ReplicationError> {
    let added: i64 = redis::Script::new(ENTRIES_ADDED)
        .key(STREAM)
        .invoke_async(conn)
        .await?;
    u64::try_from(added).map_err(|_| {
        ReplicationError::BadSnapshot(
            "XINFO STREAM has no entries-added (Redis 7 or newer is needed)",
        )
    })
}

/// Which end of the stream.
#[derive(Clone, Copy)]
enum End {
    First,
    Last,
}

/// The first or last entry id of the stream (never an entry's contents).
async fn stream_end(
    conn: &mut MultiplexedConnection,
    end: End,
) -> Result<Option<StreamPos>, ReplicationError> {
    let id: Option<String> = redis::Script::new(STREAM_END)
        .key(STREAM)
        .arg(match end {
            End::First => "first",
            End::Last => "last",
        })
        .invoke_async(conn)
        .await?;
    Ok(id.and_then(|id| id.parse().ok()))
}

fn read_position(dir: &Path) -> Result<Option<StreamPos>, ReplicationError> {
    let path = dir.join(POSITION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .parse()
            .map(Some)
            .map_err(|_| ReplicationError::Position {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a stream id"),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReplicationError::Position { path, source }),
    }
}

fn write_position(dir: &Path, pos: StreamPos) -> Result<(), ReplicationError> {
    use std::io::Write;
    crate::store::registry::write_atomically(dir, POSITION_FILE, |out| writeln!(out, "{pos}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_positions_parse_print_and_order_numerically() {
        let a: StreamPos = "1700000000000-9".parse().unwrap();
        let b: StreamPos = "1700000000000-10".parse().unwrap();
        let c: StreamPos = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c, "sequence compares as a number, not as text");
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(StreamPos::ZERO.to_string(), "0-0");
        for bad in [
            "",
            "12",
            "-1",
            "1-",
            "a-1",
            "1-2-3",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<StreamPos>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_bounds_and_bindings() {
        assert_eq!(expected_chunks(20), 1);
        assert_eq!(expected_chunks(CHUNK_BYTES as u64), 1);
        assert_eq!(expected_chunks(CHUNK_BYTES as u64 + 1), 2);
        assert_eq!(expected_chunks(MAX_SNAPSHOT_BYTES), 2_048);
        assert!(prefix_is_ours(
            "cd:registry:snapshot:1700000000000-0:123-1700000000001"
        ));
        for foreign in [
            "cd:rl:00ff",
            "cd:registry:stream",
            "cd:registry:snapshot",
            "cd:registry:snapshot:*",
            "other:cd:registry:snapshot:1-0:1-1",
        ] {
            assert!(!prefix_is_ours(foreign), "{foreign}");
        }
        let meta = SnapshotMeta {
            id: "5-0".parse().unwrap(),
            chunks: 2,
            bytes: CHUNK_BYTES as u64 + 9,
            prefix: "cd:registry:snapshot:5-0:1-2".into(),
            added: 3,
        };
        let other = SnapshotMeta {
            id: "6-0".parse().unwrap(),
            ..meta.clone()
        };
        assert_ne!(chunk_binding(&meta, 0), chunk_binding(&meta, 1));
        assert_ne!(chunk_binding(&meta, 0), chunk_binding(&other, 0));
        assert_ne!(
            record_binding("5-0".parse().unwrap()),
            record_binding("5-1".parse().unwrap())
        );
        // A chunk sealed for one place does not open at another.
        let sealer = Sealer::new(&ServerSecret::from_bytes([9; 32]));
        let sealed = sealer.seal(&chunk_binding(&meta, 0), b"chunk");
        assert!(sealer.open(&chunk_binding(&meta, 0), &sealed).is_ok());
        assert!(sealer.open(&chunk_binding(&meta, 1), &sealed).is_err());
        assert!(sealer.open(&chunk_binding(&other, 0), &sealed).is_err());
        // The description's MAC covers every field.
        let mac = sealer.mac(&meta_fields(&meta).each_ref().map(|f| f.as_bytes()));
        for changed in [
            SnapshotMeta {
                bytes: 1 << 44,
                ..meta.clone()
            },
            SnapshotMeta {
                chunks: 3,
                ..meta.clone()
            },
            SnapshotMeta {
                added: 4,
                ..meta.clone()
            },
            SnapshotMeta {
                prefix: "cd:registry:snapshot:5-0:1-3".into(),
                ..meta.clone()
            },
            other,
        ] {
            assert!(!sealer.verify_mac(
                &meta_fields(&changed).each_ref().map(|f| f.as_bytes()),
                &mac
            ));
        }
        assert!(sealer.verify_mac(&meta_fields(&meta).each_ref().map(|f| f.as_bytes()), &mac));
    }

    #[test]
    fn resume_point_survives_a_reopen_and_is_absent_at_first() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_position(dir.path()).unwrap().is_none());
        let pos: StreamPos = "42-7".parse().unwrap();
        write_position(dir.path(), pos).unwrap();
        assert_eq!(read_position(dir.path()).unwrap(), Some(pos));
        std::fs::write(dir.path().join(POSITION_FILE), "garbage").unwrap();
        assert!(read_position(dir.path()).is_err());
    }
}
