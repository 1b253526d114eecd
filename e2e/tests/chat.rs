//! longconn's real pods on real nodes: the CRD is applied, the operator runs as a host process,
//! the kubelets run what it generates for `examples/chat.yaml` from the project's images (the
//! gateway as a native sidecar in front of the echo app, Secret and emptyDir volumes, probes on
//! named ports), a WebSocket client reaches a pod IP over TLS through the gateway and gets its
//! messages echoed, and deleting a pod runs its preStop drain (the open session gets the drain's
//! close frame) and removes it.

mod common;

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
        cluster,
        client,
        kubeconfig,
        kubectl: kubectl_bin,
        pods,
        running,
        temp: _temp,
    }) = common::chat::chat_up("chat_pods_run_the_real_gateway_and_echo_app_and_drain_on_deletion")
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
    assert!(pod_ip.starts_with("10.244."), "{pod_ip}");
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

    // Deletion: the app's preStop hook runs `longconn-gateway drain --wait` (installed into the
    // emptyDir by the gateway), which asks the open session to move (close 1012, within the
    // example's 10 s spread) before the kubelet sends SIGTERM; then the pod object goes.
    let (kubectl_bin2, kubeconfig2, name2) =
        (kubectl_bin.clone(), kubeconfig.clone(), name.clone());
    let deletion = tokio::task::spawn_blocking(move || {
        kubectl(
            &kubectl_bin2,
            &kubeconfig2,
            &["delete", "pod", &name2, "--wait=true", "--timeout=120s"],
        )
    });
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("the session ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame within 30 s of the deletion");
    assert_eq!(close, Some(1012), "the drain's close code");
    // Reading on sends the queued close reply: the close handshake completes and the gateway
    // counts the session migrated, so its drain ends and the pod goes well before its deadline.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    deletion.await.expect("kubectl delete");
    assert!(pods.get_opt(&name).await.expect("get").is_none());

    cluster.down().await.expect("cluster down");
}
