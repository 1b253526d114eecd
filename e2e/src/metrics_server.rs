//! The resource metrics API (`metrics.k8s.io`) of a cluster with nodes: upstream metrics-server
//! runs as a host process beside the control plane and the API server's aggregation layer serves
//! its API, so `kubectl top`, the HorizontalPodAutoscaler controller and the operator read pods'
//! CPU and memory as on any cluster.
//!
//! What upstream's manifests install, made here from Rust: metrics-server's RBAC (for the user of
//! its client certificate rather than a service account, as it runs outside the cluster), a
//! Service in `kube-system` without a selector, an EndpointSlice that points it at the address
//! metrics-server listens on (the API server routes to endpoints, not to the ClusterIP, which
//! only the nodes route), and the APIService `v1beta1.metrics.k8s.io` with the cluster CA, which
//! signed metrics-server's serving certificate. metrics-server verifies the kubelets' serving
//! certificates with that CA too: the harness signed them.

use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::pki::{METRICS_SERVER_USER, Pki};

/// The APIService that serves `metrics.k8s.io`.
pub const API_SERVICE: &str = "v1beta1.metrics.k8s.io";
/// The namespace of metrics-server's Service, as upstream installs it.
const NAMESPACE: &str = "kube-system";
/// metrics-server's Service (and EndpointSlice).
const SERVICE: &str = "metrics-server";
/// The Service's port name, which the EndpointSlice's port must carry.
const PORT_NAME: &str = "https";
/// The field manager of what is applied here.
const FIELD_MANAGER: &str = "longconn-e2e";
/// How often metrics-server scrapes the kubelets: its smallest allowed resolution.
pub const RESOLUTION_SECONDS: u64 = 10;

/// metrics-server's flags: its API identity (`kubeconfig`, also for delegated authentication and
/// authorization), where it serves and with which certificate, and how it reaches the kubelets.
pub fn args(pki: &Pki, kubeconfig: &Path, address: Ipv4Addr, port: u16) -> Vec<String> {
    let path = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
    vec![
        path("kubeconfig", kubeconfig),
        path("authentication-kubeconfig", kubeconfig),
        path("authorization-kubeconfig", kubeconfig),
        format!("--bind-address={address}"),
        format!("--secure-port={port}"),
        path("tls-cert-file", &pki.metrics_server_serving.cert),
        path("tls-private-key-file", &pki.metrics_server_serving.key),
        path("client-ca-file", &pki.ca.cert),
        path("requestheader-client-ca-file", &pki.front_proxy_ca.cert),
        path("kubelet-certificate-authority", &pki.ca.cert),
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--metric-resolution={RESOLUTION_SECONDS}s"),
        // Below 90 % of the resolution, which metrics-server requires (its default is 10s).
        "--kubelet-request-timeout=5s".into(),
        "--v=1".into(),
    ]
}

/// What metrics-server needs before it starts: its RBAC as upstream's manifests give it (read
/// nodes, pods and the kubelets' metrics; delegate authentication and authorization; read the
/// API server's authentication settings in `kube-system`), and the aggregated reader role.
pub async fn grant(client: &kube::Client) -> Result<()> {
    let subject = json!([{
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "User",
        "name": METRICS_SERVER_USER,
    }]);
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    apply(
        &cluster_roles,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"],
                 "verbs": ["get", "list", "watch"]},
            ],
        }),
    )
    .await?;
    apply(
        &cluster_roles,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    "rbac.authorization.k8s.io/aggregate-to-view": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                },
            },
            "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
                       "verbs": ["get", "list", "watch"]}],
        }),
    )
    .await?;
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for (name, role) in [
        ("system:metrics-server", "system:metrics-server"),
        (
            "metrics-server:system:auth-delegator",
            "system:auth-delegator",
        ),
    ] {
        apply(
            &cluster_bindings,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": subject,
            }),
        )
        .await?;
    }
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &bindings,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "extension-apiserver-authentication-reader"},
            "subjects": subject,
        }),
    )
    .await
}

/// Registers metrics-server, listening on `address:port`, as the server of `metrics.k8s.io`:
/// the Service, its EndpointSlice and the APIService with the cluster CA as its `caBundle`.
pub async fn register(
    client: &kube::Client,
    pki: &Pki,
    address: Ipv4Addr,
    port: u16,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &services,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": PORT_NAME, "port": 443, "protocol": "TCP",
                                "targetPort": port}]},
        }),
    )
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    apply(
        &slices,
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": SERVICE,
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": SERVICE,
                    "endpointslice.kubernetes.io/managed-by": FIELD_MANAGER,
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": PORT_NAME, "port": port, "protocol": "TCP"}],
        }),
    )
    .await?;
    let ca = std::fs::read(&pki.ca.cert).map_err(Error::io("read", &pki.ca.cert))?;
    let api_services: Api<APIService> = Api::all(client.clone());
    apply(
        &api_services,
        json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                "caBundle": k8s_openapi::ByteString(ca),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }),
    )
    .await
}

/// `None` once the APIService is Available, else what its condition says.
pub async fn unavailable(client: &kube::Client) -> Option<String> {
    let api_services: Api<APIService> = Api::all(client.clone());
    let found = match api_services.get_opt(API_SERVICE).await {
        Ok(Some(found)) => found,
        Ok(None) => return Some(format!("APIService {API_SERVICE} missing")),
        Err(err) => return Some(err.to_string()),
    };
    let available = found
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|condition| condition.type_ == "Available");
    match available {
        Some(condition) if condition.status == "True" => None,
        Some(condition) => Some(format!(
            "Available={} ({}): {}",
            condition.status,
            condition.reason.unwrap_or_default(),
            condition.message.unwrap_or_default()
        )),
        None => Some("no Available condition yet".into()),
    }
}

/// Server-side applies `object` (named by its `metadata.name`).
async fn apply<K>(api: &Api<K>, object: Value) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::kube(format!("apply {kind} {name}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resolution_leaves_room_for_the_kubelet_timeout() {
        let pki_dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(pki_dir.path()).expect("pki");
        let args = args(&pki, Path::new("/k"), Ipv4Addr::new(10, 250, 0, 1), 4443);
        let seconds = |flag: &str| {
            args.iter()
                .find_map(|arg| arg.strip_prefix(&format!("--{flag}=")))
                .and_then(|value| value.strip_suffix('s'))
                .and_then(|value| value.parse::<u64>().ok())
                .expect(flag)
        };
        // metrics-server refuses to start otherwise.
        assert!(seconds("metric-resolution") >= 10);
        assert!(seconds("kubelet-request-timeout") * 10 <= seconds("metric-resolution") * 9);
        assert!(args.contains(&"--bind-address=10.250.0.1".to_owned()));
    }
}
