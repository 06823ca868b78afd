//! The registry in memory: every registered number and its visibility, 8 bytes per number.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::record::Op;
use super::snapshot::HIDDEN_BIT;
use super::snapshot::Snapshot;
use crate::domain::E164;

/// Never an entry: its number part (2^63 - 1) is larger than any E.164 number.
const TOMBSTONE: u64 = u64::MAX;

/// Whether a registered number can be found by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Matches discovery requests.
    Discoverable,
    /// Registered, but opted out of being found by number.
    Hidden,
}

/// A number that became discoverable, or stopped being so: one step a live index takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discoverability {
    /// The number (its `Debug` is redacted).
    pub number: E164,
    /// Whether it is discoverable now.
    pub discoverable: bool,
}

/// Counts of registered numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Registered and discoverable.
    pub discoverable: u64,
    /// Registered and hidden.
    pub hidden: u64,
}

impl Counts {
    /// Sets the `registry_size` gauges.
    pub fn export_to(self, metrics: &crate::metrics::Metrics) {
        metrics.set_registry_counts(self.discoverable, self.hidden);
    }
}

/// The registry in memory: 8 bytes per number, laid out like the snapshot body.
///
/// `base` holds raw snapshot entries (the number, with `HIDDEN_BIT` set when hidden) sorted
/// ascending, so the discoverable numbers form its prefix and the hidden ones follow; a snapshot
/// loads straight into it and the index builder reads the prefix without copying. Changes since
/// the last fold live in the small `overlay` and are merged into `base` in place (one linear
/// pass) before an index build, on compaction, and when the overlay grows past a threshold. A
/// `HashMap<E164, Visibility>` would cost about 4× the memory.
#[derive(Clone, Default)]
pub(super) struct State {
    base: Arc<Vec<u64>>,
    /// Number → its new raw entry, or `None` if removed, for changes not yet folded.
    overlay: BTreeMap<u64, Option<u64>>,
    counts: Counts,
}

impl State {
    /// The state holding exactly `snapshot`, sharing its entries.
    pub(super) fn from_snapshot(snapshot: Snapshot) -> Self {
        Self::from_shared(snapshot.into_entries())
    }

    fn from_shared(base: Arc<Vec<u64>>) -> Self {
        let discoverable = discoverable_len(&base) as u64;
        let hidden = base.len() as u64 - discoverable;
        Self {
            base,
            overlay: BTreeMap::new(),
            counts: Counts {
                discoverable,
                hidden,
            },
        }
    }

    /// Every entry, folded first, shared rather than copied (what a snapshot writes).
    pub(super) fn snapshot(&mut self) -> Snapshot {
        self.fold();
        Snapshot::from_sorted(Arc::clone(&self.base))
    }

    pub(super) fn get(&self, number: E164) -> Option<Visibility> {
        match self.overlay.get(&number.get()) {
            Some(entry) => entry.map(visibility_of),
            None => base_position(&self.base, number.get()).map(|at| visibility_of(self.base[at])),
        }
    }

    pub(super) fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether an index build (or a snapshot being written) still reads the sorted vector, so
    /// that folding now would copy it whole.
    pub(super) fn base_is_shared(&self) -> bool {
        Arc::strong_count(&self.base) > 1
    }

    /// Changes applied but not yet folded into the sorted vector.
    pub(super) fn pending(&self) -> usize {
        self.overlay.len()
    }

    /// Sets `number` to `to`; returns whether it changed between discoverable and not.
    fn set(&mut self, number: E164, to: Option<Visibility>) -> Option<Discoverability> {
        let from = self.get(number);
        match from {
            Some(Visibility::Discoverable) => self.counts.discoverable -= 1,
            Some(Visibility::Hidden) => self.counts.hidden -= 1,
            None => {}
        }
        match to {
            Some(Visibility::Discoverable) => self.counts.discoverable += 1,
            Some(Visibility::Hidden) => self.counts.hidden += 1,
            None => {}
        }
        self.overlay
            .insert(number.get(), to.map(|v| entry_of(number, v)));
        let discoverable = to == Some(Visibility::Discoverable);
        (discoverable != (from == Some(Visibility::Discoverable))).then_some(Discoverability {
            number,
            discoverable,
        })
    }

