//! The operator against a real API server (the local control plane of `longconn-e2e`): the CRD
//! installs, the sample corpus is judged by the API server itself, and the `longconn-operator`
//! process, authenticated as a ServiceAccount that holds exactly the RBAC rules of
//! `longconn_operator::rbac` and nothing else, reconciles a LongConnService into owned objects, serves the printer columns and the
//! scale subresource, writes nothing in steady state, reacts to the ServiceMonitor and
//! PrometheusRule APIs appearing (the second missing while the first is served),
//! and garbage collection removes everything when the LongConnService goes. A leader cut off
//! from the API server stops before another replica can take its Lease.
//!
//! Skipped (with a printed reason) when `make tools` was never run, unless
//! `LONGCONN_E2E_REQUIRE_TOOLS` is set, as `make test` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, Client, ResourceExt};
use longconn_drain_api::{DrainReport, DrainState};
use longconn_e2e::cluster::{Cluster, ClusterOptions};
use longconn_operator::crd::LongConnService;
use longconn_operator::kinds::Kind;
use longconn_operator::leader::{Leadership, Lost, TIMING};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const NS: &str = "default";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Polls `check` until it returns `Some`, or panics after `WAIT` naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The operator process, killed when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
    metrics: String,
}

impl Operator {
    fn start(kubeconfig: &Path, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        std::fs::create_dir_all(dir).expect("operator dir");
        let log = dir.join("operator.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_longconn-operator"))
            .args([
                "run",
                "--log-format=text",
                "--operator-namespace=longconn-system",
                "--discovery-refresh=1s",
                &format!("--metrics-listen=127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start longconn-operator");
        Self {
            child,
            log,
            metrics: format!("127.0.0.1:{port}"),
        }
    }

    /// `longconn_operator_reconciles_total`, read from the process's /metrics.
    async fn reconciles(&self) -> Option<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("longconn_operator_reconciles_total "))
            .and_then(|n| n.trim().parse().ok())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(cluster.tools().dir().join("kubectl"))
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .output()
        .expect("run kubectl")
}

async fn install_crd(client: &Client, yaml: &str) -> String {
    let crd: CustomResourceDefinition = serde_yaml::from_str(yaml).expect("CRD yaml");
    let name = crd.name_any();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    eventually(&format!("CRD {name} Established"), || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let crd = api.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
    name
}

fn lcs_api(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::erase::<LongConnService>(&()),
    )
}

/// Creates every sample with `kubectl create --dry-run=server` (strict field validation, as a
/// user gets): good ones are accepted, bad ones refused with their expected message.
fn judge_corpus(cluster: &Cluster) {
    for kind in ["good", "bad"] {
        let dir = repo().join("operator/tests/samples").join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("samples")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for path in files {
            let file = path.to_string_lossy().into_owned();
            let out = kubectl(
                cluster,
                &["create", "--dry-run=server", "-n", NS, "-f", &file],
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if kind == "good" {
                assert!(
                    out.status.success(),
                    "{file} refused by the API server: {stderr}"
                );
                continue;
            }
            assert!(!out.status.success(), "{file} accepted by the API server");
            let text = std::fs::read_to_string(&path).expect("sample");
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .expect("expect line");
            assert!(
                stderr.contains(expect),
                "{file}: API server said {stderr:?}, expected {expect:?}"
            );
        }
    }
}

/// A ServiceAccount bound to exactly the operator's RBAC rules, and a kubeconfig that
/// authenticates as it: the operator's run then proves the rules are enough.
async fn least_privilege_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    dir: &Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use longconn_operator::rbac;

    let ns = "longconn-system";
    let pp = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "longconn-operator"}}))
                .expect("sa"),
        )
        .await
        .expect("create ServiceAccount");
    let subject = json!([{"kind": "ServiceAccount", "name": "longconn-operator", "namespace": ns}]);
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "longconn-operator"},
        "rules": rbac::policy_rules(rbac::RULES),
    }))
    .expect("cluster role");
    Api::<ClusterRole>::all(client.clone())
        .create(&pp, &cluster_role)
        .await
        .expect("create ClusterRole");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "longconn-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "longconn-operator"},
        "subjects": subject,
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .expect("create ClusterRoleBinding");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "longconn-operator-leader"},
        "rules": rbac::policy_rules(&[rbac::LEASE_RULE]),
    }))
    .expect("role");
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await
        .expect("create Role");
    let role_binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "longconn-operator-leader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "longconn-operator-leader"},
        "subjects": subject,
    }))
    .expect("role binding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &role_binding)
        .await
        .expect("create RoleBinding");

    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request("longconn-operator", &pp, &request)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token;
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(admin_kubeconfig).expect("kubeconfig"))
            .expect("kubeconfig json");
    config["users"][0]["user"] = json!({"token": token});
    let path = dir.join("operator-kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).expect("json")).expect("write kubeconfig");
    path
}

