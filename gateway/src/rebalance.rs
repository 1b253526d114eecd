//! Rebalancing: a gateway that keeps serving moves a share of its sessions to other pods.
//!
//! After a scale-up the new pods get only new sessions while the old ones stay hot, so the
//! operator asks the hottest gateways to move some of theirs (`POST /rebalance`). A rebalance is
//! a Notify drain of a few sessions on a gateway that stays Ready and keeps accepting: each
//! session selected gets a close frame with the code and reason text a drain's Notify sends, at
//! its slot in the `spread` window, and its client reconnects through the Service (which the
//! operator steers to pods with room). This module holds its pure parts, which the drain
//! coordinator ([`crate::drain::Drain`]) drives under its lock:
//!
//! - [`plan`]: the request checked, with the deadline: the gateway's drain timeout
//!   (`--drain-timeout`), the bound a drain gives a client that does not answer its close frame.
//! - [`select`]: which sessions. Those whose clients declared the fewest earlier moves first
//!   (`Longconn-Session-Moves`; none declared counts as 0), so that no session is moved twice
//!   while one never moved is left; among equals the most recently opened, which have built up
//!   the least state and cost the least to move. Sessions whose close handshake has begun are
//!   never candidates.
//! - [`Rebalance`]: the last rebalance as a value: its report, what a selected session is told
//!   ([`Rebalance::order`]), and the transitions (a selected session ended, the deadline passed,
//!   a drain took the rest over).

use std::{
    cmp::Reverse,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use longconn_drain_api::{
    DrainRequest, MAX_KEEP_MOVED_FOR, MAX_REBALANCE_ID_BYTES, RebalanceReport, RebalanceRequest,
    RebalanceState, valid_rebalance_id,
};

use crate::{
    config::DrainDefaults,
    drain::{BadRequest, Outcome, check_notice, notice_at, window},
    metrics::RebalanceOutcome,
    registry::Index,
};

/// A refused rebalance request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The request is malformed (400): the message names the field.
    Invalid(BadRequest),
    /// The gateway cannot start it now (409): another rebalance is moving, or a drain began.
    Conflict(String),
}

/// A checked request, with the gateway's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub sessions: u64,
    pub spread: Duration,
    /// Selected sessions still open this long after the start are cut and counted dropped.
    pub deadline: Duration,
    pub close_code: u16,
    pub reason: Arc<str>,
    /// Sessions that came by a move less than this long ago are left out.
    pub keep_moved_for: Option<Duration>,
}

/// Checks `req` against the rules of a drain (close code, reason, a spread that fits in the
/// deadline) and its own (the id, at least one session); missing fields from `defaults`.
pub fn plan(req: &RebalanceRequest, defaults: &DrainDefaults) -> Result<Plan, BadRequest> {
    if !valid_rebalance_id(&req.id) {
        return Err(BadRequest(format!(
            "id {:?} is not a rebalance id: use 1 to {MAX_REBALANCE_ID_BYTES} printable ASCII characters, not starting or ending with a space",
            req.id
        )));
    }
    if req.sessions == 0 {
        return Err(BadRequest(
            "sessions 0 would move nothing: ask for 1 or more".to_owned(),
        ));
    }
    let as_drain = DrainRequest {
        spread: Some(req.spread),
        ..DrainRequest::default()
    };
    let (deadline, spread) = window(&as_drain, defaults).map_err(|e| {
        BadRequest(format!(
            "{} (a rebalance's deadline is the drain timeout)",
            e.0
        ))
    })?;
    if let Some(keep) = req.keep_moved_for
        && keep > MAX_KEEP_MOVED_FOR
    {
        return Err(BadRequest(format!(
            "keepMovedFor {} is over the most a gateway keeps track of, {}",
            humantime::format_duration(keep),
            humantime::format_duration(MAX_KEEP_MOVED_FOR)
        )));
    }
    let close_code = req.close_code.unwrap_or(defaults.close_code);
    check_notice(close_code, req.reason.as_deref())?;
    Ok(Plan {
        keep_moved_for: req.keep_moved_for,
        id: req.id.clone(),
        sessions: req.sessions,
        spread,
        deadline,
        close_code,
        reason: req.reason.as_deref().unwrap_or_default().into(),
    })
}

