//! Static checks of `deploy/`: every YAML file parses, the Kubernetes manifests have the
//! security and probe settings that matter (checked through typed structs, so a missing field is
//! an error, not a silent pass), and every metric the dashboard and the alert rules query is one
//! a real running server exports on `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contact_discovery::clock::Clock;
use contact_discovery::domain::{E164, Fingerprint, UserId};
use contact_discovery::protocol::{self, Format};
use contact_discovery::server::config::{Config, Settings};
use contact_discovery::server::startup::{Application, load_keys};
use serde::Deserialize;

use common::monitoring::{deploy_dir, queried_expressions};

/// Every file under `dir` (recursively) whose name ends with one of `extensions`.
fn files_with(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    common::files_under(dir)
        .into_iter()
        .filter(|path| {
            extensions
                .iter()
                .any(|e| path.extension().is_some_and(|x| x == *e))
        })
        .collect()
}

/// All documents of a (possibly multi-document) YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|err| panic!("{} does not parse as YAML: {err}", path.display()))
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = files_with(&deploy_dir(), &["yaml", "yml"]);
    assert!(
        files.len() >= 12,
        "expected the deploy tree, found {files:?}"
    );
    for path in files {
        let documents = yaml_documents(&path);
        assert!(!documents.is_empty(), "{} is empty", path.display());
        for doc in documents {
            assert!(
                doc.is_object(),
                "{}: top level is not a mapping",
                path.display()
            );
        }
    }
    let dashboard = deploy_dir().join("grafana/dashboards/contact-discovery.json");
    let _: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).unwrap()).unwrap();
}

#[test]
fn the_yaml_parser_rejects_broken_yaml() {
    // The parse check above must be able to fail.
    let broken = "a: [1, 2\nb: c\n";
    assert!(serde_saphyr::from_multiple::<serde_json::Value>(broken).is_err());
}

// ---- Kubernetes manifests, typed -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    api_version: String,
    kind: String,
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    // Pod templates have none; top-level objects are checked to have one.
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Deployment {
    spec: DeploymentSpec,
}

#[derive(Deserialize)]
struct DeploymentSpec {
    replicas: u32,
    template: PodTemplate,
}

#[derive(Deserialize)]
struct PodTemplate {
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    security_context: PodSecurityContext,
    containers: Vec<Container>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSecurityContext {
    run_as_non_root: bool,
    run_as_user: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    ports: Vec<ContainerPort>,
    #[serde(default)]
    env: Vec<EnvVar>,
    security_context: ContainerSecurityContext,
    readiness_probe: Probe,
    liveness_probe: Probe,
    resources: Resources,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: String,
    container_port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value_from: Option<EnvSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize)]
