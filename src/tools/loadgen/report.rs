//! The end-of-run report of `loadgen`: text for people, JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use super::changes::ChangesSummary;
use super::drive::UNDECODABLE;
use super::{DEFAULT_HIT_RATIO, LoadgenArgs, Mode};

/// Everything a run measured.
pub(super) struct Inputs {
    pub args: LoadgenArgs,
    pub scheduled: u64,
    pub late: u64,
    pub sending: Duration,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Fingerprints (private mode: blinded elements) in the requests answered 200.
    pub items_answered: u64,
    pub expected_hits: u64,
    pub matches: u64,
    pub server_cpu_seconds: Option<f64>,
    pub timeline: Vec<Histogram<u64>>,
    pub first_epoch: u64,
    pub final_epoch: u64,
    pub resent_after_410: u64,
    /// The change traffic's figures, when `--change-rate` asked for some.
    pub changes: Option<ChangesSummary>,
}

/// The summary of a load run.
pub struct Report {
    json: serde_json::Value,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// p50, p90, p99, p99.9 and max of a histogram of microseconds, in milliseconds.
pub(super) fn percentiles(histogram: &Histogram<u64>) -> BTreeMap<&'static str, f64> {
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)]
        .into_iter()
        .map(|(name, q)| (name, ms(histogram.value_at_quantile(q / 100.0))))
        .chain([("max", ms(histogram.max()))])
        .collect()
}

/// A status's key in the report: the number, `transport_error` for 0, `undecodable_200` for a
/// 200 whose body did not decode.
pub(super) fn status_name(status: u16) -> String {
    match status {
        0 => "transport_error".to_owned(),
        UNDECODABLE => "undecodable_200".to_owned(),
        _ => status.to_string(),
    }
}

impl Report {
    pub(super) fn new(i: Inputs) -> Self {
        let completed: u64 = i.statuses.values().sum();
        let ok = i.statuses.get(&200).copied().unwrap_or(0);
        let secs = i.sending.as_secs_f64().max(1e-9);
        let percentiles = percentiles(&i.latency);
        let statuses: BTreeMap<String, u64> = i
            .statuses
            .iter()
            .map(|(s, c)| (status_name(*s), *c))
            .collect();
        let timeline: Vec<_> = i
            .timeline
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(second, h)| {
                json!({
                    "second": second,
                    "requests": h.len(),
                    "p50_ms": ms(h.value_at_quantile(0.5)),
                    "p99_ms": ms(h.value_at_quantile(0.99)),
                    "max_ms": ms(h.max()),
                })
            })
            .collect();
        let mut json = json!({
            "server": i.args.server,
            "mode": i.args.mode.name(),
            "encoding": format!("{:?}", i.args.encoding).to_lowercase(),
            "batch": format!("{:?}", i.args.batch),
            // A closed loop has no target rate: it sends as answers come back.
            "target_rate": (!i.args.closed).then_some(i.args.rate),
            "closed_loop_in_flight": i.args.closed.then_some(i.args.max_in_flight),
            "duration_s": i.args.duration.as_secs_f64(),
            "scheduled": i.scheduled,
            "completed": completed,
            "ok": ok,
            "errors": completed - ok,
            "statuses": statuses,
            "late_starts": i.late,
            "elapsed_s": i.elapsed.as_secs_f64(),
            "requests_per_s": ok as f64 / secs,
            "mean_batch": if ok == 0 { 0.0 } else { i.items_answered as f64 / ok as f64 },
            "latency_ms": percentiles,
            "server_cpu_s": i.server_cpu_seconds,
            "first_epoch": i.first_epoch,
            "final_epoch": i.final_epoch,
            "resent_after_410": i.resent_after_410,
            "timeline": timeline,
            "changes": i.changes.as_ref().map(ChangesSummary::to_json),
        });
        if let Some(object) = json.as_object_mut() {
            object.extend(per_item(&i, secs));
            if i.args.mode == Mode::Hashed {
                object.extend(hit_ratios(&i));
            }
        }
        Self { json }
    }

    /// Wraps an already assembled JSON report (the Redis comparison).
    pub(super) fn from_json(json: serde_json::Value) -> Self {
        Self { json }
    }

    /// The report's fields (see `to_json`).
    pub fn as_json(&self) -> &serde_json::Value {
        &self.json
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        self.json.to_string()
    }

    /// The report as a few lines of text.
    pub fn render_text(&self) -> String {
        let j = &self.json;
        if j.get("target").is_some() {
            return serde_json::to_string_pretty(j).unwrap_or_default() + "\n";
        }
        let f = |k: &str| j[k].as_f64().unwrap_or(0.0);
        let mut out = String::new();
        let pace = match j["closed_loop_in_flight"].as_u64() {
            Some(in_flight) => format!("in a closed loop on {in_flight} connections"),
            None => format!("scheduled at {:.0}/s", f("target_rate")),
        };
        let _ = writeln!(
            out,
            "{} requests of {} {pace} for {:.1}s ({} mode, {} encoding, batch {})",
            j["completed"],
            j["scheduled"],
            f("duration_s"),
            j["mode"].as_str().unwrap_or(""),
            j["encoding"].as_str().unwrap_or(""),
            j["batch"].as_str().unwrap_or("")
        );
        let item = if j["mode"] == "private" {
            "element"
        } else {
            "fingerprint"
        };
        let _ = writeln!(
            out,
            "throughput: {:.0} requests/s, {:.0} {item}s/s (mean batch {:.0})",
            f("requests_per_s"),
            f(&format!("{item}s_per_s")),
            f("mean_batch")
        );
        let l = &j["latency_ms"];
        let _ = writeln!(
            out,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["p99.9"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(out, "statuses: {}  errors: {}", j["statuses"], j["errors"]);
        if j.get("hit_ratio_sent").is_some() {
            let _ = writeln!(
                out,
                "hit ratio: requested {:.3}, sent {:.3}, answered {:.3}",
                f("hit_ratio_requested"),
                f("hit_ratio_sent"),
                f("hit_ratio_answered")
            );
        } else {
            let _ = writeln!(
                out,
                "hit ratio: does not apply (the server cannot tell registered numbers' elements; \
                 matching happens on the client)"
            );
        }
        if let Some(cpu) = j["server_cpu_s"].as_f64() {
            let _ = writeln!(
                out,
                "server CPU: {cpu:.2} s, {:.1} ns per {item}",
                f(&format!("server_cpu_ns_per_{item}"))
            );
        }
        if j["late_starts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "warning: {} requests started more than 1 ms late (the generator is saturated)",
                j["late_starts"]
            );
        }
        if j["changes"].is_object() {
            render_changes(&mut out, &j["changes"]);
        }
        out
    }
}

