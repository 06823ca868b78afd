//! Epoch rotation on the manual clock: grace for the previous epoch, the next epoch built ahead,
//! new salts each epoch, readiness.

use std::time::Duration;

use contact_discovery::domain::{Epoch, Salt};
use contact_discovery::protocol::Format;
use contact_discovery::server::config::EpochLength;

use crate::helpers::{
    T0, TestApp, assert_error, decode_salt, epoch_at, fingerprints, registered_indices, spawn_app,
    spawn_app_with,
};

const REGISTERED: [&str; 2] = ["+4915112345678", "+15550001111"];
const ASKED: [&str; 3] = ["+15550009999", "+4915112345678", "+15550001111"];
const DAY: u64 = 86_400;

/// Asks `ASKED` in both encodings under `epoch`/`salt` and checks the right two are found.
async fn assert_correct_at(app: &TestApp, epoch: u64, salt: &Salt) {
    for format in [Format::Binary, Format::Json] {
        let hits = app.discover_at(format, "alice", epoch, salt, &ASKED).await;
        assert_eq!(hits, vec![1, 2], "epoch {epoch} {format:?}");
    }
}

/// Asks under `epoch`/`salt` and expects 410 naming `current`.
async fn assert_gone(app: &TestApp, epoch: u64, salt: &Salt, current: u64) {
    let fps = fingerprints(salt, &ASKED);
    for format in [Format::Binary, Format::Json] {
        let response = app
            .discover_fps(format, &app.credential("alice"), epoch, &fps)
            .await;
        let error = assert_error(&response, 410, "epoch_unavailable");
        assert_eq!(error["current"]["epoch"], current, "asked {epoch}");
    }
}

#[tokio::test]
async fn previous_epoch_is_answered_during_grace_then_refused() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let (e, salt_e) = app.epoch().await;
    assert_eq!(e, T0 / DAY);
    assert_correct_at(&app, e, &salt_e).await;

    // Rotate: the client still holds epoch e's salt.
    app.clock.set_secs(T0 + DAY);
    app.wait_for_epochs(&[e, e + 1]).await;
    let (next, salt_next) = app.epoch().await;
    assert_eq!(next, e + 1);
    assert_ne!(salt_next, salt_e);
    assert_correct_at(&app, e + 1, &salt_next).await;
    assert_correct_at(&app, e, &salt_e).await;

    // Registrations made during grace show up in the previous epoch's answers too.
    app.change(&["+447700900001"], &[], &[]).await;
    let hits = app
        .discover_at(Format::Binary, "alice", e, &salt_e, &["+447700900001"])
        .await;
    assert_eq!(hits, vec![0]);

    // The last second of grace (default 3600 s).
    app.clock.set_secs(T0 + DAY + 3_599);
    assert_correct_at(&app, e, &salt_e).await;

    // Grace is over: refused, with the current epoch to retry with.
    app.clock.set_secs(T0 + DAY + 3_600);
    assert_gone(&app, e, &salt_e, e + 1).await;
    assert_correct_at(&app, e + 1, &salt_next).await;
    app.wait_for_retired(e).await;
    assert_gone(&app, e, &salt_e, e + 1).await;
    app.stop().await;
}

#[tokio::test]
async fn grace_follows_epoch_grace_seconds() {
    let app = spawn_app_with(|c| {
        c.epochs.length = EpochLength::try_from(60).unwrap();
        c.epochs.grace = Duration::from_secs(10);
    })
    .await;
    app.change(&REGISTERED, &[], &[]).await;
    let (e, salt_e) = app.epoch().await;
    app.clock.set_secs(T0 + 60);
    app.wait_for_epochs(&[e + 1]).await;
    app.clock.set_secs(T0 + 69);
    assert_correct_at(&app, e, &salt_e).await;
    app.clock.set_secs(T0 + 70);
    assert_gone(&app, e, &salt_e, e + 1).await;
    app.stop().await;
}

#[tokio::test]
async fn next_epoch_is_built_ahead_and_answered_once_built() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    let e = epoch_at(&app).0;
    // Replicas share the secret, so a client may already hold the next salt from one of them.
    let salt_next = app.state.public.secret.salt(Epoch(e + 1));

    // One second before the lead (15 min, the cap for day-long epochs): not built, refused.
    app.clock.set_secs(T0 + DAY - 901);
    app.change(&["+447700900001"], &[], &[]).await;
    app.let_rotation_run().await;
    assert!(
        app.state
            .public
            .indexes
            .snapshot()
            .iter()
            .all(|(epoch, _)| epoch.0 != e + 1),
        "the next index is built more than 15 minutes ahead"
    );
    assert_gone(&app, e + 1, &salt_next, e).await;

    // At the lead it is built and answered, while the current epoch is still e.
    app.clock.set_secs(T0 + DAY - 900);
    app.wait_for_epochs(&[e, e + 1]).await;
    assert_eq!(app.epoch().await.0, e);
    assert_correct_at(&app, e + 1, &salt_next).await;

    // At the boundary the salt clients computed ahead is the one /v1/epoch announces.
    app.clock.set_secs(T0 + DAY);
    let (now, salt_now) = app.epoch().await;
    assert_eq!(now, e + 1);
    assert_eq!(salt_now, salt_next);
    assert_correct_at(&app, e + 1, &salt_now).await;
    app.stop().await;
}

