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

use common::{ADMIN_TOKEN, RedisServer, Server, start_server_with_env};
use contact_discovery::domain::{E164, Fingerprint};
use contact_discovery::protocol::{self, Format};

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
        self.replica_with_env(url, dir, extra, &[])
    }

    /// Like `replica_of`, with more environment variables for the child.
    fn replica_with_env(
        &self,
        url: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut args = vec![
            "--credential-key-file",
            self.key_file.path().to_str().unwrap(),
            "--registry-redis-url",
            url,
        ];
        args.extend_from_slice(extra);
        let mut vars = vec![("CONTACT_DISCOVERY_SERVER_SECRET", SECRET)];
        vars.extend_from_slice(env);
        start_server_with_env(dir, &args, &vars)
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
        protocol::decode_answer(Format::Binary, &body, NUMBERS.len())
            .unwrap()
            .registered
    }

    /// A binary discovery request for `numbers` under `server`'s current epoch.
    async fn discover(
        &self,
        server: &Server,
        credential: &str,
        numbers: &[E164],
    ) -> reqwest::Response {
        let info = server.epoch(&self.http).await;
        let salt = protocol::decode_salt(info["salt"].as_str().unwrap()).unwrap();
        let fps: Vec<Fingerprint> = numbers
            .iter()
            .map(|n| Fingerprint::compute(&salt, *n))
            .collect();
        self.http
            .post(format!("http://{}/v1/discover", server.public))
            .header("content-type", Format::Binary.content_type())
            .bearer_auth(credential)
            .body(protocol::encode_request(
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

/// Waits (at most 20 s) until `server` has logged a line containing `needle`.
async fn wait_logged(server: &Server, needle: &str) {
    let started = Instant::now();
    while !logged(server, needle) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            server.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    wait_logged(&b, "did not come from the shared stream").await;
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
    // The fallback budget was charged all along: what the spender took from the shared budget
    // through this replica is gone locally too, so the outage grants no fresh burst.
    assert_eq!(
        discover_n(&cluster, &a, &spender, 600).await,
        429,
        "the fallback knows what this replica's users spent"
    );
    for server in [a, b, c, d] {
        server.kill9();
    }
}

/// The value of `contact_discovery_replication_rejected_total{reason="<reason>"}` on `server`.
async fn rejected(cluster: &Cluster, server: &Server, reason: &str) -> u64 {
    let name = format!("contact_discovery_replication_rejected_total{{reason=\"{reason}\"}}");
    counter(cluster, server, &name).await
}

/// Waits (bounded) until `server` has refused at least `n` values from Redis for `reason`.
async fn wait_rejected(cluster: &Cluster, server: &mut Server, reason: &str, n: u64) {
    let started = Instant::now();
    while rejected(cluster, server, reason).await < n {
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "the replica died: {:?}",
            server.log_lines()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never refused {n} for {reason}; log: {:?}",
            server.log_lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const STREAM: &str = "cd:registry:stream";
const META: &str = "cd:registry:snapshot";

/// The `sealed` field of every stream entry, oldest first.
fn sealed_entries(redis: &RedisServer) -> Vec<Vec<u8>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut redis.connection())
        .unwrap();
    reply
        .ids
        .iter()
        // (Builds before the sealed format wrote `ops`: take it, so the attack below is tried.)
        .map(|e| match e.map.get("sealed").or_else(|| e.map.get("ops")) {
            Some(redis::Value::BulkString(b)) => b.clone(),
            other => panic!("entry without a record: {other:?}"),
        })
        .collect()
}

fn xadd(redis: &RedisServer, field: &str, value: &[u8]) {
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg(field)
        .arg(value)
        .query(&mut redis.connection())
        .unwrap();
}

#[tokio::test]
async fn records_added_to_redis_without_the_secret_are_refused_and_counted() {
    use contact_discovery::store::registry::Op;
    use contact_discovery::store::registry::record::encode_record;
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let mut a = cluster.replica(dir.path(), &[]);
    cluster.wait_for(&a, &[]).await;
    for change in [
        serde_json::json!({ "add": [NUMBERS[0], NUMBERS[2]] }),
        serde_json::json!({ "remove": [NUMBERS[2]] }),
    ] {
        let (status, body) = cluster.change(&a, change).await;
        assert_eq!(status, 200, "{body}");
    }
    let genuine = sealed_entries(&cluster.redis);
    assert_eq!(genuine.len(), 2);

    // The review's attack: a record with a valid CRC in the old format, added by hand, that
    // registers one number and hides a real user.
    let number = |i: usize| E164::parse(NUMBERS[i]).unwrap();
    let forged = encode_record(&[Op::Add(number(1)), Op::Hide(number(0))]);
    xadd(&cluster.redis, "ops", &forged);
    // The same in the current field, with the version byte but not sealed with the key.
    let mut unsealed = vec![0x01];
    unsealed.extend_from_slice(&[0x5a; 40]);
    unsealed.extend_from_slice(&forged);
    xadd(&cluster.redis, "sealed", &unsealed);
    // A genuine sealed record replayed under a new entry id: the add of a number since removed.
    xadd(&cluster.redis, "sealed", &genuine[0]);
    // An entry over the stream record cap (1 MiB): refused inside Redis, never sent.
    xadd(&cluster.redis, "sealed", &vec![0x01; 2 << 20]);

    // A genuine change after them is applied: the replica went past the refused entries.
    let (status, _) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[3]] }))
        .await;
    assert_eq!(status, 200);
    cluster.wait_for(&a, &[0, 3]).await;
    wait_rejected(&cluster, &mut a, "format", 1).await;
    wait_rejected(&cluster, &mut a, "mac", 2).await;
    wait_rejected(&cluster, &mut a, "bounds", 1).await;
    assert!(logged(&a, "refused a registry stream entry"));

    // A new replica reading the whole stream refuses the same four.
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = cluster.replica(dir_b.path(), &[]);
    cluster.wait_for(&b, &[0, 3]).await;
    wait_rejected(&cluster, &mut b, "format", 1).await;
    wait_rejected(&cluster, &mut b, "mac", 2).await;
    wait_rejected(&cluster, &mut b, "bounds", 1).await;
    a.kill9();
    b.kill9();
    for dir in [dir.path(), dir_b.path()] {
        assert_eq!(
            common::export(dir),
            ["+33612345678", "+4915112345678"],
            "nothing forged or replayed reached the disk"
        );
    }
}

