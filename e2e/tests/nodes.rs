//! Real nodes: three kubelets with containerd and runc become Ready, run the project's own echo
//! image under the restricted Pod Security level (which the API server enforces), a client host
//! reaches the pods through a Service's ClusterIP and kube-proxy, `kubectl logs` goes through the
//! kubelet, and `cluster down` leaves nothing on the host.

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use longconn_e2e::nodes::{self, plan};

const NAMESPACE: &str = "nodes-e2e";
const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nodes_run_restricted_pods_that_clients_reach_through_a_cluster_ip() {
    let Some(tools_dir) = common::tools_dir_or_skip(
        "real_nodes_run_restricted_pods_that_clients_reach_through_a_cluster_ip",
    ) else {
        return;
    };
    let fixed_before = fixed_paths_present();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_with_nodes(dir.path(), tools_dir).await;
    let client = cluster.client();
    eprintln!(
        "nodes Ready after {:.1} s",
        cluster.nodes_ready_after().expect("nodes").as_secs_f64()
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.expect("nodes");
    let mut cidrs: Vec<String> = list
        .items
        .iter()
        .filter(|node| nodes::is_ready(node))
        .filter_map(|node| node.spec.as_ref()?.pod_cidr.clone())
        .collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);

    common::create_restricted_namespace(&client, NAMESPACE).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let privileged: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "not-restricted"},
        "spec": {"containers": [{"name": "app", "image": common::echo_image()}]},
    }))
    .expect("pod");
    let refused = pods
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("the API server refuses a pod that is not restricted");
    assert!(
        refused
            .to_string()
            .contains("violates PodSecurity \"restricted"),
        "{refused}"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    deployments
        .create(&PostParams::default(), &echo_deployment())
        .await
        .expect("create deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .expect("service");
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let cluster_ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a ClusterIP");

    let started = Instant::now();
    let pod_start = wait_ready_pods(&pods, 3).await;
    eprintln!(
        "3 pods Ready {:.1} s after the Deployment was created (slowest pod: {:.1} s from creation to Ready)",
        started.elapsed().as_secs_f64(),
        pod_start.as_secs_f64()
    );
    let running = pods.list(&ListParams::default()).await.expect("pods");
    let mut on_nodes: Vec<String> = running
        .items
        .iter()
        .filter_map(|pod| pod.spec.as_ref()?.node_name.clone())
        .collect();
    on_nodes.sort();
    on_nodes.dedup();
    assert!(on_nodes.len() >= 2, "pods spread over nodes: {on_nodes:?}");

    // The container runs as the image's non-root user, with no capabilities, no privilege
    // escalation and the runtime's seccomp profile: read from the process itself.
    let echo_pids = container_processes("longconn-echo");
    assert_eq!(
        echo_pids.len(),
        3,
        "one echo process per pod: {echo_pids:?}"
    );
    for pid in &echo_pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), "65532 65532 65532 65532", "pid {pid}");
        assert_eq!(field("CapEff:"), "0000000000000000", "pid {pid}");
        assert_eq!(field("NoNewPrivs:"), "1", "pid {pid}");
        assert_eq!(field("Seccomp:"), "2", "pid {pid} (filter mode)");
    }

    // A client host outside the cluster reaches the pods through the ClusterIP: kube-proxy on
    // the node it routes through translates it to a pod on any node.
    // kube-proxy programs a Service once the EndpointSlice controller has listed its Ready pods,
    // on its own schedule: the first answer may take a few seconds (bounded), and from then on
    // every request must be answered.
    // A client that tries before kube-proxy's first sync has its packets forwarded by the node
    // to its default route; that must not keep it from the Service afterwards (the node sends
    // no redirect past itself). A port the Service does not serve is forwarded the same way,
    // whenever it is tried: the client tries one first, for 5 s (a node that sends redirects
    // sent one within them, not within 2 s: for a retransmitted SYN).
    let plan = cluster.plan().expect("plan").clone();
    let address = format!("{cluster_ip}:80");
    let unserved = format!("{cluster_ip}:81");
    let answers = nodes::in_netns(&plan.client.netns, {
        let address = address.clone();
        let unserved = unserved.clone();
        // What the client saw is returned and judged here: a panic in the client host's
        // thread would reach this test only as a lost result.
        move || async move {
            let forwarded = connect(&unserved, Duration::from_secs(5)).map(|_| ());
            first_answer(&address, "/healthz", PROGRAMMED)?;
            let answers: Vec<std::io::Result<String>> =
                (0..12).map(|_| http_get(&address, "/healthz")).collect();
            Ok::<_, std::io::Error>((forwarded, answers))
        }
    })
    .await
    .expect("run in the client host");
    let answers = match answers {
        Ok((forwarded, answers)) => {
            assert!(
                forwarded.is_err(),
                "{unserved} answered: the Service serves port 80 only"
            );
            answers
        }
        Err(error) => panic!(
            "no answer through the ClusterIP {address} within {PROGRAMMED:?}: {error}\n{}",
            diagnose(&client, &plan, &cluster_ip).await
        ),
    };
    for answer in &answers {
        let answer = answer.as_ref().expect("GET /healthz through the ClusterIP");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    // `kubectl logs` goes from the API server to the pod's kubelet.
    let first = running.items[0].metadata.name.clone().expect("name");
    let logs = std::process::Command::new(cluster.tools().binary("kubectl"))
        .args(["--kubeconfig"])
        .arg(cluster.kubeconfig_path())
        .args(["-n", NAMESPACE, "logs", &first])
        .output()
        .expect("kubectl logs");
    assert!(
        logs.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&logs.stderr)
    );

    let cluster_dir = cluster.dir().to_path_buf();
    cluster.down().await.expect("cluster down");
    assert_nothing_left(&cluster_dir);
    assert_eq!(
        fixed_paths_present(),
        fixed_before,
        "the nodes wrote to the host's fixed paths"
    );
}

