//! The live match index through the real process (issue 13): an admin change answered `200` is
//! discoverable by the very next request, across a next-epoch build and an epoch boundary
//! (60 s epochs), while other clients keep asking; numbers nobody changes never flicker.
//!
//! It runs until the service has built an index and crossed an epoch boundary while changes
//! flowed: between 15 and about 75 seconds, depending on where in the minute it starts.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contact_discovery::client::{Client, ClientConfig};
use contact_discovery::domain::E164;
use contact_discovery::tools::generate;
use rand::{Rng, SeedableRng};

/// Registered before the start and never changed.
const STABLE: usize = 50_000;
/// Numbers the test adds, hides and removes at random.
const CHURN: usize = 400;

fn line(n: &E164) -> String {
    format!("+{}\n", n.get())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    Discoverable,
    Hidden,
    Absent,
}

/// How many index builds the server has finished (its histogram's count; 0 before the first).
async fn builds(http: &reqwest::Client, server: &common::Server) -> f64 {
    let text = server.metrics(http).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("contact_discovery_index_build_seconds_count")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_is_discoverable_at_once_across_builds_and_a_boundary_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let numbers = generate::numbers(STABLE + CHURN + 1_000, 31);
    let (stable, rest) = numbers.split_at(STABLE);
    let (churn, never) = rest.split_at(CHURN);
    common::import(dir.path(), &stable.iter().map(line).collect::<String>());
    let server = common::start_server(
        dir.path(),
        &[
            "--epoch-seconds",
            "60",
            "--epoch-grace-seconds",
            "20",
            "--rate-limit-burst",
            "1000000000",
            "--rate-limit-refill-per-day",
            "1000000000",
        ],
    );
    let http = reqwest::Client::new();
    let ready = Instant::now();
    while http
        .get(format!("http://{}/readyz", server.public))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(ready.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = |user: &str| {
        Client::new(ClientConfig::new(
            format!("http://{}", server.public),
            Some(common::credential(dir.path(), user)),
        ))
        .unwrap()
    };
    let changer = client("changer");
    let first_epoch = changer.fetch_epoch().await.unwrap().epoch;
    let builds_before = builds(&http, &server).await;

    // Load: other users keep asking for numbers nobody changes, registered or not.
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for task in 0..3u64 {
        let (stop, asked) = (Arc::clone(&stop), Arc::clone(&asked));
        let client = client(&format!("load-{task}"));
        let stable = stable.to_vec();
        let never = never.to_vec();
        load.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(task);
            while !stop.load(Ordering::Relaxed) {
                let ask: Vec<E164> = (0..200)
                    .map(|i| {
                        if i % 2 == 0 {
                            stable[rng.random_range(0..stable.len())]
                        } else {
                            never[rng.random_range(0..never.len())]
                        }
                    })
                    .collect();
                let (found, _) = client.discover(&ask).await.unwrap();
                for (i, hit) in found.iter().enumerate() {
                    assert_eq!(*hit, i % 2 == 0, "an unchanged number flickered");
                }
                asked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // One admin change of one number; its status.
    let change = |list: &'static str, number: &str| {
        let request = http
            .post(format!("http://{}/admin/v1/registrations", server.admin))
            .bearer_auth(common::ADMIN_TOKEN)
            .json(&serde_json::json!({ list: [number] }));
        async move { request.send().await.unwrap().status() }
    };

    // Changes, each asked for straight after its answer.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let mut model: HashMap<usize, Want> = HashMap::new();
    let started = Instant::now();
    let mut changes = 0u64;
    loop {
        let i = rng.random_range(0..churn.len());
        let number = format!("+{}", churn[i].get());
        let (list, want) = match rng.random_range(0..4) {
            0 | 1 => ("add", Want::Discoverable),
            2 => ("hide", Want::Hidden),
            _ => ("remove", Want::Absent),
        };
        assert_eq!(change(list, &number).await, 200);
        model.insert(i, want);
        changes += 1;
        let (found, _) = changer.discover(&[churn[i]]).await.unwrap();
        assert_eq!(
            found[0],
            want == Want::Discoverable,
            "change {changes} ({list}) was answered 200 but not seen by the next request"
        );

        let epoch = changer.fetch_epoch().await.unwrap().epoch;
        if epoch > first_epoch && builds(&http, &server).await > builds_before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "no build and boundary within 150 s"
        );
    }
    // A few more seconds past the boundary, under the grace period's two live indexes.
    let past = Instant::now();
    while past.elapsed() < Duration::from_secs(3) {
        let i = rng.random_range(0..churn.len());
        assert_eq!(change("add", &format!("+{}", churn[i].get())).await, 200);
        model.insert(i, Want::Discoverable);
        assert!(changer.discover(&[churn[i]]).await.unwrap().0[0]);
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(asked.load(Ordering::Relaxed) > 10, "the load ran");

    // Every changed number, asked at the end in one batch, answers as its last change says.
    let (found, _) = changer.discover(churn).await.unwrap();
    for (i, hit) in found.iter().enumerate() {
        let want = model.get(&i).copied().unwrap_or(Want::Absent);
        assert_eq!(*hit, want == Want::Discoverable, "churn number {i}");
    }
    eprintln!(
        "{changes} changes over {:.0} s, {} load requests",
        started.elapsed().as_secs_f64(),
        asked.load(Ordering::Relaxed)
    );
    server.kill9();
}
