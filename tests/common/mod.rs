//! The real `contact-discovery` binary as a child process, for tests that need a real process:
//! kill -9, signals, core-dump limits, captured logs.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod monitoring;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_contact-discovery");
/// Admin token every child server runs with.
pub const ADMIN_TOKEN: &str = "child-process-admin-token";

/// A server child process, its bound addresses and everything it wrote.
pub struct Server {
    pub child: Child,
    pub public: String,
    pub admin: String,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `serve` on port 0 for both listeners with `extra` flags; `RUST_LOG` is cleared.
pub fn start_server(data_dir: &Path, extra: &[&str]) -> Server {
    start_server_with_env(data_dir, extra, &[])
}

/// `serve` on `data_dir` with both listeners on port 0 and `RUST_LOG` cleared; no admin token,
/// no output redirection.
pub fn serve_command(data_dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG");
    command
}

/// Like [`start_server`], with environment variables set for the child.
pub fn start_server_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = serve_command(data_dir);
    command.args(["--admin-token", ADMIN_TOKEN]).args(extra);
    for (key, value) in env {
        command.env(key, value);
    }
    start(command)
}

/// Spawns `command` (a [`serve_command`] with its flags) with its output captured, and waits
/// until it logs its addresses.
pub fn start(mut command: Command) -> Server {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("server starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for mut pipe in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
        let output = Arc::clone(&output);
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }));
    }
    let started = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains("listening")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            return Server {
                child,
                public: field("public=").expect("public address logged"),
                admin: field("admin=").expect("admin address logged"),
                output,
                readers,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited with {status} before listening:\n{text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "server never listened:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Server {
    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `GET /v1/epoch` on the public listener, as JSON.
    pub async fn epoch(&self, client: &reqwest::Client) -> serde_json::Value {
        client
            .get(format!("http://{}/v1/epoch", self.public))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/private/set` as JSON, once the private set is built: `serve` builds it in the
    /// background after it starts listening, so the first requests may get `503 not_ready`.
    pub async fn private_manifest(
        &self,
        client: &reqwest::Client,
        credential: &str,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let response = client
                .get(format!("http://{}/v1/private/set", self.public))
                .bearer_auth(credential)
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => return response.json().await.unwrap(),
                503 if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                status => panic!("GET /v1/private/set: {status}"),
            }
        }
    }

    /// `GET /metrics` on the admin listener, as text.
    pub async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("http://{}/metrics", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid()).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    /// Everything written to stdout and stderr so far, as lines.
    pub fn log_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.output.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the child to exit and returns its status and every byte it wrote.
    pub fn wait_with_output(mut self) -> (ExitStatus, Vec<u8>) {
        let status = self.child.wait().unwrap();
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        let output = self.output.lock().unwrap().clone();
        (status, output)
    }
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `registry import` of `numbers` (one `+E164[ hidden]` a line) into `data_dir`; must succeed.
pub fn import(data_dir: &Path, numbers: &str) {
    let mut child = Command::new(BIN)
        .args(["registry", "import", "-", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), numbers.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `registry export` of `data_dir`, one line per registration.
pub fn export(data_dir: &Path) -> Vec<String> {
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

/// Mints a credential for `user`, valid for an hour, under a credential key given as 64 hex
/// characters (the form of a `--credential-key-file`).
pub fn mint_with_hex_key(key_hex: &str, user: &str) -> String {
    let key: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let now = contact_discovery::clock::Clock::System.now_secs();
    contact_discovery::domain::CredentialKey::from_bytes(key).mint(
        &contact_discovery::domain::UserId::parse(user).unwrap(),
        now + 3_600,
    )
}

/// Mints a credential for `user` with the `credential` command on `data_dir`'s key.
pub fn credential(data_dir: &Path, user: &str) -> String {
    let out = Command::new(BIN)
        .args(["credential", "--user", user, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A real `redis-server` on a free loopback port, in its own temporary directory, with an
/// append-only file fsync'd on every write (as the registry stream needs). Killed on drop.
/// `scripts/test.sh` installs Redis when it is missing.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>/` (with the password, or `rediss://` over TLS, when so started).
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    /// What `redis-cli` needs beyond host and port (password, TLS).
    cli: Vec<String>,
}

/// A free loopback port (bind-and-release: Redis cannot report one it chose itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts Redis and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = free_port();
        Self::launch(
            port,
            &["--port".into(), port.to_string()],
            format!("redis://127.0.0.1:{port}/"),
            Vec::new(),
            tempfile::tempdir().unwrap(),
        )
    }

    /// Starts Redis with `--requirepass password`; `url` carries the password.
    pub fn start_with_password(password: &str) -> RedisServer {
        let port = free_port();
        Self::launch(
            port,
            &[
                "--port".into(),
                port.to_string(),
                "--requirepass".into(),
                password.into(),
            ],
            format!("redis://:{password}@127.0.0.1:{port}/"),
            vec!["--no-auth-warning".into(), "-a".into(), password.into()],
            tempfile::tempdir().unwrap(),
        )
    }

    /// Starts Redis with (a copy of) the ACL file `acl_file`; `url` and `redis-cli`
    /// authenticate as its user `user` with `password`.
    pub fn start_with_acl(acl_file: &Path, user: &str, password: &str) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("users.acl");
        std::fs::copy(acl_file, &acl).unwrap();
        let port = free_port();
        Self::launch(
            port,
            &[
                "--port".into(),
                port.to_string(),
                "--aclfile".into(),
                acl.to_str().unwrap().into(),
            ],
            format!("redis://{user}:{password}@127.0.0.1:{port}/"),
            vec![
                "--no-auth-warning".into(),
                "--user".into(),
                user.into(),
                "--pass".into(),
                password.into(),
            ],
            dir,
        )
    }

    /// Starts Redis with TLS only (no plain port), under a certificate for `127.0.0.1` issued by
    /// a fresh test CA (made with `openssl`); `url` is `rediss://`. Returns the CA's PEM path
    /// too: clients trust it through `SSL_CERT_FILE`.
    pub fn start_tls() -> (RedisServer, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca_key, ca_pem, key, csr) =
            (at("ca.key"), at("ca.pem"), at("redis.key"), at("redis.csr"));
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let ca_args = format!("req -x509 {ec} -keyout {ca_key} -out {ca_pem} -days 1");
        let mut args: Vec<&str> = ca_args.split(' ').collect();
        args.extend(["-subj", "/CN=contact-discovery test CA"]);
        openssl(&args);
        let csr_args = format!("req {ec} -keyout {key} -out {csr}");
        let mut args: Vec<&str> = csr_args.split(' ').collect();
        args.extend(["-subj", "/CN=127.0.0.1"]);
        openssl(&args);
        std::fs::write(
            at("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &at("redis.csr"),
            "-CA",
            &at("ca.pem"),
            "-CAkey",
            &at("ca.key"),
            "-CAcreateserial",
            "-out",
            &at("redis.pem"),
            "-days",
            "1",
            "-extfile",
            &at("ext.cnf"),
        ]);
        let port = free_port();
        let ca = dir.path().join("ca.pem");
        let server = Self::launch(
            port,
            &[
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                at("redis.pem"),
                "--tls-key-file".into(),
                at("redis.key"),
                "--tls-ca-cert-file".into(),
                at("ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            format!("rediss://127.0.0.1:{port}/"),
            vec!["--tls".into(), "--cacert".into(), at("ca.pem")],
            dir,
        );
        (server, ca)
    }

    fn launch(
        port: u16,
        listen: &[String],
        url: String,
        cli: Vec<String>,
        dir: tempfile::TempDir,
    ) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(listen)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        let server = RedisServer {
            child,
            url,
            port,
            dir,
            cli,
        };
        let started = Instant::now();
        while server.command(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Runs one command with `redis-cli` and returns its raw output, or `None` if it failed.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A plain (synchronous) client connection, for binary values `redis-cli` cannot pass.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Its data directory (the append-only files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops Redis now (SIGKILL) and waits for it, keeping its directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
