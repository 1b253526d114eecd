//! Hostile and faulty clients through the real gateway: connections refused at accept (over the
//! cap or the rate), heads sent a byte at a time, handshakes that never finish, plain HTTP
//! exchanges that stall, bodies over the limit, answers nobody reads. Each test states the bound
//! it proves, in time and in what the gateway holds.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use futures_util::{SinkExt, StreamExt};
use longconn_gateway::http::MAX_HEAD_BYTES;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::Message;

/// Connects from `source` (any address of 127.0.0.0/8) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads what the gateway sends within `within`; `None` if it sends nothing and keeps the
/// connection open that long.
async fn answer_within(tcp: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn a_connection_over_the_cap_is_answered_at_accept_before_it_sends_anything() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--max-connections", "1"]).await;
    let mut held = ws_connect(&gw.ws_url()).await;
    // The bound: answered at once, without the gateway waiting for a request head (for up to the
    // handshake timeout, 10 s) or giving it a task and a buffer.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let answer = answer_within(&mut tcp, Duration::from_secs(3))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="max_connections"}"#)
            .await,
        1.0
    );
    assert_eq!(gw.metric("longconn_gateway_connections_active").await, 1.0);
    held.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        held.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test]
async fn connections_over_the_rate_are_answered_429_at_accept_and_take_no_slot() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &[
            "--rate-limit-connections-per-second-per-ip",
            "0.1",
            "--rate-limit-burst",
            "3",
            "--handshake-timeout",
            "10s",
        ],
    )
    .await;
    // The burst of three: two requests served, and a connection that holds its slot while its
    // head does not come.
    for _ in 0..2 {
        let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let _admitted = TcpStream::connect(gw.addr).await.unwrap();
    eventually("the burst's last token taken", || async {
        gw.metric("longconn_gateway_connections_active").await == 1.0
    })
    .await;
    // The bound: each one over the rate is answered at once, before it sends a byte, where an
    // admitted one would wait for its head for the handshake timeout (10 s); none takes a slot.
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        let answer = answer_within(&mut tcp, Duration::from_secs(3))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        // The next token comes within 1 / 0.1 s = 10 s.
        let retry: u64 = header(&answer, "Retry-After").unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "{answer}");
        assert_eq!(gw.metric("longconn_gateway_connections_active").await, 1.0);
    }
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="rate_limited"}"#)
            .await,
        20.0
    );
}

/// Writes `bytes` one byte per write, each sent at once: the gateway reads them as they come.
/// Writes after the gateway has closed are not an error here.
async fn send_a_byte_at_a_time(tcp: &mut TcpStream, bytes: &[u8]) {
    tcp.set_nodelay(true).unwrap();
    for b in bytes {
        if tcp.write_all(std::slice::from_ref(b)).await.is_err() {
            return;
        }
    }
}

