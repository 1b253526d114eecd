//! The drain coordinator: the registry of open sessions, the drain state machine and its exact
//! report.
//!
//! Every WebSocket session registers here when it starts ([`Drain::open_session`]) and reports how
//! it ended ([`SessionTicket::finish`]). Both happen under one lock together with the drain's
//! start, so `sessionsAtStart == active + migrated + closedByClient + dropped` holds at every
//! instant: a session is either refused (the drain had started) or counted at the start.
//!
//! Sessions learn about the drain from the [`Phase`], read again whenever its [`Beacon`] fires
//! ([`Drain::listen`]): `Notify` gives each session a slot in the spread window, `Deadline` tells
//! every session left to force-close (and count itself dropped). A Notify close frame carries the
//! request's reason text ([`Drain::notify_reason`]).
//!
//! Two counts of the report stand beside its sum: `movedAgain`, the migrated sessions whose
//! client declared an earlier move (see [`crate::moves`]), and `refused`, the connection attempts
//! answered 503 because of the drain ([`Drain::refused`]). Its `health` counts what the app did
//! with the upgrades relayed to it since the process started, drain or not: sessions opened and
//! those it ended with an error (counted here as they open and end), and upgrades it refused or
//! could not take ([`Drain::upgrade_failed`]).
//!
//! The coordinator also keeps an entry per open session ([`crate::registry`]), from which a
//! [`rebalance`](crate::rebalance) of a gateway that keeps serving selects the sessions it moves
//! ([`Drain::rebalance`]). Sessions read what a rebalance asks of them when the same beacon fires
//! ([`SessionTicket::rebalance_order`]). A drain that starts while a rebalance is moving takes
//! the selected sessions still open over: from then on they are the drain's, counted in its
//! report and only as `takenByDrain` in the rebalance's.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use longconn_drain_api::{
    DrainReport, DrainRequest, DrainState, DrainStrategy, MAX_CLOSE_REASON_BYTES, RebalanceReport,
    RebalanceRequest,
};
use tokio::sync::watch;

use crate::{
    beacon::{Beacon, Listener},
    config::{DrainDefaults, MAX_DRAIN, valid_drain_close_code},
    metrics::{CloseReason, DrainSeries, Metrics, RebalanceOutcome, RejectReason},
    rebalance::{self, Candidate, Order, Picked, Rebalance, Refused},
    registry::{Index, Registry},
};

/// What the sessions are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Send a close frame with `close_code` at `start + spread * slot / total`.
    Notify {
        start: Instant,
        spread: Duration,
        close_code: u16,
        total: u64,
    },
    /// Let sessions end by themselves.
    Wait,
    /// The deadline passed: close now, counted as dropped.
    Deadline {
        close_code: u16,
    },
}

/// The bucket of the drain report a session's end falls into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Migrated,
    ClosedByClient,
    Dropped,
}

impl CloseReason {
    /// The report bucket of a close reason (see README "Session accounting").
    pub fn outcome(self) -> Outcome {
        match self {
            CloseReason::Migrated => Outcome::Migrated,
            CloseReason::ClientClose
            | CloseReason::UpstreamClose
            | CloseReason::ClientDisconnect
            | CloseReason::HeartbeatTimeout
            | CloseReason::WriteStalled
            | CloseReason::IdleTimeout
            | CloseReason::ProtocolError
            | CloseReason::MessageTooBig
            | CloseReason::RateLimited => Outcome::ClosedByClient,
            CloseReason::DrainDeadline
            | CloseReason::RebalanceDeadline
            | CloseReason::UpstreamError => Outcome::Dropped,
        }
    }
}

// A reason the API accepts fits a close frame whole: it is never cut.
const _: () = assert!(MAX_CLOSE_REASON_BYTES == crate::frame::MAX_CLOSE_REASON);

/// A refused drain request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

