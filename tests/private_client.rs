//! The private mode's client over real sockets.
//!
//! First against a small stand-in server (axum, in this process) that publishes a set the way
//! the protocol describes it, with switches for what a real server may do: a publish between
//! two runs, no delta history, a key epoch that goes, a rate limit, hostile answers. Then
//! against the real binary (`serve --demo`), through the `discover` command line.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use contact_discovery::client::private::{PrivateCache, read_cache, write_cache};
use contact_discovery::client::{Client, ClientConfig, ClientError};
use contact_discovery::domain::oprf::OprfKey;
use contact_discovery::domain::{E164, Epoch, ServerSecret};
use contact_discovery::protocol::evaluate::{decode_evaluate, encode_evaluated};
use contact_discovery::protocol::gcs;
use contact_discovery::protocol::private_set::{
    SetDelta, SetManifest, SetParams, ShardDelta, ShardInfo, Tag, encode_delta, set_version,
    shard_etag, tag_from_hex, tag_to_hex,
};
use contact_discovery::protocol::{Format, private_set};

use common::{ADMIN_TOKEN, BIN, start_server};

// ---------------------------------------------------------------------------------------------
// The stand-in server.

/// One published version of the set.
#[derive(Clone)]
struct Published {
    params: SetParams,
    version: Tag,
    values: Vec<Vec<u64>>,
    bodies: Vec<Vec<u8>>,
    etags: Vec<Tag>,
}

/// What the stand-in does besides answering correctly.
#[derive(Default, Clone)]
struct Switches {
    /// Answer every delta request with 404 `delta_unavailable`.
    no_delta_history: bool,
    /// Answer the next evaluation with 410.
    evaluate_gone_once: bool,
    /// Answer the next evaluation with 429 and `Retry-After: 1`.
    rate_limit_once: bool,
    /// Add this many bytes to every shard body (past what its parameters can need).
    pad_shards: usize,
    /// Flip a byte of every shard body (it no longer hashes to its ETag).
    corrupt_shards: bool,
    /// Claim this many shards in the manifest.
    claim_shards: Option<usize>,
}

struct Fake {
    secret: ServerSecret,
    key_epoch: u64,
    shards: u32,
    registered: BTreeSet<E164>,
    history: Vec<Published>,
    switches: Switches,
    max_batch: usize,
    /// Evaluated elements, all requests together.
    evaluated: usize,
}

type Shared = Arc<Mutex<Fake>>;

impl Fake {
    fn key(&self) -> OprfKey {
        OprfKey::derive(&self.secret, Epoch(self.key_epoch)).unwrap()
    }

    /// Publishes the registry as it is now (a new version if anything changed).
    fn publish(&mut self) {
        let key = self.key();
        let mut params = SetParams::for_items(self.key_epoch, 1_000, 1_000_000);
        params.shards = self.shards;
        if let Some(last) = self
            .history
            .last()
            .filter(|p| p.params.key_epoch == self.key_epoch)
        {
            params = last.params;
        }
        let mut values = vec![Vec::new(); params.shards as usize];
        for n in &self.registered {
            let at = params.locate(key.output(*n).unwrap().set_hash());
            values[at.shard as usize].push(at.value);
        }
        for v in &mut values {
            v.sort_unstable();
        }
        let bodies: Vec<Vec<u8>> = values
            .iter()
            .map(|v| gcs::encode(v, params.golomb_p).unwrap())
            .collect();
        let etags: Vec<Tag> = (0u32..)
            .zip(&bodies)
            .map(|(i, b)| shard_etag(&params, i, b))
            .collect();
        let version = set_version(&params, &etags);
        if self.history.last().is_some_and(|p| p.version == version) {
            return;
        }
        self.history.push(Published {
            params,
            version,
            values,
            bodies,
            etags,
        });
    }

    fn current(&self) -> &Published {
        self.history.last().unwrap()
    }

