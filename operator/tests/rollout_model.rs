//! A model-based test of the rollout state machine, [`rollout::step`].
//!
//! A small deterministic model of the cluster stands in for everything `step` talks to:
//! - one Deployment per revision, and a ReplicaSet that each tick creates missing pods (Pending,
//!   then Running, then Ready, unless the revision is bad) and, when it shrinks, deletes pods in
//!   the order a real ReplicaSet ranks them: not running first, then not Ready, then the lowest
//!   `controller.kubernetes.io/pod-deletion-cost`, then the newest. A deleted pod is terminating,
//!   its gateway runs the preStop drain, and it is gone once the drained report has been seen;
//! - a kubelet whose Ready condition shows each pod's readiness probe some reconciles late (a
//!   draining gateway fails the probe);
//! - a gateway per pod, whose drain moves half of its movable sessions in the first tick and the
//!   rest in the second, while "stubborn" sessions stay until the drain deadline and are then
//!   force-closed. A gateway asked to rebalance (`POST /rebalance`, idempotent by its round)
//!   stays Ready and serving and moves the sessions asked of it over two ticks, those never
//!   moved first, then the least moved, as the real gateway picks. A gateway may also restart
//!   and lose its sessions. Every client whose session ends reconnects to a pod the client
//!   Service routes to (the placement's labels, as the EndpointSlices showed them), the one
//!   with the fewest sessions, so the number of clients is conserved; each client that moved
//!   keeps how often it moved, and which rounds of rebalancing moved it;
//! - a shell that performs the plan: drains, deletion costs, replicas (a revision left out of
//!   the plan loses its Deployment and its pods), the status (`status::compute` with
//!   `plan.rollout` as `status.rollout` and `plan.rebalance` as `status.rebalance`), the
//!   routing labels and, only once the status recording a round is written, the round's asks.
//!   It can die at a chosen tick having performed only some of those (or only the first of a
//!   round's asks), as an operator restarting mid-reconcile does; it then forgets what it kept
//!   in memory.
//!
//! Scripts add what the operator does not control: evictions, pods that vanish, apps whose
//! readiness fails, gateway restarts, a new revision or a new `spec.replicas` at a chosen tick.
//!
//! Every tick checks the model's own books (drain reports add up, no client is lost), that
//! `step` gives the same plan twice for the same input, that no pod that served is deleted
//! before its drain finished, that drains under way stay within `maxConcurrentDrains`, and that
//! Ready serving pods stay at the floor; and of rebalancing: no pod is asked twice for a round,
//! nor while the Service routes to it, a pod moving a round's sessions does not accept, no
//! round moves a client twice, `status.rebalance` is never lost and counts every round and
//! every session asked, and rounds start a cooldown apart unless the number of pods serving
//! changed. Each test then checks the end state and the session accounting of one behaviour.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::ops::RangeInclusive;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_drain_api::{DrainReport, DrainState, Health, RebalanceReport, RebalanceState};
use longconn_operator::crd::{
    AnalysisSpec, DropBudgetAction, LongConnService, PauseCause, RebalanceStatus, RolloutPhase,
    RolloutStatus,
};
use longconn_operator::desired::ObservedRevision;
use longconn_operator::disruption;
use longconn_operator::duration::Duration;
use longconn_operator::placement::ServiceFacts;
use longconn_operator::plan;
use longconn_operator::rebalance;
use longconn_operator::rollout::{self, Input, LOWEST_COST, Note, Plan, PodFacts, Verdict};
use longconn_operator::status::{self, CertFacts, Facts, MonitoringFacts};
use longconn_operator::steps;

/// No scenario may need more ticks than this to reach what it waits for.
const MAX_TICKS: u32 = 200;
/// Time between two reconciles.
const TICK: SignedDuration = SignedDuration::from_secs(10);
/// Ticks after which a drain force-closes the sessions still open.
const DRAIN_DEADLINE_TICKS: u32 = 4;
/// Open sessions of the first pods, in creation order: uneven, so "fewest first" matters.
const SESSIONS: [i64; 6] = [12, 5, 20, 9, 15, 7];

/// Where a pod is in its start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Created, not running yet: no gateway to ask.
    Pending,
    /// Running, its readiness probe not passing yet.
    Running,
    Ready,
}

/// One pod's gateway and its drain.
#[derive(Clone, Debug, Default)]
struct Gateway {
    state: DrainState,
    /// Open sessions, stubborn ones included.
    active: i64,
    /// Open sessions that do not move when asked; the deadline force-closes them.
    stubborn: i64,
    sessions_at_start: i64,
    migrated: i64,
    dropped: i64,
    /// Ticks since the drain started.
    ticks: u32,
    /// Earlier processes of this gateway, and the sessions they had open when they ended: kept
    /// across restarts in the pod's shared directory.
    restarts: u64,
    lost_to_restarts: u64,
    /// The last rebalance asked of it (`POST /rebalance`); a new process has none.
    rebalance: Option<Rebalance>,
    /// What this process saw of its app.
    health: Health,
}

/// A gateway's rebalance: it keeps serving and moves `left` more of its sessions, half of them
/// in its first tick and the rest in the second.
#[derive(Clone, Debug)]
struct Rebalance {
    /// The round of rebalancing that asked for it: its id on the gateway.
    round: u32,
    left: i64,
    ticks: u32,
    /// Sessions it picked, those that moved, and those a drain took over.
    selected: i64,
    moved: i64,
    taken_by_drain: i64,
}

impl Gateway {
    fn report(&self) -> DrainReport {
        let n = |v: i64| u64::try_from(v).expect("session counts are not negative");
        DrainReport {
            state: self.state,
            sessions_at_start: n(self.sessions_at_start),
            active: n(self.active),
            migrated: n(self.migrated),
            closed_by_client: 0,
            dropped: n(self.dropped),
            restarts: self.restarts,
            lost_to_restarts: self.lost_to_restarts,
            health: self.health,
            ..DrainReport::default()
        }
    }

    /// The process ends without a drain and a new one starts: what it had open is lost.
    fn restart(&mut self) {
        *self = Gateway {
            restarts: self.restarts + 1,
            lost_to_restarts: self.lost_to_restarts
                + u64::try_from(self.active).expect("session counts are not negative"),
            ..Gateway::default()
        };
    }

    /// `POST /drain`, or the preStop hook: idempotent. The drain takes over what a rebalance
    /// had left to move.
    fn drain(&mut self) {
        if self.state == DrainState::Serving {
            self.state = DrainState::Draining;
            self.sessions_at_start = self.active;
            self.ticks = 0;
            if let Some(r) = self.rebalance.as_mut() {
                r.taken_by_drain = r.left;
                r.left = 0;
            }
        }
    }

    /// `POST /rebalance` for `round`: idempotent by the round; refused (409) while draining or
    /// while another round's sessions are still moving. Selects at most the sessions that
    /// answer a close frame (stubborn ones matter to drains only).
    fn rebalance(&mut self, round: u32, sessions: i64) {
        let busy = self
            .rebalance
            .as_ref()
            .is_some_and(|r| r.round == round || r.left > 0);
        if self.state == DrainState::Serving && !busy {
            let selected = sessions.min(self.active - self.stubborn);
            self.rebalance = Some(Rebalance {
                round,
                left: selected,
                ticks: 0,
                selected,
                moved: 0,
                taken_by_drain: 0,
            });
        }
    }

    /// Moving a rebalance's sessions.
    fn rebalancing(&self) -> bool {
        self.rebalance.as_ref().is_some_and(|r| r.left > 0)
    }

    /// One tick of a rebalance. Returns its round and the sessions it moved in this tick.
    fn advance_rebalance(&mut self) -> Option<(u32, i64)> {
        let r = self.rebalance.as_mut().filter(|r| r.left > 0)?;
        r.ticks += 1;
        let movable = self.active - self.stubborn;
        let moving = if r.ticks == 1 {
            (r.left + 1) / 2
        } else {
            r.left
        }
        .min(movable);
        r.left = (r.left - moving).min(movable - moving);
        r.moved += moving;
        self.active -= moving;
        Some((r.round, moving))
    }

    /// `GET /rebalance`: the last rebalance, its counts adding up (sessions it picked that
    /// ended otherwise are the clients').
    fn rebalance_report(&self) -> Option<RebalanceReport> {
        let r = self.rebalance.as_ref()?;
        let n = |v: i64| u64::try_from(v).expect("session counts are not negative");
        Some(RebalanceReport {
            id: rebalance::round_id(r.round),
            state: if r.left > 0 {
                RebalanceState::Moving
            } else {
                RebalanceState::Done
            },
            selected: n(r.selected),
            pending: n(r.left),
            moved: n(r.moved),
            taken_by_drain: n(r.taken_by_drain),
            closed_by_client: n(r.selected - r.left - r.moved - r.taken_by_drain),
            ..RebalanceReport::default()
        })
    }

    /// One tick of a drain. Returns the sessions migrated and force-closed in it.
    fn advance(&mut self) -> (i64, i64) {
        if self.state != DrainState::Draining {
            return (0, 0);
        }
        self.ticks += 1;
        let movable = self.active - self.stubborn;
        let moving = if self.ticks == 1 {
            (movable + 1) / 2
        } else {
            movable
        };
        self.active -= moving;
        self.migrated += moving;
        let mut closed = 0;
        if self.active > 0 && self.ticks >= DRAIN_DEADLINE_TICKS {
            closed = self.active;
            self.dropped += closed;
            self.active = 0;
            self.stubborn = 0;
        }
        if self.active == 0 {
            self.state = DrainState::Drained;
        }
        (moving, closed)
    }

    fn adds_up(&self) -> bool {
        self.state == DrainState::Serving
            || self.sessions_at_start == self.active + self.migrated + self.dropped
    }
}

#[derive(Clone, Debug)]
struct Pod {
    name: String,
    revision: String,
    /// Creation order: a higher number is a newer pod.
    seq: u32,
    created: Timestamp,
    stage: Stage,
    terminating: bool,
    cost: Option<i32>,
    /// Its readiness probe fails for a reason of its own (the app is unwell).
    unwell: bool,
    /// Its node is lost: its gateway cannot be reached, and the pod object lingers until this
    /// tick, when it is force-deleted.
    node_lost_until: Option<u32>,
    /// The Ready condition as the API shows it: the probe's result some observations ago.
    ready: bool,
    /// The latest probe results, oldest first.
    probes: VecDeque<bool>,
    /// Was ever listed as a Ready endpoint.
    served: bool,
    /// Its `longconn.dev/accepting` label.
    accepting: Option<bool>,
    /// When the shell last changed the label.
    routed_at: Option<Timestamp>,
    /// Listed as a ready endpoint of the client Service, as the EndpointSlices showed it at
    /// the last tick: the label and readiness one tick late.
    routable: bool,
    /// The clients of its open sessions that came to it by a move in this run (a drain's or a
    /// rebalance's close and reconnect); the others never moved.
    moved: Vec<Moves>,
    gateway: Gateway,
}

/// How one client was moved in this run.
#[derive(Clone, Debug, Default)]
struct Moves {
    /// Times moved, by drains and by rebalancing.
    times: u32,
    /// The rounds of rebalancing that moved it, in order.
    rounds: Vec<u32>,
}

impl Pod {
    fn running(&self) -> bool {
        self.stage != Stage::Pending
    }

    /// Its gateway answers.
    fn reachable(&self) -> bool {
        self.running() && self.node_lost_until.is_none()
    }

    /// The readiness probe: a draining gateway fails it.
    fn probe(&self) -> bool {
        self.stage == Stage::Ready && !self.unwell && self.gateway.state == DrainState::Serving
    }

    /// Takes new sessions: listed as a Ready endpoint, and its gateway accepts.
    fn serving(&self) -> bool {
        self.ready && self.probe() && !self.terminating
    }

    /// The pod as the operator sees it; `last_known` is what its report poller kept.
    fn facts(&self, last_known: Option<i64>) -> PodFacts {
        PodFacts {
            name: self.name.clone(),
            revision: self.revision.clone(),
            running: self.running(),
            ready: self.ready,
            terminating: self.terminating,
            deletion_cost: self.cost,
            report: self.reachable().then(|| self.gateway.report()),
            last_known,
            // The model reads every gateway at every tick.
            read_at: None,
            held: false,
            created: Some(self.created),
            accepting: self.accepting,
            routable: self.routable,
            routing_changed_at: self.routed_at,
            cpu_requested: None,
            rebalance: self
                .reachable()
                .then(|| self.gateway.rebalance_report())
                .flatten(),
        }
    }

    /// What the endpoints controller lists: selected by the client Service and Ready.
    fn endpoint(&self) -> bool {
        self.accepting == Some(true) && self.ready && !self.terminating
    }