#[derive(Debug)]
struct Inner {
    active: u64,
    report: DrainReport,
    sessions: Registry,
    rebalance: Rebalance,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Drain {
    inner: Mutex<Inner>,
    phase: Mutex<Phase>,
    phase_changed: Beacon,
    finished: watch::Sender<bool>,
    /// Plain HTTP requests being relayed (streamed responses included).
    streams: watch::Sender<u64>,
    slots: AtomicU64,
    /// The reason text of Notify's close frames, set when the drain starts with one.
    notify_reason: OnceLock<Box<str>>,
    defaults: DrainDefaults,
    metrics: Metrics,
    series: DrainSeries,
}

/// A plain HTTP request being relayed, from [`Drain::open_stream`]; dropping it ends it.
#[derive(Debug)]
pub struct StreamTicket {
    drain: Arc<Drain>,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.drain.streams.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Proof that a session is registered; report its end with [`SessionTicket::finish`]. Dropping it
/// unfinished (a panic) counts the session as dropped.
#[derive(Debug)]
pub struct SessionTicket {
    drain: Arc<Drain>,
    opened: Instant,
    done: bool,
    /// Where the session's entry is in the registry (with the moves its client declared): four
    /// bytes beside `done` cost the session no room.
    index: Index,
}

impl SessionTicket {
    /// Records how the session ended.
    pub fn finish(mut self, reason: CloseReason) {
        self.done = true;
        self.drain.session_ended(reason, self.opened, self.index);
    }

    /// What the rebalance under way asks of this session, if it selected it.
    pub fn rebalance_order(&self) -> Option<Order> {
        let inner = self.drain.lock();
        let slot = inner.sessions.get(self.index)?.slot()?;
        inner.rebalance.order(slot)
    }

    /// Notes that the session's close handshake has begun: no rebalance selects it from now on.
    pub fn closing(&self) {
        if let Some(open) = self.drain.lock().sessions.get_mut(self.index) {
            open.closing = true;
        }
    }