    /// Applies `ops` in order and returns the numbers whose discoverability they changed, in
    /// the same order (an add of a discoverable number, or a hide of a hidden one, changes
    /// nothing and is left out): exactly what a live index must do to stay equal to the
    /// registry's discoverable set.
    pub(super) fn apply(&mut self, ops: &[Op]) -> Vec<Discoverability> {
        ops.iter()
            .filter_map(|op| match *op {
                Op::Add(n) => self.set(n, Some(Visibility::Discoverable)),
                Op::Hide(n) => self.set(n, Some(Visibility::Hidden)),
                Op::Remove(n) => self.set(n, None),
            })
            .collect()
    }

    /// Merges the overlay into `base` in place: O(len + changes · log len). Copies `base` only
    /// if an index build still holds it (`Arc::make_mut`).
    pub(super) fn fold(&mut self) {
        if self.overlay.is_empty() {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        remove_numbers(base, self.overlay.keys().copied());
        let mut added: Vec<u64> = self.overlay.values().flatten().copied().collect();
        self.overlay.clear();
        added.sort_unstable();
        merge_sorted(base, &added);
    }

    /// Sets many numbers at once (bulk import), the last entry for a number winning; linear
    /// in the registry plus n log n in the entries, with no per-entry overlay node.
    pub(super) fn set_many(&mut self, entries: &[(E164, Visibility)]) {
        self.fold();
        let mut incoming: Vec<(u64, u64)> = entries
            .iter()
            .map(|&(n, v)| (n.get(), entry_of(n, v)))
            .collect();
        // Stable, so among equal numbers the input order survives and the last one is kept.
        incoming.sort_by_key(|(number, _)| *number);
        let mut added: Vec<u64> = Vec::with_capacity(incoming.len());
        for (i, &(number, entry)) in incoming.iter().enumerate() {
            if incoming.get(i + 1).is_none_or(|next| next.0 != number) {
                added.push(entry);
            }
        }
        drop(incoming);
        let base = Arc::make_mut(&mut self.base);
        if !base.is_empty() {
            remove_numbers(base, added.iter().map(|e| e & !HIDDEN_BIT));
        }
        added.sort_unstable();
        merge_sorted(base, &added);
        *self = Self::from_shared(Arc::new(std::mem::take(base)));
    }

    /// The discoverable numbers, folded first, shared rather than copied.
    pub(super) fn discoverable_numbers(&mut self) -> DiscoverableNumbers {
        self.fold();
        DiscoverableNumbers {
            base: Arc::clone(&self.base),
            len: discoverable_len(&self.base),
        }
    }

    /// Every registration, sorted by number.
    pub(super) fn entries(&mut self) -> Vec<(E164, Visibility)> {
        self.fold();
        let mut all: Vec<_> = self
            .base
            .iter()
            .filter_map(|e| Some((E164::from_u64(e & !HIDDEN_BIT).ok()?, visibility_of(*e))))
            .collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all
    }
}

/// Removes every entry (either visibility) of `numbers` from a sorted vector. Positions are
/// found before any is marked, so the binary searches run on a sorted vector.
fn remove_numbers(base: &mut Vec<u64>, numbers: impl Iterator<Item = u64>) {
    let stale: Vec<usize> = numbers
        .filter_map(|number| base_position(base, number))
        .collect();
    if !stale.is_empty() {
        for at in stale {
            base[at] = TOMBSTONE;
        }
        base.retain(|e| *e != TOMBSTONE);
    }
}

/// Merges sorted `added` into sorted `base` in place, from the back, so each element moves once
/// and no second vector is needed.
fn merge_sorted(base: &mut Vec<u64>, added: &[u64]) {
    if added.is_empty() {
        return;
    }
    let (mut i, mut j) = (base.len(), added.len());
    base.resize(i + j, 0);
    let mut w = base.len();
    while j > 0 {
        w -= 1;
        if i > 0 && base[i - 1] > added[j - 1] {
            base[w] = base[i - 1];
            i -= 1;
        } else {
            base[w] = added[j - 1];
            j -= 1;
        }
    }
}

/// The raw entry of `number` in the sorted vector (either visibility), if present.
fn base_position(base: &[u64], number: u64) -> Option<usize> {
    base.binary_search(&number)
        .or_else(|_| base.binary_search(&(number | HIDDEN_BIT)))
        .ok()
}

fn entry_of(number: E164, visibility: Visibility) -> u64 {
    match visibility {
        Visibility::Discoverable => number.get(),
        Visibility::Hidden => number.get() | HIDDEN_BIT,
    }
}

fn visibility_of(entry: u64) -> Visibility {
    if entry & HIDDEN_BIT == 0 {
        Visibility::Discoverable
    } else {
        Visibility::Hidden
    }
}

/// How many entries of a sorted vector are discoverable (they sort before every hidden one).
fn discoverable_len(base: &[u64]) -> usize {
    base.partition_point(|e| e & HIDDEN_BIT == 0)
}

/// The discoverable numbers at one moment of the registry, shared without copying: E.164
/// digits as integers, ascending, every one a valid [`E164`] value.
#[derive(Clone)]
pub struct DiscoverableNumbers {
    base: Arc<Vec<u64>>,
    len: usize,
}

impl DiscoverableNumbers {
    /// The numbers' digits as integers (see [`E164::get`]), ascending.
    pub fn as_digits(&self) -> &[u64] {
        &self.base[..self.len]
    }

