//! The session autoscaling: the replicas a LongConnService should have for
//! `autoscaling.targetSessionsPerPod`, decided from the open sessions its gateways report, the
//! way a HorizontalPodAutoscaler decides (`pkg/controller/podautoscaler` of Kubernetes: its
//! replica calculator for a pods metric, `stabilizeRecommendationWithBehaviors`,
//! `convertDesiredReplicasWithBehaviorRate`).
//!
//! Pure: [`decide`] takes `now`, the current `spec.replicas`, the spec, what the pods hold
//! ([`Pods`]) and the [`History`] the caller keeps (recent recommendations, recent scale
//! events), and returns a [`Decision`]; [`record`] turns it into the status. The caller adds
//! the decision's recommendation to the history, and the scale event once `spec.replicas` is
//! written.
//!
//! A decision is a pipeline of named phases, in this order:
//! 1. [`bounds`]: `spec.replicas` 0 turns the autoscaling off (someone scaled to zero on
//!    purpose); outside `minReplicas..maxReplicas` it is brought back at once, before any
//!    session is looked at.
//! 2. [`recommend`]: the sessions of the serving pods over the target, and beside it, when
//!    `targetCPUUtilization` is set too, the CPU they use over their requests ([`Cpu`]); the
//!    larger recommendation wins, as with an HPA's several metrics, and one that cannot be made
//!    (no CPU reading) lets a scale-up through but holds a scale-down. Sessions: their mean over the
//!    target within the tolerance keeps `replicas`; otherwise the total over the target, rounded
//!    up. Pods starting (not Ready yet) count as empty when that would scale up; pods whose
//!    gateway did not report count as empty for a scale-up and as at the target for a
//!    scale-down; a change that these assumptions would reverse is not made. Pods being drained
//!    and their sessions are left out: those sessions are on their way elsewhere.
//! 3. [`stabilize`]: the recommendation is held between the lowest recommendation of the
//!    scale-up window and the highest of the scale-down window. Then a scale-down waits while a
//!    rollout or a drain is under way, and until a whole scale-down window of recommendations
//!    has been seen since the operator started: the history lives in memory, so after a restart
//!    it is empty and would otherwise let the first low reading through.
//! 4. [`limit`]: the rate policies, each counted from the replicas at the start of its period
//!    (the history's scale events), the one `selectPolicy` picks; then `minReplicas` and
//!    `maxReplicas`.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_drain_api::DrainState;

use crate::crd::{
    AutoscalingSpec, AutoscalingStatus, LongConnServiceStatus, ScaleDecision, ScalingPolicyType,
    ScalingRules, SelectPolicy, default_scale_down, default_scale_up,
};
use crate::duration::Duration;
use crate::rollout::{Note, PodFacts, Verdict};
use crate::status;

/// The condition that says whether the session autoscaling can decide.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// How often recommendations are made while the session autoscaling is on (the HPA's sync
/// period): the reconcile comes back at least this often.
pub const PERIOD: std::time::Duration = std::time::Duration::from_secs(15);

/// What the pods that count hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pods {
    /// The open sessions of each serving pod: Ready, not terminating, not leaving, its gateway
    /// reporting.
    pub sessions: Vec<i64>,
    /// Pods not Ready yet (and not leaving).
    pub starting: i32,
    /// Ready pods whose gateway gave no report.
    pub missing: i32,
}

/// Whether a pod stays to be counted: not terminating, its gateway not draining, not
/// `leaving` (being drained or removed by the rollout).
fn stays(pod: &PodFacts, leaving: &impl Fn(&PodFacts) -> bool) -> bool {
    let draining = pod
        .report
        .as_ref()
        .is_some_and(|r| r.state != DrainState::Serving);
    !(pod.terminating || draining || leaving(pod))
}

impl Pods {
    /// Sorts the pods: `leaving` says which are being drained or removed (they, and their
    /// sessions, are left out, as are terminating pods and gateways that drain).
    pub fn of(pods: &[PodFacts], leaving: impl Fn(&PodFacts) -> bool) -> Self {
        let mut out = Pods::default();
        for pod in pods.iter().filter(|p| stays(p, &leaving)) {
            match (&pod.report, pod.ready) {
                (_, false) => out.starting += 1,
                (Some(report), true) => out
                    .sessions
                    .push(i64::try_from(report.active).unwrap_or(i64::MAX)),
                (None, true) => out.missing += 1,
            }
        }
        out
    }

    fn serving(&self) -> i32 {
        i32::try_from(self.sessions.len()).unwrap_or(i32::MAX)
    }

    fn total(&self) -> i64 {
        self.sessions.iter().copied().fold(0, i64::saturating_add)
    }

    /// Every pod counted: serving, starting and not reporting.
    pub fn counted(&self) -> i32 {
        self.serving()
            .saturating_add(self.starting)
            .saturating_add(self.missing)
    }

    /// The mean open sessions per serving pod, rounded; None without one.
    pub fn mean(&self) -> Option<i64> {
        let n = i64::from(self.serving());
        (n > 0).then(|| (self.total() + n / 2) / n)
    }
}

/// The CPU of the pods that count (the same pods as [`Pods`]), in millicores, for
/// `targetCPUUtilization` beside the session target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cpu {
    /// Each Ready pod with a reading: what it uses and what it requests.
    pub measured: Vec<(f64, f64)>,
    /// What each Ready pod without a reading requests.
    pub unmeasured: Vec<f64>,
    /// What each pod not Ready yet requests.
    pub starting: Vec<f64>,
}

impl Cpu {
    /// Sorts the pods as [`Pods::of`] does, with what each uses (`used`, by pod name, from the
    /// resource metrics API). A pod that requests no CPU makes the reading impossible (Err says
    /// which).
    pub fn of(
        pods: &[PodFacts],
        leaving: impl Fn(&PodFacts) -> bool,
        used: &std::collections::BTreeMap<String, f64>,
    ) -> Result<Self, String> {
        let mut out = Cpu::default();
        for pod in pods.iter().filter(|p| stays(p, &leaving)) {
            let requested = pod.cpu_requested.filter(|r| *r > 0.0).ok_or_else(|| {
                format!(
                    "pod {} has a container without a CPU request, so its CPU utilization \
                     cannot be measured",
                    pod.name
                )
            })?;
            match (pod.ready, used.get(&pod.name)) {
                (false, _) => out.starting.push(requested),
                (true, Some(used)) => out.measured.push((*used, requested)),
                (true, None) => out.unmeasured.push(requested),
            }
        }
        Ok(out)
    }

    /// What the measured pods use, in percent of what they request, rounded; None without one.
    pub fn utilization(&self) -> Option<i32> {
        let (used, requested) = self.sums();
        (requested > 0.0).then(|| (used * 100.0 / requested).round() as i32)
    }

    fn sums(&self) -> (f64, f64) {
        self.measured
            .iter()
            .fold((0.0, 0.0), |(u, r), (used, req)| (u + used, r + req))
    }
}

/// The recommendations and scale events of one LongConnService, kept in memory by the caller
/// (an operator that restarts starts with an empty one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// When the first recommendation was recorded.
    since: Option<Timestamp>,
    /// Unstabilized recommendations, oldest first; a run of equal ones is kept as its newest.
    recommendations: Vec<(Timestamp, i32)>,
    /// Changes of `spec.replicas` the autoscaling made: when, and by how much (negative: down).
    scaled: Vec<(Timestamp, i32)>,
}

impl History {
    /// Adds a recommendation made at `at`; forgets those older than both windows.
    pub fn recommended(&mut self, at: Timestamp, replicas: i32, spec: &AutoscalingSpec) {
        self.since.get_or_insert(at);
        let keep = Rules::up(spec).window.max(Rules::down(spec).window);
        self.recommendations
            .retain(|(t, _)| at.duration_since(*t) < keep);
        match self.recommendations.last_mut() {
            // The newest of a run of equal recommendations says all the run does about any
            // window that ends now or later.
            Some(last) if last.1 == replicas => last.0 = at,
            _ => self.recommendations.push((at, replicas)),
        }
    }

