//! The configuration files of a node's components, rendered from its [`NodePlan`]: containerd's
//! `config.toml`, the CNI network, the kubelet's `KubeletConfiguration` and kube-proxy's
//! `KubeProxyConfiguration`. Pure: paths and addresses in, text out.
//!
//! What this machine asks of them (and any host like it: cgroup v1 only, no CAP_SYS_RESOURCE):
//! the kubelet runs on cgroup v1 with the cgroupfs driver under a cgroup of its own; containerd
//! never asks for a negative `oom_score_adj` and keeps its pods' network namespaces under its own
//! state folder; kube-proxy leaves host-wide conntrack settings alone.

use std::path::Path;

use serde_json::json;

use super::plan::{NodePlan, Plan};

/// Where containerd finds runc and the CNI plugins (Debian's packages).
pub const RUNC: &str = "/usr/sbin/runc";
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The zone label of node `index`, so spreading across zones has something to spread over.
pub fn zone(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
    format!("zone-{letter}")
}

/// containerd 2's configuration (version 3) for one node: its own root, state, socket and runc
/// root, the CRI plugin with runc, the node's CNI folder and the locally built sandbox image.
pub fn containerd_toml(node: &NodePlan, sandbox_image: &str) -> String {
    let dir = node.dir.display();
    let socket = node.containerd_socket();
    let socket = socket.display();
    format!(
        r#"# containerd for {name}; written by longconn-e2e.
version = 3
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here cannot lower oom_score_adj below its own (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  # Pod network namespaces live under the node's state folder, not in the host's /run/netns.
  netns_mounts_under_state_dir = true
  enable_cdi = false

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{dir}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{dir}/cni"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        name = node.name,
        runc = RUNC,
        cni_bin = CNI_BIN_DIR,
    )
}

/// The node's CNI network: a bridge `cni0` with the node's pod CIDR (the node routes between
/// nodes; no masquerading, so the host sees pod addresses) and host-local addresses kept in the
/// node's folder.
pub fn cni_conflist(node: &NodePlan) -> String {
    let network = json!({
        "cniVersion": "1.0.0",
        "name": "longconn",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": node.file("cni-ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&network).unwrap_or_default()
}

/// Files the kubelet's configuration names.
#[derive(Debug, Clone, Copy)]
pub struct KubeletFiles<'a> {
    pub client_ca: &'a Path,
    pub serving_cert: &'a Path,
    pub serving_key: &'a Path,
}

/// The kubelet's `KubeletConfiguration` (JSON, which the kubelet reads as YAML).
pub fn kubelet_config(node: &NodePlan, files: KubeletFiles<'_>) -> String {
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // This host has cgroup v1 only.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.pods_cgroup(),
        "address": node.ip.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": files.client_ca},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": files.serving_cert,
        "tlsPrivateKeyFile": files.serving_key,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "containerRuntimeEndpoint": format!("unix://{}", node.containerd_socket().display()),
        "clusterDomain": "cluster.local",
        "podCIDR": node.pod_cidr,
        "podLogsDir": node.file("pod-logs"),
        "volumePluginDir": node.file("volume-plugins"),
        "failSwapOn": false,
        "maxPods": 110,
        "serializeImagePulls": false,
        // Images are loaded, never pulled: keep them however full the disk gets.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "enforceNodeAllocatable": ["pods"],
        "kernelMemcgNotification": false,
        "protectKernelDefaults": false,
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "containerLogMaxSize": "10Mi",
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// kube-proxy's `KubeProxyConfiguration`: iptables mode (nft backend), masquerading what comes
/// from outside the cluster CIDR, and host-wide conntrack settings left as they are.
pub fn kube_proxy_config(node: &NodePlan, kubeconfig: &Path) -> String {
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "clusterCIDR": Plan::cluster_cidr(),
        "hostnameOverride": node.name,
        "bindAddress": node.ip.to_string(),
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodePlan {
        Plan::new(2, Path::new("/c/nodes")).nodes[1].clone()
    }

    #[test]
    fn containerd_keeps_its_root_state_socket_and_pod_namespaces_in_the_node_folder() {
        let text = containerd_toml(&node(), "localhost/longconn/pause:3.10.2");
        for line in [
            r#"root = "/c/nodes/node-1/containerd/root""#,
            r#"state = "/c/nodes/node-1/containerd/state""#,
            r#"address = "/c/nodes/node-1/containerd.sock""#,
            r#"Root = "/c/nodes/node-1/runc""#,
            r#"conf_dir = "/c/nodes/node-1/cni""#,
            "restrict_oom_score_adj = true",
            "netns_mounts_under_state_dir = true",
            r#"sandbox = "localhost/longconn/pause:3.10.2""#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn the_cni_bridge_hands_out_the_nodes_pod_cidr_without_masquerading() {
        let network: serde_json::Value =
            serde_json::from_str(&cni_conflist(&node())).expect("json");
        let bridge = &network["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.244.2.1");
        assert_eq!(bridge["ipam"]["dataDir"], "/c/nodes/node-1/cni-ipam");
    }

    #[test]
    fn the_kubelet_runs_on_cgroup_v1_under_the_nodes_cgroup_with_webhook_auth() {
        let files = KubeletFiles {
            client_ca: Path::new("/pki/ca.crt"),
            serving_cert: Path::new("/pki/k.crt"),
            serving_key: Path::new("/pki/k.key"),
        };
        let config: serde_json::Value =
            serde_json::from_str(&kubelet_config(&node(), files)).expect("json");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["cgroupRoot"], "/longconn-e2e/node-1/pods");
        assert_eq!(config["address"], "10.250.0.11");
        assert_eq!(config["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(config["authorization"]["mode"], "Webhook");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///c/nodes/node-1/containerd.sock"
        );
    }

    #[test]
    fn kube_proxy_masquerades_outside_the_cluster_cidr_and_leaves_conntrack_alone() {
        let config: serde_json::Value =
            serde_json::from_str(&kube_proxy_config(&node(), Path::new("/k"))).expect("json");
        assert_eq!(config["clusterCIDR"], "10.244.0.0/16");
        assert_eq!(config["hostnameOverride"], "node-1");
        assert_eq!(config["conntrack"]["maxPerCore"], 0);
        assert_eq!(zone(1), "zone-b");
    }
}
