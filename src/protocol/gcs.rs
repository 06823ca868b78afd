//! Golomb-coded sets: the private mode's shards of short hashes, in exactly BIP-158's byte
//! layout, so the format has a published specification and published test vectors
//! (tests/bip158_vectors.rs replays them).
//!
//! # Layout
//!
//! ```text
//! CompactSize(N)   the number of values, Bitcoin's varint in its shortest form:
//!                  N < 0xfd: one byte; else 0xfd + u16 LE, 0xfe + u32 LE, 0xff + u64 LE
//! N codes          the Golomb-Rice code (parameter P) of each delta between successive
//!                  ascending values, the first from 0: q = delta >> P one-bits, a zero-bit,
//!                  then the low P bits of delta, most significant first
//! padding          zero bits up to the next byte boundary (fewer than 8); then nothing
//! ```
//!
//! Bits fill each byte from its most significant bit. The values are a multiset: a value that
//! occurs twice is a delta of 0 (two registered numbers may share a short hash, and removing one
//! must leave the other). P is not in the bytes: both sides know it from the shard's context.
//!
//! # One multiset, one encoding
//!
//! The decoder accepts only the canonical form: shortest CompactSize, zero padding, no byte after
//! the padding. Anything else is refused rather than read leniently, because a shard's ETag is a
//! hash of its bytes: two encodings of one set would be two versions of one shard.
//!
//! # Hostile input
//!
//! Clients decode shards from the network and the server decodes its own delta code; both pass
//! [`Limits`], and every count is checked before it is trusted: N against `max_items` and
//! against what the remaining bits could hold (every code takes at least P + 1 bits) before
//! anything is allocated; each unary run against the longest a value below `limit` needs, so a
//! run of a million one-bits costs one refusal, not a million steps; each value against
//! `limit`. Arithmetic is checked; nothing here panics on any input.
//!
//! # Speed
//!
//! The reader keeps a 64-bit window over the bit stream, refilled 8 bytes at a time, and reads a
//! whole code (unary run and remainder) from it at once when it fits, which it does unless the
//! run is long; [`MAX_P`] is what keeps a remainder readable from one refilled window.

use std::sync::Arc;

/// The largest Golomb-Rice parameter accepted. After a refill the reader's window holds at least
/// 56 unread bits (it loads whole bytes and keeps at most 63), so a remainder of up to 56 bits
/// is always read from one window. A mean gap of 2^56 between 64-bit values would leave room for
/// only 256 of them, far below any shard worth coding, so nothing useful is lost.
pub const MAX_P: u8 = 56;

/// The smallest Golomb-Rice parameter accepted: with P = 0 a code is unary alone, and a delta
/// costs as many bits as its value, which no shard wants; BIP-158's rule never picks it.
pub const MIN_P: u8 = 1;

/// The mean gap divided by 2^P that minimises a Golomb-coded set's size for a given false
/// positive rate: BIP-158's `M = 1.497137 · 2^P`, from Pieter Wuille's analysis
/// (<https://gist.github.com/sipa/576d5f09c3b86c3b1b75598d799fc845>).
pub const OPTIMAL_GAP_PER_2P: f64 = 1.497137;

/// Why a set could not be encoded or decoded. Messages are fixed text and our own limits; none
/// quotes a byte or a value of the input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GcsError {
    /// P outside `MIN_P..=MAX_P`.
    #[error("the Golomb-Rice parameter P must be in {MIN_P}..={MAX_P}")]
    BadParameter,
    /// The bytes end inside the item count or inside a code.
    #[error("the set ends before its last value")]
    Truncated,
    /// The item count is not in its shortest CompactSize form.
    #[error("the item count is not in its shortest CompactSize form")]
    NonCanonicalCount,
    /// More items than the decoder was allowed.
    #[error("the set holds more than {max} values")]
    TooManyItems {
        /// The caller's `max_items`.
        max: u64,
    },
    /// More items than the remaining bytes could hold at P + 1 bits each.
    #[error("the item count is more than the remaining bytes can hold")]
    CountExceedsData,
    /// A value at or above the caller's limit (or past `u64::MAX`).
    #[error("a value is not below the limit {limit}")]
    ValueOutOfRange {
        /// The caller's `limit`.
        limit: u64,
    },
    /// A unary run longer than any value below the limit needs.
    #[error("a Golomb-Rice quotient is longer than any value below the limit needs")]
    UnaryRunTooLong,
    /// Padding bits after the last code that are not zero.
    #[error("the padding after the last value is not zero")]
    NonZeroPadding,
    /// Bytes after the last code's padding.
    #[error("bytes follow the last value")]
    TrailingBytes,
    /// `encode` was given values out of order.
    #[error("value {index} is less than the one before it; values must be ascending")]
    Unsorted {
        /// The position of the first value smaller than its predecessor.
        index: usize,
    },
    /// `encode` would produce more bytes than can be allocated (P far too small for the gaps).
    #[error("the encoded set would be too large; choose a larger P")]
    TooLarge,
}

/// Bounds a decoder must be given, so that no count in the input is trusted on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most values the set may hold.
    pub max_items: u64,
    /// Every value must be below this.
    pub limit: u64,
}

fn check_p(p: u8) -> Result<u32, GcsError> {
    if (MIN_P..=MAX_P).contains(&p) {
        Ok(u32::from(p))
    } else {
        Err(GcsError::BadParameter)
    }
}

/// BIP-158's rule for choosing P: for a mean gap μ between sorted values,
/// `P = round(log2(μ / 1.497137))`, clamped to `MIN_P..=MAX_P` (a gap that is zero, negative or
/// not a number gives `MIN_P`). With values hashed uniformly into `[0, N · M)` the mean gap is
/// M, so M = 784931 gives BIP-158's P = 19.
pub fn golomb_p_for(mean_gap: f64) -> u8 {
    let p = (mean_gap / OPTIMAL_GAP_PER_2P).log2().round();
    if p >= f64::from(MAX_P) {
        MAX_P
    } else if p >= f64::from(MIN_P) {
        // In range and integral, so the conversion is exact.
        p as u8
    } else {
        // Below 1, −∞ (a zero gap) or NaN (a negative or NaN gap).
        MIN_P
    }
}

// ---------------------------------------------------------------------------------------------
// CompactSize

