//! The "nothing of a query is kept" claim, checked instead of asserted.
//!
//! Runs the real binary with its own data directory and the most verbose logging, sends
//! discovery requests carrying known random fingerprints (both encodings, good, malformed,
//! refused and rate-limited ones, and, with the `test-hooks` feature, one that makes a handler
//! panic with the fingerprint in its message), scrapes `/metrics` and `/admin/v1/stats`, stops
//! the server, then searches everything it produced for every fingerprint in raw bytes, hex
//! (both cases), base64 and base64url (at every alignment) and decimal. It must find nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use common::{ADMIN_TOKEN, credential, start_server_with_env};
use contact_discovery::domain::{E164, Fingerprint, Salt};
use rand::RngCore;

/// Every way a fingerprint could be written down.
fn encodings(fp: &[u8; 8]) -> Vec<Vec<u8>> {
    let mut out = vec![fp.to_vec()];
    let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
    out.push(hex.clone().into_bytes());
    out.push(hex.to_uppercase().into_bytes());
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(engine.encode(fp).into_bytes());
    }
    // Inside a longer base64 text the 8 bytes may start at any of three alignments; keep the
    // characters that depend on the fingerprint's bytes alone.
    for shift in 1..3usize {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(fp);
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let text = engine.encode(&shifted);
            let skip = (shift * 8).div_ceil(6);
            let keep = (8 * 8 - (6 - (shift * 8) % 6) % 6) / 6;
            out.push(text.as_bytes()[skip..skip + keep].to_vec());
        }
    }
    out.push(u64::from_le_bytes(*fp).to_string().into_bytes());
    out.push(u64::from_be_bytes(*fp).to_string().into_bytes());
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The name of the first encoding of any fingerprint found in `haystack`.
fn find_any(haystack: &[u8], fingerprints: &[[u8; 8]]) -> Option<String> {
    for fp in fingerprints {
        for (i, needle) in encodings(fp).iter().enumerate() {
            if contains(haystack, needle) {
                return Some(format!("encoding #{i} of fingerprint {fp:02x?}"));
            }
        }
    }
    None
}

fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::files_under(dir)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

struct Probe {
    client: reqwest::Client,
    base: String,
    /// The route requests go to.
    route: &'static str,
    credential: String,
    /// Every response body, status line and header the server sent back.
    seen: Vec<u8>,
}

impl Probe {
    async fn send(
        &mut self,
        content_type: &str,
        auth: bool,
        extra: Option<(&str, &str)>,
        body: Vec<u8>,
    ) -> u16 {
        let mut request = self
            .client
            .post(format!("{}{}", self.base, self.route))
            .header("content-type", content_type)
            .body(body);
        if auth {
            request = request.bearer_auth(&self.credential);
        }
        if let Some((k, v)) = extra {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        for (name, value) in response.headers() {
            self.seen.extend_from_slice(name.as_str().as_bytes());
            self.seen.extend_from_slice(value.as_bytes());
        }
        self.seen
            .extend_from_slice(&response.bytes().await.unwrap());
        status
    }
}

fn binary_body(epoch: u64, fps: &[[u8; 8]]) -> Vec<u8> {
    let mut body = epoch.to_be_bytes().to_vec();
    for fp in fps {
        body.extend_from_slice(fp);
    }
    body
}

fn json_body(epoch: u64, fps: &[[u8; 8]]) -> Vec<u8> {
    let list: Vec<String> = fps.iter().map(|f| URL_SAFE_NO_PAD.encode(f)).collect();
    serde_json::json!({ "epoch": epoch, "fingerprints": list })
        .to_string()
        .into_bytes()
}

/// Registers `numbers` through the admin API.
async fn register<S: serde::Serialize>(
    client: &reqwest::Client,
    server: &common::Server,
    numbers: &[S],
) {
    let added = client
        .post(format!("http://{}/admin/v1/registrations", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "add": numbers }))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 200);
}

