//! Hostile peers over real sockets (issue 11): clients that never read their answers, one host
//! opening many connections, one credential holding in-flight slots with bodies it never sends,
//! requests that cost nothing, and requests hyper itself cannot parse.

use std::net::SocketAddr;
use std::num::NonZero;
use std::time::{Duration, Instant};

use contact_discovery::protocol::{self, Format};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{fingerprints, metric_or_zero, raw_http, spawn_app_with};
use crate::limits::{connect, discover_head, read_response, time_until_closed};

const REGISTERED: &str = "+4915112345678";
const UNREGISTERED: &str = "+15550009999";

/// A connection with a tiny receive buffer that pipelines `requests` `GET /healthz` and never
/// reads a byte of the answers. The writes go on in the background for as long as the server
/// keeps reading.
async fn slow_reader(addr: SocketAddr, requests: usize) -> tokio::task::JoinHandle<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    tokio::spawn(async move {
        let one = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
        let all: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * requests)
            .collect();
        // The server stops reading once its answers cannot be written; so does this write.
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.write_all(&all)).await;
        stream
    })
}

/// Whether a plain `GET /healthz` on a new connection is answered within `within`.
async fn answered_within(addr: SocketAddr, within: Duration) -> bool {
    let attempt = async {
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        read_response(&mut stream, within).await
    };
    matches!(
        tokio::time::timeout(within, attempt).await,
        Ok(Some((200, _, _)))
    )
}

#[tokio::test]
async fn clients_that_never_read_their_answers_are_cut_off_and_others_are_served() {
    let app = spawn_app_with(|c| {
        c.connections.max_connections = NonZero::new(3).unwrap();
        c.connections.write_timeout = Duration::from_millis(500);
        // The request cap would also end these connections; the write deadline is tested here.
        c.connections.max_requests_per_connection = NonZero::new(u32::MAX).unwrap();
    })
    .await;
    // Three connections pipeline 40,000 requests each and read nothing: every connection slot.
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(slow_reader(app.public, 40_000).await);
    }
    // Until the write deadline cuts them off, a normal client waits in the accept queue...
    assert!(
        !answered_within(app.public, Duration::from_millis(200)).await,
        "the slow readers did not take the slots (the attack did not work)"
    );
    // ...then it is answered: the stalled writes closed their connections. (The deadline runs
    // once the server's socket buffers are full, which takes a debug build on a busy machine a
    // few seconds; without the deadline the client is never answered.)
    assert!(
        answered_within(app.public, Duration::from_secs(30)).await,
        "a normal client was not answered while slow readers held the connections"
    );

    // Every slow reader is cut for its stalled writes, and counted. (One may have waited in
    // the accept queue behind the test client's own keep-alive connection, so poll.)
    let cut =
        r#"contact_discovery_connections_cut_total{listener="public",reason="write_timeout"}"#;
    let mut cuts = 0.0;
    for _ in 0..300 {
        cuts = metric_or_zero(&app.metrics().await, cut);
        if cuts >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cuts >= 3.0, "{cuts} slow readers cut");
    drop(attackers);
    app.stop().await;
}

