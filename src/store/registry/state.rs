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
/// the last fold live in the small `overlay`. A fold merges them into `base` in place, in two
/// linear passes (drop the entries they replace, then merge their new entries from the back)
/// done in bounded steps ([`State::fold_step`]): between two steps `base` is two sorted runs with
/// a gap between them, the frozen overlay answers for every number it holds, and changes keep
/// landing in a fresh `overlay`; so a fold of a 100 M-number registry never holds a lock for
/// more than one step. A `HashMap<E164, Visibility>` would cost about 4× the memory.
///
/// Memory: the overlay is a `BTreeMap` of about 40 B per changed number (a sorted vector of
/// 16 B while it is being folded). It holds the distinct numbers changed since the last fold
/// started, which is at most the fold threshold (`FOLD_OVERLAY_AT`) plus what arrives during
/// one fold and while a build or a snapshot write holds `base` (no fold then: it would copy
/// `base`): rate × (fold time + longest hold). At 5,000 changes/s and a 30 s hold that is
/// 262,144 + 150,000 numbers ≈ 17 MB, plus the frozen one being folded (≈ 4 MB).
#[derive(Clone, Default)]
pub(super) struct State {
    base: Arc<Vec<u64>>,
    /// Number → its new raw entry, or `None` if removed, for changes not yet folded.
    overlay: BTreeMap<u64, Option<u64>>,
    /// The fold in progress, if any: older than `overlay`, newer than `base`.
    folding: Option<Fold>,
    counts: Counts,
}

/// A fold in progress: the overlay it merges, frozen, and how far it got.
#[derive(Clone)]
struct Fold {
    /// (number, its raw entry or [`REMOVED`]), sorted by number.
    frozen: Vec<(u64, u64)>,
    phase: Phase,
}

/// In a frozen overlay: the number is not registered. Never an entry (0 is no E.164 number).
const REMOVED: u64 = 0;

#[derive(Clone)]
enum Phase {
    /// Forward pass dropping every entry of a frozen number: `base[..write]` is done,
    /// `base[read..]` untouched, `base[write..read]` a gap. `key` walks `frozen` alongside;
    /// `hidden` says the walk reached the hidden entries (whose numbers start over).
    Drop {
        read: usize,
        write: usize,
        key: usize,
        hidden: bool,
    },
    /// Backward merge of the frozen entries (`added`, sorted; `added[..next]` still to place):
    /// `base[..read]` untouched, `base[write..]` merged, `base[read..write]` a gap.
    Merge {
        added: Vec<u64>,
        next: usize,
        read: usize,
        write: usize,
    },
}

