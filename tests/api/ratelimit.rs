//! The per-user fingerprint budget: 429 with Retry-After, per user, spent by lookups and by
//! refused bodies.

use std::num::NonZero;

use contact_discovery::domain::Fingerprint;
use contact_discovery::protocol::{self, Format};

use crate::helpers::{
    RawResponse, TestApp, assert_error, fingerprints, metric_or_zero, registered_indices,
    spawn_app_with,
};

const BURST: usize = 10;
const REGISTERED: &str = "+4915112345678";

/// An app where each user may look up `BURST` fingerprints, refilled one a day.
async fn limited_app() -> TestApp {
    let app = spawn_app_with(|c| {
        c.limits.rate_limit_burst = NonZero::new(BURST as u32).unwrap();
        c.limits.rate_limit_refill_per_day = NonZero::new(1).unwrap();
        c.limits.max_batch = NonZero::new(BURST).unwrap();
    })
    .await;
    app.change(&[REGISTERED], &[], &[]).await;
    app
}

/// `n` fingerprints under the current salt, the first one of the registered number.
async fn batch(app: &TestApp, n: usize) -> (u64, Vec<Fingerprint>) {
    let (epoch, salt) = app.epoch().await;
    let mut fps = fingerprints(&salt, &[REGISTERED]);
    fps.extend((1..n as u64).map(|i| Fingerprint::from_bytes(i.to_be_bytes())));
    fps.truncate(n);
    (epoch, fps)
}

async fn ask(app: &TestApp, user: &str, format: Format, n: usize) -> RawResponse {
    let (epoch, fps) = batch(app, n).await;
    app.discover_fps(format, &app.credential(user), epoch, &fps)
        .await
}

fn assert_rate_limited(response: &RawResponse) {
    let error = assert_error(response, 429, "rate_limited");
    let header: u64 = response
        .1
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    let body = error["retry_after"]
        .as_u64()
        .expect("a numeric retry_after");
    assert!(header >= 1);
    assert_eq!(header, body);
}

