//! The local cluster: generates the PKI and kubeconfigs into a cluster folder, starts etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler as background processes with their
//! logs under `<dir>/logs/`, waits until they are healthy and the `default` namespace and service
//! account exist, then (with nodes) starts metrics-server and waits until the API server serves
//! `metrics.k8s.io` through it ([`crate::metrics_server`]), starts the real nodes
//! ([`crate::nodes`]) and waits until they are Ready; and stops it all again.
//!
//! Without nodes the control plane listens on 127.0.0.1 only. With nodes it listens on the host's
//! address on the node network (10.250.0.1), which the nodes reach and which the `kubernetes`
//! Service points at, so pods reach the API server as in any cluster. Nodes change the host
//! (a bridge, network namespaces, cgroups), so one cluster with nodes runs on a machine at a
//! time: a second waits for the first to stop.
//!
//! A [`Cluster`] value owns its processes and stops them when dropped, so a test that panics still
//! leaves nothing behind. The command line detaches instead ([`Cluster::detach`]) and a later
//! `cluster down` finds the processes through `<dir>/state.json`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::{Error, Result};
use crate::kubeconfig;
use crate::metrics_server;
use crate::nodes::{self, host, plan::Plan};
use crate::pki::{METRICS_SERVER_USER, Pki, PkiOptions};
use crate::process::{self, Record, Spawned};
use crate::tools::{self, Tools};

/// The Service IP range; kube-proxy on the nodes routes it.
pub const SERVICE_CIDR: &str = nodes::plan::SERVICE_CIDR;

/// The lock a cluster with nodes holds while it runs (one at a time per machine).
const NODES_LOCK: &str = "/run/longconn-e2e-nodes.lock";
/// How long `up` waits for another cluster with nodes to stop.
const NODES_LOCK_WAIT: Duration = Duration::from_secs(45 * 60);

/// The controllers kube-controller-manager runs: what Deployments, ReplicaSets, PDBs, Services,
/// garbage collection, namespaces, service accounts, autoscaling and node health need.
pub const CONTROLLERS: [&str; 16] = [
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "garbage-collector-controller",
    "horizontal-pod-autoscaler-controller",
    "namespace-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "replicaset-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
    "service-cidr-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
];

/// How often readiness checks are repeated.
const POLL: Duration = Duration::from_millis(250);

/// Where and how to run a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster folder: PKI, kubeconfigs, etcd data, logs and the state file.
    pub dir: PathBuf,
    /// The folder `make tools` built the binaries into.
    pub tools_dir: PathBuf,
    /// How long each component may take to become healthy.
    pub ready_timeout: Duration,
    /// How long each component may take to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// How many real nodes to start (0: the control plane only, on 127.0.0.1).
    pub nodes: usize,
    /// The image archives `make images` wrote, loaded into every node.
    pub images_dir: PathBuf,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            dir: default_cluster_dir(),
            tools_dir: tools::default_tools_dir(),
            ready_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            nodes: 0,
            images_dir: nodes::default_images_dir(),
        }
    }
}

/// `<repository>/.cluster`.
pub fn default_cluster_dir() -> PathBuf {
    tools::repository_root().join(".cluster")
}

/// What `<dir>/state.json` holds: enough for another process to use and stop the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub server: String,
    pub kubeconfig: PathBuf,
    pub tools_dir: PathBuf,
    pub processes: Vec<Record>,
    /// How many nodes run (their host resources are removed at `down`).
    #[serde(default)]
    pub nodes: usize,
    /// Host-wide kernel settings as they were before the kubelets changed them.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// Paths inside a cluster folder.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    fn component_kubeconfigs(&self) -> PathBuf {
        self.dir.join("kubeconfigs")
    }
    fn nodes(&self) -> PathBuf {
        self.dir.join("nodes")
    }
    fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
}

/// A running local control plane.
pub struct Cluster {
    layout: Layout,
    tools: Tools,
    server: String,
    client: kube::Client,
    processes: Vec<Spawned>,
    stop_grace: Duration,
    /// The nodes' plan, when nodes run.
    plan: Option<Plan>,
    sysctls: Vec<(String, String)>,
    /// Held while nodes run.
    nodes_lock: Option<std::fs::File>,
    nodes_ready_after: Option<Duration>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.layout.dir)
            .field("server", &self.server)
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

