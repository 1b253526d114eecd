//! What every scenario runs on: the local cluster with real nodes (containerd, kubelet and
//! kube-proxy each; pods run the images of `make images`), the operator installed with its Helm
//! chart (one replica, in a namespace that enforces the restricted Pod Security level; the chart
//! brings the CRD), which a scenario may kill (SIGKILL to its container's process; the kubelet
//! starts it again), and a runtime on the cluster's client host for the load clients, which
//! reach Services through their ClusterIP. [`Harness::shutdown`] stops everything in order;
//! dropping a harness (a panic, an interrupted run) still removes the cluster and its nodes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::wait::{Check, wait_until};
use super::{ScenarioError, ScenarioOptions};
use crate::cluster::{Cluster, ClusterOptions};
use crate::load::{self, LoadOptions, RunningLoad};

/// The operator's namespace (its leader Lease lives there).
pub const OPERATOR_NAMESPACE: &str = "longconn-system";
/// The Helm release of the operator.
const RELEASE: &str = "longconn";
/// The operator pods' label.
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=longconn-operator";
/// The operator's leader Lease.
pub const LEASE: &str = "longconn-operator";
/// The longest any kubectl or helm call may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(240);
/// The longest one request of the scenarios' own client may take (none of them watches).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads of the client host's runtime (the load clients).
const CLIENT_THREADS: usize = 2;
/// How long the operator may take to be Ready and lead, at install and after a kill.
const OPERATOR_WAIT: Duration = Duration::from_secs(120);

/// The running environment of the scenarios.
pub struct Harness {
    /// How often the scenarios killed the operator (its container's restarts they expect).
    operator_kills: u32,
    cluster: Option<Cluster>,
    client: kube::Client,
    kubectl: PathBuf,
    helm: PathBuf,
    kubeconfig: PathBuf,
    work_dir: PathBuf,
    /// A runtime on the client host: the load clients' sockets live there.
    client_host: Option<tokio::runtime::Runtime>,
}

/// The operator's pod as the harness watches it.
#[derive(Debug, Clone)]
struct OperatorPod {
    name: String,
    container_id: Option<String>,
    restarts: i32,
    ready: bool,
}

impl Harness {
    /// Starts the cluster with its nodes and installs the operator with its chart.
    pub async fn up(options: &ScenarioOptions) -> Result<Self, ScenarioError> {
        std::fs::create_dir_all(&options.work_dir)
            .map_err(crate::Error::io("create", &options.work_dir))?;
        tracing::info!(work_dir = %options.work_dir.display(), "starting the cluster");
        let cluster = Cluster::up(ClusterOptions {
            dir: options.work_dir.join("cluster"),
            tools_dir: options.tools_dir.clone(),
            nodes: options.nodes,
            images_dir: options.images_dir.clone(),
            ..ClusterOptions::default()
        })
        .await?;
        let client = bounded_client(&cluster.kubeconfig_path()).await?;
        let client_netns = cluster
            .plan()
            .map(|plan| plan.client.netns.clone())
            .ok_or_else(|| ScenarioError::Setup("the scenarios need nodes".into()))?;
        let mut harness = Harness {
            operator_kills: 0,
            kubectl: cluster.tools().binary("kubectl"),
            helm: cluster.tools().binary("helm"),
            kubeconfig: cluster.kubeconfig_path(),
            cluster: Some(cluster),
            client: client.clone(),
            work_dir: options.work_dir.clone(),
            client_host: None,
        };
        // From here on an error drops `harness`, which stops whatever was started.
        harness.client_host = Some(crate::nodes::runtime_in_netns(
            &client_netns,
            CLIENT_THREADS,
        )?);
        harness.create_namespace(OPERATOR_NAMESPACE).await?;
        harness.install_operator().await?;
        Ok(harness)
    }

    /// A client authenticated as the cluster admin.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Starts load clients on the client host: through the Service's ClusterIP
    /// ([`load::Route::ClusterIp`]), or straight to pods where a scenario must know which pod
    /// served a session.
    pub async fn start_load(&self, mut options: LoadOptions) -> Result<RunningLoad, ScenarioError> {
        options.allowed = vec![
            crate::nodes::plan::service_network(),
            crate::nodes::plan::pod_network(),
        ];
        let client = self.client.clone();
        self.on_client_host(load::start(client, options))
            .await?
            .map_err(ScenarioError::from)
    }

