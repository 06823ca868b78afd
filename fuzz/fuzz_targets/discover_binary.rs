//! The binary discovery body: never panics; what it accepts re-encodes to the same bytes.
#![no_main]

use contact_discovery::protocol::{self, Format};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 512;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = protocol::decode_request(Format::Binary, data, MAX_BATCH) {
        assert!(request.fingerprints.len() <= MAX_BATCH);
        let again = protocol::encode_request(Format::Binary, request.epoch, &request.fingerprints);
        assert_eq!(
            again, data,
            "binary decoding is not the inverse of encoding"
        );
    }
});
