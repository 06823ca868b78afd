//! How long `Registry::apply` waits while the registry folds its overlay, compacts its log and
//! hands a view to an index build, on a large registry. Not part of the suite (`#[ignore]`): it
//! needs a data directory made beforehand and minutes of a release build.
//!
//! ```text
//! contact-discovery registry generate --count 100000000 --seed 1 \
//!   | contact-discovery registry import - --data-dir D
//! cp -r D D.run   # the run writes to its directory
//! REGISTRY_STALLS_DIR=D.run cargo test --release --test registry_stalls -- --ignored --nocapture
//! ```
//!
//! Settings (environment): `REGISTRY_STALLS_SECONDS` (60), `REGISTRY_STALLS_RATE` requests/s
//! (250), `REGISTRY_STALLS_BATCH` operations per request (20), `REGISTRY_STALLS_COMPACT_MB`
//! (16; the log size that triggers compaction, 64 in production), `REGISTRY_STALLS_BUILD_AT`
//! seconds (20; when a simulated index build takes a view and holds it for 15 s).
//!
//! Open loop: request k is due at start + k / rate; its latency is measured from when it was
//! due, so a stall counts for every request queued behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contact_discovery::domain::E164;
use contact_discovery::store::registry::{ChangeSink, Discoverability, Op, Registry};

// The binary's allocator (wipes freed blocks; its realloc copies), so memory figures match.
#[path = "../src/wipe_alloc.rs"]
#[allow(dead_code)]
mod wipe_alloc;
#[global_allocator]
static ALLOC: wipe_alloc::WipeOnFree = wipe_alloc::WipeOnFree;

struct Counting(AtomicU64);

impl ChangeSink for Counting {
    fn discoverability_changed(&self, changes: &[Discoverability]) {
        self.0.fetch_add(changes.len() as u64, Ordering::Relaxed);
    }
    fn replaced(&self) {}
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// xorshift: random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
#[ignore = "needs REGISTRY_STALLS_DIR with a large registry and a release build"]
fn apply_latency_while_folding_and_compacting() {
    let dir = std::env::var("REGISTRY_STALLS_DIR").expect("REGISTRY_STALLS_DIR");
    let seconds = env("REGISTRY_STALLS_SECONDS", 60);
    let rate = env("REGISTRY_STALLS_RATE", 250);
    let batch = env("REGISTRY_STALLS_BATCH", 20) as usize;
    let compact_mb = env("REGISTRY_STALLS_COMPACT_MB", 16);
    let build_at = env("REGISTRY_STALLS_BUILD_AT", 20);

    let opened = Instant::now();
    let (registry, report) = Registry::open(std::path::Path::new(&dir)).unwrap();
    let registry = Arc::new(registry.with_compact_bytes(compact_mb << 20));
    println!(
        "opened {} entries + {} log records in {:.2} s; RSS {} MB",
        report.snapshot_entries,
        report.log_records,
        opened.elapsed().as_secs_f64(),
        status_kb("VmRSS:") / 1024
    );
    let sink = Arc::new(Counting(AtomicU64::new(0)));
    registry.subscribe(Arc::clone(&sink) as Arc<dyn ChangeSink>);

    // A simulated index build: takes a view at `build_at` and holds it for 15 s.
    let builder = {
        let registry = Arc::clone(&registry);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(build_at));
            let started = Instant::now();
            let (numbers, _, ()) = registry.discoverable_numbers_with(|| ());
            let took = started.elapsed();
            std::thread::sleep(Duration::from_secs(15));
            (took, numbers.len())
        })
    };

    // When the compaction's files come and go (to line stalls up with them).
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (dir, watching) = (std::path::PathBuf::from(&dir), Arc::clone(&watching));
        let start = Instant::now();
        std::thread::spawn(move || {
            let mut seen = [false; 2];
            let mut events = Vec::new();
            while watching.load(Ordering::Relaxed) {
                for (i, name) in ["registry.log.prev", "registry.snap.tmp"]
                    .iter()
                    .enumerate()
                {
                    let now = dir.join(name).exists();
                    if now != seen[i] {
                        seen[i] = now;
                        let what = if now { "appears" } else { "goes" };
                        events.push(format!(
                            "{:.2} s {name} {what}",
                            start.elapsed().as_secs_f64()
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            events
        })
    };
    let cpu_before = cpu_seconds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut call_us: Vec<u64> = Vec::new();
    let mut slow: Vec<(f64, f64)> = Vec::new();
    let start = Instant::now();
    let total = seconds * rate;
    for k in 0..total {
        let due = start + Duration::from_micros(k * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ops: Vec<Op> = (0..batch)
            .map(|_| {
                let r = rng.next();
                // National numbers of +1, +44, +49 (where the generator puts most).
                let number = match r % 3 {
                    0 => 10_000_000_000 + (r >> 8) % 9_000_000_000,
                    1 => 447_000_000_000 + (r >> 8) % 99_999_999,
                    _ => 491_500_000_000 + (r >> 8) % 999_999_999,
                };
                let n = E164::from_u64(number).unwrap();
                match (r >> 4) % 3 {
                    0 => Op::Add(n),
                    1 => Op::Remove(n),
                    _ => Op::Hide(n),
                }
            })
            .collect();
        let called = Instant::now();
        registry.apply(&ops).unwrap();
        let done = Instant::now();
        call_us.push(done.duration_since(called).as_micros() as u64);
        if done.duration_since(called) > Duration::from_millis(50) {
            slow.push((
                called.duration_since(start).as_secs_f64(),
                done.duration_since(called).as_secs_f64() * 1000.0,
            ));
        }
        latencies_us.push(done.duration_since(due).as_micros() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let (build_view, build_len) = builder.join().unwrap();
    watching.store(false, Ordering::Relaxed);
    for event in watcher.join().unwrap() {
        println!("{event}");
    }
    for (at, ms) in &slow {
        println!("apply at {at:.2} s took {ms:.0} ms");
    }

    let summary = |name: &str, v: &mut Vec<u64>| {
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
        let over = |ms: u64| v.iter().filter(|&&x| x > ms * 1000).count();
        println!(
            "{name}: n {} p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms; >50 ms {} >200 ms {}",
            v.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            *v.last().unwrap() as f64 / 1000.0,
            over(50),
            over(200),
        );
    };
    println!(
        "{} requests x {} ops in {:.1} s = {:.0} changes/s; {} discoverability changes to the sink",
        total,
        batch,
        elapsed,
        (total as usize * batch) as f64 / elapsed,
        sink.0.load(Ordering::Relaxed)
    );
    summary("latency from due time", &mut latencies_us);
    summary("apply call", &mut call_us);
    println!(
        "view for the build: {:.3} s ({} numbers); process CPU {:.1} s = {:.0} % of one core; VmHWM {} MB",
        build_view.as_secs_f64(),
        build_len,
        cpu,
        100.0 * cpu / elapsed,
        status_kb("VmHWM:") / 1024
    );
}
