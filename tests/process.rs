//! The real binary as a child process: kill -9 durability, SIGTERM, core dumps, registry CLI.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_contact-discovery");
const ADMIN_TOKEN: &str = "process-test-admin-token";

/// A server child process and its bound addresses (read from its "listening" log line).
struct Server {
    child: Child,
    public: String,
    admin: String,
    _stderr: std::thread::JoinHandle<()>,
}

fn start_server(data_dir: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--admin-token", ADMIN_TOKEN])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .map(str::to_owned)
                };
                let _ = tx.send((field("public="), field("admin=")));
            }
        }
    });
    let (public, admin) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server logs its addresses");
    Server {
        child,
        public: public.unwrap(),
        admin: admin.unwrap(),
        _stderr: reader,
    }
}

impl Server {
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

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

fn export(data_dir: &Path) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["registry", "export", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every acknowledged registration survives SIGKILL at a random moment during a stream of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = client();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut next = 15_550_000_000u64;
    for _cycle in 0..5 {
        let server = start_server(dir.path(), &[]);
        let admin = server.admin.clone();
        let kill_after = Duration::from_millis(rand::rng().random_range(20..200));
        let writer = {
            let client = client.clone();
            let start = next;
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..10_000u64 {
                    let number = format!("+{}", start + i);
                    match post_change(&client, &admin, std::slice::from_ref(&number), &[]).await {
                        Some(200) => acked.push(number),
                        _ => break,
                    }
                }
                acked
            })
        };
        tokio::time::sleep(kill_after).await;
        server.kill9();
        let acked = writer.await.unwrap();
        next += 10_000;
        acknowledged.extend(acked);
        let present: std::collections::HashSet<String> = export(dir.path()).into_iter().collect();
        for number in &acknowledged {
            assert!(
                present.contains(number),
                "acknowledged {number} lost after kill -9"
            );
        }
    }
    assert!(
        acknowledged.len() > 5,
        "the writer got some acknowledgements"
    );
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
    let epoch: serde_json::Value = client
        .get(format!("http://{}/v1/epoch", server.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
        contact_discovery::demo::registered_example_numbers()
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
