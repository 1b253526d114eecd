//! The operator's Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::RolloutPhase;
use crate::kinds::Kind;

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
    pub drain_duration: Histogram,
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    pub api_requests: Family<MethodLabels, Counter>,
    pub lease_requests: Family<MethodLabels, Counter>,
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
        Self {
            registry,
            api_requests,
            lease_requests,
            drains_started,
            drains_finished,
            sessions_migrated,
            sessions_dropped,
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
