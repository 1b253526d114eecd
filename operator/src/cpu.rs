//! CPU as the resource metrics API (`metrics.k8s.io`, served by metrics-server) and pod specs
//! state it: quantities in millicores, each pod's requests, each pod's use.
//!
//! Used by the session autoscaling when `targetCPUUtilization` is set beside
//! `targetSessionsPerPod`: the operator is then the only writer of `spec.replicas` and reads
//! CPU itself, the way a HorizontalPodAutoscaler's resource metric does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::DynamicObject;

/// The group, version and plural of the pod metrics the autoscaling reads.
pub const METRICS_GROUP: &str = "metrics.k8s.io";
pub const METRICS_VERSION: &str = "v1beta1";
pub const POD_METRICS: &str = "pods";

/// A CPU quantity in millicores: cores (`2`, `1.5`), millicores (`1500m`), microcores
/// (`1500u`) or nanocores (`1500000n`, what metrics-server reports). None for anything else or
/// a negative amount.
pub fn millis(Quantity(q): &Quantity) -> Option<f64> {
    let q = q.trim();
    let (number, scale) = [("n", 1e-6), ("u", 1e-3), ("m", 1.0)]
        .into_iter()
        .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, scale)))
        .unwrap_or((q, 1000.0));
    let value = number.parse::<f64>().ok()? * scale;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// What a pod's containers request of CPU, in millicores: its containers and its sidecars
/// (init containers that keep running) together; None when one of them requests none, since
/// its use could not be weighed (the HorizontalPodAutoscaler refuses such pods too).
pub fn requested(spec: &PodSpec) -> Option<f64> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .map(container_request)
        .sum()
}

fn container_request(container: &Container) -> Option<f64> {
    millis(
        container
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("cpu")?,
    )
}

/// The CPU each pod uses, in millicores, from a list of `PodMetrics`: the sum of its
/// containers' `usage.cpu`. A pod with a container whose use cannot be read is left out.
pub fn usage(metrics: &[DynamicObject]) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter_map(|m| {
            let name = m.metadata.name.clone()?;
            let containers = m.data.get("containers")?.as_array()?;
            let used = containers
                .iter()
                .map(|c| {
                    let cpu = c.get("usage")?.get("cpu")?.as_str()?;
                    millis(&Quantity(cpu.to_owned()))
                })
                .sum::<Option<f64>>()?;
            Some((name, used))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_owned())
    }

    #[test]
    fn quantities_read_in_every_unit_cpu_is_written_in() {
        assert_eq!(millis(&q("2")), Some(2000.0));
        assert_eq!(millis(&q("1.5")), Some(1500.0));
        assert_eq!(millis(&q("250m")), Some(250.0));
        assert_eq!(millis(&q("2500u")), Some(2.5));
        assert_eq!(millis(&q("12345678n")), Some(12.345678));
        assert_eq!(millis(&q("0")), Some(0.0));
        assert_eq!(millis(&q("1Ki")), None);
        assert_eq!(millis(&q("-1")), None);
        assert_eq!(millis(&q("m")), None);
    }

    fn container(name: &str, cpu: Option<&str>, restart: Option<&str>) -> Container {
        Container {
            name: name.to_owned(),
            restart_policy: restart.map(str::to_owned),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: cpu.map(|c| BTreeMap::from([("cpu".to_owned(), q(c))])),
                ..Default::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn a_pod_requests_its_containers_and_sidecars_and_not_its_one_off_init_containers() {
        let spec = PodSpec {
            containers: vec![container("app", Some("100m"), None)],
            init_containers: Some(vec![
                container("gateway", Some("50m"), Some("Always")),
                container("install", None, None),
            ]),
            ..PodSpec::default()
        };
        assert_eq!(requested(&spec), Some(150.0));
        let unrequested = PodSpec {
            containers: vec![container("app", None, None)],
            ..spec
        };
        assert_eq!(requested(&unrequested), None);
    }

    #[test]
    fn a_pod_uses_what_its_containers_use_together() {
        let metrics: Vec<DynamicObject> = serde_json::from_value(serde_json::json!([
            {"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
             "metadata": {"name": "a"}, "timestamp": "2026-01-01T00:00:00Z", "window": "10s",
             "containers": [{"name": "app", "usage": {"cpu": "40000000n", "memory": "1Mi"}},
                            {"name": "gateway", "usage": {"cpu": "10m", "memory": "1Mi"}}]},
            {"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
             "metadata": {"name": "b"}, "containers": [{"name": "app", "usage": {}}]}
        ]))
        .expect("pod metrics");
        assert_eq!(usage(&metrics), BTreeMap::from([("a".to_owned(), 50.0)]));
    }
}
