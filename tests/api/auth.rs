//! Caller credentials on `/v1/discover`: missing, malformed, forged, too long-lived, expired.

use std::time::Duration;

use contact_discovery::domain::{CredentialKey, UserId};
use contact_discovery::protocol::{self, Format};

use crate::helpers::{RawResponse, TestApp, assert_error, spawn_app, spawn_app_with};

const REGISTERED: &str = "+4915112345678";
const UNREGISTERED: &str = "+15550009999";

async fn good_body(app: &TestApp) -> Vec<u8> {
    let (epoch, salt) = app.epoch().await;
    let fps = crate::helpers::fingerprints(&salt, &[REGISTERED]);
    protocol::encode_request(Format::Binary, epoch, &fps)
}

/// Posts a valid body with the given raw `Authorization` header (or none).
async fn post_with_authorization(app: &TestApp, authorization: Option<&str>) -> RawResponse {
    let mut request = app
        .client
        .post(app.url("/v1/discover"))
        .header("content-type", "application/octet-stream")
        .body(good_body(app).await);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn assert_unauthorized(response: &RawResponse, code: &str) {
    assert_error(response, 401, code);
    let challenge = response
        .1
        .get("www-authenticate")
        .expect("a WWW-Authenticate header on 401")
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

#[tokio::test]
async fn missing_credential_is_401_missing_credential() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let response = post_with_authorization(&app, None).await;
    assert_unauthorized(&response, "missing_credential");
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_credential_is_401_invalid_credential() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let good = app.credential("alice");
    let (user_part, rest) = good.split_once('.').unwrap();
    for authorization in [
        "Bearer garbage".to_owned(),
        "Bearer ".to_owned(),
        "Bearer a.b.c".to_owned(),
        "Bearer ...".to_owned(),
        format!("Bearer {good}.extra"),
        format!("Bearer {user_part}"),
        format!("Bearer bad!user.{rest}"),
        format!("Bearer {}", "x".repeat(10_000)),
        format!("Basic {good}"),
        good.clone(),
        "garbage".to_owned(),
    ] {
        let response = post_with_authorization(&app, Some(&authorization)).await;
        assert_unauthorized(&response, "invalid_credential");
        assert!(
            !String::from_utf8_lossy(&response.2).contains(&good),
            "the credential is echoed"
        );
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn credential_with_a_bad_mac_is_401_invalid_credential() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let good = app.credential("alice");
    let (head, mac) = good.rsplit_once('.').unwrap();
    let mut forged_mac = mac.to_owned();
    let first = if mac.starts_with('A') { "B" } else { "A" };
    forged_mac.replace_range(0..1, first);
    let expiry: u64 = head.rsplit_once('.').unwrap().1.parse().unwrap();
    for forged in [
        format!("{head}.{forged_mac}"),
        good.replacen("alice", "mallory", 1),
        good.replacen(&expiry.to_string(), &(expiry + 1).to_string(), 1),
    ] {
        let response = post_with_authorization(&app, Some(&format!("Bearer {forged}"))).await;
        assert_unauthorized(&response, "invalid_credential");
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn credential_minted_with_another_key_is_401_invalid_credential() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let other = CredentialKey::from_bytes([0x17; 32]);
    let token = other.mint(&user("alice"), app.clock.now_secs() + 3_600);
    let response = post_with_authorization(&app, Some(&format!("Bearer {token}"))).await;
    assert_unauthorized(&response, "invalid_credential");
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

/// During a credential key rotation the key being rotated out is still accepted, and only that
/// one: a third key is refused, and expiry still applies to old-key credentials.
#[tokio::test]
async fn the_previous_credential_key_is_accepted_during_a_rotation() {
    let keys = tempfile::tempdir().unwrap();
    let old_file = keys.path().join("old.key");
    std::fs::write(&old_file, "17".repeat(32)).unwrap();
    // Key files that group or others may read are refused at start.
    std::fs::set_permissions(
        &old_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let old = CredentialKey::from_bytes([0x17; 32]);
    let app = spawn_app_with(|c| c.secrets.previous_credential_key_file = Some(old_file)).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let now = app.clock.now_secs();
    let by_old = old.mint(&user("alice"), now + 3_600);
    let response = post_with_authorization(&app, Some(&format!("Bearer {by_old}"))).await;
    assert_eq!(response.0, 200, "{}", String::from_utf8_lossy(&response.2));
    let by_current = app.credential("alice");
    let response = post_with_authorization(&app, Some(&format!("Bearer {by_current}"))).await;
    assert_eq!(response.0, 200);
    let by_third = CredentialKey::from_bytes([0x18; 32]).mint(&user("alice"), now + 3_600);
    let response = post_with_authorization(&app, Some(&format!("Bearer {by_third}"))).await;
    assert_unauthorized(&response, "invalid_credential");
    let expired = old.mint(&user("alice"), now - 1);
    let response = post_with_authorization(&app, Some(&format!("Bearer {expired}"))).await;
    assert_unauthorized(&response, "expired_credential");
    app.stop().await;
}

#[tokio::test]
async fn credential_living_longer_than_the_maximum_is_401_invalid_credential() {
    let app = spawn_app_with(|c| c.auth.max_credential_ttl = Duration::from_secs(600)).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let now = app.clock.now_secs();
    for expiry in [now + 601, now + 86_400, u64::MAX] {
        let token = app.credential_key.mint(&user("alice"), expiry);
        let response = post_with_authorization(&app, Some(&format!("Bearer {token}"))).await;
        assert_unauthorized(&response, "invalid_credential");
    }
    // Exactly the maximum lifetime is fine.
    let token = app.credential_key.mint(&user("alice"), now + 600);
    let response = post_with_authorization(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn expired_credential_is_401_expired_credential() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let now = app.clock.now_secs();
    for expiry in [now - 3_600, now - 1, now] {
        let token = app.credential_key.mint(&user("alice"), expiry);
        let response = post_with_authorization(&app, Some(&format!("Bearer {token}"))).await;
        assert_unauthorized(&response, "expired_credential");
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn credential_expires_when_the_clock_passes_its_expiry() {
    let app = spawn_app().await;
    app.change(&[REGISTERED], &[], &[]).await;
    let token = app
        .credential_key
        .mint(&user("alice"), app.clock.now_secs() + 60);
    let authorization = format!("Bearer {token}");
    assert_eq!(
        post_with_authorization(&app, Some(&authorization)).await.0,
        200
    );
    app.clock.advance(Duration::from_secs(60));
    let response = post_with_authorization(&app, Some(&authorization)).await;
    assert_unauthorized(&response, "expired_credential");
    app.stop().await;
}

#[tokio::test]
async fn credentials_are_checked_before_the_body() {
    let app = spawn_app().await;
    // A body that is wrong in every way still gets the credential error first.
    let response = app
        .discover_raw("text/plain", None, b"{not json".to_vec())
        .await;
    assert_unauthorized(&response, "missing_credential");
    let response = app
        .discover_raw("text/plain", Some("garbage"), b"{not json".to_vec())
        .await;
    assert_unauthorized(&response, "invalid_credential");
    app.stop().await;
}