/// Ports for every listener of the control plane.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
    metrics_server: u16,
}

impl Ports {
    /// Reserves distinct free ports on 127.0.0.1 (all listeners are held until every port is
    /// chosen, so none repeats).
    fn free() -> Result<Self> {
        let listeners = (0..6)
            .map(|_| TcpListener::bind(("127.0.0.1", 0)).map_err(Error::NoFreePort))
            .collect::<Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|listener| {
                listener
                    .local_addr()
                    .map(|addr| addr.port())
                    .map_err(Error::NoFreePort)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            etcd_client: ports[0],
            etcd_peer: ports[1],
            apiserver: ports[2],
            controller_manager: ports[3],
            scheduler: ports[4],
            metrics_server: ports[5],
        })
    }
}

impl Cluster {
    /// Starts a fresh cluster in `options.dir` and waits until it is usable. A cluster that is
    /// still running from that folder is an error; leftovers of a stopped one are replaced.
    pub async fn up(options: ClusterOptions) -> Result<Self> {
        let tools = Tools::find(&options.tools_dir)?;
        std::fs::create_dir_all(&options.dir).map_err(Error::io("create", &options.dir))?;
        let dir =
            std::fs::canonicalize(&options.dir).map_err(Error::io("resolve", &options.dir))?;
        let layout = Layout { dir };
        clear_stopped(&layout, options.stop_grace)?;

        let plan = (options.nodes > 0).then(|| Plan::new(options.nodes, &layout.nodes()));
        let images = match &plan {
            Some(_) => nodes::image_archives(&options.images_dir)?,
            None => Vec::new(),
        };
        let nodes_lock = match &plan {
            Some(_) => Some(lock_nodes(&layout.dir).await?),
            None => None,
        };
        let address = match &plan {
            Some(plan) => {
                // What a killed cluster with nodes left goes first.
                host::clear()?;
                host::create_bridge(plan)?;
                plan.host_ip
            }
            None => Ipv4Addr::LOCALHOST,
        };
        let sysctls = if plan.is_some() {
            host::read_sysctls()
        } else {
            Vec::new()
        };
        let pki = Pki::generate_with(
            &layout.pki(),
            &PkiOptions {
                apiserver_ip: plan.as_ref().map(|plan| plan.host_ip),
                nodes: plan
                    .iter()
                    .flat_map(|plan| plan.nodes.iter().map(|node| (node.name.clone(), node.ip)))
                    .collect(),
            },
        )?;
        for folder in [
            layout.logs(),
            layout.etcd_data(),
            layout.component_kubeconfigs(),
        ] {
            std::fs::create_dir_all(&folder).map_err(Error::io("create", &folder))?;
        }
        let ports = Ports::free()?;
        let server = format!("https://{address}:{}", ports.apiserver);
        let kubeconfigs = layout.component_kubeconfigs();
        let controller_manager_kubeconfig = kubeconfigs.join("controller-manager.kubeconfig");
        let scheduler_kubeconfig = kubeconfigs.join("scheduler.kubeconfig");
        let metrics_server_kubeconfig = kubeconfigs.join("metrics-server.kubeconfig");
        kubeconfig::write(
            &layout.kubeconfig(),
            &server,
            &pki.ca.cert,
            "admin",
            &pki.admin,
        )?;
        kubeconfig::write(
            &controller_manager_kubeconfig,
            &server,
            &pki.ca.cert,
            "system:kube-controller-manager",
            &pki.controller_manager,
        )?;
        kubeconfig::write(
            &scheduler_kubeconfig,
            &server,
            &pki.ca.cert,
            "system:kube-scheduler",
            &pki.scheduler,
        )?;
        kubeconfig::write(
            &metrics_server_kubeconfig,
            &server,
            &pki.ca.cert,
            METRICS_SERVER_USER,
            &pki.metrics_server,
        )?;
        let client = admin_client(&layout.kubeconfig()).await?;

        let mut cluster = Cluster {
            layout,
            tools,
            server,
            client,
            processes: Vec::new(),
            stop_grace: options.stop_grace,
            plan,
            sysctls,
            nodes_lock,
            nodes_ready_after: None,
        };
        // From here on an error drops `cluster`, which stops whatever was started.
        let timeout = options.ready_timeout;

        let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        cluster.start(
            "etcd",
            vec![
                format!("--data-dir={}", cluster.layout.etcd_data().display()),
                format!("--listen-client-url={etcd_url}"),
                format!("--listen-peer-url=http://127.0.0.1:{}", ports.etcd_peer),
            ],
        )?;
        cluster.wait_etcd(ports.etcd_client, timeout).await?;

        let with_nodes = cluster.plan.is_some();
        cluster.start(
            "kube-apiserver",
            apiserver_args(&pki, &ports, &etcd_url, address, with_nodes),
        )?;
        cluster.wait_apiserver(timeout).await?;

        cluster.start(
            "kube-controller-manager",
            controller_manager_args(&pki, &ports, &controller_manager_kubeconfig),
        )?;
        cluster.start(
            "kube-scheduler",
            scheduler_args(&pki, &ports, &scheduler_kubeconfig),
        )?;
        cluster
            .wait_healthz(
                "kube-controller-manager",
                (Ipv4Addr::LOCALHOST, ports.controller_manager),
                &pki.ca.cert,
                timeout,
            )
            .await?;
        cluster
            .wait_healthz(
                "kube-scheduler",
                (Ipv4Addr::LOCALHOST, ports.scheduler),
                &pki.ca.cert,
                timeout,
            )
            .await?;
        cluster.wait_default_service_account(timeout).await?;
        if let Some(plan) = cluster.plan.clone() {
            cluster
                .start_metrics_server(
                    &pki,
                    &metrics_server_kubeconfig,
                    (address, ports.metrics_server),
                    timeout,
                )
                .await?;
            let control_plane = nodes::ControlPlane {
                pki: &pki,
                server: &cluster.server,
                tools: &cluster.tools,
                images: &images,
            };
            let ready_after = nodes::start(
                &plan,
                control_plane,
                &cluster.client,
                &mut cluster.processes,
                timeout,
            )
            .await;
            cluster.write_state()?;
            cluster.nodes_ready_after = Some(ready_after?);
        }
        tracing::info!(server = %cluster.server, dir = %cluster.layout.dir.display(), "cluster up");
        Ok(cluster)
    }

