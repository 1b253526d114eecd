//! The local control plane against the real upstream binaries: it reports the pinned release,
//! the controller manager turns a Deployment into a ReplicaSet and Pods, the scheduler looks at
//! them (and finds no node), and stopping it leaves no process behind.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use longconn_e2e::process;

const NAMESPACE: &str = "e2e-smoke";
const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_becomes_pending_pods_and_down_leaves_no_process() {
    let Some(tools_dir) =
        common::tools_dir_or_skip("deployment_becomes_pending_pods_and_down_leaves_no_process")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = common::cluster_up(dir.path(), tools_dir).await;
    let client = cluster.client();

    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.git_version, "v1.36.3");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "36")
    );

    common::create_namespace(&client, NAMESPACE).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"containers": [{"name": "echo", "image": "longconn/echo:dev"}]},
            },
        },
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    // The deployment controller creates a ReplicaSet, the ReplicaSet controller two Pods, and the
    // scheduler marks them unschedulable: there is no node yet.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    let mut last = String::new();
    let mut done = false;
    while started.elapsed() < WAIT {
        cluster.check_running().expect("components keep running");
        let sets = replica_sets
            .list(&ListParams::default())
            .await
            .expect("list replicasets");
        let owned_by_deployment = sets.items.iter().any(|set| {
            set.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|owner| owner.kind == "Deployment" && owner.name == "echo")
        });
        let listed = pods.list(&ListParams::default()).await.expect("list pods");
        let unschedulable = listed
            .items
            .iter()
            .filter(|pod| {
                let status = pod.status.as_ref();
                let pending = status.and_then(|s| s.phase.as_deref()) == Some("Pending");
                let scheduler_said_no = status
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    });
                pending && scheduler_said_no
            })
            .count();
        last = format!(
            "replicaset owned by deployment: {owned_by_deployment}, pods: {}, pending and unschedulable: {unschedulable}",
            listed.items.len()
        );
        if owned_by_deployment && listed.items.len() == 2 && unschedulable == 2 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(done, "after {WAIT:?}: {last}");
    cluster
        .check_running()
        .expect("the scheduler and the rest still run");

    let processes = cluster.processes();
    assert_eq!(processes.len(), 4, "{processes:?}");
    let state_file = cluster.dir().join("state.json");
    cluster.down().await.expect("cluster down");
    for record in &processes {
        assert!(
            process::group_members(record.pid).is_empty(),
            "{} (pgid {}) left processes behind",
            record.name,
            record.pid
        );
    }
    assert!(!state_file.exists());
}
