//! Epoch rotation: which per-epoch artefacts are live, and the task that builds and retires them.
//!
//! What a protocol mode builds per epoch is behind [`EpochArtefact`]: the hashed mode's
//! `MatchIndex` (`store/index.rs`) implements it, and a second mode (the private mode's set)
//! implements it for its own structure and runs its own [`Rotator`] over the same registry;
//! nothing here knows which mode it serves.
//!
//! At any moment the live set holds the current epoch's artefact, the previous epoch's during the
//! grace period after a rotation, and the next epoch's once it has been built ahead of time (a
//! lead before the epoch starts). Requests pick an artefact by the epoch they name; anything else
//! is refused with the current epoch so the client can retry at once.
//!
//! Artefacts are built whole only for a new epoch (and after a bulk replace of the registry).
//! Between builds they follow the registry change by change: [`LiveIndexes`] is a
//! [`ChangeSink`], so the registry hands it every change under its write lock and the change is
//! in every live artefact before the write is answered. A build reads the registry at one point
//! and, from that same point, the changes that land while it runs are kept in a journal; the
//! built artefact takes them (most without the lock, the last few under it) and is installed
//! under the lock that orders changes, so no change is lost or applied twice across a build or
//! a swap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::clock::Clock;
use crate::domain::{Epoch, EpochSchedule, ServerSecret};
use crate::metrics::{Metrics, RotatorMetrics};
use crate::store::registry::{ChangeSink, Discoverability, DiscoverableNumbers, Registry};

/// A build's journal is taken in rounds without the lock while it holds more than this many
/// changes; the rest is applied under the lock, where it delays writes.
const CATCH_UP_UNDER_LOCK: usize = 256;

/// What a protocol mode builds for one epoch from the registry's discoverable numbers, and the
/// rotation task keeps live: built whole once, then changed in place.
pub trait EpochArtefact: Send + Sync + Sized + 'static {
    /// What a build needs besides the keys and the numbers (the private set's target
    /// false-positive rate; nothing for the match index).
    type Config: Clone + Send + Sync + 'static;
    /// Builds the artefact for `epoch`; its keys come from `secret` (replicas sharing the secret
    /// build the same artefact without talking). Runs on a blocking thread.
    fn build(
        config: &Self::Config,
        secret: &ServerSecret,
        epoch: Epoch,
        numbers: &DiscoverableNumbers,
    ) -> Result<Self, BuildError>;
    /// Applies `changes` in order, in place, while requests read the artefact. Calls never
    /// overlap (the live set serialises them); each costs work in proportion to the changes.
    fn apply(&self, secret: &ServerSecret, changes: &[Discoverability], base: ChangeBase);
    /// Entries it holds (for stats and the `index_entries` gauge).
    fn entries(&self) -> usize;
    /// Heap bytes it holds (for stats).
    fn heap_bytes(&self) -> usize;
    /// Whether the changes since its build have worn it enough that a fresh build of the same
    /// epoch would answer noticeably faster; the rotator then builds one in the background and
    /// swaps it in, the way it builds a new epoch (changes stay visible at once throughout).
    fn worn(&self) -> bool {
        false
    }
}

/// Why an artefact could not be built (the rotator logs it and tries again on its next pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The epoch's key could not be derived.
    #[error("key derivation failed")]
    Key,
    /// A number could not be evaluated (no valid E.164 text is refused; a bug).
    #[error("evaluation failed")]
    Evaluation,
    /// A part could not be encoded (a bug).
    #[error("encoding failed")]
    Coding,
}

impl crate::log_safe::LogSafe for BuildError {}

/// How the changes given to an artefact relate to what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeBase {
    /// It was built from the registry state the changes follow: each is a real step (a number
    /// becoming discoverable is not held yet, one leaving it is).
    Exact,
    /// It was built before the registry was replaced in bulk and waits for its rebuild: a
    /// change may repeat what it holds, so apply them as set operations.
    Stale,
}

