//! `loadgen` against the real service: real fingerprints give the requested hit ratio, and an
//! epoch change mid-run (410) makes it refetch the salt and send the request again. In the
//! private mode every answer carries as many evaluated elements as were sent, and a key epoch
//! change (410) makes it refetch the manifest's key epoch.

use std::time::Duration;

use contact_discovery::protocol::Format;
use contact_discovery::server::api::private::PrivateMode;
use contact_discovery::tools::generate;
use contact_discovery::tools::loadgen::{BatchSizes, ChangeArgs, LoadgenArgs, Mode, run};

use crate::helpers::spawn_app_with;

fn args(server: String, data_dir: std::path::PathBuf) -> LoadgenArgs {
    LoadgenArgs {
        server,
        mode: Mode::Hashed,
        rate: 200.0,
        duration: Duration::from_millis(1_500),
        batch: BatchSizes::LogNormal {
            median: 40.0,
            sigma: 0.8,
        },
        hit_ratio: Some(0.5),
        registry_seed: 1,
        registry_size: 300,
        pool: 300,
        bodies: 32,
        encoding: Format::Binary,
        users: 20,
        data_dir,
        credential_key_file: None,
        anonymous: false,
        max_in_flight: 16,
        closed: false,
        threads: 1,
        server_pid: Some(std::process::id()),
        json: true,
        hdr_log: None,
        plot: None,
        redis: None,
        changes: ChangeArgs::default(),
    }
}

