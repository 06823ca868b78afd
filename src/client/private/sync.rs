//! Bringing a [`LocalSet`] to the server's current version over HTTP: the manifest
//! (conditional on the version held), then a delta since that version, then the shards whose
//! ETags still differ (conditional on the ETag held). Every body read is capped by what the
//! parameters can need before it is read, and checked before it is kept.

use std::time::Duration;

use super::set::{CheckedManifest, LocalSet, max_shard_bytes};
use crate::client::service::{read_capped, refusal, wait_before_retry};
use crate::client::{Client, ClientError};
use crate::protocol::private_set::{
    self, MAX_SHARDS, SetError, SetManifest, Tag, tag_from_hex, tag_to_hex,
};

/// Most bytes of a manifest: its fixed fields and, per shard, an ETag and a count in JSON.
const MANIFEST_LIMIT: usize = 4096 + 128 * MAX_SHARDS as usize;
/// Bytes of a delta body besides its shards' values (magic, versions, count; per shard its
/// index, ETag, count and two list headers), with room to spare.
const DELTA_OVERHEAD: u64 = 1024;
const DELTA_PER_SHARD: u64 = 128;
/// Rounds of manifest, delta and shards before giving up on a set that moves at every round
/// (a publish between two requests costs one round).
const SYNC_ROUNDS: usize = 3;

/// What a sync downloaded, for the report and for benchmarks (body bytes only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Body bytes of manifests (0 for a 304).
    pub manifest_bytes: u64,
    /// Body bytes of shards.
    pub shard_bytes: u64,
    /// Body bytes of deltas.
    pub delta_bytes: u64,
    /// Manifest requests answered 304 (the set held is current).
    pub manifests_not_modified: usize,
    /// Shards downloaded whole.
    pub shards_downloaded: usize,
    /// Shards brought up to date by a delta.
    pub shards_from_delta: usize,
    /// Deltas the server had no history for (`delta_unavailable`).
    pub deltas_unavailable: usize,
    /// Requests sent.
    pub requests: usize,
    /// 429 or 503 answers waited out.
    pub waits: usize,
}

impl SyncStats {
    /// Every body byte downloaded.
    pub fn total_bytes(&self) -> u64 {
        self.manifest_bytes + self.shard_bytes + self.delta_bytes
    }
}

/// What one round learnt about the set.
enum Round {
    /// The set held is the current one.
    Current,
    /// The set moved (or its key epoch went) between two requests: start over.
    Moved,
}

/// A conditional download's outcome.
enum Fetched<T> {
    Body(T),
    NotModified,
    /// 410: the key epoch asked for is gone.
    Gone,
    /// 404 on a delta: no history from that version here.
    Unavailable,
}

