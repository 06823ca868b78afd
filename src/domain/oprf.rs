//! The private mode's oblivious PRF: RFC 9497 in OPRF mode with ristretto255-SHA512, through the
//! `voprf` crate (0.5, which passes the RFC's vectors; `tests/protocol_vectors.rs` checks them
//! again through these wrappers).
//!
//! The server's key for a key epoch is derived from the server secret (BLAKE3 `derive_key` of
//! the secret and the key epoch gives the RFC's `seed`, the key epoch its `info`), so replicas
//! that share the secret hold the same key without talking. A number's PRF input is its E.164
//! text (`+4915…`), the same bytes the hashed mode's fingerprints use.
//!
//! Client side: [`blind`] a number, send the [`BlindedElement`], get an [`EvaluatedElement`]
//! back, [`Blinding::finalize`] it into the number's [`OprfOutput`]. Nothing here does I/O.

use std::fmt;

use rand_core::OsRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::e164::MAX_ASCII_LEN;
use super::{E164, Epoch, ServerSecret};

/// BLAKE3 `derive_key` context for OPRF key seeds. Fixed forever: changing it changes every key.
pub const OPRF_KEY_CONTEXT: &str = "contact-discovery 2026-12-01 oprf key seed v1";

/// Bytes of a serialised group element (blinded or evaluated) on the wire.
pub const ELEMENT_BYTES: usize = 32;

/// Bytes of an OPRF output (SHA-512).
pub const OUTPUT_BYTES: usize = 64;

type Suite = voprf::Ristretto255;

/// Why an OPRF step failed. Messages never carry the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OprfError {
    /// 32 bytes that are not the canonical encoding of a non-identity ristretto255 element.
    #[error("not a valid ristretto255 element")]
    InvalidElement,
    /// The RFC's key derivation failed (it retries 256 counters; failing is negligible).
    #[error("OPRF key derivation failed")]
    KeyDerivation,
    /// Hashing an input to the group failed (only for inputs the RFC refuses: none of ours).
    #[error("OPRF evaluation failed")]
    Evaluation,
}

/// The server's OPRF key for one key epoch. `Debug` is redacted; the scalar is wiped on drop.
pub struct OprfKey {
    server: voprf::OprfServer<Suite>,
    epoch: Epoch,
}

impl OprfKey {
    /// The key of `key_epoch`: `DeriveKeyPair(seed, info)` of RFC 9497 with
    /// `seed = derive_key(OPRF_KEY_CONTEXT, secret || key_epoch as u64 big-endian)` and
    /// `info = key_epoch as u64 big-endian`.
    pub fn derive(secret: &ServerSecret, key_epoch: Epoch) -> Result<Self, OprfError> {
        let mut seed = secret.derive_for_epoch(OPRF_KEY_CONTEXT, key_epoch);
        let server = voprf::OprfServer::<Suite>::new_from_seed(&seed, &key_epoch.0.to_be_bytes());
        seed.zeroize();
        Ok(Self {
            server: server.map_err(|_| OprfError::KeyDerivation)?,
            epoch: key_epoch,
        })
    }

    /// A key from the RFC's raw `DeriveKeyPair` inputs (for its test vectors).
    pub fn from_seed(seed: &[u8], info: &[u8], epoch: Epoch) -> Result<Self, OprfError> {
        let server = voprf::OprfServer::<Suite>::new_from_seed(seed, info)
            .map_err(|_| OprfError::KeyDerivation)?;
        Ok(Self { server, epoch })
    }

    /// The key epoch this key belongs to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The server's step: the blinded element times the key. The client learns nothing about
    /// the key from it, the server nothing about the number behind the element.
    pub fn evaluate_blinded(&self, element: &BlindedElement) -> EvaluatedElement {
        EvaluatedElement(self.server.blind_evaluate(&element.0))
    }

    /// The number's output, computed directly (the server holds the key; no blinding): what
    /// the registered set is built from.
    pub fn output(&self, number: E164) -> Result<OprfOutput, OprfError> {
        self.evaluate_input(number.write_ascii(&mut [0u8; MAX_ASCII_LEN]))
    }

    /// The PRF of raw input bytes (for the RFC's vectors).
    pub fn evaluate_input(&self, input: &[u8]) -> Result<OprfOutput, OprfError> {
        let out = self
            .server
            .evaluate(input)
            .map_err(|_| OprfError::Evaluation)?;
        let mut bytes = [0u8; OUTPUT_BYTES];
        bytes.copy_from_slice(&out);
        Ok(OprfOutput(bytes))
    }
}

impl fmt::Debug for OprfKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OprfKey(epoch {}, <redacted>)", self.epoch.0)
    }
}

