//! A Golomb-coded set shard (`protocol::gcs`): never panics; what decodes re-encodes to the same
//! bytes; the streaming decoder and `ShardIndex` agree with `decode`. The first byte chooses P
//! (its low six bits, so P = 0 and P > MAX_P are tried too) and the limit (top bit set:
//! `u64::MAX`, else 2^(P + 8), small enough for long unary runs to be refused); the rest is the
//! shard.
#![no_main]

use contact_discovery::protocol::gcs::{self, Limits, ShardIndex};
use libfuzzer_sys::fuzz_target;

const MAX_ITEMS: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&first, shard)) = data.split_first() else {
        return;
    };
    let p = first & 0x3f;
    let limit = if first & 0x80 != 0 {
        u64::MAX
    } else {
        1u64 << (u32::from(p) + 8).min(63)
    };
    let limits = Limits {
        max_items: MAX_ITEMS,
        limit,
    };
    let decoded = gcs::decode(shard, p, limits);
    let streamed: Result<Vec<u64>, _> = gcs::values(shard, p, limits).and_then(|v| v.collect());
    assert_eq!(decoded, streamed, "decode and values disagree");
    let index = ShardIndex::new(shard.to_vec(), p, limits);
    match decoded {
        Ok(values) => {
            assert!(values.len() as u64 <= MAX_ITEMS);
            assert!(values.windows(2).all(|w| w[0] <= w[1]));
            assert!(values.iter().all(|&v| v < limit));
            assert_eq!(
                gcs::encode(&values, p).as_deref(),
                Ok(shard),
                "decoding is not the inverse of encoding"
            );
            let index = index.expect("ShardIndex accepts what decode accepts");
            assert_eq!(index.len(), values.len() as u64);
            // Each lookup decodes up to INDEX_STRIDE codes: a spread of 32 values suffices.
            let step = values.len() / 32 + 1;
            for &value in values.iter().step_by(step) {
                assert!(index.contains(value));
                let next = value.wrapping_add(1);
                assert_eq!(index.contains(next), values.binary_search(&next).is_ok());
            }
        }
        Err(error) => assert_eq!(index.err(), Some(error), "ShardIndex and decode disagree"),
    }
});
