//! Limits and timeouts through the real gateway: heartbeats, idle and handshake timeouts,
//! the connection cap, the message size limit and the origin check (the per-IP rate limit is in
//! `hostile.rs`, with the other refusals at accept).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Heartbeats short enough for a test: a silent client is pinged after 300 ms and given 300 ms.
const FAST_HEARTBEATS: [&str; 4] = [
    "--heartbeat-interval",
    "300ms",
    "--heartbeat-timeout",
    "300ms",
];

#[tokio::test]
async fn heartbeat_timeout_closes_a_client_that_never_answers_pings() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &FAST_HEARTBEATS).await;
    let mut tcp = raw_session(gw.addr).await;
    // The test never answers: first a ping arrives, then a close 1001, then the end.
    let (op, _) = read_server_frame(&mut tcp).await.unwrap();
    assert_eq!(op, 0x9, "expected a ping first");
    assert_eq!(read_close_code(&mut tcp).await, Some(1001));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    eventually("heartbeat_timeout counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="heartbeat_timeout"}"#)
            .await
            == 1.0
    })
    .await;
    // The gateway ended the session, so it tells the app why.
    eventually("the upstream saw the close", || async {
        !log.ws_ends.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*log.ws_ends.lock().unwrap(), vec![Some(1001)]);
}

#[tokio::test]
async fn answered_pings_keep_a_quiet_session_open() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &[
            "--heartbeat-interval",
            "200ms",
            "--heartbeat-timeout",
            "200ms",
        ],
    )
    .await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    // tungstenite answers every ping while we read; count a few of them.
    let mut pings = 0;
    for _ in 0..1000 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
        if pings == 5 {
            break;
        }
    }
    assert_eq!(pings, 5);
    ws.send(Message::text("still open")).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => {}
            m => {
                assert_eq!(m, Message::text("still open"));
                break;
            }
        }
    }
}

#[tokio::test]
async fn idle_timeout_closes_a_session_without_messages() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &[
            "--idle-timeout",
            "1s",
            "--heartbeat-interval",
            "200ms",
            "--heartbeat-timeout",
            "5s",
        ],
    )
    .await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("one")).await.unwrap();
    // Pongs are not messages: the session closes although the client answers every ping.
    assert_eq!(received_close_code(&mut ws).await, Some(1001));
    eventually("idle_timeout counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="idle_timeout"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn handshake_timeout_frees_the_slot_of_a_slow_client() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--max-connections", "1", "--handshake-timeout", "1s"]).await;
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Slowloris: one more header line now and then, never the end of the head.
    let mut closed = false;
    for i in 0..300 {
        if slow
            .write_all(format!("X-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(
        closed,
        "the gateway kept a client that never finished its head"
    );
    eventually("slot released", || async {
        gw.metric("longconn_gateway_connections_active").await == 0.0
    })
    .await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("mine now")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("mine now"));
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="handshake_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn max_connections_answers_503_with_retry_after() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--max-connections", "2"]).await;
    let mut a = ws_connect(&gw.ws_url()).await;
    let _b = ws_connect(&gw.ws_url()).await;
    let (head, _) = raw_head(gw.addr, &upgrade_request(gw.addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    a.close(None).await.unwrap();
    received_close_code(&mut a).await;
    eventually("a slot is free again", || async {
        let (head, _) = raw_head(gw.addr, &upgrade_request(gw.addr, "")).await;
        head.starts_with("HTTP/1.1 101")
    })
    .await;
}

#[tokio::test]
async fn message_over_the_limit_closes_with_1009() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--max-message-bytes", "1000"]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::binary(vec![1u8; 1000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8; 1000])
    );
    ws.send(Message::binary(vec![2u8; 1001])).await.unwrap();
    assert_eq!(received_close_code(&mut ws).await, Some(1009));
    eventually("message_too_big counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="message_too_big"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn origin_outside_the_allow_list_gets_403() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &[
            "--allowed-origins",
            "https://app.example.com,https://*.example.org",
        ],
    )
    .await;
    let cases = [
        ("Origin: https://evil.example.com\r\n", "HTTP/1.1 403"),
        ("Origin: https://app.example.com\r\n", "HTTP/1.1 101"),
        ("Origin: https://eu.example.org\r\n", "HTTP/1.1 101"),
        ("", "HTTP/1.1 101"),
    ];
    for (header, expected) in cases {
        let (head, _) = raw_head(gw.addr, &upgrade_request(gw.addr, header)).await;
        assert!(head.starts_with(expected), "{header:?} -> {head}");
    }
}

#[tokio::test]
async fn bad_flag_values_stop_the_gateway_with_one_line_each() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_longconn-gateway"))
        .args([
            "--heartbeat-timeout",
            "0s",
            "--drain-close-code",
            "999",
            "--tls-key",
            "/k.pem",
        ])
        .env_remove("LONGCONN_GATEWAY_TLS_CERT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for flag in ["--heartbeat-timeout", "--drain-close-code", "--tls-cert"] {
        assert!(
            err.lines().any(|l| l.starts_with(flag)),
            "{flag} missing: {err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_longconn-gateway"))
        .env("LONGCONN_GATEWAY_IDLE_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
}

#[tokio::test]
async fn a_client_that_stops_reading_while_the_app_sends_is_ended_within_the_heartbeat_bound() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &FAST_HEARTBEATS).await;
    let mut tcp = raw_session(gw.addr).await;
    tcp.write_all(&client_frame(0x1, b"flood")).await.unwrap();
    let asked = std::time::Instant::now();
    // The client reads nothing from here on; it only watches for the gateway ending it.
    eventually("write_stalled counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="write_stalled"}"#)
            .await
            == 1.0
    })
    .await;
    let held = asked.elapsed();
    // The bound: the heartbeat interval plus timeout (600 ms) from the stall, plus up to two
    // ticks, plus the time the app needs to fill the buffers.
    assert!(held < Duration::from_secs(5), "held {held:?}");
    assert_eq!(gw.metric("longconn_gateway_sessions_active").await, 0.0);
    drop(tcp);
}

/// The hard open-file limit of this test process, which a child inherits.
fn hard_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let hard = line.split_whitespace().nth(4).unwrap();
    hard.parse().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn an_open_file_limit_that_cannot_hold_max_connections_is_refused_at_start() {
    let (up, _) = start_upstream().await;
    let mut gw = Gateway::spawn_with_nofile(up, &["--max-connections", "1000"], (256, 256));
    assert_eq!(gw.wait_exit(), Some(2), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains(
            "the open-file limit is 256 but --max-connections 1000 needs 2064 descriptors"
        ) && log.contains("to 96 or less"),
        "{log}"
    );
}

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_exported() {
    let hard = hard_nofile().min(4096);
    let (up, _) = start_upstream().await;
    let gw = Gateway::spawn_with_nofile(up, &["--max-connections", "100"], (128, hard))
        .wait_healthy()
        .await;
    assert!(
        gw.log()
            .contains(&format!("soft={hard} hard={hard} at_start=128")),
        "{}",
        gw.log()
    );
    let _session = ws_connect(&gw.ws_url()).await;
    assert_eq!(gw.metric("process_max_fds").await, hard as f64);
    // Listeners, the runtime's, a session's two sockets, the admin connection of this scrape.
    let open = gw.metric("process_open_fds").await;
    assert!((5.0..128.0).contains(&open), "{open} open descriptors");
    assert!(gw.metric("process_resident_memory_bytes").await > 1e6);
    assert!(gw.metric("longconn_gateway_tasks").await >= 1.0);
}