impl Client {
    /// Brings `set` to the server's current version. `waited` is the run's total wait for
    /// 429 and 503 answers so far.
    pub(super) async fn sync_set(
        &self,
        set: &mut LocalSet,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<(), ClientError> {
        for _ in 0..SYNC_ROUNDS {
            if let Round::Current = self.sync_round(set, stats, waited).await? {
                return Ok(());
            }
        }
        Err(ClientError::SetKeptChanging)
    }

    async fn sync_round(
        &self,
        set: &mut LocalSet,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<Round, ClientError> {
        let held = set.version();
        let manifest = match self.fetch_manifest(held, stats, waited).await? {
            Fetched::Body(manifest) => manifest,
            Fetched::NotModified => return Ok(Round::Current),
            Fetched::Gone | Fetched::Unavailable => return Ok(Round::Moved),
        };
        let checked = CheckedManifest::new(&manifest)?;
        set.set_max_batch(checked.max_batch);
        if set.params() != Some(checked.params) {
            set.reset(checked.params);
        } else if let Some(from) = held.filter(|v| *v != checked.version) {
            match self.fetch_delta(set, &checked, from, stats, waited).await? {
                Fetched::Body(()) | Fetched::NotModified | Fetched::Unavailable => {}
                Fetched::Gone => return Ok(Round::Moved),
            }
        }
        let key_epoch = checked.params.key_epoch;
        for (index, &(etag, items)) in (0u32..).zip(&checked.shards) {
            let held_etag = set.etag(index);
            if held_etag == Some(etag) {
                continue;
            }
            let limit = max_shard_bytes(&checked.params, index, items);
            match self
                .fetch_shard(key_epoch, index, held_etag, limit, stats, waited)
                .await?
            {
                Fetched::Body((served, bytes)) => {
                    if private_set::shard_etag(&checked.params, index, &bytes) != served {
                        // The body is not what its own ETag names: not a race, a bad server.
                        return Err(SetError::EtagMismatch.into());
                    }
                    if served != etag {
                        return Ok(Round::Moved);
                    }
                    set.accept(index, etag, items, bytes)?;
                    stats.shards_downloaded += 1;
                }
                // Ours is current although the manifest named another: the set moved.
                Fetched::NotModified | Fetched::Gone | Fetched::Unavailable => {
                    return Ok(Round::Moved);
                }
            }
        }
        Ok(match set.finish(checked.version) {
            Ok(()) => Round::Current,
            Err(_) => Round::Moved,
        })
    }

    /// `GET /v1/private/set`, unconditionally: the current manifest, for a caller that needs
    /// its key epoch and `max_batch` but not the set (the load generator, which evaluates
    /// without matching). 429 and 503 (a set still building) are waited out as in a sync.
    pub async fn fetch_set_manifest(&self) -> Result<SetManifest, ClientError> {
        let (mut stats, mut waited) = (SyncStats::default(), Duration::ZERO);
        match self.fetch_manifest(None, &mut stats, &mut waited).await? {
            Fetched::Body(manifest) => Ok(manifest),
            // Without If-None-Match the server has no reason to answer 304.
            Fetched::NotModified | Fetched::Gone | Fetched::Unavailable => {
                Err(ClientError::ManifestShape)
            }
        }
    }

    /// `GET /v1/private/set`, conditional on the version held.
    async fn fetch_manifest(
        &self,
        held: Option<Tag>,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<Fetched<SetManifest>, ClientError> {
        let url = format!("{}/v1/private/set", self.config.server);
        let response = self.get(&url, held, stats, waited).await?;
        match response.status().as_u16() {
            200 => {
                let body = read_capped(response, MANIFEST_LIMIT, "set manifest").await?;
                stats.manifest_bytes += body.len() as u64;
                serde_json::from_slice(&body)
                    .map(Fetched::Body)
                    .map_err(|_| ClientError::ManifestShape)
            }
            304 => {
                stats.manifests_not_modified += 1;
                Ok(Fetched::NotModified)
            }
            _ => Err(refusal(response).await),
        }
    }

    /// `GET /v1/private/set/shards/{index}`, conditional on the ETag held; the body with the
    /// ETag the server names for it.
    async fn fetch_shard(
        &self,
        key_epoch: u64,
        index: u32,
        held: Option<Tag>,
        limit: u64,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<Fetched<(Tag, Vec<u8>)>, ClientError> {
        let url = format!(
            "{}/v1/private/set/shards/{index}?key_epoch={key_epoch}",
            self.config.server
        );
        let response = self.get(&url, held, stats, waited).await?;
        match response.status().as_u16() {
            200 => {
                let served = etag_header(&response).ok_or(SetError::Tag)?;
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let body = read_capped(response, limit, "set shard").await?;
                stats.shard_bytes += body.len() as u64;
                Ok(Fetched::Body((served, body)))
            }
            304 => Ok(Fetched::NotModified),
            410 => Ok(Fetched::Gone),
            _ => Err(refusal(response).await),
        }
    }

    /// `GET /v1/private/set/delta` since `from`, applied shard by shard; a shard the delta
    /// does not reproduce exactly is dropped (and downloaded by the caller). A delta that is
    /// malformed, or leads anywhere but `to`, is not applied at all.
    async fn fetch_delta(
        &self,
        set: &mut LocalSet,
        to: &CheckedManifest,
        from: Tag,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<Fetched<()>, ClientError> {
        let params = to.params;
        let url = format!(
            "{}/v1/private/set/delta?key_epoch={}&since={}",
            self.config.server,
            params.key_epoch,
            tag_to_hex(&from)
        );
        let response = self.get(&url, None, stats, waited).await?;
        match response.status().as_u16() {
            200 => {}
            304 => return Ok(Fetched::NotModified),
            404 => {
                stats.deltas_unavailable += 1;
                return Ok(Fetched::Unavailable);
            }
            410 => return Ok(Fetched::Gone),
            _ => return Err(refusal(response).await),
        }
        // A delta can add at most what the set holds now and remove at most what it held; its
        // lists cost no more than coding those values as shards would.
        let mut max_changes = 0u64;
        let mut limit = DELTA_OVERHEAD;
        for (index, &(_, items)) in (0u32..).zip(&to.shards) {
            let changes = items.saturating_add(set.shard_items(index).unwrap_or(0));
            max_changes = max_changes.saturating_add(changes);
            limit = limit
                .saturating_add(DELTA_PER_SHARD)
                .saturating_add(2 * max_shard_bytes(&params, index, changes));
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let body = read_capped(response, limit, "set delta").await?;
        stats.delta_bytes += body.len() as u64;
        let Ok(delta) = private_set::decode_delta(&params, &body, max_changes) else {
            return Ok(Fetched::Unavailable);
        };
        if delta.from != from || delta.to != to.version {
            return Ok(Fetched::Unavailable);
        }
        for shard in &delta.shards {
            if set.apply_delta(shard).is_ok() {
                stats.shards_from_delta += 1;
            } else {
                set.drop_shard(shard.shard);
            }
        }
        Ok(Fetched::Body(()))
    }

    /// A GET with the credential and, if given, `If-None-Match` on `tag`; 429 and 503 are
    /// waited out within the run's budget.
    async fn get(
        &self,
        url: &str,
        if_none_match: Option<Tag>,
        stats: &mut SyncStats,
        waited: &mut Duration,
    ) -> Result<reqwest::Response, ClientError> {
        loop {
            let mut request = self.http.get(url);
            if let Some(credential) = &self.config.credential {
                request = request.bearer_auth(credential);
            }
            if let Some(tag) = if_none_match {
                request = request.header(
                    reqwest::header::IF_NONE_MATCH,
                    format!("\"{}\"", tag_to_hex(&tag)),
                );
            }
            stats.requests += 1;
            let response = request.send().await?;
            match response.status().as_u16() {
                429 | 503 => {
                    wait_before_retry(&response, waited, self.config.max_rate_limit_wait).await?;
                    stats.waits += 1;
                }
                _ => return Ok(response),
            }
        }
    }
}

/// The tag an `ETag` header names (`"<32 hex>"`, a weak `W/` prefix allowed).
fn etag_header(response: &reqwest::Response) -> Option<Tag> {
    let value = response
        .headers()
        .get(reqwest::header::ETAG)?
        .to_str()
        .ok()?;
    parse_etag(value)
}

fn parse_etag(value: &str) -> Option<Tag> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    tag_from_hex(inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_hex_and_may_be_weak() {
        let tag: Tag = std::array::from_fn(|i| i as u8);
        let hex = tag_to_hex(&tag);
        assert_eq!(parse_etag(&format!("\"{hex}\"")), Some(tag));
        assert_eq!(parse_etag(&format!(" W/\"{hex}\" ")), Some(tag));
        assert_eq!(parse_etag(&hex), None);
        assert_eq!(parse_etag(&format!("\"{hex}")), None);
        assert_eq!(parse_etag("\"00\""), None);
    }
}