/// The text lines of the `changes` object.
fn render_changes(out: &mut String, c: &serde_json::Value) {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "changes: {} sent in {} admin requests at {}/s ({} a request, mix {}): {}",
        n("sent"),
        n("requests"),
        c["rate"].as_f64().unwrap_or(0.0),
        n("per_request"),
        c["mix"].as_str().unwrap_or(""),
        c["kinds"]
    );
    let _ = writeln!(
        out,
        "admin answers: {} applied (200), {} accepted (202), {} errors: {}",
        n("applied_200"),
        n("accepted_202"),
        n("admin_errors"),
        c["admin_statuses"]
    );
    let _ = writeln!(
        out,
        "changes acknowledged {}, visible {}, never visible within {:.1}s {} ({} poll requests, {} poll errors)",
        n("acknowledged"),
        n("visible"),
        c["visible_timeout_s"].as_f64().unwrap_or(0.0),
        n("never_visible"),
        n("poll_requests"),
        n("poll_errors")
    );
    for (label, key) in [
        ("admin latency ms", "admin_latency_ms"),
        ("change→visible ms", "visible_latency_ms"),
    ] {
        let l = &c[key];
        let q = |k: &str| l[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{label}: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            q("p50"),
            q("p90"),
            q("p99"),
            q("p99.9"),
            q("max")
        );
    }
    if n("late_starts") > 0 {
        let _ = writeln!(
            out,
            "warning: {} admin requests started more than 1 ms late",
            n("late_starts")
        );
    }
    if n("requests_empty") > 0 || n("screened_out") > 0 {
        let _ = writeln!(
            out,
            "note: {} admin requests found no number left to change; {} candidate numbers were \
             not in the assumed state before the run and were left out",
            n("requests_empty"),
            n("screened_out")
        );
    }
}

/// The figures counted per item, named after the mode's item: `fingerprints_answered`,
/// `fingerprints_per_s` and `server_cpu_ns_per_fingerprint`, or the same for `elements`.
/// Server CPU is divided by the items the generator saw answered 200 (the server's whole CPU
/// over the run, so it includes what the refused requests cost).
fn per_item(i: &Inputs, secs: f64) -> serde_json::Map<String, serde_json::Value> {
    let item = i.args.mode.item();
    let cpu_ns = i.server_cpu_seconds.map(|cpu| {
        if i.items_answered == 0 {
            0.0
        } else {
            cpu * 1e9 / i.items_answered as f64
        }
    });
    [
        (format!("{item}s_answered"), json!(i.items_answered)),
        (
            format!("{item}s_per_s"),
            json!(i.items_answered as f64 / secs),
        ),
        (format!("server_cpu_ns_per_{item}"), json!(cpu_ns)),
    ]
    .into_iter()
    .collect()
}

/// The hashed mode's hit ratios: requested, sent, and found by the server.
fn hit_ratios(i: &Inputs) -> serde_json::Map<String, serde_json::Value> {
    [
        (
            "hit_ratio_requested",
            json!(i.args.hit_ratio.unwrap_or(DEFAULT_HIT_RATIO)),
        ),
        (
            "hit_ratio_sent",
            json!(ratio(i.expected_hits, i.items_answered)),
        ),
        (
            "hit_ratio_answered",
            json!(ratio(i.matches, i.items_answered)),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
