//! The drain-orchestrated rollout, as a pure state machine.
//!
//! [`step`] looks at what the cluster shows (each revision's Deployment, every pod with its
//! gateway's drain report, the previous `status.rollout` and `status.gateways`) and returns a
//! [`Plan`]: the replicas each revision's Deployment should have, the pods whose gateways to
//! drain, the pods to mark for removal, the new `status.rollout` and `status.gateways`,
//! conditions and Events. The reconciler records the plan, then performs it. Nothing is
//! remembered between steps except what the cluster and the status hold, so an operator that
//! restarts (or a new leader) picks the rollout up where it was, and counts exactly what the
//! previous one had not.
//!
//! A step is a pipeline of pure phases, in this order:
//! 1. [`restart_losses`]: what each gateway's restarts lost since the status last counted it
//!    (the gateway reports a running total, kept across its restarts).
//! 2. [`follow_drains`]: the drains under way; a finished report is added to the totals, a
//!    drain whose gateway restarted counts what it had left as dropped and starts over, a drain
//!    whose pod vanished or stopped answering past its deadline counts its last known sessions
//!    as dropped.
//! 3. [`adopt_external`]: drains the operator did not start (a terminating pod runs its
//!    preStop drain: eviction, node drain, `kubectl delete pod`), pods that vanished with
//!    sessions and no drain, and restarts outside any drain.
//! 4. [`budget`]: whether more was dropped than `maxDroppedSessions`, and then whether to pause
//!    or roll back (and to which revision); an abort ([`steps::ABORT`]) rolls back too, and so
//!    does the health gate ([`analysis`]) when the new revision of a staged rollout fails it.
//! 5. [`stage`]: the step of `spec.rollout.steps` in progress, moved past the steps that are
//!    done ([`steps`]): the most pods the new revision may have now, and whether a pause (a
//!    pause step, `spec.rollout.paused`) holds the rollout.
//! 6. [`replicas`]: the size of every revision's Deployment. The target revision grows to
//!    `replicas + maxSurge - (old pods still serving)`, at most `replicas` and at most the
//!    step's size; old pods being drained do not count, as terminating pods do not count
//!    against a Deployment's `maxSurge`. A drained pod leaves only once its finished report, its
//!    lowest `controller.kubernetes.io/pod-deletion-cost` and its not-Ready condition are all
//!    visible: the ReplicaSet then deletes exactly that pod. An old pod that never started (not
//!    running [`START_GRACE`] after its creation) has no gateway to drain and goes at once; a
//!    younger one is kept, since the cache may not show its start yet.
//! 7. [`pick`]: where new sessions go ([`placement`]: the `longconn.dev/accepting` label of
//!    every pod), the drains evicted pods hand over, and old pods to drain next, up to
//!    `maxConcurrentDrains` when set and only while the Ready pods left serving stay at
//!    `replicas` (with `maxSurge: 0`, at `replicas` less what the disruption budget allows, and
//!    at least one): not-Ready pods first, then the fewest sessions; only once the target
//!    revision's pods are all Ready and the routing has settled (the pod out of the Service,
//!    the receivers of its sessions in it); none while a pause holds the rollout, and no more
//!    old pods than a step lets go.
//! 8. [`record`]: the new `status.rollout` (phase, totals, the health gate's window and
//!    counts), `status.gateways`, the Progressing and SessionsPreserved verdicts, and the Events.
//!
//! The same path serves a decrease of `spec.replicas` (pods of the current revision above the
//! new count are drained; increases are immediate). When more sessions were dropped than
//! `maxDroppedSessions`, no further pod is drained: the rollout pauses, or rolls back to
//! `status.currentRevision` (whose Deployment grows back while the new revision's pods are
//! drained the same way).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_drain_api::{DrainReport, DrainState, RebalanceReport};

use crate::analysis;
use crate::crd::{
    AnalysisStatus, DrainingPod, DropBudgetAction, GatewayRecord, LongConnService, PauseCause,
    RebalanceStatus, RolloutPhase, RolloutStatus,
};
use crate::desired::ObservedRevision;
use crate::disruption;
use crate::placement;
use crate::rebalance;
use crate::steps::{self, Stage};

/// The annotation a ReplicaSet consults to choose which pods go first when it shrinks.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost given to drained pods: the lowest there is.
pub const LOWEST_COST: i32 = i32::MIN;
/// How long after its drain deadline a drain whose report cannot be read is given up on (its
/// last known sessions then count as dropped).
const REPORT_GRACE: SignedDuration = SignedDuration::from_secs(30);
/// The oldest session counts a drain or a round of rebalancing may start on: the gateways are
/// read every second while anything moves (and while a step waits for its routing to settle),
/// but the reconcile that first sees a pod terminating, or pods uneven, can run before the next
/// read, on counts up to ten seconds old.
pub const FRESH: SignedDuration = SignedDuration::from_secs(3);

pub const SESSIONS_PRESERVED: &str = "SessionsPreserved";

/// One pod of the LongConnService as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub revision: String,
    /// Phase Running with an IP: its gateway can be asked.
    pub running: bool,
    /// Condition Ready is True.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// The `controller.kubernetes.io/pod-deletion-cost` annotation.
    pub deletion_cost: Option<i32>,
    /// The gateway's `GET /drain` report, when it answers now.
    pub report: Option<DrainReport>,
    /// Open sessions in the last report read, even if the gateway no longer answers.
    pub last_known: Option<i64>,
    /// When `report` was read (unknown: as if just now).
    pub read_at: Option<Timestamp>,
    /// Carries the drain-report finalizer: the pod object stays until the operator releases it.
    pub held: bool,
    /// When the pod was created (unknown: as if just now).
    pub created: Option<Timestamp>,
    /// Its `longconn.dev/accepting` label: `Some(true)` while the client Service selects it,
    /// `None` when the label is missing (a pod made from an older template).
    pub accepting: Option<bool>,
    /// The client Service's EndpointSlices list it as ready: new connections reach it.
    pub routable: bool,
    /// When the operator last changed its `longconn.dev/accepting` label.
    pub routing_changed_at: Option<Timestamp>,
    /// The CPU its containers and sidecars request, in millicores; None when one requests none.
    pub cpu_requested: Option<f64>,
    /// Its gateway's last rebalance report, while it is read (its part of the last round of
    /// rebalancing not yet recorded finished).
    pub rebalance: Option<RebalanceReport>,
}

impl PodFacts {
    fn sessions(&self) -> i64 {
        self.report.as_ref().map_or(0, |r| count(r.active))
    }

    /// Not running although created more than [`START_GRACE`] ago: it has no gateway to drain
    /// and may go as it is. A younger pod not seen running yet may be running already (the
    /// cache shows a pod's start a moment after the ReplicaSet's controller sees it), and one
    /// that is would go with all its sessions, undrained.
    fn never_started(&self, now: Timestamp) -> bool {
        !self.running
            && self
                .created
                .is_some_and(|created| now.duration_since(created) >= START_GRACE)
    }
}

/// How long a pod may go unseen as running before it counts as never started.
pub const START_GRACE: SignedDuration = SignedDuration::from_secs(30);

/// Sessions lost because a pod's gateway process restarted (crashed, or was killed): the
/// sessions it had open, which its clients lost without a close handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLoss {
    pub pod: String,
    pub sessions: i64,
}

/// Everything [`step`] looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The LongConnService, with the status as last recorded.
    pub lcs: &'a LongConnService,
    /// The revision the spec asks for.
    pub update_revision: &'a str,
    /// Every revision's Deployment.
    pub revisions: &'a [ObservedRevision],
    pub pods: &'a [PodFacts],
    /// The client Service as observed.
    pub service: &'a placement::ServiceFacts,
    /// The update revision's Deployment reports ProgressDeadlineExceeded.
    pub update_stalled: bool,
    /// Record every gateway's open sessions now (they are refreshed on a coarse schedule, not
    /// at every change).
    pub refresh_sessions: bool,
    pub now: Timestamp,
}

impl Input<'_> {
    fn previous(&self) -> Option<&RolloutStatus> {
        self.lcs.status.as_ref().and_then(|s| s.rollout.as_ref())
    }

    fn records(&self) -> &[GatewayRecord] {
        self.lcs
            .status
            .as_ref()
            .map_or(&[], |s| s.gateways.as_slice())
    }

    fn record_of(&self, pod: &str) -> Option<&GatewayRecord> {
        self.records().iter().find(|r| r.pod == pod)
    }

    fn pod(&self, name: &str) -> Option<&PodFacts> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The freshest count of a pod's open sessions: its report, else the last one read, else
    /// what the status recorded.
    fn last_known(&self, pod: &PodFacts) -> i64 {
        pod.report
            .as_ref()
            .map(|r| count(r.active))
            .or(pod.last_known)
            .or_else(|| self.record_of(&pod.name).map(|r| r.sessions))
            .unwrap_or(0)
    }
}

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// An Event to record on the LongConnService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the reconciler should do, and what status should say.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The revision the pods converge on: the update revision, or a rollback's.
    pub target: String,
    /// Replicas of each revision's Deployment; a revision left out has no pod left and its
    /// Deployment is deleted.
    pub replicas: BTreeMap<String, i32>,
    /// Pods whose gateways are asked to drain (`POST /drain` is idempotent).
    pub drain: Vec<String>,
    /// Pods whose `longconn.dev/accepting` label changes: (pod, accepting).
    pub routing: Vec<(String, bool)>,
    /// The revision the client Service selects; None: every revision ([`placement::selects`]).
    pub selects: Option<String>,
    /// A drain waits for the routing to settle: look again within a second.
    pub routing_pending: bool,
    /// Pods to annotate with the lowest deletion cost.
    pub lowest_cost: Vec<String>,
    /// Pods whose accounting is recorded, terminating or given the lowest cost: their
    /// drain-report finalizer goes.
    pub release: Vec<String>,
    /// The new `status.rollout`.
    pub rollout: Option<RolloutStatus>,
    /// The new `status.gateways`.
    pub gateways: Vec<GatewayRecord>,
    /// The new `status.activeSessions`.
    pub active_sessions: i64,
    /// Replaces the Progressing condition the revisions alone would give.
    pub progressing: Option<Verdict>,
    pub sessions_preserved: Verdict,
    pub events: Vec<Note>,
    /// Drains started in this step (not counting repeated requests).
    pub started: usize,
    /// Drains that finished in this step.
    pub finished: Vec<DrainingPod>,
    /// Something is in motion: look again soon.
    pub active: bool,
    /// The rollout waits: for a person (drop budget spent, progress deadline exceeded, a pause
    /// step without a duration, `spec.rollout.paused`) or for a timed pause to end.
    pub paused: bool,
    /// When a timed pause ends: look again then.
    pub wake_at: Option<Timestamp>,
    /// The new `status.rebalance`.
    pub rebalance: Option<RebalanceStatus>,
    /// The round of rebalancing that starts in this step: each pod's gateway is asked to move
    /// that many sessions (`POST /rebalance`), once the round is recorded.
    pub rebalance_asks: Vec<rebalance::Ask>,
    /// Pods of the last round whose outcome this step records (for the metrics, once).
    pub rebalanced: Vec<crate::crd::RebalancedPod>,
}

