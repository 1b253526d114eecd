//! Proxying through the real gateway binary: WebSocket both ways, close relay from either side,
//! plain HTTP and streamed responses, health endpoints, malformed input.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

#[tokio::test]
async fn websocket_messages_are_relayed_both_ways() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("hello")).await.unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    for i in 0..50 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    let text = gw.metrics().await;
    assert!(
        text.contains("longconn_gateway_sessions_active 1"),
        "{text}"
    );
    assert!(
        gw.metric(r#"longconn_gateway_messages_total{direction="upstream_to_client"}"#)
            .await
            >= 52.0
    );
}

#[tokio::test]
async fn each_session_logs_with_its_own_id() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    for _ in 0..2 {
        let mut ws = ws_connect(&gw.ws_url()).await;
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    eventually("both sessions ended", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="client_close"}"#)
            .await
            == 2.0
    })
    .await;
    let log = gw.log();
    // `... DEBUG session{id=<hex> peer=<addr>}: <module>: session open`
    let id_of = |line: &str| -> Option<String> {
        let rest = line.split("session{id=").nth(1)?;
        Some(rest.split(' ').next()?.to_owned())
    };
    let ids_with = |message: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(message))
            .filter_map(id_of)
            .collect()
    };
    let opened = ids_with("session open");
    assert_eq!(opened.len(), 2, "{log}");
    assert_ne!(opened[0], opened[1], "{log}");
    let ended = ids_with("session ended");
    for id in &opened {
        assert!(ended.contains(id), "no end line for session {id}: {log}");
    }
}

#[tokio::test]
async fn client_close_is_relayed_and_the_handshake_completes() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The upstream's answer comes back through the gateway.
    assert_eq!(received_close_code(&mut ws).await, Some(4000));
    eventually("client_close counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="client_close"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_client_that_vanishes_ends_the_upstream_connection_without_a_close_frame() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let tcp = raw_session(gw.addr).await;
    // A reset, as from a client whose network went away: the app must see its connection end
    // the same way (abnormally), not a clean close the client never sent.
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    eventually("the upstream saw the session end", || async {
        !log.ws_ends.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*log.ws_ends.lock().unwrap(), vec![None]);
    eventually("client_disconnect counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="client_disconnect"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn upstream_close_is_relayed_to_the_client() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("close:4001")).await.unwrap();
    assert_eq!(received_close_code(&mut ws).await, Some(4001));
    eventually("upstream_close counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="upstream_close"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn plain_http_requests_are_proxied_with_connection_close() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let (status, body) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    let payload = "x".repeat(100_000);
    let (status, body) = http_request(gw.addr, "POST", "/echo", None, &payload)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, payload);
    let heads = log.heads.lock().unwrap().clone();
    assert!(
        heads.iter().all(|h| h.contains("Connection: close")),
        "{heads:?}"
    );
    assert!(
        heads
            .iter()
            .all(|h| h.contains("X-Forwarded-For: 127.0.0.1")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn server_sent_events_are_streamed_before_the_response_ends() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    // The first event must arrive while the upstream is still holding the stream open.
    let (mut tcp, mut seen) = open_event_stream(gw.addr).await;
    assert!(!String::from_utf8_lossy(&seen).contains("data: two"));
    log.sse_go.notify_one();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut seen))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("text/event-stream") && text.contains("data: two"),
        "{text}"
    );
}

#[tokio::test]
async fn permessage_deflate_is_refused_not_negotiated() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let req = upgrade_request(
        gw.addr,
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let (head, _tcp) = raw_head(gw.addr, &req).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let heads = log.heads.lock().unwrap().clone();
    assert!(
        !heads[0].to_ascii_lowercase().contains("permessage-deflate"),
        "{heads:?}"
    );
}

#[tokio::test]
async fn healthz_is_ok_and_readyz_follows_the_upstream() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    assert_eq!(gw.readyz().await, 200);
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw2 = Gateway::start(dead, &[]).await;
    assert_eq!(
        gw2.admin_request("GET", "/healthz", None, "")
            .await
            .unwrap()
            .0,
        200
    );
    let (status, body) = gw2.admin_request("GET", "/readyz", None, "").await.unwrap();
    assert_eq!((status, body.trim()), (503, "upstream unreachable"));
    // And a client gets 502, not a hang.
    let (head, _) = raw_head(gw2.addr, &upgrade_request(gw2.addr, "")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}

#[tokio::test]
async fn unmasked_client_frame_gets_close_1002() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut tcp = raw_session(gw.addr).await;
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(1002));
    eventually("protocol_error counted", || async {
        gw.metric(r#"longconn_gateway_sessions_closed_total{reason="protocol_error"}"#)
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn reserved_opcode_and_bad_control_frames_get_close_1002() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    for bad in [
        client_frame(0x3, b"x"),        // reserved opcode
        client_frame(0x9, &[0u8; 126]), // control frame over 125 bytes
        [vec![0x01 | 0x40], client_frame(0x1, b"x")[1..].to_vec()].concat(), // RSV1
    ] {
        let mut tcp = raw_session(gw.addr).await;
        tcp.write_all(&bad).await.unwrap();
        assert_eq!(read_close_code(&mut tcp).await, Some(1002));
    }
}

#[tokio::test]
async fn bad_handshakes_get_400_and_the_gateway_survives() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let no_key = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_string();
    let wrong_version = upgrade_request(gw.addr, "").replace("Version: 13", "Version: 8");
    let garbage = "\u{1}\u{2}\u{3} nonsense\r\n\r\n".to_string();
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    for req in [no_key, wrong_version, garbage, huge] {
        let (head, _) = raw_head(gw.addr, &req).await;
        let shown: String = req.chars().take(60).collect();
        assert!(head.starts_with("HTTP/1.1 400"), "{shown:?} -> {head}");
    }
    // Still serving.
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("alive")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("alive"));
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_relayed() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut bytes = upgrade_request(gw.addr, "").into_bytes();
    bytes.extend(client_frame(0x1, b"early"));
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        read_server_frame(&mut tcp).await,
        Some((0x1, b"early".to_vec()))
    );
}