    /// Adds a change of `spec.replicas` from `from` to `to` made at `at`; forgets the changes
    /// older than the longest policy period.
    pub fn scaled(&mut self, at: Timestamp, from: i32, to: i32, spec: &AutoscalingSpec) {
        let keep = [Rules::up(spec), Rules::down(spec)]
            .iter()
            .flat_map(|r| r.policies.iter().map(|p| p.period))
            .max()
            .unwrap_or(SignedDuration::ZERO);
        self.scaled.retain(|(t, _)| at.duration_since(*t) < keep);
        if to != from {
            self.scaled.push((at, to - from));
        }
    }

    /// The replicas added (`up`) or removed within `period` before `now`.
    fn changed(&self, now: Timestamp, period: SignedDuration, up: bool) -> i32 {
        self.scaled
            .iter()
            .filter(|(t, change)| now.duration_since(*t) < period && (*change > 0) == up)
            .map(|(_, change)| change.abs())
            .fold(0, i32::saturating_add)
    }

    /// The recommendations within `window` before `now`.
    fn within(&self, now: Timestamp, window: SignedDuration) -> impl Iterator<Item = i32> + '_ {
        self.recommendations
            .iter()
            .filter(move |(t, _)| now.duration_since(*t) < window)
            .map(|(_, r)| *r)
    }
}

/// One direction's rules with the defaults filled in.
struct Rules {
    window: SignedDuration,
    window_text: Duration,
    select: SelectPolicy,
    policies: Vec<Policy>,
}

struct Policy {
    type_: ScalingPolicyType,
    value: i32,
    period: SignedDuration,
    period_text: Duration,
}

impl Policy {
    fn words(&self) -> String {
        match self.type_ {
            ScalingPolicyType::Pods => {
                format!("{} per {}", count_pods(self.value), self.period_text)
            }
            ScalingPolicyType::Percent => format!("{}% per {}", self.value, self.period_text),
        }
    }
}

impl Rules {
    fn up(spec: &AutoscalingSpec) -> Self {
        Self::of(&spec.behavior.scale_up, default_scale_up())
    }

    fn down(spec: &AutoscalingSpec) -> Self {
        Self::of(&spec.behavior.scale_down, default_scale_down())
    }

    fn of(rules: &ScalingRules, defaults: ScalingRules) -> Self {
        let window_text = rules
            .stabilization_window
            .clone()
            .or(defaults.stabilization_window)
            .unwrap_or(Duration::from_static("0s"));
        let policies = rules
            .policies
            .clone()
            .or(defaults.policies)
            .unwrap_or_default()
            .into_iter()
            .map(|p| Policy {
                type_: p.type_,
                value: p.value,
                period: signed(&p.period),
                period_text: p.period,
            })
            .collect();
        Rules {
            window: signed(&window_text),
            window_text,
            select: rules.select_policy,
            policies,
        }
    }
}

/// A duration of the spec (the schema admits only ones that parse).
fn signed(d: &Duration) -> SignedDuration {
    d.to_std()
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(SignedDuration::ZERO)
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub now: Timestamp,
    /// `spec.replicas`.
    pub current: i32,
    pub spec: &'a AutoscalingSpec,
    pub pods: &'a Pods,
    /// A rollout or a drain is under way: scale-downs wait.
    pub rollout_busy: bool,
    pub history: &'a History,
    /// With `targetCPUUtilization` set: the pods' CPU, or why it could not be read.
    pub cpu: Option<&'a Result<Cpu, String>>,
}

impl Input<'_> {
    fn target(&self) -> i64 {
        self.spec.target_sessions_per_pod.unwrap_or(1).max(1)
    }
}

/// Why no recommendation could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inactive {
    /// `spec.replicas` is 0.
    ScalingDisabled,
    /// No serving pod's gateway reported its sessions.
    NoSessionReports,
}

/// What kept the replicas from the recommendation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    TooManyReplicas,
    TooFewReplicas,
    ScaleUpLimit,
    ScaleDownLimit,
    ScaleUpDisabled,
    ScaleDownDisabled,
    ScaleUpStabilized,
    ScaleDownStabilized,
    /// Not a whole scale-down window of recommendations seen since the operator started.
    ScaleDownAfterStart,
    /// A rollout or a drain is under way.
    ScaleDownDuringRollout,
    /// One of the two targets could not be measured.
    ScaleDownWithoutMetric,
}

impl Limit {
    /// The ScalingActive condition's reason while this limit applies.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::TooManyReplicas => "TooManyReplicas",
            Limit::TooFewReplicas => "TooFewReplicas",
            Limit::ScaleUpLimit => "ScaleUpLimit",
            Limit::ScaleDownLimit => "ScaleDownLimit",
            Limit::ScaleUpDisabled => "ScaleUpDisabled",
            Limit::ScaleDownDisabled => "ScaleDownDisabled",
            Limit::ScaleUpStabilized => "ScaleUpStabilized",
            Limit::ScaleDownStabilized => "ScaleDownStabilized",
            Limit::ScaleDownAfterStart => "ScaleDownHeldAfterStart",
            Limit::ScaleDownDuringRollout => "ScaleDownHeldDuringRollout",
            Limit::ScaleDownWithoutMetric => "ScaleDownHeldWithoutMetric",
        }
    }
}

/// The replicas to have now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: i32,
    /// In words: "sessions 812 over 4 pods, target 150 per pod: 6 pods", and the limit that
    /// applied.
    pub reason: String,
    pub limited: Option<Limit>,
    /// Set when no recommendation could be made.
    pub inactive: Option<Inactive>,
    /// The unstabilized recommendation, for the history.
    pub recommendation: Option<i32>,
}

/// Works out the replicas to have now. Pure.
pub fn decide(input: &Input) -> Decision {
    if let Some(decision) = bounds(input) {
        return decision;
    }
    let recommendation = match (recommend(input), input.cpu) {
        (sessions, None) => match sessions {
            Ok(r) => r,
            Err(decision) => return decision,
        },
        (sessions, Some(cpu)) => {
            let cpu = cpu
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|cpu| recommend_cpu(input, cpu));
            match (sessions, cpu) {
                (Err(decision), Err(why)) => {
                    return Decision {
                        reason: format!("{}; CPU: {why}", decision.reason),
                        ..decision
                    };
                }
                (Ok(sessions), Ok(cpu)) => larger(sessions, cpu),
                (Ok(known), Err(why)) => hold_down(input, known, &format!("CPU: {why}")),
                (Err(decision), Ok(known)) => {
                    hold_down(input, known, &format!("sessions: {}", decision.reason))
                }
            }
        }
    };
    let stable = stabilize(input, &recommendation);
    limit(input, &recommendation, stable)
}

/// Phase 1: replicas the autoscaling does not touch (0) or brings back into range at once.
pub fn bounds(input: &Input) -> Option<Decision> {
    let (current, spec) = (input.current, input.spec);
    let fixed = |desired, reason: String, limited, inactive| Decision {
        desired,
        reason,
        limited,
        inactive,
        recommendation: None,
    };
    if current == 0 {
        Some(fixed(
            0,
            "spec.replicas is 0: the autoscaling is off until something scales it up".to_owned(),
            None,
            Some(Inactive::ScalingDisabled),
        ))
    } else if current > spec.max_replicas {
        Some(fixed(
            spec.max_replicas,
            format!(
                "spec.replicas {current} is above maxReplicas: limited by maxReplicas {}",
                spec.max_replicas
            ),
            Some(Limit::TooManyReplicas),
            None,
        ))
    } else if current < spec.min_replicas {
        Some(fixed(
            spec.min_replicas,
            format!(
                "spec.replicas {current} is below minReplicas: limited by minReplicas {}",
                spec.min_replicas
            ),
            Some(Limit::TooFewReplicas),
            None,
        ))
    } else {
        None
    }
}