struct SecretKeyRef {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerSecurityContext {
    run_as_non_root: bool,
    read_only_root_filesystem: bool,
    allow_privilege_escalation: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
}

#[derive(Deserialize)]
struct HttpGet {
    path: String,
    port: serde_json::Value,
}

#[derive(Deserialize)]
struct Resources {
    requests: std::collections::BTreeMap<String, String>,
    limits: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Service {
    metadata: Metadata,
    spec: ServiceSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "type")]
    kind: String,
    ports: Vec<ServicePort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePort {
    port: u16,
    target_port: serde_json::Value,
}

#[derive(Deserialize)]
struct NetworkPolicy {
    spec: NetworkPolicySpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkPolicySpec {
    policy_types: Vec<String>,
    ingress: Vec<NetworkPolicyRule>,
}

#[derive(Deserialize)]
struct NetworkPolicyRule {
    #[serde(default)]
    from: Vec<serde_json::Value>,
    ports: Vec<NetworkPolicyPort>,
}

#[derive(Deserialize)]
struct NetworkPolicyPort {
    port: serde_json::Value,
}

#[derive(Deserialize)]
struct Kustomization {
    #[serde(default)]
    resources: Vec<String>,
}

/// The base's resources as listed by its kustomization, each document with its file.
fn base_objects() -> Vec<(PathBuf, serde_json::Value)> {
    let base = deploy_dir().join("kubernetes/base");
    let kustomization: Kustomization =
        serde_saphyr::from_str(&std::fs::read_to_string(base.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut objects = Vec::new();
    for resource in kustomization.resources {
        let path = base.join(&resource);
        for doc in yaml_documents(&path) {
            objects.push((path.clone(), doc));
        }
    }
    objects
}

fn typed<T: serde::de::DeserializeOwned>(path: &Path, value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn one_of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    base_objects()
        .iter()
        .filter(|(_, v)| v["kind"] == kind)
        .map(|(path, v)| typed(path, v))
        .collect()
}

/// The apiVersion each kind the base uses must have (the stable, non-deprecated group versions).
const API_VERSIONS: &[(&str, &str)] = &[
    ("Deployment", "apps/v1"),
    ("Service", "v1"),
    ("HorizontalPodAutoscaler", "autoscaling/v2"),
    ("PodDisruptionBudget", "policy/v1"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
];

#[test]
fn base_lists_every_kind_once_with_a_stable_api_version() {
    let objects = base_objects();
    let mut kinds = Vec::new();
    for (path, value) in &objects {
        let object: Object = typed(path, value);
        assert!(!object.metadata.name.is_empty());
        let expected = API_VERSIONS
            .iter()
            .find(|(kind, _)| *kind == object.kind)
            .unwrap_or_else(|| panic!("{}: unexpected kind {}", path.display(), object.kind));
        assert_eq!(object.api_version, expected.1, "{}", path.display());
        kinds.push(object.kind);
    }
    kinds.sort();
    let mut wanted: Vec<_> = API_VERSIONS.iter().map(|(k, _)| k.to_string()).collect();
    wanted.push("Service".into()); // public and admin
    wanted.sort();
    assert_eq!(kinds, wanted);
}

#[test]
fn deployment_runs_non_root_read_only_without_escalation_with_probes() {
    let deployments: Vec<Deployment> = one_of_kind("Deployment");
    let [deployment] = deployments.as_slice() else {
        panic!("one Deployment expected");
    };
    assert!(deployment.spec.replicas >= 2, "several replicas");
    let pod = &deployment.spec.template.spec;
    assert!(pod.security_context.run_as_non_root);
    assert_ne!(pod.security_context.run_as_user, 0);
    let annotations = &deployment.spec.template.metadata.annotations;
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("9090")
    );
    let [container] = pod.containers.as_slice() else {
        panic!("one container expected");
    };
    assert_eq!(container.name, "contact-discovery");
    let security = &container.security_context;
    assert!(security.run_as_non_root);
    assert!(security.read_only_root_filesystem);
    assert!(!security.allow_privilege_escalation);
    assert_eq!(container.readiness_probe.http_get.path, "/readyz");
    assert_eq!(container.liveness_probe.http_get.path, "/healthz");
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        assert_eq!(probe.http_get.port, "public");
    }
    let ports: Vec<_> = container
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.container_port))
        .collect();
    assert_eq!(ports, [("public", 8080), ("admin", 9090)]);
    for key in ["cpu", "memory"] {
        assert!(
            container.resources.requests.contains_key(key),
            "{key} request"
        );
    }
    assert!(container.resources.limits.contains_key("memory"));
    // The secrets come from a Secret, never from literal values in the manifest.
    for name in [
        "CONTACT_DISCOVERY_SERVER_SECRET",
        "CONTACT_DISCOVERY_ADMIN_TOKEN",
    ] {
        let var = container
            .env
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} is set"));
        let source = var
            .value_from
            .as_ref()
            .and_then(|s| s.secret_key_ref.as_ref());
        assert_eq!(
            source.map(|s| s.name.as_str()),
            Some("contact-discovery-keys")
        );
    }
    assert!(
        container
            .env
            .iter()
            .any(|v| v.name == "CONTACT_DISCOVERY_CREDENTIAL_KEY_FILE")
    );
}

