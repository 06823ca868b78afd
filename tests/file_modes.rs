//! Files on disk, through the real binary: the data directory is 0700 and every file in it 0600
//! (the registry holds every registered number); key files open to group or others and admin
//! token files shorter than 16 characters are refused at start with a message that says how to
//! fix it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, files_under, import, start_server};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The directory is 0700 and every file under it 0600.
fn assert_private(dir: &Path, when: &str) {
    let octal = |m: u32| format!("{m:04o}");
    assert_eq!(
        octal(mode(dir) & 0o777),
        "0700",
        "{when}: data directory mode"
    );
    let files = files_under(dir);
    assert!(!files.is_empty(), "{when}: no files");
    for file in files {
        assert_eq!(octal(mode(&file)), "0600", "{when}: {}", file.display());
    }
}

/// What `serve` did within 60 s: listened (then it is killed) or exited with its output.
enum Outcome {
    Listened(String),
    Exited(std::process::ExitStatus, String),
}

/// Runs `serve` on `data_dir` without an admin token flag (so `admin.token` is read or
/// generated) and with `extra` flags.
fn serve(data_dir: &Path, extra: &[&str]) -> Outcome {
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("out");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = common::serve_command(data_dir)
        .args(extra)
        .env_remove("CONTACT_DISCOVERY_ADMIN_TOKEN")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Outcome::Exited(status, output);
        }
        if output.contains("listening") {
            child.kill().unwrap();
            child.wait().unwrap();
            return Outcome::Listened(output);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve neither listened nor exited:\n{output}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `serve` must refuse to start and say why: every one of `needles` is in its output.
fn assert_refused(data_dir: &Path, extra: &[&str], needles: &[&str]) {
    match serve(data_dir, extra) {
        Outcome::Listened(output) => {
            panic!("started although it should have refused ({needles:?}):\n{output}")
        }
        Outcome::Exited(status, output) => {
            assert!(!status.success(), "{output}");
            for needle in needles {
                assert!(
                    output.contains(needle),
                    "{needle:?} missing from:\n{output}"
                );
            }
        }
    }
}

fn assert_starts(data_dir: &Path, extra: &[&str]) {
    if let Outcome::Exited(status, output) = serve(data_dir, extra) {
        panic!("did not start ({status}):\n{output}");
    }
}

#[test]
fn key_files_open_to_others_and_weak_admin_token_files_are_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");

    // The files generated on first start are accepted on the next.
    assert_starts(&dir, &[]);
    assert_starts(&dir, &[]);

    // A generated key file made readable by others.
    let secret = dir.join("server.secret");
    let secret_text = secret.to_str().unwrap();
    chmod(&secret, 0o644);
    assert_refused(&dir, &[], &[secret_text, "0644", "chmod 600"]);
    chmod(&secret, 0o600);

    // Writable by the group.
    let credential_key = dir.join("credential.key");
    chmod(&credential_key, 0o660);
    assert_refused(
        &dir,
        &[],
        &[credential_key.to_str().unwrap(), "0660", "chmod 600"],
    );
    chmod(&credential_key, 0o600);

    // A key file given by flag.
    let keys = tempfile::tempdir().unwrap();
    let given = keys.path().join("given.key");
    std::fs::write(&given, "42".repeat(32)).unwrap();
    chmod(&given, 0o644);
    let flag = ["--credential-key-file", given.to_str().unwrap()];
    assert_refused(&dir, &flag, &[given.to_str().unwrap(), "chmod 600"]);
    chmod(&given, 0o600);
    assert_starts(&dir, &flag);

    // The admin token file: open to others, too short, empty.
    let token = dir.join("admin.token");
    let token_text = token.to_str().unwrap();
    chmod(&token, 0o604);
    assert_refused(&dir, &[], &[token_text, "chmod 600"]);
    chmod(&token, 0o600);
    for weak in ["short-token\n", "   \n", ""] {
        std::fs::write(&token, weak).unwrap();
        assert_refused(&dir, &[], &[token_text, "at least 16"]);
    }
    std::fs::write(&token, "a-long-enough-admin-token\n").unwrap();
    assert_starts(&dir, &[]);

    // The metrics token file, generated at first start, is held to the same rules.
    let metrics = dir.join("metrics.token");
    let metrics_text = metrics.to_str().unwrap();
    chmod(&metrics, 0o644);
    assert_refused(&dir, &[], &[metrics_text, "chmod 600"]);
    chmod(&metrics, 0o600);
    std::fs::write(&metrics, "short\n").unwrap();
    assert_refused(&dir, &[], &[metrics_text, "at least 16"]);
    std::fs::write(&metrics, "a-long-enough-metrics-token\n").unwrap();
    assert_starts(&dir, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_0700_and_every_file_in_it_0600() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");

    // `registry import` creates the directory, the snapshot, the log and the lock file.
    import(&dir, "+4915112345001\n+4915112345002 hidden\n");
    assert_private(&dir, "after registry import");

    // A server run with registrations (appended to the log), stopped cleanly.
    let server = start_server(&dir, &[]);
    let client = reqwest::Client::new();
    let add: Vec<String> = (0..20).map(|i| format!("+49151223{i:05}")).collect();
    let status = client
        .post(format!("http://{}/admin/v1/registrations", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "add": add, "remove": ["+4915112345001"] }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    server.sigterm();
    let (exit, output) = server.wait_with_output();
    assert!(exit.success(), "{}", String::from_utf8_lossy(&output));
    assert_private(&dir, "after a server run");
    assert_eq!(common::export(&dir).len(), 21);

    // Left open by an older version or a copy: tightened at the next start, with a warning.
    chmod(&dir, 0o755);
    for file in files_under(&dir) {
        if file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("registry.")
        {
            chmod(&file, 0o644);
        }
    }
    let server = start_server(&dir, &[]);
    let log = server.log_lines().join("\n");
    server.kill9();
    assert!(log.contains("tightened"), "{log}");
    assert_private(&dir, "after a start on an open directory");
}

/// A replica of a shared registry also keeps its resume point (`replication.pos`) private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_its_resume_point_private_too() {
    let redis = common::RedisServer::start();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let server = start_server(&dir, &["--registry-redis-url", &redis.url]);
    let client = reqwest::Client::new();
    let status = client
        .post(format!("http://{}/admin/v1/registrations", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "add": ["+4915112345001"] }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let position = dir.join("replication.pos");
    let started = Instant::now();
    while !position.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replication.pos:\n{}",
            server.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.sigterm();
    let (exit, output) = server.wait_with_output();
    assert!(exit.success(), "{}", String::from_utf8_lossy(&output));
    assert_private(&dir, "after a replica's run");
}
