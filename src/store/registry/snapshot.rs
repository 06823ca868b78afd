//! The snapshot format: the registry's whole content as `registry.snap` holds it and as
//! replicas share it.
//!
//! `magic "CDSNAP01" | u64 LE count | count × u64 LE entry | u32 LE crc32 of everything before`.
//! An entry is a number's digits as an integer, with [`HIDDEN_BIT`] set when the number is
//! hidden; entries are written sorted, so the discoverable numbers come first.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use super::{RegistryError, SNAPSHOT_FILE};
use crate::domain::E164;
use crate::store::atomic_file::write_atomically;

/// Magic at the start of the snapshot.
pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"CDSNAP01";
/// Bit set in a snapshot entry for a hidden (registered, not discoverable) number. The
/// in-memory state uses the same entries, so a snapshot loads without conversion.
pub(super) const HIDDEN_BIT: u64 = 1 << 63;
/// Bytes of header (magic, count) and of trailer (checksum).
const HEADER: usize = 16;
const TRAILER: usize = 4;
/// Bytes converted per read or write call when streaming the body.
const CHUNK: usize = 1 << 20;

/// Why bytes are not a snapshot. Says what is wrong, never what is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Fewer bytes than the header.
    #[error("short header")]
    ShortHeader,
    /// Not a snapshot of this format.
    #[error("bad magic")]
    BadMagic,
    /// The length is not what the header's entry count implies.
    #[error("length does not match the entry count")]
    LengthMismatch,
    /// More entries than this machine can address.
    #[error("too many entries")]
    TooManyEntries,
    /// The body or the checksum ends early.
    #[error("truncated")]
    Truncated,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// An entry is not an E.164 number.
    #[error("invalid number")]
    InvalidNumber,
}

impl crate::log_safe::LogSafe for SnapshotError {}

/// The registry's whole content at one moment, opaque to everyone but the registry: taken with
/// [`Registry::snapshot`](super::Registry::snapshot), sent as bytes ([`Snapshot::encode`],
/// [`Snapshot::decode`]) and installed with [`Registry::replace_all`](super::Registry::replace_all).
/// Shares the registry's memory rather than copying it.
#[derive(Clone)]
pub struct Snapshot {
    entries: Arc<Vec<u64>>,
}

impl Snapshot {
    /// Wraps entries the registry keeps sorted and valid.
    pub(super) fn from_sorted(entries: Arc<Vec<u64>>) -> Self {
        Self { entries }
    }

    pub(super) fn into_entries(self) -> Arc<Vec<u64>> {
        self.entries
    }

    /// How many numbers it registers (either visibility).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it registers none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of [`Snapshot::encode`]'s output, known without encoding.
    pub fn encoded_len(&self) -> u64 {
        encoded_len(self.entries.len() as u64).unwrap_or(u64::MAX)
    }

    /// The snapshot in the snapshot file format.
    pub fn encode(&self) -> Vec<u8> {
        let capacity = usize::try_from(self.encoded_len()).unwrap_or(0);
        let mut out = Vec::with_capacity(capacity);
        // Writing to a Vec cannot fail.
        let _ = write_to(&mut out, &self.entries);
        out
    }

    /// Parses bytes in the snapshot file format, checking the length against the header before
    /// allocating, then the checksum and every number.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        parse(bytes, bytes.len() as u64).map(|entries| Self::from_sorted(Arc::new(entries)))
    }
}

/// Redacted: a snapshot holds every registered number.
impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("numbers", &self.entries.len())
            .finish()
    }
}

/// Writes `snapshot` as `dir/registry.snap`, atomically. The file is fsync'd every
/// [`SYNC_EVERY`] bytes on the way: left to the end, 800 MB of dirty pages (100 M numbers) make
/// the log's fsyncs, which every change waits for, queue behind their write-back.
pub(super) fn write_file(dir: &Path, snapshot: &Snapshot) -> Result<(), RegistryError> {
    write_atomically(dir, SNAPSHOT_FILE, |out| {
        let mut out = SyncingWriter {
            out,
            unsynced: 0,
            every: SYNC_EVERY,
        };
        write_to(&mut out, &snapshot.entries)
    })?;
    Ok(())
}

/// Bytes of snapshot written between two fsyncs.
const SYNC_EVERY: u64 = 16 << 20;

