//! longconn-operator: keeps every `LongConnService` realised as Deployments with an embedded
//! gateway, a Service, a PodDisruptionBudget, TLS and admin Secrets, a NetworkPolicy, a
//! ServiceMonitor with a PrometheusRule of alerts and an autoscaler, and replaces pods without
//! cutting their sessions.

pub mod alerts;
pub mod analysis;
pub mod arrivals;
pub mod autoscale;
pub mod cache;
pub mod certs;
pub mod compare;
pub mod cpu;
pub mod crd;
pub mod desired;
pub mod disruption;
pub mod duration;
pub mod expectations;
pub mod fixtures;
pub mod gateways;
pub mod history;
pub mod kinds;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod placement;
pub mod plan;
pub mod rbac;
pub mod rebalance;
pub mod reconcile;
pub mod revision;
pub mod rollout;
pub mod server;
pub mod status;
pub mod steps;
