//! One cache line of tags, and a table of them.
//!
//! A line is eight 64-bit words. Slot `s` holds a 40-bit tag in bits `40·s .. 40·s + 40` of the
//! line read as one little-endian 512-bit number (twelve slots fill 480 bits); bit 487 (the top
//! bit of byte 60) is the overflow flag. A tag is never 0, so an empty slot is a zero one and
//! there is no count to keep in step: a change writes one slot (one or two words), and a
//! lookup that runs meanwhile sees every other slot exactly as it was. The words are atomics
//! only so that one writer and many readers may touch a line at once without a data race; on
//! x86-64 a relaxed atomic load or store is a plain `mov`, so the lookup path costs what it
//! did on plain bytes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rayon::prelude::*;

/// Slots per bucket: 12 × 40 bits fill 480 of the line's 512.
pub(super) const SLOTS: usize = 12;
/// Bits of the key kept in a slot.
const TAG_BITS: usize = 40;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Word and bit of the overflow flag: set when a key of this bucket did not fit and went on.
const FLAG_WORD: usize = 7;
const FLAG_BIT: u64 = 1 << 39;

/// The tag a key is stored as: its low 40 bits, with 0 (the empty slot) stored as 1. Keys
/// whose low bits are 0 or 1 share a tag, one more way for two keys to collide in a bucket
/// (see the false-positive rate in the module above).
#[inline(always)]
pub(super) fn tag_of(key: u64) -> u64 {
    let tag = key & TAG_MASK;
    tag | u64::from(tag == 0)
}

/// Where slot `slot`'s bits start: word index and shift.
#[inline(always)]
const fn position(slot: usize) -> (usize, u32) {
    ((slot * TAG_BITS) / 64, ((slot * TAG_BITS) % 64) as u32)
}

#[inline(always)]
fn slot_of(words: &[u64; 8], slot: usize) -> u64 {
    let (word, shift) = position(slot);
    let low = words[word] >> shift;
    // A slot that crosses into the next word takes its high bits from there.
    let high = if shift as usize + TAG_BITS > 64 {
        words[word + 1] << (64 - shift)
    } else {
        0
    };
    (low | high) & TAG_MASK
}

/// One cache line: twelve 40-bit tags and the overflow flag.
#[repr(C, align(64))]
#[derive(Default)]
pub(super) struct Bucket([AtomicU64; 8]);

/// What a bucket says about a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    Found,
    Absent,
    /// Not here, but the bucket overflowed: ask the next table.
    Overflowed,
}

impl Bucket {
    #[inline(always)]
    fn words(&self) -> [u64; 8] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }

    /// Whether `tag` is here, and whether the bucket overflowed. Branch-free: half the lookups
    /// hit at random, and a mispredicted branch per lookup would stall the batch loop.
    #[inline(always)]
    pub(super) fn check(&self, tag: u64) -> (bool, bool) {
        let words = self.words();
        let mut found = false;
        for slot in 0..SLOTS {
            found |= slot_of(&words, slot) == tag;
        }
        (found, words[FLAG_WORD] & FLAG_BIT != 0)
    }

    pub(super) fn probe(&self, tag: u64) -> Probe {
        match self.check(tag) {
            (true, _) => Probe::Found,
            (false, true) => Probe::Overflowed,
            (false, false) => Probe::Absent,
        }
    }

    /// Whether the overflow flag is set.
    #[cfg(test)]
    pub(super) fn overflowed(&self) -> bool {
        self.0[FLAG_WORD].load(Relaxed) & FLAG_BIT != 0
    }

    /// Writes `tag` into `slot`, leaving every other bit of the line as it is. Only one writer
    /// may change a line at a time (the index's callers serialise changes); readers meanwhile
    /// see the old or the new value of each word, so at worst a half-written slot, which
    /// matches nothing they ask for but with the odds of a random tag.
    fn write_slot(&self, slot: usize, tag: u64) {
        let (word, shift) = position(slot);
        let old = self.0[word].load(Relaxed);
        self.0[word].store((old & !(TAG_MASK << shift)) | (tag << shift), Relaxed);
        if shift as usize + TAG_BITS > 64 {
            let high_bits = shift as usize + TAG_BITS - 64;
            let mask = (1u64 << high_bits) - 1;
            let old = self.0[word + 1].load(Relaxed);
            self.0[word + 1].store((old & !mask) | (tag >> (64 - shift)), Relaxed);
        }
    }

    /// Stores `tag` in a free slot, or flags the bucket and returns false if none is free.
    pub(super) fn insert(&self, tag: u64) -> bool {
        let words = self.words();
        match (0..SLOTS).find(|&slot| slot_of(&words, slot) == 0) {
            Some(slot) => {
                self.write_slot(slot, tag);
                true
            }
            None => {
                self.0[FLAG_WORD].store(words[FLAG_WORD] | FLAG_BIT, Relaxed);
                false
            }
        }
    }

    /// Empties one slot holding `tag`; false if none does. The flag stays: keys that went on
    /// to the next table are still there.
    pub(super) fn remove(&self, tag: u64) -> bool {
        let words = self.words();
        match (0..SLOTS).find(|&slot| slot_of(&words, slot) == tag) {
            Some(slot) => {
                self.write_slot(slot, 0);
                true
            }
            None => false,
        }
    }

    /// Tags held (tests).
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        let words = self.words();
        (0..SLOTS).filter(|&s| slot_of(&words, s) != 0).count()
    }
}

