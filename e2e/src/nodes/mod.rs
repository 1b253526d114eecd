//! Real Kubernetes nodes, run the way kind runs them but without Docker: each node is a network
//! namespace on a bridge the e2e owns (its own address, routes to the other nodes' pods) and a
//! private mount namespace (its own `/run`, `/var/lib` and `/var/log`, so what a node writes to
//! fixed paths vanishes with it), in which upstream containerd (with runc and the CNI plugins),
//! the kubelet and kube-proxy run. Pods run the project's own OCI images, imported into each
//! node's containerd before its kubelet starts.
//!
//! Start-up of one node, in order: folders and configuration files ([`config`]), its cgroups
//! (everything it runs stays under `longconn-e2e/<node>` in every cgroup v1 hierarchy, so
//! stopping it can kill every process it started), its network namespace ([`host`]), a holder
//! process that owns the mount namespace, containerd, the images, the kubelet and kube-proxy.
//! [`host::clear`] undoes all of it from names alone.

pub mod config;
pub mod host;
pub mod plan;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::error::{Error, Result};
use crate::kubeconfig;
use crate::pki::{NodeCerts, Pki};
use crate::process::Spawned;
use crate::tools::Tools;
use plan::{NodePlan, Plan};

/// The pod sandbox image `make images` builds from Kubernetes' own pause.c.
pub const SANDBOX_IMAGE: &str = "localhost/longconn/pause:3.10.2";
/// Where `make images` writes the image archives, unless `LONGCONN_E2E_IMAGES_DIR` says otherwise.
pub const IMAGES_DIR_ENV: &str = "LONGCONN_E2E_IMAGES_DIR";

/// The mounts a node's holder makes in its new mount namespace before it sleeps: a node of its
/// own under the paths a kubelet and containerd write whatever their flags say.
const HOLDER_SCRIPT: &str = "set -e
for path in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 longconn-node \"$path\"; done
exec sleep infinity";

/// `<repository>/.images`, or `$LONGCONN_E2E_IMAGES_DIR`.
pub fn default_images_dir() -> PathBuf {
    std::env::var_os(IMAGES_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tools::repository_root().join(".images"))
}

/// The image archives in `dir` (`*.oci.tar`); an error naming `make images` when there are none
/// or the sandbox image is missing.
pub fn image_archives(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing = || Error::ImagesMissing(dir.to_path_buf());
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| missing())?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(".oci.tar"))
        .collect();
    archives.sort();
    let has_pause = archives
        .iter()
        .any(|path| path.file_name().is_some_and(|name| name == "pause.oci.tar"));
    if !has_pause {
        return Err(missing());
    }
    Ok(archives)
}

/// What the nodes need from the control plane.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlane<'a> {
    pub pki: &'a Pki,
    /// The API server's URL on the node network.
    pub server: &'a str,
    pub tools: &'a Tools,
    pub images: &'a [PathBuf],
}