#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections() {
    let app = spawn_app_with(|c| c.connections.max_connections_per_address = 2).await;
    // Two idle connections from 127.0.0.1 are held (until the header read timeout)...
    let _held = [connect(app.public).await, connect(app.public).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...a third from the same address is closed at once, without an answer...
    let mut third = connect(app.public).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let closed = time_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a third connection from one address stayed open"
    );
    // ...while another address (all of 127/8 is loopback) is served.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(app.public).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut other, Duration::from_secs(5))
        .await
        .expect("another address is answered");
    assert_eq!(status, 200);
    let metrics = app.metrics().await;
    let cut =
        r#"contact_discovery_connections_cut_total{listener="public",reason="per_address_cap"}"#;
    assert_eq!(metric_or_zero(&metrics, cut), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_connection_serves_a_bounded_number_of_requests() {
    let app =
        spawn_app_with(|c| c.connections.max_requests_per_connection = NonZero::new(3).unwrap())
            .await;
    // Pipelined: the third answer says `connection: close` and nothing after it is served.
    let mut stream = connect(app.public).await;
    let one = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(one.repeat(10).as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    assert_eq!(text.matches("connection: close").count(), 1, "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_connection_lives_a_bounded_time() {
    let app = spawn_app_with(|c| c.connections.max_connection_age = Duration::from_secs(1)).await;
    let one = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    // A connection that keeps asking is closed once it is a second old.
    let mut stream = connect(app.public).await;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(10) {
        if stream.write_all(one.as_bytes()).await.is_err() {
            break;
        }
        match read_response(&mut stream, Duration::from_secs(2)).await {
            Some((200, _, _)) => answered += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lived = started.elapsed();
    assert!(answered >= 1, "{answered} answered");
    assert!(
        lived >= Duration::from_millis(900) && lived < Duration::from_secs(5),
        "lived {lived:?}"
    );
    let metrics = app.metrics().await;
    let cut = r#"contact_discovery_connections_cut_total{listener="public",reason="max_age"}"#;
    assert_eq!(metric_or_zero(&metrics, cut), 1.0, "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_the_apis_json_errors() {
    let app = spawn_app_with(|_| {}).await;
    app.change(&[REGISTERED], &[], &[]).await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(256 << 10)
    );
    let cases: [(&[u8], u16, &str); 3] = [
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "malformed_request"),
        (
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
            400,
            "malformed_request",
        ),
        (huge_header.as_bytes(), 431, "headers_too_large"),
    ];
    for (request, status, code) in cases {
        for addr in [app.public, app.admin] {
            let (got, head, body) = raw_http(addr, request).await;
            assert_eq!(
                got,
                status,
                "{head} for {:?}",
                String::from_utf8_lossy(&request[..40.min(request.len())])
            );
            let head = head.to_ascii_lowercase();
            assert!(head.contains("cache-control: no-store"), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["code"], code, "{json}");
        }
    }
    app.assert_still_answers(REGISTERED, UNREGISTERED).await;
    app.stop().await;
}

#[tokio::test]
async fn one_credential_cannot_hold_every_in_flight_slot() {
    let app = spawn_app_with(|c| {
        c.limits.max_in_flight = NonZero::new(2).unwrap();
        c.limits.max_in_flight_per_user = 1;
        c.limits.max_batch = NonZero::new(1_000).unwrap();
        c.limits.rate_limit_burst = NonZero::new(1_000).unwrap();
    })
    .await;
    app.change(&[REGISTERED], &[], &[]).await;
    // A JSON request of 13,000 bytes (about 1,000 fingerprints) sends its head and no body.
    let head = format!(
        "POST /v1/discover HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 13000\r\n\r\n",
        app.credential("hog")
    );
    let mut hog = connect(app.public).await;
    hog.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..400 {
        if app.state.public.in_flight.available_permits() < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.state.public.in_flight.available_permits(), 1);
    // Its second such request is refused at once: one per user.
    let mut second = connect(app.public).await;
    second.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut second, Duration::from_secs(5))
        .await
        .expect("answered at once");
    assert_eq!(status, 429);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "user_in_flight");
    // Everyone else is still served.
    let epoch = app.client.get(app.url("/v1/epoch")).send().await.unwrap();
    assert_eq!(epoch.status(), 200);
    // The body never comes: cut after the first second for its pace, not after 30 s.
    let started = Instant::now();
    let (status, _, body) = read_response(&mut hog, Duration::from_secs(10))
        .await
        .expect("the stalled request is answered");
    assert_eq!(status, 408);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "body_too_slow");
    assert!(started.elapsed() < Duration::from_secs(5));
    // And the body it announced was charged: the hog's budget is spent.
    let (epoch, salt) = app.epoch().await;
    let body = protocol::encode_request(Format::Binary, epoch, &fingerprints(&salt, &[REGISTERED]));
    let (status, _, _) = app
        .discover_raw(
            Format::Binary.content_type(),
            Some(&app.credential("hog")),
            body,
        )
        .await;
    assert_eq!(status, 429, "the stalled body was not charged");
    app.stop().await;
}

#[tokio::test]
async fn every_request_costs_at_least_one_and_a_spent_budget_is_refused_before_the_body() {
    let app = spawn_app_with(|c| {
        c.limits.max_batch = NonZero::new(5).unwrap();
        c.limits.rate_limit_burst = NonZero::new(5).unwrap();
        c.limits.rate_limit_refill_per_day = NonZero::new(1).unwrap();
    })
    .await;
    let (epoch, _) = app.epoch().await;
    let empty = protocol::encode_request(Format::Binary, epoch, &[]);
    let user = app.credential("free-rider");
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let (status, _, _) = app
            .discover_raw(Format::Binary.content_type(), Some(&user), empty.clone())
            .await;
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    // With the budget spent, a request is refused from its head alone: the body is not awaited.
    let mut stream = connect(app.public).await;
    let head = discover_head(&app, 8 + 8 * 5).replace(&app.credential("slow-client"), &user);
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut stream, Duration::from_secs(5))
        .await
        .expect("refused without the body");
    assert_eq!(status, 429);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "rate_limited");
    app.stop().await;
}

#[tokio::test]
async fn one_admin_request_is_bounded_in_operations_and_in_its_answer() {
    let app = spawn_app_with(|_| {}).await;
    // Nearly 4 MiB of empty strings: 1.4 million entries, refused as a whole without parsing
    // them as numbers (it used to answer a 470 MB list of 5.6 M problems from a 16 MiB body).
    let entries = (contact_discovery::server::api::admin::ADMIN_BODY_LIMIT - 64) / 3;
    let body = format!(r#"{{"add":[{}""]}}"#, "\"\",".repeat(entries - 1));
    let (status, answer) = app.change_raw(serde_json::from_str(&body).unwrap()).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], "too_many_operations");
    // A request of 1,000 bad numbers: the first 20 are reported, with the total.
    let bad: Vec<String> = (0..1_000).map(|i| format!("bad-{i}")).collect();
    let (status, answer) = app.change_raw(serde_json::json!({ "hide": bad })).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["code"], "invalid_numbers");
    assert_eq!(answer["invalid_total"], 1_000);
    let shown = answer["invalid"].as_array().unwrap();
    assert_eq!(shown.len(), 20);
    assert_eq!(shown[19]["index"], 19);
    assert!(answer.to_string().len() < 4_096, "the answer stays small");
    app.stop().await;
}
