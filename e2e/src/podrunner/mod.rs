//! The pod runner: stands in for the kubelet, and only for it. It registers nodes ([`node`]),
//! watches the pods the scheduler binds to them, and runs each container as a host process (see
//! [`images`]), with the environment the kubelet would give it ([`env`]), its own network
//! namespace and IP ([`network`]), its volumes ([`volumes`]) mounted in a mount namespace per
//! container ([`mounts`]), probes ([`probe`]), restarts, termination and status ([`pod`]).

pub mod env;
pub mod images;
pub mod mounts;
pub mod network;
pub mod node;
pub mod pod;
pub mod probe;
pub mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Result;
use images::ImageTable;
use network::{Network, NetworkOptions};
use pod::PodContext;

/// The file in the work folder that names the bridge of the runner using it, for
/// [`cleanup_work_dir`].
const BRIDGE_FILE: &str = "bridge";

/// How the pod runner runs.
#[derive(Debug, Clone)]
pub struct PodRunnerOptions {
    /// How many nodes to register.
    pub nodes: usize,
    /// Node names are `<prefix>-0`, `<prefix>-1`, ...
    pub node_prefix: String,
    pub images: ImageTable,
    /// Pod folders (container logs, working directories).
    pub work_dir: PathBuf,
    /// The API server as pods reach it (`KUBERNETES_SERVICE_HOST` / `_PORT`).
    pub apiserver_host: String,
    pub apiserver_port: u16,
    /// How often nodes report status and renew their leases.
    pub heartbeat: Duration,
    /// Pod networking: a bridge and a network namespace per pod, else 127.x addresses.
    pub network: NetworkOptions,
}

impl PodRunnerOptions {
    /// Options for `nodes` nodes of a cluster whose API server is `server` (`https://host:port`).
    pub fn new(server: &str, work_dir: PathBuf, images: ImageTable) -> Self {
        let authority = server.trim_start_matches("https://");
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "443"));
        Self {
            nodes: 3,
            node_prefix: "node".into(),
            images,
            work_dir,
            apiserver_host: host.to_string(),
            apiserver_port: port.parse().unwrap_or(443),
            heartbeat: Duration::from_secs(10),
            network: NetworkOptions::default(),
        }
    }

    /// The names of the nodes.
    pub fn node_names(&self) -> Vec<String> {
        (0..self.nodes)
            .map(|i| format!("{}-{i}", self.node_prefix))
            .collect()
    }
}

/// A running pod runner; [`PodRunner::stop`] (or dropping it) kills every container process.
pub struct PodRunner {
    client: kube::Client,
    nodes: Vec<String>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    network: Arc<Network>,
    work_dir: PathBuf,
}

impl PodRunner {
    /// Registers the nodes, reports them Ready and starts running the pods bound to them.
    pub async fn start(client: kube::Client, options: PodRunnerOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.work_dir)
            .map_err(crate::Error::io("create", &options.work_dir))?;
        let network = Network::setup(&options.network).map_err(|why| crate::Error::Io {
            action: "create the pod bridge",
            path: std::path::Path::new("/sys/class/net").join(&options.network.bridge),
            source: std::io::Error::other(why),
        })?;
        let network = Arc::new(network);
        if let Some(bridge) = network.bridge() {
            let file = options.work_dir.join(BRIDGE_FILE);
            std::fs::write(&file, bridge).map_err(crate::Error::io("write", &file))?;
        }
        let host_ip = network.host_ip();
        let nodes = options.node_names();
        for name in &nodes {
            node::register(&client, name).await?;
            node::heartbeat(&client, name, &host_ip).await?;
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for name in nodes.clone() {
            let client = client.clone();
            let mut stop = shutdown.subscribe();
            let period = options.heartbeat;
            let host_ip = host_ip.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {}
                        _ = stop.changed() => return,
                    }
                    if let Err(err) = node::heartbeat(&client, &name, &host_ip).await {
                        tracing::warn!(node = %name, %err, "heartbeat failed");
                    }
                }
            });
        }
        let (volume_events, volume_receiver) = watch::channel(0u64);
        tasks.spawn(watch_volume_sources(
            client.clone(),
            volume_events,
            shutdown.subscribe(),
        ));
        let context = Arc::new(PodContext {
            client: client.clone(),
            images: options.images.clone(),
            work_dir: options.work_dir.clone(),
            host_ip,
            apiserver_host: options.apiserver_host.clone(),
            apiserver_port: options.apiserver_port,
            volume_events: volume_receiver,
        });
        tasks.spawn(watch_pods(
            context,
            nodes.clone(),
            network.clone(),
            shutdown.subscribe(),
        ));
        Ok(Self {
            client,
            nodes,
            shutdown,
            tasks,
            network,
            work_dir: options.work_dir,
        })
    }

    /// The registered node names.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Kills every container process, stops the heartbeats and deletes the nodes.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.tasks.shutdown().await;
        self.network.teardown();
        let _ = std::fs::remove_file(self.work_dir.join(BRIDGE_FILE));
        for name in &self.nodes {
            node::deregister(&self.client, name).await?;
        }
        Ok(())
    }

    /// The bridge pods are attached to, if pods get network namespaces.
    pub fn bridge(&self) -> Option<&str> {
        self.network.bridge()
    }
}

