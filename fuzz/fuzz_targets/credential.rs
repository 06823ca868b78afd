//! The credential parser: never panics; only the canonical minted form verifies; a credential
//! minted for any valid user verifies as that user.
#![no_main]

use contact_discovery::domain::{CredentialKey, UserId};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_790_000_000;
const MAX_TTL: u64 = 7 * 86_400;

fuzz_target!(|data: &[u8]| {
    let key = CredentialKey::from_bytes([0x42; 32]);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(credential) = key.verify(text, NOW, MAX_TTL) {
        assert_eq!(key.mint(&credential.user, credential.expiry), text);
        assert!(credential.expiry > NOW && credential.expiry - NOW <= MAX_TTL);
    }
    if let Ok(user) = UserId::parse(text) {
        let token = key.mint(&user, NOW + 60);
        let credential = key
            .verify(&token, NOW, MAX_TTL)
            .expect("a fresh credential verifies");
        assert_eq!(credential.user, user);
        assert!(
            key.verify(&token, NOW + 60, MAX_TTL).is_err(),
            "expired at its expiry"
        );
        let other = CredentialKey::from_bytes([0x43; 32]);
        assert!(
            other.verify(&token, NOW, MAX_TTL).is_err(),
            "another key refuses it"
        );
    }
});
