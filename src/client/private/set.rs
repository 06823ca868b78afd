//! The client's copy of the private set: its parameters, version, and every shard with its
//! ETag, item count, Golomb-coded bytes and a [`ShardIndex`] for lookups.
//!
//! Nothing here does I/O: [`super::sync`] fetches, this module checks and keeps. Every shard it
//! keeps hashed to the ETag it was expected to have and decoded within the parameters' bounds;
//! the set only reports a version (and only answers lookups) once every shard is present and
//! the ETags hash to that version, so a half-synced set is never consulted.

use std::sync::Arc;

use crate::protocol::gcs::{self, ShardIndex};
use crate::protocol::private_set::{
    self, MAX_SHARDS, SHARD_ITEMS, SetError, SetManifest, SetParams, ShardDelta, Tag,
};

/// Most values one shard may hold. The server cuts its sets into shards of about
/// [`SHARD_ITEMS`] and rebuilds them after 1/8 growth, so 16 times that is beyond any set the
/// protocol builds; a manifest claiming more is refused before anything is allocated for it.
pub const MAX_SHARD_ITEMS: u64 = 16 * SHARD_ITEMS;
/// Most values a whole set may hold: more than there are phone numbers in use.
pub const MAX_SET_ITEMS: u64 = 1 << 32;
/// Most bytes one shard body may take whatever its parameters say (a real shard is ~170 KiB).
pub const MAX_SHARD_BYTES: u64 = 16 << 20;
/// Largest `max_batch` a manifest may name: bounds the buffers an evaluation request takes.
pub const MAX_BATCH: usize = 1 << 20;
/// Bytes a Golomb-coded set may spend besides its coded values (its count header).
const GCS_HEADER_BYTES: u64 = 16;

/// Most bytes the Golomb coding of `items` sorted values below `limit` with parameter `p` can
/// take: each value has a unary quotient with a stop bit and `p` remainder bits, and the
/// quotients of a sorted list add up to at most `limit >> p`.
pub fn max_gcs_bytes(items: u64, limit: u64, p: u8) -> u64 {
    let bits = items
        .saturating_mul(u64::from(p) + 1)
        .saturating_add(limit.checked_shr(u32::from(p)).unwrap_or(0));
    bits.div_ceil(8).saturating_add(GCS_HEADER_BYTES)
}

/// Most bytes shard `index` of a set with `params` holding `items` values can take.
pub fn max_shard_bytes(params: &SetParams, index: u32, items: u64) -> u64 {
    max_gcs_bytes(items, params.shard_limit(index), params.golomb_p).min(MAX_SHARD_BYTES)
}

/// A manifest that passed every check: its parameters, version, and per shard its ETag and
/// size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedManifest {
    /// The set's parameters.
    pub params: SetParams,
    /// The set's version.
    pub version: Tag,
    /// Per shard: its ETag and item count.
    pub shards: Vec<(Tag, u64)>,
    /// Most elements one evaluation request may carry.
    pub max_batch: usize,
}

impl CheckedManifest {
    /// Checks a manifest read from the network: parameters in range (at most [`MAX_SHARDS`]
    /// shards), tags of 32 hex digits, no shard over [`MAX_SHARD_ITEMS`], no set over
    /// [`MAX_SET_ITEMS`], a usable batch limit.
    pub fn new(manifest: &SetManifest) -> Result<Self, SetError> {
        let params = manifest.params()?;
        let version = private_set::tag_from_hex(&manifest.version)?;
        let mut total = 0u64;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for shard in &manifest.shards {
            if shard.items > MAX_SHARD_ITEMS {
                return Err(SetError::Params);
            }
            total += shard.items;
            shards.push((private_set::tag_from_hex(&shard.etag)?, shard.items));
        }
        if total > MAX_SET_ITEMS || manifest.max_batch == 0 || manifest.max_batch > MAX_BATCH {
            return Err(SetError::Params);
        }
        Ok(Self {
            params,
            version,
            shards,
            max_batch: manifest.max_batch,
        })
    }
}

/// One shard as the client keeps it.
pub struct LocalShard {
    pub(super) etag: Tag,
    pub(super) items: u64,
    pub(super) bytes: Arc<[u8]>,
    index: ShardIndex,
}

impl LocalShard {
    /// Checks `bytes` as shard `index` of a set with `params`: it must hash to `etag`, hold
    /// exactly `items` values, and decode within the shard's bounds.
    pub fn new(
        params: &SetParams,
        index: u32,
        etag: Tag,
        items: u64,
        bytes: Arc<[u8]>,
    ) -> Result<Self, SetError> {
        if items > MAX_SHARD_ITEMS || bytes.len() as u64 > max_shard_bytes(params, index, items) {
            return Err(SetError::Params);
        }
        if private_set::shard_etag(params, index, &bytes) != etag {
            return Err(SetError::EtagMismatch);
        }
        let lookup = ShardIndex::new(
            Arc::clone(&bytes),
            params.golomb_p,
            params.shard_limits(index, items),
        )?;
        if lookup.len() != items {
            return Err(SetError::Params);
        }
        Ok(Self {
            etag,
            items,
            bytes,
            index: lookup,
        })
    }
}

