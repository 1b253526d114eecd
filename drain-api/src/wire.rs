//! The wire types of the drain API on the gateway's admin port: `POST /drain` and `GET /drain`,
//! which empty a gateway, and `POST /rebalance` and `GET /rebalance`, which move a share of the
//! sessions of a gateway that keeps serving.
//!
//! These types are the contract between the gateway, which serves them, and the operator, which
//! drains and rebalances every gateway through them. Field names are camelCase on the wire;
//! durations are strings such as `30s`, `5m` or `1h30m`; instants are RFC 3339.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The longest close reason a drain may send, in bytes of UTF-8: a close frame's payload is at
/// most 125 bytes, two of which hold the code (RFC 6455, section 5.5).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// How a drain treats the sessions that are open when it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DrainStrategy {
    /// Send every session a close frame with the drain close code, spread over `spread`, so
    /// clients reconnect to another pod.
    #[default]
    Notify,
    /// Tell no one; let sessions end on their own until the deadline.
    Wait,
}

/// The body of `POST /drain`. Every field is optional; missing ones take the gateway's
/// configured defaults (its `--drain-*` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DrainStrategy>,
    /// How long the drain may take, counted from its start; sessions still open then are
    /// force-closed and counted as dropped.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub deadline: Option<Duration>,
    /// Notify only: the window over which close frames are spread.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub spread: Option<Duration>,
    /// Notify only: the WebSocket close code sent to clients (1012 or 1001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// Notify only: the text of the reason in every close frame the drain sends to ask a client
    /// to move, at most [`MAX_CLOSE_REASON_BYTES`] bytes of UTF-8 (longer is refused with 400).
    /// Left out, the close frames carry the code alone. Clients should treat it as information
    /// for people, not as something to parse. Gateways older than this field refuse a request
    /// that names it (unknown fields are refused), so leave it out for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a gateway is in its life as seen by the drain API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DrainState {
    /// No drain was asked for; the gateway accepts new sessions.
    #[default]
    Serving,
    /// A drain is under way; new sessions are refused with 503.
    Draining,
    /// The drain finished: no session is left (or the deadline force-closed the rest).
    Drained,
}

/// The body of `GET /drain` (and of the `POST /drain` response).
///
/// The counts always add up: `sessionsAtStart == active + migrated + closedByClient + dropped`,
/// where the last three count only sessions that were open when the drain started. `movedAgain`
/// is a part of `migrated`, not a bucket of its own; `refused` counts connection attempts, not
/// sessions, and is outside the sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    pub state: DrainState,
    /// Sessions open when the drain started.
    pub sessions_at_start: u64,
    /// Sessions still open.
    pub active: u64,
    /// Sessions that were asked to move and completed the close handshake.
    pub migrated: u64,
    /// Sessions the client ended itself (or that missed heartbeats): not a loss.
    pub closed_by_client: u64,
    /// Sessions ended for a server-side reason without a completed close handshake.
    pub dropped: u64,
    /// Of `migrated`, the sessions whose client had declared on its WebSocket upgrade that its
    /// logical session had been moved by a drain before (a `Longconn-Session-Moves` header of 1
    /// or more): sessions this drain moved again. Clients that declare nothing count in
    /// `migrated` only.
    #[serde(default)]
    pub moved_again: u64,
    /// Connection attempts answered 503 because this drain had started, from its start on:
    /// WebSocket upgrades and plain HTTP requests alike. Attempts refused for any other reason
    /// (a limit, the rate, a bad request) are not counted. Not sessions: outside the sum above.
    #[serde(default)]
    pub refused: u64,
    /// Earlier gateway processes in this pod (restarts of the gateway container).
    #[serde(default)]
    pub restarts: u64,
    /// Sessions the earlier processes had open when they ended without a drain (a crash, a
    /// kill): a running total, kept across restarts in the pod's shared directory.
    #[serde(default)]
    pub lost_to_restarts: u64,
    /// What this gateway process saw of its app since it started, for the health gate of a
    /// rollout. Gateways older than this field report zeros.
    #[serde(default)]
    pub health: Health,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub started_at: Option<SystemTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub finished_at: Option<SystemTime>,
}

/// Counts of one gateway process since it started (a restart begins them at zero again): the
/// WebSocket upgrades it relayed to its app and how they went. `handshakes + upstreamRefused +
/// upstreamUnavailable` are the attempts the app was asked to take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Upgrades the app accepted: sessions opened.
    pub handshakes: u64,
    /// Upgrades the app answered without switching protocols.
    pub upstream_refused: u64,
    /// Upgrades the gateway could not hand to the app: no connection, or no answer in time.
    pub upstream_unavailable: u64,
    /// Sessions the app ended without a completed close handshake (it failed, or closed the
    /// connection).
    pub upstream_errors: u64,
}

