//! The load client against the real control plane, pod runner and operator: 50 sessions to chat
//! (3 pods), routed to Ready endpoints from the EndpointSlices, get every message echoed; then a
//! pod is deleted while the load runs, its gateway drains with close 1012, and its sessions
//! reconnect to the other pods: migrated, none dropped, no message lost.

mod common;

use std::path::Path;
use std::time::Duration;

use common::chat::kubectl;
use longconn_e2e::load::{self, LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted() {
    let Some(chat) = common::chat::chat_up(
        "load_sessions_echo_everything_and_migrate_without_drops_when_a_pod_is_deleted",
        "lcload0",
        [10, 247],
        env!("CARGO_BIN_EXE_longconn-echo"),
    )
    .await
    else {
        return;
    };
    let (client, pods, running) = (chat.client.clone(), chat.pods.clone(), chat.running.clone());
    let (kubectl_bin, kubeconfig) = (chat.kubectl.clone(), chat.kubeconfig.clone());

    assert!(running.iter().all(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| ip.starts_with("10.247."))
    }));

    let mut options = LoadOptions::new("default", "chat");
    options.allowed = vec![([10, 247, 0, 0].into(), 16)];
    options.sessions = 50;
    options.rate = 5.0;
    options.duration = Duration::from_secs(10);
    let steady = load::run(client.clone(), options.clone())
        .await
        .expect("steady load");
    eprintln!("steady: {steady:?}");
    assert_eq!(steady.sessions_opened, 50, "{steady:?}");
    assert_eq!(steady.dropped, 0, "{steady:?}");
    assert_eq!(steady.migrated, 0, "{steady:?}");
    assert_eq!(steady.messages_lost, 0, "{steady:?}");
    assert!(steady.messages_sent >= 50 * 40, "{steady:?}");
    assert_eq!(steady.messages_echoed, steady.messages_sent, "{steady:?}");

    // Now delete a pod while the load runs: its preStop drains the gateway (Notify, close 1012
    // spread over 10 s) and its sessions reconnect to Ready endpoints.
    options.duration = Duration::from_secs(25);
    let running_load = tokio::spawn(load::run(client.clone(), options));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let name = running[0].metadata.name.clone().expect("name");
    let (kubectl_bin2, kubeconfig2, name2) =
        (kubectl_bin.clone(), kubeconfig.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        kubectl(
            &kubectl_bin2,
            &kubeconfig2,
            &["delete", "pod", &name2, "--wait=true", "--timeout=120s"],
        )
    })
    .await
    .expect("kubectl delete");
    let during = running_load
        .await
        .expect("load task")
        .expect("load during deletion");
    eprintln!("during deletion: {during:?}");
    assert_eq!(during.sessions_opened, 50, "{during:?}");
    assert!(during.migrated > 0, "{during:?}");
    assert_eq!(during.dropped, 0, "{during:?}");
    assert_eq!(during.messages_lost, 0, "{during:?}");
    assert_eq!(during.messages_echoed, during.messages_sent, "{during:?}");
    assert!(pods.get_opt(&name).await.expect("get").is_none());

    chat.runner.stop().await.expect("runner stop");
    assert!(!Path::new("/sys/class/net/lcload0").exists());
    chat.cluster.down().await.expect("cluster down");
}
