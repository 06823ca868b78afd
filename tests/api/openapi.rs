//! `docs/openapi.yaml` against the running server: every documented route and method exists,
//! every error code documented for a route is one that route produces for a crafted request
//! (with the status the spec lists for it), and every `ApiError` code appears in the spec.

use std::collections::BTreeSet;
use std::num::NonZero;
use std::time::Duration;

use contact_discovery::domain::oprf::{self, BlindedElement};
use contact_discovery::domain::{E164, UserId};
use contact_discovery::protocol::private_set::SetManifest;
use contact_discovery::protocol::{self, Format, evaluate};
use contact_discovery::server::api::ApiError;

use crate::helpers::{ADMIN_TOKEN, RawResponse, TestApp, fingerprints, raw_http, spawn_app_with};

/// Codes not crafted here because they need the service in a state a request alone cannot
/// cause; each has its own test.
const NOT_CRAFTED: &[(&str, &str)] = &[
    (
        "not_ready",
        "tests/api/epochs.rs (requests before the index is built)",
    ),
    ("overloaded", "tests/api/limits.rs (in-flight cap)"),
    (
        "body_too_slow",
        "tests/api/abuse.rs (a body that never comes, cut after its first second)",
    ),
    (
        "user_in_flight",
        "tests/api/abuse.rs (one credential's second request in flight)",
    ),
    (
        "storage_unavailable",
        "api::admin and registry unit tests (failing disk)",
    ),
    (
        "registry_stream_unavailable",
        "tests/replication.rs (a shared registry whose Redis is down)",
    ),
];

const REGISTERED: &str = "+4915112345678";

fn spec() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (path, method, listed error codes, documented statuses) for every operation.
fn operations(spec: &serde_json::Value) -> Vec<(String, String, Vec<String>, Vec<u16>)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        // A path item also holds `servers` (which listener serves it), not an operation.
        let methods = item.as_object().unwrap().iter().filter(|(key, _)| {
            [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&key.as_str())
        });
        for (method, op) in methods {
            let codes = op["x-error-codes"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} lists x-error-codes"))
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            let statuses = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|s| s.parse().unwrap())
                .collect();
            ops.push((path.clone(), method.to_uppercase(), codes, statuses));
        }
    }
    ops
}