impl Health {
    /// The upgrade attempts the app was asked to take.
    pub fn attempts(&self) -> u64 {
        self.handshakes + self.upstream_refused + self.upstream_unavailable
    }
}

impl DrainReport {
    /// True once the drain has finished, whatever its outcome.
    pub fn is_finished(&self) -> bool {
        self.state == DrainState::Drained
    }
}

/// The longest rebalance id, in bytes (of ASCII).
pub const MAX_REBALANCE_ID_BYTES: usize = 64;

/// True when `id` may name a rebalance: 1 to [`MAX_REBALANCE_ID_BYTES`] printable ASCII
/// characters (space to `~`), neither the first nor the last a space (`rebalance 7` is one).
pub fn valid_rebalance_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_REBALANCE_ID_BYTES).contains(&bytes.len())
        && bytes.iter().all(|&b| b == b' ' || b.is_ascii_graphic())
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
}

/// The body of `POST /rebalance`: move `sessions` of the gateway's sessions while it keeps
/// serving, asking each with a close frame as a Notify drain does, spread over `spread`.
/// `sessions`, `spread` and `id` are required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebalanceRequest {
    /// The caller's name for this rebalance, its idempotency key (see [`valid_rebalance_id`]):
    /// posting the same id again returns its report and starts nothing.
    pub id: String,
    /// How many sessions to move, 1 or more. Fewer are moved when fewer are open.
    pub sessions: u64,
    /// The window over which the close frames are spread, as a Notify drain's `spread`; at most
    /// the gateway's drain timeout (`--drain-timeout`), which is also the rebalance's deadline.
    #[serde(with = "humantime_serde")]
    pub spread: Duration,
    /// The WebSocket close code sent to the sessions moved, as a drain's `closeCode`; left out,
    /// the gateway's default (`--drain-close-code`, 1012 unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// The text of the reason in every close frame, as a drain's `reason`: at most
    /// [`MAX_CLOSE_REASON_BYTES`] bytes of UTF-8. Left out, the close frames carry the code alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Leaves out the sessions that came to this gateway by a move (their client declared an
    /// earlier move) less than this long ago, at most [`MAX_KEEP_MOVED_FOR`]: a session that a
    /// drain or an earlier rebalance just moved here is not moved again. Left out, every
    /// session may be chosen.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub keep_moved_for: Option<Duration>,
}

/// The longest [`RebalanceRequest::keep_moved_for`] a gateway takes.
pub const MAX_KEEP_MOVED_FOR: Duration = Duration::from_secs(3600);

/// Where a gateway's last rebalance is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RebalanceState {
    /// No rebalance was asked for since the gateway started.
    #[default]
    Idle,
    /// Sessions selected by the rebalance are still open.
    Moving,
    /// Every session selected has ended, or a drain took the rest over.
    Done,
}

/// The body of `GET /rebalance` (and of the `POST /rebalance` response): the gateway's last
/// rebalance.
///
/// The counts always add up: `selected == pending + moved + closedByClient + dropped +
/// takenByDrain`. `movedAgain` is a part of `moved`. A session a drain took over is counted in
/// that drain's report, and in this report only as `takenByDrain`: no session is in both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceReport {
    /// The id of the request that started it; empty while `Idle`.
    pub id: String,
    pub state: RebalanceState,
    /// Sessions the request asked to move.
    pub requested: u64,
    /// Sessions picked: at most `requested` and at most the sessions open (and not closing)
    /// when it started.
    pub selected: u64,
    /// Open sessions left out because they came by a move within the request's
    /// `keepMovedFor`.
    #[serde(default)]
    pub kept_moved: u64,
    /// Selected sessions still open, not yet ended.
    pub pending: u64,
    /// Selected sessions that were asked to move and completed the close handshake.
    pub moved: u64,
    /// Selected sessions the client ended itself (or that missed heartbeats): not a loss.
    pub closed_by_client: u64,
    /// Selected sessions ended for a server-side reason without a completed close handshake:
    /// still open at the rebalance's deadline, or cut by an app failure.
    pub dropped: u64,
    /// Selected sessions still open when a drain started: from then on the drain's, counted in
    /// its report.
    pub taken_by_drain: u64,
    /// Of `moved`, the sessions whose client had declared an earlier move
    /// (`Longconn-Session-Moves` of 1 or more).
    pub moved_again: u64,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub started_at: Option<SystemTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub finished_at: Option<SystemTime>,
}