fn compact_size_len(n: u64) -> usize {
    match n {
        0..=0xfc => 1,
        0xfd..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn put_compact_size(out: &mut Vec<u8>, n: u64) {
    // Each arm's conversion is lossless: the match bounds n.
    match n {
        0..=0xfc => out.push(n as u8),
        0xfd..=0xffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xfe);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(0xff);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Reads a CompactSize, refusing any but the shortest form. Returns it and the bytes after it.
fn read_compact_size(bytes: &[u8]) -> Result<(u64, &[u8]), GcsError> {
    let (&first, rest) = bytes.split_first().ok_or(GcsError::Truncated)?;
    let (n, rest, smallest) = match first {
        0xfd => {
            let (b, rest) = rest.split_first_chunk::<2>().ok_or(GcsError::Truncated)?;
            (u64::from(u16::from_le_bytes(*b)), rest, 0xfd)
        }
        0xfe => {
            let (b, rest) = rest.split_first_chunk::<4>().ok_or(GcsError::Truncated)?;
            (u64::from(u32::from_le_bytes(*b)), rest, 0x1_0000)
        }
        0xff => {
            let (b, rest) = rest.split_first_chunk::<8>().ok_or(GcsError::Truncated)?;
            (u64::from_le_bytes(*b), rest, 0x1_0000_0000)
        }
        _ => return Ok((u64::from(first), rest)),
    };
    if n < smallest {
        return Err(GcsError::NonCanonicalCount);
    }
    Ok((n, rest))
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends bits, most significant first, to a byte vector through a 64-bit accumulator.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Pending bits, left-aligned: the top `used` bits are written, the rest zero.
    acc: u64,
    used: u32,
}

impl BitWriter<'_> {
    /// Writes the low `n` bits of `value` (1 ≤ n ≤ 64; the bits above them must be zero).
    #[inline]
    fn put(&mut self, value: u64, n: u32) {
        let free = 64 - self.used;
        if n < free {
            self.acc |= value << (free - n);
            self.used += n;
        } else {
            let spill = n - free;
            self.acc |= value >> spill;
            self.out.extend_from_slice(&self.acc.to_be_bytes());
            self.used = spill;
            self.acc = value.checked_shl(64 - spill).unwrap_or(0);
        }
    }

    /// Writes the pending bits, zero-padded to a whole byte.
    fn finish(self) {
        let bytes = self.used.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_be_bytes()[..bytes]);
    }
}

/// Encodes ascending values (duplicates allowed) as a Golomb-coded set with parameter `p`.
///
/// The values must already be sorted: the shard builder sorts once for all of its uses, and a
/// set that silently sorted here would hide a caller whose order is wrong. Unsorted input is an
/// error ([`GcsError::Unsorted`]), never a panic. The output takes about `N · (P + 1)` bits plus
/// the sum of the quotients; if P is far too small for the gaps, so that the output could not be
/// allocated, the answer is [`GcsError::TooLarge`] (choose P with [`golomb_p_for`]).
pub fn encode(sorted: &[u64], p: u8) -> Result<Vec<u8>, GcsError> {
    let p = check_p(p)?;
    // First pass: order, and the exact size, so the output is allocated once (or refused).
    let mut bits: u64 = 0;
    let mut last = 0u64;
    for (index, &value) in sorted.iter().enumerate() {
        let delta = value
            .checked_sub(last)
            .ok_or(GcsError::Unsorted { index })?;
        // (delta >> p) + 1 + p < 2^63 + 58: no overflow on its own.
        bits = bits
            .checked_add((delta >> p) + 1 + u64::from(p))
            .ok_or(GcsError::TooLarge)?;
        last = value;
    }
    let n = u64::try_from(sorted.len()).map_err(|_| GcsError::TooLarge)?;
    let total = usize::try_from(bits.div_ceil(8))
        .ok()
        .and_then(|body| body.checked_add(compact_size_len(n)))
        .ok_or(GcsError::TooLarge)?;
    let mut out = Vec::new();
    out.try_reserve_exact(total)
        .map_err(|_| GcsError::TooLarge)?;
    put_compact_size(&mut out, n);

    let mut writer = BitWriter {
        out: &mut out,
        acc: 0,
        used: 0,
    };
    let mask = (1u64 << p) - 1;
    let mut last = 0u64;
    for &value in sorted {
        // Sorted: checked in the first pass.
        let delta = value.wrapping_sub(last);
        last = value;
        let mut q = delta >> p;
        let r = delta & mask;
        if q + 1 + u64::from(p) <= 64 {
            // The whole code in one write: q ones, a zero, the remainder.
            let unary = ((1u64 << q) - 1) << 1;
            writer.put((unary << p) | r, q as u32 + 1 + p);
        } else {
            while q >= 64 {
                writer.put(u64::MAX, 64);
                q -= 64;
            }
            // q < 64 here: q ones and the zero in one write of q + 1 ≤ 64 bits.
            writer.put(((1u64 << q) - 1) << 1, q as u32 + 1);
            writer.put(r, p);
        }
    }
    writer.finish();
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads bits, most significant first, through a 64-bit window.
#[derive(Clone, Debug)]
struct BitReader<'a> {
    bytes: &'a [u8],
    /// The index of the first byte not yet counted in `avail`.
    next: usize,
    /// The next bits of the stream, left-aligned. The top `avail` are loaded; below them are
    /// zeros or the stream's own following bits (a refill may load part of a byte it does not
    /// count yet; the next refill ORs the same bits in again).
    window: u64,
    /// Loaded bits, at most 63, so every shift by a count of loaded bits is below 64.
    avail: u32,
}

impl<'a> BitReader<'a> {
    /// A reader at bit `bit` of `bytes` (at the end if `bit` is past it).
    fn at(bytes: &'a [u8], bit: u64) -> Self {
        let byte = usize::try_from(bit / 8)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let mut reader = BitReader {
            bytes,
            next: byte,
            window: 0,
            avail: 0,
        };
        reader.refill();
        let skip = (bit % 8) as u32;
        if skip <= reader.avail {
            reader.consume(skip);
        }
        reader
    }

    /// Loads whole bytes until at least 56 bits are loaded or the bytes run out.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(chunk) = self
            .bytes
            .get(self.next..)
            .and_then(<[u8]>::first_chunk::<8>)
        {
            // avail ≤ 63: the shift is in range. Count only the bytes that fit whole.
            self.window |= u64::from_be_bytes(*chunk) >> self.avail;
            let take = (63 - self.avail) / 8;
            self.next += take as usize;
            self.avail += take * 8;
        } else {
            while self.avail <= 55 {
                let Some(&byte) = self.bytes.get(self.next) else {
                    break;
                };
                self.window |= u64::from(byte) << (56 - self.avail);
                self.next += 1;
                self.avail += 8;
            }
        }
    }

    /// Drops `n` loaded bits (n ≤ avail ≤ 63).
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.window <<= n;
        self.avail -= n;
    }

    /// How many bits have been read.
    fn position(&self) -> u64 {
        (self.next as u64).saturating_mul(8) - u64::from(self.avail)
    }

    /// Reads one Golomb-Rice code, refusing a unary run longer than `max_run`.
    #[inline(always)]
    fn read_delta(&mut self, p: u32, max_run: u64) -> Result<u64, GcsError> {
        // Two or three codes fit in a refilled window: refill only when this one may not.
        if let Some(delta) = self.read_loaded(p, max_run) {
            return delta;
        }
        self.refill();
        if let Some(delta) = self.read_loaded(p, max_run) {
            return delta;
        }
        self.read_delta_slowly(p, max_run)
    }

    /// Reads one code if it is loaded whole (the common case).
    #[inline(always)]
    fn read_loaded(&mut self, p: u32, max_run: u64) -> Option<Result<u64, GcsError>> {
        let ones = self.window.leading_ones();
        if ones + 1 + p > self.avail {
            return None;
        }
        // ones ≤ 62 − p here, so q << p < 2^62 and every shift is below 64.
        let q = u64::from(ones);
        if q > max_run {
            return Some(Err(GcsError::UnaryRunTooLong));
        }
        let r = (self.window << (ones + 1)) >> (64 - p);
        self.consume(ones + 1 + p);
        Some(Ok((q << p) | r))
    }

    /// A long unary run, or a code across the end of the loaded window.
    #[cold]
    fn read_delta_slowly(&mut self, p: u32, max_run: u64) -> Result<u64, GcsError> {
        let mut q: u64 = 0;
        loop {
            self.refill();
            let ones = self.window.leading_ones();
            if ones < self.avail {
                q = q.saturating_add(u64::from(ones));
                if q > max_run {
                    return Err(GcsError::UnaryRunTooLong);
                }
                self.consume(ones + 1);
                break;
            }
            // Every loaded bit is a one (or nothing is loaded).
            if self.avail == 0 {
                return Err(GcsError::Truncated);
            }
            q = q.saturating_add(u64::from(self.avail));
            if q > max_run {
                return Err(GcsError::UnaryRunTooLong);
            }
            self.consume(self.avail);
        }
        if self.avail < p {
            self.refill();
            if self.avail < p {
                return Err(GcsError::Truncated);
            }
        }
        let r = self.window >> (64 - p);
        self.consume(p);
        if q > u64::MAX >> p {
            // q << p would not fit in 64 bits, so neither does the value.
            return Err(GcsError::ValueOutOfRange { limit: u64::MAX });
        }
        Ok((q << p) | r)
    }

    /// After the last code: fewer than 8 bits left, all zero.
    fn check_end(&self) -> Result<(), GcsError> {
        let total = (self.bytes.len() as u64).saturating_mul(8);
        let left = total - self.position();
        if left >= 8 {
            return Err(GcsError::TrailingBytes);
        }
        // The low `left` bits of the last byte (none if `left` is 0).
        let last = self.bytes.last().copied().unwrap_or(0);
        if last & ((1u8 << left) - 1) != 0 {
            return Err(GcsError::NonZeroPadding);
        }
        Ok(())
    }
}