    /// The clients of `n` of the sessions it had open before this tick (`was`), which moved
    /// in it. A rebalance picks those never moved first, then the least moved, as the gateway
    /// does (`rebalance: true`); which sessions a drain moves is not known, so it takes those
    /// that came by a move first, the most moved first: the worst case.
    fn clients_moving(&mut self, n: i64, was: i64, rebalance: bool) -> Vec<Moves> {
        let count = |v: i64| usize::try_from(v).expect("session counts are not negative");
        self.moved.sort_by_key(|m| m.times);
        let fresh = count(was).saturating_sub(self.moved.len());
        let n = count(n);
        let mut clients: Vec<Moves> = if rebalance {
            let moved = (n - n.min(fresh)).min(self.moved.len());
            self.moved.drain(..moved).collect()
        } else {
            let start = self.moved.len() - n.min(self.moved.len());
            self.moved.drain(start..).collect()
        };
        clients.resize(n, Moves::default());
        clients
    }

    /// Where a shrinking ReplicaSet puts the pod: lowest goes first.
    fn deletion_rank(&self) -> (bool, bool, i32, Reverse<u32>) {
        (
            self.running(),
            self.ready,
            self.cost.unwrap_or(0),
            Reverse(self.seq),
        )
    }
}

/// One write of the shell. A crash performs only some of a plan's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Drain,
    Cost,
    Replicas,
    Status,
    Routing,
    /// The asks of a round of rebalancing (`POST /rebalance`), sent only once the status that
    /// records the round is written. A crash that sends them sends only the first: it falls
    /// in the middle of the asks.
    Rebalance,
}

const ACTIONS: [Action; 6] = [
    Action::Drain,
    Action::Cost,
    Action::Replicas,
    Action::Status,
    Action::Routing,
    Action::Rebalance,
];

/// Every subset of the writes a crash can leave done: whatever order the shell uses for the
/// others, the asks of a round of rebalancing come after the status that records it.
fn crash_kinds() -> Vec<Vec<Action>> {
    (0..(1u8 << ACTIONS.len()) - 1)
        .map(|mask| {
            ACTIONS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, a)| *a)
                .collect::<Vec<Action>>()
        })
        .filter(|done| !done.contains(&Action::Rebalance) || done.contains(&Action::Status))
        .collect()
}

/// Every crash of [`crash_kinds`] at every tick of `ticks`.
fn crashes(ticks: RangeInclusive<u32>) -> impl Iterator<Item = (u32, Vec<Action>)> {
    ticks.flat_map(|at| crash_kinds().into_iter().map(move |kind| (at, kind)))
}

/// Things that happen to the model at chosen ticks.
#[derive(Clone, Debug, Default)]
struct Script {
    /// At this tick the shell performs only these writes.
    crash: Option<(u32, Vec<Action>)>,
    /// At this tick the spec asks for another revision.
    new_revision: Option<(u32, String)>,
    /// From this tick on, the update revision's Deployment reports ProgressDeadlineExceeded.
    stall_from: Option<u32>,
    /// The first pod seen mid-drain with open sessions is deleted out from under the operator.
    vanish_mid_drain: bool,
    /// A gateway process restarts, losing its sessions.
    gateway_restart: Option<GatewayRestart>,
    /// At this tick this pod is evicted: it terminates and its preStop drain runs.
    evict: Option<(u32, String)>,
    /// The preStop hook hands the drain over: it waits for the operator to start it.
    handoff: bool,
    /// From this tick on, this pod's readiness probe fails; its sessions stay open.
    unwell: Option<(u32, String)>,
    /// At this tick this pod's node is lost: its sessions are cut, the pod is deleted but no
    /// hook runs and no report is read, and the object goes a few ticks later.
    node_lost: Option<(u32, String)>,
    /// At this tick `spec.replicas` changes to this.
    resize: Option<(u32, i32)>,
}

/// Whose gateway restarts, and when.
#[derive(Clone, Debug)]
enum GatewayRestart {
    /// This pod's, at this tick.
    At(u32, String),
    /// The first gateway seen mid-drain with open sessions.
    MidDrain,
}

/// Which invariants hold in a scenario.
#[derive(Clone, Copy, Debug)]
struct Checks {
    /// Ready serving pods never fall below the floor once they reached it.
    floor: bool,
    /// Never more drains the operator asked for under way than `maxConcurrentDrains`.
    concurrency: bool,
}

struct Model {
    /// What is being run, for failure messages.
    label: String,
    lcs: LongConnService,
    update: String,
    /// `spec.replicas` of each revision's Deployment.
    deployments: BTreeMap<String, i32>,
    /// Revisions whose pods never get Ready.
    bad: BTreeSet<String>,
    /// Revisions whose app refuses one upgrade in three: the client tries again.
    refusing: BTreeSet<String>,
    pods: Vec<Pod>,
    next_seq: u32,
    tick: u32,
    now: Timestamp,
    stalled: bool,
    script: Script,
    checks: Checks,
    /// Clients whose session ended, waiting for a pod to take them.
    reconnecting: i64,
    /// Of those, the clients whose session was moved (by a drain or a rebalance).
    reconnecting_moved: Vec<Moves>,
    /// Sessions moved a second time in this run (moved onto a pod that was drained or
    /// rebalanced later).
    moved_again: i64,
    /// Changes of a pod's `longconn.dev/accepting` label the shell made (each one a PATCH).
    relabels: i64,
    /// The client Service: the revision its selector names, and when that last changed.
    service: ServiceFacts,
    /// Changes of the client Service's selector (each one a PATCH).
    selector_changes: i64,
    /// Status writes that could not wait (`plan::urgent_change`), with what forced each.
    urgent_writes: Vec<String>,
    /// Sessions moved by rebalancing.
    rebalanced: i64,
    /// Of those, sessions a rebalance had moved before.
    rebalanced_again: i64,
    /// The rebalances the shell asked for: (round, pod).
    rebalance_asked: BTreeSet<(u32, String)>,
    /// The rounds of rebalancing as recorded when each started: (tick, record).
    rounds: Vec<(u32, RebalanceStatus)>,
    /// Connection attempts that found no pod the client Service routes to.
    refused: i64,
    /// All clients: open sessions plus those reconnecting, always.
    clients: i64,
    /// Sessions that completed the close handshake, summed over every drain.
    migrated: i64,
    /// Sessions force-closed at a drain deadline.
    force_closed: i64,
    /// Sessions lost with a pod that vanished or a gateway that restarted.
    lost: i64,
    /// Pods the operator asked to drain.
    drain_asked: BTreeSet<String>,
    /// Pods that ever appeared in `status.rollout.draining`.
    recorded: BTreeSet<String>,
    /// Pods that vanished out from under the operator.
    vanished: Vec<String>,
    /// Gateways that restarted.
    restarted: Vec<String>,
    /// What the operator's report poller keeps between reconciles: each gateway's last
    /// reported open sessions; lost when the operator restarts.
    gateways_seen: BTreeMap<String, i64>,
    events: Vec<(u32, Note)>,
    progressing: Option<Verdict>,
    violations: Vec<String>,
    floor_reached: bool,
    /// Observations between a readiness probe's result and the Ready condition showing it.
    readiness_lag: usize,
    most_draining: usize,
    last_plan: Option<Plan>,
    history: Vec<String>,
}

impl Model {
    /// A settled service: revision `a` with `replicas` Ready pods holding sessions, its status
    /// written, no rollout recorded.
    fn settled(lcs: LongConnService) -> Self {
        let replicas = lcs.spec.replicas;
        let mut model = Self {
            label: String::new(),
            lcs,
            update: "a".to_owned(),
            deployments: BTreeMap::from([("a".to_owned(), replicas)]),
            bad: BTreeSet::new(),
            refusing: BTreeSet::new(),
            pods: Vec::new(),
            next_seq: 1,
            tick: 0,
            now: "2026-01-01T00:00:00Z".parse().expect("time"),
            stalled: false,
            readiness_lag: 1,
            script: Script::default(),
            checks: Checks {
                floor: true,
                concurrency: true,
            },
            reconnecting: 0,
            reconnecting_moved: Vec::new(),
            moved_again: 0,
            relabels: 0,
            service: ServiceFacts {
                exists: true,
                revision: Some("a".to_owned()),
                changed_at: None,
            },
            selector_changes: 0,
            urgent_writes: Vec::new(),
            rebalanced: 0,
            rebalanced_again: 0,
            rebalance_asked: BTreeSet::new(),
            rounds: Vec::new(),
            refused: 0,
            clients: 0,
            migrated: 0,
            force_closed: 0,
            lost: 0,
            drain_asked: BTreeSet::new(),
            recorded: BTreeSet::new(),
            vanished: Vec::new(),
            restarted: Vec::new(),
            gateways_seen: BTreeMap::new(),
            events: Vec::new(),
            progressing: None,
            violations: Vec::new(),
            floor_reached: false,
            most_draining: 0,
            last_plan: None,
            history: Vec::new(),
        };
        let lag = model.readiness_lag;
        for i in 0..usize::try_from(replicas).expect("replicas") {
            model.create_pod("a");
            let pod = model.pods.last_mut().expect("just created");
            pod.stage = Stage::Ready;
            pod.ready = true;
            pod.served = true;
            pod.routable = true;
            pod.probes = VecDeque::from(vec![true; lag]);
            pod.gateway.active = SESSIONS[i % SESSIONS.len()];
            model.clients += pod.gateway.active;
        }
        let (_, revisions) = model.observe();
        model.write_status(&revisions, None);
        model
    }

    /// Replaces the open sessions of the pods there now, in creation order.
    fn with_sessions(mut self, sessions: &[i64]) -> Self {
        for (pod, n) in self.pods.iter_mut().zip(sessions.iter().cycle()) {
            self.clients += n - pod.gateway.active;
            pod.gateway.active = *n;
        }
        self
    }

    /// Shows each pod's readiness probe result `lag` observations late.
    fn with_readiness_lag(mut self, lag: usize) -> Self {
        self.readiness_lag = lag;
        for pod in &mut self.pods {
            pod.probes = VecDeque::from(vec![pod.ready; lag]);
        }
        self
    }

    /// Gives every pod there now `n` stubborn sessions (of those it holds).
    fn with_stubborn(mut self, n: i64) -> Self {
        for pod in &mut self.pods {
            pod.gateway.stubborn = n.min(pod.gateway.active);
        }
        self
    }

    fn rollout(&self) -> Option<&RolloutStatus> {
        self.lcs.status.as_ref().and_then(|s| s.rollout.as_ref())
    }

    fn phase(&self) -> Option<RolloutPhase> {
        self.rollout().map(|r| r.phase)
    }

    fn current_revision(&self) -> Option<&str> {
        self.lcs
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
    }

    fn floor(&self) -> usize {
        let surge = disruption::scaled(
            &self.lcs.spec.rollout.max_surge,
            self.lcs.spec.replicas,
            true,
        );
        // With no surge, what the disruption budget lets go, and at least one pod.
        let floor = if surge > 0 {
            self.lcs.spec.replicas
        } else {
            (self.lcs.spec.replicas - disruption::allowed_unavailable(&self.lcs).max(1)).max(0)
        };
        usize::try_from(floor).expect("floor")
    }

