//! Which numbers the change traffic touches, and the state each changed number should end in.
//!
//! Numbers sit in one of three pools while settled: `fresh` (known not registered: adds),
//! `discoverable` (the generated registry's numbers, and numbers this run added and saw
//! discoverable: removes and hides) and `hidden` (numbers this run hid and saw hidden: an add
//! of one is an unhide). A picked number leaves its pool and is *in flight* until the poller
//! sees its expected state ([`Ledger::settle`], back to the pool of that state) or gives up on
//! it ([`Ledger::abandon`], never used again): a number is never changed twice at once, so each
//! change's latency is unambiguous and no request names a number twice.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::E164;

/// Relative weights of adds, removes and hides: `ADD:REMOVE:HIDE`, e.g. `2:1:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeMix {
    /// Weight of adds (an add of a number this run hid is an unhide).
    pub add: u32,
    /// Weight of removes.
    pub remove: u32,
    /// Weight of hides.
    pub hide: u32,
}

impl Default for ChangeMix {
    fn default() -> Self {
        Self {
            add: 2,
            remove: 1,
            hide: 1,
        }
    }
}

impl std::str::FromStr for ChangeMix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [add, remove, hide] = parts.as_slice() else {
            return Err("expected ADD:REMOVE:HIDE weights, e.g. 2:1:1".into());
        };
        let weight = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("bad weight {s:?}: expected a whole number"))
        };
        let mix = Self {
            add: weight(add)?,
            remove: weight(remove)?,
            hide: weight(hide)?,
        };
        if mix.add as u64 + mix.remove as u64 + mix.hide as u64 == 0 {
            return Err("at least one weight must be positive".into());
        }
        Ok(mix)
    }
}

impl std::fmt::Display for ChangeMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.add, self.remove, self.hide)
    }
}

/// What a change does to its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Registers a number that was not registered.
    Add,
    /// Adds a number this run hid.
    Unhide,
    /// Removes a discoverable number.
    Remove,
    /// Hides a discoverable number.
    Hide,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [Kind::Add, Kind::Unhide, Kind::Remove, Kind::Hide];

    /// The state the number is in once the change is applied.
    pub fn expected(self) -> Expected {
        match self {
            Kind::Add | Kind::Unhide => Expected::Discoverable,
            Kind::Remove => Expected::Absent,
            Kind::Hide => Expected::Hidden,
        }
    }

    /// The admin request's list the number goes in.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Add | Kind::Unhide => "add",
            Kind::Remove => "remove",
            Kind::Hide => "hide",
        }
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unhide => "unhide",
            other => other.field(),
        }
    }
}

/// The registry state of a changed number, as this run expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Registered and discoverable.
    Discoverable,
    /// Registered and hidden.
    Hidden,
    /// Not registered.
    Absent,
    /// Unknown: the change was not acknowledged or never became visible.
    Unknown,
}

impl Expected {
    /// Whether `/v1/discover` should report the number registered.
    pub fn discoverable(self) -> bool {
        self == Expected::Discoverable
    }
}

/// One number's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The number.
    pub number: E164,
    /// What is done to it.
    pub kind: Kind,
}

/// The numbers of the change traffic and the expected state of every changed one.
pub struct Ledger {
    rng: ChaCha8Rng,
    mix: ChangeMix,
    fresh: Vec<E164>,
    discoverable: Vec<E164>,
    hidden: Vec<E164>,
    /// Every number this run changed, with the state it should be in (or end in, if in flight).
    state: HashMap<E164, Expected>,
    /// Numbers picked and not yet settled or abandoned.
    in_flight: usize,
}

impl Ledger {
    /// A ledger drawing adds from `fresh` and removes and hides from `discoverable`; the two
    /// must be disjoint (the caller checked them with the server).
    pub fn new(mix: ChangeMix, fresh: Vec<E164>, discoverable: Vec<E164>, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            mix,
            fresh,
            discoverable,
            hidden: Vec::new(),
            state: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Up to `n` changes on distinct numbers not in flight, kinds drawn from the mix; a kind
    /// whose pool is empty gives way to another. Fewer (or none) once every pool is empty.
    pub fn pick(&mut self, n: usize) -> Vec<Change> {
        let mut picked = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(change) = self.pick_one() else {
                break;
            };
            self.state.insert(change.number, change.kind.expected());
            self.in_flight += 1;
            picked.push(change);
        }
        picked
    }