#[tokio::test]
async fn a_snapshot_with_an_absurd_length_or_a_tampered_chunk_is_refused_without_crashing() {
    let cluster = Cluster::new();
    let every = ["--registry-snapshot-every", "1"];
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = cluster.replica(dir_a.path(), &every);
    cluster.wait_for(&a, &[]).await;
    let (status, body) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[0], NUMBERS[1]] }))
        .await;
    assert_eq!(status, 200, "{body}");
    // (The snapshot may be taken just before the change is applied: then it is empty, the
    // stream holds the change, and no other is published until the next change.)
    let started = Instant::now();
    while snapshot_id(&cluster).is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "no snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hget = |field: &str| cluster.redis.command(&["HGET", META, field]).unwrap();
    let bytes = hget("bytes");

    // The review's crash: a description claiming 2^44 bytes. A new replica stays up, not
    // ready, and counts the refusal; so does the replica already running.
    assert!(
        cluster
            .redis
            .command(&["HSET", META, "bytes", "17592186044416"])
            .is_some()
    );
    let dir_b = tempfile::tempdir().unwrap();
    let mut b = cluster.replica(dir_b.path(), &every);
    wait_rejected(&cluster, &mut b, "bounds", 1).await;
    assert!(!cluster.ready(&b).await, "not ready without a snapshot");
    wait_rejected(&cluster, &mut a, "bounds", 1).await;
    assert!(cluster.ready(&a).await, "the running replica keeps serving");
    // ... and following the stream, which still holds its resume point.
    let (status, body) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[2]] }))
        .await;
    assert_eq!(status, 200, "{body}");
    let second = body["stream_id"].as_str().unwrap().to_owned();
    assert_eq!(body["applied_here"], true);
    // Within the bounds but not what was published: the MAC refuses it.
    let smaller = (bytes.parse::<u64>().unwrap() - 8).to_string();
    cluster.redis.command(&["HSET", META, "bytes", &smaller]);
    wait_rejected(&cluster, &mut b, "mac", 1).await;
    assert!(!cluster.ready(&b).await);
    // Redis repaired: the new replica recovers on its own.
    cluster.redis.command(&["HSET", META, "bytes", &bytes]);
    cluster.wait_for(&b, &[0, 1, 2]).await;
    // The writer, no longer held back by a refused description, publishes the next snapshot.
    let started = Instant::now();
    while snapshot_id(&cluster).as_deref() != Some(second.as_str()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no second snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A chunk with one byte flipped is refused; repaired, it loads.
    let chunk_key = format!("{}:0", hget("prefix"));
    let mut conn = cluster.redis.connection();
    let chunk: Vec<u8> = redis::cmd("GET").arg(&chunk_key).query(&mut conn).unwrap();
    let mut tampered = chunk.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x04;
    let () = redis::cmd("SET")
        .arg(&chunk_key)
        .arg(&tampered)
        .query(&mut conn)
        .unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let mut c = cluster.replica(dir_c.path(), &every);
    wait_rejected(&cluster, &mut c, "mac", 1).await;
    assert!(!cluster.ready(&c).await);
    assert!(logged(&c, "refused the shared registry snapshot"));
    let () = redis::cmd("SET")
        .arg(&chunk_key)
        .arg(&chunk)
        .query(&mut conn)
        .unwrap();
    cluster.wait_for(&c, &[0, 1, 2]).await;
    for server in [a, b, c] {
        server.kill9();
    }
    assert_eq!(common::export(dir_c.path()).len(), 3);
}

