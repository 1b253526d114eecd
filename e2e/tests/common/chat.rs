//! The chat example running for real: the cluster with three real nodes, the CRD, the operator as
//! a host process, and `examples/chat.yaml` applied (in a namespace that enforces the restricted
//! Pod Security level) until its 3 pods are Ready.
#![allow(dead_code)] // not every test binary uses every helper

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use longconn_e2e::cluster::Cluster;

pub const WAIT: Duration = Duration::from_secs(180);

/// A host process killed (with its process group) when the test ends, passing or not.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn ready(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The running chat example (fields in drop order: the operator goes first).
pub struct Chat {
    pub operator: Guard,
    pub cluster: Cluster,
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub pods: Api<Pod>,
    /// The 3 Ready pods.
    pub running: Vec<Pod>,
    pub temp: tempfile::TempDir,
}

/// Starts everything for the chat example, or `None` when the test is skipped (no tools).
pub async fn chat_up(test: &str) -> Option<Chat> {
    let tools_dir = super::tools_dir_or_skip(test)?;
    let bin_dir = longconn_e2e::tools::default_bin_dir();
    assert!(
        bin_dir.join("longconn-operator").is_file(),
        "{} missing: run `cargo build -p longconn-operator` first",
        bin_dir.join("longconn-operator").display()
    );
    let root = longconn_e2e::tools::repository_root();
    let temp = tempfile::tempdir().expect("tempdir");
    let cluster = super::cluster_with_nodes(temp.path(), tools_dir).await;
    let client = cluster.client();
    let kubeconfig = cluster.kubeconfig_path();
    let kubectl_bin = cluster.tools().binary("kubectl");
    let crd = root.join("crds/longconnservices.longconn.dev.yaml");
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["apply", "--server-side", "-f", &crd.to_string_lossy()],
    );
    let established = (0..100).any(|_| {
        // Fails until the CRD has conditions at all.
        let done = Command::new(&kubectl_bin)
            .args([
                "get",
                "crd/longconnservices.longconn.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"True");
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(established, "the CRD was not Established in 20 s");
    super::create_namespace(&client, "longconn-system").await;

    let operator_log = std::fs::File::create(temp.path().join("operator.log")).expect("log");
    let operator = Guard(
        Command::new(bin_dir.join("longconn-operator"))
            .args([
                "run",
                "--operator-namespace=longconn-system",
                "--log-format=text",
                "--metrics-listen=127.0.0.1:0",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(operator_log)
            .spawn()
            .expect("start the operator"),
    );

    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &[
            "label",
            "namespace",
            "default",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    );
    let example = root.join("examples/chat.yaml");
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["apply", "-f", &example.to_string_lossy()],
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let selector = ListParams::default().labels("longconn.dev/service=chat");
    let started = Instant::now();
    let running = loop {
        let list = pods.list(&selector).await.expect("list pods");
        let ready_pods: Vec<Pod> = list.items.iter().filter(|p| ready(p)).cloned().collect();
        if ready_pods.len() == 3 {
            break ready_pods;
        }
        assert!(
            started.elapsed() < WAIT,
            "3 chat pods not Ready after {WAIT:?}: {:#?}\noperator log:\n{}",
            list.items.iter().map(|p| &p.status).collect::<Vec<_>>(),
            std::fs::read_to_string(temp.path().join("operator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    Some(Chat {
        operator,
        cluster,
        client,
        kubeconfig,
        kubectl: kubectl_bin,
        pods,
        running,
        temp,
    })
}
