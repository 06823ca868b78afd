//! Request bytes do not stay in the server's memory after the connection closes.
//!
//! The real binary runs as a child process; a binary and a JSON `POST /v1/discover` carrying
//! random marker fingerprints go to it over a real socket, the connection closes, and then this
//! test reads every readable and writable mapping of the child (`/proc/PID/maps` and
//! `/proc/PID/mem`: heap, anonymous memory, thread stacks, `.data`/`.bss`) and counts the
//! markers. hyper reads request bodies into its connection buffer and hands out chunks that
//! share it, so only freeing that buffer through the wiping global allocator (`src/wipe_alloc.rs`)
//! removes them; the handler's own wipe never sees them.
//!
//! Positive control (needs the `test-hooks` feature, which the test suite enables): the same
//! run with the wiping allocator switched off (`CONTACT_DISCOVERY_NO_WIPE_ON_FREE=1`, honoured
//! only by test-hooks builds) must find copies, so the scanner demonstrably sees them.
//!
//! Reading another process's memory needs ptrace permission: the test runs as root or as the
//! child's parent (the child is non-dumpable, so only root or CAP_SYS_PTRACE can read it).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Markers one run looks for: the binary request's fingerprint, the JSON request's fingerprint
/// and that fingerprint's base64url text.
struct Markers {
    binary: [u8; 8],
    json: [u8; 8],
    json_text: String,
}

impl Markers {
    fn random() -> Self {
        let mut binary = [0u8; 8];
        let mut json = [0u8; 8];
        rand::Rng::fill(&mut rand::rng(), &mut binary);
        rand::Rng::fill(&mut rand::rng(), &mut json);
        // Never all zeroes (what a wiped buffer holds).
        binary[0] |= 1;
        json[0] |= 1;
        let json_text = URL_SAFE_NO_PAD.encode(json);
        Markers {
            binary,
            json,
            json_text,
        }
    }

    fn needles(&self) -> [&[u8]; 3] {
        [&self.binary, &self.json, self.json_text.as_bytes()]
    }
}

/// One HTTP/1.1 exchange on a fresh connection that the server closes after answering; returns
/// the status line.
fn exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    drop(stream);
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_owned()
}

fn post(addr: &str, content_type: &str, body: &[u8]) -> String {
    let mut request = format!(
        "POST /v1/discover HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(addr, &request)
}

fn current_epoch(addr: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /v1/epoch HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    json["epoch"].as_u64().expect("epoch")
}

/// Marker counts in the child's memory, thread stacks apart from everything else.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Residue {
    /// Heap, anonymous mappings, `.data`/`.bss`: binary fingerprint, JSON fingerprint, text.
    heap: [usize; 3],
    /// The stacks of the process's threads (the mappings that hold a thread's stack pointer).
    stacks: [usize; 3],
}

/// The stack pointer of every thread of `pid` (all idle in a system call while it is scanned).
fn stack_pointers(pid: i32) -> Vec<u64> {
    let mut sps = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("syscall");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        // "nr arg1 .. arg6 sp pc", or "-1 sp pc" outside a system call, or "running".
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() >= 3
            && let Some(sp) = fields[fields.len() - 2].strip_prefix("0x")
        {
            sps.push(u64::from_str_radix(sp, 16).unwrap());
        }
    }
    sps
}

/// Counts each needle in every readable and writable mapping of process `pid`.
fn scan_memory(pid: i32, needles: &[&[u8]; 3]) -> Residue {
    let stacks = stack_pointers(pid);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = File::open(format!("/proc/{pid}/mem")).expect("ptrace read access to the child");
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(1);
    let mut residue = Residue::default();
    let mut scanned = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        if matches!(
            fields.get(5),
            Some(&("[vvar]" | "[vsyscall]" | "[vvar_vclock]"))
        ) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let is_stack =
            fields.get(5) == Some(&"[stack]") || stacks.iter().any(|sp| (start..end).contains(sp));
        let counts = if is_stack {
            &mut residue.stacks
        } else {
            &mut residue.heap
        };
        // Read in chunks that overlap by one needle, so a match across a chunk edge counts once.
        let mut at = start;
        let mut carry: Vec<u8> = Vec::new();
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let Ok(got) = mem.read_at(&mut buf[..want], at) else {
                break; // an unreadable region (guard page): skip the rest of the mapping
            };
            if got == 0 {
                break;
            }
            scanned += got as u64;
            let mut hay = std::mem::take(&mut carry);
            let carried = hay.len();
            hay.extend_from_slice(&buf[..got]);
            for (count, needle) in counts.iter_mut().zip(needles) {
                // Matches starting in the carried part were counted with the previous chunk.
                *count += hay
                    .windows(needle.len())
                    .enumerate()
                    .filter(|(i, w)| w == needle && (carried == 0 || *i + needle.len() > carried))
                    .count();
            }
            carry = hay[hay.len().saturating_sub(longest - 1)..].to_vec();
            at += got as u64;
        }
    }
    assert!(
        scanned > 1 << 20,
        "scanned only {scanned} bytes of the child"
    );
    assert!(
        stacks.len() >= 2,
        "found the stacks of {} threads",
        stacks.len()
    );
    residue
}

/// Starts the server (with `env`), sends both requests over fresh connections that close, and
/// returns the marker counts found in its memory: the first scan with none, or the last one
/// after 5 s (the server drops a connection's buffers a moment after it closes).
fn residue_after_requests(env: &[(&str, &str)]) -> Residue {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server_with_env(dir.path(), &["--insecure-no-auth"], env);
    let markers = Markers::random();
    let epoch = current_epoch(&server.public);

    let mut binary = epoch.to_be_bytes().to_vec();
    for _ in 0..4 {
        binary.extend_from_slice(&markers.binary);
    }
    let status = post(&server.public, "application/octet-stream", &binary);
    assert!(status.contains(" 200 "), "binary request: {status}");
    let text = &markers.json_text;
    let json = format!(r#"{{"epoch":{epoch},"fingerprints":["{text}","{text}"]}}"#);
    let status = post(&server.public, "application/json", json.as_bytes());
    assert!(status.contains(" 200 "), "JSON request: {status}");

    let started = Instant::now();
    let residue = loop {
        let residue = scan_memory(server.pid(), &markers.needles());
        if residue.heap == [0, 0, 0] || started.elapsed() > Duration::from_secs(5) {
            break residue;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    server.kill9();
    residue
}

#[test]
fn request_bytes_are_gone_from_the_server_heap_after_the_connection_closes() {
    // Positive control: without the wiping allocator the scanner finds the request bytes that
    // hyper's freed read buffers still hold.
    if cfg!(feature = "test-hooks") {
        let residue = residue_after_requests(&[("CONTACT_DISCOVERY_NO_WIPE_ON_FREE", "1")]);
        eprintln!("without wiping: {residue:?}");
        assert!(
            residue.heap.iter().sum::<usize>() > 0,
            "the scanner found no marker in a server that does not wipe freed memory: {residue:?}"
        );
    }

    let residue = residue_after_requests(&[]);
    // Reported, not asserted: what stays in thread stacks is out of this fix's reach (PRIVACY.md).
    eprintln!("with wiping: {residue:?}");
    assert_eq!(
        residue.heap,
        [0, 0, 0],
        "copies of the binary fingerprint, the JSON fingerprint and its base64url text left in \
         the server's heap after the connections closed"
    );
}