#[tokio::test]
async fn redis_holds_no_registered_number_in_clear() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    let a = cluster.replica(dir.path(), &["--registry-snapshot-every", "2"]);
    cluster.wait_for(&a, &[]).await;
    for change in [
        serde_json::json!({ "add": [NUMBERS[0], NUMBERS[1]] }),
        serde_json::json!({ "hide": [NUMBERS[2]] }),
        serde_json::json!({ "add": [NUMBERS[3]] }),
    ] {
        let (status, body) = cluster.change(&a, change).await;
        assert_eq!(status, 200, "{body}");
    }
    cluster.wait_for(&a, &[0, 1, 3]).await;
    let started = Instant::now();
    while snapshot_id(&cluster).is_none() || stream_len(&cluster) == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Everything Redis holds, read back per type, plus DUMP of every key and its files.
    let mut conn = cluster.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let flatten = |v: redis::Value, out: &mut Vec<Vec<u8>>| {
        fn walk(v: redis::Value, out: &mut Vec<Vec<u8>>) {
            match v {
                redis::Value::BulkString(b) => out.push(b),
                redis::Value::SimpleString(s) => out.push(s.into_bytes()),
                redis::Value::Array(items) => items.into_iter().for_each(|i| walk(i, out)),
                redis::Value::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
                    walk(k, out);
                    walk(v, out);
                }),
                redis::Value::Int(n) => out.push(n.to_string().into_bytes()),
                _ => {}
            }
        }
        walk(v, out)
    };
    let mut types = Vec::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
        let read = match kind.as_str() {
            "string" => redis::cmd("GET").arg(key).query(&mut conn),
            "hash" => redis::cmd("HGETALL").arg(key).query(&mut conn),
            "stream" => redis::cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .query(&mut conn),
            other => panic!("unexpected {other} at {key}"),
        };
        flatten(read.unwrap(), &mut held);
        flatten(
            redis::cmd("DUMP").arg(key).query(&mut conn).unwrap(),
            &mut held,
        );
        held.push(key.clone().into_bytes());
        types.push(kind);
    }
    types.sort();
    types.dedup();
    assert_eq!(types, ["hash", "stream", "string"], "{keys:?}");
    for file in common::files_under(cluster.redis.dir()) {
        held.push(std::fs::read(file).unwrap());
    }
    for number in &NUMBERS[..4] {
        let n = E164::parse(number).unwrap().get();
        let needles: [Vec<u8>; 5] = [
            number.as_bytes()[1..].to_vec(),
            n.to_le_bytes().to_vec(),
            n.to_be_bytes().to_vec(),
            (n | 1 << 63).to_le_bytes().to_vec(),
            n.to_le_bytes()[..6].to_vec(),
        ];
        for needle in &needles {
            assert!(
                !held
                    .iter()
                    .any(|b| b.windows(needle.len()).any(|w| w == &needle[..])),
                "{number} in Redis as {needle:?}"
            );
        }
    }
    a.kill9();
}

