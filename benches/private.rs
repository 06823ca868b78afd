//! The private mode's figures (issue 14), side by side with the hashed mode's on the same sets,
//! in one run: `cargo bench --bench private -- [--users N] [--contacts C] [--json FILE]`.
//! `scripts/private-bench.sh` runs it pinned to one core next to OpenMined PSI.
//!
//! What each figure is and how it is measured:
//! - **evaluate**: the server's work per blinded element on one core: parse the 32 bytes (a
//!   ristretto255 decompression), multiply by the key, serialise. Median of rounds of 4,096.
//! - **setup**: `PrivateSet::build_from_digits` on `--setup-users` numbers with every core
//!   (rayon), reported as µs per user per core (wall × cores / users), and on one core.
//! - **set size**: `--users` uniformly random 64-bit set hashes (OPRF outputs are uniform, so
//!   this is the real distribution without paying for the OPRF), cut and Golomb-coded exactly as
//!   the server does; the Bloom filter (`bloomfilter`, u64 items, fixed seed) at the same target
//!   rate as the baseline. The false-positive rates are measured on 10^6 non-members
//!   (10^7 at 1e-9 would take long; its rate is `items / range` by construction).
//! - **daily update**: 0.15 % churn (half removals of members, half new numbers) encoded as the
//!   delta body the server sends; bytes per changed number.
//! - **client**: for `--contacts` numbers, blind + finalise (the OPRF, one core) + membership
//!   checks against the local set of `--users` (a `ShardIndex` per shard, built once after
//!   download: its build is reported apart).
//! - **wire**: evaluation request and answer bodies for `--contacts` numbers (HTTP headers add
//!   about 300 bytes each way; scripts/private-bench.sh measures them on a real server).
//! - **hashed mode** on the same sets: fingerprinting the contacts (client), the match index
//!   lookup per fingerprint at `--users` (server, batch of `--contacts`), request and answer
//!   bodies.

use std::hint::black_box;
use std::time::Instant;

use contact_discovery::domain::oprf::{self, BlindedElement, OprfKey};
use contact_discovery::domain::{E164, Epoch, Fingerprint, ServerSecret};
use contact_discovery::protocol::gcs::{self, ShardIndex};
use contact_discovery::protocol::private_set::{SetDelta, SetParams, ShardDelta, encode_delta};
use contact_discovery::protocol::{self, Format, evaluate};
use contact_discovery::store::index::MatchIndex;
use contact_discovery::store::private_set::{HistoryLimits, PrivateSet, PrivateSetConfig};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

struct Args {
    /// Non-members each set is probed with (its false-positive rate measured).
    outsiders: u64,
    users: u64,
    setup_users: u64,
    contacts: usize,
    json: Option<String>,
}