/// Works out the next step. Pure: the same input gives the same plan.
pub fn step(input: &Input) -> Plan {
    let losses = restart_losses(input);
    let mut book = follow_drains(input, &losses);
    adopt_external(input, &losses, &mut book);
    let budget = budget(input, &book);
    let stage = stage(input, &book, &budget);
    let sizes = replicas(input, &book, &budget, &stage);
    pick(input, &budget, &sizes, &stage, &mut book);
    record(input, book, &budget, &sizes, &stage)
}

/// Phase 1: what each gateway's restarts lost since the status last counted it. The gateway
/// reports the running total of sessions its earlier processes had open when they ended; the
/// status keeps how much of it is counted already.
pub fn restart_losses(input: &Input) -> Vec<GatewayLoss> {
    input
        .pods
        .iter()
        .filter_map(|pod| {
            let report = pod.report.as_ref()?;
            let counted = input.record_of(&pod.name).map_or(0, |r| r.lost_counted);
            let sessions = count(report.lost_to_restarts) - counted;
            (sessions > 0).then(|| GatewayLoss {
                pod: pod.name.clone(),
                sessions,
            })
        })
        .collect()
}

/// The drains as they stand after a phase, and what the phases decided so far.
#[derive(Default)]
pub struct Book {
    /// The drains to list in `status.rollout.draining`.
    pub entries: Vec<DrainingPod>,
    pub tally: Tally,
    /// Pods to ask (again) to drain.
    pub drain: Vec<String>,
    pub lowest_cost: Vec<String>,
    /// Drained pods that may go now.
    pub removable: BTreeSet<String>,
    pub events: Vec<Note>,
    /// Restart losses already counted by a drain.
    pub losses_counted: BTreeSet<String>,
    /// Where new sessions go.
    pub routing: placement::Placement,
    /// A drain waits for the routing to settle (or for a receiver with room): look again soon.
    pub routing_pending: bool,
    /// A round of rebalancing starts: what each pod is asked to move.
    pub rebalance_asks: Vec<rebalance::Ask>,
    /// A round of rebalancing is under way: look again soon.
    pub rebalancing: bool,
    /// Pods the rebalancing counted (serving, staying): what a round it starts records.
    pub rebalance_serving: usize,
}

impl Book {
    fn tracked(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.pod == name)
    }

    /// Ends a drain whose gateway reports it finished: counted, with its Event.
    fn finish(&mut self, entry: &mut DrainingPod, now: Timestamp) {
        entry.finished_at = Some(Time(now));
        self.events.push(drained_note(entry, now));
        self.tally.add(entry);
    }
}

/// Phase 2: follows the drains under way; finishes those whose report says Drained.
pub fn follow_drains(input: &Input, losses: &[GatewayLoss]) -> Book {
    let now = input.now;
    let mut book = Book::default();
    for entry in input.previous().map_or(&[][..], |r| r.draining.as_slice()) {
        let pod = input.pod(&entry.pod);
        let mut entry = entry.clone();
        let report = pod.and_then(|p| p.report.as_ref());
        if entry.finished_at.is_some() {
            let Some(pod) = pod else { continue };
            let restarted = report.filter(|r| count(r.restarts) > entry.gateway_restarts);
            if restarted.is_some_and(|r| r.state == DrainState::Serving) {
                // Its gateway restarted after the drain and serves again: drain it anew (what
                // the first drain counted stays counted). The same process cannot serve again
                // after its drain: a report saying so was read before the drain.
                restart(&mut entry, report, now);
                book.drain.push(pod.name.clone());
            } else if pod.deletion_cost != Some(LOWEST_COST) {
                book.lowest_cost.push(pod.name.clone());
            } else if !pod.ready {
                // Only once it shows not Ready: a shrinking ReplicaSet removes not-Ready pods
                // before it looks at the cost, so a drained pod still shown Ready could let
                // another, undrained, not-Ready pod go in its place.
                book.removable.insert(pod.name.clone());
            }
            book.entries.push(entry);
            continue;
        }
        if let Some(report) = report.filter(|r| count(r.restarts) > entry.gateway_restarts) {
            // The gateway restarted mid-drain: what the drain's process had not moved is lost
            // (the new process's report counts it too: take the larger, never round down), and
            // the new process is drained from the start.
            let lost = losses
                .iter()
                .find(|l| l.pod == entry.pod)
                .map_or(0, |l| l.sessions);
            entry.active = entry.active.max(lost);
            book.losses_counted.insert(entry.pod.clone());
            book.events.push(lost_note(
                &entry,
                "GatewayRestarted",
                "restarted its gateway",
            ));
            book.tally.migrated += entry.migrated;
            book.tally.dropped += entry.dropped + entry.active;
            restart(&mut entry, Some(report), now);
            book.drain.push(entry.pod.clone());
            book.entries.push(entry);
            continue;
        }
        match (pod, report) {
            (None, _) => {
                book.events
                    .push(lost_note(&entry, "DrainReportLost", "disappeared"));
                lose(&mut entry, now);
                book.tally.add(&entry);
            }
            (Some(pod), Some(report)) => {
                // A drain's progress is recorded with the gateways' open sessions, on their
                // coarse schedule; its end at once. Between two records the entry's open
                // sessions can only be too high: a drained gateway takes no new session.
                if input.refresh_sessions || report.is_finished() {
                    copy_report(&mut entry, report);
                }
                if report.is_finished() {
                    book.finish(&mut entry, now);
                    book.lowest_cost.push(pod.name.clone());
                } else if report.state == DrainState::Serving && !pod.terminating {
                    // The request did not arrive: ask again. (A terminating pod whose gateway
                    // still serves has its hook waiting to hand the drain over: see `pick`.)
                    book.drain.push(pod.name.clone());
                }
                book.entries.push(entry);
            }
            (Some(pod), None) if overdue(&entry, input.lcs, now) => {
                book.events
                    .push(lost_note(&entry, "DrainReportLost", "did not answer"));
                lose(&mut entry, now);
                book.tally.add(&entry);
                book.lowest_cost.push(pod.name.clone());
                book.entries.push(entry);
            }
            (Some(_), None) => book.entries.push(entry),
        }
    }
    book
}

/// Phase 3: drains someone else started (a terminating pod runs its preStop drain), pods that
/// vanished with sessions and no drain, and gateways that restarted outside any drain.
pub fn adopt_external(input: &Input, losses: &[GatewayLoss], book: &mut Book) {
    let now = input.now;
    for pod in input.pods {
        let draining = pod
            .report
            .as_ref()
            .is_some_and(|r| r.state != DrainState::Serving);
        // A terminating pod with no report (its node is lost, its hook never ran) is followed
        // too: when it goes without a report, its last known sessions count as dropped.
        let going = pod.terminating && (pod.running || input.last_known(pod) > 0);
        if book.tracked(&pod.name) || !(draining || going) {
            continue;
        }
        let mut entry = new_entry(pod, input.last_known(pod), now);
        if let Some(report) = &pod.report {
            copy_report(&mut entry, report);
            if report.is_finished() {
                book.finish(&mut entry, now);
            }
        }
        book.tally.started_elsewhere = true;
        book.entries.push(entry);
    }

    // A pod the status recorded with open sessions that is gone, with no drain ever seen (the
    // operator was not running while it went): its sessions were lost.
    let was_tracked = |name: &str| {
        input
            .previous()
            .is_some_and(|r| r.draining.iter().any(|e| e.pod == name))
    };
    for record in input.records() {
        if record.sessions > 0 && input.pod(&record.pod).is_none() && !was_tracked(&record.pod) {
            book.tally.dropped += record.sessions;
            book.tally.vanished += 1;
            book.events.push(Note {
                warning: true,
                reason: "PodVanished",
                message: format!(
                    "pod {} went away without a drain report: its {} last recorded open \
                     sessions count as dropped",
                    record.pod, record.sessions
                ),
            });
        }
    }

    for loss in losses {
        if book.losses_counted.contains(&loss.pod) {
            continue;
        }
        book.tally.dropped += loss.sessions;
        book.tally.gateway_restarts += 1;
        book.events.push(Note {
            warning: true,
            reason: "GatewayRestarted",
            message: format!(
                "the gateway of pod {} restarted: the {} sessions it had open were lost \
                 (counted as dropped)",
                loss.pod, loss.sessions
            ),
        });
    }
}

/// Phase 4's answer: whether the drop budget is spent, and what then.
pub struct Budget<'a> {
    pub over: bool,
    pub rolling_back: bool,
    /// The revision a rollback returns to.
    pub rollback_to: Option<&'a str>,
    /// The revision the pods converge on: the update revision, or the rollback's.
    pub target: &'a str,
    /// The rollout record carried over from the last step (same revision, not complete).
    pub carried: Option<&'a RolloutStatus>,
    /// The rollback was asked for with the [`steps::ABORT`] annotation, or by the health gate.
    pub aborted: bool,
    /// The health gate's judgement in this step, while it judges ([`analysis`]).
    pub gate: Option<analysis::Judgement>,
    /// The signal the health gate failed, this step or before.
    pub gate_failed: Option<String>,
}

/// Phase 4: whether more was dropped than the budget allows, and then whether to pause or
/// roll back.
pub fn budget<'a>(input: &'a Input, book: &Book) -> Budget<'a> {
    let spec = &input.lcs.spec;
    let update = input.update_revision;
    let carried = input
        .previous()
        .filter(|r| r.revision == update && r.phase != RolloutPhase::Complete);
    let dropped_so_far = carried.map_or(0, |r| r.sessions_dropped) + book.tally.dropped;
    let over = dropped_so_far > spec.rollout.max_dropped_sessions;
    let rollback_to = input
        .lcs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .filter(|r| *r != update && input.revisions.iter().any(|o| o.revision == *r));
    let gate = gate(input, carried);
    let gate_failed = carried
        .and_then(|r| r.analysis.as_ref()?.failed.clone())
        .or_else(|| Some(gate.as_ref()?.failed?.as_str().to_owned()));
    let aborted =
        rollback_to.is_some() && (steps::aborted(input.lcs, update) || gate_failed.is_some());
    let rolling_back = match (carried, rollback_to) {
        (Some(r), Some(_)) if r.phase == RolloutPhase::RollingBack => true,
        (_, Some(_)) => {
            aborted || over && spec.rollout.on_drop_budget_exceeded == DropBudgetAction::Rollback
        }
        (_, None) => false,
    };
    let target = match rollback_to {
        Some(r) if rolling_back => r,
        _ => update,
    };
    Budget {
        over,
        rolling_back,
        rollback_to,
        target,
        carried,
        aborted,
        gate,
        gate_failed,
    }
}

