//! The private set's delta body (`protocol::private_set::decode_delta`), as a client reads it
//! from the network: never panics, never accepts more changes than allowed; an accepted delta
//! re-encodes to the same bytes. The first byte picks the set's shard count (1 to 4) and range.
#![no_main]

use contact_discovery::protocol::private_set::{SetParams, decode_delta, encode_delta};
use libfuzzer_sys::fuzz_target;

const MAX_CHANGES: u64 = 1 << 12;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let params = SetParams {
        key_epoch: 0,
        range: 1u64 << (16 + (first >> 2) % 40),
        shards: u32::from(first & 3) + 1,
        golomb_p: 12,
    };
    if let Ok(delta) = decode_delta(&params, body, MAX_CHANGES) {
        let changes: usize = delta.shards.iter().map(|s| s.added.len() + s.removed.len()).sum();
        assert!(changes as u64 <= MAX_CHANGES);
        // The Golomb parameters are the encoder's choice, so only a delta whose lists use
        // them re-encodes to the same bytes; it must at least decode the same again.
        let again = encode_delta(&params, &delta).expect("an accepted delta encodes");
        assert_eq!(decode_delta(&params, &again, MAX_CHANGES).as_ref(), Ok(&delta));
    }
});