/// An open session a rebalance may select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub index: Index,
    /// Its place in the order of opening (later is higher).
    pub seq: u64,
    /// The moves its client declared.
    pub moves: u8,
}

/// Picks up to `k` of `candidates` (see the module documentation for the order) and returns
/// them in that order, which is the order of their close frames.
pub fn select(candidates: impl IntoIterator<Item = Candidate>, k: u64) -> Vec<Index> {
    let key = |c: &Candidate| (c.moves, Reverse(c.seq));
    let mut all: Vec<Candidate> = candidates.into_iter().collect();
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    if k < all.len() {
        // The k first in the order, in linear time; only those are sorted.
        all.select_nth_unstable_by_key(k, key);
        all.truncate(k);
    }
    all.sort_unstable_by_key(key);
    all.into_iter().map(|c| c.index).collect()
}

/// How many sessions a rebalance picked, and how many it left out as moved too recently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Picked {
    pub selected: u64,
    pub kept_moved: u64,
}

impl Picked {
    /// `selected` sessions, none left out.
    pub fn of(selected: u64) -> Picked {
        Picked {
            selected,
            kept_moved: 0,
        }
    }
}

/// What a session a rebalance selected is asked to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Send the client a close frame with `code` at `at`.
    MoveAt { at: Instant, code: u16 },
    /// The deadline has passed: close now, counted dropped.
    Cut { code: u16 },
}

/// The last rebalance (see the module documentation).
#[derive(Debug, Default)]
pub struct Rebalance {
    report: RebalanceReport,
    /// Counts the rebalances started, so that a deadline acts only on its own.
    generation: u64,
    notice: Option<Notice>,
}

/// What the sessions of a rebalance under way are told.
#[derive(Debug)]
struct Notice {
    start: Instant,
    spread: Duration,
    close_code: u16,
    reason: Arc<str>,
    expired: bool,
}

impl From<Outcome> for RebalanceOutcome {
    fn from(outcome: Outcome) -> RebalanceOutcome {
        match outcome {
            Outcome::Migrated => RebalanceOutcome::Moved,
            Outcome::ClosedByClient => RebalanceOutcome::ClosedByClient,
            Outcome::Dropped => RebalanceOutcome::Dropped,
        }
    }
}

impl Rebalance {
    /// The report of the last rebalance (`Idle`, with an empty id, before the first).
    pub fn report(&self) -> &RebalanceReport {
        &self.report
    }

    /// True while sessions it selected are open and still its own.
    pub fn is_moving(&self) -> bool {
        self.report.state == RebalanceState::Moving
    }

    /// The reason text of its close frames, while it is moving.
    pub fn reason(&self) -> Option<Arc<str>> {
        let notice = self.notice.as_ref().filter(|_| self.is_moving())?;
        Some(Arc::clone(&notice.reason))
    }

    /// Starts `plan` with the sessions `picked`, at `start` (`now` on the wall clock);
    /// returns its generation, for [`Rebalance::expire`]. With nothing selected it is done at
    /// once.
    pub fn begin(&mut self, plan: Plan, picked: Picked, start: Instant, now: SystemTime) -> u64 {
        let selected = picked.selected;
        self.generation += 1;
        self.report = RebalanceReport {
            id: plan.id,
            state: RebalanceState::Moving,
            requested: plan.sessions,
            selected,
            kept_moved: picked.kept_moved,
            pending: selected,
            started_at: Some(now),
            ..RebalanceReport::default()
        };
        self.notice = Some(Notice {
            start,
            spread: plan.spread,
            close_code: plan.close_code,
            reason: plan.reason,
            expired: false,
        });
        if selected == 0 {
            self.finish(now);
        }
        self.generation
    }

    /// What the session in `slot` is told, while the rebalance is moving.
    pub fn order(&self, slot: u32) -> Option<Order> {
        let notice = self.notice.as_ref().filter(|_| self.is_moving())?;
        let code = notice.close_code;
        Some(if notice.expired {
            Order::Cut { code }
        } else {
            let at = notice_at(
                notice.start,
                notice.spread,
                slot.into(),
                self.report.selected,
            );
            Order::MoveAt { at, code }
        })
    }

