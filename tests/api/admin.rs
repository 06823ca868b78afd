//! The admin listener: registrations, stats, metrics, and the token that guards them.

use std::time::Duration;

use contact_discovery::protocol::Format;
use contact_discovery::server::config::EpochLength;
use serde_json::json;

use crate::helpers::{
    ADMIN_TOKEN, RawResponse, TestApp, assert_error, metric, metric_or_zero, spawn_app,
    spawn_app_with,
};

async fn send(request: reqwest::RequestBuilder) -> RawResponse {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

async fn counts(app: &TestApp) -> serde_json::Value {
    app.stats().await["registry"]["counts"].clone()
}

#[tokio::test]
async fn registration_changes_answer_applied_and_version() {
    let app = spawn_app().await;
    let (status, body) = app
        .change_raw(json!({
            "add": ["+15550001111", "+15550002222"],
            "remove": ["+15550003333"],
            "hide": ["+15550004444"],
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], 4);
    let first = body["local_sequence"].as_u64().expect("a numeric sequence");
    // Lists may be left out; an empty change is fine and still a new sequence number.
    let (status, body) = app.change_raw(json!({ "add": ["+15550005555"] })).await;
    assert_eq!(status, 200);
    assert_eq!(body["applied"], 1);
    let second = body["local_sequence"].as_u64().unwrap();
    assert!(second > first);
    let (status, body) = app.change_raw(json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["applied"], 0);
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 3, "hidden": 1 })
    );
    let hits = app
        .discover(
            Format::Binary,
            "alice",
            &[
                "+15550001111",
                "+15550002222",
                "+15550003333",
                "+15550004444",
                "+15550005555",
            ],
        )
        .await;
    assert_eq!(hits, vec![0, 1, 4]);
    app.stop().await;
}

#[tokio::test]
async fn admin_requests_without_the_right_token_are_401_invalid_admin_token() {
    let app = spawn_app().await;
    let change = json!({ "add": ["+15550001111"] });
    let url = app.admin_url("/admin/v1/registrations");
    let attempts = [
        app.client.post(&url).json(&change),
        app.client
            .post(&url)
            .bearer_auth("wrong-token-0123456789")
            .json(&change),
        app.client
            .post(&url)
            .bearer_auth(&ADMIN_TOKEN[1..])
            .json(&change),
        app.client
            .post(&url)
            .bearer_auth(format!("{ADMIN_TOKEN}x"))
            .json(&change),
        app.client
            .post(&url)
            .header("authorization", ADMIN_TOKEN)
            .json(&change),
        app.client
            .post(&url)
            .basic_auth("admin", Some(ADMIN_TOKEN))
            .json(&change),
        app.client.get(app.admin_url("/admin/v1/stats")),
        app.client
            .get(app.admin_url("/admin/v1/stats"))
            .bearer_auth("nope"),
    ];
    for attempt in attempts {
        let response = send(attempt).await;
        assert_error(&response, 401, "invalid_admin_token");
        assert!(response.1.contains_key("www-authenticate"));
    }
    // None of it was applied.
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 0, "hidden": 0 })
    );
    assert!(
        app.discover(Format::Json, "alice", &["+15550001111"])
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn admin_routes_are_not_reachable_on_the_public_listener() {
    let app = spawn_app().await;
    let change = json!({ "add": ["+15550001111"] });
    for request in [
        app.client
            .post(app.url("/admin/v1/registrations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&change),
        app.client
            .get(app.url("/admin/v1/stats"))
            .bearer_auth(ADMIN_TOKEN),
        app.client.get(app.url("/metrics")),
    ] {
        let response = send(request).await;
        assert_error(&response, 404, "not_found");
    }
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 0, "hidden": 0 })
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_numbers_are_422_and_nothing_of_the_request_is_applied() {
    let app = spawn_app().await;
    let (status, body) = app
        .change_raw(json!({
            "add": ["+15550001111", "15550002222", "+0123"],
            "remove": ["+1234567890123456"],
            "hide": ["+49 151 2345", "+15550003333"],
        }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_numbers");
    let mut invalid: Vec<(String, u64)> = body["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            assert!(
                entry["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{entry}"
            );
            (
                entry["field"].as_str().unwrap().to_owned(),
                entry["index"].as_u64().unwrap(),
            )
        })
        .collect();
    invalid.sort();
    assert_eq!(
        invalid,
        vec![
            ("add".to_owned(), 1),
            ("add".to_owned(), 2),
            ("hide".to_owned(), 0),
            ("remove".to_owned(), 0),
        ]
    );
    let text = body.to_string();
    for number in [
        "15550002222",
        "1234567890123456",
        "49 151 2345",
        "15550001111",
    ] {
        assert!(!text.contains(number), "the error echoes {number}: {text}");
    }

    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 0, "hidden": 0 })
    );
    let hits = app
        .discover(Format::Binary, "alice", &["+15550001111", "+15550003333"])
        .await;
    assert!(
        hits.is_empty(),
        "the valid numbers of a refused request were applied"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_same_number_in_two_lists_is_422_conflicting_changes() {
    let app = spawn_app().await;
    app.change(&["+15550009999"], &[], &[]).await;
    for change in [
        json!({ "add": ["+15550001111", "+15550002222"], "remove": ["+15550001111"] }),
        json!({ "add": ["+15550001111"], "hide": ["+15550001111"] }),
        json!({ "remove": ["+15550009999"], "hide": ["+15550009999"], "add": ["+15550002222"] }),
        json!({ "add": ["+15550001111", "+15550001111"] }),
    ] {
        let (status, body) = app.change_raw(change.clone()).await;
        assert_eq!(status, 422, "{change}: {body}");
        assert_eq!(body["code"], "conflicting_changes", "{change}");
        assert!(body["invalid"].as_array().is_some_and(|l| !l.is_empty()));
    }
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 1, "hidden": 0 })
    );
    let hits = app
        .discover(
            Format::Json,
            "alice",
            &["+15550001111", "+15550002222", "+15550009999"],
        )
        .await;
    assert_eq!(hits, vec![2]);
    app.stop().await;
}

