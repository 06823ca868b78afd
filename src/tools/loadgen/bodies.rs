//! The request bodies of a load run, prepared ahead per epoch so the generator spends little
//! CPU per request: real fingerprints under the epoch's salt, hits drawn from the numbers the
//! registry was generated with, misses from another seed.

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{LoadgenArgs, LoadgenError};
use crate::domain::{E164, Fingerprint, Salt};
use crate::protocol::{self, EpochInfo};
use crate::tools::generate;

/// The numbers requests are drawn from.
pub(super) struct Pools {
    /// Registered numbers (a prefix of the generated registry).
    hits: Vec<E164>,
    /// Numbers from another seed, (almost surely) not registered.
    misses: Vec<E164>,
}

impl Pools {
    /// The pools `args` asks for.
    pub fn generate(args: &LoadgenArgs) -> Self {
        let hits = generate::numbers(args.pool.min(args.registry_size).max(1), args.registry_seed);
        let miss_seed = args.registry_seed.wrapping_add(0x5eed_f00d);
        let misses = generate::numbers(args.pool.max(1), miss_seed);
        Self { hits, misses }
    }
}

/// One prepared request.
#[derive(Clone)]
pub(super) struct Prepared {
    /// The encoded body.
    pub body: Bytes,
    /// Items in it: fingerprints, or blinded elements in the private mode.
    pub size: usize,
    /// How many of them are hits.
    pub expected_hits: usize,
}

/// Prepared request bodies for one epoch (one key epoch in the private mode).
pub(super) struct Bodies {
    /// The epoch they were fingerprinted for.
    pub epoch: u64,
    /// The bodies, sent in turn.
    pub items: Vec<Prepared>,
    /// The fingerprints of each body (for the Redis comparison; empty in the private mode).
    pub batches: Vec<Vec<Fingerprint>>,
}

impl Bodies {
    /// `args.bodies` bodies for the epoch `info` describes, drawn from `pools`.
    pub fn prepare(
        args: &LoadgenArgs,
        info: &EpochInfo,
        pools: &Pools,
    ) -> Result<Self, LoadgenError> {
        let salt = salt_of(info)?;
        let hit_fps = fingerprints(&salt, &pools.hits);
        let miss_fps = fingerprints(&salt, &pools.misses);
        let mut rng = ChaCha8Rng::seed_from_u64(info.epoch);
        let hit_ratio = args.hit_ratio.unwrap_or(super::DEFAULT_HIT_RATIO);
        let mut batches = Vec::new();
        let items = (0..args.bodies.max(1))
            .map(|_| {
                let n = args.batch.sample(&mut rng, info.max_batch);
                let mut expected_hits = 0;
                let fps: Vec<Fingerprint> = (0..n)
                    .map(|_| {
                        if rng.random_bool(hit_ratio) {
                            expected_hits += 1;
                            hit_fps[rng.random_range(0..hit_fps.len())]
                        } else {
                            miss_fps[rng.random_range(0..miss_fps.len())]
                        }
                    })
                    .collect();
                let body = Bytes::from(protocol::encode_request(args.encoding, info.epoch, &fps));
                batches.push(fps);
                Prepared {
                    body,
                    size: n,
                    expected_hits,
                }
            })
            .collect();
        Ok(Self {
            epoch: info.epoch,
            items,
            batches,
        })
    }

    /// The body request `k` sends (bodies are used in turn).
    pub fn item(&self, k: u64) -> Prepared {
        self.items[k as usize % self.items.len()].clone()
    }
}

/// The epoch's salt, or why the run cannot use it.
pub(super) fn salt_of(info: &EpochInfo) -> Result<Salt, LoadgenError> {
    info.decode_salt()
        .map_err(|_| LoadgenError::Invalid("the server sent a malformed salt".into()))
}

fn fingerprints(salt: &Salt, numbers: &[E164]) -> Vec<Fingerprint> {
    numbers
        .iter()
        .map(|n| Fingerprint::compute(salt, *n))
        .collect()
}
