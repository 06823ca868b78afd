//! The discovery wire formats: JSON and the compact binary form, both ways.
//!
//! Binary request: 8-byte big-endian epoch, then n × 8 fingerprint bytes. Binary response: 8-byte
//! epoch, then a bitmap of ceil(n/8) bytes, bit i (least significant first) set iff fingerprint i
//! is registered, so a response's length depends only on the request's length.
//! JSON request: `{"epoch": N, "fingerprints": ["<base64url>", ...]}`; response
//! `{"epoch": N, "registered": [ascending indices]}`.
//!
//! Decoded fingerprints live in a zeroizing vector; encoded responses are zeroizing buffers.
//! Decoder errors never quote the input (serde's own messages would, so they are not used).

use std::fmt;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use zeroize::Zeroizing;

use super::ApiError;
use super::body::extend_zeroizing;
use crate::domain::{FINGERPRINT_BYTES, Fingerprint};

/// base64url without padding; padding is tolerated on input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest JSON text allowed per fingerprint (quotes, comma, generous white space).
const JSON_BYTES_PER_FINGERPRINT: usize = 32;
/// JSON bytes allowed besides the fingerprints.
const JSON_OVERHEAD: usize = 1024;

/// The two encodings of a discovery request and response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/octet-stream`.
    Binary,
}

impl Format {
    /// Picks the format from a media type.
    pub fn from_media_type(media: Option<&str>) -> Result<Self, ApiError> {
        match media {
            Some("application/json") => Ok(Format::Json),
            Some("application/octet-stream") => Ok(Format::Binary),
            _ => Err(ApiError::UnsupportedContentType {
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

    /// The response's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Binary => "application/octet-stream",
        }
    }
}

/// A decoded discovery request. The fingerprints are wiped when it drops.
pub struct DiscoverRequest {
    /// The epoch whose salt the fingerprints were computed with.
    pub epoch: u64,
    /// The fingerprints, in the client's order.
    pub fingerprints: Zeroizing<Vec<Fingerprint>>,
}

/// Decodes a request body in `format`, refusing more than `max_batch` fingerprints.
pub fn decode(format: Format, body: &[u8], max_batch: usize) -> Result<DiscoverRequest, ApiError> {
    let request = match format {
        Format::Binary => decode_binary(body)?,
        Format::Json => decode_json(body)?,
    };
    if request.fingerprints.len() > max_batch {
        return Err(ApiError::BatchTooLarge { max: max_batch });
    }
    Ok(request)
}

fn decode_binary(body: &[u8]) -> Result<DiscoverRequest, ApiError> {
    let Some((epoch, rest)) = body.split_first_chunk::<8>() else {
        return Err(ApiError::MalformedBody(
            "a binary request starts with an 8-byte big-endian epoch".into(),
        ));
    };
    if rest.len() % FINGERPRINT_BYTES != 0 {
        return Err(ApiError::FingerprintLength {
            index: rest.len() / FINGERPRINT_BYTES,
        });
    }
    let mut fingerprints = Zeroizing::new(Vec::with_capacity(rest.len() / FINGERPRINT_BYTES));
    for chunk in rest.chunks_exact(FINGERPRINT_BYTES) {
        let mut raw = [0u8; FINGERPRINT_BYTES];
        raw.copy_from_slice(chunk);
        fingerprints.push(Fingerprint::from_bytes(raw));
    }
    Ok(DiscoverRequest {
        epoch: u64::from_be_bytes(*epoch),
        fingerprints,
    })
}

struct JsonRequest {
    epoch: u64,
    fingerprints: JsonFingerprints,
}

/// Hand-written rather than derived: a derived struct would also accept a JSON array
/// `[epoch, [...]]`, and the protocol defines the request as an object only.
impl<'de> Deserialize<'de> for JsonRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonRequest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with epoch and fingerprints")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut epoch = None;
                let mut fingerprints = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "epoch" if epoch.is_none() => epoch = Some(map.next_value::<u64>()?),
                        "fingerprints" if fingerprints.is_none() => {
                            fingerprints = Some(map.next_value::<JsonFingerprints>()?);
                        }
                        "epoch" | "fingerprints" => {
                            return Err(de::Error::custom("duplicate field"));
                        }
                        _ => return Err(de::Error::custom("unknown field")),
                    }
                }
                match (epoch, fingerprints) {
                    (Some(epoch), Some(fingerprints)) => Ok(JsonRequest {
                        epoch,
                        fingerprints,
                    }),
                    _ => Err(de::Error::custom("missing field")),
                }
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// The decoded list plus the first element that was not a valid fingerprint, if any.
/// Bad elements are recorded rather than raised, so the error can say which kind and where
/// without serde composing a message around the input.
struct JsonFingerprints {
    items: Zeroizing<Vec<Fingerprint>>,
    first_bad: Option<(usize, BadFingerprint)>,
}