    fn manifest(&self) -> SetManifest {
        let p = self.current();
        let mut shards: Vec<ShardInfo> = p
            .etags
            .iter()
            .zip(&p.values)
            .map(|(e, v)| ShardInfo {
                etag: tag_to_hex(e),
                items: v.len() as u64,
            })
            .collect();
        if let Some(n) = self.switches.claim_shards {
            shards = vec![shards[0].clone(); n];
        }
        SetManifest {
            key_epoch: p.params.key_epoch,
            key_not_after: "2030-01-01T00:00:00Z".into(),
            version: tag_to_hex(&p.version),
            items: p.values.iter().map(|v| v.len() as u64).sum(),
            range: p.params.range,
            golomb_p: p.params.golomb_p,
            false_positive_rate: 0.0,
            max_batch: self.max_batch,
            shards,
        }
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "code": code, "message": code })),
    )
        .into_response()
}

fn gone(current: u64) -> Response {
    (
        StatusCode::GONE,
        axum::Json(serde_json::json!({
            "code": "key_epoch_unavailable",
            "message": "gone",
            "current_key_epoch": current,
        })),
    )
        .into_response()
}

fn if_none_match(headers: &HeaderMap) -> Option<Tag> {
    let value = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    tag_from_hex(value.trim_matches('"')).ok()
}

fn tagged(etag: &Tag, body: Vec<u8>) -> Response {
    (
        [
            (header::ETAG, format!("\"{}\"", tag_to_hex(etag))),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ],
        body,
    )
        .into_response()
}

async fn manifest(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    let fake = fake.lock().unwrap();
    let version = fake.current().version;
    if if_none_match(&headers) == Some(version) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [(header::ETAG, format!("\"{}\"", tag_to_hex(&version)))],
        axum::Json(fake.manifest()),
    )
        .into_response()
}

fn key_epoch_of(query: &HashMap<String, String>) -> Option<u64> {
    query.get("key_epoch")?.parse().ok()
}

async fn shard(
    State(fake): State<Shared>,
    UrlPath(index): UrlPath<usize>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let fake = fake.lock().unwrap();
    let p = fake.current();
    if key_epoch_of(&query) != Some(p.params.key_epoch) {
        return gone(p.params.key_epoch);
    }
    let Some(body) = p.bodies.get(index) else {
        return error(StatusCode::NOT_FOUND, "unknown_shard");
    };
    if if_none_match(&headers) == Some(p.etags[index]) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut body = body.clone();
    body.extend(std::iter::repeat_n(0, fake.switches.pad_shards));
    if fake.switches.corrupt_shards {
        body[0] ^= 1;
    }
    tagged(&p.etags[index], body)
}

async fn delta(
    State(fake): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let fake = fake.lock().unwrap();
    let now = fake.current();
    if key_epoch_of(&query) != Some(now.params.key_epoch) {
        return gone(now.params.key_epoch);
    }
    let Some(since) = query.get("since").and_then(|s| tag_from_hex(s).ok()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_since");
    };
    if since == now.version {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let from = fake
        .history
        .iter()
        .find(|p| p.version == since && p.params == now.params);
    let (Some(from), false) = (from, fake.switches.no_delta_history) else {
        return error(StatusCode::NOT_FOUND, "delta_unavailable");
    };
    let mut shards = Vec::new();
    for (i, (old, new)) in from.values.iter().zip(&now.values).enumerate() {
        if old == new {
            continue;
        }
        let (added, removed) = multiset_difference(old, new);
        shards.push(ShardDelta {
            shard: i as u32,
            etag: now.etags[i],
            items: new.len() as u64,
            added,
            removed,
        });
    }
    let body = encode_delta(
        &now.params,
        &SetDelta {
            from: from.version,
            to: now.version,
            shards,
        },
    )
    .unwrap();
    tagged(&now.version, body)
}

/// What `new` adds to and removes from `old`, both sorted multisets.
fn multiset_difference(old: &[u64], new: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let count = |values: &[u64]| {
        let mut counts = BTreeMap::new();
        for v in values {
            *counts.entry(*v).or_insert(0i64) += 1;
        }
        counts
    };
    let (old, new) = (count(old), count(new));
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for v in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let d = new.get(v).copied().unwrap_or(0) - old.get(v).copied().unwrap_or(0);
        for _ in 0..d.max(0) {
            added.push(*v);
        }
        for _ in 0..(-d).max(0) {
            removed.push(*v);
        }
    }
    (added, removed)
}

