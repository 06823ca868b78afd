//! The match index: one epoch's set of fingerprints of all discoverable numbers, kept equal to
//! the registry change by change.
//!
//! Layout (`bucket.rs`): a table of 64-byte buckets, one cache line each, so a lookup costs one
//! cache miss. A fingerprint's 64-bit key picks its bucket from its high bits (`key × buckets
//! >> 64`) and is stored as a 40-bit tag, its low 40 bits: twelve slots per line and an
//! overflow flag. Buckets are sized for 7.5 keys on average, about 8.6 bytes per user; the ~1 %
//! of keys that find their bucket full go to a much smaller table of the same kind (marked by
//! the flag, so only lookups in overflowed buckets look there), and so on; the last few keys go
//! to a set of full keys (the spill). Batched lookups prefetch the bucket of the fingerprint
//! [`PREFETCH_AHEAD`] places ahead, so many misses are in flight at once.
//!
//! Changes: a number that becomes discoverable is inserted in the first bucket on its path
//! with a free slot (flagging the full ones it passes); one that stops being so has its tag
//! cleared where it lies deepest on its path. Either costs one or two cache lines and one
//! fingerprint, whatever the size of the index, and needs no memory beyond the tables unless
//! inserts outgrow them (then the spill grows). Flags are never cleared, so every key stays
//! reachable; the next epoch's index is built whole and fresh. Changes come from one writer at
//! a time (the live set's lock); lookups run meanwhile without locks and see every key that
//! was present before and after a change (see `bucket.rs` for why).
//!
//! False positives: besides two numbers sharing a 64-bit fingerprint (about `n / 2^64` per
//! lookup: 5.4e-12 at 100 M users, 5.4e-11 at 1 B), a fingerprint that is not in the index
//! matches only if a key in its bucket has the same 40-bit tag: each key compared matches with
//! probability 2^-40, and a lookup compares on average 7.5 keys (at most 12 per table visited),
//! so about 6.8e-12 per lookup, whatever the number of users (at most 1.1e-11 in a full
//! bucket). Both together stay below 7e-11 per lookup at 1 B users. There are no false
//! negatives: every key is in its bucket, or its bucket is flagged and the key is further on.
//! Two keys with the same tag in one bucket are two slots; removing one clears the copy that
//! lies deepest on its own path, which is its own unless a second such coincidence (2^-40
//! again) put another equal tag there.

mod bucket;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use parking_lot::RwLock;
use rayon::prelude::*;

use crate::domain::{E164, Epoch, Fingerprint, Salt, ServerSecret};
use crate::store::registry::{Discoverability, DiscoverableNumbers};
use crate::store::rotation::{BuildError, ChangeBase, EpochArtefact};
use bucket::{Probe, Table, tag_of};

/// Average keys per bucket the tables are sized for: 64 / 7.5 ≈ 8.5 bytes per key, and about
/// 4 % of buckets overflow (Poisson tail beyond 12), holding about 1.1 % of the keys.
const LOAD: f64 = 7.5;
/// At most this many tables; the keys left after them are kept whole in the spill.
const MAX_TABLES: usize = 6;
/// How far ahead of the fingerprint being checked a batched lookup prefetches.
pub const PREFETCH_AHEAD: usize = 16;
/// Spilled keys an index holds at most before it counts as worn, however small it is.
const WORN_SPILL_MIN: usize = 64;
/// Numbers fingerprinted per build step: bounds the temporary key buffer (8 bytes each).
const BUILD_SEGMENT: usize = 1 << 22;

/// One epoch's set of fingerprints.
pub struct MatchIndex {
    epoch: Epoch,
    /// Table 0 holds ~99 % of the keys; each further table holds the overflow of the one before.
    tables: Vec<Table>,
    /// Keys that overflowed the last table, whole (normally empty; grows only when inserts
    /// outgrow the tables between two builds).
    spill: RwLock<HashSet<u64>>,
    /// Keys the build itself put in the spill (normally none): only what changes add wears it.
    built_spill: usize,
    len: AtomicUsize,
}

