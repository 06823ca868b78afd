//! The public API's happy paths: `/v1/epoch`, both encodings of `/v1/discover`, health.

use std::num::NonZero;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contact_discovery::domain::Fingerprint;
use contact_discovery::protocol::{self, Format};
use contact_discovery::server::config::EpochLength;

use crate::helpers::{T0, fingerprints, registered_indices, spawn_app, spawn_app_with};

const REGISTERED: [&str; 3] = ["+4915112345678", "+15550001111", "+447700900001"];

#[tokio::test]
async fn epoch_endpoint_describes_the_current_epoch() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/v1/epoch")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let info: serde_json::Value = response.json().await.unwrap();

    let epoch = T0 / 86_400;
    assert_eq!(info["epoch"], epoch);
    let salt = info["salt"].as_str().unwrap();
    assert!(!salt.contains('=') && !salt.contains('+') && !salt.contains('/'));
    assert_eq!(URL_SAFE_NO_PAD.decode(salt).unwrap().len(), 32);
    let not_after = humantime::parse_rfc3339(info["not_after"].as_str().unwrap()).unwrap();
    let not_after = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        not_after,
        (epoch + 1) * 86_400,
        "not_after is the epoch's end"
    );
    assert_eq!(info["fingerprint_bytes"], 8);
    assert_eq!(info["max_batch"], 50_000);
    app.stop().await;
}

#[tokio::test]
async fn epoch_number_is_unix_seconds_divided_by_epoch_length() {
    let app = spawn_app_with(|c| c.epochs.length = EpochLength::try_from(60).unwrap()).await;
    for offset in [0, 59, 60, 1_000, 86_399] {
        app.clock.set_secs(T0 + offset);
        let info = app.epoch_info().await;
        assert_eq!(info["epoch"], (T0 + offset) / 60, "offset {offset}");
        assert_eq!(info["max_batch"], 50_000);
    }
    app.stop().await;
}

#[tokio::test]
async fn both_encodings_give_the_same_answer() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let (epoch, salt) = app.epoch().await;
    // Nine numbers so the bitmap spans two bytes, hits on both sides of the byte boundary.
    let asked = [
        "+15550009999",
        "+4915112345678",
        "+15550000002",
        "+15550000003",
        "+15550000004",
        "+15550000005",
        "+15550000006",
        "+15550000007",
        "+447700900001",
    ];
    let fps = fingerprints(&salt, &asked);
    let credential = app.credential("alice");

    let (status, headers, binary) = app
        .discover_fps(Format::Binary, &credential, epoch, &fps)
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(binary.len(), 8 + 2);
    assert_eq!(&binary[..8], &epoch.to_be_bytes());
    // Bit i, least significant first: fingerprints 1 and 8 are registered.
    assert_eq!(binary[8..], [0b0000_0010, 0b0000_0001]);

    let (status, headers, json) = app
        .discover_fps(Format::Json, &credential, epoch, &fps)
        .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        value,
        serde_json::json!({ "epoch": epoch, "registered": [1, 8] })
    );
    assert_eq!(
        registered_indices(Format::Binary, epoch, fps.len(), &binary),
        registered_indices(Format::Json, epoch, fps.len(), &json)
    );
    app.stop().await;
}

#[tokio::test]
async fn json_registered_indices_are_ascending() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let asked = [
        "+447700900001",
        "+15550009999",
        "+15550001111",
        "+4915112345678",
    ];
    assert_eq!(
        app.discover(Format::Json, "alice", &asked).await,
        vec![0, 2, 3]
    );
    app.stop().await;
}

#[tokio::test]
async fn binary_response_length_depends_only_on_batch_size() {
    let app = spawn_app().await;
    let registered: Vec<String> = (0..20).map(|i| format!("+1555000{i:04}")).collect();
    let refs: Vec<&str> = registered.iter().map(String::as_str).collect();
    app.change(&refs, &[], &[]).await;
    let unregistered: Vec<String> = (0..20).map(|i| format!("+1555999{i:04}")).collect();
    let unrefs: Vec<&str> = unregistered.iter().map(String::as_str).collect();
    let (epoch, salt) = app.epoch().await;
    let credential = app.credential("alice");

    for n in [1usize, 7, 8, 9, 20] {
        let all_hit = fingerprints(&salt, &refs[..n]);
        let no_hit = fingerprints(&salt, &unrefs[..n]);
        let (s1, _, hit_body) = app
            .discover_fps(Format::Binary, &credential, epoch, &all_hit)
            .await;
        let (s2, _, miss_body) = app
            .discover_fps(Format::Binary, &credential, epoch, &no_hit)
            .await;
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(hit_body.len(), 8 + n.div_ceil(8), "n = {n}");
        assert_eq!(miss_body.len(), hit_body.len(), "n = {n}");
        assert_eq!(
            registered_indices(Format::Binary, epoch, n, &hit_body),
            (0..n).collect::<Vec<_>>()
        );
        assert!(registered_indices(Format::Binary, epoch, n, &miss_body).is_empty());
    }
    app.stop().await;
}

