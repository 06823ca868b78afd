//! The private mode's evaluation exchange: `POST /v1/private/evaluate`.
//!
//! Request, binary: 8-byte big-endian key epoch, then n × 32-byte blinded elements. JSON:
//! `{"key_epoch": N, "blinded": ["<base64url, 43 characters>", ...]}`, an object only, each
//! field once, no other field. Answer, binary: 8-byte big-endian key epoch, then n × 32-byte
//! evaluated elements in request order. JSON: `{"key_epoch": N, "evaluated": [...]}`.
//!
//! The server decodes a request into parsed [`BlindedElement`]s (each must be the canonical
//! encoding of a non-identity ristretto255 element), so an invalid element is refused with its
//! position before any is evaluated. Decoder errors never quote the input.

use base64::Engine;
use serde::Deserialize;

use super::base64url::ELEMENT as B64;
use super::json_object::{EpochAndList, Fields};
use super::{AnswerError, DecodeError, Format};
use crate::domain::oprf::{BlindedElement, ELEMENT_BYTES, EvaluatedElement};

/// Longest JSON text allowed per element (43 characters, quotes, comma, some white space).
const JSON_BYTES_PER_ELEMENT: usize = 64;
/// JSON bytes allowed besides the elements.
const JSON_OVERHEAD: usize = 1024;

/// Largest evaluate body accepted for `max_batch` elements in `format`; room for one more
/// element, so a batch one too large is told `batch_too_large` rather than `body_too_large`.
pub fn body_limit(format: Format, max_batch: usize) -> usize {
    match format {
        Format::Binary => 8 + ELEMENT_BYTES * (max_batch + 1),
        Format::Json => JSON_OVERHEAD + JSON_BYTES_PER_ELEMENT * (max_batch + 1),
    }
}

/// Elements a refused body of `bytes` stands for (what it is charged).
pub fn elements_in(format: Format, bytes: usize) -> usize {
    match format {
        Format::Binary => bytes.saturating_sub(8) / ELEMENT_BYTES,
        // 43 base64url characters and two quotes: the least a JSON element takes.
        Format::Json => bytes / 45,
    }
}

/// A decoded evaluation request.
#[derive(Debug)]
pub struct EvaluateRequest {
    /// The key epoch the client's set belongs to.
    pub key_epoch: u64,
    /// The blinded elements, in the client's order.
    pub elements: Vec<BlindedElement>,
}

/// Decodes a request body, refusing more than `max_batch` elements and any invalid one.
pub fn decode_evaluate(
    format: Format,
    body: &[u8],
    max_batch: usize,
) -> Result<EvaluateRequest, DecodeError> {
    let (key_epoch, raw) = match format {
        Format::Binary => decode_binary(body)?,
        Format::Json => decode_json(body)?,
    };
    if raw.len() > max_batch {
        return Err(DecodeError::BatchTooLarge { max: max_batch });
    }
    let elements = raw
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            BlindedElement::from_bytes(bytes).map_err(|_| DecodeError::InvalidElement { index })
        })
        .collect::<Result<_, _>>()?;
    Ok(EvaluateRequest {
        key_epoch,
        elements,
    })
}

fn decode_binary(body: &[u8]) -> Result<(u64, Vec<[u8; ELEMENT_BYTES]>), DecodeError> {
    let Some((epoch, rest)) = body.split_first_chunk::<8>() else {
        return Err(DecodeError::MissingEpoch);
    };
    let (chunks, tail) = rest.as_chunks::<ELEMENT_BYTES>();
    if !tail.is_empty() {
        return Err(DecodeError::ElementLength {
            index: chunks.len(),
        });
    }
    Ok((u64::from_be_bytes(*epoch), chunks.to_vec()))
}

struct RequestFields;
impl Fields for RequestFields {
    const EPOCH: &'static str = "key_epoch";
    const LIST: &'static str = "blinded";
    const SHAPE: &'static str = r#"{"key_epoch": <u64>, "blinded": [<base64url>, ...]}"#;
}

fn decode_json(body: &[u8]) -> Result<(u64, Vec<[u8; ELEMENT_BYTES]>), DecodeError> {
    let request: EpochAndList<Vec<JsonElement>, RequestFields> =
        super::json_object::from_slice(body)?;
    let mut out = Vec::with_capacity(request.list.len());
    for (index, JsonElement(element)) in request.list.into_iter().enumerate() {
        match element {
            Ok(bytes) => out.push(bytes),
            Err(BadElement::WrongLength) => return Err(DecodeError::ElementLength { index }),
            Err(BadElement::NotBase64) => return Err(DecodeError::NotBase64 { index }),
        }
    }
    Ok((request.epoch, out))
}