    /// How long the nodes took from the first node's start to all Ready (`None` without nodes).
    pub fn nodes_ready_after(&self) -> Option<Duration> {
        self.nodes_ready_after
    }

    /// The nodes' names, addresses and namespaces (`None` without nodes).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// A client authenticated as the cluster admin (group system:masters).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig, for `kubectl` and `helm`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.layout.kubeconfig()
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster folder.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// The tools folder the components were started from.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The log file of a component (`etcd`, `kube-apiserver`, ...).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.layout.log(component)
    }

    /// The processes of the cluster, as recorded in the state file.
    pub fn processes(&self) -> Vec<Record> {
        self.processes
            .iter()
            .map(|process| process.record.clone())
            .collect()
    }

    /// Fails if any component has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Spawned::check_running)
    }

    /// Stops every component (latest started first) and removes the state file.
    pub async fn down(mut self) -> Result<()> {
        let mut processes = std::mem::take(&mut self.processes);
        let layout = self.layout.clone();
        let grace = self.stop_grace;
        let nodes = self.take_nodes();
        tokio::task::spawn_blocking(move || stop(&layout, &mut processes, grace, nodes))
            .await
            .map_err(|join| Error::Survivors(format!("stopping task failed: {join}")))?
    }

    /// What stopping must undo on the host besides the processes; `None` without nodes.
    fn take_nodes(&mut self) -> Option<NodesTeardown> {
        self.plan.take().map(|_| NodesTeardown {
            sysctls: std::mem::take(&mut self.sysctls),
            lock: self.nodes_lock.take(),
        })
    }

    /// Leaves the components running after this value is dropped (and after this process exits);
    /// `longconn-e2e cluster down` stops them later.
    pub fn detach(mut self) {
        for process in &mut self.processes {
            process.detach();
        }
        self.processes.clear();
        // The nodes keep running; the lock file keeps naming this folder, so another `up` with
        // nodes refuses to start until `cluster down` has stopped them.
        self.plan = None;
        self.nodes_lock = None;
    }

    /// Starts metrics-server on `address:port` with its RBAC granted first (it reads the API
    /// server's authentication settings as it starts), registers it as the server of
    /// `metrics.k8s.io`, and waits until the API server reports that API Available.
    async fn start_metrics_server(
        &mut self,
        pki: &Pki,
        kubeconfig: &Path,
        (address, port): (Ipv4Addr, u16),
        timeout: Duration,
    ) -> Result<()> {
        metrics_server::grant(&self.client).await?;
        self.start(
            "metrics-server",
            metrics_server::args(pki, kubeconfig, address, port),
        )?;
        self.wait_healthz("metrics-server", (address, port), &pki.ca.cert, timeout)
            .await?;
        metrics_server::register(&self.client, pki, address, port).await?;
        let client = self.client.clone();
        self.wait_for(
            &format!("APIService {}", metrics_server::API_SERVICE),
            timeout,
            || {
                let client = client.clone();
                async move { metrics_server::unavailable(&client).await }
            },
        )
        .await
    }

    fn start(&mut self, component: &str, args: Vec<String>) -> Result<()> {
        let binary = self.tools.binary(component);
        let spawned = Spawned::start(component, &binary, &args, &self.layout.log(component))?;
        self.processes.push(spawned);
        self.write_state()
    }

    fn write_state(&self) -> Result<()> {
        let state = State {
            server: self.server.clone(),
            kubeconfig: self.layout.kubeconfig(),
            tools_dir: self.tools.dir().to_path_buf(),
            processes: self.processes(),
            nodes: self.plan.as_ref().map_or(0, |plan| plan.nodes.len()),
            sysctls: self.sysctls.clone(),
        };
        let path = self.layout.state();
        let text = serde_json::to_string_pretty(&state).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(Error::io("write", &path))
    }

    /// Polls `check` until it returns `Ok(None)` (ready) or `timeout` passes; `Ok(Some(why))` is
    /// "not yet". Also fails as soon as a component exits.
    async fn wait_for<F, Fut>(&mut self, what: &str, timeout: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<String>>,
    {
        let started = Instant::now();
        let mut last = String::from("not checked yet");
        while started.elapsed() < timeout {
            self.check_running()?;
            match tokio::time::timeout(POLL * 20, check()).await {
                Ok(None) => {
                    tracing::debug!(what, elapsed = ?started.elapsed(), "ready");
                    return Ok(());
                }
                Ok(Some(why)) => last = why,
                Err(_) => last = "check timed out".to_string(),
            }
            tokio::time::sleep(POLL).await;
        }
        self.check_running()?;
        Err(Error::NotReady {
            what: what.to_string(),
            after: timeout,
            last,
        })
    }

    async fn wait_etcd(&mut self, port: u16, timeout: Duration) -> Result<()> {
        self.wait_for("etcd /health", timeout, || async move {
            match http_get_loopback(port, "/health", 64 * 1024).await {
                Ok(body) if body.contains("\"health\":\"true\"") => None,
                Ok(body) => Some(body),
                Err(err) => Some(err.to_string()),
            }
        })
        .await
    }

    async fn wait_apiserver(&mut self, timeout: Duration) -> Result<()> {
        let client = self.client.clone();
        self.wait_for("kube-apiserver /readyz", timeout, || {
            let client = client.clone();
            async move { get_ok(&client, "/readyz").await }
        })
        .await
    }

    async fn wait_healthz(
        &mut self,
        component: &str,
        (address, port): (Ipv4Addr, u16),
        ca: &Path,
        timeout: Duration,
    ) -> Result<()> {
        let client = anonymous_client(address, port, ca)?;
        self.wait_for(&format!("{component} /healthz"), timeout, || {
            let client = client.clone();
            async move { get_ok(&client, "/healthz").await }
        })
        .await
    }

    async fn wait_default_service_account(&mut self, timeout: Duration) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        self.wait_for("namespace and service account default", timeout, || {
            let namespaces = namespaces.clone();
            let accounts = accounts.clone();
            async move {
                match namespaces.get_opt("default").await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Some("namespace default missing".to_string()),
                    Err(err) => return Some(err.to_string()),
                }
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => None,
                    Ok(None) => Some("service account default/default missing".to_string()),
                    Err(err) => Some(err.to_string()),
                }
            }
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.processes.is_empty() && self.plan.is_none() {
            return;
        }
        let mut processes = std::mem::take(&mut self.processes);
        let nodes = self.take_nodes();
        if let Err(err) = stop(&self.layout, &mut processes, self.stop_grace, nodes) {
            tracing::error!(dir = %self.layout.dir.display(), %err, "stopping the cluster failed");
        }
    }
}

