//! Reading request bodies into zeroizing buffers, with the size limit enforced before parsing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use zeroize::{Zeroize, Zeroizing};

use super::ApiError;

/// Reads the whole body within `timeout`, refusing it as soon as it exceeds `limit` bytes (or
/// declares more in `Content-Length`). The buffer never reallocates without wiping the old copy,
/// and every chunk hyper hands over is wiped once copied when nothing else holds it.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    // A client that trickles or stalls its body would otherwise hold a connection and an
    // in-flight slot for as long as it likes. On timeout the partial buffer drops (wiped).
    tokio::time::timeout(timeout, read_all(headers, body, limit))
        .await
        .unwrap_or(Err(ApiError::BodyTimeout {
            secs: timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0),
        }))
}

async fn read_all(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0) as usize));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiError::MalformedBody("the body could not be read".into()))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers carry nothing we use
        };
        let fits = buf.len() + chunk.len() <= limit;
        if fits {
            extend_zeroizing(&mut buf, &chunk);
        }
        if let Ok(mut owned) = chunk.try_into_mut() {
            owned[..].zeroize();
        }
        if !fits {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    Ok(buf)
}

/// Appends `data`, growing by moving into a fresh allocation so no stale copy is left behind.
pub fn extend_zeroizing(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        let wanted = (buf.len() + data.len()).max(buf.capacity() * 2);
        let mut bigger = Zeroizing::new(Vec::with_capacity(wanted));
        bigger.extend_from_slice(buf);
        *buf = bigger; // the old buffer is wiped as it drops
    }
    buf.extend_from_slice(data);
}

/// The request's media type without parameters, lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    Some(essence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_contents() {
        let mut buf = Zeroizing::new(Vec::with_capacity(1));
        for i in 0..1000u32 {
            extend_zeroizing(&mut buf, &i.to_le_bytes());
        }
        assert_eq!(buf.len(), 4000);
        assert_eq!(&buf[4..8], &1u32.to_le_bytes());
    }
}
