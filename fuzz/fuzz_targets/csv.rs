//! The CSV address book reader: never panics on any bytes.
#![no_main]

use contact_discovery::client::addressbook::read_csv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_csv(data);
});
