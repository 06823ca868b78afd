//! The real binary as a child process: kill -9 durability, SIGTERM, core dumps, registry CLI,
//! `loadgen` with registry changes and its output files.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;

use common::{ADMIN_TOKEN, BIN, Server, export, start_server, start_server_with_env};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post_change(
    client: &reqwest::Client,
    admin: &str,
    add: &[String],
    remove: &[String],
) -> Option<u16> {
    let response = client
        .post(format!("http://{admin}/admin/v1/registrations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "add": add, "remove": remove }))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// A number's state in the registry, as `registry export` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Absent,
    Discoverable,
    Hidden,
}

/// An admin request that was sent but not acknowledged when the server died: after restart its
/// numbers must all be in their requested state or all in their previous one.
struct InDoubt {
    numbers: Vec<String>,
    before: Vec<Reg>,
    after: Vec<Reg>,
}

/// Sends one change request; `Some(status)` if the server answered, `None` if the connection
/// failed (the server was killed before or while answering).
async fn post_ops(client: &reqwest::Client, admin: &str, ops: &[(String, Reg)]) -> Option<u16> {
    let list = |want: Reg| -> Vec<&str> {
        ops.iter()
            .filter(|(_, r)| *r == want)
            .map(|(n, _)| n.as_str())
            .collect()
    };
    let body = serde_json::json!({
        "add": list(Reg::Discoverable),
        "remove": list(Reg::Absent),
        "hide": list(Reg::Hidden),
    });
    let response = client
        .post(format!("http://{admin}/admin/v1/registrations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// One writer's loop: random multi-number requests over its own pool of numbers, one at a time,
/// until the server stops answering. Returns its acknowledged count and the request in doubt.
async fn torture_writer(
    client: reqwest::Client,
    admin: String,
    mut known: std::collections::BTreeMap<String, Reg>,
    seed: u64,
) -> (
    std::collections::BTreeMap<String, Reg>,
    u64,
    Option<InDoubt>,
) {
    use rand::SeedableRng;
    use rand::seq::IndexedRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let pool: Vec<String> = known.keys().cloned().collect();
    let mut acked = 0u64;
    loop {
        let k = rng.random_range(1..=4);
        let numbers: Vec<String> = pool.choose_multiple(&mut rng, k).cloned().collect();
        let before: Vec<Reg> = numbers.iter().map(|n| known[n]).collect();
        let after: Vec<Reg> = before
            .iter()
            .map(|b| {
                let choices: Vec<Reg> = [Reg::Absent, Reg::Discoverable, Reg::Hidden]
                    .into_iter()
                    .filter(|r| r != b)
                    .collect();
                *choices.choose(&mut rng).unwrap()
            })
            .collect();
        let ops: Vec<(String, Reg)> = numbers.iter().cloned().zip(after.clone()).collect();
        match post_ops(&client, &admin, &ops).await {
            Some(200) => {
                for (n, r) in &ops {
                    known.insert(n.clone(), *r);
                }
                acked += 1;
            }
            Some(other) => panic!("admin request answered {other}, not 200"),
            None => {
                let doubt = InDoubt {
                    numbers,
                    before,
                    after,
                };
                return (known, acked, Some(doubt));
            }
        }
    }
}

fn exported_states(data_dir: &Path) -> std::collections::HashMap<String, Reg> {
    export(data_dir)
        .into_iter()
        .map(|line| match line.split_once(' ') {
            Some((n, "hidden")) => (n.to_owned(), Reg::Hidden),
            None => (line, Reg::Discoverable),
            Some(_) => panic!("unexpected export line {line}"),
        })
        .collect()
}

/// Crash torture: 100 times, start the server, let several writers add, remove and hide numbers
/// in multi-number requests concurrently, and SIGKILL it at a random moment. After each kill,
/// every acknowledged change is present and every request in flight at the kill is applied
/// whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9() {
    crash_torture("crash torture", 100, 60, &[]).await;
}

/// The same with the log compacted every 256 bytes (a few requests; test builds only: the
/// threshold comes from `CONTACT_DISCOVERY_TEST_COMPACT_BYTES`) and kills up to 250 ms in, so
/// that kills land while the log is rotated, the snapshot written on the background thread and
/// `registry.log.prev` deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs --features test-hooks")]
async fn acknowledged_changes_survive_kill_9_during_compactions() {
    let dir = crash_torture(
        "crash torture with compactions",
        40,
        250,
        &[("CONTACT_DISCOVERY_TEST_COMPACT_BYTES", "256")],
    )
    .await;
    assert!(
        dir.path().join("registry.snap").exists(),
        "the log was compacted into a snapshot"
    );
}

/// Runs `cycles` kill -9 cycles, each killing the server up to `kill_within_ms` after its start,
/// with `env` set for the server; returns its data directory.
async fn crash_torture(
    label: &str,
    cycles: u64,
    kill_within_ms: u64,
    env: &[(&str, &str)],
) -> tempfile::TempDir {
    const WRITERS: u64 = 4;
    const POOL: u64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut known: Vec<std::collections::BTreeMap<String, Reg>> = (0..WRITERS)
        .map(|w| {
            (0..POOL)
                .map(|i| (format!("+1555{:03}{:04}", 100 + w, i), Reg::Absent))
                .collect()
        })
        .collect();
    let (mut acked_total, mut doubt_applied, mut doubt_dropped) = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    // Kills that left a rotated log behind (a compaction not finished).
    let mut killed_mid_compaction = 0u64;
    for cycle in 0..cycles {
        let server = start_server_with_env(dir.path(), &[], env);
        let writers: Vec<_> = known
            .iter()
            .enumerate()
            .map(|(w, state)| {
                tokio::spawn(torture_writer(
                    client.clone(),
                    server.admin.clone(),
                    state.clone(),
                    cycle * WRITERS + w as u64,
                ))
            })
            .collect();
        let kill_after = Duration::from_millis(rand::rng().random_range(0..kill_within_ms));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        killed_mid_compaction += u64::from(dir.path().join("registry.log.prev").exists());
        let present = exported_states(dir.path());
        for (w, writer) in writers.into_iter().enumerate() {
            let (state, acked, doubt) = writer.await.unwrap();
            acked_total += acked;
            let in_doubt: Vec<&String> = doubt.iter().flat_map(|d| &d.numbers).collect();
            for (number, want) in &state {
                if in_doubt.contains(&number) {
                    continue;
                }
                let got = present.get(number).copied().unwrap_or(Reg::Absent);
                assert_eq!(
                    got, *want,
                    "cycle {cycle}: acknowledged state of {number} lost"
                );
            }
            let mut state = state;
            if let Some(d) = doubt {
                let got: Vec<Reg> = d
                    .numbers
                    .iter()
                    .map(|n| present.get(n).copied().unwrap_or(Reg::Absent))
                    .collect();
                if got == d.after {
                    doubt_applied += 1;
                } else if got == d.before {
                    doubt_dropped += 1;
                } else {
                    panic!(
                        "cycle {cycle}: request half-applied: before {:?}, requested {:?}, found {got:?}",
                        d.before, d.after
                    );
                }
                for (n, r) in d.numbers.iter().zip(got) {
                    state.insert(n.clone(), r);
                }
            }
            known[w] = state;
        }
    }
    eprintln!(
        "{label}: {cycles} kill -9 cycles, {WRITERS} concurrent writers, {acked_total} \
         acknowledged requests all present, in-flight at kill: {doubt_applied} applied whole, \
         {doubt_dropped} not applied, 0 half-applied, {killed_mid_compaction} kills left \
         registry.log.prev, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked_total > cycles,
        "the writers got acknowledgements ({acked_total})"
    );
    dir
}

/// A log tail with garbage appended, or with a flipped byte in its last record, is detected on
/// start, truncated to the last good record, and reported with a warning in the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_tail_is_truncated_on_start_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let numbers = ["+15550000001", "+15550000002", "+15550000003"];
    let server = start_server(dir.path(), &[]);
    for n in numbers {
        let status = post_change(&client, &server.admin, &[n.to_owned()], &[]).await;
        assert_eq!(status, Some(200));
    }
    server.kill9();
    let log_path = dir.path().join("registry.log");
    let clean = std::fs::read(&log_path).unwrap();
    let truncation_warned = |server: &Server| {
        server
            .log_lines()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("truncating to the last good record"))
    };

    // Garbage after the last record: every acknowledged record survives, the garbage goes.
    let mut appended = clean.clone();
    appended.extend_from_slice(&[0x17, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(&log_path, &appended).unwrap();
    let server = start_server(dir.path(), &[]);
    assert!(truncation_warned(&server), "{:?}", server.log_lines());
    server.kill9();
    assert_eq!(
        std::fs::read(&log_path).unwrap(),
        clean,
        "cut back to the good records"
    );
    assert_eq!(export(dir.path()), numbers);

    // A flipped byte in the last record: its checksum fails, it is dropped, the rest stays.
    let mut flipped = clean.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    std::fs::write(&log_path, &flipped).unwrap();
    let server = start_server(dir.path(), &[]);
    assert!(truncation_warned(&server), "{:?}", server.log_lines());
    let status = post_change(&client, &server.admin, &["+15550000004".to_owned()], &[]).await;
    assert_eq!(status, Some(200), "writes continue after a truncation");
    server.kill9();
    assert_eq!(
        export(dir.path()),
        ["+15550000001", "+15550000002", "+15550000004"]
    );

    // A clean log gives no warning.
    let server = start_server(dir.path(), &[]);
    assert!(!truncation_warned(&server));
    server.kill9();
}

/// SIGTERM drains, flushes and exits 0; the registrations are there after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let mut server = start_server(dir.path(), &[]);
    let status = post_change(&client, &server.admin, &["+4915112345678".to_owned()], &[]).await;
    assert_eq!(status, Some(200));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.pid()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(export(dir.path()), vec!["+4915112345678".to_owned()]);
}

/// `loadgen --anonymous` runs against a server started with `--insecure-no-auth` from a
/// directory without a credential key; without the flag it says what to do.
#[test]
fn loadgen_runs_anonymously_against_an_insecure_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--insecure-no-auth"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let loadgen = |extra: &[&str]| {
        Command::new(BIN)
            .args(["loadgen", "--server"])
            .arg(format!("http://{}", server.public))
            .arg("--data-dir")
            .arg(elsewhere.path())
            .args(["--registry-size", "100", "--pool", "100", "--rate", "20"])
            .args(["--duration", "500ms", "--batch", "5", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = loadgen(&[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--anonymous"), "{said}");
    let out = loadgen(&["--anonymous"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["scheduled"], 10, "{report}");
    assert_eq!(report["statuses"]["200"], 10, "{report}");
    assert!(
        !elsewhere.path().join("credential.key").exists(),
        "no key was made or needed"
    );
    server.kill9();
}

/// `loadgen --mode private` as typed: `--hit-ratio` is refused before anything is sent (it
/// does not apply), and a run against the binary gets every evaluation answered 200 with as
/// many elements as it sent.
#[test]
fn loadgen_drives_the_private_mode_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--insecure-no-auth"]);
    let loadgen = |extra: &[&str]| {
        Command::new(BIN)
            .args(["loadgen", "--server"])
            .arg(format!("http://{}", server.public))
            .args(["--anonymous", "--mode", "private", "--rate", "20"])
            .args(["--duration", "500ms", "--batch", "5", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = loadgen(&["--hit-ratio", "0.3"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--hit-ratio does not apply to --mode private"),
        "{said}"
    );
    let out = loadgen(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "private", "{report}");
    assert_eq!(report["statuses"]["200"], 10, "{report}");
    assert_eq!(report["elements_answered"], 50, "{report}");
    server.kill9();
}

/// SIGTERM while a request is in flight: the server stops accepting new connections, finishes
/// the request (200, with the right answer), flushes and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let mut server = start_server(dir.path(), &["--insecure-no-auth"]);
    let registered = "+4915112345678";
    let status = post_change(&client, &server.admin, &[registered.to_owned()], &[]).await;
    assert_eq!(status, Some(200));
    let epoch = server.epoch(&client).await;
    let salt = contact_discovery::protocol::decode_salt(epoch["salt"].as_str().unwrap()).unwrap();
    let fp = contact_discovery::domain::Fingerprint::compute(
        &salt,
        contact_discovery::domain::E164::parse(registered).unwrap(),
    );
    let mut body = epoch["epoch"].as_u64().unwrap().to_be_bytes().to_vec();
    body.extend_from_slice(&fp.to_bytes());

    // The request's head and half its body arrive; the rest is held back.
    let mut stream = tokio::net::TcpStream::connect(&server.public)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/discover HTTP/1.1\r\nhost: {}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n",
        server.public,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..8]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.pid()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    // New connections are refused once the signal is handled.
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(&server.public)
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting connections after SIGTERM");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );

    // The request in flight completes normally.
    stream.write_all(&body[8..]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the response arrives and the connection closes")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let bitmap = &response[split + 4..];
    assert_eq!(
        bitmap,
        [&body[..8], &[1u8][..]].concat(),
        "the registered number is found"
    );

    let exit = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(export(dir.path()), vec![registered.to_owned()]);
}

/// The server starts with core dumps disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_dumps_are_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    match std::fs::read_to_string(format!("/proc/{}/limits", server.pid())) {
        Ok(limits) => {
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .expect("core limit listed");
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&fields[4..6], &["0", "0"], "{line}");
        }
        // A non-dumpable process's /proc files belong to root: unreadable to others proves it.
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied),
    }
    server.kill9();
}

/// Keys generated on first start are private to the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_are_mode_0600_and_the_cli_credential_is_accepted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--demo"]);
    for name in ["server.secret", "credential.key"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let out = Command::new(BIN)
        .args([
            "credential",
            "--user",
            "cli-user",
            "--ttl",
            "10m",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let client = client();
    let mut body = 0u64.to_be_bytes().to_vec();
    body.extend_from_slice(&[0u8; 8]);
    let epoch = server.epoch(&client).await;
    body[..8].copy_from_slice(&epoch["epoch"].as_u64().unwrap().to_be_bytes());
    let send = |token: String, body: Vec<u8>| {
        client
            .post(format!("http://{}/v1/discover", server.public))
            .header("content-type", "application/octet-stream")
            .bearer_auth(token)
            .body(body)
            .send()
    };
    assert_eq!(
        send(token.clone(), body.clone()).await.unwrap().status(),
        200
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(send(forged, body).await.unwrap().status(), 401);
    server.kill9();
}

fn run(args: &[&str], data_dir: &Path, stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn registry_import_is_all_or_nothing_and_reports_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("numbers.txt");
    std::fs::write(
        &file,
        "+15550000001\n# comment\n\n15550000002\n+15550000003 hidden\n+0123\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = run(&["registry", "import", file.to_str().unwrap()], &data, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("numbers.txt:4:"), "{stderr}");
    assert!(stderr.contains("numbers.txt:6:"), "{stderr}");
    assert!(export(&data).is_empty(), "nothing imported");

    let out = run(
        &[
            "registry",
            "import",
            "--skip-invalid",
            file.to_str().unwrap(),
        ],
        &data,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(export(&data), vec!["+15550000001", "+15550000003 hidden"]);
    // A summary in words, not Rust's debug form of the counts.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry now holds 1 discoverable and 1 hidden"),
        "{stderr}"
    );
}

#[test]
fn generated_numbers_import_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let generated = Command::new(BIN)
        .args(["registry", "generate", "--count", "2000", "--seed", "9"])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let text = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(text.lines().count(), 2000);
    let out = run(&["registry", "import", "-"], &data, Some(&text));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected: Vec<&str> = text.lines().collect();
    expected.sort_by_key(|n| n[1..].parse::<u64>().unwrap());
    assert_eq!(export(&data), expected);
}

#[test]
fn registry_commands_refuse_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["registry", "export", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    server.kill9();
}

/// The README's demo path: `serve --demo`, then `discover` on the example address book.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_cli_finds_the_registered_example_contacts() {
    use contact_discovery::client::addressbook::read_file;
    use contact_discovery::client::normalise::{Normaliser, normalise_book};

    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--demo"]);
    let token = Command::new(BIN)
        .args(["credential", "--user", "readme-reader", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let registered: std::collections::HashSet<_> =
        contact_discovery::tools::demo::registered_example_numbers()
            .into_iter()
            .collect();
    let book_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/contacts.vcf");
    let contacts = read_file(&book_path).unwrap();
    let book = normalise_book(&contacts, &Normaliser::new(Some("DE")).unwrap());
    let expected = book
        .numbers()
        .iter()
        .filter(|n| registered.contains(n))
        .count();
    assert!(expected > 0 && expected < book.numbers().len());

    for encoding in ["binary", "json"] {
        let out = Command::new(BIN)
            .args(["discover", "--server", &format!("http://{}", server.public)])
            .args([
                "--credential",
                &token,
                "--region",
                "DE",
                "--json",
                "--encoding",
                encoding,
            ])
            .arg("--contacts")
            .arg(&book_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["summary"]["contacts"], contacts.len());
        assert_eq!(report["summary"]["registered"], expected);
        assert_eq!(report["summary"]["unparseable"], book.unparseable().len());
        for (contact, shown) in contacts.iter().zip(report["contacts"].as_array().unwrap()) {
            assert_eq!(shown["name"], contact.name.as_str());
        }
    }

    // The text form ends with the summary line.
    let out = Command::new(BIN)
        .args(["discover", "--server", &format!("http://{}", server.public)])
        .args(["--credential", &token, "--region", "DE", "--contacts"])
        .arg(&book_path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.contains(&format!("{} registered", expected)), "{last}");
    assert!(last.contains("1 unparseable"), "{last}");

    // Without --region the locale's region is used, as phones do, and the run says so.
    let by_locale = |lang: &str| {
        Command::new(BIN)
            .args(["discover", "--server", &format!("http://{}", server.public)])
            .args(["--credential", &token, "--json", "--contacts"])
            .arg(&book_path)
            .env_remove("LC_ALL")
            .env_remove("LC_TELEPHONE")
            .env("LANG", lang)
            .output()
            .unwrap()
    };
    let german = by_locale("de_DE.UTF-8");
    assert!(german.status.success());
    let said = String::from_utf8_lossy(&german.stderr);
    assert!(said.contains("read as DE (from LANG"), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&german.stdout).unwrap();
    assert_eq!(report["summary"]["registered"], expected);
    assert_eq!(report["summary"]["unparseable"], book.unparseable().len());
    let no_region = by_locale("C.UTF-8");
    let said = String::from_utf8_lossy(&no_region.stderr);
    assert!(said.contains("no region"), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&no_region.stdout).unwrap();
    assert!(
        report["summary"]["unparseable"].as_u64().unwrap() > book.unparseable().len() as u64,
        "national numbers are unreadable without a region: {report}"
    );

    // A sheet with a phone column of its own name: refused with a hint, read with the hint.
    let sheet = book_path.with_file_name("sheet.csv");
    std::fs::write(&sheet, "Who,Handy\nAnna,+4915112345678\n").unwrap();
    let ask = |extra: &[&str]| {
        Command::new(BIN)
            .args(["discover", "--server", &format!("http://{}", server.public)])
            .args(["--credential", &token, "--json", "--contacts"])
            .arg(&sheet)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = ask(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--phone-column"));
    let read = ask(&["--phone-column", "handy"]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(report["summary"]["unique_numbers"], 1, "{report}");

    // A vCard 2.1 export in Windows-1252, ISO-8859-1 and UTF-8 (issue 15): the names come out
    // right, and the card whose charset the reader does not know is named on stderr.
    let charsets =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/addressbooks/charsets-2.1.vcf");
    let out = Command::new(BIN)
        .args(["discover", "--server", &format!("http://{}", server.public)])
        .args([
            "--credential",
            &token,
            "--region",
            "DE",
            "--json",
            "--contacts",
        ])
        .arg(&charsets)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning: contact 6 in") && said.contains("\"X-MAC-KLINGON\""),
        "{said}"
    );
    assert_eq!(said.matches("unknown character set").count(), 1, "{said}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = report["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..2], ["Jürgen Müller", "€-Büro Œuvre"]);
    assert_eq!(report["summary"]["unique_numbers"], 7, "{report}");
    assert_eq!(report["summary"]["unparseable"], 0, "{report}");

    // Without a credential the CLI fails with the server's reason, not a crash.
    let out = Command::new(BIN)
        .args([
            "discover",
            "--server",
            &format!("http://{}", server.public),
            "--contacts",
        ])
        .arg(&book_path)
        .env_remove("CONTACT_DISCOVERY_CREDENTIAL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing_credential"));
    server.kill9();
}

/// The Dockerfile's `HEALTHCHECK` command line, run against a real server: 0 while it answers,
/// non-zero once it is gone.
#[test]
fn the_dockerfile_health_check_command_works() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    let line = dockerfile
        .split("\nHEALTHCHECK ")
        .nth(1)
        .expect("the Dockerfile has a HEALTHCHECK instruction");
    let json = &line[line.find('[').unwrap()..=line.find(']').unwrap()];
    let argv: Vec<String> = serde_json::from_str(json).unwrap();
    assert_eq!(argv[0], "/usr/local/bin/contact-discovery");
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &[]);
    // The same command line, pointed at this server's port.
    let command = argv[1..]
        .iter()
        .map(|a| a.replace("127.0.0.1:8080", &server.public))
        .collect::<Vec<_>>();
    let healthy = Command::new(BIN).args(&command).output().unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    server.kill9();
    let gone = Command::new(BIN).args(&command).output().unwrap();
    assert!(!gone.status.success(), "a dead server fails the check");
}

/// `loadgen --hdr-log FILE --plot FILE.svg` as typed: the binary writes both files when the run
/// ends, replacing what was there (tests/api/loadgen.rs checks their content against the
/// report), and refuses an output directory that does not exist before sending anything.
#[test]
fn loadgen_writes_the_files_its_flags_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &["--insecure-no-auth"]);
    let out = tempfile::tempdir().unwrap();
    let (log, svg) = (out.path().join("run.hlog"), out.path().join("run.svg"));
    std::fs::write(&log, "an older log").unwrap();
    let loadgen = |log: &Path, svg: &Path| {
        Command::new(BIN)
            .args(["loadgen", "--anonymous", "--server"])
            .arg(format!("http://{}", server.public))
            .args(["--registry-size", "100", "--pool", "100", "--rate", "20"])
            .args(["--duration", "500ms", "--batch", "5", "--json", "--hdr-log"])
            .arg(log)
            .arg("--plot")
            .arg(svg)
            .output()
            .unwrap()
    };
    let ran = loadgen(&log, &svg);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("#[contact-discovery loadgen: hashed mode, open loop at 20 requests/s")
    );
    let intervals: Vec<&str> = text.lines().filter(|l| l.starts_with("0.000,")).collect();
    assert_eq!(intervals.len(), 1, "{text}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    let missing = out.path().join("no-such-dir").join("run.svg");
    let refused = loadgen(&log, &missing);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is not a directory"), "{said}");
    assert!(refused.stdout.is_empty(), "no run, no report");
    server.kill9();
}

/// `loadgen --change-rate` against a real server: admin changes go out while the discovery load
/// runs, and every acknowledged change is seen in its expected state through `/v1/discover`.
/// Latency figures are only checked to be there: they are benchmarks, not timed tests.
#[test]
fn loadgen_changes_become_visible_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let numbers: String = contact_discovery::tools::generate::numbers(300, 1)
        .iter()
        .map(|n| format!("{n}\n"))
        .collect();
    common::import(dir.path(), &numbers);
    // No --admin-token: the server generates <data-dir>/admin.token, loadgen's default.
    let mut command = common::serve_command(dir.path());
    command.args([
        "--rate-limit-burst",
        "4000000000",
        "--rate-limit-refill-per-day",
        "4000000000",
    ]);
    let server = common::start(command);
    // loadgen against this server and registry, with `extra` flags, as JSON.
    let loadgen = |extra: &[&str]| {
        Command::new(BIN)
            .args(["loadgen", "--server"])
            .arg(format!("http://{}", server.public))
            .arg("--admin-server")
            .arg(format!("http://{}", server.admin))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--registry-size", "300", "--pool", "300", "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = loadgen(&[
        "--rate",
        "50",
        "--duration",
        "2s",
        "--batch",
        "20",
        "--users",
        "5",
        "--change-rate",
        "50",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &j["changes"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert_eq!(n("requests"), 100, "{c}");
    assert_eq!(n("sent"), 100, "{c}");
    assert_eq!(n("admin_errors"), 0, "{c}");
    assert_eq!(n("applied_200") + n("accepted_202"), 100, "{c}");
    assert_eq!(n("acknowledged"), n("sent"), "{c}");
    assert_eq!(n("visible"), n("acknowledged"), "{c}");
    assert_eq!(n("never_visible"), 0, "{c}");
    let kinds: u64 = ["add", "unhide", "remove", "hide"]
        .iter()
        .map(|k| c["kinds"][k].as_u64().unwrap())
        .sum();
    assert_eq!(kinds, 100, "{c}");
    for histogram in ["admin_latency_ms", "visible_latency_ms"] {
        for q in ["p50", "p90", "p99", "p99.9", "max"] {
            assert!(
                c[histogram][q].as_f64().unwrap() > 0.0,
                "{histogram} {q}: {c}"
            );
        }
    }
    // The poller asked, but the discovery figures count only the load's own requests.
    assert!(n("poll_requests") > 0, "{c}");
    assert_eq!(j["scheduled"], 100, "{j}");
    assert_eq!(j["completed"], 100, "{j}");
    assert_eq!(j["errors"], 0, "{j}");

    // Without --change-rate the report has no changes.
    let out = loadgen(&["--rate", "20", "--duration", "200ms"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["changes"].is_null(), "{j}");
    server.kill9();
}
