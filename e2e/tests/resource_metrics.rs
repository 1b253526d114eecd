//! The resource metrics API on real nodes: metrics-server, started with the cluster, scrapes the
//! kubelets, and the API server serves a running pod's CPU and memory per container under
//! `metrics.k8s.io`, as the HorizontalPodAutoscaler controller and `kubectl top` read them.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;

const NAMESPACE: &str = "metrics-e2e";
/// metrics-server needs two scrapes (10 s apart) of a running container to tell its CPU rate.
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_of_a_running_pod_are_served() {
    let Some(tools_dir) = common::tools_dir_or_skip("pod_metrics_of_a_running_pod_are_served")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_with_nodes(dir.path(), tools_dir).await;
    let client = cluster.client();

    common::create_restricted_namespace(&client, NAMESPACE).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    pods.create(&PostParams::default(), &echo_pod())
        .await
        .expect("create pod");

    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/echo");
    let started = Instant::now();
    let metrics = loop {
        let request = http::Request::get(&path).body(Vec::new()).expect("request");
        let last = match client.request::<Value>(request).await {
            Ok(metrics) if cpu_of(&metrics, "echo").is_some() => break metrics,
            Ok(metrics) => metrics.to_string(),
            Err(err) => err.to_string(),
        };
        assert!(
            started.elapsed() < WAIT,
            "no PodMetrics with the echo container's CPU after {WAIT:?}; last: {last}; pod: {:?}",
            pods.get("echo").await.ok().and_then(|pod| pod.status)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "PodMetrics served {:.1} s after the pod was created: {metrics}",
        started.elapsed().as_secs_f64()
    );
    let cpu = cpu_of(&metrics, "echo").expect("cpu");
    assert!(
        cpu.ends_with('n') || cpu.ends_with('u') || cpu.ends_with('m') || cpu == "0",
        "CPU as a quantity: {cpu}"
    );
    let memory = metrics
        .pointer("/containers/0/usage/memory")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(!memory.is_empty() && memory != "0", "memory: {metrics}");

    // What users see: `kubectl top` reads the same API.
    let top = std::process::Command::new(cluster.tools().binary("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["-n", NAMESPACE, "top", "pod", "echo", "--containers"])
        .output()
        .expect("kubectl top");
    let shown = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success() && shown.contains("echo"),
        "kubectl top: {shown}{}",
        String::from_utf8_lossy(&top.stderr)
    );
    eprintln!("{shown}");

    cluster.down().await.expect("cluster down");
}

/// `usage.cpu` of container `name` in a PodMetrics.
fn cpu_of(metrics: &Value, name: &str) -> Option<String> {
    metrics
        .get("containers")?
        .as_array()?
        .iter()
        .find(|container| container.get("name").and_then(Value::as_str) == Some(name))?
        .pointer("/usage/cpu")?
        .as_str()
        .map(str::to_owned)
}

fn echo_pod() -> Pod {
    let mut spec = common::echo_pod_spec();
    spec["containers"][0]["resources"] =
        serde_json::json!({"requests": {"cpu": "10m", "memory": "16Mi"}});
    serde_json::from_value(serde_json::json!({"metadata": {"name": "echo"}, "spec": spec}))
        .expect("pod")
}
