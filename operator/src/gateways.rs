//! The gateways' drain reports, read on their own schedule rather than once per reconcile.
//!
//! [`poll`] runs beside the controller. Every [`TICK`] it looks at each LongConnService's pods
//! (from the caches) and reads `GET /drain` from the gateways that are due: every tick while a
//! pod drains, terminates or has not answered yet, every [`IDLE_EVERY`] otherwise. Each answer
//! lands in [`Reports`]; when it changes what a reconcile decides (a drain's progress, a
//! restart, a mass disconnect: `matters`), the LongConnService's reconcile is woken. A
//! reconcile reads the reports from here and never waits on a gateway.
//!
//! A pod asked to move sessions by a round of rebalancing is also read at `GET /rebalance`, with
//! its drain report, until its part of the round is recorded finished.
//!
//! A pod whose gateway stops answering keeps its last report here, marked stale: that is the
//! last known count of its open sessions, which a pod that vanishes without a final report is
//! taken to have lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use longconn_drain_api::{DrainReport, DrainState, RebalanceReport};
use tokio::sync::watch;
use tracing::debug;

use crate::crd::LongConnService;
use crate::observe;
use crate::reconcile::Context;

/// How often the poller looks for gateways that are due.
pub const TICK: Duration = Duration::from_secs(1);
/// How often a serving gateway with nothing in motion is read.
pub const IDLE_EVERY: Duration = Duration::from_secs(10);
/// How long one gateway may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Gateways read at once.
const CONCURRENCY: usize = 32;
/// A serving gateway that lost at least half its open sessions, and at least this many, since
/// the last read wakes the reconcile: its clients went at once (a network cut, a fleet of
/// clients restarting) and their reconnects are on their way, so a pod the operator stopped
/// for being full must take new sessions again now, not at the next scheduled reconcile (up to
/// `plan::SESSIONS_RECORD` later), or the reconnects all land on the pods that accept.
pub const MASS_DROP: u64 = 10;

/// Identifies one pod: namespace, name and uid (a pod recreated under the same name is another
/// pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What is known of one pod's gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// The last report read.
    pub report: DrainReport,
    /// The last read failed (the gateway is gone or not answering): `report` is the last known.
    pub stale: bool,
    /// When it was last asked.
    pub asked: Instant,
    /// When `report` was read, on the wall clock the reconciles plan with.
    pub read_at: Timestamp,
}

/// The latest report of every gateway, shared by the poller and the reconciler.
#[derive(Default)]
pub struct Reports {
    seen: Mutex<HashMap<PodKey, Seen>>,
    /// The last rebalance report of the pods a round asked to move sessions.
    rebalances: Mutex<HashMap<PodKey, RebalanceReport>>,
}

impl Reports {
    pub fn get(&self, key: &PodKey) -> Option<Seen> {
        self.seen.lock().ok()?.get(key).cloned()
    }

    /// The last rebalance report read from a pod's gateway.
    pub fn rebalance(&self, key: &PodKey) -> Option<RebalanceReport> {
        self.rebalances.lock().ok()?.get(key).cloned()
    }

    /// Stores a rebalance report; returns whether it says something new has finished.
    pub fn record_rebalance(&self, key: PodKey, report: RebalanceReport) -> bool {
        let Ok(mut all) = self.rebalances.lock() else {
            return false;
        };
        let finished = |r: Option<&RebalanceReport>| r.map(|r| (r.id.clone(), r.is_finished()));
        let changed = finished(all.get(&key)) != finished(Some(&report));
        let done = report.is_finished();
        all.insert(key, report);
        changed && done
    }

    /// Stores an answer (or a failure, `None`); returns whether a reconcile would see a change.
    pub fn record(&self, key: PodKey, report: Option<DrainReport>, now: Instant) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        match (seen.get_mut(&key), report) {
            (Some(old), Some(report)) if read_before(&report, &old.report) => {
                // Sent before the answer held (a poll on its way while `POST /drain`
                // answered): the one held is newer.
                old.asked = now;
                false
            }
            (Some(old), Some(report)) => {
                let changed = old.stale || matters(&old.report, &report);
                *old = Seen {
                    report,
                    stale: false,
                    asked: now,
                    read_at: Timestamp::now(),
                };
                changed
            }
            (Some(old), None) => {
                let changed = !old.stale;
                old.stale = true;
                old.asked = now;
                changed
            }
            (None, Some(report)) => {
                seen.insert(
                    key,
                    Seen {
                        report,
                        stale: false,
                        asked: now,
                        read_at: Timestamp::now(),
                    },
                );
                true
            }
            (None, None) => false,
        }
    }

    /// Forgets the pods that are not in `keep` (they are gone).
    pub fn retain(&self, keep: impl Fn(&PodKey) -> bool) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|k, _| keep(k));
        }
        if let Ok(mut rebalances) = self.rebalances.lock() {
            rebalances.retain(|k, _| keep(k));
        }
    }

    fn due(&self, key: &PodKey, fast: bool, now: Instant) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return true;
        };
        match seen.get(key) {
            None => true,
            Some(s) => {
                let every = if fast || s.stale || s.report.state != DrainState::Serving {
                    TICK
                } else {
                    IDLE_EVERY
                };
                now.duration_since(s.asked) + TICK / 2 >= every
            }
        }
    }
}

