//! `spawn_app`: the real service on port 0, driven over real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use contact_discovery::clock::Clock;
use contact_discovery::domain::{CredentialKey, E164, Epoch, Fingerprint, Salt, UserId};
use contact_discovery::protocol::{self, Format};
use contact_discovery::server::api::SharedState;
use contact_discovery::server::config::{Config, Settings};
use contact_discovery::server::startup::{Application, load_keys};
use tokio::sync::oneshot;

/// Admin token every test app uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The metrics token every test app runs with.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";
/// Start of the manual clock: a round epoch boundary for 60 s and 86,400 s epochs.
pub const T0: u64 = 1_790_000_000 / 86_400 * 86_400;

/// A running service and what a test needs to talk to it.
pub struct TestApp {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub client: reqwest::Client,
    pub clock: Clock,
    pub state: SharedState,
    pub data_dir: PathBuf,
    pub credential_key: CredentialKey,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// Settings a test may change before the app starts.
pub fn test_config(data_dir: PathBuf) -> Config {
    let mut config = Config {
        data_dir,
        ..Config::default()
    };
    config.listeners.listen = "127.0.0.1:0".parse().unwrap();
    config.listeners.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.secrets.admin_token = Some(ADMIN_TOKEN.parse().unwrap());
    config.secrets.metrics_token = Some(METRICS_TOKEN.parse().unwrap());
    config.epochs.length = 86_400.try_into().unwrap();
    config
}

/// Starts the service with defaults suitable for tests, on a manual clock at `T0`.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service after `adjust` has changed the test config.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().to_path_buf());
    adjust(&mut config);
    let mut app = start(config, Clock::manual(T0)).await;
    app._dir = Some(dir);
    app
}

/// Starts the service with exactly `config` and `clock` (for restarts on the same data dir).
pub async fn start(config: Config, clock: Clock) -> TestApp {
    let settings = Settings::try_from(config.clone()).expect("test config is valid");
    let app = Application::build_with_clock(&settings, clock.clone())
        .await
        .expect("app builds");
    app.warm_up_all().await;
    let keys = load_keys(&settings).unwrap();
    let (public, admin, state) = (app.public_addr(), app.admin_addr(), app.state());
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        public,
        admin,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        clock,
        state,
        data_dir: config.data_dir.clone(),
        credential_key: keys.credential_key,
        config,
        stop: Some(tx),
        done: Some(done),
        _dir: None,
    }
}

impl TestApp {
    /// Stops the service gracefully and waits for it; the data directory stays.
    pub async fn stop(mut self) -> (Config, Clock, Option<tempfile::TempDir>) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
        (self.config.clone(), self.clock.clone(), self._dir.take())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// A credential for `user` valid for an hour of the app's clock.
    pub fn credential(&self, user: &str) -> String {
        self.credential_key
            .mint(&UserId::parse(user).unwrap(), self.clock.now_secs() + 3_600)
    }