/// The health gate's judgement of the rollout carried over, while it judges: a rollout with
/// steps whose window began ([`analysis::baseline`] recorded), not rolling back, with
/// `spec.rollout.analysis` set.
fn gate(input: &Input, carried: Option<&RolloutStatus>) -> Option<analysis::Judgement> {
    let spec = input.lcs.spec.rollout.analysis.as_ref()?;
    let carried = carried.filter(|r| r.phase != RolloutPhase::RollingBack)?;
    let window = carried.analysis.as_ref().filter(|a| a.failed.is_none())?;
    let update = input.update_revision;
    let (new, old): (Vec<&PodFacts>, Vec<&PodFacts>) =
        input.pods.iter().partition(|p| p.revision == update);
    Some(analysis::judge(
        spec,
        analysis::tally(new, &window.baseline),
        analysis::tally(old, &window.baseline),
    ))
}

/// Phase 5: the step of `spec.rollout.steps` in progress, and what holds the rollout
/// ([`steps`]). Steps apply to a rollout to a new revision, not to a rollback or a scale-down;
/// `spec.rollout.paused` holds any.
pub fn stage(input: &Input, book: &Book, budget: &Budget) -> Stage {
    let update = input.update_revision;
    let current = input
        .lcs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref());
    // A rollout is staged from its start (a new revision, not the first) to its end, whatever
    // the current revision shows meanwhile.
    let staged = !budget.rolling_back
        && budget.target == update
        && match budget.carried {
            Some(r) => r.step.is_some(),
            None => current.is_some_and(|c| c != update),
        };
    let staying = |p: &&PodFacts| !going(input, book, p) && !book.tracked(&p.name);
    let new = live(input, update);
    let progress = steps::Progress {
        new_serving: number(
            new.iter()
                .copied()
                .filter(staying)
                .filter(|p| p.ready)
                .count(),
        ),
        new_live: number(new.iter().filter(|p| !going(input, book, p)).count()),
        old_serving: number(
            input
                .pods
                .iter()
                .filter(|p| p.revision != update && !p.terminating)
                .filter(staying)
                .count(),
        ),
        draining: book
            .entries
            .iter()
            .filter(|e| e.finished_at.is_none())
            .count(),
    };
    let recorded = budget.carried.and_then(|r| {
        let step = usize::try_from(r.step?).unwrap_or(0);
        Some((step, r.step_started_at.as_ref().map(|t| t.0)))
    });
    Stage::of(input.lcs, update, staged, recorded, &progress, input.now)
}

/// Phase 6's answer: the size of every revision's Deployment, and what it took.
pub struct Sizes {
    pub replicas: BTreeMap<String, i32>,
    /// Pods the target revision should serve with now.
    pub target_want: i32,
    /// Pods of other revisions are left (or their Deployments are).
    pub old_left: bool,
    /// Revisions other than the target, sorted.
    pub others: Vec<String>,
    /// The floor of Ready serving pods while drains start.
    pub min_serving: i32,
    /// The pods of other revisions a step keeps serving: no more of them are drained.
    pub old_floor: Option<i32>,
}

fn live<'a>(input: &'a Input, revision: &str) -> Vec<&'a PodFacts> {
    input
        .pods
        .iter()
        .filter(|p| p.revision == revision && !p.terminating)
        .collect()
}

/// Whether the target revision's first pods are on their way: the rollout to it (the spec's
/// revision) began, or begins in this step, within [`START_GRACE`]; or one of its pods not yet
/// Ready was created within it. A rollback's target (another revision) counts by its pods only:
/// `status.rollout` still names the revision rolled back from.
fn receivers_coming(input: &Input, target: &str) -> bool {
    let recent =
        |at: Option<Timestamp>| at.is_none_or(|at| input.now.duration_since(at) < START_GRACE);
    let began = input
        .previous()
        .filter(|r| r.revision == target)
        .map(|r| r.started_at.as_ref().map(|t| t.0));
    (target == input.update_revision && began.is_none_or(recent))
        || live(input, target)
            .iter()
            .any(|p| !(p.running && p.ready) && recent(p.created))
}

/// A number of pods (or a step's index) as the API's `i32`.
fn number(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Pods on their way out: drained and marked, or never started (no gateway to drain).
fn going(input: &Input, book: &Book, pod: &PodFacts) -> bool {
    book.removable.contains(&pod.name) || pod.never_started(input.now)
}

/// Phase 6: the replicas of every revision.
pub fn replicas(input: &Input, book: &Book, budget: &Budget, stage: &Stage) -> Sizes {
    let spec = &input.lcs.spec;
    let want = spec.replicas;
    let target = budget.target;
    let surge = disruption::scaled(&spec.rollout.max_surge, want, true);
    // With no surge a pod must go before its replacement starts: as many as the disruption
    // budget allows, and at least one (or a single replica could never be replaced).
    let min_serving = if surge > 0 {
        want
    } else {
        (want - disruption::allowed_unavailable(input.lcs).max(1)).max(0)
    };
    let mut others: Vec<String> = input
        .revisions
        .iter()
        .map(|r| r.revision.clone())
        .chain(input.pods.iter().map(|p| p.revision.clone()))
        .filter(|r| r != target)
        .collect();
    others.sort_unstable();
    others.dedup();
    let mut replicas = BTreeMap::new();
    // Old pods still serving: being drained does not count, as a terminating pod does not count
    // against a Deployment's maxSurge; so the next new pod starts while the previous old one
    // drains, and drains follow each other without waiting for a pod to start.
    let mut old_serving = 0;
    let mut old_left = false;
    for revision in &others {
        let spec_replicas = input
            .revisions
            .iter()
            .find(|r| r.revision == *revision)
            .map_or(0, |r| r.replicas);
        let pods = live(input, revision);
        let keep =
            i32::try_from(pods.iter().filter(|p| !going(input, book, p)).count()).unwrap_or(0);
        let keep = keep.min(spec_replicas).max(0);
        let serving = pods
            .iter()
            .filter(|p| !going(input, book, p) && !book.tracked(&p.name))
            .count();
        old_serving += keep.min(i32::try_from(serving).unwrap_or(0));
        let any_pod = input.pods.iter().any(|p| p.revision == *revision);
        if keep > 0 || any_pod {
            replicas.insert(revision.clone(), keep);
            old_left = true;
        }
    }
    let target_want = (want + surge - old_serving)
        .clamp(0, want)
        .min(stage.cap.unwrap_or(want));
    let target_live = live(input, target);
    // The target's own drained pods (a scale-down, or what a rollback returns to) must go, and
    // must not hold the slots of the pods that replace them: grow past them first, then shrink
    // to what stays, which removes exactly them. Only once every pod that stays runs: a
    // shrinking ReplicaSet removes a pod not yet running before a drained one, so shrinking
    // earlier would remove the replacement and start the growth over, again and again.
    let (removable, staying): (Vec<&PodFacts>, Vec<&PodFacts>) = target_live
        .iter()
        .partition(|p| book.removable.contains(&p.name));
    let target_replicas = if number(staying.len()) < target_want {
        target_want + number(removable.len())
    } else if staying.iter().all(|p| p.running) {
        number(staying.len())
    } else {
        number(target_live.len())
    };
    replicas.insert(target.to_owned(), target_replicas);
    Sizes {
        replicas,
        target_want,
        old_left,
        others,
        min_serving,
        old_floor: stage.cap.map(|cap| want - cap),
    }
}

/// Whether the rollout stops here for a person: over budget with something left to move (a
/// record with nothing left, such as sessions lost by a restarted gateway outside any rollout,
/// is not paused: there is nothing to stop).
fn paused(budget: &Budget, sizes: &Sizes, book: &Book) -> bool {
    budget.over && !budget.rolling_back && (sizes.old_left || !book.entries.is_empty())
}

/// The drains that pods deleted by someone else (an eviction, a node drain) hand over: their
/// hook waits for the operator to start them, which it does once their sessions fit the
/// receivers, or once no other receiver is to come (the hook starts the drain itself if the
/// wait grows too long). Returns them, and whether some must wait for the routing.
fn hand_over(
    input: &Input,
    book: &Book,
    routing: &placement::Placement,
    fresh: bool,
) -> (Vec<String>, bool) {
    let waiting: Vec<String> = book
        .entries
        .iter()
        .filter(|e| e.finished_at.is_none())
        .filter_map(|e| input.pod(&e.pod))
        .filter(|p| {
            p.terminating
                && p.report
                    .as_ref()
                    .is_some_and(|r| r.state == DrainState::Serving)
        })
        .map(|p| p.name.clone())
        .collect();
    if waiting.is_empty() {
        return (waiting, false);
    }
    let more_coming = number(routing.receivers) < input.lcs.spec.replicas;
    if fresh
        && (routing.fits || !more_coming)
        && placement::all_settled(input.pods, input.service, routing, input.now)
    {
        (waiting, false)
    } else {
        (Vec::new(), true)
    }
}

/// Whether every gateway that answers was read within [`FRESH`]: where a drain's sessions go
/// is chosen by the counts, and no drain starts on old ones.
fn counts_fresh(input: &Input) -> bool {
    input.pods.iter().all(|p| {
        p.report.is_none()
            || p.read_at
                .is_none_or(|at| input.now.duration_since(at) <= FRESH)
    })
}

/// Phase 7: where new sessions go ([`placement`]), and the drains to start: within the
/// concurrency limit and the serving floor, once the target revision's pods are all Ready and
/// the routing has settled (the pod is out of the Service, and the pods its sessions will land
/// on, those with the most room, are in it). Drains are paced by the receivers: with a surge,
/// each new pod that gets Ready lets one more old pod go, and that pod's sessions go to it.
pub fn pick(input: &Input, budget: &Budget, sizes: &Sizes, stage: &Stage, book: &mut Book) {
    let spec = &input.lcs.spec;
    let want = spec.replicas;
    let settled = |p: &PodFacts| p.running && !going(input, book, p) && !book.tracked(&p.name);
    let target_serving: Vec<&PodFacts> = live(input, budget.target)
        .into_iter()
        .filter(|p| settled(p))
        .collect();
    let excess = target_serving
        .len()
        .saturating_sub(usize::try_from(want).unwrap_or(0));
    let mut by_cost = target_serving.clone();
    by_cost.sort_by_key(|p| drain_order(p, budget.target));
    let excess: Vec<&PodFacts> = by_cost.into_iter().take(excess).collect();
    let excess_names: BTreeSet<String> = excess.iter().map(|p| p.name.clone()).collect();
    let leaving: BTreeSet<String> = input
        .pods
        .iter()
        .filter(|p| book.tracked(&p.name) || going(input, book, p))
        .map(|p| p.name.clone())
        .collect();
    let sessions: BTreeMap<String, i64> = input
        .pods
        .iter()
        .map(|p| (p.name.clone(), input.last_known(p)))
        .collect();
    let view = placement::View {
        pods: input.pods,
        service: input.service,
        target: budget.target,
        replicas: want,
        leaving: &leaving,
        excess: &excess_names,
        sessions: &sessions,
        rolling: sizes.old_left,
        receivers_coming: sizes.old_left && receivers_coming(input, budget.target),
        rebalancing: false,
    };
    // Sessions on their way: what the drains under way have not moved yet.
    let mut incoming: i64 = book
        .entries
        .iter()
        .filter(|e| e.finished_at.is_none())
        .map(|e| input.pod(&e.pod).map_or(e.active, |p| input.last_known(p)))
        .sum();
    let mut routing = placement::place(&view, incoming);
    let fresh = counts_fresh(input);
    let (handed_over, mut pending) = hand_over(input, book, &routing, fresh);
    let unfinished = book
        .entries
        .iter()
        .filter(|e| e.finished_at.is_none())
        .count();
    let mut slots = spec
        .rollout
        .max_concurrent_drains
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(1))
        .saturating_sub(unfinished);
    let serving = input
        .pods
        .iter()
        .filter(|p| p.ready && !p.terminating && !book.tracked(&p.name))
        .count();
    let mut spare = i64::try_from(serving).unwrap_or(0) - i64::from(sizes.min_serving);
    // Pods of the target revision on their way to Ready: receivers to come.
    let starting = live(input, budget.target)
        .iter()
        .any(|p| !(p.running && p.ready));
    let target_ready = target_serving.iter().all(|p| p.ready)
        && i32::try_from(target_serving.len()).unwrap_or(0) >= sizes.target_want;
    let mut candidates: Vec<&PodFacts> = Vec::new();
    if target_ready {
        for revision in &sizes.others {
            candidates.extend(live(input, revision).into_iter().filter(|p| settled(p)));
        }
    }
    // A step keeps its share of old pods serving.
    let mut old_room = sizes.old_floor.map_or(usize::MAX, |floor| {
        candidates
            .len()
            .saturating_sub(usize::try_from(floor).unwrap_or(0))
    });
    candidates.extend(excess);
    candidates.sort_by_key(|p| drain_order(p, budget.target));
    if paused(budget, sizes, book) || stage.held.is_some() {
        candidates.clear();
    }
    let mut picked = Vec::new();
    for pod in candidates {
        if slots == 0 {
            break;
        }
        if pod.ready && spare <= 0 {
            continue;
        }
        let old = pod.revision != budget.target;
        if old && old_room == 0 {
            continue;
        }
        let sessions = input.last_known(pod);
        // The labels move towards what this drain needs, whether it starts now or later: the
        // pod out of the Service, and receivers with room for its sessions in it.
        let mut leaving = leaving.clone();
        leaving.insert(pod.name.clone());
        let with_pod = placement::View {
            leaving: &leaving,
            ..view
        };
        let wanted = placement::place(&with_pod, incoming + sessions);
        if !wanted.fits && (incoming > 0 || starting) {
            // More than the receivers have room for: wait for the sessions on their way to
            // land, or for the receivers starting, rather than fill a receiver past its share.
            pending = true;
            break;
        }
        let routed = placement::all_settled(input.pods, input.service, &wanted, input.now);
        routing = wanted;
        if !routed || !fresh {
            pending = true;
            break;
        }
        if pod.ready {
            spare -= 1;
        }
        if old {
            old_room -= 1;
        }
        slots -= 1;
        incoming += sessions;
        picked.push(new_entry(pod, pod.sessions(), input.now));
    }
    // Once nothing else moves, the sessions of the busiest pods may move to the emptiest.
    let quiet = picked.is_empty()
        && !pending
        && handed_over.is_empty()
        && unfinished == 0
        && target_ready
        && excess_names.is_empty()
        && !sizes.old_left
        && stage.held.is_none()
        && !paused(budget, sizes, book);
    if quiet && let Some(settings) = rebalance_settings(input) {
        let counted: BTreeMap<String, i64> = target_serving
            .iter()
            .map(|p| (p.name.clone(), input.last_known(p)))
            .collect();
        book.rebalance_serving = counted.len();
        (routing, book.rebalance_asks, book.rebalancing) =
            rebalance_step(input, &view, &settings, &counted, routing);
        pending |= book.rebalancing && book.rebalance_asks.is_empty();
    }
    book.routing = routing;
    book.routing_pending = pending;
    book.drain.extend(handed_over);
    for entry in picked {
        book.drain.push(entry.pod.clone());
        book.entries.push(entry);
        book.tally.started += 1;
    }
}

