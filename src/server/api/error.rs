//! The one error type of the HTTP API: every variant has a status and a stable `code`.
//!
//! Messages are fixed text plus numbers the server chose or counted (limits, indexes, epochs);
//! none carries a byte of what the client uploaded.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::domain::CredentialError;
use crate::protocol::{DecodeError, EpochInfo};

/// Where in an admin request an invalid number sits.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvalidNumber {
    /// `add`, `remove` or `hide`.
    pub field: &'static str,
    /// Position in that list.
    pub index: usize,
    /// Why it is not a strict E.164 number.
    pub reason: String,
}

/// The problems of an admin request: the first [`Problems::SHOWN`] of them, and how many in all.
/// Only the first few are echoed, so the answer to a huge bad request stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    /// The first few, in request order.
    pub shown: Vec<InvalidNumber>,
    /// How many there are in all.
    pub total: usize,
}

impl Problems {
    /// Most problems echoed in one answer.
    pub const SHOWN: usize = 20;

    /// Records one more problem; keeps it only while fewer than [`Problems::SHOWN`] are kept.
    pub fn push(&mut self, problem: InvalidNumber) {
        if self.shown.len() < Self::SHOWN {
            self.shown.push(problem);
        }
        self.total += 1;
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Why the service is not ready (`503 not_ready`). Each is a fixed text about the service's own
/// state: never a count, a threshold or anything else derived from what was uploaded or
/// registered (`/readyz` answers on the public listener too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReadyCause {
    /// Fewer numbers are registered than `--ready-min-registrations` asks for.
    TooFewRegistrations,
    /// The shared registry stream has not been read up to its head yet.
    StreamCatchingUp,
    /// The current epoch's match index is not built yet.
    IndexBuilding,
    /// The private mode's set of the current key epoch is not built yet.
    PrivateSetBuilding,
}

impl NotReadyCause {
    /// The cause for people.
    pub fn message(self) -> &'static str {
        match self {
            NotReadyCause::TooFewRegistrations => {
                "fewer numbers are registered than --ready-min-registrations asks for"
            }
            NotReadyCause::StreamCatchingUp => "the shared registry stream is not caught up yet",
            NotReadyCause::IndexBuilding => "the current epoch's match index is not built yet",
            NotReadyCause::PrivateSetBuilding => {
                "the private mode's set of the current key epoch is not built yet"
            }
        }
    }

    /// The causes' messages, joined.
    fn describe(causes: &[NotReadyCause]) -> String {
        let messages: Vec<&str> = causes.iter().map(|cause| cause.message()).collect();
        messages.join("; ")
    }
}

