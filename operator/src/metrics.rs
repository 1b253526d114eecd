//! The operator's Prometheus metrics (OpenMetrics text on `/metrics`).
//!
//! Counters and the rollout phase are set as the reconciler records; `rollout_halted` and
//! `autoscale_desired_replicas` are read at each scrape from the LongConnServices' recorded
//! status, so they hold what is recorded after a restart and forget a LongConnService once it
//! is deleted.

use std::fmt;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{LongConnService, RolloutPhase};
use crate::kinds::Kind;
use crate::status::PROGRESSING;

/// Why a reconcile failed: a closed set, one value per error variant.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorReason {
    /// A request to the API server failed.
    Api,
    /// Generating keys, certificates or tokens failed.
    Crypto,
    /// The LongConnService lacks a name, namespace or uid.
    InvalidObject,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: ErrorReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

impl KindLabels {
    pub fn of(kind: Kind) -> Self {
        Self {
            kind: format!("{kind:?}"),
        }
    }
}

/// The HTTP method of a request to the API server: a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl Method {
    pub fn of(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => Method::Get,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::PATCH => Method::Patch,
            http::Method::DELETE => Method::Delete,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: Method,
}

/// One LongConnService in one rollout phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub name: String,
    pub phase: PhaseLabel,
}

/// [`RolloutPhase`] as a label value; `None` when no rollout was ever recorded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PhaseLabel {
    None,
    Surging,
    Draining,
    Removing,
    Paused,
    RollingBack,
    Complete,
}

impl PhaseLabel {
    pub const ALL: [PhaseLabel; 7] = [
        PhaseLabel::None,
        PhaseLabel::Surging,
        PhaseLabel::Draining,
        PhaseLabel::Removing,
        PhaseLabel::Paused,
        PhaseLabel::RollingBack,
        PhaseLabel::Complete,
    ];

    pub fn of(phase: Option<RolloutPhase>) -> Self {
        match phase {
            None => PhaseLabel::None,
            Some(RolloutPhase::Surging) => PhaseLabel::Surging,
            Some(RolloutPhase::Draining) => PhaseLabel::Draining,
            Some(RolloutPhase::Removing) => PhaseLabel::Removing,
            Some(RolloutPhase::Paused) => PhaseLabel::Paused,
            Some(RolloutPhase::RollingBack) => PhaseLabel::RollingBack,
            Some(RolloutPhase::Complete) => PhaseLabel::Complete,
        }
    }
}

/// Why a LongConnService's rollout is halted, from its Progressing condition: a closed set.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HaltReason {
    /// The rollout dropped more sessions than `rollout.maxDroppedSessions`: it is paused
    /// (Progressing=False), rolling back (Progressing=True, reason RollingBack) or rolled back
    /// (Progressing=False, reason RolledBack) until the spec changes.
    DropBudgetExceeded,
    /// The new revision's pods did not become ready within `rollout.progressDeadline`.
    ProgressDeadlineExceeded,
}

impl HaltReason {
    pub const ALL: [HaltReason; 2] = [
        HaltReason::DropBudgetExceeded,
        HaltReason::ProgressDeadlineExceeded,
    ];

    /// Why the rollout of `lcs` is halted, by its recorded Progressing condition; None when it
    /// is not.
    pub fn of(lcs: &LongConnService) -> Option<Self> {
        let progressing = lcs
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)?;
        match (progressing.status.as_str(), progressing.reason.as_str()) {
            ("False", "DropBudgetExceeded") | ("True", "RollingBack") | ("False", "RolledBack") => {
                Some(HaltReason::DropBudgetExceeded)
            }
            ("False", "ProgressDeadlineExceeded") => Some(HaltReason::ProgressDeadlineExceeded),
            _ => None,
        }
    }
}

/// One LongConnService halted for one reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HaltLabels {
    pub namespace: String,
    pub name: String,
    pub reason: HaltReason,
}

/// Which way a scale decision went: a closed set, `up` or `down`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        let value = match self {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// One LongConnService.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub name: String,
}

/// What is read at each scrape from the LongConnServices in the store, as their status records
/// it: `rollout_halted`, 1 for the reason a rollout is halted for and 0 for the others, and
/// `autoscale_desired_replicas`, the replicas the session autoscaling wants (for those whose
/// session autoscaling recorded something).
#[derive(Debug)]
struct Recorded(Store<LongConnService>);