async fn evaluate(State(fake): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut fake = fake.lock().unwrap();
    if std::mem::take(&mut fake.switches.evaluate_gone_once) {
        let current = fake.key_epoch;
        return gone(current);
    }
    if std::mem::take(&mut fake.switches.rate_limit_once) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({"code": "rate_limited", "message": "wait"})),
        )
            .into_response();
    }
    let format = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some("application/json") => Format::Json,
        _ => Format::Binary,
    };
    let Ok(request) = decode_evaluate(format, &body, fake.max_batch) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_element");
    };
    if request.key_epoch != fake.key_epoch {
        return gone(fake.key_epoch);
    }
    let key = fake.key();
    let evaluated: Vec<_> = request
        .elements
        .iter()
        .map(|e| key.evaluate_blinded(e))
        .collect();
    fake.evaluated += evaluated.len();
    encode_evaluated(format, request.key_epoch, &evaluated).into_response()
}

/// Starts the stand-in with `registered` published under key epoch 7 in 4 shards.
async fn stand_in(registered: BTreeSet<E164>) -> (String, Shared) {
    let mut fake = Fake {
        secret: ServerSecret::from_bytes([9; 32]),
        key_epoch: 7,
        shards: 4,
        registered,
        history: Vec::new(),
        switches: Switches::default(),
        max_batch: 3,
        evaluated: 0,
    };
    fake.publish();
    let shared = Arc::new(Mutex::new(fake));
    let router = Router::new()
        .route("/v1/private/set", get(manifest))
        .route("/v1/private/set/shards/{index}", get(shard))
        .route("/v1/private/set/delta", get(delta))
        .route("/v1/private/evaluate", post(evaluate))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), shared)
}

fn numbers(range: std::ops::Range<u64>) -> Vec<E164> {
    range
        .map(|i| E164::from_u64(4_915_100_000_000 + i).unwrap())
        .collect()
}

fn client(server: &str, format: Format) -> Client {
    let mut config = ClientConfig::new(server, None);
    config.format = format;
    Client::new(config).unwrap()
}

/// The stand-in's registry and a book that holds half of it and as many others.
fn registry_and_book() -> (BTreeSet<E164>, Vec<E164>) {
    let registered: BTreeSet<E164> = numbers(0..60).into_iter().collect();
    let mut book = numbers(50..70); // 10 registered, 10 not
    book.push(book[0]); // a number twice in the book
    (registered, book)
}

fn expected(registered: &BTreeSet<E164>, book: &[E164]) -> Vec<bool> {
    book.iter().map(|n| registered.contains(n)).collect()
}

// ---------------------------------------------------------------------------------------------
// Against the stand-in.

#[tokio::test]
async fn a_run_answers_like_the_registry_then_a_cached_run_downloads_and_evaluates_nothing() {
    let (registered, book) = registry_and_book();
    let (server, fake) = stand_in(registered.clone()).await;
    for format in [Format::Binary, Format::Json] {
        let client = client(&server, format);
        let mut cache = PrivateCache::default();
        let first = client.discover_private(&book, &mut cache).await.unwrap();
        assert_eq!(first.registered, expected(&registered, &book));
        assert_eq!(first.key_epoch, 7);
        let s = first.stats;
        assert_eq!((s.evaluated, s.from_cache), (20, 0));
        assert_eq!(s.evaluate_requests, 7, "20 numbers in batches of 3");
        assert_eq!(s.sync.shards_downloaded, 4);
        assert!(s.sync.manifest_bytes > 0 && s.sync.shard_bytes > 0);
        assert_eq!(s.sync.delta_bytes, 0);

        let again = client.discover_private(&book, &mut cache).await.unwrap();
        assert_eq!(again.registered, first.registered);
        let s = again.stats;
        assert_eq!((s.evaluated, s.from_cache, s.evaluate_requests), (0, 20, 0));
        assert_eq!(s.sync.total_bytes(), 0);
        assert_eq!((s.sync.manifests_not_modified, s.sync.requests), (1, 1));
    }
    assert_eq!(fake.lock().unwrap().evaluated, 40);
}

