//! The load client against real nodes and the operator: 50 sessions to chat (3 pods) from the
//! cluster's client host, through the Service's ClusterIP and kube-proxy, get every message
//! echoed; then a pod is deleted while the load runs, its gateway drains with close 1012, and its
//! sessions reconnect through the ClusterIP to the other pods: migrated, none dropped, no message
//! lost.

mod common;

use std::time::Duration;

use common::chat::kubectl;
use longconn_e2e::load::{self, LoadOptions, LoadReport, Route};
use longconn_e2e::nodes;

/// Runs the load on the cluster's client host.
async fn run_from_client_host(
    netns: &str,
    client: kube::Client,
    options: LoadOptions,
) -> LoadReport {
    nodes::in_netns(netns, move || load::run(client, options))
        .await
        .expect("run on the client host")
        .expect("load run")
}

/// The pod among `pods` whose gateway holds the most sessions, read from its admin port's
/// `/metrics` on the cluster's client host.
async fn busiest(netns: &str, pods: &[k8s_openapi::api::core::v1::Pod]) -> String {
    let targets: Vec<(String, std::net::SocketAddr)> = pods
        .iter()
        .filter_map(|pod| {
            let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some((
                pod.metadata.name.clone()?,
                std::net::SocketAddr::new(ip, 9901),
            ))
        })
        .collect();
    let counts = nodes::in_netns(netns, move || async move {
        let mut counts = Vec::new();
        for (name, addr) in targets {
            let text = tokio::time::timeout(
                Duration::from_secs(5),
                longconn_e2e::cluster::http_get(addr, "/metrics", 1 << 20),
            )
            .await
            .expect("metrics in time")
            .expect("metrics");
            let active: f64 = text
                .lines()
                .find_map(|line| line.strip_prefix("longconn_gateway_sessions_active "))
                .and_then(|v| v.trim().parse().ok())
                .expect("longconn_gateway_sessions_active");
            counts.push((active as u64, name));
        }
        counts
    })
    .await
    .expect("run on the client host");
    eprintln!("sessions per pod: {counts:?}");
    let (sessions, name) = counts.into_iter().max().expect("pods");
    assert!(sessions > 0, "no pod holds sessions");
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted() {
    let Some(chat) = common::chat::chat_up(
        "load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted",
    )
    .await
    else {
        return;
    };
    let (client, pods, running) = (chat.client.clone(), chat.pods.clone(), chat.running.clone());
    let (kubectl_bin, kubeconfig) = (chat.kubectl.clone(), chat.kubeconfig.clone());
    let netns = chat.cluster.plan().expect("nodes").client.netns.clone();

    let mut options = LoadOptions::new("default", "chat");
    options.allowed = vec![nodes::plan::service_network()];
    options.route = Route::ClusterIp;
    options.sessions = 50;
    options.rate = 5.0;
    options.duration = Duration::from_secs(10);
    let steady = run_from_client_host(&netns, client.clone(), options.clone()).await;
    eprintln!("steady: {steady:?}");
    assert_eq!(steady.sessions_opened, 50, "{steady:?}");
    assert_eq!(steady.dropped, 0, "{steady:?}");
    assert_eq!(steady.migrated, 0, "{steady:?}");
    assert_eq!(steady.messages_lost, 0, "{steady:?}");
    assert!(steady.messages_sent >= 50 * 40, "{steady:?}");
    assert_eq!(steady.messages_echoed, steady.messages_sent, "{steady:?}");

    // Now delete a pod while the load runs: its preStop waits for the operator to hand its
    // sessions over (once its replacement takes sessions), drains the gateway (Notify, close 1012
    // spread over 10 s), and its sessions reconnect to the pods that stay. The load runs until
    // the pod is gone, however long the hand-over takes, and a little longer.
    options.duration = Duration::from_secs(120);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let load_netns = netns.clone();
    let load_client = client.clone();
    let running_load = tokio::spawn(async move {
        nodes::in_netns(&load_netns, move || async move {
            let running = load::start(load_client, options).await?;
            let _ = stopped.await;
            running.stop();
            Ok::<_, load::LoadError>(running.finish().await)
        })
        .await
        .expect("run on the client host")
        .expect("load run")
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The pod with the most sessions: where new sessions go follows the gateways' counts, and a
    // pod can hold none for a while.
    let name = busiest(&netns, &running).await;
    let (kubectl_bin2, kubeconfig2, name2) =
        (kubectl_bin.clone(), kubeconfig.clone(), name.clone());
    let deleting = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        kubectl(
            &kubectl_bin2,
            &kubeconfig2,
            &["delete", "pod", &name2, "--wait=true", "--timeout=120s"],
        )
    })
    .await
    .expect("kubectl delete");
    eprintln!("the pod was gone after {:?}", deleting.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop.send(());
    let during = running_load.await.expect("load task");
    eprintln!("during deletion: {during:?}");
    assert_eq!(during.sessions_opened, 50, "{during:?}");
    assert!(during.migrated > 0, "{during:?}");
    assert_eq!(during.dropped, 0, "{during:?}");
    assert_eq!(during.messages_lost, 0, "{during:?}");
    assert_eq!(during.messages_echoed, during.messages_sent, "{during:?}");
    assert!(pods.get_opt(&name).await.expect("get").is_none());

    chat.cluster.down().await.expect("cluster down");
}