impl Drop for PodRunner {
    /// Pod tasks are aborted (each kills its processes and deletes its network namespace when
    /// dropped); the bridge goes at once.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
        self.network.teardown();
    }
}

/// Removes what a pod runner that used `work_dir` left behind when it was killed: the container
/// processes still running in its pod folders, its bridge and the pods' network namespaces.
/// `cluster down` calls it for `<cluster dir>/pods`. A runner that stopped cleanly removed its
/// bridge file, and then nothing is touched.
pub fn cleanup_work_dir(work_dir: &std::path::Path) {
    let file = work_dir.join(BRIDGE_FILE);
    if let Ok(bridge) = std::fs::read_to_string(&file) {
        if let Err(err) = crate::process::kill_within(work_dir) {
            tracing::warn!(%err, "container processes survived SIGKILL");
        }
        let bridge = bridge.trim();
        if !bridge.is_empty() {
            network::cleanup(bridge);
        }
        let _ = std::fs::remove_file(&file);
    }
}

/// Bumps `events` whenever any Secret or ConfigMap changes, so pods sync their volumes again.
async fn watch_volume_sources(
    client: kube::Client,
    events: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let secrets = watcher(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|event| event.map(|_| ()));
    let config_maps = watcher(Api::<ConfigMap>::all(client), watcher::Config::default())
        .map(|event| event.map(|_| ()));
    let mut stream = futures::stream::select(secrets.boxed(), config_maps.boxed());
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = shutdown.changed() => return,
        };
        match event {
            Some(Ok(())) => events.send_modify(|count| *count = count.wrapping_add(1)),
            Some(Err(err)) => {
                tracing::debug!(%err, "secret/configMap watch error; the watcher retries");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => return,
        }
    }
}

/// Watches pods bound to `nodes` and gives each its task; a pod's task gets every later version
/// of the object.
async fn watch_pods(
    context: Arc<PodContext>,
    nodes: Vec<String>,
    network: Arc<Network>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut stream = watcher(pods, config).boxed();
    let mut running: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut pod_tasks = JoinSet::new();
    let mut next_index: u32 = 0;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = shutdown.changed() => break,
        };
        let Some(event) = event else { break };
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                // Deleted without us (force deletion): the task sees it gone and stops it.
                if let Some(uid) = &pod.metadata.uid
                    && let Some(sender) = running.remove(uid)
                {
                    let mut gone = pod.clone();
                    if gone.metadata.deletion_timestamp.is_none() {
                        gone.metadata.deletion_timestamp =
                            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                k8s_openapi::jiff::Timestamp::now(),
                            ));
                    }
                    gone.metadata.deletion_grace_period_seconds = Some(0);
                    let _ = sender.send(gone);
                }
                continue;
            }
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(%err, "pod watch error; the watcher retries");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let bound_here = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_ref())
            .is_some_and(|name| nodes.contains(name));
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if !bound_here {
            continue;
        }
        if let Some(sender) = running.get(&uid) {
            let _ = sender.send(pod);
            continue;
        }
        let finished = pod
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
        if finished {
            continue;
        }
        let index = next_index;
        next_index = (next_index + 1) % 60_000;
        let pod_network = match network.pod(index) {
            Ok(pod_network) => pod_network,
            Err(why) => {
                tracing::warn!(%why, pod = ?pod.metadata.name, "cannot set up the pod's network");
                continue;
            }
        };
        let (sender, receiver) = watch::channel(pod);
        running.insert(uid, sender);
        pod_tasks.spawn(pod::run(
            context.clone(),
            receiver,
            shutdown.clone(),
            pod_network,
        ));
    }
    // Shutdown: every pod task kills its processes when it sees the flag.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pod_tasks.is_empty() {
        match tokio::time::timeout_at(deadline, pod_tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_the_api_server_from_its_url() {
        let options = PodRunnerOptions::new(
            "https://127.0.0.1:39321",
            PathBuf::from("/tmp/pods"),
            ImageTable::new(),
        );
        assert_eq!(options.apiserver_host, "127.0.0.1");
        assert_eq!(options.apiserver_port, 39321);
        assert_eq!(options.node_names(), ["node-0", "node-1", "node-2"]);
    }
}
