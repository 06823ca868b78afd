//! `contact-discovery loadgen`: open-loop load against a running service.
//!
//! Request start times are scheduled at the target rate from the start of the run, whatever
//! the responses do, and each latency is measured from its scheduled time, so a slow server
//! shows up as latency rather than as fewer requests (no coordinated omission). Requests carry
//! real fingerprints under the live epoch's salt: hits are numbers the registry was generated
//! with (`registry generate --seed S` gives a prefix of the same sequence), misses come from
//! another seed. Bodies are prepared ahead so the generator spends little CPU per request.
//! Credentials are minted for many users with the credential key, so the per-user rate limit
//! does not dominate (the server still needs a high `--rate-limit-burst`).

mod redis;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::domain::secret::{self, KeyFileError};
use crate::domain::{CredentialKey, Fingerprint, Salt, UserId};
use crate::server::api::codec::{self, Format};
use crate::server::config::default_credential_key_path;
use crate::tools::generate;
pub use report::Report;

/// Settings of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Target requests per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send, e.g. 30s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Batch sizes: a fixed number (`1000`) or an address-book-like log-normal
    /// distribution `lognormal:MEDIAN:SIGMA` (e.g. `lognormal:300:1.0`), capped at the
    /// server's `max_batch`.
    #[arg(long, default_value = "1000")]
    pub batch: BatchSizes,
    /// Share of fingerprints that belong to registered numbers.
    #[arg(long, default_value_t = 0.5)]
    pub hit_ratio: f64,
    /// Seed the registry was generated with (`registry generate --seed`).
    #[arg(long, default_value_t = 1)]
    pub registry_seed: u64,
    /// How many numbers the registry was generated with; hits are drawn from these.
    #[arg(long, default_value_t = 1_000_000)]
    pub registry_size: usize,
    /// Distinct numbers to draw hits (and misses) from.
    #[arg(long, default_value_t = 200_000)]
    pub pool: usize,
    /// Distinct request bodies prepared per epoch and sent in turn.
    #[arg(long, default_value_t = 512)]
    pub bodies: usize,
    /// Request encoding.
    #[arg(long, value_enum, default_value = "binary")]
    pub encoding: Encoding,
    /// How many users to mint credentials for (requests rotate through them).
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Data directory holding credential.key.
    #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR", default_value = crate::server::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Credential key file (overrides DATA_DIR/credential.key).
    #[arg(long)]
    pub credential_key_file: Option<PathBuf>,
    /// Most requests in flight; later ones wait, and the wait counts as latency.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Closed loop instead: keep exactly `--max-in-flight` requests going back to back for the
    /// duration (`--rate` is ignored). Measures maximum throughput, not latency under load.
    #[arg(long)]
    pub closed: bool,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Read the server's CPU time from /proc/PID/stat and report CPU per fingerprint.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Query Redis at HOST:PORT instead, for the side-by-side comparison: fills a set with the
    /// fingerprints of the whole generated registry under the server's current salt, then sends
    /// `SMISMEMBER` with the same batches, closed loop on `--max-in-flight` connections.
    #[arg(long)]
    pub redis: Option<String>,
}

/// Request encoding on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Encoding {
    /// `application/octet-stream`.
    Binary,
    /// `application/json`.
    Json,
}

impl From<Encoding> for Format {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Binary => Format::Binary,
            Encoding::Json => Format::Json,
        }
    }
}

/// How batch sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchSizes {
    /// Always this many.
    Fixed(usize),
    /// Log-normal with this median and sigma (of the natural log), at least 1.
    LogNormal {
        /// Median batch size.
        median: f64,
        /// Spread of ln(size).
        sigma: f64,
    },
}

