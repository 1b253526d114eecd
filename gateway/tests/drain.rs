//! The drain protocol end to end: Notify and Wait, the deadline, the report's exact accounting
//! (sessions moved again and attempts refused included), the health counts of the app's upgrades
//! and sessions, the close frame's reason, the bearer token, SIGTERM, and the `drain --wait` (with
//! its settle time) and `install` subcommands.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The gateway binary, as the app container's preStop hook runs it.
const GATEWAY: &str = env!("CARGO_BIN_EXE_longconn-gateway");

/// A gateway in front of a new upstream, with `n` polite clients (see [`polite_clients`]).
async fn gateway_with_clients(n: usize) -> (Gateway, Vec<JoinHandle<Option<u16>>>) {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let clients = polite_clients(&gw, n).await;
    (gw, clients)
}

/// Opens `n` well-behaved clients (they answer a close frame); each task returns the close code
/// it received.
async fn polite_clients(gw: &Gateway, n: usize) -> Vec<JoinHandle<Option<u16>>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut ws = talking_client(gw, i, &[]).await;
        tasks.push(tokio::spawn(
            async move { received_close_code(&mut ws).await },
        ));
    }
    tasks
}

#[tokio::test]
async fn drain_notify_migrates_every_live_client() {
    let (gw, clients) = gateway_with_clients(20).await;
    let started = gw
        .post_drain(r#"{"strategy":"Notify","spread":"1s","deadline":"1m"}"#)
        .await;
    assert_eq!(started["state"], "Draining");
    assert_eq!(started["sessionsAtStart"], 20);
    // The pod leaves the endpoints and new clients are refused before the upgrade.
    assert_eq!(gw.readyz().await, 503);
    let (head, _) = raw_head(gw.addr, &upgrade_request(gw.addr, "")).await;
    assert!(
        head.starts_with("HTTP/1.1 503") && head.contains("Retry-After"),
        "{head}"
    );
    let report = gw.wait_drained().await;
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
    assert_eq!(report["migrated"], 20, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["closedByClient"], 0, "{report}");
    assert_eq!(report["active"], 0, "{report}");
    assert!(report["finishedAt"].is_string(), "{report}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"longconn_gateway_drain_state{state="drained"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"longconn_gateway_sessions_closed_total{reason="migrated"} 20"#));
}

#[tokio::test]
async fn drain_deadline_counts_remaining_as_dropped() {
    let (gw, polite) = gateway_with_clients(2).await;
    // These clients never read, so they never answer the close frame.
    let mut deaf = Vec::new();
    for _ in 0..3 {
        deaf.push(raw_session(gw.addr).await);
    }
    eventually("5 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 5.0
    })
    .await;
    gw.post_drain(r#"{"strategy":"Notify","spread":"0s","deadline":"2s","closeCode":1001}"#)
        .await;
    let report = gw.wait_drained().await;
    for c in polite {
        assert_eq!(c.await.unwrap(), Some(1001));
    }
    assert_eq!(report["sessionsAtStart"], 5, "{report}");
    assert_eq!(report["migrated"], 2, "{report}");
    assert_eq!(report["dropped"], 3, "{report}");
    assert_eq!(report["closedByClient"], 0, "{report}");
    // The deaf clients were cut: each finds the close frame and then the end of the stream.
    for mut tcp in deaf {
        assert_eq!(read_close_code(&mut tcp).await, Some(1001));
    }
}

#[tokio::test]
async fn drain_wait_lets_clients_close_on_their_own() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws_connect(&gw.ws_url()).await);
    }
    eventually("3 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 3.0
    })
    .await;
    let started = gw
        .post_drain(r#"{"strategy":"Wait","deadline":"1m"}"#)
        .await;
    assert_eq!(started["sessionsAtStart"], 3);
    // Wait sends nothing: the clients still talk to the app.
    let ws = &mut clients[0];
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    assert_eq!(gw.drain_report().await["state"], "Draining");
    for mut ws in clients {
        ws.close(None).await.unwrap();
        received_close_code(&mut ws).await;
    }
    let report = gw.wait_drained().await;
    assert_eq!(report["closedByClient"], 3, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    assert_eq!(report["migrated"], 0, "{report}");
}

#[tokio::test]
async fn drain_deadline_cuts_a_streamed_http_response() {
    use tokio::io::AsyncReadExt;
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let (mut tcp, mut seen) = open_event_stream(gw.addr).await;
    // The upstream holds the stream open for WAIT: only the deadline can end it sooner.
    let started = std::time::Instant::now();
    gw.post_drain(r#"{"strategy":"Wait","deadline":"1s"}"#)
        .await;
    tokio::time::timeout(WAIT / 2, tcp.read_to_end(&mut seen))
        .await
        .expect("the drain deadline ends the stream")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(!String::from_utf8_lossy(&seen).contains("data: two"));
}

#[tokio::test]
async fn sigterm_lets_a_streamed_http_response_finish_before_exiting() {
    use tokio::io::AsyncReadExt;
    let (up, log) = start_upstream().await;
    let mut gw = Gateway::start(up, &["--drain-timeout", "1m"]).await;
    let (mut tcp, mut seen) = open_event_stream(gw.addr).await;
    gw.signal("TERM");
    // No session is open, yet the process waits for the stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.child.try_wait().unwrap(), None, "{}", gw.log());
    log.sse_go.notify_one();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut seen))
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&seen).contains("data: two"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(gw.wait_exit(), Some(0));
}