#[tokio::test]
async fn a_change_arrives_as_a_delta_or_as_the_changed_shards() {
    let (registered, book) = registry_and_book();
    let (server, fake) = stand_in(registered.clone()).await;
    let client = client(&server, Format::Binary);
    let mut cache = PrivateCache::default();
    client.discover_private(&book, &mut cache).await.unwrap();

    // One contact registers, one leaves: a delta, nothing evaluated, no shard downloaded.
    let mut now = registered.clone();
    now.insert(book[15]);
    now.remove(&book[2]);
    {
        let mut f = fake.lock().unwrap();
        f.registered = now.clone();
        f.publish();
    }
    let out = client.discover_private(&book, &mut cache).await.unwrap();
    assert_eq!(out.registered, expected(&now, &book));
    let s = out.stats.sync;
    assert!(s.delta_bytes > 0 && s.shards_from_delta >= 1, "{s:?}");
    assert_eq!(
        (s.shard_bytes, s.shards_downloaded, out.stats.evaluated),
        (0, 0, 0)
    );

    // Without history on the server: only the shards whose ETags changed are downloaded.
    let before: Vec<Tag> = fake.lock().unwrap().current().etags.clone();
    now.remove(&book[3]);
    let changed = {
        let mut f = fake.lock().unwrap();
        f.registered = now.clone();
        f.switches.no_delta_history = true;
        f.publish();
        f.current()
            .etags
            .iter()
            .zip(&before)
            .filter(|(a, b)| a != b)
            .count()
    };
    assert_eq!(changed, 1);
    let out = client.discover_private(&book, &mut cache).await.unwrap();
    assert_eq!(out.registered, expected(&now, &book));
    let s = out.stats.sync;
    assert_eq!(
        (
            s.deltas_unavailable,
            s.shards_downloaded,
            s.shards_from_delta
        ),
        (1, 1, 0)
    );

    // Through the cache file, as the command line keeps it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contacts.cache");
    write_cache(&path, &cache).unwrap();
    let mut reread = read_cache(&path).unwrap().unwrap();
    let out = client.discover_private(&book, &mut reread).await.unwrap();
    assert_eq!(out.registered, expected(&now, &book));
    assert_eq!((out.stats.evaluated, out.stats.sync.total_bytes()), (0, 0));
}

#[tokio::test]
async fn a_new_key_epoch_means_a_new_set_and_new_evaluations() {
    let (registered, book) = registry_and_book();
    let (server, fake) = stand_in(registered.clone()).await;
    let client = client(&server, Format::Binary);
    let mut cache = PrivateCache::default();
    client.discover_private(&book, &mut cache).await.unwrap();
    {
        let mut f = fake.lock().unwrap();
        f.key_epoch = 8;
        f.publish();
    }
    let out = client.discover_private(&book, &mut cache).await.unwrap();
    assert_eq!(out.registered, expected(&registered, &book));
    assert_eq!(out.key_epoch, 8);
    assert_eq!(
        (out.stats.evaluated, out.stats.sync.shards_downloaded),
        (20, 4)
    );
    assert_eq!(cache.hashes.keys().copied().collect::<Vec<_>>(), [8]);
    assert_eq!(cache.hashes[&8].len(), 20);

    // The key epoch goes while evaluating (410): re-synced and retried once.
    {
        let mut f = fake.lock().unwrap();
        f.key_epoch = 9;
        f.publish();
        f.switches.evaluate_gone_once = true;
    }
    let fresh = numbers(100..102);
    let mut cache = PrivateCache::default();
    client.discover_private(&fresh, &mut cache).await.unwrap();
    fake.lock().unwrap().switches.evaluate_gone_once = true;
    let out = client
        .discover_private(&numbers(102..104), &mut cache)
        .await
        .unwrap();
    assert_eq!(out.stats.key_epoch_refreshes, 1);
    assert_eq!(out.registered, [false, false]);
}