/// The current epoch and its salt, as a client reads them.
async fn current_epoch(client: &reqwest::Client, server: &common::Server) -> (u64, Salt) {
    let epoch = server.epoch(client).await;
    (
        epoch["epoch"].as_u64().unwrap(),
        contact_discovery::protocol::decode_salt(epoch["salt"].as_str().unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trace_of_a_query_is_kept_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server_with_env(
        &data,
        &[
            "--max-batch",
            "1000",
            "--rate-limit-burst",
            "2000",
            "--rate-limit-refill-per-day",
            "1",
            "--log",
            "trace",
        ],
        &[("RUST_LOG", "trace")],
    );
    let client = reqwest::Client::new();

    // Some registered numbers, so that some uploaded fingerprints match.
    let registered = ["+4915112345678", "+15555550123", "+447700900456"];
    register(&client, &server, &registered).await;
    let credential = credential(&data, "retention-probe");

    let (current, salt) = current_epoch(&client, &server).await;

    // Wait until the index holds the registrations (readiness alone is not enough).
    let matching: Vec<[u8; 8]> = registered
        .iter()
        .map(|n| Fingerprint::compute(&salt, E164::parse(n).unwrap()).to_bytes())
        .collect();
    let mut random = vec![[0u8; 8]; 64];
    for fp in &mut random {
        rand::rng().fill_bytes(fp);
    }
    let all: Vec<[u8; 8]> = matching.iter().chain(random.iter()).copied().collect();

    // Files after the registrations, before any query: nothing below may change them.
    let before = files_under(&data);

    let mut probe = Probe {
        client: client.clone(),
        base: format!("http://{}", server.public),
        route: "/v1/discover",
        credential,
        seen: Vec::new(),
    };
    let mut statuses = Vec::new();
    let bin = "application/octet-stream";
    let json = "application/json";
    // Good requests in both encodings (they must also match, or nothing was really looked up).
    let mut matched = false;
    for _ in 0..50 {
        let response = client
            .post(format!("{}/v1/discover", probe.base))
            .header("content-type", json)
            .bearer_auth(&probe.credential)
            .body(json_body(current, &all))
            .send()
            .await
            .unwrap();
        let answer: serde_json::Value = response.json().await.unwrap();
        if answer["registered"] == serde_json::json!([0, 1, 2]) {
            matched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matched, "registered numbers were never found");
    statuses.push(
        probe
            .send(bin, true, None, binary_body(current, &all))
            .await,
    );
    statuses.push(probe.send(json, true, None, json_body(current, &all)).await);
    // Malformed, refused and wrong ones, each carrying the fingerprints.
    let mut truncated = json_body(current, &all);
    truncated.truncate(truncated.len() - 3);
    statuses.push(probe.send(json, true, None, truncated).await);
    let mut bad_length = binary_body(current, &all);
    bad_length.extend_from_slice(&all[0][..5]);
    statuses.push(probe.send(bin, true, None, bad_length).await);
    let short = URL_SAFE_NO_PAD.encode(&all[1][..7]);
    let weird = format!(
        r#"{{"epoch":{current},"fingerprints":["{}","{short}"],"x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(all[2]),
        URL_SAFE_NO_PAD.encode(all[3])
    );
    statuses.push(probe.send(json, true, None, weird.into_bytes()).await);
    statuses.push(
        probe
            .send(bin, true, None, binary_body(current + 7, &all))
            .await,
    );
    statuses.push(probe.send(bin, true, None, binary_body(0, &all)).await);
    statuses.push(
        probe
            .send("text/plain", true, None, binary_body(current, &all))
            .await,
    );
    statuses.push(
        probe
            .send(bin, false, None, binary_body(current, &all))
            .await,
    );
    let mut huge = all.clone();
    while huge.len() <= 1_000 {
        huge.extend_from_slice(&all);
    }
    statuses.push(
        probe
            .send(bin, true, None, binary_body(current, &huge))
            .await,
    );
    // Spend the budget, then get rate limited with fingerprints in the body.
    for _ in 0..40 {
        let status = probe
            .send(bin, true, None, binary_body(current, &all))
            .await;
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    if cfg!(feature = "test-hooks") {
        // A user with budget left: a spent one is refused before the handler reads the body.
        probe.credential = common::credential(&data, "retention-panic");
        let status = probe
            .send(
                bin,
                true,
                Some(("x-test-panic", "1")),
                binary_body(current, &all),
            )
            .await;
        assert_eq!(status, 500, "the test hook panicked");
        statuses.push(status);
    }
    for code in [200, 400, 401, 410, 413, 415, 422, 429] {
        assert!(statuses.contains(&code), "no {code} among {statuses:?}");
    }

    // Everything operators can read.
    let metrics = server.metrics(&client).await;
    let stats = client
        .get(format!("http://{}/admin/v1/stats", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("contact_discovery_fingerprints_looked_up_total"));
    assert!(stats.contains("registry"));
    let after_queries = files_under(&data);

    // Stop gracefully and collect every byte the process wrote.
    server.sigterm();
    let (status, logs) = server.wait_with_output();
    assert!(status.success(), "{status}");
    let files = files_under(dir.path());

    // The searches can fail: they find the fingerprints where they are known to be.
    assert!(find_any(&binary_body(current, &all), &all).is_some());
    assert!(find_any(&json_body(current, &all), &all).is_some());
    // The logs are really verbose: access lines for the requests above are there.
    let log_text = String::from_utf8_lossy(&logs);
    assert!(
        log_text.contains("TRACE") || log_text.contains("DEBUG"),
        "verbose logging is on"
    );
    assert!(
        log_text.contains("/v1/discover"),
        "access log lines are there"
    );
    if cfg!(feature = "test-hooks") {
        assert!(
            log_text.contains("panic (message withheld"),
            "the panic was logged"
        );
        assert!(
            !log_text.contains("test hook panic"),
            "the panic message was withheld"
        );
    }

    assert_eq!(find_any(&logs, &all), None, "in the logs");
    assert_eq!(find_any(metrics.as_bytes(), &all), None, "in /metrics");
    assert_eq!(find_any(stats.as_bytes(), &all), None, "in /admin/v1/stats");
    assert_eq!(find_any(&probe.seen, &all), None, "in the responses");
    for (path, bytes) in &files {
        assert_eq!(find_any(bytes, &all), None, "in {}", path.display());
    }
    // Queries wrote nothing: the data directory is byte for byte what it was before them.
    assert_eq!(
        before, after_queries,
        "discovery requests changed the data directory"
    );
}

/// Every 8-byte window of each element at offsets 0, 8, 16 and 24: a leak of any part of an
/// element is found, in every encoding [`encodings`] knows.
fn windows(elements: &[[u8; 32]]) -> Vec<[u8; 8]> {
    elements
        .iter()
        .flat_map(|e| e.chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trace_of_a_private_query_is_kept_anywhere() {
    use contact_discovery::domain::oprf::{self, BlindedElement};
    use contact_discovery::protocol::Format;
    use contact_discovery::protocol::evaluate::encode_evaluate;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server_with_env(
        &data,
        &[
            "--private-max-batch",
            "100",
            "--max-batch",
            "100",
            "--rate-limit-burst",
            "400",
            "--rate-limit-refill-per-day",
            "1",
            "--private-publish-interval-ms",
            "100",
            "--log",
            "trace",
        ],
        &[("RUST_LOG", "trace")],
    );
    let client = reqwest::Client::new();
    let registered = ["+4915112345678", "+15555550123", "+447700900456"];
    let credential = credential(&data, "private-probe");
    let base = format!("http://{}", server.public);
    let first = server.private_manifest(&client, &credential).await;
    register(&client, &server, &registered).await;
    // Wait until the set holds the registrations.
    let mut published = first.clone();
    for _ in 0..200 {
        published = server.private_manifest(&client, &credential).await;
        if published["version"] != first["version"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(published["version"], first["version"], "never published");
    let key_epoch = published["key_epoch"].as_u64().unwrap();

    // Blinded elements of registered and other numbers: what a client uploads.
    let numbers: Vec<E164> = registered
        .iter()
        .map(|n| E164::parse(n).unwrap())
        .chain((0..20).map(|i| E164::from_u64(4_930_000_000 + i).unwrap()))
        .collect();
    let elements: Vec<BlindedElement> =
        numbers.iter().map(|n| oprf::blind(*n).unwrap().1).collect();
    let raw: Vec<[u8; 32]> = elements.iter().map(BlindedElement::to_bytes).collect();
    let needles = windows(&raw);
    let before = files_under(&data);

    let mut probe = Probe {
        client: client.clone(),
        base: base.clone(),
        route: "/v1/private/evaluate",
        credential,
        seen: Vec::new(),
    };
    let (bin, json) = ("application/octet-stream", "application/json");
    let body = |format, epoch| encode_evaluate(format, epoch, &elements);
    let mut statuses = vec![
        probe
            .send(bin, true, None, body(Format::Binary, key_epoch))
            .await,
        probe
            .send(json, true, None, body(Format::Json, key_epoch))
            .await,
        probe
            .send(bin, true, None, body(Format::Binary, key_epoch + 3))
            .await,
        probe
            .send(bin, false, None, body(Format::Binary, key_epoch))
            .await,
        probe
            .send("text/plain", true, None, body(Format::Binary, key_epoch))
            .await,
    ];
    let mut cut = body(Format::Json, key_epoch);
    cut.truncate(cut.len() - 5);
    statuses.push(probe.send(json, true, None, cut).await);
    let mut odd = body(Format::Binary, key_epoch);
    odd.extend_from_slice(&raw[0][..7]);
    statuses.push(probe.send(bin, true, None, odd).await);
    // A valid element followed by one that is not a group element.
    let mut invalid = body(Format::Binary, key_epoch);
    invalid[8 + 32..8 + 64].fill(0xff);
    statuses.push(probe.send(bin, true, None, invalid).await);
    let many: Vec<BlindedElement> = elements.iter().cycle().take(150).cloned().collect();
    statuses.push(
        probe
            .send(
                bin,
                true,
                None,
                encode_evaluate(Format::Binary, key_epoch, &many),
            )
            .await,
    );
    for _ in 0..40 {
        let status = probe
            .send(bin, true, None, body(Format::Binary, key_epoch))
            .await;
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    for code in [200, 400, 401, 410, 413, 415, 422, 429] {
        assert!(statuses.contains(&code), "no {code} among {statuses:?}");
    }
    // The set routes, for completeness (they carry nothing of a query).
    let shard = client
        .get(format!(
            "{base}/v1/private/set/shards/0?key_epoch={key_epoch}"
        ))
        .bearer_auth(common::credential(&data, "private-set-reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(shard.status(), 200);

    let metrics = server.metrics(&client).await;
    assert!(metrics.contains("contact_discovery_private_elements_evaluated_total"));
    let after_queries = files_under(&data);
    server.sigterm();
    let (status, logs) = server.wait_with_output();
    assert!(status.success(), "{status}");
    let files = files_under(dir.path());

    // The search can fail: it finds the elements in what was sent.
    assert!(find_any(&body(Format::Binary, key_epoch), &needles).is_some());
    assert!(find_any(&body(Format::Json, key_epoch), &needles).is_some());
    let log_text = String::from_utf8_lossy(&logs);
    assert!(
        log_text.contains("/v1/private/evaluate"),
        "access log lines are there"
    );
    assert_eq!(find_any(&logs, &needles), None, "in the logs");
    assert_eq!(find_any(metrics.as_bytes(), &needles), None, "in /metrics");
    assert_eq!(find_any(&probe.seen, &needles), None, "in the responses");
    for (path, bytes) in &files {
        assert_eq!(find_any(bytes, &needles), None, "in {}", path.display());
    }
    assert_eq!(
        before, after_queries,
        "private requests changed the data directory"
    );
}

/// Every sample of a Prometheus text page, by series (name and labels), timings left out:
/// `_seconds` series move with the clock, not with anything a query carried.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .filter(|(series, _)| !series.contains("_seconds"))
        .collect()
}

/// Issue 11, finding 5: a counter of matches moved by exactly the number of a query's
/// registered contacts, which anyone scraping `/metrics` could read per query. Three queries of
/// the same size with 0, 5 and 20 registered numbers among them must move every series by the
/// same amount; a series that moves with the number of matches fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metric_moves_with_the_number_of_matches() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server_with_env(&data, &[], &[]);
    let client = reqwest::Client::new();
    let registered: Vec<String> = (0..20).map(|i| format!("+1555555{i:04}")).collect();
    register(&client, &server, &registered).await;
    let (current, salt) = current_epoch(&client, &server).await;
    let credential = credential(&data, "metrics-probe");
    let query = |hits: usize| {
        let mut fps: Vec<[u8; 8]> = registered[..hits]
            .iter()
            .map(|n| Fingerprint::compute(&salt, E164::parse(n).unwrap()).to_bytes())
            .collect();
        while fps.len() < 40 {
            let mut fp = [0u8; 8];
            rand::rng().fill_bytes(&mut fp);
            fps.push(fp);
        }
        binary_body(current, &fps)
    };

    let mut deltas = Vec::new();
    for hits in [0, 5, 20] {
        let before = samples(&server.metrics(&client).await);
        let response = client
            .post(format!("http://{}/v1/discover", server.public))
            .header("content-type", "application/octet-stream")
            .bearer_auth(&credential)
            .body(query(hits))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer = response.bytes().await.unwrap();
        let found: u32 = answer[8..].iter().map(|b| b.count_ones()).sum();
        assert_eq!(
            found as usize, hits,
            "the index answered the registered ones"
        );
        let after = samples(&server.metrics(&client).await);
        let delta: BTreeMap<String, f64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .collect();
        deltas.push((hits, delta));
    }
    let (_, first) = &deltas[0];
    for (hits, delta) in &deltas[1..] {
        for (series, moved) in delta {
            let baseline = first.get(series).copied().unwrap_or(0.0);
            assert_eq!(
                *moved, baseline,
                "{series} moved by {moved} for a query with {hits} matches, {baseline} for one with none"
            );
        }
    }
    assert!(
        first
            .keys()
            .any(|k| k.starts_with("contact_discovery_fingerprints_looked_up_total")),
        "the scrape has the discovery series"
    );
}