/// The host-wide state a cluster with nodes restores when it stops.
struct NodesTeardown {
    sysctls: Vec<(String, String)>,
    lock: Option<std::fs::File>,
}

fn stop(
    layout: &Layout,
    processes: &mut [Spawned],
    grace: Duration,
    nodes: Option<NodesTeardown>,
) -> Result<()> {
    processes.reverse();
    let stopped = process::stop_all(processes, grace);
    if let Some(nodes) = nodes {
        // Containers and shims are not the control plane's children: the nodes' cgroups hold
        // them all.
        host::clear()?;
        host::restore_sysctls(&nodes.sysctls);
        if let Some(lock) = nodes.lock {
            let _ = lock.set_len(0);
        }
    }
    stopped?;
    remove_if_present(&layout.state())
}

/// Takes the machine-wide lock for clusters with nodes, waiting while another holds it. The lock
/// file names the folder of the cluster that holds it (or that detached with its nodes running:
/// `cluster up` from the command line), and a cluster still running from there is an error.
async fn lock_nodes(dir: &Path) -> Result<std::fs::File> {
    let path = Path::new(NODES_LOCK);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))?;
    let started = Instant::now();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                use std::io::{Read as _, Seek as _, Write as _};
                let mut owner = String::new();
                file.read_to_string(&mut owner)
                    .map_err(Error::io("read", path))?;
                let owner = PathBuf::from(owner.trim());
                if !owner.as_os_str().is_empty() && owner != dir {
                    let state = read_state(&Layout { dir: owner.clone() }.state())
                        .ok()
                        .flatten();
                    if state.is_some_and(|state| state.processes.iter().any(process::is_running)) {
                        return Err(Error::AlreadyRunning(owner));
                    }
                }
                file.set_len(0).map_err(Error::io("write", path))?;
                file.rewind().map_err(Error::io("write", path))?;
                file.write_all(dir.display().to_string().as_bytes())
                    .map_err(Error::io("write", path))?;
                return Ok(file);
            }
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < NODES_LOCK_WAIT => {
                if !told {
                    tracing::info!(
                        lock = NODES_LOCK,
                        "another cluster with nodes runs: waiting"
                    );
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::NotReady {
                    what: format!("the lock {NODES_LOCK}"),
                    after: NODES_LOCK_WAIT,
                    last: "another cluster with nodes still runs".into(),
                });
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(Error::io("lock", path)(err)),
        }
    }
}