/// Passes writes on to a buffered file and fsyncs it every `every` bytes.
struct SyncingWriter<'a, 'f> {
    out: &'a mut BufWriter<&'f File>,
    unsynced: u64,
    every: u64,
}

impl Write for SyncingWriter<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.unsynced += written as u64;
        if self.unsynced >= self.every {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads `path` straight into a snapshot, checking it like [`Snapshot::decode`].
pub(super) fn read_file(path: &Path) -> Result<Snapshot, RegistryError> {
    let io = |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let input = BufReader::with_capacity(CHUNK, file);
    match parse(input, file_len) {
        Ok(entries) => Ok(Snapshot::from_sorted(Arc::new(entries))),
        Err(why) => Err(RegistryError::CorruptSnapshot {
            path: path.to_owned(),
            why,
        }),
    }
}

/// Total bytes of a snapshot of `count` entries, if representable.
fn encoded_len(count: u64) -> Option<u64> {
    count
        .checked_mul(8)
        .and_then(|b| b.checked_add((HEADER + TRAILER) as u64))
}

fn write_to(out: &mut impl Write, entries: &[u64]) -> io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    crc.update(&header);
    out.write_all(&header)?;
    let mut bytes = Vec::with_capacity(CHUNK);
    for chunk in entries.chunks(CHUNK / 8) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|e| e.to_le_bytes()));
        crc.update(&bytes);
        out.write_all(&bytes)?;
    }
    out.write_all(&crc.finalize().to_le_bytes())
}

