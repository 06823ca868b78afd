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
//! is refused with the current epoch so the client can retry at once. Artefacts are rebuilt whole
//! when the registry changes and swapped in atomically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::clock::Clock;
use crate::domain::{Epoch, EpochSchedule, ServerSecret};
use crate::metrics::Metrics;
use crate::store::registry::{DiscoverableNumbers, Registry};

/// What a protocol mode builds for one epoch from the registry's discoverable numbers, and the
/// rotation task keeps live: immutable once built, swapped whole.
pub trait EpochArtefact: Send + Sync + Sized + 'static {
    /// Builds the artefact for `epoch`; its keys come from `secret` (replicas sharing the secret
    /// build the same artefact without talking). Runs on a blocking thread.
    fn build(secret: &ServerSecret, epoch: Epoch, numbers: &DiscoverableNumbers) -> Self;
    /// Entries it holds (for stats and the `index_entries` gauge).
    fn entries(&self) -> usize;
    /// Heap bytes it holds (for stats).
    fn heap_bytes(&self) -> usize;
}

/// A live artefact and what it was built from.
pub struct LiveIndex<A> {
    /// The artefact.
    pub index: Arc<A>,
    /// The registry's [`local_sequence`](Registry::local_sequence) it reflects.
    pub registry_sequence: u64,
    /// Seconds the build took.
    pub build_seconds: f64,
}

// Derived `Clone` would ask `A: Clone`; only the `Arc` is cloned.
impl<A> Clone for LiveIndex<A> {
    fn clone(&self) -> Self {
        Self {
            index: Arc::clone(&self.index),
            registry_sequence: self.registry_sequence,
            build_seconds: self.build_seconds,
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
    live: RwLock<BTreeMap<Epoch, LiveIndex<A>>>,
}

impl<A> LiveIndexes<A> {
    /// An empty set: not ready until the rotation task builds the current index.
    pub fn new(policy: RotationPolicy) -> Self {
        Self {
            policy,
            live: RwLock::new(BTreeMap::new()),
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

    fn install(&self, epoch: Epoch, built: LiveIndex<A>) {
        self.live.write().insert(epoch, built);
    }

    fn retain(&self, wanted: &[Epoch]) {
        self.live.write().retain(|e, _| wanted.contains(e));
    }

    fn stale(&self, wanted: &[Epoch], sequence: u64) -> Vec<Epoch> {
        let live = self.live.read();
        wanted
            .iter()
            .copied()
            .filter(|e| live.get(e).is_none_or(|l| l.registry_sequence < sequence))
            .collect()
    }
}

/// The background task that keeps one mode's [`LiveIndexes`] in step with the clock and the
/// registry.
pub struct Rotator<A> {
    /// Where artefacts are installed.
    pub indexes: Arc<LiveIndexes<A>>,
    /// Source of registered numbers.
    pub registry: Arc<Registry>,
    /// Source of salts.
    pub secret: ServerSecret,
    /// Time.
    pub clock: Clock,
    /// Where build figures go.
    pub metrics: Arc<Metrics>,
}

impl<A: EpochArtefact> Rotator<A> {
    /// Runs until the task is dropped: builds what is missing or stale, retires what is past.
    pub async fn run(self) {
        let changed = self.registry.changed();
        loop {
            self.step().await;
            let now = self.clock.now_secs();
            let wait = Duration::from_secs(self.indexes.policy.next_change_in(now))
                .min(self.clock.poll_interval());
            tokio::select! {
                () = changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: bring the live set to what the policy wants at the current time.
    pub async fn step(&self) {
        self.refresh(false).await;
    }

    /// Builds only the current epoch's index if it is missing or stale: what a restart needs
    /// before serving; the next [`Rotator::step`] builds the rest while requests are answered.
    pub async fn warm_up(&self) {
        self.refresh(true).await;
    }

    async fn refresh(&self, current_only: bool) {
        let now = self.clock.now_secs();
        let policy = self.indexes.policy;
        let wanted = policy.wanted(now);
        let sequence = self.registry.local_sequence();
        let mut stale = self.indexes.stale(&wanted, sequence);
        if current_only {
            stale.retain(|e| *e == policy.schedule.epoch_at(now));
        }
        if !stale.is_empty() {
            // The current epoch first, and each index installed as soon as it is built: after
            // a restart the service is ready once the one index it needs exists.
            let current = policy.schedule.epoch_at(now);
            stale.sort_by_key(|e| *e != current);
            let registry = Arc::clone(&self.registry);
            let numbers =
                tokio::task::spawn_blocking(move || registry.discoverable_numbers()).await;
            let (numbers, sequence) = match numbers {
                Ok(got) => got,
                Err(err) => {
                    crate::safe_error!("match index build failed", error = err);
                    return;
                }
            };
            for epoch in stale {
                let (numbers, secret) = (numbers.clone(), self.secret.clone());
                let built = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let index = A::build(&secret, epoch, &numbers);
                    LiveIndex {
                        index: Arc::new(index),
                        registry_sequence: sequence,
                        build_seconds: started.elapsed().as_secs_f64(),
                    }
                })
                .await;
                match built {
                    Ok(live) => {
                        self.metrics.index_build_seconds.observe(live.build_seconds);
                        crate::safe_info!(
                            "match index built",
                            epoch = epoch.0,
                            entries = live.index.entries(),
                            registry_sequence = live.registry_sequence,
                            seconds = live.build_seconds,
                        );
                        self.indexes.install(epoch, live);
                    }
                    Err(err) => crate::safe_error!("match index build failed", error = err),
                }
            }
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
        let current = policy.schedule.epoch_at(now);
        self.metrics.current_epoch.set(current.0 as i64);
        self.metrics
            .ready
            .set(i64::from(self.indexes.is_ready(now)));
        let snapshot = self.indexes.snapshot();
        self.metrics.index_entries.set(
            snapshot
                .iter()
                .find(|(e, _)| *e == current)
                .map_or(0, |(_, l)| l.index.entries() as i64),
        );
        self.metrics.live_indexes.set(snapshot.len() as i64);
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
        let live = LiveIndexes::new(p);
        let salt = crate::domain::Salt::from_bytes([0; 32]);
        assert_eq!(
            live.for_request(10, 1_005).err(),
            Some(EpochRefusal::NotReady)
        );
        for e in [9, 10, 11] {
            live.install(
                Epoch(e),
                LiveIndex {
                    index: Arc::new(MatchIndex::build(Epoch(e), &salt, &[])),
                    registry_sequence: 1,
                    build_seconds: 0.0,
                },
            );
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
}