/// The hashed mode's per-epoch artefact: fingerprints of every discoverable number under the
/// epoch's salt.
impl EpochArtefact for MatchIndex {
    type Config = ();

    fn build(
        _: &(),
        secret: &ServerSecret,
        epoch: Epoch,
        numbers: &DiscoverableNumbers,
    ) -> Result<Self, BuildError> {
        Ok(Self::build_from_digits(
            epoch,
            &secret.salt(epoch),
            numbers.as_digits(),
        ))
    }

    fn apply(&self, secret: &ServerSecret, changes: &[Discoverability], base: ChangeBase) {
        let salt = secret.salt(self.epoch);
        for change in changes {
            let key = Fingerprint::compute(&salt, change.number).key();
            if !change.discoverable {
                self.remove(key);
            } else if base == ChangeBase::Exact || !self.contains_key(key) {
                // Built from another registry (before a bulk replace), the index may hold the
                // key already; a second copy would outlive the next removal.
                self.insert(key);
            }
        }
    }

    fn entries(&self) -> usize {
        self.len()
    }

    fn heap_bytes(&self) -> usize {
        MatchIndex::heap_bytes(self)
    }

    /// Worn once changes put more than one key in 1,024 (and more than 64) in the spill:
    /// inserts have then outgrown the overflow tables sized at the build, and lookups in the
    /// buckets that overflowed since pay extra cache misses (+90 % at 100 M after 10 %
    /// growth). What the build itself spilled does not count, so a fresh index is never worn.
    fn worn(&self) -> bool {
        let added = self.spilled().saturating_sub(self.built_spill);
        added > WORN_SPILL_MIN && added > self.len() / 1_024
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
        let mut first = Table::with_capacity_for(numbers.len(), 0, LOAD);
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
        let mut first = Table::with_capacity_for(keys.len(), 0, LOAD);
        let overflow = first.insert_all(keys);
        Self::finish(epoch, first, overflow, keys.len())
    }

    fn finish(epoch: Epoch, first: Table, mut overflow: Vec<u64>, len: usize) -> Self {
        let mut tables = vec![first];
        while !overflow.is_empty() && tables.len() < MAX_TABLES {
            let mut next = Table::with_capacity_for(overflow.len(), tables.len() as u32, LOAD);
            overflow = next.insert_all(&overflow);
            tables.push(next);
        }
        Self::from_parts(epoch, tables, overflow, len)
    }

    fn from_parts(epoch: Epoch, tables: Vec<Table>, spill: Vec<u64>, len: usize) -> Self {
        Self {
            epoch,
            tables,
            built_spill: spill.len(),
            spill: RwLock::new(spill.into_iter().collect()),
            len: AtomicUsize::new(len),
        }
    }

    /// The epoch this index answers for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether the index holds no fingerprints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of heap the index holds (the spill's at its hash table's capacity, a tag byte and
    /// eight bytes of key per entry).
    pub fn heap_bytes(&self) -> usize {
        self.tables.iter().map(Table::bytes).sum::<usize>() + self.spill.read().capacity() * 9
    }

    /// Keys held in the spill (for stats: it grows only when inserts outgrow the tables).
    pub fn spilled(&self) -> usize {
        self.spill.read().len()
    }

    /// Whether `fingerprint` belongs to a discoverable number (or collides with one; see the
    /// module documentation for the rate).
    pub fn contains(&self, fingerprint: Fingerprint) -> bool {
        self.contains_key(fingerprint.key())
    }

    fn contains_key(&self, key: u64) -> bool {
        self.contains_from(key, 0)
    }

    fn contains_from(&self, key: u64, first_table: usize) -> bool {
        let tag = tag_of(key);
        for table in &self.tables[first_table..] {
            match table.bucket_of(key).probe(tag) {
                Probe::Found => return true,
                Probe::Absent => return false,
                Probe::Overflowed => {}
            }
        }
        self.spill.read().contains(&key)
    }

