//! Phone number normalisation: never panics; whatever it returns is a valid E.164 number that
//! normalises to itself.
#![no_main]

use std::sync::OnceLock;

use contact_discovery::client::normalise::Normaliser;
use contact_discovery::domain::E164;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static NORMALISERS: OnceLock<[Normaliser; 2]> = OnceLock::new();
    let normalisers = NORMALISERS.get_or_init(|| {
        [
            Normaliser::new(Some("DE")).expect("region"),
            Normaliser::new(None).expect("no region"),
        ]
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for normaliser in normalisers {
        if let Ok(number) = normaliser.normalise(text) {
            let canonical = number.to_string();
            assert_eq!(E164::parse(&canonical), Ok(number));
        }
    }
});
