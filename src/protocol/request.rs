//! The discovery request: `POST /v1/discover`'s body, encoded by clients, decoded by the server.
//!
//! Binary: 8-byte big-endian epoch, then n × 8 fingerprint bytes. JSON:
//! `{"epoch": N, "fingerprints": ["<base64url>", ...]}`, an object only, no other field.
//!
//! Decoded fingerprints live in a zeroizing vector. Decoder errors never quote the input
//! (serde's own messages would, so they are not used).

use std::fmt;

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use zeroize::Zeroizing;

use super::base64url::FINGERPRINT as B64;
use super::json_object::{EpochAndList, Fields};
use super::{DecodeError, Format};
use crate::domain::{FINGERPRINT_BYTES, Fingerprint};

/// A decoded discovery request. The fingerprints are wiped when it drops.
pub struct DiscoverRequest {
    /// The epoch whose salt the fingerprints were computed with.
    pub epoch: u64,
    /// The fingerprints, in the client's order.
    pub fingerprints: Zeroizing<Vec<Fingerprint>>,
}

/// Decodes a request body in `format`, refusing more than `max_batch` fingerprints.
pub fn decode_request(
    format: Format,
    body: &[u8],
    max_batch: usize,
) -> Result<DiscoverRequest, DecodeError> {
    let request = match format {
        Format::Binary => decode_binary(body)?,
        Format::Json => decode_json(body)?,
    };
    if request.fingerprints.len() > max_batch {
        return Err(DecodeError::BatchTooLarge { max: max_batch });
    }
    Ok(request)
}

fn decode_binary(body: &[u8]) -> Result<DiscoverRequest, DecodeError> {
    let Some((epoch, rest)) = body.split_first_chunk::<8>() else {
        return Err(DecodeError::MissingEpoch);
    };
    if rest.len() % FINGERPRINT_BYTES != 0 {
        return Err(DecodeError::FingerprintLength {
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

struct RequestFields;
impl Fields for RequestFields {
    const EPOCH: &'static str = "epoch";
    const LIST: &'static str = "fingerprints";
    const SHAPE: &'static str = r#"{"epoch": <u64>, "fingerprints": [<base64url>, ...]}"#;
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

fn decode_json(body: &[u8]) -> Result<DiscoverRequest, DecodeError> {
    let request: EpochAndList<JsonFingerprints, RequestFields> =
        super::json_object::from_slice(body)?;
    match request.list.first_bad {
        Some((index, BadFingerprint::WrongLength)) => Err(DecodeError::FingerprintLength { index }),
        Some((index, BadFingerprint::NotBase64)) => Err(DecodeError::NotBase64 { index }),
        None => Ok(DiscoverRequest {
            epoch: request.epoch,
            fingerprints: request.list.items,
        }),
    }
}

/// Encodes fingerprints as a request body (clients, the load generator, the demo, tests).
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

    /// The error a request is refused with.
    fn refusal(format: Format, body: &[u8], max_batch: usize) -> DecodeError {
        match decode_request(format, body, max_batch) {
            Ok(request) => panic!("accepted {} fingerprints", request.fingerprints.len()),
            Err(err) => err,
        }
    }

    #[test]
    fn batch_limit_admits_exactly_max_batch() {
        for format in [Format::Binary, Format::Json] {
            let body = encode_request(format, 1, &fps(&[1, 2, 3]));
            let decoded = decode_request(format, &body, 3).unwrap();
            assert_eq!(&decoded.fingerprints[..], &fps(&[1, 2, 3])[..]);
            assert_eq!(
                refusal(format, &body, 2),
                DecodeError::BatchTooLarge { max: 2 }
            );
        }
    }

    #[test]
    fn binary_refusals_name_the_short_fingerprint() {
        assert_eq!(
            refusal(Format::Binary, &[0; 7], 10),
            DecodeError::MissingEpoch
        );
        // Two whole fingerprints and three stray bytes: the third one is short.
        assert_eq!(
            refusal(Format::Binary, &[0; 8 + 16 + 3], 10),
            DecodeError::FingerprintLength { index: 2 }
        );
    }

    #[test]
    fn json_refusals_name_the_first_bad_fingerprint_and_its_kind() {
        let good = encode_fingerprint(Fingerprint::from_bytes(*b"goodfpfp"));
        let body = |items: &str| format!(r#"{{"epoch":1,"fingerprints":[{items}]}}"#);
        let cases = [
            // Decodes, but to 3 bytes.
            (
                format!(r#""{good}","AAAA","!!""#),
                DecodeError::FingerprintLength { index: 1 },
            ),
            (
                format!(r#""{good}","{good}","!!!!","AAAA""#),
                DecodeError::NotBase64 { index: 2 },
            ),
            // Sixteen characters might still be base64 (of 12 bytes): this is simply not base64.
            (
                format!(r#""{}""#, "!".repeat(16)),
                DecodeError::NotBase64 { index: 0 },
            ),
            // Seventeen characters cannot be 8 bytes, whatever they are.
            (
                format!(r#""{}""#, "A".repeat(17)),
                DecodeError::FingerprintLength { index: 0 },
            ),
        ];
        for (items, want) in cases {
            assert_eq!(
                refusal(Format::Json, body(&items).as_bytes(), 10),
                want,
                "{items}"
            );
        }
    }

    #[test]
    fn json_request_is_one_object_with_each_field_once() {
        let wrong_shape = [
            r#"{"epoch":1,"epoch":1,"fingerprints":[]}"#,
            r#"{"epoch":1,"fingerprints":[],"fingerprints":[]}"#,
            r#"{"epoch":1,"fingerprints":[],"extra":0}"#,
            r#"{"epoch":1}"#,
            r#"{"fingerprints":[]}"#,
            r#"[1,[]]"#,
            r#"{"epoch":"1","fingerprints":[]}"#,
        ];
        for body in wrong_shape {
            let err = refusal(Format::Json, body.as_bytes(), 10);
            assert!(
                matches!(err, DecodeError::WrongShape { .. }),
                "{body}: {err:?}"
            );
        }
        for body in ["", "{", r#"{"epoch":1,"fingerprints":["#, "not json"] {
            let err = refusal(Format::Json, body.as_bytes(), 10);
            assert!(
                matches!(err, DecodeError::NotJson { .. }),
                "{body}: {err:?}"
            );
        }
        let decoded =
            decode_request(Format::Json, br#"{"fingerprints":[],"epoch":7}"#, 10).unwrap();
        assert_eq!((decoded.epoch, decoded.fingerprints.len()), (7, 0));
    }

    proptest! {
        #[test]
        fn requests_round_trip(epoch in any::<u64>(), keys in proptest::collection::vec(any::<u64>(), 0..100)) {
            for format in [Format::Binary, Format::Json] {
                let body = encode_request(format, epoch, &fps(&keys));
                let decoded = decode_request(format, &body, 100).unwrap();
                prop_assert_eq!(decoded.epoch, epoch);
                prop_assert_eq!(&decoded.fingerprints[..], &fps(&keys)[..]);
                prop_assert!(body.len() <= format.body_limit(keys.len()));
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(Format::Binary, &bytes, 10);
            let _ = decode_request(Format::Json, &bytes, 10);
        }
    }
}