#[test]
fn admin_port_is_only_in_the_admin_service_and_fenced_by_a_network_policy() {
    let services: Vec<Service> = one_of_kind("Service");
    assert_eq!(services.len(), 2);
    let targets = |s: &Service| -> Vec<String> {
        s.spec
            .ports
            .iter()
            .map(|p| p.target_port.to_string().trim_matches('"').to_owned())
            .collect()
    };
    let public = services
        .iter()
        .find(|s| s.metadata.name == "contact-discovery")
        .expect("public service");
    let admin = services
        .iter()
        .find(|s| s.metadata.name == "contact-discovery-admin")
        .expect("admin service");
    assert_eq!(targets(public), ["public"]);
    assert!(public.spec.ports.iter().all(|p| p.port != 9090));
    assert_eq!(targets(admin), ["admin"]);
    for service in &services {
        assert_eq!(service.spec.kind, "ClusterIP", "{}", service.metadata.name);
    }

    let policies: Vec<NetworkPolicy> = one_of_kind("NetworkPolicy");
    let [policy] = policies.as_slice() else {
        panic!("one NetworkPolicy expected");
    };
    assert_eq!(policy.spec.policy_types, ["Ingress"]);
    let admin_rules: Vec<_> = policy
        .spec
        .ingress
        .iter()
        .filter(|rule| rule.ports.iter().any(|p| p.port == 9090))
        .collect();
    assert!(!admin_rules.is_empty(), "a rule for the admin port");
    for rule in admin_rules {
        assert!(
            !rule.from.is_empty(),
            "the admin port must not be open to everyone"
        );
        assert!(
            rule.ports.iter().all(|p| p.port == 9090),
            "admin rule mixes ports"
        );
    }
}

#[test]
fn overlay_builds_on_the_base_and_generates_the_secret() {
    let overlay = deploy_dir().join("kubernetes/overlays/example");
    let docs = yaml_documents(&overlay.join("kustomization.yaml"));
    let k = &docs[0];
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(resources.contains(&"../../base"));
    for resource in resources {
        assert!(overlay.join(resource).exists(), "{resource} exists");
    }
    let generated = k["secretGenerator"][0]["name"].as_str();
    assert_eq!(generated, Some("contact-discovery-keys"));
    let keys: Vec<&str> = k["secretGenerator"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().split('=').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "server-secret",
            "admin-token",
            "metrics-token",
            "credential-key"
        ]
    );
}

// ---- Dockerfile ------------------------------------------------------------------------------
//
// scripts/container-test.sh builds and runs the image with other bases (no registry there); these
// check what it cannot: the defaults a published build uses.

/// The Dockerfile's instructions, continuation lines joined, comments and blank lines dropped.
fn dockerfile_instructions() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_defaults_are_the_published_bases() {
    let instructions = dockerfile_instructions();
    let first_from = instructions
        .iter()
        .position(|i| i.starts_with("FROM "))
        .unwrap();
    let args: std::collections::BTreeMap<&str, &str> = instructions[..first_from]
        .iter()
        .map(|i| {
            let arg = i
                .strip_prefix("ARG ")
                .expect("only ARGs before the first FROM");
            arg.split_once('=').expect("every global ARG has a default")
        })
        .collect();
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        args,
        std::collections::BTreeMap::from([
            ("RUST_VERSION", rust_version),
            ("BUILD_IMAGE", "rust:${RUST_VERSION}-bookworm"),
            ("RUNTIME_IMAGE", "gcr.io/distroless/cc-debian12:nonroot"),
            ("BINARY_FROM", "compile"),
        ]),
        "the published build compiles on the Rust image of the minimum supported Rust version and \
         runs on distroless"
    );
    let stages: Vec<&str> = instructions
        .iter()
        .filter_map(|i| i.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        stages,
        [
            "${BUILD_IMAGE} AS compile",
            "scratch AS prebuilt",
            "${BINARY_FROM} AS binary",
            "${RUNTIME_IMAGE}",
        ]
    );
    // The runtime stage: the binary from the chosen stage, /data made by the non-root user (a
    // fresh named volume takes its owner), and it runs as that user.
    let runtime = &instructions[instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .unwrap()..];
    let at = |wanted: &str| {
        runtime
            .iter()
            .position(|i| i == wanted)
            .unwrap_or_else(|| panic!("the runtime stage has `{wanted}`"))
    };
    at("COPY --from=binary /out/contact-discovery /usr/local/bin/contact-discovery");
    assert!(at("USER 65532:65532") < at("WORKDIR /data"));
    assert!(runtime.iter().filter(|i| i.starts_with("USER ")).count() == 1);
}