/// The work such a head costs is bounded by the unit test
/// `a_head_sent_a_byte_at_a_time_is_parsed_three_times_at_most`, which counts the parses; this
/// one proves, on real sockets, that the largest head accepted (16 KiB) arriving a byte at a
/// time is read whole and relayed, and that a head still without its end at 16 KiB gets `400`.
#[tokio::test]
async fn the_largest_head_sent_a_byte_at_a_time_is_relayed_and_a_longer_one_gets_400() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let unpadded = upgrade_request(gw.addr, "X-Pad: \r\n").len();
    let pad = "p".repeat(MAX_HEAD_BYTES - unpadded);
    let request = upgrade_request(gw.addr, &format!("X-Pad: {pad}\r\n"));
    assert_eq!(request.len(), MAX_HEAD_BYTES);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    send_a_byte_at_a_time(&mut tcp, request.as_bytes()).await;
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp.write_all(&client_frame(0x1, b"whole")).await.unwrap();
    assert_eq!(
        read_server_frame(&mut tcp).await,
        Some((0x1, b"whole".to_vec()))
    );
    let relayed = log.heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        relayed.contains(&format!("X-Pad: {pad}\r\n")),
        "the pad reached the app"
    );

    // A head as long whose blank line has not come: refused once its 16 KiB have.
    let endless = upgrade_request(gw.addr, &format!("X-Pad: {pad}pp"));
    assert_eq!(endless.len(), MAX_HEAD_BYTES);
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    send_a_byte_at_a_time(&mut tcp, endless.as_bytes()).await;
    let answer = answer_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.ends_with("request head too large"), "{answer}");
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="bad_request"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn handshakes_that_never_finish_are_bounded_in_total_and_per_address() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &[
            "--max-handshakes",
            "8",
            "--max-handshakes-per-ip",
            "3",
            "--rate-limit-connections-per-second-per-ip",
            "0",
        ],
    )
    .await;
    let tasks_before = gw.metric("longconn_gateway_tasks").await;
    // Three silent connections from 127.0.0.1 are held (each for the handshake timeout at most);
    // the fourth is refused at accept.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from("127.0.0.1", gw.addr).await);
    }
    let mut fourth = connect_from("127.0.0.1", gw.addr).await;
    let answer = answer_within(&mut fourth, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    for tcp in &mut silent {
        assert_eq!(
            answer_within(tcp, Duration::from_millis(100)).await,
            None,
            "held, waiting for its head"
        );
    }
    // Other addresses fill the total of eight; the ninth connection is refused.
    for source in [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.4",
    ] {
        silent.push(connect_from(source, gw.addr).await);
    }
    let mut ninth = connect_from("127.0.0.5", gw.addr).await;
    let answer = answer_within(&mut ninth, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // A flood of 300 more silent connections: each is refused at accept, so the gateway holds
    // eight handshakes and no more than the answers in flight (32 at most, 1 s each).
    let mut flood = Vec::new();
    for i in 0..300 {
        flood.push(connect_from(&format!("127.0.1.{}", i % 200 + 1), gw.addr).await);
    }
    eventually("every flood connection refused", || async {
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="handshake_limit"}"#)
            .await
            == 302.0
    })
    .await;
    let tasks = gw.metric("longconn_gateway_tasks").await;
    assert!(
        tasks <= tasks_before + 8.0 + 32.0 + 2.0,
        "{tasks} tasks, {tasks_before} before"
    );
    assert_eq!(gw.metric("longconn_gateway_connections_active").await, 8.0);
    // Once a held one from 127.0.0.1 goes, its place is free: a session opens from there.
    drop(silent.remove(0));
    eventually("a place is free", || async {
        gw.metric("longconn_gateway_connections_active").await == 7.0
    })
    .await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("in")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("in"));
}

#[tokio::test]
async fn a_request_whose_announced_body_never_comes_gets_408_after_the_idle_timeout() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--http-idle-timeout", "1s"]).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
        .await
        .unwrap();
    let sent = Instant::now();
    // The bound: the HTTP idle timeout (1 s) plus a tick, not until a drain.
    let answer = answer_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("ended");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        gw.metric("longconn_gateway_http_idle_timeouts_total").await,
        1.0
    );
    eventually("slot released", || async {
        gw.metric("longconn_gateway_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn an_app_that_does_not_answer_gets_its_client_a_504() {
    let up = start_silent_upstream().await;
    let gw = Gateway::start(up, &["--http-idle-timeout", "1s"]).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        http_request(gw.addr, "GET", "/slow", None, ""),
    )
    .await
    .expect("answered within the idle timeout and a tick")
    .unwrap();
    assert_eq!(answer.0, 504, "{answer:?}");
}

#[tokio::test]
async fn a_response_nobody_reads_is_cut_after_the_idle_timeout() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--http-idle-timeout", "1s"]).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing: the app's 64 MiB fill the buffers, then nothing moves. The
    // bound: the idle timeout (1 s) after the buffers are full.
    let asked = Instant::now();
    eventually("the exchange was cut", || async {
        gw.metric("longconn_gateway_http_idle_timeouts_total").await == 1.0
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    eventually("slot released", || async {
        gw.metric("longconn_gateway_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn an_event_stream_lives_past_the_idle_timeout_while_events_come() {
    let (up, _) = start_upstream().await;
    // Events every 400 ms for 2.4 s against a 1 s idle timeout.
    let gw = Gateway::start(up, &["--http-idle-timeout", "1s"]).await;
    let (status, body) = http_request(gw.addr, "GET", "/ticks", None, "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    for i in 0..TICKS {
        assert!(body.contains(&format!("data: {i}\n\n")), "{body}");
    }
    assert!(TICK_EVERY * TICKS as u32 > Duration::from_secs(2));
    assert_eq!(
        gw.metric("longconn_gateway_http_idle_timeouts_total").await,
        0.0
    );
}

#[tokio::test]
async fn plain_http_has_its_own_smaller_cap_and_sessions_still_open() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &["--max-http-connections", "1"]).await;
    let (mut stream, _) = open_event_stream(gw.addr).await;
    let (status, body) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="http_max_connections"}"#)
            .await,
        1.0
    );
    let mut ws = ws_connect(&gw.ws_url()).await;
    ws.send(Message::text("a session")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("a session")
    );
    log.sse_go.notify_one();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "the stream ended: its slot is free");
}

