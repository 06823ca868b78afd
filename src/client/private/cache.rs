//! The private mode's cache file (`discover --mode private --cache FILE`): the local set and
//! the set hashes of the last run's numbers, so the next run evaluates only new contacts and
//! downloads only what changed.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! magic        8 bytes  "CDPCACHE"
//! version      u32      1
//! payload len  u64      bytes between this field and the checksum
//! payload:
//!   has set    u8       0 or 1
//!   if 1:      key_epoch u64, range u64, shards u32, golomb_p u8, max_batch u32,
//!              set version (16 bytes),
//!              per shard: ETag (16 bytes), items u64, byte length u32, the shard's bytes
//!   epochs     u32
//!   per epoch: key_epoch u64 (strictly increasing), numbers u32,
//!              per number: E.164 digits u64 (strictly increasing), set hash u64
//! checksum     32 bytes BLAKE3 of everything before it
//! ```
//!
//! The file holds the user's contacts (as numbers with their set hashes), so it is written
//! 0600, whole or not at all (temporary file, fsync, rename, fsync of the directory). Reading
//! it is hostile-input decoding: the checksum is checked first, every count is checked
//! against the bytes left before anything is allocated for it, and every shard is checked
//! like a download (its ETag, its bounds, the set's version), so a damaged file is refused
//! with its reason and never half-used.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::PrivateCache;
use super::set::{LocalSet, LocalShard, MAX_BATCH};
use crate::domain::E164;
use crate::protocol::private_set::{SetError, SetParams, TAG_BYTES, Tag};

/// First bytes of a cache file.
const MAGIC: &[u8; 8] = b"CDPCACHE";
/// The layout version this code writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Magic, version and payload length.
const HEADER_BYTES: usize = 8 + 4 + 8;
/// BLAKE3 checksum at the end.
const CHECKSUM_BYTES: usize = 32;
/// Largest cache file read: a set for every phone number in use fits many times over, and a
/// file claiming more is refused before it is read into memory.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;
/// Least bytes a shard record takes (ETag, items, length).
const SHARD_RECORD_BYTES: usize = TAG_BYTES + 8 + 4;
/// Bytes of an epoch's header (key epoch, count).
const EPOCH_RECORD_BYTES: usize = 8 + 4;
/// Bytes of one number's record (E.164, set hash).
const NUMBER_RECORD_BYTES: usize = 8 + 8;

/// Why a cache file could not be read or written. Messages name the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Larger than any cache file this client writes.
    #[error("larger than {MAX_CACHE_BYTES} bytes")]
    TooLarge,
    /// Not a cache file.
    #[error("not a contact-discovery cache file")]
    Magic,
    /// Written by a version of the client that used another layout.
    #[error("cache format version {0} is not supported")]
    Version(u32),
    /// Shorter or longer than its header says.
    #[error("truncated or overlong")]
    Length,
    /// The checksum does not match: damaged.
    #[error("checksum mismatch")]
    Checksum,
    /// The checksum matched but the content breaks the format.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The set in it does not check out.
    #[error("its set was refused: {0}")]
    Set(#[from] SetError),
}

