//! The private mode's registered set as clients download it: its parameters, the manifest
//! (`GET /v1/private/set`), the shards (`GET /v1/private/set/shards/{i}`) and the delta between
//! two versions (`GET /v1/private/set/delta?since=…`).
//!
//! Every registered, discoverable number contributes one 64-bit *set hash* (the first 8 bytes
//! of its OPRF output, [`OprfOutput::set_hash`](crate::domain::oprf::OprfOutput::set_hash)).
//! [`SetParams::locate`] maps it into `[0, range)` (`(hash · range) >> 64`, BIP-158's
//! multiply-and-shift), and the range is cut into `shards` equal slices; a shard is the sorted
//! multiset of its values relative to its slice's start, Golomb-coded ([`gcs`](super::gcs), the
//! BIP-158 layout). A contact matches when its value is in its shard; a number that is not
//! registered matches with probability `items / range` (the false-positive rate). The range is
//! fixed when the set is built (`items · M · 9/8` for a target rate `1/M`), so values and
//! shard boundaries do not move while numbers come and go; once the set outgrows its target
//! rate the server rebuilds it with a new range and clients download it whole again.
//!
//! A shard's ETag is a BLAKE3 hash of the parameters, its index and its bytes; the set's version
//! is a hash of the parameters and every shard's ETag. Both are content hashes: replicas with
//! the same registry serve the same ETags and versions, and a client can check what it
//! assembled from a delta against the ETag the server names.

use serde::{Deserialize, Serialize};

use super::gcs::{self, GcsError, Limits};

/// Items a shard holds, aimed at when the set is built (about 170 KiB per shard at 1e-6).
pub const SHARD_ITEMS: u64 = 65_536;
/// Most shards a set may have (a client refuses a manifest with more).
pub const MAX_SHARDS: u32 = 1 << 16;
/// Bytes of a version or shard ETag.
pub const TAG_BYTES: usize = 16;
/// BLAKE3 `derive_key` context of shard ETags.
const SHARD_TAG_CONTEXT: &str = "contact-discovery 2026-12-01 set shard etag v1";
/// BLAKE3 `derive_key` context of set versions.
const VERSION_CONTEXT: &str = "contact-discovery 2026-12-01 set version v1";
/// First bytes of a delta body.
const DELTA_MAGIC: &[u8; 4] = b"CDD1";

/// A version or a shard ETag.
pub type Tag = [u8; TAG_BYTES];

/// Why a set, a manifest or a delta is refused (by a client) or cannot be made (by the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// Parameters no set of this protocol has.
    #[error("set parameters out of range")]
    Params,
    /// A shard or delta that does not decode.
    #[error("Golomb-coded data refused: {0}")]
    Gcs(#[from] GcsError),
    /// A delta body that is cut short or malformed.
    #[error("delta body malformed")]
    Delta,
    /// A delta removes a value the shard does not hold.
    #[error("delta removes a value the shard does not hold")]
    RemovalMissing,
    /// What a delta or a download produced does not hash to the ETag the server named.
    #[error("shard does not match its ETag")]
    EtagMismatch,
    /// A tag that is not 32 hex digits.
    #[error("version or ETag is not 32 hex digits")]
    Tag,
}

/// What fixes a set's layout for its life: the key epoch its outputs belong to, the range
/// values are mapped into, the number of shards and the Golomb parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetParams {
    /// The OPRF key epoch.
    pub key_epoch: u64,
    /// Values are in `[0, range)`.
    pub range: u64,
    /// Slices of the range, each one shard.
    pub shards: u32,
    /// Golomb-Rice parameter of every shard.
    pub golomb_p: u8,
}

/// Where a set hash falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Located {
    /// The shard.
    pub shard: u32,
    /// The value within the shard's slice.
    pub value: u64,
}

impl SetParams {
    /// Parameters for a set of `items` built for a false-positive rate of `1 / inverse_fpr` per
    /// lookup, with room for 1/8 growth before the rate is exceeded.
    pub fn for_items(key_epoch: u64, items: u64, inverse_fpr: u64) -> Self {
        let items = items.max(1);
        let range = u128::from(items) * u128::from(inverse_fpr.max(1)) * 9 / 8;
        let range = u64::try_from(range).unwrap_or(u64::MAX).max(1);
        let shards = items.div_ceil(SHARD_ITEMS).clamp(1, u64::from(MAX_SHARDS));
        let shards = u32::try_from(shards).unwrap_or(MAX_SHARDS);
        Self {
            key_epoch,
            range,
            shards,
            golomb_p: gcs::golomb_p_for(range as f64 / items as f64),
        }
    }

