//! Names and addresses of a cluster's nodes, worked out before anything is created: the node
//! network (a Linux bridge on the host, as kind's Docker network is), each node's address, pod
//! CIDR, network namespace, cgroup and folder, and the client hosts' addresses. Pure: the same
//! options always give the same plan, so `cluster down` and the next `cluster up` find what a
//! killed run left behind by name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The bridge every node and client host is plugged into; the host's address on it is where the
/// API server listens.
pub const BRIDGE: &str = "lcnodes0";
/// The node network: the host is `.1`, node `i` is `.10 + i`, client host `k` is `.200 + k`.
pub const NODE_NETWORK: [u8; 3] = [10, 250, 0];
/// The pods' cluster CIDR is `10.244.0.0/16`; node `i` gets `10.244.<i + 1>.0/24`.
pub const POD_NETWORK: [u8; 2] = [10, 244];
/// The Service range; kube-proxy routes it on every node, client hosts route it to the first.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// [`SERVICE_CIDR`] as (address, prefix length).
pub fn service_network() -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 96, 0, 0), 12)
}

/// The pods' cluster CIDR as (address, prefix length).
pub fn pod_network() -> (Ipv4Addr, u8) {
    let [p, q] = POD_NETWORK;
    (Ipv4Addr::new(p, q, 0, 0), 16)
}

/// The cgroup (in every v1 hierarchy) that holds everything the nodes run.
pub const CGROUP_ROOT: &str = "longconn-e2e";
/// Prefix of every network namespace the nodes and client hosts use (`ip netns list`).
pub const NETNS_PREFIX: &str = "longconn-";
/// At most this many nodes (their addresses must stay below the client hosts').
pub const MAX_NODES: usize = 100;

/// One node: where it lives on the host and on the networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub index: usize,
    /// The Node object's name and the kubelet's hostname.
    pub name: String,
    /// The address on the node network (the Node's InternalIP).
    pub ip: Ipv4Addr,
    /// The pod CIDR, `a.b.c.0/24`.
    pub pod_cidr: String,
    /// The pod bridge's gateway address, `a.b.c.1`.
    pub pod_gateway: Ipv4Addr,
    /// `ip netns` name.
    pub netns: String,
    /// The host end of the node's veth pair (its node end is `eth0`).
    pub veth: String,
    /// The folder of the node's configuration, state and logs.
    pub dir: PathBuf,
    /// The node's cgroup, relative to each hierarchy's root: `longconn-e2e/<name>`.
    pub cgroup: String,
}

impl NodePlan {
    /// The cgroup the kubelet puts pods under (its `cgroupRoot`).
    pub fn pods_cgroup(&self) -> String {
        format!("/{}/pods", self.cgroup)
    }

    /// The cgroup of the node's own processes (containerd and its shims, kubelet, kube-proxy).
    pub fn daemons_cgroup(&self) -> String {
        format!("{}/daemons", self.cgroup)
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A client host: a network namespace on the node network that reaches Services through their
/// ClusterIP, as a client outside the cluster reaches a load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    pub netns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
    /// The node whose kube-proxy routes the client's Service traffic.
    pub gateway: Ipv4Addr,
}

/// Every node and client host of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub host_ip: Ipv4Addr,
    pub nodes: Vec<NodePlan>,
    pub client: ClientPlan,
}

impl Plan {
    /// The plan for `count` nodes whose folders go under `dir`.
    pub fn new(count: usize, dir: &Path) -> Self {
        let [a, b, c] = NODE_NETWORK;
        let [p, q] = POD_NETWORK;
        let nodes: Vec<NodePlan> = (0..count.min(MAX_NODES))
            .map(|index| {
                let name = format!("node-{index}");
                let third = u8::try_from(index + 1).unwrap_or(u8::MAX);
                let host = u8::try_from(10 + index).unwrap_or(u8::MAX);
                NodePlan {
                    index,
                    ip: Ipv4Addr::new(a, b, c, host),
                    pod_cidr: format!("{p}.{q}.{third}.0/24"),
                    pod_gateway: Ipv4Addr::new(p, q, third, 1),
                    netns: format!("{NETNS_PREFIX}{name}"),
                    veth: format!("lcnode{index}"),
                    dir: dir.join(&name),
                    cgroup: format!("{CGROUP_ROOT}/{name}"),
                    name,
                }
            })
            .collect();
        let gateway = nodes
            .first()
            .map(|node| node.ip)
            .unwrap_or(Ipv4Addr::new(a, b, c, 10));
        Self {
            host_ip: Ipv4Addr::new(a, b, c, 1),
            client: ClientPlan {
                netns: format!("{NETNS_PREFIX}client"),
                veth: "lcclient0".to_string(),
                ip: Ipv4Addr::new(a, b, c, 200),
                gateway,
            },
            nodes,
        }
    }

    /// The pods' cluster CIDR.
    pub fn cluster_cidr() -> String {
        let [p, q] = POD_NETWORK;
        format!("{p}.{q}.0.0/16")
    }

    /// The node network with its prefix length, as the host's bridge address.
    pub fn host_address(&self) -> String {
        format!("{}/24", self.host_ip)
    }

    /// Every `(pod CIDR, node address)` route a host or node needs, less the node's own.
    pub fn pod_routes(&self, except: Option<usize>) -> Vec<(String, Ipv4Addr)> {
        self.nodes
            .iter()
            .filter(|node| Some(node.index) != except)
            .map(|node| (node.pod_cidr.clone(), node.ip))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_distinct_addresses_pod_cidrs_and_names_that_fit_the_kernel_limits() {
        let plan = Plan::new(3, Path::new("/tmp/cluster/nodes"));
        let ips: Vec<String> = plan.nodes.iter().map(|node| node.ip.to_string()).collect();
        assert_eq!(ips, ["10.250.0.10", "10.250.0.11", "10.250.0.12"]);
        let cidrs: Vec<&str> = plan.nodes.iter().map(|n| n.pod_cidr.as_str()).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);
        assert_eq!(plan.nodes[2].pod_gateway, Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(plan.nodes[1].netns, "longconn-node-1");
        assert_eq!(plan.nodes[1].pods_cgroup(), "/longconn-e2e/node-1/pods");
        assert_eq!(plan.host_address(), "10.250.0.1/24");
        // Interface names are at most 15 bytes.
        for name in plan
            .nodes
            .iter()
            .map(|node| node.veth.as_str())
            .chain([BRIDGE, plan.client.veth.as_str()])
        {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn routes_lead_to_every_other_nodes_pods_and_clients_go_through_the_first_node() {
        let plan = Plan::new(3, Path::new("/x"));
        let routes = plan.pod_routes(Some(1));
        assert_eq!(
            routes,
            [
                ("10.244.1.0/24".to_string(), Ipv4Addr::new(10, 250, 0, 10)),
                ("10.244.3.0/24".to_string(), Ipv4Addr::new(10, 250, 0, 12)),
            ]
        );
        assert_eq!(plan.pod_routes(None).len(), 3);
        assert_eq!(plan.client.gateway, plan.nodes[0].ip);
        // The client host is outside the cluster CIDR, so kube-proxy masquerades its traffic and
        // replies come back through the node that translated it.
        assert!(!plan.client.ip.to_string().starts_with("10.244."));
    }
}
