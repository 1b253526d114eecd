//! The operator's Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// Every metric the operator exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub objects_applied: Family<KindLabels, Counter>,
    pub objects_deleted: Family<KindLabels, Counter>,
    pub certificates_issued: Counter,
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
        Self {
            registry,
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
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
