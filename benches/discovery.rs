//! Benchmarks of the discovery hot path: fingerprinting, index build, batched lookup (against a
//! plain `HashSet<u64>` on the same probes), a change applied to a live index and lookups after
//! many, the wire codecs, and one whole request through the public router without a socket.
//!
//! `cargo bench --bench discovery` measures; `cargo test --all-targets` runs each once on small
//! inputs. `CD_BENCH_USERS` sets the registered users for the lookup benches and (up to 10 M)
//! the router benches (default 10 M when measuring); figures and commands are in
//! docs/BENCHMARKS.md.

use std::collections::HashSet;
use std::hint::black_box;
use std::num::NonZero;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use contact_discovery::clock::Clock;
use contact_discovery::domain::{Epoch, Fingerprint, Salt, UserId};
use contact_discovery::protocol::{self, Format};
use contact_discovery::server::config::{Config, Settings};
use contact_discovery::server::startup::{Application, load_keys, public_router};
use contact_discovery::store::index::MatchIndex;
use contact_discovery::store::registry::{Registry, Visibility};
use contact_discovery::tools::generate;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use tower::ServiceExt;

/// Fingerprints per request, as in the performance targets.
const BATCH: usize = 1_000;

/// Whether criterion measures (`cargo bench`) rather than checks (`cargo test`).
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Registered users for the lookup and router benches.
fn users() -> usize {
    if !measuring() {
        return 20_000;
    }
    std::env::var("CD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

fn random_keys(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

/// Batches of `BATCH` probes, half members and half not, cycling through `count` batches.
fn probe_batches(members: &[u64], count: usize) -> Vec<Vec<Fingerprint>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    (0..count)
        .map(|_| {
            (0..BATCH)
                .map(|i| {
                    let key = if i % 2 == 0 {
                        members[rng.random_range(0..members.len())]
                    } else {
                        rng.random()
                    };
                    Fingerprint::from_bytes(key.to_le_bytes())
                })
                .collect()
        })
        .collect()
}

fn fingerprinting(c: &mut Criterion) {
    let salt = Salt::from_bytes([7; 32]);
    let numbers = generate::numbers(1_000, 1);
    let mut group = c.benchmark_group("fingerprint");
    group.throughput(Throughput::Elements(numbers.len() as u64));
    group.bench_function("keyed_blake3_x1000", |b| {
        b.iter(|| {
            for n in &numbers {
                black_box(Fingerprint::compute(&salt, *n));
            }
        });
    });
    group.finish();
}

fn index_build(c: &mut Criterion) {
    let salt = Salt::from_bytes([7; 32]);
    let n = if measuring() { 4_000_000 } else { 10_000 };
    let digits: Vec<u64> = generate::numbers(n, 1).iter().map(|d| d.get()).collect();
    let keys = random_keys(n, 5);
    let mut group = c.benchmark_group("index_build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("fingerprint_and_insert/{n}"), |b| {
        b.iter(|| MatchIndex::build_from_digits(Epoch(1), &salt, black_box(&digits)));
    });
    group.bench_function(format!("insert_only/{n}"), |b| {
        b.iter(|| MatchIndex::from_distinct_keys(Epoch(1), black_box(&keys)));
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let n = users();
    let keys = random_keys(n, 11);
    let batches = probe_batches(&keys, 256);
    let index = MatchIndex::from_distinct_keys(Epoch(1), &keys);
    eprintln!(
        "match index: {n} keys, {:.2} bytes per key",
        index.heap_bytes() as f64 / n as f64
    );
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut bitmap = vec![0u8; BATCH.div_ceil(8)];
    let mut next = 0usize;
    group.bench_function(format!("match_index/{n}"), |b| {
        b.iter(|| {
            next = (next + 1) % batches.len();
            bitmap.fill(0);
            black_box(index.lookup_into_bitmap(&batches[next], &mut bitmap))
        });
    });
    drop(index);
    // A std set of more than 200 M keys needs ~10 GB more than the index; skip it there.
    if n > 200_000_000 {
        group.finish();
        return;
    }
    let set: HashSet<u64> = keys.into_iter().collect();
    group.bench_function(format!("std_hash_set/{n}"), |b| {
        b.iter(|| {
            next = (next + 1) % batches.len();
            bitmap.fill(0);
            let mut matches = 0;
            for (i, fp) in batches[next].iter().enumerate() {
                if set.contains(&fp.key()) {
                    bitmap[i / 8] |= 1 << (i % 8);
                    matches += 1;
                }
            }
            black_box(matches)
        });
    });
    group.finish();
}

/// Applying a change to a live index, and lookups after many changes (issue 13): an index of
/// `users()` keys takes 10 % of that in changes, half removals of built keys and half inserts
/// of new ones; a second one takes 10 % in inserts only, the case that outgrows the tables.
/// Prints what the changes cost in memory.
fn live_changes(c: &mut Criterion) {
    use contact_discovery::domain::ServerSecret;
    use contact_discovery::store::registry::Discoverability;
    use contact_discovery::store::rotation::{ChangeBase, EpochArtefact};

    let n = users();
    let changes = n / 10;
    let mut group = c.benchmark_group("live_index");

    // One change through the artefact interface: fingerprint under the epoch's salt, then an
    // insert or a removal. Adds and removes alternate, so the index keeps its size.
    let secret = ServerSecret::from_bytes([3; 32]);
    let numbers = generate::numbers(1_024, 77);
    let index = MatchIndex::from_distinct_keys(Epoch(1), &random_keys(n, 11));
    group.throughput(Throughput::Elements(1));
    let mut turn = 0usize;
    group.bench_function(format!("apply_change/{n}"), |b| {
        b.iter(|| {
            let number = numbers[(turn / 2) % numbers.len()];
            let discoverable = turn.is_multiple_of(2);
            turn += 1;
            let change = Discoverability {
                number,
                discoverable,
            };
            <MatchIndex as EpochArtefact>::apply(&index, &secret, &[change], ChangeBase::Exact);
        });
    });
    drop(index);

    for (name, removals) in [("mixed", changes / 2), ("inserts_only", 0)] {
        let keys = random_keys(n, 11);
        let index = MatchIndex::from_distinct_keys(Epoch(1), &keys);
        let before = index.heap_bytes();
        for key in &keys[..removals] {
            index.remove(*key);
        }
        let added = random_keys(changes - removals, 12);
        for key in &added {
            index.insert(*key);
        }
        eprintln!(
            "live index {name}: {n} keys, {changes} changes: {:+.3} bytes per user, {} spilled",
            (index.heap_bytes() as f64 - before as f64) / n as f64,
            index.spilled()
        );
        let members: Vec<u64> = keys[removals..].iter().chain(&added).copied().collect();
        let batches = probe_batches(&members, 256);
        drop(members);
        group.throughput(Throughput::Elements(BATCH as u64));
        let mut bitmap = vec![0u8; BATCH.div_ceil(8)];
        let mut next = 0usize;
        group.bench_function(format!("lookup_after_{changes}_{name}/{n}"), |b| {
            b.iter(|| {
                next = (next + 1) % batches.len();
                bitmap.fill(0);
                black_box(index.lookup_into_bitmap(&batches[next], &mut bitmap))
            });
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let fps: Vec<Fingerprint> = random_keys(BATCH, 3)
        .iter()
        .map(|k| Fingerprint::from_bytes(k.to_le_bytes()))
        .collect();
    let bitmap: Vec<u8> = random_keys(BATCH.div_ceil(8), 4)
        .iter()
        .map(|k| *k as u8)
        .collect();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH as u64));
    for format in [Format::Binary, Format::Json] {
        let body = protocol::encode_request(format, 9, &fps);
        let name = format!("{format:?}").to_lowercase();
        group.bench_function(format!("decode_request/{name}"), |b| {
            b.iter(|| protocol::decode_request(format, black_box(&body), BATCH).map(|r| r.epoch));
        });
        group.bench_function(format!("encode_response/{name}"), |b| {
            b.iter(|| protocol::encode_answer(format, 9, BATCH, black_box(&bitmap)));
        });
    }
    group.finish();
}

fn whole_request(c: &mut Criterion) {
    // Generating and importing more than 10 M numbers takes minutes and many GB; the lookup
    // benches cover larger sizes.
    let n = users().min(10_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let numbers = generate::numbers(n, 1);
    {
        let (registry, _) = Registry::open(dir.path()).expect("registry");
        let entries: Vec<_> = numbers
            .iter()
            .map(|n| (*n, Visibility::Discoverable))
            .collect();
        registry.import(&entries).expect("import");
    }
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.listeners.listen = "127.0.0.1:0".parse().expect("addr");
    config.listeners.admin_listen = "127.0.0.1:0".parse().expect("addr");
    config.secrets.admin_token = Some("bench-admin-token-0123456789".parse().expect("token"));
    config.limits.max_batch = NonZero::new(BATCH).expect("batch");
    config.limits.rate_limit_burst = NonZero::<u32>::MAX;
    config.limits.rate_limit_refill_per_day = NonZero::<u32>::MAX;
    let settings = Settings::try_from(config).expect("settings");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clock = Clock::System;
    let app = runtime
        .block_on(Application::build_with_clock(&settings, clock.clone()))
        .expect("app");
    runtime.block_on(app.warm_up());
    let state = app.state();
    let router = public_router(&state);
    let keys = load_keys(&settings).expect("keys");
    let epoch = state
        .public
        .indexes
        .policy()
        .schedule
        .epoch_at(clock.now_secs());
    let salt = state.public.secret.salt(epoch);
    let token = keys.credential_key.mint(
        &UserId::parse("bench").expect("user"),
        clock.now_secs() + 86_400,
    );
    // Half the batch registered, half not (other seed).
    let misses = generate::numbers(BATCH / 2, 2);
    let fps: Vec<Fingerprint> = numbers
        .iter()
        .take(BATCH / 2)
        .chain(misses.iter())
        .map(|n| Fingerprint::compute(&salt, *n))
        .collect();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(BATCH as u64));
    for format in [Format::Binary, Format::Json] {
        let body = protocol::encode_request(format, epoch.0, &fps);
        let name = format!("{format:?}").to_lowercase();
        group.bench_function(format!("discover/{name}"), |b| {
            b.iter(|| {
                let request = Request::post("/v1/discover")
                    .header("content-type", format.content_type())
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(body.clone()))
                    .expect("request");
                let response = runtime
                    .block_on(router.clone().oneshot(request))
                    .expect("infallible");
                assert_eq!(response.status(), 200);
                runtime
                    .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
                    .expect("body")
            });
        });
    }
    group.finish();
}

fn config() -> Criterion {
    if measuring() {
        Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
    } else {
        Criterion::default()
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = fingerprinting, index_build, lookup, live_changes, codecs, whole_request
}
criterion_main!(benches);