    /// The reason text of a close frame that asks this session to move, when the rebalance
    /// that selected it is moving: the rebalance's. `None` otherwise: the drain's
    /// ([`Drain::notify_reason`]).
    pub fn rebalance_reason(&self) -> Option<Arc<str>> {
        let inner = self.drain.lock();
        inner.sessions.get(self.index)?.slot()?;
        inner.rebalance.reason()
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        if !self.done {
            self.drain
                .session_ended(CloseReason::UpstreamError, self.opened, self.index);
        }
    }
}

/// When the close frame of `slot` (0, 1, 2, ...) of `total` is due in a window of `spread` from
/// `start`: spread evenly, the first at the start (a Notify drain's and a rebalance's alike).
pub fn notice_at(start: Instant, spread: Duration, slot: u64, total: u64) -> Instant {
    let total = total.max(1);
    start + spread.mul_f64(slot.min(total - 1) as f64 / total as f64)
}

/// Checks the close code and reason text of a request that asks sessions to move (a drain's or
/// a rebalance's).
pub fn check_notice(close_code: u16, reason: Option<&str>) -> Result<(), BadRequest> {
    if !valid_drain_close_code(close_code) {
        return Err(BadRequest(format!(
            "closeCode {close_code} is not a drain close code (use 1012, 1001, 1000 or 3000-4999)"
        )));
    }
    if let Some(reason) = reason
        && reason.len() > MAX_CLOSE_REASON_BYTES
    {
        return Err(BadRequest(format!(
            "reason is {} bytes of UTF-8: a close frame has room for {MAX_CLOSE_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(())
}

/// The deadline and spread of `req`, missing ones from `defaults`. A spread the request leaves
/// out is cut to the deadline; one it names must fit in it. Both are bounded by [`MAX_DRAIN`],
/// so no instant computed from them can overflow.
pub fn window(
    req: &DrainRequest,
    defaults: &DrainDefaults,
) -> Result<(Duration, Duration), BadRequest> {
    let deadline = req.deadline.unwrap_or(defaults.timeout);
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if deadline.is_zero() {
        return Err(BadRequest(
            "deadline 0s would force-close every session at once: give a deadline longer than 0s"
                .to_owned(),
        ));
    }
    if deadline > MAX_DRAIN {
        return Err(BadRequest(format!(
            "deadline {} is longer than the longest drain, {}",
            show(deadline),
            show(MAX_DRAIN)
        )));
    }
    let spread = match req.spread {
        None => defaults.spread.min(deadline),
        Some(spread) if spread > deadline => {
            return Err(BadRequest(format!(
                "spread {} is longer than the deadline {}: close frames would be sent after it",
                show(spread),
                show(deadline)
            )));
        }
        Some(spread) => spread,
    };
    Ok((deadline, spread))
}

impl Drain {
    pub fn new(defaults: DrainDefaults, metrics: Metrics, series: DrainSeries) -> Arc<Drain> {
        Arc::new(Drain {
            inner: Mutex::new(Inner {
                active: 0,
                report: DrainReport::default(),
                sessions: Registry::default(),
                rebalance: Rebalance::default(),
            }),
            phase: Mutex::new(Phase::Serving),
            phase_changed: Beacon::default(),
            finished: watch::channel(false).0,
            streams: watch::channel(0).0,
            slots: AtomicU64::new(0),
            notify_reason: OnceLock::new(),
            defaults,
            metrics,
            series,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the counts are still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gateway's default drain parameters.
    pub fn defaults(&self) -> DrainDefaults {
        self.defaults
    }

    /// Registers a new session whose client declared `moves` earlier moves, or `None` if a drain
    /// has started (the caller answers 503 and counts it with [`Drain::refused`]).
    pub fn open_session(self: &Arc<Self>, moves: u32) -> Option<SessionTicket> {
        let mut inner = self.lock();
        if inner.report.state != DrainState::Serving {
            return None;
        }
        let index = inner.sessions.insert(moves)?;
        inner.active += 1;
        inner.report.health.handshakes += 1;
        self.metrics.sessions_active.inc();
        self.metrics.sessions_opened.inc();
        Some(SessionTicket {
            drain: Arc::clone(self),
            opened: Instant::now(),
            done: false,
            index,
        })
    }

    /// Counts a connection attempt answered 503 because a drain has started, in the report of
    /// that drain.
    pub fn refused(&self) {
        let mut inner = self.lock();
        if inner.report.state != DrainState::Serving {
            inner.report.refused += 1;
        }
    }

    /// Counts a WebSocket upgrade the app did not take in the health of every report: one it
    /// answered without switching protocols (`UpstreamRefused`), or that could not reach it or
    /// got no answer in time (`UpstreamUnavailable`). Other reasons are not the app's: not
    /// counted.
    pub fn upgrade_failed(&self, reason: RejectReason) {
        let mut inner = self.lock();
        let health = &mut inner.report.health;
        match reason {
            RejectReason::UpstreamRefused => health.upstream_refused += 1,
            RejectReason::UpstreamUnavailable => health.upstream_unavailable += 1,
            _ => {}
        }
    }

    /// Counts a plain HTTP request as relayed until the ticket is dropped. Plain requests are
    /// not sessions and not in the report; they only keep the process until they end, or the
    /// drain's deadline ends them ([`Drain::streams_ended`]).
    pub fn open_stream(self: &Arc<Self>) -> StreamTicket {
        self.streams.send_modify(|n| *n += 1);
        StreamTicket {
            drain: Arc::clone(self),
        }
    }

    /// Resolves once no plain HTTP request is being relayed.
    pub async fn streams_ended(&self) {
        let mut rx = self.streams.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn session_ended(&self, reason: CloseReason, opened: Instant, index: Index) {
        let mut inner = self.lock();
        let open = inner.sessions.remove(index);
        inner.active = inner.active.saturating_sub(1);
        self.metrics.sessions_active.dec();
        self.metrics.closed(reason, opened.elapsed().as_secs_f64());
        if reason == CloseReason::UpstreamError {
            inner.report.health.upstream_errors += 1;
        }
        let moves = open.map_or(0, |o| o.moves);
        let moved_again = reason.outcome() == Outcome::Migrated && moves > 0;
        if moved_again {
            self.series.sessions_moved_again.inc();
        }
        if open.and_then(|o| o.slot()).is_some() && inner.rebalance.is_moving() {
            self.series.rebalanced(reason.outcome().into(), 1);
            if inner
                .rebalance
                .ended(reason.outcome(), moved_again, SystemTime::now())
            {
                self.rebalance_finished(inner.rebalance.report());
            }
        }
        if inner.report.state == DrainState::Draining {
            let r = &mut inner.report;
            r.moved_again += u64::from(moved_again);
            match reason.outcome() {
                Outcome::Migrated => r.migrated += 1,
                Outcome::ClosedByClient => r.closed_by_client += 1,
                Outcome::Dropped => r.dropped += 1,
            }
            r.active = r.active.saturating_sub(1);
            if r.active == 0 {
                self.finish(&mut inner);
            }
        }
    }

    fn finish(&self, inner: &mut Inner) {
        inner.report.state = DrainState::Drained;
        inner.report.finished_at = Some(SystemTime::now());
        self.metrics.set_drain_state(DrainState::Drained);
        self.finished.send_replace(true);
        tracing::info!(report = ?inner.report, "drain finished");
    }

    /// Puts what earlier processes of this pod lost into every report.
    pub fn set_history(&self, history: crate::state::Saved) {
        let mut inner = self.lock();
        inner.report.restarts = history.restarts;
        inner.report.lost_to_restarts = history.lost_to_restarts;
    }

    /// True once a drain has finished.
    pub fn is_finished(&self) -> bool {
        self.lock().report.state == DrainState::Drained
    }

    /// Sessions open now.
    pub fn active(&self) -> u64 {
        self.lock().active
    }

    /// True from the start of a drain on.
    pub fn is_draining(&self) -> bool {
        self.lock().report.state != DrainState::Serving
    }

    /// The current report.
    pub fn report(&self) -> DrainReport {
        let inner = self.lock();
        let mut r = inner.report.clone();
        if r.state == DrainState::Serving {
            r.active = inner.active;
        }
        r
    }

    /// Listens for changes of the phase from now on. Create the listener first, then read the
    /// [`phase`](Drain::phase), so that no change falls between the two.
    pub fn listen(&self) -> Listener<'_> {
        self.phase_changed.listen()
    }

    /// The phase the sessions are told.
    pub fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
        self.phase_changed.fire();
    }

    /// The reason text of Notify's close frames: the drain request's, empty when it gave none.
    pub fn notify_reason(&self) -> &str {
        self.notify_reason.get().map_or("", |r| &**r)
    }

    /// The next Notify slot (0, 1, 2, ...), taken by each session once.
    pub fn take_slot(&self) -> u64 {
        self.slots.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts a drain with `req` (missing fields from the defaults), or joins the one under way.
    /// Returns the report.
    pub fn start(self: &Arc<Self>, req: &DrainRequest) -> Result<DrainReport, BadRequest> {
        let close_code = req.close_code.unwrap_or(self.defaults.close_code);
        check_notice(close_code, req.reason.as_deref())?;
        let (deadline, spread) = window(req, &self.defaults)?;
        let strategy = req.strategy.unwrap_or(self.defaults.strategy);
        let mut inner = self.lock();
        if inner.report.state != DrainState::Serving {
            return Ok(inner.report.clone());
        }
        // The selected sessions still open are the drain's from here on.
        if let Some(taken) = inner.rebalance.take_over(SystemTime::now()) {
            self.series
                .rebalanced(RebalanceOutcome::TakenByDrain, taken);
            self.rebalance_finished(inner.rebalance.report());
        }
        let total = inner.active;
        inner.report = DrainReport {
            state: DrainState::Draining,
            sessions_at_start: total,
            active: total,
            started_at: Some(SystemTime::now()),
            restarts: inner.report.restarts,
            lost_to_restarts: inner.report.lost_to_restarts,
            health: inner.report.health,
            ..DrainReport::default()
        };
        self.metrics.set_drain_state(DrainState::Draining);
        if let Some(reason) = &req.reason {
            // Set once: a drain starts once in a process's life.
            let _ = self.notify_reason.set(reason.as_str().into());
        }
        tracing::info!(?strategy, reason = self.notify_reason(), deadline = %humantime::format_duration(deadline), spread = %humantime::format_duration(spread), close_code, sessions = total, "drain started");
        // The deadline ends plain HTTP streams too, so it runs even when no session is open.
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if me.active() > 0 {
                tracing::warn!(
                    active = me.active(),
                    "drain deadline passed; force-closing the rest"
                );
            }
            me.set_phase(Phase::Deadline { close_code });
        });
        if total == 0 {
            self.finish(&mut inner);
            return Ok(inner.report.clone());
        }
        let phase = match strategy {
            DrainStrategy::Notify => Phase::Notify {
                start: Instant::now(),
                spread,
                close_code,
                total,
            },
            DrainStrategy::Wait => Phase::Wait,
        };
        self.set_phase(phase);
        Ok(inner.report.clone())
    }

    /// Starts a rebalance with `req`: selects up to `req.sessions` sessions (see
    /// [`rebalance::select`]) and tells them when to move. The gateway keeps serving. Posting the
    /// id of the last rebalance again returns its report and starts nothing; a new one is refused
    /// while the last is moving or once a drain has started.
    pub fn rebalance(self: &Arc<Self>, req: &RebalanceRequest) -> Result<RebalanceReport, Refused> {
        let plan = rebalance::plan(req, &self.defaults).map_err(Refused::Invalid)?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let last = inner.rebalance.report();
        if last.id == plan.id {
            return Ok(last.clone());
        }
        if inner.report.state != DrainState::Serving {
            return Err(Refused::Conflict(format!(
                "draining: a gateway that drains moves all its sessions; rebalance {:?} not started",
                plan.id
            )));
        }
        if inner.rebalance.is_moving() {
            return Err(Refused::Conflict(format!(
                "rebalance {:?} is still moving sessions ({} of {} open): rebalance {:?} not started; post {:?} again to read its report",
                last.id, last.pending, last.selected, plan.id, last.id
            )));
        }
        // Sessions that came here by a move since `recent` are left out.
        let recent = plan.keep_moved_for.map_or(u64::MAX, |within| {
            inner.sessions.opened_since(Instant::now(), within)
        });
        let mut kept_moved = 0;
        let candidates = inner
            .sessions
            .iter()
            .filter(|(_, open)| !open.closing)
            .filter(|(_, open)| {
                let keep = open.moves > 0 && open.seq >= recent;
                kept_moved += u64::from(keep);
                !keep
            })
            .map(|(index, open)| Candidate {
                index,
                seq: open.seq,
                moves: open.moves,
            });
        let selected = rebalance::select(candidates, plan.sessions);
        for (slot, &index) in (0..).zip(&selected) {
            if let Some(open) = inner.sessions.get_mut(index) {
                open.select(slot);
            }
        }
        let (deadline, spread, close_code) = (plan.deadline, plan.spread, plan.close_code);
        let picked = Picked {
            selected: selected.len() as u64,
            kept_moved,
        };
        let generation = inner
            .rebalance
            .begin(plan, picked, Instant::now(), SystemTime::now());
        let report = inner.rebalance.report().clone();
        self.series.set_rebalance_state(report.state);
        tracing::info!(
            id = %report.id,
            requested = report.requested,
            selected = report.selected,
            kept_moved = report.kept_moved,
            sessions = inner.active,
            spread = %humantime::format_duration(spread),
            deadline = %humantime::format_duration(deadline),
            close_code,
            reason = inner.rebalance.reason().as_deref().unwrap_or_default(),
            "rebalance started"
        );
        if report.is_finished() {
            self.rebalance_finished(&report);
            return Ok(report);
        }
        drop(guard);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            me.expire_rebalance(generation);
        });
        self.phase_changed.fire();
        Ok(report)
    }

    /// The report of the last rebalance.
    pub fn rebalance_report(&self) -> RebalanceReport {
        self.lock().rebalance.report().clone()
    }

    /// The deadline of rebalance `generation` has passed: the sessions it selected that are
    /// still open are cut (and counted dropped).
    fn expire_rebalance(&self, generation: u64) {
        let mut inner = self.lock();
        if !inner.rebalance.expire(generation) {
            return;
        }
        tracing::warn!(
            id = %inner.rebalance.report().id,
            pending = inner.rebalance.report().pending,
            "rebalance deadline passed; force-closing the selected sessions left"
        );
        drop(inner);
        self.phase_changed.fire();
    }

    /// Logs the end of a rebalance with its counts and marks it done.
    fn rebalance_finished(&self, r: &RebalanceReport) {
        self.series.set_rebalance_state(r.state);
        tracing::info!(
            id = %r.id,
            requested = r.requested,
            selected = r.selected,
            moved = r.moved,
            moved_again = r.moved_again,
            closed_by_client = r.closed_by_client,
            dropped = r.dropped,
            taken_by_drain = r.taken_by_drain,
            "rebalance finished"
        );
    }

    /// Resolves once a drain has finished.
    pub async fn finished(&self) {
        let mut rx = self.finished.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use longconn_drain_api::{Health, RebalanceState};

    use super::*;

    fn drain() -> Arc<Drain> {
        let defaults = DrainDefaults {
            strategy: DrainStrategy::Wait,
            timeout: Duration::from_secs(60),
            spread: Duration::ZERO,
            close_code: 1012,
        };
        Drain::new(defaults, Metrics::new().0, DrainSeries::default())
    }

    #[tokio::test]
    async fn report_adds_up_and_new_sessions_are_refused_during_drain() {
        let d = drain();
        let t: Vec<_> = (0..4)
            .map(|_| d.open_session(0).expect("serving"))
            .collect();
        let before = d.open_session(0).expect("serving");
        before.finish(CloseReason::ClientClose);
        let r = d.start(&DrainRequest::default()).expect("starts");
        assert_eq!(
            (r.state, r.sessions_at_start, r.active),
            (DrainState::Draining, 4, 4)
        );
        assert!(d.open_session(0).is_none());
        let mut t = t.into_iter();
        t.next().expect("ticket").finish(CloseReason::Migrated);
        t.next()
            .expect("ticket")
            .finish(CloseReason::HeartbeatTimeout);
        t.next().expect("ticket").finish(CloseReason::DrainDeadline);
        let r = d.report();
        assert_eq!(
            (r.migrated, r.closed_by_client, r.dropped, r.active),
            (1, 1, 1, 1)
        );
        drop(t); // the last ticket unfinished: counted as dropped
        let r = d.report();
        assert_eq!(r.state, DrainState::Drained);
        assert_eq!(
            r.sessions_at_start,
            r.migrated + r.closed_by_client + r.dropped + r.active
        );
        assert_eq!(r.dropped, 2);
        tokio::time::timeout(Duration::from_secs(5), d.finished())
            .await
            .expect("finished");
    }

    #[tokio::test]
    async fn second_start_joins_the_first() {
        let d = drain();
        let _t = d.open_session(0).expect("serving");
        let a = d.start(&DrainRequest::default()).expect("starts");
        let b = d
            .start(&DrainRequest {
                close_code: Some(1001),
                ..DrainRequest::default()
            })
            .expect("joins");
        assert_eq!(a.started_at, b.started_at);
    }

    #[test]
    fn a_deadline_of_zero_or_an_absurd_spread_is_refused_and_starts_nothing() {
        let d = drain();
        let cases = [
            (Some(Duration::ZERO), None, "deadline 0s"),
            (None, Some(Duration::from_secs(u64::MAX)), "spread"),
            (Some(Duration::from_secs(u64::MAX)), None, "longest drain"),
            (
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(11)),
                "longer than the deadline 10s",
            ),
        ];
        for (deadline, spread, says) in cases {
            let err = d
                .start(&DrainRequest {
                    deadline,
                    spread,
                    ..DrainRequest::default()
                })
                .expect_err("refused");
            assert!(err.0.contains(says), "{:?} does not say {says:?}", err.0);
            assert!(!d.is_draining());
        }
    }

    #[test]
    fn a_spread_left_out_is_cut_to_a_short_deadline() {
        let d = Drain::new(
            DrainDefaults {
                strategy: DrainStrategy::Notify,
                timeout: Duration::from_secs(60),
                spread: Duration::from_secs(30),
                close_code: 1012,
            },
            Metrics::new().0,
            DrainSeries::default(),
        );
        let req = DrainRequest {
            deadline: Some(Duration::from_millis(10)),
            ..DrainRequest::default()
        };
        assert_eq!(
            window(&req, &d.defaults).expect("fits"),
            (Duration::from_millis(10), Duration::from_millis(10))
        );
    }

    #[tokio::test]
    async fn moved_again_counts_the_migrated_sessions_that_had_declared_a_move() {
        let d = drain();
        let first_move = d.open_session(0).expect("serving");
        let second_move = d.open_session(1).expect("serving");
        let many_moves = d.open_session(u32::MAX).expect("serving");
        let left = d.open_session(2).expect("serving");
        d.start(&DrainRequest::default()).expect("starts");
        first_move.finish(CloseReason::Migrated);
        second_move.finish(CloseReason::Migrated);
        many_moves.finish(CloseReason::Migrated);
        left.finish(CloseReason::ClientClose);
        let r = d.report();
        assert_eq!((r.migrated, r.moved_again, r.closed_by_client), (3, 2, 1));
        assert_eq!(d.series.sessions_moved_again.get(), 2);
        assert_eq!(
            r.sessions_at_start,
            r.migrated + r.closed_by_client + r.dropped + r.active
        );
    }

    #[tokio::test]
    async fn refused_counts_the_attempts_from_the_drain_start_on() {
        let d = drain();
        d.refused();
        assert_eq!(
            d.report().refused,
            0,
            "no drain: nothing was refused for one"
        );
        let _open = d.open_session(0).expect("serving");
        d.start(&DrainRequest::default()).expect("starts");
        d.refused();
        d.refused();
        let r = d.report();
        assert_eq!((r.refused, r.sessions_at_start), (2, 1));
    }

    #[tokio::test]
    async fn health_counts_the_app_s_upgrades_and_failures_before_and_after_the_drain_start() {
        let d = drain();
        let failed = d.open_session(0).expect("serving");
        let open = d.open_session(0).expect("serving");
        d.upgrade_failed(RejectReason::UpstreamRefused);
        d.upgrade_failed(RejectReason::UpstreamUnavailable);
        d.upgrade_failed(RejectReason::OriginForbidden);
        failed.finish(CloseReason::UpstreamError);
        let serving = d.report().health;
        let expected = Health {
            handshakes: 2,
            upstream_refused: 1,
            upstream_unavailable: 1,
            upstream_errors: 1,
        };
        assert_eq!(serving, expected);
        let started = d.start(&DrainRequest::default()).expect("starts");
        assert_eq!(started.health, expected, "kept by the drain's report");
        d.upgrade_failed(RejectReason::UpstreamUnavailable);
        drop(open); // unfinished: an upstream error
        let drained = d.report();
        assert_eq!(drained.state, DrainState::Drained);
        assert_eq!(
            (
                drained.health.upstream_unavailable,
                drained.health.upstream_errors
            ),
            (2, 2)
        );
        assert_eq!(
            drained.dropped, 1,
            "the drain counts its own sessions, health the process's"
        );
    }

    #[tokio::test]
    async fn a_reason_longer_than_a_close_frame_holds_is_refused_and_starts_nothing() {
        let d = drain();
        let too_long = "\u{e9}".repeat(62);
        let err = d
            .start(&DrainRequest {
                reason: Some(too_long),
                ..DrainRequest::default()
            })
            .expect_err("124 bytes");
        assert!(
            err.0.contains("reason is 124 bytes") && err.0.contains("123"),
            "{:?}",
            err.0
        );
        assert!(!d.is_draining());
        assert_eq!(d.notify_reason(), "");
        let longest = format!("{}a", "\u{e9}".repeat(61));
        d.start(&DrainRequest {
            reason: Some(longest.clone()),
            ..DrainRequest::default()
        })
        .expect("123 bytes fit");
        assert_eq!(d.notify_reason(), longest);
    }

    #[test]
    fn bad_close_code_is_refused() {
        let d = drain();
        let err = d
            .start(&DrainRequest {
                close_code: Some(1006),
                ..DrainRequest::default()
            })
            .expect_err("1006 may not be sent");
        assert!(err.0.contains("1006"));
        assert!(!d.is_draining());
    }

    fn rebalance_request(id: &str, sessions: u64, spread: Duration) -> RebalanceRequest {
        RebalanceRequest {
            id: id.to_owned(),
            sessions,
            spread,
            close_code: None,
            reason: Some(format!("moving: {id}")),
            keep_moved_for: None,
        }
    }

    fn move_at(ticket: &SessionTicket) -> Option<Instant> {
        match ticket.rebalance_order()? {
            Order::MoveAt { at, .. } => Some(at),
            Order::Cut { .. } => None,
        }
    }

    #[tokio::test]
    async fn a_rebalance_moves_the_newest_never_moved_sessions_that_are_not_closing() {
        let d = drain();
        let old = d.open_session(0).expect("serving");
        let moved_before = d.open_session(1).expect("serving");
        let closing = d.open_session(0).expect("serving");
        closing.closing();
        let newest = d.open_session(0).expect("serving");
        let r = d
            .rebalance(&rebalance_request("r1", 2, Duration::from_secs(10)))
            .expect("starts");
        assert_eq!(
            (r.state, r.requested, r.selected, r.pending),
            (RebalanceState::Moving, 2, 2, 2)
        );
        let (first, second) = (move_at(&newest), move_at(&old));
        assert_eq!(
            second.zip(first).map(|(b, a)| b - a),
            Some(Duration::from_secs(5)),
            "the newest first, the next half the spread later"
        );
        assert_eq!(moved_before.rebalance_order(), None);
        assert_eq!(closing.rebalance_order(), None);
        assert_eq!(newest.rebalance_reason().as_deref(), Some("moving: r1"));
        assert_eq!(moved_before.rebalance_reason(), None, "the drain's");
        assert!(!d.is_draining(), "the gateway keeps serving");
        let _later = d.open_session(0).expect("and keeps accepting");
        newest.finish(CloseReason::Migrated);
        old.finish(CloseReason::ClientClose);
        let r = d.rebalance_report();
        assert_eq!(r.state, RebalanceState::Done);
        assert_eq!(
            (r.moved, r.closed_by_client, r.dropped, r.pending),
            (1, 1, 0, 0)
        );
        // The next one takes what is left, the session moved before last; the closing one never.
        let r = d
            .rebalance(&rebalance_request("r2", 5, Duration::ZERO))
            .expect("starts");
        assert_eq!(r.selected, 2, "{r:?}");
        assert!(move_at(&moved_before).is_some());
        moved_before.finish(CloseReason::Migrated);
        assert_eq!(d.rebalance_report().moved_again, 1);
        assert_eq!(d.series.sessions_moved_again.get(), 1);
    }

    #[tokio::test]
    async fn the_same_id_again_is_its_report_and_a_new_one_waits_for_it() {
        let d = drain();
        let _a = d.open_session(0).expect("serving");
        let first = d
            .rebalance(&rebalance_request("r1", 1, Duration::from_secs(1)))
            .expect("starts");
        let again = d
            .rebalance(&rebalance_request("r1", 7, Duration::ZERO))
            .expect("its report");
        assert_eq!(again, first);
        let err = d
            .rebalance(&rebalance_request("r2", 1, Duration::ZERO))
            .expect_err("r1 is moving");
        assert!(
            matches!(&err, Refused::Conflict(why) if why.contains("\"r1\" is still moving")),
            "{err:?}"
        );
        let err = d
            .rebalance(&rebalance_request("r3", 0, Duration::ZERO))
            .expect_err("invalid before anything else");
        assert!(matches!(err, Refused::Invalid(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_rebalance_keeping_moved_sessions_leaves_out_those_that_just_came_by_a_move() {
        let d = drain();
        let fresh = d.open_session(0).expect("serving");
        let just_moved = d.open_session(1).expect("serving");
        let keep = RebalanceRequest {
            keep_moved_for: Some(Duration::from_secs(600)),
            ..rebalance_request("r1", 2, Duration::ZERO)
        };
        let r = d.rebalance(&keep).expect("starts");
        assert_eq!(
            (r.requested, r.selected, r.kept_moved),
            (2, 1, 1),
            "only the session that never moved"
        );
        assert!(fresh.rebalance_order().is_some());
        assert_eq!(just_moved.rebalance_order(), None);
        fresh.finish(CloseReason::Migrated);
        let r = d
            .rebalance(&rebalance_request("r2", 2, Duration::ZERO))
            .expect("starts");
        assert_eq!(
            (r.selected, r.kept_moved),
            (1, 0),
            "without keepMovedFor, any session"
        );
        assert!(just_moved.rebalance_order().is_some());
    }

    #[tokio::test]
    async fn a_drain_takes_over_the_sessions_a_rebalance_has_left_and_counts_each_once() {
        let d = drain();
        let tickets: Vec<_> = (0..4)
            .map(|_| d.open_session(0).expect("serving"))
            .collect();
        d.rebalance(&rebalance_request("r1", 3, Duration::from_secs(30)))
            .expect("starts");
        let mut tickets = tickets.into_iter().rev();
        tickets
            .next()
            .expect("newest")
            .finish(CloseReason::Migrated);
        let started = d.start(&DrainRequest::default()).expect("drains");
        let r = d.rebalance_report();
        assert_eq!(
            (r.state, r.selected, r.moved, r.taken_by_drain, r.pending),
            (RebalanceState::Done, 3, 1, 2, 0)
        );
        assert_eq!(started.sessions_at_start, 3, "the three left, once");
        for t in tickets {
            assert_eq!(t.rebalance_order(), None, "the drain's now");
            assert_eq!(t.rebalance_reason(), None);
            t.finish(CloseReason::Migrated);
        }
        let drained = d.report();
        assert_eq!((drained.migrated, drained.active), (3, 0));
        assert_eq!(d.rebalance_report(), r, "not counted again");
        let err = d
            .rebalance(&rebalance_request("r2", 1, Duration::ZERO))
            .expect_err("drained");
        assert!(
            matches!(&err, Refused::Conflict(why) if why.starts_with("draining")),
            "{err:?}"
        );
        assert_eq!(
            d.rebalance(&rebalance_request("r1", 1, Duration::ZERO)),
            Ok(r),
            "its own id still reads its report"
        );
    }

    #[tokio::test]
    async fn a_rebalance_with_no_session_to_move_is_done_at_once() {
        let d = drain();
        let r = d
            .rebalance(&rebalance_request("r1", 3, Duration::ZERO))
            .expect("starts");
        assert_eq!((r.state, r.selected), (RebalanceState::Done, 0));
        assert!(r.finished_at.is_some());
    }
}
