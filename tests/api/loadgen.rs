//! `loadgen` against the real service: real fingerprints give the requested hit ratio, and an
//! epoch change mid-run (410) makes it refetch the salt and send the request again.

use std::time::Duration;

use contact_discovery::protocol::Format;
use contact_discovery::tools::generate;
use contact_discovery::tools::loadgen::{BatchSizes, ChangeArgs, LoadgenArgs, run};

use crate::helpers::spawn_app_with;

fn args(server: String, data_dir: std::path::PathBuf) -> LoadgenArgs {
    LoadgenArgs {
        server,
        rate: 200.0,
        duration: Duration::from_millis(1_500),
        batch: BatchSizes::LogNormal {
            median: 40.0,
            sigma: 0.8,
        },
        hit_ratio: 0.5,
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