#[test]
fn dockerignore_lets_through_only_the_prebuilt_binary() {
    let instructions = dockerfile_instructions();
    let copied: Vec<&str> = instructions
        .iter()
        .skip_while(|i| *i != "FROM scratch AS prebuilt")
        .skip(1)
        .take_while(|i| !i.starts_with("FROM "))
        .filter_map(|i| i.strip_prefix("COPY "))
        .collect();
    let [copy] = copied.as_slice() else {
        panic!("the prebuilt stage copies one file: {copied:?}");
    };
    let source = copy.split_whitespace().next().unwrap();
    let ignore = std::fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let exceptions: Vec<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .collect();
    assert_eq!(exceptions, [source]);
    for excluded in ["target", "data", ".git", "fuzz/target"] {
        assert!(patterns.contains(&excluded), "{excluded} is excluded");
    }
    // The exception comes after the rule it overrides.
    let position = |p: &str| patterns.iter().position(|x| *x == p).unwrap();
    assert!(position("target") < position(&format!("!{source}")));
}

// ---- Metric names against a running server ---------------------------------------------------

/// Every `contact_discovery_*` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("contact_discovery_") {
        let start = i + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Metric families a running server exposes (`# TYPE` lines), with their types.
fn exported_families(exposition: &str) -> Vec<(String, String)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Starts the real service on port 0, sends an admin change, a discovery request and a 404,
/// and returns its `/metrics` text.
async fn scrape_a_running_server() -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.listeners.listen = "127.0.0.1:0".parse().unwrap();
    config.listeners.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.secrets.admin_token = Some("deploy-test-admin-token".parse().unwrap());
    let settings = Settings::try_from(config).unwrap();
    let app = Application::build_with_clock(&settings, Clock::System)
        .await
        .unwrap();
    app.warm_up_all().await;
    let keys = load_keys(&settings).unwrap();
    let (public, admin) = (app.public_addr(), app.admin_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let changed = http
        .post(format!("http://{admin}/admin/v1/registrations"))
        .bearer_auth("deploy-test-admin-token")
        .json(&serde_json::json!({"add": ["+4915112345678"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let info: protocol::EpochInfo = http
        .get(format!("http://{public}/v1/epoch"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (epoch, salt) = (info.epoch, info.decode_salt().unwrap());
    let fp = Fingerprint::compute(&salt, E164::parse("+4915112345678").unwrap());
    let now = contact_discovery::clock::Clock::System.now_secs();
    let credential = keys
        .credential_key
        .mint(&UserId::parse("metrics-user").unwrap(), now + 600);
    let found = http
        .post(format!("http://{public}/v1/discover"))
        .header("content-type", Format::Binary.content_type())
        .bearer_auth(credential)
        .body(protocol::encode_request(Format::Binary, epoch, &[fp]))
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    let missing = http
        .get(format!("http://{public}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .bearer_auth("deploy-test-admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    metrics
}

#[tokio::test]
async fn dashboard_and_alerts_query_only_metrics_the_server_exports() {
    let exposition = scrape_a_running_server().await;
    let families = exported_families(&exposition);
    assert!(families.len() >= 10, "{exposition}");
    let mut exported = BTreeSet::new();
    for (name, kind) in &families {
        exported.insert(name.clone());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    let exprs = queried_expressions();
    assert!(exprs.len() >= 15, "dashboard and rules hold queries");
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names_in(expr);
        queried.extend(names);
    }
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}");
    // The key signals are actually queried somewhere.
    for needed in [
        "contact_discovery_ready",
        "contact_discovery_http_requests_total",
        "contact_discovery_http_request_duration_seconds_bucket",
        "contact_discovery_index_build_seconds_sum",
        "contact_discovery_rate_limited_requests_total",
    ] {
        assert!(queried.contains(needed), "{needed} is not queried");
    }
}

#[test]
fn metric_name_extraction_finds_names_and_suffixes() {
    let names = metric_names_in(
        "sum(rate(contact_discovery_x_bucket{a=\"contact-discovery\"}[5m])) / up + xcontact_discovery_no",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["contact_discovery_x_bucket"]
    );
}
