//! Nodes as the kubelet presents them: registration with labels, capacity and addresses, a
//! `Ready` condition refreshed on every heartbeat, and a Lease in `kube-node-lease` renewed with
//! it, so the node lifecycle controller sees live nodes. Written with server-side apply under the
//! pod runner's field manager.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::env::{NODE_CPU_CORES, NODE_MEMORY_BYTES};
use crate::error::{Error, Result};

/// The field manager of everything the pod runner writes.
pub const FIELD_MANAGER: &str = "longconn-pod-runner";
/// How long a node lease is valid without renewal.
pub const LEASE_SECONDS: i32 = 40;
/// Pods per node.
pub const MAX_PODS: u32 = 110;
/// The version the nodes report (the control plane's).
pub const KUBELET_VERSION: &str = "v1.36.3";

/// Creates or updates the Node object (metadata and spec only; the status comes with
/// [`heartbeat`]).
pub async fn register(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [
                    ("kubernetes.io/hostname", name),
                    ("kubernetes.io/os", "linux"),
                    ("kubernetes.io/arch", std::env::consts::ARCH),
                    ("longconn.dev/pod-runner", "true"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(Error::kube(format!("register node {name}")))?;
    Ok(())
}

/// Reports the node Ready with its capacity and renews its Lease.
pub async fn heartbeat(client: &kube::Client, name: &str, host_ip: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now();
    let capacity: std::collections::BTreeMap<String, Quantity> = [
        ("cpu", NODE_CPU_CORES.to_string()),
        ("memory", format!("{}Ki", NODE_MEMORY_BYTES / 1024)),
        ("pods", MAX_PODS.to_string()),
        ("ephemeral-storage", "100Gi".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: None,
    };
    let status = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        status: Some(NodeStatus {
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: host_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.to_string(),
                },
            ]),
            conditions: Some(vec![
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "the pod runner is posting ready status",
                ),
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "no memory pressure",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "no PID pressure",
                ),
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH.to_string(),
                operating_system: "linux".to_string(),
                kubelet_version: KUBELET_VERSION.to_string(),
                kube_proxy_version: String::new(),
                container_runtime_version: "longconn-pod-runner://0.1.0".to_string(),
                os_image: "host processes".to_string(),
                kernel_version: String::new(),
                machine_id: name.to_string(),
                system_uuid: name.to_string(),
                boot_id: name.to_string(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
        ..Node::default()
    };
    let applied = nodes
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(Error::kube(format!("update status of node {name}")))?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("kube-node-lease".to_string()),
            owner_references: applied.metadata.uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.to_string(),
                    uid,
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    };
    leases
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(Error::kube(format!("renew lease of node {name}")))?;
    Ok(())
}

/// Deletes the Node (its Lease goes with it through the owner reference).
pub async fn deregister(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(Error::kube(format!("delete node {name}"))(err)),
    }
}