#[tokio::test]
async fn a_local_registry_seeds_an_empty_shared_one() {
    let cluster = Cluster::new();
    let dir = tempfile::tempdir().unwrap();
    common::import(
        dir.path(),
        &format!("{}\n{}\n{} hidden\n", NUMBERS[0], NUMBERS[2], NUMBERS[4]),
    );
    // The documented seeding path: the first replica publishes its registry and is ready.
    let a = cluster.replica(dir.path(), &[]);
    cluster.wait_for(&a, &[0, 2]).await;
    assert!(logged(&a, "shared registry snapshot published"));
    // A second, fresh replica loads those numbers from the shared snapshot.
    let dir_b = tempfile::tempdir().unwrap();
    let b = cluster.replica(dir_b.path(), &[]);
    cluster.wait_for(&b, &[0, 2]).await;
    assert!(logged(&b, "shared registry snapshot loaded"));
    a.kill9();
    b.kill9();
    assert_eq!(common::export(dir_b.path()).len(), 3, "the hidden one too");
}

#[tokio::test]
async fn replicas_authenticate_to_redis_with_a_password() {
    let password = "pw-not-in-any-log-7f3a";
    authenticated_replicas(RedisServer::start_with_password(password), password).await;
}

#[tokio::test]
async fn replicas_work_as_the_acl_user_of_the_example_overlay() {
    // The overlay's make-keys.sh, run on a copy: the ACL file and the URLs it writes.
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/overlays/example");
    let copy = tempfile::tempdir().unwrap();
    for file in ["make-keys.sh", "redis-users.acl.template"] {
        std::fs::copy(overlay.join(file), copy.path().join(file)).unwrap();
    }
    let out = std::process::Command::new("bash")
        .arg(copy.path().join("make-keys.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = copy.path().join("keys");
    let read = |name: &str| std::fs::read_to_string(keys.join(name)).unwrap();
    let password = read("redis-password");
    assert_eq!(password.len(), 64, "32 random bytes in hex");
    assert_eq!(
        read("registry-url"),
        format!("redis://contact-discovery:{password}@contact-discovery-redis:6379/0")
    );
    assert_eq!(
        read("rate-limit-url"),
        format!("redis://contact-discovery:{password}@contact-discovery-redis:6379/1")
    );
    let redis = RedisServer::start_with_acl(
        &keys.join("redis-users.acl"),
        "contact-discovery",
        &password,
    );
    // Without authenticating, a client may only PING (the overlay's readiness probe).
    let port = redis.port.to_string();
    let anonymous = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(anonymous(&["PING"]).trim(), "PONG");
    assert!(
        anonymous(&["GET", "cd:x"]).contains("NOPERM"),
        "{}",
        anonymous(&["GET", "cd:x"])
    );
    // The user reaches keys `cd:*` only, and no @dangerous command.
    assert!(
        redis
            .command(&["SET", "other", "1"])
            .unwrap()
            .contains("NOPERM")
    );
    assert!(redis.command(&["KEYS", "*"]).unwrap().contains("NOPERM"));
    authenticated_replicas(redis, &password).await;
}

/// Two replicas share registry and rate limits through `redis` (which needs `password`); one
/// with a wrong password gets nowhere; no log names a password.
async fn authenticated_replicas(redis: RedisServer, password: &str) {
    let cluster = Cluster::new();
    // The rate-limit budgets in db 1 of the same Redis, as the example overlay has them.
    let limits = format!("{}1", redis.url);
    let shared = ["--rate-limit-redis-url", limits.as_str()];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = cluster.replica_of(&redis.url, dirs[0].path(), &shared);
    cluster.wait_for(&a, &[]).await;
    let (status, _) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[5]] }))
        .await;
    assert_eq!(status, 200);
    let b = cluster.replica_of(&redis.url, dirs[1].path(), &shared);
    cluster.wait_for(&b, &[5]).await;
    assert_eq!(redis.command(&["XLEN", STREAM]).as_deref(), Some("1"));
    // The discovery requests of `wait_for` kept their budget there.
    assert_ne!(redis.command(&["-n", "1", "DBSIZE"]).as_deref(), Some("0"));
    // A wrong password gets nowhere, and no log names either password.
    let wrong = redis.url.replace(password, "wrong-password-9c1d");
    let dir_c = tempfile::tempdir().unwrap();
    let c = cluster.replica_of(&wrong, dir_c.path(), &[]);
    wait_logged(&c, "registry stream unavailable").await;
    assert!(!cluster.ready(&c).await);
    for server in [a, b, c] {
        let lines = server.log_lines();
        assert!(
            lines
                .iter()
                .all(|l| !l.contains(password) && !l.contains("wrong-password")),
            "{lines:?}"
        );
        server.kill9();
    }
}