    fn pick_one(&mut self) -> Option<Change> {
        let total = self.mix.add + self.mix.remove + self.mix.hide;
        let draw = self.rng.random_range(0..total.max(1));
        let wanted = if draw < self.mix.add {
            Kind::Add
        } else if draw < self.mix.add + self.mix.remove {
            Kind::Remove
        } else {
            Kind::Hide
        };
        // The drawn kind first, then the others, so an empty pool does not stop the traffic.
        let order = match wanted {
            Kind::Add | Kind::Unhide => [Kind::Add, Kind::Remove, Kind::Hide],
            Kind::Remove => [Kind::Remove, Kind::Hide, Kind::Add],
            Kind::Hide => [Kind::Hide, Kind::Remove, Kind::Add],
        };
        order.into_iter().find_map(|kind| self.take(kind))
    }

    /// Takes a number for a change of `kind` out of its pool. An add is an unhide half the
    /// time while this run has hidden numbers, or when no fresh number is left.
    fn take(&mut self, kind: Kind) -> Option<Change> {
        let (kind, pool) = match kind {
            Kind::Add | Kind::Unhide => {
                let unhide =
                    !self.hidden.is_empty() && (self.fresh.is_empty() || self.rng.random_bool(0.5));
                if unhide {
                    (Kind::Unhide, &mut self.hidden)
                } else {
                    (Kind::Add, &mut self.fresh)
                }
            }
            Kind::Remove => (Kind::Remove, &mut self.discoverable),
            Kind::Hide => (Kind::Hide, &mut self.discoverable),
        };
        if pool.is_empty() {
            return None;
        }
        let at = self.rng.random_range(0..pool.len());
        Some(Change {
            number: pool.swap_remove(at),
            kind,
        })
    }

