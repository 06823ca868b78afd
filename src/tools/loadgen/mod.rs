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
//! Against a server run with `--insecure-no-auth`, `--anonymous` sends none and needs no key. With
//! `--change-rate`, registry changes go to the admin listener at the same time and the report
//! says how long each took to become visible (see `changes`). `--hdr-log` and `--plot` leave
//! the latencies as an HdrHistogram interval log and as SVG charts (see `output`).
//! `--mode private` drives the private mode's evaluations instead, with blinded elements
//! prepared before the run (see `private`).

mod batch;
mod bodies;
mod changes;
mod drive;
mod hdr_log;
mod output;
mod plot;
mod private;
mod redis;
mod report;
mod timeline;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::client::{Client, ClientConfig};
use crate::domain::secret::{self, KeyFileError};
use crate::domain::{CredentialKey, UserId};
use crate::protocol::{EpochInfo, Format};
use crate::server::config::default_credential_key_path;
pub use batch::BatchSizes;
pub use changes::{ChangeArgs, ChangeMix};
use changes::{ChangeThread, ChangesSummary};
use drive::{Driven, Load};
pub use report::Report;
use timeline::Recording;
pub use workload::Mode;
use workload::{Start, Workload};

/// `--hit-ratio` when not given.
pub const DEFAULT_HIT_RATIO: f64 = 0.5;

/// Settings of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// What each request is, as in `discover --mode`. hashed: salted fingerprints to
    /// `POST /v1/discover`. private: blinded elements to `POST /v1/private/evaluate` under the
    /// key epoch of `GET /v1/private/set`. Blinding costs the client about 90 µs an element, so
    /// a pool as large as the largest batch is blinded once before the run and reused by every
    /// request: the server cannot tell (a blinded element is uniformly random to it) and does
    /// the same work. `--hit-ratio`, `--pool` and `--registry-*` do not apply to it.
    #[arg(long, value_enum, default_value = "hashed")]
    pub mode: Mode,
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
    /// Share of fingerprints that belong to registered numbers [default: 0.5]. Hashed mode
    /// only: in the private mode the server cannot tell a registered number's element.
    #[arg(long)]
    pub hit_ratio: Option<f64>,
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
    pub encoding: Format,
    /// How many users to mint credentials for (requests rotate through them).
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Data directory holding credential.key.
    #[arg(long, env = "CONTACT_DISCOVERY_DATA_DIR", default_value = crate::server::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Credential key file (overrides DATA_DIR/credential.key).
    #[arg(long, conflicts_with = "anonymous")]
    pub credential_key_file: Option<PathBuf>,
    /// Send no credentials, for a server run with `--insecure-no-auth`: no credential key is
    /// read, and every request is the server's one anonymous user.
    #[arg(long)]
    pub anonymous: bool,
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
    /// Read the server's CPU time from /proc/PID/stat and report CPU per fingerprint (per
    /// element in the private mode).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the latencies as an HdrHistogram interval log (compressed V2 histograms, the
    /// format of HistogramLogProcessor, HistogramLogAnalyzer and the HdrHistogram ports): one
    /// histogram per second of scheduled start, values in microseconds, the same requests as
    /// the report's latency (every completed request, whatever its status). Written when the
    /// run ends, via FILE.tmp and a rename; an existing FILE is replaced.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,
    /// Also draw the latencies as an SVG: the percentile spectrum of the run and p50/p99/max
    /// per second, the same requests as the report's latency. Written when the run ends, via
    /// FILE.svg.tmp and a rename; an existing file is replaced.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Query Redis at HOST:PORT instead, for the side-by-side comparison: fills a set with the
    /// fingerprints of the whole generated registry under the server's current salt, then sends
    /// `SMISMEMBER` with the same batches, closed loop on `--max-in-flight` connections.
    #[arg(long)]
    pub redis: Option<String>,
    /// Registry changes sent to the admin listener during the run (off by default).
    #[command(flatten)]
    pub changes: ChangeArgs,
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

