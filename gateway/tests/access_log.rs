//! The access log and the ids requests carry, through the real gateway binary: one JSON line per
//! WebSocket session and per plain HTTP request, with exact byte counts and close codes, and the
//! `X-Request-Id` and `traceparent` the app receives.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const JSON_INFO: &[&str] = &["--log-format", "json", "--log-level", "info"];

/// Opens a raw session on `path` with extra header lines; returns the stream after the `101`.
async fn open_session(gw: &Gateway, path: &str, headers: &str) -> TcpStream {
    let request = upgrade_request(gw.addr, headers).replacen("/chat", path, 1);
    let (head, tcp) = raw_head(gw.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Reads until the gateway closes the connection; returns the bytes read.
async fn read_to_eof(tcp: &mut TcpStream) -> u64 {
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    rest.len() as u64
}

/// Waits for the one line with `message` and `field` = `value`.
async fn line_where(gw: &Gateway, message: &str, field: &str, value: &str) -> Value {
    eventually(message, || async {
        gw.json_lines(message).iter().any(|l| l[field] == value)
    })
    .await;
    let mut lines: Vec<Value> = gw
        .json_lines(message)
        .into_iter()
        .filter(|l| l[field] == value)
        .collect();
    assert_eq!(lines.len(), 1, "{}", gw.log());
    lines.remove(0)
}

fn is_generated_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3] == "01"
        && v.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_session_that_the_client_closes_ends_in_one_info_line_with_everything() {
    let (up, upstream) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let mut tcp = open_session(
        &gw,
        "/chat?token=secret",
        &format!("X-Request-Id: req-42\r\ntraceparent: {TRACEPARENT}\r\ntracestate: k=v\r\n"),
    )
    .await;
    let peer = tcp.local_addr().unwrap().to_string();
    let hello = client_frame(0x1, b"hello");
    tcp.write_all(&hello).await.unwrap();
    assert_eq!(
        read_server_frame(&mut tcp).await,
        Some((0x1, b"hello".to_vec()))
    );
    let close = client_frame(0x8, &4000u16.to_be_bytes());
    tcp.write_all(&close).await.unwrap();
    // The echo (2 + 5 bytes), then the app's answer to the close, to the end.
    let to_client = 7 + read_to_eof(&mut tcp).await;

    let line = line_where(&gw, "session ended", "request_id", "req-42").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["target"], "longconn_gateway::access_log", "{line}");
    assert_eq!(line["peer"], peer.as_str(), "{line}");
    assert_eq!(
        line["path"], "/chat",
        "the query string is left out: {line}"
    );
    assert_eq!(
        line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert_eq!(line["close_code"], 4000, "{line}");
    assert_eq!(line["reason"], "client_close", "{line}");
    assert_eq!(
        line["bytes_from_client"],
        (hello.len() + close.len()) as u64,
        "{line}"
    );
    assert_eq!(line["bytes_to_client"], to_client, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert!(
        line["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{line}"
    );

    // The app got the client's ids, the trace's state with them.
    let heads = upstream.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(header(&heads[0], "x-request-id"), Some("req-42"));
    assert_eq!(header(&heads[0], "traceparent"), Some(TRACEPARENT));
    assert_eq!(header(&heads[0], "tracestate"), Some("k=v"));
}

#[tokio::test]
async fn a_session_the_app_closes_logs_the_apps_code_and_fresh_ids() {
    let (up, upstream) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    // An id with a space and an upper-case traceparent are replaced, and the state goes too.
    let mut tcp = open_session(
        &gw,
        "/chat",
        &format!(
            "X-Request-Id: two words\r\ntraceparent: {}\r\ntracestate: k=v\r\n",
            TRACEPARENT.to_ascii_uppercase()
        ),
    )
    .await;
    let ask = client_frame(0x1, b"close:4321");
    tcp.write_all(&ask).await.unwrap();
    let (op, payload) = read_server_frame(&mut tcp).await.unwrap();
    assert_eq!((op, &payload[..2]), (0x8, &4321u16.to_be_bytes()[..]));
    let answer = client_frame(0x8, &payload[..2]);
    tcp.write_all(&answer).await.unwrap();
    let to_client = 2 + payload.len() as u64 + read_to_eof(&mut tcp).await;

    let head = upstream.heads.lock().unwrap()[0].clone();
    let request_id = header(&head, "x-request-id").unwrap().to_owned();
    assert!(
        request_id.len() == 32 && request_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{head}"
    );
    let traceparent = header(&head, "traceparent").unwrap();
    assert!(is_generated_traceparent(traceparent), "{head}");
    assert_eq!(header(&head, "tracestate"), None, "{head}");

    let line = line_where(&gw, "session ended", "request_id", &request_id).await;
    assert_eq!(line["trace_id"], traceparent[3..35], "{line}");
    assert_eq!(line["close_code"], 4321, "{line}");
    assert_eq!(line["reason"], "upstream_close", "{line}");
    assert_eq!(
        line["bytes_from_client"],
        (ask.len() + answer.len()) as u64,
        "{line}"
    );
    assert_eq!(line["bytes_to_client"], to_client, "{line}");
}

#[tokio::test]
async fn a_migrated_session_is_logged_with_the_gateways_close_code() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let mut tcp = open_session(&gw, "/chat", "X-Request-Id: moving\r\n").await;
    gw.post_drain(r#"{"strategy":"Notify","spread":"0s","deadline":"1m","closeCode":4100}"#)
        .await;
    let (op, payload) = read_server_frame(&mut tcp).await.unwrap();
    assert_eq!((op, &payload[..]), (0x8, &4100u16.to_be_bytes()[..]));
    // The client answers with a code of its own: the gateway's came first.
    let answer = client_frame(0x8, &1000u16.to_be_bytes());
    tcp.write_all(&answer).await.unwrap();
    read_to_eof(&mut tcp).await;
    let line = line_where(&gw, "session ended", "request_id", "moving").await;
    assert_eq!(line["close_code"], 4100, "{line}");
    assert_eq!(line["reason"], "migrated", "{line}");
    assert_eq!(line["bytes_from_client"], answer.len() as u64, "{line}");
    assert_eq!(
        line["bytes_to_client"], 0,
        "the gateway's own frames: {line}"
    );
}

#[tokio::test]
async fn a_session_line_carries_the_session_id_and_moves_the_client_declared_if_well_formed() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let cases = [
        (
            "declared",
            "Longconn-Session-Id: user-7/tab-2\r\nLongconn-Session-Moves: 2\r\n",
        ),
        // Malformed values are left out, and the session opens all the same.
        (
            "malformed",
            "Longconn-Session-Id: two words\r\nLongconn-Session-Moves: many\r\n",
        ),
        ("none", ""),
    ];
    for (request_id, headers) in cases {
        let headers = format!("X-Request-Id: {request_id}\r\n{headers}");
        let mut tcp = open_session(&gw, "/chat", &headers).await;
        tcp.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        read_to_eof(&mut tcp).await;
    }
    let line = line_where(&gw, "session ended", "request_id", "declared").await;
    assert_eq!(
        (&line["session_id"], &line["session_moves"]),
        (&"user-7/tab-2".into(), &2.into()),
        "{line}"
    );
    for request_id in ["malformed", "none"] {
        let line = line_where(&gw, "session ended", "request_id", request_id).await;
        assert_eq!(line["reason"], "client_close", "{line}");
        let fields = line.as_object().unwrap();
        assert!(
            !fields.contains_key("session_id") && !fields.contains_key("session_moves"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_client_that_vanishes_is_logged_with_1006() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let tcp = open_session(&gw, "/gone", "X-Request-Id: vanishing\r\n").await;
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let line = line_where(&gw, "session ended", "request_id", "vanishing").await;
    assert_eq!(line["close_code"], 1006, "{line}");
    assert_eq!(line["reason"], "client_disconnect", "{line}");
    assert_eq!(line["path"], "/gone", "{line}");
}

#[tokio::test]
async fn each_plain_http_request_is_one_line_with_its_ids_status_and_body_bytes() {
    let (up, upstream) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // An all-zero trace-id is invalid: a new trace starts, without the old state.
    tcp.write_all(
        b"POST /echo?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\
          traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01\r\n\
          tracestate: k=v\r\n\r\n12345",
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("12345"),
        "{response}"
    );

    let head = upstream.heads.lock().unwrap()[0].clone();
    let request_id = header(&head, "x-request-id").unwrap().to_owned();
    let traceparent = header(&head, "traceparent").unwrap();
    assert!(is_generated_traceparent(traceparent), "{head}");
    assert_eq!(header(&head, "tracestate"), None, "{head}");

    let line = line_where(&gw, "request ended", "request_id", &request_id).await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/echo", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["trace_id"], traceparent[3..35], "{line}");
    assert_eq!(line["bytes_from_client"], 5, "{line}");
    assert_eq!(line["bytes_to_client"], 5, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");

    let (status, _) = http_request(gw.addr, "GET", "/missing", None, "")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let line = line_where(&gw, "request ended", "path", "/missing").await;
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["bytes_to_client"], 0, "{line}");
}

#[tokio::test]
async fn an_upgrade_the_app_refuses_is_one_request_line_with_its_status() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, JSON_INFO).await;
    let request =
        upgrade_request(gw.addr, "X-Request-Id: refused\r\n").replacen("/chat", "/refuse", 1);
    let (head, mut tcp) = raw_head(gw.addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(read_to_eof(&mut tcp).await, 4);
    let line = line_where(&gw, "request ended", "request_id", "refused").await;
    assert_eq!(
        (&line["method"], &line["path"], &line["status"]),
        (&"GET".into(), &"/refuse".into(), &403.into()),
        "{line}"
    );
    assert_eq!(line["bytes_to_client"], 4, "{line}");
    assert!(gw.json_lines("session ended").is_empty(), "{}", gw.log());
}

#[tokio::test]
async fn a_misspelt_log_level_stops_the_gateway_naming_the_flag() {
    let (up, _) = start_upstream().await;
    let mut gw = Gateway::spawn_only(up, &["--log-level", "infoo"]);
    assert_eq!(gw.wait_exit(), Some(2));
    let log = gw.log();
    assert!(
        log.contains("--log-level: \"infoo\" is not a level"),
        "{log}"
    );
}
