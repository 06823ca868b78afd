//! Reading request bodies into zeroizing buffers, with the size limit enforced before parsing.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use zeroize::{Zeroize, Zeroizing};

use super::ApiError;
use crate::protocol::extend_zeroizing;

/// How a body must arrive: within `timeout` in all, and after the first [`RATE_GRACE`] at no
/// less than `min_bytes_per_sec` on average (0: no minimum rate).
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest time the whole body may take.
    pub timeout: Duration,
    /// Slowest average rate accepted once [`RATE_GRACE`] has passed.
    pub min_bytes_per_sec: u64,
}

/// Time a body may take before the minimum rate applies (a client's first packet, slow start).
pub const RATE_GRACE: Duration = Duration::from_secs(1);

/// A body that was refused, and how many bytes of it had arrived (what it is charged for).
#[derive(Debug)]
pub struct BodyRefused {
    /// The answer.
    pub error: ApiError,
    /// Bytes received before the refusal.
    pub received: usize,
}

impl From<BodyRefused> for ApiError {
    fn from(refused: BodyRefused) -> Self {
        refused.error
    }
}

/// Reads the whole body at `pace`, refusing it as soon as it exceeds `limit` bytes (or
/// `declared`, its `Content-Length` (see [`declared_length`]), says more). The buffer never reallocates without wiping the old copy,
/// and every chunk hyper hands over is wiped once copied when nothing else holds it.
pub async fn read_limited(
    declared: Option<usize>,
    body: Body,
    limit: usize,
    pace: BodyPace,
) -> Result<Zeroizing<Vec<u8>>, BodyRefused> {
    // A client that trickles or stalls its body would otherwise hold a connection and an
    // in-flight slot for as long as it likes. On timeout the partial buffer drops (wiped).
    let mut received = 0;
    let read = tokio::time::timeout(
        pace.timeout,
        read_all(declared, body, limit, pace.min_bytes_per_sec, &mut received),
    )
    .await;
    let timeout = pace.timeout;
    read.unwrap_or(Err(ApiError::BodyTimeout {
        secs: timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0),
    }))
    .map_err(|error| BodyRefused { error, received })
}

async fn read_all(
    declared: Option<usize>,
    body: Body,
    limit: usize,
    min_bytes_per_sec: u64,
    received: &mut usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let started = tokio::time::Instant::now();
    let mut buf = Zeroizing::new(Vec::with_capacity(declared.unwrap_or(0)));
    let mut body = body;
    loop {
        // The next chunk must come before the average since the grace drops under the minimum.
        let frame = match min_rate_deadline(started, *received, min_bytes_per_sec) {
            Some(deadline) => tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| ApiError::BodyTooSlow {
                    bytes_per_sec: min_bytes_per_sec,
                })?,
            None => body.frame().await,
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|_| ApiError::MalformedBody("the body could not be read".into()))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers carry nothing we use
        };
        *received += chunk.len();
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

/// The body length `Content-Length` announces, if it is a number. (One too large for `usize`
/// is no number here: it is refused by hyper or, larger than any limit, never fits anyway.)
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// When a body that has delivered `received` bytes since `started` falls under
/// `min_bytes_per_sec` on average after [`RATE_GRACE`]; `None` without a minimum.
fn min_rate_deadline(
    started: tokio::time::Instant,
    received: usize,
    min_bytes_per_sec: u64,
) -> Option<tokio::time::Instant> {
    if min_bytes_per_sec == 0 {
        return None;
    }
    let earned = Duration::from_secs_f64(received as f64 / min_bytes_per_sec as f64);
    Some(started + RATE_GRACE + earned)
}

/// The request's media type without parameters, lower-cased (copied only if it was not).
pub fn media_type(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim();
    Some(if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(essence.to_ascii_lowercase())
    } else {
        Cow::Borrowed(essence)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_rate_allows_a_second_then_time_in_proportion_to_bytes() {
        let t0 = tokio::time::Instant::now();
        assert_eq!(min_rate_deadline(t0, 0, 0), None);
        assert_eq!(min_rate_deadline(t0, 0, 1024), Some(t0 + RATE_GRACE));
        assert_eq!(
            min_rate_deadline(t0, 2048, 1024),
            Some(t0 + RATE_GRACE + Duration::from_secs(2))
        );
        assert_eq!(
            min_rate_deadline(t0, 512, 1024),
            Some(t0 + RATE_GRACE + Duration::from_millis(500))
        );
    }
}
