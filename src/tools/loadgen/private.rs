//! `--mode private`: evaluation requests (`POST /v1/private/evaluate`) carrying blinded
//! elements under the server's current key epoch, from the set's manifest.
//!
//! Blinding costs a client about 90 µs an element, far more than sending one, so a pool of
//! elements is blinded once before the run and every body is cut from it. The server cannot
//! tell a reused element from a fresh one (a blinded element is uniformly random to it, and
//! each costs it one scalar multiplication whatever it is), so the timing is a real client's.
//! Blinded elements do not depend on the key, so after a key change (410) the same pool is
//! sent under the new key epoch. Nothing is finalised: matching happens on the client against
//! the downloaded set and costs the server nothing.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bodies::{Bodies, Prepared};
use super::{BatchSizes, LoadgenArgs, LoadgenError};
use crate::client::Client;
use crate::domain::oprf::{self, ELEMENT_BYTES};
use crate::protocol::private_set::SetManifest;
use crate::protocol::{Format, evaluate};
use crate::tools::generate;

/// Seed of the numbers that are blinded: which numbers does not matter, the server sees only
/// random elements.
const POOL_SEED: u64 = 0x0b11_d0ff;

/// Blinded elements, prepared once and reused by every body of the run; kept serialised, so
/// preparing bodies (at the start and after every 410) costs a copy per element, not a point
/// compression.
pub(super) struct BlindedPool {
    elements: Vec<[u8; ELEMENT_BYTES]>,
}

