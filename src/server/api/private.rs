//! The private mode's routes on the public listener: `POST /v1/private/evaluate`,
//! `GET /v1/private/set`, `GET /v1/private/set/shards/{index}`, `GET /v1/private/set/delta`.
//!
//! Evaluation is charged to the same per-user budget as hashed lookups, one unit per element
//! (the budget is what stops enumeration: without the server nobody can compute an OPRF
//! output), up front for a binary body with a `Content-Length`, the rest once decoded, and a
//! refused body what it stands for. The set routes serve published versions by ETag; they need
//! a caller like every public route but cost no budget (the set is the same for everyone).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::body::{declared_length, media_type};
use super::error::NotReadyCause;
use super::public::{charge, charge_owed, read_charged, up_front_cost};
use super::{ApiError, Caller, PublicState};
use crate::domain::Epoch;
use crate::protocol::Format;
use crate::protocol::evaluate::{self, EvaluateRequest};
use crate::protocol::private_set::{
    SetManifest, ShardInfo, Tag, encode_delta, tag_from_hex, tag_to_hex,
};
use crate::store::private_set::{DeltaAnswer, PrivateSet, PrivateSets};
use crate::store::rotation::EpochRefusal;

/// Whether the public listener serves the private mode.
pub enum PrivateMode {
    /// `private_mode = false`: its routes answer 404.
    Off,
    /// Served from these sets.
    On(PrivateParts),
}

/// What the private routes serve from.
pub struct PrivateParts {
    /// The live sets, one per live key epoch.
    pub sets: Arc<PrivateSets>,
    /// Most elements per evaluation request.
    pub max_batch: usize,
}

/// The private mode, for handlers that serve it: extracting it fails with 404 when the mode
/// is off, so no handler branches on it.
pub struct Private {
    sets: Arc<PrivateSets>,
    max_batch: usize,
}

impl FromRequestParts<PublicState> for Private {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &PublicState) -> Result<Self, ApiError> {
        match &state.private {
            PrivateMode::On(parts) => Ok(Private {
                sets: Arc::clone(&parts.sets),
                max_batch: parts.max_batch,
            }),
            PrivateMode::Off => Err(ApiError::NotFound),
        }
    }
}

impl Private {
    /// The set of `key_epoch` (the current one when `None`), or why not.
    fn set(
        &self,
        state: &PublicState,
        key_epoch: Option<u64>,
    ) -> Result<Arc<PrivateSet>, ApiError> {
        let now = state.clock.now_secs();
        let requested = key_epoch.unwrap_or(self.sets.policy().schedule.epoch_at(now).0);
        self.sets
            .for_request(requested, now)
            .map_err(|refusal| match refusal {
                EpochRefusal::Unavailable { current } => {
                    ApiError::KeyEpochUnavailable { current: current.0 }
                }
                EpochRefusal::NotReady => {
                    ApiError::NotReady(vec![NotReadyCause::PrivateSetBuilding])
                }
            })
    }

    /// The set of the key epoch a shard or delta request names (`key_epoch` is required: a
    /// shard or a delta means nothing without its set), and the rest of its query.
    fn set_named(
        &self,
        state: &PublicState,
        request: &Request,
    ) -> Result<(Arc<PrivateSet>, SetQuery), ApiError> {
        let query = SetQuery::parse(request.uri().query())?;
        let key_epoch = query
            .key_epoch
            .ok_or(ApiError::InvalidQuery("key_epoch is required"))?;
        Ok((self.set(state, Some(key_epoch))?, query))
    }
}