#[tokio::test]
async fn hidden_numbers_stay_registered_but_never_match() {
    let app = spawn_app().await;
    let number = "+4915112345678";
    let other = "+15550001111";
    app.change(&[number, other], &[], &[]).await;
    assert_eq!(
        app.discover(Format::Binary, "alice", &[number, other])
            .await,
        vec![0, 1]
    );

    app.change(&[], &[], &[number]).await;
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 1, "hidden": 1 })
    );
    for format in [Format::Binary, Format::Json] {
        assert_eq!(
            app.discover(format, "alice", &[number, other]).await,
            vec![1]
        );
    }

    // Adding it again makes it discoverable.
    app.change(&[number], &[], &[]).await;
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 2, "hidden": 0 })
    );
    assert_eq!(
        app.discover(Format::Binary, "alice", &[number, other])
            .await,
        vec![0, 1]
    );

    // Hidden, then removed: no longer registered at all.
    app.change(&[], &[], &[number]).await;
    app.change(&[], &[number], &[]).await;
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 1, "hidden": 0 })
    );
    assert_eq!(
        app.discover(Format::Json, "alice", &[number, other]).await,
        vec![1]
    );

    // Removing a discoverable number works the same.
    app.change(&[], &[other], &[]).await;
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 0, "hidden": 0 })
    );
    assert!(
        app.discover(Format::Json, "alice", &[number, other])
            .await
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_admin_requests_are_refused_and_nothing_is_applied() {
    let app = spawn_app().await;
    let url = app.admin_url("/admin/v1/registrations");
    let post = |content_type: &str, body: &str| {
        app.client
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    for body in [
        "{",
        r#"{"add":["+15550001111"],"other":[]}"#,
        r#"{"add":"+15550001111"}"#,
        r#"{"add":[15550001111]}"#,
    ] {
        let response = send(post("application/json", body)).await;
        assert_error(&response, 400, "malformed_body");
    }
    let response = send(post("text/plain", r#"{"add":["+15550001111"]}"#)).await;
    assert_error(&response, 415, "unsupported_content_type");
    assert_eq!(
        counts(&app).await,
        json!({ "discoverable": 0, "hidden": 0 })
    );
    app.stop().await;
}

#[tokio::test]
async fn stats_show_registry_counts_and_live_indexes() {
    let app = spawn_app().await;
    app.change(
        &["+15550001111", "+15550002222", "+15550003333"],
        &[],
        &["+15550004444"],
    )
    .await;
    let stats = app.stats().await;
    assert_eq!(
        stats["registry"]["counts"],
        json!({ "discoverable": 3, "hidden": 1 })
    );
    assert_eq!(stats["ready"], true);
    let current = app.epoch().await.0;
    assert_eq!(stats["current_epoch"], current);
    assert_eq!(stats["epoch_seconds"], 86_400);
    let indexes = stats["indexes"].as_array().unwrap();
    let live: Vec<u64> = indexes
        .iter()
        .map(|i| i["epoch"].as_u64().unwrap())
        .collect();
    assert!(live.contains(&current), "{stats}");
    for index in indexes {
        assert_eq!(
            index["entries"], 3,
            "hidden numbers are not indexed: {index}"
        );
    }
    // The current index was built at start-up, before the change, and took it in place.
    let current_index = indexes.iter().find(|i| i["epoch"] == current).unwrap();
    let built_at = current_index["built_at_local_sequence"].as_u64().unwrap();
    let now_at = stats["registry"]["local_sequence"].as_u64().unwrap();
    assert!(built_at < now_at, "not rebuilt for a change: {stats}");
    app.stop().await;
}

#[tokio::test]
async fn metrics_need_the_metrics_or_admin_token_and_are_prometheus_text() {
    let app = spawn_app().await;
    app.change(&["+15550001111"], &[], &[]).await;
    app.discover(Format::Binary, "alice", &["+15550001111"])
        .await;
    // A scraper without a token learns nothing (issue 11, finding 5).
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let mut request = app.client.get(app.admin_url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 401, "{token:?}");
        assert!(!text.contains("contact_discovery_"), "{text}");
    }
    let with_admin = app
        .client
        .get(app.admin_url("/metrics"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_admin.status(), 200);
    let response = app
        .client
        .get(app.admin_url("/metrics"))
        .bearer_auth(crate::helpers::METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for name in [
        "contact_discovery_http_requests_total",
        "contact_discovery_fingerprints_looked_up_total",
        "contact_discovery_discover_batch_size",
        "contact_discovery_connections_cut_total",
        "contact_discovery_rate_limited_requests_total",
        "contact_discovery_current_epoch",
        "contact_discovery_index_build_seconds",
        "contact_discovery_registry_size",
        "contact_discovery_registry_write_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_move_with_requests_and_changes() {
    let app = spawn_app_with(|c| c.epochs.length = EpochLength::try_from(60).unwrap()).await;
    let key = |name: &str| format!("contact_discovery_{name}");
    let discover_200 = r#"contact_discovery_http_requests_total{listener="public",route="/v1/discover",status="200"}"#;
    let discover_410 = r#"contact_discovery_http_requests_total{listener="public",route="/v1/discover",status="410"}"#;
    let before = app.metrics().await;

    app.change(&["+15550001111", "+15550002222"], &[], &["+15550003333"])
        .await;
    let hits = app
        .discover(
            Format::Binary,
            "alice",
            &[
                "+15550001111",
                "+15550002222",
                "+15550003333",
                "+15550009999",
                "+1555",
            ],
        )
        .await;
    assert_eq!(hits, vec![0, 1]);
    let hits = app
        .discover(Format::Json, "alice", &["+15550002222", "+15550004444"])
        .await;
    assert_eq!(hits, vec![0]);
    let gone = app
        .discover_fps(Format::Binary, &app.credential("alice"), 0, &[])
        .await;
    assert_eq!(gone.0, 410);
    let after = app.metrics().await;

    let delta = |k: &str| metric_or_zero(&after, k) - metric_or_zero(&before, k);
    assert_eq!(delta(&key("fingerprints_looked_up_total")), 7.0);
    assert!(
        !after.contains("matches_total"),
        "no metric counts matches (issue 11, finding 5)"
    );
    assert_eq!(delta(&key("discover_batch_size_count")), 2.0);
    assert_eq!(delta(&key("discover_batch_size_sum")), 7.0);
    assert_eq!(delta(discover_200), 2.0);
    assert_eq!(delta(discover_410), 1.0);
    assert_eq!(delta(&key("registry_write_seconds_count")), 1.0);
    assert_eq!(delta(&key("rate_limited_requests_total")), 0.0);
    assert_eq!(
        metric(
            &after,
            r#"contact_discovery_registry_size{visibility="discoverable"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &after,
            r#"contact_discovery_registry_size{visibility="hidden"}"#
        ),
        Some(1.0)
    );
    let epoch = app.epoch().await.0;
    assert_eq!(metric(&after, &key("current_epoch")), Some(epoch as f64));

    // The epoch gauge follows rotation.
    app.clock.advance(Duration::from_secs(60));
    app.wait_for_epochs(&[epoch + 1]).await;
    let mut seen = None;
    for _ in 0..2_000 {
        seen = metric(&app.metrics().await, &key("current_epoch"));
        if seen == Some((epoch + 1) as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, Some((epoch + 1) as f64));
    app.stop().await;
}

#[tokio::test]
async fn metric_labels_are_route_templates_never_paths_or_uploads() {
    let app = spawn_app().await;
    app.change(&["+15550001111"], &[], &[]).await;
    let (epoch, salt) = app.epoch().await;
    let fp = crate::helpers::fingerprints(&salt, &["+15550001111"])[0];
    let text = contact_discovery::protocol::encode_fingerprint(fp);
    let hex = crate::helpers::hex(&fp.to_bytes());

    // The upload in unrouted paths and in query strings, on both listeners.
    for (url, status) in [
        (app.url(&format!("/v1/{text}?fp={hex}")), 404),
        (app.url(&format!("/v1/epoch?fp={text}")), 200),
        (app.admin_url(&format!("/admin/v1/{hex}")), 404),
    ] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
    }
    let (status, _, _) = app
        .discover_fps(Format::Json, &app.credential("alice"), epoch, &[fp])
        .await;
    assert_eq!(status, 200);

    let text_metrics = app.metrics().await;
    assert!(!text_metrics.contains(&text), "a metric carries the upload");
    assert!(!text_metrics.contains(&hex), "a metric carries the upload");
    let allowed = [
        "/v1/epoch",
        "/v1/discover",
        "/healthz",
        "/readyz",
        "/admin/v1/registrations",
        "/admin/v1/stats",
        "/metrics",
        "unmatched",
    ];
    let mut routes = 0;
    for line in text_metrics.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split_once("route=\"").map(|(_, r)| r) {
            let route = rest.split('"').next().unwrap();
            assert!(allowed.contains(&route), "route label {route:?} in {line}");
            routes += 1;
        }
    }
    assert!(routes > 0);
    assert!(text_metrics.contains(r#"route="unmatched""#));
    app.stop().await;
}
