//! The pod runner: stands in for the kubelet, and only for it. It registers nodes ([`node`]),
//! watches the pods the scheduler binds to them, and runs each container as a host process (see
//! [`images`]), with the environment the kubelet would give it ([`env`]), probes ([`probe`]),
//! restarts, termination and status ([`pod`]).
//!
//! Pod IPs are 127.x addresses for now: apps must listen on `$(POD_IP)` (downward API), not on
//! 0.0.0.0, and such addresses cannot appear in EndpointSlices. A network namespace per pod is the
//! next step.

pub mod env;
pub mod images;
pub mod node;
pub mod pod;
pub mod probe;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::Result;
use images::ImageTable;
use pod::PodContext;

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
    /// Pod IPs are `127.<second octet>.x.y`.
    pub pod_ip_second_octet: u8,
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
            pod_ip_second_octet: 77,
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
}

impl PodRunner {
    /// Registers the nodes, reports them Ready and starts running the pods bound to them.
    pub async fn start(client: kube::Client, options: PodRunnerOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.work_dir)
            .map_err(crate::Error::io("create", &options.work_dir))?;
        let nodes = options.node_names();
        for name in &nodes {
            node::register(&client, name).await?;
            node::heartbeat(&client, name, "127.0.0.1").await?;
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for name in nodes.clone() {
            let client = client.clone();
            let mut stop = shutdown.subscribe();
            let period = options.heartbeat;
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {}
                        _ = stop.changed() => return,
                    }
                    if let Err(err) = node::heartbeat(&client, &name, "127.0.0.1").await {
                        tracing::warn!(node = %name, %err, "heartbeat failed");
                    }
                }
            });
        }
        let context = Arc::new(PodContext {
            client: client.clone(),
            images: options.images.clone(),
            work_dir: options.work_dir.clone(),
            host_ip: "127.0.0.1".into(),
            apiserver_host: options.apiserver_host.clone(),
            apiserver_port: options.apiserver_port,
        });
        tasks.spawn(watch_pods(
            context,
            nodes.clone(),
            options.pod_ip_second_octet,
            shutdown.subscribe(),
        ));
        Ok(Self {
            client,
            nodes,
            shutdown,
            tasks,
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
        for name in &self.nodes {
            node::deregister(&self.client, name).await?;
        }
        Ok(())
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Watches pods bound to `nodes` and gives each its task; a pod's task gets every later version
/// of the object.
async fn watch_pods(
    context: Arc<PodContext>,
    nodes: Vec<String>,
    second_octet: u8,
    mut shutdown: watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut stream = watcher(pods, config).boxed();
    let mut running: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut pod_tasks = JoinSet::new();
    let mut next_ip: u32 = 2;
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
        let ip = pod_ip(second_octet, next_ip);
        next_ip = next_ip.wrapping_add(1).max(2);
        let (sender, receiver) = watch::channel(pod);
        running.insert(uid, sender);
        pod_tasks.spawn(pod::run(context.clone(), receiver, shutdown.clone(), ip));
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

/// The `index`th pod IP: `127.<second_octet>.<index / 250>.<index % 250 + 2>`-ish, never `.0`,
/// `.1` or `.255`.
fn pod_ip(second_octet: u8, index: u32) -> String {
    let third = u8::try_from((index / 250) % 256).unwrap_or(0);
    let fourth = u8::try_from(index % 250 + 2).unwrap_or(2);
    Ipv4Addr::new(127, second_octet, third, fourth).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_skip_network_and_broadcast_addresses() {
        assert_eq!(pod_ip(77, 0), "127.77.0.2");
        assert_eq!(pod_ip(77, 249), "127.77.0.251");
        assert_eq!(pod_ip(77, 250), "127.77.1.2");
    }

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
