//! The monitoring files of `deploy/` as the tests read them: the alert rules and every PromQL
//! expression the dashboard and the rules query.

/// The `deploy/` folder.
pub fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A YAML file of `deploy/prometheus/`.
pub fn prometheus_yaml(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(deploy_dir().join("prometheus").join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// The rules of `alerts.yml`, every group's.
pub fn alert_rules() -> Vec<serde_json::Value> {
    prometheus_yaml("alerts.yml")["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Every PromQL expression of the dashboard and of the alert rules.
pub fn queried_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/dashboards/contact-discovery.json"))
            .expect("the dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    exprs.extend(
        alert_rules()
            .iter()
            .filter_map(|rule| rule["expr"].as_str().map(str::to_owned)),
    );
    exprs
}
