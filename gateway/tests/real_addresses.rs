//! Clients' real addresses through the real gateway binary: PROXY protocol headers (v1 and v2)
//! on the client port, what a missing, bad or slow header costs, the per-client rate limit on
//! the address a header names, and `X-Forwarded-For` from trusted proxies. Every client here
//! connects from 127.0.0.1; the addresses the app and the log see come from the headers.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const JSON_INFO: [&str; 4] = ["--log-format", "json", "--log-level", "info"];

/// One connection per client, then one every 10 s.
const ONE_PER_CLIENT: [&str; 4] = [
    "--rate-limit-connections-per-second-per-ip",
    "0.1",
    "--rate-limit-burst",
    "1",
];

/// A version 1 header from `client` to the gateway.
fn v1(client: &str, gw: &Gateway) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let to = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {family} {} {to} {} {}\r\n",
        client.ip(),
        client.port(),
        gw.addr.port()
    )
    .into_bytes()
}

/// A version 2 header (PROXY, TCP over IPv4) from `client` to the gateway, with one NOOP TLV.
fn v2(client: &str, gw: &Gateway) -> Vec<u8> {
    let SocketAddr::V4(client) = client.parse().unwrap() else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    h.extend_from_slice(&(12u16 + 4).to_be_bytes());
    h.extend_from_slice(&client.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&gw.addr.port().to_be_bytes());
    h.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
    h
}

/// Sends `header` then `request` on one connection; returns the response head and the stream.
async fn with_header(gw: &Gateway, header: &[u8], request: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&[header, request.as_bytes()].concat())
        .await
        .unwrap();
    let head = read_head(&mut tcp).await;
    (head, tcp)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
}

/// The head the app received for the request whose start line begins with `start`.
fn app_head(log: &UpstreamLog, start: &str) -> String {
    let heads = log.heads.lock().unwrap();
    let mut found = heads.iter().filter(|h| h.starts_with(start));
    let head = found
        .next()
        .unwrap_or_else(|| panic!("no {start} in {heads:?}"));
    assert!(found.next().is_none(), "{start} twice");
    head.clone()
}

/// The one access log line `message` whose `path` is `path`.
async fn log_line(gw: &Gateway, message: &str, path: &str) -> serde_json::Value {
    eventually(message, || async {
        gw.json_lines(message).iter().any(|l| l["path"] == path)
    })
    .await;
    gw.json_lines(message)
        .into_iter()
        .find(|l| l["path"] == path)
        .unwrap()
}

/// Reads until the gateway ends the connection (an end or a reset); returns what was read and
/// how long it took.
async fn until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {WAIT:?}"),
        }
    }
}

async fn rejections(gw: &Gateway, reason: &str) -> f64 {
    gw.metric(&format!(
        r#"longconn_gateway_handshake_rejections_total{{reason="{reason}"}}"#
    ))
    .await
}