/// Phase 2's answer: the replicas the sessions (and CPU) ask for, unstabilized, and the words
/// for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub replicas: i32,
    pub words: String,
    /// A scale-down held back because one target could not be measured.
    pub held: Option<(Limit, String)>,
}

impl Recommendation {
    fn of(replicas: i32, words: String) -> Self {
        Recommendation {
            replicas,
            words,
            held: None,
        }
    }
}

/// Of two recommendations, the one for more replicas, its words first.
fn larger(a: Recommendation, b: Recommendation) -> Recommendation {
    let (first, second) = if b.replicas > a.replicas {
        (b, a)
    } else {
        (a, b)
    };
    Recommendation::of(first.replicas, format!("{}; {}", first.words, second.words))
}

/// The one recommendation that could be made, with a scale-down held back: the other target,
/// unmeasured (`why`), might not allow it.
fn hold_down(input: &Input, known: Recommendation, why: &str) -> Recommendation {
    let mut words = format!("{}; {why}", known.words);
    let held = (known.replicas < input.current).then(|| {
        let held = format!(
            "scale-down to {} held while the other target cannot be measured",
            count_pods(known.replicas)
        );
        words.push_str(&format!("; {held}"));
        (Limit::ScaleDownWithoutMetric, held)
    });
    Recommendation {
        replicas: known.replicas.max(input.current),
        words,
        held,
    }
}

/// Phase 2 for `targetCPUUtilization`: the CPU the pods use over what they request (the HPA's
/// replica calculator for a resource metric). Ready pods without a reading count as using
/// nothing for a scale-up and their whole request for a scale-down; pods not Ready yet count as
/// using nothing for a scale-up; a change these assumptions would reverse is not made.
pub fn recommend_cpu(input: &Input, cpu: &Cpu) -> Result<Recommendation, String> {
    let target = f64::from(input.spec.target_cpu_utilization.unwrap_or(100).max(1));
    let tolerance = input.spec.behavior.tolerance;
    let current = input.current;
    let Some(utilization) = cpu.utilization() else {
        return Err("no serving pod's CPU use has been read yet".to_owned());
    };
    let (used, requested) = cpu.sums();
    let ratio = used * 100.0 / (requested * target);
    let mut words = format!(
        "CPU {utilization}% of requests over {}",
        count_pods(cpu.measured.len() as i64)
    );
    let (unmeasured, starting) = (cpu.unmeasured.len(), cpu.starting.len());
    let starting = if ratio > 1.0 { starting } else { 0 };
    if starting > 0 {
        words.push_str(&format!(" and {starting} starting (counted as idle)"));
    }
    if unmeasured > 0 {
        let as_ = if ratio < 1.0 { "busy" } else { "idle" };
        words.push_str(&format!(
            " and {unmeasured} not measured (counted as {as_})"
        ));
    }
    words.push_str(&format!(", target {target}%: "));
    let within = |ratio: f64| (1.0 - tolerance..=1.0 + tolerance).contains(&ratio);
    let mut keep = |why: &str| {
        words.push_str(&format!("{why}, {}", count_pods(current)));
        current
    };
    let replicas = if starting == 0 && unmeasured == 0 {
        if within(ratio) {
            keep(&within_words(tolerance))
        } else {
            let n = ceil_pods(ratio * cpu.measured.len() as f64);
            words.push_str(&count_pods(n));
            n
        }
    } else {
        let busy = if ratio < 1.0 {
            cpu.unmeasured.iter().sum::<f64>()
        } else {
            0.0
        };
        let added: f64 = cpu.unmeasured.iter().sum::<f64>()
            + if starting > 0 {
                cpu.starting.iter().sum::<f64>()
            } else {
                0.0
            };
        let assumed = (used + busy) * 100.0 / ((requested + added) * target);
        let pods = cpu.measured.len() + unmeasured + starting;
        let n = ceil_pods(assumed * pods as f64);
        if within(assumed) {
            keep(&within_words(tolerance))
        } else if reversed(ratio.total_cmp(&1.0), assumed.total_cmp(&1.0), n, current) {
            keep("the pods without a reading would turn it around")
        } else {
            words.push_str(&count_pods(n));
            n
        }
    };
    Ok(Recommendation::of(replicas, words))
}

/// Whether the pods without a count, counted the HPA's way, reverse the change the counts alone
/// ask for: `before` and `after` compare the load with the target without and with them, `n`
/// is the replicas with them.
fn reversed(before: Ordering, after: Ordering, n: i32, current: i32) -> bool {
    use Ordering::{Greater, Less};
    matches!((before, after), (Less, Greater) | (Greater, Less))
        || (after == Less && n > current)
        || (after == Greater && n < current)
}

/// `x` replicas, rounded up.
fn ceil_pods(x: f64) -> i32 {
    x.ceil().clamp(0.0, f64::from(i32::MAX)) as i32
}

/// Phase 2: the replicas the sessions ask for (the HPA's replica calculator for a pods metric).
pub fn recommend(input: &Input) -> Result<Recommendation, Decision> {
    let pods = input.pods;
    let target = input.target();
    let current = input.current;
    let serving = i64::from(pods.serving());
    if serving == 0 {
        return Err(Decision {
            desired: current,
            reason: "no serving pod's gateway has reported its open sessions yet".to_owned(),
            limited: None,
            inactive: Some(Inactive::NoSessionReports),
            recommendation: None,
        });
    }
    let total = pods.total();
    let tolerance = input.spec.behavior.tolerance;
    let within = |sessions: i64, pods: i64| {
        let ratio = sessions as f64 / (pods as f64 * target as f64);
        (1.0 - tolerance..=1.0 + tolerance).contains(&ratio)
    };
    // Above the target, on the mean of the serving pods alone.
    let at_target = serving.saturating_mul(target);
    let over = total > at_target;
    let under = total < at_target;
    let starting = if over { i64::from(pods.starting) } else { 0 };
    let missing = i64::from(pods.missing);
    let mut words = format!("sessions {total} over {}", count_pods(serving));
    if starting > 0 {
        words.push_str(&format!(" and {starting} starting (counted as empty)"));
    }
    if missing > 0 {
        let as_ = if under { "at the target" } else { "empty" };
        words.push_str(&format!(" and {missing} not reporting (counted as {as_})"));
    }
    words.push_str(&format!(", target {target} per pod: "));
    let keep = |words: &mut String, why: &str| {
        words.push_str(&format!("{why}, {}", count_pods(current)));
        current
    };
    let replicas = if starting == 0 && missing == 0 {
        if within(total, serving) {
            keep(&mut words, &within_words(tolerance))
        } else {
            let n = sessions_over(total, target);
            words.push_str(&count_pods(n));
            n
        }
    } else {
        // What the pods without a count would make of it, the HPA's way.
        let assumed = total.saturating_add(if under { missing * target } else { 0 });
        let pods_assumed = serving + missing + starting;
        let n = sessions_over(assumed, target);
        if within(assumed, pods_assumed) {
            keep(&mut words, &within_words(tolerance))
        } else if reversed(
            total.cmp(&at_target),
            assumed.cmp(&pods_assumed.saturating_mul(target)),
            n,
            current,
        ) {
            keep(&mut words, "the pods without a count would turn it around")
        } else {
            words.push_str(&count_pods(n));
            n
        }
    };
    Ok(Recommendation::of(replicas, words))
}

/// "1 pod", "3 pods".
fn count_pods(n: impl Into<i64>) -> String {
    match n.into() {
        1 => "1 pod".to_owned(),
        n => format!("{n} pods"),
    }
}

fn within_words(tolerance: f64) -> String {
    format!("within the {:.0}% tolerance", tolerance * 100.0)
}

/// `sessions / target` rounded up, as replicas.
fn sessions_over(sessions: i64, target: i64) -> i32 {
    let (sessions, target) = (sessions.max(0), target.max(1));
    let n = sessions / target + i64::from(sessions % target != 0);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Phase 3's answer: the stabilized replicas and what held them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stable {
    pub replicas: i32,
    pub held: Option<(Limit, String)>,
}

