//! The operator installed the way users install it: `helm install` of `charts/longconn-operator`
//! into a cluster with three real nodes, its two replicas running the chart's own image (loaded
//! into the nodes by `make images`) in a namespace that enforces the restricted Pod Security
//! level, with the chart's RBAC and nothing more, reaching the API server through the
//! `kubernetes` Service. One replica holds the leader Lease and reconciles `examples/chat.yaml`
//! until its pods are Ready; `helm upgrade` to other values rolls the operator's pods while live
//! sessions run against chat (through its ClusterIP, from the cluster's client host) and none is
//! dropped; the new leader reconciles a scale-up; `helm uninstall` leaves nothing of the release
//! but the CRD, and chat keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use longconn_e2e::load::{self, LoadOptions, Route};
use longconn_e2e::nodes;

const TEST: &str = "helm_installs_upgrades_and_uninstalls_the_operator_without_dropping_sessions";
const RELEASE: &str = "longconn";
const NAMESPACE: &str = "longconn-system";
/// The chart's object names for release `longconn`: the release name plus the chart name.
const FULLNAME: &str = "longconn-longconn-operator";
const LEASE: &str = "longconn-operator";
const INSTANCE: &str = "app.kubernetes.io/instance=longconn";
const RESTRICTED: &str = "pod-security.kubernetes.io/enforce=restricted";
/// Bound of every wait for pods, rollouts and status.
const WAIT: Duration = Duration::from_secs(180);