/// The longest unary run a value below `limit` may need is `(limit - 1) >> p`; one more is
/// allowed so that the refusal names the value, and anything longer is refused as it is read.
fn max_run(limit: u64, p: u32) -> u64 {
    (limit >> p) + 1
}

/// A streaming decoder: yields the set's values in order, then, if the bytes after the last
/// code are not canonical, one error; after any error it yields nothing more.
///
/// For clients that test membership without holding the shard's values: a caller that stops
/// early has not checked the end (padding, trailing bytes); [`decode`] and [`ShardIndex::new`]
/// read to the end.
#[derive(Clone)]
pub struct Values<'a> {
    reader: BitReader<'a>,
    remaining: u64,
    last: u64,
    p: u32,
    limit: u64,
    max_run: u64,
    finished: bool,
}

/// Starts decoding `bytes`: checks P, reads the count and checks it against `limits` and
/// against the bytes that follow, all before any value is read.
pub fn values(bytes: &[u8], p: u8, limits: Limits) -> Result<Values<'_>, GcsError> {
    let p = check_p(p)?;
    let (n, data) = read_compact_size(bytes)?;
    if n > limits.max_items {
        return Err(GcsError::TooManyItems {
            max: limits.max_items,
        });
    }
    let bits = (data.len() as u64).saturating_mul(8);
    if n.checked_mul(u64::from(p) + 1)
        .is_none_or(|least| least > bits)
    {
        return Err(GcsError::CountExceedsData);
    }
    Ok(Values {
        reader: BitReader::at(data, 0),
        remaining: n,
        last: 0,
        p,
        limit: limits.limit,
        max_run: max_run(limits.limit, p),
        finished: false,
    })
}

/// Counts and position only: the bytes can be megabytes.
impl std::fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values")
            .field("remaining", &self.remaining)
            .field("bit", &self.reader.position())
            .field("p", &self.p)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Values<'_> {
    /// How many values are still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    #[inline(always)]
    fn next_value(&mut self) -> Result<u64, GcsError> {
        let delta = self.reader.read_delta(self.p, self.max_run)?;
        let value = self
            .last
            .checked_add(delta)
            .filter(|&v| v < self.limit)
            .ok_or(GcsError::ValueOutOfRange { limit: self.limit })?;
        self.last = value;
        self.remaining -= 1;
        Ok(value)
    }

    fn fail(&mut self, error: GcsError) -> GcsError {
        self.remaining = 0;
        self.finished = true;
        error
    }
}

impl Iterator for Values<'_> {
    type Item = Result<u64, GcsError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.finished {
                return None;
            }
            self.finished = true;
            return self.reader.check_end().err().map(Err);
        }
        Some(self.next_value().map_err(|e| self.fail(e)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // At most the values and one error.
        let most = usize::try_from(self.remaining)
            .ok()
            .and_then(|n| n.checked_add(1));
        (0, most)
    }
}

impl std::iter::FusedIterator for Values<'_> {}

