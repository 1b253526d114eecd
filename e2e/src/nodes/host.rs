//! What the nodes change on the host, and how every trace of it is removed: the node network's
//! bridge, each node's and client host's network namespace with its veth pair and routes, the
//! cgroups under [`CGROUP_ROOT`] in every cgroup v1 hierarchy, and the host-wide kernel settings a
//! kubelet writes. [`clear`] works from names alone, so it also removes what a killed run left.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::plan::{BRIDGE, CGROUP_ROOT, NETNS_PREFIX, NodePlan, Plan};
use crate::error::{Error, Result};

/// Kernel settings the kubelet sets host-wide (they are not per network namespace); recorded at
/// `up` and written back at `down`.
pub const KUBELET_SYSCTLS: [&str; 4] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// How long [`kill_cgroup`] keeps killing before it gives up.
const KILL_DEADLINE: Duration = Duration::from_secs(15);

/// Runs `program args`, returning its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let command_line = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| Error::Host {
            action: command_line.clone(),
            detail: err.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Host {
            action: command_line,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(drop)
}

/// The bridge with the host's address on it, and routes from the host to every node's pods.
pub fn create_bridge(plan: &Plan) -> Result<()> {
    ip(&["link", "add", "name", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &plan.host_address(), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])
}

/// Routes from the host to every node's pod CIDR (after the nodes' links are up).
pub fn add_host_routes(plan: &Plan) -> Result<()> {
    for (cidr, via) in plan.pod_routes(None) {
        ip(&[
            "route",
            "replace",
            &cidr,
            "via",
            &via.to_string(),
            "dev",
            BRIDGE,
        ])?;
    }
    Ok(())
}

/// A network namespace plugged into the bridge with `address`, its loopback up.
fn plug(netns: &str, veth: &str, address: Ipv4Addr) -> Result<()> {
    ip(&["netns", "add", netns])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    ip(&["link", "set", veth, "master", BRIDGE, "up"])?;
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])
}

/// A node's network namespace: on the bridge, forwarding, bridged traffic through iptables (as
/// kube-proxy needs), a default route to the host (where the API server is) and a route to every
/// other node's pods.
///
/// The node sends no ICMP redirects. A client's packet for a ClusterIP that kube-proxy has not
/// programmed yet (a new Service, before its first sync) leaves the node the way it came, by the
/// default route to the host; a node that sent redirects would then tell the client to send
/// everything for that address to the host directly, and the client's kernel would keep that
/// for minutes, long after kube-proxy programmed the Service.
pub fn create_node_network(plan: &Plan, node: &NodePlan) -> Result<()> {
    plug(&node.netns, &node.veth, node.ip)?;
    route(&node.netns, "default", plan.host_ip)?;
    for (cidr, via) in plan.pod_routes(Some(node.index)) {
        route(&node.netns, &cidr, via)?;
    }
    sysctls(
        &node.netns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.bridge.bridge-nf-call-iptables=1",
            // The kernel sends redirects when `all` or the interface says so: both off.
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ],
    )
}

/// The client host: on the bridge, with the Service range routed to a node (whose kube-proxy
/// translates it), and routes to every node's pods for tests that must pick a pod. It accepts no
/// ICMP redirects, so its Service traffic always goes through that node (see
/// [`create_node_network`]).
pub fn create_client_network(plan: &Plan) -> Result<()> {
    let client = &plan.client;
    plug(&client.netns, &client.veth, client.ip)?;
    route(&client.netns, super::plan::SERVICE_CIDR, client.gateway)?;
    for (cidr, via) in plan.pod_routes(None) {
        route(&client.netns, &cidr, via)?;
    }
    // A host that does not forward accepts redirects when `all` or the interface says so.
    sysctls(
        &client.netns,
        &[
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv4.conf.default.accept_redirects=0",
            "net.ipv4.conf.eth0.accept_redirects=0",
        ],
    )
}

/// Kernel settings (`name=value`) in network namespace `netns`.
fn sysctls(netns: &str, settings: &[&str]) -> Result<()> {
    for setting in settings {
        run(
            "ip",
            &["netns", "exec", netns, "sysctl", "-q", "-w", setting],
        )?;
    }
    Ok(())
}

