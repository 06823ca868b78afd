//! The public listener: `GET /v1/epoch`, `POST /v1/discover`, `GET /healthz`, `GET /readyz`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use zeroize::Zeroizing;

use super::body::{declared_length, media_type, read_limited};
use super::error::NotReadyCause;
use super::{ApiError, Caller, PublicState, Readiness};
use crate::domain::{Epoch, FINGERPRINT_BYTES, UserId};
use crate::protocol::{self, DiscoverRequest, EpochInfo, Format};
use crate::store::rotation::EpochRefusal;

/// What clients need to compute fingerprints for `epoch`.
pub fn epoch_info(state: &PublicState, epoch: Epoch) -> EpochInfo {
    let schedule = state.indexes.policy().schedule;
    EpochInfo::new(
        epoch,
        &state.secret.salt(epoch),
        schedule.end(epoch),
        state.max_batch,
    )
}

/// `GET /v1/epoch`: the current epoch and its salt.
pub async fn get_epoch(State(state): State<PublicState>) -> Json<EpochInfo> {
    let now = state.clock.now_secs();
    let epoch = state.indexes.policy().schedule.epoch_at(now);
    Json(epoch_info(&state, epoch))
}

/// `POST /v1/discover`: which of the uploaded fingerprints belong to registered users.
///
/// What a request costs the caller's budget (counted in fingerprints, see [`charge`]): every
/// authenticated request at least one, charged before its body is read, so a caller whose
/// budget is spent is refused without the server reading a byte more. A binary body with a
/// `Content-Length` is charged in full up front (its fingerprint count is its length); any other
/// body is charged the rest once decoded, and a body refused for its size, pace or contents
/// the fingerprints its bytes stand for. A `410` costs only what was charged up front, because
/// the protocol asks clients to resend on it.
pub async fn discover(
    State(state): State<PublicState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    // The request whole rather than a `HeaderMap` extractor, which would clone the headers.
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let user = &caller.user;
    let format = Format::from_media_type(media_type(headers).as_deref());
    let declared = declared_length(headers);
    let max_batch = state.max_batch;
    let up_front = match &format {
        Ok(format) => up_front_cost(
            *format,
            declared,
            format.body_limit(max_batch),
            max_batch,
            |len| len.saturating_sub(8 /* the epoch */) / FINGERPRINT_BYTES,
        ),
        Err(_) => 1,
    };
    charge(&state, user, up_front).await?;
    let format = format.map_err(ApiError::from)?;
    let (request, raw) = read_request(&state, user, body, format, declared, up_front).await?;
    drop(raw); // wiped now: only the decoded, zeroizing fingerprints remain
    #[cfg(feature = "test-hooks")]
    test_hooks::maybe_panic(headers, &request);

    let now = state.clock.now_secs();
    let index = state
        .indexes
        .for_request(request.epoch, now)
        .map_err(|refusal| match refusal {
            EpochRefusal::Unavailable { current } => {
                ApiError::EpochUnavailable(Box::new(epoch_info(&state, current)))
            }
            EpochRefusal::NotReady => ApiError::NotReady(vec![NotReadyCause::IndexBuilding]),
        })?;

    let n = request.fingerprints.len();
    charge(&state, user, n.saturating_sub(up_front)).await?;

    let mut bitmap = Zeroizing::new(vec![0u8; n.div_ceil(8)]);
    // The number of matches is not kept, counted or logged: it is part of the answer.
    let _ = index.lookup_into_bitmap(&request.fingerprints, &mut bitmap);
    drop(request);
    state.metrics.fingerprints.inc_by(n as u64);
    state.metrics.batch_size.observe(n as f64);

    let encoded = protocol::encode_answer(format, index.epoch().0, n, &bitmap);
    // The body owns the zeroizing buffer, so it is wiped once hyper has written it.
    let body = Body::from(Bytes::from_owner(encoded));
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if crate::log_safe::debug_enabled() {
        response.extensions_mut().insert(super::BatchSize(n));
    }
    Ok(response)
}

/// Reads and decodes the body; a refused body is charged what it stands for beyond `paid`.
/// Returns the request and the (zeroizing) raw body, which the caller drops once decoded.
async fn read_request(
    state: &PublicState,
    user: &UserId,
    body: Body,
    format: Format,
    declared: Option<usize>,
    paid: usize,
) -> Result<(DiscoverRequest, Zeroizing<Vec<u8>>), ApiError> {
    let limit = format.body_limit(state.max_batch);
    let owed = |bytes| refused_cost(format, bytes, state.max_batch);
    let raw = read_charged(state, user, body, declared, limit, paid, owed).await?;
    match protocol::decode_request(format, &raw, state.max_batch) {
        Ok(request) => Ok((request, raw)),
        Err(error) => {
            charge_owed(state, user, owed(raw.len()), paid).await;
            Err(error.into())
        }
    }
}