/// Encodes `cache` as a cache file's bytes. A set that is not complete is left out (the next
/// run downloads it again).
pub fn encode(cache: &PrivateCache) -> Zeroizing<Vec<u8>> {
    let mut payload = Zeroizing::new(Vec::new());
    encode_set(&cache.set, &mut payload);
    payload.extend_from_slice(&len_u32(cache.hashes.len()).to_be_bytes());
    for (epoch, numbers) in &cache.hashes {
        payload.extend_from_slice(&epoch.to_be_bytes());
        payload.extend_from_slice(&len_u32(numbers.len()).to_be_bytes());
        for (number, hash) in numbers {
            payload.extend_from_slice(&number.get().to_be_bytes());
            payload.extend_from_slice(&hash.to_be_bytes());
        }
    }
    let mut out = Zeroizing::new(Vec::with_capacity(
        HEADER_BYTES + payload.len() + CHECKSUM_BYTES,
    ));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&payload);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Counts are bounded far below `u32::MAX` by the set's and the address book's limits.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn encode_set(set: &LocalSet, out: &mut Vec<u8>) {
    let (Some(params), Some(version)) = (set.params(), set.version()) else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&params.key_epoch.to_be_bytes());
    out.extend_from_slice(&params.range.to_be_bytes());
    out.extend_from_slice(&params.shards.to_be_bytes());
    out.push(params.golomb_p);
    out.extend_from_slice(&len_u32(set.max_batch()).to_be_bytes());
    out.extend_from_slice(&version);
    for shard in set.shards().flatten() {
        out.extend_from_slice(&shard.etag);
        out.extend_from_slice(&shard.items.to_be_bytes());
        out.extend_from_slice(&len_u32(shard.bytes.len()).to_be_bytes());
        out.extend_from_slice(&shard.bytes);
    }
}

/// Decodes a cache file's bytes, refusing anything damaged.
pub fn decode(bytes: &[u8]) -> Result<PrivateCache, CacheError> {
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) {
            CacheError::Length
        } else {
            CacheError::Magic
        });
    };
    if &header[..8] != MAGIC {
        return Err(CacheError::Magic);
    }
    let version = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(CacheError::Version(version));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    let payload_len = u64::from_be_bytes(len);
    if rest.len() < CHECKSUM_BYTES || (rest.len() - CHECKSUM_BYTES) as u64 != payload_len {
        return Err(CacheError::Length);
    }
    let (sealed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if blake3::hash(sealed).as_bytes() != checksum {
        return Err(CacheError::Checksum);
    }
    let mut input = Reader(&sealed[HEADER_BYTES..]);
    let set = decode_set(&mut input)?;
    let epochs = input.count(EPOCH_RECORD_BYTES)?;
    let mut hashes = BTreeMap::new();
    let mut last_epoch = None;
    for _ in 0..epochs {
        let epoch = input.u64()?;
        if last_epoch.is_some_and(|last| last >= epoch) {
            return Err(CacheError::Malformed("key epochs out of order"));
        }
        last_epoch = Some(epoch);
        let count = input.count(NUMBER_RECORD_BYTES)?;
        let mut numbers = BTreeMap::new();
        let mut last_number = None;
        for _ in 0..count {
            let number =
                E164::from_u64(input.u64()?).map_err(|_| CacheError::Malformed("not a number"))?;
            if last_number.is_some_and(|last| last >= number) {
                return Err(CacheError::Malformed("numbers out of order"));
            }
            last_number = Some(number);
            numbers.insert(number, input.u64()?);
        }
        hashes.insert(epoch, numbers);
    }
    if !input.0.is_empty() {
        return Err(CacheError::Malformed("bytes after the last record"));
    }
    Ok(PrivateCache { set, hashes })
}

fn decode_set(input: &mut Reader<'_>) -> Result<LocalSet, CacheError> {
    match input.u8()? {
        0 => return Ok(LocalSet::default()),
        1 => {}
        _ => return Err(CacheError::Malformed("set flag")),
    }
    let params = SetParams {
        key_epoch: input.u64()?,
        range: input.u64()?,
        shards: input.u32()?,
        golomb_p: input.u8()?,
    }
    .checked()?;
    let max_batch = input.u32()? as usize;
    if max_batch == 0 || max_batch > MAX_BATCH {
        return Err(CacheError::Malformed("batch limit"));
    }
    let version = input.tag()?;
    let count = params.shards as usize;
    if count > input.0.len() / SHARD_RECORD_BYTES {
        return Err(CacheError::Malformed("more shards than the file holds"));
    }
    let mut shards = Vec::with_capacity(count);
    for index in 0..params.shards {
        let etag = input.tag()?;
        let items = input.u64()?;
        let len = input.u32()? as usize;
        let bytes: Arc<[u8]> = input.take(len)?.into();
        shards.push(LocalShard::new(&params, index, etag, items, bytes)?);
    }
    Ok(LocalSet::from_parts(params, version, max_batch, shards)?)
}

