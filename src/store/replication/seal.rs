//! Sealing what the replicas keep in the shared Redis: stream records and snapshot chunks are
//! encrypted and authenticated with XChaCha20-Poly1305, the snapshot description is
//! authenticated with a keyed BLAKE3 MAC. Both keys are derived from the server secret (each
//! with its own BLAKE3 `derive_key` context), so every replica sharing the secret agrees on
//! them without talking, and whoever can only write to Redis can neither read a number nor
//! forge, alter, move or replay a record.
//!
//! A sealed value is `SEAL_V1 | 24-byte random nonce | ciphertext | 16-byte Poly1305 tag`. The
//! AEAD's associated data is the version byte and a *binding* given by the caller (what the
//! value is and where it belongs: the stream entry id of a record; the snapshot id, publication
//! prefix, chunk index, chunk count and total length of a chunk), so a sealed value copied to
//! another place does not open. The Poly1305 tag is the authentication of records and chunks:
//! a flipped bit, a truncation, a value built without the key or moved elsewhere is refused
//! before anything of it is used. XChaCha's 192-bit nonces are random per value, so there is
//! no counter to keep across replicas.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::domain::ServerSecret;

/// First byte of a sealed value: the format version (a value of any other format is refused).
pub const SEAL_V1: u8 = 0x01;
/// Bytes of the random nonce.
const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag.
const TAG_BYTES: usize = 16;
/// Bytes a sealed value has beyond its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_BYTES + TAG_BYTES;
/// BLAKE3 `derive_key` context of the encryption key. Fixed: changing it makes everything
/// already in Redis unreadable.
const SEAL_CONTEXT: &str = "contact-discovery 2026-12 shared registry seal key v1";
/// BLAKE3 `derive_key` context of the MAC key of snapshot descriptions.
const MAC_CONTEXT: &str = "contact-discovery 2026-12 shared registry description mac v1";

/// Why a value from Redis was refused. Fixed texts: nothing of the value is ever shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a sealed value of a version this build reads (an old plain record, say).
    #[error("unknown format")]
    Format,
    /// The tag does not match: built without the key, altered, truncated or moved.
    #[error("authentication failed")]
    Auth,
}

/// The keys that seal and open the registry in Redis.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    mac_key: Zeroizing<[u8; 32]>,
}

impl Sealer {
    /// Derives both keys from the server secret.
    pub fn new(secret: &ServerSecret) -> Self {
        let key = Zeroizing::new(secret.derive(SEAL_CONTEXT));
        Self {
            cipher: XChaCha20Poly1305::new((&*key).into()),
            mac_key: Zeroizing::new(secret.derive(MAC_CONTEXT)),
        }
    }

    /// Encrypts and authenticates `plain`, bound to `binding`.
    pub fn seal(&self, binding: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(binding);
        // Encryption fails only for plaintexts beyond 256 GiB, far above every cap here.
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEAL_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Checks and decrypts a value sealed for `binding`. Wiped when dropped, as it holds numbers.
    pub fn open(&self, binding: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        match sealed.first() {
            Some(&SEAL_V1) => {}
            _ => return Err(OpenError::Format),
        }
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError::Auth);
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_BYTES]);
        let aad = associated_data(binding);
        self.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_BYTES..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Auth)
    }

    /// The keyed BLAKE3 MAC of the length-prefixed `fields` (a snapshot description).
    pub fn mac(&self, fields: &[&[u8]]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.mac_key);
        for field in fields {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether `tag` is the MAC of `fields`, compared in constant time.
    pub fn verify_mac(&self, fields: &[&[u8]], tag: &[u8]) -> bool {
        // blake3::Hash's equality is constant-time.
        <[u8; 32]>::try_from(tag).is_ok_and(|tag| blake3::Hash::from(self.mac(fields)) == tag)
    }
}

fn associated_data(binding: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + binding.len());
    aad.push(SEAL_V1);
    aad.extend_from_slice(binding);
    aad
}

/// Length-prefixed concatenation of `fields`: a binding no two different field lists share.
pub fn binding(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealer(secret: u8) -> Sealer {
        Sealer::new(&ServerSecret::from_bytes([secret; 32]))
    }

    proptest! {
        #[test]
        fn sealed_values_open_to_what_was_sealed(
            plain in proptest::collection::vec(any::<u8>(), 0..300),
            bind in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let s = sealer(7);
            let sealed = s.seal(&bind, &plain);
            prop_assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
            prop_assert_eq!(&s.open(&bind, &sealed).unwrap()[..], &plain[..]);
            prop_assert_eq!(&sealer(7).open(&bind, &sealed).unwrap()[..], &plain[..],
                "another replica with the same secret opens it");
        }

        #[test]
        fn any_flipped_bit_truncation_or_other_binding_is_refused(
            plain in proptest::collection::vec(any::<u8>(), 1..200),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let s = sealer(7);
            let sealed = s.seal(b"here", &plain);
            let mut flipped = sealed.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 1 << bit;
            prop_assert!(s.open(b"here", &flipped).is_err());
            prop_assert!(s.open(b"here", &sealed[..cut.index(sealed.len())]).is_err());
            prop_assert_eq!(s.open(b"there", &sealed).unwrap_err(), OpenError::Auth);
            prop_assert_eq!(sealer(8).open(b"here", &sealed).unwrap_err(), OpenError::Auth,
                "another secret");
        }

        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = sealer(1).open(b"x", &bytes);
        }
    }

    #[test]
    fn the_plaintext_does_not_appear_in_the_sealed_value() {
        let plain = 4_915_112_345_678u64.to_le_bytes().repeat(4);
        let sealed = sealer(3).seal(b"b", &plain);
        assert!(!sealed.windows(8).any(|w| w == &plain[..8]));
        assert_ne!(
            sealer(3).seal(b"b", &plain),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn an_unsealed_record_is_a_format_error_and_macs_bind_every_field() {
        let s = sealer(5);
        assert_eq!(s.open(b"b", b"\x09\0\0\0").unwrap_err(), OpenError::Format);
        assert_eq!(s.open(b"b", b"").unwrap_err(), OpenError::Format);
        let tag = s.mac(&[b"1-0", b"2", b"100"]);
        assert!(s.verify_mac(&[b"1-0", b"2", b"100"], &tag));
        assert!(!s.verify_mac(&[b"1-0", b"2", b"17592186044416"], &tag));
        assert!(
            !s.verify_mac(&[b"1-02", b"", b"100"], &tag),
            "fields cannot shift"
        );
        assert!(!sealer(6).verify_mac(&[b"1-0", b"2", b"100"], &tag));
        assert!(!s.verify_mac(&[b"1-0", b"2", b"100"], &tag[..31]));
        assert_ne!(binding(&[b"ab", b"c"]), binding(&[b"a", b"bc"]));
    }
}