fn args() -> Args {
    // `cargo bench` passes `--bench`; `cargo test` (the test command builds and runs every
    // target) does not, and gets a seconds-long smoke run of the same code instead.
    let benching = std::env::args().any(|a| a == "--bench");
    let mut args = if benching {
        Args {
            outsiders: 1_000_000,
            users: 10_000_000,
            setup_users: 1_000_000,
            contacts: 1_000,
            json: None,
        }
    } else {
        Args {
            outsiders: 10_000,
            users: 20_000,
            setup_users: 2_000,
            contacts: 100,
            json: None,
        }
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--users" => args.users = value().parse().expect("--users N"),
            "--setup-users" => args.setup_users = value().parse().expect("--setup-users N"),
            "--contacts" => args.contacts = value().parse().expect("--contacts N"),
            "--json" => args.json = Some(value()),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    args
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn secret() -> ServerSecret {
    ServerSecret::from_bytes([11; 32])
}

fn numbers(n: usize, seed: u64) -> Vec<E164> {
    contact_discovery::tools::generate::numbers(n, seed)
}

fn evaluate_per_element(key: &OprfKey) -> Value {
    let wire: Vec<[u8; 32]> = numbers(4_096, 7)
        .iter()
        .map(|n| oprf::blind(*n).unwrap().1.to_bytes())
        .collect();
    let rounds: Vec<f64> = (0..7)
        .map(|_| {
            let started = Instant::now();
            for bytes in &wire {
                let element = BlindedElement::from_bytes(bytes).unwrap();
                black_box(key.evaluate_blinded(&element).to_bytes());
            }
            started.elapsed().as_secs_f64() * 1e6 / wire.len() as f64
        })
        .collect();
    let us = median(rounds);
    println!("evaluate: {us:.1} µs per blinded element (one core, parse + multiply + serialise)");
    json!({ "evaluate_us_per_element": us })
}

fn setup(users: u64) -> Value {
    let digits: Vec<u64> = numbers(users as usize, 3).iter().map(|n| n.get()).collect();
    let config = PrivateSetConfig {
        inverse_fpr: 1_000_000,
        history: HistoryLimits {
            max_age_secs: 1,
            max_values: 1,
        },
    };
    let cores = rayon::current_num_threads();
    let started = Instant::now();
    let set = PrivateSet::build_from_digits(&config, &secret(), Epoch(1), &digits).unwrap();
    let wall = started.elapsed().as_secs_f64();
    black_box(set);
    let one = 50_000.min(digits.len());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let started = Instant::now();
    pool.install(|| {
        black_box(
            PrivateSet::build_from_digits(&config, &secret(), Epoch(1), &digits[..one]).unwrap(),
        )
    });
    let single = started.elapsed().as_secs_f64() * 1e6 / one as f64;
    let per_core = wall * 1e6 * cores as f64 / users as f64;
    println!(
        "setup: {users} users in {wall:.1} s on {cores} cores = {per_core:.1} µs per user per core; one core alone {single:.1} µs per user"
    );
    json!({ "setup_users": users, "setup_seconds": wall, "setup_cores": cores,
            "setup_us_per_user_per_core": per_core, "setup_us_per_user_one_core": single })
}

/// `n` sorted uniformly random set hashes.
fn hashes(n: u64, seed: u64) -> Vec<u64> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut v: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    v.sort_unstable();
    v
}

/// The shards' values of sorted `hashes` under `params`.
fn shard_values(params: &SetParams, hashes: &[u64]) -> Vec<Vec<u64>> {
    let mut shards = vec![Vec::new(); params.shards as usize];
    for h in hashes {
        let at = params.locate(*h);
        shards[at.shard as usize].push(at.value);
    }
    for s in &mut shards {
        s.sort_unstable();
    }
    shards
}

struct LocalSet {
    params: SetParams,
    shards: Vec<ShardIndex>,
}

impl LocalSet {
    fn new(params: SetParams, shards: &[Vec<u64>]) -> (Self, usize) {
        let mut bytes = 0;
        let indexes = shards
            .iter()
            .enumerate()
            .map(|(i, values)| {
                let coded = gcs::encode(values, params.golomb_p).unwrap();
                bytes += coded.len();
                ShardIndex::new(
                    std::sync::Arc::<[u8]>::from(coded),
                    params.golomb_p,
                    params.shard_limits(i as u32, values.len() as u64),
                )
                .unwrap()
            })
            .collect();
        (
            Self {
                params,
                shards: indexes,
            },
            bytes,
        )
    }

    fn contains(&self, hash: u64) -> bool {
        let at = self.params.locate(hash);
        self.shards[at.shard as usize].contains(at.value)
    }
}

fn set_sizes(users: u64, outsiders: u64, members: &[u64]) -> Value {
    let mut out = serde_json::Map::new();
    let probes = outsiders;
    let outsiders = hashes(probes, 99);
    for (label, inverse) in [("1e-6", 1_000_000u64), ("1e-9", 1_000_000_000)] {
        let params = SetParams::for_items(1, users, inverse);
        let shards = shard_values(&params, members);
        let (local, bytes) = LocalSet::new(params, &shards);
        let fp = outsiders.iter().filter(|h| local.contains(**h)).count();
        let gcs_per_user = bytes as f64 / users as f64;
        // Fixed (the same bits on every platform); its halves key the crate's two SipHashes,
        // so they must differ (equal halves make every probe a multiple of one hash).
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let mut bloom = bloomfilter::Bloom::<u64>::new_for_fp_rate_with_seed(
            users as usize,
            1.0 / inverse as f64,
            &seed,
        )
        .unwrap();
        for h in members {
            bloom.set(h);
        }
        let bloom_fp = outsiders.iter().filter(|h| bloom.check(h)).count();
        let bloom_per_user = bloom.as_slice().len() as f64 / users as f64;
        println!(
            "set at {label}: GCS {gcs_per_user:.3} B/user (P = {}, {} shards, rate {:.2e} by construction, {fp} of {probes} outsiders matched); Bloom {bloom_per_user:.3} B/user ({bloom_fp} of {probes} matched)",
            params.golomb_p,
            params.shards,
            params.false_positive_rate(users),
        );
        out.insert(
            label.to_owned(),
            json!({ "gcs_bytes_per_user": gcs_per_user, "bloom_bytes_per_user": bloom_per_user,
                    "gcs_rate": params.false_positive_rate(users), "gcs_outsiders_matched": fp,
                    "bloom_outsiders_matched": bloom_fp, "golomb_p": params.golomb_p,
                    "shards": params.shards }),
        );
    }
    Value::Object(out)
}

fn daily_update(users: u64, members: &[u64]) -> Value {
    let params = SetParams::for_items(1, users, 1_000_000);
    let churn = (users as f64 * 0.0015).round() as usize;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(17);
    let mut per_shard: Vec<(Vec<u64>, Vec<u64>)> =
        vec![(Vec::new(), Vec::new()); params.shards as usize];
    for _ in 0..churn / 2 {
        let gone = members[rng.random_range(0..members.len())];
        let at = params.locate(gone);
        per_shard[at.shard as usize].1.push(at.value);
        let new = params.locate(rng.random());
        per_shard[new.shard as usize].0.push(new.value);
    }
    let shards = per_shard
        .into_iter()
        .enumerate()
        .filter(|(_, (a, r))| !a.is_empty() || !r.is_empty())
        .map(|(i, (mut added, mut removed))| {
            added.sort_unstable();
            removed.sort_unstable();
            ShardDelta {
                shard: i as u32,
                etag: [0; 16],
                items: 0,
                added,
                removed,
            }
        })
        .collect();
    let body = encode_delta(
        &params,
        &SetDelta {
            from: [0; 16],
            to: [1; 16],
            shards,
        },
    )
    .unwrap();
    let per_change = body.len() as f64 / churn as f64;
    println!(
        "daily update at 0.15 % of {users}: {churn} changes, delta body {} bytes = {per_change:.2} B per changed user",
        body.len()
    );
    json!({ "delta_changes": churn, "delta_bytes": body.len(), "delta_bytes_per_change": per_change })
}

fn client(users: u64, contacts: usize, members: &[u64]) -> Value {
    let key = OprfKey::derive(&secret(), Epoch(1)).unwrap();
    let numbers = numbers(contacts, 21);
    // Half the contacts are registered: their set hashes join the set.
    let mut set_hashes = members.to_vec();
    for n in numbers.iter().step_by(2) {
        set_hashes.push(key.output(*n).unwrap().set_hash());
    }
    set_hashes.sort_unstable();
    let params = SetParams::for_items(1, set_hashes.len() as u64, 1_000_000);
    let started = Instant::now();
    let (local, _) = LocalSet::new(params, &shard_values(&params, &set_hashes));
    let index_ms = started.elapsed().as_secs_f64() * 1e3;

    let started = Instant::now();
    let blinded: Vec<_> = numbers.iter().map(|n| oprf::blind(*n).unwrap()).collect();
    let blind_ms = started.elapsed().as_secs_f64() * 1e3;
    let request = evaluate::encode_evaluate(
        Format::Binary,
        1,
        &blinded.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
    );
    // The server's part (not the client's CPU).
    let decoded = evaluate::decode_evaluate(Format::Binary, &request, contacts).unwrap();
    let evaluated: Vec<_> = decoded
        .elements
        .iter()
        .map(|e| key.evaluate_blinded(e))
        .collect();
    let answer = evaluate::encode_evaluated(Format::Binary, 1, &evaluated);
    let started = Instant::now();
    let back = evaluate::decode_evaluated(Format::Binary, &answer, contacts).unwrap();
    let outputs: Vec<u64> = blinded
        .iter()
        .zip(&numbers)
        .zip(&back.elements)
        .map(|(((blinding, _), n), e)| blinding.finalize(*n, e).unwrap().set_hash())
        .collect();
    let finalize_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let found = outputs.iter().filter(|h| local.contains(**h)).count();
    let check_ms = started.elapsed().as_secs_f64() * 1e3;
    assert!(found >= contacts / 2, "every registered contact is found");
    let total = blind_ms + finalize_ms + check_ms;
    println!(
        "client, {contacts} contacts vs {users} users: blind {blind_ms:.1} ms + finalise {finalize_ms:.1} ms + check {check_ms:.2} ms = {total:.1} ms (one core); local set index built once in {index_ms:.0} ms; {found} found"
    );
    println!(
        "wire, {contacts} contacts: evaluation request {} B + answer {} B = {} B of bodies",
        request.len(),
        answer.len(),
        request.len() + answer.len()
    );
    json!({ "client_blind_ms": blind_ms, "client_finalize_ms": finalize_ms, "client_check_ms": check_ms,
            "client_total_ms": total, "client_index_build_ms": index_ms,
            "wire_request_bytes": request.len(), "wire_answer_bytes": answer.len() })
}

fn hashed(users: u64, contacts: usize) -> Value {
    let epoch = Epoch(1);
    let salt = secret().salt(epoch);
    let digits: Vec<u64> = numbers(users as usize, 3).iter().map(|n| n.get()).collect();
    let index = MatchIndex::build_from_digits(epoch, &salt, &digits);
    drop(digits);
    let numbers = numbers(contacts, 21);
    let started = Instant::now();
    let fps: Vec<Fingerprint> = numbers
        .iter()
        .map(|n| Fingerprint::compute(&salt, *n))
        .collect();
    let client_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut bitmap = vec![0u8; contacts.div_ceil(8)];
    let rounds: Vec<f64> = (0..21)
        .map(|_| {
            let started = Instant::now();
            black_box(index.lookup_into_bitmap(&fps, &mut bitmap));
            started.elapsed().as_secs_f64() * 1e9 / contacts as f64
        })
        .collect();
    let lookup_ns = median(rounds);
    let request = protocol::encode_request(Format::Binary, 1, &fps);
    let answer = protocol::encode_answer(Format::Binary, 1, contacts, &bitmap);
    println!(
        "hashed mode, same sets: client {client_ms:.2} ms to fingerprint {contacts}; server lookup {lookup_ns:.0} ns per fingerprint at {users}; bodies {} B + {} B",
        request.len(),
        answer.len()
    );
    json!({ "hashed_client_ms": client_ms, "hashed_lookup_ns_per_fingerprint": lookup_ns,
            "hashed_request_bytes": request.len(), "hashed_answer_bytes": answer.len() })
}

fn main() {
    let args = args();
    let key = OprfKey::derive(&secret(), Epoch(1)).unwrap();
    let mut report = serde_json::Map::new();
    let mut add = |v: Value| {
        if let Value::Object(m) = v {
            report.extend(m);
        }
    };
    add(evaluate_per_element(&key));
    add(setup(args.setup_users));
    let members = hashes(args.users, 1);
    add(json!({ "set": set_sizes(args.users, args.outsiders, &members) }));
    add(daily_update(args.users, &members));
    add(client(args.users, args.contacts, &members));
    drop(members);
    add(hashed(args.users, args.contacts));
    report.insert("users".into(), json!(args.users));
    report.insert("contacts".into(), json!(args.contacts));
    if let Some(path) = args.json {
        std::fs::write(&path, Value::Object(report).to_string()).expect("write the JSON report");
    }
}