impl Collector for Recorded {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let halted = Family::<HaltLabels, Gauge>::default();
        let desired = Family::<ServiceLabels, Gauge>::default();
        for lcs in self.0.state() {
            let (namespace, name) = (lcs.namespace().unwrap_or_default(), lcs.name_any());
            let why = HaltReason::of(&lcs);
            for reason in HaltReason::ALL {
                halted
                    .get_or_create(&HaltLabels {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        reason,
                    })
                    .set(i64::from(why == Some(reason)));
            }
            if let Some(a) = lcs.status.as_ref().and_then(|s| s.autoscaling.as_ref()) {
                desired
                    .get_or_create(&ServiceLabels { namespace, name })
                    .set(i64::from(a.desired_replicas));
            }
        }
        halted.encode(encoder.encode_descriptor(
            "rollout_halted",
            "1 while a LongConnService's rollout is halted for this reason (its Progressing \
             condition), 0 otherwise",
            None,
            MetricType::Gauge,
        )?)?;
        desired.encode(encoder.encode_descriptor(
            "autoscale_desired_replicas",
            "The replicas the session autoscaling of a LongConnService wants, as recorded in its \
             status",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub objects_applied: Family<KindLabels, Counter>,
    pub objects_deleted: Family<KindLabels, Counter>,
    pub certificates_issued: Counter,
    pub drains_started: Counter,
    pub drains_finished: Counter,
    pub sessions_migrated: Counter,
    pub sessions_dropped: Counter,
    pub sessions_moved_again: Counter,
    pub attempts_refused: Counter,
    pub drain_duration: Histogram,
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    pub api_requests: Family<MethodLabels, Counter>,
    pub lease_requests: Family<MethodLabels, Counter>,
    pub autoscale_decisions: Family<DirectionLabels, Counter>,
    pub rebalance_rounds: Counter,
    pub rebalance_sessions_asked: Counter,
    pub rebalance_sessions_moved: Counter,
    pub rebalance_sessions_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("longconn_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let objects_applied = Family::<KindLabels, Counter>::default();
        let objects_deleted = Family::<KindLabels, Counter>::default();
        let certificates_issued = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "objects_applied",
            "Objects created or updated with server-side apply, by kind",
            objects_applied.clone(),
        );
        registry.register(
            "objects_deleted",
            "Owned objects deleted because no longer desired, by kind",
            objects_deleted.clone(),
        );
        registry.register(
            "certificates_issued",
            "Self-signed CA and serving certificates issued",
            certificates_issued.clone(),
        );
        let drains_started = Counter::default();
        let drains_finished = Counter::default();
        let sessions_migrated = Counter::default();
        let sessions_dropped = Counter::default();
        let sessions_moved_again = Counter::default();
        let attempts_refused = Counter::default();
        let drain_duration = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "drains_started",
            "Pod drains the operator started",
            drains_started.clone(),
        );
        registry.register(
            "drains_finished",
            "Pod drains whose final report was recorded (or lost with the pod)",
            drains_finished.clone(),
        );
        registry.register(
            "sessions_migrated",
            "Sessions that completed the close handshake when their pod was drained",
            sessions_migrated.clone(),
        );
        registry.register(
            "sessions_dropped",
            "Sessions ended without a completed close handshake while their pod was drained",
            sessions_dropped.clone(),
        );
        registry.register(
            "sessions_moved_again",
            "Of the migrated sessions, those whose clients said (Longconn-Session-Moves) an \
             earlier drain had moved them too",
            sessions_moved_again.clone(),
        );
        registry.register(
            "attempts_refused",
            "Connection attempts drained gateways refused (503) during their drains",
            attempts_refused.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Time from a drain's start to its final report",
            drain_duration.clone(),
        );
        registry.register(
            "rollout_phase",
            "1 for the phase each LongConnService's rollout is in, 0 for the others",
            rollout_phase.clone(),
        );
        let api_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by HTTP method (a watch counts once)",
            api_requests.clone(),
        );
        let lease_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "lease_requests",
            "Requests sent to the Kubernetes API server for leader election (the Lease), by \
             HTTP method; not counted in api_requests",
            lease_requests.clone(),
        );
        let autoscale_decisions = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "autoscale_decisions",
            "Changes of spec.replicas the session autoscaling decided and recorded, by direction",
            autoscale_decisions.clone(),
        );
        let rebalance_rounds = Counter::default();
        registry.register(
            "rebalance_rounds",
            "Rounds of rebalancing recorded: the busiest pods asked to hand sessions to the pods \
             with room",
            rebalance_rounds.clone(),
        );
        let rebalance_sessions_asked = Counter::default();
        registry.register(
            "rebalance_sessions_asked",
            "Sessions the rounds of rebalancing asked the busiest pods to move (the gateways \
             count those moved: longconn_gateway_sessions_rebalanced_total)",
            rebalance_sessions_asked.clone(),
        );
        let rebalance_sessions_moved = Counter::default();
        registry.register(
            "rebalance_sessions_moved",
            "Sessions the rounds of rebalancing moved (their clients completed the close \
             handshake), as each gateway reported its part of a round finished",
            rebalance_sessions_moved.clone(),
        );
        let rebalance_sessions_dropped = Counter::default();
        registry.register(
            "rebalance_sessions_dropped",
            "Sessions the rounds of rebalancing ended without a completed close handshake",
            rebalance_sessions_dropped.clone(),
        );
        Self {
            registry,
            autoscale_decisions,
            rebalance_rounds,
            rebalance_sessions_asked,
            rebalance_sessions_moved,
            rebalance_sessions_dropped,
            api_requests,
            lease_requests,
            drains_started,
            drains_finished,
            sessions_migrated,
            sessions_dropped,
            sessions_moved_again,
            attempts_refused,
            drain_duration,
            rollout_phase,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects_applied,
            objects_deleted,
            certificates_issued,
        }
    }
}

