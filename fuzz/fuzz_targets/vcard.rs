//! The vCard reader: never panics on any text.
#![no_main]

use contact_discovery::client::addressbook::read_vcard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = read_vcard(text);
    }
});