/// Runs `helm` against the test's cluster, with its own (empty) configuration and cache folders.
struct Helm {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Helm {
    async fn run(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(&self.binary)
                .args(args)
                .env("KUBECONFIG", &self.kubeconfig)
                .env("HELM_CACHE_HOME", self.home.join("cache"))
                .env("HELM_CONFIG_HOME", self.home.join("config"))
                .env("HELM_DATA_HOME", self.home.join("data"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("helm {args:?} did not finish within 300 s"))
        .expect("run helm");
        assert!(
            output.status.success(),
            "helm {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Polls `check` every 500 ms until it answers `Ok`, for at most [`WAIT`]; then fails with what
/// it last said and `context()` (the operator pods' logs).
async fn wait_for<T, F, Fut>(what: &str, context: impl Fn() -> String, mut check: F) -> T
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not within {WAIT:?}; last: {last}\n{}", context());
}

/// The last lines of every operator container's log, from the nodes' pod log folders
/// (`<cluster>/nodes/<node>/pod-logs/<namespace>_<pod>_<uid>/operator/<restart>.log`).
fn operator_logs(nodes_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(nodes) = std::fs::read_dir(nodes_dir) else {
        return out;
    };
    for node in nodes.flatten() {
        let Ok(pods) = std::fs::read_dir(node.path().join("pod-logs")) else {
            continue;
        };
        for pod in pods.flatten() {
            let name = pod.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{NAMESPACE}_")) {
                continue;
            }
            let Ok(logs) = std::fs::read_dir(pod.path().join("operator")) else {
                continue;
            };
            for log in logs.flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                out.push_str(&format!(
                    "--- {name}/operator/{} (last 20 lines)\n{tail}\n",
                    log.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

fn ready(pod: &Pod) -> bool {
    common::chat::ready(pod) && pod.metadata.deletion_timestamp.is_none()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Waits until the operator Deployment has rolled out completely (`replicas` Ready pods of its
/// current template and no other pod) and one of those pods holds the leader Lease; returns the
/// pods' names and the holder.
async fn operator_rolled_out(
    client: &kube::Client,
    replicas: usize,
    logs: &impl Fn() -> String,
) -> (Vec<String>, String) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(
        "the operator's pods Ready and one holding the Lease",
        logs,
        || async {
            let deployment = deployments
                .get_opt(FULLNAME)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no Deployment {NAMESPACE}/{FULLNAME}"))?;
            let generation = deployment.metadata.generation.unwrap_or_default();
            let status = deployment.status.clone().unwrap_or_default();
            let counts = (
                status.observed_generation.unwrap_or_default() >= generation,
                status.replicas.unwrap_or_default(),
                status.updated_replicas.unwrap_or_default(),
                status.ready_replicas.unwrap_or_default(),
            );
            let wanted = i32::try_from(replicas).unwrap_or_default();
            if counts != (true, wanted, wanted, wanted) {
                return Err(format!(
                    "Deployment (observed, replicas, updated, ready) = {counts:?}"
                ));
            }
            let list = pods
                .list(&ListParams::default().labels(INSTANCE))
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = list.items.iter().filter(|p| ready(p)).map(name).collect();
            if list.items.len() != replicas || names.len() != replicas {
                return Err(format!(
                    "{} operator pods, {} Ready: {:?}",
                    list.items.len(),
                    names.len(),
                    list.items.iter().map(name).collect::<Vec<_>>()
                ));
            }
            let holder = leases
                .get_opt(LEASE)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|lease| lease.spec)
                .and_then(|spec| spec.holder_identity)
                .unwrap_or_default();
            if !names.contains(&holder) {
                return Err(format!(
                    "Lease {LEASE} held by {holder:?}, not by a pod of {names:?}"
                ));
            }
            Ok((names, holder))
        },
    )
    .await
}

/// Waits until chat's status shows the current generation reconciled, `replicas` Ready pods and
/// `Available=True`.
async fn chat_reconciled(
    lcs: &Api<DynamicObject>,
    replicas: i64,
    logs: &impl Fn() -> String,
) -> serde_json::Value {
    wait_for("chat reconciled", logs, || async {
        let chat = lcs.get("chat").await.map_err(|e| e.to_string())?;
        let generation = chat.metadata.generation.unwrap_or_default();
        let status = chat.data.get("status").cloned().unwrap_or_default();
        let available = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Available" && c["status"] == "True");
        let done = status["observedGeneration"].as_i64() == Some(generation)
            && status["readyReplicas"].as_i64() == Some(replicas)
            && available;
        if done {
            Ok(status)
        } else {
            Err(format!("generation {generation}, status {status}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_the_operator_without_dropping_sessions() {
    let Some(tools_dir) = common::tools_dir_or_skip(TEST) else {
        return;
    };
    let started = Instant::now();
    let root = longconn_e2e::tools::repository_root();
    let chart = root.join("charts/longconn-operator");
    let chart = chart.to_str().expect("chart path");
    let temp = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_with_nodes(temp.path(), tools_dir).await;
    let client = cluster.client();
    let kubeconfig = cluster.kubeconfig_path();
    let kubectl_bin = cluster.tools().binary("kubectl");
    let kubectl = |args: &[&str]| common::chat::kubectl(&kubectl_bin, &kubeconfig, args);
    let helm = Helm {
        binary: cluster.tools().binary("helm"),
        kubeconfig: kubeconfig.clone(),
        home: temp.path().join("helm"),
    };

    let nodes_dir = cluster.dir().join("nodes");
    let logs = || operator_logs(&nodes_dir);
    let client_netns = cluster.plan().expect("nodes").client.netns.clone();

    // Both namespaces that run workloads enforce the restricted Pod Security level, so the API
    // server refuses any pod of the chart or of chat that does not meet it.
    kubectl(&["create", "namespace", NAMESPACE]);
    for namespace in [NAMESPACE, "default"] {
        kubectl(&["label", "namespace", namespace, RESTRICTED]);
    }

    // Install: the CRD from the chart's crds/, RBAC, two replicas with leader election.
    helm.run(&["install", RELEASE, chart, "--namespace", NAMESPACE])
        .await;
    let (installed, leader) = operator_rolled_out(&client, 2, &logs).await;
    eprintln!("installed: operator pods {installed:?}, leader {leader}");
    let crd = kubectl(&["get", "crd", "longconnservices.longconn.dev", "-o", "name"]);
    assert_eq!(
        crd.trim(),
        "customresourcedefinition.apiextensions.k8s.io/longconnservices.longconn.dev"
    );

    // chat, reconciled by the operator in its pod.
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &root.join("examples/chat.yaml").to_string_lossy(),
    ]);
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "longconn.dev",
        "v1alpha1",
        "LongConnService",
    ));
    let lcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let status = chat_reconciled(&lcs, 3, &logs).await;
    eprintln!("chat reconciled: {status}");
    let chat_pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let chat_selector = ListParams::default().labels("longconn.dev/service=chat");
    let chat_before: Vec<String> = chat_pods
        .list(&chat_selector)
        .await
        .expect("list chat pods")
        .items
        .iter()
        .map(name)
        .collect();

    // Upgrade to other values while sessions run: the Deployment rolls (one surge pod at a time,
    // none unavailable), the leader hands over the Lease, and chat's sessions do not notice.
    let mut load_options = LoadOptions::new("default", "chat");
    load_options.allowed = vec![nodes::plan::service_network()];
    load_options.route = Route::ClusterIp;
    load_options.sessions = 100;
    load_options.rate = 2.0;
    load_options.duration = Duration::from_secs(60);
    let load_client = client.clone();
    let running_load = tokio::spawn(async move {
        nodes::in_netns(&client_netns, move || load::run(load_client, load_options)).await
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let upgrade_started = Instant::now();
    helm.run(&[
        "upgrade",
        RELEASE,
        chart,
        "--namespace",
        NAMESPACE,
        "--reuse-values",
        "--set",
        "logFormat=text",
        "--set",
        "resources.requests.cpu=60m",
    ])
    .await;
    let (upgraded, new_leader) = operator_rolled_out(&client, 2, &logs).await;
    let rollout_time = upgrade_started.elapsed();
    eprintln!("upgraded in {rollout_time:?}: operator pods {upgraded:?}, leader {new_leader}");
    assert!(
        upgraded.iter().all(|pod| !installed.contains(pod)),
        "helm upgrade did not replace every operator pod: before {installed:?}, after {upgraded:?}"
    );
    assert!(
        !running_load.is_finished(),
        "the load ended before the operator's rollout did ({rollout_time:?}): lengthen it"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let args = deployments
        .get(FULLNAME)
        .await
        .expect("operator Deployment")
        .spec
        .and_then(|spec| spec.template.spec)
        .map(|spec| spec.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        args.iter().any(|arg| arg == "--log-format=text"),
        "the upgraded Deployment's args: {args:?}"
    );
    let report = tokio::time::timeout(Duration::from_secs(120), running_load)
        .await
        .expect("the load run ended within 120 s")
        .expect("load task")
        .expect("run on the client host")
        .expect("load run");
    eprintln!("sessions during helm upgrade: {report:?}");
    assert_eq!(report.sessions_opened, 100, "{report:?}");
    assert_eq!(report.dropped, 0, "{report:?}");
    assert_eq!(report.messages_lost, 0, "{report:?}");
    assert_eq!(report.messages_echoed, report.messages_sent, "{report:?}");
    let chat_after: Vec<String> = chat_pods
        .list(&chat_selector)
        .await
        .expect("list chat pods")
        .items
        .iter()
        .map(name)
        .collect();
    assert_eq!(
        chat_after, chat_before,
        "the operator's upgrade touched chat's pods"
    );

    // The new leader reconciles: a scale-up through the scale subresource.
    kubectl(&["scale", "lcs/chat", "--replicas=4"]);
    chat_reconciled(&lcs, 4, &logs).await;

    // Uninstall: nothing of the release is left; the CRD (and so chat) stays, as Helm keeps CRDs.
    helm.run(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])
        .await;
    let kinds = "deployments,replicasets,pods,services,serviceaccounts,configmaps,\
                 poddisruptionbudgets,networkpolicies,roles,rolebindings";
    wait_for("nothing of the release left", &logs, || async {
        let left = common::chat::kubectl(
            &kubectl_bin,
            &kubeconfig,
            &["get", kinds, "-n", NAMESPACE, "-l", INSTANCE, "-o", "name"],
        ) + &common::chat::kubectl(
            &kubectl_bin,
            &kubeconfig,
            &[
                "get",
                "clusterroles,clusterrolebindings",
                "-l",
                INSTANCE,
                "-o",
                "name",
            ],
        );
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("left: {}", left.trim()))
        }
    })
    .await;
    for object in [
        format!("deployment/{FULLNAME}"),
        format!("service/{FULLNAME}-metrics"),
        format!("serviceaccount/{FULLNAME}"),
        format!("configmap/{FULLNAME}-dashboard"),
        format!("poddisruptionbudget/{FULLNAME}"),
        format!("networkpolicy/{FULLNAME}"),
        format!("role/{FULLNAME}-leader-election"),
        format!("rolebinding/{FULLNAME}-leader-election"),
    ] {
        let found = kubectl(&[
            "get",
            &object,
            "-n",
            NAMESPACE,
            "--ignore-not-found",
            "-o",
            "name",
        ]);
        assert!(
            found.trim().is_empty(),
            "{object} is left after helm uninstall"
        );
    }
    for object in [
        format!("clusterrole/{FULLNAME}"),
        format!("clusterrolebinding/{FULLNAME}"),
    ] {
        let found = kubectl(&["get", &object, "--ignore-not-found", "-o", "name"]);
        assert!(
            found.trim().is_empty(),
            "{object} is left after helm uninstall"
        );
    }
    let releases = helm.run(&["list", "--namespace", NAMESPACE, "-q"]).await;
    assert!(releases.trim().is_empty(), "helm list: {releases}");
    let crd = kubectl(&["get", "crd", "longconnservices.longconn.dev", "-o", "name"]);
    assert!(!crd.trim().is_empty(), "helm uninstall removed the CRD");
    // Not the release's: the Lease the operator wrote, and the namespace --create-namespace made.
    let leftovers = kubectl(&[
        "get",
        "namespace/longconn-system",
        "lease/longconn-operator",
        "-n",
        NAMESPACE,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    eprintln!("left after helm uninstall besides the CRD: {leftovers:?}");
    let serving = chat_pods
        .list(&chat_selector)
        .await
        .expect("list chat pods")
        .items
        .iter()
        .filter(|pod| ready(pod))
        .count();
    assert_eq!(serving, 4, "chat's pods after helm uninstall");
    eprintln!("test wall time: {:?}", started.elapsed());

    cluster.down().await.expect("cluster down");
    assert!(
        !Path::new("/sys/class/net")
            .join(nodes::plan::BRIDGE)
            .exists()
    );
}
