//! What every scenario runs on: the local cluster with real nodes (containerd, kubelet and
//! kube-proxy each; pods run the images of `make images`), the LongConnService CRD, the operator
//! as a host process that a scenario may kill and start again, and a runtime on the cluster's
//! client host for the load clients, which reach Services through their ClusterIP.
//! [`Harness::shutdown`] stops everything in order; dropping a harness (a panic, an interrupted
//! run) still kills the operator, and the cluster removes its nodes from the host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use nix::sys::signal::Signal;

use super::wait::{Check, wait_until};
use super::{ScenarioError, ScenarioOptions};
use crate::cluster::{Cluster, ClusterOptions};
use crate::load::{self, LoadOptions, RunningLoad};
use crate::process::Spawned;

/// The operator's namespace (its leader Lease lives there).
pub const OPERATOR_NAMESPACE: &str = "longconn-system";
/// The operator's identity for leader election: the same across restarts, as a restarted
/// container keeps its pod name, so a restarted operator takes its own Lease back at once.
const OPERATOR_IDENTITY: &str = "longconn-operator-e2e-0";
/// The longest any kubectl call may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(240);
/// The longest one request of the scenarios' own client may take (none of them watches).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Threads of the client host's runtime (the load clients).
const CLIENT_THREADS: usize = 2;

/// The running environment of the scenarios.
pub struct Harness {
    operator: Option<Spawned>,
    operator_starts: u32,
    cluster: Option<Cluster>,
    client: kube::Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    work_dir: PathBuf,
    /// A runtime on the client host: the load clients' sockets live there.
    client_host: Option<tokio::runtime::Runtime>,
}

