//! longconn's real pods on the real control plane: the CRD is applied, the operator runs as a host
//! process, the pod runner runs what it generates for `examples/chat.yaml` (the gateway as a
//! native sidecar in front of the echo app, Secret and emptyDir volumes, probes on named ports),
//! a WebSocket client reaches a pod IP over TLS through the gateway and gets its messages echoed,
//! and deleting a pod runs its preStop drain and removes it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::chat::kubectl;
use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_pods_run_the_real_gateway_and_echo_app_and_drain_on_deletion() {
    let Some(common::chat::Chat {
        operator: _operator,
        runner,
        cluster,
        client,
        kubeconfig,
        kubectl: kubectl_bin,
        pods,
        running,
        temp,
    }) = common::chat::chat_up(
        "chat_pods_run_the_real_gateway_and_echo_app_and_drain_on_deletion",
        "lcchat0",
        [10, 246],
        env!("CARGO_BIN_EXE_longconn-echo"),
    )
    .await
    else {
        return;
    };

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let tls = secrets.get("chat-tls").await.expect("chat-tls");
    let ca = tls
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .0
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("pem")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let pod = &running[0];
    let name = pod.metadata.name.clone().expect("name");
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP");
    assert!(pod_ip.starts_with("10.246."), "{pod_ip}");
    let tcp = tokio::net::TcpStream::connect((pod_ip.as_str(), 8443))
        .await
        .expect("connect to the pod IP");
    let server = ServerName::try_from("chat.default.svc").expect("server name");
    let stream = connector
        .connect(server, tcp)
        .await
        .expect("TLS verified against chat-tls's CA");
    let (mut socket, _) = tokio_tungstenite::client_async("wss://chat.default.svc/", stream)
        .await
        .expect("WebSocket handshake through the gateway");
    for n in 0..5 {
        let text = format!("message {n}");
        socket
            .send(Message::text(text.clone()))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("message");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
    }
    let _ = socket.close(None).await;

    // Deletion: the app's preStop hook runs `longconn-gateway drain --wait` (installed into the
    // emptyDir by the gateway), then SIGTERM; the pod object goes.
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["delete", "pod", &name, "--wait=true", "--timeout=120s"],
    );
    assert!(pods.get_opt(&name).await.expect("get").is_none());
    let pod_dir: PathBuf = temp.path().join("pods").join(format!("default_{name}"));
    let gateway_log =
        std::fs::read_to_string(pod_dir.join("longconn-gateway.log")).unwrap_or_default();
    assert!(
        gateway_log.to_ascii_lowercase().contains("drain"),
        "the gateway logged no drain:\n{gateway_log}"
    );

    runner.stop().await.expect("runner stop");
    assert!(!Path::new("/sys/class/net/lcchat0").exists());
    cluster.down().await.expect("cluster down");
}
