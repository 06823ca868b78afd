//! The two encodings of a discovery request and answer, and the media types naming them.

use super::DecodeError;
use crate::domain::FINGERPRINT_BYTES;

/// Longest JSON text allowed per fingerprint (quotes, comma, generous white space).
const JSON_BYTES_PER_FINGERPRINT: usize = 32;
/// JSON bytes allowed besides the fingerprints.
const JSON_OVERHEAD: usize = 1024;

/// The two encodings of a discovery request and response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(clap::ValueEnum))]
pub enum Format {
    /// `application/octet-stream`.
    Binary,
    /// `application/json`.
    Json,
}

impl Format {
    /// Picks the format from a media type (without parameters, lower-cased).
    pub fn from_media_type(media: Option<&str>) -> Result<Self, DecodeError> {
        match media {
            Some("application/json") => Ok(Format::Json),
            Some("application/octet-stream") => Ok(Format::Binary),
            _ => Err(DecodeError::UnsupportedMediaType {
                expected: "application/json or application/octet-stream",
            }),
        }
    }

    /// Largest body accepted for `max_batch`; room for one more fingerprint, so that a batch
    /// one too large is told `batch_too_large` rather than `body_too_large`.
    pub fn body_limit(self, max_batch: usize) -> usize {
        match self {
            Format::Binary => 8 + FINGERPRINT_BYTES * (max_batch + 1),
            Format::Json => JSON_OVERHEAD + JSON_BYTES_PER_FINGERPRINT * (max_batch + 1),
        }
    }

    /// The media type of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Binary => "application/octet-stream",
        }
    }
}
