//! The private mode's evaluation body (`protocol::evaluate`), both encodings and the answer
//! decoder: never panics; an accepted binary body re-encodes to the same bytes; an accepted
//! JSON body survives encode → decode; no more than `MAX_BATCH` elements are accepted.
#![no_main]

use contact_discovery::protocol::Format;
use contact_discovery::protocol::evaluate::{decode_evaluate, decode_evaluated, encode_evaluate};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_evaluate(Format::Binary, data, MAX_BATCH) {
        assert!(request.elements.len() <= MAX_BATCH);
        let again = encode_evaluate(Format::Binary, request.key_epoch, &request.elements);
        assert_eq!(again, data, "binary decoding is not the inverse of encoding");
    }
    if let Ok(request) = decode_evaluate(Format::Json, data, MAX_BATCH) {
        let encoded = encode_evaluate(Format::Json, request.key_epoch, &request.elements);
        let again = decode_evaluate(Format::Json, &encoded, MAX_BATCH).expect("re-decodes");
        assert_eq!(again.elements.len(), request.elements.len());
    }
    let _ = decode_evaluated(Format::Binary, data, 2);
    let _ = decode_evaluated(Format::Json, data, 2);
});
