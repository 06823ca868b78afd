//! Registry replication for several replicas, through Redis: a **change stream** with resume
//! points plus a **shared snapshot**. Optional; without `--registry-redis-url` the registry
//! stands alone.
//!
//! - Every admin change becomes one entry of the stream `cd:registry:stream` (`XADD`), holding
//!   the same checksummed record the local log uses. Its entry id is the resume point.
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
//! Nothing of a query ever reaches Redis: only numbers the backend registers.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::redis_link::RedisLink;
use crate::registry::record::{decode_record, encode_record};
use crate::registry::{Op, Registry, RegistryError, decode_snapshot, encode_snapshot};

/// The change stream.
const STREAM: &str = "cd:registry:stream";
/// The shared snapshot's description: `id`, `chunks`, `bytes`, `prefix` (of the chunk keys),
/// `added` (the stream's entries-added counter when it was taken).
const META: &str = "cd:registry:snapshot";
/// Held by the replica publishing a snapshot.
const PUBLISH_LOCK: &str = "cd:registry:snapshot:lock";
/// Bytes per snapshot chunk (Redis strings are limited to 512 MiB; small chunks keep Redis
/// responsive while a large snapshot moves).
const CHUNK_BYTES: usize = 8 << 20;
/// Entries read per `XREAD`.
const READ_COUNT: usize = 512;
/// How long one `XREAD` waits for new entries.
const READ_BLOCK_MS: u64 = 1_000;
/// The resume point, beside the registry files.
const POSITION_FILE: &str = "replication.pos";

/// Switches the snapshot description only to a newer snapshot (or sets the first one), and
/// returns the description it replaced (empty when none).
const SWITCH_META: &str = r#"
local function newer(a, b)
  local am, as = string.match(a, "^(%d+)-(%d+)$")
  local bm, bs = string.match(b, "^(%d+)-(%d+)$")
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local old = redis.call('HMGET', KEYS[1], 'id', 'chunks', 'prefix')
if old[1] and not newer(ARGV[1], old[1]) then return -1 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'chunks', ARGV[2], 'bytes', ARGV[3], 'prefix', ARGV[4],
  'added', ARGV[5])
