//! The admin listener: `POST /admin/v1/registrations`, `GET /admin/v1/stats`, `GET /metrics`.
//!
//! Served on its own socket, never on the public one. `/admin/*` needs the admin bearer token,
//! compared in constant time; `/metrics` needs the metrics token (or the admin token), so a
//! scraper that reaches the listener without it learns nothing.

use std::collections::HashSet;
use std::marker::PhantomData;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::json;

use super::body::{declared_length, media_type, read_limited};
use super::error::{InvalidNumber, Problems};
use super::{AdminState, ApiError};
use crate::domain::E164;
use crate::store::registry::Op;
use crate::store::writer::WriteError;

/// Most operations (numbers across `add`, `remove` and `hide`) in one admin request; more is
/// `413 too_many_operations`. Bulk loads use `registry import`.
pub const MAX_OPERATIONS: usize = 100_000;

// A request the admin API accepts always fits one record of the shared registry stream.
const _: () = assert!(
    MAX_OPERATIONS * crate::store::registry::record::OP_BYTES
        <= crate::store::replication::MAX_STREAM_RECORD
);

/// Largest admin request body: room for [`MAX_OPERATIONS`] numbers of 15 digits with quotes,
/// commas and some white space (about 20 bytes each).
pub const ADMIN_BODY_LIMIT: usize = 4 << 20;

/// The hash the admin token is compared through (hashing first makes the comparison
/// independent of the token's length as well as its contents).
pub fn hash_token(token: &str) -> blake3::Hash {
    blake3::hash(token.as_bytes())
}

/// Refuses `/admin/*` requests without the admin token.
pub async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = [state.admin_token_hash];
    run_if_token_in(&allowed, request, next).await
}

/// Refuses `/metrics` without the metrics token or the admin token. Prometheus sends it as a
/// bearer token (`authorization.credentials_file` in its scrape config).
pub async fn require_metrics_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = [state.metrics_token_hash, state.admin_token_hash];
    run_if_token_in(&allowed, request, next).await
}

/// Runs the request if its bearer token hashes to one of `allowed`, else answers 401.
async fn run_if_token_in(allowed: &[blake3::Hash], request: Request, next: Next) -> Response {
    let given = super::bearer_token(request.headers()).map(hash_token);
    // blake3::Hash equality is constant-time; every allowed hash is compared.
    let matched = allowed
        .iter()
        .fold(false, |found, hash| found | (given == Some(*hash)));
    if matched {
        next.run(request).await
    } else {
        ApiError::AdminUnauthorized.into_response()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    #[serde(default)]
    add: Bounded,
    #[serde(default)]
    remove: Bounded,
    #[serde(default)]
    hide: Bounded,
}

/// A JSON object only. A derived struct also takes an array of its fields in order
/// (`[["+1"], [], []]`, and `[]` as an empty change), which the API does not define.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(PhantomData))
            .map(ObjectOnly)
    }
}

impl ChangeRequest {
    /// How many operations the request carries (counted past what was kept).
    fn operations(&self) -> usize {
        self.add.total + self.remove.total + self.hide.total
    }
}

/// A JSON array of strings of which at most [`MAX_OPERATIONS`] are kept; the rest are counted
/// and skipped unparsed, so a request of millions of entries never holds them in memory.
#[derive(Default)]
struct Bounded {
    kept: Vec<String>,
    total: usize,
}

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = Bounded;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of E.164 strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
                let mut list = Bounded::default();
                while list.kept.len() < MAX_OPERATIONS {
                    match seq.next_element::<String>()? {
                        Some(text) => list.kept.push(text),
                        None => {
                            list.total = list.kept.len();
                            return Ok(list);
                        }
                    }
                }
                list.total = list.kept.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    list.total += 1;
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(Elements)
    }
}

/// Parses and checks a change request into operations, or says everything wrong with it.
fn plan(request: &ChangeRequest) -> Result<Vec<Op>, ApiError> {
    if request.operations() > MAX_OPERATIONS {
        return Err(ApiError::TooManyOperations {
            max: MAX_OPERATIONS,
        });
    }
    type List<'a> = (&'static str, &'a Vec<String>, fn(E164) -> Op);
    let lists: [List<'_>; 3] = [
        ("remove", &request.remove.kept, Op::Remove),
        ("add", &request.add.kept, Op::Add),
        ("hide", &request.hide.kept, Op::Hide),
    ];
    let mut ops = Vec::new();
    let mut invalid = Problems::default();
    let mut conflicts = Problems::default();
    let mut seen = HashSet::new();
    for (field, list, make) in lists {
        for (index, text) in list.iter().enumerate() {
            match E164::parse(text) {
                Ok(number) if seen.insert(number) => ops.push(make(number)),
                Ok(_) => conflicts.push(InvalidNumber {
                    field,
                    index,
                    reason: "appears more than once in this request".into(),
                }),
                Err(why) => invalid.push(InvalidNumber {
                    field,
                    index,
                    reason: why.to_string(),
                }),
            }
        }
    }
    if !invalid.is_empty() {
        return Err(ApiError::InvalidNumbers(invalid));
    }
    if !conflicts.is_empty() {
        return Err(ApiError::ConflictingChanges(conflicts));
    }
    Ok(ops)
}

