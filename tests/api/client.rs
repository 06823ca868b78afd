//! The library `Client` against the real server: batching, epoch change mid-run, 429 waited out.

use std::num::NonZero;
use std::time::Duration;

use contact_discovery::client::{Client, ClientConfig, ClientError};
use contact_discovery::clock::Clock;
use contact_discovery::domain::E164;
use contact_discovery::protocol::Format;
use contact_discovery::store::registry::Op;
use contact_discovery::tools::generate;

use crate::helpers::{TestApp, start, test_config};

/// A manual clock in the future, so the client's own check of `not_after` never fires and every
/// epoch change it sees comes from the server's 410.
const FUTURE: u64 = 4_000_000_000 / 86_400 * 86_400;

async fn app_with(
    adjust: impl FnOnce(&mut contact_discovery::server::config::Config),
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().to_path_buf());
    adjust(&mut config);
    (start(config, Clock::manual(FUTURE + 7_200)).await, dir)
}

/// Registers every other number of `numbers` and returns which are registered.
async fn register_half(app: &TestApp, numbers: &[E164]) -> Vec<bool> {
    let ops: Vec<Op> = numbers.iter().step_by(2).map(|n| Op::Add(*n)).collect();
    // Applied to every live index before it returns: no wait.
    app.state.admin.registry.apply(&ops).unwrap();
    (0..numbers.len()).map(|i| i % 2 == 0).collect()
}

fn client(app: &TestApp, format: Format) -> Client {
    let mut config = ClientConfig::new(
        format!("http://{}", app.public),
        Some(app.credential("client-test")),
    );
    config.format = format;
    Client::new(config).unwrap()
}

#[tokio::test]
async fn large_address_books_are_split_into_batches() {
    let (app, _dir) = app_with(|c| c.limits.max_batch = NonZero::new(1_000).unwrap()).await;
    let numbers = generate::numbers(25_000, 11);
    let expected = register_half(&app, &numbers).await;
    for format in [Format::Binary, Format::Json] {
        let mut batches = 0;
        let (registered, stats) = client(&app, format)
            .discover_with_progress(&numbers, |p| batches = p.batches)
            .await
            .unwrap();
        assert_eq!(registered, expected);
        assert_eq!(batches, 25);
        assert_eq!(stats.requests, 25);
    }
}

// Multi-threaded: the progress callback blocks until the rotation task (on another worker) has
// built the new epoch's index, so the next request meets a ready server with a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_in_the_middle_of_a_run_is_absorbed() {
    let (app, _dir) = app_with(|c| c.limits.max_batch = NonZero::new(1_000).unwrap()).await;
    let numbers = generate::numbers(10_000, 12);
    let expected = register_half(&app, &numbers).await;
    // The credential must outlive the jump of two epochs.
    let user = contact_discovery::domain::UserId::parse("long-run").unwrap();
    let credential = app
        .credential_key
        .mint(&user, app.clock.now_secs() + 4 * 86_400);
    let client = Client::new(ClientConfig::new(
        format!("http://{}", app.public),
        Some(credential),
    ))
    .unwrap();
    let (first_epoch, _) = app.epoch().await;
    let (registered, stats) = client
        .discover_with_progress(&numbers, |p| {
            if p.batches == 3 {
                // Two epochs on: the epoch the client holds is out of its grace period.
                app.clock.advance(Duration::from_secs(2 * 86_400));
                let now = app.clock.now_secs();
                for _ in 0..2_000 {
                    if app.state.public.indexes.is_ready(now) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(registered, expected);
    assert_eq!(stats.epoch_refreshes, 1, "{stats:?}");
    assert_eq!(stats.requests, 11);
    let (last_epoch, _) = app.epoch().await;
    assert_eq!(last_epoch, first_epoch + 2);
}

#[tokio::test]
async fn a_rate_limit_is_waited_out() {
    // 1,000 fingerprints at once, refilled at 1,000 per second.
    let (app, _dir) = app_with(|c| {
        c.limits.max_batch = NonZero::new(1_000).unwrap();
        c.limits.rate_limit_burst = NonZero::new(1_000).unwrap();
        c.limits.rate_limit_refill_per_day = NonZero::new(86_400_000).unwrap();
    })
    .await;
    let numbers = generate::numbers(2_500, 13);
    let expected = register_half(&app, &numbers).await;
    let (registered, stats) = client(&app, Format::Binary)
        .discover(&numbers)
        .await
        .unwrap();
    assert_eq!(registered, expected);
    assert!(stats.rate_limit_waits >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_rate_limit_longer_than_allowed_is_an_error() {
    let (app, _dir) = app_with(|c| {
        c.limits.max_batch = NonZero::new(100).unwrap();
        c.limits.rate_limit_burst = NonZero::new(100).unwrap();
        c.limits.rate_limit_refill_per_day = NonZero::new(1).unwrap();
    })
    .await;
    let numbers = generate::numbers(300, 14);
    let mut config = ClientConfig::new(format!("http://{}", app.public), Some(app.credential("x")));
    config.max_rate_limit_wait = Duration::from_secs(5);
    let err = Client::new(config)
        .unwrap()
        .discover(&numbers)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::RateLimitedTooLong(_)), "{err}");
}

#[tokio::test]
async fn refusals_carry_the_server_code() {
    let (app, _dir) = app_with(|_| {}).await;
    let config = ClientConfig::new(
        format!("http://{}", app.public),
        Some("nobody.1.AAAA".into()),
    );
    let err = Client::new(config)
        .unwrap()
        .discover(&generate::numbers(3, 1))
        .await
        .unwrap_err();
    match err {
        ClientError::Refused { status, code, .. } => {
            assert_eq!((status, code.as_str()), (401, "invalid_credential"))
        }
        other => panic!("unexpected {other}"),
    }
}

/// The whole `discover` path on an address book file of 25,000 contacts, split into batches.
#[tokio::test]
async fn an_address_book_of_25000_contacts_is_discovered_in_batches() {
    use contact_discovery::commands::{DiscoverArgs, discover};

    let (app, dir) = app_with(|c| c.limits.max_batch = NonZero::new(1_000).unwrap()).await;
    let numbers = generate::numbers(25_000, 21);
    let expected = register_half(&app, &numbers).await;
    // A Google Contacts export, one contact per number.
    let mut csv = String::from("Name,Phone 1 - Type,Phone 1 - Value\n");
    for (i, n) in numbers.iter().enumerate() {
        csv.push_str(&format!("Contact {i},Mobile,{n}\n"));
    }
    let path = dir.path().join("big.csv");
    std::fs::write(&path, csv).unwrap();
    let report = discover(&DiscoverArgs {
        server: format!("http://{}", app.public),
        credential: Some(app.credential("big-book")),
        contacts: path,
        region: None,
        phone_columns: Vec::new(),
        format: Format::Binary,
        json: true,
        timeout: Duration::from_secs(30),
        mode: contact_discovery::commands::DiscoverMode::Hashed,
        cache: None,
    })
    .await
    .unwrap();
    assert_eq!(report.summary.contacts, 25_000);
    assert_eq!(report.summary.unique_numbers, 25_000);
    assert_eq!(report.summary.unparseable, 0);
    assert_eq!(
        report.summary.registered,
        expected.iter().filter(|r| **r).count()
    );
    for (contact, registered) in report.contacts.iter().zip(&expected) {
        assert_eq!(contact.reachable, *registered);
    }
    let looked_up = app.state.public.metrics.fingerprints.get();
    assert_eq!(
        looked_up, 25_000,
        "every number looked up once, in batches of 1,000"
    );
}
