//! TEMPORARY stand-in, replaced by the real codec from the `gcs` branch before this merges.
#![allow(missing_docs, clippy::all)]
use std::sync::Arc;
pub const MAX_P: u8 = 56;
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GcsError {
    #[error("bad")]
    Bad,
}
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_items: u64,
    pub limit: u64,
}
pub fn encode(sorted: &[u64], p: u8) -> Result<Vec<u8>, GcsError> {
    let mut bits: Vec<bool> = Vec::new();
    let mut prev = 0u64;
    for &v in sorted {
        if v < prev {
            return Err(GcsError::Bad);
        }
        let d = v - prev;
        prev = v;
        for _ in 0..(d >> p) {
            bits.push(true)
        }
        bits.push(false);
        for i in (0..p).rev() {
            bits.push((d >> i) & 1 == 1)
        }
    }
    let mut out = vec![];
    let n = sorted.len() as u64;
    if n < 0xfd {
        out.push(n as u8)
    } else {
        out.push(0xff);
        out.extend_from_slice(&n.to_le_bytes())
    }
    for chunk in bits.chunks(8) {
        let mut b = 0u8;
        for (i, bit) in chunk.iter().enumerate() {
            if *bit {
                b |= 0x80 >> i
            }
        }
        out.push(b)
    }
    Ok(out)
}
pub fn decode(bytes: &[u8], p: u8, limits: Limits) -> Result<Vec<u64>, GcsError> {
    let (n, rest) = match bytes.first() {
        Some(&b) if b < 0xfd => (b as u64, &bytes[1..]),
        Some(0xff) if bytes.len() >= 9 => (
            u64::from_le_bytes(bytes[1..9].try_into().unwrap()),
            &bytes[9..],
        ),
        _ => return Err(GcsError::Bad),
    };
    if n > limits.max_items {
        return Err(GcsError::Bad);
    }
    let bit = |i: usize| -> Option<bool> { rest.get(i / 8).map(|b| b & (0x80 >> (i % 8)) != 0) };
    let mut pos = 0;
    let mut out = vec![];
    let mut prev = 0u64;
    for _ in 0..n {
        let mut q = 0u64;
        loop {
            match bit(pos) {
                Some(true) => {
                    q += 1;
                    pos += 1
                }
                Some(false) => {
                    pos += 1;
                    break;
                }
                None => return Err(GcsError::Bad),
            }
        }
        let mut r = 0u64;
        for _ in 0..p {
            r = (r << 1) | bit(pos).ok_or(GcsError::Bad)? as u64;
            pos += 1
        }
        prev += (q << p) | r;
        if prev >= limits.limit {
            return Err(GcsError::Bad);
        }
        out.push(prev)
    }
    Ok(out)
}
pub fn golomb_p_for(mean_gap: f64) -> u8 {
    ((mean_gap / 1.497137).log2().round() as i64).clamp(1, MAX_P as i64) as u8
}
pub struct ShardIndex {
    values: Vec<u64>,
}
impl ShardIndex {
    pub fn new(bytes: Arc<[u8]>, p: u8, limits: Limits) -> Result<Self, GcsError> {
        Ok(Self {
            values: decode(&bytes, p, limits)?,
        })
    }
    pub fn contains(&self, value: u64) -> bool {
        self.values.binary_search(&value).is_ok()
    }
    pub fn len(&self) -> u64 {
        self.values.len() as u64
    }
}