/// `POST /v1/private/evaluate`: the key times each blinded element.
pub async fn evaluate(
    State(state): State<PublicState>,
    private: Private,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let user = &caller.user;
    let max_batch = private.max_batch;
    let format = Format::from_media_type(media_type(&parts.headers).as_deref());
    let declared = declared_length(&parts.headers);
    let up_front = match &format {
        Ok(format) => up_front_cost(
            *format,
            declared,
            evaluate::body_limit(*format, max_batch),
            max_batch,
            |len| evaluate::elements_in(Format::Binary, len),
        ),
        Err(_) => 1,
    };
    charge(&state, user, up_front).await?;
    let format = format.map_err(ApiError::from)?;
    let limit = evaluate::body_limit(format, max_batch);
    let owed = |bytes: usize| evaluate::elements_in(format, bytes).min(max_batch);
    let raw = read_charged(&state, user, body, declared, limit, up_front, owed).await?;
    let bytes = raw.len();
    // Decoding checks every element (a square root each) and evaluating costs tens of
    // microseconds each: both on a blocking thread, never on the reactor.
    let decoded =
        tokio::task::spawn_blocking(move || evaluate::decode_evaluate(format, &raw, max_batch))
            .await
            .map_err(|_| ApiError::Panic)?;
    let request = match decoded {
        Ok(request) => request,
        Err(error) => {
            charge_owed(&state, user, owed(bytes), up_front).await;
            return Err(error.into());
        }
    };
    let set = private.set(&state, Some(request.key_epoch))?;
    let n = request.elements.len();
    charge(&state, user, n.saturating_sub(up_front)).await?;
    let answer = tokio::task::spawn_blocking(move || evaluate_all(&set, format, request))
        .await
        .map_err(|_| ApiError::Panic)?;
    state.metrics.private.elements_evaluated.inc_by(n as u64);
    Ok((
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from(answer),
    )
        .into_response())
}

fn evaluate_all(set: &PrivateSet, format: Format, request: EvaluateRequest) -> Vec<u8> {
    let key = set.key();
    let evaluated: Vec<_> = request
        .elements
        .iter()
        .map(|element| key.evaluate_blinded(element))
        .collect();
    evaluate::encode_evaluated(format, key.epoch().0, &evaluated)
}

/// `GET /v1/private/set`: the manifest of the current (or the named) key epoch's set.
pub async fn manifest(
    State(state): State<PublicState>,
    private: Private,
    _caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let query = SetQuery::parse(request.uri().query())?;
    let set = private.set(&state, query.key_epoch)?;
    let published = set.published();
    if let Some(response) = not_modified(request.headers(), &published.version) {
        return Ok(response);
    }
    let params = set.params();
    let key_epoch = Epoch(params.key_epoch);
    let not_after = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(private.sets.policy().schedule.end(key_epoch));
    let manifest = SetManifest {
        key_epoch: params.key_epoch,
        key_not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        version: tag_to_hex(&published.version),
        items: published.items,
        range: params.range,
        golomb_p: params.golomb_p,
        false_positive_rate: params.false_positive_rate(published.items),
        max_batch: private.max_batch,
        shards: published
            .shards
            .iter()
            .map(|s| ShardInfo {
                etag: tag_to_hex(&s.etag),
                items: s.items,
            })
            .collect(),
    };
    Ok(with_etag(
        Json(manifest).into_response(),
        &published.version,
    ))
}

/// `GET /v1/private/set/shards/{index}?key_epoch=K`: one shard's Golomb-coded bytes.
pub async fn shard(
    State(state): State<PublicState>,
    private: Private,
    _caller: Caller,
    Path(index): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (set, _) = private.set_named(&state, &request)?;
    let published = set.published();
    let shards = u32::try_from(published.shards.len()).unwrap_or(u32::MAX);
    let shard = index
        .parse::<usize>()
        .ok()
        .and_then(|i| published.shards.get(i))
        .ok_or(ApiError::UnknownShard { shards })?;
    if let Some(response) = not_modified(request.headers(), &shard.etag) {
        return Ok(response);
    }
    Ok(with_etag(octets(shard.bytes.clone()), &shard.etag))
}

