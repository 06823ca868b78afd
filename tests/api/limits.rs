//! Slow and abusive clients over real sockets: the header read timeout (slowloris), the body read
//! timeout, the connection cap and load shedding. Small limits come from the test config.

use std::net::SocketAddr;
use std::num::NonZero;
use std::time::{Duration, Instant};

use contact_discovery::protocol::{self, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, fingerprints, spawn_app_with};

const REGISTERED: &str = "+4915112345678";
const UNREGISTERED: &str = "+15550009999";

/// Reads from `stream` until a complete response with a Content-Length has arrived (returns its
/// status, head and body), the peer closes (`None` if nothing complete came), or `within` passes
/// (`None`).
pub(crate) async fn read_response(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<(u16, String, Vec<u8>)> {
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= split + 4 + len {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                let body = bytes[split + 4..split + 4 + len].to_vec();
                return Some((status, head, body));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits (bounded) until the server closes `stream`; returns how long that took, or `None` if
/// it stayed open for `within`. Anything the server sends first (e.g. an error) is skipped.
pub(crate) async fn time_until_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// The head of a discovery POST with `content_length`, without its body.
pub(crate) fn discover_head(app: &TestApp, content_length: usize) -> String {
    format!(
        "POST /v1/discover HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {content_length}\r\n\r\n",
        app.public,
        app.credential("slow-client")
    )
}

/// A valid binary discovery body asking about the registered number.
async fn good_body(app: &TestApp) -> Vec<u8> {
    let (epoch, salt) = app.epoch().await;
    protocol::encode_request(Format::Binary, epoch, &fingerprints(&salt, &[REGISTERED]))
}

pub(crate) async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn a_slowloris_client_sending_headers_byte_by_byte_is_disconnected() {
    let app =
        spawn_app_with(|c| c.connections.header_read_timeout = Duration::from_millis(400)).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let mut stream = connect(app.public).await;
    let started = Instant::now();
    let head = discover_head(&app, 16);
    let (mut read, mut write) = stream.split();
    // Trickle the head one byte every 50 ms (it would take over 10 s to finish) while watching
    // for the server to hang up.
    let trickle = async {
        for byte in head.as_bytes() {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    let closed_after = tokio::select! {
        after = closed => after,
        () = trickle => panic!("the server read a whole trickled head without timing out"),
    };
    assert!(
        closed_after >= Duration::from_millis(350) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    // A connection that sends nothing at all is closed too.
    let mut silent = connect(app.public).await;
    let after = time_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(after.is_some(), "a silent connection stayed open");
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_body_timeout_and_the_service_keeps_answering() {
    let app = spawn_app_with(|c| c.limits.body_read_timeout = Duration::from_millis(400)).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let body = good_body(&app).await;
    let mut stream = connect(app.public).await;
    let started = Instant::now();
    stream
        .write_all(discover_head(&app, body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..10]).await.unwrap(); // then nothing
    let (status, head, body) = read_response(&mut stream, Duration::from_secs(10))
        .await
        .expect("an answer after the body timeout");
    let waited = started.elapsed();
    assert_eq!(status, 408, "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "body_timeout");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    // The same on the admin listener.
    let mut admin = connect(app.admin).await;
    let head = format!(
        "POST /admin/v1/registrations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"add\": [",
        crate::helpers::ADMIN_TOKEN
    );
    admin.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut admin, Duration::from_secs(10))
        .await
        .expect("an admin answer after the body timeout");
    assert_eq!(status, 408);
    assert!(String::from_utf8_lossy(&body).contains("body_timeout"));
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_a_served_one_closes() {
    let app = spawn_app_with(|c| c.connections.max_connections = NonZero::new(2).unwrap()).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let get = format!("GET /v1/epoch HTTP/1.1\r\nhost: {}\r\n\r\n", app.public);
    // Two keep-alive connections are served and stay open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(app.public).await;
        stream.write_all(get.as_bytes()).await.unwrap();
        let (status, _, _) = read_response(&mut stream, Duration::from_secs(5))
            .await
            .expect("served below the cap");
        assert_eq!(status, 200);
        held.push(stream);
    }
    // A third is not served while both are open...
    let mut third = connect(app.public).await;
    third.write_all(get.as_bytes()).await.unwrap();
    assert!(
        read_response(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "a connection beyond the cap was served"
    );
    // ...and is served once one of them closes.
    drop(held.pop());
    let (status, _, _) = read_response(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_are_shed_with_503_and_retry_after() {
    let app = spawn_app_with(|c| {
        c.limits.max_in_flight = NonZero::new(2).unwrap();
        // The held bodies stall on purpose; the minimum body rate is tested in abuse.rs.
        c.limits.min_body_bytes_per_second = 0;
    })
    .await;
    app.change(&[REGISTERED], &[], &[]).await;
    let body = good_body(&app).await;
    // Two slow requests take both in-flight slots: their heads arrive, their bodies stall.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(app.public).await;
        stream
            .write_all(discover_head(&app, body.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&body[..8]).await.unwrap();
        slow.push(stream);
    }
    for _ in 0..2_000 {
        if app.state.public.in_flight.available_permits() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.state.public.in_flight.available_permits(), 0);

    // A further request is shed at once, with Retry-After, in both routes that are capped.
    let started = Instant::now();
    let (status, headers, answer) = app
        .discover_raw(
            Format::Binary.content_type(),
            Some(&app.credential("bob")),
            body.clone(),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(2), "not queued");
    let shed = crate::helpers::assert_error(&(status, headers.clone(), answer), 503, "overloaded");
    assert_eq!(shed["retry_after"], 1);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    let epoch = app.client.get(app.url("/v1/epoch")).send().await.unwrap();
    assert_eq!(epoch.status(), 503);
    // Health checks are not shed.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // The slow requests finish normally once their bodies arrive.
    for stream in &mut slow {
        stream.write_all(&body[8..]).await.unwrap();
        let (status, _, answer) = read_response(stream, Duration::from_secs(10))
            .await
            .expect("the slow request is answered");
        assert_eq!(status, 200);
        let answer = protocol::decode_answer(Format::Binary, &answer, 1).unwrap();
        assert_eq!(answer.registered, vec![0]);
    }
    // And with the slots free again, requests are served.
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
}
