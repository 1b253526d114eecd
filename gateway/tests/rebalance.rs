//! Rebalancing end to end, on real sockets: a serving gateway moves exactly the sessions asked
//! for (the newest never-moved ones), spread over the window, with the close code and reason of
//! a drain's Notify, while it keeps accepting; its report adds up; the id makes a request
//! idempotent; what it refuses (another rebalance under way, a drain, each bad field); a drain
//! that takes a rebalance's sessions over; and a client that ignores the move.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::task::JoinHandle;

/// `POST /rebalance` with `body`, expecting 200; returns the report.
async fn rebalance(gw: &Gateway, body: &str) -> Value {
    let (status, text) = gw.post_rebalance(body).await;
    assert_eq!(status, 200, "{body}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Asserts that the report's counts add up.
fn assert_adds_up(r: &Value) {
    let count = |field: &str| {
        r[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {r}"))
    };
    assert_eq!(
        count("selected"),
        count("pending")
            + count("moved")
            + count("closedByClient")
            + count("dropped")
            + count("takenByDrain"),
        "{r}"
    );
    assert!(count("selected") <= count("requested"), "{r}");
    assert!(count("movedAgain") <= count("moved"), "{r}");
}

/// Hands `ws` to a task that reads it to its end; the task returns the close frame received
/// (code and reason), if any, and when it ended.
fn watch(mut ws: Ws) -> JoinHandle<(Option<(u16, String)>, Instant)> {
    tokio::spawn(async move { (received_close(&mut ws).await, Instant::now()) })
}

#[tokio::test]
async fn a_rebalance_moves_exactly_the_sessions_asked_spread_over_its_window_while_serving() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &["--log-format", "json"]).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(talking_client(&gw, i, &[]).await);
    }
    // The three newest move, one a second: slots at 0, 1 and 2 s.
    let newest: Vec<_> = clients.split_off(5).into_iter().map(watch).collect();
    let started = rebalance(
        &gw,
        r#"{"id":"rebalance 1","sessions":3,"spread":"3s","reason":"moving: rebalance 1"}"#,
    )
    .await;
    assert_eq!(
        (
            &started["state"],
            &started["selected"],
            &started["requested"]
        ),
        (&"Moving".into(), &3.into(), &3.into()),
        "{started}"
    );
    // The gateway stays Ready and takes new sessions meanwhile.
    assert_eq!(gw.readyz().await, 200);
    let mut during = talking_client(&gw, 100, &[]).await;
    let mut times = Vec::new();
    for client in newest {
        let (close, at) = client.await.unwrap();
        assert_eq!(close, Some((1012, "moving: rebalance 1".to_owned())));
        times.push(at);
    }
    times.sort();
    // Sent at once, the closes would arrive within milliseconds; spread, the last comes 2 s
    // after the first unless the first alone is delayed by over 1 s.
    assert!(
        times[2] - times[0] >= Duration::from_secs(1),
        "the closes were not spread: {times:?}"
    );
    let report = gw.wait_rebalanced().await;
    assert_adds_up(&report);
    let counts = [
        "moved",
        "closedByClient",
        "dropped",
        "takenByDrain",
        "pending",
    ]
    .map(|field| report[field].as_u64());
    assert_eq!(counts, [3, 0, 0, 0, 0].map(Some), "{report}");
    assert!(report["finishedAt"].is_string(), "{report}");
    // The others were not asked to move: they still talk to the app, as does the new one.
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_talks(ws, &format!("still here {i}")).await;
    }
    assert_talks(&mut during, "still here, too").await;
    let _after = talking_client(&gw, 101, &[]).await;
    let metrics = [
        "longconn_gateway_sessions_active",
        r#"longconn_gateway_sessions_rebalanced_total{outcome="moved"}"#,
        r#"longconn_gateway_rebalance_state{state="done"}"#,
    ];
    assert_eq!(gw.metrics_of(metrics).await, [7.0, 3.0, 1.0]);
    assert_eq!(gw.drain_report().await["state"], "Serving");
    let started = gw.json_lines("rebalance started");
    assert_eq!(started.len(), 1, "{}", gw.log());
    assert_eq!(
        (
            &started[0]["id"],
            &started[0]["selected"],
            &started[0]["sessions"]
        ),
        (&"rebalance 1".into(), &3.into(), &8.into()),
        "{}",
        started[0]
    );
    let finished = gw.json_lines("rebalance finished");
    assert_eq!(finished.len(), 1, "{}", gw.log());
    assert_eq!(
        (&finished[0]["moved"], &finished[0]["dropped"]),
        (&3.into(), &0.into()),
        "{}",
        finished[0]
    );
}