/// `GET /v1/private/set/delta?key_epoch=K&since=V`: what changed since version `V`.
pub async fn delta(
    State(state): State<PublicState>,
    private: Private,
    _caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let (set, query) = private.set_named(&state, &request)?;
    let since = query
        .since
        .ok_or(ApiError::InvalidQuery("since is required"))?;
    match set.delta_since(since) {
        DeltaAnswer::Current => Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), &since)),
        DeltaAnswer::Unavailable => Err(ApiError::DeltaUnavailable),
        DeltaAnswer::Delta(delta) => {
            let body = encode_delta(&set.params(), &delta).map_err(|_| ApiError::Panic)?;
            Ok(with_etag(octets(Bytes::from(body)), &delta.to))
        }
    }
}

/// The query of the set routes: `key_epoch` (decimal) and `since` (32 hex digits), each at
/// most once, nothing else. Parsed by hand so a bad query is a JSON `invalid_query` like
/// every other refusal.
#[derive(Default)]
struct SetQuery {
    key_epoch: Option<u64>,
    since: Option<Tag>,
}

impl SetQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = SetQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or(ApiError::InvalidQuery("parameters are key=value"))?;
            match key {
                "key_epoch" if parsed.key_epoch.is_none() => {
                    let epoch = value
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| value.parse::<u64>().ok())
                        .flatten()
                        .ok_or(ApiError::InvalidQuery("key_epoch is a decimal u64"))?;
                    parsed.key_epoch = Some(epoch);
                }
                "since" if parsed.since.is_none() => {
                    let tag = tag_from_hex(value)
                        .map_err(|_| ApiError::InvalidQuery("since is 32 hex digits"))?;
                    parsed.since = Some(tag);
                }
                "key_epoch" | "since" => {
                    return Err(ApiError::InvalidQuery("a parameter appears twice"));
                }
                _ => return Err(ApiError::InvalidQuery("unknown parameter")),
            }
        }
        Ok(parsed)
    }
}

/// `304` when `If-None-Match` names `tag` (or is `*`).
fn not_modified(headers: &HeaderMap, tag: &Tag) -> Option<Response> {
    let quoted = format!("\"{}\"", tag_to_hex(tag));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().trim_start_matches("W/"))
        .any(|v| v == quoted || v == "*");
    matches.then(|| with_etag(StatusCode::NOT_MODIFIED.into_response(), tag))
}

fn with_etag(mut response: Response, tag: &Tag) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", tag_to_hex(tag))) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn octets(bytes: Bytes) -> Response {
    (
        [(header::CONTENT_TYPE, Format::Binary.content_type())],
        Body::from(bytes),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DecodeError;

    #[test]
    fn queries_are_parsed_strictly() {
        let tag = tag_to_hex(&[0xab; 16]);
        let q = SetQuery::parse(Some(&format!("key_epoch=3&since={tag}"))).unwrap();
        assert_eq!((q.key_epoch, q.since), (Some(3), Some([0xab; 16])));
        assert!(SetQuery::parse(None).unwrap().key_epoch.is_none());
        for bad in [
            "key_epoch",
            "key_epoch=+3",
            "key_epoch=-1",
            "key_epoch=18446744073709551616",
            "key_epoch=1&key_epoch=2",
            "since=00",
            "other=1",
        ] {
            assert!(
                matches!(SetQuery::parse(Some(bad)), Err(ApiError::InvalidQuery(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let tag = [7u8; 16];
        let quoted = format!("\"{}\"", tag_to_hex(&tag));
        for value in [quoted.clone(), format!("\"x\", W/{quoted}"), "*".to_owned()] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&value).unwrap(),
            );
            assert!(not_modified(&headers, &tag).is_some(), "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(not_modified(&headers, &tag).is_none());
        assert!(not_modified(&HeaderMap::new(), &tag).is_none());
    }

    #[test]
    fn decode_errors_map_to_codes() {
        let e: ApiError = DecodeError::InvalidElement { index: 2 }.into();
        assert_eq!(e.code(), "invalid_element");
    }
}