    /// How many numbers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn number(i: u8) -> E164 {
        E164::from_u64(15_550_000_000 + u64::from(i)).unwrap()
    }

    proptest! {
        /// The compact state (sorted vector + overlay, folded at random moments) answers
        /// exactly like a map applied with the same operations.
        #[test]
        fn state_agrees_with_a_map(
            ops in proptest::collection::vec((0u8..3, 0u8..40, any::<bool>()), 0..200),
        ) {
            let mut state = State::default();
            let mut model: HashMap<E164, Visibility> = HashMap::new();
            // What a live index holds when it only ever follows the reported transitions.
            let mut followed: std::collections::HashSet<E164> = Default::default();
            for (kind, i, fold) in ops {
                let n = number(i);
                let op = match kind { 0 => Op::Add(n), 1 => Op::Hide(n), _ => Op::Remove(n) };
                for change in state.apply(&[op]) {
                    let changed = if change.discoverable {
                        followed.insert(change.number)
                    } else {
                        followed.remove(&change.number)
                    };
                    prop_assert!(changed, "a reported transition changes the set");
                }
                match op {
                    Op::Add(n) => { model.insert(n, Visibility::Discoverable); }
                    Op::Hide(n) => { model.insert(n, Visibility::Hidden); }
                    Op::Remove(n) => { model.remove(&n); }
                }
                if fold {
                    state.fold();
                    prop_assert!(state.overlay.is_empty());
                    prop_assert!(state.base.windows(2).all(|w| w[0] < w[1]));
                }
                for i in 0..40 {
                    prop_assert_eq!(state.get(number(i)), model.get(&number(i)).copied());
                }
                let discoverable: std::collections::HashSet<E164> = model
                    .iter()
                    .filter(|(_, v)| **v == Visibility::Discoverable)
                    .map(|(n, _)| *n)
                    .collect();
                prop_assert_eq!(&followed, &discoverable);
                let hidden = model.values().filter(|v| **v == Visibility::Hidden).count() as u64;
                prop_assert_eq!(state.counts, Counts {
                    discoverable: model.len() as u64 - hidden,
                    hidden,
                });
            }
            state.fold();
            let mut want: Vec<u64> = model
                .iter()
                .filter(|(_, v)| **v == Visibility::Discoverable)
                .map(|(n, _)| n.get())
                .collect();
            want.sort_unstable();
            prop_assert_eq!(&state.base[..discoverable_len(&state.base)], &want[..]);
        }
    }

    #[test]
    fn bulk_import_replaces_existing_and_the_last_duplicate_wins() {
        let mut state = State::default();
        state.apply(&[Op::Add(number(1)), Op::Hide(number(2)), Op::Add(number(3))]);
        state.set_many(&[
            (number(2), Visibility::Discoverable),
            (number(4), Visibility::Discoverable),
            (number(4), Visibility::Hidden),
            (number(1), Visibility::Hidden),
        ]);
        assert_eq!(state.get(number(1)), Some(Visibility::Hidden));
        assert_eq!(state.get(number(2)), Some(Visibility::Discoverable));
        assert_eq!(state.get(number(3)), Some(Visibility::Discoverable));
        assert_eq!(state.get(number(4)), Some(Visibility::Hidden));
        assert_eq!(
            state.counts,
            Counts {
                discoverable: 2,
                hidden: 2
            }
        );
        assert!(state.base.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn fold_copies_only_when_a_build_holds_the_vector() {
        let mut state = State::default();
        state.apply(&[Op::Add(number(1)), Op::Hide(number(2))]);
        state.fold();
        let held = Arc::clone(&state.base);
        state.apply(&[Op::Remove(number(1))]);
        state.fold();
        assert_eq!(held.len(), 2, "a build's view does not change under it");
        assert_eq!(state.base.len(), 1);
        assert_eq!(state.get(number(2)), Some(Visibility::Hidden));
    }
}