/// A group element on the wire: 32 bytes parsed (canonical, not the identity) into `voprf`'s
/// type, serialised back, `Debug` redacted.
macro_rules! wire_element {
    ($(#[$doc:meta])* $name:ident($inner:ident)) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(voprf::$inner<Suite>);

        impl $name {
            /// Parses wire bytes: the canonical encoding of a non-identity ristretto255 element.
            pub fn from_bytes(bytes: &[u8; ELEMENT_BYTES]) -> Result<Self, OprfError> {
                voprf::$inner::deserialize(bytes)
                    .map(Self)
                    .map_err(|_| OprfError::InvalidElement)
            }

            /// The wire bytes.
            pub fn to_bytes(&self) -> [u8; ELEMENT_BYTES] {
                let mut out = [0u8; ELEMENT_BYTES];
                out.copy_from_slice(&self.0.serialize());
                out
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

wire_element!(
    /// A client's blinded number: uniformly random to anyone without the blind.
    BlindedElement(BlindedElement)
);
wire_element!(
    /// The server's answer to one blinded element.
    EvaluatedElement(EvaluationElement)
);

/// The client's secret blind for one number, kept until the server answers. Wiped on drop
/// (voprf's `OprfClient` zeroizes its scalar).
pub struct Blinding(voprf::OprfClient<Suite>);

/// Blinds `number` with a fresh random scalar from the operating system.
pub fn blind(number: E164) -> Result<(Blinding, BlindedElement), OprfError> {
    let blinded = voprf::OprfClient::<Suite>::blind(
        number.write_ascii(&mut [0u8; MAX_ASCII_LEN]),
        &mut OsRng,
    )
    .map_err(|_| OprfError::Evaluation)?;
    Ok((Blinding(blinded.state), BlindedElement(blinded.message)))
}

impl Blinding {
    /// Unblinds the server's answer: the number's output under the server's key.
    pub fn finalize(
        &self,
        number: E164,
        evaluated: &EvaluatedElement,
    ) -> Result<OprfOutput, OprfError> {
        let out = self
            .0
            .finalize(number.write_ascii(&mut [0u8; MAX_ASCII_LEN]), &evaluated.0)
            .map_err(|_| OprfError::Evaluation)?;
        let mut bytes = [0u8; OUTPUT_BYTES];
        bytes.copy_from_slice(&out);
        Ok(OprfOutput(bytes))
    }
}

impl fmt::Debug for Blinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Blinding(<redacted>)")
    }
}

/// A number's OPRF output under one key. Without the server's key nobody can compute it, so
/// it is safe in the downloaded set; it still names a number to the key's holder, so `Debug`
/// is redacted and it is wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct OprfOutput([u8; OUTPUT_BYTES]);

impl OprfOutput {
    /// The output's bytes.
    pub fn as_bytes(&self) -> &[u8; OUTPUT_BYTES] {
        &self.0
    }

    /// The 64-bit hash the registered set is built from: the first 8 bytes, big-endian.
    pub fn set_hash(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(first)
    }
}

impl fmt::Debug for OprfOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OprfOutput(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> E164 {
        E164::parse(text).unwrap()
    }

    #[test]
    fn blind_evaluate_finalize_equals_the_servers_output() {
        let key = OprfKey::derive(&ServerSecret::from_bytes([7; 32]), Epoch(3)).unwrap();
        let n = number("+14155550100");
        let (blinding, blinded) = blind(n).unwrap();
        let wire = BlindedElement::from_bytes(&blinded.to_bytes()).unwrap();
        let answer = EvaluatedElement::from_bytes(&key.evaluate_blinded(&wire).to_bytes()).unwrap();
        let output = blinding.finalize(n, &answer).unwrap();
        assert_eq!(output, key.output(n).unwrap());
        assert_ne!(output, key.output(number("+14155550101")).unwrap());
    }

    #[test]
    fn blinds_are_fresh_so_elements_differ() {
        let n = number("+14155550100");
        assert_ne!(
            blind(n).unwrap().1.to_bytes(),
            blind(n).unwrap().1.to_bytes()
        );
    }

    #[test]
    fn keys_differ_by_epoch_and_secret_and_are_reproducible() {
        let n = number("+4915112345678");
        let a = ServerSecret::from_bytes([1; 32]);
        let b = ServerSecret::from_bytes([2; 32]);
        let out = |s: &ServerSecret, e| OprfKey::derive(s, Epoch(e)).unwrap().output(n).unwrap();
        assert_eq!(out(&a, 5), out(&a, 5));
        assert_ne!(out(&a, 5), out(&a, 6));
        assert_ne!(out(&a, 5), out(&b, 5));
    }

    #[test]
    fn invalid_elements_are_refused() {
        // The identity, a non-canonical encoding (2^255 - 1), and a point off the group.
        for bytes in [[0u8; 32], [0xff; 32], {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        }] {
            assert_eq!(
                BlindedElement::from_bytes(&bytes).err(),
                Some(OprfError::InvalidElement)
            );
            assert_eq!(
                EvaluatedElement::from_bytes(&bytes).err(),
                Some(OprfError::InvalidElement)
            );
        }
    }

    #[test]
    fn set_hash_is_the_first_eight_bytes_big_endian() {
        let mut bytes = [0u8; OUTPUT_BYTES];
        bytes[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(OprfOutput(bytes).set_hash(), 0x0102_0304_0506_0708);
    }

    #[test]
    fn debug_is_redacted() {
        let key = OprfKey::derive(&ServerSecret::from_bytes([7; 32]), Epoch(3)).unwrap();
        let out = key.output(number("+14155550100")).unwrap();
        assert_eq!(format!("{out:?}"), "OprfOutput(<redacted>)");
        assert_eq!(format!("{key:?}"), "OprfKey(epoch 3, <redacted>)");
    }
}