/// The paths a kubelet and containerd write to whatever their flags say, and whether each is on
/// the host: the nodes keep them in their own mount namespaces, so the host's stay as they were.
fn fixed_paths_present() -> Vec<(&'static str, bool)> {
    [
        "/run/containerd",
        "/var/lib/kubelet",
        "/var/lib/cni",
        "/var/log/containers",
        "/var/log/pods",
        "/usr/libexec/kubernetes",
    ]
    .into_iter()
    .map(|path| (path, Path::new(path).exists()))
    .collect()
}

fn echo_deployment() -> Deployment {
    let mut spread = common::echo_pod_spec();
    spread["topologySpreadConstraints"] = serde_json::json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app": "echo"}},
    }]);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": spread,
            },
        },
    }))
    .expect("deployment")
}

/// Waits until `count` pods are Ready; returns the longest time from a pod's creation to Ready.
async fn wait_ready_pods(pods: &Api<Pod>, count: usize) -> Duration {
    let started = Instant::now();
    loop {
        let list = pods.list(&ListParams::default()).await.expect("pods");
        let ready: Vec<Duration> = list
            .items
            .iter()
            .filter_map(|pod| {
                let created = pod.metadata.creation_timestamp.as_ref()?.0;
                let condition = pod
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|condition| condition.type_ == "Ready" && condition.status == "True")?;
                let at = condition.last_transition_time.as_ref()?.0;
                Some(Duration::try_from(at.duration_since(created)).unwrap_or_default())
            })
            .collect();
        if ready.len() >= count {
            return ready.into_iter().max().unwrap_or_default();
        }
        assert!(
            started.elapsed() < WAIT,
            "{} of {count} pods Ready after {WAIT:?}: {:?}",
            ready.len(),
            list.items
                .iter()
                .map(|pod| (pod.metadata.name.clone(), pod.status.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// PIDs of processes named `comm` in the nodes' cgroups.
fn container_processes(comm: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if name.trim() == comm && cgroup.contains(&format!("/{}/", plan::CGROUP_ROOT)) {
            pids.push(pid);
        }
    }
    pids
}

/// How long kube-proxy may take to program a new Service's first Ready endpoints.
const PROGRAMMED: Duration = Duration::from_secs(30);

/// Retries `GET path` until it is answered or `within` passed; the last error otherwise.
fn first_answer(address: &str, path: &str, within: Duration) -> std::io::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        match http_get(address, path) {
            Ok(answer) => return Ok(answer),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Why the ClusterIP went unanswered, told from every hop: the Service's EndpointSlices as the
/// API server has them, what the client host gets now from the ClusterIP and from each pod's
/// own address (a node-to-node route against kube-proxy's translation), the client host's route
/// to the ClusterIP (an ICMP redirect shows there as `<redirected>`), the gateway node's
/// routes, its NAT chains for the Service down to each endpoint's DNAT and its filter rules
/// naming the ClusterIP, and the end of its kube-proxy log.
async fn diagnose(client: &kube::Client, plan: &plan::Plan, cluster_ip: &str) -> String {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let endpoints: Vec<(String, bool, String)> = match slices.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .flat_map(|slice| slice.endpoints.iter().flatten())
            .map(|endpoint| {
                (
                    endpoint.addresses.join(","),
                    endpoint
                        .conditions
                        .as_ref()
                        .and_then(|conditions| conditions.ready)
                        .unwrap_or(false),
                    endpoint.node_name.clone().unwrap_or_default(),
                )
            })
            .collect(),
        Err(error) => vec![(
            format!("listing EndpointSlices failed: {error}"),
            false,
            String::new(),
        )],
    };
    let mut targets = vec![format!("{cluster_ip}:80")];
    targets.extend(
        endpoints
            .iter()
            .flat_map(|(addresses, _, _)| addresses.split(','))
            .filter(|address| address.parse::<std::net::Ipv4Addr>().is_ok())
            .map(|address| format!("{address}:8080")),
    );
    let probes = nodes::in_netns(&plan.client.netns, move || async move {
        targets
            .into_iter()
            .map(|target| {
                let answer = http_get(&target, "/healthz")
                    .map(|answer| answer.lines().next().unwrap_or_default().to_string())
                    .unwrap_or_else(|error| error.to_string());
                format!("{target}: {answer}")
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_else(|error| vec![format!("probing from the client host failed: {error}")]);
    let Some(node) = plan.nodes.iter().find(|n| n.ip == plan.client.gateway) else {
        return "no node is the client host's gateway".into();
    };
    // Each command's output, or why there is none.
    let ip = |args: &[&str]| nodes::host::run("ip", args).unwrap_or_else(|e| format!("{e}\n"));
    let in_node = |args: &[&str]| ip(&[&["netns", "exec", &node.netns], args].concat());
    let client_route = ip(&["-n", &plan.client.netns, "route", "get", cluster_ip]);
    let log = node.file("logs").join("kube-proxy.log");
    format!(
        "EndpointSlices (addresses, ready, node): {endpoints:?}\n\
         from the client host now:\n{}\n\
         the client host's route to {cluster_ip}: {client_route}\
         routes of {}:\n{}\
         its NAT rules for the Service:\n{}\n\
         its filter rules naming {cluster_ip}:\n{}\n\
         its kube-proxy log ({}):\n{}",
        probes.join("\n"),
        node.name,
        in_node(&["ip", "route"]),
        service_chains(&in_node(&["iptables-save", "-t", "nat"]), cluster_ip).join("\n"),
        in_node(&["iptables-save", "-t", "filter"])
            .lines()
            .filter(|line| line.contains(cluster_ip))
            .collect::<Vec<_>>()
            .join("\n"),
        log.display(),
        longconn_e2e::process::tail(&log, 40)
    )
}

/// The rules of `iptables-save` output that translate `cluster_ip`: those naming it, and every
/// rule of each chain they jump to, followed down (KUBE-SVC to KUBE-SEP).
fn service_chains(rules: &str, cluster_ip: &str) -> Vec<String> {
    let jump = |line: &str| {
        line.split_once(" -j ").map(|(_, target)| {
            target
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
    };
    let mut picked: Vec<String> = rules
        .lines()
        .filter(|line| line.contains(cluster_ip))
        .map(str::to_string)
        .collect();
    let mut chains: Vec<String> = picked
        .iter()
        .filter_map(|line| jump(line))
        .filter(|chain| chain.starts_with("KUBE-SVC") || chain.starts_with("KUBE-SEP"))
        .collect();
    let mut followed = std::collections::BTreeSet::new();
    while let Some(chain) = chains.pop() {
        if !followed.insert(chain.clone()) {
            continue;
        }
        let prefix = format!("-A {chain} ");
        for line in rules.lines().filter(|line| line.starts_with(&prefix)) {
            if !picked.iter().any(|seen| seen == line) {
                picked.push(line.to_string());
            }
            chains.extend(jump(line).filter(|next| next.starts_with("KUBE-SEP")));
        }
    }
    picked
}

/// A TCP connection to `address`, given up after `within`.
fn connect(address: &str, within: Duration) -> std::io::Result<std::net::TcpStream> {
    let address: std::net::SocketAddr = address
        .parse()
        .map_err(|err| std::io::Error::other(format!("{address}: {err}")))?;
    std::net::TcpStream::connect_timeout(&address, within)
}

/// A plain HTTP/1.1 GET with a 5 s budget; the response's status line and headers.
fn http_get(address: &str, path: &str) -> std::io::Result<String> {
    let mut stream = connect(address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// No network namespace, bridge, cgroup or process of the nodes is left.
fn assert_nothing_left(cluster_dir: &Path) {
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(plan::NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        namespaces.is_empty(),
        "network namespaces left: {namespaces:?}"
    );
    assert!(
        !Path::new("/sys/class/net").join(plan::BRIDGE).exists(),
        "bridge left"
    );
    for hierarchy in nodes::host::cgroup_hierarchies() {
        let left = hierarchy.join(plan::CGROUP_ROOT);
        assert!(!left.exists(), "cgroup left: {}", left.display());
    }
    let mentioning = common::processes_mentioning(cluster_dir);
    assert!(mentioning.is_empty(), "processes left: {mentioning:?}");
}