impl RebalanceReport {
    /// True once the rebalance has finished, whatever its outcome.
    pub fn is_finished(&self) -> bool {
        self.state == RebalanceState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_request_uses_camel_case_and_duration_strings() {
        let req: DrainRequest = serde_json::from_str(
            r#"{"strategy":"Notify","deadline":"5m","spread":"30s","closeCode":1012}"#,
        )
        .expect("valid request");
        assert_eq!(req.deadline, Some(Duration::from_secs(300)));
        assert_eq!(req.spread, Some(Duration::from_secs(30)));
        assert_eq!(req.close_code, Some(1012));
        let back = serde_json::to_value(&req).expect("serializes");
        assert_eq!(back["deadline"], "5m");
        assert_eq!(back["closeCode"], 1012);
        assert!(back.get("reason").is_none(), "left out when absent: {back}");
        let req: DrainRequest =
            serde_json::from_str(r#"{"reason":"moving: revision 7c9f"}"#).expect("valid request");
        assert_eq!(req.reason.as_deref(), Some("moving: revision 7c9f"));
    }

    #[test]
    fn a_report_without_the_newer_counts_reads_them_as_zero() {
        let report: DrainReport = serde_json::from_str(
            r#"{"state":"Drained","sessionsAtStart":2,"active":0,"migrated":2,"closedByClient":0,"dropped":0}"#,
        )
        .expect("an older gateway's report");
        assert_eq!((report.moved_again, report.refused), (0, 0));
        let back = serde_json::to_value(&report).expect("serializes");
        assert_eq!(
            (&back["movedAgain"], &back["refused"]),
            (&0.into(), &0.into())
        );
    }

    #[test]
    fn drain_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<DrainRequest>(r#"{"deadlin":"5m"}"#)
            .expect_err("typo must be refused");
        assert!(err.to_string().contains("deadlin"), "{err}");
    }

    #[test]
    fn rebalance_request_uses_camel_case_and_requires_its_id_sessions_and_spread() {
        let req: RebalanceRequest = serde_json::from_str(
            r#"{"id":"rebalance 7","sessions":40,"spread":"30s","closeCode":1001,"reason":"r"}"#,
        )
        .expect("valid request");
        assert_eq!(
            req,
            RebalanceRequest {
                id: "rebalance 7".to_owned(),
                sessions: 40,
                spread: Duration::from_secs(30),
                close_code: Some(1001),
                reason: Some("r".to_owned()),
                keep_moved_for: None,
            }
        );
        let back = serde_json::to_value(&req).expect("serializes");
        assert_eq!(
            (&back["spread"], &back["closeCode"]),
            (&"30s".into(), &1001.into())
        );
        for missing in ["id", "sessions", "spread"] {
            let mut body = serde_json::json!({"id": "a", "sessions": 1, "spread": "1s"});
            body.as_object_mut().expect("an object").remove(missing);
            let err = serde_json::from_value::<RebalanceRequest>(body).expect_err(missing);
            assert!(err.to_string().contains(missing), "{err}");
        }
        let err = serde_json::from_str::<RebalanceRequest>(
            r#"{"id":"a","sessions":1,"spread":"1s","deadline":"5m"}"#,
        )
        .expect_err("no such field");
        assert!(err.to_string().contains("deadline"), "{err}");
    }

    #[test]
    fn a_rebalance_id_is_1_to_64_printable_ascii_characters_not_padded_with_spaces() {
        let longest = "r".repeat(MAX_REBALANCE_ID_BYTES);
        for ok in ["1", "rebalance 7", "a/b:c-d_e", "~!", longest.as_str()] {
            assert!(valid_rebalance_id(ok), "{ok:?}");
        }
        let too_long = "r".repeat(MAX_REBALANCE_ID_BYTES + 1);
        for bad in [
            "",
            " ",
            " r",
            "r ",
            "tab\there",
            "line\n",
            "caf\u{e9}",
            too_long.as_str(),
        ] {
            assert!(!valid_rebalance_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_rebalance_report_reads_back_what_it_wrote() {
        let report = RebalanceReport {
            id: "rebalance 7".to_owned(),
            state: RebalanceState::Moving,
            requested: 10,
            selected: 4,
            pending: 1,
            moved: 2,
            closed_by_client: 1,
            moved_again: 1,
            started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            ..RebalanceReport::default()
        };
        let text = serde_json::to_string(&report).expect("serializes");
        for field in [
            r#""state":"Moving""#,
            r#""closedByClient":1"#,
            r#""takenByDrain":0"#,
            r#""movedAgain":1"#,
            r#""startedAt":"2023-11-14T22:13:20Z""#,
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
        assert!(!text.contains("finishedAt"), "{text}");
        let back: RebalanceReport = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, report);
        assert!(!back.is_finished());
    }
}