/// A live artefact and what it was built from.
pub struct LiveIndex<A> {
    /// The artefact.
    pub index: Arc<A>,
    /// The registry's [`local_sequence`](Registry::local_sequence) it was built from; every
    /// change since has been applied to it in place.
    pub built_at: u64,
    /// Seconds the build took.
    pub build_seconds: f64,
    /// The bulk-replace generation it was built in (older ones are rebuilt).
    generation: u64,
}

// Derived `Clone` would ask `A: Clone`; only the `Arc` is cloned.
impl<A> Clone for LiveIndex<A> {
    fn clone(&self) -> Self {
        Self {
            index: Arc::clone(&self.index),
            built_at: self.built_at,
            build_seconds: self.build_seconds,
            generation: self.generation,
        }
    }
}

/// The change side of the live set, behind the one lock that orders changes, builds' catch-up
/// and installs.
#[derive(Default)]
struct Changes {
    /// Bumped by every bulk replace of the registry.
    generation: u64,
    /// Changes that landed since each running build read the registry.
    journals: Vec<Journal>,
    next_build: u64,
}

struct Journal {
    build: u64,
    generation: u64,
    changes: Vec<Discoverability>,
}

impl Changes {
    fn journal(&mut self, build: u64) -> Option<&mut Journal> {
        self.journals.iter_mut().find(|j| j.build == build)
    }

    /// Stops recording for `build` (installed, or dropped unfinished).
    fn close(&mut self, build: u64) {
        self.journals.retain(|j| j.build != build);
    }

    /// How changes relate to an artefact built in `generation`.
    fn base_for(&self, generation: u64) -> ChangeBase {
        if generation == self.generation {
            ChangeBase::Exact
        } else {
            ChangeBase::Stale
        }
    }
}

/// Why a request's epoch cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochRefusal {
    /// The epoch is not current, not in its grace period and not yet built: retry with `current`.
    Unavailable {
        /// The epoch to use instead.
        current: Epoch,
    },
    /// The current epoch's index is not built yet.
    NotReady,
}

/// The timing rules of rotation.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// How time is cut into epochs.
    pub schedule: EpochSchedule,
    /// How long after a rotation the previous epoch is still answered (at most one epoch).
    pub grace_secs: u64,
    /// How long before an epoch starts its index is built.
    pub lead_secs: u64,
}

impl RotationPolicy {
    /// A policy with the grace clamped to one epoch and a lead of a quarter epoch, at most 15 min.
    pub fn new(schedule: EpochSchedule, grace_secs: u64) -> Self {
        let len = schedule.length_secs();
        Self {
            schedule,
            grace_secs: grace_secs.min(len),
            lead_secs: (len / 4).clamp(1, 15 * 60),
        }
    }

    /// The same policy with its artefacts built `lead_secs` ahead (clamped to one epoch): the
    /// private set's build takes minutes at scale, and its key epochs are long.
    pub fn with_lead(self, lead_secs: u64) -> Self {
        Self {
            lead_secs: lead_secs.clamp(1, self.schedule.length_secs()),
            ..self
        }
    }

    /// The epochs that should be live at `now` (unix seconds).
    pub fn wanted(&self, now: u64) -> Vec<Epoch> {
        let current = self.schedule.epoch_at(now);
        let mut wanted = vec![current];
        if current.0 > 0 && now < self.schedule.start(current).saturating_add(self.grace_secs) {
            wanted.push(Epoch(current.0 - 1));
        }
        if now.saturating_add(self.lead_secs) >= self.schedule.end(current) {
            wanted.push(Epoch(current.0 + 1));
        }
        wanted
    }

    /// Seconds from `now` until the live set next changes.
    pub fn next_change_in(&self, now: u64) -> u64 {
        let current = self.schedule.epoch_at(now);
        let start = self.schedule.start(current);
        let end = self.schedule.end(current);
        [
            start.saturating_add(self.grace_secs),
            end.saturating_sub(self.lead_secs),
            end,
        ]
        .into_iter()
        .filter(|t| *t > now)
        .min()
        .map_or(1, |t| t - now)
    }
}

