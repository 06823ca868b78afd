//! Several replicas sharing state through a real Redis. Rate limits (`--rate-limit-redis-url`):
//! a user who spreads requests over two replicas gets one budget, not two; with Redis gone each
//! replica falls back to its own budget. The registry (`--registry-redis-url`):
//! a change posted to one replica reaches the others; a new replica loads the shared snapshot
//! and is not ready before; a replica killed with SIGKILL resumes from its resume point, or from
//! the snapshot when its point was trimmed away meanwhile; with Redis down, writes are refused
//! with a clear 503 and a new replica never reports ready.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{ADMIN_TOKEN, RedisServer, Server, start_server_with_env};
use contact_discovery::api::codec::{self, Format};
use contact_discovery::domain::{E164, Fingerprint, Salt};

const SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const KEY: &str = "5151515151515151515151515151515151515151515151515151515151515151";
/// The numbers every discovery request asks about.
const NUMBERS: [&str; 6] = [
    "+4915112345678",
    "+15555550100",
    "+447700900123",
    "+33612345678",
    "+819012345678",
    "+27821234567",
];

/// Replicas sharing one secret, one credential key and one Redis.
struct Cluster {
    redis: RedisServer,
    key_file: tempfile::NamedTempFile,
    http: reqwest::Client,
    credential: String,
}