#[tokio::test]
async fn drain_api_refuses_a_bad_token_and_follows_rotation() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    for token in [None, Some("wrong"), Some("s3cret-tokenX"), Some("")] {
        let (status, _) = gw
            .admin_request("POST", "/drain", token, "{}")
            .await
            .unwrap();
        assert_eq!(status, 401, "{token:?}");
        let (status, _) = gw.admin_request("GET", "/drain", token, "").await.unwrap();
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(gw.readyz().await, 200);
    // The Secret rotates: the file is read again on the next request.
    std::fs::write(&gw.token_file, "rotated-token\n").unwrap();
    let (status, _) = gw
        .admin_request("GET", "/drain", Some(TOKEN), "")
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = gw
        .admin_request("GET", "/drain", Some("rotated-token"), "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"Serving""#), "{body}");
    // A bad request body is a 400 that names the problem, and starts nothing.
    let (status, body) = gw
        .admin_request(
            "POST",
            "/drain",
            Some("rotated-token"),
            r#"{"deadlin":"5m"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("deadlin"), "{body}");
}

#[tokio::test]
async fn a_drain_with_no_time_an_absurd_time_or_a_long_reason_is_a_400_and_cuts_no_session() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = ws_connect(&gw.ws_url()).await;
    for (body, says) in [
        (r#"{"deadline":"0s"}"#, "deadline 0s"),
        (r#"{"spread":"500000000000y"}"#, "spread"),
        (
            r#"{"deadline":"500000000000y","spread":"500000000000y"}"#,
            "longest drain",
        ),
        (
            r#"{"deadline":"10s","spread":"1m"}"#,
            "longer than the deadline 10s",
        ),
        (
            &format!(r#"{{"reason":"{}"}}"#, "x".repeat(124)),
            "reason is 124 bytes of UTF-8: a close frame has room for 123",
        ),
    ] {
        let (status, text) = gw
            .admin_request("POST", "/drain", Some(TOKEN), body)
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    assert_eq!(gw.drain_report().await["state"], "Serving");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test]
async fn sigterm_drains_sessions_and_exits_when_none_is_left() {
    let (up, _) = start_upstream().await;
    let mut gw = Gateway::start(up, &["--drain-spread", "0s", "--drain-timeout", "1m"]).await;
    let clients = polite_clients(&gw, 3).await;
    gw.signal("TERM");
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
    assert_eq!(gw.wait_exit(), Some(0));
    let log = gw.log();
    assert!(
        log.contains("migrated=3") && log.contains("dropped=0"),
        "{log}"
    );
}

/// Runs `exe drain --wait` against `gw` with `args`; returns its exit status and standard output.
async fn run_drain_cli(exe: &str, gw: &Gateway, args: &[&str], token_file: bool) -> (i32, String) {
    let out = drain_cli(exe, gw, args, token_file).await;
    (out.0, out.1)
}

/// [`run_drain_cli`], with its standard error (its log) as well. Without `--settle` in `args` it
/// starts the drain at once.
async fn drain_cli(
    exe: &str,
    gw: &Gateway,
    args: &[&str],
    token_file: bool,
) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "drain",
        "--wait",
        "--admin",
        &gw.admin.to_string(),
        "--poll-interval",
        "100ms",
    ])
    .env_remove("LONGCONN_GATEWAY_ADMIN_TOKEN_FILE")
    .env("LONGCONN_GATEWAY_DRAIN_SETTLE", "0s");
    if token_file {
        cmd.args(["--admin-token-file", path_str(&gw.token_file)]);
    }
    // Last, so that a command after `--` stays last.
    cmd.args(args);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn drain_wait_exits_zero_when_every_session_migrated() {
    let (gw, clients) = gateway_with_clients(2).await;
    let (code, out) = run_drain_cli(GATEWAY, &gw, &["--spread", "0s"], true).await;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (report["state"].as_str(), report["migrated"].as_u64()),
        (Some("Drained"), Some(2))
    );
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
}

#[tokio::test]
async fn drain_wait_lingers_after_a_drain_it_waited_for_and_not_after_a_finished_one() {
    let (gw, clients) = gateway_with_clients(1).await;
    let started = std::time::Instant::now();
    let (code, out) =
        run_drain_cli(GATEWAY, &gw, &["--spread", "0s", "--linger", "2s"], true).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited for the drain, so it stays the linger time"
    );
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
    // The gateway's report is still there: a second hook finds the drain finished and returns
    // without lingering (the 60 s linger would outlast the test's own wait).
    let (code, out) = run_drain_cli(GATEWAY, &gw, &["--linger", "60s"], true).await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn drain_wait_exits_non_zero_when_a_session_was_dropped() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let _deaf = raw_session(gw.addr).await;
    eventually("session open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 1.0
    })
    .await;
    let (code, out) =
        run_drain_cli(GATEWAY, &gw, &["--spread", "0s", "--deadline", "1s"], true).await;
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["dropped"], 1, "{report}");
}