    /// Checks parameters read from the network: at least one shard and at most
    /// [`MAX_SHARDS`], every shard at least one value wide, a usable Golomb parameter.
    pub fn checked(self) -> Result<Self, SetError> {
        if self.shards == 0
            || self.shards > MAX_SHARDS
            || self.range < u64::from(self.shards)
            || self.golomb_p == 0
            || self.golomb_p > gcs::MAX_P
        {
            return Err(SetError::Params);
        }
        Ok(self)
    }

    /// Width of every shard's slice but possibly the last.
    pub fn shard_width(&self) -> u64 {
        self.range.div_ceil(u64::from(self.shards.max(1)))
    }

    /// Width of `shard`'s slice: its values are below this.
    pub fn shard_limit(&self, shard: u32) -> u64 {
        let width = self.shard_width();
        let start = width.saturating_mul(u64::from(shard));
        self.range.saturating_sub(start).min(width)
    }

    /// Decoder bounds for `shard` holding `items` values.
    pub fn shard_limits(&self, shard: u32, items: u64) -> Limits {
        Limits {
            max_items: items,
            limit: self.shard_limit(shard),
        }
    }

    /// `set_hash` mapped into `[0, range)`: `(set_hash · range) >> 64`.
    pub fn position(&self, set_hash: u64) -> u64 {
        ((u128::from(set_hash) * u128::from(self.range)) >> 64) as u64
    }

    /// Where `set_hash` falls.
    pub fn locate(&self, set_hash: u64) -> Located {
        self.split(self.position(set_hash))
    }

    /// The shard and in-shard value of a [`position`](Self::position).
    pub fn split(&self, position: u64) -> Located {
        let width = self.shard_width().max(1);
        Located {
            shard: u32::try_from(position / width).unwrap_or(u32::MAX),
            value: position % width,
        }
    }

    /// The chance that a number not in a set of `items` matches it.
    pub fn false_positive_rate(&self, items: u64) -> f64 {
        items as f64 / self.range as f64
    }

    fn to_bytes(self) -> [u8; 21] {
        let mut out = [0u8; 21];
        out[..8].copy_from_slice(&self.key_epoch.to_be_bytes());
        out[8..16].copy_from_slice(&self.range.to_be_bytes());
        out[16..20].copy_from_slice(&self.shards.to_be_bytes());
        out[20] = self.golomb_p;
        out
    }
}

/// The ETag of shard `index` whose encoding is `body`.
pub fn shard_etag(params: &SetParams, index: u32, body: &[u8]) -> Tag {
    let mut hasher = blake3::Hasher::new_derive_key(SHARD_TAG_CONTEXT);
    hasher.update(&params.to_bytes());
    hasher.update(&index.to_be_bytes());
    hasher.update(body);
    truncate(hasher.finalize())
}

/// The version of a set with these shard ETags.
pub fn set_version(params: &SetParams, etags: &[Tag]) -> Tag {
    let mut hasher = blake3::Hasher::new_derive_key(VERSION_CONTEXT);
    hasher.update(&params.to_bytes());
    for etag in etags {
        hasher.update(etag);
    }
    truncate(hasher.finalize())
}

fn truncate(hash: blake3::Hash) -> Tag {
    let mut tag = [0u8; TAG_BYTES];
    tag.copy_from_slice(&hash.as_bytes()[..TAG_BYTES]);
    tag
}

/// A tag as 32 lower-case hex digits (ETags, versions, the `since` parameter).
pub fn tag_to_hex(tag: &Tag) -> String {
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 32 hex digits (either case).
pub fn tag_from_hex(text: &str) -> Result<Tag, SetError> {
    let bytes = text.as_bytes();
    // `from_str_radix` alone would take a sign ("+0").
    if bytes.len() != 2 * TAG_BYTES || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(SetError::Tag);
    }
    let mut tag = [0u8; TAG_BYTES];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).map_err(|_| SetError::Tag)?;
        tag[i] = u8::from_str_radix(hex, 16).map_err(|_| SetError::Tag)?;
    }
    Ok(tag)
}

