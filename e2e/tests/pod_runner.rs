//! The pod runner on the real control plane: a Deployment's pod lands on a registered node, runs
//! as a host process with the downward API in its environment, turns Ready through its readiness
//! probe, and on deletion runs its preStop hook, is stopped and its object removed; its native
//! sidecar starts first and stops last.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use longconn_e2e::podrunner::images::ImageTable;
use longconn_e2e::podrunner::network::NetworkOptions;
use longconn_e2e::podrunner::{PodRunner, PodRunnerOptions};

const NAMESPACE: &str = "runner";
const WAIT: Duration = Duration::from_secs(90);

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < WAIT {
        match check().await {
            Ok(value) => return value,
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{what} after {WAIT:?}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pod_runs_gets_ready_and_stops_through_prestop_with_sidecar_last() {
    let Some(tools_dir) = common::tools_dir_or_skip(
        "deployment_pod_runs_gets_ready_and_stops_through_prestop_with_sidecar_last",
    ) else {
        return;
    };
    let temp = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_up(temp.path(), tools_dir).await;
    let client = cluster.client();
    let images = ImageTable::new().with("e2e/shell", "/bin/sh");
    let mut options = PodRunnerOptions::new(cluster.server(), temp.path().join("pods"), images);
    options.nodes = 2;
    options.network = NetworkOptions {
        bridge: "lcrun0".into(),
        prefix: [10, 245],
        ..NetworkOptions::default()
    };
    let runner = PodRunner::start(client.clone(), options)
        .await
        .expect("pod runner");

    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("nodes Ready", || async {
        let list = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|node| {
                node.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        if ready == 2 {
            Ok(())
        } else {
            Err(format!("{ready} of 2 nodes ready"))
        }
    })
    .await;

    let marker = temp.path().join("prestop-ran");
    let order = temp.path().join("order");
    let env_dump = temp.path().join("env");
    common::create_namespace(&client, NAMESPACE).await;
    let script = format!(
        "echo \"$POD_NAME $POD_IP $NODE\" > {}; echo main-start >> {order}; exec python3 -m http.server --bind \"$POD_IP\" 8080",
        env_dump.display(),
        order = order.display(),
    );
    let sidecar = format!(
        "echo sidecar-start >> {order}; trap 'echo sidecar-stop >> {order}; exit 0' TERM; while true; do sleep 0.1; done",
        order = order.display(),
    );
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "initContainers": [{
                        "name": "sidecar",
                        "image": "e2e/shell",
                        "restartPolicy": "Always",
                        "args": ["-c", sidecar],
                    }],
                    "containers": [{
                        "name": "web",
                        "image": "e2e/shell:dev",
                        "args": ["-c", script],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1},
                        "lifecycle": {"preStop": {"exec": {"command": [
                            "/bin/sh", "-c", format!("echo stopped > {}; echo main-prestop >> {}", marker.display(), order.display())
                        ]}}},
                    }],
                },
            },
        },
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod = wait_for("pod Running and Ready", || async {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let pod = list.items.into_iter().next().ok_or("no pod yet")?;
        let status = pod.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if status.phase.as_deref() == Some("Running") && ready {
            Ok(pod)
        } else {
            Err(format!(
                "phase {:?}, conditions {:?}",
                status.phase, status.conditions
            ))
        }
    })
    .await;
    let name = pod.metadata.name.clone().expect("name");
    let status = pod.status.clone().expect("status");
    let pod_ip = status.pod_ip.clone().expect("podIP");
    let namespaced = runner.bridge().is_some();
    assert!(
        pod_ip.starts_with(if namespaced { "10.245." } else { "127.77." }),
        "{pod_ip}"
    );
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("bound");
    assert!(runner.nodes().contains(&node));
    let container = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert!(container.ready && container.started == Some(true));
    let env = std::fs::read_to_string(&env_dump).expect("the container wrote its environment");
    assert_eq!(env.trim(), format!("{name} {pod_ip} {node}"));

    // Scaling to zero makes the ReplicaSet delete the pod without replacing it.
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .expect("scale to zero");
    wait_for("pod object removed after termination", || async {
        match pods.get_opt(&name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    let said = std::fs::read_to_string(&marker).expect("preStop ran");
    assert_eq!(said.trim(), "stopped");
    // The native sidecar started before the app and stopped after the app's preStop hook.
    let sequence = std::fs::read_to_string(&order).expect("order file");
    assert_eq!(
        sequence.lines().collect::<Vec<_>>(),
        [
            "sidecar-start",
            "main-start",
            "main-prestop",
            "sidecar-stop"
        ]
    );
    // Nothing listens on the old pod address any more.
    assert!(std::net::TcpStream::connect((pod_ip.as_str(), 8080)).is_err());

    runner.stop().await.expect("runner stop");
    // Nothing of the pod network is left.
    assert!(!std::path::Path::new("/sys/class/net/lcrun0").exists());
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("lcrun0-"))
        .collect();
    assert!(left.is_empty(), "network namespaces left: {left:?}");
    cluster.down().await.expect("cluster down");
}
