//! The wire types of the drain API (`POST /drain`, `GET /drain` on the gateway's admin port).
//!
//! These types are the contract between the gateway, which serves them, and the operator, which
//! drains every gateway through them. Field names are camelCase on the wire; durations are
//! strings such as `30s`, `5m` or `1h30m`; instants are RFC 3339.

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

impl DrainReport {
    /// True once the drain has finished, whatever its outcome.
    pub fn is_finished(&self) -> bool {
        self.state == DrainState::Drained
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
}