#[tokio::test]
async fn the_same_id_again_returns_its_report_and_a_new_id_while_it_moves_is_a_409() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let _polite = talking_client(&gw, 0, &[]).await;
    // A client that never reads holds its session, and the rebalance, until the deadline (5 m).
    let _deaf = raw_session(gw.addr).await;
    eventually("2 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 2.0
    })
    .await;
    let first = rebalance(&gw, r#"{"id":"rebalance 1","sessions":1,"spread":"0s"}"#).await;
    assert_eq!(first["selected"], 1, "{first}");
    // The same id is the same rebalance, whatever else the body says.
    let again = rebalance(&gw, r#"{"id":"rebalance 1","sessions":2,"spread":"1s"}"#).await;
    assert_eq!(
        (&again["startedAt"], &again["requested"]),
        (&first["startedAt"], &1.into()),
        "{again}"
    );
    let (status, text) = gw
        .post_rebalance(r#"{"id":"rebalance 2","sessions":1,"spread":"0s"}"#)
        .await;
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains(r#"rebalance "rebalance 1" is still moving sessions (1 of 1 open)"#),
        "{text}"
    );
    let report = gw.rebalance_report().await;
    assert_eq!(
        (&report["id"], &report["state"], &report["pending"]),
        (&"rebalance 1".into(), &"Moving".into(), &1.into()),
        "{report}"
    );
}

#[tokio::test]
async fn a_rebalance_is_a_409_while_the_gateway_drains_and_once_it_has_drained() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = talking_client(&gw, 0, &[]).await;
    gw.post_drain(r#"{"strategy":"Wait","deadline":"1m"}"#)
        .await;
    let body = r#"{"id":"rebalance 1","sessions":1,"spread":"0s"}"#;
    let (status, text) = gw.post_rebalance(body).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.starts_with("draining"), "{text}");
    ws.close(None).await.unwrap();
    received_close_code(&mut ws).await;
    gw.wait_drained().await;
    let (status, text) = gw.post_rebalance(body).await;
    assert_eq!(
        (status, text.starts_with("draining")),
        (409, true),
        "{text}"
    );
    assert_eq!(gw.rebalance_report().await["state"], "Idle");
}

#[tokio::test]
async fn a_drain_during_a_rebalance_takes_its_sessions_over_and_counts_each_once() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(watch(talking_client(&gw, i, &[]).await));
    }
    // Four selected, slots 15 s apart: the first moves at once, the others wait.
    rebalance(
        &gw,
        r#"{"id":"rebalance 1","sessions":4,"spread":"60s","reason":"moving: rebalance 1"}"#,
    )
    .await;
    eventually("the first selected session moved", || async {
        gw.rebalance_report().await["moved"] == 1
    })
    .await;
    let drain = gw
        .post_drain(r#"{"spread":"0s","deadline":"1m","reason":"moving: revision 7c9f"}"#)
        .await;
    let taken = gw.rebalance_report().await;
    assert_adds_up(&taken);
    assert_eq!(
        (&taken["state"], &taken["moved"], &taken["takenByDrain"]),
        (&"Done".into(), &1.into(), &3.into()),
        "{taken}"
    );
    // Every session is in exactly one report: the one moved in the rebalance's, the five left
    // (three of them selected) in the drain's.
    assert_eq!(drain["sessionsAtStart"], 5, "{drain}");
    let drained = gw.wait_drained().await;
    assert_eq!(
        (&drained["migrated"], &drained["dropped"]),
        (&5.into(), &0.into()),
        "{drained}"
    );
    let mut reasons = Vec::new();
    for client in clients {
        let (close, _) = client.await.unwrap();
        let (code, reason) = close.unwrap();
        assert_eq!(code, 1012);
        reasons.push(reason);
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ["moving: rebalance 1"].as_slice(),
            &["moving: revision 7c9f"; 5]
        ]
        .concat(),
        "the drain's sessions are told the drain's reason"
    );
    assert_eq!(gw.rebalance_report().await, taken, "not counted again");
    let metrics = [r#"longconn_gateway_sessions_rebalanced_total{outcome="taken_by_drain"}"#];
    assert_eq!(gw.metrics_of(metrics).await, [3.0]);
}

