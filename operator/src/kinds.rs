//! The kinds of object the operator creates, and how to reach each through the API.

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{ApiResource, GroupVersionKind};

/// A kind of object the operator owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    Certificate,
    Deployment,
    Service,
    PodDisruptionBudget,
    NetworkPolicy,
    ServiceMonitor,
    PrometheusRule,
    HorizontalPodAutoscaler,
    /// A revision's pod fields, kept for undo ([`crate::history`]).
    ControllerRevision,
}

impl Kind {
    /// Every kind, in the order orphans are looked for.
    pub const ALL: [Kind; 10] = [
        Kind::Secret,
        Kind::Certificate,
        Kind::Deployment,
        Kind::Service,
        Kind::PodDisruptionBudget,
        Kind::NetworkPolicy,
        Kind::ServiceMonitor,
        Kind::PrometheusRule,
        Kind::HorizontalPodAutoscaler,
        Kind::ControllerRevision,
    ];

    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Secret => ApiResource::erase::<Secret>(&()),
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Kind::HorizontalPodAutoscaler => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            Kind::ControllerRevision => ApiResource::erase::<ControllerRevision>(&()),
            Kind::ServiceMonitor => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
                "servicemonitors",
            ),
            Kind::PrometheusRule => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
                "prometheusrules",
            ),
            Kind::Certificate => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
                "certificates",
            ),
        }
    }

    /// The group/version a kind needs, when the cluster may not serve it.
    pub fn optional_api(self) -> Option<&'static str> {
        match self {
            Kind::ServiceMonitor | Kind::PrometheusRule => Some("monitoring.coreos.com/v1"),
            Kind::Certificate => Some("cert-manager.io/v1"),
            _ => None,
        }
    }
}