    /// Runs `work` on the client host: its sockets live in the client host's network namespace,
    /// which routes the Service range to a node and every pod network to its node.
    pub async fn on_client_host<F>(&self, work: F) -> Result<F::Output, ScenarioError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .client_host
            .as_ref()
            .ok_or_else(|| ScenarioError::Setup("no client host runtime".into()))?;
        runtime
            .spawn(work)
            .await
            .map_err(|join| ScenarioError::Setup(format!("a task on the client host: {join}")))
    }

    /// Where the logs are: the control plane's and every node's, with its pods' logs.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// How often the operator was started (once at install, once after each kill).
    pub fn operator_starts(&self) -> u32 {
        self.operator_kills + 1
    }

    /// `helm install` of the chart in this repository: the CRD, RBAC and one operator replica
    /// (text logs), then waits until its pod is Ready and holds the leader Lease.
    async fn install_operator(&self) -> Result<(), ScenarioError> {
        let chart = crate::tools::repository_root().join("charts/longconn-operator");
        let chart = chart.to_string_lossy().into_owned();
        let home = self.work_dir.join("helm");
        let mut command = tokio::process::Command::new(&self.helm);
        command
            .args([
                "install",
                RELEASE,
                &chart,
                "--namespace",
                OPERATOR_NAMESPACE,
                "--set",
                "replicaCount=1",
                "--set",
                "logFormat=text",
                "--set",
                // Each reconcile's view of the pods, for the logs kept after a failure.
                "logLevel=info\\,kube=warn\\,longconn_operator=debug",
                "--set",
                "podDisruptionBudget.enabled=false",
            ])
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        self.run_tool("helm install", command).await?;
        self.wait_operator_leads(0).await
    }

    /// The operator's pod (there is one replica).
    async fn operator_pod(&self) -> Result<Option<OperatorPod>, ScenarioError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let list = pods
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await
            .map_err(ScenarioError::kube("list the operator's pods"))?;
        Ok(list
            .items
            .iter()
            .find(|pod| pod.metadata.deletion_timestamp.is_none())
            .map(|pod| {
                let status = pod.status.clone().unwrap_or_default();
                let container = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .find(|c| c.name == "operator");
                OperatorPod {
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    container_id: container.and_then(|c| c.container_id.clone()),
                    restarts: container.map_or(0, |c| c.restart_count),
                    ready: container.is_some_and(|c| c.ready),
                }
            }))
    }

    /// The log of the operator's container, its current run (the text format `install_operator`
    /// sets).
    pub async fn operator_log(&self) -> Result<String, ScenarioError> {
        let pod = self
            .operator_pod()
            .await?
            .ok_or_else(|| ScenarioError::Operator("no operator pod to read the log of".into()))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let params = LogParams {
            container: Some("operator".to_owned()),
            ..LogParams::default()
        };
        pods.logs(&pod.name, &params)
            .await
            .map_err(ScenarioError::kube("read the operator's log"))
    }

    /// Waits until the operator's container has been started `restarts` times after the first,
    /// is Ready, and its pod holds the leader Lease.
    async fn wait_operator_leads(&self, restarts: u32) -> Result<(), ScenarioError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), OPERATOR_NAMESPACE);
        let restarts = i32::try_from(restarts).unwrap_or(i32::MAX);
        wait_until(
            &format!("the operator Ready after {restarts} restarts and leading"),
            OPERATOR_WAIT,
            || async {
                let Some(pod) = self.operator_pod().await? else {
                    return Ok(Check::NotYet("no operator pod".into()));
                };
                let holder = leases
                    .get_opt(LEASE)
                    .await
                    .map_err(ScenarioError::kube("get the leader Lease"))?
                    .and_then(|lease| lease.spec?.holder_identity);
                let leads = holder.as_deref() == Some(pod.name.as_str());
                Ok(if pod.ready && leads && pod.restarts >= restarts {
                    Check::Done(())
                } else {
                    Check::NotYet(format!("{pod:?}, Lease holder {holder:?}"))
                })
            },
        )
        .await
    }

    /// Kills the operator's process with SIGKILL (no chance to clean up), as a crash would, and
    /// waits until it is gone; the kubelet starts the container again.
    pub async fn kill_operator(&mut self) -> Result<(), ScenarioError> {
        let pod = self
            .operator_pod()
            .await?
            .ok_or_else(|| ScenarioError::Operator("no operator pod".into()))?;
        let container = pod
            .container_id
            .clone()
            .ok_or_else(|| ScenarioError::Operator(format!("{pod:?} has no container")))?;
        let pid =
            crate::nodes::container_process(&container, "longconn-operator").ok_or_else(|| {
                ScenarioError::Operator(format!("no process for container {container}"))
            })?;
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|e| ScenarioError::Operator(format!("kill -9 {pid}: {e}")))?;
        self.operator_kills += 1;
        let started = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(ScenarioError::Timeout {
                    what: "the operator to exit after SIGKILL".into(),
                    after: Duration::from_secs(10),
                    last: format!("pid {pid} alive"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(pod = %pod.name, pid, kills = self.operator_kills, "operator killed");
        Ok(())
    }

    /// Waits until the kubelet has started the killed operator again and it leads.
    pub async fn start_operator(&mut self) -> Result<(), ScenarioError> {
        self.wait_operator_leads(self.operator_kills).await
    }

    /// After a crash: takes the container's restarts as they are and waits until it leads
    /// again, so the next scenario judges only its own.
    pub async fn recover_operator(&mut self) -> Result<(), ScenarioError> {
        if let Some(pod) = self.operator_pod().await? {
            self.operator_kills = u32::try_from(pod.restarts).unwrap_or(self.operator_kills);
        }
        self.wait_operator_leads(self.operator_kills).await
    }

    /// Fails when the operator's container has restarted other than by [`Harness::kill_operator`]
    /// (it crashed) or its pod is gone.
    pub async fn check_operator(&mut self) -> Result<(), ScenarioError> {
        let expected = i32::try_from(self.operator_kills).unwrap_or(i32::MAX);
        match self.operator_pod().await? {
            Some(pod) if pod.restarts <= expected => Ok(()),
            Some(pod) => Err(ScenarioError::Operator(format!(
                "its container restarted {} times, {expected} of them killed by the scenarios",
                pod.restarts
            ))),
            None => Err(ScenarioError::Operator("no operator pod".into())),
        }
    }

    /// Creates namespace `name`, where the API server enforces the restricted Pod Security level.
    pub async fn create_namespace(&self, name: &str) -> Result<(), ScenarioError> {
        create_namespace(&self.client, name).await
    }

    /// Deletes namespace `name` and waits (bounded) until it is gone with everything in it.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), ScenarioError> {
        delete_namespace(&self.client, name, Duration::from_secs(180)).await
    }

    /// Runs kubectl as the cluster admin (bounded by [`KUBECTL_TIMEOUT`]); its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, ScenarioError> {
        let mut command = tokio::process::Command::new(&self.kubectl);
        command.args(args);
        self.run_tool(&format!("kubectl {}", args.join(" ")), command)
            .await
    }

    /// Runs `kubectl longconn`, the workspace's plugin (from [`crate::tools::default_bin_dir`],
    /// where `cargo build --workspace --bins` puts it), as the cluster admin: `command` on the
    /// LongConnService `name` in `namespace`; its stdout.
    pub async fn kubectl_longconn(
        &self,
        command: &str,
        name: &str,
        namespace: &str,
    ) -> Result<String, ScenarioError> {
        let args = [command, name, "-n", namespace];
        let binary = crate::tools::default_bin_dir().join("kubectl-longconn");
        if !binary.exists() {
            return Err(ScenarioError::Setup(format!(
                "{} is not built: cargo build -p kubectl-longconn",
                binary.display()
            )));
        }
        let mut command = tokio::process::Command::new(binary);
        command.args(args);
        self.run_tool(&format!("kubectl longconn {}", args.join(" ")), command)
            .await
    }

    /// Runs a client tool (kubectl, helm) as the cluster admin, bounded by [`KUBECTL_TIMEOUT`];
    /// its stdout.
    async fn run_tool(
        &self,
        what: &str,
        mut command: tokio::process::Command,
    ) -> Result<String, ScenarioError> {
        command
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(KUBECTL_TIMEOUT, command.output())
            .await
            .map_err(|_| ScenarioError::Timeout {
                what: what.to_string(),
                after: KUBECTL_TIMEOUT,
                last: "still running".into(),
            })?
            .map_err(|e| ScenarioError::Kubectl {
                args: what.to_string(),
                stderr: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(ScenarioError::Kubectl {
                args: what.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops the load clients' runtime and the cluster with its nodes (the operator's pod goes
    /// with them); returns what could not be stopped cleanly.
    pub async fn shutdown(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(runtime) = self.client_host.take() {
            runtime.shutdown_background();
        }
        if let Some(cluster) = self.cluster.take()
            && let Err(err) = cluster.down().await
        {
            problems.push(format!("cluster: {err}"));
        }
        problems
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(runtime) = self.client_host.take() {
            runtime.shutdown_background();
        }
        // The cluster stops itself, nodes included, when dropped.
        drop(self.cluster.take());
    }
}

/// Creates namespace `name`, where the API server enforces the restricted Pod Security level.
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<(), ScenarioError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({"metadata": {
        "name": name,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
    }}))
    .map_err(|e| ScenarioError::Setup(format!("namespace {name}: {e}")))?;
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(ScenarioError::kube(format!("create namespace {name}")))?;
    Ok(())
}

/// Deletes namespace `name` and waits up to `timeout` until it is gone with everything in it.
pub async fn delete_namespace(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> Result<(), ScenarioError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(ScenarioError::kube(format!("delete namespace {name}"))(err)),
    }
    wait_until(
        &format!("namespace {name} and its pods gone"),
        timeout,
        || async {
            Ok(
                match namespaces
                    .get_opt(name)
                    .await
                    .map_err(ScenarioError::kube(format!("get namespace {name}")))?
                {
                    None => Check::Done(()),
                    Some(ns) => {
                        Check::NotYet(format!("phase {:?}", ns.status.and_then(|s| s.phase)))
                    }
                },
            )
        },
    )
    .await
}

/// An admin client whose every request ends within [`REQUEST_TIMEOUT`], so a hung API server
/// cannot stall a scenario past its bounded waits.
pub async fn bounded_client(kubeconfig: &Path) -> Result<kube::Client, ScenarioError> {
    let error = |source| crate::Error::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let loaded = kube::config::Kubeconfig::read_from(kubeconfig).map_err(error)?;
    let mut config = kube::Config::from_custom_kubeconfig(loaded, &Default::default())
        .await
        .map_err(error)?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    kube::Client::try_from(config)
        .map_err(|e| ScenarioError::kube("build the scenarios' client")(e))
}