/// Picks table `level`'s bucket input: table 0 uses the key itself, each further table a
/// different bijection, so keys that overflowed from neighbouring buckets spread out again.
#[inline(always)]
fn mix(key: u64, level: u32) -> u64 {
    if level == 0 {
        key
    } else {
        // A bijection whose high bits depend on every bit of the key.
        (key ^ u64::from(level)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// One table of buckets.
pub(super) struct Table {
    pub(super) buckets: Vec<Bucket>,
    level: u32,
}

impl Table {
    /// A table with one bucket per `load` keys (at least one).
    pub(super) fn with_capacity_for(keys: usize, level: u32, load: f64) -> Self {
        Self::with_buckets(((keys as f64 / load).ceil() as usize).max(1), level)
    }

    pub(super) fn with_buckets(count: usize, level: u32) -> Self {
        let mut buckets = Vec::with_capacity(count);
        // Before the first write, so the kernel can back the table with 2 MiB pages from the
        // start: a random lookup then misses the TLB far less often.
        advise_huge_pages(&mut buckets);
        buckets.resize_with(count, Bucket::default);
        Self { buckets, level }
    }

    #[inline(always)]
    pub(super) fn bucket_of(&self, key: u64) -> &Bucket {
        let at = ((u128::from(mix(key, self.level)) * self.buckets.len() as u128) >> 64) as usize;
        &self.buckets[at]
    }

    pub(super) fn bytes(&self) -> usize {
        self.buckets.capacity() * size_of::<Bucket>()
    }

    #[inline(always)]
    pub(super) fn prefetch(&self, key: u64) {
        prefetch(self.bucket_of(key));
    }

    /// Inserts `keys` in parallel: each worker owns a contiguous range of buckets and takes the
    /// keys that fall in it. Returns the keys that did not fit.
    pub(super) fn insert_all(&mut self, keys: &[u64]) -> Vec<u64> {
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
                        if !buckets[b].insert(tag_of(key)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_keeps_its_own_bits() {
        let bucket = Bucket::default();
        let tags: Vec<u64> = (0..SLOTS as u64)
            .map(|i| (0xA5_5A5A_5A5A ^ (i * 0x1_0101_0101)) & TAG_MASK | 1)
            .collect();
        for (i, &tag) in tags.iter().enumerate() {
            assert!(bucket.insert(tag), "slot {i}");
            assert!(!bucket.overflowed());
        }
        assert_eq!(bucket.used(), SLOTS);
        for &tag in &tags {
            assert_eq!(bucket.check(tag), (true, false));
        }
        // Full: the next insert flags the bucket and stores nothing.
        assert!(!bucket.insert(7));
        assert_eq!(bucket.check(7), (false, true));
        // Emptying each slot in turn leaves every other tag readable.
        for (i, &tag) in tags.iter().enumerate() {
            assert!(bucket.remove(tag));
            assert!(!bucket.remove(tag), "only one copy was there");
            assert_eq!(bucket.check(tag), (false, true));
            for &other in &tags[i + 1..] {
                assert_eq!(bucket.check(other), (true, true));
            }
        }
        assert_eq!(bucket.used(), 0);
        // A freed slot is used again; the flag stays.
        assert!(bucket.insert(tags[5]));
        assert_eq!(bucket.check(tags[5]), (true, true));
    }

    #[test]
    fn tags_are_never_the_empty_slot() {
        assert_eq!(tag_of(0), 1);
        assert_eq!(tag_of(1 << 40), 1);
        assert_eq!(tag_of(1), 1);
        assert_eq!(tag_of(u64::MAX), TAG_MASK);
        assert_eq!(tag_of(0x1234_5678_9abc_def0), 0x78_9abc_def0);
    }
}
