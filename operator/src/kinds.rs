//! The kinds of object the operator creates, and how to reach each through the API.

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::ApiResource;

/// The names a kind goes by in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    pub group: &'static str,
    pub version: &'static str,
    /// `group/version`, or the version alone for the core group.
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource's name in URLs.
    pub plural: &'static str,
}

impl Names {
    const fn of<K: k8s_openapi::Resource>() -> Names {
        Names {
            group: K::GROUP,
            version: K::VERSION,
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
        }
    }
}

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

    /// Its group, version, kind and plural: constants, so that asking costs nothing.
    pub const fn names(self) -> Names {
        match self {
            Kind::Secret => Names::of::<Secret>(),
            Kind::Deployment => Names::of::<Deployment>(),
            Kind::Service => Names::of::<Service>(),
            Kind::PodDisruptionBudget => Names::of::<PodDisruptionBudget>(),
            Kind::NetworkPolicy => Names::of::<NetworkPolicy>(),
            Kind::HorizontalPodAutoscaler => Names::of::<HorizontalPodAutoscaler>(),
            Kind::ControllerRevision => Names::of::<ControllerRevision>(),
            Kind::ServiceMonitor => Names {
                group: "monitoring.coreos.com",
                version: "v1",
                api_version: "monitoring.coreos.com/v1",
                kind: "ServiceMonitor",
                plural: "servicemonitors",
            },
            Kind::PrometheusRule => Names {
                group: "monitoring.coreos.com",
                version: "v1",
                api_version: "monitoring.coreos.com/v1",
                kind: "PrometheusRule",
                plural: "prometheusrules",
            },
            Kind::Certificate => Names {
                group: "cert-manager.io",
                version: "v1",
                api_version: "cert-manager.io/v1",
                kind: "Certificate",
                plural: "certificates",
            },
        }
    }

    /// How kube's dynamic clients reach it.
    pub fn api_resource(self) -> ApiResource {
        let names = self.names();
        ApiResource {
            group: names.group.to_owned(),
            version: names.version.to_owned(),
            api_version: names.api_version.to_owned(),
            kind: names.kind.to_owned(),
            plural: names.plural.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_of_a_built_in_kind_are_the_api_types_own() {
        let erased = [
            (Kind::Secret, ApiResource::erase::<Secret>(&())),
            (Kind::Deployment, ApiResource::erase::<Deployment>(&())),
            (Kind::Service, ApiResource::erase::<Service>(&())),
            (
                Kind::PodDisruptionBudget,
                ApiResource::erase::<PodDisruptionBudget>(&()),
            ),
            (
                Kind::NetworkPolicy,
                ApiResource::erase::<NetworkPolicy>(&()),
            ),
            (
                Kind::HorizontalPodAutoscaler,
                ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            ),
            (
                Kind::ControllerRevision,
                ApiResource::erase::<ControllerRevision>(&()),
            ),
        ];
        for (kind, erased) in erased {
            assert_eq!(kind.api_resource(), erased, "{kind:?}");
        }
        let monitor = Kind::ServiceMonitor.names();
        assert_eq!(
            (monitor.api_version, monitor.plural),
            ("monitoring.coreos.com/v1", "servicemonitors")
        );
        for kind in Kind::ALL {
            let names = kind.names();
            if let Some(api) = kind.optional_api() {
                assert_eq!(names.api_version, api, "{kind:?}");
            }
            let api_version = match names.group {
                "" => names.version.to_owned(),
                group => format!("{group}/{}", names.version),
            };
            assert_eq!(names.api_version, api_version, "{kind:?}");
        }
    }
}
