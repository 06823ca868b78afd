//! A registry log record: never panics; what decodes re-encodes to the same bytes.
#![no_main]

use contact_discovery::store::registry::record::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((ops, used)) = decode_record(data) {
        assert!(used <= data.len());
        assert_eq!(encode_record(&ops), &data[..used]);
    }
});