/// The rebalancing's settings, while it is on (it lives under `spec.autoscaling`).
fn rebalance_settings(input: &Input) -> Option<rebalance::Settings> {
    let spec = input.lcs.spec.autoscaling.as_ref()?;
    rebalance::Settings::of(&spec.rebalance)
}

/// Phase 7, once nothing else moves: the [`rebalance`] of sessions among the pods `counted`
/// (the target revision's, all Ready and staying). Returns the routing, the round to start (if
/// its routing has settled), and whether a round is under way or waits for its routing.
fn rebalance_step(
    input: &Input,
    view: &placement::View,
    settings: &rebalance::Settings,
    counted: &BTreeMap<String, i64>,
    routing: placement::Placement,
) -> (placement::Placement, Vec<rebalance::Ask>, bool) {
    let last = input.lcs.status.as_ref().and_then(|s| s.rebalance.as_ref());
    // The pods that give sessions take none while they do, whatever room the others have.
    let giving = |names: Vec<&String>| {
        let mut leaving = view.leaving.clone();
        leaving.extend(names.into_iter().cloned());
        leaving
    };
    let flying = rebalance::incoming(last, settings, input.now, |p| {
        input.pod(p).map(|p| input.last_known(p))
    });
    if let Some(round) = last.filter(|_| flying > 0) {
        // The round under way: its sessions go to the receivers with the most room.
        let leaving = giving(round.pods.iter().map(|p| &p.pod).collect());
        let view = placement::View {
            leaving: &leaving,
            rebalancing: true,
            ..*view
        };
        return (placement::place(&view, flying), Vec::new(), true);
    }
    let scale_ahead = input
        .lcs
        .spec
        .autoscaling
        .as_ref()
        .is_some_and(|a| rebalance::scale_ahead(counted, a));
    if scale_ahead || !rebalance::due(last, settings, input.now, counted.len()) {
        return (routing, Vec::new(), false);
    }
    let asks = rebalance::asks(counted, settings.threshold_percent);
    if asks.is_empty() {
        return (routing, Vec::new(), false);
    }
    let moving = asks.iter().map(|a| a.sessions).sum();
    let leaving = giving(asks.iter().map(|a| &a.pod).collect());
    let view = placement::View {
        leaving: &leaving,
        rebalancing: true,
        ..*view
    };
    let wanted = placement::place(&view, moving);
    // Like a drain, a round starts on counts read within FRESH: what each pod is asked, and
    // where its sessions land, are chosen by them.
    if placement::all_settled(input.pods, input.service, &wanted, input.now) && counts_fresh(input)
    {
        (wanted, asks, true)
    } else {
        (wanted, Vec::new(), true)
    }
}