/// Runs the load and returns the report.
pub async fn run(args: &LoadgenArgs) -> Result<Report, LoadgenError> {
    validate(args)?;
    let credentials = Credentials::for_run(args)?;
    let tokens = credentials.headers(args)?;
    let epochs = server_client(args, credentials.credential(args, "loadgen-epochs")?)?;
    let Start {
        workload,
        bodies,
        epoch,
    } = Workload::start(args, &epochs).await?;
    let first_epoch = bodies.epoch;
    // Both need the hashed mode's epoch; `validate` refused them with the private mode.
    if let (Some(first), Some(addr)) = (&epoch, &args.redis) {
        let report = redis::compare(args, addr, first, &bodies).await?;
        return Ok(Report::from_json(report));
    }
    let change_thread = match &epoch {
        Some(first) if args.changes.enabled() => {
            let credential = credentials.credential(args, "loadgen-change-poller")?;
            Some(ChangeThread::spawn(args, first, credential).await?)
        }
        _ => None,
    };
    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let load = Load::new(args, epochs, tokens, workload, bodies)
        .map_err(|e| LoadgenError::Invalid(e.to_string()))?;
    let load = Arc::new(load);
    let changes = async {
        match change_thread {
            Some(thread) => thread.run().await.map(Some),
            None => Ok(None),
        }
    };
    let (driven, changes) = tokio::join!(drive::drive(&load), changes);
    let changes = changes?;
    let cpu_after = args.server_pid.and_then(process_cpu_seconds);
    let server_cpu_seconds = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let recording = recording(args, &load);
    output::write(args, &recording)?;
    Ok(report(
        args,
        first_epoch,
        &load,
        driven,
        server_cpu_seconds,
        changes,
        recording,
    ))
}

/// Refuses settings the run cannot use.
fn validate(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err(LoadgenError::Invalid("--rate must be positive".into()));
    }
    if !(0.0..=1.0).contains(&args.hit_ratio.unwrap_or(DEFAULT_HIT_RATIO)) {
        return Err(LoadgenError::Invalid("--hit-ratio must be in 0..=1".into()));
    }
    if args.mode == Mode::Private {
        validate_private(args)?;
    }
    args.changes.validate()?;
    if args.changes.enabled() && args.redis.is_some() {
        return Err(LoadgenError::Invalid(
            "--change-rate does not apply to the Redis comparison (--redis)".into(),
        ));
    }
    if (args.hdr_log.is_some() || args.plot.is_some()) && args.redis.is_some() {
        return Err(LoadgenError::Invalid(
            "--hdr-log and --plot do not apply to the Redis comparison (--redis)".into(),
        ));
    }
    output::check(args)
}

/// Refuses what does not apply to the private mode, rather than ignoring a setting the
/// operator meant.
fn validate_private(args: &LoadgenArgs) -> Result<(), LoadgenError> {
    let refused = if args.hit_ratio.is_some() {
        "--hit-ratio does not apply to --mode private: the server cannot tell a registered \
         number's blinded element from another's (matching happens on the client)"
    } else if args.redis.is_some() {
        "--redis compares the hashed mode's lookups with Redis; it does not apply to --mode \
         private"
    } else if args.changes.enabled() {
        "--change-rate measures visibility through the hashed mode's lookups; it does not \
         apply to --mode private"
    } else {
        return Ok(());
    };
    Err(LoadgenError::Invalid(refused.into()))
}

/// Who the run's requests say they are.
enum Credentials {
    /// Credentials minted with the server's credential key for many users.
    Minted(CredentialKey),
    /// None (`--anonymous`, for a server run with `--insecure-no-auth`).
    Anonymous,
}

impl Credentials {
    /// `--anonymous`, or the credential key (`--credential-key-file`, or the data directory's).
    fn for_run(args: &LoadgenArgs) -> Result<Self, LoadgenError> {
        if args.anonymous {
            return Ok(Self::Anonymous);
        }
        let path = args
            .credential_key_file
            .clone()
            .unwrap_or_else(|| default_credential_key_path(&args.data_dir));
        let key = secret::read_key(&path).map_err(|err| {
            LoadgenError::Invalid(format!(
                "{err} (against a server run with --insecure-no-auth, pass --anonymous)"
            ))
        })?;
        Ok(Self::Minted(CredentialKey::from_bytes(key)))
    }

    /// A credential for `user`, if the run sends any.
    fn credential(&self, args: &LoadgenArgs, user: &str) -> Result<Option<String>, LoadgenError> {
        match self {
            Self::Minted(key) => mint(args, key, user).map(Some),
            Self::Anonymous => Ok(None),
        }
    }

    /// `Authorization` header values for `--users` users (none when anonymous).
    fn headers(&self, args: &LoadgenArgs) -> Result<Vec<String>, LoadgenError> {
        match self {
            Self::Minted(key) => mint_tokens(args, key),
            Self::Anonymous => Ok(Vec::new()),
        }
    }
}