#[tokio::test]
async fn replicas_reach_redis_over_tls_and_check_its_certificate() {
    let cluster = Cluster::new();
    let (redis, ca) = RedisServer::start_tls();
    let ca = ca.to_str().unwrap();
    let trust = [("SSL_CERT_FILE", ca)];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = cluster.replica_with_env(&redis.url, dirs[0].path(), &[], &trust);
    cluster.wait_for(&a, &[]).await;
    let (status, _) = cluster
        .change(&a, serde_json::json!({ "add": [NUMBERS[1]] }))
        .await;
    assert_eq!(status, 200);
    let b = cluster.replica_with_env(&redis.url, dirs[1].path(), &[], &trust);
    cluster.wait_for(&b, &[1]).await;
    assert_eq!(redis.command(&["XLEN", STREAM]).as_deref(), Some("1"));
    // Without the test CA among its roots, the certificate is refused: never ready.
    let empty_roots = tempfile::NamedTempFile::new().unwrap();
    let dir_c = tempfile::tempdir().unwrap();
    let c = cluster.replica_with_env(
        &redis.url,
        dir_c.path(),
        &[],
        &[("SSL_CERT_FILE", empty_roots.path().to_str().unwrap())],
    );
    wait_logged(&c, "registry stream unavailable").await;
    assert!(!cluster.ready(&c).await);
    for server in [a, b, c] {
        server.kill9();
    }
}