/// Starts every node of `plan`, appending their processes to `processes` as they start (so a
/// failure part-way still stops what was started), and waits until all are Ready.
pub async fn start(
    plan: &Plan,
    control_plane: ControlPlane<'_>,
    client: &kube::Client,
    processes: &mut Vec<Spawned>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    host::create_cgroup(plan::CGROUP_ROOT)?;
    for node in &plan.nodes {
        let certs = control_plane
            .pki
            .nodes
            .iter()
            .find(|certs| certs.name == node.name)
            .ok_or_else(|| Error::Host {
                action: format!("start {}", node.name),
                detail: "no certificates for it in the PKI".into(),
            })?;
        start_node(plan, node, certs, control_plane, processes).await?;
    }
    host::add_host_routes(plan)?;
    host::create_client_network(plan)?;
    wait_ready(plan, client, processes, timeout).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for node in &plan.nodes {
        let patch =
            serde_json::json!({"spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}});
        nodes
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(format!("set the pod CIDR of {}", node.name)))?;
    }
    Ok(started.elapsed())
}

async fn start_node(
    plan: &Plan,
    node: &NodePlan,
    certs: &NodeCerts,
    control_plane: ControlPlane<'_>,
    processes: &mut Vec<Spawned>,
) -> Result<()> {
    let pki = control_plane.pki;
    for folder in [node.dir.clone(), node.file("cni"), node.file("logs")] {
        std::fs::create_dir_all(&folder).map_err(Error::io("create", &folder))?;
    }
    let write = |name: &str, text: String| {
        let path = node.file(name);
        std::fs::write(&path, text).map_err(Error::io("write", &path))
    };
    write(
        "containerd.toml",
        config::containerd_toml(node, SANDBOX_IMAGE),
    )?;
    write("cni/10-longconn.conflist", config::cni_conflist(node))?;
    write(
        "kubelet.json",
        config::kubelet_config(
            node,
            config::KubeletFiles {
                client_ca: &pki.ca.cert,
                serving_cert: &certs.serving.cert,
                serving_key: &certs.serving.key,
            },
        ),
    )?;
    let kubelet_kubeconfig = node.file("kubelet.kubeconfig");
    let proxy_kubeconfig = node.file("kube-proxy.kubeconfig");
    kubeconfig::write(
        &kubelet_kubeconfig,
        control_plane.server,
        &pki.ca.cert,
        &format!("system:node:{}", node.name),
        &certs.client,
    )?;
    kubeconfig::write(
        &proxy_kubeconfig,
        control_plane.server,
        &pki.ca.cert,
        "system:kube-proxy",
        &pki.kube_proxy,
    )?;
    write(
        "kube-proxy.json",
        config::kube_proxy_config(node, &proxy_kubeconfig),
    )?;

    host::create_cgroup(&node.daemons_cgroup())?;
    host::create_cgroup(&node.pods_cgroup())?;
    host::create_node_network(plan, node)?;

    let log = |component: &str| node.file("logs").join(format!("{component}.log"));
    let netns = format!("--net=/run/netns/{}", node.netns);
    let holder = spawn_in_cgroup(
        node,
        "holder",
        command(
            "nsenter",
            &[
                &netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                HOLDER_SCRIPT,
            ],
        ),
        &log("holder"),
        processes,
    )?;
    wait_exec(holder, "sleep", Duration::from_secs(10)).map_err(|detail| Error::Host {
        action: format!("set up the mount namespace of {}", node.name),
        detail,
    })?;

    let tools = control_plane.tools;
    let in_node = |binary: PathBuf, args: Vec<String>| {
        let holder = holder.to_string();
        let mut all = vec![
            "-t".to_string(),
            holder,
            "-m".into(),
            "-n".into(),
            "--".into(),
            binary.display().to_string(),
        ];
        all.extend(args);
        let mut command = Command::new("nsenter");
        command.args(all);
        // containerd finds its shim next to itself, runc and iptables in /usr/sbin.
        command.env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                tools.dir().display()
            ),
        );
        command
    };

    let containerd_config = node.file("containerd.toml");
    spawn_in_cgroup(
        node,
        "containerd",
        in_node(
            tools.binary("containerd"),
            vec![format!("--config={}", containerd_config.display())],
        ),
        &log("containerd"),
        processes,
    )?;
    let socket = node.containerd_socket();
    wait_containerd(tools, &socket, processes, Duration::from_secs(30)).await?;
    for archive in control_plane.images {
        ctr(
            tools,
            &socket,
            &["images", "import", &archive.display().to_string()],
        )?;
    }

    let kubelet_config = node.file("kubelet.json");
    spawn_in_cgroup(
        node,
        "kubelet",
        in_node(
            tools.binary("kubelet"),
            vec![
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubelet_kubeconfig.display()),
                format!("--root-dir={}", node.file("kubelet").display()),
                format!("--hostname-override={}", node.name),
                format!("--node-ip={}", node.ip),
                format!(
                    "--node-labels=topology.kubernetes.io/zone={}",
                    config::zone(node.index)
                ),
                "--v=1".into(),
            ],
        ),
        &log("kubelet"),
        processes,
    )?;
    let proxy_config = node.file("kube-proxy.json");
    spawn_in_cgroup(
        node,
        "kube-proxy",
        in_node(
            tools.binary("kube-proxy"),
            vec![
                format!("--config={}", proxy_config.display()),
                "--v=1".into(),
            ],
        ),
        &log("kube-proxy"),
        processes,
    )?;
    Ok(())
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// Starts `command` as component `<node>/<component>` and moves it into the node's daemons
/// cgroup at once (before it has started anything of its own).
fn spawn_in_cgroup(
    node: &NodePlan,
    component: &str,
    command: Command,
    log: &Path,
    processes: &mut Vec<Spawned>,
) -> Result<i32> {
    let spawned = Spawned::start_command(&format!("{}/{component}", node.name), command, log)?;
    let pid = spawned.record.pid;
    processes.push(spawned);
    host::join_cgroup(&node.daemons_cgroup(), pid)?;
    Ok(pid)
}

