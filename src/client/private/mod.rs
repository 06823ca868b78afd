//! The private mode's client (issue 14): nothing about a number leaves the process but a
//! blinded element, which is uniformly random to the server.
//!
//! A run syncs the [`LocalSet`] (every registered number's OPRF set hash, Golomb-coded in
//! shards; see [`sync`]), blinds each number it has no set hash for under the set's key epoch,
//! has the server evaluate the blinded elements (`POST /v1/private/evaluate`, in batches of
//! the manifest's `max_batch`), finalises them into OPRF outputs and keeps their set hashes in
//! the [`PrivateCache`]. A number is registered iff its set hash is in the set (false
//! positives at the manifest's `false_positive_rate`). The cache can be kept in a file
//! ([`cache`]) so the next run evaluates only new contacts and downloads only what changed.
//!
//! Blinds stay in memory (wiped on drop by `voprf`) and nothing about a number is logged.

pub mod cache;
pub mod set;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::client::service::{read_capped, refusal, wait_before_retry};
use crate::client::{Client, ClientError};
use crate::domain::E164;
use crate::domain::oprf::{self, OprfError};
use crate::protocol::evaluate::{self, body_limit};

pub use cache::{CacheError, read_cache, write_cache};
pub use set::LocalSet;
pub use sync::SyncStats;

/// What a private run keeps between runs: the local set and, per key epoch, the set hash of
/// every number evaluated under it. Only the set's key epoch is kept (outputs under an older
/// key can never match again), and only the numbers of the last run (a contact deleted from
/// the address book leaves the cache at the next run).
#[derive(Default)]
pub struct PrivateCache {
    /// The local copy of the set.
    pub set: LocalSet,
    /// Key epoch → number → set hash.
    pub hashes: BTreeMap<u64, BTreeMap<E164, u64>>,
}

/// Counters of one private run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivateStats {
    /// Numbers blinded and evaluated by the server in this run.
    pub evaluated: usize,
    /// Numbers answered from the cache's set hashes.
    pub from_cache: usize,
    /// Evaluation requests sent (including retries).
    pub evaluate_requests: usize,
    /// Times the set was synced again after the key epoch went (410).
    pub key_epoch_refreshes: usize,
    /// 429 or 503 answers to evaluation requests waited out.
    pub rate_limit_waits: usize,
    /// What the set's syncs downloaded.
    pub sync: SyncStats,
}

/// The answer of a private run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateOutcome {
    /// `registered[i]` answers `numbers[i]`.
    pub registered: Vec<bool>,
    /// Counters.
    pub stats: PrivateStats,
    /// The key epoch the answers are under.
    pub key_epoch: u64,
}

/// How evaluating a batch ended, besides success.
enum EvaluateError {
    /// The key epoch is gone (410, or an answer under another key epoch): sync again.
    KeyEpochGone,
    Failed(ClientError),
}

impl From<ClientError> for EvaluateError {
    fn from(err: ClientError) -> Self {
        Self::Failed(err)
    }
}

impl From<OprfError> for EvaluateError {
    fn from(err: OprfError) -> Self {
        Self::Failed(err.into())
    }
}

impl Client {
    /// Which of `numbers` belong to registered users, in the private mode: `registered[i]`
    /// answers `numbers[i]`. Syncs `cache.set`, evaluates only the numbers `cache` has no set
    /// hash for under the set's key epoch, and leaves `cache` holding exactly these numbers'
    /// set hashes. After a 410 (the key epoch went) the set is synced again and the
    /// evaluation retried once.
    pub async fn discover_private(
        &self,
        numbers: &[E164],
        cache: &mut PrivateCache,
    ) -> Result<PrivateOutcome, ClientError> {
        let mut stats = PrivateStats::default();
        let mut waited = Duration::ZERO;
        let mut refreshed = false;
        let key_epoch = loop {
            self.sync_set(&mut cache.set, &mut stats.sync, &mut waited)
                .await?;
            let key_epoch = cache
                .set
                .params()
                .map(|p| p.key_epoch)
                .ok_or(ClientError::SetKeptChanging)?;
            cache.hashes.retain(|epoch, _| *epoch == key_epoch);
            match self
                .evaluate_missing(numbers, key_epoch, cache, &mut stats, &mut waited)
                .await
            {
                Ok(()) => break key_epoch,
                Err(EvaluateError::KeyEpochGone) if !refreshed => {
                    refreshed = true;
                    stats.key_epoch_refreshes += 1;
                }
                Err(EvaluateError::KeyEpochGone) => {
                    return Err(ClientError::Refused {
                        status: 410,
                        code: "key_epoch_unavailable".to_owned(),
                        message: "the key epoch went again after a re-sync".to_owned(),
                    });
                }
                Err(EvaluateError::Failed(err)) => return Err(err),
            }
        };
        let wanted: BTreeSet<E164> = numbers.iter().copied().collect();
        let hashes = cache.hashes.entry(key_epoch).or_default();
        hashes.retain(|number, _| wanted.contains(number));
        let mut registered = Vec::with_capacity(numbers.len());
        for number in numbers {
            let hash = hashes.get(number).ok_or(ClientError::SetKeptChanging)?;
            let hit = cache
                .set
                .contains(*hash)
                .ok_or(ClientError::SetKeptChanging)?;
            registered.push(hit);
        }
        Ok(PrivateOutcome {
            registered,
            stats,
            key_epoch,
        })
    }