#[tokio::test]
async fn metrics_are_openmetrics_with_every_family() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("count me")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let (head, _) = raw_head(gw.admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let text = gw.metrics().await;
    for family in [
        "longconn_gateway_sessions_active",
        "longconn_gateway_sessions_opened_total",
        "longconn_gateway_sessions_closed_total{reason=\"drain_deadline\"}",
        "longconn_gateway_messages_total{direction=\"client_to_upstream\"} 1",
        "longconn_gateway_messages_total{direction=\"upstream_to_client\"} 1",
        "longconn_gateway_relayed_bytes_total{direction=\"client_to_upstream\"}",
        "longconn_gateway_handshake_rejections_total{reason=\"origin_forbidden\"}",
        "longconn_gateway_session_duration_seconds_bucket",
        "longconn_gateway_drain_state{state=\"serving\"} 1",
        "longconn_gateway_certificate_expiry_timestamp_seconds 0",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn malformed_frame_sent_with_the_upgrade_request_gets_close_1002() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut bytes = upgrade_request(gw.addr, "").into_bytes();
    bytes.extend_from_slice(&[0x81, 0x01, b'x']); // unmasked
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_close_code(&mut tcp).await, Some(1002));
}

#[tokio::test]
async fn upstream_failure_gets_close_1011_and_counts_as_dropped_in_a_drain() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    let _other = ws_connect(&gw.ws_url()).await;
    eventually("2 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 2.0
    })
    .await;
    let (status, _) = gw
        .admin_request(
            "POST",
            "/drain",
            Some(TOKEN),
            r#"{"strategy":"Wait","deadline":"1m"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    ws.send(Message::text("die")).await.unwrap();
    assert_eq!(received_close_code(&mut ws).await, Some(1011));
    eventually("the failure is in the report", || async {
        gw.drain_report().await["dropped"] == 1
    })
    .await;
    let report = gw.drain_report().await;
    assert_eq!(
        (report["active"].as_u64(), report["closedByClient"].as_u64()),
        (Some(1), Some(0))
    );
}

#[tokio::test]
async fn drain_refuses_new_http_requests_and_cuts_streams_at_the_deadline() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut sse = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    sse.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut sse).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, _) = gw
        .admin_request(
            "POST",
            "/drain",
            Some(TOKEN),
            r#"{"strategy":"Wait","deadline":"1s"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 503);
    // The upstream would hold the stream open until told otherwise; the deadline ends it.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, sse.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rest).contains("data: two"));
}

#[tokio::test]
async fn a_close_frame_relayed_from_the_app_is_the_only_one_the_client_gets() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut tcp = raw_session(gw.addr).await;
    tcp.write_all(&client_frame(0x1, b"close:4000"))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(4000));
    // The client does not answer; the drain's deadline ends the session meanwhile.
    gw.post_drain(r#"{"strategy":"Wait","deadline":"1s"}"#)
        .await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the session ends")
        .unwrap();
    assert_eq!(rest, b"", "nothing after the app's close frame");
}

#[tokio::test]
async fn whole_frames_before_a_bad_one_reach_the_app() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut tcp = raw_session(gw.addr).await;
    // One write: a valid masked frame, then an unmasked one, which a client may not send.
    let mut bytes = client_frame(0x1, b"first");
    bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    tcp.write_all(&bytes).await.unwrap();
    let mut code = None;
    while let Some((op, payload)) = read_server_frame(&mut tcp).await {
        if op == 0x8 {
            code = Some(u16::from_be_bytes([payload[0], payload[1]]));
            break;
        }
    }
    assert_eq!(code, Some(1002));
    eventually("the app got the frame before the bad one", || async {
        log.echoed.lock().unwrap().as_slice() == ["first"]
    })
    .await;
}

#[tokio::test]
async fn a_gateway_whose_port_another_process_holds_is_started_again_on_new_ports() {
    let (up, _) = start_upstream().await;
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let mut ports = std::iter::once(held).chain(std::iter::repeat_with(free_port));
    let mut handed_out = 0;
    let gw = Gateway::start_on_ports(up, &[], || {
        handed_out += 1;
        ports.next().unwrap()
    })
    .await;
    // The first gateway exited on the held listener port; a later one got new ports (two per
    // gateway: listener, then admin).
    assert!(handed_out >= 4, "{handed_out} ports handed out");
    assert_ne!(gw.addr.port(), held);
    let (status, body) = gw.admin_request("GET", "/healthz", None, "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("after the retry")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after the retry")
    );
}
