//! Why bytes on the wire were refused, one type per direction.
//!
//! [`DecodeError`] is what the server finds wrong with a request; the API maps each variant to
//! one of its documented error codes. [`AnswerError`] is what a client finds wrong with an
//! answer. Two types rather than one, so neither side has to map variants it can never meet.
//! Messages are fixed text and positions; none quotes a byte of the input.

/// A discovery request the server cannot decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The media type names neither encoding.
    #[error("unsupported content type; use {expected}")]
    UnsupportedMediaType {
        /// What is accepted.
        expected: &'static str,
    },
    /// A binary body shorter than its epoch.
    #[error("a binary request starts with an 8-byte big-endian epoch")]
    MissingEpoch,
    /// The JSON body is not JSON at all (or is cut short).
    #[error("the body is not valid JSON (line {line}, column {column})")]
    NotJson {
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
    },
    /// JSON, but not the request object.
    #[error(
        "JSON does not have the shape {{\"epoch\": <u64>, \"fingerprints\": [<base64url>, ...]}} (line {line}, column {column})"
    )]
    WrongShape {
        /// Where the parser stopped.
        line: usize,
        /// Where the parser stopped.
        column: usize,
    },
    /// A JSON fingerprint that is not base64url.
    #[error("fingerprint {index} is not base64url")]
    NotBase64 {
        /// Its position in the batch.
        index: usize,
    },
    /// A fingerprint that is not 8 bytes (in binary: the body's tail).
    #[error("fingerprint {index} is not 8 bytes")]
    FingerprintLength {
        /// Its position in the batch.
        index: usize,
    },
    /// A private-mode element that is not 32 bytes (in binary: the body's tail).
    #[error("element {index} is not 32 bytes")]
    ElementLength {
        /// Its position in the batch.
        index: usize,
    },
    /// 32 bytes that are not a valid ristretto255 element (or are the identity).
    #[error("element {index} is not a valid ristretto255 element")]
    InvalidElement {
        /// Its position in the batch.
        index: usize,
    },
    /// More fingerprints than the server takes in one request.
    #[error("more than {max} fingerprints in one request; split the batch")]
    BatchTooLarge {
        /// The limit.
        max: usize,
    },
}

/// An answer from the server that the protocol does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// A binary answer whose bitmap does not fit the batch.
    #[error("binary answer has the wrong length")]
    BinaryLength,
    /// A JSON answer that is not `{"epoch": N, "registered": [...]}`.
    #[error("JSON answer is not an object with epoch and registered")]
    JsonShape,
    /// A registered index past the end of the batch.
    #[error("registered index out of range")]
    IndexOutOfRange,
    /// The epoch object's salt.
    #[error("the salt is not 32 bytes of base64url")]
    Salt,
    /// The epoch object's limits.
    #[error("unsupported fingerprint size or batch limit")]
    Limits,
    /// The epoch object's end.
    #[error("not_after is not RFC 3339")]
    NotAfter,
    /// An error body that is not `{"code": ..., "message": ...}`.
    #[error("error answer without code and message")]
    ErrorShape,
    /// An evaluation answer with another number of elements than were sent.
    #[error("evaluation answer has the wrong number of elements")]
    ElementCount,
    /// An evaluated element that is not a valid ristretto255 element.
    #[error("evaluation answer holds an invalid element")]
    InvalidElement,
    /// A 410 without the epoch to retry on.
    #[error("410 without the current epoch")]
    NoCurrentEpoch,
}