    /// Evaluates every number of `numbers` that has no set hash under `key_epoch` yet.
    async fn evaluate_missing(
        &self,
        numbers: &[E164],
        key_epoch: u64,
        cache: &mut PrivateCache,
        stats: &mut PrivateStats,
        waited: &mut Duration,
    ) -> Result<(), EvaluateError> {
        let hashes = cache.hashes.entry(key_epoch).or_default();
        let unique: BTreeSet<E164> = numbers.iter().copied().collect();
        let missing: Vec<E164> = unique
            .iter()
            .copied()
            .filter(|n| !hashes.contains_key(n))
            .collect();
        stats.from_cache = unique.len() - missing.len();
        let max_batch = cache.set.max_batch().max(1);
        for batch in missing.chunks(max_batch) {
            for (number, hash) in self.evaluate_batch(batch, key_epoch, stats, waited).await? {
                hashes.insert(number, hash);
                stats.evaluated += 1;
            }
        }
        Ok(())
    }

    /// Blinds `numbers`, has the server evaluate them, and finalises the answers into set
    /// hashes. Fresh blinds for every attempt: a retry never resends an element.
    async fn evaluate_batch(
        &self,
        numbers: &[E164],
        key_epoch: u64,
        stats: &mut PrivateStats,
        waited: &mut Duration,
    ) -> Result<Vec<(E164, u64)>, EvaluateError> {
        let format = self.config.format;
        loop {
            let mut blindings = Vec::with_capacity(numbers.len());
            let mut elements = Vec::with_capacity(numbers.len());
            for number in numbers {
                let (blinding, element) = oprf::blind(*number)?;
                blindings.push(blinding);
                elements.push(element);
            }
            let body = evaluate::encode_evaluate(format, key_epoch, &elements);
            let mut request = self
                .http
                .post(format!("{}/v1/private/evaluate", self.config.server))
                .header(reqwest::header::CONTENT_TYPE, format.content_type())
                .body(body);
            if let Some(credential) = &self.config.credential {
                request = request.bearer_auth(credential);
            }
            stats.evaluate_requests += 1;
            let response = request.send().await.map_err(ClientError::from)?;
            match response.status().as_u16() {
                200 => {
                    // The answer has the request's shape, with a longer JSON field name.
                    let limit = body_limit(format, numbers.len()) + 1024;
                    let bytes = read_capped(response, limit, "evaluation answer").await?;
                    let answer = evaluate::decode_evaluated(format, &bytes, numbers.len())
                        .map_err(ClientError::from)?;
                    if answer.key_epoch != key_epoch {
                        return Err(EvaluateError::KeyEpochGone);
                    }
                    let mut out = Vec::with_capacity(numbers.len());
                    for ((number, blinding), evaluated) in
                        numbers.iter().zip(&blindings).zip(&answer.elements)
                    {
                        let output = blinding.finalize(*number, evaluated)?;
                        out.push((*number, output.set_hash()));
                    }
                    return Ok(out);
                }
                410 => return Err(EvaluateError::KeyEpochGone),
                429 | 503 => {
                    wait_before_retry(&response, waited, self.config.max_rate_limit_wait).await?;
                    stats.rate_limit_waits += 1;
                }
                _ => return Err(refusal(response).await.into()),
            }
        }
    }
}