/// `GET /v1/private/set`: what a client needs to download, check and use the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetManifest {
    /// The OPRF key epoch the set's outputs belong to (evaluate under this one).
    pub key_epoch: u64,
    /// When that key epoch ends (RFC 3339): the set is downloaded whole again after it.
    pub key_not_after: String,
    /// The set's version (32 hex digits): `since` for the next delta.
    pub version: String,
    /// Values in the whole set.
    pub items: u64,
    /// Values are in `[0, range)`.
    pub range: u64,
    /// Golomb-Rice parameter of every shard.
    pub golomb_p: u8,
    /// The chance that one unregistered number matches (`items / range`).
    pub false_positive_rate: f64,
    /// Most elements one evaluation request may carry.
    pub max_batch: usize,
    /// Every shard, in order.
    pub shards: Vec<ShardInfo>,
}

/// One shard in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// Its ETag (32 hex digits).
    pub etag: String,
    /// Values it holds.
    pub items: u64,
}

impl SetManifest {
    /// The set's parameters, checked.
    pub fn params(&self) -> Result<SetParams, SetError> {
        SetParams {
            key_epoch: self.key_epoch,
            range: self.range,
            shards: u32::try_from(self.shards.len()).map_err(|_| SetError::Params)?,
            golomb_p: self.golomb_p,
        }
        .checked()
    }
}

/// What changed in one shard between two versions: values added and removed (sorted,
/// multisets), its ETag and size after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDelta {
    /// The shard.
    pub shard: u32,
    /// Its ETag once the delta is applied.
    pub etag: Tag,
    /// Values it holds once the delta is applied.
    pub items: u64,
    /// Values added, sorted.
    pub added: Vec<u64>,
    /// Values removed, sorted.
    pub removed: Vec<u64>,
}

/// Everything that changed between two versions of a set with the same parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDelta {
    /// The version the delta starts from.
    pub from: Tag,
    /// The version it leads to.
    pub to: Tag,
    /// The shards that changed, in shard order.
    pub shards: Vec<ShardDelta>,
}

/// Encodes a delta: `"CDD1"`, from (16 bytes), to (16), shard count (u32), then per shard its
/// index (u32), ETag (16), items (u64), and the added then the removed values, each as a
/// Golomb parameter (u8), a byte length (u32) and a Golomb-coded set. Integers big-endian.
pub fn encode_delta(params: &SetParams, delta: &SetDelta) -> Result<Vec<u8>, SetError> {
    let mut out = Vec::new();
    out.extend_from_slice(DELTA_MAGIC);
    out.extend_from_slice(&delta.from);
    out.extend_from_slice(&delta.to);
    out.extend_from_slice(&len_u32(delta.shards.len())?.to_be_bytes());
    for shard in &delta.shards {
        out.extend_from_slice(&shard.shard.to_be_bytes());
        out.extend_from_slice(&shard.etag);
        out.extend_from_slice(&shard.items.to_be_bytes());
        let limit = params.shard_limit(shard.shard);
        for values in [&shard.added, &shard.removed] {
            let p = gcs::golomb_p_for(limit as f64 / (values.len() as f64 + 1.0));
            let coded = gcs::encode(values, p)?;
            out.push(p);
            out.extend_from_slice(&len_u32(coded.len())?.to_be_bytes());
            out.extend_from_slice(&coded);
        }
    }
    Ok(out)
}

fn len_u32(len: usize) -> Result<u32, SetError> {
    u32::try_from(len).map_err(|_| SetError::Delta)
}

