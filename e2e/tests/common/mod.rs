//! What the end-to-end tests share: finding the tools folder, or skipping when it was never built.

use std::path::PathBuf;

pub use longconn_e2e::tools::tools_dir_or_skip;

/// Starts a cluster without nodes (the control plane on 127.0.0.1) in `<temp>/cluster` from the
/// tools in `tools_dir`.
#[allow(dead_code)] // not every test binary uses every helper
pub async fn cluster_up(
    temp: &std::path::Path,
    tools_dir: PathBuf,
) -> longconn_e2e::cluster::Cluster {
    start(temp, tools_dir, 0).await
}

/// Starts a cluster with three real nodes in `<temp>/cluster` from the tools in `tools_dir` and
/// the images of `make images`.
#[allow(dead_code)]
pub async fn cluster_with_nodes(
    temp: &std::path::Path,
    tools_dir: PathBuf,
) -> longconn_e2e::cluster::Cluster {
    start(temp, tools_dir, 3).await
}

async fn start(
    temp: &std::path::Path,
    tools_dir: PathBuf,
    nodes: usize,
) -> longconn_e2e::cluster::Cluster {
    longconn_e2e::cluster::Cluster::up(longconn_e2e::cluster::ClusterOptions {
        dir: temp.join("cluster"),
        tools_dir,
        nodes,
        ..longconn_e2e::cluster::ClusterOptions::default()
    })
    .await
    .unwrap_or_else(|err| panic!("cluster up with {nodes} nodes: {err}"))
}

/// Creates namespace `name`.
#[allow(dead_code)]
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
                .expect("namespace"),
        )
        .await
        .expect("create namespace");
}
/// Creates namespace `name`, enforcing the restricted Pod Security level.
#[allow(dead_code)]
pub async fn create_restricted_namespace(client: &kube::Client, name: &str) {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }))
            .expect("namespace"),
        )
        .await
        .expect("create namespace");
}

/// The echo app's image, as `make images` loads it into the nodes.
#[allow(dead_code)]
pub fn echo_image() -> String {
    format!(
        "ghcr.io/longconn/longconn-echo:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The spec of a pod of the echo app on port 8080 that meets the restricted Pod Security level,
/// Ready once it answers `/healthz`.
#[allow(dead_code)]
pub fn echo_pod_spec() -> serde_json::Value {
    serde_json::json!({
        "securityContext": {
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "echo",
            "image": echo_image(),
            "args": ["--listen", "0.0.0.0:8080"],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
    })
}

/// The command lines of the processes whose command line or environment mentions `path`.
#[allow(dead_code)]
pub fn processes_mentioning(path: &std::path::Path) -> Vec<String> {
    let path = path.to_string_lossy();
    let text = |file: PathBuf| {
        std::fs::read(file)
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
            .unwrap_or_default()
    };
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| {
            ["cmdline", "environ"]
                .iter()
                .any(|file| text(entry.path().join(file)).contains(&*path))
        })
        .map(|entry| text(entry.path().join("cmdline")))
        .collect()
}

pub mod chat;