/// The live artefacts of one mode, shared by request handlers (readers) and the rotation task
/// (writer).
pub struct LiveIndexes<A> {
    policy: RotationPolicy,
    /// Keys of every epoch's artefact (changes are fingerprinted with them).
    secret: ServerSecret,
    live: RwLock<BTreeMap<Epoch, LiveIndex<A>>>,
    /// Taken before `live` whenever both are.
    changes: Mutex<Changes>,
    /// Wakes the rotation task after a bulk replace.
    rebuild: tokio::sync::Notify,
}

impl<A> LiveIndexes<A> {
    /// An empty set: not ready until the rotation task builds the current index.
    pub fn new(policy: RotationPolicy, secret: ServerSecret) -> Self {
        Self {
            policy,
            secret,
            live: RwLock::new(BTreeMap::new()),
            changes: Mutex::new(Changes::default()),
            rebuild: tokio::sync::Notify::new(),
        }
    }

    /// The rotation policy.
    pub fn policy(&self) -> RotationPolicy {
        self.policy
    }

    /// The index that answers a request naming `requested` at time `now`.
    pub fn for_request(&self, requested: u64, now: u64) -> Result<Arc<A>, EpochRefusal> {
        let current = self.policy.schedule.epoch_at(now);
        let live = self.live.read();
        let pick = |e: Epoch| live.get(&e).map(|l| Arc::clone(&l.index));
        if requested == current.0 {
            return pick(current).ok_or(EpochRefusal::NotReady);
        }
        let in_grace = requested.checked_add(1) == Some(current.0)
            && now
                < self
                    .policy
                    .schedule
                    .start(current)
                    .saturating_add(self.policy.grace_secs);
        // The next epoch is answered once built, so replicas whose clocks differ slightly agree.
        let is_next = current.0.checked_add(1) == Some(requested);
        if (in_grace || is_next)
            && let Some(index) = pick(Epoch(requested))
        {
            return Ok(index);
        }
        if live.contains_key(&current) {
            Err(EpochRefusal::Unavailable { current })
        } else {
            Err(EpochRefusal::NotReady)
        }
    }

    /// Whether the current epoch's index is live.
    pub fn is_ready(&self, now: u64) -> bool {
        self.live
            .read()
            .contains_key(&self.policy.schedule.epoch_at(now))
    }

    /// A copy of the live set, for stats.
    pub fn snapshot(&self) -> Vec<(Epoch, LiveIndex<A>)> {
        self.live
            .read()
            .iter()
            .map(|(e, l)| (*e, l.clone()))
            .collect()
    }

    fn retain(&self, wanted: &[Epoch]) {
        self.live.write().retain(|e, _| wanted.contains(e));
    }
}

impl<A: EpochArtefact> LiveIndexes<A> {
    /// The wanted epochs with no artefact, one built before the last bulk replace, or one
    /// [worn](EpochArtefact::worn) by changes.
    fn missing(&self, wanted: &[Epoch]) -> Vec<Epoch> {
        let generation = self.changes.lock().generation;
        let live = self.live.read();
        wanted
            .iter()
            .copied()
            .filter(|e| {
                live.get(e)
                    .is_none_or(|l| l.generation < generation || l.index.worn())
            })
            .collect()
    }

    /// Starts a journal for a build of `epoch`. Call it at the point the build reads the
    /// registry (inside [`Registry::discoverable_numbers_with`]), so the journal holds exactly
    /// the changes the build's view lacks.
    fn open_build(self: &Arc<Self>, epoch: Epoch) -> Build<A> {
        let mut changes = self.changes.lock();
        let build = changes.next_build;
        changes.next_build += 1;
        let generation = changes.generation;
        changes.journals.push(Journal {
            build,
            generation,
            changes: Vec::new(),
        });
        Build {
            indexes: Arc::clone(self),
            id: build,
            epoch,
        }
    }
}

