//! Domain types that are valid by construction: phone numbers, fingerprints, epochs and salts,
//! credentials, the private mode's OPRF values, and the key material they are derived from.

pub mod credential;
pub mod e164;
pub mod epoch;
pub mod fingerprint;
pub mod oprf;
pub mod secret;

pub use credential::{Credential, CredentialError, CredentialKey, UserId};
pub use e164::{E164, E164Error};
pub use epoch::{Epoch, EpochSchedule, Salt, ServerSecret};
pub use fingerprint::{FINGERPRINT_BYTES, Fingerprint};