#[tokio::test]
async fn spending_the_budget_gives_429_rate_limited_with_retry_after() {
    let app = limited_app().await;
    let response = ask(&app, "alice", Format::Binary, 6).await;
    assert_eq!(response.0, 200);
    let response = ask(&app, "alice", Format::Json, 4).await;
    assert_eq!(response.0, 200);
    let (epoch, fps) = batch(&app, 1).await;
    for format in [Format::Binary, Format::Json] {
        let response = app
            .discover_fps(format, &app.credential("alice"), epoch, &fps)
            .await;
        assert_rate_limited(&response);
        // The refusal does not quote what was uploaded.
        let text = String::from_utf8_lossy(&response.2);
        assert!(
            !text.contains(&protocol::encode_fingerprint(fps[0])),
            "{text}"
        );
        assert!(
            !text.contains(&crate::helpers::hex(&fps[0].to_bytes())),
            "{text}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_batch_larger_than_the_remaining_budget_is_refused_whole() {
    let app = limited_app().await;
    assert_eq!(ask(&app, "alice", Format::Binary, 7).await.0, 200);
    assert_rate_limited(&ask(&app, "alice", Format::Binary, 4).await);
    // The refused batch took nothing: the three left are still there.
    let response = ask(&app, "alice", Format::Binary, 3).await;
    assert_eq!(response.0, 200);
    let (epoch, _) = app.epoch().await;
    assert_eq!(
        registered_indices(Format::Binary, epoch, 3, &response.2),
        vec![0]
    );
    app.stop().await;
}

#[tokio::test]
async fn budgets_are_per_user() {
    let app = limited_app().await;
    assert_eq!(ask(&app, "alice", Format::Binary, BURST).await.0, 200);
    assert_rate_limited(&ask(&app, "alice", Format::Binary, 1).await);
    let response = ask(&app, "bob", Format::Binary, BURST).await;
    assert_eq!(response.0, 200);
    let (epoch, _) = app.epoch().await;
    assert_eq!(
        registered_indices(Format::Binary, epoch, BURST, &response.2),
        vec![0]
    );
    // A new credential for alice does not reset her budget.
    let fresh = app.credential_key.mint(
        &contact_discovery::domain::UserId::parse("alice").unwrap(),
        app.clock.now_secs() + 60,
    );
    let (epoch, fps) = batch(&app, 1).await;
    assert_rate_limited(&app.discover_fps(Format::Binary, &fresh, epoch, &fps).await);
    app.stop().await;
}

/// Checks that `user` has exactly `left` fingerprints of budget: `left` pass, one more is 429.
async fn assert_budget_left(app: &TestApp, user: &str, left: usize) {
    if left > 0 {
        let response = ask(app, user, Format::Binary, left).await;
        assert_eq!(response.0, 200, "{user} should have {left} left");
    }
    assert_rate_limited(&ask(app, user, Format::Binary, 1).await);
}

/// Issue 11, finding 11: refused requests used to be free, so a client could make the server
/// read and decode up to 1.6 MB of JSON per request without limit. Now every request costs at
/// least one fingerprint, and a refused body what it stands for (docs/PROTOCOL.md, "What a
/// request costs"); a 410 only what was charged up front.
#[tokio::test]
async fn refused_requests_are_charged_what_their_bodies_stand_for() {
    let app = limited_app().await;
    let (epoch, fps) = batch(&app, BURST).await;
    let body_of = |format, epoch, fps: &[Fingerprint]| protocol::encode_request(format, epoch, fps);
    let mut partial = body_of(Format::Binary, epoch, &fps);
    partial.push(0);
    let mut malformed = body_of(Format::Json, epoch, &fps);
    malformed.pop();
    let mut too_many = fps.clone();
    too_many.push(fps[0]);
    let cases: [(&str, &str, Vec<u8>, u16, usize); 6] = [
        // A binary body is charged its full count up front, whatever happens next.
        (
            "b410",
            "application/octet-stream",
            body_of(Format::Binary, 0, &fps),
            410,
            0,
        ),
        ("b422", "application/octet-stream", partial, 422, 0),
        (
            "b413",
            "application/octet-stream",
            body_of(Format::Binary, epoch, &too_many),
            413,
            0,
        ),
        // JSON: one up front; a 410 costs no more, a malformed body what its bytes stand for.
        (
            "j410",
            "application/json",
            body_of(Format::Json, epoch + 5, &fps),
            410,
            BURST - 1,
        ),
        ("j400", "application/json", malformed, 400, 0),
        // An empty request costs the minimum of one.
        (
            "empty",
            "application/octet-stream",
            body_of(Format::Binary, epoch, &[]),
            200,
            BURST - 1,
        ),
    ];
    for (user, content_type, body, status, left) in cases {
        let credential = app.credential(user);
        let response = app
            .discover_raw(content_type, Some(&credential), body)
            .await;
        assert_eq!(response.0, status, "{user}");
        assert_budget_left(&app, user, left).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_requests_are_counted_in_metrics() {
    let app = limited_app().await;
    let key = "contact_discovery_rate_limited_requests_total";
    let before = metric_or_zero(&app.metrics().await, key);
    assert_eq!(ask(&app, "alice", Format::Binary, BURST).await.0, 200);
    for _ in 0..3 {
        assert_rate_limited(&ask(&app, "alice", Format::Binary, 1).await);
    }
    let after = metric_or_zero(&app.metrics().await, key);
    assert_eq!(after - before, 3.0);
    app.stop().await;
}

/// `--insecure-no-auth`: a request with a valid credential is still charged to its own user, so
/// a load test's users each keep their budget; requests without one (or with a forged one) share
/// the anonymous user's.
#[tokio::test]
async fn insecure_mode_charges_a_valid_credentials_user_not_everyone() {
    let app = spawn_app_with(|c| {
        c.limits.rate_limit_burst = NonZero::new(BURST as u32).unwrap();
        c.limits.rate_limit_refill_per_day = NonZero::new(1).unwrap();
        c.limits.max_batch = NonZero::new(BURST).unwrap();
        c.auth.insecure_no_auth = true;
    })
    .await;
    app.change(&[REGISTERED], &[], &[]).await;
    assert_eq!(ask(&app, "alice", Format::Binary, BURST).await.0, 200);
    assert_rate_limited(&ask(&app, "alice", Format::Binary, 1).await);
    // Bob's budget is his own, not the one alice spent.
    assert_eq!(ask(&app, "bob", Format::Binary, BURST).await.0, 200);

    let (epoch, fps) = batch(&app, BURST).await;
    let body = protocol::encode_request(Format::Binary, epoch, &fps);
    let anonymous = app
        .discover_raw(Format::Binary.content_type(), None, body.clone())
        .await;
    assert_eq!(anonymous.0, 200, "no credential is the anonymous user");
    // A forged credential is not a user: it is charged to the anonymous budget, now spent.
    let forged = app
        .discover_raw(
            Format::Binary.content_type(),
            Some("carol.99999999999.AAAA"),
            body,
        )
        .await;
    assert_rate_limited(&forged);
    app.stop().await;
}
