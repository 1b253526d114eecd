//! The drain-orchestrated rollout, as a pure state machine.
//!
//! [`step`] looks at what the cluster shows (each revision's Deployment, every pod with its
//! gateway's drain report, the previous `status.rollout`) and returns a [`Plan`]: the replicas
//! each revision's Deployment should have, the pods whose gateways to drain, the pods to mark
//! for removal, the new `status.rollout`, conditions and Events. The reconciler performs the
//! plan. Nothing is remembered between steps except what the cluster and `status.rollout` hold,
//! so an operator that restarts at any point picks the rollout up where it was.
//!
//! One step of a rollout, repeated until no old pod is left:
//! 1. Surge: the target revision grows to `replicas + maxSurge - (old pods still serving)`, at
//!    most `replicas`; old pods being drained do not count, as terminating pods do not count
//!    against a Deployment's `maxSurge`. Its pods must all be Ready before an old pod is drained.
//! 2. Pick old pods to drain, up to `maxConcurrentDrains` at a time and only while the Ready
//!    pods left serving stay at `replicas` (with `maxSurge: 0`, at `replicas` less what the
//!    disruption budget allows, and less at least one): not-Ready pods first (they go first
//!    anyway when a ReplicaSet shrinks), then the fewest sessions.
//! 3. Ask each gateway to drain; follow its report until it says Drained (no session left, or
//!    the deadline force-closed the rest).
//! 4. Add the report to `status.rollout` and give the pod the lowest
//!    `controller.kubernetes.io/pod-deletion-cost`. Only in a later step, once the finished
//!    report, the annotation and the pod's not-Ready condition are all visible, shrink the
//!    Deployment so that the ReplicaSet deletes exactly that pod (it ranks not-Ready pods
//!    before cost): the accounting is always written before the pod can go.
//! 5. A Deployment whose replicas and pods are all gone is deleted.
//!
//! The same path serves a decrease of `spec.replicas` (pods of the current revision above the
//! new count are drained first; increases are immediate) and follows drains the operator did not
//! start: a terminating pod (eviction, node drain, `kubectl delete pod`) runs its preStop drain,
//! and its report is recorded like any other. A pod that disappears before its finished report
//! was read counts its last known open sessions as dropped.
//!
//! When more sessions were dropped than `maxDroppedSessions`, no further pod is drained: the
//! rollout pauses, or rolls back to `status.currentRevision` (whose Deployment grows back while
//! the new revision's pods are drained the same way).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_drain_api::{DrainReport, DrainState};

use crate::crd::{DrainingPod, DropBudgetAction, LongConnService, RolloutPhase, RolloutStatus};
use crate::desired::ObservedRevision;
use crate::status;

/// The annotation a ReplicaSet consults to choose which pods go first when it shrinks.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost given to drained pods: the lowest there is.
pub const LOWEST_COST: i32 = i32::MIN;
/// How long after its drain deadline a drain whose report cannot be read is given up on (its
/// last known sessions then count as dropped).
const REPORT_GRACE: SignedDuration = SignedDuration::from_secs(30);

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
    /// The gateway's `GET /drain` report, when it answered.
    pub report: Option<DrainReport>,
}

impl PodFacts {
    fn sessions(&self) -> i64 {
        self.report.as_ref().map_or(0, |r| count(r.active))
    }
}

/// Sessions lost because a pod's gateway process restarted (crashed, or was killed): the
/// sessions it last reported open, which its clients lost without a close handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLoss {
    pub pod: String,
    pub sessions: i64,
}