/// `POST /admin/v1/registrations`: adds, removes and hides numbers; answers only once durable,
/// with the same receipt whether the registry is local or shared: `200` once applied here,
/// `202` when durable in the shared stream but not yet applied here.
pub async fn change_registrations(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if media_type(&headers).as_deref() != Some("application/json") {
        return Err(ApiError::UnsupportedContentType {
            expected: "application/json",
        });
    }
    let raw = read_limited(
        declared_length(&headers),
        body,
        ADMIN_BODY_LIMIT,
        state.body_pace,
    )
    .await?;
    let parsed = serde_json::from_slice::<ObjectOnly<ChangeRequest>>(&raw);
    let ObjectOnly(request) = parsed.map_err(|err| {
        ApiError::MalformedBody(format!(
            "expected {{\"add\": [E.164...], \"remove\": [...], \"hide\": [...]}} (line {}, column {})",
            err.line(),
            err.column()
        ))
    })?;
    let ops = plan(&request)?;
    let receipt = state.writer.apply(ops).await.map_err(|err| match err {
        WriteError::Storage => ApiError::Storage,
        WriteError::Stream => ApiError::RegistryStreamUnavailable,
    })?;
    let status = if receipt.applied_here {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::ACCEPTED
    };
    Ok((status, Json(receipt)).into_response())
}

/// `GET /admin/v1/stats`: registry size, live indexes, readiness, limiter size.
pub async fn stats(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let now = state.clock.now_secs();
    let schedule = state.indexes.policy().schedule;
    let indexes: Vec<_> = state
        .indexes
        .snapshot()
        .into_iter()
        .map(|(epoch, live)| {
            json!({
                "epoch": epoch.0,
                "entries": live.index.len(),
                "heap_bytes": live.index.heap_bytes(),
                "built_at_local_sequence": live.built_at,
                "build_seconds": live.build_seconds,
            })
        })
        .collect();
    Json(json!({
        "ready": state.indexes.is_ready(now),
        "current_epoch": schedule.epoch_at(now).0,
        "epoch_seconds": schedule.length_secs(),
        "registry": {
            "local_sequence": state.registry.local_sequence(),
            "counts": state.registry.counts(),
            "replication": state.replica.as_ref().map(|r| json!({
                "synced": r.synced(),
                "position": r.position().to_string(),
            })),
        },
        "indexes": indexes,
        "rate_limited_users_tracked": state.limiter.tracked_users(),
        "rate_limit_backend": state.limiter.backend(),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AdminState>) -> Response {
    state.registry.counts().export_to(&state.metrics);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(add: &[&str], remove: &[&str], hide: &[&str]) -> ChangeRequest {
        let v = |l: &[&str]| Bounded {
            kept: l.iter().map(|s| s.to_string()).collect(),
            total: l.len(),
        };
        ChangeRequest {
            add: v(add),
            remove: v(remove),
            hide: v(hide),
        }
    }

    #[test]
    fn a_change_is_an_object_only() {
        let parse = |body: &str| serde_json::from_str::<ObjectOnly<ChangeRequest>>(body);
        let ObjectOnly(request) = parse(r#"{"add": ["+1"], "hide": []}"#).unwrap();
        assert_eq!(
            (request.add.kept, request.hide.total),
            (vec!["+1".to_owned()], 0)
        );
        assert_eq!(parse("{}").unwrap().0.operations(), 0);
        for bad in [
            "[]",
            r#"[["+1"], [], []]"#,
            r#"{"add": [], "add": []}"#,
            r#"{"other": []}"#,
            "null",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_numbers_are_reported_by_position() {
        let err = plan(&req(&["+15550000001", "15550000002"], &[], &["+0123"])).unwrap_err();
        let ApiError::InvalidNumbers(problems) = err else {
            panic!("wrong error")
        };
        let list = problems.shown;
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].field, list[0].index), ("add", 1));
        assert_eq!((list[1].field, list[1].index), ("hide", 0));
    }

    #[test]
    fn the_same_number_twice_is_a_conflict() {
        let err = plan(&req(&["+15550000001"], &["+15550000001"], &[])).unwrap_err();
        assert_eq!(err.code(), "conflicting_changes");
        assert_eq!(
            plan(&req(&["+1555"], &["+1666"], &["+1777"]))
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn only_the_first_problems_are_reported_with_a_total() {
        let many: Vec<String> = (0..1_000).map(|i| format!("x{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let ApiError::InvalidNumbers(problems) = plan(&req(&many, &[], &[])).unwrap_err() else {
            panic!("wrong error")
        };
        assert_eq!(problems.total, 1_000);
        assert_eq!(problems.shown.len(), Problems::SHOWN);
        assert_eq!(
            problems.shown[Problems::SHOWN - 1].index,
            Problems::SHOWN - 1
        );
    }

    #[test]
    fn lists_keep_at_most_the_cap_and_count_the_rest() {
        let over = MAX_OPERATIONS + 5;
        let body = format!(r#"{{"add": [{}""]}}"#, "\"\",".repeat(over - 1));
        let request: ChangeRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(request.add.kept.len(), MAX_OPERATIONS);
        assert_eq!(request.operations(), over);
        assert_eq!(plan(&request).unwrap_err().code(), "too_many_operations");
        let split = ChangeRequest {
            add: Bounded {
                kept: vec![],
                total: MAX_OPERATIONS / 2 + 1,
            },
            remove: Bounded {
                kept: vec![],
                total: MAX_OPERATIONS / 2,
            },
            hide: Bounded::default(),
        };
        assert_eq!(plan(&split).unwrap_err().code(), "too_many_operations");
        let exact: ChangeRequest = serde_json::from_str(&format!(
            r#"{{"add": [{}"+15550000001"]}}"#,
            "\"x\",".repeat(MAX_OPERATIONS - 1)
        ))
        .unwrap();
        assert_eq!(exact.operations(), MAX_OPERATIONS);
        assert_eq!(plan(&exact).unwrap_err().code(), "invalid_numbers");
    }
}