#[tokio::test]
async fn drain_wait_runs_the_command_after_the_drain_and_exits_with_its_status() {
    let (gw, clients) = gateway_with_clients(1).await;
    let hook = ["sh", "-c", r#"echo "user hook $*"; exit 7"#, "sh", "a", "b"];
    let (code, out) = run_drain_cli(
        GATEWAY,
        &gw,
        &[&["--spread", "0s", "--"][..], &hook].concat(),
        true,
    )
    .await;
    assert_eq!(code, 7, "the command's status: {out}");
    // The report is printed once the drain has finished, and the command's output follows it.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let report: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (report["state"].as_str(), report["migrated"].as_u64()),
        (Some("Drained"), Some(1))
    );
    assert_eq!(lines[1], "user hook a b");
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
    // A command that succeeds leaves the drain's status; one that does not exist is 127.
    let (code, out) = run_drain_cli(GATEWAY, &gw, &["--", "true"], true).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_drain_cli(GATEWAY, &gw, &["--", "/nonexistent/hook"], true).await;
    assert_eq!(code, 127, "{out}");
}

#[tokio::test]
async fn drain_wait_runs_the_command_even_when_the_drain_failed() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let wrong = gw.dir.join("wrong-token");
    std::fs::write(&wrong, "wrong\n").unwrap();
    // The drain fails (401); the command runs all the same. Its failure is the one reported;
    // when it succeeds, the drain's failure stands.
    let cases: [(&[&str], i32, &str); 2] = [
        (&["echo", "user hook"], 2, "user hook"),
        (&["false"], 1, ""),
    ];
    for (command, status, output) in cases {
        let args = [&["--admin-token-file", path_str(&wrong), "--"][..], command].concat();
        let (code, out) = run_drain_cli(GATEWAY, &gw, &args, false).await;
        assert_eq!((code, out.trim()), (status, output), "{command:?}");
    }
}