fn is_admin(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/metrics"
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> RawResponse {
    let url = if is_admin(path) {
        app.admin_url(path)
    } else {
        app.url(path)
    };
    let mut request = app.client.request(method.parse().unwrap(), url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// What requests to the private routes name: the current key epoch and a version of the set
/// older than the current one (so a delta from it exists).
struct PrivateContext {
    key_epoch: u64,
    old_version: String,
}

impl PrivateContext {
    /// The path with a valid query for `path` (a template for the shard route).
    fn concrete(&self, path: &str) -> String {
        let k = self.key_epoch;
        match path {
            "/v1/private/set/shards/{index}" => format!("/v1/private/set/shards/0?key_epoch={k}"),
            "/v1/private/set/delta" => {
                format!(
                    "/v1/private/set/delta?key_epoch={k}&since={}",
                    self.old_version
                )
            }
            other => other.to_owned(),
        }
    }
}

async fn manifest(app: &TestApp) -> SetManifest {
    let auth = format!("Bearer {}", app.credential("manifest"));
    let response = app
        .client
        .get(app.url("/v1/private/set"))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// `n` blinded copies of the registered number, as an evaluation body for `key_epoch`.
fn blinded_body(key_epoch: u64, n: usize) -> Vec<u8> {
    let number = E164::parse(REGISTERED).unwrap();
    let elements: Vec<BlindedElement> = (0..n).map(|_| oprf::blind(number).unwrap().1).collect();
    evaluate::encode_evaluate(Format::Binary, key_epoch, &elements)
}

/// A request to `path` that should succeed (or at least be routed), as documented.
async fn valid_request(
    app: &TestApp,
    private: &PrivateContext,
    method: &str,
    path: &str,
) -> RawResponse {
    let admin = ("authorization", format!("Bearer {ADMIN_TOKEN}"));
    let user = || {
        (
            "authorization",
            format!("Bearer {}", app.credential("route-check")),
        )
    };
    match path {
        "/v1/private/evaluate" => {
            let ct = ("content-type", Format::Binary.content_type().to_owned());
            let body = blinded_body(private.key_epoch, 1);
            send(app, method, path, &[user(), ct], body).await
        }
        p if p.starts_with("/v1/private/") => {
            send(app, method, &private.concrete(p), &[user()], Vec::new()).await
        }
        "/v1/discover" => {
            let (epoch, salt) = app.epoch().await;
            let body = protocol::encode_request(
                Format::Binary,
                epoch,
                &fingerprints(&salt, &[REGISTERED]),
            );
            let auth = (
                "authorization",
                format!("Bearer {}", app.credential("route-check")),
            );
            let ct = ("content-type", Format::Binary.content_type().to_owned());
            send(app, method, path, &[auth, ct], body).await
        }
        "/admin/v1/registrations" => {
            let ct = ("content-type", "application/json".to_owned());
            send(app, method, path, &[admin, ct], br#"{"add":[]}"#.to_vec()).await
        }
        _ => send(app, method, path, &[admin], Vec::new()).await,
    }
}

/// A request to a private route that should fail with `code`, or `None` if not crafted here.
async fn crafted_private(
    app: &TestApp,
    private: &PrivateContext,
    method: &str,
    path: &str,
    code: &str,
) -> Option<RawResponse> {
    let user = |name: &str| ("authorization", format!("Bearer {}", app.credential(name)));
    let binary = || ("content-type", "application/octet-stream".to_owned());
    let k = private.key_epoch;
    let max_batch = app.config.private.max_batch.get();
    let evaluate = path == "/v1/private/evaluate";
    // The same valid request with other headers.
    let with = |headers: Vec<(&'static str, String)>| {
        let mut headers = headers;
        let body = if evaluate {
            headers.push(binary());
            blinded_body(k, 1)
        } else {
            Vec::new()
        };
        (headers, body)
    };
    let response = match (evaluate, code) {
        (_, "missing_credential") => {
            let (h, b) = with(vec![]);
            send(app, method, &private.concrete(path), &h, b).await
        }
        (_, "invalid_credential") => {
            let (h, b) = with(vec![("authorization", "Bearer alice.1.AAAA".to_owned())]);
            send(app, method, &private.concrete(path), &h, b).await
        }
        (_, "expired_credential") => {
            let past = app.clock.now_secs() - 10;
            let token = app
                .credential_key
                .mint(&UserId::parse("late").unwrap(), past);
            let (h, b) = with(vec![("authorization", format!("Bearer {token}"))]);
            send(app, method, &private.concrete(path), &h, b).await
        }
        (true, "key_epoch_unavailable") => {
            send(
                app,
                method,
                path,
                &[user("old"), binary()],
                blinded_body(k + 5, 1),
            )
            .await
        }
        (false, "key_epoch_unavailable") => {
            let url = private
                .concrete(path)
                .replace(&format!("key_epoch={k}"), "key_epoch=5");
            let url = if url.contains('?') {
                url
            } else {
                format!("{url}?key_epoch=5")
            };
            send(app, method, &url, &[user("old")], Vec::new()).await
        }
        (false, "invalid_query") => {
            let url = private.concrete(path);
            let url = format!("{url}{}bogus=1", if url.contains('?') { "&" } else { "?" });
            send(app, method, &url, &[user("q")], Vec::new()).await
        }
        (false, "unknown_shard") => {
            let url = format!("/v1/private/set/shards/99?key_epoch={k}");
            send(app, method, &url, &[user("s")], Vec::new()).await
        }
        (false, "delta_unavailable") => {
            let url = format!(
                "/v1/private/set/delta?key_epoch={k}&since={}",
                "0".repeat(32)
            );
            send(app, method, &url, &[user("d")], Vec::new()).await
        }
        (true, "malformed_body") => {
            let json = ("content-type", "application/json".to_owned());
            send(app, method, path, &[user("m"), json], b"not json".to_vec()).await
        }
        (true, "batch_too_large") => {
            send(
                app,
                method,
                path,
                &[user("big"), binary()],
                blinded_body(k, max_batch + 1),
            )
            .await
        }
        (true, "body_too_large") => {
            send(
                app,
                method,
                path,
                &[user("huge"), binary()],
                blinded_body(k, max_batch * 3),
            )
            .await
        }
        (true, "unsupported_content_type") => {
            let text = ("content-type", "text/plain".to_owned());
            send(app, method, path, &[user("t"), text], blinded_body(k, 1)).await
        }
        (true, "invalid_element_length") => {
            let mut body = blinded_body(k, 1);
            body.push(0);
            send(app, method, path, &[user("short"), binary()], body).await
        }
        (true, "invalid_element") => {
            let mut body = blinded_body(k, 1);
            body[8..].fill(0); // the identity
            send(app, method, path, &[user("bad-element"), binary()], body).await
        }
        (true, "rate_limited") => {
            let mut last = None;
            for _ in 0..=(app.config.limits.rate_limit_burst.get() as usize / max_batch) {
                let body = blinded_body(k, max_batch);
                last =
                    Some(send(app, method, path, &[user("greedy-private"), binary()], body).await);
            }
            last.unwrap()
        }
        _ => return None,
    };
    Some(response)
}

/// A request to `method path` that should fail with `code`, or `None` if not crafted here.
async fn crafted(
    app: &TestApp,
    private: &PrivateContext,
    method: &str,
    path: &str,
    code: &str,
) -> Option<RawResponse> {
    if path.starts_with("/v1/private/") && !matches!(code, "method_not_allowed" | "body_timeout") {
        return crafted_private(app, private, method, path, code).await;
    }
    let admin = || ("authorization", format!("Bearer {ADMIN_TOKEN}"));
    let json = || ("content-type", "application/json".to_owned());
    let binary = || ("content-type", "application/octet-stream".to_owned());
    // Each crafted discovery request has its own user, so the rate limit of one never touches
    // another.
    let user = |name: &str| ("authorization", format!("Bearer {}", app.credential(name)));
    let (epoch, salt) = app.epoch().await;
    let good = |n: usize| {
        protocol::encode_request(
            Format::Binary,
            epoch,
            &fingerprints(&salt, &vec![REGISTERED; n]),
        )
    };
    let response = match (path, code) {
        (_, "method_not_allowed") => {
            let wrong = if method == "GET" { "PUT" } else { "GET" };
            send(app, wrong, path, &[admin()], Vec::new()).await
        }
        (_, "internal") if cfg!(feature = "test-hooks") => {
            let hook = ("x-test-panic", "1".to_owned());
            send(app, method, path, &[user("panic"), binary(), hook], good(1)).await
        }
        (_, "body_timeout") => {
            let auth = if is_admin(path) {
                format!("Bearer {ADMIN_TOKEN}")
            } else {
                format!("Bearer {}", app.credential("slow"))
            };
            let content_type = if is_admin(path) {
                "application/json"
            } else {
                "application/octet-stream"
            };
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\
                 Content-Type: {content_type}\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{{"
            );
            // 40 bytes announced (under the discovery limit of 8 + 8 × (max_batch + 1)), one sent.
            let addr = if is_admin(path) {
                app.admin
            } else {
                app.public
            };
            let (status, _, body) = raw_http(addr, request.as_bytes()).await;
            (status, Default::default(), body)
        }
        ("/v1/discover", "malformed_body") => {
            send(
                app,
                method,
                path,
                &[user("m"), json()],
                b"not json".to_vec(),
            )
            .await
        }
        ("/v1/discover", "missing_credential") => {
            send(app, method, path, &[binary()], good(1)).await
        }
        ("/v1/discover", "invalid_credential") => {
            let forged = ("authorization", "Bearer alice.1.AAAA".to_owned());
            send(app, method, path, &[forged, binary()], good(1)).await
        }
        ("/v1/discover", "expired_credential") => {
            let past = app.clock.now_secs() - 10;
            let token = app
                .credential_key
                .mint(&UserId::parse("late").unwrap(), past);
            let auth = ("authorization", format!("Bearer {token}"));
            send(app, method, path, &[auth, binary()], good(1)).await
        }
        ("/v1/discover", "epoch_unavailable") => {
            let body =
                protocol::encode_request(Format::Binary, 5, &fingerprints(&salt, &[REGISTERED]));
            send(app, method, path, &[user("old"), binary()], body).await
        }
        ("/v1/discover", "batch_too_large") => {
            let n = app.config.limits.max_batch.get() + 1;
            send(app, method, path, &[user("big"), binary()], good(n)).await
        }
        ("/v1/discover", "body_too_large") => {
            let n = app.config.limits.max_batch.get() * 3;
            send(app, method, path, &[user("huge"), binary()], good(n)).await
        }
        ("/v1/discover", "unsupported_content_type") => {
            let text = ("content-type", "text/plain".to_owned());
            send(app, method, path, &[user("t"), text], good(1)).await
        }
        ("/v1/discover", "invalid_fingerprint_length") => {
            let mut body = good(1);
            body.truncate(13);
            send(app, method, path, &[user("short"), binary()], body).await
        }
        ("/v1/discover", "rate_limited") => {
            let n = app.config.limits.max_batch.get();
            let mut last = None;
            for _ in 0..=(app.config.limits.rate_limit_burst.get() as usize / n) {
                last = Some(send(app, method, path, &[user("greedy"), binary()], good(n)).await);
            }
            last.unwrap()
        }
        ("/admin/v1/registrations" | "/admin/v1/stats", "invalid_admin_token") => {
            let wrong = ("authorization", "Bearer wrong-token-wrong-token".to_owned());
            send(
                app,
                method,
                path,
                &[wrong, json()],
                br#"{"add":[]}"#.to_vec(),
            )
            .await
        }
        ("/admin/v1/registrations", "unsupported_content_type") => {
            let text = ("content-type", "text/plain".to_owned());
            send(
                app,
                method,
                path,
                &[admin(), text],
                br#"{"add":[]}"#.to_vec(),
            )
            .await
        }
        ("/admin/v1/registrations", "malformed_body") => {
            send(
                app,
                method,
                path,
                &[admin(), json()],
                b"{\"add\": 5}".to_vec(),
            )
            .await
        }
        ("/admin/v1/registrations", "body_too_large") => {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000000000\r\n\
                 Connection: close\r\n\r\n"
            );
            let (status, _, body) = raw_http(app.admin, request.as_bytes()).await;
            (status, Default::default(), body)
        }
        ("/metrics", "invalid_admin_token") => send(app, method, path, &[], Vec::new()).await,
        ("/admin/v1/registrations", "too_many_operations") => {
            let body = format!(
                r#"{{"add":[{}"+15550000001"]}}"#,
                "\"\",".repeat(contact_discovery::server::api::admin::MAX_OPERATIONS)
            );
            send(app, method, path, &[admin(), json()], body.into_bytes()).await
        }
        ("/admin/v1/registrations", "invalid_numbers") => {
            let body = br#"{"add":["12345"]}"#.to_vec();
            send(app, method, path, &[admin(), json()], body).await
        }
        ("/admin/v1/registrations", "conflicting_changes") => {
            let body = format!(r#"{{"add":["{REGISTERED}"],"remove":["{REGISTERED}"]}}"#);
            send(app, method, path, &[admin(), json()], body.into_bytes()).await
        }
        _ => return None,
    };
    Some(response)
}

#[tokio::test]
async fn every_documented_route_exists_and_produces_its_documented_error_codes() {
    let app = spawn_app_with(|c| {
        c.limits.max_batch = NonZero::new(4).unwrap();
        c.limits.rate_limit_burst = NonZero::new(8).unwrap();
        c.limits.body_read_timeout = Duration::from_millis(300);
        c.private.max_batch = NonZero::new(4).unwrap();
        c.private.publish_interval = Duration::from_millis(50);
    })
    .await;
    let old_version = manifest(&app).await.version;
    app.change(&[REGISTERED], &[], &[]).await;
    let published = async {
        loop {
            let now = manifest(&app).await;
            if now.version != old_version {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let now = tokio::time::timeout(Duration::from_secs(10), published)
        .await
        .expect("the change is published into the private set");
    let private = PrivateContext {
        key_epoch: now.key_epoch,
        old_version,
    };
    let spec = spec();
    let ops = operations(&spec);
    assert!(ops.len() >= 11, "{} operations", ops.len());
    let mut not_crafted = BTreeSet::new();
    for (path, method, codes, statuses) in &ops {
        let (status, _, body) = valid_request(&app, &private, method, path).await;
        assert!(
            status == 200,
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        for code in codes {
            assert!(
                ApiError::CODES.contains(&code.as_str()),
                "{code} is not an ApiError code"
            );
            let Some((status, _, body)) = crafted(&app, &private, method, path, code).await else {
                let covered = NOT_CRAFTED.iter().any(|(c, _)| c == code)
                    || (code == "internal" && !cfg!(feature = "test-hooks"));
                assert!(covered, "{method} {path}: no crafted request for {code}");
                not_crafted.insert(code.clone());
                continue;
            };
            let error: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {path} {code}: not JSON ({status})"));
            assert_eq!(error["code"], code.as_str(), "{method} {path}: {error}");
            assert!(
                statuses.contains(&status),
                "{method} {path}: {code} came with {status}, not documented for the route"
            );
        }
    }
    // Every uncrafted code is in fact listed somewhere (the list above must not go stale).
    for (code, _) in NOT_CRAFTED {
        assert!(
            not_crafted.contains(*code),
            "{code} is not listed in the spec any more"
        );
    }
    // Unrouted paths on both listeners.
    let not_found = spec["x-unrouted-error-codes"]["not_found"].as_u64();
    assert_eq!(not_found, Some(404));
    for url in [app.url("/no/such/route"), app.admin_url("/no/such/route")] {
        let response = app.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 404);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["code"], "not_found");
    }
    app.stop().await;
}

/// Each path names the listener that serves it as the router has it: the admin paths the admin
/// listener only, the health paths both, every other path none of its own (the spec's default,
/// the public listener). Schemathesis and other tools send each operation to that server.
#[test]
fn every_path_names_the_listeners_that_serve_it() {
    let spec = spec();
    let url = |server: &serde_json::Value| server["url"].as_str().unwrap().to_owned();
    let public = url(&spec["servers"][0]);
    let admin = "http://127.0.0.1:9090".to_owned();
    assert_eq!(spec["servers"].as_array().unwrap().len(), 1);
    assert_eq!(public, "http://127.0.0.1:8080");
    for (path, item) in spec["paths"].as_object().unwrap() {
        let servers: Option<Vec<String>> = item
            .get("servers")
            .map(|list| list.as_array().unwrap().iter().map(url).collect());
        let expected = if is_admin(path) {
            Some(vec![admin.clone()])
        } else if path == "/healthz" || path == "/readyz" {
            Some(vec![public.clone(), admin.clone()])
        } else {
            None
        };
        assert_eq!(servers, expected, "{path}");
    }
}

#[test]
fn every_api_error_code_is_in_the_spec() {
    let spec = spec();
    let mut documented: BTreeSet<String> = operations(&spec)
        .into_iter()
        .flat_map(|(_, _, codes, _)| codes)
        .collect();
    documented.extend(
        spec["x-unrouted-error-codes"]
            .as_object()
            .unwrap()
            .keys()
            .cloned(),
    );
    let enum_codes: BTreeSet<String> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let all: BTreeSet<String> = ApiError::CODES.iter().map(|c| c.to_string()).collect();
    assert_eq!(documented, all, "codes on routes vs ApiError::CODES");
    assert_eq!(enum_codes, all, "ErrorCode enum vs ApiError::CODES");
}