/// Every way an API request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header.
    #[error("missing credential: send Authorization: Bearer <credential>")]
    MissingCredential,
    /// The credential is malformed, forged or too long-lived.
    #[error("invalid credential: {0}")]
    InvalidCredential(CredentialError),
    /// The credential has expired.
    #[error("the credential has expired; fetch a new one from the messaging backend")]
    ExpiredCredential,
    /// Admin request without the right token.
    #[error("missing or wrong admin token")]
    AdminUnauthorized,
    /// Content-Type is not one the route accepts.
    #[error("unsupported content type; use {expected}")]
    UnsupportedContentType {
        /// What the route accepts.
        expected: &'static str,
    },
    /// The body exceeds the route's byte limit.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More fingerprints than `max_batch`.
    #[error("more than {max} fingerprints in one request; split the batch")]
    BatchTooLarge {
        /// The limit.
        max: usize,
    },
    /// The body cannot be decoded.
    #[error("malformed request body: {0}")]
    MalformedBody(String),
    /// A fingerprint is not 8 bytes.
    #[error("fingerprint {index} is not 8 bytes")]
    FingerprintLength {
        /// Its position in the batch.
        index: usize,
    },
    /// The epoch named is not served; retry with the current one (in the body).
    #[error("epoch is not served (expired or unknown); retry with the current epoch")]
    EpochUnavailable(Box<EpochInfo>),
    /// The caller's fingerprint budget is spent.
    #[error("rate limit reached; retry after {retry_after} seconds")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The service is not ready to answer; the causes say why (at least one).
    #[error("the service is not ready: {}", NotReadyCause::describe(.0))]
    NotReady(Vec<NotReadyCause>),
    /// Admin request names invalid numbers; nothing was applied.
    #[error("{} invalid numbers; nothing was applied", .0.total)]
    InvalidNumbers(Problems),
    /// Admin request names a number in more than one list; nothing was applied.
    #[error("a number appears more than once across add, remove and hide; nothing was applied")]
    ConflictingChanges(Problems),
    /// Admin request with more operations than one request may carry; nothing was applied.
    #[error("more than {max} operations in one request; split it (bulk loads: registry import)")]
    TooManyOperations {
        /// The limit.
        max: usize,
    },
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// The route exists but not for this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A handler panicked (a bug); the message is fixed so no request data can leak through it.
    #[error("internal error")]
    Panic,
    /// The registry could not make a change durable; nothing was acknowledged.
    #[error("the registry could not store the change; nothing was applied")]
    Storage,
    /// The shared registry stream (Redis) could not take the change; nothing was acknowledged.
    #[error("the shared registry stream is unavailable; nothing was applied; retry shortly")]
    RegistryStreamUnavailable,
    /// The body did not arrive within the body read timeout (a slow or stalled client).
    #[error("the request body was not received within {secs} seconds")]
    BodyTimeout {
        /// The timeout in whole seconds (rounded up).
        secs: u64,
    },
    /// The body arrived slower than the minimum data rate (a trickling client).
    #[error("the request body arrived slower than {bytes_per_sec} bytes per second")]
    BodyTooSlow {
        /// The minimum rate.
        bytes_per_sec: u64,
    },
    /// This user already has as many requests in flight as one user may.
    #[error(
        "too many requests of this user in flight (at most {max}); retry after {retry_after} seconds"
    )]
    UserInFlight {
        /// The per-user cap.
        max: usize,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// hyper could not parse the request (request line, header syntax); answered before routing.
    #[error("the request could not be parsed as HTTP/1.1")]
    MalformedRequest,
    /// The request target is longer than the server reads.
    #[error("the request URI is too long")]
    UriTooLong,
    /// The request head (headers) is larger than the server reads, or has too many headers.
    #[error("the request headers are too large")]
    HeadersTooLarge,
    /// A private-mode element that is not 32 bytes.
    #[error("element {index} is not 32 bytes")]
    ElementLength {
        /// Its position in the batch.
        index: usize,
    },
    /// A private-mode element that is not a valid ristretto255 element.
    #[error("element {index} is not a valid ristretto255 element")]
    InvalidElement {
        /// Its position in the batch.
        index: usize,
    },
    /// The key epoch named is not served; fetch the set of the current one (in the body).
    #[error("key epoch is not served (expired or unknown); sync the set of the current key epoch")]
    KeyEpochUnavailable {
        /// The key epoch to use instead.
        current: u64,
    },
    /// A shard index past the end of the set.
    #[error("no such shard; the set has {shards} shards")]
    UnknownShard {
        /// Shards in the set.
        shards: u32,
    },
    /// The set version named is not in this replica's recent history.
    #[error("no delta from that version here; fetch the shards whose ETags changed")]
    DeltaUnavailable,
    /// A query parameter is missing or malformed.
    #[error("invalid query: {0}")]
    InvalidQuery(&'static str),
    /// Too many requests in flight: shed at once rather than queued; retry shortly.
    #[error("the service is overloaded; retry after {retry_after} seconds")]
    Overloaded {
        /// Seconds to wait.
        retry_after: u64,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingCredential | InvalidCredential(_) | ExpiredCredential | AdminUnauthorized => {
                StatusCode::UNAUTHORIZED
            }
            UnsupportedContentType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge { .. } | BatchTooLarge { .. } | TooManyOperations { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            MalformedBody(_) | MalformedRequest => StatusCode::BAD_REQUEST,
            UriTooLong => StatusCode::URI_TOO_LONG,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            FingerprintLength { .. }
            | ElementLength { .. }
            | InvalidElement { .. }
            | InvalidNumbers(_)
            | ConflictingChanges(_) => StatusCode::UNPROCESSABLE_ENTITY,
            EpochUnavailable(_) | KeyEpochUnavailable { .. } => StatusCode::GONE,
            UnknownShard { .. } | DeltaUnavailable => StatusCode::NOT_FOUND,
            InvalidQuery(_) => StatusCode::BAD_REQUEST,
            RateLimited { .. } | UserInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Panic | Storage => StatusCode::INTERNAL_SERVER_ERROR,
            BodyTimeout { .. } | BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Overloaded { .. } | RegistryStreamUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            MissingCredential => "missing_credential",
            InvalidCredential(_) => "invalid_credential",
            ExpiredCredential => "expired_credential",
            AdminUnauthorized => "invalid_admin_token",
            UnsupportedContentType { .. } => "unsupported_content_type",
            BodyTooLarge { .. } => "body_too_large",
            BatchTooLarge { .. } => "batch_too_large",
            MalformedBody(_) => "malformed_body",
            FingerprintLength { .. } => "invalid_fingerprint_length",
            EpochUnavailable(_) => "epoch_unavailable",
            RateLimited { .. } => "rate_limited",
            NotReady(_) => "not_ready",
            InvalidNumbers(_) => "invalid_numbers",
            ConflictingChanges(_) => "conflicting_changes",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Panic => "internal",
            Storage => "storage_unavailable",
            BodyTimeout { .. } => "body_timeout",
            Overloaded { .. } => "overloaded",
            RegistryStreamUnavailable => "registry_stream_unavailable",
            TooManyOperations { .. } => "too_many_operations",
            BodyTooSlow { .. } => "body_too_slow",
            UserInFlight { .. } => "user_in_flight",
            MalformedRequest => "malformed_request",
            UriTooLong => "uri_too_long",
            HeadersTooLarge => "headers_too_large",
            ElementLength { .. } => "invalid_element_length",
            InvalidElement { .. } => "invalid_element",
            KeyEpochUnavailable { .. } => "key_epoch_unavailable",
            UnknownShard { .. } => "unknown_shard",
            DeltaUnavailable => "delta_unavailable",
            InvalidQuery(_) => "invalid_query",
        }
    }

    /// Seconds the client should wait before retrying, for the errors that say so (the
    /// `retry_after` field and the `Retry-After` header).
    pub fn retry_after(&self) -> Option<u64> {
        use ApiError::*;
        match self {
            RateLimited { retry_after }
            | Overloaded { retry_after }
            | UserInFlight { retry_after, .. } => Some(*retry_after),
            NotReady(_) | RegistryStreamUnavailable => Some(1),
            _ => None,
        }
    }

    /// Every code, for documentation tests.
    pub const CODES: &'static [&'static str] = &[
        "missing_credential",
        "invalid_credential",
        "expired_credential",
        "invalid_admin_token",
        "unsupported_content_type",
        "body_too_large",
        "batch_too_large",
        "malformed_body",
        "invalid_fingerprint_length",
        "epoch_unavailable",
        "rate_limited",
        "not_ready",
        "invalid_numbers",
        "conflicting_changes",
        "not_found",
        "method_not_allowed",
        "internal",
        "storage_unavailable",
        "body_timeout",
        "overloaded",
        "registry_stream_unavailable",
        "too_many_operations",
        "body_too_slow",
        "user_in_flight",
        "malformed_request",
        "uri_too_long",
        "headers_too_large",
        "invalid_element_length",
        "invalid_element",
        "key_epoch_unavailable",
        "unknown_shard",
        "delta_unavailable",
        "invalid_query",
    ];
}

