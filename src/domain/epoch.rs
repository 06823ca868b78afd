//! Epochs and their salts.
//!
//! Time is cut into epochs of a fixed length: `epoch = unix_secs / length`. Each epoch's public salt
//! is derived from the 32-byte server secret with BLAKE3 `derive_key`, so replicas that share the
//! secret agree on every salt without talking to each other.

use std::num::NonZeroU64;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// BLAKE3 `derive_key` context for epoch salts. Fixed forever: changing it changes every salt.
pub const SALT_CONTEXT: &str = "contact-discovery 2026-11-25 epoch salt v1";

/// An epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// How time is cut into epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSchedule {
    length: NonZeroU64,
}

impl EpochSchedule {
    /// A schedule with epochs of `length_secs` seconds.
    pub fn new(length_secs: NonZeroU64) -> Self {
        Self {
            length: length_secs,
        }
    }

    /// Epoch length in seconds.
    pub fn length_secs(self) -> u64 {
        self.length.get()
    }

    /// The epoch that contains `unix_secs`.
    pub fn epoch_at(self, unix_secs: u64) -> Epoch {
        Epoch(unix_secs / self.length.get())
    }

    /// First second of `epoch` (saturating, so hostile epoch numbers cannot overflow).
    pub fn start(self, epoch: Epoch) -> u64 {
        epoch.0.saturating_mul(self.length.get())
    }

    /// First second after `epoch`.
    pub fn end(self, epoch: Epoch) -> u64 {
        self.start(Epoch(epoch.0.saturating_add(1)))
    }
}

/// The 32-byte server secret every salt is derived from. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ServerSecret([u8; 32]);

impl ServerSecret {
    /// Wraps raw key material.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The public salt of `epoch`: `derive_key(SALT_CONTEXT, secret || epoch as u64 big-endian)`.
    pub fn salt(&self, epoch: Epoch) -> Salt {
        Salt(self.derive_for_epoch(SALT_CONTEXT, epoch))
    }

    /// `derive_key(context, secret || epoch as u64 big-endian)`: per-epoch key material for
    /// `context` (salts; the private mode's OPRF key seeds).
    pub fn derive_for_epoch(&self, context: &str, epoch: Epoch) -> [u8; 32] {
        let mut material = [0u8; 40];
        material[..32].copy_from_slice(&self.0);
        material[32..].copy_from_slice(&epoch.0.to_be_bytes());
        let derived = blake3::derive_key(context, &material);
        material.zeroize();
        derived
    }

    /// A key for `purpose` (a fixed BLAKE3 `derive_key` context), the same on every replica
    /// that shares the secret; e.g. the key that hides user ids in shared rate-limit state.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, &self.0)
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}

/// A public per-epoch salt (the BLAKE3 key for fingerprints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt([u8; 32]);

impl Salt {
    /// Wraps raw salt bytes (clients receive them from `/v1/epoch`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The salt's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cut_time() {
        let s = EpochSchedule::new(NonZeroU64::new(60).unwrap());
        assert_eq!(s.epoch_at(0), Epoch(0));
        assert_eq!(s.epoch_at(59), Epoch(0));
        assert_eq!(s.epoch_at(60), Epoch(1));
        assert_eq!(s.start(Epoch(2)), 120);
        assert_eq!(s.end(Epoch(2)), 180);
        assert_eq!(s.end(Epoch(u64::MAX)), u64::MAX);
    }

    #[test]
    fn salts_differ_by_epoch_and_secret_and_are_reproducible() {
        let a = ServerSecret::from_bytes([1; 32]);
        let b = ServerSecret::from_bytes([2; 32]);
        assert_eq!(a.salt(Epoch(5)), a.clone().salt(Epoch(5)));
        assert_ne!(a.salt(Epoch(5)), a.salt(Epoch(6)));
        assert_ne!(a.salt(Epoch(5)), b.salt(Epoch(5)));
        let mut material = [1u8; 40];
        material[32..].copy_from_slice(&5u64.to_be_bytes());
        assert_eq!(
            a.salt(Epoch(5)).as_bytes(),
            &blake3::derive_key(SALT_CONTEXT, &material)
        );
    }
}
