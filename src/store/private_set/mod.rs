//! The private mode's per-key-epoch artefact: the registered set clients download.
//!
//! A build computes the OPRF output of every discoverable number under the key epoch's key
//! (the server holds the key, so no blinding), maps each output's set hash into the set's range
//! ([`SetParams`]), sorts, and Golomb-codes each shard (in parallel across cores). Registry
//! changes reach the set through the rotation machinery like the match index's, but are not
//! applied at once: [`EpochArtefact::apply`] only queues them (it runs under the registry's
//! write lock, and an OPRF evaluation costs tens of microseconds), and [`PrivateSet::publish`],
//! called every publish interval by [`run_publisher`], folds the queue into the shards it
//! touches, publishes a new version and records what changed in the [`history`] for deltas.
//!
//! Readers take an `Arc` of the current [`Published`] version: a request never sees half a
//! publication, and a publication never waits for readers.

pub mod history;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;

use crate::clock::Clock;
use crate::domain::oprf::OprfKey;
use crate::domain::{E164, Epoch, ServerSecret};
use crate::metrics::Metrics;
use crate::protocol::gcs;
use crate::protocol::private_set::{SetDelta, SetParams, Tag, set_version, shard_etag};
use crate::store::registry::{Discoverability, DiscoverableNumbers};
use crate::store::rotation::{BuildError, ChangeBase, EpochArtefact, LiveIndexes};

use history::{Entry, History};
pub use history::{HistoryLimits, ShardChange};

/// The private sets of the live key epochs.
pub type PrivateSets = LiveIndexes<PrivateSet>;

/// What a private set is built and kept with.
#[derive(Debug, Clone, Copy)]
pub struct PrivateSetConfig {
    /// The set is sized for a false-positive rate of `1 / inverse_fpr` per lookup.
    pub inverse_fpr: u64,
    /// How much publication history is kept for deltas.
    pub history: HistoryLimits,
}

/// One published version of the set.
#[derive(Debug)]
pub struct Published {
    /// Its version (a hash of the parameters and every shard's ETag).
    pub version: Tag,
    /// Values in all shards.
    pub items: u64,
    /// Every shard, in order.
    pub shards: Vec<Shard>,
}

/// One shard of a published version.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Its Golomb-coded bytes, as served.
    pub bytes: Bytes,
    /// Its ETag.
    pub etag: Tag,
    /// Values it holds.
    pub items: u64,
}

/// What the delta route answers.
#[derive(Debug)]
pub enum DeltaAnswer {
    /// The version named is the current one.
    Current,
    /// The changes from the version named to the current one.
    Delta(SetDelta),
    /// The version named is not kept here.
    Unavailable,
}

/// A queued registry change.
#[derive(Debug, Clone, Copy)]
struct Pending {
    number: E164,
    discoverable: bool,
    base: ChangeBase,
}

/// One key epoch's set: its key, its fixed parameters, the published version, the changes
/// waiting for the next publication and the history of past ones.
pub struct PrivateSet {
    key: OprfKey,
    params: SetParams,
    config: PrivateSetConfig,
    published: RwLock<Arc<Published>>,
    pending: Mutex<Vec<Pending>>,
    /// Written only by [`PrivateSet::publish`], together with `published`.
    history: RwLock<History>,
    /// A publication found its own shard undecodable (a bug): rebuild.
    broken: AtomicBool,
}

/// What a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishStats {
    /// Registry changes it took from the queue.
    pub changes: usize,
    /// Shards it rewrote.
    pub shards: usize,
}

/// A publication that could not be made: the set is marked for a rebuild.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A shard did not decode or encode (a bug: the server wrote it).
    #[error("shard coding failed")]
    Coding,
    /// An OPRF evaluation failed (a bug: E.164 text is always a valid input).
    #[error("OPRF evaluation failed")]
    Evaluation,
}

impl crate::log_safe::LogSafe for PublishError {}

impl PrivateSet {
    /// The key epoch's OPRF key (the evaluation route uses it).
    pub fn key(&self) -> &OprfKey {
        &self.key
    }

    /// The set's parameters.
    pub fn params(&self) -> SetParams {
        self.params
    }

    /// The current published version.
    pub fn published(&self) -> Arc<Published> {
        Arc::clone(&self.published.read())
    }

    /// What changed since version `since`.
    pub fn delta_since(&self, since: Tag) -> DeltaAnswer {
        let history = self.history.read();
        let current = self.published();
        if since == current.version {
            return DeltaAnswer::Current;
        }
        match history.delta(since, &current) {
            Some(delta) => DeltaAnswer::Delta(delta),
            None => DeltaAnswer::Unavailable,
        }
    }