/// The client's copy of the set. Empty until the first sync.
#[derive(Default)]
pub struct LocalSet {
    params: Option<SetParams>,
    /// Some only when every shard is present and their ETags hash to it.
    version: Option<Tag>,
    max_batch: usize,
    shards: Vec<Option<LocalShard>>,
}

impl LocalSet {
    /// The parameters of the set held (or being assembled).
    pub fn params(&self) -> Option<SetParams> {
        self.params
    }

    /// The version held, if the set is complete.
    pub fn version(&self) -> Option<Tag> {
        self.version
    }

    /// The batch limit of the last manifest.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Values held in all shards present.
    pub fn items(&self) -> u64 {
        self.shards.iter().flatten().map(|s| s.items).sum()
    }

    /// Bytes of all shards present.
    pub fn bytes(&self) -> u64 {
        self.shards
            .iter()
            .flatten()
            .map(|s| s.bytes.len() as u64)
            .sum()
    }

    /// Forgets everything and expects the shards of a set with `params`.
    pub fn reset(&mut self, params: SetParams) {
        self.params = Some(params);
        self.version = None;
        self.shards = (0..params.shards).map(|_| None).collect();
    }

    /// Remembers the batch limit of a checked manifest.
    pub fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch;
    }

    /// Shard `index`'s ETag, if it is present.
    pub fn etag(&self, index: u32) -> Option<Tag> {
        self.shard(index).map(|s| s.etag)
    }

    /// Shard `index`'s item count, if it is present.
    pub fn shard_items(&self, index: u32) -> Option<u64> {
        self.shard(index).map(|s| s.items)
    }

    fn shard(&self, index: u32) -> Option<&LocalShard> {
        self.shards.get(index as usize).and_then(Option::as_ref)
    }

    /// Keeps a shard that passed [`LocalShard::new`] for these parameters.
    pub fn put(&mut self, index: u32, shard: LocalShard) -> Result<(), SetError> {
        let slot = self
            .shards
            .get_mut(index as usize)
            .ok_or(SetError::Params)?;
        *slot = Some(shard);
        self.version = None;
        Ok(())
    }

    /// Checks and keeps `bytes` as shard `index`, expected to hash to `etag` and hold `items`.
    pub fn accept(
        &mut self,
        index: u32,
        etag: Tag,
        items: u64,
        bytes: Vec<u8>,
    ) -> Result<(), SetError> {
        let params = self.params.ok_or(SetError::Params)?;
        let shard = LocalShard::new(&params, index, etag, items, bytes.into())?;
        self.put(index, shard)
    }

    /// Forgets shard `index` (to be downloaded again).
    pub fn drop_shard(&mut self, index: u32) {
        if let Some(slot) = self.shards.get_mut(index as usize) {
            *slot = None;
            self.version = None;
        }
    }

    /// Applies one shard's part of a delta: decodes the shard held, applies the changes,
    /// re-encodes it, and keeps it only if it holds the delta's item count and hashes to the
    /// delta's ETag. On any error the shard held is unchanged (the caller drops it and
    /// downloads it instead).
    pub fn apply_delta(&mut self, delta: &ShardDelta) -> Result<(), SetError> {
        let params = self.params.ok_or(SetError::Params)?;
        let held = self.shard(delta.shard).ok_or(SetError::Delta)?;
        if delta.items > MAX_SHARD_ITEMS {
            return Err(SetError::Params);
        }
        let mut values = gcs::decode(
            &held.bytes,
            params.golomb_p,
            params.shard_limits(delta.shard, held.items),
        )?;
        private_set::apply_changes(&mut values, &delta.added, &delta.removed)?;
        if values.len() as u64 != delta.items {
            return Err(SetError::EtagMismatch);
        }
        let bytes = gcs::encode(&values, params.golomb_p)?;
        let shard = LocalShard::new(&params, delta.shard, delta.etag, delta.items, bytes.into())?;
        self.put(delta.shard, shard)
    }

    /// Marks the set complete at `version` if every shard is present and their ETags hash to
    /// it; otherwise it stays incomplete.
    pub fn finish(&mut self, version: Tag) -> Result<(), SetError> {
        let params = self.params.ok_or(SetError::Params)?;
        let etags: Option<Vec<Tag>> = self
            .shards
            .iter()
            .map(|s| s.as_ref().map(|s| s.etag))
            .collect();
        let etags = etags.ok_or(SetError::EtagMismatch)?;
        if private_set::set_version(&params, &etags) != version {
            return Err(SetError::EtagMismatch);
        }
        self.version = Some(version);
        Ok(())
    }

    /// Whether `set_hash` is in the set; `None` while the set is incomplete.
    pub fn contains(&self, set_hash: u64) -> Option<bool> {
        self.version?;
        let params = self.params?;
        let at = params.locate(set_hash);
        self.shard(at.shard).map(|s| s.index.contains(at.value))
    }

    /// The shards, in order (the cache file writes them).
    pub(super) fn shards(&self) -> impl Iterator<Item = Option<&LocalShard>> {
        self.shards.iter().map(Option::as_ref)
    }

    /// A complete set from its parts (the cache file reads one), checked like a download.
    pub(super) fn from_parts(
        params: SetParams,
        version: Tag,
        max_batch: usize,
        shards: Vec<LocalShard>,
    ) -> Result<Self, SetError> {
        if shards.len() != params.shards as usize || params.shards > MAX_SHARDS {
            return Err(SetError::Params);
        }
        let mut set = Self {
            params: Some(params),
            version: None,
            max_batch,
            shards: shards.into_iter().map(Some).collect(),
        };
        set.finish(version)?;
        Ok(set)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::private_set::{ShardInfo, set_version, shard_etag, tag_to_hex};

    /// A set of `values` per shard under `params`, as the server would publish it: the shard
    /// bodies and the manifest.
    pub(crate) fn publish(params: &SetParams, values: &[Vec<u64>]) -> (Vec<Vec<u8>>, SetManifest) {
        let bodies: Vec<Vec<u8>> = values
            .iter()
            .map(|v| gcs::encode(v, params.golomb_p).unwrap())
            .collect();
        let etags: Vec<Tag> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| shard_etag(params, i as u32, b))
            .collect();
        let manifest = SetManifest {
            key_epoch: params.key_epoch,
            key_not_after: "2030-01-01T00:00:00Z".into(),
            version: tag_to_hex(&set_version(params, &etags)),
            items: values.iter().map(|v| v.len() as u64).sum(),
            range: params.range,
            golomb_p: params.golomb_p,
            false_positive_rate: 0.0,
            max_batch: 100,
            shards: etags
                .iter()
                .zip(values)
                .map(|(e, v)| ShardInfo {
                    etag: tag_to_hex(e),
                    items: v.len() as u64,
                })
                .collect(),
        };
        (bodies, manifest)
    }

    pub(crate) fn params() -> SetParams {
        SetParams {
            key_epoch: 4,
            range: 4 << 20,
            shards: 4,
            golomb_p: 12,
        }
    }

    pub(crate) fn sample_values() -> Vec<Vec<u64>> {
        vec![vec![1, 5, 5, 900], vec![], vec![7, 1 << 19], vec![3]]
    }

    /// A complete local set of `values`.
    pub(crate) fn complete(params: &SetParams, values: &[Vec<u64>]) -> LocalSet {
        let (bodies, manifest) = publish(params, values);
        let checked = CheckedManifest::new(&manifest).unwrap();
        let mut set = LocalSet::default();
        set.reset(checked.params);
        set.set_max_batch(checked.max_batch);
        for (i, body) in bodies.into_iter().enumerate() {
            let (etag, items) = checked.shards[i];
            set.accept(i as u32, etag, items, body).unwrap();
        }
        set.finish(checked.version).unwrap();
        set
    }

    /// The set hash that lands on `value` of `shard`.
    fn hash_at(params: &SetParams, shard: u32, value: u64) -> u64 {
        let target = u128::from(params.shard_width() * u64::from(shard) + value);
        // The smallest hash whose (hash · range) >> 64 is the target.
        let hash = (target << 64).div_ceil(u128::from(params.range));
        hash as u64
    }

    #[test]
    fn a_complete_set_answers_lookups_and_an_incomplete_one_does_not() {
        let p = params();
        let mut set = complete(&p, &sample_values());
        assert_eq!(set.items(), 7);
        assert_eq!(set.contains(hash_at(&p, 0, 5)), Some(true));
        assert_eq!(set.contains(hash_at(&p, 2, 1 << 19)), Some(true));
        assert_eq!(set.contains(hash_at(&p, 0, 6)), Some(false));
        assert_eq!(set.contains(hash_at(&p, 1, 5)), Some(false));
        set.drop_shard(1);
        assert_eq!(set.version(), None);
        assert_eq!(set.contains(hash_at(&p, 0, 5)), None);
    }

    #[test]
    fn shards_are_checked_against_their_etag_count_and_bounds() {
        let p = params();
        let (bodies, manifest) = publish(&p, &sample_values());
        let checked = CheckedManifest::new(&manifest).unwrap();
        let mut set = LocalSet::default();
        set.reset(p);
        let (etag, items) = checked.shards[0];
        // Another shard's bytes, a wrong count, a flipped byte.
        assert_eq!(
            set.accept(0, etag, items, bodies[2].clone()),
            Err(SetError::EtagMismatch)
        );
        assert!(set.accept(0, etag, items - 1, bodies[0].clone()).is_err());
        let mut flipped = bodies[0].clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            set.accept(0, etag, items, flipped),
            Err(SetError::EtagMismatch)
        );
        // Bytes beyond what the parameters can need, even with a matching ETag.
        let mut long = bodies[0].clone();
        long.resize(max_shard_bytes(&p, 0, items) as usize + 1, 0);
        let long_etag = shard_etag(&p, 0, &long);
        assert_eq!(set.accept(0, long_etag, items, long), Err(SetError::Params));
        assert_eq!(set.etag(0), None);
        set.accept(0, etag, items, bodies[0].clone()).unwrap();
        assert_eq!(set.etag(0), Some(etag));
        assert_eq!(set.finish(checked.version), Err(SetError::EtagMismatch));
    }

    #[test]
    fn deltas_apply_when_they_reproduce_the_servers_etag() {
        let p = params();
        let mut set = complete(&p, &sample_values());
        let mut next = sample_values();
        next[0] = vec![1, 5, 77, 900];
        next[1] = vec![42];
        let (_, manifest) = publish(&p, &next);
        let checked = CheckedManifest::new(&manifest).unwrap();
        let good = ShardDelta {
            shard: 0,
            etag: checked.shards[0].0,
            items: 4,
            added: vec![77],
            removed: vec![5],
        };
        set.apply_delta(&good).unwrap();
        // A delta whose result does not hash to its ETag is refused and changes nothing.
        let wrong = ShardDelta {
            shard: 1,
            etag: checked.shards[1].0,
            items: 1,
            added: vec![43],
            removed: vec![],
        };
        let before = set.etag(1);
        assert_eq!(set.apply_delta(&wrong), Err(SetError::EtagMismatch));
        assert_eq!(set.etag(1), before);
        let miscounted = ShardDelta {
            items: 2,
            added: vec![42],
            ..wrong.clone()
        };
        assert_eq!(set.apply_delta(&miscounted), Err(SetError::EtagMismatch));
        let removes_missing = ShardDelta {
            removed: vec![9],
            ..wrong.clone()
        };
        assert_eq!(
            set.apply_delta(&removes_missing),
            Err(SetError::RemovalMissing)
        );
        set.apply_delta(&ShardDelta {
            added: vec![42],
            ..wrong
        })
        .unwrap();
        set.finish(checked.version).unwrap();
        assert_eq!(set.contains(hash_at(&p, 0, 77)), Some(true));
        assert_eq!(set.contains(hash_at(&p, 1, 42)), Some(true));
    }

    #[test]
    fn manifests_beyond_the_bounds_are_refused() {
        let p = params();
        let (_, manifest) = publish(&p, &sample_values());
        assert!(CheckedManifest::new(&manifest).is_ok());
        let mut m = manifest.clone();
        m.shards[0].items = MAX_SHARD_ITEMS + 1;
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Params));
        let mut m = manifest.clone();
        m.max_batch = 0;
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Params));
        m.max_batch = MAX_BATCH + 1;
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Params));
        let mut m = manifest.clone();
        m.version = "zz".into();
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Tag));
        let mut m = manifest.clone();
        m.shards = vec![m.shards[0].clone(); MAX_SHARDS as usize + 1];
        m.range = u64::MAX;
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Params));
        let mut m = manifest;
        for s in &mut m.shards {
            s.items = MAX_SHARD_ITEMS;
        }
        m.shards = vec![m.shards[0].clone(); (MAX_SET_ITEMS / MAX_SHARD_ITEMS) as usize + 1];
        m.range = u64::MAX;
        assert_eq!(CheckedManifest::new(&m), Err(SetError::Params));
    }

    #[test]
    fn the_byte_bound_covers_real_encodings() {
        let p = params();
        for values in [
            vec![],
            vec![0],
            vec![p.shard_limit(0) - 1],
            (0..1000).map(|i| i * 997).collect(),
        ] {
            let body = gcs::encode(&values, p.golomb_p).unwrap();
            assert!(body.len() as u64 <= max_shard_bytes(&p, 0, values.len() as u64));
        }
        assert_eq!(max_gcs_bytes(0, u64::MAX, 64), GCS_HEADER_BYTES);
    }
}