#[tokio::test]
async fn installed_binary_drains_with_its_local_token() {
    let (up, _) = start_upstream().await;
    let dir = temp_dir("install");
    let gw = Gateway::start(up, &["--install-to", path_str(&dir)]).await;
    let installed = dir.join("longconn-gateway");
    assert!(installed.exists() && dir.join("longconn-gateway.token").exists());
    let clients = polite_clients(&gw, 1).await;
    // No --admin-token-file: the token written beside the installed binary is used.
    let (code, out) = run_drain_cli(path_str(&installed), &gw, &["--spread", "0s"], false).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""migrated":1"#), "{out}");
    for c in clients {
        assert_eq!(c.await.unwrap(), Some(1012));
    }
    // Without any token the drain command fails clearly instead of hanging.
    let (code, _) = run_drain_cli(GATEWAY, &gw, &[], false).await;
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(dir);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn drain_notify_spreads_close_frames_over_the_window() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut ws = ws_connect(&gw.ws_url()).await;
        clients.push(tokio::spawn(async move {
            let code = received_close_code(&mut ws).await;
            (code, std::time::Instant::now())
        }));
    }
    eventually("10 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 10.0
    })
    .await;
    // Slots at 0, 0.3 s, ..., 2.7 s after the start. Load can only delay closes, so sent all at
    // once they would arrive within milliseconds; spread, the last comes 2.7 s after the first
    // unless the first one alone is delayed by over 1.7 s.
    gw.post_drain(r#"{"strategy":"Notify","spread":"3s","deadline":"1m"}"#)
        .await;
    let mut times = Vec::new();
    for c in clients {
        let (code, at) = c.await.unwrap();
        assert_eq!(code, Some(1012));
        times.push(at);
    }
    times.sort();
    let window = times[9] - times[0];
    assert!(
        window >= Duration::from_secs(1),
        "closes were not spread: {window:?}"
    );
    let report = gw.wait_drained().await;
    assert_eq!(report["migrated"], 10, "{report}");
}

/// Reads the saved open sessions from a gateway's state file.
fn saved_active(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["active"].as_u64()
}