impl std::str::FromStr for BatchSizes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("lognormal:") {
            let (median, sigma) = rest
                .split_once(':')
                .ok_or("expected lognormal:MEDIAN:SIGMA")?;
            let median: f64 = median.parse().map_err(|_| "bad median")?;
            let sigma: f64 = sigma.parse().map_err(|_| "bad sigma")?;
            if !(median >= 1.0 && (0.0..=5.0).contains(&sigma)) {
                return Err("median must be >= 1 and sigma in 0..=5".into());
            }
            return Ok(BatchSizes::LogNormal { median, sigma });
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSizes::Fixed(n)),
            _ => Err("expected a positive number or lognormal:MEDIAN:SIGMA".into()),
        }
    }
}

impl BatchSizes {
    /// Draws one size in `1..=max`.
    pub fn sample(self, rng: &mut impl Rng, max: usize) -> usize {
        let size = match self {
            BatchSizes::Fixed(n) => n,
            BatchSizes::LogNormal { median, sigma } => {
                // Box–Muller: one standard normal from two uniforms.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (median * (sigma * z).exp()).round() as usize
            }
        };
        size.clamp(1, max.max(1))
    }
}

/// Why a load run could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The credential key could not be read.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// Talking to the server failed before the run.
    #[error("fetching {url}: {why}")]
    Epoch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// A setting is unusable.
    #[error("{0}")]
    Invalid(String),
}

#[derive(serde::Deserialize)]
struct EpochReply {
    epoch: u64,
    salt: String,
    max_batch: usize,
}

/// Prepared request bodies for one epoch.
struct Bodies {
    epoch: u64,
    /// Body, fingerprints in it, how many of them are hits.
    items: Vec<(Bytes, usize, usize)>,
    /// The fingerprints of each body (for the Redis comparison).
    batches: Vec<Vec<Fingerprint>>,
}

/// What the request tasks record.
struct Tally {
    latency: Mutex<Histogram<u64>>,
    /// Requests by HTTP status; 0 for transport errors.
    statuses: Mutex<BTreeMap<u16, u64>>,
    fingerprints_answered: AtomicU64,
    expected_hits: AtomicU64,
    matches: AtomicU64,
    /// Per second of the run: latency histogram of requests scheduled in it.
    timeline: Mutex<Vec<Histogram<u64>>>,
    /// Requests answered 410 and sent again under the refetched epoch (counted once, by
    /// their final status).
    resent_after_410: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 10 min, three significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

async fn fetch_epoch(client: &reqwest::Client, server: &str) -> Result<EpochReply, LoadgenError> {
    let url = format!("{server}/v1/epoch");
    let err = |why: String| LoadgenError::Epoch {
        url: url.clone(),
        why,
    };
    let reply = client
        .get(&url)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !reply.status().is_success() {
        return Err(err(format!("status {}", reply.status())));
    }
    reply
        .json::<EpochReply>()
        .await
        .map_err(|e| err(e.to_string()))
}

fn prepare_bodies(
    args: &LoadgenArgs,
    reply: &EpochReply,
    hits: &[crate::domain::E164],
    misses: &[crate::domain::E164],
) -> Result<Bodies, LoadgenError> {
    let salt = salt_of(reply)?;
    let hit_fps: Vec<Fingerprint> = hits
        .iter()
        .map(|n| Fingerprint::compute(&salt, *n))
        .collect();
    let miss_fps: Vec<Fingerprint> = misses
        .iter()
        .map(|n| Fingerprint::compute(&salt, *n))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(reply.epoch);
    let format = Format::from(args.encoding);
    let mut batches = Vec::new();
    let items = (0..args.bodies.max(1))
        .map(|_| {
            let n = args.batch.sample(&mut rng, reply.max_batch);
            let mut expected = 0;
            let fps: Vec<Fingerprint> = (0..n)
                .map(|_| {
                    if rng.random_bool(args.hit_ratio) {
                        expected += 1;
                        hit_fps[rng.random_range(0..hit_fps.len())]
                    } else {
                        miss_fps[rng.random_range(0..miss_fps.len())]
                    }
                })
                .collect();
            let body = Bytes::from(codec::encode_request(format, reply.epoch, &fps));
            batches.push(fps);
            (body, n, expected)
        })
        .collect();
    Ok(Bodies {
        epoch: reply.epoch,
        items,
        batches,
    })
}

fn salt_of(reply: &EpochReply) -> Result<Salt, LoadgenError> {
    let salt_bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&reply.salt)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| LoadgenError::Invalid("the server sent a malformed salt".into()))?;
    Ok(Salt::from_bytes(salt_bytes))
}