/// Waits until process `pid` has exec'd `comm` (its set-up is done), or fails with what it is.
fn wait_exec(pid: i32, comm: &str, timeout: Duration) -> std::result::Result<(), String> {
    let started = Instant::now();
    loop {
        let current = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(|err| format!("process {pid} is gone: {err}"))?;
        if current.trim() == comm {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!("process {pid} is still {}", current.trim()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctr --address SOCKET --namespace k8s.io ARGS`.
fn ctr(tools: &Tools, socket: &Path, args: &[&str]) -> Result<String> {
    let ctr = tools.binary("ctr");
    let socket = socket.display().to_string();
    let mut all = vec!["--address", socket.as_str(), "--namespace", "k8s.io"];
    all.extend_from_slice(args);
    host::run(&ctr.display().to_string(), &all)
}

async fn wait_containerd(
    tools: &Tools,
    socket: &Path,
    processes: &mut [Spawned],
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        let last = match ctr(tools, socket, &["version"]) {
            Ok(_) => return Ok(()),
            Err(err) => err.to_string(),
        };
        if started.elapsed() > timeout {
            return Err(Error::NotReady {
                what: format!("containerd at {}", socket.display()),
                after: timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node of `plan` is registered and Ready, failing early when a node process
/// exits.
async fn wait_ready(
    plan: &Plan,
    client: &kube::Client,
    processes: &mut [Spawned],
    timeout: Duration,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        let last = match nodes.list(&Default::default()).await {
            Ok(list) => {
                let not_ready: Vec<&str> = plan
                    .nodes
                    .iter()
                    .map(|node| node.name.as_str())
                    .filter(|name| {
                        !list.items.iter().any(|node| {
                            node.metadata.name.as_deref() == Some(name) && is_ready(node)
                        })
                    })
                    .collect();
                if not_ready.is_empty() {
                    return Ok(());
                }
                format!("not Ready: {}", not_ready.join(", "))
            }
            Err(err) => err.to_string(),
        };
        if started.elapsed() > timeout {
            return Err(Error::NotReady {
                what: "the nodes".into(),
                after: timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True when the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// Runs `work` to completion on a thread of its own that joined network namespace `netns`
/// (`/run/netns/<netns>`, a client host's, say), on a runtime of that thread: every socket it
/// opens belongs to that namespace, as a program started there would.
pub async fn in_netns<F, Fut, T>(netns: &str, work: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let namespace = NetNs::open(netns)?;
    let path = namespace.path.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    let thread_path = path.clone();
    std::thread::Builder::new()
        .name(format!("netns-{netns}"))
        .spawn(move || {
            let outcome = namespace
                .join()
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(Error::io("start a runtime in", &thread_path))
                })
                .map(|runtime| runtime.block_on(work()));
            let _ = done.send(outcome);
        })
        .map_err(Error::io("start a thread for", &path))?;
    result.await.map_err(|_| Error::Host {
        action: format!("run in {}", path.display()),
        detail: "the thread ended without a result".into(),
    })?
}

/// A multi-threaded runtime whose threads all live in network namespace `netns`: its worker
/// threads are started from a thread that joined the namespace, and every thread a runtime
/// starts later is started by one of them, so every socket its tasks open belongs to `netns`.
/// Drop it with [`tokio::runtime::Runtime::shutdown_background`] from async code.
pub fn runtime_in_netns(netns: &str, threads: usize) -> Result<tokio::runtime::Runtime> {
    let namespace = NetNs::open(netns)?;
    let path = namespace.path.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                namespace.join()?;
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name(format!("netns-{netns}"))
                    .enable_all()
                    .build()
                    .map_err(Error::io("start a runtime in", &path))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Host {
                    action: format!("start a runtime in {}", path.display()),
                    detail: "the thread panicked".into(),
                })
            })
    })
}

/// The process of container `container_id` (`containerd://<id>`, as a pod's status gives it)
/// whose command line names `program`: containers run under a cgroup named after their ID.
pub fn container_process(container_id: &str, program: &str) -> Option<i32> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    if id.len() < 12 {
        return None;
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).ok()?;
            if !cgroup.lines().any(|line| line.ends_with(id)) {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(program)
                .then_some(pid)
        })
}

/// A network namespace of `ip netns` (`/run/netns/<name>`), opened to be joined.
struct NetNs {
    path: PathBuf,
    file: std::fs::File,
}

impl NetNs {
    fn open(name: &str) -> Result<Self> {
        let path = Path::new("/run/netns").join(name);
        let file = std::fs::File::open(&path).map_err(Error::io("open", &path))?;
        Ok(Self { path, file })
    }

    /// Moves the calling thread into the namespace (a namespace is per thread).
    fn join(&self) -> Result<()> {
        use std::os::fd::AsFd as _;
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|errno| Error::io("join", &self.path)(errno.into()))
    }
}