impl<A: EpochArtefact> ChangeSink for LiveIndexes<A> {
    fn discoverability_changed(&self, changes: &[Discoverability]) {
        let mut state = self.changes.lock();
        for live in self.live.read().values() {
            live.index
                .apply(&self.secret, changes, state.base_for(live.generation));
        }
        for journal in &mut state.journals {
            journal.changes.extend_from_slice(changes);
        }
    }

    fn replaced(&self) {
        self.changes.lock().generation += 1;
        self.rebuild.notify_one();
    }
}

/// A build in progress: its journal stays open until [`Build::install`], or until it is dropped
/// (a failed build), so a journal never outlives its build.
struct Build<A: EpochArtefact> {
    indexes: Arc<LiveIndexes<A>>,
    id: u64,
    epoch: Epoch,
}

impl<A: EpochArtefact> Build<A> {
    /// Brings `index` up to date with the journal and makes it live. Large journals are taken
    /// in rounds without the lock (the index is not shared yet, and the registry only appends
    /// to the journal meanwhile); the last round and the swap happen under the lock, so no
    /// change falls between the journal and the live set.
    fn install(self, index: A, built_at: u64, build_seconds: f64) -> LiveIndex<A> {
        let secret = &self.indexes.secret;
        loop {
            let mut changes = self.indexes.changes.lock();
            // Only this build closes its journal; were it gone, generation 0 gets it rebuilt.
            let (generation, pending) = changes.journal(self.id).map_or((0, Vec::new()), |j| {
                (j.generation, std::mem::take(&mut j.changes))
            });
            let base = changes.base_for(generation);
            if pending.len() > CATCH_UP_UNDER_LOCK {
                drop(changes);
                index.apply(secret, &pending, base);
                continue;
            }
            index.apply(secret, &pending, base);
            let live = LiveIndex {
                index: Arc::new(index),
                built_at,
                build_seconds,
                generation,
            };
            changes.close(self.id);
            self.indexes.live.write().insert(self.epoch, live.clone());
            return live;
        }
    }
}

impl<A: EpochArtefact> Drop for Build<A> {
    fn drop(&mut self) {
        self.indexes.changes.lock().close(self.id);
    }
}

/// The background task that keeps one mode's [`LiveIndexes`] in step with the clock: builds the
/// epochs that come due (and rebuilds after a bulk replace), retires the past ones.
pub struct Rotator<A: EpochArtefact> {
    indexes: Arc<LiveIndexes<A>>,
    registry: Arc<Registry>,
    clock: Clock,
    metrics: RotatorMetrics,
    config: A::Config,
    /// What the log lines call the artefact ("match index", "private set").
    name: &'static str,
}

impl<A: EpochArtefact> Rotator<A> {
    /// A rotator for `indexes`, which from now on follow every change of `registry`.
    pub fn new(
        indexes: Arc<LiveIndexes<A>>,
        registry: Arc<Registry>,
        clock: Clock,
        metrics: RotatorMetrics,
        config: A::Config,
        name: &'static str,
    ) -> Self {
        registry.subscribe(Arc::clone(&indexes) as Arc<dyn ChangeSink>);
        Self {
            indexes,
            registry,
            clock,
            metrics,
            config,
            name,
        }
    }

    /// The hashed mode's rotator: match indexes, with the `index_*` gauges.
    pub fn hashed(
        indexes: Arc<LiveIndexes<A>>,
        registry: Arc<Registry>,
        clock: Clock,
        metrics: &Metrics,
        config: A::Config,
    ) -> Self {
        Self::new(
            indexes,
            registry,
            clock,
            metrics.hashed_rotator(),
            config,
            "match index",
        )
    }

