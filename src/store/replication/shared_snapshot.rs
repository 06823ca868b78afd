//! The shared snapshot in Redis: a MAC'd description (`cd:registry:snapshot`) naming sealed
//! chunks, how a replica loads one into its registry and how it publishes its own.

use std::sync::Arc;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use zeroize::Zeroizing;

use super::seal::{SEAL_OVERHEAD, Sealer, binding};
use super::stream::{entries_added, trim_before};
use super::{Refusal, Replica, ReplicationError, StreamPos};
use crate::domain::secret::{parse_hex32, to_hex};
use crate::store::registry::Snapshot;

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

/// The shared snapshot's description: absent, authentic, or refused.
#[derive(Debug, Clone)]
pub(super) enum MetaState {
    None,
    Valid(SnapshotMeta),
    /// Refused for this reason; the digest of its fields, to count one description once.
    Refused(Refusal, [u8; 32]),
}

/// The shared snapshot's description.
#[derive(Debug, Clone)]
pub(super) struct SnapshotMeta {
    pub id: StreamPos,
    chunks: u64,
    bytes: u64,
    /// Chunk `i` is at `<prefix>:<i>`; unique per publication, so a losing publisher's
    /// clean-up never touches the winner's chunks.
    prefix: String,
    /// The stream's entries-added counter when the snapshot was taken.
    added: u64,
}

impl Replica {
    /// Replaces the local registry with the shared snapshot and resumes from its id.
    pub(super) async fn load_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
        meta: SnapshotMeta,
    ) -> Result<(), ReplicationError> {
        match read_chunks(conn, &self.sealer, &meta).await? {
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

    /// Replaces the local registry with authenticated snapshot bytes and resumes from its id.
    async fn install_snapshot(
        &self,
        meta: SnapshotMeta,
        bytes: Zeroizing<Vec<u8>>,
    ) -> Result<(), ReplicationError> {
        let registry = Arc::clone(&self.registry);
        let numbers = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::decode(&bytes)?;
            let n = snapshot.len();
            registry.replace_all(snapshot)?;
            Ok::<_, ReplicationError>(n)
        })
        .await
        .map_err(|_| ReplicationError::Task)??;
        self.registry.counts().export_to(&self.metrics);
        self.metrics.replication.snapshots_loaded.inc();
        crate::safe_info!(
            "shared registry snapshot loaded",
            snapshot = meta.id,
            numbers = numbers,
        );
        self.set_position(meta.id).await
    }

    /// Publishes a snapshot once `snapshot_every` entries were added since the last one
    /// (`meta`, as read this round).
    pub(super) async fn maybe_publish(
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
    pub(super) async fn publish_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<bool, ReplicationError> {
        let token = publication_token();
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
        let snapshot = self.registry.snapshot();
        if snapshot.encoded_len() > MAX_SNAPSHOT_BYTES {
            return Err(ReplicationError::SnapshotTooLarge);
        }
        let bytes = tokio::task::spawn_blocking(move || snapshot.encode())
            .await
            .map_err(|_| ReplicationError::Task)?;
        let bytes = Zeroizing::new(bytes);
        let meta = SnapshotMeta {
            id: pos,
            chunks: expected_chunks(bytes.len() as u64),
            bytes: bytes.len() as u64,
            prefix: format!("{META}:{pos}:{token}"),
            added,
        };
        write_chunks(conn, &self.sealer, &meta, &bytes).await?;
        if !switch_to(conn, &self.sealer, &meta).await? {
            return Ok(false);
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

/// A name unique to one publication: the process id and the *system* clock's milliseconds.
/// It names, it does not time: the injected clock (which tests may hold still) could give two
/// publications of one process the same name, and a loser's clean-up would delete the winner's
/// chunks.
fn publication_token() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        crate::clock::Clock::System.now_millis()
    )
}

/// Seals and stores every chunk of `bytes` under `meta`'s prefix.
async fn write_chunks(
    conn: &mut MultiplexedConnection,
    sealer: &Sealer,
    meta: &SnapshotMeta,
    bytes: &[u8],
) -> Result<(), ReplicationError> {
    for (i, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
        let sealed = sealer.seal(&chunk_binding(meta, i as u64), chunk);
        let () = conn.set(chunk_key(&meta.prefix, i as u64), sealed).await?;
    }
    Ok(())
}

/// Makes `meta` the shared description if it is the newest, then removes what it replaces:
/// the old chunks and the stream entries the *previous* snapshot covers. If a newer one is
/// already there, removes `meta`'s own chunks instead. True if `meta` became the shared one.
async fn switch_to(
    conn: &mut MultiplexedConnection,
    sealer: &Sealer,
    meta: &SnapshotMeta,
) -> Result<bool, ReplicationError> {
    let mac = to_hex(&sealer.mac(&meta_fields(meta).each_ref().map(|f| f.as_bytes())));
    let replaced: redis::Value = redis::Script::new(SWITCH_META)
        .key(META)
        .arg(meta.id.to_string())
        .arg(meta.chunks)
        .arg(meta.bytes)
        .arg(&meta.prefix)
        .arg(meta.added)
        .arg(mac)
        .invoke_async(conn)
        .await?;
    match replaced {
        // Someone published a snapshot at least as new: ours is not needed.
        redis::Value::Int(-1) => {
            delete_chunks(conn, &meta.prefix, meta.chunks).await?;
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
                trim_before(conn, previous.min(meta.id)).await?;
            }
        }
        _ => {}
    }
    Ok(true)
}

/// The snapshot's content: every chunk bounded in Redis and opened before it is appended.
async fn read_chunks(
    conn: &mut MultiplexedConnection,
    sealer: &Sealer,
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
            _ => return Err(ReplicationError::SnapshotChunkMissing),
        };
        let plain = match sealer.open(&chunk_binding(meta, i), &sealed) {
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

/// Whether entries after `pos` may be gone: a newer snapshot exists and the stream now starts
/// after `pos` (or is empty), so resuming from `pos` could skip changes; load the snapshot.
pub(super) fn trimmed_past(pos: StreamPos, meta: &SnapshotMeta, first: Option<StreamPos>) -> bool {
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
pub(super) async fn read_meta(
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
    let digest = fields_digest(&fields);
    Ok(check_meta(fields, sealer).unwrap_or_else(|why| MetaState::Refused(why, digest)))
}

/// A digest of a description's fields as read, so one refused description is counted once.
fn fields_digest(fields: &[Option<String>]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for field in fields {
        let field = field.as_deref().unwrap_or("\0");
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// Parses, bounds and authenticates the description's fields.
fn check_meta(fields: Vec<Option<String>>, sealer: &Sealer) -> Result<MetaState, Refusal> {
    let [id, chunks, bytes, prefix, added, mac] =
        <[Option<String>; 6]>::try_from(fields).map_err(|_| Refusal::Format)?;
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
        return Err(Refusal::Format);
    };
    if bytes > MAX_SNAPSHOT_BYTES || chunks != expected_chunks(bytes) || !prefix_is_ours(&prefix) {
        return Err(Refusal::Bounds);
    }
    let meta = SnapshotMeta {
        id,
        chunks,
        bytes,
        prefix,
        added,
    };
    if !sealer.verify_mac(&meta_fields(&meta).each_ref().map(|f| f.as_bytes()), &mac) {
        return Err(Refusal::Mac);
    }
    Ok(MetaState::Valid(meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ServerSecret;
    use crate::store::replication::stream::record_binding;

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
}