impl Cluster {
    fn new() -> Cluster {
        let key_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key_file.path(), KEY).unwrap();
        let credential = common::mint_with_hex_key(KEY, "replicator");
        Cluster {
            redis: RedisServer::start(),
            key_file,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            credential,
        }
    }

    /// Starts a replica on `dir` following this cluster's Redis, with `extra` flags.
    fn replica(&self, dir: &Path, extra: &[&str]) -> Server {
        self.replica_of(&self.redis.url, dir, extra)
    }

    fn replica_of(&self, url: &str, dir: &Path, extra: &[&str]) -> Server {
        let mut args = vec![
            "--credential-key-file",
            self.key_file.path().to_str().unwrap(),
            "--registry-redis-url",
            url,
        ];
        args.extend_from_slice(extra);
        start_server_with_env(dir, &args, &[("CONTACT_DISCOVERY_SERVER_SECRET", SECRET)])
    }

    /// Posts a change to `server`'s admin API; returns status and body.
    async fn change(&self, server: &Server, change: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .http
            .post(format!("http://{}/admin/v1/registrations", server.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&change)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn ready(&self, server: &Server) -> bool {
        self.http
            .get(format!("http://{}/readyz", server.public))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    }

    /// Indexes into `NUMBERS` that `server` reports registered.
    async fn matches(&self, server: &Server) -> Vec<usize> {
        let numbers: Vec<E164> = NUMBERS.iter().map(|n| E164::parse(n).unwrap()).collect();
        let response = self.discover(server, &self.credential, &numbers).await;
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        codec::decode_binary_response(&body, NUMBERS.len())
            .unwrap()
            .1
    }

    /// A binary discovery request for `numbers` under `server`'s current epoch.
    async fn discover(
        &self,
        server: &Server,
        credential: &str,
        numbers: &[E164],
    ) -> reqwest::Response {
        let info = server.epoch(&self.http).await;
        let salt = URL_SAFE_NO_PAD
            .decode(info["salt"].as_str().unwrap())
            .unwrap();
        let salt = Salt::from_bytes(salt.try_into().unwrap());
        let fps: Vec<Fingerprint> = numbers
            .iter()
            .map(|n| Fingerprint::compute(&salt, *n))
            .collect();
        self.http
            .post(format!("http://{}/v1/discover", server.public))
            .header("content-type", Format::Binary.content_type())
            .bearer_auth(credential)
            .body(codec::encode_request(
                Format::Binary,
                info["epoch"].as_u64().unwrap(),
                &fps,
            ))
            .send()
            .await
            .unwrap()
    }

    /// Waits (bounded) until `server` is ready and reports exactly `expected`.
    async fn wait_for(&self, server: &Server, expected: &[usize]) {
        let started = Instant::now();
        loop {
            if self.ready(server).await && self.matches(server).await == expected {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "replica never reported {expected:?}; log: {:?}",
                server.log_lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The id of the shared snapshot in Redis, if any.
fn snapshot_id(cluster: &Cluster) -> Option<String> {
    cluster
        .redis
        .command(&["HGET", "cd:registry:snapshot", "id"])
        .filter(|id| !id.is_empty())
}

fn logged(server: &Server, needle: &str) -> bool {
    server.log_lines().iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn a_change_posted_to_one_replica_reaches_the_other() {
    let cluster = Cluster::new();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = cluster.replica(dirs[0].path(), &[]);
    let b = cluster.replica(dirs[1].path(), &[]);
    cluster.wait_for(&a, &[]).await;
    cluster.wait_for(&b, &[]).await;

    let (status, body) = cluster
        .change(
            &a,
            serde_json::json!({ "add": [NUMBERS[0], NUMBERS[1], NUMBERS[2]] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["applied_here"], true,
        "read-your-writes on the replica written to"
    );
    assert!(body["stream_id"].as_str().unwrap().contains('-'));
    assert_eq!(cluster.matches(&a).await, [0, 1, 2]);
    cluster.wait_for(&b, &[0, 1, 2]).await;

    // A number change is a remove and an add in one request: one stream entry, applied whole.
    let (status, _) = cluster
        .change(
            &b,
            serde_json::json!({ "remove": [NUMBERS[1]], "add": [NUMBERS[3]], "hide": [NUMBERS[2]] }),
        )
        .await;
    assert_eq!(status, 200);
    cluster.wait_for(&a, &[0, 3]).await;
    assert_eq!(cluster.matches(&b).await, [0, 3]);

    // Both replicas hold the same registrations on disk.
    a.kill9();
    b.kill9();
    assert_eq!(
        common::export(dirs[0].path()),
        common::export(dirs[1].path())
    );
}

#[tokio::test]
async fn new_and_restarted_replicas_catch_up_from_snapshot_and_stream() {
    let cluster = Cluster::new();
    let snapshot_every = ["--registry-snapshot-every", "3"];
    let dir_a = tempfile::tempdir().unwrap();
    let a = cluster.replica(dir_a.path(), &snapshot_every);
    cluster.wait_for(&a, &[]).await;
    // Which of NUMBERS are registered, as the replicas should report it.
    let mut model = std::collections::BTreeSet::new();
    let mut step = 0;
    // Changes until a second snapshot trims the stream up to the first one.
    let started = Instant::now();
    while stream_len(&cluster) >= step as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "stream never trimmed"
        );
        toggle(&cluster, &a, &mut model, &mut step).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(snapshot_id(&cluster).is_some());

    // A new replica on an empty directory loads the snapshot, then the stream after it.
    let dir_c = tempfile::tempdir().unwrap();
    let c = cluster.replica(dir_c.path(), &snapshot_every);
    cluster.wait_for(&c, &expected(&model)).await;
    assert!(logged(&c, "shared registry snapshot loaded"));

    // Killed with SIGKILL; meanwhile changes until its resume point is trimmed from the stream.
    c.kill9();
    let killed_at = resume_point(dir_c.path());
    let started = Instant::now();
    while first_entry(&cluster).is_none_or(|first| first <= killed_at) {
        assert!(started.elapsed() < Duration::from_secs(30), "never trimmed");
        toggle(&cluster, &a, &mut model, &mut step).await;
    }
    let c = cluster.replica(dir_c.path(), &snapshot_every);
    cluster.wait_for(&c, &expected(&model)).await;
    assert!(
        logged(&c, "resume point was trimmed"),
        "{:?}",
        c.log_lines()
    );

    // Killed again with a change meanwhile but nothing trimmed past it: it resumes from its
    // own resume point and loads no snapshot.
    c.kill9();
    toggle(&cluster, &a, &mut model, &mut step).await;
    // Let A finish any snapshot it starts after that change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let trimmed = first_entry(&cluster).is_none_or(|first| first > resume_point(dir_c.path()));
    let c = cluster.replica(dir_c.path(), &snapshot_every);
    cluster.wait_for(&c, &expected(&model)).await;
    if !trimmed {
        assert!(
            logged(&c, "resuming the registry stream"),
            "{:?}",
            c.log_lines()
        );
        assert!(!logged(&c, "shared registry snapshot loaded"));
    }
    a.kill9();
    c.kill9();
    assert_eq!(common::export(dir_a.path()), common::export(dir_c.path()));
}

/// Registers `NUMBERS[step % 6]` if it is not, else removes it, through `server`.
async fn toggle(
    cluster: &Cluster,
    server: &Server,
    model: &mut std::collections::BTreeSet<usize>,
    step: &mut usize,
) {
    let k = *step % NUMBERS.len();
    *step += 1;
    let change = if model.remove(&k) {
        serde_json::json!({ "remove": [NUMBERS[k]] })
    } else {
        model.insert(k);
        serde_json::json!({ "add": [NUMBERS[k]] })
    };
    let (status, body) = cluster.change(server, change).await;
    assert_eq!(status, 200, "{body}");
}

fn expected(model: &std::collections::BTreeSet<usize>) -> Vec<usize> {
    model.iter().copied().collect()
}

/// A stream entry id as (milliseconds, sequence), ordered as Redis orders them.
type EntryId = (u64, u64);

fn parse_id(text: &str) -> EntryId {
    let (ms, seq) = text.trim().split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// The resume point a replica recorded beside its registry.
fn resume_point(dir: &Path) -> EntryId {
    parse_id(&std::fs::read_to_string(dir.join("replication.pos")).unwrap())
}

/// The id of the stream's first entry, if any.
fn first_entry(cluster: &Cluster) -> Option<EntryId> {
    let out = cluster
        .redis
        .command(&["XRANGE", "cd:registry:stream", "-", "+", "COUNT", "1"])?;
    out.lines().next().filter(|l| l.contains('-')).map(parse_id)
}

fn stream_len(cluster: &Cluster) -> u64 {
    cluster
        .redis
        .command(&["XLEN", "cd:registry:stream"])
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn without_redis_writes_are_refused_and_a_new_replica_is_not_ready() {
    let cluster = Cluster::new();
    // A port nothing listens on.
    let url = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("redis://127.0.0.1:{port}/")
    };
    let dir = tempfile::tempdir().unwrap();
    let replica = cluster.replica_of(&url, dir.path(), &[]);
    let (status, body) = cluster
        .change(&replica, serde_json::json!({ "add": [NUMBERS[0]] }))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "registry_stream_unavailable");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !cluster.ready(&replica).await,
        "not ready before the stream is read"
    );
    assert!(logged(&replica, "registry stream unavailable"));
    replica.kill9();
    assert!(common::export(dir.path()).is_empty(), "nothing was applied");
}

#[tokio::test]
async fn a_registry_that_did_not_come_from_the_stream_is_not_merged() {
    let cluster = Cluster::new();
    // The stream already has state.
    let dir_a = tempfile::tempdir().unwrap();
    let a = cluster.replica(dir_a.path(), &[]);
    cluster.wait_for(&a, &[]).await;
    let (status, _) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[0]] }))
        .await;
    assert_eq!(status, 200);
    // A data directory filled by a standalone server, then pointed at the shared stream.
    let dir = tempfile::tempdir().unwrap();
    let standalone = common::start_server_with_env(
        dir.path(),
        &[
            "--credential-key-file",
            cluster.key_file.path().to_str().unwrap(),
        ],
        &[("CONTACT_DISCOVERY_SERVER_SECRET", SECRET)],
    );
    let (status, _) = cluster
        .change(&standalone, serde_json::json!({ "add": [NUMBERS[5]] }))
        .await;
    assert_eq!(status, 200);
    standalone.kill9();
    let b = cluster.replica(dir.path(), &[]);
    let started = Instant::now();
    while !logged(&b, "did not come from the shared stream") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            b.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!cluster.ready(&b).await);
    b.kill9();
    a.kill9();
    assert_eq!(
        common::export(dir.path()),
        ["+27821234567"],
        "left as it was"
    );
}

/// Status of a discovery request for `n` fingerprints (of unregistered numbers) by `credential`.
async fn discover_n(cluster: &Cluster, server: &Server, credential: &str, n: usize) -> u16 {
    let numbers: Vec<E164> = (0..n as u64)
        .map(|i| E164::from_u64(15_550_000_000 + i).unwrap())
        .collect();
    let response = cluster.discover(server, credential, &numbers).await;
    let status = response.status().as_u16();
    if status == 429 {
        assert!(response.headers().contains_key("retry-after"));
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
    }
    status
}

/// The value of an unlabelled counter on `server`'s `/metrics`.
async fn counter(cluster: &Cluster, server: &Server, name: &str) -> u64 {
    server
        .metrics(&cluster.http)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_user_spreading_requests_over_replicas_gets_one_budget() {
    let cluster = Cluster::new();
    let limits = RedisServer::start();
    let budget = [
        "--rate-limit-burst",
        "1000",
        "--rate-limit-refill-per-day",
        "1",
        "--max-batch",
        "1000",
    ];
    let shared: Vec<&str> = budget
        .iter()
        .copied()
        .chain(["--rate-limit-redis-url", limits.url.as_str()])
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = (
        cluster.replica(dirs[0].path(), &shared),
        cluster.replica(dirs[1].path(), &shared),
    );
    cluster.wait_for(&a, &[]).await;
    cluster.wait_for(&b, &[]).await;
    let spender = common::mint_with_hex_key(KEY, "spender");
    let other = common::mint_with_hex_key(KEY, "other");
    assert_eq!(discover_n(&cluster, &a, &spender, 600).await, 200);
    assert_eq!(
        discover_n(&cluster, &b, &spender, 600).await,
        429,
        "the other replica knows the budget is spent"
    );
    assert_eq!(discover_n(&cluster, &b, &other, 600).await, 200, "per user");
    assert_eq!(
        limits.command(&["DBSIZE"]).as_deref(),
        Some("3"),
        "one key per active user: spender, other, and wait_for's replicator"
    );
    let keys = limits.command(&["KEYS", "*"]).unwrap();
    assert!(
        !keys.contains("spender") && !keys.contains("other"),
        "{keys}"
    );

    // Control: replicas without the shared limiter give the same user a budget each.
    let dirs2 = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (c, d) = (
        cluster.replica(dirs2[0].path(), &budget),
        cluster.replica(dirs2[1].path(), &budget),
    );
    cluster.wait_for(&c, &[]).await;
    cluster.wait_for(&d, &[]).await;
    assert_eq!(discover_n(&cluster, &c, &spender, 600).await, 200);
    assert_eq!(discover_n(&cluster, &d, &spender, 600).await, 200);

    // Redis gone: each replica answers from its own budget and counts the fallback.
    drop(limits);
    let fallbacks = "contact_discovery_rate_limit_fallbacks_total";
    assert_eq!(counter(&cluster, &a, fallbacks).await, 0);
    assert_eq!(discover_n(&cluster, &a, &other, 600).await, 200);
    assert_eq!(
        discover_n(&cluster, &a, &other, 600).await,
        429,
        "local budget"
    );
    assert!(counter(&cluster, &a, fallbacks).await >= 2);
    assert!(logged(&a, "shared rate limit unavailable"));
    for server in [a, b, c, d] {
        server.kill9();
    }
}