    /// The current epoch and salt, as a client sees them.
    pub async fn epoch(&self) -> (u64, Salt) {
        let info: protocol::EpochInfo = self
            .client
            .get(self.url("/v1/epoch"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (info.epoch, decode_salt(&info.salt))
    }

    /// Adds, removes and hides numbers through the admin API; panics unless 200, which means
    /// discoverable at once (callers ask straight away: read-your-writes is what they test).
    pub async fn change(&self, add: &[&str], remove: &[&str], hide: &[&str]) -> serde_json::Value {
        let response = self
            .client
            .post(self.admin_url("/admin/v1/registrations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "add": add, "remove": remove, "hide": hide }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Gives the rotation task (polling every 10 ms on the manual clock) time for many passes
    /// at the clock's present time: for asserting what it did not build.
    pub async fn let_rotation_run(&self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Sends a discovery request and returns status and raw body.
    pub async fn discover_raw(
        &self,
        content_type: &str,
        credential: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self
            .client
            .post(self.url("/v1/discover"))
            .header("content-type", content_type)
            .body(body);
        if let Some(c) = credential {
            request = request.bearer_auth(c);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.bytes().await.unwrap().to_vec())
    }

    /// Asks which of `numbers` are registered, in `format`, as user `user`; returns the indices.
    pub async fn discover(&self, format: Format, user: &str, numbers: &[&str]) -> Vec<usize> {
        let (epoch, salt) = self.epoch().await;
        let fps = fingerprints(&salt, numbers);
        let body = protocol::encode_request(format, epoch, &fps);
        let (status, _, body) = self
            .discover_raw(format.content_type(), Some(&self.credential(user)), body)
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        registered_indices(format, epoch, fps.len(), &body)
    }
}

/// Parses either response encoding into the registered indices, checking the epoch.
pub fn registered_indices(format: Format, epoch: u64, n: usize, body: &[u8]) -> Vec<usize> {
    let answer = protocol::decode_answer(format, body, n).expect("an answer for n fingerprints");
    assert_eq!(answer.epoch, epoch);
    answer.registered
}

/// Fingerprints of `numbers` under `salt`.
pub fn fingerprints(salt: &Salt, numbers: &[&str]) -> Vec<Fingerprint> {
    numbers
        .iter()
        .map(|n| Fingerprint::compute(salt, E164::parse(n).unwrap()))
        .collect()
}

pub fn decode_salt(text: &str) -> Salt {
    protocol::decode_salt(text).unwrap()
}

/// The epoch containing the app clock's now, for `epoch_seconds`.
pub fn epoch_at(app: &TestApp) -> Epoch {
    Epoch(app.clock.now_secs() / app.config.epochs.length.secs().get())
}

// ---------------------------------------------------------------------------------------------
// Additions for the behaviour suites: polling the rotation task, raw requests, error checks,
// metrics parsing.
// ---------------------------------------------------------------------------------------------

/// A discovery request's outcome: status, headers and raw body.
pub type RawResponse = (u16, reqwest::header::HeaderMap, Vec<u8>);

impl TestApp {
    /// `GET /v1/epoch` as JSON.
    pub async fn epoch_info(&self) -> serde_json::Value {
        let response = self.client.get(self.url("/v1/epoch")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Waits (bounded) until the current epoch is ready and every epoch in `epochs` is live.
    pub async fn wait_for_epochs(&self, epochs: &[u64]) {
        for _ in 0..2_000 {
            let live: Vec<u64> = self
                .state
                .public
                .indexes
                .snapshot()
                .iter()
                .map(|(e, _)| e.0)
                .collect();
            if self.state.public.indexes.is_ready(self.clock.now_secs())
                && epochs.iter().all(|e| live.contains(e))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "epochs {epochs:?} never became live (live: {:?})",
            self.state
                .public
                .indexes
                .snapshot()
                .iter()
                .map(|(e, _)| e.0)
                .collect::<Vec<_>>()
        );
    }

    /// Waits (bounded) until `epoch` is no longer live.
    pub async fn wait_for_retired(&self, epoch: u64) {
        for _ in 0..2_000 {
            if self
                .state
                .public
                .indexes
                .snapshot()
                .iter()
                .all(|(e, _)| e.0 != epoch)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("epoch {epoch} was never retired");
    }

    /// Posts `fingerprints` for `epoch` in `format` with `credential`.
    pub async fn discover_fps(
        &self,
        format: Format,
        credential: &str,
        epoch: u64,
        fingerprints: &[Fingerprint],
    ) -> RawResponse {
        let body = protocol::encode_request(format, epoch, fingerprints);
        self.discover_raw(format.content_type(), Some(credential), body)
            .await
    }

    /// Asks about `numbers` with an explicit epoch and salt; asserts 200 and that the response
    /// names `epoch`; returns the registered indices.
    pub async fn discover_at(
        &self,
        format: Format,
        user: &str,
        epoch: u64,
        salt: &Salt,
        numbers: &[&str],
    ) -> Vec<usize> {
        let fps = fingerprints(salt, numbers);
        let (status, _, body) = self
            .discover_fps(format, &self.credential(user), epoch, &fps)
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        registered_indices(format, epoch, fps.len(), &body)
    }

    /// An admin `POST /admin/v1/registrations` with `body`, returning status and JSON body.
    pub async fn change_raw(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.admin_url("/admin/v1/registrations"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `GET /admin/v1/stats` with the admin token.
    pub async fn stats(&self) -> serde_json::Value {
        let response = self
            .client
            .get(self.admin_url("/admin/v1/stats"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `GET /metrics` (with the metrics token) as text.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.admin_url("/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Checks that a known-good request still gets the right answer: `registered` numbers are
    /// found, `unregistered` ones are not, in both encodings.
    pub async fn assert_still_answers(&self, registered: &str, unregistered: &str) {
        for format in [Format::Binary, Format::Json] {
            let hits = self
                .discover(format, "health-check", &[unregistered, registered])
                .await;
            assert_eq!(hits, vec![1], "{format:?}");
        }
    }
}

/// Sends `request` as raw bytes over a fresh TCP connection and reads the response until the
/// server closes it (send `Connection: close`). Returns status, header block and body.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
            if let Some(done) = complete_response_len(&response) {
                response.truncate(done);
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete response within the timeout");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, head, body)
}

/// Length of a complete HTTP/1.1 response with a Content-Length in `bytes`, if all there.
fn complete_response_len(bytes: &[u8]) -> Option<usize> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let len: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    let total = split + 4 + len;
    (bytes.len() >= total).then_some(total)
}

/// Checks an error response: the status, `Cache-Control: no-store`, a JSON body whose `code` is
/// `code` (one of the documented codes) and whose `message` is a string. Returns the body.
pub fn assert_error(response: &RawResponse, status: u16, code: &str) -> serde_json::Value {
    let (got, headers, body) = response;
    let text = String::from_utf8_lossy(body);
    assert_eq!(*got, status, "body: {text}");
    assert_eq!(
        headers.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "error content type: {headers:?}"
    );
    let value: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    assert_eq!(value["code"], code, "body: {text}");
    assert!(
        contact_discovery::server::api::ApiError::CODES.contains(&code),
        "{code} is not a documented code"
    );
    assert!(value["message"].is_string(), "body: {text}");
    value
}

/// Hex of `bytes`, lower case.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of the sample `key` (a metric name with its label set exactly as rendered, e.g.
/// `foo_total{a="b"}`) in Prometheus text, or `None` if absent.
pub fn metric(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == key).then(|| value.parse().ok())?
        })
}

/// Like [`metric`], but absent samples count as 0 (counters not yet touched).
pub fn metric_or_zero(text: &str, key: &str) -> f64 {
    metric(text, key).unwrap_or(0.0)
}
