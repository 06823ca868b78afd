//! Process-level privacy settings of `serve`: client addresses in access logs, `--mlock`.

mod common;

use std::time::Duration;

use common::{start_server, start_server_with_env};

async fn one_request(public: &str) {
    let status = reqwest::get(format!("http://{public}/v1/epoch"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// Waits for an access-log line for `/v1/epoch` and returns it.
fn access_line(server: &common::Server) -> String {
    for _ in 0..500 {
        if let Some(line) = server
            .log_lines()
            .into_iter()
            .find(|l| l.contains("request") && l.contains("/v1/epoch"))
        {
            return line;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no access log line:\n{}", server.log_lines().join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_carry_no_client_address_unless_asked_and_then_only_its_network() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = start_server_with_env(dir.path(), &["--log", "debug"], &[]);
    one_request(&quiet.public).await;
    let line = access_line(&quiet);
    assert!(line.contains("client=-"), "{line}");
    assert!(
        line.contains("route=/v1/epoch") && line.contains("status=200"),
        "{line}"
    );
    quiet.kill9();

    let dir = tempfile::tempdir().unwrap();
    let told = start_server(dir.path(), &["--log", "debug", "--log-client-ip"]);
    one_request(&told.public).await;
    let line = access_line(&told);
    assert!(line.contains("client=127.0.0.0/24"), "{line}");
    assert!(!line.contains("client=127.0.0.1"), "{line}");
    told.kill9();
}

/// `--mlock` either locks all memory or refuses to start with a clear error: it never runs
/// silently without the protection it was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlock_locks_memory_or_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--mlock",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--admin-token", common::ADMIN_TOKEN])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = output.id();
    // Give it time either to fail or to come up.
    let mut child = output;
    for _ in 0..500 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("VmLck:")) {
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            if kib > 0 {
                child.kill().unwrap();
                child.wait().unwrap();
                return; // locked
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match child.try_wait().unwrap() {
        Some(status) => {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!status.success());
            assert!(stderr.contains("--mlock"), "{stderr}");
        }
        None => {
            child.kill().unwrap();
            panic!("running with --mlock but no memory locked");
        }
    }
}
