//! Epoch rotation under load: several protocol-following clients (the library `Client`, which
//! refetches the salt on 410) run discovery loops while the manual clock crosses two rotations
//! of a 60 s epoch. Every call must succeed with the right answers.

use std::num::NonZero;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use contact_discovery::client::{Client, ClientConfig};
use contact_discovery::clock::Clock;
use contact_discovery::domain::E164;
use contact_discovery::protocol::Format;
use contact_discovery::server::config::EpochLength;
use contact_discovery::store::registry::Op;
use contact_discovery::tools::generate;

use crate::helpers::{start, test_config};

/// A manual clock far in the future, so each client's own `not_after` check never fires and
/// every epoch change it sees comes from the server (410 after the grace period).
const FUTURE: u64 = 4_000_000_000 / 86_400 * 86_400 + 7_200;
const CLIENTS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_following_the_protocol_see_no_failures_across_two_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().to_path_buf());
    config.epochs.length = EpochLength::try_from(60).unwrap();
    config.limits.max_batch = NonZero::new(250).unwrap();
    config.limits.rate_limit_burst = NonZero::new(1_000_000_000).unwrap();
    config.limits.rate_limit_refill_per_day = NonZero::new(1_000_000_000).unwrap();
    let app = start(config, Clock::manual(FUTURE)).await;

    let numbers = generate::numbers(4_000, 5);
    let ops: Vec<Op> = numbers.iter().step_by(3).map(|n| Op::Add(*n)).collect();
    // Applied to every live index before it returns: no wait.
    app.state.admin.registry.apply(&ops).unwrap();
    let expected: Arc<Vec<bool>> = Arc::new((0..numbers.len()).map(|i| i % 3 == 0).collect());
    let numbers = Arc::new(numbers);

    let stop = Arc::new(AtomicBool::new(false));
    let calls: Arc<Vec<AtomicUsize>> =
        Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut config = ClientConfig::new(
            format!("http://{}", app.public),
            Some(app.credential(&format!("load-{c}"))),
        );
        config.format = if c % 2 == 0 {
            Format::Binary
        } else {
            Format::Json
        };
        let client = Client::new(config).unwrap();
        let (numbers, expected, stop, calls) = (
            Arc::clone(&numbers),
            Arc::clone(&expected),
            Arc::clone(&stop),
            Arc::clone(&calls),
        );
        tasks.push(tokio::spawn(async move {
            let (mut requests, mut refreshes) = (0, 0);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // A different slice each call: 600 numbers, so three batches per call.
                let start = (i * 613 + c * 97) % (numbers.len() - 600);
                let slice: &[E164] = &numbers[start..start + 600];
                let (registered, stats) = client
                    .discover(slice)
                    .await
                    .unwrap_or_else(|err| panic!("client {c} call {i} failed: {err}"));
                assert_eq!(
                    registered,
                    expected[start..start + 600],
                    "client {c} call {i}: wrong answers"
                );
                requests += stats.requests;
                refreshes += stats.epoch_refreshes;
                calls[c].fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            (i, requests, refreshes)
        }));
    }

    // Move the clock 5 s at a time across two rotations and past the first epoch's grace
    // period, letting every client finish at least one more call at each step.
    let first = FUTURE / 60;
    for _step in 0..27 {
        let before: Vec<usize> = calls.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        for _ in 0..2_000 {
            let progressed = calls
                .iter()
                .zip(&before)
                .all(|(n, b)| n.load(Ordering::Relaxed) > *b);
            if progressed || tasks.iter().any(|t| t.is_finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !tasks.iter().any(|t| t.is_finished()),
            "a client stopped early"
        );
        app.clock.advance(Duration::from_secs(5));
    }
    assert_eq!(
        app.clock.now_secs() / 60,
        first + 2,
        "two rotations happened"
    );
    stop.store(true, Ordering::Relaxed);

    let (mut calls_total, mut requests_total, mut refreshes_total) = (0, 0, 0);
    for task in tasks {
        let (calls, requests, refreshes) = task.await.expect("no client failed");
        assert!(
            refreshes >= 1,
            "every client crossed an epoch change via 410"
        );
        calls_total += calls;
        requests_total += requests;
        refreshes_total += refreshes;
    }
    eprintln!(
        "rotation under load: {CLIENTS} clients, {calls_total} discovery calls, \
         {requests_total} requests, {refreshes_total} epoch refreshes after 410, 0 failures"
    );
}