/// Stops the cluster recorded in `dir` by another process (`longconn-e2e cluster down`). A folder
/// with no state file is already down.
pub fn down_dir(dir: &Path, grace: Duration) -> Result<()> {
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let Some(state) = read_state(&layout.state())? else {
        return Ok(());
    };
    let mut records = state.processes;
    records.reverse();
    let stopped = process::stop_records(&records, grace);
    if state.nodes > 0 {
        host::clear()?;
        host::restore_sysctls(&state.sysctls);
        let owner = std::fs::read_to_string(NODES_LOCK).unwrap_or_default();
        if Path::new(owner.trim()) == dir {
            let _ = std::fs::write(NODES_LOCK, "");
        }
    }
    stopped?;
    remove_if_present(&layout.state())
}

/// Adds a process started beside the cluster in `dir` (an operator, say) to its state file, so
/// `cluster down` stops it too when the process that started it could not (it stops newest
/// first, so before the control plane). A record whose process is gone is skipped there, and a
/// PID reused since is never signalled.
pub fn record_process(dir: &Path, record: &Record) -> Result<()> {
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let path = layout.state();
    let Some(mut state) = read_state(&path)? else {
        return Err(Error::io("record a process in", &path)(
            std::io::Error::new(std::io::ErrorKind::NotFound, "no cluster state"),
        ));
    };
    state.processes.push(record.clone());
    let text = serde_json::to_string_pretty(&state).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(Error::io("write", &path))
}