/// A credential for `user`, valid for the run plus an hour.
fn mint(args: &LoadgenArgs, key: &CredentialKey, user: &str) -> Result<String, LoadgenError> {
    let expiry = crate::clock::Clock::System.now_secs() + args.duration.as_secs() + 3_600;
    UserId::parse(user)
        .map(|user| key.mint(&user, expiry))
        .map_err(|e| LoadgenError::Invalid(e.to_string()))
}

/// `Authorization` header values for `--users` users, minted with the credential key.
fn mint_tokens(args: &LoadgenArgs, key: &CredentialKey) -> Result<Vec<String>, LoadgenError> {
    (0..args.users.max(1))
        .map(|i| mint(args, key, &format!("loadgen-{i}")).map(|c| format!("Bearer {c}")))
        .collect()
}

/// The library client, used for what the run asks of the server besides the load: the epoch,
/// or the set's manifest, which needs a credential.
fn server_client(args: &LoadgenArgs, credential: Option<String>) -> Result<Client, LoadgenError> {
    let mut config = ClientConfig::new(args.server.clone(), credential);
    config.format = args.encoding;
    config.timeout = Duration::from_secs(60);
    Client::new(config).map_err(|e| LoadgenError::Invalid(e.to_string()))
}

/// The current epoch, as the library client fetches it.
async fn fetch_epoch(client: &Client, server: &str) -> Result<EpochInfo, LoadgenError> {
    client.fetch_epoch().await.map_err(|e| LoadgenError::Epoch {
        url: format!("{}/v1/epoch", server.trim_end_matches('/')),
        why: e.to_string(),
    })
}

/// What the finished run recorded over time; the tally's timeline is moved out, not copied
/// (a long run holds one histogram per second).
fn recording(args: &LoadgenArgs, load: &Load) -> Recording {
    Recording {
        started_at: load.started_at,
        duration: args.duration,
        latency: load.tally.latency.lock().clone(),
        timeline: std::mem::take(&mut *load.tally.timeline.lock()),
    }
}

/// The report of a finished run.
fn report(
    args: &LoadgenArgs,
    first_epoch: u64,
    load: &Load,
    driven: Driven,
    server_cpu_seconds: Option<f64>,
    changes: Option<ChangesSummary>,
    recording: Recording,
) -> Report {
    let tally = &load.tally;
    Report::new(report::Inputs {
        args: args.clone(),
        scheduled: driven.scheduled,
        late: driven.late,
        sending: driven.sending,
        elapsed: driven.elapsed,
        latency: recording.latency,
        statuses: tally.statuses.lock().clone(),
        items_answered: tally.items_answered.load(Ordering::Relaxed),
        expected_hits: tally.expected_hits.load(Ordering::Relaxed),
        matches: tally.matches.load(Ordering::Relaxed),
        server_cpu_seconds,
        timeline: recording.timeline,
        first_epoch,
        final_epoch: load.current_epoch(),
        resent_after_410: tally.resent_after_410.load(Ordering::Relaxed),
        changes,
    })
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

/// `loadgen`'s flags parsed as the command line would, for the tests of this module's parts.
#[cfg(test)]
pub(super) fn parse_args(flags: &[&str]) -> LoadgenArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }
    Cli::try_parse_from([&["loadgen"], flags].concat())
        .unwrap()
        .args
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What does not apply to the private mode is refused before anything is sent, naming the
    /// flag; the same settings pass in the hashed mode.
    #[test]
    fn the_private_mode_refuses_what_does_not_apply_to_it() {
        let check = |flags: &[&str]| validate(&parse_args(flags)).map_err(|e| e.to_string());
        assert!(check(&["--mode", "private"]).is_ok());
        for (flag, value) in [
            ("--hit-ratio", "0.5"),
            ("--redis", "127.0.0.1:6379"),
            ("--change-rate", "10"),
        ] {
            let refused = check(&["--mode", "private", flag, value]).unwrap_err();
            assert!(refused.contains(flag), "{refused}");
            assert!(refused.contains("--mode private"), "{refused}");
            assert!(check(&[flag, value]).is_ok(), "{flag} in the hashed mode");
        }
    }

    #[test]
    fn reads_cpu_time_of_this_process() {
        let cpu = process_cpu_seconds(std::process::id()).unwrap();
        assert!(cpu >= 0.0);
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}