    /// The change was seen applied: its number is settled in its new state and may be changed
    /// again (a removed number is not reused: adds draw only fresh numbers).
    pub fn settle(&mut self, change: Change) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match change.kind.expected() {
            Expected::Discoverable => self.discoverable.push(change.number),
            Expected::Hidden => self.hidden.push(change.number),
            Expected::Absent | Expected::Unknown => {}
        }
    }

    /// The change's outcome is unknown (refused, failed, or never seen applied): its number is
    /// never used again.
    pub fn abandon(&mut self, change: Change) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.state.insert(change.number, Expected::Unknown);
    }

    /// The state `number` should be in, if this run changed it.
    pub fn expected(&self, number: E164) -> Option<Expected> {
        self.state.get(&number).copied()
    }

    /// Numbers picked and not yet settled or abandoned.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn numbers(range: std::ops::Range<u64>) -> Vec<E164> {
        range
            .map(|i| E164::from_u64(15_550_000_000 + i).unwrap())
            .collect()
    }

    fn ledger(mix: &str, fresh: usize, discoverable: usize) -> Ledger {
        Ledger::new(
            mix.parse().unwrap(),
            numbers(0..fresh as u64),
            numbers(1_000..1_000 + discoverable as u64),
            7,
        )
    }

    #[test]
    fn mix_parses_weights_and_refuses_junk() {
        let mix: ChangeMix = "2:1:1".parse().unwrap();
        assert_eq!(mix, ChangeMix::default());
        assert_eq!(mix.to_string(), "2:1:1");
        assert_eq!(
            "0:0:3".parse::<ChangeMix>(),
            Ok(ChangeMix {
                add: 0,
                remove: 0,
                hide: 3
            })
        );
        for bad in ["", "1:1", "1:1:1:1", "a:1:1", "-1:1:1", "0:0:0"] {
            assert!(bad.parse::<ChangeMix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_draw_from_the_right_pools_and_expect_the_right_state() {
        let mut ledger = ledger("1:1:1", 100, 100);
        let fresh: HashSet<E164> = numbers(0..100).into_iter().collect();
        let registered: HashSet<E164> = numbers(1_000..1_100).into_iter().collect();
        let picked = ledger.pick(60);
        assert_eq!(picked.len(), 60);
        let distinct: HashSet<E164> = picked.iter().map(|c| c.number).collect();
        assert_eq!(distinct.len(), 60, "no number twice");
        for change in &picked {
            match change.kind {
                Kind::Add => assert!(fresh.contains(&change.number)),
                Kind::Remove | Kind::Hide => assert!(registered.contains(&change.number)),
                Kind::Unhide => panic!("nothing was hidden yet"),
            }
            assert_eq!(ledger.expected(change.number), Some(change.kind.expected()));
        }
        assert_eq!(ledger.in_flight(), 60);
        assert_eq!(Kind::Add.expected(), Expected::Discoverable);
        assert_eq!(Kind::Unhide.expected(), Expected::Discoverable);
        assert_eq!(Kind::Remove.expected(), Expected::Absent);
        assert_eq!(Kind::Hide.expected(), Expected::Hidden);
        assert!(Expected::Discoverable.discoverable());
        assert!(!Expected::Hidden.discoverable() && !Expected::Absent.discoverable());
    }

    #[test]
    fn numbers_in_flight_are_not_picked_again() {
        // Only hides, 10 numbers: after 10 picks every number is in flight.
        let mut ledger = ledger("0:0:1", 0, 10);
        assert_eq!(ledger.pick(15).len(), 10);
        assert!(ledger.pick(1).is_empty());
        assert_eq!(ledger.in_flight(), 10);
    }

    #[test]
    fn settled_hides_become_unhides_and_settled_adds_can_be_hidden() {
        let mut ledger = ledger("0:0:1", 0, 1);
        let hide = ledger.pick(1)[0];
        assert_eq!(hide.kind, Kind::Hide);
        ledger.settle(hide);
        assert_eq!(ledger.expected(hide.number), Some(Expected::Hidden));
        // Only adds are asked for now, and no fresh number exists: the add is an unhide.
        ledger.mix = "1:0:0".parse().unwrap();
        let unhide = ledger.pick(1)[0];
        assert_eq!(
            unhide,
            Change {
                number: hide.number,
                kind: Kind::Unhide
            }
        );
        assert_eq!(unhide.kind.field(), "add");
        assert_eq!(ledger.expected(hide.number), Some(Expected::Discoverable));
        ledger.settle(unhide);
        // Back among the discoverable numbers: a hide can take it again.
        ledger.mix = "0:0:1".parse().unwrap();
        assert_eq!(ledger.pick(1)[0].number, hide.number);
    }

    #[test]
    fn an_empty_pool_gives_way_to_another_kind() {
        // Removes wanted, nothing registered: adds of fresh numbers instead.
        let mut ledger = ledger("0:1:0", 5, 0);
        let picked = ledger.pick(5);
        assert!(picked.iter().all(|c| c.kind == Kind::Add), "{picked:?}");
        assert!(ledger.pick(1).is_empty(), "every pool is empty");
    }

    #[test]
    fn removed_and_abandoned_numbers_are_never_reused() {
        let mut ledger = ledger("0:1:0", 0, 2);
        let first = ledger.pick(1)[0];
        let second = ledger.pick(1)[0];
        ledger.settle(first);
        ledger.abandon(second);
        assert_eq!(ledger.expected(first.number), Some(Expected::Absent));
        assert_eq!(ledger.expected(second.number), Some(Expected::Unknown));
        assert_eq!(ledger.in_flight(), 0);
        ledger.mix = ChangeMix::default();
        assert!(ledger.pick(10).is_empty());
    }

    #[test]
    fn a_long_run_keeps_every_number_in_one_place() {
        // Settle everything picked, many rounds: every number is in exactly one pool or in
        // flight, and the expected state of each matches the pool it sits in.
        let mut ledger = ledger("2:1:1", 500, 500);
        let mut unhides = 0;
        for round in 0..200 {
            let picked = ledger.pick(4);
            unhides += picked.iter().filter(|c| c.kind == Kind::Unhide).count();
            for change in picked {
                if round % 7 == 0 {
                    ledger.abandon(change);
                } else {
                    ledger.settle(change);
                }
            }
            assert_eq!(ledger.in_flight(), 0);
        }
        assert!(
            unhides > 0,
            "hidden numbers are unhidden in the normal course"
        );
        let mut seen = HashSet::new();
        for n in &ledger.discoverable {
            assert!(seen.insert(*n));
            let state = ledger.expected(*n);
            assert!(state.is_none() || state == Some(Expected::Discoverable));
        }
        for n in &ledger.hidden {
            assert!(seen.insert(*n));
            assert_eq!(ledger.expected(*n), Some(Expected::Hidden));
        }
        for n in &ledger.fresh {
            assert!(seen.insert(*n));
            assert_eq!(ledger.expected(*n), None);
        }
    }
}