impl Metrics {
    /// Sets the rollout phase of one LongConnService: 1 for its phase, 0 for the others.
    pub fn set_phase(&self, namespace: &str, name: &str, phase: Option<RolloutPhase>) {
        let current = PhaseLabel::of(phase);
        for label in PhaseLabel::ALL {
            self.rollout_phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    phase: label,
                })
                .set(i64::from(label == current));
        }
    }

    /// Exports `rollout_halted` and `autoscale_desired_replicas` for the LongConnServices in
    /// `services` (the store the controller reconciles from).
    pub fn watch_services(&mut self, services: Store<LongConnService>) {
        self.registry
            .register_collector(Box::new(Recorded(services)));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::crd::LongConnServiceStatus;

    fn progressing(name: &str, status: &str, reason: &str) -> LongConnService {
        let mut lcs = LongConnService::test().build();
        lcs.metadata.name = Some(name.to_owned());
        lcs.status = Some(LongConnServiceStatus {
            conditions: vec![Condition {
                type_: PROGRESSING.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..LongConnServiceStatus::default()
        });
        lcs
    }

    #[test]
    fn a_rollout_is_halted_by_its_progressing_condition() {
        for (status, reason, halted) in [
            (
                "False",
                "DropBudgetExceeded",
                Some(HaltReason::DropBudgetExceeded),
            ),
            ("True", "RollingBack", Some(HaltReason::DropBudgetExceeded)),
            ("False", "RolledBack", Some(HaltReason::DropBudgetExceeded)),
            (
                "False",
                "ProgressDeadlineExceeded",
                Some(HaltReason::ProgressDeadlineExceeded),
            ),
            ("False", "RevisionRefused", None),
            ("True", "RolloutInProgress", None),
            ("True", "NewRevisionAvailable", None),
        ] {
            assert_eq!(
                HaltReason::of(&progressing("chat", status, reason)),
                halted,
                "{status} {reason}"
            );
        }
        assert_eq!(HaltReason::of(&LongConnService::test().build()), None);
    }

    #[test]
    fn halted_rollouts_are_read_from_the_store_at_each_scrape() {
        let (store, mut writer) = reflector::store::<LongConnService>();
        let mut metrics = Metrics::default();
        metrics.watch_services(store);
        let halted = |text: &str, name: &str, reason: &str| {
            let series = format!(
                r#"longconn_operator_rollout_halted{{namespace="default",name="{name}",reason="{reason}"}} "#
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(str::to_owned)
        };

        let paused = progressing("paused", "False", "DropBudgetExceeded");
        writer.apply_watcher_event(&watcher::Event::Apply(paused.clone()));
        writer.apply_watcher_event(&watcher::Event::Apply(progressing(
            "fine",
            "True",
            "NewRevisionAvailable",
        )));
        let text = metrics.encode();
        assert_eq!(
            halted(&text, "paused", "DropBudgetExceeded").as_deref(),
            Some("1")
        );
        assert_eq!(
            halted(&text, "paused", "ProgressDeadlineExceeded").as_deref(),
            Some("0")
        );
        assert_eq!(
            halted(&text, "fine", "DropBudgetExceeded").as_deref(),
            Some("0")
        );

        // The session autoscaling's desired replicas, as recorded.
        let mut scaled = progressing("scaled", "True", "NewRevisionAvailable");
        if let Some(status) = scaled.status.as_mut() {
            status.autoscaling = Some(crate::crd::AutoscalingStatus {
                desired_replicas: 7,
                ..Default::default()
            });
        }
        writer.apply_watcher_event(&watcher::Event::Apply(scaled));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"longconn_operator_autoscale_desired_replicas{namespace="default",name="scaled"} 7"#
            ),
            "{text}"
        );
        assert!(
            !text.contains(r#"autoscale_desired_replicas{namespace="default",name="fine"}"#),
            "only services whose session autoscaling recorded something"
        );

        // Deleted: no series left for it.
        writer.apply_watcher_event(&watcher::Event::Delete(paused));
        let text = metrics.encode();
        assert_eq!(halted(&text, "paused", "DropBudgetExceeded"), None);
        assert_eq!(
            halted(&text, "fine", "DropBudgetExceeded").as_deref(),
            Some("0")
        );
    }
}
