//! The match index: one epoch's set of fingerprints of all discoverable numbers.
//!
//! Layout: a table of 64-byte buckets, one cache line each, so a lookup costs one cache miss.
//! A fingerprint's 64-bit key picks its bucket from its high bits (`key × buckets >> 64`) and
//! is stored as a 40-bit tag, its low 40 bits: twelve 5-byte slots per line, a count and an
//! overflow flag in byte 60. Buckets are sized for 7.5 keys on average, about 8.6 bytes per
//! user; the ~1 % of keys that find their bucket full go to a much smaller table of the same
//! kind (marked by the flag, so only lookups in overflowed buckets look there), and so on; the
//! last few keys go to a sorted list of full keys. Batched lookups prefetch the bucket of the
//! fingerprint [`PREFETCH_AHEAD`] places ahead, so many misses are in flight at once.
//!
//! False positives: besides two numbers sharing a 64-bit fingerprint (about `n / 2^64` per
//! lookup: 5.4e-12 at 100 M users, 5.4e-11 at 1 B), a fingerprint that is not in the index
//! matches only if a key in its bucket has the same low 40 bits: each key compared matches with
//! probability 2^-40, and a lookup compares on average 7.5 keys (at most 12 per table visited),
//! so about 6.8e-12 per lookup, whatever the number of users (at most 1.1e-11 in a full
//! bucket). Both together stay below 7e-11 per lookup at 1 B users. There are no false
//! negatives: every key is in its bucket, or its bucket is flagged and the key is further on.
//!
//! The index is immutable once built; a rebuild makes a new one that is swapped in whole.

use rayon::prelude::*;

use crate::domain::{E164, Epoch, Fingerprint, Salt};

/// Slots per bucket: 12 × 5 bytes fill 60 of the line's 64 bytes.
const SLOTS: usize = 12;
/// Bytes per stored tag.
const TAG_BYTES: usize = 5;
/// Bits of the key kept in a slot.
const TAG_MASK: u64 = (1 << (8 * TAG_BYTES)) - 1;
/// Byte of the line holding the count (low 4 bits) and the overflow flag.
const META: usize = SLOTS * TAG_BYTES;
/// The bucket's count of used slots.
const COUNT_MASK: u8 = 0x0f;
/// Set when a key of this bucket did not fit and went to the next table.
const OVERFLOW: u8 = 0x80;
/// Average keys per bucket the tables are sized for: 64 / 7.5 ≈ 8.5 bytes per key, and about
/// 4 % of buckets overflow (Poisson tail beyond 12), holding about 1.1 % of the keys.
const LOAD: f64 = 7.5;
/// At most this many tables; the keys left after them are kept whole in a sorted list.
const MAX_TABLES: usize = 6;
/// How far ahead of the fingerprint being checked a batched lookup prefetches.
pub const PREFETCH_AHEAD: usize = 16;
/// Numbers fingerprinted per build step: bounds the temporary key buffer (8 bytes each).
const BUILD_SEGMENT: usize = 1 << 22;

/// One cache line: twelve 40-bit tags and a meta byte.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket([u8; 64]);

/// What a bucket says about a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    Found,
    Absent,
    /// Not here, but the bucket overflowed: ask the next table.
    Overflowed,
}

impl Bucket {
    const EMPTY: Self = Self([0; 64]);

    fn tag(&self, slot: usize) -> u64 {
        let mut word = [0u8; 8];
        // Slot 11 reads into the meta byte and padding; the mask drops them.
        word.copy_from_slice(&self.0[slot * TAG_BYTES..slot * TAG_BYTES + 8]);
        u64::from_le_bytes(word) & TAG_MASK
    }

    /// Whether `tag` is here, and whether the bucket overflowed. Branch-free: half the lookups
    /// hit at random, and a mispredicted branch per lookup would stall the batch loop.
    #[inline(always)]
    fn check(&self, tag: u64) -> (bool, bool) {
        let meta = self.0[META];
        let count = usize::from(meta & COUNT_MASK);
        let mut found = false;
        for slot in 0..SLOTS {
            found |= (slot < count) & (self.tag(slot) == tag);
        }
        (found, meta & OVERFLOW != 0)
    }