/// Reads big-endian fields, refusing to read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CacheError> {
        if n > self.0.len() {
            return Err(CacheError::Malformed("a record runs past the end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CacheError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CacheError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, CacheError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, CacheError> {
        self.array().map(u64::from_be_bytes)
    }

    fn tag(&mut self) -> Result<Tag, CacheError> {
        self.array()
    }

    /// A count of records of at least `record` bytes each, refused if the bytes left cannot
    /// hold that many (so no count makes the decoder allocate beyond the file's size).
    fn count(&mut self, record: usize) -> Result<usize, CacheError> {
        let count = self.u32()? as usize;
        if count > self.0.len() / record {
            return Err(CacheError::Malformed(
                "a count claims more than the file holds",
            ));
        }
        Ok(count)
    }
}

/// Reads the cache file at `path`; `None` if there is none.
pub fn read_cache(path: &Path) -> Result<Option<PrivateCache>, CacheError> {
    read_cache_within(path, MAX_CACHE_BYTES)
}

/// [`read_cache`], refusing a file over `limit` bytes.
fn read_cache_within(path: &Path, limit: u64) -> Result<Option<PrivateCache>, CacheError> {
    let io = |source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io(err)),
    };
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(CacheError::TooLarge);
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(size as usize));
    // Never more than the limit, even from a file that grew since its size was taken: what
    // is cut off then fails the length and checksum checks.
    io::Read::read_to_end(&mut io::Read::take(&file, limit), &mut bytes).map_err(io)?;
    decode(&bytes).map(Some)
}

