//! Durability: registrations and hidden flags survive a graceful restart on the same data dir.

use contact_discovery::protocol::Format;
use serde_json::json;

use crate::helpers::{spawn_app, start};

const ASKED: [&str; 6] = [
    "+4915112345678",
    "+15550001111",
    "+447700900001",
    "+33612345678",
    "+15550009999",
    "+819012345678",
];

#[tokio::test]
async fn registrations_and_hidden_flags_survive_a_restart() {
    let app = spawn_app().await;
    app.change(
        &[
            "+4915112345678",
            "+15550001111",
            "+447700900001",
            "+33612345678",
        ],
        &[],
        &[],
    )
    .await;
    app.change(&["+819012345678"], &["+33612345678"], &["+447700900001"])
        .await;
    let answer = app.discover(Format::Binary, "alice", &ASKED).await;
    assert_eq!(answer, vec![0, 1, 5]);
    let counts = app.stats().await["registry"]["counts"].clone();
    assert_eq!(counts, json!({ "discoverable": 3, "hidden": 1 }));
    let (epoch, salt) = app.epoch().await;
    let data_dir = app.data_dir.clone();
    let credential = app.credential("bob");

    let (config, clock, _guard) = app.stop().await;
    assert_eq!(config.data_dir, data_dir);
    let app = start(config, clock).await;
    assert_eq!(app.epoch().await, (epoch, salt), "the salt survives too");
    assert_eq!(app.stats().await["registry"]["counts"], counts);
    for format in [Format::Binary, Format::Json] {
        assert_eq!(app.discover(format, "alice", &ASKED).await, answer);
    }
    // A credential minted before the restart still verifies (the key is kept on disk).
    let fps = crate::helpers::fingerprints(&salt, &ASKED);
    let (status, _, body) = app
        .discover_fps(Format::Binary, &credential, epoch, &fps)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        crate::helpers::registered_indices(Format::Binary, epoch, ASKED.len(), &body),
        answer
    );

    // The hidden number is still registered: adding it again makes it discoverable.
    app.change(&["+447700900001"], &[], &[]).await;
    assert_eq!(
        app.discover(Format::Binary, "alice", &ASKED).await,
        vec![0, 1, 2, 5]
    );
    app.stop().await;
}

#[tokio::test]
async fn changes_made_after_a_restart_survive_the_next_one() {
    let app = spawn_app().await;
    app.change(&["+15550001111", "+15550002222"], &[], &[])
        .await;
    let (config, clock, _guard) = app.stop().await;

    let app = start(config, clock).await;
    app.change(&[], &["+15550001111"], &["+15550002222"]).await;
    app.change(&["+15550003333"], &[], &[]).await;
    let (config, clock, _guard2) = app.stop().await;

    let app = start(config, clock).await;
    assert_eq!(
        app.stats().await["registry"]["counts"],
        json!({ "discoverable": 1, "hidden": 1 })
    );
    let asked = ["+15550001111", "+15550002222", "+15550003333"];
    for format in [Format::Binary, Format::Json] {
        assert_eq!(app.discover(format, "alice", &asked).await, vec![2]);
    }
    app.stop().await;
}