impl Harness {
    /// Starts the cluster with its nodes, installs the CRD and starts the operator.
    pub async fn up(options: &ScenarioOptions) -> Result<Self, ScenarioError> {
        let operator = options.bin_dir.join("longconn-operator");
        if !operator.is_file() {
            return Err(ScenarioError::Setup(format!(
                "{} missing: build it first (cargo build -p longconn-operator) or pass --bin-dir",
                operator.display()
            )));
        }
        std::fs::create_dir_all(&options.work_dir)
            .map_err(crate::Error::io("create", &options.work_dir))?;
        tracing::info!(work_dir = %options.work_dir.display(), "starting the control plane");
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
            operator: None,
            operator_starts: 0,
            kubectl: cluster.tools().binary("kubectl"),
            kubeconfig: cluster.kubeconfig_path(),
            cluster: Some(cluster),
            client: client.clone(),
            bin_dir: options.bin_dir.clone(),
            work_dir: options.work_dir.clone(),
            client_host: None,
        };
        // From here on an error drops `harness`, which stops whatever was started.
        harness.client_host = Some(crate::nodes::runtime_in_netns(
            &client_netns,
            CLIENT_THREADS,
        )?);
        harness.install_crd().await?;
        harness.create_namespace(OPERATOR_NAMESPACE).await?;
        harness.start_operator()?;
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
        let runtime = self
            .client_host
            .as_ref()
            .ok_or_else(|| ScenarioError::Setup("no client host runtime".into()))?;
        runtime
            .spawn(load::start(client, options))
            .await
            .map_err(|join| ScenarioError::Setup(format!("the load's start task: {join}")))?
            .map_err(ScenarioError::from)
    }

    /// Where the logs are: the operator's, the control plane's and every pod's.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The operator's log file.
    pub fn operator_log(&self) -> PathBuf {
        self.work_dir.join("operator.log")
    }

    /// How often the operator was started.
    pub fn operator_starts(&self) -> u32 {
        self.operator_starts
    }

    async fn install_crd(&self) -> Result<(), ScenarioError> {
        let crd = crate::tools::repository_root().join("crds/longconnservices.longconn.dev.yaml");
        let manifest = if crd.is_file() {
            crd
        } else {
            // Outside the repository: the operator prints the same CRD.
            let output = Command::new(self.bin_dir.join("longconn-operator"))
                .arg("crd")
                .output()
                .map_err(|e| ScenarioError::Setup(format!("longconn-operator crd: {e}")))?;
            if !output.status.success() {
                return Err(ScenarioError::Setup(format!(
                    "longconn-operator crd: {}",
                    String::from_utf8_lossy(&output.stderr)
                )));
            }
            let path = self.work_dir.join("crd.yaml");
            std::fs::write(&path, &output.stdout).map_err(crate::Error::io("write", &path))?;
            path
        };
        self.kubectl(&["apply", "--server-side", "-f", &manifest.to_string_lossy()])
            .await?;
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        wait_until(
            "CRD longconnservices.longconn.dev Established",
            Duration::from_secs(30),
            || async {
                let crd = crds
                    .get_opt("longconnservices.longconn.dev")
                    .await
                    .map_err(ScenarioError::kube("get the CRD"))?;
                let established = crd
                    .as_ref()
                    .and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                Ok(if established {
                    Check::Done(())
                } else {
                    Check::NotYet("no Established=True condition".into())
                })
            },
        )
        .await
    }

    /// Creates namespace `name`, where the API server enforces the restricted Pod Security level.
    pub async fn create_namespace(&self, name: &str) -> Result<(), ScenarioError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
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

    /// Deletes namespace `name` and waits (bounded) until it is gone with everything in it.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), ScenarioError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(err) => return Err(ScenarioError::kube(format!("delete namespace {name}"))(err)),
        }
        wait_until(
            &format!("namespace {name} and its pods gone"),
            Duration::from_secs(180),
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

    /// Runs kubectl as the cluster admin (bounded by [`KUBECTL_TIMEOUT`]); its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, ScenarioError> {
        let mut command = tokio::process::Command::new(&self.kubectl);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(KUBECTL_TIMEOUT, command.output())
            .await
            .map_err(|_| ScenarioError::Timeout {
                what: format!("kubectl {}", args.join(" ")),
                after: KUBECTL_TIMEOUT,
                last: "still running".into(),
            })?
            .map_err(|e| ScenarioError::Kubectl {
                args: args.join(" "),
                stderr: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(ScenarioError::Kubectl {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Starts the operator (`longconn-operator run`), its output appended to
    /// [`Harness::operator_log`].
    pub fn start_operator(&mut self) -> Result<(), ScenarioError> {
        if self.operator.is_some() {
            return Err(ScenarioError::Operator("already running".into()));
        }
        let mut command = Command::new(self.bin_dir.join("longconn-operator"));
        command
            .args([
                "run",
                &format!("--operator-namespace={OPERATOR_NAMESPACE}"),
                "--log-format=text",
                "--metrics-listen=127.0.0.1:0",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", OPERATOR_IDENTITY)
            .env(
                "RUST_LOG",
                std::env::var("LONGCONN_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            );
        let spawned = Spawned::start_command("longconn-operator", command, &self.operator_log())?;
        // Should this process be killed, `cluster down` stops the operator too.
        if let Some(cluster) = &self.cluster
            && let Err(err) = crate::cluster::record_process(cluster.dir(), &spawned.record)
        {
            tracing::warn!(%err, "the operator is not in the cluster's state file");
        }
        self.operator_starts += 1;
        tracing::info!(
            pid = spawned.record.pid,
            start = self.operator_starts,
            "operator started"
        );
        self.operator = Some(spawned);
        Ok(())
    }

    /// Kills the operator with SIGKILL (no chance to clean up) and waits until it is gone.
    pub async fn kill_operator(&mut self) -> Result<(), ScenarioError> {
        let Some(mut operator) = self.operator.take() else {
            return Err(ScenarioError::Operator("not running".into()));
        };
        operator.signal(Signal::SIGKILL);
        let started = Instant::now();
        while operator.group_alive() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(ScenarioError::Timeout {
                    what: "the operator to exit after SIGKILL".into(),
                    after: Duration::from_secs(10),
                    last: format!("pid {} alive", operator.record.pid),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(pid = operator.record.pid, "operator killed");
        Ok(())
    }

    /// Fails when the operator has exited.
    pub fn check_operator(&mut self) -> Result<(), ScenarioError> {
        match self.operator.as_mut() {
            Some(operator) => operator
                .check_running()
                .map_err(|e| ScenarioError::Operator(e.to_string())),
            None => Err(ScenarioError::Operator("not running".into())),
        }
    }

    /// Stops the operator, the load clients' runtime and the cluster with its nodes, in that
    /// order; returns what could not be stopped cleanly.
    pub async fn shutdown(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(operator) = self.operator.take() {
            let mut processes = [operator];
            if let Err(err) = tokio::task::spawn_blocking(move || {
                crate::process::stop_all(&mut processes, Duration::from_secs(5))
            })
            .await
            .unwrap_or_else(|e| Err(crate::Error::Survivors(e.to_string())))
            {
                problems.push(format!("operator: {err}"));
            }
        }
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
        if let Some(operator) = self.operator.take() {
            operator.signal(Signal::SIGKILL);
        }
        if let Some(runtime) = self.client_host.take() {
            runtime.shutdown_background();
        }
        // The cluster stops itself, nodes included, when dropped.
        drop(self.cluster.take());
    }
}

/// An admin client whose every request ends within [`REQUEST_TIMEOUT`], so a hung API server
/// cannot stall a scenario past its bounded waits.
async fn bounded_client(kubeconfig: &Path) -> Result<kube::Client, ScenarioError> {
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