impl BlindedPool {
    /// Blinds `size` (at least one) synthetic numbers.
    pub fn blind(size: usize) -> Result<Self, LoadgenError> {
        let elements = generate::numbers(size.max(1), POOL_SEED)
            .into_iter()
            .map(|number| oprf::blind(number).map(|(_, element)| element.to_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| LoadgenError::Invalid(format!("blinding the element pool: {e}")))?;
        Ok(Self { elements })
    }

    /// Elements in the pool.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// `n` consecutive elements from `start`, wrapping: distinct while `n <= len`.
    fn batch(&self, start: usize, n: usize) -> Vec<[u8; ELEMENT_BYTES]> {
        (0..n)
            .map(|i| self.elements[(start + i) % self.elements.len()])
            .collect()
    }
}

/// Elements the pool needs: the largest batch the run can draw (under the server's
/// `max_batch`), so no request repeats an element within itself.
pub(super) fn pool_size(batch: BatchSizes, max_batch: usize) -> usize {
    match batch {
        BatchSizes::Fixed(n) => n.min(max_batch),
        BatchSizes::LogNormal { .. } => max_batch,
    }
    .max(1)
}

/// The manifest's key epoch and `max_batch`, fetched as a client fetches them.
pub(super) async fn fetch_manifest(
    client: &Client,
    server: &str,
) -> Result<SetManifest, LoadgenError> {
    client
        .fetch_set_manifest()
        .await
        .map_err(|e| LoadgenError::Epoch {
            url: format!("{}/v1/private/set", server.trim_end_matches('/')),
            why: e.to_string(),
        })
}

/// The pool and the first bodies of a private run: one manifest, one blinding of the pool.
pub(super) async fn start(
    args: &LoadgenArgs,
    client: &Client,
) -> Result<(BlindedPool, Bodies), LoadgenError> {
    let manifest = fetch_manifest(client, &args.server).await?;
    let pool = BlindedPool::blind(pool_size(args.batch, manifest.max_batch))?;
    let bodies = prepare(args, &manifest, &pool);
    Ok((pool, bodies))
}

/// `args.bodies` bodies under the manifest's key epoch, each a batch of consecutive pool
/// elements from a random start (batch sizes as in the hashed mode, capped by `max_batch`).
pub(super) fn prepare(args: &LoadgenArgs, manifest: &SetManifest, pool: &BlindedPool) -> Bodies {
    let mut rng = ChaCha8Rng::seed_from_u64(manifest.key_epoch);
    let cap = manifest.max_batch.min(pool.len());
    let items = (0..args.bodies.max(1))
        .map(|_| {
            let n = args.batch.sample(&mut rng, cap);
            let elements = pool.batch(rng.random_range(0..pool.len()), n);
            let body =
                evaluate::encode_evaluate_serialized(args.encoding, manifest.key_epoch, &elements);
            Prepared {
                body: Bytes::from(body),
                size: n,
                expected_hits: 0,
            }
        })
        .collect();
    Bodies {
        epoch: manifest.key_epoch,
        items,
        batches: Vec::new(),
    }
}

/// Whether a 200 answer to `sent` elements decodes, with exactly `sent` valid elements.
pub(super) fn answer_decodes(format: Format, body: &[u8], sent: usize) -> bool {
    evaluate::decode_evaluated(format, body, sent).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::evaluate::decode_evaluate;

    fn manifest(key_epoch: u64, max_batch: usize) -> SetManifest {
        SetManifest {
            key_epoch,
            key_not_after: "2027-01-01T00:00:00Z".into(),
            version: "0".repeat(32),
            items: 0,
            range: 1,
            golomb_p: 1,
            false_positive_rate: 0.0,
            max_batch,
            shards: Vec::new(),
        }
    }

    fn args(encoding: Format, batch: BatchSizes) -> LoadgenArgs {
        let mut args = crate::tools::loadgen::parse_args(&["--mode", "private"]);
        args.encoding = encoding;
        args.batch = batch;
        args.bodies = 8;
        args
    }

    #[test]
    fn the_pool_holds_the_largest_batch_under_max_batch() {
        assert_eq!(pool_size(BatchSizes::Fixed(100), 4_096), 100);
        assert_eq!(pool_size(BatchSizes::Fixed(9_000), 4_096), 4_096);
        let lognormal = BatchSizes::LogNormal {
            median: 300.0,
            sigma: 1.0,
        };
        assert_eq!(pool_size(lognormal, 4_096), 4_096);
        assert_eq!(pool_size(BatchSizes::Fixed(5), 0), 1);
    }

    /// Binary: 8-byte key epoch and 32 bytes per element (docs/PROTOCOL.md); JSON: the
    /// documented object. Both decode as the server decodes them, under the manifest's key
    /// epoch, with distinct elements.
    #[test]
    fn bodies_have_the_documented_size_in_each_encoding() {
        let pool = BlindedPool::blind(12).unwrap();
        for encoding in [Format::Binary, Format::Json] {
            let bodies = prepare(
                &args(encoding, BatchSizes::Fixed(10)),
                &manifest(7, 4_096),
                &pool,
            );
            assert_eq!(bodies.epoch, 7);
            assert_eq!(bodies.items.len(), 8);
            for prepared in &bodies.items {
                assert_eq!(prepared.size, 10);
                if encoding == Format::Binary {
                    assert_eq!(prepared.body.len(), 8 + 32 * 10);
                    assert_eq!(prepared.body[..8], 7u64.to_be_bytes());
                }
                let request = decode_evaluate(encoding, &prepared.body, 4_096).unwrap();
                assert_eq!(request.key_epoch, 7);
                let distinct: std::collections::BTreeSet<[u8; 32]> = request
                    .elements
                    .iter()
                    .map(oprf::BlindedElement::to_bytes)
                    .collect();
                assert_eq!(distinct.len(), 10);
            }
        }
    }

    #[test]
    fn batches_stay_under_the_manifests_max_batch_and_the_pool() {
        let pool = BlindedPool::blind(6).unwrap();
        let bodies = prepare(
            &args(Format::Binary, BatchSizes::Fixed(10)),
            &manifest(1, 4),
            &pool,
        );
        assert!(bodies.items.iter().all(|p| p.size == 4));
        let bodies = prepare(
            &args(Format::Binary, BatchSizes::Fixed(10)),
            &manifest(1, 99),
            &pool,
        );
        assert!(
            bodies
                .items
                .iter()
                .all(|p| p.size == 6 && p.body.len() == 8 + 32 * 6)
        );
    }

    #[test]
    fn only_answers_with_as_many_valid_elements_as_sent_decode() {
        use crate::domain::oprf::OprfKey;
        use crate::domain::{Epoch, ServerSecret};
        let pool = BlindedPool::blind(3).unwrap();
        let key = OprfKey::derive(&ServerSecret::from_bytes([9; 32]), Epoch(1)).unwrap();
        let evaluated: Vec<_> = pool
            .elements
            .iter()
            .map(|e| key.evaluate_blinded(&oprf::BlindedElement::from_bytes(e).unwrap()))
            .collect();
        for format in [Format::Binary, Format::Json] {
            let answer = evaluate::encode_evaluated(format, 1, &evaluated);
            assert!(answer_decodes(format, &answer, 3));
            assert!(!answer_decodes(format, &answer, 4));
            assert!(!answer_decodes(format, b"{}", 3));
        }
        let mut zeroed = evaluate::encode_evaluated(Format::Binary, 1, &evaluated);
        zeroed[8..40].fill(0);
        assert!(
            !answer_decodes(Format::Binary, &zeroed, 3),
            "the identity is no element"
        );
    }
}