    fn create_pod(&mut self, revision: &str) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pods.push(Pod {
            name: format!("{revision}-{seq}"),
            revision: revision.to_owned(),
            seq,
            created: self.now,
            stage: Stage::Pending,
            terminating: false,
            cost: None,
            unwell: false,
            node_lost_until: None,
            ready: false,
            probes: VecDeque::new(),
            served: false,
            accepting: Some(true),
            routed_at: None,
            routable: false,
            moved: Vec::new(),
            gateway: Gateway::default(),
        });
    }

    /// What the operator sees: every pod, and every revision's Deployment.
    fn observe(&self) -> (Vec<PodFacts>, Vec<ObservedRevision>) {
        let mut pods: Vec<PodFacts> = self
            .pods
            .iter()
            .map(|p| p.facts(self.gateways_seen.get(&p.name).copied()))
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        let revisions = self
            .deployments
            .iter()
            .map(|(revision, replicas)| {
                let active = self
                    .pods
                    .iter()
                    .filter(|p| p.revision == *revision && !p.terminating);
                let count = |ready: bool| {
                    let n = active.clone().filter(|p| !ready || p.ready).count();
                    i32::try_from(n).expect("pods")
                };
                ObservedRevision {
                    revision: revision.clone(),
                    replicas: *replicas,
                    current_replicas: count(false),
                    ready_replicas: count(true),
                }
            })
            .collect();
        (pods, revisions)
    }

    /// Probes every pod; the Ready condition shows the result `readiness_lag` probes late.
    fn kubelet(&mut self) {
        let lag = self.readiness_lag;
        for pod in &mut self.pods {
            pod.probes.push_back(pod.probe());
            while pod.probes.len() > lag + 1 {
                pod.probes.pop_front();
            }
            pod.ready = pod.probes.len() == lag + 1 && pod.probes[0];
            pod.served |= pod.ready;
        }
    }

    /// The EndpointSlices follow the labels and the Ready conditions of the last tick.
    fn endpoints(&mut self) {
        let selected = self.service.revision.clone();
        for pod in &mut self.pods {
            pod.routable = pod.endpoint() && selected.as_ref().is_none_or(|r| pod.revision == *r);
        }
    }

    /// One reconcile, then one tick of the cluster.
    fn tick(&mut self) {
        if let Some((at, revision)) = &self.script.new_revision
            && *at == self.tick
        {
            self.update = revision.clone();
        }
        if let Some((at, replicas)) = self.script.resize
            && at == self.tick
        {
            self.lcs.spec.replicas = replicas;
            self.floor_reached = false;
        }
        if self.script.stall_from.is_some_and(|at| self.tick >= at) {
            self.stalled = true;
        }
        self.endpoints();
        self.kubelet();
        self.poll_gateways();
        let (pods, revisions) = self.observe();
        self.check_cluster();
        let plan = {
            let input = Input {
                lcs: &self.lcs,
                update_revision: &self.update,
                revisions: &revisions,
                pods: &pods,
                service: &self.service,
                update_stalled: self.stalled,
                refresh_sessions: true,
                now: self.now,
            };
            let plan = rollout::step(&input);
            if rollout::step(&input) != plan {
                self.fail("step gave two different plans for the same input");
            }
            plan
        };
        let actions = match &self.script.crash {
            Some((at, actions)) if *at == self.tick => actions.clone(),
            _ => ACTIONS.to_vec(),
        };
        self.note_plan(&plan, &actions);
        let crash = actions.len() < ACTIONS.len();
        for action in &actions {
            match action {
                Action::Drain => self.send_drains(&plan),
                Action::Cost => self.patch_costs(&plan),
                Action::Replicas => self.apply_replicas(&plan),
                Action::Status => self.write_status(&revisions, Some(&plan)),
                Action::Routing => self.relabel(&plan),
                Action::Rebalance => self.ask_rebalance(&plan, if crash { 1 } else { usize::MAX }),
            }
        }
        if crash {
            // The operator restarts: what it kept in memory is gone.
            self.gateways_seen.clear();
        }
        self.check_drains();
        self.check_rebalance();
        self.last_plan = Some(plan);
        self.advance();
        self.tick += 1;
        self.now += TICK;
    }

    /// The operator's report poller: reads every running gateway, keeps the last count of
    /// each pod that is still listed.
    fn poll_gateways(&mut self) {
        let names: BTreeSet<&String> = self.pods.iter().map(|p| &p.name).collect();
        self.gateways_seen.retain(|name, _| names.contains(name));
        for pod in &self.pods {
            if pod.reachable() {
                self.gateways_seen
                    .insert(pod.name.clone(), pod.gateway.active);
            }
        }
    }

    fn relabel(&mut self, plan: &Plan) {
        for (name, accepting) in &plan.routing {
            if let Some(pod) = self.pods.iter_mut().find(|p| p.name == *name) {
                pod.accepting = Some(*accepting);
                pod.routed_at = Some(self.now);
                self.relabels += 1;
            }
        }
        if self.service.revision != plan.selects {
            self.service.revision = plan.selects.clone();
            self.service.changed_at = Some(self.now);
            self.selector_changes += 1;
        }
    }

    fn send_drains(&mut self, plan: &Plan) {
        for name in &plan.drain {
            if let Some(pod) = self.pods.iter_mut().find(|p| p.name == *name) {
                if pod.running() {
                    if pod.routable && pod.gateway.state == DrainState::Serving {
                        self.violations.push(format!(
                            "tick {}: pod {} asked to drain while the Service still routes to it",
                            self.tick, pod.name
                        ));
                    }
                    pod.gateway.drain();
                }
                self.drain_asked.insert(name.clone());
            }
        }
    }

    /// Asks the gateways of the round the plan starts to move their share, at most `asks` of
    /// them, once the round is recorded (the status written in this tick holds it).
    fn ask_rebalance(&mut self, plan: &Plan, asks: usize) {
        let recorded = self.lcs.status.as_ref().and_then(|s| s.rebalance.as_ref());
        let Some(round) = plan.rebalance.as_ref().filter(|r| Some(*r) == recorded) else {
            if !plan.rebalance_asks.is_empty() {
                self.violations
                    .push(format!("tick {}: asks for a round not recorded", self.tick));
            }
            return;
        };
        let round = round.round;
        for ask in plan.rebalance_asks.iter().take(asks) {
            if !self.rebalance_asked.insert((round, ask.pod.clone())) {
                self.violations.push(format!(
                    "tick {}: pod {} asked twice for round {round}",
                    self.tick, ask.pod
                ));
            }
            let Some(pod) = self.pods.iter_mut().find(|p| p.name == ask.pod) else {
                continue;
            };
            if pod.routable {
                self.violations.push(format!(
                    "tick {}: pod {} asked to rebalance while the Service still routes to it",
                    self.tick, pod.name
                ));
            }
            if pod.reachable() {
                pod.gateway.rebalance(round, ask.sessions);
            }
        }
    }

    fn patch_costs(&mut self, plan: &Plan) {
        for name in &plan.lowest_cost {
            if let Some(pod) = self.pods.iter_mut().find(|p| p.name == *name) {
                pod.cost = Some(LOWEST_COST);
            }
        }
    }

    fn apply_replicas(&mut self, plan: &Plan) {
        self.deployments = plan.replicas.clone();
    }

    /// Writes the status as the reconciler does: computed from the observed revisions and the
    /// plan; then records the plan's Events, which the reconciler posts after the status.
    fn write_status(&mut self, revisions: &[ObservedRevision], plan: Option<&Plan>) {
        let active_sessions = plan.map_or_else(
            || self.pods.iter().map(|p| p.gateway.active).sum(),
            |p| p.active_sessions,
        );
        let no_drains = Verdict {
            status: true,
            reason: "NoDrains",
            message: "no pod has been drained yet".to_owned(),
        };
        let status = status::compute(
            &self.lcs,
            &Facts {
                update_revision: &self.update,
                revisions,
                update_stalled: self.stalled,
                update_refused: None,
                problems: &[],
                certificate: &CertFacts::Disabled,
                monitoring: MonitoringFacts::Disabled,
                active_sessions,
                rollout: plan.and_then(|p| p.rollout.as_ref()),
                progressing: plan.and_then(|p| p.progressing.as_ref()),
                sessions_preserved: plan.map_or(&no_drains, |p| &p.sessions_preserved),
                gateways: plan.map_or(&[], |p| p.gateways.as_slice()),
                autoscaling: None,
                rebalance: plan.and_then(|p| p.rebalance.as_ref()),
                now: self.now,
            },
        );
        let last_round = self.lcs.status.as_ref().and_then(|s| s.rebalance.clone());
        if let Some(old) = &self.lcs.status
            && let Some(field) = plan::urgent_change(old, &status)
        {
            self.urgent_writes
                .push(format!("tick {}: {field}", self.tick));
        }
        self.lcs.status = Some(status);
        if let Some(plan) = plan {
            self.note_round(last_round.as_ref(), plan);
            self.progressing = plan.progressing.clone();
            let tick = self.tick;
            self.events
                .extend(plan.events.iter().map(|e| (tick, e.clone())));
            for entry in plan.rollout.iter().flat_map(|r| &r.draining) {
                self.recorded.insert(entry.pod.clone());
            }
        }
    }

    /// Checks the books of rebalancing as the status written from `plan` keeps them, after
    /// `last`: a round is never forgotten, each new one follows the last, counts what it asks
    /// and starts a cooldown after it (or at once when the number of pods serving changed).
    fn note_round(&mut self, last: Option<&RebalanceStatus>, plan: &Plan) {
        // A new round has a new number; the same round changes as its pods' outcomes come in.
        let Some(round) = plan
            .rebalance
            .as_ref()
            .filter(|r| last.is_none_or(|l| l.round != r.round))
        else {
            if last.is_some() && plan.rebalance.is_none() {
                self.violations
                    .push(format!("tick {}: status.rebalance is gone", self.tick));
            }
            return;
        };
        let asked: i64 = plan.rebalance_asks.iter().map(|a| a.sessions).sum();
        let (rounds, sessions_asked) = last.map_or((0, 0), |r| (r.round, r.sessions_asked));
        if round.round != rounds + 1 || round.sessions_asked != sessions_asked + asked {
            self.violations.push(format!(
                "tick {}: round {} asking {asked} recorded after round {rounds} with \
                 sessionsAsked {} after {sessions_asked}",
                self.tick, round.round, round.sessions_asked
            ));
        }
        let cooldown = self.cooldown();
        let started = |r: &RebalanceStatus| r.started_at.as_ref().map(|t| t.0);
        if let Some(last) = last
            && last.pods_serving == round.pods_serving
            && let (Some(then), Some(now)) = (started(last), started(round))
            && now.duration_since(then) < cooldown
        {
            self.violations.push(format!(
                "tick {}: round {} started {} after round {}, within the cooldown",
                self.tick,
                round.round,
                now.duration_since(then),
                last.round
            ));
        }
        self.rounds.push((self.tick, round.clone()));
    }

    /// The least time between two rounds' starts (zero while rebalancing is off).
    fn cooldown(&self) -> SignedDuration {
        self.lcs
            .spec
            .autoscaling
            .as_ref()
            .and_then(|a| rebalance::Settings::of(&a.rebalance))
            .map_or(SignedDuration::ZERO, |s| s.cooldown)
    }

    /// After the shell acted: a pod whose gateway moves sessions of a round takes none.
    fn check_rebalance(&mut self) {
        if let Some(pod) = self
            .pods
            .iter()
            .find(|p| p.gateway.rebalancing() && p.accepting == Some(true))
        {
            self.fail(&format!(
                "pod {} accepts while it moves sessions of a round",
                pod.name
            ));
        }
    }

    /// One tick of the cluster: disruptions, terminating pods going, gateways draining, pods
    /// starting, ReplicaSets, reconnecting clients.
    fn advance(&mut self) {
        self.disrupt();
        // A terminating pod goes once its drain's end was visible (or it never ran); one on a
        // lost node when the pod garbage collector force-deletes it.
        let tick = self.tick;
        self.pods.retain(|p| match p.node_lost_until {
            Some(until) => tick < until,
            None => !(p.terminating && (!p.running() || p.gateway.state == DrainState::Drained)),
        });
        let mut moving = Vec::new();
        for pod in &mut self.pods {
            let was = pod.gateway.active;
            let (migrated, closed) = pod.gateway.advance();
            self.migrated += migrated;
            self.force_closed += closed;
            self.reconnecting += closed;
            moving.extend(
                pod.clients_moving(migrated, was, false)
                    .into_iter()
                    .map(|c| (c, None)),
            );
            if let Some((round, n)) = pod.gateway.advance_rebalance() {
                self.rebalanced += n;
                let clients = pod.clients_moving(n, was, true);
                moving.extend(
                    clients
                        .into_iter()
                        .map(|c| (c, Some((round, pod.name.clone())))),
                );
            }
            pod.moved
                .truncate(usize::try_from(pod.gateway.active).expect("sessions"));
            debug_assert!(pod.gateway.active <= was);
        }
        for (client, rebalance) in moving {
            self.move_client(client, rebalance);
        }
        // The ReplicaSets act on the pods as the reconcile saw them (a real one deletes a pod
        // still Pending at once, before it could start); then the pods that were there move on.
        let existing = self.pods.len();
        self.reconcile_replica_sets();
        for pod in &mut self.pods[..existing] {
            if pod.terminating {
                continue;
            }
            pod.stage = match pod.stage {
                Stage::Pending => Stage::Running,
                Stage::Running if !self.bad.contains(&pod.revision) => Stage::Ready,
                stage => stage,
            };
        }
        self.reconnect();
    }

    fn disrupt(&mut self) {
        if let Some((at, name)) = &self.script.evict
            && *at == self.tick
            && let Some(pod) = self
                .pods
                .iter_mut()
                .find(|p| p.name == *name && !p.terminating)
        {
            pod.terminating = true;
            if !self.script.handoff {
                pod.gateway.drain();
            }
        }
        if let Some((at, name)) = &self.script.node_lost
            && *at == self.tick
            && let Some(pod) = self.pods.iter_mut().find(|p| p.name == *name)
        {
            pod.terminating = true;
            pod.node_lost_until = Some(self.tick + 3);
            self.lost += pod.gateway.active;
            self.reconnecting += pod.gateway.active;
            pod.gateway.active = 0;
        }
        if let Some((at, name)) = &self.script.unwell
            && *at == self.tick
            && let Some(pod) = self.pods.iter_mut().find(|p| p.name == *name)
        {
            pod.unwell = true;
        }
        let restarting = match &self.script.gateway_restart {
            Some(GatewayRestart::At(at, name)) if *at == self.tick => {
                self.pods.iter().position(|p| p.name == *name)
            }
            Some(GatewayRestart::MidDrain) if self.restarted.is_empty() => {
                self.pods.iter().position(|p| {
                    p.gateway.state == DrainState::Draining
                        && p.gateway.active > 0
                        && self.drain_asked.contains(&p.name)
                })
            }
            _ => None,
        };
        if let Some(i) = restarting {
            let pod = &mut self.pods[i];
            self.lost += pod.gateway.active;
            self.reconnecting += pod.gateway.active;
            pod.gateway.restart();
            self.restarted.push(pod.name.clone());
        }
        if self.script.vanish_mid_drain && self.vanished.is_empty() {
            let recorded = |name: &str| {
                self.rollout().is_some_and(|r| {
                    r.draining
                        .iter()
                        .any(|e| e.pod == name && e.finished_at.is_none())
                })
            };
            if let Some(i) = self.pods.iter().position(|p| {
                p.gateway.state == DrainState::Draining && p.gateway.active > 0 && recorded(&p.name)
            }) {
                let pod = self.pods.remove(i);
                self.lost += pod.gateway.active;
                self.reconnecting += pod.gateway.active;
                self.vanished.push(pod.name);
            }
        }
    }

    fn reconcile_replica_sets(&mut self) {
        let revisions: BTreeSet<String> = self
            .pods
            .iter()
            .map(|p| p.revision.clone())
            .chain(self.deployments.keys().cloned())
            .collect();
        for revision in revisions {
            let mut active: Vec<usize> = (0..self.pods.len())
                .filter(|&i| self.pods[i].revision == revision && !self.pods[i].terminating)
                .collect();
            // A deleted Deployment takes its pods with it.
            let want = self
                .deployments
                .get(&revision)
                .map_or(0, |n| usize::try_from(*n).unwrap_or(0));
            if active.len() > want {
                active.sort_by_key(|&i| self.pods[i].deletion_rank());
                for &i in &active[..active.len() - want] {
                    self.delete_pod(i);
                }
            } else if self.deployments.contains_key(&revision) {
                for _ in active.len()..want {
                    self.create_pod(&revision);
                }
            }
        }
    }

    /// The ReplicaSet deletes a pod: it terminates, and its preStop hook drains its gateway.
    fn delete_pod(&mut self, i: usize) {
        let tick = self.tick;
        let pod = &mut self.pods[i];
        let how = match pod.gateway.state {
            // A pod that never served has nothing to drain.
            _ if !pod.served => None,
            DrainState::Serving => Some("without a drain"),
            DrainState::Draining if pod.gateway.active > 0 => Some("before its drain finished"),
            _ => None,
        };
        if let Some(how) = how {
            self.violations.push(format!(
                "tick {tick}: pod {} deleted {how}, with {} open sessions",
                pod.name, pod.gateway.active
            ));
        }
        pod.terminating = true;
        if pod.running() {
            pod.gateway.drain();
        }
    }

    /// A client whose session moved (by a drain, or by a round of rebalancing from a pod)
    /// reconnects; its moves are counted.
    fn move_client(&mut self, mut client: Moves, rebalance: Option<(u32, String)>) {
        if client.times > 0 {
            self.moved_again += 1;
        }
        if let Some((round, pod)) = rebalance {
            if client.rounds.contains(&round) {
                self.violations.push(format!(
                    "tick {}: round {round} of rebalancing moved a client twice (again from {pod})",
                    self.tick
                ));
            }
            if !client.rounds.is_empty() {
                self.rebalanced_again += 1;
            }
            client.rounds.push(round);
        }
        client.times += 1;
        self.reconnecting += 1;
        self.reconnecting_moved.push(client);
    }

    /// Each waiting client connects to a pod the client Service routes to (the one with the
    /// fewest sessions); finding none, or one that no longer serves, counts as refused and it
    /// tries the serving pod with the fewest sessions.
    fn reconnect(&mut self) {
        while self.reconnecting > 0 {
            let routed = self
                .pods
                .iter()
                .filter(|p| p.routable)
                .min_by_key(|p| (p.gateway.active, p.seq))
                .map(|p| p.name.clone());
            let serving = |p: &&mut Pod| p.serving();
            let target = match routed {
                Some(name) if self.pods.iter().any(|p| p.name == name && p.serving()) => {
                    self.pods.iter_mut().find(|p| p.name == name)
                }
                _ => {
                    self.refused += 1;
                    self.pods
                        .iter_mut()
                        .filter(serving)
                        .min_by_key(|p| (p.gateway.active, p.seq))
                }
            };
            let Some(pod) = target else {
                break;
            };
            let health = &mut pod.gateway.health;
            if self.refusing.contains(&pod.revision) && health.attempts() % 3 == 2 {
                health.upstream_refused += 1;
                continue;
            }
            health.handshakes += 1;
            pod.gateway.active += 1;
            pod.moved.extend(self.reconnecting_moved.pop());
            self.reconnecting -= 1;
        }
    }

    /// The invariants that hold at every tick.
    fn check_cluster(&mut self) {
        if let Some(pod) = self.pods.iter().find(|p| !p.gateway.adds_up()) {
            self.fail(&format!(
                "the model's report of {} does not add up",
                pod.name
            ));
        }
        let open: i64 = self.pods.iter().map(|p| p.gateway.active).sum();
        if open + self.reconnecting != self.clients {
            self.fail("the model lost clients");
        }
        if let Some(v) = self.violations.first() {
            self.fail(v);
        }
        let serving = self.pods.iter().filter(|p| p.serving()).count();
        let floor = self.floor();
        if serving >= floor {
            self.floor_reached = true;
        } else if self.checks.floor && self.floor_reached {
            self.fail(&format!(
                "{serving} Ready serving pods, fewer than the floor of {floor}"
            ));
        }
    }

    /// Right after the shell acted, when the most drains are under way.
    fn check_drains(&mut self) {
        let draining = self
            .pods
            .iter()
            .filter(|p| {
                p.gateway.state == DrainState::Draining && self.drain_asked.contains(&p.name)
            })
            .count();
        self.most_draining = self.most_draining.max(draining);
        let limit = self
            .lcs
            .spec
            .rollout
            .max_concurrent_drains
            .map_or(usize::MAX, |n| usize::try_from(n).expect("limit"));
        if self.checks.concurrency && draining > limit {
            self.fail(&format!(
                "{draining} drains under way, more than maxConcurrentDrains {limit}"
            ));
        }
    }

    fn note_plan(&mut self, plan: &Plan, actions: &[Action]) {
        let mut line = format!(
            "tick {}: replicas {:?} drain {:?} lowest_cost {:?} phase {:?} started {} active {}",
            self.tick,
            plan.replicas,
            plan.drain,
            plan.lowest_cost,
            plan.rollout.as_ref().map(|r| r.phase),
            plan.started,
            plan.active,
        );
        for (pod, accepting) in &plan.routing {
            let _ = write!(line, " {pod} accepting {accepting}");
        }
        for ask in &plan.rebalance_asks {
            let _ = write!(line, " rebalance {} of {}", ask.sessions, ask.pod);
        }
        for event in &plan.events {
            let _ = write!(line, " event {}", event.reason);
        }
        if actions.len() < ACTIONS.len() {
            let _ = write!(line, " CRASH, only {actions:?} performed");
        }
        self.history.push(line);
    }

    /// Runs ticks until `done` holds, at most [`MAX_TICKS`].
    fn run_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..MAX_TICKS {
            if done(self) {
                return;
            }
            self.tick();
        }
        if !done(self) {
            self.fail(&format!("{what}: not within {MAX_TICKS} ticks"));
        }
    }

    fn run_for(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.tick();
        }
    }

    /// The rollout to `revision` is complete and the cluster has nothing else left.
    fn settled_on(&self, revision: &str) -> bool {
        let want = usize::try_from(self.lcs.spec.replicas).expect("replicas");
        self.phase() == Some(RolloutPhase::Complete)
            && self.rollout().is_some_and(|r| r.revision == revision)
            && self.deployments.keys().eq([revision])
            && self.pods.len() == want
            && self
                .pods
                .iter()
                .all(|p| p.revision == revision && p.serving())
            && self.reconnecting == 0
    }

    fn run_to_completion(&mut self) {
        let update = self.update.clone();
        self.run_until("the rollout completes", |m| m.settled_on(&update));
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        panic!("tick {}: {what}\n{}", self.tick, self.dump());
    }

    #[track_caller]
    fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what);
        }
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        if !self.label.is_empty() {
            let _ = writeln!(out, "scenario: {}", self.label);
        }
        let spec = &self.lcs.spec;
        let _ = writeln!(
            out,
            "spec: replicas {}, maxSurge {:?}, maxConcurrentDrains {:?}, maxDroppedSessions {}, \
             on exceeded {:?}; update revision {}, current {:?}, stalled {}",
            spec.replicas,
            spec.rollout.max_surge,
            spec.rollout.max_concurrent_drains,
            spec.rollout.max_dropped_sessions,
            spec.rollout.on_drop_budget_exceeded,
            self.update,
            self.current_revision(),
            self.stalled,
        );
        let _ = writeln!(out, "deployments: {:?}", self.deployments);
        let _ = writeln!(out, "pods:");
        for p in &self.pods {
            let g = &p.gateway;
            let _ = writeln!(
                out,
                "  {:<6} {:?}{}{}{} cost {:?}: gateway {:?} active {} (stubborn {}) \
                 atStart {} migrated {} dropped {}",
                p.name,
                p.stage,
                if p.ready { " ready" } else { "" },
                if p.terminating { " terminating" } else { "" },
                if p.unwell { " unwell" } else { "" },
                p.cost,
                g.state,
                g.active,
                g.stubborn,
                g.sessions_at_start,
                g.migrated,
                g.dropped,
            );
            if let Some(r) = &g.rebalance {
                let _ = writeln!(out, "         rebalance round {} left {}", r.round, r.left);
            }
        }
        let _ = writeln!(
            out,
            "clients {} (reconnecting {}); model: migrated {}, force-closed {}, lost {}",
            self.clients, self.reconnecting, self.migrated, self.force_closed, self.lost
        );
        match self.rollout() {
            None => {
                let _ = writeln!(out, "status.rollout: none");
            }
            Some(r) => {
                let _ = writeln!(
                    out,
                    "status.rollout: revision {} phase {:?} finished {} podsDrained {} \
                     migrated {} dropped {}",
                    r.revision,
                    r.phase,
                    r.finished_at.is_some(),
                    r.pods_drained,
                    r.sessions_migrated,
                    r.sessions_dropped
                );
                for e in &r.draining {
                    let _ = writeln!(
                        out,
                        "  draining {} ({}) atStart {} active {} migrated {} dropped {} \
                         finished {}",
                        e.pod,
                        e.revision,
                        e.sessions_at_start,
                        e.active,
                        e.migrated,
                        e.dropped,
                        e.finished_at.is_some()
                    );
                }
            }
        }
        if let Some(r) = self.lcs.status.as_ref().and_then(|s| s.rebalance.as_ref()) {
            let _ = writeln!(
                out,
                "status.rebalance: round {} podsServing {} sessionsAsked {} pods {:?}; model: \
                 rebalanced {} (again {}), moved again {}, refused {}",
                r.round,
                r.pods_serving,
                r.sessions_asked,
                r.pods,
                self.rebalanced,
                self.rebalanced_again,
                self.moved_again,
                self.refused
            );
        }
        let _ = writeln!(out, "progressing verdict: {:?}", self.progressing);
        let _ = writeln!(out, "violations: {:?}", self.violations);
        let _ = writeln!(out, "last plans:");
        let skip = self.history.len().saturating_sub(15);
        for line in &self.history[skip..] {
            let _ = writeln!(out, "  {line}");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios and property helpers

fn service(replicas: i32) -> LongConnService {
    LongConnService::test().replicas(replicas).build()
}

fn service_with(replicas: i32, max_surge: IntOrString, drains: i32) -> LongConnService {
    LongConnService::test()
        .replicas(replicas)
        .max_surge(max_surge)
        .max_concurrent_drains(drains)
        .build()
}

/// A settled service whose spec now asks for revision `b`.
fn rolling_update(lcs: LongConnService) -> Model {
    let mut model = Model::settled(lcs);
    model.update = "b".to_owned();
    model
}

fn pods_of(model: &Model, revision: &str) -> Vec<String> {
    model
        .pods
        .iter()
        .filter(|p| p.revision == revision)
        .map(|p| p.name.clone())
        .collect()
}

fn warnings(model: &Model, reason: &str) -> usize {
    model
        .events
        .iter()
        .filter(|(_, e)| e.warning && e.reason == reason)
        .count()
}

/// After a rollout or scale-down: complete, every pod of `initial` that went was drained
/// before it went, nothing dropped, and the operator's accounting equal to the model's.
#[track_caller]
fn assert_clean_rollout(model: &Model, initial: &[String]) {
    let old_pods: Vec<&String> = initial
        .iter()
        .filter(|name| !model.pods.iter().any(|p| p.name == **name))
        .collect();
    let r = model.rollout().expect("status.rollout");
    model.check(r.phase == RolloutPhase::Complete, "phase Complete");
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(
        model.force_closed == 0 && model.lost == 0,
        "the model dropped no session",
    );
    model.check(r.sessions_dropped == 0, "status counts 0 dropped");
    model.check(
        r.sessions_migrated == model.migrated,
        &format!(
            "status counts {} migrated, the gateways migrated {}",
            r.sessions_migrated, model.migrated
        ),
    );
    model.check(
        r.pods_drained == i32::try_from(old_pods.len()).expect("pods"),
        &format!("podsDrained is {}, not {}", r.pods_drained, old_pods.len()),
    );
    for pod in old_pods {
        model.check(
            model.drain_asked.contains(pod) || model.recorded.contains(pod),
            &format!("old pod {pod} was drained"),
        );
    }
    model.check(
        model.deployments.keys().eq([model.update.as_str()]),
        "only the update revision's Deployment is left",
    );
}

// ---------------------------------------------------------------------------------------------
// Rolling updates

#[test]
fn rolling_update_drains_every_old_pod_and_drops_nothing() {
    let mut model = rolling_update(service(3));
    let old = pods_of(&model, "a");
    let sessions = model.clients;
    model.run_to_completion();
    assert_clean_rollout(&model, &old);
    model.check(model.most_draining <= 1, "one drain at a time");
    model.check(model.migrated >= sessions, "every old session moved");
    model.check(
        model
            .events
            .iter()
            .any(|(_, e)| e.reason == "RolloutComplete"),
        "a RolloutComplete event",
    );
    model.run_for(2);
    model.check(
        model.current_revision() == Some("b"),
        "status.currentRevision is the new revision",
    );
    model.check(
        !model.last_plan.as_ref().expect("a plan").active,
        "nothing in motion once complete",
    );
}

#[test]
fn rolling_update_keeps_its_guarantees_for_every_surge_and_drain_limit() {
    let surges = [
        IntOrString::Int(0),
        IntOrString::Int(1),
        IntOrString::Int(2),
        IntOrString::String("50%".to_owned()),
    ];
    for replicas in 1..=6 {
        for surge in &surges {
            for drains in 1..=3 {
                let lcs = service_with(replicas, surge.clone(), drains);
                let allows_one_down = disruption::needed_ready(&lcs) < replicas;
                if disruption::scaled(surge, replicas, true) == 0 && !allows_one_down {
                    continue;
                }
                for readiness_lag in 0..=2 {
                    for idle in [false, true] {
                        let mut model =
                            rolling_update(lcs.clone()).with_readiness_lag(readiness_lag);
                        if idle {
                            model = model.with_sessions(&[0]);
                        }
                        model.label = format!("readiness lag {readiness_lag}, idle pods {idle}");
                        let old = pods_of(&model, "a");
                        model.run_to_completion();
                        assert_clean_rollout(&model, &old);
                    }
                }
            }
        }
    }
}

/// With a surge, every session moves at most once, no reconnect finds a pod that does not
/// serve, and the pods end within 1.25 times the mean sessions per pod.
#[track_caller]
fn assert_moved_once_and_balanced(model: &Model) {
    model.check(
        model.moved_again == 0,
        &format!("{} sessions moved more than once", model.moved_again),
    );
    model.check(
        model.refused == 0,
        &format!("{} reconnects found no serving pod", model.refused),
    );
    if let Some((counts, mean)) = uneven(model) {
        model.fail(&format!(
            "sessions per pod {counts:?}: the busiest above 1.25x the mean {mean:.1}"
        ));
    }
}

/// The sessions per pod and their mean, when the busiest pod holds more than 1.25 times the
/// mean.
fn uneven(model: &Model) -> Option<(Vec<i64>, f64)> {
    let counts: Vec<i64> = model.pods.iter().map(|p| p.gateway.active).collect();
    let mean = counts.iter().sum::<i64>() as f64 / counts.len().max(1) as f64;
    let most = counts.iter().copied().max().unwrap_or(0) as f64;
    (most > 1.25 * mean).then_some((counts, mean))
}

/// Sessions per old pod at a rollout's start: about even, and as uneven as `make bench-rollout`
/// found them (one pod with 1.8 times the mean).
const STARTS: [[i64; 6]; 2] = [[300, 280, 320, 310, 290, 305], [71, 85, 85, 86, 93, 180]];

#[test]
fn with_a_surge_every_session_moves_once_and_lands_where_there_is_room() {
    let surges = [
        IntOrString::Int(1),
        IntOrString::String("50%".to_owned()),
        IntOrString::String("100%".to_owned()),
    ];
    for replicas in [2, 3, 6] {
        for surge in &surges {
            for lag in [0, 1, 3] {
                for sessions in &STARTS {
                    let lcs = LongConnService::test()
                        .replicas(replicas)
                        .max_surge(surge.clone())
                        .build();
                    let mut model = rolling_update(lcs)
                        .with_readiness_lag(lag)
                        .with_sessions(sessions);
                    model.label =
                        format!("replicas {replicas}, surge {surge:?}, lag {lag}, {sessions:?}");
                    let old = pods_of(&model, "a");
                    model.run_to_completion();
                    assert_clean_rollout(&model, &old);
                    assert_moved_once_and_balanced(&model);
                    assert_few_relabels(&model);
                    assert_few_status_writes(&model);
                }
            }
        }
    }
}

/// A rollout that starts while the busiest pods are out of the Service for being full (as after
/// the sessions of a mass reconnect landed on a few pods: `make bench-rollout` found two pods
/// with 176 sessions each, the others 14 to 118): those pods are picked first, and with one
/// receiver Ready, nothing on its way and no receiver starting, waiting would change nothing.
/// The drain that fits goes first instead of 176 sessions onto a single receiver, which would
/// hold them for good (each session moves once) and end the rollout at 1.76 times the mean.
#[test]
fn a_rollout_that_starts_with_full_pods_stopped_still_ends_balanced() {
    for drains in [None, Some(1)] {
        for lag in [0, 1, 3] {
            let mut lcs = LongConnService::test().replicas(6).build();
            lcs.spec.rollout.max_concurrent_drains = drains;
            let mut model = rolling_update(lcs)
                .with_readiness_lag(lag)
                .with_sessions(&[176, 176, 14, 15, 101, 118]);
            for pod in model.pods.iter_mut().take(2) {
                pod.accepting = Some(false);
                pod.routable = false;
            }
            model.label = format!("maxConcurrentDrains {drains:?}, lag {lag}");
            let old = pods_of(&model, "a");
            model.run_to_completion();
            assert_clean_rollout(&model, &old);
            assert_moved_once_and_balanced(&model);
        }
    }
}

#[test]
fn a_scale_down_moves_each_session_once_onto_the_pods_that_stay() {
    for (from, to) in [(3, 2), (5, 2), (6, 5)] {
        let mut model =
            Model::settled(service(from)).with_sessions(&[300, 280, 320, 310, 290, 305]);
        model.label = format!("{from} to {to}");
        let old = pods_of(&model, "a");
        model.lcs.spec.replicas = to;
        model.run_to_completion();
        assert_clean_rollout(&model, &old);
        assert_moved_once_and_balanced(&model);
    }
}

/// Each change of a pod's `longconn.dev/accepting` label is a PATCH, and so is each change of
/// the client Service's selector: a rollout makes at most two per pod it drains. The old pods
/// leave the Service together, in one change of its selector (the new revision's), and keep
/// their labels; the rest are the receivers that take each drain's sessions. A scale-down is
/// not held to it: it sends each drain's sessions to the receivers with the most room,
/// whichever accepted before, so that the next scale-down does not drain them.
#[track_caller]
fn assert_few_relabels(model: &Model) {
    let drained = model.rollout().map_or(0, |r| r.pods_drained);
    model.check(
        model.selector_changes <= 1
            && model.relabels + model.selector_changes <= 2 * i64::from(drained),
        &format!(
            "{} label changes and {} of the Service's selector for {drained} pods drained",
            model.relabels, model.selector_changes
        ),
    );
}

/// Each status write that cannot wait is a PATCH: a rollout records its start, each drain's
/// start and end, and its end; a drain's progress, the phase between drains and the
/// Progressing condition's words wait for those.
#[track_caller]
fn assert_few_status_writes(model: &Model) {
    let drained = model.rollout().map_or(0, |r| r.pods_drained);
    model.check(
        model.urgent_writes.len() <= 2 * usize::try_from(drained).unwrap_or(0) + 2,
        &format!(
            "{} status writes that could not wait for {drained} pods drained: {:?}",
            model.urgent_writes.len(),
            model.urgent_writes
        ),
    );
}

#[test]
fn a_single_replica_with_max_surge_zero_rolls_out() {
    // maxUnavailable 1 (the default) allows the one pod to go, and the schema accepts the spec.
    let mut model = rolling_update(service_with(1, IntOrString::Int(0), 1));
    let old = pods_of(&model, "a");
    model.run_to_completion();
    assert_clean_rollout(&model, &old);
}

// ---------------------------------------------------------------------------------------------
// Operator restarts and disruptions

/// Ticks a scenario takes to complete without a crash.
fn ticks_to_complete(mut model: Model) -> u32 {
    model.run_to_completion();
    model.tick
}

/// A named way to build a model.
type Scenario = (&'static str, fn() -> Model);

/// The scenarios the restart test replays, crashing at each of their ticks.
fn restart_scenarios() -> Vec<Scenario> {
    vec![
        ("rolling update of 3", || rolling_update(service(3))),
        ("rolling update of 4, maxSurge 2, 2 drains at once", || {
            rolling_update(service_with(4, IntOrString::Int(2), 2))
        }),
        ("rolling update of 3, maxSurge 0", || {
            rolling_update(service_with(3, IntOrString::Int(0), 1))
        }),
        ("rolling update of 3 pods without sessions", || {
            rolling_update(service(3)).with_sessions(&[0])
        }),
        ("scale-down from 5 to 2", || {
            let mut model = Model::settled(service(5));
            model.lcs.spec.replicas = 2;
            model
        }),
    ]
}

#[test]
fn restart_at_any_point_neither_loses_nor_double_counts() {
    for (name, build) in restart_scenarios() {
        for readiness_lag in [1, 2] {
            let ticks = ticks_to_complete(build().with_readiness_lag(readiness_lag));
            for (at, kind) in crashes(0..=ticks) {
                let mut model = build().with_readiness_lag(readiness_lag);
                let initial: Vec<String> = model.pods.iter().map(|p| p.name.clone()).collect();
                model.script.crash = Some((at, kind.clone()));
                model.label = format!(
                    "{name}, readiness lag {readiness_lag}, crash at tick {at} doing only \
                     {kind:?}"
                );
                model.run_to_completion();
                assert_clean_rollout(&model, &initial);
            }
        }
    }
}

/// Something that happens to a rolling update of 3 pods (`a-1` 12 sessions, `a-2` 5, `a-3` 20)
/// at a chosen tick, without the operator asking for it.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// An old pod is evicted: it terminates and its preStop hook drains it.
    Evict(&'static str),
    /// An old pod's readiness probe starts failing; its sessions stay open.
    Unwell(&'static str),
    /// `spec.replicas` changes (kubectl scale, the autoscaler).
    Resize(i32),
}

const DISRUPTIONS: [Disruption; 6] = [
    Disruption::Evict("a-3"),
    Disruption::Evict("a-2"),
    Disruption::Unwell("a-3"),
    Disruption::Unwell("a-1"),
    Disruption::Resize(2),
    Disruption::Resize(5),
];

/// Runs a rolling update of 3 with `disruption` at tick `at`, to completion.
fn disrupted_rollout(disruption: Disruption, at: u32, readiness_lag: usize) -> Model {
    let mut model = rolling_update(service(3)).with_readiness_lag(readiness_lag);
    model.label = format!("{disruption:?} at tick {at}, readiness lag {readiness_lag}");
    match disruption {
        Disruption::Evict(pod) => {
            model.script.evict = Some((at, pod.to_owned()));
            model.checks.floor = false;
        }
        Disruption::Unwell(pod) => {
            model.script.unwell = Some((at, pod.to_owned()));
            model.checks.floor = false;
        }
        Disruption::Resize(replicas) => model.script.resize = Some((at, replicas)),
    }
    model.run_until("the disruption happens", |m| m.tick > at);
    model.run_to_completion();
    model
}

#[test]
fn disruptions_at_any_point_of_a_rolling_update_drop_nothing() {
    let ticks = ticks_to_complete(rolling_update(service(3)));
    for disruption in DISRUPTIONS {
        for at in 0..=ticks {
            let model = disrupted_rollout(disruption, at, 1);
            let r = model.rollout().expect("status.rollout");
            model.check(model.violations.is_empty(), "no pod deleted undrained");
            model.check(
                r.sessions_dropped == 0 && model.force_closed + model.lost == 0,
                "0 dropped",
            );
            // A resize after the rollout starts a record of its own.
            let records = model
                .events
                .iter()
                .filter(|(_, e)| e.reason == "RolloutStarted")
                .count();
            model.check(
                records > 1 || r.sessions_migrated == model.migrated,
                "migrated sessions counted exactly",
            );
            model.check(model.deployments.keys().eq(["b"]), "only b's Deployment");
        }
    }
}

#[test]
fn a_shrink_removes_the_drained_pod_even_while_its_ready_condition_lags() {
    // The Ready condition shows the probe three reconciles late (watch events can trigger
    // reconciles far faster than the kubelet's probe period). a-2 is drained and marked; a-3's
    // app turned unwell meanwhile, so a-3 is not Ready and ranks before a-2 when `a` shrinks.
    let model = disrupted_rollout(Disruption::Unwell("a-3"), 3, 3);
    model.check(model.violations.is_empty(), "no pod deleted undrained");
}

// ---------------------------------------------------------------------------------------------
// A newer revision mid-rollout

#[test]
fn a_revision_arriving_mid_rollout_ends_with_only_the_newest() {
    let lcs = service(3);
    let ticks = ticks_to_complete(rolling_update(lcs.clone()));
    for at in 0..=ticks {
        let mut model = rolling_update(lcs.clone());
        model.label = format!("revision c arrives at tick {at}");
        model.script.new_revision = Some((at, "c".to_owned()));
        model.run_until("the spec changes", |m| m.update == "c");
        model.run_to_completion();
        assert_landed_on(&model, "c");
        model.check(model.deployments.keys().eq(["c"]), "only c's Deployment");
    }
}

// ---------------------------------------------------------------------------------------------
// Scaling

#[test]
fn scale_down_drains_every_removed_pod_first() {
    let mut model = Model::settled(service(5));
    let fewest = model
        .pods
        .iter()
        .min_by_key(|p| p.gateway.active)
        .expect("pods")
        .name
        .clone();
    model.lcs.spec.replicas = 2;
    model.tick();
    let routed = model.last_plan.clone().expect("a plan");
    model.check(
        routed.drain.is_empty() && routed.routing.contains(&(fewest.clone(), false)),
        &format!("{fewest}, the pod with the fewest sessions, first leaves the Service"),
    );
    model.tick();
    let first = model.last_plan.clone().expect("a plan");
    model.check(
        first.drain.contains(&fewest),
        &format!("the first drains include {fewest}, the pod with the fewest sessions"),
    );
    model.run_to_completion();
    let r = model.rollout().expect("status.rollout");
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(r.revision == "a", "recorded under the current revision");
    model.check(r.pods_drained == 3, "3 pods drained");
    model.check(
        r.sessions_dropped == 0 && model.force_closed + model.lost == 0,
        "0 dropped",
    );
    model.check(
        r.sessions_migrated == model.migrated,
        "migrated sessions counted exactly",
    );
}

#[test]
fn scale_up_is_immediate() {
    let mut model = Model::settled(service(2));
    model.lcs.spec.replicas = 5;
    model.tick();
    let first = model.last_plan.clone().expect("a plan");
    model.check(
        first.replicas == BTreeMap::from([("a".to_owned(), 5)]),
        "5 replicas in the first plan",
    );
    model.check(first.drain.is_empty(), "nothing drained");
    model.run_until("5 pods serve", |m| {
        m.pods.iter().filter(|p| p.serving()).count() == 5
    });
    model.check(model.drain_asked.is_empty(), "nothing drained");
}

// ---------------------------------------------------------------------------------------------
// A revision that never gets Ready

#[test]
fn a_revision_that_never_gets_ready_drains_no_old_pod_and_pauses_when_stalled() {
    // With maxSurge 0 the first old pod makes room for a new one before any is Ready; none
    // after it goes.
    for (surge, drained) in [
        (IntOrString::Int(1), 0),
        (IntOrString::Int(2), 0),
        (IntOrString::Int(0), 1),
    ] {
        let mut model = rolling_update(service_with(3, surge.clone(), 2));
        model.label = format!("maxSurge {surge:?}");
        model.bad.insert("b".to_owned());
        model.script.stall_from = Some(20);
        let old = pods_of(&model, "a");
        model.run_for(20);
        model.check(
            model.phase() != Some(RolloutPhase::Paused),
            "not paused while the new pods start",
        );
        model.run_for(40);
        model.check(
            model.drain_asked.len() == drained,
            &format!("{drained} old pods drained"),
        );
        let kept = old
            .iter()
            .filter(|name| {
                model
                    .pods
                    .iter()
                    .any(|p| p.name == **name && !p.terminating)
            })
            .count();
        model.check(
            kept == old.len() - drained,
            "the other old pods still there",
        );
        model.check(
            model
                .pods
                .iter()
                .all(|p| p.gateway.state != DrainState::Draining),
            "no drain under way",
        );
        model.check(
            model.phase() == Some(RolloutPhase::Paused),
            "phase Paused once the Deployment stalled",
        );
        let status = model.lcs.status.as_ref().expect("status");
        let progressing = status::condition(status, status::PROGRESSING).expect("Progressing");
        model.check(
            progressing.status == "False" && progressing.reason == "ProgressDeadlineExceeded",
            "Progressing=False, reason ProgressDeadlineExceeded",
        );
        model.check(model.violations.is_empty(), "no pod deleted undrained");
    }
}

// ---------------------------------------------------------------------------------------------
// The drop budget

/// A rolling update whose old pods each hold 2 sessions that only the deadline ends.
fn stubborn_rollout(action: DropBudgetAction) -> Model {
    let mut lcs = service(3);
    lcs.spec.rollout.max_dropped_sessions = 0;
    lcs.spec.rollout.on_drop_budget_exceeded = action;
    rolling_update(lcs).with_stubborn(2)
}

#[test]
fn drop_budget_exceeded_pauses_the_rollout_with_one_warning() {
    let mut model = stubborn_rollout(DropBudgetAction::Pause);
    model.run_until("a drain drops sessions", |m| {
        m.rollout().is_some_and(|r| r.sessions_dropped > 0)
    });
    let drained = model.drain_asked.clone();
    model.check(drained.len() == 1, "one pod drained when the budget broke");
    model.run_for(60);
    model.check(model.drain_asked == drained, "no further drain started");
    model.check(
        model
            .pods
            .iter()
            .all(|p| p.gateway.state != DrainState::Draining),
        "no drain under way",
    );
    assert_paused_by_the_budget(&model);
    let verdict = model.progressing.clone().expect("a Progressing verdict");
    model.check(
        !verdict.status && verdict.reason == "DropBudgetExceeded",
        "Progressing=False, reason DropBudgetExceeded",
    );
    let status = model.lcs.status.as_ref().expect("status");
    let progressing = status::condition(status, status::PROGRESSING).expect("Progressing");
    model.check(
        progressing.status == "False" && progressing.reason == "DropBudgetExceeded",
        "the written Progressing condition says DropBudgetExceeded",
    );
}

/// A rollout that ended on `revision`: only its pods left, nothing dropped by either count, no
/// pod deleted undrained.
fn assert_landed_on(model: &Model, revision: &str) {
    let r = model.rollout().expect("status.rollout");
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(r.sessions_dropped == 0, "status counts 0 dropped");
    model.check(model.force_closed + model.lost == 0, "no session dropped");
    model.check(
        model.pods.iter().all(|p| p.revision == revision),
        &format!("only pods of {revision} left"),
    );
}

/// The accounting of a [`stubborn_rollout`] over its drop budget: the two stubborn sessions
/// counted dropped, every move counted.
fn assert_budget_counted(model: &Model, r: &RolloutStatus) {
    model.check(
        r.sessions_dropped == model.force_closed && model.force_closed == 2,
        "sessionsDropped equals the sessions force-closed",
    );
    model.check(
        r.sessions_migrated == model.migrated,
        "migrated sessions counted exactly",
    );
}

/// A rollout of [`stubborn_rollout`] paused by its drop budget: the two stubborn sessions counted
/// dropped, every move counted, one Warning, no pod deleted undrained.
fn assert_paused_by_the_budget(model: &Model) {
    let r = model.rollout().expect("status.rollout");
    model.check(r.phase == RolloutPhase::Paused, "phase Paused");
    assert_budget_counted(model, r);
    model.check(
        warnings(model, "DropBudgetExceeded") == 1,
        "exactly one DropBudgetExceeded warning",
    );
    model.check(model.violations.is_empty(), "no pod deleted undrained");
}

#[test]
fn drop_budget_accounting_survives_operator_restarts() {
    let ticks = 30;
    for (at, kind) in crashes(0..=ticks) {
        let mut model = stubborn_rollout(DropBudgetAction::Pause);
        model.label = format!("crash at tick {at} doing only {kind:?}");
        model.script.crash = Some((at, kind));
        model.run_for(ticks + 20);
        assert_paused_by_the_budget(&model);
        model.check(model.drain_asked.len() == 1, "one pod drained");
    }
}

#[test]
fn drop_budget_exceeded_starts_a_rollback_with_one_warning() {
    let mut model = stubborn_rollout(DropBudgetAction::Rollback);
    model.run_until("a drain drops sessions", |m| {
        m.rollout().is_some_and(|r| r.sessions_dropped > 0)
    });
    let drained = model.drain_asked.clone();
    model.run_for(30);
    model.check(
        model
            .drain_asked
            .iter()
            .all(|p| drained.contains(p) || p.starts_with("b-")),
        "no further old pod drained",
    );
    let r = model.rollout().expect("status.rollout");
    model.check(r.phase == RolloutPhase::RollingBack, "phase RollingBack");
    assert_budget_counted(&model, r);
    let verdict = model.progressing.clone().expect("a Progressing verdict");
    model.check(
        (verdict.status && verdict.reason == "RollingBack")
            || (!verdict.status && verdict.reason == "RolledBack"),
        "Progressing=True, reason RollingBack, or, once back, False with reason RolledBack",
    );
    model.check(
        warnings(&model, "DropBudgetExceeded") == 1,
        "exactly one DropBudgetExceeded warning",
    );
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(
        model.current_revision() == Some("a"),
        "status.currentRevision stays a",
    );
}

#[test]
fn drop_budget_exceeded_rolls_back_to_the_current_revision() {
    for replicas in [1, 3] {
        let mut lcs = service(replicas);
        lcs.spec.rollout.max_dropped_sessions = 0;
        lcs.spec.rollout.on_drop_budget_exceeded = DropBudgetAction::Rollback;
        let mut model = rolling_update(lcs).with_stubborn(2);
        model.run_until("the rollback finishes", |m| {
            m.progressing
                .as_ref()
                .is_some_and(|v| v.reason == "RolledBack")
                && m.pods.iter().all(|p| p.revision == "a" && p.serving())
                && m.deployments.keys().eq(["a"])
        });
        let r = model.rollout().expect("status.rollout");
        model.check(r.phase == RolloutPhase::RollingBack, "phase RollingBack");
        model.check(
            r.sessions_dropped == model.force_closed,
            "sessionsDropped equals the sessions force-closed",
        );
        model.check(
            r.sessions_migrated == model.migrated,
            "migrated sessions counted exactly",
        );
        model.check(model.violations.is_empty(), "no pod deleted undrained");
        model.check(
            model.pods.len() == usize::try_from(replicas).expect("replicas"),
            "the revision rolled back to has all its pods",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions lost, and drains, the operator did not start

#[test]
fn a_pod_vanishing_mid_drain_counts_its_last_known_sessions_as_dropped() {
    let mut lcs = service(3);
    lcs.spec.rollout.max_dropped_sessions = 1000;
    let mut model = rolling_update(lcs);
    model.script.vanish_mid_drain = true;
    model.checks.floor = false;
    model.run_to_completion();
    let r = model.rollout().expect("status.rollout");
    model.check(model.vanished.len() == 1, "one pod vanished");
    model.check(model.lost > 0, "it had open sessions");
    model.check(
        r.sessions_dropped == model.lost,
        &format!(
            "status counts {} dropped, the pod took {} sessions with it",
            r.sessions_dropped, model.lost
        ),
    );
    model.check(
        r.sessions_migrated == model.migrated,
        "migrated sessions counted exactly",
    );
    model.check(
        warnings(&model, "DrainReportLost") == 1,
        "one DrainReportLost warning",
    );
}

/// A settled service whose gateway `a-1` restarts at tick 2; `crash` makes the operator die in
/// that same tick before it records anything, so all it knew in memory is gone when the
/// gateway's new process answers. Checks that the restart's sessions are counted, once.
fn gateway_restart_is_counted(crash: bool) {
    let mut model = Model::settled(service(3));
    model.script.gateway_restart = Some(GatewayRestart::At(2, "a-1".to_owned()));
    if crash {
        model.script.crash = Some((2, vec![Action::Drain, Action::Cost, Action::Replicas]));
    }
    model.checks.floor = false;
    model.run_for(4);
    model.run_until("the record settles", |m| {
        m.last_plan.as_ref().is_some_and(|p| !p.active)
    });
    let r = model.rollout().expect("status.rollout");
    model.check(model.lost == 12, "the gateway held 12 sessions");
    model.check(
        r.sessions_dropped == model.lost,
        &format!(
            "status counts {} dropped, the gateway lost {}",
            r.sessions_dropped, model.lost
        ),
    );
    model.check(
        warnings(&model, "GatewayRestarted") == 1,
        "one GatewayRestarted warning",
    );
    model.check(
        warnings(&model, "DropBudgetExceeded") == 0 && r.phase != RolloutPhase::Paused,
        "nothing to pause",
    );
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(model.drain_asked.is_empty(), "nothing drained");
}

#[test]
fn a_gateway_restart_counts_its_last_reported_sessions_as_dropped() {
    gateway_restart_is_counted(false);
}

#[test]
fn a_gateway_crash_during_an_operator_restart_is_counted_by_the_next_operator() {
    gateway_restart_is_counted(true);
}

/// A rolling update in which a gateway restarts mid-drain; `crash` makes the operator die in
/// that same tick before it records anything. Checks that its sessions count once and the
/// rollout goes on.
fn mid_drain_restart_is_counted(crash: bool) {
    let mut lcs = service(3);
    lcs.spec.rollout.max_dropped_sessions = 1000;
    let mut model = rolling_update(lcs);
    model.script.gateway_restart = Some(GatewayRestart::MidDrain);
    model.checks.floor = false;
    if crash {
        model.run_until("a drain is under way", |m| {
            m.pods.iter().any(|p| {
                p.gateway.state == DrainState::Draining
                    && p.gateway.active > 0
                    && m.drain_asked.contains(&p.name)
            })
        });
        model.script.crash = Some((
            model.tick,
            vec![Action::Drain, Action::Cost, Action::Replicas],
        ));
    }
    model.run_to_completion();
    let r = model.rollout().expect("status.rollout");
    model.check(model.restarted.len() == 1, "one gateway restarted");
    model.check(model.lost > 0, "it had sessions open");
    model.check(
        r.sessions_dropped == model.lost,
        &format!(
            "status counts {} dropped, the gateway lost {}",
            r.sessions_dropped, model.lost
        ),
    );
    model.check(
        r.sessions_migrated == model.migrated,
        "migrated sessions counted exactly",
    );
    model.check(model.violations.is_empty(), "no pod deleted undrained");
}

#[test]
fn a_gateway_restarting_mid_drain_counts_its_sessions_once_and_the_rollout_goes_on() {
    mid_drain_restart_is_counted(false);
}

#[test]
fn a_gateway_crashing_mid_drain_during_an_operator_restart_counts_its_sessions_once() {
    mid_drain_restart_is_counted(true);
}

#[test]
fn a_terminating_pod_that_never_reports_counts_its_last_known_sessions_as_dropped() {
    let mut model = Model::settled(service(3));
    let lost = model.pods[2].name.clone();
    let sessions = model.pods[2].gateway.active;
    model.script.node_lost = Some((2, lost.clone()));
    model.checks.floor = false;
    model.run_for(3);
    model.run_to_completion();
    let r = model.rollout().expect("status.rollout");
    model.check(
        sessions > 0 && model.lost == sessions,
        "the pod held sessions",
    );
    model.check(model.recorded.contains(&lost), "its going was recorded");
    model.check(
        r.sessions_dropped == sessions,
        &format!(
            "status counts {} dropped, the lost node took {sessions}",
            r.sessions_dropped
        ),
    );
    model.check(
        warnings(&model, "DrainReportLost") == 1,
        "one DrainReportLost warning",
    );
}

#[test]
fn evictions_the_operator_did_not_start_are_recorded_without_drops() {
    let mut model = Model::settled(service(3));
    let evicted = model.pods[0].name.clone();
    let sessions = model.pods[0].gateway.active;
    model.script.evict = Some((2, evicted.clone()));
    model.checks.floor = false;
    model.run_for(3);
    model.run_to_completion();
    let r = model.rollout().expect("status.rollout");
    model.check(model.recorded.contains(&evicted), "the drain was recorded");
    model.check(
        model.drain_asked.is_empty(),
        "the operator drained nothing itself",
    );
    model.check(r.pods_drained == 1, "one pod drained");
    model.check(
        r.sessions_migrated == sessions && model.migrated == sessions,
        "its sessions counted as migrated",
    );
    model.check(
        r.sessions_dropped == 0 && model.force_closed + model.lost == 0,
        "0 dropped",
    );
}

#[test]
fn an_evicted_pod_s_drain_waits_for_its_replacement_and_moves_its_sessions_there() {
    let mut model = Model::settled(service(3)).with_sessions(&[100, 100, 100]);
    let evicted = model.pods[0].name.clone();
    model.script.evict = Some((2, evicted.clone()));
    model.script.handoff = true;
    model.checks.floor = false;
    model.run_for(3);
    model.check(
        model
            .pods
            .iter()
            .any(|p| p.name == evicted && p.gateway.state == DrainState::Serving),
        "the evicted pod's drain waits while its replacement starts",
    );
    model.run_until("the evicted pod is gone", |m| {
        m.pods.iter().all(|p| p.name != evicted) && m.reconnecting == 0
    });
    model.check(
        model.drain_asked.contains(&evicted),
        "the operator started the drain the hook handed over",
    );
    let replacement = model.pods.iter().max_by_key(|p| p.seq).expect("pods");
    model.check(
        replacement.gateway.active == 100,
        "the evicted pod's sessions all moved to its replacement",
    );
    assert_moved_once_and_balanced(&model);
    let r = model.rollout().expect("status.rollout");
    model.check(r.sessions_dropped == 0, "0 dropped");
}

// ---------------------------------------------------------------------------------------------
// Rebalancing after a scale-up

/// A settled service of `from` pods holding `sessions`, autoscaled on sessions with
/// rebalancing on, whose `replicas` the autoscaling raises to `to` at tick `at` (the
/// autoscaling decides on its own period, and its rate policies may hold a scale-up back). The
/// target is the mean the `to` pods will hold, so that the autoscaling's arithmetic calls for
/// them from the start (a higher target would call for fewer pods).
fn scaled_up(from: i32, to: i32, sessions: &[i64], at: u32) -> Model {
    let held: i64 = sessions
        .iter()
        .take(usize::try_from(from).expect("pods"))
        .sum();
    let target = (held + i64::from(to) - 1) / i64::from(to);
    let lcs = LongConnService::test()
        .replicas(from)
        .autoscaling(2, 10, target)
        .build();
    let mut model = Model::settled(lcs).with_sessions(sessions);
    model.script.resize = Some((at, to));
    model
}

/// The scale-ups the rebalancing tests run: from, to, the sessions of the first pods.
const SCALE_UPS: [(i32, i32, &[i64]); 4] = [
    (2, 5, &[45, 25]),
    (2, 5, &[40, 10]),
    (3, 6, &[30, 12, 20]),
    (2, 4, &[12, 5]),
];

/// Ticks of a rebalancing's cooldown (rounds may start at most this often).
fn cooldown_ticks(model: &Model) -> u32 {
    u32::try_from(model.cooldown().as_secs() / TICK.as_secs()).expect("ticks")
}

/// Every pod of `spec.replicas` serves (once the scale-up is made), no client waits, no gateway moves sessions, and the
/// busiest pod holds at most 1.25 times the mean.
fn balanced(model: &Model) -> bool {
    model.script.resize.is_none_or(|(at, _)| model.tick > at)
        && model.pods.len() == usize::try_from(model.lcs.spec.replicas).expect("replicas")
        && model
            .pods
            .iter()
            .all(|p| p.serving() && !p.gateway.rebalancing())
        && model.reconnecting == 0
        && uneven(model).is_none()
}

/// Runs until the pods are even, then two cooldowns more: they stay even, no round starts
/// then, nothing was drained or dropped, no session moved twice (nor twice in one round: every
/// tick checks that) and every reconnect found a pod with room.
#[track_caller]
fn assert_evened_once(model: &mut Model) {
    model.run_until("the pods are even", balanced);
    let rounds = model.rounds.len();
    model.run_for(2 * cooldown_ticks(model));
    model.check(balanced(model), "still even");
    model.check(model.rounds.len() == rounds, "no round once even");
    model.check(rounds > 0, "a round of rebalancing");
    model.check(model.drain_asked.is_empty(), "nothing drained");
    model.check(
        model.force_closed == 0 && model.lost == 0,
        "the model dropped no session",
    );
    model.check(model.rebalanced > 0, "sessions moved by rebalancing");
    model.check(model.rebalanced_again == 0, "no session rebalanced twice");
    assert_moved_once_and_balanced(model);
    let recorded = model.lcs.status.as_ref().and_then(|s| s.rebalance.clone());
    let recorded = recorded.unwrap_or_default();
    model.check(
        recorded.pods.iter().all(|p| p.outcome.is_some())
            && recorded.sessions_moved == model.rebalanced
            && recorded.sessions_dropped == 0,
        &format!(
            "status.rebalance records the {} sessions the rounds moved: {recorded:?}",
            model.rebalanced
        ),
    );
}

#[test]
fn after_a_scale_up_rebalancing_evens_the_pods_moving_each_session_once() {
    for (from, to, sessions) in SCALE_UPS {
        for (at, lag) in [0, 2, 5].into_iter().zip([0, 1, 2]) {
            let mut model = scaled_up(from, to, sessions, at).with_readiness_lag(lag);
            model.label =
                format!("{from} pods {sessions:?} to {to} at tick {at}, readiness lag {lag}");
            assert_evened_once(&mut model);
            let asked = model.rounds.last().map_or(0, |(_, r)| r.sessions_asked);
            model.check(
                model.rebalanced == asked,
                &format!("{asked} sessions asked, {} moved", model.rebalanced),
            );
        }
    }
}

#[test]
fn operator_restarts_at_any_point_of_a_rebalancing_ask_each_pod_once_and_keep_the_books() {
    for (from, to, sessions) in SCALE_UPS {
        let mut steady = scaled_up(from, to, sessions, 2);
        steady.run_until("the pods are even", balanced);
        for (at, kind) in crashes(0..=steady.tick + 1) {
            let mut model = scaled_up(from, to, sessions, 2);
            model.script.crash = Some((at, kind.clone()));
            model.label = format!(
                "{from} pods {sessions:?} to {to} at tick 2, crash at tick {at} doing only \
                 {kind:?}"
            );
            assert_evened_once(&mut model);
            let asked = model.rounds.last().map_or(0, |(_, r)| r.sessions_asked);
            model.check(
                model.rebalanced <= asked,
                &format!("{asked} sessions asked, {} moved", model.rebalanced),
            );
        }
    }
}

#[test]
fn a_second_scale_up_starts_a_round_at_once_moving_each_session_once_a_round() {
    let mut model = scaled_up(2, 3, &[45, 25], 0);
    if let Some(a) = model.lcs.spec.autoscaling.as_mut() {
        a.rebalance.cooldown = Duration::from_std(std::time::Duration::from_secs(300));
    }
    model.run_until("the pods are even", balanced);
    let (first, _) = model.rounds.first().cloned().expect("a first round");
    // More sessions per pod would call for 5: the autoscaling raises replicas.
    if let Some(a) = model.lcs.spec.autoscaling.as_mut() {
        a.target_sessions_per_pod = Some(14);
    }
    model.script.resize = Some((model.tick, 5));
    model.run_until("the pods are even again", |m| {
        m.pods.len() == 5 && balanced(m)
    });
    model.check(model.rounds.len() == 2, "a second round");
    let (second, _) = model.rounds[1];
    model.check(
        second - first < cooldown_ticks(&model),
        "the second round started before the cooldown",
    );
    model.check(
        model.force_closed == 0 && model.lost == 0 && model.refused == 0,
        "nothing dropped or refused",
    );
}

#[test]
fn without_rebalancing_a_scale_up_moves_nothing() {
    let mut off = scaled_up(2, 5, &[45, 25], 0);
    if let Some(a) = off.lcs.spec.autoscaling.as_mut() {
        a.rebalance.enabled = false;
    }
    let mut by_hand = Model::settled(service(2)).with_sessions(&[45, 25]);
    by_hand.lcs.spec.replicas = 5;
    for mut model in [off, by_hand] {
        model.run_until("5 pods serve", |m| {
            m.pods.iter().filter(|p| p.serving()).count() == 5
        });
        model.run_for(12);
        let held: Vec<i64> = model.pods.iter().map(|p| p.gateway.active).collect();
        model.check(held == [45, 25, 0, 0, 0], "every session where it was");
        model.check(
            model.rebalanced == 0 && model.migrated == 0 && model.reconnecting == 0,
            "nothing moved",
        );
        model.check(
            model
                .lcs
                .status
                .as_ref()
                .is_some_and(|s| s.rebalance.is_none()),
            "no round recorded",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Steady state and purity

#[track_caller]
fn assert_quiet(model: &mut Model) {
    model.tick();
    let before = model.rollout().cloned();
    let status = model.lcs.status.clone();
    for _ in 0..3 {
        model.tick();
        model.check(
            model.lcs.status == status,
            "the status is written unchanged",
        );
        let plan = model.last_plan.clone().expect("a plan");
        model.check(plan.drain.is_empty(), "no drain");
        model.check(plan.lowest_cost.is_empty(), "no cost patch");
        model.check(
            plan.replicas == BTreeMap::from([(model.update.clone(), model.lcs.spec.replicas)]),
            "replicas as the spec says",
        );
        model.check(!plan.active, "nothing in motion");
        model.check(plan.rollout == before, "status.rollout unchanged");
        model.check(plan.events.is_empty(), "no event");
    }
}

#[test]
fn a_settled_service_gets_a_plan_that_changes_nothing() {
    let mut fresh = Model::settled(service(3));
    assert_quiet(&mut fresh);

    let mut rolled = rolling_update(service(3));
    rolled.run_to_completion();
    rolled.run_for(1);
    assert_quiet(&mut rolled);
}

#[test]
fn step_gives_the_same_plan_for_the_same_input() {
    // Every tick of every scenario calls `step` twice and compares; this one walks through a
    // rollout, a scale-down and an eviction in a row.
    let mut model = rolling_update(service(4));
    model.run_to_completion();
    model.lcs.spec.replicas = 2;
    model.checks.floor = false;
    model.run_to_completion();
    let evicted = model.pods[0].name.clone();
    model.script.evict = Some((model.tick, evicted));
    model.run_for(1);
    model.run_to_completion();
}

// ---------------------------------------------------------------------------------------------
// Rollout steps, pauses and aborts

/// 4 pods rolling to `b` in steps: 1 pod, a pause for a person, half, a pause of 2 minutes
/// (12 ticks: the drained pods are gone well before it ends).
fn canary() -> Model {
    rolling_update(
        LongConnService::test()
            .replicas(4)
            .steps("[{replicas: 1}, {pause: {}}, {replicas: 50%}, {pause: {duration: 2m}}]")
            .build(),
    )
}

fn annotate(model: &mut Model, key: &str, value: &str) {
    model
        .lcs
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
}

/// The rollout is held at step `index` by `cause`, with nothing drained or half-recorded.
fn held_at(model: &Model, index: i32, cause: PauseCause) -> bool {
    model.rollout().is_some_and(|r| {
        r.phase == RolloutPhase::Paused
            && r.step == Some(index)
            && r.paused_by == Some(cause)
            && r.draining.is_empty()
    })
}

/// The Progressing verdict the last plan gave.
fn progressing_is(model: &Model, status: bool, reason: &str) -> bool {
    model
        .progressing
        .as_ref()
        .is_some_and(|v| v.status == status && v.reason == reason)
}

/// Pods of `revision` serving (Ready, not terminating).
fn serving_of(model: &Model, revision: &str) -> usize {
    model
        .pods
        .iter()
        .filter(|p| p.revision == revision && p.serving())
        .count()
}

/// A rollback of [`canary`] finished: its 4 pods all of revision `a`, serving, every client
/// connected.
fn rolled_back_to_a(m: &Model) -> bool {
    m.rollout()
        .is_some_and(|r| r.phase == RolloutPhase::RollingBack && r.finished_at.is_some())
        && m.pods.len() == 4
        && m.pods.iter().all(|p| p.revision == "a" && p.serving())
        && m.reconnecting == 0
}

/// Runs [`canary`] through its steps, checking each stop, and promotes it at the pause.
fn run_canary(model: &mut Model) {
    model.run_until("held at the pause for a person", |m| {
        held_at(m, 1, PauseCause::Step)
    });
    model.check(
        (serving_of(model, "b"), serving_of(model, "a")) == (1, 3),
        "step 1: 1 new pod, 3 old",
    );
    model.check(
        progressing_is(model, false, "WaitingForPromotion"),
        "Progressing False, WaitingForPromotion",
    );
    let drained = model.drain_asked.len();
    model.run_for(12);
    model.check(
        held_at(model, 1, PauseCause::Step) && model.drain_asked.len() == drained,
        "a pause without a duration waits for a person, draining nothing",
    );
    annotate(model, steps::PROMOTE, "b/1");
    model.run_until("held at the timed pause", |m| {
        held_at(m, 3, PauseCause::Step)
    });
    model.check(
        (serving_of(model, "b"), serving_of(model, "a")) == (2, 2),
        "step 3: half the pods new",
    );
    model.check(
        progressing_is(model, true, "StepPaused"),
        "Progressing True, StepPaused",
    );
    model.run_to_completion();
}

#[test]
fn a_canary_grows_in_steps_pauses_and_completes_when_promoted() {
    let mut model = canary();
    let old = pods_of(&model, "a");
    run_canary(&mut model);
    assert_clean_rollout(&model, &old);
    let steps: Vec<&str> = model
        .events
        .iter()
        .filter(|(_, e)| e.reason == "RolloutStep")
        .map(|(_, e)| e.message.as_str())
        .collect();
    model.check(
        steps.len() == 5,
        &format!("an Event per step begun: {steps:?}"),
    );
    model.check(
        model.rollout().is_some_and(|r| r.step == Some(4)),
        "status.rollout.step: every step done",
    );
}

#[test]
fn a_timed_pause_lasts_its_duration_and_no_longer() {
    let mut model = canary();
    annotate(&mut model, steps::PROMOTE, "b/1");
    model.run_until("held at the timed pause", |m| {
        held_at(m, 3, PauseCause::Step)
    });
    let r = model.rollout().expect("status.rollout");
    let began = r.step_started_at.clone().expect("stepStartedAt").0;
    model.run_until("past the timed pause", |m| {
        m.rollout().is_some_and(|r| r.step == Some(4))
    });
    // The tick that passes the pause is recorded with the time of the next.
    let waited = model.now.duration_since(began);
    model.check(
        waited >= SignedDuration::from_secs(120) && waited <= SignedDuration::from_secs(140),
        &format!("the 2-minute pause lasted {waited:#}"),
    );
}

/// The ticks the model `make` makes takes to run as `run` runs it, with no crash.
fn ticks_of(make: fn() -> Model, run: fn(&mut Model)) -> u32 {
    let mut model = make();
    run(&mut model);
    model.tick
}

#[test]
fn a_canary_survives_operator_restarts_at_every_point() {
    for (at, kind) in crashes(0..=ticks_of(canary, run_canary)) {
        let mut model = canary();
        let old = pods_of(&model, "a");
        model.script.crash = Some((at, kind.clone()));
        model.label = format!("canary, crash at tick {at} doing only {kind:?}");
        run_canary(&mut model);
        assert_clean_rollout(&model, &old);
    }
}

#[test]
fn paused_in_the_spec_finishes_the_drains_under_way_and_starts_none() {
    let mut model = rolling_update(service(4));
    let old = pods_of(&model, "a");
    model.run_until("a drain under way", |m| !m.drain_asked.is_empty());
    model.lcs.spec.rollout.paused = true;
    let asked = model.drain_asked.len();
    let new_pods = pods_of(&model, "b").len();
    model.run_until("held by the spec", |m| {
        m.rollout()
            .is_some_and(|r| r.phase == RolloutPhase::Paused && r.draining.is_empty())
    });
    model.run_for(12);
    let r = model.rollout().expect("status.rollout");
    model.check(
        r.paused_by == Some(PauseCause::Spec) && r.draining.is_empty(),
        "paused by the spec, nothing half-recorded",
    );
    model.check(
        model.drain_asked.len() == asked,
        "no drain started while paused",
    );
    model.check(
        pods_of(&model, "b").len() <= new_pods + 1,
        "the new revision does not grow while paused",
    );
    model.check(
        progressing_is(&model, false, "RolloutPaused"),
        "Progressing False, RolloutPaused",
    );
    model.lcs.spec.rollout.paused = false;
    model.run_to_completion();
    assert_clean_rollout(&model, &old);
}

#[test]
fn an_aborted_canary_drains_the_new_pods_and_returns_to_the_old_revision() {
    let mut model = canary();
    model.run_until("held at the pause for a person", |m| {
        held_at(m, 1, PauseCause::Step)
    });
    let canary_pods = pods_of(&model, "b");
    annotate(&mut model, steps::ABORT, "b");
    model.run_until("back on the old revision", rolled_back_to_a);
    let r = model.rollout().expect("status.rollout");
    model.check(r.sessions_dropped == 0, "nothing dropped");
    model.check(model.violations.is_empty(), "no pod deleted undrained");
    model.check(
        model.force_closed == 0 && model.lost == 0,
        "the model dropped no session",
    );
    for pod in &canary_pods {
        model.check(
            model.drain_asked.contains(pod) || model.recorded.contains(pod),
            &format!("the canary pod {pod} was drained"),
        );
    }
    model.check(
        progressing_is(&model, false, "Aborted"),
        "Progressing False, Aborted",
    );
    model.check(
        model
            .events
            .iter()
            .any(|(_, e)| e.reason == "RolloutAborted"),
        "a RolloutAborted Event",
    );
}

/// [`canary`] with the health gate on, judging from 5 attempts.
fn gated_canary() -> Model {
    let mut model = canary();
    model.lcs.spec.rollout.analysis = Some(AnalysisSpec {
        min_attempts: 5,
        ..AnalysisSpec::default()
    });
    model
}

/// Runs a [`gated_canary`] whose new app refuses a third of the upgrades until it is back on
/// the old revision.
fn run_failing_canary(model: &mut Model) {
    model.refusing.insert("b".to_owned());
    model.run_until("back on the old revision", rolled_back_to_a);
}

#[test]
fn the_health_gate_aborts_a_canary_whose_app_refuses_upgrades_and_moves_its_sessions_back() {
    let mut model = gated_canary();
    run_failing_canary(&mut model);
    let r = model.rollout().expect("status.rollout");
    let analysis = r.analysis.clone().expect("status.rollout.analysis");
    model.check(
        analysis.failed.as_deref() == Some("UpstreamRefused"),
        &format!("the failed signal is named: {analysis:?}"),
    );
    model.check(
        analysis.update.upstream_refused > 0 && analysis.update.attempts >= 5,
        &format!(
            "the new revision's refusals were counted: {:?}",
            analysis.update
        ),
    );
    model.check(r.sessions_dropped == 0, "nothing dropped");
    model.check(
        model.force_closed == 0 && model.lost == 0 && model.violations.is_empty(),
        "no session cut, no pod deleted undrained",
    );
    model.check(
        progressing_is(&model, false, "AnalysisFailed"),
        &format!("Progressing False, AnalysisFailed: {:?}", model.progressing),
    );
    model.check(
        model
            .progressing
            .as_ref()
            .is_some_and(|v| v.message.contains("UpstreamRefused")),
        "the condition names the signal",
    );
    let aborted: Vec<&Note> = model
        .events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.reason == "RolloutAborted")
        .collect();
    model.check(
        aborted.len() == 1 && aborted[0].message.contains("UpstreamRefused"),
        &format!("one RolloutAborted Event naming the signal: {aborted:?}"),
    );
}

#[test]
fn the_health_gate_lets_a_healthy_canary_through() {
    let mut model = gated_canary();
    let old = pods_of(&model, "a");
    run_canary(&mut model);
    assert_clean_rollout(&model, &old);
    let analysis = model
        .rollout()
        .and_then(|r| r.analysis.clone())
        .expect("status.rollout.analysis");
    model.check(
        analysis.failed.is_none() && analysis.update.attempts >= 5,
        &format!("judged healthy: {analysis:?}"),
    );
}

#[test]
fn the_health_gate_aborts_once_whatever_the_operator_restarts() {
    for (at, kind) in crashes(0..=ticks_of(gated_canary, run_failing_canary)) {
        let mut model = gated_canary();
        model.script.crash = Some((at, kind.clone()));
        model.label = format!("failing canary, crash at tick {at} doing only {kind:?}");
        run_failing_canary(&mut model);
        let r = model.rollout().expect("status.rollout");
        model.check(
            r.sessions_dropped == 0 && model.force_closed == 0 && model.lost == 0,
            "nothing dropped",
        );
        model.check(
            r.analysis.as_ref().and_then(|a| a.failed.as_deref()) == Some("UpstreamRefused"),
            "the failed signal is recorded",
        );
    }
}

#[test]
fn an_undo_at_any_point_of_a_canary_returns_to_the_old_revision_whatever_the_operator_restarts() {
    // From the first reconcile on (at tick 0 nothing has happened to undo).
    for (at, kind) in crashes(1..=ticks_of(canary, run_canary)) {
        let mut model = canary();
        let old = pods_of(&model, "a");
        // The spec goes back to `a` (what the undo annotation writes), and the operator
        // crashes in the next reconcile. Returning to `a` after `b` completed is a rollout
        // with steps of its own: promoted in full from the start.
        annotate(&mut model, steps::PROMOTE, "a/full");
        model.script.new_revision = Some((at, "a".to_owned()));
        model.script.crash = Some((at + 1, kind.clone()));
        model.label = format!("undo at tick {at}, crash after it doing only {kind:?}");
        model.run_until("the spec goes back", |m| m.tick > at);
        model.run_to_completion();
        assert_landed_on(&model, "a");
        model.check(
            model.deployments.keys().eq(["a"]),
            "only revision a's Deployment left",
        );
        model.check(
            model.pods.len() == old.len(),
            "as many pods as before the canary",
        );
    }
}
