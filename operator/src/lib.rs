//! longconn-operator: keeps every `LongConnService` realised as Deployments with an embedded
//! gateway, a Service, a PodDisruptionBudget, TLS and admin Secrets, a NetworkPolicy, a
//! ServiceMonitor and an autoscaler, and replaces pods without cutting their sessions.

pub mod crd;
pub mod duration;
pub mod certs;
pub mod desired;
pub mod kinds;
pub mod labels;
pub mod revision;