/// Reads a body of at most `limit` bytes. One refused for its pace or cut short is charged
/// `owed(bytes)` beyond the `paid` units, its bytes being what it delivered or, if more, what
/// it announced (up to the limit); one declared over the limit is refused on its head, never
/// read, and the minimum charged up front is its cost. Shared by discovery and evaluation.
pub(super) async fn read_charged(
    state: &PublicState,
    user: &UserId,
    body: Body,
    declared: Option<usize>,
    limit: usize,
    paid: usize,
    owed: impl Fn(usize) -> usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    match read_limited(declared, body, limit, state.body_pace).await {
        Ok(raw) => Ok(raw),
        Err(refused) if declared.is_some_and(|len| len > limit) => Err(refused.error),
        Err(refused) => {
            let bytes = refused.received.max(declared.unwrap_or(0).min(limit));
            charge_owed(state, user, owed(bytes), paid).await;
            Err(refused.error)
        }
    }
}

/// What a request is charged before its body is read: for a binary body of the `declared`
/// length, the units it holds (`count(len)`, at least 1 and at most `max_batch`: a larger
/// batch is refused, charged a batch), else the one-unit minimum. A body declared over the
/// byte `limit` is refused on its head without being read: the minimum.
pub(super) fn up_front_cost(
    format: Format,
    declared: Option<usize>,
    limit: usize,
    max_batch: usize,
    count: impl Fn(usize) -> usize,
) -> usize {
    match (format, declared) {
        (_, Some(len)) if len > limit => 1,
        (Format::Binary, Some(len)) => count(len).clamp(1, max_batch),
        _ => 1,
    }
}

/// Takes `n` fingerprints from `user`'s budget (shared across replicas when configured), or
/// refuses with `429 rate_limited`.
pub(super) async fn charge(state: &PublicState, user: &UserId, n: usize) -> Result<(), ApiError> {
    state.limiter.check(user, n).await.map_err(|limited| {
        state.metrics.rate_limited.inc();
        ApiError::RateLimited {
            retry_after: limited.retry_after_secs,
        }
    })
}

/// The fingerprints a refused body of `bytes` stands for; at most a batch.
fn refused_cost(format: Format, bytes: usize, max_batch: usize) -> usize {
    let per_fingerprint = match format {
        Format::Binary => FINGERPRINT_BYTES,
        // 11 base64url characters and two quotes: the least a JSON fingerprint takes.
        Format::Json => 13,
    };
    (bytes / per_fingerprint).min(max_batch)
}

/// Charges what a refused request owes: `cost` units beyond the `paid` ones. The answer is
/// already a refusal, so a spent budget changes nothing now: it refuses the caller's next
/// request before its body is read.
pub(super) async fn charge_owed(state: &PublicState, user: &UserId, cost: usize, paid: usize) {
    // The limiter takes all or nothing; a cost larger than what is left takes what is left,
    // in halving steps.
    let mut owed = cost.saturating_sub(paid);
    let mut step = owed;
    while owed > 0 && step > 0 {
        if state.limiter.check(user, step).await.is_ok() {
            owed -= step;
            step = step.min(owed);
        } else {
            step /= 2;
        }
    }
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once the current epoch's index is built and the registry holds at least
/// `ready_min_registrations` numbers (see [`Readiness`]), else `503 not_ready` saying why.
pub async fn readyz(State(readiness): State<Readiness>) -> Response {
    let causes = readiness.unready_causes();
    if causes.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        ApiError::NotReady(causes).into_response()
    }
}

/// Test-only behaviour, compiled in only with the `test-hooks` feature (never in release builds
/// made without it). The no-retention test uses it to show that a panic message built from
/// request data does not leave the process.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use axum::http::HeaderMap;

    use crate::protocol::DiscoverRequest;

    /// Panics with the first fingerprint in the message when `x-test-panic` is present.
    pub fn maybe_panic(headers: &HeaderMap, request: &DiscoverRequest) {
        if headers.contains_key("x-test-panic") {
            let first = request
                .fingerprints
                .first()
                .map(|f| f.to_bytes())
                .unwrap_or_default();
            let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
            panic!("test hook panic with request data {hex} {first:?}");
        }
    }
}
