//! The discovery answer: encoded by the server, decoded by clients.
//!
//! Binary: 8-byte big-endian epoch, then a bitmap of ceil(n/8) bytes, bit i (least significant
//! first) set iff fingerprint i is registered, so an answer's length depends only on the
//! request's length. JSON: `{"epoch": N, "registered": [ascending indices]}`.
//!
//! Encoded answers are zeroizing buffers: they say which of a user's contacts are registered.

use serde::Deserialize;
use zeroize::Zeroizing;

use super::{AnswerError, Format, extend_zeroizing};

/// A decoded answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The epoch the server answered under.
    pub epoch: u64,
    /// Indices of the registered fingerprints, ascending.
    pub registered: Vec<usize>,
}

/// Encodes the answer for `n` fingerprints given the match bitmap.
pub fn encode_answer(format: Format, epoch: u64, n: usize, bitmap: &[u8]) -> Zeroizing<Vec<u8>> {
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
            for i in set_bits(bitmap, n) {
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

/// Decodes the answer to a request of `n` fingerprints.
pub fn decode_answer(format: Format, body: &[u8], n: usize) -> Result<Answer, AnswerError> {
    match format {
        Format::Binary => decode_binary(body, n),
        Format::Json => decode_json(body, n),
    }
}

fn decode_binary(body: &[u8], n: usize) -> Result<Answer, AnswerError> {
    let (epoch, bitmap) = body
        .split_first_chunk::<8>()
        .ok_or(AnswerError::BinaryLength)?;
    if bitmap.len() != n.div_ceil(8) {
        return Err(AnswerError::BinaryLength);
    }
    Ok(Answer {
        epoch: u64::from_be_bytes(*epoch),
        registered: set_bits(bitmap, n).collect(),
    })
}

#[derive(Deserialize)]
struct JsonAnswer {
    epoch: u64,
    registered: Vec<usize>,
}

fn decode_json(body: &[u8], n: usize) -> Result<Answer, AnswerError> {
    let answer: JsonAnswer = serde_json::from_slice(body).map_err(|_| AnswerError::JsonShape)?;
    if answer.registered.iter().any(|i| *i >= n) {
        return Err(AnswerError::IndexOutOfRange);
    }
    Ok(Answer {
        epoch: answer.epoch,
        registered: answer.registered,
    })
}

/// Indices below `n` whose bit is set in `bitmap` (least significant bit first).
fn set_bits(bitmap: &[u8], n: usize) -> impl Iterator<Item = usize> + '_ {
    (0..n).filter(move |i| bitmap[i / 8] & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_response_lists_ascending_indices() {
        let bitmap = [0b0000_0101u8, 0b1000_0000];
        let out = encode_answer(Format::Json, 9, 16, &bitmap);
        assert_eq!(&out[..], br#"{"epoch":9,"registered":[0,2,15]}"#);
        let out = encode_answer(Format::Binary, 9, 16, &bitmap);
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 9, 0b101, 0b1000_0000]);
    }

    #[test]
    fn refuses_answers_that_do_not_fit_the_batch() {
        assert_eq!(
            decode_answer(Format::Binary, &[0; 8 + 2], 8),
            Err(AnswerError::BinaryLength)
        );
        assert_eq!(
            decode_answer(Format::Binary, &[0; 7], 0),
            Err(AnswerError::BinaryLength)
        );
        assert_eq!(
            decode_answer(Format::Json, br#"{"epoch":1,"registered":[3]}"#, 3),
            Err(AnswerError::IndexOutOfRange)
        );
        assert_eq!(
            decode_answer(Format::Json, br#"{"epoch":1}"#, 3),
            Err(AnswerError::JsonShape)
        );
    }

    proptest! {
        #[test]
        fn answers_round_trip(epoch in any::<u64>(), bits in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut bitmap = vec![0u8; bits.len().div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                if *b { bitmap[i / 8] |= 1 << (i % 8); }
            }
            let want: Vec<usize> = bits.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
            for format in [Format::Binary, Format::Json] {
                let out = encode_answer(format, epoch, bits.len(), &bitmap);
                if format == Format::Binary {
                    prop_assert_eq!(out.len(), 8 + bits.len().div_ceil(8));
                }
                let answer = decode_answer(format, &out, bits.len()).unwrap();
                prop_assert_eq!(answer.epoch, epoch);
                prop_assert_eq!(&answer.registered, &want);
            }
        }
    }
}