    fn probe(&self, tag: u64) -> Probe {
        match self.check(tag) {
            (true, _) => Probe::Found,
            (false, true) => Probe::Overflowed,
            (false, false) => Probe::Absent,
        }
    }

    /// Stores `tag`, or flags the bucket and returns false if it is full.
    fn insert(&mut self, tag: u64) -> bool {
        let count = usize::from(self.0[META] & COUNT_MASK);
        if count == SLOTS {
            self.0[META] |= OVERFLOW;
            return false;
        }
        let at = count * TAG_BYTES;
        self.0[at..at + TAG_BYTES].copy_from_slice(&tag.to_le_bytes()[..TAG_BYTES]);
        self.0[META] += 1;
        true
    }
}

/// One table of buckets. Table `level` picks buckets from `mix(key, level)`, so keys that
/// overflowed from neighbouring buckets spread out again in the next table.
struct Table {
    buckets: Vec<Bucket>,
    level: u32,
}

fn mix(key: u64, level: u32) -> u64 {
    if level == 0 {
        key
    } else {
        // A bijection whose high bits depend on every bit of the key.
        (key ^ u64::from(level)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

impl Table {
    fn with_capacity_for(keys: usize, level: u32) -> Self {
        let count = ((keys as f64 / LOAD).ceil() as usize).max(1);
        let mut buckets = Vec::with_capacity(count);
        // Before the first write, so the kernel can back the table with 2 MiB pages from the
        // start: a random lookup then misses the TLB far less often.
        advise_huge_pages(&mut buckets);
        buckets.resize(count, Bucket::EMPTY);
        Self { buckets, level }
    }

    #[inline(always)]
    fn bucket_of(&self, key: u64) -> usize {
        ((u128::from(mix(key, self.level)) * self.buckets.len() as u128) >> 64) as usize
    }

    fn probe(&self, key: u64) -> Probe {
        self.buckets[self.bucket_of(key)].probe(key & TAG_MASK)
    }

    #[inline(always)]
    fn prefetch(&self, key: u64) {
        prefetch(&self.buckets[self.bucket_of(key)]);
    }

    /// Inserts `keys` in parallel: each worker owns a contiguous range of buckets and takes the
    /// keys that fall in it. Returns the keys that did not fit.
    fn insert_all(&mut self, keys: &[u64]) -> Vec<u64> {
        let total = self.buckets.len();
        let parts = rayon::current_num_threads().clamp(1, 64);
        let per_part = total.div_ceil(parts).max(1);
        let level = self.level;
        self.buckets
            .par_chunks_mut(per_part)
            .enumerate()
            .map(|(part, buckets)| {
                let first = part * per_part;
                let end = first + buckets.len();
                let mut overflow = Vec::new();
                let mut mine = Vec::with_capacity(64);
                for block in keys.chunks(64) {
                    // Prefetch a block's buckets, then fill them: the misses overlap.
                    mine.clear();
                    for &key in block {
                        let b = ((u128::from(mix(key, level)) * total as u128) >> 64) as usize;
                        if (first..end).contains(&b) {
                            prefetch(&buckets[b - first]);
                            mine.push((b - first, key));
                        }
                    }
                    for &(b, key) in &mine {
                        if !buckets[b].insert(key & TAG_MASK) {
                            overflow.push(key);
                        }
                    }
                }
                overflow
            })
            .reduce(Vec::new, |mut a, mut b| {
                a.append(&mut b);
                a
            })
    }
}

/// Asks Linux to back the vector's (still untouched) allocation with transparent huge pages,
/// which matters when THP is in `madvise` mode. Small tables are left alone.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buckets: &mut Vec<Bucket>) {
    const PAGE: usize = 4096;
    let bytes = buckets.capacity() * size_of::<Bucket>();
    if bytes < (8 << 20) {
        return;
    }
    let start = buckets.as_mut_ptr().cast::<u8>();
    let skip = (start as usize).next_multiple_of(PAGE) - start as usize;
    let len = (bytes - skip) / PAGE * PAGE;
    // SAFETY: the range [start + skip, start + skip + len) lies inside this vector's live
    // allocation (skip < PAGE <= bytes), page-aligned as madvise requires. MADV_HUGEPAGE only
    // changes which page size the kernel uses to back the range; it never changes contents.
    // Failure (e.g. THP disabled) leaves ordinary pages, so it is ignored.
    let _ = unsafe {
        rustix::mm::madvise(
            start.wrapping_add(skip).cast(),
            len,
            rustix::mm::Advice::LinuxHugepage,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut Vec<Bucket>) {}

/// Hints the CPU to load `bucket`'s line into cache; does nothing where not supported.
#[inline(always)]
fn prefetch(bucket: &Bucket) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is only a hint: it never faults and changes no state the program
        // can observe, and the pointer comes from a live reference besides. SSE is part of the
        // x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(bucket).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bucket;
}

/// An immutable set of fingerprints for one epoch.
pub struct MatchIndex {
    epoch: Epoch,
    /// Table 0 holds ~99 % of the keys; each further table holds the overflow of the one before.
    tables: Vec<Table>,
    /// Keys that overflowed the last table, whole and sorted (normally empty).
    spill: Vec<u64>,
    len: usize,
}

/// The hashed mode's per-epoch artefact: fingerprints of every discoverable number under the
/// epoch's salt.
impl crate::store::rotation::EpochArtefact for MatchIndex {
    fn build(
        secret: &crate::domain::ServerSecret,
        epoch: Epoch,
        numbers: &crate::store::registry::DiscoverableNumbers,
    ) -> Self {
        Self::build_from_digits(epoch, &secret.salt(epoch), numbers.as_digits())
    }

    fn entries(&self) -> usize {
        self.len()
    }

    fn heap_bytes(&self) -> usize {
        MatchIndex::heap_bytes(self)
    }
}

impl MatchIndex {
    /// Builds the index of `numbers` under `salt`, in parallel across cores.
    pub fn build(epoch: Epoch, salt: &Salt, numbers: &[E164]) -> Self {
        Self::build_with(epoch, salt, numbers, |n| Some(*n))
    }

    /// Builds the index from numbers given as their digits (see [`E164::get`]), as the registry
    /// holds them; values that are not E.164 numbers are skipped.
    pub fn build_from_digits(epoch: Epoch, salt: &Salt, digits: &[u64]) -> Self {
        Self::build_with(epoch, salt, digits, |d| E164::from_u64(*d).ok())
    }

    fn build_with<T: Sync>(
        epoch: Epoch,
        salt: &Salt,
        numbers: &[T],
        number: impl Fn(&T) -> Option<E164> + Sync,
    ) -> Self {
        let mut first = Table::with_capacity_for(numbers.len(), 0);
        let mut overflow = Vec::new();
        let mut len = 0;
        // Fingerprint a segment in parallel, then insert it in parallel: the temporary key
        // buffer stays small however many users there are.
        let mut keys = Vec::with_capacity(numbers.len().min(BUILD_SEGMENT));
        for segment in numbers.chunks(BUILD_SEGMENT) {
            keys.clear();
            keys.par_extend(
                segment
                    .par_iter()
                    .with_min_len(4096)
                    .filter_map(|n| Some(Fingerprint::compute(salt, number(n)?).key())),
            );
            len += keys.len();
            overflow.append(&mut first.insert_all(&keys));
        }
        Self::finish(epoch, first, overflow, len)
    }

    /// Builds the index of raw keys (tests and benchmarks; duplicates are dropped).
    pub fn from_keys(epoch: Epoch, mut keys: Vec<u64>) -> Self {
        keys.par_sort_unstable();
        keys.dedup();
        Self::from_distinct_keys(epoch, &keys)
    }

    /// Builds the index of raw keys the caller knows to be distinct (benchmarks of the insert
    /// step alone; a duplicate would only take a second slot and count twice in `len`).
    pub fn from_distinct_keys(epoch: Epoch, keys: &[u64]) -> Self {
        let mut first = Table::with_capacity_for(keys.len(), 0);
        let overflow = first.insert_all(keys);
        Self::finish(epoch, first, overflow, keys.len())
    }

    fn finish(epoch: Epoch, first: Table, mut overflow: Vec<u64>, len: usize) -> Self {
        let mut tables = vec![first];
        while !overflow.is_empty() && tables.len() < MAX_TABLES {
            let mut next = Table::with_capacity_for(overflow.len(), tables.len() as u32);
            overflow = next.insert_all(&overflow);
            tables.push(next);
        }
        overflow.sort_unstable();
        Self {
            epoch,
            tables,
            spill: overflow,
            len,
        }
    }

    /// The epoch this index answers for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index holds no fingerprints.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of heap the index holds.
    pub fn heap_bytes(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.buckets.capacity() * size_of::<Bucket>())
            .sum::<usize>()
            + self.spill.capacity() * 8
    }

    /// Whether `fingerprint` belongs to a discoverable number (or collides with one; see the
    /// module documentation for the rate).
    pub fn contains(&self, fingerprint: Fingerprint) -> bool {
        self.contains_from(fingerprint.key(), 0)
    }

    fn contains_from(&self, key: u64, first_table: usize) -> bool {
        for table in &self.tables[first_table..] {
            match table.probe(key) {
                Probe::Found => return true,
                Probe::Absent => return false,
                Probe::Overflowed => {}
            }
        }
        self.spill.binary_search(&key).is_ok()
    }

    /// Looks up a batch and sets bit `i` (least significant first in each byte) of `bitmap` iff
    /// `batch[i]` is present. Returns the number of matches. `bitmap` must hold ceil(n/8) bytes.
    pub fn lookup_into_bitmap(&self, batch: &[Fingerprint], bitmap: &mut [u8]) -> usize {
        debug_assert!(bitmap.len() >= batch.len().div_ceil(8));
        let Some(first) = self.tables.first() else {
            return 0;
        };
        for fp in batch.iter().take(PREFETCH_AHEAD) {
            first.prefetch(fp.key());
        }
        let mut matches = 0;
        for (i, fp) in batch.iter().enumerate() {
            if let Some(ahead) = batch.get(i + PREFETCH_AHEAD) {
                first.prefetch(ahead.key());
            }
            let key = fp.key();
            let (mut hit, overflowed) = first.buckets[first.bucket_of(key)].check(key & TAG_MASK);
            // Taken for about 4 % of misses only, so well predicted.
            if overflowed & !hit {
                hit = self.contains_from(key, 1);
            }
            if let Some(byte) = bitmap.get_mut(i / 8) {
                *byte |= u8::from(hit) << (i % 8);
            }
            matches += usize::from(hit);
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::generate;
    use proptest::prelude::*;

    fn check_against_set(index: &MatchIndex, keys: &[u64], probes: &[u64]) {
        let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
        let batch: Vec<Fingerprint> = probes
            .iter()
            .chain(keys.iter())
            .map(|k| Fingerprint::from_bytes(k.to_le_bytes()))
            .collect();
        let mut bitmap = vec![0u8; batch.len().div_ceil(8)];
        let matches = index.lookup_into_bitmap(&batch, &mut bitmap);
        let mut expected = 0;
        for (i, fp) in batch.iter().enumerate() {
            let want = set.contains(&fp.key());
            expected += usize::from(want);
            assert_eq!(bitmap[i / 8] & (1 << (i % 8)) != 0, want, "batch {i}");
            assert_eq!(index.contains(*fp), want, "single {i}");
        }
        assert_eq!(matches, expected);
    }

    #[test]
    fn finds_members_and_only_members() {
        let salt = Salt::from_bytes([9; 32]);
        let numbers = generate::numbers(20_000, 1);
        let (members, others) = numbers.split_at(10_000);
        let index = MatchIndex::build(Epoch(3), &salt, members);
        assert_eq!(index.len(), 10_000);
        assert!(
            members
                .iter()
                .all(|n| index.contains(Fingerprint::compute(&salt, *n)))
        );
        assert!(
            !others
                .iter()
                .any(|n| index.contains(Fingerprint::compute(&salt, *n)))
        );
        // Another epoch's salt gives other fingerprints.
        let other_salt = Salt::from_bytes([8; 32]);
        assert!(
            !members
                .iter()
                .any(|n| index.contains(Fingerprint::compute(&other_salt, *n)))
        );
        // Built from the registry's digits, the same numbers give the same answers.
        let digits: Vec<u64> = members.iter().map(|n| n.get()).collect();
        let from_digits = MatchIndex::build_from_digits(Epoch(3), &salt, &digits);
        assert_eq!(from_digits.len(), 10_000);
        assert!(
            members
                .iter()
                .all(|n| from_digits.contains(Fingerprint::compute(&salt, *n)))
        );
    }

    #[test]
    fn empty_index_answers_no() {
        let index = MatchIndex::build(Epoch(0), &Salt::from_bytes([0; 32]), &[]);
        assert!(index.is_empty());
        assert!(!index.contains(Fingerprint::from_bytes([0; 8])));
        assert!(!index.contains(Fingerprint::from_bytes([0xff; 8])));
        let mut bitmap = [0u8; 1];
        let batch = [Fingerprint::from_bytes([0; 8])];
        assert_eq!(index.lookup_into_bitmap(&batch, &mut bitmap), 0);
        assert_eq!(bitmap, [0]);
    }

    #[test]
    fn memory_stays_under_ten_bytes_per_key() {
        use rand::{Rng, SeedableRng};
        // Random like real fingerprints (an evenly spaced sequence would never overflow).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let keys: Vec<u64> = (0..200_000).map(|_| rng.random()).collect();
        let index = MatchIndex::from_keys(Epoch(0), keys.clone());
        let per_key = index.heap_bytes() as f64 / index.len() as f64;
        assert!(per_key < 10.0, "{per_key} bytes per key");
        assert!(
            index.tables.len() >= 2,
            "some buckets overflow at this load"
        );
        check_against_set(&index, &keys, &[1, 2, 3, u64::MAX]);
    }

    #[test]
    fn crowded_buckets_overflow_through_every_table_into_the_spill() {
        // Keys sharing their high bits all land in bucket 0 of table 0, far past its 12 slots,
        // and differ in their low 40 bits, so each must be found through the overflow path.
        let crowd: Vec<u64> = (0..2_000u64).map(|i| i * 7 + 1).collect();
        let index = MatchIndex::from_keys(Epoch(0), crowd.clone());
        assert!(index.tables[0].buckets[0].0[META] & OVERFLOW != 0);
        assert!(index.tables.len() > 1);
        let probes: Vec<u64> = (0..2_000u64).map(|i| i * 7 + 3).collect();
        check_against_set(&index, &crowd, &probes);

        // A table holding only one bucket per level cannot absorb its overflow: keys run
        // through all tables into the sorted spill list.
        let mut first = Table {
            buckets: vec![Bucket::EMPTY],
            level: 0,
        };
        let overflow = first.insert_all(&crowd);
        assert_eq!(overflow.len(), crowd.len() - SLOTS);
        let mut tables = vec![first];
        let mut rest = overflow;
        while tables.len() < MAX_TABLES {
            let mut next = Table {
                buckets: vec![Bucket::EMPTY],
                level: tables.len() as u32,
            };
            rest = next.insert_all(&rest);
            tables.push(next);
        }
        rest.sort_unstable();
        assert!(!rest.is_empty());
        let index = MatchIndex {
            epoch: Epoch(0),
            tables,
            spill: rest,
            len: crowd.len(),
        };
        check_against_set(&index, &crowd, &probes);
    }

    #[test]
    fn keys_equal_in_their_low_40_bits_in_one_bucket_are_the_documented_false_positive() {
        let member = 5u64;
        let index = MatchIndex::from_keys(Epoch(0), vec![member]);
        // Same bucket (there is one), same low 40 bits, different key: reported present.
        assert!(index.contains(Fingerprint::from_bytes((member | 1 << 50).to_le_bytes())));
        assert!(!index.contains(Fingerprint::from_bytes((member + 1).to_le_bytes())));
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_set(
            keys in proptest::collection::vec(any::<u64>(), 0..2_000),
            probes in proptest::collection::vec(any::<u64>(), 0..200),
        ) {
            let index = MatchIndex::from_keys(Epoch(0), keys.clone());
            let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
            prop_assert_eq!(index.len(), set.len());
            check_against_set(&index, &keys, &probes);
        }
    }
}
