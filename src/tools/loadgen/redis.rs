//! The Redis side of the side-by-side comparison: the same fingerprints in a Redis set, asked
//! with `SMISMEMBER` in the same batches, over plain RESP on a few TCP connections.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use super::bodies::{Bodies, salt_of};
use super::{LoadgenArgs, LoadgenError, process_cpu_seconds};
use crate::domain::Fingerprint;
use crate::protocol::EpochInfo;
use crate::tools::generate;

/// The set the fingerprints go into.
pub const KEY: &[u8] = b"cd:fingerprints";

/// What a Redis run measured.
#[derive(Debug)]
pub struct RedisRun {
    /// Fingerprints asked.
    pub fingerprints: u64,
    /// Members reported present.
    pub matches: u64,
    /// Commands sent.
    pub requests: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Per-command latency, microseconds.
    pub latency: Histogram<u64>,
}

fn command(out: &mut Vec<u8>, name: &[u8], members: &[Fingerprint]) {
    out.extend_from_slice(format!("*{}\r\n", members.len() + 2).as_bytes());
    for part in [name, KEY] {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    for fp in members {
        out.extend_from_slice(b"$8\r\n");
        out.extend_from_slice(&fp.to_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one RESP reply and returns the sum of its integers (an integer, or an array of them).
async fn read_reply(input: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<u64> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    input.read_line(&mut line).await?;
    let (kind, rest) = line
        .trim_end()
        .split_at_checked(1)
        .ok_or_else(|| bad("empty reply"))?;
    match kind {
        ":" => rest.parse().map_err(|_| bad("bad integer")),
        "*" => {
            let n: usize = rest.parse().map_err(|_| bad("bad array length"))?;
            let mut sum = 0;
            for _ in 0..n {
                // Each element is ":0\r\n" or ":1\r\n".
                let mut element = [0u8; 4];
                input.read_exact(&mut element).await?;
                sum += u64::from(element[1] == b'1');
            }
            Ok(sum)
        }
        _ => Err(bad(&format!("redis error: {}", line.trim_end()))),
    }
}

/// Empties the set and adds `fingerprints` to it, pipelined in large commands.
pub async fn load(addr: &str, fingerprints: &[Fingerprint]) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let (read, write) = stream.into_split();
    let mut input = BufReader::new(read);
    let mut output = BufWriter::with_capacity(1 << 20, write);
    output.write_all(b"*2\r\n$3\r\nDEL\r\n").await?;
    output
        .write_all(format!("${}\r\n", KEY.len()).as_bytes())
        .await?;
    output.write_all(KEY).await?;
    output.write_all(b"\r\n").await?;
    let chunks: Vec<&[Fingerprint]> = fingerprints.chunks(10_000).collect();
    let mut buf = Vec::new();
    // Keep a bounded number of commands unanswered.
    let mut pending = 1usize;
    for chunk in &chunks {
        buf.clear();
        command(&mut buf, b"SADD", chunk);
        output.write_all(&buf).await?;
        pending += 1;
        if pending >= 16 {
            output.flush().await?;
            while pending > 4 {
                read_reply(&mut input).await?;
                pending -= 1;
            }
        }
    }
    output.flush().await?;
    for _ in 0..pending {
        read_reply(&mut input).await?;
    }
    Ok(())
}

/// Sends `SMISMEMBER` with each batch in turn on `connections` connections, each waiting for
/// its reply before the next (closed loop), for `duration`.
pub async fn query(
    addr: &str,
    batches: &[Vec<Fingerprint>],
    connections: usize,
    duration: Duration,
) -> std::io::Result<RedisRun> {
    let commands: std::sync::Arc<Vec<(Vec<u8>, usize)>> = std::sync::Arc::new(
        batches
            .iter()
            .map(|b| {
                let mut out = Vec::new();
                command(&mut out, b"SMISMEMBER", b);
                (out, b.len())
            })
            .collect(),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections.max(1) {
        let commands = std::sync::Arc::clone(&commands);
        let addr = addr.to_owned();
        tasks.spawn(async move {
            let stream = TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (read, mut write) = stream.into_split();
            let mut input = BufReader::with_capacity(1 << 16, read);
            let mut latency = super::drive::histogram();
            let (mut fingerprints, mut matches, mut requests) = (0u64, 0u64, 0u64);
            let mut k = c;
            while Instant::now() < deadline {
                let (cmd, n) = &commands[k % commands.len()];
                k += connections;
                let sent = Instant::now();
                write.write_all(cmd).await?;
                matches += read_reply(&mut input).await?;
                let _ = latency.record(sent.elapsed().as_micros().max(1) as u64);
                fingerprints += *n as u64;
                requests += 1;
            }
            Ok::<_, std::io::Error>((fingerprints, matches, requests, latency))
        });
    }
    let mut run = RedisRun {
        fingerprints: 0,
        matches: 0,
        requests: 0,
        elapsed: Duration::ZERO,
        latency: super::drive::histogram(),
    };
    while let Some(done) = tasks.join_next().await {
        let (f, m, r, l) = done.map_err(std::io::Error::other)??;
        run.fingerprints += f;
        run.matches += m;
        run.requests += r;
        let _ = run.latency.add(l);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// The Redis side: load the set, then query it with the same batches; returns a JSON report.
pub(super) async fn compare(
    args: &LoadgenArgs,
    addr: &str,
    info: &EpochInfo,
    bodies: &Bodies,
) -> Result<serde_json::Value, LoadgenError> {
    let io = |e: std::io::Error| LoadgenError::Epoch {
        url: format!("redis://{addr}"),
        why: e.to_string(),
    };
    let salt = salt_of(info)?;
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
    load(addr, &fingerprints).await.map_err(io)?;
    let load_s = loading.elapsed().as_secs_f64();
    drop(fingerprints);
    let cpu_before = args.server_pid.and_then(process_cpu_seconds);
    let run = query(addr, &bodies.batches, args.max_in_flight, args.duration)
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