/// Whether `new` shows its gateway earlier than `old` does: within one gateway process (the same
/// `restarts`) a drain only goes forward (serving, draining, drained) and the sessions it moved
/// out only add up, so a report behind on either was read before `old`, although its answer came
/// after. A restart (more `restarts`) starts over.
fn read_before(new: &DrainReport, old: &DrainReport) -> bool {
    let progress = |r: &DrainReport| {
        let stage = match r.state {
            DrainState::Serving => 0,
            DrainState::Draining => 1,
            DrainState::Drained => 2,
        };
        (
            r.restarts,
            stage,
            r.migrated + r.closed_by_client + r.dropped,
        )
    };
    progress(new) < progress(old)
}

/// Whether a new report changes what a reconcile decides: anything while a drain runs, and
/// otherwise the drain state, the restarts, or a mass disconnect ([`MASS_DROP`]). The open
/// sessions of a serving gateway change all the time; they are recorded on the reconcile's own
/// schedule, and waking the reconcile for each change would keep postponing it (the controller
/// debounces triggers).
fn matters(old: &DrainReport, new: &DrainReport) -> bool {
    if new.state != DrainState::Serving || old.state != DrainState::Serving {
        return old != new;
    }
    let dropped = old.active.saturating_sub(new.active);
    old.restarts != new.restarts
        || old.lost_to_restarts != new.lost_to_restarts
        || (dropped >= MASS_DROP && new.active * 2 <= old.active)
}

/// One gateway to read.
struct Target {
    lcs: ObjectRef<LongConnService>,
    key: PodKey,
    addr: SocketAddr,
    token: String,
    /// Read its rebalance report too.
    rebalancing: bool,
}