    /// Adds `key` (one writer at a time: see the module documentation). The caller knows it
    /// is not held yet; a key added twice takes two slots and needs two removals.
    pub fn insert(&self, key: u64) {
        let tag = tag_of(key);
        // A full bucket is flagged by the failed insert, so the key stays reachable.
        if !self.tables.iter().any(|t| t.bucket_of(key).insert(tag)) {
            self.spill.write().insert(key);
        }
        self.len.fetch_add(1, Relaxed);
    }

    /// Removes `key` if held; returns whether it was. Clears the copy that lies deepest on the
    /// key's path: a key went further only because the buckets before were full, so an equal
    /// tag found earlier belongs to another key (see the module documentation).
    pub fn remove(&self, key: u64) -> bool {
        let tag = tag_of(key);
        let mut deepest = None;
        let mut reached_spill = true;
        for table in &self.tables {
            let bucket = table.bucket_of(key);
            let (found, overflowed) = bucket.check(tag);
            if found {
                deepest = Some(bucket);
            }
            if !overflowed {
                reached_spill = false;
                break;
            }
        }
        let removed = (reached_spill && self.spill.write().remove(&key))
            || deepest.is_some_and(|b| b.remove(tag));
        if removed {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
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
            let (mut hit, overflowed) = first.bucket_of(key).check(tag_of(key));
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
        assert!(index.tables[0].buckets[0].overflowed());
        assert!(index.tables.len() > 1);
        let probes: Vec<u64> = (0..2_000u64).map(|i| i * 7 + 3).collect();
        check_against_set(&index, &crowd, &probes);

        // A table holding only one bucket per level cannot absorb its overflow: keys run
        // through all tables into the sorted spill list.
        let mut first = Table::with_buckets(1, 0);
        let overflow = first.insert_all(&crowd);
        assert_eq!(overflow.len(), crowd.len() - bucket::SLOTS);
        let mut tables = vec![first];
        let mut rest = overflow;
        while tables.len() < MAX_TABLES {
            let mut next = Table::with_buckets(1, tables.len() as u32);
            rest = next.insert_all(&rest);
            tables.push(next);
        }
        assert!(!rest.is_empty());
        let index = MatchIndex::from_parts(Epoch(0), tables, rest, crowd.len());
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

    /// Keys that all fall into the first bucket of a small index (their high bits are zero), so
    /// changes overflow through every table into the spill and back.
    fn crowded(i: u64) -> u64 {
        (i.wrapping_mul(0x9e37_79b9) & 0xff_ffff_ffff) | (i & 3) << 40
    }

    proptest! {
        /// Inserts and removals in any order, on a built index, give the answers of a set:
        /// through full buckets, every overflow table and the spill, for keys of both the
        /// build and the changes.
        #[test]
        fn changes_in_place_agree_with_a_set(
            built in proptest::collection::vec(0u64..60, 0..60),
            ops in proptest::collection::vec((any::<bool>(), 0u64..60, any::<bool>()), 0..300),
        ) {
            let mut model: std::collections::HashSet<u64> = built.iter().map(|&i| crowded(i)).collect();
            let index = MatchIndex::from_keys(Epoch(0), model.iter().copied().collect());
            for (insert, i, spread) in ops {
                // Half the keys crowd one bucket, half spread over the table.
                let key = if spread { i.wrapping_mul(0x2545_f491_4f6c_dd1d) } else { crowded(i) };
                if insert && model.insert(key) {
                    index.insert(key);
                } else if !insert {
                    prop_assert_eq!(index.remove(key), model.remove(&key));
                }
                prop_assert_eq!(index.len(), model.len());
            }
            let probes: Vec<u64> = (0..60u64)
                .flat_map(|i| [crowded(i), i.wrapping_mul(0x2545_f491_4f6c_dd1d)])
                .collect();
            let keys: Vec<u64> = model.iter().copied().collect();
            check_against_set(&index, &keys, &probes);
        }
    }

    #[test]
    fn a_stale_index_takes_changes_as_set_operations_and_an_exact_one_as_steps() {
        let secret = ServerSecret::from_bytes([5; 32]);
        let numbers = generate::numbers(3, 9);
        let index = MatchIndex::build(Epoch(2), &secret.salt(Epoch(2)), &numbers[..1]);
        let fp = |i: usize| Fingerprint::compute(&secret.salt(Epoch(2)), numbers[i]);
        let change = |i: usize, discoverable: bool, base: ChangeBase| {
            let change = Discoverability {
                number: numbers[i],
                discoverable,
            };
            index.apply(&secret, &[change], base);
        };
        // Built before a bulk replace, the index may be told of a number it holds already.
        change(0, true, ChangeBase::Stale);
        assert_eq!(index.len(), 1, "not held twice");
        change(0, false, ChangeBase::Stale);
        assert!(!index.contains(fp(0)), "one removal clears it");
        change(1, true, ChangeBase::Stale);
        assert!(index.contains(fp(1)), "a new number is added");
        // Exact changes are real steps: nothing is looked up before an insert.
        change(2, true, ChangeBase::Exact);
        change(2, true, ChangeBase::Exact);
        assert_eq!(index.len(), 3);
        change(2, false, ChangeBase::Exact);
        assert!(index.contains(fp(2)), "the second copy is still there");
    }

    #[test]
    fn removal_clears_the_copy_on_the_keys_own_path() {
        // Two keys with one tag in one bucket: the second overflowed (the bucket was full), so
        // removing it must clear its own copy further on, not the first key's.
        let filler: Vec<u64> = (1..=11u64).map(|i| i << 8).collect();
        let index = MatchIndex::from_keys(Epoch(0), filler.clone());
        let first = 0x77;
        let second = first | 1 << 41; // same bucket (one bucket), same low 40 bits
        index.insert(first);
        index.insert(second);
        assert_eq!(
            index.spilled(),
            1,
            "the second went on past the full bucket"
        );
        assert!(index.remove(second));
        assert!(index.contains(Fingerprint::from_bytes(first.to_le_bytes())));
        assert!(index.remove(first));
        assert!(!index.contains(Fingerprint::from_bytes(first.to_le_bytes())));
        assert!(!index.remove(first), "nothing left to remove");
        check_against_set(&index, &filler, &[first, second]);
    }

    #[test]
    fn lookups_during_changes_never_miss_a_key_that_stays() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let stable: Vec<u64> = (0..20_000).map(|_| rng.random()).collect();
        let churn: Vec<u64> = (0..20_000).map(|_| rng.random()).collect();
        // Tables sized for the stable keys: the churned ones double the load, so they share
        // buckets with stable keys, overflow and reach the spill.
        let index = MatchIndex::from_keys(Epoch(0), stable.clone());
        let batch: Vec<Fingerprint> = stable
            .iter()
            .map(|k| Fingerprint::from_bytes(k.to_le_bytes()))
            .collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut rounds = 0;
                let mut bitmap = vec![0u8; batch.len().div_ceil(8)];
                while !stop.load(Relaxed) || rounds < 3 {
                    bitmap.fill(0);
                    let found = index.lookup_into_bitmap(&batch, &mut bitmap);
                    assert_eq!(found, batch.len(), "a stable key went missing");
                    rounds += 1;
                }
                rounds
            });
            for _ in 0..20 {
                for &key in &churn {
                    index.insert(key);
                }
                for &key in &churn {
                    assert!(index.remove(key));
                }
            }
            stop.store(true, Relaxed);
            assert!(reader.join().unwrap() >= 3);
        });
        assert_eq!(index.len(), stable.len());
        check_against_set(&index, &stable, &churn[..100]);
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