/// Phase 8: the rollout record, the gateways' records, the verdicts and the Events.
pub fn record(
    input: &Input,
    mut book: Book,
    budget: &Budget,
    sizes: &Sizes,
    stage: &Stage,
) -> Plan {
    let lcs = input.lcs;
    let spec = &lcs.spec;
    let now = input.now;
    let update = input.update_revision;
    let want = spec.replicas;
    let previous = input.previous();
    let paused = paused(budget, sizes, &book);
    let in_motion = sizes.old_left
        || !book.entries.is_empty()
        || book.tally.started > 0
        || book.tally.gateway_restarts > 0
        || book.tally.vanished > 0;
    let mut rollout = match budget.carried {
        Some(r) => Some(r.clone()),
        None if in_motion => {
            book.events
                .push(started_note(lcs, update, want, &book.tally));
            Some(RolloutStatus {
                revision: update.to_owned(),
                phase: RolloutPhase::Surging,
                started_at: Some(Time(now)),
                ..RolloutStatus::default()
            })
        }
        None => previous.cloned(),
    };
    let target_live = live(input, budget.target);
    let mut progressing = None;
    if let Some(r) = rollout.as_mut()
        && (budget.carried.is_some() || in_motion)
    {
        r.draining = std::mem::take(&mut book.entries);
        r.pods_drained += book.tally.pods;
        r.sessions_migrated += book.tally.migrated;
        r.sessions_dropped += book.tally.dropped;
        r.sessions_moved_again += book.tally.moved_again;
        r.attempts_refused += book.tally.refused;
        let was = r.phase;
        let draining = r.draining.iter().any(|e| e.finished_at.is_none());
        let steps_done = stage.step.is_none_or(|i| i >= spec.rollout.steps.len());
        let target_done = target_live.len() == usize::try_from(want).unwrap_or(0)
            && target_live.iter().all(|p| p.ready)
            && !sizes.old_left
            && r.draining.is_empty()
            && steps_done;
        gate_record(input, budget, stage, r);
        let step_changed = r.step != stage.step.map(number);
        r.step = stage.step.map(number);
        r.step_started_at = stage.started_at.map(Time);
        r.phase = if budget.rolling_back {
            RolloutPhase::RollingBack
        } else if paused || input.update_stalled {
            RolloutPhase::Paused
        } else if draining {
            RolloutPhase::Draining
        } else if !r.draining.is_empty() {
            RolloutPhase::Removing
        } else if stage.held.is_some() {
            RolloutPhase::Paused
        } else if target_done {
            RolloutPhase::Complete
        } else {
            RolloutPhase::Surging
        };
        if target_done && r.finished_at.is_none() {
            r.finished_at = Some(Time(now));
            r.balance = balance(input, &target_live);
            if !budget.rolling_back {
                book.events.push(Note {
                    warning: false,
                    reason: "RolloutComplete",
                    message: preserved_words(r),
                });
            }
        }
        if r.phase != RolloutPhase::Complete && !target_done {
            r.finished_at = None;
        }
        r.paused_by = stage.held.filter(|_| r.phase == RolloutPhase::Paused);
        if step_changed && let Some(i) = stage.step {
            book.events.push(step_note(lcs, update, i, stage));
        }
        if budget.aborted && was != r.phase && budget.rolling_back {
            book.events.push(Note {
                warning: true,
                reason: "RolloutAborted",
                message: format!(
                    "revision {update} aborted ({}); rolling back to revision {}",
                    abort_cause(r),
                    budget.rollback_to.unwrap_or_default()
                ),
            });
        } else if budget.over && was != r.phase && (paused || budget.rolling_back) {
            book.events.push(Note {
                warning: true,
                reason: "DropBudgetExceeded",
                message: budget_words(r, spec.rollout.max_dropped_sessions, budget.rollback_to),
            });
        }
        progressing = progressing_verdict(input, budget, paused, target_done, r, stage);
    }

    let sessions_preserved = match &rollout {
        None => Verdict {
            status: true,
            reason: "NoDrains",
            message: "no pod has been drained yet".to_owned(),
        },
        Some(r) if r.sessions_dropped == 0 => Verdict {
            status: true,
            reason: "NoSessionsDropped",
            message: preserved_words(r),
        },
        Some(r) => Verdict {
            status: false,
            reason: "SessionsDropped",
            message: preserved_words(r),
        },
    };
    let active = in_motion
        || rollout.as_ref().is_some_and(|r| {
            matches!(
                r.phase,
                RolloutPhase::Surging
                    | RolloutPhase::Draining
                    | RolloutPhase::Removing
                    | RolloutPhase::RollingBack
            ) && r.finished_at.is_none()
        });
    let finished = rollout
        .as_ref()
        .map(|r| {
            r.draining
                .iter()
                .filter(|e| e.finished_at == Some(Time(now)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let (gateways, active_sessions) = gateway_records(input);
    let last_round = lcs.status.as_ref().and_then(|s| s.rebalance.as_ref());
    // The last round's pods that finished are recorded before a new round replaces them.
    let (followed, rebalanced) = match last_round {
        Some(round) => {
            let (round, finished) = rebalance::follow(round, |pod| {
                input.pod(pod).and_then(|p| p.rebalance.clone())
            });
            (Some(round), finished)
        }
        None => (None, Vec::new()),
    };
    if let Some(round) = &followed {
        let kept = rebalanced
            .iter()
            .filter_map(|pod| kept_note(round.round, pod));
        book.events.extend(kept);
    }
    let rebalance = if book.rebalance_asks.is_empty() {
        followed
    } else {
        let round = rebalance::start(
            followed.as_ref(),
            &book.rebalance_asks,
            book.rebalance_serving,
            now,
        );
        book.events.push(rebalance_note(&round));
        Some(round)
    };
    let unfinished = |name: &str| {
        rollout.as_ref().is_some_and(|r| {
            r.draining
                .iter()
                .any(|e| e.pod == name && e.finished_at.is_none())
        })
    };
    book.drain.sort_unstable();
    book.drain.dedup();
    book.lowest_cost.sort_unstable();
    book.lowest_cost.dedup();
    // Pods whose accounting is recorded: terminating ones, and drained ones given the lowest
    // cost (released with the same patch, before their ReplicaSet deletes them).
    let release = input
        .pods
        .iter()
        .filter(|p| p.held && !unfinished(&p.name))
        .filter(|p| p.terminating || book.lowest_cost.binary_search(&p.name).is_ok())
        .map(|p| p.name.clone())
        .collect();
    let routing = placement::changes(input.pods, &book.routing);
    let held = rollout
        .as_ref()
        .is_some_and(|r| r.phase == RolloutPhase::Paused && r.paused_by.is_some());
    Plan {
        target: budget.target.to_owned(),
        replicas: sizes.replicas.clone(),
        routing,
        selects: book.routing.selected.clone(),
        routing_pending: book.routing_pending,
        drain: book.drain,
        lowest_cost: book.lowest_cost,
        release,
        rollout,
        gateways,
        active_sessions,
        progressing,
        sessions_preserved,
        events: book.events,
        started: book.tally.started,
        finished,
        active: active || book.rebalancing,
        paused: paused || input.update_stalled || held,
        wake_at: stage.until.filter(|_| held),
        rebalance,
        rebalance_asks: book.rebalance_asks,
        rebalanced,
    }
}

fn progressing_verdict(
    input: &Input,
    budget: &Budget,
    paused: bool,
    done: bool,
    r: &RolloutStatus,
    stage: &Stage,
) -> Option<Verdict> {
    let update = input.update_revision;
    let limit = input.lcs.spec.rollout.max_dropped_sessions;
    if budget.rolling_back && budget.aborted {
        let to = budget.rollback_to.unwrap_or_default();
        let failed = budget.gate_failed.is_some();
        Some(Verdict {
            status: !done,
            reason: match (done, failed) {
                (false, _) => "RollingBack",
                (true, true) => "AnalysisFailed",
                (true, false) => "Aborted",
            },
            message: format!(
                "revision {update} was aborted ({}); {} revision {to}. Change the spec to try \
                 again",
                abort_cause(r),
                if done {
                    "rolled back to"
                } else {
                    "rolling back to"
                }
            ),
        })
    } else if budget.rolling_back {
        let to = budget.rollback_to.unwrap_or_default();
        Some(if done {
            Verdict {
                status: false,
                reason: "RolledBack",
                message: format!(
                    "revision {update} dropped {} sessions, more than \
                     spec.rollout.maxDroppedSessions ({limit}); rolled back to revision {to}. \
                     Change the spec to try again",
                    r.sessions_dropped
                ),
            }
        } else {
            Verdict {
                status: true,
                reason: "RollingBack",
                message: budget_words(r, limit, budget.rollback_to),
            }
        })
    } else if paused {
        Some(Verdict {
            status: false,
            reason: "DropBudgetExceeded",
            message: budget_words(r, limit, None),
        })
    } else if r.phase == RolloutPhase::Paused {
        held_verdict(input.lcs, update, stage)
    } else {
        None
    }
}

/// Progressing while a pause holds the rollout: True while a timed pause runs out by itself,
/// False while it waits for a person.
/// Why a rollout was aborted, in words: the health gate's failed signal, or the annotation.
fn abort_cause(r: &RolloutStatus) -> String {
    match r.analysis.as_ref().filter(|a| a.failed.is_some()) {
        Some(a) => format!(
            "the health gate failed on {}: {}",
            a.failed.as_deref().unwrap_or_default(),
            a.message
        ),
        None => format!("{} annotation", steps::ABORT),
    }
}

/// Records the health gate: the window's start when a rollout with steps begins (or the gate
/// is turned on during one), then each judgement; the failed signal once the gate aborts.
fn gate_record(input: &Input, budget: &Budget, stage: &Stage, r: &mut RolloutStatus) {
    if input.lcs.spec.rollout.analysis.is_none() {
        return;
    }
    if r.analysis.is_none() && stage.step.is_some() && !budget.rolling_back {
        r.analysis = Some(AnalysisStatus {
            since: Some(Time(input.now)),
            baseline: analysis::baseline(input.pods),
            message: "the window begins".to_owned(),
            ..AnalysisStatus::default()
        });
    }
    if let (Some(a), Some(judged)) = (r.analysis.as_mut(), &budget.gate) {
        a.update = judged.update;
        a.stable = judged.stable;
        a.message.clone_from(&judged.message);
        if budget.rolling_back && a.failed.is_none() {
            a.failed = judged.failed.map(|s| s.as_str().to_owned());
        }
    }
}

fn held_verdict(lcs: &LongConnService, update: &str, stage: &Stage) -> Option<Verdict> {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let step = stage.step.map(|i| Stage::describe(lcs, i));
    Some(match (stage.held?, stage.until) {
        (PauseCause::Spec, _) => Verdict {
            status: false,
            reason: "RolloutPaused",
            message: format!(
                "spec.rollout.paused holds revision {update}: no drain starts until it is \
                 cleared (kubectl longconn resume {name})"
            ),
        },
        (PauseCause::Step, Some(until)) => Verdict {
            status: true,
            reason: "StepPaused",
            message: format!(
                "revision {update}, {}; it goes on at {until}",
                step.unwrap_or_default()
            ),
        },
        (PauseCause::Step, None) => Verdict {
            status: false,
            reason: "WaitingForPromotion",
            message: format!(
                "revision {update}, {}: promote it with kubectl longconn promote {name}",
                step.unwrap_or_default()
            ),
        },
    })
}

/// The Event of a step that begins (or of every step done).
fn step_note(lcs: &LongConnService, update: &str, index: usize, stage: &Stage) -> Note {
    let steps = lcs.spec.rollout.steps.len();
    let message = if index >= steps {
        format!("revision {update}: every step of {steps} done; the rollout goes on to the end")
    } else {
        let waits = match (stage.held, stage.until) {
            (Some(PauseCause::Step), Some(until)) => format!(" (until {until})"),
            _ => String::new(),
        };
        format!("revision {update}, {}{waits}", Stage::describe(lcs, index))
    };
    Note {
        warning: false,
        reason: "RolloutStep",
        message,
    }
}

/// The new `status.gateways` and `status.activeSessions` (their sum). What restarts lost is
/// recorded as soon as a report shows it (it decides what is counted); open sessions only when
/// `refresh_sessions` says so, and for pods recorded for the first time.
fn gateway_records(input: &Input) -> (Vec<GatewayRecord>, i64) {
    let mut records = Vec::new();
    for pod in input.pods {
        let old = input.record_of(&pod.name);
        let lost_counted = match (&pod.report, old) {
            (Some(report), _) => count(report.lost_to_restarts),
            (None, Some(old)) => old.lost_counted,
            (None, None) => 0,
        };
        let known = pod
            .report
            .as_ref()
            .map(|r| count(r.active))
            .or(pod.last_known);
        let sessions = match (old, known) {
            (Some(old), _) if !input.refresh_sessions => old.sessions,
            (Some(old), None) => old.sessions,
            (_, known) => known.unwrap_or(0),
        };
        if old.is_none() && sessions == 0 && lost_counted == 0 {
            continue;
        }
        records.push(GatewayRecord {
            pod: pod.name.clone(),
            lost_counted,
            sessions,
        });
    }
    records.sort_by(|a, b| a.pod.cmp(&b.pod));
    // What the records say, so that `activeSessions` and the pods' counts always agree.
    let active = records
        .iter()
        .map(|r| r.sessions)
        .fold(0, i64::saturating_add);
    (records, active)
}

/// Sums of the drains finished in one step.
#[derive(Default)]
pub struct Tally {
    pods: i32,
    migrated: i64,
    dropped: i64,
    moved_again: i64,
    refused: i64,
    started: usize,
    started_elsewhere: bool,
    gateway_restarts: usize,
    vanished: usize,
}

impl Tally {
    fn add(&mut self, entry: &DrainingPod) {
        self.pods += 1;
        self.migrated += entry.migrated;
        self.dropped += entry.dropped;
        self.moved_again += entry.moved_again;
        self.refused += entry.refused;
    }
}

/// The busiest pod's open sessions over the mean per pod, with two decimals; none without
/// sessions.
fn balance(input: &Input, pods: &[&PodFacts]) -> Option<String> {
    let counts: Vec<i64> = pods.iter().map(|p| input.last_known(p)).collect();
    let total: i64 = counts.iter().sum();
    let most = counts.iter().copied().max()?;
    (total > 0).then(|| {
        let mean = total as f64 / counts.len() as f64;
        format!("{:.2}", most as f64 / mean)
    })
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A drain that starts now, of a pod with `sessions` open.
fn new_entry(pod: &PodFacts, sessions: i64, now: Timestamp) -> DrainingPod {
    DrainingPod {
        pod: pod.name.clone(),
        revision: pod.revision.clone(),
        started_at: Some(Time(now)),
        sessions_at_start: sessions,
        gateway_restarts: pod.report.as_ref().map_or(0, |r| count(r.restarts)),
        active: sessions,
        ..DrainingPod::default()
    }
}

/// Copies a gateway's report into the entry. A report of a drain that has not started yet
/// (state Serving) only updates the open sessions.
fn copy_report(entry: &mut DrainingPod, report: &DrainReport) {
    entry.active = count(report.active);
    if report.state == DrainState::Serving {
        entry.sessions_at_start = entry.active;
        return;
    }
    entry.sessions_at_start = count(report.sessions_at_start);
    entry.migrated = count(report.migrated);
    entry.closed_by_client = count(report.closed_by_client);
    entry.dropped = count(report.dropped);
    entry.moved_again = count(report.moved_again);
    entry.refused = count(report.refused);
}

/// Starts an entry over for a gateway that serves again (its process as `report` shows it);
/// its earlier numbers are already counted.
fn restart(entry: &mut DrainingPod, report: Option<&DrainReport>, now: Timestamp) {
    *entry = DrainingPod {
        pod: std::mem::take(&mut entry.pod),
        revision: std::mem::take(&mut entry.revision),
        started_at: Some(Time(now)),
        gateway_restarts: report.map_or(entry.gateway_restarts, |r| count(r.restarts)),
        ..DrainingPod::default()
    };
}

/// Finishes a drain whose report is lost: its last known open sessions count as dropped.
fn lose(entry: &mut DrainingPod, now: Timestamp) {
    entry.dropped += entry.active;
    entry.active = 0;
    entry.finished_at = Some(Time(now));
}

/// Whether a drain whose gateway does not answer has outlived its deadline.
fn overdue(entry: &DrainingPod, lcs: &LongConnService, now: Timestamp) -> bool {
    let timeout = lcs
        .spec
        .drain
        .timeout
        .to_std()
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(SignedDuration::from_mins(5));
    entry
        .started_at
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0) > timeout + REPORT_GRACE)
}

/// Not-Ready pods first (a shrinking ReplicaSet removes them first anyway), then, among the
/// `target` revision's pods (a scale-down's), those already taken out of the Service, then the
/// fewest sessions, then by name so the choice is stable.
///
/// A pod of the target revision out of the Service was chosen before (as a scale-down's excess,
/// or because it was full): it has taken no moved session since, so it goes before a pod that
/// may have. Without this, a choice made on session counts that then change (the gateways are
/// read on a coarse schedule; moved sessions land) could flip, and a pod that received moved
/// sessions would be drained next, moving them again. Pods of other revisions are all drained
/// in this rollout whatever their label, so they go by their sessions alone: the fewest first,
/// whose sessions fit the first receivers. A full pod out of the Service first would send its
/// sessions to a single receiver when the new revision has only one, and that receiver would
/// hold them for good (they move once).
fn drain_order(pod: &PodFacts, target: &str) -> (bool, bool, i64, String) {
    (
        pod.ready,
        pod.revision == target && pod.accepting != Some(false),
        pod.sessions(),
        pod.name.clone(),
    )
}

fn rebalance_note(round: &RebalanceStatus) -> Note {
    let pods: Vec<String> = round
        .pods
        .iter()
        .map(|p| format!("{} moves {}", p.pod, p.sessions))
        .collect();
    Note {
        warning: false,
        reason: "Rebalancing",
        message: format!(
            "round {}: the busiest pods hand sessions to the pods with room: {}",
            round.round,
            pods.join(", ")
        ),
    }
}

/// When `pod` of round `round` kept sessions of its ask because they came to it by a move less
/// than [`rebalance::KEEP_MOVED_FOR`] ago: the Event that says so.
fn kept_note(round: u32, pod: &crate::crd::RebalancedPod) -> Option<Note> {
    let kept = rebalance::kept_of_ask(pod)?;
    let selected = pod.outcome.as_ref()?.selected;
    Some(Note {
        warning: false,
        reason: "MovedSessionsKept",
        message: format!(
            "round {round}: pod {} picked {selected} of the {} sessions asked: it keeps {kept} \
             that moved to it less than {}s ago (a session moves at most once in that time), \
             until a later round moves them",
            pod.pod,
            pod.sessions,
            rebalance::KEEP_MOVED_FOR.as_secs()
        ),
    })
}

fn drained_note(entry: &DrainingPod, now: Timestamp) -> Note {
    let took = entry
        .started_at
        .as_ref()
        .map(|t| now.duration_since(t.0).as_secs_f64())
        .unwrap_or_default();
    Note {
        warning: entry.dropped > 0,
        reason: "PodDrained",
        message: format!(
            "pod {} (revision {}) drained in {took:.0}s: {} sessions migrated, {} closed by \
             their clients, {} dropped",
            entry.pod, entry.revision, entry.migrated, entry.closed_by_client, entry.dropped
        ),
    }
}

fn started_note(lcs: &LongConnService, update: &str, want: i32, tally: &Tally) -> Note {
    let from = lcs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref());
    let message = match from {
        Some(from) if from != update => format!("rolling out revision {update} (from {from})"),
        _ if tally.gateway_restarts > 0 && tally.started == 0 && !tally.started_elsewhere => {
            format!("recording sessions lost by restarted gateways of revision {update}")
        }
        _ if tally.started_elsewhere && tally.started == 0 => {
            format!("following drains of revision {update} pods that the operator did not start")
        }
        _ => format!("draining pods of revision {update} down to {want} replicas"),
    };
    Note {
        warning: false,
        reason: "RolloutStarted",
        message,
    }
}

/// A drain whose remaining sessions are lost: its report went away with the pod
/// (`DrainReportLost`) or its gateway restarted (`GatewayRestarted`, as outside a drain).
fn lost_note(entry: &DrainingPod, reason: &'static str, what: &str) -> Note {
    Note {
        warning: true,
        reason,
        message: format!(
            "pod {} (revision {}) {what} before its drain finished: its {} last known open \
             sessions count as dropped",
            entry.pod, entry.revision, entry.active
        ),
    }
}

/// "revision 7c9f: 3 pods drained, 1204 sessions migrated, 0 dropped".
pub fn preserved_words(r: &RolloutStatus) -> String {
    let so_far = if r.phase == RolloutPhase::Complete {
        ""
    } else {
        " so far"
    };
    format!(
        "revision {}: {} pods drained, {} sessions migrated, {} dropped{so_far}",
        r.revision, r.pods_drained, r.sessions_migrated, r.sessions_dropped
    )
}

fn budget_words(r: &RolloutStatus, budget: i64, rollback_to: Option<&str>) -> String {
    let then = match rollback_to {
        Some(to) => format!("rolling back to revision {to}"),
        None => "the rollout is paused; raise spec.rollout.maxDroppedSessions or change the \
                 template to go on"
            .to_owned(),
    };
    format!(
        "revision {}: {} sessions dropped, more than spec.rollout.maxDroppedSessions ({budget}); {then}",
        r.revision, r.sessions_dropped
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client Service that selects `revision`, as the operator left it.
    fn selecting(revision: &str) -> placement::ServiceFacts {
        placement::ServiceFacts {
            exists: true,
            revision: Some(revision.to_owned()),
            changed_at: None,
        }
    }

    fn pod(name: &str, state: Option<DrainState>, active: u64) -> PodFacts {
        PodFacts {
            name: name.to_owned(),
            revision: "a".to_owned(),
            running: true,
            ready: state.is_none(),
            report: state.map(|state| DrainReport {
                state,
                sessions_at_start: 5,
                active,
                migrated: 5 - active,
                ..DrainReport::default()
            }),
            last_known: Some(i64::try_from(active).unwrap_or(0)),
            ..PodFacts::default()
        }
    }

    fn step_with(lcs: &LongConnService, pods: &[PodFacts]) -> Plan {
        step_to(
            lcs,
            "a",
            "2026-01-01T00:00:00Z".parse().expect("time"),
            pods,
        )
    }

    /// A step of three pods of revision `a` towards `update`, at `now`.
    fn step_to(lcs: &LongConnService, update: &str, now: Timestamp, pods: &[PodFacts]) -> Plan {
        step_recording(lcs, update, now, pods, true)
    }

    /// [`step_to`], recording the open sessions or not.
    fn step_recording(
        lcs: &LongConnService,
        update: &str,
        now: Timestamp,
        pods: &[PodFacts],
        refresh_sessions: bool,
    ) -> Plan {
        step(&Input {
            lcs,
            update_revision: update,
            revisions: &[ObservedRevision {
                revision: "a".to_owned(),
                replicas: 3,
                current_replicas: 3,
                ready_replicas: 3,
            }],
            pods,
            service: &selecting(update),
            update_stalled: false,
            refresh_sessions,
            now,
        })
    }

    /// A serving pod with `active` sessions, its gateway read at `read_at`.
    fn serving(name: &str, active: u64, read_at: Timestamp) -> PodFacts {
        PodFacts {
            ready: true,
            accepting: Some(true),
            routable: true,
            read_at: Some(read_at),
            report: Some(DrainReport {
                active,
                ..DrainReport::default()
            }),
            ..pod(name, None, active)
        }
    }

    #[test]
    fn an_evicted_pod_s_drain_waits_for_counts_read_since_it_began_terminating() {
        // The reconcile of a node-drain's log: the eviction was seen 4.8 s after the gateways
        // were last read, before the load's 300 sessions had shown in any count; on those
        // zeros the drain was handed over at once, and its 162 sessions went to the two pods
        // left rather than to the replacement, still starting (137 / 157 / 6 when done).
        let lcs = LongConnService::test().replicas(3).build();
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        let read = |ago: i64| now - SignedDuration::from_millis(ago);
        let pods = |ago: i64, counts: [u64; 3]| {
            let mut evicted = serving("b", counts[0], read(ago));
            evicted.terminating = true;
            evicted.held = true;
            let replacement = PodFacts {
                name: "r".to_owned(),
                revision: "a".to_owned(),
                accepting: Some(true),
                ..PodFacts::default()
            };
            vec![
                evicted,
                serving("h", counts[1], read(ago)),
                serving("p", counts[2], read(ago)),
                replacement,
            ]
        };
        let stale = step_to(&lcs, "a", now, &pods(4_800, [0, 0, 0]));
        assert!(
            !stale.drain.contains(&"b".to_owned()) && stale.routing_pending,
            "counts 4.8 s old: wait for the next read ({:?})",
            stale.drain
        );
        let fresh = step_to(&lcs, "a", now, &pods(500, [162, 66, 73]));
        assert!(
            !fresh.drain.contains(&"b".to_owned()) && fresh.routing_pending,
            "162 sessions do not fit the two pods left: wait for the replacement ({:?})",
            fresh.drain
        );
    }

    #[test]
    fn steps_apply_to_a_rollout_from_its_start_and_not_to_one_begun_without_them() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let pods = [
            pod("a-1", None, 0),
            pod("a-2", None, 0),
            pod("a-3", None, 0),
        ];
        let status = |rollout: Option<RolloutStatus>| crate::crd::LongConnServiceStatus {
            current_revision: Some("a".to_owned()),
            rollout,
            ..crate::crd::LongConnServiceStatus::default()
        };
        let service = |status| {
            LongConnService::test()
                .replicas(3)
                .steps("[{pause: {}}]")
                .status(status)
                .build()
        };
        let starting = step_to(&service(status(None)), "b", now, &pods);
        let r = starting.rollout.expect("recorded");
        assert_eq!(
            (r.step, r.paused_by, starting.replicas.get("b")),
            (Some(0), Some(PauseCause::Step), Some(&0)),
            "a pause first: the new revision waits with no pod"
        );
        let begun = RolloutStatus {
            revision: "b".to_owned(),
            started_at: Some(Time(now)),
            ..RolloutStatus::default()
        };
        let going_on = step_to(&service(status(Some(begun))), "b", now, &pods);
        let r = going_on.rollout.expect("recorded");
        assert_eq!(
            (r.step, r.paused_by, going_on.replicas.get("b")),
            (None, None, Some(&1)),
            "begun without steps: the surge's pod starts"
        );
    }

    #[test]
    fn a_terminating_pod_is_released_only_once_its_final_report_is_recorded() {
        let lcs = LongConnService::test().replicas(3).build();
        let mut done = pod("done", Some(DrainState::Drained), 0);
        let mut draining = pod("draining", Some(DrainState::Draining), 2);
        for p in [&mut done, &mut draining] {
            p.terminating = true;
            p.held = true;
        }
        let plan = step_with(&lcs, &[done, draining, pod("serving", None, 0)]);
        assert_eq!(plan.release, ["done"]);
        let r = plan.rollout.expect("recorded");
        assert_eq!(
            r.sessions_migrated, 5,
            "the released pod's report is counted"
        );
    }

    /// Three replicas, and the drain of pod `a-1` (5 sessions) recorded as started.
    fn draining_a_1() -> LongConnService {
        let status = crate::crd::LongConnServiceStatus {
            rollout: Some(RolloutStatus {
                revision: "a".to_owned(),
                draining: vec![DrainingPod {
                    pod: "a-1".to_owned(),
                    revision: "a".to_owned(),
                    started_at: Some(Time("2026-01-01T00:00:00Z".parse().expect("time"))),
                    sessions_at_start: 5,
                    active: 5,
                    ..DrainingPod::default()
                }],
                ..RolloutStatus::default()
            }),
            ..Default::default()
        };
        LongConnService::test().replicas(3).status(status).build()
    }

    #[test]
    fn a_drain_s_progress_is_recorded_on_the_sessions_schedule_and_its_end_at_once() {
        let lcs = draining_a_1();
        let now = "2026-01-01T00:00:05Z".parse().expect("time");
        let entry = |pods: &[PodFacts], refresh_sessions: bool| {
            let plan = step_recording(&lcs, "a", now, pods, refresh_sessions);
            plan.rollout.expect("recorded").draining[0].clone()
        };
        let draining = [pod("a-1", Some(DrainState::Draining), 2)];
        let held = entry(&draining, false);
        assert_eq!(
            (held.active, held.migrated),
            (5, 0),
            "progress alone is not worth a status write"
        );
        let refreshed = entry(&draining, true);
        assert_eq!((refreshed.active, refreshed.migrated), (2, 3));
        let finished = entry(&[pod("a-1", Some(DrainState::Drained), 0)], false);
        assert_eq!((finished.active, finished.migrated), (0, 5));
        assert!(finished.finished_at.is_some());
    }

    #[test]
    fn a_drained_pod_is_given_the_lowest_cost_and_released_once_its_end_is_recorded() {
        let lcs = draining_a_1();
        let now = "2026-01-01T00:00:05Z".parse().expect("time");
        let held = |state| {
            let mut pod = pod("a-1", Some(state), 0);
            pod.held = true;
            pod
        };
        let draining = step_to(&lcs, "a", now, &[held(DrainState::Draining)]);
        assert!(draining.lowest_cost.is_empty() && draining.release.is_empty());
        let drained = step_to(&lcs, "a", now, &[held(DrainState::Drained)]);
        assert_eq!(drained.lowest_cost, ["a-1"]);
        assert_eq!(
            drained.release,
            ["a-1"],
            "one patch: the cost and the finalizer"
        );
        let r = drained.rollout.expect("recorded");
        assert!(r.draining[0].finished_at.is_some(), "released as recorded");
    }

    #[test]
    fn restart_losses_are_counted_against_the_service_s_own_record() {
        let mut crashed = pod("b-1", None, 0);
        crashed.report = Some(DrainReport {
            restarts: 2,
            lost_to_restarts: 9,
            ..DrainReport::default()
        });
        let mut status = crate::crd::LongConnServiceStatus::default();
        status.gateways.push(GatewayRecord {
            pod: "b-1".to_owned(),
            lost_counted: 4,
            sessions: 0,
        });
        let lcs = LongConnService::test().replicas(3).status(status).build();
        let plan = step_with(&lcs, &[crashed]);
        let r = plan.rollout.expect("recorded");
        assert_eq!(r.sessions_dropped, 5, "9 lost in all, 4 counted before");
        assert_eq!(plan.gateways[0].lost_counted, 9);
    }

    #[test]
    fn a_scale_down_keeps_draining_the_pods_it_took_out_of_the_service() {
        // From 5 to 2: a-1, a-3 and a-4 were chosen when every count read 0 and are out of the
        // Service; a-4 is draining, and its sessions land on a-2 and a-5. Now the counts read
        // a-1 fullest: still a-1 and a-3 go, not a-2, which holds moved sessions.
        let lcs = LongConnService::test().replicas(2).build();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let serving = |name: &str, active: u64, accepting: bool| {
            let mut p = pod(name, None, active);
            p.report = Some(DrainReport {
                active,
                ..DrainReport::default()
            });
            p.accepting = Some(accepting);
            p.routable = accepting;
            p
        };
        let mut draining = pod("a-4", Some(DrainState::Draining), 3);
        draining.accepting = Some(false);
        let pods = [
            serving("a-1", 165, false),
            serving("a-2", 98, true),
            serving("a-3", 78, false),
            draining,
            serving("a-5", 108, true),
        ];
        let plan = step(&Input {
            lcs: &lcs,
            update_revision: "a",
            revisions: &[ObservedRevision {
                revision: "a".to_owned(),
                replicas: 5,
                current_replicas: 5,
                ready_replicas: 4,
            }],
            pods: &pods,
            service: &selecting("a"),
            update_stalled: false,
            refresh_sessions: true,
            now,
        });
        // (a-5 may stop accepting: a-2 alone has room for what is on its way.)
        for flip in [("a-1", true), ("a-3", true), ("a-2", false)] {
            assert!(
                !plan.routing.contains(&(flip.0.to_owned(), flip.1)),
                "the pods out of the Service stay out, the one with most room in: {:?}",
                plan.routing
            );
        }
        assert!(
            plan.drain.iter().all(|p| p == "a-1" || p == "a-3"),
            "{:?}",
            plan.drain
        );
    }

    /// Six Ready pods of revision `a` holding `sessions`, labelled as `accepting` says (and
    /// routed so, long enough ago to have settled).
    fn six_pods(sessions: [u64; 6], accepting: impl Fn(usize) -> bool) -> Vec<PodFacts> {
        (0..6)
            .map(|i| {
                let mut p = pod(&format!("a-{i}"), None, sessions[i]);
                p.report = Some(DrainReport {
                    active: sessions[i],
                    ..DrainReport::default()
                });
                p.accepting = Some(accepting(i));
                p.routable = accepting(i);
                p
            })
            .collect()
    }

    fn rebalancing_step(lcs: &LongConnService, pods: &[PodFacts], now: Timestamp) -> Plan {
        step(&Input {
            lcs,
            update_revision: "a",
            revisions: &[ObservedRevision {
                revision: "a".to_owned(),
                replicas: 6,
                current_replicas: 6,
                ready_replicas: 6,
            }],
            pods,
            service: &selecting("a"),
            update_stalled: false,
            refresh_sessions: true,
            now,
        })
    }

    /// Six pods autoscaled between 2 and 6 at 150 sessions each, with `status`.
    fn autoscaled(status: Option<crate::crd::LongConnServiceStatus>) -> LongConnService {
        let mut lcs = LongConnService::test().replicas(6).build();
        lcs.spec.autoscaling = Some(
            serde_json::from_value(serde_json::json!({
                "minReplicas": 2, "maxReplicas": 6, "targetSessionsPerPod": 150
            }))
            .expect("autoscaling"),
        );
        lcs.status = status;
        lcs
    }

    #[test]
    fn a_round_waits_for_counts_read_within_fresh() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let read = |ago: i64, sessions: [u64; 6]| {
            let mut pods = six_pods(sessions, |i| i >= 2);
            for p in &mut pods {
                p.read_at = Some(now - SignedDuration::from_millis(ago));
            }
            pods
        };
        let stale = rebalancing_step(&autoscaled(None), &read(4_000, [400, 400, 0, 0, 0, 0]), now);
        assert!(
            stale.rebalance_asks.is_empty() && stale.rebalance.is_none(),
            "counts 4 s old: no round yet ({:?})",
            stale.rebalance_asks
        );
        assert!(
            stale.routing_pending,
            "looked at again as soon as they are read"
        );
        let fresh = rebalancing_step(&autoscaled(None), &read(500, [400, 400, 0, 0, 0, 0]), now);
        assert_eq!(fresh.rebalance_asks.len(), 2, "{:?}", fresh.rebalance_asks);
    }

    #[test]
    fn after_a_scale_up_the_busy_pods_stop_accepting_then_hand_their_share_to_the_new_ones() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let lcs = autoscaled(None);

        // Every pod accepts: first the two busy ones leave the Service; nothing is asked yet.
        let plan = rebalancing_step(&lcs, &six_pods([400, 400, 0, 0, 0, 0], |_| true), now);
        assert_eq!(
            plan.routing,
            [("a-0".to_owned(), false), ("a-1".to_owned(), false)]
        );
        assert!(plan.rebalance_asks.is_empty());
        assert!(plan.routing_pending && plan.active);

        // Out of the Service and settled: the round starts, recorded with its Event.
        let pods = six_pods([400, 400, 0, 0, 0, 0], |i| i >= 2);
        let plan = rebalancing_step(&lcs, &pods, now);
        assert!(plan.routing.is_empty(), "{:?}", plan.routing);
        let asked: Vec<(&str, i64)> = plan
            .rebalance_asks
            .iter()
            .map(|a| (a.pod.as_str(), a.sessions))
            .collect();
        assert_eq!(asked, [("a-0", 266), ("a-1", 266)]);
        let round = plan.rebalance.clone().expect("recorded");
        assert_eq!((round.round, round.sessions_asked), (1, 532));
        assert!(plan.events.iter().any(|e| e.reason == "Rebalancing"));

        // While the round runs, nothing more is asked and the busy pods stay out.
        let status = crate::crd::LongConnServiceStatus {
            rebalance: Some(round.clone()),
            ..Default::default()
        };
        let lcs = autoscaled(Some(status));
        let later = now + SignedDuration::from_secs(10);
        let plan = rebalancing_step(
            &lcs,
            &six_pods([250, 250, 75, 75, 75, 75], |i| i >= 2),
            later,
        );
        assert!(plan.rebalance_asks.is_empty());
        assert!(plan.routing.is_empty(), "{:?}", plan.routing);
        assert_eq!(plan.rebalance, Some(round));
        assert!(plan.active, "looked at again soon");

        // Balanced once it has run: no further round, even after the cooldown.
        let much_later = now + SignedDuration::from_secs(600);
        let plan = rebalancing_step(
            &lcs,
            &six_pods([134, 134, 133, 133, 133, 133], |_| true),
            much_later,
        );
        assert!(plan.rebalance_asks.is_empty());
        assert!(!plan.active);
    }

    #[test]
    fn a_pod_that_kept_sessions_moved_to_it_recently_says_so_once() {
        // Round 3 asked a-2 to move 33 of its 167; every one of them came by a move a minute
        // before, so its gateway picked none.
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let round = rebalance::start(
            None,
            &[rebalance::Ask {
                pod: "a-2".to_owned(),
                sessions: 33,
                held: 167,
            }],
            6,
            now - SignedDuration::from_secs(20),
        );
        let mut pods = six_pods([140, 130, 167, 121, 121, 121], |i| i != 2);
        pods[2].rebalance = Some(longconn_drain_api::RebalanceReport {
            id: rebalance::round_id(round.round),
            state: longconn_drain_api::RebalanceState::Done,
            requested: 33,
            kept_moved: 167,
            ..Default::default()
        });
        let status = |rebalance| crate::crd::LongConnServiceStatus {
            rebalance: Some(rebalance),
            ..Default::default()
        };
        let plan = rebalancing_step(&autoscaled(Some(status(round))), &pods, now);
        let recorded = plan.rebalance.clone().expect("recorded");
        let outcome = recorded.pods[0].outcome.clone().expect("finished");
        assert_eq!((outcome.selected, outcome.kept_moved), (0, 167));
        let kept: Vec<&str> = plan
            .events
            .iter()
            .filter(|e| e.reason == "MovedSessionsKept")
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(kept.len(), 1, "{:?}", plan.events);
        assert!(
            kept[0].contains("a-2 picked 0 of the 33") && kept[0].contains("keeps 33"),
            "{}",
            kept[0]
        );
        // Once recorded, read again: no second Event.
        let plan = rebalancing_step(&autoscaled(Some(status(recorded))), &pods, now);
        assert!(
            plan.events.iter().all(|e| e.reason != "MovedSessionsKept"),
            "{:?}",
            plan.events
        );
    }

    #[test]
    fn a_drain_whose_sessions_the_emptiest_receiver_takes_below_the_limit_goes_there_alone() {
        // A rollout from a to b, 1,000 sessions: a-1 is still moving its last 50 to b-1; b-2 has
        // just got Ready. a-2's 333 and a-1's 50 exceed b-2's room below full (367) but not
        // below the limit (417): b-2 alone takes them; b-1 must not take a share.
        let lcs = LongConnService::test().replicas(3).build();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let serving = |name: &str, active: u64, accepting: bool| {
            let mut p = pod(name, None, active);
            p.revision = name[..1].to_owned();
            p.report = Some(DrainReport {
                active,
                ..DrainReport::default()
            });
            p.accepting = Some(accepting);
            p.routable = accepting;
            p
        };
        let mut draining = pod("a-1", Some(DrainState::Draining), 0);
        draining.report = Some(DrainReport {
            state: DrainState::Draining,
            sessions_at_start: 333,
            active: 50,
            migrated: 283,
            ..DrainReport::default()
        });
        draining.accepting = Some(false);
        let status = crate::crd::LongConnServiceStatus {
            rollout: Some(RolloutStatus {
                revision: "b".to_owned(),
                draining: vec![DrainingPod {
                    pod: "a-1".to_owned(),
                    revision: "a".to_owned(),
                    started_at: Some(Time(now - SignedDuration::from_secs(5))),
                    sessions_at_start: 333,
                    active: 50,
                    ..DrainingPod::default()
                }],
                ..RolloutStatus::default()
            }),
            ..Default::default()
        };
        let lcs = LongConnService {
            status: Some(status),
            ..lcs
        };
        let pods = [
            draining,
            serving("a-2", 333, false),
            serving("a-3", 334, false),
            serving("b-1", 283, true),
            serving("b-2", 0, true),
        ];
        let plan = step(&Input {
            lcs: &lcs,
            update_revision: "b",
            revisions: &[
                ObservedRevision {
                    revision: "a".to_owned(),
                    replicas: 3,
                    current_replicas: 3,
                    ready_replicas: 3,
                },
                ObservedRevision {
                    revision: "b".to_owned(),
                    replicas: 2,
                    current_replicas: 2,
                    ready_replicas: 2,
                },
            ],
            pods: &pods,
            service: &selecting("b"),
            update_stalled: false,
            refresh_sessions: true,
            now,
        });
        assert!(
            plan.routing.contains(&("b-1".to_owned(), false)),
            "b-1 stops accepting before a-2 drains: {:?}",
            plan.routing
        );
        assert!(
            !plan.drain.contains(&"a-2".to_owned()),
            "not before that settles"
        );
    }

    #[test]
    fn a_drained_pod_is_drained_again_only_when_its_gateway_restarted() {
        let lcs = LongConnService::test().replicas(2).build();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let finished = DrainingPod {
            pod: "a-1".to_owned(),
            revision: "a".to_owned(),
            started_at: Some(Time(now - SignedDuration::from_secs(3))),
            finished_at: Some(Time(now - SignedDuration::from_secs(1))),
            ..DrainingPod::default()
        };
        let lcs = LongConnService {
            status: Some(crate::crd::LongConnServiceStatus {
                rollout: Some(RolloutStatus {
                    revision: "b".to_owned(),
                    draining: vec![finished],
                    pods_drained: 1,
                    ..RolloutStatus::default()
                }),
                ..Default::default()
            }),
            ..lcs
        };
        let serving_again = |restarts: u64| {
            let mut pod = pod("a-1", Some(DrainState::Serving), 0);
            pod.report = pod.report.map(|r| DrainReport { restarts, ..r });
            pod
        };
        let step_with = |pods: &[PodFacts]| {
            step(&Input {
                lcs: &lcs,
                update_revision: "b",
                revisions: &[ObservedRevision {
                    revision: "a".to_owned(),
                    replicas: 2,
                    current_replicas: 2,
                    ready_replicas: 1,
                }],
                pods,
                service: &selecting("b"),
                update_stalled: false,
                refresh_sessions: true,
                now,
            })
        };
        // The same gateway process: a report read before the drain, not a restart.
        let stale = step_with(&[serving_again(0), pod("a-2", None, 0)]);
        assert!(
            !stale.drain.contains(&"a-1".to_owned()),
            "{:?}",
            stale.drain
        );
        // Restarted since: drained anew.
        let restarted = step_with(&[serving_again(1), pod("a-2", None, 0)]);
        assert!(
            restarted.drain.contains(&"a-1".to_owned()),
            "{:?}",
            restarted.drain
        );
    }

    #[test]
    fn a_rollback_counts_its_receivers_coming_by_their_pods_only() {
        // Rolling back from b to a: status.rollout names b, started long ago, and a has no pod.
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let lcs = LongConnService::test()
            .replicas(2)
            .status(crate::crd::LongConnServiceStatus {
                rollout: Some(RolloutStatus {
                    revision: "b".to_owned(),
                    phase: RolloutPhase::RollingBack,
                    started_at: Some(Time(now - SignedDuration::from_secs(300))),
                    ..RolloutStatus::default()
                }),
                ..Default::default()
            })
            .build();
        let mut b_pod = pod("b-1", None, 0);
        b_pod.revision = "b".to_owned();
        let mut a_pod = pod("a-1", None, 0);
        a_pod.ready = false;
        a_pod.created = Some(now - SignedDuration::from_secs(5));
        let coming = |pods: &[PodFacts]| {
            let input = Input {
                lcs: &lcs,
                update_revision: "b",
                revisions: &[],
                pods,
                service: &selecting("b"),
                update_stalled: false,
                refresh_sessions: true,
                now,
            };
            receivers_coming(&input, "a")
        };
        assert!(!coming(&[b_pod.clone()]));
        assert!(coming(&[b_pod, a_pod]));
    }

    #[test]
    fn a_rollout_begins_without_opening_an_old_pod_stopped_for_being_full() {
        // 300 sessions on three pods of revision a; a-1 was stopped at 120 (full at 110). The
        // template changes to b: until b's first pod is Ready, a-1 stays out of the Service
        // (that pod then stops every pod of a), unless b's pods do not come.
        let lcs = LongConnService::test().replicas(3).build();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let serving = |name: &str, active: u64, accepting: bool| PodFacts {
            report: Some(DrainReport {
                active,
                ..DrainReport::default()
            }),
            ready: true,
            accepting: Some(accepting),
            routable: accepting,
            ..pod(name, None, active)
        };
        let pods = [
            serving("a-1", 120, false),
            serving("a-2", 90, true),
            serving("a-3", 90, true),
        ];
        let revisions = [ObservedRevision {
            revision: "a".to_owned(),
            replicas: 3,
            current_replicas: 3,
            ready_replicas: 3,
        }];
        let step_at = |lcs: &LongConnService, now: Timestamp| {
            step(&Input {
                lcs,
                update_revision: "b",
                revisions: &revisions,
                pods: &pods,
                service: &selecting("b"),
                update_stalled: false,
                refresh_sessions: true,
                now,
            })
        };
        let first = step_at(&lcs, now);
        assert_eq!(
            first.rollout.as_ref().map(|r| r.revision.as_str()),
            Some("b")
        );
        assert!(first.routing.is_empty(), "{:?}", first.routing);
        // A minute on, b's pods have not come: a-1 takes new clients again.
        let lcs = LongConnService {
            status: Some(crate::crd::LongConnServiceStatus {
                rollout: first.rollout.clone(),
                ..Default::default()
            }),
            ..lcs
        };
        let later = step_at(&lcs, now + SignedDuration::from_secs(60));
        assert_eq!(later.routing, [("a-1".to_owned(), true)]);
    }

    #[test]
    fn an_old_pod_not_seen_running_yet_is_not_scaled_away_until_it_is_overdue() {
        let lcs = LongConnService::test().replicas(3).build();
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let old_pods = |created: Timestamp| -> Vec<PodFacts> {
            let mut pods = vec![
                pod("a-1", None, 4),
                pod("a-2", None, 0),
                pod("a-3", None, 0),
            ];
            for p in &mut pods {
                p.created = Some(created);
            }
            // The cache has not shown these two running yet.
            for p in &mut pods[1..] {
                p.running = false;
                p.ready = false;
            }
            pods
        };
        let step_at = |pods: &[PodFacts]| step_to(&lcs, "b", now, pods);
        let young = old_pods(now - SignedDuration::from_secs(5));
        assert_eq!(
            step_at(&young).replicas.get("a"),
            Some(&3),
            "a pod created 5 s ago may be running already: the ReplicaSet would remove it, \
             sessions and all"
        );
        let stuck = old_pods(now - START_GRACE);
        assert_eq!(
            step_at(&stuck).replicas.get("a"),
            Some(&1),
            "pods that never started have no sessions and go at once"
        );
    }
}