/// The Redis side: load the set, then query it with the same batches; returns a JSON report.
async fn run_redis(
    args: &LoadgenArgs,
    addr: &str,
    reply: &EpochReply,
    bodies: &Bodies,
) -> Result<serde_json::Value, LoadgenError> {
    let io = |e: std::io::Error| LoadgenError::Epoch {
        url: format!("redis://{addr}"),
        why: e.to_string(),
    };
    let salt = salt_of(reply)?;
    let registry = generate::numbers(args.registry_size, args.registry_seed);
    let fingerprints: Vec<Fingerprint> = {
        use rayon::prelude::*;
        registry
            .par_iter()
            .map(|n| Fingerprint::compute(&salt, *n))
            .collect()
    };
    drop(registry);
    let loading = Instant::now();
    redis::load(addr, &fingerprints).await.map_err(io)?;
    let load_s = loading.elapsed().as_secs_f64();
    drop(fingerprints);
    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let run = redis::query(addr, &bodies.batches, args.max_in_flight, args.duration)
        .await
        .map_err(io)?;
    let cpu_after = args.server_pid.and_then(process_cpu_seconds);
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let ms = |q: f64| run.latency.value_at_quantile(q) as f64 / 1_000.0;
    Ok(serde_json::json!({
        "target": format!("redis://{addr}"),
        "set_members": args.registry_size,
        "load_s": load_s,
        "connections": args.max_in_flight,
        "requests": run.requests,
        "fingerprints": run.fingerprints,
        "fingerprints_per_s": run.fingerprints as f64 / secs,
        "requests_per_s": run.requests as f64 / secs,
        "hit_ratio_answered": if run.fingerprints == 0 { 0.0 } else { run.matches as f64 / run.fingerprints as f64 },
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999), "max": run.latency.max() as f64 / 1_000.0 },
        "server_cpu_s": cpu,
        "server_cpu_ns_per_fingerprint": cpu.map(|c| c * 1e9 / (run.fingerprints.max(1) as f64)),
    }))
}

/// CPU seconds (user + system) the process has used, from /proc/<pid>/stat.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux for every architecture's /proc ABI.
    Some((utime + stime) / 100.0)
}