#[tokio::test]
async fn a_request_body_over_the_limit_gets_413_announced_or_not() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &["--http-max-body-bytes", "1000"]).await;
    let (status, _) = http_request(gw.addr, "POST", "/echo", None, &"x".repeat(1000))
        .await
        .unwrap();
    assert_eq!(status, 200, "at the limit");
    let (status, _) = http_request(gw.addr, "POST", "/echo", None, &"x".repeat(1001))
        .await
        .unwrap();
    assert_eq!(status, 413, "announced by Content-Length");
    let heads_before = log.heads.lock().unwrap().len();
    // Chunked, so unannounced: cut where it passes the limit, before the app answers.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "y".repeat(0x200));
    for _ in 0..4 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let answer = answer_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("ended");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="body_too_large"}"#)
            .await,
        2.0
    );
    assert_eq!(
        log.heads.lock().unwrap().len(),
        heads_before + 1,
        "only the chunked one reached the app"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_in_the_read_that_brings_the_head_never_reaches_the_app() {
    let (up, log) = start_upstream().await;
    let gw = Gateway::start(up, &["--http-max-body-bytes", "100"]).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = format!("12c\r\n{}\r\n", "y".repeat(300));
    let whole =
        format!("POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}");
    tcp.write_all(whole.as_bytes()).await.unwrap();
    // The client sends nothing more: the bound is at once, not the idle timeout.
    let answer = answer_within(&mut tcp, Duration::from_secs(5))
        .await
        .expect("ended");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let heads = log.heads.lock().unwrap();
    assert!(
        !heads.iter().any(|h| h.starts_with("POST /sink")),
        "{heads:?}"
    );
}

/// Connects to `to` as a client whose answers back up: it announces a segment size of 536 bytes
/// and keeps the smallest receive buffer. Linux sizes the gateway's send buffer for a connection
/// from its segment size, so a 64 KiB answer then fits neither buffer and the gateway's write
/// blocks while the client does not read (with the loopback's own 64 KiB segments it would fit
/// whole, and the write would return at once).
async fn connect_backed_up(to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_tcp_mss(536).unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn a_refused_upgrade_nobody_reads_is_given_up_in_bounded_time() {
    // An app that refuses every upgrade with a 64 KiB body, the most the gateway passes on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let mut answer =
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 65536\r\n\r\n".to_vec();
                answer.extend_from_slice(&[b'n'; 65536]);
                let _ = tcp.write_all(&answer).await;
                tokio::time::sleep(WAIT).await;
            });
        }
    });
    let gw = Gateway::start(up, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut tcp = connect_backed_up(gw.addr).await;
        tcp.write_all(upgrade_request(gw.addr, "").as_bytes())
            .await
            .unwrap();
        clients.push(tcp);
    }
    let asked = Instant::now();
    // None of them reads. Half the write timeout on, the app has refused all four and their
    // answers are still being written: the writes block, so the timeout is what ends them.
    eventually("the app's four refusals", || async {
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="upstream_refused"}"#)
            .await
            == 4.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed())).await;
    assert_eq!(
        gw.metric("longconn_gateway_connections_active").await,
        4.0,
        "the answers did not back up, so this test would prove nothing"
    );
    // The bound: the answer's write timeout (2 s) after the app's answer, with room for a slow
    // machine, and far below the handshake timeout (10 s) and the test's patience (30 s).
    let bound = Duration::from_secs(5);
    while gw.metric("longconn_gateway_connections_active").await > 0.0 {
        assert!(
            asked.elapsed() < bound,
            "connections still held {:?} after the app refused them",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(clients);
}

#[tokio::test]
async fn latency_histograms_count_handshakes_upstream_pings_and_first_bytes() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(
        up,
        &["--heartbeat-interval", "200ms", "--heartbeat-timeout", "2s"],
    )
    .await;
    let count = |name: &'static str| {
        let gw = &gw;
        async move { gw.metric(&format!("longconn_gateway_{name}_count")).await }
    };
    let mut ws = ws_connect(&gw.ws_url()).await;
    // tungstenite answers pings while it reads.
    ws.send(Message::text("hello")).await.unwrap();
    let reader = async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() {
                continue;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), reader).await;
    let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(count("handshake_duration_seconds").await, 1.0);
    assert_eq!(count("upstream_upgrade_duration_seconds").await, 1.0);
    assert_eq!(count("upstream_connect_duration_seconds").await, 2.0);
    assert_eq!(count("http_first_byte_seconds").await, 1.0);
    let pings = count("ping_rtt_seconds").await;
    assert!(pings >= 1.0, "{pings} pongs timed");
    let rtt_sum = gw.metric("longconn_gateway_ping_rtt_seconds_sum").await;
    assert!(
        rtt_sum / pings < 1.0,
        "mean ping round trip {}",
        rtt_sum / pings
    );
}