#[derive(Clone, Copy)]
enum BadElement {
    NotBase64,
    WrongLength,
}

/// One JSON element: its bytes or why not (recorded rather than raised, so serde never
/// composes a message around the input).
struct JsonElement(Result<[u8; ELEMENT_BYTES], BadElement>);

impl<'de> Deserialize<'de> for JsonElement {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = JsonElement;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64url string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(JsonElement(decode_element(text)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

fn decode_element(text: &str) -> Result<[u8; ELEMENT_BYTES], BadElement> {
    // 44 characters of base64 hold 33 bytes; anything longer cannot be 32.
    if text.len() > 44 {
        return Err(BadElement::WrongLength);
    }
    let mut out = [0u8; 33];
    match B64.decode_slice(text, &mut out[..]) {
        Ok(ELEMENT_BYTES) => {
            let mut raw = [0u8; ELEMENT_BYTES];
            raw.copy_from_slice(&out[..ELEMENT_BYTES]);
            Ok(raw)
        }
        Ok(_) => Err(BadElement::WrongLength),
        Err(_) => Err(BadElement::NotBase64),
    }
}

/// Encodes blinded elements as a request body (clients, tests).
pub fn encode_evaluate(format: Format, key_epoch: u64, elements: &[BlindedElement]) -> Vec<u8> {
    let bytes: Vec<[u8; ELEMENT_BYTES]> = elements.iter().map(BlindedElement::to_bytes).collect();
    encode_evaluate_serialized(format, key_epoch, &bytes)
}

/// Encodes blinded elements already serialised (`BlindedElement::to_bytes`) as a request body:
/// for the load generator, which sends one pool of elements in many bodies and would otherwise
/// pay a point compression (several µs) per element per body.
pub fn encode_evaluate_serialized(
    format: Format,
    key_epoch: u64,
    elements: &[[u8; ELEMENT_BYTES]],
) -> Vec<u8> {
    encode_elements(format, key_epoch, "blinded", elements)
}

/// Encodes evaluated elements as the answer body (the server).
pub fn encode_evaluated(format: Format, key_epoch: u64, elements: &[EvaluatedElement]) -> Vec<u8> {
    let bytes: Vec<[u8; ELEMENT_BYTES]> = elements.iter().map(EvaluatedElement::to_bytes).collect();
    encode_elements(format, key_epoch, "evaluated", &bytes)
}

fn encode_elements(
    format: Format,
    key_epoch: u64,
    field: &str,
    elements: &[[u8; ELEMENT_BYTES]],
) -> Vec<u8> {
    match format {
        Format::Binary => {
            let mut out = Vec::with_capacity(8 + elements.len() * ELEMENT_BYTES);
            out.extend_from_slice(&key_epoch.to_be_bytes());
            for element in elements {
                out.extend_from_slice(element);
            }
            out
        }
        Format::Json => {
            let list: Vec<String> = elements.iter().map(|e| B64.encode(e)).collect();
            let mut object = serde_json::Map::new();
            object.insert("key_epoch".into(), key_epoch.into());
            object.insert(field.into(), list.into());
            serde_json::Value::Object(object).to_string().into_bytes()
        }
    }
}

/// A decoded evaluation answer.
#[derive(Debug)]
pub struct Evaluated {
    /// The key epoch the server evaluated under.
    pub key_epoch: u64,
    /// One element per blinded element sent, in the same order.
    pub elements: Vec<EvaluatedElement>,
}

/// Decodes the server's answer to a request of `sent` elements (clients).
pub fn decode_evaluated(
    format: Format,
    body: &[u8],
    sent: usize,
) -> Result<Evaluated, AnswerError> {
    let (key_epoch, raw) = match format {
        Format::Binary => decode_binary(body).map_err(|_| AnswerError::BinaryLength)?,
        Format::Json => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Answer {
                key_epoch: u64,
                evaluated: Vec<String>,
            }
            let answer: Answer =
                serde_json::from_slice(body).map_err(|_| AnswerError::JsonShape)?;
            let raw = answer
                .evaluated
                .iter()
                .map(|text| decode_element(text).map_err(|_| AnswerError::JsonShape))
                .collect::<Result<Vec<_>, _>>()?;
            (answer.key_epoch, raw)
        }
    };
    if raw.len() != sent {
        return Err(AnswerError::ElementCount);
    }
    let elements = raw
        .iter()
        .map(|bytes| EvaluatedElement::from_bytes(bytes).map_err(|_| AnswerError::InvalidElement))
        .collect::<Result<_, _>>()?;
    Ok(Evaluated {
        key_epoch,
        elements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::oprf::{OprfKey, blind};
    use crate::domain::{E164, Epoch, ServerSecret};

    fn blinded(n: usize) -> Vec<BlindedElement> {
        (0..n as u64)
            .map(|i| {
                blind(E164::from_u64(14_155_550_100 + i).unwrap())
                    .unwrap()
                    .1
            })
            .collect()
    }

    fn refusal(format: Format, body: &[u8], max: usize) -> DecodeError {
        decode_evaluate(format, body, max).expect_err("refused")
    }

    #[test]
    fn requests_and_answers_round_trip_in_both_formats() {
        let key = OprfKey::derive(&ServerSecret::from_bytes([3; 32]), Epoch(2)).unwrap();
        for format in [Format::Binary, Format::Json] {
            let elements = blinded(5);
            let body = encode_evaluate(format, 9, &elements);
            assert!(body.len() <= body_limit(format, 5));
            let request = decode_evaluate(format, &body, 5).unwrap();
            assert_eq!(request.key_epoch, 9);
            let sent: Vec<_> = elements.iter().map(BlindedElement::to_bytes).collect();
            let got: Vec<_> = request
                .elements
                .iter()
                .map(BlindedElement::to_bytes)
                .collect();
            assert_eq!(sent, got);
            let evaluated: Vec<_> = request
                .elements
                .iter()
                .map(|e| key.evaluate_blinded(e))
                .collect();
            let answer = encode_evaluated(format, 9, &evaluated);
            let decoded = decode_evaluated(format, &answer, 5).unwrap();
            assert_eq!(decoded.key_epoch, 9);
            assert_eq!(
                decoded
                    .elements
                    .iter()
                    .map(EvaluatedElement::to_bytes)
                    .collect::<Vec<_>>(),
                evaluated
                    .iter()
                    .map(EvaluatedElement::to_bytes)
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                decode_evaluated(format, &answer, 4).err(),
                Some(AnswerError::ElementCount)
            );
        }
    }

    #[test]
    fn refusals_name_the_element() {
        let mut body = encode_evaluate(Format::Binary, 1, &blinded(3));
        assert_eq!(
            refusal(Format::Binary, &body, 2),
            DecodeError::BatchTooLarge { max: 2 }
        );
        body[8 + 32..8 + 64].fill(0); // the identity
        assert_eq!(
            refusal(Format::Binary, &body, 3),
            DecodeError::InvalidElement { index: 1 }
        );
        body.push(0);
        assert_eq!(
            refusal(Format::Binary, &body, 9),
            DecodeError::ElementLength { index: 3 }
        );
        assert_eq!(
            refusal(Format::Binary, &[0; 7], 9),
            DecodeError::MissingEpoch
        );
        let json = |items: &str| format!(r#"{{"key_epoch":1,"blinded":[{items}]}}"#);
        let good = B64.encode(blinded(1)[0].to_bytes());
        assert_eq!(
            refusal(
                Format::Json,
                json(&format!(r#""{good}","AAAA""#)).as_bytes(),
                9
            ),
            DecodeError::ElementLength { index: 1 }
        );
        assert_eq!(
            refusal(Format::Json, json(r#""!!!!""#).as_bytes(), 9),
            DecodeError::NotBase64 { index: 0 }
        );
        let identity = B64.encode([0u8; 32]);
        assert_eq!(
            refusal(
                Format::Json,
                json(&format!(r#""{good}","{identity}""#)).as_bytes(),
                9
            ),
            DecodeError::InvalidElement { index: 1 }
        );
        for shape in [
            r#"{"key_epoch":1}"#,
            r#"{"key_epoch":1,"blinded":[],"x":1}"#,
            r#"{"epoch":1,"blinded":[]}"#,
            r#"[1,[]]"#,
        ] {
            assert!(
                matches!(
                    refusal(Format::Json, shape.as_bytes(), 9),
                    DecodeError::WrongShape { .. }
                ),
                "{shape}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_evaluate(Format::Binary, &bytes, 10);
            let _ = decode_evaluate(Format::Json, &bytes, 10);
            let _ = decode_evaluated(Format::Binary, &bytes, 2);
            let _ = decode_evaluated(Format::Json, &bytes, 2);
        }
    }
}