/// What one [`State::fold_step`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FoldProgress {
    /// No fold in progress: `base` holds every change up to the last [`State::freeze`].
    Done,
    /// More steps to go.
    More,
    /// `base` is shared (a build or a snapshot write holds it) and copying was not allowed.
    Blocked,
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
            folding: None,
            counts: Counts {
                discoverable,
                hidden,
            },
        }
    }

    /// Every entry as of the last [`State::freeze`], shared rather than copied, once no fold
    /// is in progress (what a snapshot writes).
    pub(super) fn folded_snapshot(&self) -> Option<Snapshot> {
        self.folding
            .is_none()
            .then(|| Snapshot::from_sorted(Arc::clone(&self.base)))
    }

    /// The discoverable numbers as of the last [`State::freeze`], shared rather than copied,
    /// once no fold is in progress.
    pub(super) fn folded_discoverable(&self) -> Option<DiscoverableNumbers> {
        self.folding.is_none().then(|| DiscoverableNumbers {
            base: Arc::clone(&self.base),
            len: discoverable_len(&self.base),
        })
    }

    /// Every entry, folded first (copying `base` if it is shared), shared rather than copied.
    pub(super) fn snapshot(&mut self) -> Snapshot {
        self.fold();
        Snapshot::from_sorted(Arc::clone(&self.base))
    }

    pub(super) fn get(&self, number: E164) -> Option<Visibility> {
        self.entry(number.get()).map(visibility_of)
    }

    /// The raw entry of `number`: the newest change to it, else its entry in `base`.
    fn entry(&self, number: u64) -> Option<u64> {
        if let Some(entry) = self.overlay.get(&number) {
            return *entry;
        }
        if let Some(fold) = &self.folding
            && let Ok(at) = fold.frozen.binary_search_by_key(&number, |(n, _)| *n)
        {
            let entry = fold.frozen[at].1;
            return (entry != REMOVED).then_some(entry);
        }
        let (low, high) = self.base_runs();
        base_position(low, number)
            .map(|at| low[at])
            .or_else(|| base_position(high, number).map(|at| high[at]))
    }

    /// `base` as two sorted runs (the second empty when no fold is in progress); a fold's gap
    /// lies between them. Right for every number the frozen overlay does not hold.
    fn base_runs(&self) -> (&[u64], &[u64]) {
        let base = &self.base[..];
        match &self.folding {
            None => (base, &[]),
            Some(Fold {
                phase: Phase::Drop { read, write, .. },
                ..
            }) => (&base[..*write], &base[*read..]),
            Some(Fold {
                phase: Phase::Merge { read, write, .. },
                ..
            }) => (&base[..*read], &base[*write..]),
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

    /// Changes applied and not yet being folded.
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

    /// Merges every change into `base` now, in place: O(len + changes). Copies `base` only if
    /// an index build still holds it (`Arc::make_mut`).
    pub(super) fn fold(&mut self) {
        self.freeze();
        while self.fold_step(usize::MAX, true) == FoldProgress::More {}
    }

    /// Starts folding every change made so far (a fold still in progress is finished first, at
    /// once); changes made from now on go to a fresh overlay. O(changes), no pass over `base`:
    /// the steps do that ([`State::fold_step`]). Once they are done, `base` is the state at
    /// this call.
    pub(super) fn freeze(&mut self) {
        while self.fold_step(usize::MAX, true) == FoldProgress::More {}
        if self.overlay.is_empty() {
            return;
        }
        let frozen: Vec<(u64, u64)> = std::mem::take(&mut self.overlay)
            .into_iter()
            .map(|(number, entry)| (number, entry.unwrap_or(REMOVED)))
            .collect();
        self.folding = Some(Fold {
            frozen,
            phase: Phase::Drop {
                read: 0,
                write: 0,
                key: 0,
                hidden: false,
            },
        });
    }

    /// Moves at most about `budget` entries of the fold in progress. With `copy_if_shared`
    /// false it never copies `base`: it reports [`FoldProgress::Blocked`] instead while a build
    /// holds it.
    pub(super) fn fold_step(&mut self, budget: usize, copy_if_shared: bool) -> FoldProgress {
        let Some(fold) = self.folding.as_mut() else {
            return FoldProgress::Done;
        };
        let base = if copy_if_shared {
            Arc::make_mut(&mut self.base)
        } else {
            match Arc::get_mut(&mut self.base) {
                Some(base) => base,
                None => return FoldProgress::Blocked,
            }
        };
        match &mut fold.phase {
            Phase::Drop {
                read,
                write,
                key,
                hidden,
            } => {
                let end = read.saturating_add(budget).min(base.len());
                let frozen = &fold.frozen;
                while *read < end {
                    let entry = base[*read];
                    if entry & HIDDEN_BIT != 0 && !*hidden {
                        // The hidden entries' numbers start over from the smallest.
                        *hidden = true;
                        *key = 0;
                    }
                    let number = entry & !HIDDEN_BIT;
                    while *key < frozen.len() && frozen[*key].0 < number {
                        *key += 1;
                    }
                    if frozen.get(*key).is_none_or(|(n, _)| *n != number) {
                        base[*write] = entry;
                        *write += 1;
                    }
                    *read += 1;
                }
                if *read == base.len() {
                    base.truncate(*write);
                    let mut added: Vec<u64> = frozen
                        .iter()
                        .map(|(_, entry)| *entry)
                        .filter(|entry| *entry != REMOVED)
                        .collect();
                    added.sort_unstable();
                    let read = base.len();
                    if base.capacity() < read + added.len() {
                        // Reallocating copies `base` (the allocator wipes and frees the old
                        // block): keep slack so that this is rare (see `slack_for`).
                        base.reserve_exact(added.len() + slack_for(read));
                    }
                    base.resize(read + added.len(), 0);
                    fold.phase = Phase::Merge {
                        next: added.len(),
                        added,
                        read,
                        write: base.len(),
                    };
                }
                FoldProgress::More
            }
            Phase::Merge {
                added,
                next,
                read,
                write,
            } => {
                let mut left = budget;
                while *next > 0 && left > 0 {
                    *write -= 1;
                    if *read > 0 && base[*read - 1] > added[*next - 1] {
                        base[*write] = base[*read - 1];
                        *read -= 1;
                    } else {
                        base[*write] = added[*next - 1];
                        *next -= 1;
                    }
                    left -= 1;
                }
                if *next == 0 {
                    self.folding = None;
                    FoldProgress::Done
                } else {
                    FoldProgress::More
                }
            }
        }
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
}

/// Every registration in a folded `base`, sorted by number.
pub(super) fn entries_of(base: &[u64]) -> Vec<(E164, Visibility)> {
    let mut all: Vec<_> = base
        .iter()
        .filter_map(|e| Some((E164::from_u64(e & !HIDDEN_BIT).ok()?, visibility_of(*e))))
        .collect();
    all.sort_unstable_by_key(|(n, _)| *n);
    all
}

/// Room for growth a sorted vector of `len` entries keeps (1/32, at least 4,096 entries): a
/// fold that adds more than the spare capacity reallocates, and a reallocation copies the whole
/// vector (a second one alive meanwhile). Spare capacity costs address space, not memory, until
/// it is written.
pub(super) fn slack_for(len: usize) -> usize {
    (len / 32).max(4096)
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
    if base.capacity() < i + j {
        base.reserve_exact(j + slack_for(i + j));
    }
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
        /// The compact state (sorted vector + overlay, folded at random moments, at once or a
        /// few entries per step with changes landing between the steps) answers exactly like
        /// a map applied with the same operations, and a fold's result is the state at the
        /// moment it was started.
        #[test]
        fn state_agrees_with_a_map(
            ops in proptest::collection::vec((0u8..3, 0u8..40, 0u8..5), 0..200),
        ) {
            let mut state = State::default();
            let mut model: HashMap<E164, Visibility> = HashMap::new();
            // What a live index holds when it only ever follows the reported transitions.
            let mut followed: std::collections::HashSet<E164> = Default::default();
            // The model at the start of the fold in progress, if any.
            let mut frozen: Vec<HashMap<E164, Visibility>> = Vec::new();
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
                match fold {
                    1 => {
                        // A fold in progress is finished first, at once.
                        frozen.clear();
                        let frozen_at = model.clone();
                        state.freeze();
                        if state.folding.is_some() {
                            frozen.push(frozen_at);
                        }
                    }
                    2 | 3 => {
                        let budget = if fold == 2 { 3 } else { 17 };
                        if state.fold_step(budget, false) == FoldProgress::Done
                            && let Some(at) = frozen.pop()
                        {
                            let mut want: Vec<u64> = at
                                .iter()
                                .map(|(n, v)| entry_of(*n, *v))
                                .collect();
                            want.sort_unstable();
                            prop_assert_eq!(&state.base[..], &want[..], "the state at the freeze");
                        }
                    }
                    4 => {
                        state.fold();
                        frozen.clear();
                        prop_assert!(state.overlay.is_empty());
                        prop_assert!(state.folding.is_none());
                        prop_assert!(state.base.windows(2).all(|w| w[0] < w[1]));
                    }
                    _ => {}
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
    fn a_fold_in_steps_never_copies_a_shared_vector() {
        let mut state = State::default();
        state.apply(&[Op::Add(number(1)), Op::Hide(number(2))]);
        state.fold();
        let held = Arc::clone(&state.base);
        state.apply(&[Op::Remove(number(1)), Op::Add(number(3))]);
        state.freeze();
        assert_eq!(state.fold_step(1, false), FoldProgress::Blocked);
        assert!(Arc::ptr_eq(&held, &state.base));
        assert_eq!(state.get(number(1)), None);
        drop(held);
        while state.fold_step(1, false) == FoldProgress::More {}
        assert_eq!(
            state.base[..],
            [number(3).get(), number(2).get() | HIDDEN_BIT]
        );
        assert!(state.folded_discoverable().is_some());
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