    /// Runs until the task is dropped: builds what is missing, retires what is past.
    pub async fn run(self) {
        loop {
            self.step().await;
            let now = self.clock.now_secs();
            let wait = Duration::from_secs(self.indexes.policy.next_change_in(now))
                .min(self.clock.poll_interval());
            tokio::select! {
                () = self.indexes.rebuild.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: bring the live set to what the policy wants at the current time.
    pub async fn step(&self) {
        self.refresh(false).await;
    }

    /// Builds only the current epoch's index if it is missing: what a restart needs before
    /// serving; the next [`Rotator::step`] builds the rest while requests are answered.
    pub async fn warm_up(&self) {
        self.refresh(true).await;
    }

    async fn refresh(&self, current_only: bool) {
        let now = self.clock.now_secs();
        let policy = self.indexes.policy;
        let wanted = policy.wanted(now);
        let current = policy.schedule.epoch_at(now);
        let mut missing = self.indexes.missing(&wanted);
        if current_only {
            missing.retain(|e| *e == current);
        }
        // The current epoch first, and each index installed as soon as it is built: after a
        // restart the service is ready once the one index it needs exists.
        missing.sort_by_key(|e| *e != current);
        for epoch in missing {
            self.build(epoch).await;
        }
        // Re-read the time: a long build may have crossed a boundary.
        let now = self.clock.now_secs();
        self.indexes.retain(
            &policy
                .wanted(now)
                .into_iter()
                .chain(wanted)
                .collect::<Vec<_>>(),
        );
        self.export_gauges(now);
    }

    /// Builds `epoch`'s artefact from the registry, catches it up with the changes made
    /// meanwhile and installs it.
    async fn build(&self, epoch: Epoch) {
        let (registry, indexes) = (Arc::clone(&self.registry), Arc::clone(&self.indexes));
        let opened = tokio::task::spawn_blocking(move || {
            registry.discoverable_numbers_with(|| indexes.open_build(epoch))
        })
        .await;
        let (numbers, built_at, build) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                crate::safe_error!("build failed", artefact = self.name, error = err);
                return;
            }
        };
        let secret = self.indexes.secret.clone();
        let config = self.config.clone();
        let built = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let index = A::build(&config, &secret, epoch, &numbers);
            // The registry may fold its vector again once no build reads it.
            drop(numbers);
            index.map(|index| build.install(index, built_at, started.elapsed().as_secs_f64()))
        })
        .await;
        match built {
            Ok(Ok(live)) => {
                self.metrics.build_seconds.observe(live.build_seconds);
                crate::safe_info!(
                    "built",
                    artefact = self.name,
                    epoch = epoch.0,
                    entries = live.index.entries(),
                    built_at_local_sequence = live.built_at,
                    seconds = live.build_seconds,
                );
            }
            Ok(Err(err)) => crate::safe_error!("build failed", artefact = self.name, error = err),
            Err(err) => crate::safe_error!("build failed", artefact = self.name, error = err),
        }
    }

    fn export_gauges(&self, now: u64) {
        let current = self.indexes.policy.schedule.epoch_at(now);
        self.metrics.current_epoch.set(current.0 as i64);
        self.metrics
            .ready
            .set(i64::from(self.indexes.is_ready(now)));
        let snapshot = self.indexes.snapshot();
        self.metrics.entries.set(
            snapshot
                .iter()
                .find(|(e, _)| *e == current)
                .map_or(0, |(_, l)| l.index.entries() as i64),
        );
        self.metrics.live.set(snapshot.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::MatchIndex;
    use std::num::NonZeroU64;

    fn policy(len: u64, grace: u64) -> RotationPolicy {
        RotationPolicy::new(EpochSchedule::new(NonZeroU64::new(len).unwrap()), grace)
    }

    #[test]
    fn wanted_epochs_follow_grace_and_lead() {
        let p = policy(100, 10);
        assert_eq!(p.lead_secs, 25);
        assert_eq!(p.wanted(1_005), vec![Epoch(10), Epoch(9)]);
        assert_eq!(p.wanted(1_010), vec![Epoch(10)]);
        assert_eq!(p.wanted(1_075), vec![Epoch(10), Epoch(11)]);
        assert_eq!(p.next_change_in(1_005), 5);
        assert_eq!(p.next_change_in(1_010), 65);
        assert_eq!(p.next_change_in(1_080), 20);
    }

    #[test]
    fn grace_is_clamped_to_one_epoch() {
        assert_eq!(policy(60, 3_600).grace_secs, 60);
    }

    #[test]
    fn requests_pick_the_right_index() {
        let p = policy(100, 10);
        let live = Arc::new(LiveIndexes::new(p, ServerSecret::from_bytes([0; 32])));
        let salt = crate::domain::Salt::from_bytes([0; 32]);
        assert_eq!(
            live.for_request(10, 1_005).err(),
            Some(EpochRefusal::NotReady)
        );
        for e in [9, 10, 11] {
            live.open_build(Epoch(e))
                .install(MatchIndex::build(Epoch(e), &salt, &[]), 1, 0.0);
        }
        assert_eq!(live.for_request(10, 1_005).unwrap().epoch(), Epoch(10));
        assert_eq!(live.for_request(9, 1_005).unwrap().epoch(), Epoch(9));
        assert_eq!(
            live.for_request(9, 1_010).err(),
            Some(EpochRefusal::Unavailable { current: Epoch(10) })
        );
        assert_eq!(live.for_request(11, 1_005).unwrap().epoch(), Epoch(11));
        for bad in [0, 8, 12, u64::MAX] {
            assert_eq!(
                live.for_request(bad, 1_005).err(),
                Some(EpochRefusal::Unavailable { current: Epoch(10) })
            );
        }
    }

    #[tokio::test]
    async fn an_index_worn_by_inserts_is_rebuilt_and_keeps_every_change() {
        use crate::domain::Fingerprint;
        use crate::store::registry::Op;
        let dir = tempfile::tempdir().unwrap();
        let (registry, _) = Registry::open(dir.path()).unwrap();
        let registry = Arc::new(registry);
        let secret = ServerSecret::from_bytes([9; 32]);
        let p = policy(100, 0);
        let indexes = Arc::new(LiveIndexes::<MatchIndex>::new(p, secret.clone()));
        let clock = Clock::manual(1_010);
        let metrics = Arc::new(Metrics::new().unwrap());
        let rotator = Rotator::hashed(
            Arc::clone(&indexes),
            Arc::clone(&registry),
            clock,
            &metrics,
            (),
        );
        rotator.step().await;
        let first = indexes.snapshot()[0].1.clone();
        // Built empty: one bucket and no overflow table, so inserts past its twelve slots go to
        // the spill until the index counts as worn.
        let numbers = crate::tools::generate::numbers(200, 4);
        let ops: Vec<Op> = numbers.iter().map(|n| Op::Add(*n)).collect();
        registry.apply(&ops).unwrap();
        assert!(first.index.worn() && first.index.spilled() > 64);
        rotator.step().await;
        let rebuilt = indexes.snapshot()[0].1.clone();
        assert!(!Arc::ptr_eq(&first.index, &rebuilt.index), "swapped");
        assert!(!rebuilt.index.worn());
        assert_eq!(rebuilt.index.spilled(), 0);
        assert!(rebuilt.built_at > first.built_at);
        let salt = secret.salt(Epoch(10));
        assert!(
            numbers
                .iter()
                .all(|n| rebuilt.index.contains(Fingerprint::compute(&salt, *n)))
        );
        // A fresh index is left alone.
        rotator.step().await;
        assert!(Arc::ptr_eq(&rebuilt.index, &indexes.snapshot()[0].1.index));
    }

    mod follows_the_registry {
        use super::*;
        use crate::domain::{E164, Fingerprint};
        use crate::store::registry::{Op, Visibility};
        use proptest::prelude::*;
        use std::collections::HashMap;

        const NUMBERS: u8 = 24;

        fn number(i: u8) -> E164 {
            E164::from_u64(15_550_000_000 + u64::from(i)).unwrap()
        }

        #[derive(Debug, Clone)]
        enum Step {
            /// Add (0), hide (1) or remove (2) a number.
            Change(u8, u8),
            /// Read the registry for a build of an epoch (the build runs later).
            StartBuild(u64),
            /// Build and install the `k`-th build in progress, or abandon it.
            FinishBuild(usize, bool),
            /// Retire every live index but this epoch's.
            Retire(u64),
            /// Fold the registry's log into a snapshot.
            Compact,
            /// Import one number in bulk (replaces the registry's state).
            Import(u8, bool),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                6 => (0u8..3, 0..NUMBERS).prop_map(|(k, i)| Step::Change(k, i)),
                2 => (0u64..3).prop_map(Step::StartBuild),
                2 => (0usize..4, proptest::bool::weighted(0.85))
                    .prop_map(|(k, ok)| Step::FinishBuild(k, ok)),
                1 => (0u64..3).prop_map(Step::Retire),
                1 => Just(Step::Compact),
                1 => (0..NUMBERS, any::<bool>()).prop_map(|(i, d)| Step::Import(i, d)),
            ]
        }

        /// A scratch directory where fsync is cheap when the machine has a RAM disk.
        fn scratch() -> tempfile::TempDir {
            tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Changes, builds that read the registry before changes and install after them,
            /// abandoned builds, swaps, retirements, compactions and bulk replaces, in any
            /// order: every live index that is not waiting for a rebuild answers exactly like
            /// the model set, for every number, after every step.
            #[test]
            fn live_indexes_answer_like_the_registry(steps in proptest::collection::vec(step(), 1..50)) {
                let dir = scratch();
                let (registry, _) = Registry::open(dir.path()).unwrap();
                let registry = Arc::new(registry.with_compact_bytes(300));
                let secret = ServerSecret::from_bytes([7; 32]);
                let indexes = Arc::new(LiveIndexes::<MatchIndex>::new(policy(100, 10), secret.clone()));
                registry.subscribe(Arc::clone(&indexes) as Arc<dyn ChangeSink>);
                let mut model: HashMap<u8, Visibility> = HashMap::new();
                let mut building = Vec::new();
                for step in steps {
                    match step {
                        Step::Change(kind, i) => {
                            let n = number(i);
                            let op = match kind { 0 => Op::Add(n), 1 => Op::Hide(n), _ => Op::Remove(n) };
                            registry.apply(&[op]).unwrap();
                            match kind {
                                0 => { model.insert(i, Visibility::Discoverable); }
                                1 => { model.insert(i, Visibility::Hidden); }
                                _ => { model.remove(&i); }
                            }
                        }
                        Step::StartBuild(e) => {
                            building.push(registry.discoverable_numbers_with(|| indexes.open_build(Epoch(e))));
                        }
                        Step::FinishBuild(k, succeeds) => {
                            if !building.is_empty() {
                                let (numbers, at, build) = building.remove(k % building.len());
                                if succeeds {
                                    let index = <MatchIndex as EpochArtefact>::build(&(), &secret, build.epoch, &numbers).unwrap();
                                    drop(numbers);
                                    build.install(index, at, 0.0);
                                }
                            }
                        }
                        Step::Retire(keep) => indexes.retain(&[Epoch(keep)]),
                        Step::Compact => registry.compact().unwrap(),
                        Step::Import(i, discoverable) => {
                            let v = if discoverable { Visibility::Discoverable } else { Visibility::Hidden };
                            registry.import(&[(number(i), v)]).unwrap();
                            model.insert(i, v);
                        }
                    }
                    let generation = indexes.changes.lock().generation;
                    for (epoch, live) in indexes.snapshot() {
                        if live.generation < generation {
                            continue; // waiting for its rebuild
                        }
                        let salt = secret.salt(epoch);
                        for i in 0..NUMBERS {
                            let want = model.get(&i) == Some(&Visibility::Discoverable);
                            let got = live.index.contains(Fingerprint::compute(&salt, number(i)));
                            prop_assert_eq!(got, want, "number {} in epoch {}", i, epoch.0);
                        }
                        prop_assert_eq!(
                            live.index.len(),
                            model.values().filter(|v| **v == Visibility::Discoverable).count()
                        );
                    }
                }
                drop(building);
                prop_assert!(indexes.changes.lock().journals.is_empty(), "no journal outlives its build");
            }
        }
    }
}