/// Decodes a whole shard, checking every bound and requiring the canonical form (shortest
/// CompactSize, zero padding, no trailing bytes), so that one multiset has exactly one encoding:
/// a shard's ETag is a hash of its bytes.
pub fn decode(bytes: &[u8], p: u8, limits: Limits) -> Result<Vec<u64>, GcsError> {
    let mut values = values(bytes, p, limits)?;
    // Bounded: the count was checked against max_items and against the bytes.
    let mut out = Vec::with_capacity(usize::try_from(values.remaining).unwrap_or(0));
    while values.remaining > 0 {
        out.push(values.next_value()?);
    }
    values.reader.check_end()?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Membership

/// Items between two index marks: `contains` decodes at most this many codes. A mark is 16 bytes;
/// 128 codes of about P + 2 bits each at P = 19 are about 340 bytes, so the index is about 5 % of
/// the encoded shard. Measured in release (1 M values at P = 19, a throwaway program timing thread
/// CPU): `contains` took about 0.5 µs at 64 (9.5 %), 0.8 µs at 128 (4.75 %), 1.2 µs at 256
/// (2.4 %); 128 halves 256's time for 2.4 % more memory.
pub const INDEX_STRIDE: u64 = 128;

/// A mark every `INDEX_STRIDE` items: the item's value and where the next code starts.
#[derive(Clone, Copy, Debug)]
struct Mark {
    value: u64,
    next_bit: u64,
}

/// A membership index over one encoded shard, for a client: built in one pass that also checks
/// the whole shard (as [`decode`] does), it keeps the value and bit offset of every
/// [`INDEX_STRIDE`]-th item, so `contains` decodes at most that many codes and memory stays a
/// small fraction of the encoded bytes it shares.
#[derive(Clone)]
pub struct ShardIndex {
    bytes: Arc<[u8]>,
    /// Where the codes start in `bytes` (after the CompactSize).
    data_start: usize,
    p: u32,
    limit: u64,
    len: u64,
    marks: Vec<Mark>,
}

/// Sizes only: the bytes can be megabytes.
impl std::fmt::Debug for ShardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardIndex")
            .field("len", &self.len)
            .field("bytes", &self.bytes.len())
            .field("marks", &self.marks.len())
            .field("p", &self.p)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ShardIndex {
    /// Checks and indexes an encoded shard (the same checks as [`decode`]).
    pub fn new(bytes: impl Into<Arc<[u8]>>, p: u8, limits: Limits) -> Result<Self, GcsError> {
        let bytes: Arc<[u8]> = bytes.into();
        let (len, marks, data_start) = {
            let mut values = values(&bytes, p, limits)?;
            let len = values.remaining;
            let data_start = bytes.len() - values.reader.bytes.len();
            let mut marks =
                Vec::with_capacity(usize::try_from(len / INDEX_STRIDE + 1).unwrap_or(0));
            let mut index = 0u64;
            while values.remaining > 0 {
                let value = values.next_value()?;
                if index.is_multiple_of(INDEX_STRIDE) {
                    marks.push(Mark {
                        value,
                        next_bit: values.reader.position(),
                    });
                }
                index += 1;
            }
            values.reader.check_end()?;
            (len, marks, data_start)
        };
        Ok(ShardIndex {
            bytes,
            data_start,
            p: check_p(p)?,
            limit: limits.limit,
            len,
            marks,
        })
    }

    /// Whether `value` is in the set (at least once).
    pub fn contains(&self, value: u64) -> bool {
        let block = self.marks.partition_point(|mark| mark.value <= value);
        let Some(block) = block.checked_sub(1) else {
            return false;
        };
        let Some(mark) = self.marks.get(block) else {
            return false;
        };
        if mark.value == value {
            return true;
        }
        let data = self.bytes.get(self.data_start..).unwrap_or_default();
        let mut reader = BitReader::at(data, mark.next_bit);
        let first = (block as u64) * INDEX_STRIDE;
        let rest = self
            .len
            .saturating_sub(first)
            .min(INDEX_STRIDE)
            .saturating_sub(1);
        let max_run = max_run(self.limit, self.p);
        let mut current = mark.value;
        for _ in 0..rest {
            // The shard was checked whole in `new`, so these reads do not fail.
            let Ok(delta) = reader.read_delta(self.p, max_run) else {
                return false;
            };
            current = current.saturating_add(delta);
            if current >= value {
                return current == value;
            }
        }
        false
    }

    /// How many values the set holds (duplicates counted).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded shard.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// Heap bytes of the index itself, beyond the shared encoded bytes.
    pub fn index_heap_bytes(&self) -> usize {
        self.marks.capacity() * std::mem::size_of::<Mark>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const ANY: Limits = Limits {
        max_items: u64::MAX,
        limit: u64::MAX,
    };

    /// Packs a string of '0' and '1' (spaces ignored) most significant bit first, zero-padded.
    fn bits(text: &str) -> Vec<u8> {
        let bits: Vec<bool> = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c == '1')
            .collect();
        bits.chunks(8)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u8, |byte, (i, &bit)| byte | (u8::from(bit) << (7 - i)))
            })
            .collect()
    }

    /// A shard: the count as CompactSize, then the bits.
    fn shard(n: u64, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_compact_size(&mut out, n);
        out.extend(bits(text));
        out
    }

    fn limit(limit: u64) -> Limits {
        Limits {
            max_items: u64::MAX,
            limit,
        }
    }

    fn all_decoders(bytes: &[u8], p: u8, limits: Limits) -> Result<Vec<u64>, GcsError> {
        let decoded = decode(bytes, p, limits);
        let streamed = values(bytes, p, limits).and_then(|values| values.collect());
        assert_eq!(decoded, streamed, "decode and values disagree");
        let index = ShardIndex::new(bytes.to_vec(), p, limits);
        assert_eq!(
            decoded.as_ref().map(Vec::len).map_err(Clone::clone),
            index
                .as_ref()
                .map(|i| i.len() as usize)
                .map_err(Clone::clone),
            "decode and ShardIndex disagree"
        );
        decoded
    }

    #[test]
    fn the_empty_set_is_one_zero_byte() {
        for p in MIN_P..=MAX_P {
            assert_eq!(encode(&[], p).unwrap(), [0x00]);
            assert_eq!(
                all_decoders(&[0x00], p, limit(0)).unwrap(),
                Vec::<u64>::new()
            );
        }
        let index = ShardIndex::new(vec![0x00], 19, ANY).unwrap();
        assert!(index.is_empty());
        assert_eq!(index.len(), 0);
        assert!(!index.contains(0));
    }

    #[test]
    fn codes_are_bip158s_table_for_p_2() {
        let table = [
            "0 00", "0 01", "0 10", "0 11", "10 00", "10 01", "10 10", "10 11", "110 00", "110 01",
        ];
        for (value, code) in table.iter().enumerate() {
            let bytes = encode(&[value as u64], 2).unwrap();
            assert_eq!(bytes, shard(1, code), "{value}");
            assert_eq!(all_decoders(&bytes, 2, ANY).unwrap(), [value as u64]);
        }
    }

    #[test]
    fn duplicates_are_delta_zero_and_survive() {
        // Deltas 3, 0, 9: "0 11", "0 00", "110 01".
        let bytes = encode(&[3, 3, 12], 2).unwrap();
        assert_eq!(bytes, shard(3, "011 000 11001"));
        assert_eq!(all_decoders(&bytes, 2, ANY).unwrap(), [3, 3, 12]);
        let index = ShardIndex::new(bytes, 2, ANY).unwrap();
        assert_eq!(index.len(), 3);
        assert!(index.contains(3) && index.contains(12) && !index.contains(4));
    }

    #[test]
    fn long_quotients_cross_words() {
        // Quotients of 0, 63, 64, 200 and 1000 bits, at the smallest and largest P.
        for p in [MIN_P, 7, MAX_P] {
            let mut values = Vec::new();
            let mut last = 0u64;
            for q in [0u64, 63, 64, 130, 200, 1000] {
                if q > u64::MAX >> p {
                    continue;
                }
                if let Some(v) = last.checked_add((q << p) | 1).filter(|&v| v < u64::MAX) {
                    last = v;
                    values.push(v);
                }
            }
            let bytes = encode(&values, p).unwrap();
            assert_eq!(all_decoders(&bytes, p, ANY).unwrap(), values, "p = {p}");
        }
    }

    #[test]
    fn p_outside_its_range_is_refused_everywhere() {
        for p in [0, MAX_P + 1, u8::MAX] {
            assert_eq!(encode(&[1], p), Err(GcsError::BadParameter));
            assert_eq!(decode(&[0x00], p, ANY), Err(GcsError::BadParameter));
            assert_eq!(values(&[0x00], p, ANY).err(), Some(GcsError::BadParameter));
            assert_eq!(
                ShardIndex::new(vec![0x00], p, ANY).err(),
                Some(GcsError::BadParameter)
            );
        }
        for (p, set) in [
            (MIN_P, [0, 1, 2, 1000]),
            (MAX_P, [0, 1, 1 << MAX_P, u64::MAX - 1]),
        ] {
            let bytes = encode(&set, p).unwrap();
            assert_eq!(all_decoders(&bytes, p, ANY).unwrap(), set);
        }
    }

    #[test]
    fn a_count_must_be_in_its_shortest_form() {
        let refused: [&[u8]; 6] = [
            &[0xfd, 0xfc, 0x00],
            &[0xfd, 0x00, 0x00],
            &[0xfe, 0xff, 0xff, 0x00, 0x00],
            &[0xfe, 0x00, 0x00, 0x00, 0x00],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00],
            &[0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
        ];
        for bytes in refused {
            assert_eq!(
                all_decoders(bytes, 1, ANY),
                Err(GcsError::NonCanonicalCount),
                "{bytes:02x?}"
            );
        }
        // The smallest count of each form is read (and then held to max_items).
        let small = Limits {
            max_items: 3,
            limit: u64::MAX,
        };
        let smallest: [&[u8]; 3] = [
            &[0xfd, 0xfd, 0x00],
            &[0xfe, 0x00, 0x00, 0x01, 0x00],
            &[0xff, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00],
        ];
        for bytes in smallest {
            assert_eq!(
                all_decoders(bytes, 1, small),
                Err(GcsError::TooManyItems { max: 3 })
            );
        }
        // And encode writes each form at its boundaries.
        for (n, header) in [
            (0xfc, &[0xfc][..]),
            (0xfd, &[0xfd, 0xfd, 0x00][..]),
            (0xffff, &[0xfd, 0xff, 0xff][..]),
            (0x1_0000, &[0xfe, 0x00, 0x00, 0x01, 0x00][..]),
        ] {
            let set = vec![7u64; n];
            let bytes = encode(&set, 3).unwrap();
            assert_eq!(&bytes[..header.len()], header, "{n}");
            assert_eq!(bytes.len(), header.len() + (4 + 4 * (n - 1)).div_ceil(8));
            assert_eq!(all_decoders(&bytes, 3, ANY).unwrap(), set);
        }
        let mut big = Vec::new();
        put_compact_size(&mut big, 0x1_0000_0000);
        assert_eq!(big, [0xff, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(compact_size_len(0xffff_ffff), 5);
        assert_eq!(compact_size_len(0x1_0000_0000), 9);
        assert_eq!(
            read_compact_size(&[0xfe, 0xff, 0xff, 0xff, 0xff]),
            Ok((0xffff_ffff, &[][..]))
        );
    }

    #[test]
    fn truncation_is_refused() {
        let cut: [&[u8]; 5] = [
            &[],
            &[0xfd, 0x00],
            &[0xfe, 0x00, 0x00, 0x01],
            &[0xff, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
            &[0xfd],
        ];
        for bytes in cut {
            assert_eq!(
                all_decoders(bytes, 1, ANY),
                Err(GcsError::Truncated),
                "{bytes:02x?}"
            );
        }
        // A unary run that runs off the end.
        assert_eq!(
            all_decoders(&shard(1, "11111111"), 2, ANY),
            Err(GcsError::Truncated)
        );
        // A remainder cut short: 0 (code 0 000), then 3 ones, a zero, and no remainder.
        assert_eq!(
            all_decoders(&shard(2, "0000 1110"), 3, ANY),
            Err(GcsError::Truncated)
        );
        // Cut after many whole words, in the slow path's refill.
        let set: Vec<u64> = (0..100).map(|i| i * 1000).collect();
        let bytes = encode(&set, 4).unwrap();
        for len in 1..bytes.len() {
            assert!(all_decoders(&bytes[..len], 4, ANY).is_err(), "{len}");
        }
    }

    #[test]
    fn counts_are_bounded_before_values_are_read() {
        let set = [1, 2, 3, 4, 5];
        let bytes = encode(&set, 5).unwrap();
        let at = |max_items| Limits {
            max_items,
            limit: u64::MAX,
        };
        assert_eq!(all_decoders(&bytes, 5, at(5)).unwrap(), set);
        assert_eq!(
            all_decoders(&bytes, 5, at(4)),
            Err(GcsError::TooManyItems { max: 4 })
        );
        // Each code takes at least P + 1 bits: one byte holds one code at P = 7, not two.
        assert_eq!(all_decoders(&[0x01, 0x05], 7, ANY).unwrap(), [5]);
        assert_eq!(
            all_decoders(&[0x02, 0x05], 7, ANY),
            Err(GcsError::CountExceedsData)
        );
        assert_eq!(all_decoders(&[0x02, 0x05, 0x00], 7, ANY).unwrap(), [5, 5]);
        assert_eq!(all_decoders(&[0x02, 0x00, 0x00], 7, ANY).unwrap(), [0, 0]);
        // Eight codes of at least 8 bits in 7 bytes: too few, though 8 × P bits would fit.
        let mut eight = vec![0x08];
        eight.extend([0x00; 7]);
        assert_eq!(
            all_decoders(&eight, 7, ANY),
            Err(GcsError::CountExceedsData)
        );
        eight.push(0x00);
        assert_eq!(all_decoders(&eight, 7, ANY).unwrap(), [0; 8]);
        // A count whose bits overflow u64 is refused, not wrapped.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
        assert_eq!(all_decoders(&huge, 1, ANY), Err(GcsError::CountExceedsData));
        let half = [0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00];
        assert_eq!(all_decoders(&half, 1, ANY), Err(GcsError::CountExceedsData));
    }

    #[test]
    fn values_are_held_below_the_limit() {
        for p in [1, 19, MAX_P] {
            for top in [1u64, 1 << p, (1 << p) + 1, 1_000_000, u64::MAX - 1] {
                if top >> p > 1 << 16 {
                    continue;
                }
                let bytes = encode(&[0, top], p).unwrap();
                assert_eq!(all_decoders(&bytes, p, limit(top + 1)).unwrap(), [0, top]);
                assert_eq!(
                    all_decoders(&bytes, p, limit(top)),
                    Err(GcsError::ValueOutOfRange { limit: top })
                );
            }
        }
        // A sum past u64::MAX is out of range, not wrapped. The codes of u64::MAX - 1 twice at
        // P = 56: 255 ones, a zero and 56 remainder bits (312 bits), then a zero and 56 zero
        // bits; bit 367 is the second remainder's bit of value 2.
        let mut bytes = encode(&[u64::MAX - 1, u64::MAX - 1], MAX_P).unwrap();
        assert_eq!(bytes.len(), 1 + 369usize.div_ceil(8));
        bytes[1 + 367 / 8] |= 0x80 >> (367 % 8);
        assert_eq!(
            all_decoders(&bytes, MAX_P, ANY),
            Err(GcsError::ValueOutOfRange { limit: u64::MAX })
        );
    }

    #[test]
    fn unary_runs_are_bounded_by_the_limit() {
        // P = 1, limit 16: values up to 15 need runs up to 7; 8 and 9 give values of 16 or
        // more (refused as values); 10 is refused as a run.
        let l = limit(16);
        assert_eq!(max_run(16, 1), 9);
        assert_eq!(all_decoders(&shard(1, "1111111 0 1"), 1, l).unwrap(), [15]);
        for run in [8, 9] {
            let code = format!("{} 0 0", "1".repeat(run));
            assert_eq!(
                all_decoders(&shard(1, &code), 1, l),
                Err(GcsError::ValueOutOfRange { limit: 16 }),
                "{run}"
            );
        }
        for run in [10, 11, 100, 1000] {
            let code = format!("{} 0 0", "1".repeat(run));
            assert_eq!(
                all_decoders(&shard(1, &code), 1, l),
                Err(GcsError::UnaryRunTooLong),
                "{run}"
            );
        }
        // The same inside a long run read in the slow path: limit 2^10 at P = 1 allows 513.
        let l = limit(1 << 10);
        let code = format!("{} 0 1", "1".repeat(511));
        assert_eq!(all_decoders(&shard(1, &code), 1, l).unwrap(), [1023]);
        for run in [514, 600] {
            let code = format!("{} 0 1", "1".repeat(run));
            assert_eq!(
                all_decoders(&shard(1, &code), 1, l),
                Err(GcsError::UnaryRunTooLong),
                "{run}"
            );
        }
        // A run of all the input's bits is refused as soon as it passes the bound, before the
        // end of the input.
        let mut endless = vec![0x01];
        endless.extend(vec![0xff; 1 << 16]);
        assert_eq!(all_decoders(&endless, 1, l), Err(GcsError::UnaryRunTooLong));
        assert_eq!(all_decoders(&endless, 1, ANY), Err(GcsError::Truncated));
        // The bound itself never overflows.
        assert_eq!(max_run(u64::MAX, 1), 1 << 63);
        assert_eq!(max_run(u64::MAX, 56), 256);
        assert_eq!(max_run(0, 56), 1);
    }

    #[test]
    fn run_bounds_hold_at_every_alignment() {
        // P = 1, limit 2^10: runs up to 513 are read (those reaching 1024 are refused as
        // values), longer ones are refused as runs. Codes before the run (an optional 3-bit
        // "10 0", then 2-bit "0 0"s) move it across every bit, byte and window boundary, and put
        // its remainder at the very end of the bytes in some cases.
        let l = limit(1 << 10);
        for lead in [false, true] {
            for prefix in 0..40 {
                for run in 500..=520u64 {
                    for r in 0..2u64 {
                        let code = format!(
                            "{} {} {} 0 {r}",
                            if lead { "100" } else { "" },
                            "00".repeat(prefix),
                            "1".repeat(run as usize)
                        );
                        let base = if lead { 2 } else { 0 };
                        let mut expected = vec![base; usize::from(lead) + prefix];
                        let value = base + (run << 1) + r;
                        expected.push(value);
                        let expected = if run > 513 {
                            Err(GcsError::UnaryRunTooLong)
                        } else if value >= 1 << 10 {
                            Err(GcsError::ValueOutOfRange { limit: 1 << 10 })
                        } else {
                            Ok(expected)
                        };
                        let n = usize::from(lead) + prefix + 1;
                        assert_eq!(
                            all_decoders(&shard(n as u64, &code), 1, l),
                            expected,
                            "lead {lead}, prefix {prefix}, run {run}, r {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_slow_path_refuses_a_value_past_u64_max() {
        let mut reader = BitReader {
            bytes: &[],
            next: 0,
            window: 0,
            avail: 0,
        };
        // Nothing loaded: the run cannot even start.
        assert_eq!(reader.read_delta(1, u64::MAX), Err(GcsError::Truncated));
        // With P = 56, a quotient of 256 does not fit: 256 << 56 = 2^64.
        let mut code = vec![0xffu8; 32];
        code.extend([0x00; 8]);
        let mut reader = BitReader::at(&code, 0);
        assert_eq!(
            reader.read_delta(56, u64::MAX),
            Err(GcsError::ValueOutOfRange { limit: u64::MAX })
        );
        // A run exactly as long as the bound, ending where a loaded window ends, is read: 56
        // ones fill the first window, the zero starts the next.
        let mut code = vec![0xffu8; 7];
        code.extend([0x00; 8]);
        let mut reader = BitReader::at(&code, 0);
        assert_eq!(reader.avail, 56);
        assert_eq!(reader.read_delta(1, 56), Ok(56 << 1));
        let mut reader = BitReader::at(&code, 0);
        assert_eq!(reader.read_delta(1, 55), Err(GcsError::UnaryRunTooLong));
        let mut code = vec![0xffu8; 31];
        code.extend([0xfe, 0, 0, 0, 0, 0, 0, 0x01]);
        let mut reader = BitReader::at(&code, 0);
        assert_eq!(reader.read_delta(56, u64::MAX), Ok((255 << 56) | 1));
    }

    #[test]
    fn the_canonical_form_is_the_only_form() {
        // 5 at P = 2 is "10 01": four bits, then four of padding.
        let bytes = encode(&[5], 2).unwrap();
        assert_eq!(bytes, [0x01, 0b1001_0000]);
        for bit in 0..4 {
            let mut padded = bytes.clone();
            padded[1] |= 1 << bit;
            assert_eq!(all_decoders(&padded, 2, ANY), Err(GcsError::NonZeroPadding));
        }
        for extra in [0x00, 0x01, 0xff] {
            let mut longer = bytes.clone();
            longer.push(extra);
            assert_eq!(all_decoders(&longer, 2, ANY), Err(GcsError::TrailingBytes));
        }
        assert_eq!(
            all_decoders(&[0x00, 0x00], 2, ANY),
            Err(GcsError::TrailingBytes)
        );
        // A code that ends on a byte boundary leaves no padding to check.
        assert_eq!(all_decoders(&[0x01, 0b0001_0000], 7, ANY).unwrap(), [16]);
        assert_eq!(all_decoders(&[0x01, 0b0001_0001], 7, ANY).unwrap(), [17]);
        // One padding bit after a 7-bit code.
        assert_eq!(all_decoders(&[0x01, 0b0000_0010], 6, ANY).unwrap(), [1]);
        assert_eq!(
            all_decoders(&[0x01, 0b0000_0011], 6, ANY),
            Err(GcsError::NonZeroPadding)
        );
    }

    #[test]
    fn encode_refuses_what_it_cannot_encode() {
        assert_eq!(encode(&[1, 2, 1], 3), Err(GcsError::Unsorted { index: 2 }));
        assert_eq!(encode(&[1, 0], 3), Err(GcsError::Unsorted { index: 1 }));
        // 2^62 bits for the run of u64::MAX at P = 1: no such allocation.
        assert_eq!(encode(&[0, u64::MAX], 1), Err(GcsError::TooLarge));
        assert_eq!(
            encode(&[u64::MAX >> 1, u64::MAX, u64::MAX], 1),
            Err(GcsError::TooLarge)
        );
    }

    #[test]
    fn the_stream_yields_values_then_at_most_one_error() {
        let bytes = encode(&[1, 2, 3], 4).unwrap();
        let mut stream = values(&bytes, 4, ANY).unwrap();
        assert_eq!(stream.remaining(), 3);
        assert_eq!(stream.size_hint(), (0, Some(4)));
        assert_eq!(stream.next(), Some(Ok(1)));
        assert_eq!(stream.remaining(), 2);
        assert_eq!((stream.next(), stream.next()), (Some(Ok(2)), Some(Ok(3))));
        assert_eq!((stream.next(), stream.next()), (None, None));

        let mut padded = bytes.clone();
        *padded.last_mut().unwrap() |= 1;
        let got: Vec<_> = values(&padded, 4, ANY).unwrap().collect();
        assert_eq!(got, [Ok(1), Ok(2), Ok(3), Err(GcsError::NonZeroPadding)]);
        let mut stream = values(&padded, 4, ANY).unwrap();
        stream.by_ref().for_each(drop);
        assert_eq!(stream.next(), None);

        let got: Vec<_> = values(&shard(3, "0001 11111111"), 3, limit(10))
            .unwrap()
            .collect();
        assert_eq!(got, [Ok(1), Err(GcsError::UnaryRunTooLong)]);
    }

    #[test]
    fn p_follows_bip158s_rule() {
        assert_eq!(golomb_p_for(784_931.0), 19);
        for p in MIN_P..=MAX_P {
            let gap = OPTIMAL_GAP_PER_2P * f64::from(p).exp2();
            assert_eq!(golomb_p_for(gap), p);
            assert_eq!(golomb_p_for(gap * 1.4), p, "rounds down below 2^0.5");
            if p > MIN_P {
                assert_eq!(golomb_p_for(gap / 1.4), p, "rounds up above 2^-0.5");
            }
        }
        for tiny in [0.0, -1.0, 1.0, 2.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(golomb_p_for(tiny), MIN_P, "{tiny}");
        }
        for huge in [1e20, 1e30, f64::MAX, f64::INFINITY] {
            assert_eq!(golomb_p_for(huge), MAX_P, "{huge}");
        }
    }

    #[test]
    fn error_messages_quote_no_input() {
        let errors = [
            GcsError::BadParameter,
            GcsError::Truncated,
            GcsError::NonCanonicalCount,
            GcsError::TooManyItems { max: 9 },
            GcsError::CountExceedsData,
            GcsError::ValueOutOfRange { limit: 9 },
            GcsError::UnaryRunTooLong,
            GcsError::NonZeroPadding,
            GcsError::TrailingBytes,
            GcsError::Unsorted { index: 9 },
            GcsError::TooLarge,
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.is_empty());
            assert!(
                text.chars()
                    .filter(char::is_ascii_digit)
                    .all(|c| "1569".contains(c))
            );
        }
    }

    fn check_index(set: &[u64], p: u8, probes: &[u64]) {
        let bytes = encode(set, p).unwrap();
        let index = ShardIndex::new(bytes.clone(), p, ANY).unwrap();
        assert_eq!(index.len(), set.len() as u64);
        assert_eq!(index.is_empty(), set.is_empty());
        assert_eq!(&index.bytes()[..], &bytes[..]);
        let model: BTreeSet<u64> = set.iter().copied().collect();
        for &value in set {
            assert!(index.contains(value), "{value} is in the set");
        }
        for &probe in probes {
            assert_eq!(index.contains(probe), model.contains(&probe), "{probe}");
        }
    }

    #[test]
    fn the_index_answers_like_a_set() {
        let stride = INDEX_STRIDE as usize;
        // Values 10, 20, ...; a run of duplicates across the first mark; the last block short.
        let mut set: Vec<u64> = (1..=(3 * stride as u64 + 5)).map(|i| i * 10).collect();
        for _ in 0..5 {
            set.insert(stride - 2, set[stride - 2]);
        }
        let probes: Vec<u64> = (0..=set.len() as u64 * 10 + 20).collect();
        check_index(&set, 3, &probes);
        check_index(&set, 1, &probes);
        // Exactly one block, and one block and one item.
        let one: Vec<u64> = (0..stride as u64).map(|i| i * 3 + 1).collect();
        check_index(&one, 2, &(0..(stride as u64 * 3 + 5)).collect::<Vec<_>>());
        let mut more = one.clone();
        more.push(stride as u64 * 3 + 1);
        check_index(&more, 2, &(0..(stride as u64 * 3 + 5)).collect::<Vec<_>>());
        check_index(
            &[u64::MAX - 1],
            MAX_P,
            &[0, u64::MAX - 2, u64::MAX - 1, u64::MAX],
        );
        // A value equal to a mark found through the mark before it does not stop early.
        let dup = vec![5u64; stride + 1];
        check_index(&dup, 2, &[4, 5, 6]);
    }

    #[test]
    fn the_index_is_a_small_fraction_of_the_shard() {
        let n = 100_000u64;
        let m = 784_931u64;
        let set: Vec<u64> = (0..n).map(|i| i * m + (i * 7919) % m).collect();
        let bytes = encode(&set, 19).unwrap();
        let index = ShardIndex::new(bytes.clone(), 19, ANY).unwrap();
        let fraction = index.index_heap_bytes() as f64 / bytes.len() as f64;
        assert!(fraction < 0.06, "{fraction}");
        assert!(index.index_heap_bytes() >= (n / INDEX_STRIDE) as usize * 16);
        assert!(index.contains(set[12_345]) && !index.contains(set[12_345] + 1));
        // An index refuses what decode refuses.
        let mut bad = bytes;
        bad.push(0);
        assert_eq!(
            ShardIndex::new(bad, 19, ANY).err(),
            Some(GcsError::TrailingBytes)
        );
    }

    #[test]
    fn debug_shows_sizes_not_bytes() {
        let bytes = encode(&[11, 22, 33], 4).unwrap();
        let index = ShardIndex::new(bytes.clone(), 4, ANY).unwrap();
        assert_eq!(
            format!("{index:?}"),
            format!(
                "ShardIndex {{ len: 3, bytes: {}, marks: 1, p: 4, limit: {}, .. }}",
                bytes.len(),
                u64::MAX
            )
        );
        let mut stream = values(&bytes, 4, limit(40)).unwrap();
        stream.next();
        assert_eq!(
            format!("{stream:?}"),
            "Values { remaining: 2, bit: 5, p: 4, limit: 40, .. }"
        );
    }

    #[test]
    fn a_reader_can_start_at_any_bit() {
        let bytes = bits("1011 0011 1100 0101 1111 0000");
        for start in 0..24u64 {
            let mut reader = BitReader::at(&bytes, start);
            assert_eq!(reader.position(), start);
            reader.refill();
            assert_eq!(reader.position(), start);
            let expected =
                u64::from_be_bytes([bytes[0], bytes[1], bytes[2], 0, 0, 0, 0, 0]) << start;
            assert_eq!(reader.window, expected, "{start}");
            assert_eq!(reader.avail, 24 - start as u32);
        }
        assert_eq!(BitReader::at(&bytes, 1000).position(), 24);
    }

    /// Sorted multisets with duplicates and gaps from 0 to a few hundred times 2^P.
    fn multiset() -> impl Strategy<Value = (u8, Vec<u64>)> {
        (MIN_P..=MAX_P).prop_flat_map(|p| {
            let p32 = u32::from(p);
            let gap = prop_oneof![
                2 => Just(0u64),
                4 => 0..(1u64 << p),
                3 => any::<u64>().prop_map(move |g| g >> (64 - p32 - 3)),
                1 => any::<u64>().prop_map(move |g| g >> (64u32.saturating_sub(p32 + 9))),
            ];
            (Just(p), proptest::collection::vec(gap, 0..400)).prop_map(|(p, gaps)| {
                let mut last = 0u64;
                let values = gaps
                    .into_iter()
                    .map_while(|gap| {
                        last = last.checked_add(gap).filter(|&v| v < u64::MAX)?;
                        Some(last)
                    })
                    .collect();
                (p, values)
            })
        })
    }

    proptest! {
        #[test]
        fn multisets_round_trip((p, set) in multiset(), probes in proptest::collection::vec(any::<u64>(), 0..20)) {
            let bytes = encode(&set, p).unwrap();
            let tight = Limits {
                max_items: set.len() as u64,
                limit: set.last().map_or(0, |&v| v + 1),
            };
            prop_assert_eq!(&all_decoders(&bytes, p, tight).unwrap(), &set);
            if let Some(&top) = set.last() {
                prop_assert_eq!(
                    decode(&bytes, p, Limits { limit: top, ..tight }),
                    Err(GcsError::ValueOutOfRange { limit: top })
                );
                prop_assert_eq!(
                    decode(&bytes, p, Limits { max_items: tight.max_items - 1, ..tight }),
                    Err(GcsError::TooManyItems { max: tight.max_items - 1 })
                );
            }
            let index = ShardIndex::new(bytes, p, tight).unwrap();
            let model: BTreeSet<u64> = set.iter().copied().collect();
            for &value in set.iter().step_by(7) {
                prop_assert!(index.contains(value));
                prop_assert_eq!(index.contains(value + 1), model.contains(&(value + 1)));
                prop_assert_eq!(index.contains(value.wrapping_sub(1)), model.contains(&value.wrapping_sub(1)));
            }
            for probe in probes {
                prop_assert_eq!(index.contains(probe), model.contains(&probe));
            }
        }

        #[test]
        fn any_bytes_decode_to_an_error_or_their_one_encoding(
            p in MIN_P..=MAX_P,
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            small_limit in any::<bool>(),
        ) {
            let limits = Limits {
                max_items: 1 << 10,
                limit: if small_limit { 1u64 << (p + 4).min(63) } else { u64::MAX },
            };
            if let Ok(set) = all_decoders(&bytes, p, limits) {
                prop_assert_eq!(encode(&set, p).unwrap(), bytes);
            }
        }

        #[test]
        fn any_change_to_a_shard_changes_what_it_decodes_to(
            (p, set) in multiset(),
            flip in any::<prop::sample::Index>(),
            bit in 0..8u8,
        ) {
            let bytes = encode(&set, p).unwrap();
            let mut changed = bytes.clone();
            let at = flip.index(changed.len());
            changed[at] ^= 1 << bit;
            prop_assert_ne!(decode(&changed, p, ANY), Ok(set));
        }
    }
}
