//! The vCard reader: never panics on any text, nor on any file's bytes (declared charsets).
#![no_main]

use contact_discovery::client::addressbook::{read_vcard, read_vcard_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = read_vcard(text);
    }
    let _ = read_vcard_bytes(data);
});