#[tokio::test]
async fn next_epoch_lead_is_a_quarter_of_a_short_epoch() {
    let app = spawn_app_with(|c| c.epochs.length = EpochLength::try_from(60).unwrap()).await;
    app.change(&REGISTERED, &[], &[]).await;
    let e = epoch_at(&app).0;
    let salt_next = app.state.public.secret.salt(Epoch(e + 1));
    app.clock.set_secs(T0 + 44);
    app.change(&["+447700900001"], &[], &[]).await;
    app.let_rotation_run().await;
    assert_gone(&app, e + 1, &salt_next, e).await;
    app.clock.set_secs(T0 + 45);
    app.wait_for_epochs(&[e + 1]).await;
    assert_correct_at(&app, e + 1, &salt_next).await;
    app.stop().await;
}

#[tokio::test]
async fn short_epochs_rotate_twice_with_new_salts_and_old_salts_expire() {
    let app = spawn_app_with(|c| c.epochs.length = EpochLength::try_from(60).unwrap()).await;
    assert_eq!(
        app.state.public.indexes.policy().grace_secs,
        60,
        "grace is clamped to one epoch"
    );
    app.change(&REGISTERED, &[], &[]).await;
    let (e0, salt0) = app.epoch().await;
    assert_eq!(e0, T0 / 60);
    assert_correct_at(&app, e0, &salt0).await;

    // First rotation.
    app.clock.advance(Duration::from_secs(60));
    app.wait_for_epochs(&[e0, e0 + 1]).await;
    let (e1, salt1) = app.epoch().await;
    assert_eq!(e1, e0 + 1);
    assert_ne!(salt1, salt0);
    assert_correct_at(&app, e1, &salt1).await;
    assert_correct_at(&app, e0, &salt0).await;
    // Old fingerprints labelled with the new epoch match nothing: answers are per salt.
    let stale = app
        .discover_at(Format::Binary, "alice", e1, &salt0, &ASKED)
        .await;
    assert!(stale.is_empty());
    // Grace clamped to one epoch: e0 is answered to the last second of e1.
    app.clock.set_secs(T0 + 119);
    assert_correct_at(&app, e0, &salt0).await;

    // Second rotation: e0 is now two epochs back and refused; e1 is in grace.
    app.clock.set_secs(T0 + 120);
    app.wait_for_epochs(&[e1, e1 + 1]).await;
    let (e2, salt2) = app.epoch().await;
    assert_eq!(e2, e0 + 2);
    assert!(salt2 != salt1 && salt2 != salt0);
    assert_correct_at(&app, e2, &salt2).await;
    assert_correct_at(&app, e1, &salt1).await;
    assert_gone(&app, e0, &salt0, e2).await;
    app.wait_for_retired(e0).await;

    // And once e1's grace ends too, only e2 is answered.
    app.clock.set_secs(T0 + 180);
    app.wait_for_epochs(&[e2 + 1]).await;
    let (e3, salt3) = app.epoch().await;
    assert_eq!(e3, e0 + 3);
    assert_gone(&app, e1, &salt1, e3).await;
    assert_correct_at(&app, e2, &salt2).await;
    assert_correct_at(&app, e3, &salt3).await;
    app.stop().await;
}

#[tokio::test]
async fn epoch_info_and_410_follow_the_clock() {
    let app = spawn_app_with(|c| c.epochs.length = EpochLength::try_from(60).unwrap()).await;
    app.clock.set_secs(T0 + 600);
    app.wait_for_epochs(&[(T0 + 600) / 60]).await;
    let info = app.epoch_info().await;
    let e = (T0 + 600) / 60;
    assert_eq!(info["epoch"], e);
    let not_after = humantime::parse_rfc3339(info["not_after"].as_str().unwrap()).unwrap();
    assert_eq!(
        not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        (e + 1) * 60
    );
    let salt = decode_salt(info["salt"].as_str().unwrap());
    assert_eq!(salt, app.state.public.secret.salt(Epoch(e)));
    let response = app
        .discover_fps(Format::Json, &app.credential("alice"), 0, &[])
        .await;
    let error = assert_error(&response, 410, "epoch_unavailable");
    assert_eq!(error["current"], info);
    app.stop().await;
}

#[tokio::test]
async fn service_becomes_ready_after_a_clock_jump() {
    let app = spawn_app().await;
    app.change(&REGISTERED, &[], &[]).await;
    // Jump many epochs: nothing was built ahead for that far.
    app.clock.set_secs(T0 + 30 * DAY);
    let e = (T0 + 30 * DAY) / DAY;
    let mut ready = false;
    for _ in 0..2_000 {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        match response.status().as_u16() {
            200 => {
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body, serde_json::json!({ "ready": true }));
                ready = true;
                break;
            }
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["code"], "not_ready");
                let message = body["message"].as_str().unwrap();
                assert!(
                    message.contains("the current epoch's match index is not built yet"),
                    "{message}"
                );
            }
            other => panic!("/readyz answered {other}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ready, "never became ready");
    let (epoch, salt) = app.epoch().await;
    assert_eq!(epoch, e);
    let fps = fingerprints(&salt, &ASKED);
    let (status, _, body) = app
        .discover_fps(Format::Binary, &app.credential("alice"), epoch, &fps)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        registered_indices(Format::Binary, epoch, 3, &body),
        vec![1, 2]
    );
    app.stop().await;
}