/// Phase 3: the recommendation within the stabilization windows, then the holds of a
/// scale-down (a rollout or drain under way; too little seen since the operator started).
pub fn stabilize(input: &Input, recommendation: &Recommendation) -> Stable {
    let (now, current, history) = (input.now, input.current, input.history);
    let raw = recommendation.replicas;
    let up = Rules::up(input.spec);
    let down = Rules::down(input.spec);
    let lowest = history.within(now, up.window).fold(raw, i32::min);
    let highest = history.within(now, down.window).fold(raw, i32::max);
    let replicas = current.max(lowest).min(highest);
    let mut held = recommendation.held.clone();
    if replicas < raw {
        held = Some((
            Limit::ScaleUpStabilized,
            format!(
                "scale-up held by the {} stabilization window",
                up.window_text
            ),
        ));
    } else if replicas > raw {
        held = Some((
            Limit::ScaleDownStabilized,
            format!(
                "scale-down held by the {} stabilization window",
                down.window_text
            ),
        ));
    }
    if replicas >= current {
        return Stable { replicas, held };
    }
    let seen = input
        .history
        .since
        .map_or(SignedDuration::ZERO, |since| now.duration_since(since));
    if input.rollout_busy {
        return Stable {
            replicas: current,
            held: Some((
                Limit::ScaleDownDuringRollout,
                "scale-down held while a rollout or a drain is under way".to_owned(),
            )),
        };
    }
    if seen < down.window {
        return Stable {
            replicas: current,
            held: Some((
                Limit::ScaleDownAfterStart,
                format!(
                    "scale-down held until the operator has seen a whole {} scale-down \
                     stabilization window of recommendations since it started ({}s so far)",
                    down.window_text,
                    seen.as_secs()
                ),
            )),
        };
    }
    Stable { replicas, held }
}

/// One direction of change: what bounds it and what its limits are called.
struct Way {
    up: bool,
    name: &'static str,
    field: &'static str,
    bound: &'static str,
    rate: Limit,
    disabled: Limit,
    range: Limit,
}

const UP: Way = Way {
    up: true,
    name: "up",
    field: "scaleUp",
    bound: "maxReplicas",
    rate: Limit::ScaleUpLimit,
    disabled: Limit::ScaleUpDisabled,
    range: Limit::TooManyReplicas,
};

const DOWN: Way = Way {
    up: false,
    name: "down",
    field: "scaleDown",
    bound: "minReplicas",
    rate: Limit::ScaleDownLimit,
    disabled: Limit::ScaleDownDisabled,
    range: Limit::TooFewReplicas,
};

impl Way {
    /// Whether `a` lies further this way than `b`.
    fn beyond(&self, a: i32, b: i32) -> bool {
        if self.up { a > b } else { a < b }
    }
}

/// Phase 4: the rate policies, then `minReplicas` and `maxReplicas`.
pub fn limit(input: &Input, recommendation: &Recommendation, stable: Stable) -> Decision {
    let (current, spec) = (input.current, input.spec);
    let mut limited = stable.held;
    let mut desired = stable.replicas;
    if desired != current {
        let way = if desired > current { UP } else { DOWN };
        let (rules, end) = if way.up {
            (Rules::up(spec), spec.max_replicas)
        } else {
            (Rules::down(spec), spec.min_replicas)
        };
        let (rate_bound, policy) = rate(input, &rules, way.up);
        // The policies never turn a change around.
        let rate_bound = if way.beyond(rate_bound, current) {
            rate_bound
        } else {
            current
        };
        if way.beyond(end, rate_bound) && way.beyond(desired, rate_bound) {
            desired = rate_bound;
            limited = Some(match policy {
                None => (
                    way.disabled,
                    format!(
                        "scale-{} disabled by behavior.{}.selectPolicy",
                        way.name, way.field
                    ),
                ),
                Some(policy) => (
                    way.rate,
                    format!("limited by the scale-{} policy: {policy}", way.name),
                ),
            });
        } else if way.beyond(desired, end) {
            desired = end;
            limited = Some((way.range, format!("limited by {} {end}", way.bound)));
        }
    }
    let mut reason = recommendation.words.clone();
    if let Some((_, words)) = &limited {
        reason.push_str("; ");
        reason.push_str(words);
    }
    Decision {
        desired,
        reason,
        limited: limited.map(|(limit, _)| limit),
        inactive: None,
        recommendation: Some(recommendation.replicas),
    }
}

/// The most (`up`) or fewest replicas the policies allow now, and the policy that decided,
/// in words (None: the direction is disabled, or has no policy).
fn rate(input: &Input, rules: &Rules, up: bool) -> (i32, Option<String>) {
    let current = input.current;
    if rules.select == SelectPolicy::Disabled {
        return (current, None);
    }
    // Max: the largest change; Min: the smallest.
    let largest_change = rules.select == SelectPolicy::Max;
    let mut best: Option<(i32, &Policy)> = None;
    for policy in &rules.policies {
        let added = input.history.changed(input.now, policy.period, true);
        let removed = input.history.changed(input.now, policy.period, false);
        let start = current - added + removed;
        let proposed = match (policy.type_, up) {
            (ScalingPolicyType::Pods, true) => start.saturating_add(policy.value),
            (ScalingPolicyType::Pods, false) => start.saturating_sub(policy.value),
            (ScalingPolicyType::Percent, true) => {
                let grown = (f64::from(start) * (1.0 + f64::from(policy.value) / 100.0)).ceil();
                grown.min(f64::from(i32::MAX)) as i32
            }
            (ScalingPolicyType::Percent, false) => {
                (f64::from(start) * (1.0 - f64::from(policy.value) / 100.0)) as i32
            }
        };
        let better = match best {
            None => true,
            Some((b, _)) => (proposed > b) == (up == largest_change) && proposed != b,
        };
        if better {
            best = Some((proposed, policy));
        }
    }
    match best {
        Some((replicas, policy)) => (replicas, Some(policy.words())),
        None => (current, None),
    }
}

/// What [`record`] makes of a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The recommendation to add to the history.
    pub recommendation: Option<i32>,
    /// The `spec.replicas` to write through the scale subresource.
    pub scale_to: Option<i32>,
    /// A new decision to record (and to follow with an Event and a metric).
    pub scaled: Option<ScaleDecision>,
    pub status: AutoscalingStatus,
    /// The ScalingActive condition.
    pub verdict: Verdict,
}

impl Recorded {
    /// The Event of a new decision.
    pub fn note(&self) -> Option<Note> {
        self.scaled.as_ref().map(|d| Note {
            warning: false,
            reason: "Scaled",
            message: format!(
                "scaled from {} to {}: {}",
                d.from,
                count_pods(d.replicas),
                d.reason
            ),
        })
    }
}

