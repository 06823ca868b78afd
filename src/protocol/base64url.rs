//! The protocol's one base64 alphabet: base64url without padding.

use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Fingerprints in JSON: written without padding, padding tolerated on input (clients that use
/// their platform's padded encoder still interoperate).
pub const FINGERPRINT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Salts in the epoch object: written and read without padding (the server writes it; a padded
/// salt is not one it sent).
pub const SALT: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The private mode's group elements in JSON: like fingerprints, written without padding,
/// padding tolerated on input.
pub const ELEMENT: GeneralPurpose = FINGERPRINT;