#[derive(Clone, Copy)]
enum BadFingerprint {
    NotBase64,
    WrongLength,
}

/// One element: a fingerprint or why not.
struct JsonFingerprint(Result<Fingerprint, BadFingerprint>);

impl<'de> Deserialize<'de> for JsonFingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = JsonFingerprint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64url string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(JsonFingerprint(decode_fingerprint(text)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

fn decode_fingerprint(text: &str) -> Result<Fingerprint, BadFingerprint> {
    // 16 characters of base64 hold 12 bytes; anything longer cannot be 8 bytes.
    if text.len() > 16 {
        return Err(BadFingerprint::WrongLength);
    }
    let mut out = Zeroizing::new([0u8; 12]);
    match B64.decode_slice(text, &mut out[..]) {
        Ok(FINGERPRINT_BYTES) => {
            let mut raw = [0u8; FINGERPRINT_BYTES];
            raw.copy_from_slice(&out[..FINGERPRINT_BYTES]);
            Ok(Fingerprint::from_bytes(raw))
        }
        Ok(_) => Err(BadFingerprint::WrongLength),
        Err(_) => Err(BadFingerprint::NotBase64),
    }
}

impl<'de> Deserialize<'de> for JsonFingerprints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonFingerprints;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of base64url strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The body limit already bounds the length; cap the hint anyway.
                let hint = seq.size_hint().unwrap_or(0).min(1 << 16);
                let mut items = Zeroizing::new(Vec::with_capacity(hint));
                let mut first_bad = None;
                let mut index = 0usize;
                while let Some(JsonFingerprint(element)) = seq.next_element()? {
                    match element {
                        Ok(fp) => {
                            if items.len() == items.capacity() {
                                // Grow without leaving an unwiped copy behind.
                                let mut bigger =
                                    Zeroizing::new(Vec::with_capacity((items.len() * 2).max(64)));
                                bigger.extend_from_slice(&items);
                                items = bigger;
                            }
                            items.push(fp);
                        }
                        Err(bad) => {
                            first_bad.get_or_insert((index, bad));
                        }
                    }
                    index += 1;
                }
                Ok(JsonFingerprints { items, first_bad })
            }
        }
        deserializer.deserialize_seq(V)
    }
}

fn decode_json(body: &[u8]) -> Result<DiscoverRequest, ApiError> {
    let request: JsonRequest = serde_json::from_slice(body).map_err(|err| {
        let what = match err.classify() {
            serde_json::error::Category::Data => {
                "JSON does not have the shape {\"epoch\": <u64>, \"fingerprints\": [<base64url>, ...]}"
            }
            _ => "the body is not valid JSON",
        };
        ApiError::MalformedBody(format!("{what} (line {}, column {})", err.line(), err.column()))
    })?;
    match request.fingerprints.first_bad {
        Some((index, BadFingerprint::WrongLength)) => Err(ApiError::FingerprintLength { index }),
        Some((index, BadFingerprint::NotBase64)) => Err(ApiError::MalformedBody(format!(
            "fingerprint {index} is not base64url"
        ))),
        None => Ok(DiscoverRequest {
            epoch: request.epoch,
            fingerprints: request.fingerprints.items,
        }),
    }
}

/// Encodes the answer for `n` fingerprints given the match bitmap.
pub fn encode(format: Format, epoch: u64, n: usize, bitmap: &[u8]) -> Zeroizing<Vec<u8>> {
    match format {
        Format::Binary => {
            let mut out = Zeroizing::new(Vec::with_capacity(8 + bitmap.len()));
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(bitmap);
            out
        }
        Format::Json => {
            let mut out = Zeroizing::new(Vec::with_capacity(48 + n.min(1024) * 4));
            let mut number = itoa::Buffer::new();
            extend_zeroizing(&mut out, b"{\"epoch\":");
            extend_zeroizing(&mut out, number.format(epoch).as_bytes());
            extend_zeroizing(&mut out, b",\"registered\":[");
            let mut first = true;
            for i in (0..n).filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0) {
                if !first {
                    extend_zeroizing(&mut out, b",");
                }
                first = false;
                extend_zeroizing(&mut out, number.format(i).as_bytes());
            }
            extend_zeroizing(&mut out, b"]}");
            out
        }
    }
}