    /// Folds the queued changes into the shards they touch and publishes a new version, if
    /// anything changed. Only one caller at a time ([`run_publisher`]).
    pub fn publish(&self, now: u64) -> Result<PublishStats, PublishError> {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() {
            return Ok(PublishStats {
                changes: 0,
                shards: 0,
            });
        }
        let result = self.publish_changes(&pending, now);
        if result.is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    fn publish_changes(&self, pending: &[Pending], now: u64) -> Result<PublishStats, PublishError> {
        let positions = pending
            .par_iter()
            .map(|change| {
                let output = self
                    .key
                    .output(change.number)
                    .map_err(|_| PublishError::Evaluation)?;
                Ok(self.params.locate(output.set_hash()))
            })
            .collect::<Result<Vec<_>, PublishError>>()?;
        let mut by_shard: BTreeMap<u32, Vec<(u64, &Pending)>> = BTreeMap::new();
        for (located, change) in positions.into_iter().zip(pending) {
            by_shard
                .entry(located.shard)
                .or_default()
                .push((located.value, change));
        }
        let current = self.published();
        let rewritten = by_shard
            .into_par_iter()
            .map(|(shard, changes)| self.rewrite_shard(&current, shard, &changes))
            .collect::<Result<Vec<_>, PublishError>>()?;
        let mut shards = current.shards.clone();
        let mut changes = Vec::new();
        for (shard, change) in rewritten.into_iter().flatten() {
            let index = change.shard as usize;
            shards[index] = shard;
            changes.push(change);
        }
        let stats = PublishStats {
            changes: pending.len(),
            shards: changes.len(),
        };
        if changes.is_empty() {
            return Ok(stats);
        }
        let etags: Vec<Tag> = shards.iter().map(|s| s.etag).collect();
        let next = Published {
            version: set_version(&self.params, &etags),
            items: shards.iter().map(|s| s.items).sum(),
            shards,
        };
        let entry = Entry {
            from: current.version,
            to: next.version,
            at: now,
            changes,
        };
        // History and version move together, so a delta never names a version it lacks.
        let mut history = self.history.write();
        history.push(entry, self.config.history, now);
        *self.published.write() = Arc::new(next);
        Ok(stats)
    }

    /// Applies one shard's changes in order; `None` when they cancel out.
    fn rewrite_shard(
        &self,
        current: &Published,
        shard: u32,
        changes: &[(u64, &Pending)],
    ) -> Result<Option<(Shard, ShardChange)>, PublishError> {
        let old = current
            .shards
            .get(shard as usize)
            .ok_or(PublishError::Coding)?;
        let mut values = gcs::decode(
            &old.bytes,
            self.params.golomb_p,
            self.params.shard_limits(shard, old.items),
        )
        .map_err(|_| PublishError::Coding)?;
        let (added, removed) = net_changes(&values, changes);
        if added.is_empty() && removed.is_empty() {
            return Ok(None);
        }
        crate::protocol::private_set::apply_changes(&mut values, &added, &removed)
            .map_err(|_| PublishError::Coding)?;
        let bytes = gcs::encode(&values, self.params.golomb_p).map_err(|_| PublishError::Coding)?;
        Ok(Some((
            Shard {
                etag: shard_etag(&self.params, shard, &bytes),
                items: values.len() as u64,
                bytes: Bytes::from(bytes),
            },
            ShardChange {
                shard,
                added,
                removed,
            },
        )))
    }
}

/// The values to add and remove (sorted) so that `values` reflects `changes` in order: a
/// number becoming discoverable adds a copy of its value (a stale set only adds one it lacks),
/// one leaving removes a copy if one is held (two numbers may share a value; the other's copy
/// stays).
fn net_changes(values: &[u64], changes: &[(u64, &Pending)]) -> (Vec<u64>, Vec<u64>) {
    let held = |v: u64| {
        let start = values.partition_point(|x| *x < v);
        values[start..].iter().take_while(|x| **x == v).count() as i64
    };
    let mut net: BTreeMap<u64, i64> = BTreeMap::new();
    for (value, change) in changes {
        let now = held(*value) + net.get(value).copied().unwrap_or(0);
        let step = match (change.discoverable, change.base) {
            (true, ChangeBase::Exact) => 1,
            (true, ChangeBase::Stale) if now == 0 => 1,
            (false, _) if now > 0 => -1,
            _ => 0,
        };
        *net.entry(*value).or_default() += step;
    }
    history::split_net(net)
}

impl PrivateSet {
    /// Builds the set of `digits` (E.164 numbers as integers, see [`E164::get`]) for `epoch`,
    /// in parallel across cores: what [`EpochArtefact::build`] does with the registry's view
    /// (benchmarks call it directly).
    pub fn build_from_digits(
        config: &PrivateSetConfig,
        secret: &ServerSecret,
        epoch: Epoch,
        digits: &[u64],
    ) -> Result<Self, BuildError> {
        let key = OprfKey::derive(secret, epoch).map_err(|_| BuildError::Key)?;
        let params = SetParams::for_items(epoch.0, digits.len() as u64, config.inverse_fpr);
        let mut positions = digits
            .par_iter()
            .filter_map(|d| E164::from_u64(*d).ok())
            .map(|number| key.output(number).map(|o| params.position(o.set_hash())))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| BuildError::Evaluation)?;
        positions.par_sort_unstable();
        let shards = encode_shards(&params, &positions)?;
        drop(positions);
        let etags: Vec<Tag> = shards.iter().map(|s| s.etag).collect();
        let published = Published {
            version: set_version(&params, &etags),
            items: shards.iter().map(|s| s.items).sum(),
            shards,
        };
        Ok(Self {
            key,
            params,
            config: *config,
            published: RwLock::new(Arc::new(published)),
            pending: Mutex::new(Vec::new()),
            history: RwLock::new(History::default()),
            broken: AtomicBool::new(false),
        })
    }
}

