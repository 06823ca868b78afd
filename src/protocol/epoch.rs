//! The epoch object (`GET /v1/epoch`, and `current` in a 410 answer) and the error body as a
//! client reads it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::AnswerError;
use super::base64url;
use crate::domain::{Epoch, FINGERPRINT_BYTES, Salt};

/// What a client needs to fingerprint numbers for the current epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpochInfo {
    /// Current epoch number.
    pub epoch: u64,
    /// Its salt, base64url without padding.
    pub salt: String,
    /// End of the epoch, RFC 3339.
    pub not_after: String,
    /// Bytes per fingerprint (8).
    pub fingerprint_bytes: usize,
    /// Most fingerprints accepted in one request.
    pub max_batch: usize,
}

impl EpochInfo {
    /// The object the server sends for `epoch`, whose salt is `salt` and which ends at
    /// `not_after_unix` (seconds).
    pub fn new(epoch: Epoch, salt: &Salt, not_after_unix: u64, max_batch: usize) -> Self {
        let not_after = UNIX_EPOCH + Duration::from_secs(not_after_unix);
        Self {
            epoch: epoch.0,
            salt: base64url::SALT.encode(salt.as_bytes()),
            not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
            fingerprint_bytes: FINGERPRINT_BYTES,
            max_batch,
        }
    }

    /// The salt.
    pub fn decode_salt(&self) -> Result<Salt, AnswerError> {
        decode_salt(&self.salt)
    }

    /// When the epoch ends.
    pub fn decode_not_after(&self) -> Result<SystemTime, AnswerError> {
        humantime::parse_rfc3339(&self.not_after).map_err(|_| AnswerError::NotAfter)
    }

    /// The batch limit, refusing a fingerprint size or a limit this client cannot work with.
    pub fn checked_max_batch(&self) -> Result<usize, AnswerError> {
        if self.fingerprint_bytes != FINGERPRINT_BYTES || self.max_batch == 0 {
            return Err(AnswerError::Limits);
        }
        Ok(self.max_batch)
    }
}

/// A salt from its text form (32 bytes, base64url without padding): the one place that form
/// is decoded.
pub fn decode_salt(text: &str) -> Result<Salt, AnswerError> {
    let mut bytes = [0u8; 32];
    match base64url::SALT.decode_slice(text, &mut bytes) {
        Ok(32) => Ok(Salt::from_bytes(bytes)),
        _ => Err(AnswerError::Salt),
    }
}

/// An error answer: `{"code", "message"}`, plus `current` on `epoch_unavailable` (410).
/// Other fields (`retry_after`, `invalid`, ...) are left to whoever needs them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// The stable error code.
    pub code: String,
    /// The human message.
    #[serde(default)]
    pub message: String,
    /// The epoch to retry on, on a 410.
    #[serde(default)]
    pub current: Option<EpochInfo>,
}

impl ErrorBody {
    /// Decodes an error answer.
    pub fn decode(body: &[u8]) -> Result<Self, AnswerError> {
        serde_json::from_slice(body).map_err(|_| AnswerError::ErrorShape)
    }

    /// The epoch a 410 names.
    pub fn into_current(self) -> Result<EpochInfo, AnswerError> {
        self.current.ok_or(AnswerError::NoCurrentEpoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_object_round_trips_its_salt_and_end() {
        let salt = Salt::from_bytes([7; 32]);
        let info = EpochInfo::new(Epoch(3), &salt, 1_700_000_000, 5_000);
        assert_eq!(info.decode_salt(), Ok(salt));
        assert_eq!(info.not_after, "2023-11-14T22:13:20Z");
        assert_eq!(
            info.decode_not_after(),
            Ok(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(info.checked_max_batch(), Ok(5_000));
    }

    #[test]
    fn refuses_bad_salts_and_limits() {
        let good = EpochInfo::new(Epoch(0), &Salt::from_bytes([1; 32]), 60, 10);
        for salt in ["", "AAAA", &format!("{}=", good.salt), &good.salt[1..]] {
            let info = EpochInfo {
                salt: salt.to_owned(),
                ..good.clone()
            };
            assert_eq!(info.decode_salt(), Err(AnswerError::Salt), "{salt}");
        }
        let zero = EpochInfo {
            max_batch: 0,
            ..good.clone()
        };
        assert_eq!(zero.checked_max_batch(), Err(AnswerError::Limits));
        let wide = EpochInfo {
            fingerprint_bytes: 16,
            ..good
        };
        assert_eq!(wide.checked_max_batch(), Err(AnswerError::Limits));
    }
}