#[tokio::test]
async fn each_bad_field_of_a_rebalance_is_a_400_that_names_it_and_moves_nothing() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let mut ws = talking_client(&gw, 0, &[]).await;
    let long_reason = "x".repeat(124);
    let long_id = "r".repeat(65);
    let cases = [
        (
            r#"{"id":"r","sessions":0,"spread":"1s"}"#.to_owned(),
            "sessions 0",
        ),
        (
            r#"{"id":"r","sessions":1,"spread":"500000000000y"}"#.to_owned(),
            "spread",
        ),
        (
            r#"{"id":"r","sessions":1,"spread":"6m"}"#.to_owned(),
            "spread 6m is longer than the deadline 5m",
        ),
        (
            r#"{"id":"r","sessions":1,"spread":"1s","closeCode":1006}"#.to_owned(),
            "closeCode 1006",
        ),
        (
            format!(r#"{{"id":"r","sessions":1,"spread":"1s","reason":"{long_reason}"}}"#),
            "reason is 124 bytes",
        ),
        (
            r#"{"id":"","sessions":1,"spread":"1s"}"#.to_owned(),
            "id \"\"",
        ),
        (
            format!(r#"{{"id":"{long_id}","sessions":1,"spread":"1s"}}"#),
            "is not a rebalance id",
        ),
        (
            r#"{"id":" padded","sessions":1,"spread":"1s"}"#.to_owned(),
            "is not a rebalance id",
        ),
        (
            r#"{"id":"caf\u00e9","sessions":1,"spread":"1s"}"#.to_owned(),
            "is not a rebalance id",
        ),
        (
            r#"{"sessions":1,"spread":"1s"}"#.to_owned(),
            "missing field `id`",
        ),
        (
            r#"{"id":"r","spread":"1s"}"#.to_owned(),
            "missing field `sessions`",
        ),
        (
            r#"{"id":"r","sessions":1}"#.to_owned(),
            "missing field `spread`",
        ),
        (
            r#"{"id":"r","sessions":1,"spread":"1s","deadline":"1m"}"#.to_owned(),
            "unknown field `deadline`",
        ),
        (String::new(), "id, sessions and spread"),
    ];
    for (body, says) in cases {
        let (status, text) = gw.post_rebalance(&body).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text} does not say {says:?}");
    }
    for token in [None, Some("wrong")] {
        let ok = r#"{"id":"r","sessions":1,"spread":"1s"}"#;
        let (status, _) = gw
            .admin_request("POST", "/rebalance", token, ok)
            .await
            .unwrap();
        assert_eq!(status, 401, "{token:?}");
        let (status, _) = gw
            .admin_request("GET", "/rebalance", token, "")
            .await
            .unwrap();
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(gw.rebalance_report().await["state"], "Idle");
    assert_talks(&mut ws, "still here").await;
}

#[tokio::test]
async fn sessions_that_declared_a_move_are_picked_last_and_counted_moved_again() {
    let (up, _) = start_upstream().await;
    let gw = Gateway::start(up, &[]).await;
    let undeclared = watch(talking_client(&gw, 0, &[]).await);
    let first_move = watch(talking_client(&gw, 1, &[("Longconn-Session-Moves", "0")]).await);
    // The newest, but moved before: the last pick.
    let mut moved_before = talking_client(&gw, 2, &[("Longconn-Session-Moves", "1")]).await;
    let first = rebalance(&gw, r#"{"id":"rebalance 1","sessions":2,"spread":"0s"}"#).await;
    assert_eq!(first["selected"], 2, "{first}");
    for client in [undeclared, first_move] {
        assert_eq!(client.await.unwrap().0.map(|c| c.0), Some(1012));
    }
    let report = gw.wait_rebalanced().await;
    assert_eq!(
        (&report["moved"], &report["movedAgain"]),
        (&2.into(), &0.into()),
        "{report}"
    );
    assert_talks(&mut moved_before, "still here").await;
    let moved_before = watch(moved_before);
    rebalance(&gw, r#"{"id":"rebalance 2","sessions":1,"spread":"0s"}"#).await;
    assert_eq!(moved_before.await.unwrap().0.map(|c| c.0), Some(1012));
    let report = gw.wait_rebalanced().await;
    assert_adds_up(&report);
    assert_eq!(
        (&report["moved"], &report["movedAgain"]),
        (&1.into(), &1.into()),
        "{report}"
    );
    let metrics = ["longconn_gateway_sessions_moved_again_total"];
    assert_eq!(gw.metrics_of(metrics).await, [1.0]);
}

#[tokio::test]
async fn a_client_that_ignores_the_move_is_dropped_at_the_rebalance_deadline() {
    let (up, _) = start_upstream().await;
    // The deadline is the drain timeout.
    let gw = Gateway::start(up, &["--drain-timeout", "2s", "--drain-spread", "0s"]).await;
    let polite = watch(talking_client(&gw, 0, &[]).await);
    let mut deaf = raw_session(gw.addr).await;
    eventually("2 sessions open", || async {
        gw.metric("longconn_gateway_sessions_active").await == 2.0
    })
    .await;
    let asked = Instant::now();
    rebalance(&gw, r#"{"id":"rebalance 1","sessions":2,"spread":"0s"}"#).await;
    assert_eq!(polite.await.unwrap().0.map(|c| c.0), Some(1012));
    // The deaf client is sent the close frame at once, and cut at the deadline.
    assert_eq!(read_close_code(&mut deaf).await, Some(1012));
    let report = gw.wait_rebalanced().await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        asked.elapsed()
    );
    assert_adds_up(&report);
    assert_eq!(
        (&report["moved"], &report["dropped"]),
        (&1.into(), &1.into()),
        "{report}"
    );
    let metrics = [
        r#"longconn_gateway_sessions_closed_total{reason="rebalance_deadline"}"#,
        r#"longconn_gateway_sessions_rebalanced_total{outcome="dropped"}"#,
    ];
    assert_eq!(gw.metrics_of(metrics).await, [1.0, 1.0]);
}
