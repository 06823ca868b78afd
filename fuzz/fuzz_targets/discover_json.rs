//! The JSON discovery body: never panics; what it accepts survives an encode/decode round trip.
#![no_main]

use contact_discovery::protocol::{self, Format};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 512;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = protocol::decode_request(Format::Json, data, MAX_BATCH) {
        assert!(request.fingerprints.len() <= MAX_BATCH);
        let encoded = protocol::encode_request(Format::Json, request.epoch, &request.fingerprints);
        let again = protocol::decode_request(Format::Json, &encoded, MAX_BATCH).expect("own encoding decodes");
        assert_eq!(again.epoch, request.epoch);
        assert_eq!(*again.fingerprints, *request.fingerprints);
    }
});