#[tokio::test]
async fn rate_limits_are_waited_out() {
    let (registered, book) = registry_and_book();
    let (server, fake) = stand_in(registered.clone()).await;
    fake.lock().unwrap().switches.rate_limit_once = true;
    let started = Instant::now();
    let out = client(&server, Format::Binary)
        .discover_private(&book, &mut PrivateCache::default())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(out.stats.rate_limit_waits, 1);
    assert_eq!(out.registered, expected(&registered, &book));
}

#[tokio::test]
async fn hostile_sets_are_refused_and_nothing_of_them_is_kept() {
    let (registered, book) = registry_and_book();
    let (server, fake) = stand_in(registered).await;
    let client = client(&server, Format::Binary);
    let run = |switches: Switches| {
        fake.lock().unwrap().switches = switches;
        let client = &client;
        let book = &book;
        async move {
            let mut cache = PrivateCache::default();
            let out = client.discover_private(book, &mut cache).await;
            (out, cache)
        }
    };
    let (out, cache) = run(Switches {
        pad_shards: 100_000,
        ..Switches::default()
    })
    .await;
    assert!(
        matches!(
            out,
            Err(ClientError::TooLarge {
                what: "set shard",
                ..
            })
        ),
        "{out:?}"
    );
    assert_eq!(cache.set.version(), None);
    let (out, _) = run(Switches {
        corrupt_shards: true,
        ..Switches::default()
    })
    .await;
    assert!(
        matches!(
            out,
            Err(ClientError::Set(private_set::SetError::EtagMismatch))
        ),
        "{out:?}"
    );
    let (out, _) = run(Switches {
        claim_shards: Some(private_set::MAX_SHARDS as usize + 1),
        ..Switches::default()
    })
    .await;
    assert!(
        matches!(out, Err(ClientError::Set(private_set::SetError::Params))),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Against the real binary.

fn example_book() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/contacts.vcf")
}

/// `discover` with `extra` flags: its JSON report and stderr.
fn discover(server: &str, token: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(BIN)
        .args(["discover", "--server", &format!("http://{server}")])
        .args([
            "--credential",
            token,
            "--region",
            "DE",
            "--json",
            "--contacts",
        ])
        .arg(example_book())
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

/// The registered numbers a report names.
fn registered_in(report: &serde_json::Value) -> BTreeSet<String> {
    report["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["numbers"].as_array().unwrap().iter())
        .filter(|n| n["registered"] == true)
        .map(|n| n["e164"].as_str().unwrap().to_owned())
        .collect()
}

/// A `key=value` count from the private run's stderr line.
fn stat(stderr: &str, key: &str) -> u64 {
    stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in {stderr}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_agree_and_the_cache_keeps_a_rerun_to_a_conditional_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--demo"]);
    let token = common::credential(dir.path(), "private-reader");
    let cache = dir.path().join("contacts.cache");
    let cache_arg = cache.to_str().unwrap();

    // The demo prints a private-mode command beside the hashed one.
    let started = Instant::now();
    while !server
        .log_lines()
        .iter()
        .any(|l| l.contains("discover --mode private --cache"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            server.log_lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (hashed, _) = discover(&server.public, &token, &[]);
    let expected: BTreeSet<String> = contact_discovery::tools::demo::registered_example_numbers()
        .iter()
        .map(ToString::to_string)
        .filter(|n| {
            hashed["contacts"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c["numbers"].as_array().unwrap().iter())
                .any(|m| m["e164"] == n.as_str())
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(registered_in(&hashed), expected);

    // The set may still be building (503 not_ready): the client waits it out.
    let (private, said) = discover(
        &server.public,
        &token,
        &["--mode", "private", "--cache", cache_arg],
    );
    assert_eq!(registered_in(&private), expected, "{said}");
    assert_eq!(private["summary"], hashed["summary"]);
    assert!(stat(&said, "evaluated") > 0, "{said}");
    assert!(stat(&said, "shard_bytes") > 0, "{said}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Again with the cache: nothing evaluated, nothing downloaded but a 304 manifest.
    let (again, said) = discover(
        &server.public,
        &token,
        &["--mode", "private", "--cache", cache_arg],
    );
    assert_eq!(registered_in(&again), expected);
    assert_eq!(stat(&said, "evaluated"), 0, "{said}");
    assert_eq!(stat(&said, "downloaded_bytes"), 0, "{said}");
    assert_eq!(stat(&said, "manifest_not_modified"), 1, "{said}");

    // The hashed mode keeps nothing, so a cache there is a mistake worth saying.
    let out = Command::new(BIN)
        .args(["discover", "--server", &format!("http://{}", server.public)])
        .args([
            "--credential",
            &token,
            "--region",
            "DE",
            "--cache",
            cache_arg,
            "--contacts",
        ])
        .arg(example_book())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache is for --mode private"));

    // A damaged cache is reported and replaced; the run still answers.
    let mut bytes = std::fs::read(&cache).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&cache, &bytes).unwrap();
    let (fresh, said) = discover(
        &server.public,
        &token,
        &["--mode", "private", "--cache", cache_arg],
    );
    assert!(said.contains("starting afresh"), "{said}");
    assert_eq!(registered_in(&fresh), expected);
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_change_reaches_a_cached_client_as_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--demo"]);
    let token = common::credential(dir.path(), "private-reader");
    let cache = dir.path().join("contacts.cache");
    let args = ["--mode", "private", "--cache", cache.to_str().unwrap()];
    let (before, _) = discover(&server.public, &token, &args);
    let registered = registered_in(&before);

    // One example contact that is not registered registers; one that is, leaves.
    let all: Vec<String> = contact_discovery::tools::demo::example_numbers()
        .iter()
        .map(ToString::to_string)
        .collect();
    let book: BTreeSet<String> = before["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["numbers"].as_array().unwrap().iter())
        .filter_map(|n| n["e164"].as_str().map(str::to_owned))
        .collect();
    let joining = all
        .iter()
        .find(|n| book.contains(*n) && !registered.contains(*n))
        .unwrap()
        .clone();
    let leaving = registered.iter().next().unwrap().clone();
    let status = reqwest::Client::new()
        .post(format!("http://{}/admin/v1/registrations", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "add": [joining], "remove": [leaving] }))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let mut want = registered.clone();
    want.insert(joining);
    want.remove(&leaving);

    // Seen within the server's publish interval; nothing evaluated again.
    let started = Instant::now();
    loop {
        let (report, said) = discover(&server.public, &token, &args);
        assert_eq!(stat(&said, "evaluated"), 0, "{said}");
        if registered_in(&report) == want {
            // The server keeps days of history by default: the change comes as a delta,
            // and no shard is downloaded whole.
            assert!(stat(&said, "delta_bytes") > 0, "{said}");
            assert!(stat(&said, "shards_from_delta") > 0, "{said}");
            assert_eq!(stat(&said, "shard_bytes"), 0, "{said}");
            eprintln!(
                "{}",
                said.lines()
                    .find(|l| l.starts_with("private mode"))
                    .unwrap_or("")
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the change was not published within 30 s: {said}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    server.kill9();
}