fn parse(mut input: impl Read, total_len: u64) -> Result<Vec<u64>, SnapshotError> {
    let mut crc = crc32fast::Hasher::new();
    let mut header = [0u8; HEADER];
    input
        .read_exact(&mut header)
        .map_err(|_| SnapshotError::ShortHeader)?;
    crc.update(&header);
    if &header[..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let count = u64::from_le_bytes(
        header[8..]
            .try_into()
            .map_err(|_| SnapshotError::ShortHeader)?,
    );
    if encoded_len(count) != Some(total_len) {
        return Err(SnapshotError::LengthMismatch);
    }
    let count = usize::try_from(count).map_err(|_| SnapshotError::TooManyEntries)?;
    // With room for growth, so that folding changes in does not reallocate (copy) it soon.
    let mut entries = Vec::with_capacity(count.saturating_add(super::state::slack_for(count)));
    let mut bytes = vec![0u8; CHUNK];
    let mut sorted = true;
    let mut previous = 0u64;
    let mut valid = true;
    while entries.len() < count {
        let take = (count - entries.len()).min(CHUNK / 8) * 8;
        let chunk = &mut bytes[..take];
        input
            .read_exact(chunk)
            .map_err(|_| SnapshotError::Truncated)?;
        crc.update(chunk);
        for raw in chunk.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(raw);
            let value = u64::from_le_bytes(word);
            valid &= E164::from_u64(value & !HIDDEN_BIT).is_ok();
            sorted &= value > previous;
            previous = value;
            entries.push(value);
        }
    }
    let mut stored = [0u8; TRAILER];
    input
        .read_exact(&mut stored)
        .map_err(|_| SnapshotError::Truncated)?;
    if u32::from_le_bytes(stored) != crc.finalize() {
        return Err(SnapshotError::ChecksumMismatch);
    }
    if !valid {
        return Err(SnapshotError::InvalidNumber);
    }
    if !sorted {
        // This writer always sorts; tolerate a snapshot that is not, as the format allows it.
        entries.sort_unstable();
        entries.dedup();
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, hidden: bool) -> u64 {
        (15_550_000_000 + i) | if hidden { HIDDEN_BIT } else { 0 }
    }

    fn snapshot(entries: &[u64]) -> Snapshot {
        Snapshot::from_sorted(Arc::new(entries.to_vec()))
    }

    /// Bytes of a snapshot of `entries` as written by hand, in whatever order they come.
    fn by_hand(entries: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(SNAPSHOT_MAGIC);
        body.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for e in entries {
            body.extend_from_slice(&e.to_le_bytes());
        }
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    #[test]
    fn encodes_the_documented_layout_and_decodes_it_back() {
        let entries = [entry(1, false), entry(3, false), entry(2, true)];
        let bytes = snapshot(&entries).encode();
        assert_eq!(bytes, by_hand(&entries), "byte for byte the file format");
        assert_eq!(bytes.len() as u64, snapshot(&entries).encoded_len());
        let decoded = Snapshot::decode(&bytes).unwrap();
        assert_eq!(decoded.len(), 3);
        assert!(!decoded.is_empty());
        assert_eq!(*decoded.into_entries(), entries);
        let empty = snapshot(&[]).encode();
        assert_eq!(empty.len(), HEADER + TRAILER);
        assert!(Snapshot::decode(&empty).unwrap().is_empty());
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let good = by_hand(&[entry(1, false), entry(2, true)]);
        let decode = |bytes: &[u8]| Snapshot::decode(bytes).map(|s| s.len());
        assert_eq!(decode(&good[..10]), Err(SnapshotError::ShortHeader));
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert_eq!(decode(&magic), Err(SnapshotError::BadMagic));
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(SnapshotError::LengthMismatch)
        );
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(SnapshotError::LengthMismatch));
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(SnapshotError::LengthMismatch));
        for at in [16, 23, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 1;
            assert_eq!(
                decode(&flipped),
                Err(SnapshotError::ChecksumMismatch),
                "{at}"
            );
        }
        let invalid = by_hand(&[entry(1, false), 0]);
        assert_eq!(decode(&invalid), Err(SnapshotError::InvalidNumber));
        let invalid = by_hand(&[u64::MAX]);
        assert_eq!(decode(&invalid), Err(SnapshotError::InvalidNumber));
        assert_eq!(decode(&good), Ok(2));
    }

    #[test]
    fn a_reader_that_ends_early_is_truncated_not_a_panic() {
        let good = by_hand(&[entry(1, false), entry(2, false)]);
        // The file's length (from its metadata) promises more than the reader delivers.
        let total = good.len() as u64;
        assert_eq!(
            parse(&good[..HEADER + 4], total),
            Err(SnapshotError::Truncated)
        );
        assert_eq!(
            parse(&good[..good.len() - 2], total),
            Err(SnapshotError::Truncated)
        );
    }

    #[test]
    fn unsorted_entries_are_accepted_sorted_and_deduplicated() {
        let unsorted = by_hand(&[
            entry(5, false),
            entry(2, true),
            entry(1, false),
            entry(1, false),
        ]);
        let decoded = Snapshot::decode(&unsorted).unwrap();
        assert_eq!(
            *decoded.into_entries(),
            [entry(1, false), entry(5, false), entry(2, true)]
        );
    }

    #[test]
    fn sorted_entries_with_a_repeat_are_deduplicated() {
        let repeated = by_hand(&[entry(1, false), entry(1, false), entry(2, false)]);
        let decoded = Snapshot::decode(&repeated).unwrap();
        assert_eq!(*decoded.into_entries(), [entry(1, false), entry(2, false)]);
    }

    #[test]
    fn a_snapshot_of_several_chunks_round_trips() {
        // More entries than one read or write chunk holds, and not a multiple of it.
        let entries: Vec<u64> = (0..(CHUNK / 8 * 2 + 3) as u64)
            .map(|i| entry(i, false))
            .collect();
        let bytes = snapshot(&entries).encode();
        assert_eq!(bytes, by_hand(&entries));
        assert_eq!(*Snapshot::decode(&bytes).unwrap().into_entries(), entries);
    }

    #[test]
    fn debug_shows_a_count_not_the_numbers() {
        let shown = format!("{:?}", snapshot(&[entry(1, false)]));
        assert_eq!(shown, "Snapshot { numbers: 1 }");
    }

    #[test]
    fn files_round_trip_and_a_damaged_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let entries = [entry(1, false), entry(2, true)];
        write_file(dir.path(), &snapshot(&entries)).unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        assert_eq!(std::fs::read(&path).unwrap(), by_hand(&entries));
        assert_eq!(*read_file(&path).unwrap().into_entries(), entries);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[17] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_file(&path),
            Err(RegistryError::CorruptSnapshot {
                why: SnapshotError::ChecksumMismatch,
                ..
            })
        ));
        assert!(matches!(
            read_file(&dir.path().join("absent")),
            Err(RegistryError::Io { .. })
        ));
    }
}