/// Runs the load and returns the report.
pub async fn run(args: &LoadgenArgs) -> Result<Report, LoadgenError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(LoadgenError::Invalid("--rate must be positive".into()));
    }
    if !(0.0..=1.0).contains(&args.hit_ratio) {
        return Err(LoadgenError::Invalid("--hit-ratio must be in 0..=1".into()));
    }
    let key = match &args.credential_key_file {
        Some(path) => secret::read_key(path)?,
        None => secret::read_key(&default_credential_key_path(&args.data_dir))?,
    };
    let key = CredentialKey::from_bytes(key);
    let expiry = crate::clock::Clock::System.now_secs() + args.duration.as_secs() + 3_600;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..args.users.max(1))
            .map(|i| {
                UserId::parse(&format!("loadgen-{i}"))
                    .map(|user| format!("Bearer {}", key.mint(&user, expiry)))
                    .map_err(|e| LoadgenError::Invalid(e.to_string()))
            })
            .collect::<Result<_, _>>()?,
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| LoadgenError::Invalid(e.to_string()))?;
    let server = args.server.trim_end_matches('/').to_owned();
    let hits = generate::numbers(args.pool.min(args.registry_size).max(1), args.registry_seed);
    let miss_seed = args.registry_seed.wrapping_add(0x5eed_f00d);
    let misses = generate::numbers(args.pool.max(1), miss_seed);
    let reply = fetch_epoch(&client, &server).await?;
    let bodies = Arc::new(RwLock::new(Arc::new(prepare_bodies(
        args, &reply, &hits, &misses,
    )?)));
    if let Some(addr) = &args.redis {
        let prepared = Arc::clone(&bodies.read());
        let report = run_redis(args, addr, &reply, &prepared).await?;
        return Ok(Report::from_json(report));
    }
    let hits = Arc::new(hits);
    let misses = Arc::new(misses);
    let refetching = Arc::new(tokio::sync::Mutex::new(()));

    let seconds = args.duration.as_secs_f64();
    let total = if args.closed {
        u64::MAX
    } else {
        (args.rate * seconds).round() as u64
    };
    let tally = Arc::new(Tally {
        latency: Mutex::new(histogram()),
        statuses: Mutex::new(BTreeMap::new()),
        fingerprints_answered: AtomicU64::new(0),
        expected_hits: AtomicU64::new(0),
        matches: AtomicU64::new(0),
        timeline: Mutex::new((0..=seconds.ceil() as usize).map(|_| histogram()).collect()),
        resent_after_410: AtomicU64::new(0),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));
    let progress = if args.closed {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::new(total)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let format = Format::from(args.encoding);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut late = 0u64;
    let mut sent_count = 0u64;
    for k in 0..total {
        let (scheduled, permit) = if args.closed {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            if started.elapsed() >= args.duration {
                break;
            }
            (Instant::now(), Some(permit))
        } else {
            let scheduled = started + Duration::from_secs_f64(k as f64 / args.rate);
            let now = Instant::now();
            if scheduled > now {
                tokio::time::sleep_until(scheduled.into()).await;
            } else if now - scheduled > Duration::from_millis(1) {
                late += 1;
            }
            (scheduled, None)
        };
        sent_count += 1;
        let current = Arc::clone(&bodies.read());
        let (body, n, expected) = current.items[k as usize % current.items.len()].clone();
        let token = tokens[k as usize % tokens.len()].clone();
        let (client, server, task_tally, slots, task_progress) = (
            client.clone(),
            server.clone(),
            Arc::clone(&tally),
            Arc::clone(&slots),
            progress.clone(),
        );
        let refresh = (
            Arc::clone(&bodies),
            Arc::clone(&refetching),
            Arc::clone(&hits),
            Arc::clone(&misses),
            args.clone(),
            current.epoch,
        );
        tasks.spawn(async move {
            let _slot = match permit {
                Some(permit) => permit,
                None => match slots.acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (bodies, refetching, hits, misses, args, epoch) = refresh;
            let (mut body, mut n, mut expected) = (body, n, expected);
            let mut resent = false;
            let status = loop {
                let sent = client
                    .post(format!("{server}/v1/discover"))
                    .header("content-type", format.content_type())
                    .header("authorization", token.clone())
                    .body(body.clone())
                    .send()
                    .await;
                let status = match sent {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.bytes().await.unwrap_or_default();
                        if status == 200 {
                            task_tally
                                .fingerprints_answered
                                .fetch_add(n as u64, Ordering::Relaxed);
                            task_tally
                                .expected_hits
                                .fetch_add(expected as u64, Ordering::Relaxed);
                            task_tally
                                .matches
                                .fetch_add(count_matches(format, &body, n), Ordering::Relaxed);
                        }
                        status
                    }
                    Err(_) => 0,
                };
                if status != 410 || resent {
                    break status;
                }
                // What the protocol asks of a client: on 410, fetch the current epoch and send
                // the same request again under it. One refetch at a time; later 410s for the
                // same epoch find it done.
                resent = true;
                task_tally.resent_after_410.fetch_add(1, Ordering::Relaxed);
                {
                    let _guard = refetching.lock().await;
                    if bodies.read().epoch == epoch
                        && let Ok(reply) = fetch_epoch(&client, &server).await
                        && let Ok(fresh) = prepare_bodies(&args, &reply, &hits, &misses)
                    {
                        *bodies.write() = Arc::new(fresh);
                    }
                }
                let fresh = Arc::clone(&bodies.read());
                (body, n, expected) = fresh.items[k as usize % fresh.items.len()].clone();
            };
            let micros = scheduled.elapsed().as_micros().max(1) as u64;
            let _ = task_tally.latency.lock().record(micros.min(600_000_000));
            let second = scheduled.duration_since(started).as_secs() as usize;
            if let Some(h) = task_tally.timeline.lock().get_mut(second) {
                let _ = h.record(micros.min(600_000_000));
            }
            *task_tally.statuses.lock().entry(status).or_default() += 1;
            task_progress.inc(1);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
        if k % 256 == 0 {
            let errors: u64 = tally
                .statuses
                .lock()
                .iter()
                .filter(|(s, _)| **s != 200)
                .map(|(_, c)| *c)
                .sum();
            progress.set_message(format!("{errors} errors"));
        }
    }
    let sending = started.elapsed();
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let cpu_after = args.server_pid.and_then(process_cpu_seconds);

    let final_epoch = bodies.read().epoch;
    let latency = tally.latency.lock().clone();
    let statuses = tally.statuses.lock().clone();
    let timeline = tally.timeline.lock().clone();
    Ok(Report::new(report::Inputs {
        args: args.clone(),
        scheduled: sent_count,
        late,
        sending,
        elapsed,
        latency,
        statuses,
        fingerprints_answered: tally.fingerprints_answered.load(Ordering::Relaxed),
        expected_hits: tally.expected_hits.load(Ordering::Relaxed),
        matches: tally.matches.load(Ordering::Relaxed),
        server_cpu_seconds: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        timeline,
        first_epoch: reply.epoch,
        final_epoch,
        resent_after_410: tally.resent_after_410.load(Ordering::Relaxed),
    }))
}

/// Matches in a 200 response, to report the hit ratio the server actually saw.
fn count_matches(format: Format, body: &[u8], n: usize) -> u64 {
    match format {
        Format::Binary => {
            codec::decode_binary_response(body, n).map_or(0, |(_, hits)| hits.len() as u64)
        }
        Format::Json => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("registered")?.as_array().map(|a| a.len() as u64))
            .unwrap_or(0),
    }
}

/// `loadgen` from the command line: runs on a fresh runtime and prints text or JSON.
pub fn run_and_print(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| LoadgenError::Invalid(format!("starting the async runtime: {e}")))?;
    let report = runtime.block_on(run(args))?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_parse_and_stay_in_range() {
        assert_eq!("1000".parse::<BatchSizes>(), Ok(BatchSizes::Fixed(1000)));
        assert!("0".parse::<BatchSizes>().is_err());
        assert!("lognormal:300".parse::<BatchSizes>().is_err());
        let dist: BatchSizes = "lognormal:300:1.0".parse().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut sizes: Vec<usize> = (0..10_001).map(|_| dist.sample(&mut rng, 5_000)).collect();
        sizes.sort_unstable();
        assert!(sizes.iter().all(|s| (1..=5_000).contains(s)));
        let median = sizes[5_000];
        assert!((250..=360).contains(&median), "median {median}");
        assert!(sizes[9_990] > 2_000, "a long tail towards the cap");
        assert_eq!(BatchSizes::Fixed(9_000).sample(&mut rng, 5_000), 5_000);
    }

    #[test]
    fn reads_cpu_time_of_this_process() {
        let cpu = process_cpu_seconds(std::process::id()).unwrap();
        assert!(cpu >= 0.0);
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}