fn condition<'a>(lcs: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    lcs.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn owned_resource_versions(client: &Client, uid: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NS, &kind.api_resource());
        let Ok(list) = api
            .list(&ListParams::default().labels("app.kubernetes.io/instance=chat"))
            .await
        else {
            continue;
        };
        for o in list
            .items
            .iter()
            .filter(|o| o.owner_references().iter().any(|r| r.uid == uid))
        {
            // Where the API tracks a generation (Deployments, PodDisruptionBudgets), it moves
            // only with what is written to the object itself; its resourceVersion also moves
            // with the status the controllers keep writing, which is not the operator's doing.
            let version = match o.metadata.generation {
                Some(generation) => format!("generation {generation}"),
                None => o.resource_version().unwrap_or_default(),
            };
            out.insert(format!("{kind:?}/{}", o.name_any()), version);
        }
    }
    out
}

/// A local control plane in a temporary folder (returned with it, to keep it until the end), or
/// None when the tools are missing and `test` is skipped.
async fn cluster_or_skip(test: &str) -> Option<(tempfile::TempDir, Cluster)> {
    let tools_dir = longconn_e2e::tools::tools_dir_or_skip(test)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::up(ClusterOptions {
        dir: dir.path().join("cluster"),
        tools_dir,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster up");
    Some((dir, cluster))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_a_long_conn_service_in_a_real_api_server() {
    let Some((dir, cluster)) =
        cluster_or_skip("operator_reconciles_a_long_conn_service_in_a_real_api_server").await
    else {
        return;
    };
    let client = cluster.client();

    let crd_yaml = std::fs::read_to_string(repo().join("crds/longconnservices.longconn.dev.yaml"))
        .expect("crd file");
    install_crd(&client, &crd_yaml).await;
    judge_corpus(&cluster);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "longconn-system"}})).expect("ns"),
        )
        .await
        .expect("create longconn-system");
    let operator_kubeconfig =
        least_privilege_kubeconfig(&client, &cluster.kubeconfig_path(), dir.path()).await;
    let operator = Operator::start(&operator_kubeconfig, dir.path());

    let lcs_api = lcs_api(&client);
    let chat: DynamicObject = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("examples/chat.yaml")).expect("example"),
    )
    .expect("yaml");
    let applied = lcs_api
        .patch(
            "chat",
            &PatchParams::apply("e2e-test"),
            &Patch::Apply(&chat),
        )
        .await
        .expect("apply chat");
    let uid = applied.uid().expect("uid");

    // Every object exists with this LongConnService as controller owner.
    let expected = [
        (Kind::Secret, "chat-admin-token"),
        (Kind::Secret, "chat-ca"),
        (Kind::Secret, "chat-tls"),
        (Kind::Service, "chat"),
        (Kind::Service, "chat-metrics"),
        (Kind::PodDisruptionBudget, "chat"),
        (Kind::NetworkPolicy, "chat"),
    ];
    for (kind, name) in expected {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NS, &kind.api_resource());
        let object = eventually(&format!("{kind:?} {name}"), || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok().flatten() }
        })
        .await;
        let owner = object
            .owner_references()
            .first()
            .cloned()
            .expect("owner reference");
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (uid.as_str(), Some(true)),
            "{kind:?} {name}"
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = eventually("the revision's Deployment", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .list(&ListParams::default().labels("longconn.dev/service=chat"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let gateway = pod
        .init_containers
        .as_ref()
        .and_then(|c| c.first())
        .expect("gateway sidecar");
    assert_eq!(
        (gateway.name.as_str(), gateway.restart_policy.as_deref()),
        ("longconn-gateway", Some("Always"))
    );

    // Status with conditions for this generation; MonitoringReady says why there is none.
    let lcs = eventually("status for the current generation", || {
        let api = lcs_api.clone();
        async move {
            let lcs = api.get("chat").await.ok()?;
            (lcs.data["status"]["observedGeneration"] == json!(lcs.metadata.generation)
                && condition(&lcs, "MonitoringReady").is_some())
            .then_some(lcs)
        }
    })
    .await;
    let monitoring = condition(&lcs, "MonitoringReady").expect("MonitoringReady");
    assert_eq!(
        (monitoring["status"].as_str(), monitoring["reason"].as_str()),
        (Some("False"), Some("ServiceMonitorAPIMissing"))
    );
    assert_eq!(
        condition(&lcs, "CertificateReady").expect("CertificateReady")["status"],
        "True"
    );

    // kubectl shows the printer columns and scales through the scale subresource.
    let get = kubectl(&cluster, &["get", "lcs", "chat", "-n", NS]);
    let header = String::from_utf8_lossy(&get.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "NAME",
            "REPLICAS",
            "DESIRED",
            "READY",
            "SESSIONS",
            "REVISION",
            "AVAILABLE",
            "AGE"
        ],
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    let scale = kubectl(&cluster, &["scale", "lcs/chat", "-n", NS, "--replicas=5"]);
    assert!(
        scale.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&scale.stderr)
    );
    let name = deployment.name_any();
    eventually("the Deployment scaled to 5", || {
        let deployments = deployments.clone();
        let name = name.clone();
        async move { (deployments.get(&name).await.ok()?.spec?.replicas == Some(5)).then_some(()) }
    })
    .await;
    // The five pods exist (Pending: no node here) and the status says so.
    eventually("the status shows the five pods", || {
        let lcs_api = lcs_api.clone();
        async move {
            let lcs = lcs_api.get("chat").await.ok()?;
            (lcs.data["status"]["replicas"] == 5).then_some(())
        }
    })
    .await;

    // The gateway poller reads a running pod's gateway and the status records what it reports.
    // No kubelet runs here: one pod is marked Running at a loopback address of its own, where a
    // stand-in for its gateway's admin port answers every `GET /drain` with 7 open sessions.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod_name = pods
        .list(&ListParams::default().labels("longconn.dev/service=chat"))
        .await
        .expect("list pods")
        .items
        .first()
        .map(ResourceExt::name_any)
        .expect("a pod");
    let pod_ip = format!(
        "127.0.{}.{}",
        std::process::id() % 250,
        2 + std::process::id() % 200
    );
    let admin_port = longconn_operator::desired::admin_port(
        &serde_json::from_value::<LongConnService>(serde_json::to_value(&applied).expect("json"))
            .expect("chat as a LongConnService"),
    );
    let _gateway = answer_drain_reports(&format!("{pod_ip}:{admin_port}"), 7).await;
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}}),
        ),
    )
    .await
    .expect("mark the pod Running");
    eventually(
        "the status records the gateway's 7 sessions and the total",
        || {
            let lcs_api = lcs_api.clone();
            let pod_name = pod_name.clone();
            async move {
                let lcs = lcs_api.get("chat").await.ok()?;
                let status = &lcs.data["status"];
                // The pod's record at once, the service's total on its 30 s schedule.
                (status["activeSessions"] == 7
                    && status["gateways"]
                        .as_array()?
                        .iter()
                        .any(|g| g["pod"] == pod_name.as_str() && g["sessions"] == 7))
                .then_some(())
            }
        },
    )
    .await;

    // Steady state: a reconcile that finds everything as desired writes nothing.
    let settled = owned_resource_versions(&client, &uid).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        owned_resource_versions(&client, &uid).await,
        settled,
        "objects changed while nothing was asked; operator log:\n{}",
        operator.log_tail()
    );
    let before = operator.reconciles().await.expect("operator metrics");
    let touched = lcs_api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/touch": "1"}}})),
        )
        .await
        .expect("annotate");
    eventually("a reconcile after the annotation", || async {
        (operator.reconciles().await? > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        owned_resource_versions(&client, &uid).await,
        settled,
        "steady-state reconcile wrote an object"
    );
    let after = lcs_api.get("chat").await.expect("lcs");
    assert_eq!(
        after.resource_version(),
        touched.resource_version(),
        "steady-state reconcile wrote status; operator log:\n{}",
        operator.log_tail()
    );

    // The ServiceMonitor API appears: the operator discovers it and creates the ServiceMonitor.
    let monitor_crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;
    install_crd(&client, monitor_crd).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    lcs_api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/touch": "2"}}})),
        )
        .await
        .expect("annotate");
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &Kind::ServiceMonitor.api_resource());
    eventually("the ServiceMonitor", || {
        let monitors = monitors.clone();
        async move { monitors.get_opt("chat").await.ok().flatten() }
    })
    .await;
    // Its group serves no PrometheusRule yet: MonitoringReady says the alerts are missing.
    let monitoring_ready = |status: &'static str, reason: &'static str| {
        let api = lcs_api.clone();
        async move {
            let lcs = api.get("chat").await.ok()?;
            let c = condition(&lcs, "MonitoringReady")?;
            (c["status"] == status && c["reason"] == reason).then_some(())
        }
    };
    eventually("MonitoringReady=False, PrometheusRuleAPIMissing", || {
        monitoring_ready("False", "PrometheusRuleAPIMissing")
    })
    .await;

    // The PrometheusRule API appears (its CRD with the rule fields' schema of the Prometheus
    // Operator's, so the API server judges the rule's shape): the operator creates the rule.
    let rule_crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule, listKind: PrometheusRuleList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"#;
    install_crd(&client, rule_crd).await;
    let rules: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &Kind::PrometheusRule.api_resource());
    let rule = eventually("the PrometheusRule", || {
        let rules = rules.clone();
        async move { rules.get_opt("chat").await.ok().flatten() }
    })
    .await;
    // Stored as the schema reads it (a field it does not know would have been pruned).
    let stored = rule.data["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules");
    assert_eq!(stored.len(), 8, "{stored:#?}");
    for r in stored {
        assert!(
            r["alert"].is_string()
                && r["expr"].is_string()
                && r["labels"]["severity"].is_string()
                && r["annotations"]["description"].is_string(),
            "{r:#}"
        );
    }
    assert!(stored.iter().any(|r| r["for"] == "10m"), "{stored:#?}");
    eventually("MonitoringReady=True", || {
        monitoring_ready("True", "ServiceMonitorReady")
    })
    .await;

    // A second replica waits for the leader Lease and takes over when the leader dies.
    let standby = Operator::start(&operator_kubeconfig, &dir.path().join("standby"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    lcs_api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/touch": "3"}}})),
        )
        .await
        .expect("annotate");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        standby.reconciles().await,
        Some(0),
        "a replica without the Lease reconciled"
    );
    let leader_tail = operator.log_tail();
    drop(operator);
    eventually("the standby to take over and reconcile", || async {
        lcs_api
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"e2e/touch": "4"}}})),
            )
            .await
            .ok()?;
        (standby.reconciles().await? > 0).then_some(())
    })
    .await;
    assert!(
        standby.log_tail().contains("became the leader"),
        "standby log:\n{}",
        standby.log_tail()
    );
    let operator = standby;

    // The session autoscaling: the pod is Ready with its gateway's 7 sessions, the target is 1
    // per pod, so the operator (the standby, which has seen no recommendation yet: a scale-up
    // needs none) scales from 5 to 7 through the scale subresource, with exactly the rights
    // `rbac` grants.
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .expect("mark the pod Ready");
    lcs_api
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": {
                "minReplicas": 1, "maxReplicas": 10, "targetSessionsPerPod": 1}}})),
        )
        .await
        .expect("autoscale on sessions");
    let scaled = eventually("the session autoscaling scales to 7", || {
        let lcs_api = lcs_api.clone();
        async move {
            let lcs = lcs_api.get("chat").await.ok()?;
            (lcs.data["spec"]["replicas"] == 7).then_some(lcs)
        }
    })
    .await;
    let decision = &scaled.data["status"]["autoscaling"]["lastDecision"];
    assert_eq!(
        (&decision["from"], &decision["replicas"]),
        (&json!(5), &json!(7))
    );
    assert!(
        decision["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("sessions 7 over 1 pod and 4 starting")),
        "{decision}"
    );
    assert_eq!(
        condition(&scaled, "ScalingActive").expect("ScalingActive")["status"],
        "True"
    );

    // Deleting the LongConnService removes everything it owned.
    lcs_api
        .delete("chat", &Default::default())
        .await
        .expect("delete chat");
    eventually("garbage collection of every owned object", || {
        let client = client.clone();
        let uid = uid.clone();
        async move {
            owned_resource_versions(&client, &uid)
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;

    let tail = operator.log_tail();
    drop(operator);
    for log in [&leader_tail, &tail] {
        assert!(!log.contains("panicked"), "operator log:\n{log}");
    }
    cluster.down().await.expect("cluster down");
}

/// A stand-in for a gateway's admin port at `addr`: answers every request with a serving
/// gateway's drain report of `active` open sessions, until the returned set is dropped.
async fn answer_drain_reports(addr: &str, active: u64) -> tokio::task::JoinSet<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let body = hyper::body::Bytes::from(
        serde_json::to_vec(&DrainReport {
            state: DrainState::Serving,
            active,
            ..DrainReport::default()
        })
        .expect("report"),
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let body = body.clone();
            let service = hyper::service::service_fn(move |_request| {
                let body = http_body_util::Full::new(body.clone());
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    tasks
}

/// A client whose requests hang once `cut` is set, as they do across a network partition.
fn partitionable(client: &Client, cut: Arc<AtomicBool>) -> Client {
    let inner = client.clone();
    let service = tower::service_fn(move |request| {
        let inner = inner.clone();
        let cut = cut.clone();
        async move {
            if cut.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            inner.send(request).await
        }
    });
    Client::new(service, client.default_namespace())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_before_another_replica_takes_the_lease() {
    let Some((_dir, cluster)) = cluster_or_skip(
        "a_leader_cut_off_from_the_api_server_stops_before_another_replica_takes_the_lease",
    )
    .await
    else {
        return;
    };
    let client = cluster.client();
    const LEASE: &str = "fencing";

    let cut = Arc::new(AtomicBool::new(false));
    let mut leader = Leadership::acquire(&partitionable(&client, cut.clone()), LEASE, NS, "a")
        .await
        .expect("a leads");
    let standby = tokio::spawn({
        let client = client.clone();
        async move {
            let held = Leadership::acquire(&client, LEASE, NS, "b")
                .await
                .expect("b leads");
            (Instant::now(), held)
        }
    });

    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let lost = tokio::time::timeout(WAIT, leader.lost())
        .await
        .expect("the cut-off leader stops");
    let stopped_at = Instant::now();
    assert!(matches!(lost, Lost::NotRenewed { .. }), "{lost}");
    assert!(
        stopped_at - cut_at <= TIMING.duration - TIMING.margin + Duration::from_secs(1),
        "stopped {:?} after the cut",
        stopped_at - cut_at
    );

    let (took_over_at, _standby) = tokio::time::timeout(WAIT, standby)
        .await
        .expect("the standby takes over")
        .expect("standby task");
    assert!(
        stopped_at < took_over_at,
        "the standby led {:?} before the cut-off leader stopped",
        stopped_at - took_over_at
    );
    let lease = Api::<Lease>::namespaced(client, NS)
        .get(LEASE)
        .await
        .expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
    cluster.down().await.expect("cluster down");
}