/// An app with the 300 numbers of seed 1 registered, accepting long-lived credentials (they
/// are minted on the system clock; the app runs on a manual one).
async fn app_with_300_numbers() -> crate::helpers::TestApp {
    let app =
        spawn_app_with(|c| c.auth.max_credential_ttl = Duration::from_secs(u64::MAX / 4)).await;
    let numbers: Vec<String> = generate::numbers(300, 1)
        .iter()
        .map(|n| n.to_string())
        .collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    app.change(&refs, &[], &[]).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_gets_real_answers_and_follows_an_epoch_change() {
    let app = app_with_300_numbers().await;

    let mut args = args(format!("http://{}", app.public), app.data_dir.clone());
    let report = run(&args).await.unwrap();
    let j = report.as_json();
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["ok"], j["scheduled"], "{j}");
    assert!(j["ok"].as_u64().unwrap() >= 250, "{j}");
    // Every hit sent is found; misses from another seed are (almost surely) not registered.
    let sent = j["hit_ratio_sent"].as_f64().unwrap();
    let answered = j["hit_ratio_answered"].as_f64().unwrap();
    assert!((sent - answered).abs() < 0.01, "{j}");
    assert!((0.4..0.6).contains(&sent), "{j}");
    assert!(j["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    // Move the clock two epochs on while a run is going: requests for the old epoch get 410,
    // the generator refetches the epoch and later requests succeed again.
    args.encoding = Format::Json;
    args.duration = Duration::from_secs(3);
    let clock = app.clock.clone();
    let state = app.state.clone();
    let mover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        clock.advance(Duration::from_secs(2 * 86_400));
        // Wait for the new epoch's index so the retry can succeed.
        for _ in 0..400 {
            if state.public.indexes.is_ready(clock.now_secs()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let report = run(&args).await.unwrap();
    mover.await.unwrap();
    let j = report.as_json();
    // Requests answered 410 were sent again under the refetched epoch, as the protocol asks;
    // a final 410 remains only if that refetch itself came too early.
    assert!(j["resent_after_410"].as_u64().unwrap() > 0, "{j}");
    let gone = j["statuses"]["410"].as_u64().unwrap_or(0);
    let ok = j["ok"].as_u64().unwrap();
    // Right after the jump the new epoch's index may still be building: 503, counted too.
    let not_ready = j["statuses"]["503"].as_u64().unwrap_or(0);
    assert_eq!(
        ok + gone + not_ready,
        j["scheduled"].as_u64().unwrap(),
        "{j}"
    );
    // About 100 requests were sent before the change: most successes came after the refetch.
    assert!(ok > 300, "{j}");
    assert_eq!(
        j["final_epoch"].as_u64().unwrap(),
        j["first_epoch"].as_u64().unwrap() + 2,
        "{j}"
    );
    assert_eq!(
        j["errors"].as_u64().unwrap(),
        j["statuses"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s != "200")
            .map(|(_, c)| c.as_u64().unwrap())
            .sum::<u64>()
    );
}

/// An app serving the private mode with one-day key epochs (so a test can move the clock past
/// one), the 300 numbers of seed 1 registered, its private set built.
async fn private_app_with_300_numbers() -> crate::helpers::TestApp {
    let app = spawn_app_with(|c| {
        c.auth.max_credential_ttl = Duration::from_secs(u64::MAX / 4);
        c.private.enabled = true;
        c.private.key_epoch = 86_400.try_into().unwrap();
    })
    .await;
    let numbers: Vec<String> = generate::numbers(300, 1)
        .iter()
        .map(|n| n.to_string())
        .collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    app.change(&refs, &[], &[]).await;
    app
}

fn private_args(app: &crate::helpers::TestApp) -> LoadgenArgs {
    let mut args = args(format!("http://{}", app.public), app.data_dir.clone());
    args.mode = Mode::Private;
    args.hit_ratio = None;
    args.batch = BatchSizes::Fixed(25);
    args
}

/// Elements the server has evaluated since it started (`private_elements_evaluated_total`).
fn elements_evaluated(app: &crate::helpers::TestApp) -> u64 {
    app.state.public.metrics.private.elements_evaluated.get()
}

/// Whether the private set of the key epoch now current is live.
fn private_set_ready(app: &crate::helpers::TestApp) -> bool {
    match &app.state.public.private {
        PrivateMode::On(parts) => parts.sets.is_ready(app.clock.now_secs()),
        PrivateMode::Off => false,
    }
}

/// `--mode private`: every request is answered 200 with as many evaluated elements as it sent,
/// and the elements the report counts are exactly those the server evaluated. The report has
/// no hit ratio (the server cannot tell a hit) and counts CPU per element; the plot says it
/// shows the private mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_the_private_mode_with_answers_the_size_of_each_batch() {
    let app = private_app_with_300_numbers().await;
    assert!(private_set_ready(&app));
    let before = elements_evaluated(&app);
    let out = tempfile::tempdir().unwrap();
    let mut args = private_args(&app);
    args.plot = Some(out.path().join("private.svg"));
    let report = run(&args).await.unwrap();
    let j = report.as_json();
    assert_eq!(j["mode"], "private", "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["ok"], j["scheduled"], "{j}");
    assert_eq!(j["statuses"]["200"], j["scheduled"], "{j}");
    let ok = j["ok"].as_u64().unwrap();
    assert!(ok >= 250, "{j}");
    assert_eq!(j["elements_answered"].as_u64().unwrap(), ok * 25, "{j}");
    assert_eq!(elements_evaluated(&app) - before, ok * 25, "{j}");
    assert_eq!(j["mean_batch"], 25.0, "{j}");
    assert!(
        j["server_cpu_ns_per_element"].as_f64().unwrap() > 0.0,
        "{j}"
    );
    for absent in [
        "hit_ratio_sent",
        "hit_ratio_answered",
        "fingerprints_answered",
    ] {
        assert!(j.get(absent).is_none(), "{absent}: {j}");
    }
    let text = report.render_text();
    assert!(text.contains("elements/s (mean batch 25)"), "{text}");
    assert!(text.contains("hit ratio: does not apply"), "{text}");
    assert!(text.contains("ns per element"), "{text}");
    let svg = std::fs::read_to_string(out.path().join("private.svg")).unwrap();
    assert!(
        svg_texts(&svg)
            .iter()
            .any(|t| t.starts_with("private mode, open loop at 200 requests/s")),
        "{svg}"
    );
    app.stop().await;
}

/// A key epoch change mid-run: requests under the old key epoch are answered
/// `410 key_epoch_unavailable`, the generator refetches the manifest's key epoch and sends
/// them again under it, as the hashed mode does with `/v1/epoch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_in_the_private_mode_follows_a_key_epoch_change() {
    let app = private_app_with_300_numbers().await;
    let mut args = private_args(&app);
    args.encoding = Format::Json;
    args.batch = BatchSizes::LogNormal {
        median: 20.0,
        sigma: 0.8,
    };
    args.duration = Duration::from_secs(3);
    let before = elements_evaluated(&app);
    let clock = app.clock.clone();
    let state = app.state.clone();
    let mover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        clock.advance(Duration::from_secs(2 * 86_400));
        for _ in 0..400 {
            let ready = match &state.public.private {
                PrivateMode::On(parts) => parts.sets.is_ready(clock.now_secs()),
                PrivateMode::Off => false,
            };
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let report = run(&args).await.unwrap();
    mover.await.unwrap();
    let j = report.as_json();
    assert!(j["resent_after_410"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(
        j["final_epoch"].as_u64().unwrap(),
        j["first_epoch"].as_u64().unwrap() + 2,
        "{j}"
    );
    let ok = j["ok"].as_u64().unwrap();
    assert!(ok > 300, "{j}");
    // A final 410 or 503 only if the refetch came before the new key epoch's set was built;
    // never an answer that did not decode.
    let gone = j["statuses"]["410"].as_u64().unwrap_or(0);
    let not_ready = j["statuses"]["503"].as_u64().unwrap_or(0);
    assert_eq!(
        ok + gone + not_ready,
        j["scheduled"].as_u64().unwrap(),
        "{j}"
    );
    assert_eq!(
        elements_evaluated(&app) - before,
        j["elements_answered"].as_u64().unwrap(),
        "{j}"
    );
    app.stop().await;
}

/// A closed-loop run has no target rate: the report says how many connections it kept busy
/// instead of a schedule it did not follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_reports_its_connections_not_a_rate() {
    let app = app_with_300_numbers().await;
    let mut args = args(format!("http://{}", app.public), app.data_dir.clone());
    args.closed = true;
    args.max_in_flight = 3;
    args.duration = Duration::from_secs(1);
    let report = run(&args).await.unwrap();
    let j = report.as_json();
    assert!(j["ok"].as_u64().unwrap() > 0, "{j}");
    assert!(j["target_rate"].is_null(), "{j}");
    assert_eq!(j["closed_loop_in_flight"], 3, "{j}");
    let text = report.render_text();
    assert!(text.contains("in a closed loop on 3 connections"), "{text}");
    assert!(!text.contains("scheduled at"), "{text}");
    app.stop().await;
}

/// `--hdr-log` and `--plot`: the interval log holds exactly the requests the report counts, one
/// interval a second of scheduled start, and reads back the same with the crate's reader and
/// with HdrHistogram's Python port (independent code, via scripts/read-hdr-log.sh); the plot is
/// well-formed XML with both charts. Existing files are replaced, and no temporary is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_leaves_an_interval_log_and_a_plot_that_agree_with_its_report() {
    let app = app_with_300_numbers().await;
    let out = tempfile::tempdir().unwrap();
    let mut args = args(format!("http://{}", app.public), app.data_dir.clone());
    let log_path = out.path().join("run.hlog");
    let svg_path = out.path().join("run.svg");
    args.hdr_log = Some(log_path.clone());
    args.plot = Some(svg_path.clone());
    std::fs::write(&svg_path, "an older run's plot").unwrap();
    let report = run(&args).await.unwrap();
    app.stop().await;
    let j = report.as_json();
    // 200/s for 1.5 s: 300 requests, an even count (see the Python check's p50).
    assert_eq!(j["completed"], 300, "{j}");
    let latency = |q: &str| (j["latency_ms"][q].as_f64().unwrap() * 1_000.0).round() as u64;

    let intervals = hdr_log_intervals(&std::fs::read(&log_path).unwrap());
    let shape: Vec<(u128, u128)> = intervals
        .iter()
        .map(|(start, length, _)| (start.as_millis(), length.as_millis()))
        .collect();
    assert_eq!(shape, [(0, 1_000), (1_000, 500)]);
    let mut total = intervals[0].2.clone();
    total.add(&intervals[1].2).unwrap();
    assert_eq!(total.len(), 300);
    assert_eq!(total.value_at_quantile(0.99), latency("p99"), "{j}");
    assert_eq!(total.max(), latency("max"), "{j}");
    let per_second: Vec<u64> = intervals.iter().map(|(_, _, h)| h.len()).collect();
    let reported: Vec<u64> = j["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(per_second, reported, "{j}");

    match read_with_python(&log_path) {
        Some(py) => {
            assert_eq!(py["count"], 300, "{py}");
            assert_eq!(py["max_us"], latency("max"), "{py} {j}");
            // Python rounds the count at a percentile where Rust rounds up; at p50 of an even
            // count both pick the same request.
            assert_eq!(py["p50_us"], latency("p50"), "{py} {j}");
            let counts: Vec<u64> = py["intervals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["count"].as_u64().unwrap())
                .collect();
            assert_eq!(counts, reported, "{py}");
            assert_eq!(py["intervals"][1]["offset_s"], 1.0, "{py}");
            assert_eq!(py["intervals"][1]["length_s"], 0.5, "{py}");
        }
        None => eprintln!(
            "SKIPPED the HdrHistogram_py check of --hdr-log: no python3 on PATH (install python3 \
             and python3-venv to run it)"
        ),
    }

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let texts = svg_texts(&svg);
    let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
    assert!(has("Latency by percentile"), "{texts:?}");
    assert!(has("Latency over time"), "{texts:?}");
    assert!(
        has(
            "hashed mode, open loop at 200 requests/s for 1s 500ms, binary encoding, batch \
             lognormal:40:0.8"
        ),
        "{texts:?}"
    );
    for label in ["99%", "99.9%", "latency (ms)", "p50", "p99", "max"] {
        assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
    }
    // The spectrum, and p50, p99 and max over time: four lines.
    assert!(svg.matches("<polyline").count() >= 4, "{svg}");
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
}

/// (start, length, histogram) of each interval of an interval log, read with the crate's
/// `IntervalLogIterator` and V2 deserializer.
fn hdr_log_intervals(log: &[u8]) -> Vec<(Duration, Duration, hdrhistogram::Histogram<u64>)> {
    use base64::Engine as _;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let mut deserializer = Deserializer::new();
    let mut base_time = None;
    let mut intervals = Vec::new();
    for entry in IntervalLogIterator::new(log) {
        match entry.unwrap() {
            LogEntry::BaseTime(t) => base_time = Some(t),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                intervals.push((i.start_timestamp(), i.duration(), h));
            }
        }
    }
    assert!(
        base_time.is_some(),
        "timestamps are offsets from a BaseTime"
    );
    intervals
}

/// What HdrHistogram_py reads in the log (scripts/read-hdr-log.sh), or None without python3.
fn read_with_python(log: &std::path::Path) -> Option<serde_json::Value> {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/read-hdr-log.sh");
    let out = std::process::Command::new(script)
        .arg(log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The text of every element of an SVG document, after checking it is well-formed: one `<svg>`
/// root, every element closed in order (quick-xml checks end names), nothing after the root.
fn svg_texts(svg: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(svg);
    let (mut depth, mut roots, mut texts) = (0usize, Vec::new(), Vec::new());
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                depth += 1;
            }
            Event::End(_) => depth -= 1,
            Event::Empty(e) if depth == 0 => {
                roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Event::Text(t) => texts.push(t.decode().unwrap().trim().to_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "every element closed");
    assert_eq!(roots, ["svg"]);
    texts.retain(|t| !t.is_empty());
    texts
}