/// Decodes a delta for a set with `params`, refusing one that names a shard twice or out of
/// order, or more than `max_changes` values in all.
pub fn decode_delta(
    params: &SetParams,
    body: &[u8],
    max_changes: u64,
) -> Result<SetDelta, SetError> {
    let mut input = Reader(body);
    if input.take(4)? != DELTA_MAGIC {
        return Err(SetError::Delta);
    }
    let from = input.tag()?;
    let to = input.tag()?;
    let count = input.u32()?;
    if count > params.shards {
        return Err(SetError::Delta);
    }
    let mut shards = Vec::with_capacity(count as usize);
    let mut budget = max_changes;
    for _ in 0..count {
        let shard = input.u32()?;
        if shard >= params.shards || shards.last().is_some_and(|s: &ShardDelta| s.shard >= shard) {
            return Err(SetError::Delta);
        }
        let etag = input.tag()?;
        let items = input.u64()?;
        let limit = params.shard_limit(shard);
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let p = input.take(1)?[0];
            let len = input.u32()? as usize;
            let coded = input.take(len)?;
            *list = gcs::decode(
                coded,
                p,
                Limits {
                    max_items: budget,
                    limit,
                },
            )?;
            budget -= list.len() as u64;
        }
        let [added, removed] = lists;
        shards.push(ShardDelta {
            shard,
            etag,
            items,
            added,
            removed,
        });
    }
    if !input.0.is_empty() {
        return Err(SetError::Delta);
    }
    Ok(SetDelta { from, to, shards })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SetError> {
        if self.0.len() < n {
            return Err(SetError::Delta);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn tag(&mut self) -> Result<Tag, SetError> {
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(self.take(TAG_BYTES)?);
        Ok(tag)
    }
    fn u32(&mut self) -> Result<u32, SetError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, SetError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
}

/// Applies sorted `added` and `removed` values to the sorted multiset `values`: one copy
/// removed per removal (a value two numbers share stays while one of them is registered).
/// Refuses a removal of a value not held, leaving `values` unspecified.
pub fn apply_changes(
    values: &mut Vec<u64>,
    added: &[u64],
    removed: &[u64],
) -> Result<(), SetError> {
    let mut out = Vec::with_capacity((values.len() + added.len()).saturating_sub(removed.len()));
    let mut removed = removed.iter().peekable();
    for &v in values.iter() {
        if removed.peek() == Some(&&v) {
            removed.next();
        } else {
            out.push(v);
        }
    }
    if removed.next().is_some() {
        return Err(SetError::RemovalMissing);
    }
    // Merge the additions in.
    let mut merged = Vec::with_capacity(out.len() + added.len());
    let (mut a, mut b) = (out.into_iter().peekable(), added.iter().copied().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => merged.extend(a.next()),
            (_, Some(_)) => merged.extend(b.next()),
            (Some(_), None) => merged.extend(a.next()),
            (None, None) => break,
        }
    }
    *values = merged;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parameters_meet_the_target_rate_with_room_to_grow() {
        let p = SetParams::for_items(3, 10_000_000, 1_000_000);
        assert_eq!(p.range, 11_250_000_000_000);
        assert_eq!(p.shards, 153);
        assert!(p.false_positive_rate(10_000_000) < 1e-6);
        assert!(p.false_positive_rate(11_250_000) <= 1e-6);
        assert_eq!(p.checked(), Ok(p));
        // A tiny set still has one shard and a usable range.
        let tiny = SetParams::for_items(0, 0, 1_000_000);
        assert_eq!((tiny.shards, tiny.checked().is_ok()), (1, true));
    }

    #[test]
    fn locate_covers_the_range_and_the_last_shard_is_not_wider() {
        let p = SetParams {
            key_epoch: 0,
            range: 1000,
            shards: 3,
            golomb_p: 5,
        };
        assert_eq!(p.shard_width(), 334);
        assert_eq!((p.shard_limit(0), p.shard_limit(2)), (334, 332));
        assert_eq!(p.locate(0), Located { shard: 0, value: 0 });
        assert_eq!(
            p.locate(u64::MAX),
            Located {
                shard: 2,
                value: 331
            }
        );
        assert_eq!(
            p.locate(1 << 63),
            Located {
                shard: 1,
                value: 166
            }
        );
    }

    #[test]
    fn refuses_parameters_no_set_has() {
        let good = SetParams {
            key_epoch: 0,
            range: 10,
            shards: 2,
            golomb_p: 3,
        };
        for bad in [
            SetParams { shards: 0, ..good },
            SetParams {
                shards: MAX_SHARDS + 1,
                range: u64::MAX,
                ..good
            },
            SetParams { range: 1, ..good },
            SetParams {
                golomb_p: 0,
                ..good
            },
            SetParams {
                golomb_p: gcs::MAX_P + 1,
                ..good
            },
        ] {
            assert_eq!(bad.checked(), Err(SetError::Params), "{bad:?}");
        }
    }

    #[test]
    fn tags_round_trip_through_hex_and_refuse_anything_else() {
        let tag: Tag = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(tag_from_hex(&tag_to_hex(&tag)), Ok(tag));
        assert_eq!(tag_from_hex(&tag_to_hex(&tag).to_uppercase()), Ok(tag));
        for bad in [
            "",
            "00",
            &"0".repeat(33),
            &"g".repeat(32),
            &format!("+{}", "0".repeat(31)),
        ] {
            assert_eq!(tag_from_hex(bad), Err(SetError::Tag), "{bad}");
        }
    }

    #[test]
    fn etags_and_versions_depend_on_every_input() {
        let p = SetParams {
            key_epoch: 1,
            range: 1 << 40,
            shards: 4,
            golomb_p: 20,
        };
        let e = shard_etag(&p, 0, b"abc");
        assert_ne!(e, shard_etag(&p, 1, b"abc"));
        assert_ne!(e, shard_etag(&p, 0, b"abd"));
        assert_ne!(e, shard_etag(&SetParams { key_epoch: 2, ..p }, 0, b"abc"));
        assert_ne!(set_version(&p, &[e]), set_version(&p, &[e, e]));
    }

    #[test]
    fn removing_a_shared_value_keeps_the_other_copy() {
        let mut values = vec![1, 5, 5, 9];
        apply_changes(&mut values, &[3], &[5]).unwrap();
        assert_eq!(values, [1, 3, 5, 9]);
        assert_eq!(
            apply_changes(&mut values, &[], &[4]),
            Err(SetError::RemovalMissing)
        );
    }

    fn delta(params: &SetParams, shards: Vec<(u32, Vec<u64>, Vec<u64>)>) -> SetDelta {
        SetDelta {
            from: [1; 16],
            to: [2; 16],
            shards: shards
                .into_iter()
                .map(|(shard, mut added, mut removed)| {
                    added.sort_unstable();
                    removed.sort_unstable();
                    ShardDelta {
                        shard,
                        etag: [shard as u8; 16],
                        items: 7,
                        added,
                        removed,
                    }
                })
                .filter(|s| s.shard < params.shards)
                .collect(),
        }
    }

    #[test]
    fn deltas_refuse_disorder_overflow_and_trailing_bytes() {
        let p = SetParams {
            key_epoch: 1,
            range: 1 << 30,
            shards: 4,
            golomb_p: 20,
        };
        let d = delta(&p, vec![(0, vec![1, 2], vec![3]), (2, vec![], vec![9])]);
        let body = encode_delta(&p, &d).unwrap();
        assert_eq!(decode_delta(&p, &body, 4), Ok(d.clone()));
        assert!(
            decode_delta(&p, &body, 3).is_err(),
            "more changes than allowed"
        );
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(decode_delta(&p, &longer, 10), Err(SetError::Delta));
        for cut in 0..body.len() {
            assert!(decode_delta(&p, &body[..cut], 10).is_err(), "cut at {cut}");
        }
        let twice = delta(&p, vec![(2, vec![1], vec![]), (2, vec![2], vec![])]);
        assert_eq!(
            decode_delta(&p, &encode_delta(&p, &twice).unwrap(), 10),
            Err(SetError::Delta)
        );
        let fewer_shards = SetParams { shards: 2, ..p };
        assert!(decode_delta(&fewer_shards, &body, 10).is_err());
    }

    proptest! {
        #[test]
        fn deltas_round_trip(
            changes in proptest::collection::vec((0u32..8, proptest::collection::vec(0u64..1 << 20, 0..20), proptest::collection::vec(0u64..1 << 20, 0..20)), 0..8)
        ) {
            let p = SetParams { key_epoch: 1, range: 8 << 20, shards: 8, golomb_p: 10 };
            let mut changes = changes;
            changes.sort_by_key(|c| c.0);
            changes.dedup_by_key(|c| c.0);
            let d = delta(&p, changes);
            let body = encode_delta(&p, &d).unwrap();
            prop_assert_eq!(decode_delta(&p, &body, u64::MAX).unwrap(), d);
        }

        #[test]
        fn applying_changes_is_multiset_arithmetic(
            start in proptest::collection::vec(0u64..50, 0..40),
            added in proptest::collection::vec(0u64..50, 0..20),
            remove_picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
        ) {
            let mut values = start.clone();
            values.sort_unstable();
            let mut pool = values.clone();
            let mut removed = Vec::new();
            for pick in remove_picks {
                if pool.is_empty() { break; }
                removed.push(pool.remove(pick.index(pool.len())));
            }
            removed.sort_unstable();
            let mut added = added;
            added.sort_unstable();
            let mut want = pool.clone();
            want.extend(&added);
            want.sort_unstable();
            apply_changes(&mut values, &added, &removed).unwrap();
            prop_assert_eq!(values, want);
        }

        #[test]
        fn delta_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = SetParams { key_epoch: 1, range: 1 << 30, shards: 4, golomb_p: 20 };
            let _ = decode_delta(&p, &bytes, 1000);
        }
    }
}