#[tokio::test]
async fn a_killed_gateway_s_successor_reports_the_sessions_it_lost() {
    let (up, _) = start_upstream().await;
    let dir = temp_dir("state");
    let state = dir.join("longconn-gateway.state");
    let state_flag = ["--state-file", path_str(&state), "--drain-spread", "0s"];
    let mut first = Gateway::start(up, &state_flag).await;
    let _clients = polite_clients(&first, 3).await;
    eventually("the open sessions are saved", || async {
        saved_active(&state) == Some(3)
    })
    .await;
    first.signal("KILL");
    first.wait_exit();

    let mut second = Gateway::start(up, &state_flag).await;
    let report = second.drain_report().await;
    assert_eq!(report["restarts"], 1, "{report}");
    assert_eq!(report["lostToRestarts"], 3, "{report}");
    // A drained end loses nothing: the next process adds no loss.
    let one = polite_clients(&second, 1).await;
    second.signal("TERM");
    for client in one {
        assert_eq!(client.await.unwrap(), Some(1012));
    }
    assert_eq!(second.wait_exit(), Some(0));
    let third = Gateway::start(up, &state_flag).await;
    let report = third.drain_report().await;
    assert_eq!(report["restarts"], 2, "{report}");
    assert_eq!(report["lostToRestarts"], 3, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_final_report_is_left_in_the_termination_file_at_exit() {
    let (up, _) = start_upstream().await;
    let dir = temp_dir("termination");
    let file = dir.join("termination-log");
    let mut gw = Gateway::start(
        up,
        &[
            "--termination-report",
            path_str(&file),
            "--drain-spread",
            "0s",
        ],
    )
    .await;
    let clients = polite_clients(&gw, 2).await;
    gw.signal("TERM");
    for client in clients {
        assert_eq!(client.await.unwrap(), Some(1012));
    }
    assert_eq!(gw.wait_exit(), Some(0));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(report["state"], "Drained", "{report}");
    assert_eq!(report["sessionsAtStart"], 2, "{report}");
    assert_eq!(report["migrated"], 2, "{report}");
    assert_eq!(health(&report), [2, 0, 0, 0], "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_drain_counts_the_sessions_it_moves_again_among_the_migrated() {
    let (up, upstream) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let declared = [
        ("Longconn-Session-Id", "user-7/tab-2"),
        ("Longconn-Session-Moves", "1"),
    ];
    let clients = [
        talking_client(&gw, 0, &declared).await,
        talking_client(&gw, 1, &[]).await,
    ]
    .map(|mut ws| tokio::spawn(async move { received_close(&mut ws).await }));
    gw.post_drain(r#"{"strategy":"Notify","spread":"0s","deadline":"1m"}"#)
        .await;
    let report = gw.wait_drained().await;
    for client in clients {
        // No reason in the request: the close frame carries the code alone, as it always has.
        assert_eq!(client.await.unwrap(), Some((1012, String::new())));
    }
    assert_eq!(
        (&report["migrated"], &report["movedAgain"]),
        (&2.into(), &1.into()),
        "{report}"
    );
    assert_eq!(report["sessionsAtStart"], 2, "{report}");
    assert_eq!(
        gw.metric("longconn_gateway_sessions_moved_again_total")
            .await,
        1.0
    );
    // The app gets the headers as the client sent them.
    let heads = upstream.heads.lock().unwrap().clone();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains("longconn-session-moves: 1\r\n")),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_malformed_moves_header_is_ignored_and_the_session_counts_as_a_first_move() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = talking_client(&gw, 0, &[("Longconn-Session-Moves", "-1")]).await;
    let client = tokio::spawn(async move { received_close_code(&mut ws).await });
    gw.post_drain(r#"{"strategy":"Notify","spread":"0s","deadline":"1m"}"#)
        .await;
    let report = gw.wait_drained().await;
    assert_eq!(client.await.unwrap(), Some(1012));
    assert_eq!(
        (&report["migrated"], &report["movedAgain"]),
        (&1.into(), &0.into()),
        "{report}"
    );
}

#[tokio::test]
async fn attempts_during_a_drain_are_counted_refused_and_none_before_it() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let attempt_request = |expected: u16| async move {
        let answer = http_request(gw.addr, "GET", "/hello", None, "").await;
        assert_eq!(answer.unwrap().0, expected);
    };
    let attempt_upgrade = || async {
        let (head, _) = raw_head(gw.addr, &upgrade_request(gw.addr, "")).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    };
    attempt_request(200).await;
    let mut ws = talking_client(&gw, 0, &[]).await;
    assert_eq!(gw.drain_report().await["refused"], 0);
    gw.post_drain(r#"{"strategy":"Wait","deadline":"1m"}"#)
        .await;
    attempt_upgrade().await;
    attempt_request(503).await;
    let report = gw.drain_report().await;
    assert_eq!(
        (&report["state"], &report["refused"]),
        (&"Draining".into(), &2.into()),
        "{report}"
    );
    // Refusals are not sessions: the sum holds without them.
    assert_eq!(
        (&report["sessionsAtStart"], &report["active"]),
        (&1.into(), &1.into()),
        "{report}"
    );
    ws.close(None).await.unwrap();
    received_close_code(&mut ws).await;
    gw.wait_drained().await;
    // A finished drain still refuses, and still counts.
    attempt_upgrade().await;
    let report = gw.drain_report().await;
    assert_eq!(report["refused"], 3, "{report}");
    assert_eq!(report["closedByClient"], 1, "{report}");
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="draining"}"#)
            .await,
        3.0,
        "the rejection counter counts them too"
    );
}

#[tokio::test]
async fn notify_close_frames_carry_the_drain_s_reason() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let clients = [
        talking_client(&gw, 0, &[]).await,
        talking_client(&gw, 1, &[]).await,
    ]
    .map(|mut ws| tokio::spawn(async move { received_close(&mut ws).await }));
    // The longest a close frame holds, most of it in two-byte characters.
    let reason = format!("moving: revision 7c9f {}.", "\u{e9}".repeat(50));
    assert_eq!(reason.len(), 123);
    let started = gw
        .post_drain(&serde_json::json!({"spread": "0s", "reason": reason}).to_string())
        .await;
    assert_eq!(started["state"], "Draining");
    for client in clients {
        assert_eq!(client.await.unwrap(), Some((1012, reason.clone())));
    }
    assert_eq!(gw.wait_drained().await["migrated"], 2);
}

#[tokio::test]
async fn drain_settles_before_a_drain_nobody_started_and_the_gateway_accepts_meanwhile() {
    let (gw, first) = gateway_with_clients(1).await;
    let started = std::time::Instant::now();
    let settle = Duration::from_secs(2);
    let hook = drain_cli(GATEWAY, &gw, &["--settle", "2s", "--spread", "0s"], true);
    let meanwhile = async {
        tokio::time::sleep(settle / 4).await;
        assert_eq!(gw.drain_report().await["state"], "Serving");
        assert_eq!(gw.readyz().await, 200);
        polite_clients(&gw, 1).await
    };
    let ((code, out, log), late) = tokio::join!(hook, meanwhile);
    assert_eq!(code, 0, "{out}{log}");
    assert!(started.elapsed() >= settle, "it settled first");
    assert!(log.contains("no drain under way: waiting"), "{log}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The client that came during the settle time was taken, and moved with the first.
    assert_eq!(
        (&report["sessionsAtStart"], &report["migrated"]),
        (&2.into(), &2.into()),
        "{report}"
    );
    for client in first.into_iter().chain(late) {
        assert_eq!(client.await.unwrap(), Some(1012));
    }
}

#[tokio::test]
async fn drain_hands_off_to_a_drain_started_while_it_waits_and_joins_it() {
    let (gw, first) = gateway_with_clients(1).await;
    let started = std::time::Instant::now();
    // A hand-off of a minute would outlast the command's bound (`WAIT`): it must end by joining.
    let hook = drain_cli(
        GATEWAY,
        &gw,
        &["--settle", "0s", "--handoff", "60s", "--spread", "0s"],
        true,
    );
    let operator = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            gw.drain_report().await["state"],
            "Serving",
            "the hook waits"
        );
        gw.post_drain(r#"{"spread":"0s"}"#).await;
    };
    let ((code, out, log), ()) = tokio::join!(hook, operator);
    assert_eq!(code, 0, "{out}{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "joined, not timed out"
    );
    assert!(log.contains("started by someone else: joining it"), "{log}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["migrated"], 1, "{report}");
    for client in first {
        assert_eq!(client.await.unwrap(), Some(1012));
    }
}

#[tokio::test]
async fn drain_joins_a_drain_under_way_or_finished_without_settling() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = talking_client(&gw, 0, &[]).await;
    gw.post_drain(r#"{"strategy":"Wait","deadline":"1m"}"#)
        .await;
    // A settle time of a minute would outlast the command's bound (`WAIT`).
    let hook = drain_cli(GATEWAY, &gw, &["--settle", "60s"], true);
    let client_leaves = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ws.close(None).await.unwrap();
        received_close_code(&mut ws).await;
    };
    let ((code, out, log), ()) = tokio::join!(hook, client_leaves);
    assert_eq!(code, 0, "{out}{log}");
    assert!(
        log.contains("a drain has started already: joining it without settling"),
        "{log}"
    );
    assert!(log.contains("Draining"), "{log}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["closedByClient"], 1, "{report}");
    let (code, out, log) = drain_cli(GATEWAY, &gw, &["--settle", "60s"], true).await;
    assert_eq!(code, 0, "{out}{log}");
    assert!(log.contains("Drained"), "{log}");
}

/// The health counts of a drain report: handshakes, upstreamRefused, upstreamUnavailable and
/// upstreamErrors.
fn health(report: &serde_json::Value) -> [u64; 4] {
    [
        "handshakes",
        "upstreamRefused",
        "upstreamUnavailable",
        "upstreamErrors",
    ]
    .map(|count| {
        report["health"][count]
            .as_u64()
            .unwrap_or_else(|| panic!("no health.{count} in {report}"))
    })
}

#[tokio::test]
async fn health_counts_the_upgrades_the_app_accepted_and_those_it_refused() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let clients = polite_clients(&gw, 2).await;
    let refused = upgrade_request(gw.addr, "").replacen("/chat", "/refuse", 1);
    for _ in 0..3 {
        let (head, _) = raw_head(gw.addr, &refused).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }
    // A plain HTTP request is not an upgrade.
    let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(health(&gw.drain_report().await), [2, 3, 0, 0]);
    let report = gw
        .post_drain(r#"{"strategy":"Notify","spread":"0s","deadline":"1m"}"#)
        .await;
    assert_eq!(health(&report), [2, 3, 0, 0], "{report}");
    for client in clients {
        assert_eq!(client.await.unwrap(), Some(1012));
    }
    let report = gw.wait_drained().await;
    assert_eq!(
        health(&report),
        [2, 3, 0, 0],
        "migrated sessions are no errors: {report}"
    );
}

#[tokio::test]
async fn health_counts_upgrades_to_an_app_not_listening_or_not_answering_as_unavailable() {
    let attempt_upgrade = |gw: &Gateway| {
        let addr = gw.addr;
        async move {
            let (head, _) = raw_head(addr, &upgrade_request(addr, "")).await;
            assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        }
    };
    let nobody: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(nobody, &[]).await;
    attempt_upgrade(&gw).await;
    attempt_upgrade(&gw).await;
    let (status, _) = http_request(gw.addr, "GET", "/hello", None, "")
        .await
        .unwrap();
    assert_eq!(status, 502);
    assert_eq!(
        health(&gw.drain_report().await),
        [0, 0, 2, 0],
        "the upgrades, not the plain request"
    );
    assert_eq!(
        gw.metric(r#"longconn_gateway_handshake_rejections_total{reason="upstream_unavailable"}"#)
            .await,
        3.0,
        "the rejection counter counts all three"
    );

    // An app that takes the connection and never answers: the handshake timeout ends it.
    let silent = start_silent_upstream().await;
    let gw = Gateway::start(silent, &["--handshake-timeout", "1s"]).await;
    attempt_upgrade(&gw).await;
    assert_eq!(health(&gw.drain_report().await), [0, 0, 1, 0]);
}

#[tokio::test]
async fn health_counts_sessions_the_app_dropped_as_upstream_errors() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut dropped = talking_client(&gw, 0, &[]).await;
    let mut closed = talking_client(&gw, 1, &[]).await;
    // The app drops the TCP connection mid-session.
    dropped.send(Message::text("die")).await.unwrap();
    assert_eq!(received_close_code(&mut dropped).await, Some(1011));
    // A session the client ends is no error.
    closed.close(None).await.unwrap();
    received_close_code(&mut closed).await;
    eventually("both sessions ended", || async {
        gw.metric("longconn_gateway_sessions_active").await == 0.0
    })
    .await;
    let report = gw.drain_report().await;
    assert_eq!(health(&report), [2, 0, 0, 1], "{report}");
    assert_eq!(report["state"], "Serving", "counted without a drain");
}