/// The state file of the cluster in `dir`, if one is recorded.
pub fn read_state(path: &Path) -> Result<Option<State>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::State {
                path: path.to_path_buf(),
                source,
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::io("read", path)(err)),
    }
}

/// The shell lines that point `kubectl` and `helm` at the cluster in `dir`.
pub fn env_lines(dir: &Path, tools_dir: &Path) -> String {
    let kubeconfig = Layout {
        dir: dir.to_path_buf(),
    }
    .kubeconfig();
    format!(
        "export KUBECONFIG={}\nexport PATH={}:\"$PATH\"\n",
        shell_quote(&kubeconfig.display().to_string()),
        shell_quote(&tools_dir.display().to_string()),
    )
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Before a new `up`: refuse if a recorded process still runs, otherwise clear what a previous
/// cluster left (only the folder's own entries, never anything else in it).
fn clear_stopped(layout: &Layout, grace: Duration) -> Result<()> {
    if let Some(state) = read_state(&layout.state())? {
        if state.processes.iter().any(process::is_running) {
            return Err(Error::AlreadyRunning(layout.dir.clone()));
        }
        // Members of groups whose leaders died (none expected) go too.
        process::stop_records(&state.processes, grace)?;
    }
    for path in [layout.state(), layout.kubeconfig()] {
        remove_if_present(&path)?;
    }
    for folder in [
        layout.pki(),
        layout.logs(),
        layout.etcd_data(),
        layout.component_kubeconfigs(),
        layout.nodes(),
    ] {
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("remove", &folder)(err)),
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Error::io("remove", path)(err)),
    }
}

fn path_arg(flag: &str, path: &Path) -> String {
    format!("--{flag}={}", path.display())
}