/// A route in network namespace `netns` to `cidr` through `via`.
fn route(netns: &str, cidr: &str, via: Ipv4Addr) -> Result<()> {
    ip(&["-n", netns, "route", "add", cidr, "via", &via.to_string()])
}

/// The cgroup v1 hierarchies of this host: each `cgroup` mount point.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            (fstype == "cgroup").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Creates `relative` (and its parents) in every hierarchy; in `cpuset` each new level gets its
/// parent's CPUs and memory nodes, without which nothing can join it.
pub fn create_cgroup(relative: &str) -> Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let mut path = hierarchy.clone();
        for part in relative.trim_matches('/').split('/') {
            let parent = path.clone();
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path).map_err(Error::io("create cgroup", &path))?;
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = path.join(file);
                let current = std::fs::read_to_string(&own).unwrap_or_default();
                if own.exists() && current.trim().is_empty() {
                    let inherited = std::fs::read_to_string(parent.join(file))
                        .map_err(Error::io("read", parent.join(file)))?;
                    std::fs::write(&own, inherited.trim()).map_err(Error::io("write", &own))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves process `pid` into `relative` in every hierarchy.
pub fn join_cgroup(relative: &str, pid: i32) -> Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let procs = hierarchy
            .join(relative.trim_matches('/'))
            .join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(Error::io("write", &procs))?;
    }
    Ok(())
}

/// Every process in `relative` or below, in any hierarchy.
fn cgroup_members(relative: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let mut folders = vec![hierarchy.join(relative.trim_matches('/'))];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    folders.push(entry.path());
                }
            }
            if let Ok(text) = std::fs::read_to_string(folder.join("cgroup.procs")) {
                pids.extend(
                    text.lines()
                        .filter_map(|line| line.trim().parse::<i32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs every process in `relative` and below until none is left (new ones may be forked
/// while it runs), then removes the cgroups, deepest first, in every hierarchy.
pub fn kill_cgroup(relative: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let members = cgroup_members(relative);
        if members.is_empty() {
            break;
        }
        if started.elapsed() > KILL_DEADLINE {
            return Err(Error::Survivors(format!(
                "in cgroup {relative}: {members:?}"
            )));
        }
        for pid in members {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for hierarchy in cgroup_hierarchies() {
        remove_tree(&hierarchy.join(relative.trim_matches('/')))?;
    }
    Ok(())
}

/// Removes a cgroup folder and its children (cgroup folders are removed with rmdir, deepest
/// first; their control files go with them). A cgroup whose last process just exited may be busy
/// for a moment, so each removal is retried briefly.
fn remove_tree(folder: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let started = Instant::now();
    loop {
        match std::fs::remove_dir(folder) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) if started.elapsed() > Duration::from_secs(5) => {
                return Err(Error::io("remove cgroup", folder)(err));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The current values of [`KUBELET_SYSCTLS`].
pub fn read_sysctls() -> Vec<(String, String)> {
    KUBELET_SYSCTLS
        .iter()
        .filter_map(|name| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?;
            Some((name.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Writes back values read by [`read_sysctls`].
pub fn restore_sysctls(values: &[(String, String)]) {
    for (name, value) in values {
        let path = Path::new("/proc/sys").join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() != value
            && let Err(err) = std::fs::write(&path, value)
        {
            tracing::warn!(%name, %value, %err, "cannot restore a kernel setting");
        }
    }
}

/// Removes everything the nodes of any cluster created on the host: every process in their
/// cgroups (containers, shims, containerd, kubelets, kube-proxies and the namespace holders),
/// the cgroups, the network namespaces named `longconn-*` (their veths go with them), and the
/// bridge (the host's routes go with it). Safe to call when nothing is there.
pub fn clear() -> Result<()> {
    kill_cgroup(CGROUP_ROOT)?;
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NETNS_PREFIX) {
                ip(&["netns", "del", &name])?;
            }
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        ip(&["link", "del", BRIDGE])?;
    }
    Ok(())
}