#[tokio::test]
async fn a_v1_header_names_the_client_to_the_app_and_the_access_log() {
    let (up, log) = start_upstream().await;
    let flags = [&["--proxy-protocol", "v1"][..], &JSON_INFO].concat();
    let gw = Gateway::start(up, &flags).await;
    let (head, mut tcp) =
        with_header(&gw, &v1("203.0.113.7:51000", &gw), &get("/hello?v1", "")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    until_closed(&mut tcp).await;
    let app = app_head(&log, "GET /hello?v1 ");
    assert_eq!(
        header(&app, "x-forwarded-for"),
        Some("203.0.113.7"),
        "{app}"
    );
    assert_eq!(header(&app, "x-real-ip"), Some("203.0.113.7"), "{app}");
    let line = log_line(&gw, "request ended", "/hello").await;
    assert_eq!(line["peer"], "203.0.113.7:51000", "{line}");
    assert_eq!(line["client"], "203.0.113.7", "{line}");
    // IPv6 and UNKNOWN (which keeps the socket's peer) pass too.
    let (head, _) = with_header(&gw, &v1("[2001:db8::7]:4000", &gw), &get("/hello?v6", "")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = with_header(&gw, b"PROXY UNKNOWN\r\n", &get("/hello?unknown", "")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    eventually("both requests reached the app", || async {
        log.heads.lock().unwrap().len() == 3
    })
    .await;
    let app = app_head(&log, "GET /hello?v6 ");
    assert_eq!(
        header(&app, "x-forwarded-for"),
        Some("2001:db8::7"),
        "{app}"
    );
    let app = app_head(&log, "GET /hello?unknown ");
    assert_eq!(header(&app, "x-forwarded-for"), Some("127.0.0.1"), "{app}");
}

#[tokio::test]
async fn a_v2_header_names_the_client_of_a_websocket_session() {
    let (up, log) = start_upstream().await;
    let flags = [&["--proxy-protocol", "any"][..], &JSON_INFO].concat();
    let gw = Gateway::start(up, &flags).await;
    let (head, tcp) = with_header(
        &gw,
        &v2("198.51.100.9:40000", &gw),
        &upgrade_request(gw.addr, ""),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let app = app_head(&log, "GET /chat ");
    assert_eq!(
        header(&app, "x-forwarded-for"),
        Some("198.51.100.9"),
        "{app}"
    );
    drop(tcp);
    let line = log_line(&gw, "session ended", "/chat").await;
    assert_eq!(line["peer"], "198.51.100.9:40000", "{line}");
    assert_eq!(line["client"], "198.51.100.9", "{line}");
}

/// Bound: a connection whose first bytes cannot begin the header asked for, whose header is
/// malformed, or longer than its version allows (107 bytes for v1, 16 + 2048 for v2) is closed
/// as soon as those bytes arrive, with no answer: here within 2 s, while the handshake timeout
/// is 10 s. None of them reaches the app.
#[tokio::test]
async fn missing_malformed_and_oversized_headers_are_closed_at_once_unanswered() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &["--proxy-protocol", "any", "--handshake-timeout", "10s"],
    )
    .await;
    let mut huge_v2 = v2("198.51.100.9:40000", &gw);
    huge_v2[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let cases: [(&str, Vec<u8>); 4] = [
        ("missing", get("/hello", "").into_bytes()),
        ("malformed", b"PROXY TCP4 203.0.113.7 nonsense\r\n".to_vec()),
        (
            "v1 over 107 bytes",
            [&b"PROXY TCP4 "[..], &[b'1'; 200]].concat(),
        ),
        ("v2 declaring 65535 bytes", huge_v2),
    ];
    for (what, bytes) in &cases {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let (answer, took) = until_closed(&mut tcp).await;
        assert!(answer.is_empty(), "{what}: answered {answer:?}");
        assert!(
            took < Duration::from_secs(2),
            "{what}: closed after {took:?}"
        );
    }
    eventually("every refusal counted", || async {
        rejections(&gw, "proxy_protocol").await == cases.len() as f64
    })
    .await;
    assert!(log.heads.lock().unwrap().is_empty());
}

/// Bound: a header that never ends is closed at the handshake timeout (1 s here), not before
/// 0.9 s and within 3 s, and counted as a handshake timeout.
#[tokio::test]
async fn a_slow_header_is_closed_at_the_handshake_timeout() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--proxy-protocol", "v1", "--handshake-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let sent = Instant::now();
    tcp.write_all(b"PROXY TCP4 203.0.113").await.unwrap();
    let (answer, _) = until_closed(&mut tcp).await;
    let took = sent.elapsed();
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    eventually("the timeout counted", || async {
        rejections(&gw, "handshake_timeout").await == 1.0
    })
    .await;
}

/// Bound: with a burst of 1 and a refill of 0.1 per second, each address a header names gets
/// exactly one request in the test's few seconds, whatever the socket's peer (always 127.0.0.1).
#[tokio::test]
async fn the_rate_limit_counts_the_address_the_header_names() {
    let (up, _) = start_upstream().await;
    let flags = [&["--proxy-protocol", "v1"][..], &ONE_PER_CLIENT].concat();
    let gw = Gateway::start(up, &flags).await;
    let status = |head: String| head.split(' ').nth(1).unwrap_or_default().to_owned();
    let first = with_header(&gw, &v1("203.0.113.1:1000", &gw), &get("/hello", "")).await;
    assert_eq!(status(first.0), "200");
    let again = with_header(&gw, &v1("203.0.113.1:1001", &gw), &get("/hello", "")).await;
    assert!(again.0.contains("Retry-After: "), "{}", again.0);
    assert_eq!(status(again.0), "429");
    let other = with_header(&gw, &v1("203.0.113.2:1000", &gw), &get("/hello", "")).await;
    assert_eq!(status(other.0), "200", "another client has its own bucket");
    assert_eq!(rejections(&gw, "rate_limited").await, 1.0);
}

/// Bound: behind a trusted peer, the rightmost untrusted X-Forwarded-For entry is the client
/// (for X-Real-IP, the access log and its own rate: one request per client here); an untrusted
/// peer's X-Forwarded-For only gets the peer appended.
#[tokio::test]
async fn a_trusted_proxy_s_forwarded_for_names_the_client() {
    let (up, log) = start_upstream().await;
    let flags = [
        &["--proxy-protocol", "v1", "--trusted-proxies", "10.0.0.0/8"][..],
        &ONE_PER_CLIENT,
        &JSON_INFO,
    ]
    .concat();
    let gw = Gateway::start(up, &flags).await;
    let lb = v1("10.1.1.1:5000", &gw);
    let xff = "X-Forwarded-For: 6.6.6.6, 198.51.100.4, 10.2.2.2\r\n";
    let (head, _) = with_header(&gw, &lb, &get("/hello?trusted", xff)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let app = app_head(&log, "GET /hello?trusted ");
    assert_eq!(header(&app, "x-real-ip"), Some("198.51.100.4"), "{app}");
    assert_eq!(
        header(&app, "x-forwarded-for"),
        Some("6.6.6.6, 198.51.100.4, 10.2.2.2, 10.1.1.1"),
        "{app}"
    );
    let line = log_line(&gw, "request ended", "/hello").await;
    assert_eq!(
        (&line["peer"], &line["client"]),
        (&"10.1.1.1:5000".into(), &"198.51.100.4".into())
    );
    // The same client again, through the same trusted peer: over its rate, which the peer's
    // other clients do not share.
    let (head, _) = with_header(&gw, &lb, &get("/hello?again", xff)).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let other = "X-Forwarded-For: 198.51.100.5\r\n";
    let (head, _) = with_header(&gw, &lb, &get("/hello?other", other)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // An untrusted peer cannot name a client.
    let (head, _) = with_header(
        &gw,
        &v1("192.0.2.9:5000", &gw),
        &get("/hello?untrusted", xff),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let app = app_head(&log, "GET /hello?untrusted ");
    assert_eq!(header(&app, "x-real-ip"), Some("192.0.2.9"), "{app}");
}

/// Without the PROXY protocol, the socket's peer is the trusted proxy: it is not rate limited
/// at accept (it speaks for many clients), the clients it names are.
#[tokio::test]
async fn a_trusted_socket_peer_is_limited_per_named_client_not_as_a_whole() {
    let (up, log) = start_upstream().await;
    let flags = [&["--trusted-proxies", "127.0.0.0/8"][..], &ONE_PER_CLIENT].concat();
    let gw = Gateway::start(up, &flags).await;
    for i in 1..=3 {
        let xff = format!("X-Forwarded-For: 198.51.100.{i}\r\n");
        let (head, _) = raw_head(gw.addr, &get(&format!("/hello?{i}"), &xff)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        let app = app_head(&log, &format!("GET /hello?{i} "));
        assert_eq!(
            header(&app, "x-real-ip"),
            Some(format!("198.51.100.{i}").as_str())
        );
    }
    let (head, _) = raw_head(
        gw.addr,
        &get("/hello?4", "X-Forwarded-For: 198.51.100.1\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
}