impl EpochArtefact for PrivateSet {
    type Config = PrivateSetConfig;

    fn build(
        config: &PrivateSetConfig,
        secret: &ServerSecret,
        epoch: Epoch,
        numbers: &DiscoverableNumbers,
    ) -> Result<Self, BuildError> {
        Self::build_from_digits(config, secret, epoch, numbers.as_digits())
    }

    /// Queues the changes for the next publication (the OPRF work happens there, not under
    /// the registry's write lock).
    fn apply(&self, _: &ServerSecret, changes: &[Discoverability], base: ChangeBase) {
        self.pending.lock().extend(changes.iter().map(|c| Pending {
            number: c.number,
            discoverable: c.discoverable,
            base,
        }));
    }

    fn entries(&self) -> usize {
        self.published().items as usize
    }

    fn heap_bytes(&self) -> usize {
        let published = self.published();
        let shards: usize = published.shards.iter().map(|s| s.bytes.len()).sum();
        shards + self.history.read().values() * 8
    }

    /// Worn once it holds more values than its range allows at the target false-positive
    /// rate (it was built with 1/8 room), or after a publication failed: a rebuild sizes the
    /// range for the new count, and clients download the set whole again.
    fn worn(&self) -> bool {
        let capacity = self.params.range / self.config.inverse_fpr.max(1);
        self.published().items > capacity || self.broken.load(Ordering::Relaxed)
    }
}

/// Cuts sorted positions into shards and Golomb-codes each (in parallel).
fn encode_shards(params: &SetParams, positions: &[u64]) -> Result<Vec<Shard>, BuildError> {
    let width = params.shard_width();
    (0..params.shards)
        .into_par_iter()
        .map(|shard| {
            let start = width.saturating_mul(u64::from(shard));
            let end = start.saturating_add(width);
            let from = positions.partition_point(|p| *p < start);
            let to = positions.partition_point(|p| *p < end);
            let values: Vec<u64> = positions[from..to].iter().map(|p| p - start).collect();
            let bytes = gcs::encode(&values, params.golomb_p).map_err(|_| BuildError::Coding)?;
            Ok(Shard {
                etag: shard_etag(params, shard, &bytes),
                items: values.len() as u64,
                bytes: Bytes::from(bytes),
            })
        })
        .collect()
}

/// Publishes every live set's queued changes every `interval`, on a blocking thread.
pub async fn run_publisher(
    sets: Arc<PrivateSets>,
    clock: Clock,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    loop {
        tokio::time::sleep(interval).await;
        for (epoch, live) in sets.snapshot() {
            let now = clock.now_secs();
            let set = Arc::clone(&live.index);
            let started = Instant::now();
            match tokio::task::spawn_blocking(move || set.publish(now)).await {
                Ok(Ok(stats)) if stats.changes > 0 => {
                    let seconds = started.elapsed().as_secs_f64();
                    metrics.private.publish_seconds.observe(seconds);
                    crate::safe_debug!(
                        "private set published",
                        key_epoch = epoch.0,
                        changes = stats.changes,
                        shards = stats.shards,
                        seconds = seconds,
                    );
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => crate::safe_error!(
                    "private set publication failed; rebuilding",
                    key_epoch = epoch.0,
                    error = err,
                ),
                Err(err) => crate::safe_error!("private set publication failed", error = err),
            }
        }
    }
}

#[cfg(test)]
mod tests;
