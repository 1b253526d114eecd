//! The load client against the real control plane, pod runner and operator: 50 sessions to chat
//! (3 pods), routed to Ready endpoints from the EndpointSlices, get every message echoed; then a
//! pod is deleted while the load runs, its gateway drains with close 1012, and its sessions
//! reconnect to the other pods: migrated, none dropped, no message lost.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use longconn_e2e::load::{self, LoadOptions};
use longconn_e2e::podrunner::images::{self, ImageTable};
use longconn_e2e::podrunner::network::NetworkOptions;
use longconn_e2e::podrunner::{PodRunner, PodRunnerOptions};

const WAIT: Duration = Duration::from_secs(180);

/// A host process killed (with its process group) when the test ends, passing or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> String {
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

fn ready(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted() {
    let test = "load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted";
    let Some(tools_dir) = common::tools_dir_or_skip(test) else {
        return;
    };
    let bin_dir = images::default_bin_dir();
    for binary in ["longconn-operator", "longconn-gateway"] {
        assert!(
            bin_dir.join(binary).is_file(),
            "{} missing: run `cargo build -p longconn-operator -p longconn-gateway` first",
            bin_dir.join(binary).display()
        );
    }
    let root = longconn_e2e::tools::repository_root();
    let temp = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_up(temp.path(), tools_dir).await;
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
    common::create_namespace(&client, "longconn-system").await;

    let operator_log = std::fs::File::create(temp.path().join("operator.log")).expect("log");
    let _operator = Guard(
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

    let images = ImageTable::workspace(&bin_dir).with(
        "ghcr.io/longconn/longconn-echo",
        env!("CARGO_BIN_EXE_longconn-echo"),
    );
    let mut options = PodRunnerOptions::new(cluster.server(), temp.path().join("pods"), images);
    options.network = NetworkOptions {
        bridge: "lcload0".into(),
        prefix: [10, 247],
        ..NetworkOptions::default()
    };
    let runner = PodRunner::start(client.clone(), options)
        .await
        .expect("pod runner");
    assert!(
        runner.bridge().is_some(),
        "this test needs network namespaces (root and iproute2)"
    );

    let example = std::fs::read_to_string(root.join("examples/chat.yaml")).expect("example");
    let manifest = temp.path().join("chat.yaml");
    std::fs::write(&manifest, example).expect("write manifest");
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["apply", "-f", &manifest.to_string_lossy()],
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

    assert!(running.iter().all(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| ip.starts_with("10.247."))
    }));

    let mut options = LoadOptions::new("default", "chat");
    options.allowed = vec![([10, 247, 0, 0].into(), 16)];
    options.sessions = 50;
    options.rate = 5.0;
    options.duration = Duration::from_secs(10);
    let steady = load::run(client.clone(), options.clone())
        .await
        .expect("steady load");
    eprintln!("steady: {steady:?}");
    assert_eq!(steady.sessions_opened, 50, "{steady:?}");
    assert_eq!(steady.dropped, 0, "{steady:?}");
    assert_eq!(steady.migrated, 0, "{steady:?}");
    assert_eq!(steady.messages_lost, 0, "{steady:?}");
    assert!(steady.messages_sent >= 50 * 40, "{steady:?}");
    assert_eq!(steady.messages_echoed, steady.messages_sent, "{steady:?}");

    // Now delete a pod while the load runs: its preStop drains the gateway (Notify, close 1012
    // spread over 10 s) and its sessions reconnect to Ready endpoints.
    options.duration = Duration::from_secs(25);
    let running_load = tokio::spawn(load::run(client.clone(), options));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let name = running[0].metadata.name.clone().expect("name");
    let (kubectl_bin2, kubeconfig2, name2) =
        (kubectl_bin.clone(), kubeconfig.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        kubectl(
            &kubectl_bin2,
            &kubeconfig2,
            &["delete", "pod", &name2, "--wait=true", "--timeout=120s"],
        )
    })
    .await
    .expect("kubectl delete");
    let during = running_load
        .await
        .expect("load task")
        .expect("load during deletion");
    eprintln!("during deletion: {during:?}");
    assert_eq!(during.sessions_opened, 50, "{during:?}");
    assert!(during.migrated > 0, "{during:?}");
    assert_eq!(during.dropped, 0, "{during:?}");
    assert_eq!(during.messages_lost, 0, "{during:?}");
    assert_eq!(during.messages_echoed, during.messages_sent, "{during:?}");
    assert!(pods.get_opt(&name).await.expect("get").is_none());

    runner.stop().await.expect("runner stop");
    assert!(!Path::new("/sys/class/net/lcload0").exists());
    cluster.down().await.expect("cluster down");
}
