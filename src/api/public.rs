//! The public listener: `GET /v1/epoch`, `POST /v1/discover`, `GET /healthz`, `GET /readyz`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde_json::json;
use zeroize::Zeroizing;

use super::body::{media_type, read_limited};
use super::codec::{self, Format};
use super::{ApiError, EpochInfo, SharedState};
use crate::domain::{CredentialError, Epoch, FINGERPRINT_BYTES, UserId};
use crate::rotation::EpochRefusal;

/// The user every request is attributed to when auth is switched off.
const ANONYMOUS: &str = "insecure-anonymous";

/// What clients need to compute fingerprints for `epoch`.
pub fn epoch_info(state: &SharedState, epoch: Epoch) -> EpochInfo {
    let schedule = state.indexes.policy().schedule;
    let not_after = std::time::UNIX_EPOCH + std::time::Duration::from_secs(schedule.end(epoch));
    EpochInfo {
        epoch: epoch.0,
        salt: URL_SAFE_NO_PAD.encode(state.secret.salt(epoch).as_bytes()),
        not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        fingerprint_bytes: FINGERPRINT_BYTES,
        max_batch: state.max_batch,
    }
}

/// `GET /v1/epoch`: the current epoch and its salt.
pub async fn get_epoch(State(state): State<SharedState>) -> Json<EpochInfo> {
    let now = state.clock.now_secs();
    let epoch = state.indexes.policy().schedule.epoch_at(now);
    Json(epoch_info(&state, epoch))
}

/// Checks the bearer credential and returns the caller.
fn authenticate(state: &SharedState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    let Some(key) = &state.credential_key else {
        return UserId::parse(ANONYMOUS).map_err(|_| ApiError::MissingCredential);
    };
    if !headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::MissingCredential);
    }
    let token = super::bearer_token(headers).ok_or(ApiError::InvalidCredential(
        crate::domain::CredentialError::Malformed,
    ))?;
    let now = state.clock.now_secs();
    let credential = match (
        key.verify(token, now, state.max_credential_ttl),
        &state.previous_credential_key,
    ) {
        // During a key rotation, a MAC that fails under the new key may be from the old one.
        (Err(CredentialError::BadMac), Some(previous)) => {
            previous.verify(token, now, state.max_credential_ttl)?
        }
        (verified, _) => verified?,
    };
    Ok(credential.user)
}

/// `POST /v1/discover`: which of the uploaded fingerprints belong to registered users.
pub async fn discover(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, &headers)?;
    let format = Format::from_media_type(media_type(&headers).as_deref())?;
    let raw = read_limited(
        &headers,
        body,
        format.body_limit(state.max_batch),
        state.body_read_timeout,
    )
    .await?;
    let request = codec::decode(format, &raw, state.max_batch)?;
    drop(raw); // wiped now: only the decoded, zeroizing fingerprints remain
    #[cfg(feature = "test-hooks")]
    test_hooks::maybe_panic(&headers, &request);

    let now = state.clock.now_secs();
    let index = state
        .indexes
        .for_request(request.epoch, now)
        .map_err(|refusal| match refusal {
            EpochRefusal::Unavailable { current } => {
                ApiError::EpochUnavailable(Box::new(epoch_info(&state, current)))
            }
            EpochRefusal::NotReady => ApiError::NotReady,
        })?;

    let n = request.fingerprints.len();
    let verdict = match &state.shared_limiter {
        Some(shared) => shared.check(&user, n, &state.limiter).await,
        None => state.limiter.check(&user, n),
    };
    if let Err(limited) = verdict {
        state.metrics.rate_limited.inc();
        return Err(ApiError::RateLimited {
            retry_after: limited.retry_after_secs,
        });
    }

    let mut bitmap = Zeroizing::new(vec![0u8; n.div_ceil(8)]);
    let matches = index.lookup_into_bitmap(&request.fingerprints, &mut bitmap);
    drop(request);
    state.metrics.fingerprints.inc_by(n as u64);
    state.metrics.batch_size.observe(n as f64);
    state.metrics.matches.inc_by(matches as u64);

    let encoded = codec::encode(format, index.epoch().0, n, &bitmap);
    // The body owns the zeroizing buffer, so it is wiped once hyper has written it.
    let body = Body::from(Bytes::from_owner(encoded));
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    response.extensions_mut().insert(super::BatchSize(n));
    Ok(response)
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 once the current epoch's index is built and the registry holds at least
/// `ready_min_registrations` numbers, else 503.
pub async fn readyz(State(state): State<SharedState>) -> Response {
    let counts = state.registry.counts();
    let registry_loaded = counts.discoverable + counts.hidden >= state.ready_min_registrations
        && state.replica.as_ref().is_none_or(|r| r.synced());
    if registry_loaded && state.indexes.is_ready(state.clock.now_secs()) {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Test-only behaviour, compiled in only with the `test-hooks` feature (never in release builds
/// made without it). The no-retention test uses it to show that a panic message built from
/// request data does not leave the process.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    use axum::http::HeaderMap;

    use super::codec::DiscoverRequest;

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