impl From<CredentialError> for ApiError {
    fn from(err: CredentialError) -> Self {
        match err {
            CredentialError::Expired => ApiError::ExpiredCredential,
            other => ApiError::InvalidCredential(other),
        }
    }
}

/// Each way a request fails to decode is one of the API's documented codes; the malformed
/// ones share `malformed_body` and keep the decoder's message.
impl From<DecodeError> for ApiError {
    fn from(err: DecodeError) -> Self {
        match err {
            DecodeError::UnsupportedMediaType { expected } => {
                ApiError::UnsupportedContentType { expected }
            }
            DecodeError::FingerprintLength { index } => ApiError::FingerprintLength { index },
            DecodeError::BatchTooLarge { max } => ApiError::BatchTooLarge { max },
            DecodeError::ElementLength { index } => ApiError::ElementLength { index },
            DecodeError::InvalidElement { index } => ApiError::InvalidElement { index },
            malformed @ (DecodeError::MissingEpoch
            | DecodeError::NotJson { .. }
            | DecodeError::WrongShape { .. }
            | DecodeError::NotBase64 { .. }) => ApiError::MalformedBody(malformed.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({ "code": self.code(), "message": self.to_string() });
        let retry_after = self.retry_after();
        if let Some(secs) = retry_after {
            body["retry_after"] = json!(secs);
        }
        match &self {
            ApiError::EpochUnavailable(info) => {
                body["current"] = json!(info);
            }
            ApiError::KeyEpochUnavailable { current } => {
                body["current_key_epoch"] = json!(current);
            }
            ApiError::InvalidNumbers(problems) | ApiError::ConflictingChanges(problems) => {
                body["invalid"] = json!(problems.shown);
                body["invalid_total"] = json!(problems.total);
            }
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"contact-discovery\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DiscoverRequest, Format, decode_request};

    /// Decodes as the discover handler does, errors mapped to the API's.
    fn decode(format: Format, body: &[u8], max: usize) -> Result<DiscoverRequest, ApiError> {
        Ok(decode_request(format, body, max)?)
    }

    #[test]
    fn every_variant_code_is_listed_and_distinct() {
        let samples = [
            ApiError::MissingCredential,
            ApiError::InvalidCredential(CredentialError::BadMac),
            ApiError::ExpiredCredential,
            ApiError::AdminUnauthorized,
            ApiError::UnsupportedContentType { expected: "x" },
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::BatchTooLarge { max: 1 },
            ApiError::MalformedBody(String::new()),
            ApiError::FingerprintLength { index: 0 },
            ApiError::EpochUnavailable(Box::new(EpochInfo {
                epoch: 0,
                salt: String::new(),
                not_after: String::new(),
                fingerprint_bytes: 8,
                max_batch: 1,
            })),
            ApiError::RateLimited { retry_after: 1 },
            ApiError::NotReady(vec![NotReadyCause::IndexBuilding]),
            ApiError::InvalidNumbers(Problems::default()),
            ApiError::ConflictingChanges(Problems::default()),
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::Panic,
            ApiError::Storage,
            ApiError::BodyTimeout { secs: 1 },
            ApiError::Overloaded { retry_after: 1 },
            ApiError::RegistryStreamUnavailable,
            ApiError::TooManyOperations { max: 1 },
            ApiError::BodyTooSlow { bytes_per_sec: 1 },
            ApiError::UserInFlight {
                max: 1,
                retry_after: 1,
            },
            ApiError::MalformedRequest,
            ApiError::UriTooLong,
            ApiError::HeadersTooLarge,
            ApiError::ElementLength { index: 0 },
            ApiError::InvalidElement { index: 0 },
            ApiError::KeyEpochUnavailable { current: 0 },
            ApiError::UnknownShard { shards: 1 },
            ApiError::DeltaUnavailable,
            ApiError::InvalidQuery("x"),
        ];
        let codes: Vec<_> = samples.iter().map(ApiError::code).collect();
        assert_eq!(codes, ApiError::CODES);
        for e in &samples {
            let client_error = e.status().is_client_error();
            let server_side = matches!(
                e,
                ApiError::NotReady(_)
                    | ApiError::Panic
                    | ApiError::Storage
                    | ApiError::Overloaded { .. }
                    | ApiError::RegistryStreamUnavailable
            );
            assert!(client_error ^ server_side, "{}", e.code());
        }
    }

    #[test]
    fn not_ready_names_every_cause_in_fixed_words() {
        let error = ApiError::NotReady(vec![
            NotReadyCause::TooFewRegistrations,
            NotReadyCause::PrivateSetBuilding,
        ]);
        assert_eq!(
            error.to_string(),
            "the service is not ready: fewer numbers are registered than \
             --ready-min-registrations asks for; the private mode's set of the current key epoch \
             is not built yet"
        );
        assert_eq!((error.code(), error.retry_after()), ("not_ready", Some(1)));
    }

    #[test]
    fn binary_errors() {
        assert!(matches!(
            decode(Format::Binary, &[0; 7], 10),
            Err(ApiError::MalformedBody(_))
        ));
        assert!(matches!(
            decode(Format::Binary, &[0; 8 + 12], 10),
            Err(ApiError::FingerprintLength { index: 1 })
        ));
        assert!(matches!(
            decode(Format::Binary, &[0; 8 + 8 * 11], 10),
            Err(ApiError::BatchTooLarge { max: 10 })
        ));
        let empty = decode(Format::Binary, &[0, 0, 0, 0, 0, 0, 0, 5], 10).unwrap();
        assert_eq!((empty.epoch, empty.fingerprints.len()), (5, 0));
    }

    #[test]
    fn json_errors_never_quote_input() {
        let secret = "c2VjcmV0ZnA"; // 8 bytes of base64url
        let cases: &[(&str, &str)] = &[
            (
                "{\"epoch\":1,\"fingerprints\":[\"c2VjcmV0ZnA\",\"c2Vj\"]}",
                "invalid_fingerprint_length",
            ),
            (
                "{\"epoch\":1,\"fingerprints\":[\"c2VjcmV0ZnA\",\"c2VjcmV0Zn!\"]}",
                "malformed_body",
            ),
            (
                "{\"epoch\":1,\"fingerprints\":[\"c2VjcmV0ZnA\"],\"x\":\"c2VjcmV0ZnA\"}",
                "malformed_body",
            ),
            (
                "{\"epoch\":1,\"epoch\":2,\"fingerprints\":[\"c2VjcmV0ZnA\"]}",
                "malformed_body",
            ),
            (
                "{\"epoch\":\"c2VjcmV0ZnA\",\"fingerprints\":[]}",
                "malformed_body",
            ),
            (
                "{\"epoch\":1,\"fingerprints\":[\"c2VjcmV0ZnA\", 7]}",
                "malformed_body",
            ),
            ("{\"epoch\":-1,\"fingerprints\":[]}", "malformed_body"),
            ("[1,[\"c2VjcmV0ZnA\"]]", "malformed_body"),
            ("{\"fingerprints\":[\"c2VjcmV0ZnA\"]}", "malformed_body"),
            (
                "{\"epoch\":1,\"fingerprints\":[\"c2VjcmV0ZnA\"",
                "malformed_body",
            ),
            (
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[c2VjcmV0ZnA",
                "malformed_body",
            ),
            (
                "{\"epoch\":1,\"fingerprints\":\"c2VjcmV0ZnA\"}",
                "malformed_body",
            ),
        ];
        for (body, code) in cases {
            let err = decode(Format::Json, body.as_bytes(), 10).err().unwrap();
            assert_eq!(err.code(), *code, "{body}");
            assert!(!err.to_string().contains(secret), "{err}");
            assert!(!err.to_string().contains("c2Vj"), "{err}");
        }
    }
}