/// Reads the gateways that are due, forever (until the task is dropped), once `listed` says
/// the LongConnServices' store holds its first list. Changes wake the LongConnService's
/// reconcile through `wake`.
///
/// `listed` rather than `services.wait_until_ready()`: a store's readiness wakes only one of
/// the tasks waiting for it, and the controller waits for the same store.
pub async fn poll(
    ctx: Arc<Context>,
    services: Store<LongConnService>,
    mut listed: watch::Receiver<bool>,
    wake: crate::cache::Triggers,
) {
    if listed.wait_for(|listed| *listed).await.is_err() {
        return;
    }
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        release_orphans(&ctx, &services).await;
        let now = Instant::now();
        let mut targets = Vec::new();
        let mut live = std::collections::HashSet::new();
        for lcs in services.state() {
            let Some(view) = observe::gateways(&ctx, &lcs) else {
                continue;
            };
            for pod in view.pods {
                live.insert(pod.key.clone());
                let Some(addr) = pod.admin else { continue };
                if ctx.reports.due(&pod.key, pod.fast, now) {
                    targets.push(Target {
                        lcs: ObjectRef::from_obj(lcs.as_ref()),
                        key: pod.key,
                        addr,
                        token: view.token.clone(),
                        rebalancing: pod.rebalancing,
                    });
                }
            }
        }
        ctx.reports.retain(|k| live.contains(k));
        let reads = futures::stream::iter(targets)
            .map(|t| async move {
                let addr = t.addr.to_string();
                let answer =
                    tokio::time::timeout(TIMEOUT, longconn_drain_api::report(&addr, &t.token))
                        .await
                        .ok()
                        .and_then(Result::ok);
                let rebalance = match t.rebalancing {
                    true => tokio::time::timeout(
                        TIMEOUT,
                        longconn_drain_api::rebalance_report(&addr, &t.token),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok),
                    false => None,
                };
                (t, answer, rebalance)
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut woken = std::collections::HashSet::new();
        for (target, answer, rebalance) in reads {
            let finished =
                rebalance.is_some_and(|r| ctx.reports.record_rebalance(target.key.clone(), r));
            let changed = ctx
                .reports
                .record(target.key.clone(), answer, Instant::now());
            if (changed || finished) && woken.insert(target.lcs.clone()) {
                debug!(pod = %target.key.name, lcs = %target.lcs.name, "gateway report changed");
                if wake.send(target.lcs).is_err() {
                    return;
                }
            }
        }
    }
}

/// Releases terminating pods whose LongConnService is gone: no one will record their reports,
/// and the finalizer must not keep them.
async fn release_orphans(ctx: &Context, services: &Store<LongConnService>) {
    for (pod, at) in ctx.caches.held_pods() {
        let Some(ns) = pod.namespace() else { continue };
        let owner = pod.labels().get(crate::labels::SERVICE).cloned();
        let alive = owner.is_some_and(|name| {
            services
                .get(&ObjectRef::new(&name).within(&ns))
                .is_some_and(|lcs| lcs.metadata.deletion_timestamp.is_none())
        });
        if !alive && let Err(e) = crate::reconcile::release(ctx, &ns, &pod.name_any(), at).await {
            tracing::warn!(error = %e, "cannot release a pod of a deleted LongConnService");
        }
    }
}

/// The key of a pod as [`Reports`] files it.
pub fn key_of(pod: &crate::cache::CachedPod) -> PodKey {
    PodKey {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: "u".into(),
        }
    }

    fn report(active: u64, state: DrainState) -> DrainReport {
        DrainReport {
            state,
            active,
            ..DrainReport::default()
        }
    }

    #[test]
    fn an_answer_read_before_the_report_held_does_not_replace_it() {
        let reports = Reports::default();
        let t0 = Instant::now();
        let drained = DrainReport {
            sessions_at_start: 5,
            migrated: 5,
            ..report(0, DrainState::Drained)
        };
        assert!(reports.record(key("a"), Some(drained.clone()), t0));
        // A poll sent just before `POST /drain` answered after it: the gateway then served.
        assert!(!reports.record(key("a"), Some(report(0, DrainState::Serving)), t0));
        let held = |name: &str| reports.get(&key(name)).map(|s| s.report);
        assert_eq!(held("a"), Some(drained.clone()));
        // Within a drain, an answer that moved fewer sessions out is older too.
        let halfway = DrainReport {
            sessions_at_start: 5,
            active: 3,
            migrated: 2,
            ..report(3, DrainState::Draining)
        };
        let further = DrainReport {
            active: 1,
            migrated: 4,
            ..halfway.clone()
        };
        assert!(reports.record(key("b"), Some(further.clone()), t0));
        assert!(!reports.record(key("b"), Some(halfway), t0));
        assert_eq!(held("b"), Some(further));
        // A restarted gateway serves anew: that is news, not an old answer.
        let restarted = DrainReport {
            restarts: 1,
            ..report(0, DrainState::Serving)
        };
        assert!(reports.record(key("a"), Some(restarted.clone()), t0));
        assert_eq!(held("a"), Some(restarted));
    }

    #[test]
    fn only_a_report_that_changes_a_decision_wakes_a_reconcile() {
        let reports = Reports::default();
        let t0 = Instant::now();
        assert!(reports.record(key("a"), Some(report(3, DrainState::Serving)), t0));
        assert!(!reports.record(key("a"), Some(report(3, DrainState::Serving)), t0));
        assert!(
            !reports.record(key("a"), Some(report(4, DrainState::Serving)), t0),
            "a serving gateway's session count is recorded on the reconcile's schedule"
        );
        assert!(reports.record(key("a"), Some(report(4, DrainState::Draining)), t0));
        assert!(
            reports.record(key("a"), Some(report(2, DrainState::Draining)), t0),
            "a drain's progress is followed"
        );
        let restarted = DrainReport {
            restarts: 1,
            lost_to_restarts: 2,
            ..report(0, DrainState::Serving)
        };
        assert!(reports.record(key("b"), Some(report(2, DrainState::Serving)), t0));
        assert!(reports.record(key("b"), Some(restarted), t0));
    }

    #[test]
    fn a_serving_gateway_that_loses_half_its_sessions_at_once_wakes_a_reconcile() {
        let reports = Reports::default();
        let t0 = Instant::now();
        let serving = |active| Some(report(active, DrainState::Serving));
        assert!(reports.record(key("a"), serving(120), t0));
        assert!(!reports.record(key("a"), serving(100), t0), "churn");
        assert!(
            reports.record(key("a"), serving(40), t0),
            "a mass disconnect"
        );
        assert!(reports.record(key("a"), serving(0), t0));
        assert!(
            !reports.record(key("a"), serving(30), t0),
            "clients coming back"
        );
        // A few sessions closing on a pod that holds few is no mass disconnect.
        assert!(reports.record(key("b"), serving(9), t0));
        assert!(!reports.record(key("b"), serving(0), t0));
    }

    #[test]
    fn a_gateway_that_stops_answering_keeps_its_last_count_marked_stale() {
        let reports = Reports::default();
        let t0 = Instant::now();
        reports.record(key("a"), Some(report(7, DrainState::Draining)), t0);
        assert!(reports.record(key("a"), None, t0));
        let seen = reports.get(&key("a")).expect("kept");
        assert!(seen.stale);
        assert_eq!(seen.report.active, 7);
        assert!(
            !reports.record(key("a"), None, t0),
            "still stale: no change"
        );
    }

    #[test]
    fn serving_gateways_are_read_every_ten_seconds_draining_ones_every_second() {
        let reports = Reports::default();
        let t0 = Instant::now();
        reports.record(key("idle"), Some(report(1, DrainState::Serving)), t0);
        reports.record(key("draining"), Some(report(1, DrainState::Draining)), t0);
        let later = t0 + TICK;
        assert!(!reports.due(&key("idle"), false, later));
        assert!(reports.due(&key("idle"), true, later), "a fast pod is due");
        assert!(reports.due(&key("draining"), false, later));
        assert!(reports.due(&key("idle"), false, t0 + IDLE_EVERY));
        assert!(reports.due(&key("never-read"), false, t0));
    }
}