    /// A selected session ended with `outcome` (`moved_again`: moved, and its client had
    /// declared an earlier move). True when it was the last one.
    pub fn ended(&mut self, outcome: Outcome, moved_again: bool, now: SystemTime) -> bool {
        if !self.is_moving() {
            return false;
        }
        let r = &mut self.report;
        match outcome {
            Outcome::Migrated => r.moved += 1,
            Outcome::ClosedByClient => r.closed_by_client += 1,
            Outcome::Dropped => r.dropped += 1,
        }
        r.moved_again += u64::from(moved_again && outcome == Outcome::Migrated);
        r.pending = r.pending.saturating_sub(1);
        if r.pending == 0 {
            self.finish(now);
            return true;
        }
        false
    }

    /// The deadline of rebalance `generation` passed: its sessions left are cut. True when that
    /// rebalance is still moving.
    pub fn expire(&mut self, generation: u64) -> bool {
        let moving = self.is_moving() && generation == self.generation;
        if let Some(notice) = self.notice.as_mut().filter(|_| moving) {
            notice.expired = true;
        }
        moving
    }

    /// A drain started: the selected sessions still open become the drain's. Returns how many,
    /// or `None` when no rebalance was moving.
    pub fn take_over(&mut self, now: SystemTime) -> Option<u64> {
        if !self.is_moving() {
            return None;
        }
        let taken = std::mem::take(&mut self.report.pending);
        self.report.taken_by_drain = taken;
        self.finish(now);
        Some(taken)
    }