/// Encodes fingerprints as a request body (used by clients, tests and the demo).
pub fn encode_request(format: Format, epoch: u64, fingerprints: &[Fingerprint]) -> Vec<u8> {
    match format {
        Format::Binary => {
            let mut out = Vec::with_capacity(8 + fingerprints.len() * FINGERPRINT_BYTES);
            out.extend_from_slice(&epoch.to_be_bytes());
            for fp in fingerprints {
                out.extend_from_slice(&fp.to_bytes());
            }
            out
        }
        Format::Json => {
            let list: Vec<String> = fingerprints
                .iter()
                .map(|fp| encode_fingerprint(*fp))
                .collect();
            serde_json::json!({ "epoch": epoch, "fingerprints": list })
                .to_string()
                .into_bytes()
        }
    }
}

/// One fingerprint as base64url without padding.
pub fn encode_fingerprint(fp: Fingerprint) -> String {
    B64.encode(fp.to_bytes())
}

/// Decodes a binary response into the set bits' indices (clients and tests).
pub fn decode_binary_response(body: &[u8], n: usize) -> Option<(u64, Vec<usize>)> {
    let (epoch, bitmap) = body.split_first_chunk::<8>()?;
    if bitmap.len() != n.div_ceil(8) {
        return None;
    }
    let hits = (0..n)
        .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .collect();
    Some((u64::from_be_bytes(*epoch), hits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fps(keys: &[u64]) -> Vec<Fingerprint> {
        keys.iter()
            .map(|k| Fingerprint::from_bytes(k.to_le_bytes()))
            .collect()
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

    #[test]
    fn json_fingerprints_accept_padding_and_reject_noncanonical_bits() {
        let fp = Fingerprint::from_bytes(*b"secretfp");
        let text = encode_fingerprint(fp);
        assert_eq!(decode_fingerprint(&text).ok(), Some(fp));
        assert_eq!(decode_fingerprint(&format!("{text}=")).ok(), Some(fp));
        // Last character with non-zero unused bits is not canonical base64.
        let mut bad = text.clone();
        bad.pop();
        bad.push('B');
        assert!(matches!(
            decode_fingerprint(&bad),
            Err(BadFingerprint::NotBase64)
        ));
    }

    #[test]
    fn json_response_lists_ascending_indices() {
        let bitmap = [0b0000_0101u8, 0b1000_0000];
        let out = encode(Format::Json, 9, 16, &bitmap);
        assert_eq!(&out[..], br#"{"epoch":9,"registered":[0,2,15]}"#);
        let out = encode(Format::Binary, 9, 16, &bitmap);
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 9, 0b101, 0b1000_0000]);
    }

    proptest! {
        #[test]
        fn requests_round_trip(epoch in any::<u64>(), keys in proptest::collection::vec(any::<u64>(), 0..100)) {
            for format in [Format::Binary, Format::Json] {
                let body = encode_request(format, epoch, &fps(&keys));
                let decoded = decode(format, &body, 100).unwrap();
                prop_assert_eq!(decoded.epoch, epoch);
                prop_assert_eq!(&decoded.fingerprints[..], &fps(&keys)[..]);
                prop_assert!(body.len() <= format.body_limit(keys.len()));
            }
        }

        #[test]
        fn binary_response_round_trips(epoch in any::<u64>(), bits in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut bitmap = vec![0u8; bits.len().div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                if *b { bitmap[i / 8] |= 1 << (i % 8); }
            }
            let out = encode(Format::Binary, epoch, bits.len(), &bitmap);
            prop_assert_eq!(out.len(), 8 + bits.len().div_ceil(8));
            let (e, hits) = decode_binary_response(&out, bits.len()).unwrap();
            prop_assert_eq!(e, epoch);
            let want: Vec<usize> = bits.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
            prop_assert_eq!(hits, want);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Format::Binary, &bytes, 10);
            let _ = decode(Format::Json, &bytes, 10);
        }
    }
}