/// The status and the condition of a decision, and the write it asks for. A decision already
/// recorded but not yet written (the same change from the same `spec.replicas`) is written
/// again, not recorded again. The counts (`currentReplicas`, `sessionsPerPod`) and the
/// condition's words are refreshed with `activeSessions` (`refresh`), or with a new decision or
/// a change of the condition's status or reason, which go out at once.
pub fn record(
    old: &LongConnServiceStatus,
    input: &Input,
    decision: &Decision,
    refresh: bool,
) -> Recorded {
    let current = input.current;
    let previous = old.autoscaling.as_ref();
    let last = previous.and_then(|a| a.last_decision.as_ref());
    let scale_to = (decision.desired != current).then_some(decision.desired);
    let pending = last.is_some_and(|d| d.from == current && Some(d.replicas) == scale_to);
    let scaled = scale_to.filter(|_| !pending).map(|to| ScaleDecision {
        from: current,
        replicas: to,
        reason: decision.reason.clone(),
        at: Some(Time(input.now)),
    });
    let (active, reason) = match (decision.inactive, decision.limited) {
        (Some(Inactive::ScalingDisabled), _) => (false, "ScalingDisabled"),
        (Some(Inactive::NoSessionReports), _) => (false, "NoSessionReports"),
        (None, Some(limit)) => (true, limit.reason()),
        (None, None) => (true, "ValidSessionCount"),
    };
    let kept = status::condition(old, SCALING_ACTIVE)
        .filter(|c| (c.status == "True") == active && c.reason == reason);
    // What is written at once anyway (a new decision, another verdict) goes out with fresh
    // counts and words.
    let refresh = refresh || scaled.is_some() || kept.is_none();
    let (current_replicas, sessions_per_pod, cpu_utilization) = match previous {
        Some(p) if !refresh => (p.current_replicas, p.sessions_per_pod, p.cpu_utilization),
        _ => (
            input.pods.counted(),
            input.pods.mean().unwrap_or_default(),
            input
                .cpu
                .and_then(|c| c.as_ref().ok())
                .and_then(Cpu::utilization),
        ),
    };
    let status = AutoscalingStatus {
        desired_replicas: decision.desired,
        current_replicas,
        sessions_per_pod,
        cpu_utilization,
        last_scale_time: scaled
            .as_ref()
            .and_then(|d| d.at.clone())
            .or_else(|| previous.and_then(|p| p.last_scale_time.clone())),
        last_decision: scaled.clone().or_else(|| last.cloned()),
    };
    let message = match kept {
        Some(kept) if !refresh => kept.message.clone(),
        _ => decision.reason.clone(),
    };
    Recorded {
        recommendation: decision.recommendation,
        scale_to,
        scaled,
        status,
        verdict: Verdict {
            status: active,
            reason,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScalingPolicy;
    use ScalingPolicyType as P;
    use longconn_drain_api::DrainReport;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn at(seconds: i64) -> Timestamp {
        T0.parse::<Timestamp>().expect("time") + SignedDuration::from_secs(seconds)
    }

    /// min 1, max 20, 100 sessions per pod, the HPA's default behavior.
    fn spec() -> AutoscalingSpec {
        serde_json::from_value(serde_json::json!({
            "minReplicas": 1, "maxReplicas": 20, "targetSessionsPerPod": 100
        }))
        .expect("spec")
    }

    /// Rules of one direction: the window, selectPolicy, and each policy's type, value and
    /// period.
    fn rules(
        window: &'static str,
        select: SelectPolicy,
        policies: &[(ScalingPolicyType, i32, &'static str)],
    ) -> ScalingRules {
        ScalingRules {
            stabilization_window: Some(Duration::from_static(window)),
            select_policy: select,
            policies: Some(
                policies
                    .iter()
                    .map(|&(type_, value, period)| ScalingPolicy {
                        type_,
                        value,
                        period: Duration::from_static(period),
                    })
                    .collect(),
            ),
        }
    }

    /// The decision's reason holds `words`.
    fn says(decision: &Decision, words: &str) {
        assert!(decision.reason.contains(words), "{}", decision.reason);
    }

    fn serving(sessions: &[i64]) -> Pods {
        Pods {
            sessions: sessions.to_vec(),
            ..Pods::default()
        }
    }

    /// A history that has seen recommendations since long ago (no restart hold).
    fn settled() -> History {
        History {
            since: Some(at(-3600)),
            ..History::default()
        }
    }

    fn decide_with(
        spec: &AutoscalingSpec,
        current: i32,
        pods: &Pods,
        history: &History,
    ) -> Decision {
        decide_at(0, spec, current, pods, history)
    }

    /// [`decide_with`] `seconds` after T0.
    fn decide_at(
        seconds: i64,
        spec: &AutoscalingSpec,
        current: i32,
        pods: &Pods,
        history: &History,
    ) -> Decision {
        decide(&Input {
            now: at(seconds),
            current,
            spec,
            pods,
            rollout_busy: false,
            history,
            cpu: None,
        })
    }

    #[test]
    fn the_total_over_the_target_rounded_up_is_the_recommendation() {
        let spec = AutoscalingSpec {
            target_sessions_per_pod: Some(150),
            ..spec()
        };
        let d = decide_with(&spec, 4, &serving(&[203, 203, 203, 203]), &settled());
        assert_eq!(d.desired, 6);
        assert_eq!(d.limited, None);
        assert_eq!(
            d.reason,
            "sessions 812 over 4 pods, target 150 per pod: 6 pods"
        );
        assert_eq!(d.recommendation, Some(6));
    }

    #[test]
    fn within_the_tolerance_the_replicas_stay() {
        let history = settled();
        // 4 pods at 109 and at 91: within 10% of 100.
        for sessions in [109, 91] {
            let d = decide_with(&spec(), 4, &serving(&[sessions; 4]), &history);
            assert_eq!(d.desired, 4, "{}", d.reason);
            says(&d, "within the 10% tolerance, 4 pods");
        }
        let d = decide_with(&spec(), 4, &serving(&[111; 4]), &history);
        assert_eq!(d.desired, 5, "just outside: ceil(444 / 100)");
        let tight = AutoscalingSpec {
            behavior: crate::crd::AutoscalingBehavior {
                tolerance: 0.0,
                ..Default::default()
            },
            ..spec()
        };
        let d = decide_with(&tight, 4, &serving(&[101; 4]), &history);
        assert_eq!(d.desired, 5, "no tolerance: any excess scales");
    }

    #[test]
    fn replicas_outside_min_and_max_are_brought_back_at_once() {
        let spec = AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 6,
            ..spec()
        };
        let empty = History::default();
        let d = decide_with(&spec, 9, &Pods::default(), &empty);
        assert_eq!((d.desired, d.limited), (6, Some(Limit::TooManyReplicas)));
        assert_eq!(
            d.reason,
            "spec.replicas 9 is above maxReplicas: limited by maxReplicas 6"
        );
        let d = decide_with(&spec, 1, &Pods::default(), &empty);
        assert_eq!((d.desired, d.limited), (2, Some(Limit::TooFewReplicas)));
        assert_eq!(d.recommendation, None, "no recommendation is made then");
    }

    #[test]
    fn recommendations_are_clamped_to_min_and_max() {
        let spec = AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 5,
            ..spec()
        };
        let d = decide_with(&spec, 4, &serving(&[300; 4]), &settled());
        assert_eq!((d.desired, d.limited), (5, Some(Limit::TooManyReplicas)));
        says(&d, ": 12 pods; limited by maxReplicas 5");
        let d = decide_with(&spec, 4, &serving(&[0; 4]), &settled());
        assert_eq!((d.desired, d.limited), (2, Some(Limit::TooFewReplicas)));
        says(&d, "limited by minReplicas 2");
    }

    #[test]
    fn zero_replicas_turn_the_autoscaling_off() {
        let d = decide_with(&spec(), 0, &Pods::default(), &settled());
        assert_eq!(
            (d.desired, d.inactive),
            (0, Some(Inactive::ScalingDisabled))
        );
    }

    #[test]
    fn without_a_report_nothing_is_decided() {
        let pods = Pods {
            starting: 3,
            ..Pods::default()
        };
        let d = decide_with(&spec(), 3, &pods, &settled());
        assert_eq!(
            (d.desired, d.inactive),
            (3, Some(Inactive::NoSessionReports))
        );
        assert_eq!(d.recommendation, None);
    }

    #[test]
    fn the_scale_up_policies_bound_the_growth_and_max_picks_the_larger() {
        // Default: 4 pods or 100% per 15s, the larger.
        let history = settled();
        let d = decide_with(&spec(), 2, &serving(&[1000, 1000]), &history);
        assert_eq!(d.desired, 6, "2 + 4 pods beats 2 x 2");
        assert_eq!(d.limited, Some(Limit::ScaleUpLimit));
        says(&d, "; limited by the scale-up policy: 4 pods per 15s");
        let d = decide_with(&spec(), 10, &serving(&[1000; 10]), &history);
        assert_eq!(
            d.desired, 20,
            "100% of 10 beats 4 pods (and maxReplicas is 20)"
        );
    }

    #[test]
    fn select_policy_min_takes_the_smaller_change() {
        let mut spec = spec();
        spec.behavior.scale_up = rules(
            "0s",
            SelectPolicy::Min,
            &[(P::Pods, 4, "15s"), (P::Percent, 100, "15s")],
        );
        let d = decide_with(&spec, 2, &serving(&[1000, 1000]), &settled());
        assert_eq!(d.desired, 4, "100% of 2 is less than 4 pods");
        says(&d, "scale-up policy: 100% per 15s");
    }

    #[test]
    fn select_policy_disabled_never_changes_that_direction() {
        let mut spec = spec();
        spec.behavior.scale_down = rules("0s", SelectPolicy::Disabled, &[]);
        let d = decide_with(&spec, 6, &serving(&[10; 6]), &settled());
        assert_eq!((d.desired, d.limited), (6, Some(Limit::ScaleDownDisabled)));
        let d = decide_with(&spec, 6, &serving(&[300; 6]), &settled());
        assert_eq!(d.desired, 12, "the other direction still scales");
        spec.behavior.scale_up = rules("0s", SelectPolicy::Disabled, &[]);
        let d = decide_with(&spec, 6, &serving(&[300; 6]), &settled());
        assert_eq!((d.desired, d.limited), (6, Some(Limit::ScaleUpDisabled)));
    }

    #[test]
    fn a_policy_counts_from_the_replicas_at_the_start_of_its_period() {
        let mut spec = spec();
        spec.behavior.scale_up = rules("0s", SelectPolicy::Max, &[(P::Pods, 2, "1m")]);
        let mut history = settled();
        // 4 -> 6 ten seconds ago: the minute's two pods are spent.
        history.scaled(at(-10), 4, 6, &spec);
        let d = decide_with(&spec, 6, &serving(&[500; 6]), &history);
        assert_eq!((d.desired, d.limited), (6, Some(Limit::ScaleUpLimit)));
        let later = decide_at(51, &spec, 6, &serving(&[500; 6]), &history);
        assert_eq!(later.desired, 8, "a minute after the last change, two more");
    }

    #[test]
    fn a_percent_scale_down_policy_rounds_towards_more_pods_left() {
        let mut spec = spec();
        spec.behavior.scale_down = rules("0s", SelectPolicy::Max, &[(P::Percent, 50, "1m")]);
        let d = decide_with(&spec, 5, &serving(&[10; 5]), &settled());
        assert_eq!(d.desired, 2, "5 x 50% = 2.5, truncated as the HPA does");
        assert_eq!(d.limited, Some(Limit::ScaleDownLimit));
        says(&d, "scale-down policy: 50% per 1m");
        spec.behavior.scale_down = rules("0s", SelectPolicy::Max, &[(P::Pods, 1, "1m")]);
        let d = decide_with(&spec, 5, &serving(&[10; 5]), &settled());
        assert_eq!(d.desired, 4);
    }

    #[test]
    fn a_scale_down_takes_the_highest_recommendation_of_its_window() {
        let spec = spec();
        let mut history = settled();
        history.recommended(at(-200), 8, &spec);
        history.recommended(at(-100), 5, &spec);
        let d = decide_with(&spec, 8, &serving(&[37; 8]), &history);
        assert_eq!(d.desired, 8, "8 was recommended within 300s");
        assert_eq!(d.limited, Some(Limit::ScaleDownStabilized));
        says(
            &d,
            "3 pods; scale-down held by the 300s stabilization window",
        );
        let later = decide_at(101, &spec, 8, &serving(&[37; 8]), &history);
        assert_eq!(later.desired, 5, "the 8 left the window; 5 is still in it");
    }

    #[test]
    fn a_scale_up_takes_the_lowest_recommendation_of_its_window() {
        let mut spec = spec();
        spec.behavior.scale_up = rules("60s", SelectPolicy::Max, &[(P::Percent, 100, "15s")]);
        let mut history = settled();
        history.recommended(at(-30), 4, &spec);
        let d = decide_with(&spec, 4, &serving(&[200; 4]), &history);
        assert_eq!((d.desired, d.limited), (4, Some(Limit::ScaleUpStabilized)));
        history.recommended(at(-20), 6, &spec);
        let d = decide_at(31, &spec, 4, &serving(&[200; 4]), &history);
        assert_eq!(d.desired, 6, "the 4 left the window: the lowest left is 6");
    }

    #[test]
    fn after_a_start_no_scale_down_until_a_whole_window_is_seen() {
        let spec = spec();
        let mut history = History::default();
        let d = decide_with(&spec, 6, &serving(&[10; 6]), &history);
        assert_eq!(
            (d.desired, d.limited),
            (6, Some(Limit::ScaleDownAfterStart))
        );
        says(&d, "(0s so far)");
        history.recommended(at(0), 1, &spec);
        let soon = decide_at(299, &spec, 6, &serving(&[10; 6]), &history);
        assert_eq!(soon.limited, Some(Limit::ScaleDownAfterStart));
        let later = decide_at(300, &spec, 6, &serving(&[10; 6]), &history);
        assert_eq!(later.desired, 1, "a whole window seen, all of it low");
        // Scaling up needs no history.
        let d = decide_with(&spec, 2, &serving(&[300, 300]), &History::default());
        assert_eq!(d.desired, 6);
    }

    #[test]
    fn a_scale_down_waits_while_a_rollout_or_drain_is_under_way() {
        let spec = spec();
        let pods = serving(&[10; 6]);
        let input = Input {
            now: at(0),
            current: 6,
            spec: &spec,
            pods: &pods,
            rollout_busy: true,
            history: &settled(),
            cpu: None,
        };
        let d = decide(&input);
        assert_eq!(
            (d.desired, d.limited),
            (6, Some(Limit::ScaleDownDuringRollout))
        );
        let pods = serving(&[900; 6]);
        let d = decide(&Input {
            pods: &pods,
            ..input
        });
        assert_eq!(d.desired, 12, "a scale-up goes ahead (at 100% per 15s)");
    }

    #[test]
    fn starting_pods_count_as_empty_for_a_scale_up() {
        let pods = Pods {
            sessions: vec![150, 150],
            starting: 2,
            missing: 0,
        };
        let d = decide_with(&spec(), 4, &pods, &settled());
        assert_eq!(
            d.desired, 4,
            "300 over 4 pods is under the target: no change"
        );
        says(&d, "and 2 starting (counted as empty)");
        let pods = Pods {
            sessions: vec![400, 400],
            starting: 2,
            missing: 0,
        };
        let d = decide_with(&spec(), 4, &pods, &settled());
        assert_eq!(d.desired, 8);
        // Under the target the starting pods are left out, as the HPA leaves out unready ones.
        let pods = Pods {
            sessions: vec![20, 20],
            starting: 2,
            missing: 0,
        };
        assert_eq!(decide_with(&spec(), 4, &pods, &settled()).desired, 1);
    }

    #[test]
    fn pods_without_a_report_are_assumed_at_the_target_for_a_scale_down() {
        let pods = Pods {
            sessions: vec![20, 20],
            starting: 0,
            missing: 2,
        };
        let d = decide_with(&spec(), 4, &pods, &settled());
        assert_eq!(d.desired, 3, "(40 + 2 x 100) / 100, rounded up");
        assert!(
            d.reason
                .contains("and 2 not reporting (counted as at the target)"),
            "{}",
            d.reason
        );
        let pods = Pods {
            sessions: vec![90, 90],
            starting: 0,
            missing: 2,
        };
        let d = decide_with(&spec(), 4, &pods, &settled());
        assert_eq!(
            d.desired, 4,
            "(180 + 200) / 400 = 0.95: within the tolerance"
        );
    }

    #[test]
    fn draining_and_terminating_pods_and_their_sessions_are_left_out() {
        let pod = |name: &str, ready: bool, state: Option<DrainState>, active: u64| PodFacts {
            name: name.to_owned(),
            running: true,
            ready,
            report: state.map(|state| DrainReport {
                state,
                active,
                ..DrainReport::default()
            }),
            ..PodFacts::default()
        };
        let mut terminating = pod("t", true, Some(DrainState::Serving), 80);
        terminating.terminating = true;
        let pods = [
            pod("a", true, Some(DrainState::Serving), 120),
            pod("b", true, Some(DrainState::Serving), 100),
            pod("draining", true, Some(DrainState::Draining), 500),
            pod("leaving", true, Some(DrainState::Serving), 70),
            terminating,
            pod("new", false, None, 0),
            pod("silent", true, None, 0),
        ];
        let counted = Pods::of(&pods, |p| p.name == "leaving");
        assert_eq!(
            counted,
            Pods {
                sessions: vec![120, 100],
                starting: 1,
                missing: 1,
            }
        );
        assert_eq!(counted.counted(), 4);
        assert_eq!(counted.mean(), Some(110));
    }

    #[test]
    fn a_decision_is_recorded_once_and_written_until_it_shows() {
        let spec = spec();
        let pods = serving(&[250; 4]);
        let history = settled();
        let input = Input {
            now: at(0),
            current: 4,
            spec: &spec,
            pods: &pods,
            rollout_busy: false,
            history: &history,
            cpu: None,
        };
        let decision = decide(&input);
        let first = record(&LongConnServiceStatus::default(), &input, &decision, true);
        assert_eq!(first.scale_to, Some(8));
        let scaled = first.scaled.clone().expect("a new decision");
        assert_eq!((scaled.from, scaled.replicas), (4, 8));
        assert_eq!(
            first.note().map(|n| n.message),
            Some("scaled from 4 to 8 pods: sessions 1000 over 4 pods, target 100 per pod: 10 pods; limited by the scale-up policy: 4 pods per 15s".to_owned())
        );
        assert_eq!(first.status.desired_replicas, 8);
        assert_eq!(first.status.sessions_per_pod, 250);
        assert_eq!(first.verdict.reason, "ScaleUpLimit");

        // Recorded, but the write of spec.replicas failed: written again, not recorded again.
        let recorded = LongConnServiceStatus {
            autoscaling: Some(first.status.clone()),
            ..LongConnServiceStatus::default()
        };
        let later = Input {
            now: at(5),
            ..input
        };
        let again = record(&recorded, &later, &decide(&later), false);
        assert_eq!(again.scale_to, Some(8));
        assert_eq!(again.scaled, None);
        assert_eq!(again.status, first.status);

        // Written: nothing more to do.
        let done = Input {
            current: 8,
            ..later
        };
        let pods = serving(&[100; 8]);
        let done = Input {
            pods: &pods,
            ..done
        };
        let settled = record(&recorded, &done, &decide(&done), false);
        assert_eq!(settled.scale_to, None);
        assert_eq!(settled.scaled, None);
        assert_eq!(settled.status.last_decision, first.status.last_decision);
    }

    #[test]
    fn counts_and_words_wait_for_the_refresh_but_a_new_reason_does_not() {
        let spec = spec();
        let history = settled();
        let pods = serving(&[100; 4]);
        let input = Input {
            now: at(0),
            current: 4,
            spec: &spec,
            pods: &pods,
            rollout_busy: false,
            history: &history,
            cpu: None,
        };
        let first = record(
            &LongConnServiceStatus::default(),
            &input,
            &decide(&input),
            true,
        );
        let mut old = LongConnServiceStatus {
            autoscaling: Some(first.status.clone()),
            ..LongConnServiceStatus::default()
        };
        old.conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: SCALING_ACTIVE.to_owned(),
                status: "True".to_owned(),
                reason: first.verdict.reason.to_owned(),
                message: first.verdict.message.clone(),
                observed_generation: None,
                last_transition_time: Time(at(0)),
            });
        let pods = serving(&[104; 4]);
        let moved = Input {
            pods: &pods,
            ..input
        };
        let held = record(&old, &moved, &decide(&moved), false);
        assert_eq!(held.status.sessions_per_pod, 100);
        assert_eq!(held.verdict.message, first.verdict.message);
        let refreshed = record(&old, &moved, &decide(&moved), true);
        assert_eq!(refreshed.status.sessions_per_pod, 104);
        assert_ne!(refreshed.verdict.message, first.verdict.message);
        let pods = serving(&[10; 4]);
        let low = Input {
            pods: &pods,
            rollout_busy: true,
            ..input
        };
        let changed = record(&old, &low, &decide(&low), false);
        assert_eq!(changed.verdict.reason, "ScaleDownHeldDuringRollout");
        assert!(
            changed.verdict.message.ends_with("under way"),
            "{}",
            changed.verdict.message
        );
    }

    /// min 1, max 20, 100 sessions and 50% CPU per pod, the HPA's default behavior.
    fn cpu_spec() -> AutoscalingSpec {
        AutoscalingSpec {
            target_cpu_utilization: Some(50),
            ..spec()
        }
    }

    fn decide_cpu(current: i32, pods: &Pods, cpu: &Result<Cpu, String>) -> Decision {
        decide(&Input {
            now: at(0),
            current,
            spec: &cpu_spec(),
            pods,
            rollout_busy: false,
            history: &settled(),
            cpu: Some(cpu),
        })
    }

    /// Pods measured (use, request), unmeasured (request) and starting (request).
    fn readings(
        measured: &[(f64, f64)],
        unmeasured: &[f64],
        starting: &[f64],
    ) -> Result<Cpu, String> {
        Ok(Cpu {
            measured: measured.to_vec(),
            unmeasured: unmeasured.to_vec(),
            starting: starting.to_vec(),
        })
    }

    /// Every pod measured, each requesting 100m.
    fn measured(used: &[f64]) -> Result<Cpu, String> {
        Ok(Cpu {
            measured: used.iter().map(|u| (*u, 100.0)).collect(),
            ..Cpu::default()
        })
    }

    #[test]
    fn beside_sessions_cpu_asks_for_more_pods_and_wins() {
        let pods = serving(&[50; 2]);
        let d = decide_cpu(2, &pods, &measured(&[150.0, 150.0]));
        assert_eq!(
            d.desired, 6,
            "150% over a 50% target on 2 pods: {}",
            d.reason
        );
        assert!(
            d.reason.starts_with(
                "CPU 150% of requests over 2 pods, target 50%: 6 pods; sessions 100 over 2 pods"
            ),
            "{}",
            d.reason
        );
    }

    #[test]
    fn beside_cpu_sessions_ask_for_more_pods_and_win() {
        let pods = serving(&[300; 2]);
        let d = decide_cpu(2, &pods, &measured(&[10.0, 10.0]));
        assert_eq!(d.desired, 6, "{}", d.reason);
        assert!(d.reason.starts_with("sessions 600"), "{}", d.reason);
        assert!(d.reason.contains("; CPU 10% of requests"), "{}", d.reason);
    }

    #[test]
    fn both_low_scale_down_to_the_larger_of_the_two() {
        let pods = serving(&[10; 6]);
        let d = decide_cpu(6, &pods, &measured(&[20.0; 6]));
        assert_eq!(
            d.desired, 3,
            "20% x 6 pods / 50% = 2.4: 3 pods; {}",
            d.reason
        );
    }

    #[test]
    fn without_a_cpu_reading_scale_ups_on_sessions_go_on_and_scale_downs_wait() {
        let unread = Err("the resource metrics API (metrics.k8s.io) is not served".to_owned());
        let up = decide_cpu(2, &serving(&[300; 2]), &unread);
        assert_eq!(up.desired, 6, "{}", up.reason);
        let down = decide_cpu(6, &serving(&[10; 6]), &unread);
        assert_eq!(down.desired, 6, "{}", down.reason);
        assert_eq!(down.limited, Some(Limit::ScaleDownWithoutMetric));
        assert!(
            down.reason
                .contains("CPU: the resource metrics API (metrics.k8s.io) is not served"),
            "{}",
            down.reason
        );
    }

    #[test]
    fn without_session_reports_cpu_still_scales_up() {
        let silent = Pods {
            missing: 2,
            ..Pods::default()
        };
        let d = decide_cpu(2, &silent, &measured(&[100.0, 100.0]));
        assert_eq!(d.desired, 4, "{}", d.reason);
        assert_eq!(d.inactive, None);
        let neither = decide_cpu(2, &silent, &Err("not read".to_owned()));
        assert_eq!(neither.inactive, Some(Inactive::NoSessionReports));
        assert!(
            neither.reason.ends_with("; CPU: not read"),
            "{}",
            neither.reason
        );
    }

    #[test]
    fn pods_without_a_cpu_reading_count_against_the_change_they_would_reverse() {
        // Scale-up: the unmeasured pod counts as idle. (150 + 150 + 0) / 300 = 100%, twice
        // the target: 3 x 2 = 6 pods.
        let one_missing = readings(&[(150.0, 100.0), (150.0, 100.0)], &[100.0], &[]);
        let d = decide_cpu(3, &serving(&[10; 3]), &one_missing);
        assert_eq!(d.desired, 6, "{}", d.reason);
        // Scale-down: it counts as busy. (20 + 20 + 100) / 300 = 47%, within the tolerance of
        // 50%.
        let idle = readings(&[(20.0, 100.0), (20.0, 100.0)], &[100.0], &[]);
        let d = decide_cpu(3, &serving(&[10; 3]), &idle);
        assert_eq!(d.desired, 3, "{}", d.reason);
        // Starting pods count as idle for a scale-up only: 60% over 2 pods and 2 starting is
        // (60 + 60) / 400 = 30%: below the target, which the 60% reading is not: no change.
        let starting = readings(&[(60.0, 100.0), (60.0, 100.0)], &[], &[100.0, 100.0]);
        let d = decide_cpu(4, &serving(&[10; 2]), &starting);
        assert_eq!(d.desired, 4, "{}", d.reason);
        assert!(d.reason.contains("would turn it around"), "{}", d.reason);
    }

    #[test]
    fn a_pod_without_a_cpu_request_makes_the_cpu_unreadable_and_names_the_pod() {
        let pod = |name: &str, cpu_requested: Option<f64>| PodFacts {
            name: name.to_owned(),
            running: true,
            ready: true,
            cpu_requested,
            ..PodFacts::default()
        };
        let used = std::collections::BTreeMap::from([("a".to_owned(), 30.0)]);
        let pods = [pod("a", Some(100.0)), pod("b", Some(100.0))];
        assert_eq!(
            Cpu::of(&pods, |_| false, &used),
            readings(&[(30.0, 100.0)], &[100.0], &[])
        );
        let err = Cpu::of(&[pod("a", Some(100.0)), pod("b", None)], |_| false, &used)
            .expect_err("b requests no CPU");
        assert!(
            err.contains("pod b has a container without a CPU request"),
            "{err}"
        );
    }

    #[test]
    fn the_status_shows_the_cpu_utilization_beside_the_sessions() {
        let spec = cpu_spec();
        let pods = serving(&[100; 2]);
        let cpu = measured(&[40.0, 60.0]);
        let input = Input {
            now: at(0),
            current: 2,
            spec: &spec,
            pods: &pods,
            rollout_busy: false,
            history: &settled(),
            cpu: Some(&cpu),
        };
        let recorded = record(
            &LongConnServiceStatus::default(),
            &input,
            &decide(&input),
            true,
        );
        assert_eq!(recorded.status.cpu_utilization, Some(50));
        assert_eq!(recorded.status.sessions_per_pod, 100);
        assert!(recorded.verdict.status);
    }

    #[test]
    fn the_history_keeps_only_what_its_windows_and_periods_can_use() {
        let spec = spec();
        let mut history = History::default();
        for (t, r) in [(0, 3), (10, 3), (20, 4), (30, 4), (40, 3)] {
            history.recommended(at(t), r, &spec);
        }
        assert_eq!(
            history.recommendations,
            [(at(10), 3), (at(30), 4), (at(40), 3)],
            "runs of equal recommendations kept as their newest"
        );
        history.recommended(at(400), 5, &spec);
        assert_eq!(history.recommendations, [(at(400), 5)]);
        assert_eq!(history.since, Some(at(0)));
        history.scaled(at(0), 2, 6, &spec);
        history.scaled(at(10), 6, 7, &spec);
        history.scaled(at(20), 7, 5, &spec);
        assert_eq!(history.scaled, [(at(10), 1), (at(20), -2)]);
    }

    /// A model run: sessions rise and fall over simulated hours, a reconcile every 15 s; the
    /// replicas never leave min..max, never change faster than the policies allow, and never
    /// go down within the scale-down window after a recommendation above them.
    #[test]
    fn over_simulated_time_the_replicas_keep_every_bound() {
        let mut spec = AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 30,
            ..spec()
        };
        spec.behavior.scale_down = rules(
            "120s",
            SelectPolicy::Max,
            &[(P::Pods, 2, "30s"), (P::Percent, 20, "60s")],
        );
        let mut history = History::default();
        let mut current = 3;
        let mut changes: Vec<(i64, i32, i32)> = Vec::new();
        let mut recommendations: Vec<(i64, i32)> = Vec::new();
        // A deterministic load: a slow wave, a spike, a noisy floor.
        let mut noise: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..2000_i64 {
            let t = step * 15;
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let wave = 1200.0 * (1.0 + (t as f64 / 3000.0).sin());
            let spike = if (9000..9600).contains(&t) {
                2500.0
            } else {
                0.0
            };
            let total = (wave + spike) as i64 + i64::try_from(noise % 200).unwrap_or(0);
            let n = usize::try_from(current).unwrap_or(1);
            let mut sessions = vec![total / current as i64; n];
            sessions[0] += total % current as i64;
            let pods = serving(&sessions);
            let input = Input {
                now: at(t),
                current,
                spec: &spec,
                pods: &pods,
                rollout_busy: false,
                history: &history,
                cpu: None,
            };
            let d = decide(&input);
            assert!(
                (spec.min_replicas..=spec.max_replicas).contains(&d.desired),
                "t={t}: {} outside min..max",
                d.desired
            );
            if let Some(r) = d.recommendation {
                history.recommended(at(t), r, &spec);
                recommendations.push((t, r));
            }
            if d.desired < current {
                // No recommendation at or above the current replicas within the window.
                assert!(
                    recommendations
                        .iter()
                        .filter(|(rt, _)| t - rt < 120 && *rt < t)
                        .all(|(_, r)| *r < current),
                    "t={t}: scaled down from {current} within the window of a higher \
                     recommendation"
                );
                // At most 2 pods per 30s, or 20% per 60s, whichever allows more.
                let window_start = |period: i64| {
                    let changed: i32 = changes
                        .iter()
                        .filter(|(ct, _, _)| t - ct < period)
                        .map(|(_, from, to)| to - from)
                        .sum();
                    current - changed
                };
                let floor = (window_start(30) - 2).min((f64::from(window_start(60)) * 0.8) as i32);
                assert!(
                    d.desired >= floor,
                    "t={t}: {current} -> {} below {floor}",
                    d.desired
                );
            }
            if d.desired > current {
                let start = current
                    - changes
                        .iter()
                        .filter(|(ct, _, _)| t - ct < 15)
                        .map(|(_, from, to)| to - from)
                        .sum::<i32>();
                let cap = (start + 4).max(start * 2);
                assert!(
                    d.desired <= cap,
                    "t={t}: {current} -> {} above {cap}",
                    d.desired
                );
            }
            if d.desired != current {
                history.scaled(at(t), current, d.desired, &spec);
                changes.push((t, current, d.desired));
                current = d.desired;
            }
        }
        assert!(changes.iter().any(|(_, f, t)| t > f), "it scaled up");
        assert!(changes.iter().any(|(_, f, t)| t < f), "it scaled down");
        assert!(
            changes.iter().any(|(_, _, to)| *to == spec.max_replicas)
                || changes.iter().map(|(_, _, to)| *to).max() > Some(20),
            "the spike took it high: {changes:?}"
        );
    }
}