/// Writes `cache` to `path` whole or not at all: a temporary file beside it (mode 0600,
/// created exclusively after removing a leftover, so a planted link is never followed),
/// fsync'd, renamed over `path`, and the directory fsync'd so the rename survives a crash.
pub fn write_cache(path: &Path, cache: &PrivateCache) -> Result<(), CacheError> {
    let at = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Io { path, source }
    };
    let name = path
        .file_name()
        .ok_or_else(|| at(path)(io::Error::other("not a file name")))?;
    let dir = parent_dir(path);
    let mut tmp_name = name.to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A leftover from a crash goes; whatever cannot be removed makes the exclusive create
    // below fail, with its path.
    let _ = fs::remove_file(&tmp);
    let bytes = encode(cache);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(at(&tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(at(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(at(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// The directory `path` is in (`.` for a bare file name), whose entry the rename changes.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::private::set::tests::{complete, params, sample_values};
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> PrivateCache {
        let mut hashes = BTreeMap::new();
        let numbers: BTreeMap<E164, u64> = [(14_155_550_100, 7), (4_915_112_345_678, u64::MAX)]
            .into_iter()
            .map(|(n, h)| (E164::from_u64(n).unwrap(), h))
            .collect();
        hashes.insert(3, BTreeMap::new());
        hashes.insert(4, numbers);
        PrivateCache {
            set: complete(&params(), &sample_values()),
            hashes,
        }
    }

    /// Replaces the checksum so a test reaches the decoder past it.
    fn reseal(bytes: &mut [u8]) {
        let end = bytes.len() - CHECKSUM_BYTES;
        let checksum = blake3::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(checksum.as_bytes());
    }

    /// Bytes with the payload replaced, its length and checksum made right.
    fn with_payload(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(blake3::hash(&out).as_bytes());
        out
    }

    fn payload_of(bytes: &[u8]) -> Vec<u8> {
        bytes[HEADER_BYTES..bytes.len() - CHECKSUM_BYTES].to_vec()
    }

    fn same(a: &PrivateCache, b: &PrivateCache) -> bool {
        a.hashes == b.hashes
            && a.set.params() == b.set.params()
            && a.set.version() == b.set.version()
            && a.set.max_batch() == b.set.max_batch()
            && a.set.items() == b.set.items()
            && encode(a) == encode(b)
    }

    #[test]
    fn round_trips() {
        let cache = sample();
        let bytes = encode(&cache);
        let back = decode(&bytes).unwrap();
        assert!(same(&cache, &back));
        assert!(back.set.version().is_some());
        let empty = PrivateCache::default();
        let back = decode(&encode(&empty)).unwrap();
        assert!(back.set.params().is_none() && back.hashes.is_empty());
    }

    #[test]
    fn an_incomplete_set_is_left_out() {
        let mut cache = sample();
        cache.set.drop_shard(2);
        let back = decode(&encode(&cache)).unwrap();
        assert_eq!(back.set.params(), None);
        assert_eq!(back.hashes, cache.hashes);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(decode(&bytes[..4]), Err(CacheError::Length)));
        assert!(matches!(decode(&bytes[..30]), Err(CacheError::Length)));
        assert!(matches!(
            decode(b"not a cache file at all"),
            Err(CacheError::Magic)
        ));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(&sample());
        for at in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        let mut bad = bytes.to_vec();
        bad[HEADER_BYTES + 3] ^= 1;
        assert!(matches!(decode(&bad), Err(CacheError::Checksum)));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(CacheError::Length)));
    }

    #[test]
    fn other_versions_and_magics_are_named() {
        let mut bytes = encode(&sample()).to_vec();
        bytes[11] = 2;
        reseal(&mut bytes);
        assert!(matches!(decode(&bytes), Err(CacheError::Version(2))));
        bytes[0] = b'X';
        assert!(matches!(decode(&bytes), Err(CacheError::Magic)));
    }

    #[test]
    fn counts_beyond_the_file_are_refused_before_allocating() {
        // Epoch count, then a number count, then a shard count that claim u32::MAX records.
        let refused = |payload: &[u8]| {
            let out = decode(&with_payload(payload));
            assert!(
                matches!(out, Err(CacheError::Malformed(_))),
                "{:?}",
                out.err()
            );
        };
        let mut p = vec![0];
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        refused(&p);
        let mut p = vec![0];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&4u64.to_be_bytes());
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        refused(&p);
        // Exactly as many records as the bytes hold is accepted.
        let mut p = vec![0];
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&4u64.to_be_bytes());
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(&14_155_550_100u64.to_be_bytes());
        p.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(decode(&with_payload(&p)).unwrap().hashes[&4].len(), 1);
        // One more than they hold is not.
        let at = 1 + 4 + 8;
        p[at..at + 4].copy_from_slice(&2u32.to_be_bytes());
        refused(&p);
        // A set of MAX_SHARDS shards in a file that holds none of them.
        let mut p = vec![1];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.extend_from_slice(&u64::MAX.to_be_bytes());
        p.extend_from_slice(&crate::protocol::private_set::MAX_SHARDS.to_be_bytes());
        p.push(20);
        p.extend_from_slice(&100u32.to_be_bytes());
        p.extend_from_slice(&[0; TAG_BYTES]);
        p.extend_from_slice(&0u32.to_be_bytes());
        refused(&p);
        // A shard length past the end.
        let good = payload_of(&encode(&sample()));
        let first_len = 1 + 8 + 8 + 4 + 1 + 4 + TAG_BYTES + TAG_BYTES + 8;
        let mut p = good.clone();
        p[first_len..first_len + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        refused(&p);
    }

    /// A payload of a set flag 0, then `epochs` epoch records' worth of header.
    fn claims(count: u32, then: usize) -> Result<PrivateCache, CacheError> {
        let mut p = vec![0];
        p.extend_from_slice(&count.to_be_bytes());
        p.resize(p.len() + then, 0);
        decode(&with_payload(&p))
    }

    #[test]
    fn counts_are_checked_against_the_exact_record_sizes() {
        const CLAIMS_TOO_MUCH: &str = "a count claims more than the file holds";
        // Two epoch records need 24 bytes: 23 are refused by the count, 24 are read.
        assert!(matches!(
            claims(2, 23),
            Err(CacheError::Malformed(CLAIMS_TOO_MUCH))
        ));
        assert!(matches!(
            claims(2, 16),
            Err(CacheError::Malformed(CLAIMS_TOO_MUCH))
        ));
        let out = claims(2, 24).err();
        assert!(
            matches!(out, Some(CacheError::Malformed("key epochs out of order"))),
            "{out:?}"
        );
        // Two number records need 32 bytes after their epoch's header.
        let numbers = |then: usize| {
            let mut p = vec![0];
            p.extend_from_slice(&1u32.to_be_bytes());
            p.extend_from_slice(&4u64.to_be_bytes());
            p.extend_from_slice(&2u32.to_be_bytes());
            p.resize(p.len() + then, 0);
            decode(&with_payload(&p))
        };
        assert!(matches!(
            numbers(31),
            Err(CacheError::Malformed(CLAIMS_TOO_MUCH))
        ));
        assert!(matches!(
            numbers(16),
            Err(CacheError::Malformed(CLAIMS_TOO_MUCH))
        ));
        assert!(matches!(
            numbers(32),
            Err(CacheError::Malformed("not a number"))
        ));
        // Shard records need 28 bytes each before their bodies.
        let shards = |count: u32, then: usize| {
            let mut p = vec![1];
            p.extend_from_slice(&1u64.to_be_bytes());
            p.extend_from_slice(&(1u64 << 40).to_be_bytes());
            p.extend_from_slice(&count.to_be_bytes());
            p.push(20);
            p.extend_from_slice(&100u32.to_be_bytes());
            p.extend_from_slice(&[0; TAG_BYTES]);
            p.resize(p.len() + then, 0);
            decode(&with_payload(&p))
        };
        const TOO_MANY_SHARDS: &str = "more shards than the file holds";
        assert!(matches!(
            shards(3, 83),
            Err(CacheError::Malformed(TOO_MANY_SHARDS))
        ));
        assert!(matches!(
            shards(3, 60),
            Err(CacheError::Malformed(TOO_MANY_SHARDS))
        ));
        let out = shards(3, 84).err();
        assert!(matches!(out, Some(CacheError::Set(_))), "{out:?}");
        assert!(matches!(
            shards(crate::protocol::private_set::MAX_SHARDS, 0),
            Err(CacheError::Malformed(TOO_MANY_SHARDS))
        ));
    }

    #[test]
    fn a_set_of_empty_shards_fills_the_file_exactly_and_is_read() {
        let p = SetParams {
            shards: 20,
            ..params()
        };
        let cache = PrivateCache {
            set: complete(&p, &vec![Vec::new(); 20]),
            hashes: BTreeMap::new(),
        };
        let back = decode(&encode(&cache)).unwrap();
        assert_eq!(back.set.params(), Some(p));
        assert_eq!(back.set.items(), 0);
    }

    #[test]
    fn an_empty_payload_is_malformed() {
        assert!(matches!(
            decode(&with_payload(&[])),
            Err(CacheError::Malformed("a record runs past the end"))
        ));
    }

    #[test]
    fn files_over_the_limit_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        write_cache(&path, &sample()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(read_cache_within(&path, size).unwrap().is_some());
        assert!(matches!(
            read_cache_within(&path, size - 1),
            Err(CacheError::TooLarge)
        ));
        // Not found is no cache; any other failure to open is an error.
        assert!(read_cache(&dir.path().join("absent")).unwrap().is_none());
        let err = read_cache(&path.join("below-a-file")).err();
        assert!(matches!(err, Some(CacheError::Io { .. })), "{err:?}");
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("cache")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/cache")), Path::new("a"));
        assert_eq!(parent_dir(Path::new("/cache")), Path::new("/"));
    }

    #[test]
    fn content_breaking_the_format_is_refused_even_with_a_good_checksum() {
        let good = payload_of(&encode(&sample()));
        let flag = |v: u8| {
            let mut p = good.clone();
            p[0] = v;
            decode(&with_payload(&p))
        };
        assert!(matches!(flag(2), Err(CacheError::Malformed(_))));
        // A set flag of 0 before a set's bytes: they read as epochs and do not parse.
        assert!(flag(0).is_err());
        let batch_at = 1 + 8 + 8 + 4 + 1;
        for batch in [0u32, MAX_BATCH as u32 + 1] {
            let mut p = good.clone();
            p[batch_at..batch_at + 4].copy_from_slice(&batch.to_be_bytes());
            assert!(matches!(
                decode(&with_payload(&p)),
                Err(CacheError::Malformed("batch limit"))
            ));
        }
        let mut p = good.clone();
        p[batch_at..batch_at + 4].copy_from_slice(&(MAX_BATCH as u32).to_be_bytes());
        assert_eq!(
            decode(&with_payload(&p)).unwrap().set.max_batch(),
            MAX_BATCH
        );
        // A wrong set version, a shard's ETag, parameters out of range.
        let version_at = batch_at + 4;
        let mut p = good.clone();
        p[version_at] ^= 1;
        assert!(matches!(
            decode(&with_payload(&p)),
            Err(CacheError::Set(SetError::EtagMismatch))
        ));
        let mut p = good.clone();
        p[version_at + TAG_BYTES] ^= 1;
        assert!(matches!(
            decode(&with_payload(&p)),
            Err(CacheError::Set(SetError::EtagMismatch))
        ));
        let mut p = good.clone();
        p[1 + 8 + 8 + 4] = 0; // golomb_p
        assert!(matches!(
            decode(&with_payload(&p)),
            Err(CacheError::Set(SetError::Params))
        ));
        // Trailing bytes.
        let mut p = good.clone();
        p.push(0);
        assert!(matches!(
            decode(&with_payload(&p)),
            Err(CacheError::Malformed(_))
        ));
    }

    #[test]
    fn numbers_and_epochs_must_be_valid_and_in_order() {
        let record = |epochs: &[(u64, &[(u64, u64)])]| {
            let mut p = vec![0];
            p.extend_from_slice(&(epochs.len() as u32).to_be_bytes());
            for (epoch, numbers) in epochs {
                p.extend_from_slice(&epoch.to_be_bytes());
                p.extend_from_slice(&(numbers.len() as u32).to_be_bytes());
                for (n, h) in *numbers {
                    p.extend_from_slice(&n.to_be_bytes());
                    p.extend_from_slice(&h.to_be_bytes());
                }
            }
            decode(&with_payload(&p))
        };
        let (a, b) = (14_155_550_100u64, 14_155_550_101u64);
        assert!(record(&[(1, &[(a, 1), (b, 2)]), (2, &[])]).is_ok());
        for bad in [
            record(&[(1, &[(b, 1), (a, 2)])]),
            record(&[(1, &[(a, 1), (a, 2)])]),
            record(&[(2, &[]), (1, &[])]),
            record(&[(1, &[]), (1, &[])]),
            record(&[(1, &[(0, 1)])]),
        ] {
            assert!(
                matches!(bad, Err(CacheError::Malformed(_))),
                "{:?}",
                bad.err()
            );
        }
    }

    #[test]
    fn files_are_written_whole_and_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        assert!(read_cache(&path).unwrap().is_none());
        std::fs::write(dir.path().join("cache.tmp"), b"leftover").unwrap();
        let cache = sample();
        write_cache(&path, &cache).unwrap();
        assert!(!dir.path().join("cache.tmp").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(same(&cache, &read_cache(&path).unwrap().unwrap()));
        // Overwritten whole.
        write_cache(&path, &PrivateCache::default()).unwrap();
        assert!(read_cache(&path).unwrap().unwrap().hashes.is_empty());
        // Damage is refused with its reason.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_cache(&path), Err(CacheError::Length)));
        // A directory in the way is an I/O error naming the path.
        let err = write_cache(dir.path(), &cache).unwrap_err();
        assert!(matches!(err, CacheError::Io { .. }), "{err}");
    }
}
