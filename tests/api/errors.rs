//! The error contract of `/v1/discover` and the routers: status, stable code, JSON body, no
//! echo of uploaded fingerprints, no 500 for client input, and the service keeps answering.

use std::num::NonZero;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use contact_discovery::domain::Fingerprint;
use contact_discovery::protocol::{self, Format};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::helpers::{
    RawResponse, T0, TestApp, assert_error, decode_salt, fingerprints, hex, raw_http,
    registered_indices, spawn_app, spawn_app_with,
};

const REGISTERED: &str = "+4915112345678";
const UNREGISTERED: &str = "+15550009999";

async fn app_with_one_number(
    adjust: impl FnOnce(&mut contact_discovery::server::config::Config),
) -> TestApp {
    let app = spawn_app_with(adjust).await;
    app.change(&[REGISTERED], &[], &[]).await;
    app
}

/// The fingerprint of the registered number under the current salt: what a client would
/// upload, and what no error body may contain.
async fn secret_fingerprint(app: &TestApp) -> (u64, Fingerprint) {
    let (epoch, salt) = app.epoch().await;
    (epoch, fingerprints(&salt, &[REGISTERED])[0])
}

/// Asserts `body` holds `fp` in none of the encodings a careless error message might use.
fn assert_no_echo(body: &[u8], fp: Fingerprint) {
    let bytes = fp.to_bytes();
    let text = String::from_utf8_lossy(body);
    for form in [
        protocol::encode_fingerprint(fp),
        URL_SAFE.encode(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        hex(&bytes),
        hex(&bytes).to_uppercase(),
    ] {
        assert!(
            !text.contains(&form),
            "error body echoes the fingerprint as {form}: {text}"
        );
    }
    assert!(
        !body.windows(bytes.len()).any(|w| w == bytes),
        "error body holds the raw fingerprint bytes"
    );
    // Serde-style byte arrays, e.g. `[12, 34, ...]`.
    let list = format!("{:?}", bytes.to_vec());
    assert!(!text.contains(&list[1..list.len() - 1]), "{text}");
}

async fn post(app: &TestApp, content_type: &str, body: impl Into<Vec<u8>>) -> RawResponse {
    app.discover_raw(content_type, Some(&app.credential("alice")), body.into())
        .await
}

#[tokio::test]
async fn invalid_or_truncated_json_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let good = String::from_utf8(protocol::encode_request(Format::Json, epoch, &[fp])).unwrap();
    let cases = [
        String::new(),
        "not json".to_owned(),
        "{".to_owned(),
        good[..good.len() - 1].to_owned(),
        good[..good.len() - 3].to_owned(),
        good.replace(':', "="),
        format!("{good}{good}"),
        format!("{good} trailing"),
        "\u{feff}".to_owned() + &good,
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).into_owned(),
    ];
    for body in cases {
        let response = post(&app, "application/json", body.clone()).await;
        let error = assert_error(&response, 400, "malformed_body");
        assert_no_echo(&response.2, fp);
        assert!(error.get("current").is_none(), "{body}");
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let f = protocol::encode_fingerprint(fp);
    let cases = [
        // duplicate keys
        format!(r#"{{"epoch":{epoch},"epoch":{epoch},"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":["{f}"],"fingerprints":["{f}"]}}"#),
        // unknown fields
        format!(r#"{{"epoch":{epoch},"fingerprints":["{f}"],"extra":1}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":["{f}"],"{f}":"{f}"}}"#),
        // missing fields
        format!(r#"{{"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":{epoch}}}"#),
        "{}".to_owned(),
        // wrong types
        format!(r#"{{"epoch":-1,"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":"{epoch}","fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":"{f}","fingerprints":[]}}"#),
        format!(r#"{{"epoch":{epoch}.5,"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":18446744073709551616,"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":null,"fingerprints":["{f}"]}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":"{f}"}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":["{f}",7]}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":["{f}",null]}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":[["{f}"]]}}"#),
        format!(r#"{{"epoch":{epoch},"fingerprints":{{"0":"{f}"}}}}"#),
        format!(r#""{f}""#),
        "null".to_owned(),
        "42".to_owned(),
    ];
    for body in cases {
        let response = post(&app, "application/json", body.clone()).await;
        assert_error(&response, 400, "malformed_body");
        assert_no_echo(&response.2, fp);
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let f = protocol::encode_fingerprint(fp);
    let depth = 10_000;
    let cases = [
        "[".repeat(depth) + &"]".repeat(depth),
        "[".repeat(depth),
        "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth),
        format!(
            r#"{{"epoch":{epoch},"fingerprints":["{f}",{}{}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        format!(
            r#"{{"epoch":{epoch},"fingerprints":["{f}"],"x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        format!(r#"{{"epoch":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth)),
    ];
    for body in cases {
        let response = post(&app, "application/json", body).await;
        assert_error(&response, 400, "malformed_body");
        assert_no_echo(&response.2, fp);
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_base64_fingerprint_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let f = protocol::encode_fingerprint(fp);
    // 8 bytes are 11 characters whose last one carries 2 unused bits; only zero bits are
    // canonical, so the next character of the alphabet encodes the same bytes non-canonically.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = ALPHABET
        .iter()
        .position(|&c| c == *f.as_bytes().last().unwrap())
        .unwrap();
    assert_eq!(last % 4, 0);
    let mut noncanonical = f.clone();
    noncanonical.pop();
    noncanonical.push(char::from(ALPHABET[last + 1]));
    let mut bad_symbol = f.clone();
    bad_symbol.replace_range(3..4, "!");
    let mut standard_alphabet = f.clone();
    standard_alphabet.replace_range(0..1, "+");
    for bad in [
        noncanonical,
        bad_symbol,
        standard_alphabet,
        "AAAAAAAA/AA".to_owned(),
        "AAAA AAAAAA".to_owned(),
        "AAAAAAAAAA=A".to_owned(),
    ] {
        let body = format!(r#"{{"epoch":{epoch},"fingerprints":["{f}","{bad}"]}}"#);
        let response = post(&app, "application/json", body).await;
        assert_error(&response, 400, "malformed_body");
        assert_no_echo(&response.2, fp);
        assert!(!String::from_utf8_lossy(&response.2).contains(&bad));
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn binary_body_shorter_than_an_epoch_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    for len in 0..8 {
        let response = post(&app, "application/octet-stream", vec![0x42; len]).await;
        assert_error(&response, 400, "malformed_body");
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn json_fingerprint_of_7_or_9_bytes_is_422_invalid_fingerprint_length() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let f = protocol::encode_fingerprint(fp);
    let bytes = fp.to_bytes();
    let seven = URL_SAFE_NO_PAD.encode(&bytes[..7]);
    let mut nine = bytes.to_vec();
    nine.push(0x5a);
    let nine = URL_SAFE_NO_PAD.encode(&nine);
    for bad in [seven, nine, String::new(), "A".repeat(40)] {
        let body = format!(r#"{{"epoch":{epoch},"fingerprints":["{f}","{f}","{bad}"]}}"#);
        let response = post(&app, "application/json", body).await;
        let error = assert_error(&response, 422, "invalid_fingerprint_length");
        assert!(
            error["message"].as_str().unwrap().contains("fingerprint 2"),
            "{error}"
        );
        assert_no_echo(&response.2, fp);
        if !bad.is_empty() {
            assert!(!String::from_utf8_lossy(&response.2).contains(&bad));
        }
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn binary_body_with_a_partial_fingerprint_is_422_invalid_fingerprint_length() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    for extra in 1..8 {
        let mut body = protocol::encode_request(Format::Binary, epoch, &[fp, fp]);
        body.extend_from_slice(&fp.to_bytes()[..extra]);
        let response = post(&app, "application/octet-stream", body).await;
        assert_error(&response, 422, "invalid_fingerprint_length");
        assert_no_echo(&response.2, fp);
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_epoch_is_410_with_the_current_epoch_to_retry_with() {
    let app = app_with_one_number(|_| {}).await;
    let info = app.epoch_info().await;
    let current = info["epoch"].as_u64().unwrap();
    let (_, fp) = secret_fingerprint(&app).await;
    let credential = app.credential("alice");
    for stale in [
        0,
        1,
        current - 2,
        current + 2,
        current + 1_000,
        u64::MAX,
        u64::MAX - 1,
    ] {
        for format in [Format::Binary, Format::Json] {
            let response = app.discover_fps(format, &credential, stale, &[fp]).await;
            let error = assert_error(&response, 410, "epoch_unavailable");
            assert_eq!(error["current"], info, "epoch {stale} {format:?}");
            assert_no_echo(&response.2, fp);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn client_retrying_with_the_salt_from_a_410_gets_a_correct_answer() {
    let app = app_with_one_number(|_| {}).await;
    let credential = app.credential("alice");
    // A client that still holds last week's salt: the fingerprints are wrong and so is the epoch.
    let old_epoch = T0 / 86_400 - 7;
    let old_salt = app
        .state
        .public
        .secret
        .salt(contact_discovery::domain::Epoch(old_epoch));
    let numbers = [UNREGISTERED, REGISTERED];
    for format in [Format::Binary, Format::Json] {
        let fps = fingerprints(&old_salt, &numbers);
        let response = app.discover_fps(format, &credential, old_epoch, &fps).await;
        let error = assert_error(&response, 410, "epoch_unavailable");
        let current = &error["current"];
        let epoch = current["epoch"].as_u64().unwrap();
        let salt = decode_salt(current["salt"].as_str().unwrap());
        assert_eq!(current["fingerprint_bytes"], 8);
        assert!(current["max_batch"].as_u64().unwrap() >= numbers.len() as u64);

        let retry = fingerprints(&salt, &numbers);
        let (status, _, body) = app.discover_fps(format, &credential, epoch, &retry).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(registered_indices(format, epoch, 2, &body), vec![1]);
    }
    app.stop().await;
}

#[tokio::test]
async fn more_than_max_batch_is_413_batch_too_large_in_both_encodings() {
    let app = app_with_one_number(|c| c.limits.max_batch = NonZero::new(100).unwrap()).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let credential = app.credential("alice");
    let batch = vec![fp; 101];
    for format in [Format::Binary, Format::Json] {
        let response = app.discover_fps(format, &credential, epoch, &batch).await;
        let error = assert_error(&response, 413, "batch_too_large");
        assert!(
            error["message"].as_str().unwrap().contains("100"),
            "{error}"
        );
        assert_no_echo(&response.2, fp);
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_body_too_large() {
    let app = app_with_one_number(|c| c.limits.max_batch = NonZero::new(100).unwrap()).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let credential = app.credential("alice");
    // Binary limit is 8 + 8 * 101 bytes; JSON allows 32 bytes a fingerprint plus 1 KiB.
    let binary = protocol::encode_request(Format::Binary, epoch, &vec![fp; 250]);
    let mut json = protocol::encode_request(Format::Json, epoch, &vec![fp; 250]);
    json.splice(1..1, vec![b' '; 4_096]);
    for (format, body) in [(Format::Binary, binary), (Format::Json, json)] {
        let response = app
            .discover_raw(format.content_type(), Some(&credential), body)
            .await;
        assert_error(&response, 413, "body_too_large");
        assert_no_echo(&response.2, fp);
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn declared_content_length_far_beyond_the_limit_is_413_before_reading() {
    let app = app_with_one_number(|_| {}).await;
    let credential = app.credential("alice");
    for content_type in ["application/octet-stream", "application/json"] {
        // The body is never sent: the server must refuse on the header alone.
        let request = format!(
            "POST /v1/discover HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {credential}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 1000000000000\r\n\
             Connection: close\r\n\r\n"
        );
        let (status, head, body) = raw_http(app.public, request.as_bytes()).await;
        assert_eq!(status, 413, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("cache-control: no-store"),
            "{head}"
        );
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["code"], "body_too_large");
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413_body_too_large() {
    let app = app_with_one_number(|c| c.limits.max_batch = NonZero::new(100).unwrap()).await;
    let credential = app.credential("alice");
    let mut request = format!(
        "POST /v1/discover HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {credential}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", 400).as_bytes());
        request.extend_from_slice(&[0u8; 400]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, head, body) = raw_http(app.public, &request).await;
    assert_eq!(status, 413, "{head}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["code"], "body_too_large");
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415_unsupported_content_type() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let credential = app.credential("alice");
    let json = protocol::encode_request(Format::Json, epoch, &[fp]);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-seq",
        "application",
        "",
    ] {
        let response = app
            .discover_raw(content_type, Some(&credential), json.clone())
            .await;
        assert_error(&response, 415, "unsupported_content_type");
        assert_no_echo(&response.2, fp);
    }
    // No Content-Type header at all.
    let response = app
        .client
        .post(app.url("/v1/discover"))
        .bearer_auth(&credential)
        .body(json)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    assert_error(&(status, headers, body), 415, "unsupported_content_type");
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

async fn request(app: &TestApp, method: reqwest::Method, url: String) -> RawResponse {
    let response = app
        .client
        .request(method, url)
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn unknown_route_is_404_not_found_on_both_listeners() {
    let app = spawn_app().await;
    for url in [
        app.url("/"),
        app.url("/v1/nope"),
        app.url("/v2/discover"),
        app.url("/v1/discover/extra"),
        app.admin_url("/v1/discover"),
        app.admin_url("/admin/v1/nope"),
        app.admin_url("/"),
    ] {
        let response = request(&app, reqwest::Method::GET, url.clone()).await;
        assert_error(&response, 404, "not_found");
    }
    app.stop().await;
}

#[tokio::test]
async fn wrong_method_is_405_method_not_allowed_on_both_listeners() {
    let app = spawn_app().await;
    for (method, url) in [
        (reqwest::Method::GET, app.url("/v1/discover")),
        (reqwest::Method::PUT, app.url("/v1/discover")),
        (reqwest::Method::POST, app.url("/v1/epoch")),
        (reqwest::Method::DELETE, app.url("/healthz")),
        (reqwest::Method::POST, app.url("/readyz")),
        (
            reqwest::Method::GET,
            app.admin_url("/admin/v1/registrations"),
        ),
        (reqwest::Method::POST, app.admin_url("/admin/v1/stats")),
        (reqwest::Method::POST, app.admin_url("/metrics")),
    ] {
        let response = request(&app, method.clone(), url.clone()).await;
        assert_error(&response, 405, "method_not_allowed");
    }
    app.stop().await;
}

#[tokio::test]
async fn arbitrary_bodies_never_get_a_500_and_the_service_keeps_answering() {
    let app = app_with_one_number(|c| c.limits.max_batch = NonZero::new(64).unwrap()).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let good_json = protocol::encode_request(Format::Json, epoch, &[fp, fp]);
    let good_binary = protocol::encode_request(Format::Binary, epoch, &[fp, fp]);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for round in 0..300 {
        let (content_type, base) = if round % 2 == 0 {
            ("application/json", &good_json)
        } else {
            ("application/octet-stream", &good_binary)
        };
        // Mutate a valid body: cut it, flip bytes, or replace it with noise.
        let body: Vec<u8> = match round % 3 {
            0 => base[..rng.random_range(0..base.len())].to_vec(),
            1 => {
                let mut b = base.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
                b
            }
            _ => (0..rng.random_range(0..700))
                .map(|_| rng.random())
                .collect(),
        };
        let response = post(&app, content_type, body).await;
        let (status, headers, bytes) = &response;
        assert!(*status < 500, "round {round}: {status}");
        assert_eq!(headers["cache-control"], "no-store");
        if *status != 200 {
            let error: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            let code = error["code"].as_str().unwrap();
            assert!(
                contact_discovery::server::api::ApiError::CODES.contains(&code),
                "{code}"
            );
            assert_no_echo(bytes, fp);
        }
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn every_response_on_both_listeners_carries_cache_control_no_store() {
    let app = app_with_one_number(|c| c.limits.max_batch = NonZero::new(100).unwrap()).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let credential = app.credential("alice");
    let good = protocol::encode_request(Format::Binary, epoch, &[fp]);
    let client = &app.client;

    let discover = || client.post(app.url("/v1/discover"));
    // Every route and status on both listeners: (what, request).
    let requests: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("epoch", client.get(app.url("/v1/epoch"))),
        ("healthz", client.get(app.url("/healthz"))),
        ("readyz", client.get(app.url("/readyz"))),
        (
            "200",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "application/octet-stream")
                .body(good.clone()),
        ),
        (
            "400",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "application/json")
                .body("{"),
        ),
        (
            "401",
            discover()
                .header("content-type", "application/octet-stream")
                .body(good.clone()),
        ),
        (
            "410",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "application/octet-stream")
                .body(protocol::encode_request(Format::Binary, 0, &[fp])),
        ),
        (
            "413",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "application/octet-stream")
                .body(vec![0u8; 8 + 8 * 102]),
        ),
        (
            "415",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "text/plain")
                .body(good.clone()),
        ),
        (
            "422",
            discover()
                .bearer_auth(&credential)
                .header("content-type", "application/octet-stream")
                .body(vec![0u8; 11]),
        ),
        ("404", client.get(app.url("/nope"))),
        ("405", client.get(app.url("/v1/discover"))),
        (
            "admin 200 stats",
            client
                .get(app.admin_url("/admin/v1/stats"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN),
        ),
        (
            "admin 200 registrations",
            client
                .post(app.admin_url("/admin/v1/registrations"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&serde_json::json!({ "add": ["+15550004444"] })),
        ),
        ("admin 401", client.get(app.admin_url("/admin/v1/stats"))),
        (
            "admin 422",
            client
                .post(app.admin_url("/admin/v1/registrations"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&serde_json::json!({ "add": ["0049"] })),
        ),
        (
            "admin metrics",
            client
                .get(app.admin_url("/metrics"))
                .bearer_auth(crate::helpers::METRICS_TOKEN),
        ),
        ("admin metrics 401", client.get(app.admin_url("/metrics"))),
        ("admin healthz", client.get(app.admin_url("/healthz"))),
        ("admin readyz", client.get(app.admin_url("/readyz"))),
        ("admin 404", client.get(app.admin_url("/nope"))),
        ("admin 405", client.delete(app.admin_url("/metrics"))),
        (
            "public admin path 404",
            client
                .get(app.url("/admin/v1/stats"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN),
        ),
    ];
    let mut responses = Vec::new();
    for (what, request) in requests {
        responses.push((what, request.send().await.unwrap()));
    }

    for (what, response) in responses {
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{what} ({})",
            response.status()
        );
    }
    app.stop().await;
}

/// The request is an object with exactly `epoch` and `fingerprints` (PROTOCOL.md; unknown fields
/// and duplicate keys are refused so there is one encoding). A positional array is not that
/// shape and must be refused like any other.
#[tokio::test]
async fn json_array_instead_of_the_request_object_is_400_malformed_body() {
    let app = app_with_one_number(|_| {}).await;
    let (epoch, fp) = secret_fingerprint(&app).await;
    let f = protocol::encode_fingerprint(fp);
    for body in [format!(r#"[{epoch},["{f}"]]"#), format!("[{epoch},[]]")] {
        let response = post(&app, "application/json", body.clone()).await;
        assert_error(&response, 400, "malformed_body");
    }
    app.stop().await;
}