    fn finish(&mut self, now: SystemTime) {
        self.report.state = RebalanceState::Done;
        self.report.finished_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use longconn_drain_api::DrainStrategy;

    use super::*;

    fn defaults() -> DrainDefaults {
        DrainDefaults {
            strategy: DrainStrategy::Notify,
            timeout: Duration::from_secs(300),
            spread: Duration::from_secs(30),
            close_code: 1012,
        }
    }

    fn request(id: &str, sessions: u64, spread: &str) -> RebalanceRequest {
        RebalanceRequest {
            id: id.to_owned(),
            sessions,
            spread: humantime::parse_duration(spread).expect("a duration"),
            close_code: None,
            reason: None,
            keep_moved_for: None,
        }
    }

    fn candidate(index: Index, seq: u64, moves: u8) -> Candidate {
        Candidate { index, seq, moves }
    }

    #[test]
    fn a_plan_takes_the_defaults_and_the_drain_timeout_as_its_deadline() {
        let plan = plan(&request("rebalance 7", 5, "30s"), &defaults()).expect("valid");
        assert_eq!(
            plan,
            Plan {
                id: "rebalance 7".to_owned(),
                sessions: 5,
                spread: Duration::from_secs(30),
                deadline: Duration::from_secs(300),
                close_code: 1012,
                reason: "".into(),
                keep_moved_for: None,
            }
        );
        let with = RebalanceRequest {
            close_code: Some(1001),
            reason: Some("moving: rebalance".to_owned()),
            ..request("r", 1, "0s")
        };
        let plan = super::plan(&with, &defaults()).expect("valid");
        assert_eq!(
            (plan.close_code, &*plan.reason),
            (1001, "moving: rebalance")
        );
    }

    #[test]
    fn each_bad_field_is_refused_with_a_message_that_names_it() {
        let cases = [
            (request("r", 0, "1s"), "sessions 0"),
            (request("", 1, "1s"), "id \"\""),
            (request(&"r".repeat(65), 1, "1s"), "is not a rebalance id"),
            (request("line\nbreak", 1, "1s"), "id \"line\\nbreak\""),
            (
                request("r", 1, "301s"),
                "spread 5m 1s is longer than the deadline 5m",
            ),
            (request("r", 1, "500000000000y"), "spread"),
            (
                RebalanceRequest {
                    close_code: Some(1006),
                    ..request("r", 1, "1s")
                },
                "closeCode 1006",
            ),
            (
                RebalanceRequest {
                    reason: Some("\u{e9}".repeat(62)),
                    ..request("r", 1, "1s")
                },
                "reason is 124 bytes",
            ),
        ];
        for (req, says) in cases {
            let err = plan(&req, &defaults()).expect_err(says);
            assert!(err.0.contains(says), "{:?} does not say {says:?}", err.0);
        }
    }

    #[test]
    fn never_moved_sessions_go_first_then_the_newest() {
        let candidates = [
            candidate(0, 10, 0),
            candidate(1, 11, 1),
            candidate(2, 12, 0),
            candidate(3, 13, 2),
            candidate(4, 14, 1),
            candidate(5, 9, 0),
        ];
        assert_eq!(select(candidates, 3), [2, 0, 5]);
        assert_eq!(select(candidates, 4), [2, 0, 5, 4], "then the fewest moves");
        assert_eq!(select(candidates, 100), [2, 0, 5, 4, 1, 3], "all of them");
        assert_eq!(select(candidates, u64::MAX).len(), 6);
        assert_eq!(select([], 5), Vec::<Index>::new());
    }

    #[test]
    fn the_counts_add_up_as_selected_sessions_end() {
        let mut r = Rebalance::default();
        let start = Instant::now();
        let now = SystemTime::now();
        r.begin(
            plan(&request("r", 5, "4s"), &defaults()).expect("valid"),
            Picked::of(4),
            start,
            now,
        );
        assert!(r.is_moving());
        assert_eq!(
            r.order(2),
            Some(Order::MoveAt {
                at: start + Duration::from_secs(2),
                code: 1012
            })
        );
        assert!(!r.ended(Outcome::Migrated, true, now));
        assert!(!r.ended(Outcome::Migrated, false, now));
        assert!(!r.ended(Outcome::ClosedByClient, true, now), "not moved");
        assert!(r.ended(Outcome::Dropped, false, now), "the last one");
        let report = r.report();
        assert_eq!(report.state, RebalanceState::Done);
        assert_eq!(
            (report.requested, report.selected, report.pending),
            (5, 4, 0)
        );
        assert_eq!(
            (
                report.moved,
                report.moved_again,
                report.closed_by_client,
                report.dropped
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(r.order(0), None, "done: nothing more to tell");
        assert!(!r.ended(Outcome::Migrated, false, now), "counted once");
    }

    #[test]
    fn a_rebalance_with_nothing_to_select_is_done_at_once() {
        let mut r = Rebalance::default();
        let plan = plan(&request("r", 5, "4s"), &defaults()).expect("valid");
        r.begin(plan, Picked::of(0), Instant::now(), SystemTime::now());
        assert_eq!(r.report().state, RebalanceState::Done);
        assert!(r.report().finished_at.is_some());
    }

    #[test]
    fn the_deadline_cuts_only_its_own_rebalance() {
        let mut r = Rebalance::default();
        let plan = plan(&request("r", 2, "1s"), &defaults()).expect("valid");
        let first = r.begin(
            plan.clone(),
            Picked::of(1),
            Instant::now(),
            SystemTime::now(),
        );
        r.ended(Outcome::Migrated, false, SystemTime::now());
        let second = r.begin(plan, Picked::of(2), Instant::now(), SystemTime::now());
        assert!(!r.expire(first), "an earlier rebalance's deadline");
        assert!(matches!(r.order(0), Some(Order::MoveAt { .. })));
        assert!(r.expire(second));
        assert_eq!(r.order(1), Some(Order::Cut { code: 1012 }));
    }

    #[test]
    fn a_drain_takes_over_the_sessions_left_and_they_are_not_counted_again() {
        let mut r = Rebalance::default();
        let plan = plan(&request("r", 3, "1s"), &defaults()).expect("valid");
        r.begin(plan, Picked::of(3), Instant::now(), SystemTime::now());
        r.ended(Outcome::Migrated, false, SystemTime::now());
        assert_eq!(r.take_over(SystemTime::now()), Some(2));
        let report = r.report().clone();
        assert_eq!(
            (
                report.state,
                report.moved,
                report.taken_by_drain,
                report.pending
            ),
            (RebalanceState::Done, 1, 2, 0)
        );
        assert!(!r.ended(Outcome::Migrated, false, SystemTime::now()));
        assert_eq!(r.take_over(SystemTime::now()), None);
        assert_eq!(r.report(), &report, "the drain counts them from here on");
        assert_eq!(r.order(0), None);
    }
}
