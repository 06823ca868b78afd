//! A real Prometheus (Debian's `prometheus` package; `scripts/test.sh` installs it) scrapes a
//! real server under load with the deployed rules, and every dashboard and alert expression is
//! queried through its HTTP API: none may fail, every rule must evaluate without error, and every
//! series selector in them must match a series the server really exported (a selector that
//! can never match, a misspelt label value for instance, is an error, not "No data").

mod common;

use common::monitoring::{alert_rules, deploy_dir, prometheus_yaml, queried_expressions};

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contact_discovery::protocol::{self, Format};

const METRICS_TOKEN: &str = "prometheus-test-metrics-token";

/// The series selectors of an expression: each metric name (ours, or `up`) with its label
/// matchers, if any (`contact_discovery_x{a="b"}`).
fn selectors_in(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) || (i > 0 && is_ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        // Only metric names: functions, `by (instance)` labels and the like are skipped here.
        if !(name.starts_with("contact_discovery_") || name == "up") {
            continue;
        }
        let matchers = match expr[i..].strip_prefix('{') {
            Some(rest) => {
                let end = rest.find('}').expect("a closed label matcher");
                &expr[i..i + end + 2]
            }
            None => "",
        };
        found.insert(format!("{name}{matchers}"));
    }
    found
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Prometheus child process, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `admin` every second with the deployed rules.
fn start_prometheus(dir: &Path, admin: &str) -> Prometheus {
    let token_file = dir.join("metrics.token");
    std::fs::write(&token_file, METRICS_TOKEN).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: contact-discovery\n    metrics_path: /metrics\n\
             \x20   authorization:\n      type: Bearer\n      credentials_file: {token}\n\
             \x20   static_configs:\n      - targets: [\"{admin}\"]\n",
            rules = deploy_dir().join("prometheus/alerts.yml").display(),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "`prometheus` is on PATH (Debian's prometheus package; scripts/test.sh installs it)",
        );
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// `GET /api/v1/<path>` with `query` parameters; the `data` of a successful answer.
async fn api(
    http: &reqwest::Client,
    prometheus: &Prometheus,
    path: &str,
    query: &[(&str, &str)],
) -> serde_json::Value {
    let answer: serde_json::Value = http
        .get(format!("{}/api/v1/{path}", prometheus.url))
        .query(query)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
    answer["data"].clone()
}

/// Sends a mix of answers the dashboard and the alerts look at: 200s, a 429 (rate limited),
/// a 500 (the test-hooks panic), 404s, a 503 from `/readyz` and admin changes.
async fn drive_load(http: &reqwest::Client, server: &common::Server, credential: &str) {
    let public = &server.public;
    let info: protocol::EpochInfo = serde_json::from_value(server.epoch(http).await).unwrap();
    let (epoch, salt) = (info.epoch, info.decode_salt().unwrap());
    let number = contact_discovery::domain::E164::parse("+4915112345678").unwrap();
    let body = protocol::encode_request(
        Format::Binary,
        epoch,
        &[contact_discovery::domain::Fingerprint::compute(
            &salt, number,
        )],
    );
    let mut statuses = BTreeSet::new();
    // One private-mode evaluation first, while the budget lasts (its route's series).
    let manifest = server.private_manifest(http, credential).await;
    let key_epoch = manifest["key_epoch"]
        .as_u64()
        .expect("the private set is built");
    let (_, blinded) = contact_discovery::domain::oprf::blind(number).unwrap();
    let evaluated = http
        .post(format!("http://{public}/v1/private/evaluate"))
        .header("content-type", Format::Binary.content_type())
        .bearer_auth(credential)
        .body(protocol::evaluate::encode_evaluate(
            Format::Binary,
            key_epoch,
            &[blinded],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), 200);
    for i in 0..30 {
        let mut request = http
            .post(format!("http://{public}/v1/discover"))
            .header("content-type", Format::Binary.content_type())
            .bearer_auth(credential)
            .body(body.clone());
        if i == 0 {
            request = request.header("x-test-panic", "1");
        }
        statuses.insert(request.send().await.unwrap().status().as_u16());
    }
    for path in ["/readyz", "/nope"] {
        statuses.insert(
            http.get(format!("http://{public}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    let changed = http
        .post(format!("http://{}/admin/v1/registrations", server.admin))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&serde_json::json!({"add": ["+4915112345679"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    for wanted in [200, 404, 429, 500, 503] {
        assert!(statuses.contains(&wanted), "no {wanted} in {statuses:?}");
    }
}

#[tokio::test]
async fn a_real_prometheus_answers_every_dashboard_and_alert_expression() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::import(&data, "+4915112345678\n");
    // A small burst so some requests are rate limited; readiness never reached (503 /readyz).
    let server = common::start_server(
        &data,
        &[
            "--metrics-token",
            METRICS_TOKEN,
            "--max-batch",
            "10",
            "--rate-limit-burst",
            "20",
            "--rate-limit-refill-per-day",
            "20",
            "--ready-min-registrations",
            "1000",
        ],
    );
    let credential = common::credential(&data, "prometheus-user");
    let prometheus = start_prometheus(dir.path(), &server.admin);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Load, then enough scrapes after it that every rate() has two samples of it.
    drive_load(&http, &server, &credential).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{}/api/v1/query", prometheus.url))
            .query(&[(
                "query",
                "count_over_time(up{job=\"contact-discovery\"}[1m]) >= 4 and up == 1",
            )])
            .send()
            .await
            .ok();
        let scraped = match ready {
            Some(r) => r.json::<serde_json::Value>().await.ok(),
            None => None,
        };
        if scraped.is_some_and(|s| {
            s["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the server 4 times"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let exprs = queried_expressions();
    assert!(
        exprs.len() >= 30,
        "dashboard and rules hold queries: {exprs:?}"
    );
    let mut selectors = BTreeSet::new();
    for expr in &exprs {
        api(&http, &prometheus, "query", &[("query", expr)]).await;
        selectors.extend(selectors_in(expr));
    }
    let mut never = Vec::new();
    for selector in &selectors {
        let series = api(&http, &prometheus, "series", &[("match[]", selector)]).await;
        if series.as_array().is_none_or(|s| s.is_empty()) {
            never.push(selector.clone());
        }
    }
    assert!(
        never.is_empty(),
        "selectors no exported series matches: {never:#?}"
    );

    // Every alert rule loaded and evaluates without error.
    let rules = api(&http, &prometheus, "rules", &[]).await;
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert!(evaluated >= 10, "{rules}");

    // Latency is measured from 10 µs, so fast answers are not all in one bucket.
    let lowest = api(
        &http,
        &prometheus,
        "series",
        &[(
            "match[]",
            "contact_discovery_http_request_duration_seconds_bucket{le=~\"0.00001|1e-05\"}",
        )],
    )
    .await;
    assert!(
        lowest.as_array().is_some_and(|s| !s.is_empty()),
        "no 10 µs bucket"
    );
}

#[test]
fn selectors_are_names_with_their_matchers() {
    let found = selectors_in(
        "sum by (instance) (rate(contact_discovery_a_total{listener=\"public\",status=~\"5..\"}[5m])) / up{job=\"x\"} + contact_discovery_b + upper",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        [
            "contact_discovery_a_total{listener=\"public\",status=~\"5..\"}",
            "contact_discovery_b",
            "up{job=\"x\"}"
        ]
    );
}

/// Runs `promtool <args> deploy/prometheus/<file>` and asserts it succeeds.
fn promtool(args: &[&str], file: &str) {
    let out = Command::new("promtool")
        .args(args)
        .arg(deploy_dir().join("prometheus").join(file))
        .output()
        .expect("`promtool` is on PATH (Debian's prometheus package; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?} {file}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules() {
    promtool(&["check", "rules"], "alerts.yml");
}

/// `deploy/prometheus/alerts.test.yml` passes `promtool test rules`, and it tests every alert of
/// `alerts.yml` both ways: at least one evaluation where it fires and one where it must not.
#[test]
fn promtool_unit_tests_cover_every_alert_and_pass() {
    let alerts: BTreeSet<String> = alert_rules()
        .iter()
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let tests = prometheus_yaml("alerts.test.yml");
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().into_iter().flatten() {
        for eval in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = eval["alertname"].as_str().unwrap_or_default().to_owned();
            match eval["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                true => fires.insert(name),
                false => quiet.insert(name),
            };
        }
    }
    let untested: Vec<_> = alerts
        .iter()
        .filter(|a| !fires.contains(*a) || !quiet.contains(*a))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts not tested both ways: {untested:?}"
    );

    promtool(&["test", "rules"], "alerts.test.yml");
}
