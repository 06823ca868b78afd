//! The strict E.164 parser: never panics; accepts exactly its own canonical output.
#![no_main]

use contact_discovery::domain::E164;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(number) = E164::parse(text) {
        assert_eq!(
            number.to_string(),
            text,
            "only the canonical form is accepted"
        );
        assert_eq!(E164::from_u64(number.get()), Ok(number));
    }
});