if old[1] then return {old[2], old[3], old[1]} end
return {}
"#;

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
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        snapshot_every: u64,
    ) -> Result<Arc<Self>, ReplicationError> {
        let redis = RedisLink::open(url)?;
        let start = read_position(registry.dir())?.unwrap_or_default();
        metrics.replication.synced.set(0);
        Ok(Arc::new(Self {
            redis,
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

    /// Appends `ops` to the shared stream as one entry and returns its id. Once this returns,
    /// the change is as durable as Redis is (run it with `appendfsync always`).
    pub async fn append(&self, ops: &[Op]) -> Result<StreamPos, ReplicationError> {
        let record = encode_record(ops);
        let mut conn = self.redis.shared().await?;
        let added: Result<String, _> = redis::cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("ops")
            .arg(record)
            .query_async(&mut conn)
            .await;
        match added {
            Ok(id) => id
                .parse()
                .map_err(|_| ReplicationError::BadSnapshot("XADD returned no entry id")),
            Err(err) => {
                self.redis.forget();
                self.metrics.replication.errors.inc();
                Err(err.into())
            }
        }
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
        let meta = read_meta(conn).await?;
        let first = stream_end(conn, "XRANGE", "-", "+").await?;
        let head = stream_end(conn, "XREVRANGE", "+", "-").await?;
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
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("STREAMS")
                .arg(STREAM)
                .arg(pos.to_string())
                .query_async(conn)
                .await?;
            self.last_contact_ms
                .store(Clock::System.now_millis(), Ordering::Relaxed);
            let entries = reply
                .and_then(|r| r.keys.into_iter().next())
                .map(|k| k.ids)
                .unwrap_or_default();
            let meta = read_meta(conn).await?;
            if entries.is_empty() {
                self.metrics.replication.lag_seconds.set(0);
                self.maybe_publish(conn, meta.as_ref()).await?;
                continue;
            }
            // A snapshot newer than our position may have trimmed entries we never saw.
            // (`meta.id > pos` first: it spares the XRANGE when no newer snapshot exists.)
            if let Some(meta) = &meta
                && meta.id > pos
                && trimmed_past(pos, meta, stream_end(conn, "XRANGE", "-", "+").await?)
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
                match entry.map.get("ops") {
                    Some(redis::Value::BulkString(bytes)) => match decode_record(bytes) {
                        Ok((decoded, _)) => ops.extend(decoded),
                        Err(why) => self.skip_entry(id, why),
                    },
                    _ => self.skip_entry(id, "no ops field"),
                }
                last = id;
            }
            if !ops.is_empty() {
                let registry = Arc::clone(&self.registry);
                tokio::task::spawn_blocking(move || registry.apply(&ops))
                    .await
                    .map_err(|_| ReplicationError::Task)??;
                self.metrics.set_registry_counts(self.registry.counts());
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
            self.maybe_publish(conn, meta.as_ref()).await?;
        }
    }

    fn skip_entry(&self, id: StreamPos, why: impl crate::log_safe::LogSafe) {
        self.metrics.replication.errors.inc();
        crate::safe_error!(
            "skipping an undecodable registry stream entry",
            entry = id,
            reason = why,
        );
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
        let mut bytes = Vec::with_capacity(usize::try_from(meta.bytes).unwrap_or(0));
        for i in 0..meta.chunks {
            let chunk: Option<Vec<u8>> = conn.get(chunk_key(&meta.prefix, i)).await?;
            // A newer snapshot replaced this one while we read it; the caller retries.
            let chunk = chunk.ok_or(ReplicationError::BadSnapshot("chunk missing"))?;
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != meta.bytes {
            return Err(ReplicationError::BadSnapshot(
                "length differs from its description",
            ));
        }
        let registry = Arc::clone(&self.registry);
        let entries = tokio::task::spawn_blocking(move || {
            let entries = decode_snapshot(&bytes).map_err(ReplicationError::BadSnapshot)?;
            let n = entries.len();
            registry.replace_all(entries)?;
            Ok::<_, ReplicationError>(n)
        })
        .await
        .map_err(|_| ReplicationError::Task)??;
        self.metrics.set_registry_counts(self.registry.counts());
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
        let chunks = bytes.chunks(CHUNK_BYTES).count().max(1) as u64;
        for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let () = conn.set(chunk_key(&prefix, i as u64), chunk).await?;
        }
        let replaced: redis::Value = redis::Script::new(SWITCH_META)
            .key(META)
            .arg(pos.to_string())
            .arg(chunks)
            .arg(bytes.len())
            .arg(&prefix)
            .arg(added)
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
                if let Ok(old_chunks) = text(&old[0]).parse::<u64>() {
                    delete_chunks(conn, &text(&old[1]), old_chunks).await?;
                }
                // Trim only what the *previous* snapshot covers: a replica less than one
                // snapshot interval behind still resumes from the stream instead of reloading.
                if let Ok(previous) = text(&old[2]).parse::<StreamPos>() {
                    let _: u64 = redis::cmd("XTRIM")
                        .arg(STREAM)
                        .arg("MINID")
                        .arg(previous.to_string())
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

async fn read_meta(
    conn: &mut MultiplexedConnection,
) -> Result<Option<SnapshotMeta>, ReplicationError> {
    let fields: HashMap<String, String> = conn.hgetall(META).await?;
    let Some(id) = fields.get("id") else {
        return Ok(None);
    };
    let field = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    match (
        id.parse(),
        field("chunks"),
        field("bytes"),
        fields.get("prefix"),
    ) {
        (Ok(id), Some(chunks), Some(bytes), Some(prefix)) => Ok(Some(SnapshotMeta {
            id,
            chunks,
            bytes,
            prefix: prefix.clone(),
            added: field("added").unwrap_or(0),
        })),
        _ => Err(ReplicationError::BadSnapshot("description is malformed")),
    }
}

/// How many entries were ever added to the stream (`XINFO STREAM`'s `entries-added`, Redis 7);
/// 0 before the stream exists.
async fn entries_added(conn: &mut MultiplexedConnection) -> Result<u64, ReplicationError> {
    let info: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(STREAM)
        .query_async(conn)
        .await;
    let pairs = match info {
        Ok(redis::Value::Array(items)) => items
            .chunks_exact(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect::<Vec<_>>(),
        Ok(redis::Value::Map(pairs)) => pairs,
        Ok(_) => Vec::new(),
        // "no such key": nothing was ever added.
        Err(err)
            if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
        {
            Vec::new()
        }
        Err(err) => return Err(err.into()),
    };
    for (key, value) in pairs {
        let named = matches!(&key, redis::Value::BulkString(k) if k == b"entries-added")
            || matches!(&key, redis::Value::SimpleString(k) if k == "entries-added");
        if named && let redis::Value::Int(n) = value {
            return Ok(u64::try_from(n).unwrap_or(0));
        }
    }
    Err(ReplicationError::BadSnapshot(
        "XINFO STREAM has no entries-added (Redis 7 or newer is needed)",
    ))
}

/// The first (`XRANGE - +`) or last (`XREVRANGE + -`) entry id of the stream.
async fn stream_end(
    conn: &mut MultiplexedConnection,
    command: &str,
    from: &str,
    to: &str,
) -> Result<Option<StreamPos>, ReplicationError> {
    let reply: StreamRangeReply = redis::cmd(command)
        .arg(STREAM)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply.ids.first().and_then(|e| e.id.parse().ok()))
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
    crate::registry::write_atomically(dir, POSITION_FILE, |out| writeln!(out, "{pos}"))?;
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