#[tokio::test]
async fn empty_batch_is_answered_in_both_encodings() {
    let app = spawn_app().await;
    let (epoch, _) = app.epoch().await;
    let credential = app.credential("alice");

    let (status, _, body) = app
        .discover_fps(Format::Binary, &credential, epoch, &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, epoch.to_be_bytes());

    let (status, _, body) = app
        .discover_fps(Format::Json, &credential, epoch, &[])
        .await;
    assert_eq!(status, 200);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({ "epoch": epoch, "registered": [] })
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_of_exactly_max_batch_is_accepted() {
    let app = spawn_app_with(|c| c.limits.max_batch = NonZero::new(100).unwrap()).await;
    app.change(&REGISTERED, &[], &[]).await;
    let (epoch, salt) = app.epoch().await;
    let mut fps: Vec<Fingerprint> = (0..100u64)
        .map(|i| Fingerprint::from_bytes((i + 1).to_be_bytes()))
        .collect();
    fps[99] = fingerprints(&salt, &["+15550001111"])[0];
    let credential = app.credential("alice");
    for format in [Format::Binary, Format::Json] {
        let (status, _, body) = app.discover_fps(format, &credential, epoch, &fps).await;
        assert_eq!(
            status,
            200,
            "{format:?}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(registered_indices(format, epoch, 100, &body), vec![99]);
    }
    app.stop().await;
}

#[tokio::test]
async fn content_type_parameters_and_case_are_accepted() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let (epoch, salt) = app.epoch().await;
    let fps = fingerprints(&salt, &["+15550009999", "+15550001111"]);
    let credential = app.credential("alice");
    for (content_type, format) in [
        ("application/json; charset=utf-8", Format::Json),
        ("Application/JSON;charset=UTF-8", Format::Json),
        ("application/octet-stream; x=y", Format::Binary),
    ] {
        let body = protocol::encode_request(format, epoch, &fps);
        let (status, _, body) = app
            .discover_raw(content_type, Some(&credential), body)
            .await;
        assert_eq!(
            status,
            200,
            "{content_type}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(registered_indices(format, epoch, 2, &body), vec![1]);
    }
    app.stop().await;
}

#[tokio::test]
async fn padded_base64_fingerprints_are_accepted() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let (epoch, salt) = app.epoch().await;
    let fp = fingerprints(&salt, &["+15550001111"])[0];
    let text = format!("{}=", protocol::encode_fingerprint(fp));
    let body = serde_json::json!({ "epoch": epoch, "fingerprints": [text] });
    let (status, _, body) = app
        .discover_raw(
            "application/json",
            Some(&app.credential("alice")),
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(registered_indices(Format::Json, epoch, 1, &body), vec![0]);
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_on_both_listeners() {
    let app = spawn_app().await;
    for url in [app.url("/readyz"), app.admin_url("/readyz")] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({ "ready": true }));
    }
    for url in [app.url("/healthz"), app.admin_url("/healthz")] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
    app.stop().await;
}

/// A replica started on an empty data directory stays unready until it has been fed, so it never
/// takes traffic only to answer "not registered" for everyone.
#[tokio::test]
async fn readiness_waits_for_the_minimum_registry_size() {
    let app = crate::helpers::spawn_app_with(|c| c.ready_min_registrations = 2).await;
    let ready = |app: &crate::helpers::TestApp| {
        let url = app.url("/readyz");
        let client = app.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    };
    // The 503 says why (the minimum, not the index, which is built) and nothing more: no count.
    let (status, retry_after, body) = ready(&app).await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.unwrap(), "1");
    assert_eq!(body["code"], "not_ready");
    assert_eq!(
        body["message"],
        "the service is not ready: fewer numbers are registered than \
         --ready-min-registrations asks for"
    );
    app.change(&["+4915112345678"], &[], &[]).await;
    let (status, _, body) = ready(&app).await;
    assert_eq!(status, 503);
    assert!(!body["message"].as_str().unwrap().contains('1'), "{body}");
    app.change(&[], &[], &["+15555550123"]).await;
    assert_eq!(ready(&app).await.0, 200);
}