/// Everything [`step`] looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The LongConnService, with the status as last written.
    pub lcs: &'a LongConnService,
    /// The revision the spec asks for.
    pub update_revision: &'a str,
    /// Every revision's Deployment.
    pub revisions: &'a [ObservedRevision],
    pub pods: &'a [PodFacts],
    /// The update revision's Deployment reports ProgressDeadlineExceeded.
    pub update_stalled: bool,
    /// Gateways that restarted since they were last read.
    pub gateway_losses: &'a [GatewayLoss],
    pub now: Timestamp,
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
    /// Replicas of each revision's Deployment; a revision left out has no pod left and its
    /// Deployment is deleted.
    pub replicas: BTreeMap<String, i32>,
    /// Pods whose gateways are asked to drain (`POST /drain` is idempotent).
    pub drain: Vec<String>,
    /// Pods to annotate with the lowest deletion cost.
    pub lowest_cost: Vec<String>,
    /// The new `status.rollout`.
    pub rollout: Option<RolloutStatus>,
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
}

/// Works out the next step. Pure: the same input gives the same plan.
pub fn step(input: &Input) -> Plan {
    let lcs = input.lcs;
    let spec = &lcs.spec;
    let now = input.now;
    let update = input.update_revision;
    let previous = lcs.status.as_ref().and_then(|s| s.rollout.as_ref());
    let mut events = Vec::new();
    let mut lowest_cost = Vec::new();
    let mut drain = Vec::new();

    // 1. Follow the drains under way; finish those whose report says Drained.
    let mut tally = Tally::default();
    let mut entries = Vec::new();
    let mut removable = BTreeSet::new();
    for entry in previous.map_or(&[][..], |r| r.draining.as_slice()) {
        let pod = input.pods.iter().find(|p| p.name == entry.pod);
        let mut entry = entry.clone();
        let serving_again = pod
            .and_then(|p| p.report.as_ref())
            .is_some_and(|r| r.state == DrainState::Serving);
        if entry.finished_at.is_some() {
            let Some(pod) = pod else { continue };
            if serving_again {
                // Its gateway restarted after the drain and serves again: drain it anew (what
                // the first drain counted stays counted).
                restart(&mut entry, now);
                drain.push(pod.name.clone());
            } else if pod.deletion_cost != Some(LOWEST_COST) {
                lowest_cost.push(pod.name.clone());
            } else if !pod.ready {
                // Only once it shows not Ready: a shrinking ReplicaSet removes not-Ready pods
                // before it looks at the cost, so a drained pod still shown Ready could let
                // another, undrained, not-Ready pod go in its place.
                removable.insert(pod.name.clone());
            }
            entries.push(entry);
            continue;
        }
        if let Some(loss) = input.gateway_losses.iter().find(|l| l.pod == entry.pod) {
            // The gateway restarted mid-drain: what it had not yet moved is lost; the new
            // process is drained from the start.
            entry.active = entry.active.max(loss.sessions);
            events.push(lost_note(
                &entry,
                "GatewayRestarted",
                "restarted its gateway",
            ));
            tally.migrated += entry.migrated;
            tally.dropped += entry.dropped + entry.active;
            if let Some(pod) = pod {
                restart(&mut entry, now);
                drain.push(pod.name.clone());
                entries.push(entry);
            } else {
                tally.pods += 1;
            }
            continue;
        }
        match pod {
            None => {
                events.push(lost_note(&entry, "DrainReportLost", "disappeared"));
                lose(&mut entry, now);
                tally.add(&entry);
            }
            Some(pod) => match &pod.report {
                Some(report) => {
                    record(&mut entry, report);
                    if report.is_finished() {
                        entry.finished_at = Some(Time(now));
                        events.push(drained_note(&entry, now));
                        tally.add(&entry);
                        lowest_cost.push(pod.name.clone());
                    } else if report.state == DrainState::Serving {
                        // The request did not arrive, or the gateway restarted: ask again.
                        drain.push(pod.name.clone());
                    }
                    entries.push(entry);
                }
                None if overdue(&entry, lcs, now) => {
                    events.push(lost_note(&entry, "DrainReportLost", "did not answer"));
                    lose(&mut entry, now);
                    tally.add(&entry);
                    lowest_cost.push(pod.name.clone());
                    entries.push(entry);
                }
                None => entries.push(entry),
            },
        }
    }
    let tracked = |name: &str, entries: &[DrainingPod]| entries.iter().any(|e| e.pod == name);

    // 2. Follow drains someone else started: a terminating pod runs its preStop drain.
    for pod in input.pods {
        let draining = pod
            .report
            .as_ref()
            .is_some_and(|r| r.state != DrainState::Serving);
        if tracked(&pod.name, &entries) || !(draining || pod.terminating && pod.running) {
            continue;
        }
        let mut entry = new_entry(pod, now);
        if let Some(report) = &pod.report {
            record(&mut entry, report);
            if report.is_finished() {
                entry.finished_at = Some(Time(now));
                events.push(drained_note(&entry, now));
                tally.add(&entry);
            }
        }
        tally.started_elsewhere = true;
        entries.push(entry);
    }

    // Gateways that restarted outside any drain lost their sessions.
    for loss in input.gateway_losses {
        if previous.is_some_and(|r| r.draining.iter().any(|e| e.pod == loss.pod)) {
            continue;
        }
        tally.dropped += loss.sessions;
        tally.gateway_restarts += 1;
        events.push(Note {
            warning: true,
            reason: "GatewayRestarted",
            message: format!(
                "the gateway of pod {} restarted: its {} last reported sessions were lost \
                 (counted as dropped)",
                loss.pod, loss.sessions
            ),
        });
    }

    // Whether the drop budget is spent, and what then.
    let carried = previous.filter(|r| r.revision == update && r.phase != RolloutPhase::Complete);
    let dropped_so_far = carried.map_or(0, |r| r.sessions_dropped) + tally.dropped;
    let over_budget = dropped_so_far > spec.rollout.max_dropped_sessions;
    let rollback_to = lcs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .filter(|r| *r != update && input.revisions.iter().any(|o| o.revision == *r));
    let rolling_back = match (carried, rollback_to) {
        (Some(r), Some(_)) if r.phase == RolloutPhase::RollingBack => true,
        (_, Some(_)) => {
            over_budget && spec.rollout.on_drop_budget_exceeded == DropBudgetAction::Rollback
        }
        (_, None) => false,
    };
    let target = match rollback_to {
        Some(r) if rolling_back => r,
        _ => update,
    };

    // 3. Replicas per revision.
    let want = spec.replicas;
    let surge = status::scaled(&spec.rollout.max_surge, want, true);
    // With no surge a pod must go before its replacement starts: as many as the disruption
    // budget allows, and at least one (or a single replica could never be replaced).
    let min_serving = if surge > 0 {
        want
    } else {
        (want - status::allowed_unavailable(lcs).max(1)).max(0)
    };
    let pods = input.pods;
    let live = |revision: &str| -> Vec<&PodFacts> {
        pods.iter()
            .filter(|p| p.revision == revision && !p.terminating)
            .collect()
    };
    // Pods on their way out: drained and marked, or never started (no gateway to drain).
    let going = |p: &PodFacts| removable.contains(&p.name) || !p.running;
    let mut replicas = BTreeMap::new();
    let mut revisions: Vec<&str> = input
        .revisions
        .iter()
        .map(|r| r.revision.as_str())
        .chain(input.pods.iter().map(|p| p.revision.as_str()))
        .filter(|r| *r != target)
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    // Old pods still serving: being drained does not count, as a terminating pod does not count
    // against a Deployment's maxSurge; so the next new pod starts while the previous old one
    // drains, and drains follow each other without waiting for a pod to start.
    let mut old_serving = 0;
    let mut old_left = false;
    for revision in &revisions {
        let spec_replicas = input
            .revisions
            .iter()
            .find(|r| r.revision == *revision)
            .map_or(0, |r| r.replicas);
        let keep = i32::try_from(live(revision).iter().filter(|p| !going(p)).count()).unwrap_or(0);
        let keep = keep.min(spec_replicas).max(0);
        let serving = live(revision)
            .iter()
            .filter(|p| !going(p) && !tracked(&p.name, &entries))
            .count();
        old_serving += keep.min(i32::try_from(serving).unwrap_or(0));
        let any_pod = input.pods.iter().any(|p| p.revision == *revision);
        if keep > 0 || any_pod {
            replicas.insert((*revision).to_owned(), keep);
            old_left = true;
        }
    }
    let target_want = (want + surge - old_serving).clamp(0, want);
    let target_live = live(target);
    // The target's own drained pods (a scale-down, or what a rollback returns to) must go, and
    // must not hold the slots of the pods that replace them: grow past them first, then shrink
    // to what stays, which removes exactly them.
    let target_removable = target_live
        .iter()
        .filter(|p| removable.contains(&p.name))
        .count();
    let target_staying = i32::try_from(target_live.len() - target_removable).unwrap_or(0);
    let target_replicas = if target_staying >= target_want {
        target_staying
    } else {
        target_want + i32::try_from(target_removable).unwrap_or(0)
    };
    replicas.insert(target.to_owned(), target_replicas);

    // Over budget, no further pod is drained. A record with nothing left to move (sessions lost
    // by a restarted gateway outside any rollout) is not paused: there is nothing to stop.
    let paused = over_budget && !rolling_back && (old_left || !entries.is_empty());

    // 4. Start drains, within the concurrency limit and the serving floor.
    let unfinished = entries.iter().filter(|e| e.finished_at.is_none()).count();
    let mut slots = usize::try_from(spec.rollout.max_concurrent_drains)
        .unwrap_or(1)
        .saturating_sub(unfinished);
    let serving = input
        .pods
        .iter()
        .filter(|p| p.ready && !p.terminating && !tracked(&p.name, &entries))
        .count();
    let mut spare = i64::try_from(serving).unwrap_or(0) - i64::from(min_serving);
    let settled = |p: &PodFacts| p.running && !going(p) && !tracked(&p.name, &entries);
    let target_serving: Vec<&PodFacts> =
        target_live.iter().copied().filter(|p| settled(p)).collect();
    let target_ready = target_serving.iter().all(|p| p.ready)
        && i32::try_from(target_serving.len()).unwrap_or(0) >= target_want;
    let mut candidates: Vec<&PodFacts> = Vec::new();
    if target_ready {
        for revision in &revisions {
            candidates.extend(live(revision).into_iter().filter(|p| settled(p)));
        }
    }
    let excess = target_serving
        .len()
        .saturating_sub(usize::try_from(want).unwrap_or(0));
    let mut by_cost = target_serving.clone();
    by_cost.sort_by_key(|p| drain_order(p));
    candidates.extend(by_cost.into_iter().take(excess));
    candidates.sort_by_key(|p| drain_order(p));
    if !paused {
        for pod in candidates {
            if slots == 0 {
                break;
            }
            if pod.ready {
                if spare <= 0 {
                    continue;
                }
                spare -= 1;
            }
            slots -= 1;
            drain.push(pod.name.clone());
            entries.push(new_entry(pod, now));
            tally.started += 1;
        }
    }

    // 5. The rollout record.
    let in_motion =
        old_left || !entries.is_empty() || tally.started > 0 || tally.gateway_restarts > 0;
    let mut rollout = match carried {
        Some(r) => Some(r.clone()),
        None if in_motion => {
            events.push(started_note(lcs, update, want, &tally));
            Some(RolloutStatus {
                revision: update.to_owned(),
                phase: RolloutPhase::Surging,
                started_at: Some(Time(now)),
                ..RolloutStatus::default()
            })
        }
        None => previous.cloned(),
    };
    let mut progressing = None;
    if let Some(r) = rollout.as_mut()
        && (carried.is_some() || in_motion)
    {
        r.draining = entries;
        r.pods_drained += tally.pods;
        r.sessions_migrated += tally.migrated;
        r.sessions_dropped += tally.dropped;
        let was = r.phase;
        let draining = r.draining.iter().any(|e| e.finished_at.is_none());
        let target_done = target_live.len() == usize::try_from(want).unwrap_or(0)
            && target_live.iter().all(|p| p.ready)
            && !old_left
            && r.draining.is_empty();
        r.phase = if rolling_back {
            RolloutPhase::RollingBack
        } else if paused || input.update_stalled {
            RolloutPhase::Paused
        } else if draining {
            RolloutPhase::Draining
        } else if !r.draining.is_empty() {
            RolloutPhase::Removing
        } else if target_done {
            RolloutPhase::Complete
        } else {
            RolloutPhase::Surging
        };
        let done = target_done && r.draining.is_empty();
        if done && r.finished_at.is_none() {
            r.finished_at = Some(Time(now));
            if !rolling_back {
                events.push(Note {
                    warning: false,
                    reason: "RolloutComplete",
                    message: preserved_words(r),
                });
            }
        }
        if r.phase != RolloutPhase::Complete && !done {
            r.finished_at = None;
        }
        if over_budget && was != r.phase && (paused || rolling_back) {
            events.push(Note {
                warning: true,
                reason: "DropBudgetExceeded",
                message: budget_words(r, spec.rollout.max_dropped_sessions, rollback_to),
            });
        }
        progressing = if rolling_back {
            let to = rollback_to.unwrap_or_default();
            Some(if done {
                Verdict {
                    status: false,
                    reason: "RolledBack",
                    message: format!(
                        "revision {update} dropped {} sessions, more than \
                         spec.rollout.maxDroppedSessions ({}); rolled back to revision {to}. \
                         Change the spec to try again",
                        r.sessions_dropped, spec.rollout.max_dropped_sessions
                    ),
                }
            } else {
                Verdict {
                    status: true,
                    reason: "RollingBack",
                    message: budget_words(r, spec.rollout.max_dropped_sessions, rollback_to),
                }
            })
        } else if paused {
            Some(Verdict {
                status: false,
                reason: "DropBudgetExceeded",
                message: budget_words(r, spec.rollout.max_dropped_sessions, None),
            })
        } else {
            None
        };
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
    drain.sort_unstable();
    drain.dedup();
    lowest_cost.sort_unstable();
    lowest_cost.dedup();
    Plan {
        replicas,
        drain,
        lowest_cost,
        rollout,
        progressing,
        sessions_preserved,
        events,
        started: tally.started,
        finished,
        active,
    }
}

/// Sums of the drains finished in one step.
#[derive(Default)]
struct Tally {
    pods: i32,
    migrated: i64,
    dropped: i64,
    started: usize,
    started_elsewhere: bool,
    gateway_restarts: usize,
}

impl Tally {
    fn add(&mut self, entry: &DrainingPod) {
        self.pods += 1;
        self.migrated += entry.migrated;
        self.dropped += entry.dropped;
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn new_entry(pod: &PodFacts, now: Timestamp) -> DrainingPod {
    DrainingPod {
        pod: pod.name.clone(),
        revision: pod.revision.clone(),
        started_at: Some(Time(now)),
        sessions_at_start: pod.sessions(),
        active: pod.sessions(),
        ..DrainingPod::default()
    }
}

/// Copies a gateway's report into the entry. A report of a drain that has not started yet
/// (state Serving) only updates the open sessions.
fn record(entry: &mut DrainingPod, report: &DrainReport) {
    entry.active = count(report.active);
    if report.state == DrainState::Serving {
        entry.sessions_at_start = entry.active;
        return;
    }
    entry.sessions_at_start = count(report.sessions_at_start);
    entry.migrated = count(report.migrated);
    entry.closed_by_client = count(report.closed_by_client);
    entry.dropped = count(report.dropped);
}

/// Starts an entry over for a gateway that serves again; its earlier numbers are already counted.
fn restart(entry: &mut DrainingPod, now: Timestamp) {
    *entry = DrainingPod {
        pod: std::mem::take(&mut entry.pod),
        revision: std::mem::take(&mut entry.revision),
        started_at: Some(Time(now)),
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

/// Not-Ready pods first (a shrinking ReplicaSet removes them first anyway), then the fewest
/// sessions, then by name so the choice is stable.
fn drain_order(pod: &PodFacts) -> (bool, i64, String) {
    (pod.ready, pod.sessions(), pod.name.clone())
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
