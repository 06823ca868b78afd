//! The shared rate limiter (`--rate-limit-redis-url`) against a real Redis, in process: two
//! limiters (two replicas) share one budget and answer as the local limiter would; keys are
//! pseudonymous and expire when the bucket is full again; concurrent checks never overspend; a
//! Redis that refuses, hangs or comes back is met with fallback, back-off and reconnection.
//! The same with two real server processes over HTTP, Redis killed included:
//! `tests/replication.rs::a_user_spreading_requests_over_replicas_gets_one_budget`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::RedisServer;
use contact_discovery::clock::Clock;
use contact_discovery::domain::{ServerSecret, UserId};
use contact_discovery::server::ratelimit::{FingerprintLimiter, Limited, SharedLimiter};
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A shared limiter on `url` under server secret `[secret; 32]`, and its fallback counter.
/// It waits up to 2 s for Redis, so a loaded test machine does not turn into fallbacks; the
/// test about a slow Redis sets its own timeout.
fn shared(url: &str, secret: u8, burst: u32, refill_per_day: u32) -> (SharedLimiter, IntCounter) {
    let fallbacks = IntCounter::new("fallbacks", "test").unwrap();
    let limiter = SharedLimiter::new(
        url,
        &ServerSecret::from_bytes([secret; 32]),
        burst,
        refill_per_day,
        fallbacks.clone(),
    )
    .unwrap()
    .with_timeout(Duration::from_secs(2));
    (limiter, fallbacks)
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

fn retry(verdict: Result<(), Limited>) -> u64 {
    verdict.expect_err("refused").retry_after_secs
}

#[tokio::test]
async fn two_replicas_share_one_budget_and_answer_like_the_local_limiter() {
    let redis = RedisServer::start();
    // 100 fingerprints at once, one back per second.
    let (a, a_fallbacks) = shared(&redis.url, 1, 100, 86_400);
    let (b, b_fallbacks) = shared(&redis.url, 1, 100, 86_400);
    let (local_a, local_b) = (
        FingerprintLimiter::new(100, 86_400).unwrap(),
        FingerprintLimiter::new(100, 86_400).unwrap(),
    );
    let reference = FingerprintLimiter::new(100, 86_400).unwrap();
    let (alice, bob) = (user("a11ce"), user("b0b"));

    assert!(a.check(&alice, 60, &local_a).await.is_ok());
    assert!(reference.check(&alice, 60).is_ok());
    assert!(b.check(&alice, 40, &local_b).await.is_ok());
    assert!(reference.check(&alice, 40).is_ok());
    // Spent, across both: 10 more fit in about 10 s, on either replica.
    let (shared_wait, local_wait) = (
        retry(b.check(&alice, 10, &local_b).await),
        retry(reference.check(&alice, 10)),
    );
    assert!((9..=11).contains(&shared_wait), "{shared_wait}");
    assert!(
        shared_wait.abs_diff(local_wait) <= 1,
        "{shared_wait} vs {local_wait}"
    );
    assert!(retry(a.check(&alice, 1, &local_a).await) <= 2);
    // More than the burst never fits: the full refill.
    assert_eq!(retry(a.check(&alice, 101, &local_a).await), 100);
    assert_eq!(retry(reference.check(&alice, 101)), 100);
    assert!(b.check(&bob, 100, &local_b).await.is_ok(), "per user");

    assert_eq!((a_fallbacks.get(), b_fallbacks.get()), (0, 0));
    // Never asked for a verdict, but charged with what each replica's Redis allowed, so a
    // fallback starts from what was spent here (see the fallback test below).
    assert_eq!(
        (local_a.tracked_users(), local_b.tracked_users()),
        (1, 2),
        "the local budgets are charged all along"
    );

    // One key per user, pseudonymous, expiring when the bucket is full again (~100 s).
    let keys = redis.command(&["KEYS", "*"]).unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    let mut expected = [a.key_of(&alice), a.key_of(&bob)];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for id in ["a11ce", "b0b", "6131316365", "623062"] {
        assert!(keys.iter().all(|k| !k.contains(id)), "{keys:?}");
    }
    let ttl_ms: u64 = redis
        .command(&["PTTL", &a.key_of(&alice)])
        .unwrap()
        .parse()
        .unwrap();
    assert!((90_000..=100_000).contains(&ttl_ms), "{ttl_ms}");

    // A deployment with another secret has other keys, so other budgets.
    let (other, _) = shared(&redis.url, 2, 100, 86_400);
    assert!(other.check(&alice, 100, &local_a).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_on_two_replicas_never_overspend() {
    let redis = RedisServer::start();
    let local = Arc::new(FingerprintLimiter::new(1_000, 1).unwrap());
    let (a, a_fallbacks) = shared(&redis.url, 1, 50, 1);
    let (b, b_fallbacks) = shared(&redis.url, 1, 50, 1);
    let replicas = [Arc::new(a), Arc::new(b)];
    // Connect and load the script first, so no check below waits for either.
    for replica in &replicas {
        assert!(replica.check(&user("warm-up"), 1, &local).await.is_ok());
    }
    let spender = user("spender");
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let (replica, local, spender) = (
                Arc::clone(&replicas[i % 2]),
                Arc::clone(&local),
                spender.clone(),
            );
            tokio::spawn(async move { replica.check(&spender, 1, &local).await.is_ok() })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(
        (a_fallbacks.get(), b_fallbacks.get()),
        (0, 0),
        "all answered by Redis"
    );
    assert_eq!(
        allowed, 50,
        "exactly the burst, however the checks interleave"
    );
}

/// A TCP proxy in front of Redis that can refuse new connections, or silently swallow all
/// traffic on the connections it already has (a dead network path: no error, no answer).
struct Proxy {
    addr: SocketAddr,
    refuse: Arc<AtomicBool>,
    /// Connections opened before the current generation are black holes.
    generation: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            refuse: Arc::default(),
            generation: Arc::default(),
            accepted: Arc::default(),
        };
        let (refuse, generation, accepted) = (
            Arc::clone(&proxy.refuse),
            Arc::clone(&proxy.generation),
            Arc::clone(&proxy.accepted),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                if refuse.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let born = generation.load(Ordering::SeqCst);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, Arc::clone(&generation), born));
                tokio::spawn(pump(out_read, in_write, Arc::clone(&generation), born));
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Copies bytes until the proxy's generation moves on; then keeps reading and drops them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if generation.load(Ordering::SeqCst) == born && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits out the back-off, then checks `n` for `user` until Redis answers (at most 3 tries: on
/// a loaded machine one may time out). Returns whether it did, and how many connections the
/// proxy accepted meanwhile.
async fn reaches_redis(
    limiter: &SharedLimiter,
    fallbacks: &IntCounter,
    local: &FingerprintLimiter,
    proxy: &Proxy,
    user: &UserId,
    n: usize,
) -> (bool, u64) {
    let tried = proxy.accepted();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let before = fallbacks.get();
        assert!(limiter.check(user, n, local).await.is_ok());
        if fallbacks.get() == before {
            return (true, proxy.accepted() - tried);
        }
    }
    (false, proxy.accepted() - tried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_hanging_redis_means_fallback_back_off_and_a_fresh_connection() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let (limiter, fallbacks) = shared(&proxy.url(), 1, 100, 1);
    let limiter = limiter.with_timeout(Duration::from_millis(300));
    // Far above the shared budget: a refusal below can only come from Redis.
    let local = FingerprintLimiter::new(10_000, 1).unwrap();
    let alice = user("alice");

    // Unreachable at start: the local budget answers.
    proxy.refuse.store(true, Ordering::SeqCst);
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 1);
    assert_eq!(local.tracked_users(), 1);

    // Back at once, but the limiter backs off for a moment without even trying.
    proxy.refuse.store(false, Ordering::SeqCst);
    let tried = proxy.accepted();
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 2);
    assert_eq!(
        proxy.accepted(),
        tried,
        "no connection attempt while backing off"
    );

    // After the back-off: connects and uses the shared budget.
    let (answered, _) = reaches_redis(&limiter, &fallbacks, &local, &proxy, &alice, 10).await;
    assert!(answered, "Redis answers once reachable");
    assert_eq!(redis.command(&["DBSIZE"]).as_deref(), Some("1"));

    // The path goes dead: the check waits at most the timeout, then falls back.
    proxy.generation.fetch_add(1, Ordering::SeqCst);
    let before = fallbacks.get();
    let started = Instant::now();
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    let waited = started.elapsed();
    assert_eq!(fallbacks.get(), before + 1);
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The next request does not wait for it too.
    let started = Instant::now();
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), before + 2);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "backing off"
    );

    // After the back-off it reconnects instead of waiting on the dead connection again.
    let (answered, connections) =
        reaches_redis(&limiter, &fallbacks, &local, &proxy, &alice, 10).await;
    assert!(answered, "Redis answers again through a new connection");
    assert!(connections >= 1, "a fresh connection");
    // And the answer is the shared budget's: 100 more do not fit there (they would locally).
    let before = fallbacks.get();
    assert!(limiter.check(&alice, 100, &local).await.is_err());
    assert_eq!(fallbacks.get(), before);
}