fn apiserver_args(
    pki: &Pki,
    ports: &Ports,
    etcd_url: &str,
    address: Ipv4Addr,
    with_nodes: bool,
) -> Vec<String> {
    let mut args = vec![
        format!("--advertise-address={address}"),
        format!("--bind-address={address}"),
        format!("--secure-port={}", ports.apiserver),
        format!("--etcd-servers={etcd_url}"),
        path_arg("tls-cert-file", &pki.apiserver.cert),
        path_arg("tls-private-key-file", &pki.apiserver.key),
        path_arg("client-ca-file", &pki.ca.cert),
        "--authorization-mode=Node,RBAC".into(),
        // On top of the default admission plugins, as kubeadm does.
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        path_arg("service-account-key-file", &pki.service_account_pub),
        path_arg("service-account-signing-key-file", &pki.service_account_key),
        path_arg("requestheader-client-ca-file", &pki.front_proxy_ca.cert),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        path_arg("proxy-client-cert-file", &pki.front_proxy_client.cert),
        path_arg("proxy-client-key-file", &pki.front_proxy_client.key),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    if with_nodes {
        // `kubectl logs`, `exec` and `port-forward` through the kubelets, by their node address.
        args.extend([
            path_arg(
                "kubelet-client-certificate",
                &pki.apiserver_kubelet_client.cert,
            ),
            path_arg("kubelet-client-key", &pki.apiserver_kubelet_client.key),
            path_arg("kubelet-certificate-authority", &pki.ca.cert),
            "--kubelet-preferred-address-types=InternalIP".into(),
            // APIServices (metrics-server's) are reached at their endpoints, as the host does
            // not route the Service range; only the nodes do.
            "--enable-aggregator-routing=true".into(),
        ]);
    } else {
        // 127.0.0.1 is not a valid endpoint address, so the `kubernetes` Service gets none.
        args.push("--endpoint-reconciler-type=none".into());
    }
    args
}

/// The flags kube-controller-manager and kube-scheduler share: their API identity, delegated
/// authentication and authorization, and a serving certificate from the cluster CA on 127.0.0.1.
fn delegated_component_args(
    pki: &Pki,
    kubeconfig: &Path,
    port: u16,
    serving: &crate::pki::CertFiles,
) -> Vec<String> {
    vec![
        path_arg("kubeconfig", kubeconfig),
        path_arg("authentication-kubeconfig", kubeconfig),
        path_arg("authorization-kubeconfig", kubeconfig),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        path_arg("tls-cert-file", &serving.cert),
        path_arg("tls-private-key-file", &serving.key),
        path_arg("client-ca-file", &pki.ca.cert),
        path_arg("requestheader-client-ca-file", &pki.front_proxy_ca.cert),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

fn controller_manager_args(pki: &Pki, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    let mut args = delegated_component_args(
        pki,
        kubeconfig,
        ports.controller_manager,
        &pki.controller_manager_serving,
    );
    args.extend([
        path_arg("root-ca-file", &pki.ca.cert),
        path_arg("service-account-private-key-file", &pki.service_account_key),
        "--use-service-account-credentials=true".into(),
        format!("--controllers={}", CONTROLLERS.join(",")),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!("--cluster-name={}", kubeconfig::CLUSTER_NAME),
    ]);
    args
}

fn scheduler_args(pki: &Pki, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    delegated_component_args(pki, kubeconfig, ports.scheduler, &pki.scheduler_serving)
}

async fn admin_client(kubeconfig_path: &Path) -> Result<kube::Client> {
    let kubeconfig_error = |source| Error::Kubeconfig {
        path: kubeconfig_path.to_path_buf(),
        source,
    };
    let kubeconfig =
        kube::config::Kubeconfig::read_from(kubeconfig_path).map_err(kubeconfig_error)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(kubeconfig_error)?;
    kube::Client::try_from(config).map_err(Error::kube("build the admin client"))
}

/// A client with no credentials for a component's secure port, trusting the cluster CA.
fn anonymous_client(address: Ipv4Addr, port: u16, ca: &Path) -> Result<kube::Client> {
    let url = format!("https://{address}:{port}");
    let uri: http::Uri = url
        .parse()
        .map_err(|err: http::uri::InvalidUri| Error::NotReady {
            what: url.clone(),
            after: Duration::ZERO,
            last: err.to_string(),
        })?;
    let mut config = kube::Config::new(uri);
    config.root_cert_file = Some(ca.to_path_buf());
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    kube::Client::try_from(config).map_err(Error::kube(format!("build a client for {url}")))
}

/// `None` if `GET path` answers 200 `ok`, else what it answered.
async fn get_ok(client: &kube::Client, path: &str) -> Option<String> {
    let request = match http::Request::get(path).body(Vec::new()) {
        Ok(request) => request,
        Err(err) => return Some(err.to_string()),
    };
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => None,
        Ok(body) => Some(body),
        Err(err) => Some(err.to_string()),
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (etcd's client port and the operator's metrics port speak
/// HTTP without TLS here); the body, of at most `limit` bytes with the head.
pub(crate) async fn http_get_loopback(
    port: u16,
    path: &str,
    limit: u64,
) -> std::io::Result<String> {
    http_get(
        std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        path,
        limit,
    )
    .await
}

/// A plain HTTP/1.0 GET of `path` on `addr` (a gateway's admin port speaks HTTP without TLS);
/// the body, of at most `limit` bytes with the head, whatever the status.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    limit: u64,
) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.take(limit).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_else(|| text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_quote_paths_for_the_shell() {
        let lines = env_lines(Path::new("/tmp/it's here"), Path::new("/opt/tools"));
        assert_eq!(
            lines,
            "export KUBECONFIG='/tmp/it'\\''s here/kubeconfig'\nexport PATH='/opt/tools':\"$PATH\"\n"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = Ports::free().expect("ports");
        let mut all = vec![
            ports.etcd_client,
            ports.etcd_peer,
            ports.apiserver,
            ports.controller_manager,
            ports.scheduler,
            ports.metrics_server,
        ];
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn up_without_tools_names_the_missing_binary_and_make_tools() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = runtime
            .block_on(Cluster::up(ClusterOptions {
                dir: dir.path().join("cluster"),
                tools_dir: dir.path().join("no-tools"),
                ..ClusterOptions::default()
            }))
            .expect_err("no tools");
        let message = err.to_string();
        assert!(message.contains("etcd not found"), "{message}");
        assert!(message.contains("make tools"), "{message}");
    }
}
