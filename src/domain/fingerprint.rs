//! Fingerprints: the first 8 bytes of `keyed_blake3(epoch salt, "+E164")`.

use std::fmt;

use zeroize::DefaultIsZeroes;

use super::{E164, Salt, e164::MAX_ASCII_LEN};

/// Bytes in a fingerprint on the wire.
pub const FINGERPRINT_BYTES: usize = 8;

/// One salted, keyed fingerprint of a phone number. `Debug` is redacted; it zeroizes in
/// zeroizing containers (`DefaultIsZeroes`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; FINGERPRINT_BYTES]);

impl DefaultIsZeroes for Fingerprint {}

impl Fingerprint {
    /// Computes the fingerprint of `number` under `salt`.
    pub fn compute(salt: &Salt, number: E164) -> Self {
        let mut buf = [0u8; MAX_ASCII_LEN];
        let hash = blake3::keyed_hash(salt.as_bytes(), number.write_ascii(&mut buf));
        let mut out = [0u8; FINGERPRINT_BYTES];
        out.copy_from_slice(&hash.as_bytes()[..FINGERPRINT_BYTES]);
        Self(out)
    }

    /// Wraps wire bytes; every 8-byte string is a possible fingerprint.
    pub fn from_bytes(bytes: [u8; FINGERPRINT_BYTES]) -> Self {
        Self(bytes)
    }

    /// The wire bytes.
    pub fn to_bytes(self) -> [u8; FINGERPRINT_BYTES] {
        self.0
    }

    /// The lookup key the match index uses (little-endian; the bytes are uniform either way).
    pub fn key(self) -> u64 {
        u64::from_le_bytes(self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_protocol_definition() {
        let salt = Salt::from_bytes([7u8; 32]);
        let number = E164::parse("+15551234567").unwrap();
        let full = blake3::keyed_hash(&[7u8; 32], b"+15551234567");
        assert_eq!(
            Fingerprint::compute(&salt, number).to_bytes(),
            full.as_bytes()[..8]
        );
    }

    #[test]
    fn debug_is_redacted() {
        let fp = Fingerprint::from_bytes([0xab; 8]);
        assert!(!format!("{fp:?}").to_lowercase().contains("ab"));
    }
}
