//! The byte format of the registry log's records (the snapshot's is in `snapshot.rs`).
//!
//! A log record is `u32 LE payload length | u32 LE crc32(payload) | payload`, the payload a run of
//! 9-byte operations `op (1 add, 2 remove, 3 hide) | u64 LE number`. One admin request is one
//! record, so a request is applied whole or not at all.

use crate::domain::E164;

/// Magic at the start of the log file.
pub const LOG_MAGIC: &[u8; 8] = b"CDLOG001";
/// Bytes of record header: length and checksum.
pub const RECORD_HEADER: usize = 8;
/// Bytes of one encoded operation.
pub const OP_BYTES: usize = 9;
/// Largest payload a record may declare (protects the reader from absurd lengths).
pub const MAX_RECORD_PAYLOAD: usize = 64 << 20;

/// One change to the registry. Each sets a number's state absolutely, so replaying an operation
/// twice is harmless: this is what makes snapshot + log recovery simple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Registered and discoverable.
    Add(E164),
    /// Not registered.
    Remove(E164),
    /// Registered but never matched.
    Hide(E164),
}

impl Op {
    fn tag(self) -> (u8, E164) {
        match self {
            Op::Add(n) => (1, n),
            Op::Remove(n) => (2, n),
            Op::Hide(n) => (3, n),
        }
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header or the declared payload.
    #[error("record is truncated")]
    Truncated,
    /// The declared length is not a whole number of operations or too large.
    #[error("record declares an impossible length")]
    BadLength,
    /// The checksum does not match the payload.
    #[error("record checksum mismatch")]
    BadChecksum,
    /// An unknown operation tag or a number that is not E.164.
    #[error("record holds an invalid operation")]
    BadOp,
}

// Reaches logs (a torn log tail's reason): says what is wrong, never what the record holds.
impl crate::log_safe::LogSafe for RecordError {}

/// Encodes `ops` as one record.
pub fn encode_record(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + ops.len() * OP_BYTES);
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    for op in ops {
        let (tag, number) = op.tag();
        out.push(tag);
        out.extend_from_slice(&number.get().to_le_bytes());
    }
    let payload_len = (out.len() - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&out[RECORD_HEADER..]);
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the record at the start of `bytes`: its operations and its total length in bytes.
pub fn decode_record(bytes: &[u8]) -> Result<(Vec<Op>, usize), RecordError> {
    if bytes.len() < RECORD_HEADER {
        return Err(RecordError::Truncated);
    }
    let len =
        u32::from_le_bytes(bytes[..4].try_into().map_err(|_| RecordError::Truncated)?) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().map_err(|_| RecordError::Truncated)?);
    if !len.is_multiple_of(OP_BYTES) || len > MAX_RECORD_PAYLOAD {
        return Err(RecordError::BadLength);
    }
    let payload = bytes
        .get(RECORD_HEADER..RECORD_HEADER + len)
        .ok_or(RecordError::Truncated)?;
    if crc32fast::hash(payload) != crc {
        return Err(RecordError::BadChecksum);
    }
    let ops = payload
        .chunks_exact(OP_BYTES)
        .map(|chunk| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&chunk[1..]);
            let number = E164::from_u64(u64::from_le_bytes(raw)).map_err(|_| RecordError::BadOp)?;
            match chunk[0] {
                1 => Ok(Op::Add(number)),
                2 => Ok(Op::Remove(number)),
                3 => Ok(Op::Hide(number)),
                _ => Err(RecordError::BadOp),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ops, RECORD_HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = Op> {
        (0u8..3, 1u64..=999_999_999_999_999).prop_map(|(t, n)| {
            let n = E164::from_u64(n).unwrap();
            match t {
                0 => Op::Add(n),
                1 => Op::Remove(n),
                _ => Op::Hide(n),
            }
        })
    }

    proptest! {
        #[test]
        fn records_round_trip(ops in proptest::collection::vec(op_strategy(), 0..50)) {
            let bytes = encode_record(&ops);
            let (decoded, used) = decode_record(&bytes).unwrap();
            prop_assert_eq!(decoded, ops);
            prop_assert_eq!(used, bytes.len());
        }

        #[test]
        fn any_truncation_or_flip_is_detected(
            ops in proptest::collection::vec(op_strategy(), 1..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let bytes = encode_record(&ops);
            let cut = cut.index(bytes.len());
            prop_assert!(decode_record(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            let at = flip.index(flipped.len());
            flipped[at] ^= 0x01;
            prop_assert!(decode_record(&flipped).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
        }
    }
}
