//! The change stream `cd:registry:stream`: appending sealed records under ids this code
//! chooses, reading bounded batches, opening entries, and the stream's ends and counters.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;

use super::seal::{SEAL_OVERHEAD, Sealer, binding};
use super::{Refusal, ReplicationError, StreamPos};
use crate::clock::Clock;
use crate::store::registry::Op;
use crate::store::registry::record::{RECORD_HEADER, decode_record};

/// The change stream.
pub(super) const STREAM: &str = "cd:registry:stream";
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
pub(super) const READ_COUNT: usize = 64;
/// Bytes read per round, at most (plus one entry): so a batch never exceeds ~33 MiB however
/// the stream was filled.
const READ_BUDGET: usize = 32 << 20;
/// `XADD` attempts when other writers take the chosen ids first.
pub(super) const APPEND_TRIES: usize = 16;

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

/// One stream entry as read: its id and its fields, not yet opened.
pub(super) struct Entry {
    pub id: StreamPos,
    fields: HashMap<String, redis::Value>,
}

/// `XADD`s `record` sealed, with an id of our choosing (`<ms>-0`, ms the clock or past the
/// stream's top), so the seal can bind it: a sealed record opens only at the id it was
/// written at.
pub(super) async fn append_sealed(
    conn: &mut MultiplexedConnection,
    sealer: &Sealer,
    clock: &Clock,
    record: &[u8],
) -> Result<StreamPos, ReplicationError> {
    let mut floor = 0;
    for _ in 0..APPEND_TRIES {
        let id = StreamPos::at_millis(clock.now_millis().max(floor));
        let sealed = sealer.seal(&record_binding(id), record);
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
                floor = top
                    .map_or(id.millis(), StreamPos::millis)
                    .max(id.millis())
                    .saturating_add(1);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(ReplicationError::Contended)
}

/// The entries after `pos`: at most `READ_COUNT`, at most `READ_BUDGET` bytes (plus one),
/// oversized ones reduced to their id in Redis.
pub(super) async fn read_after(
    conn: &mut MultiplexedConnection,
    pos: StreamPos,
) -> Result<Vec<Entry>, ReplicationError> {
    let reply: StreamRangeReply = redis::Script::new(READ_ENTRIES)
        .key(STREAM)
        .arg(pos.to_string())
        .arg(READ_COUNT)
        .arg(READ_BUDGET)
        .arg(MAX_ENTRY_BYTES)
        .invoke_async(conn)
        .await?;
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let id = entry.id.parse().map_err(|_| ReplicationError::BadEntryId)?;
            Ok(Entry {
                id,
                fields: entry.map,
            })
        })
        .collect()
}

/// The operations of a stream entry, if it is a sealed record bound to its id.
pub(super) fn open_entry(sealer: &Sealer, entry: &Entry) -> Result<Vec<Op>, Refusal> {
    if entry.fields.contains_key("oversized") {
        return Err(Refusal::Bounds);
    }
    let Some(redis::Value::BulkString(sealed)) = entry.fields.get(FIELD) else {
        return Err(Refusal::Format);
    };
    let record = sealer.open(&record_binding(entry.id), sealed)?;
    match decode_record(&record) {
        Ok((ops, used)) if used == record.len() => Ok(ops),
        // Authentic but not a record: only a replica of another build could write it.
        _ => Err(Refusal::Format),
    }
}

/// How many entries were ever added to the stream (`XINFO STREAM`'s `entries-added`, Redis 7);
/// 0 before the stream exists (checked with `EXISTS` in the same script: `XINFO` on a missing
/// key is an error, which once left seeding from a local registry retrying forever).
pub(super) async fn entries_added(
    conn: &mut MultiplexedConnection,
) -> Result<u64, ReplicationError> {
    let added: i64 = redis::Script::new(ENTRIES_ADDED)
        .key(STREAM)
        .invoke_async(conn)
        .await?;
    u64::try_from(added).map_err(|_| ReplicationError::NoEntriesAdded)
}

/// Which end of the stream.
#[derive(Clone, Copy)]
pub(super) enum End {
    First,
    Last,
}

/// The first or last entry id of the stream (never an entry's contents).
pub(super) async fn stream_end(
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

/// Drops the entries before `pos` (a snapshot covers them).
pub(super) async fn trim_before(
    conn: &mut MultiplexedConnection,
    pos: StreamPos,
) -> Result<(), ReplicationError> {
    let _: u64 = redis::cmd("XTRIM")
        .arg(STREAM)
        .arg("MINID")
        .arg(pos.to_string())
        .query_async(conn)
        .await?;
    Ok(())
}

/// What a stream record's seal is bound to: the stream and the entry id.
pub(super) fn record_binding(id: StreamPos) -> Vec<u8> {
    binding(&[
        b"stream record",
        STREAM.as_bytes(),
        id.to_string().as_bytes(),
    ])
}
