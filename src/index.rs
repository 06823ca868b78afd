//! The match index: one epoch's set of fingerprints of all discoverable numbers.
//!
//! Layout: the fingerprint keys sorted in one array, plus a directory of offsets by the keys' top
//! bits. Fingerprints are uniform, so each directory bucket holds about eight keys: a lookup reads
//! one directory entry and scans one or two cache lines. That is 8 bytes per user plus half a byte
//! of directory. The index is immutable once built; a rebuild makes a new one that is swapped in
//! whole.

use rayon::prelude::*;

use crate::domain::{E164, Epoch, Fingerprint, Salt};

/// Keys per directory bucket that the directory is sized for.
const KEYS_PER_BUCKET: usize = 8;

/// An immutable set of fingerprints for one epoch.
pub struct MatchIndex {
    epoch: Epoch,
    keys: Vec<u64>,
    /// `directory[b]..directory[b + 1]` is the range of keys whose top `bits` bits equal `b`.
    directory: Vec<u32>,
    bits: u32,
}

impl MatchIndex {
    /// Builds the index of `numbers` under `salt`, in parallel across cores.
    pub fn build(epoch: Epoch, salt: &Salt, numbers: &[E164]) -> Self {
        let mut keys: Vec<u64> = numbers
            .par_iter()
            .with_min_len(4096)
            .map(|n| Fingerprint::compute(salt, *n).key())
            .collect();
        keys.par_sort_unstable();
        // Two numbers sharing a 64-bit fingerprint is a 1-in-2^64 event per pair; keep one key.
        keys.dedup();
        Self::from_sorted_keys(epoch, keys)
    }

    fn from_sorted_keys(epoch: Epoch, keys: Vec<u64>) -> Self {
        let buckets = (keys.len() / KEYS_PER_BUCKET).max(1).next_power_of_two();
        let bits = buckets.trailing_zeros();
        let mut directory = Vec::with_capacity(buckets + 1);
        let mut at = 0usize;
        for bucket in 0..buckets as u64 {
            directory.push(at as u32);
            while at < keys.len() && bucket_of(keys[at], bits) == bucket {
                at += 1;
            }
        }
        directory.push(keys.len() as u32);
        Self {
            epoch,
            keys,
            directory,
            bits,
        }
    }

    /// The epoch this index answers for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Number of distinct fingerprints held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the index holds no fingerprints.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes of heap the index holds.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.directory.capacity() * 4
    }

    /// Whether `fingerprint` belongs to a discoverable number.
    pub fn contains(&self, fingerprint: Fingerprint) -> bool {
        let key = fingerprint.key();
        let bucket = bucket_of(key, self.bits) as usize;
        let (lo, hi) = (
            self.directory[bucket] as usize,
            self.directory[bucket + 1] as usize,
        );
        self.keys[lo..hi].contains(&key)
    }

    /// Looks up a batch and sets bit `i` (least significant first in each byte) of `bitmap` iff
    /// `batch[i]` is present. Returns the number of matches. `bitmap` must hold ceil(n/8) bytes.
    pub fn lookup_into_bitmap(&self, batch: &[Fingerprint], bitmap: &mut [u8]) -> usize {
        debug_assert!(bitmap.len() >= batch.len().div_ceil(8));
        let mut matches = 0;
        for (i, fp) in batch.iter().enumerate() {
            if self.contains(*fp) {
                bitmap[i / 8] |= 1 << (i % 8);
                matches += 1;
            }
        }
        matches
    }
}

fn bucket_of(key: u64, bits: u32) -> u64 {
    if bits == 0 { 0 } else { key >> (64 - bits) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::generate;
    use proptest::prelude::*;

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
    }

    #[test]
    fn empty_index_answers_no() {
        let index = MatchIndex::build(Epoch(0), &Salt::from_bytes([0; 32]), &[]);
        assert!(index.is_empty());
        assert!(!index.contains(Fingerprint::from_bytes([0; 8])));
        assert!(!index.contains(Fingerprint::from_bytes([0xff; 8])));
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_set(
            keys in proptest::collection::vec(any::<u64>(), 0..2_000),
            probes in proptest::collection::vec(any::<u64>(), 0..200),
        ) {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let index = MatchIndex::from_sorted_keys(Epoch(0), sorted);
            let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
            let batch: Vec<Fingerprint> = probes.iter().chain(keys.iter().take(50))
                .map(|k| Fingerprint::from_bytes(k.to_le_bytes())).collect();
            let mut bitmap = vec![0u8; batch.len().div_ceil(8)];
            let matches = index.lookup_into_bitmap(&batch, &mut bitmap);
            let mut expected = 0;
            for (i, fp) in batch.iter().enumerate() {
                let want = set.contains(&fp.key());
                expected += usize::from(want);
                prop_assert_eq!(bitmap[i / 8] & (1 << (i % 8)) != 0, want);
            }
            prop_assert_eq!(matches, expected);
        }
    }
}