/// In process, on a manual clock: the ids a replica writes are the clock's milliseconds (the
/// next one past the stream's top when the clock stands still), and while Redis is unreachable
/// the lag it reports is how far the clock moved since it last read the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_ids_and_lag_follow_the_injected_clock() {
    use contact_discovery::clock::Clock;
    use contact_discovery::domain::ServerSecret;
    use contact_discovery::metrics::Metrics;
    use contact_discovery::store::registry::{Op, Registry, Visibility};
    use contact_discovery::store::replication::Replica;
    use std::sync::Arc;

    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(dir.path()).unwrap().0);
    let metrics = Arc::new(Metrics::new().unwrap());
    let clock = Clock::manual(1_700_000_000);
    let replica = Replica::new(
        &redis.url,
        &ServerSecret::from_bytes([7; 32]),
        Arc::clone(&registry),
        Arc::clone(&metrics),
        1_000,
        clock.clone(),
    )
    .unwrap();
    let (a, b) = (
        E164::parse("+15550000001").unwrap(),
        E164::parse("+15550000002").unwrap(),
    );
    let first = replica.append(&[Op::Add(a)]).await.unwrap();
    assert_eq!(first.to_string(), "1700000000000-0");
    let second = replica.append(&[Op::Add(b)]).await.unwrap();
    assert_eq!(second.to_string(), "1700000000001-0", "past the top");
    clock.advance(Duration::from_secs(5));
    let third = replica.append(&[Op::Hide(b)]).await.unwrap();
    assert_eq!(third.to_string(), "1700000005000-0");

    let follower = tokio::spawn(Arc::clone(&replica).run());
    assert!(replica.wait_applied(third, Duration::from_secs(60)).await);
    assert_eq!(registry.get(a), Some(Visibility::Discoverable));
    assert_eq!(registry.get(b), Some(Visibility::Hidden));
    assert_eq!(metrics.replication.lag_seconds.get(), 0);

    // Unreachable: the lag grows with the manual clock, not with real time.
    redis.kill();
    let lag_becomes = |want: i64| {
        let metrics = Arc::clone(&metrics);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while metrics.replication.lag_seconds.get() != want {
                assert!(
                    Instant::now() < deadline,
                    "lag {} != {want}",
                    metrics.replication.lag_seconds.get()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    clock.advance(Duration::from_secs(90));
    lag_becomes(90).await;
    clock.advance(Duration::from_secs(30));
    lag_becomes(120).await;
    follower.abort();
}

/// Which of `NUMBERS` `server`'s private mode reports registered (a fresh client each time:
/// it downloads the set and evaluates every number).
async fn private_matches(cluster: &Cluster, server: &Server) -> Vec<usize> {
    use contact_discovery::client::private::PrivateCache;
    use contact_discovery::client::{Client, ClientConfig};
    let client = Client::new(ClientConfig::new(
        format!("http://{}", server.public),
        Some(cluster.credential.clone()),
    ))
    .unwrap();
    let numbers: Vec<E164> = NUMBERS.iter().map(|n| E164::parse(n).unwrap()).collect();
    let outcome = client
        .discover_private(&numbers, &mut PrivateCache::default())
        .await
        .unwrap();
    (0..NUMBERS.len())
        .filter(|i| outcome.registered[*i])
        .collect()
}

#[tokio::test]
async fn a_change_posted_to_one_replica_reaches_the_private_set_of_every_replica() {
    let cluster = Cluster::new();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = ["--private-publish-interval-ms", "200"];
    let a = cluster.replica(dirs[0].path(), &flags);
    let b = cluster.replica(dirs[1].path(), &flags);
    cluster.wait_for(&a, &[]).await;
    cluster.wait_for(&b, &[]).await;
    let (status, _) = cluster
        .change(
            &a,
            serde_json::json!({ "add": [NUMBERS[0], NUMBERS[1], NUMBERS[2]] }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = cluster
        .change(&b, serde_json::json!({ "hide": [NUMBERS[1]] }))
        .await;
    assert_eq!(status, 200);
    // Within the publish interval of each replica applying the changes (well under a minute).
    let started = Instant::now();
    for server in [&a, &b] {
        loop {
            if private_matches(&cluster, server).await == [0, 2] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the private set never showed the changes; log: {:?}",
                server.log_lines()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Content-addressed versions: replicas with the same registry serve the same set.
    let version = |manifest: serde_json::Value| manifest["version"].clone();
    assert_eq!(
        version(a.private_manifest(&cluster.http, &cluster.credential).await),
        version(b.private_manifest(&cluster.http, &cluster.credential).await)
    );
}