#[tokio::test]
async fn the_fallback_refuses_a_user_who_spent_the_shared_budget() {
    let mut redis = RedisServer::start();
    let (limiter, fallbacks) = shared(&redis.url, 1, 100, 1);
    // The same budget as the shared one, as the server builds it.
    let local = FingerprintLimiter::new(100, 1).unwrap();
    let (spender, saver) = (user("spender"), user("saver"));
    assert!(limiter.check(&spender, 100, &local).await.is_ok());
    assert!(limiter.check(&saver, 10, &local).await.is_ok());
    assert!(
        limiter.check(&spender, 1, &local).await.is_err(),
        "shared budget spent"
    );
    assert_eq!(fallbacks.get(), 0, "all answered by Redis");

    // Redis gone: the local limiter answers, from what was already spent through this replica.
    redis.kill();
    assert!(
        limiter.check(&spender, 10, &local).await.is_err(),
        "no fresh burst for the spender"
    );
    assert_eq!(fallbacks.get(), 1);
    assert!(
        limiter.check(&saver, 90, &local).await.is_ok(),
        "the rest of a budget"
    );
    assert!(
        limiter.check(&saver, 1, &local).await.is_err(),
        "and no more"
    );
    assert_eq!(fallbacks.get(), 3);
}

/// The back-off after a Redis failure is measured on the limiter's clock: with a manual one it
/// lasts, however much real time passes, until the clock moves a full second; and a clock set
/// back does not stretch it.
#[tokio::test]
async fn the_back_off_follows_the_injected_clock() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let clock = Clock::manual(1_700_000_000);
    let (limiter, fallbacks) = shared(&proxy.url(), 1, 100, 1);
    let limiter = limiter.with_clock(clock.clone());
    // Far above the shared budget: a refusal below can only come from Redis.
    let local = FingerprintLimiter::new(10_000, 1).unwrap();
    let alice = user("alice");

    proxy.refuse.store(true, Ordering::SeqCst);
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 1);
    proxy.refuse.store(false, Ordering::SeqCst);

    // Longer than the back-off in real time, but the manual clock stands still.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let tried = proxy.accepted();
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    clock.advance(Duration::from_millis(999));
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 3, "both answered locally");
    assert_eq!(
        proxy.accepted(),
        tried,
        "no connection attempt while backing off"
    );

    // One second after the failure by the manual clock, Redis is asked again.
    clock.advance(Duration::from_millis(1));
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 3, "answered by Redis");
    assert_eq!(redis.command(&["DBSIZE"]).as_deref(), Some("1"));

    // A failure, then the clock set back an hour: the back-off still ends within a second.
    proxy.refuse.store(true, Ordering::SeqCst);
    proxy.generation.fetch_add(1, Ordering::SeqCst);
    let limiter = limiter.with_timeout(Duration::from_millis(300));
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(fallbacks.get(), 4);
    proxy.refuse.store(false, Ordering::SeqCst);
    clock.set_secs(1_700_000_000 - 3_600);
    let tried = proxy.accepted();
    assert!(limiter.check(&alice, 10, &local).await.is_ok());
    assert_eq!(
        fallbacks.get(),
        4,
        "answered by Redis, not held off for an hour"
    );
    assert!(proxy.accepted() > tried, "a fresh connection");
}
