//! longconn's real pods on the real control plane: the CRD is applied, the operator runs as a host
//! process, the pod runner runs what it generates for `examples/chat.yaml` (the gateway as a
//! native sidecar in front of the echo app, Secret and emptyDir volumes, probes on named ports),
//! a WebSocket client reaches a pod IP over TLS through the gateway and gets its messages echoed,
//! and deleting a pod runs its preStop drain and removes it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use longconn_e2e::podrunner::images::{self, ImageTable};
use longconn_e2e::podrunner::network::NetworkOptions;
use longconn_e2e::podrunner::{PodRunner, PodRunnerOptions};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(180);

/// A host process killed (with its process group) when the test ends, passing or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ready(pod: &Pod) -> bool {
    let status = pod.status.clone().unwrap_or_default();
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_pods_run_the_real_gateway_and_echo_app_and_drain_on_deletion() {
    let test = "chat_pods_run_the_real_gateway_and_echo_app_and_drain_on_deletion";
    let Some(tools_dir) = common::tools_dir_or_skip(test) else {
        return;
    };
    let bin_dir = images::default_bin_dir();
    for binary in ["longconn-operator", "longconn-gateway"] {
        assert!(
            bin_dir.join(binary).is_file(),
            "{} missing: run `cargo build -p longconn-operator -p longconn-gateway` first",
            bin_dir.join(binary).display()
        );
    }
    let root = longconn_e2e::tools::repository_root();
    let temp = tempfile::tempdir().expect("tempdir");
    let cluster = common::cluster_up(temp.path(), tools_dir).await;
    let client = cluster.client();
    let kubeconfig = cluster.kubeconfig_path();
    let kubectl_bin = cluster.tools().binary("kubectl");
    let crd = root.join("crds/longconnservices.longconn.dev.yaml");
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["apply", "--server-side", "-f", &crd.to_string_lossy()],
    );
    let established = (0..100).any(|_| {
        // Fails until the CRD has conditions at all.
        let done = Command::new(&kubectl_bin)
            .args([
                "get",
                "crd/longconnservices.longconn.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"True");
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert!(established, "the CRD was not Established in 20 s");
    common::create_namespace(&client, "longconn-system").await;

    let operator_log = std::fs::File::create(temp.path().join("operator.log")).expect("log");
    let _operator = Guard(
        Command::new(bin_dir.join("longconn-operator"))
            .args([
                "run",
                "--operator-namespace=longconn-system",
                "--log-format=text",
                "--metrics-listen=127.0.0.1:0",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(operator_log)
            .spawn()
            .expect("start the operator"),
    );

    let images = ImageTable::workspace(&bin_dir).with(
        "ghcr.io/longconn/longconn-echo",
        env!("CARGO_BIN_EXE_longconn-echo"),
    );
    let mut options = PodRunnerOptions::new(cluster.server(), temp.path().join("pods"), images);
    options.network = NetworkOptions {
        bridge: "lcchat0".into(),
        prefix: [10, 246],
        ..NetworkOptions::default()
    };
    let runner = PodRunner::start(client.clone(), options)
        .await
        .expect("pod runner");
    assert!(
        runner.bridge().is_some(),
        "this test needs network namespaces (root and iproute2)"
    );

    let example = std::fs::read_to_string(root.join("examples/chat.yaml")).expect("example");
    let manifest = temp.path().join("chat.yaml");
    std::fs::write(&manifest, example).expect("write manifest");
    kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["apply", "-f", &manifest.to_string_lossy()],
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let selector = ListParams::default().labels("longconn.dev/service=chat");
    let started = Instant::now();
    let running = loop {
        let list = pods.list(&selector).await.expect("list pods");
        let ready_pods: Vec<Pod> = list.items.iter().filter(|p| ready(p)).cloned().collect();
        if ready_pods.len() == 3 {
            break ready_pods;
        }
        assert!(
            started.elapsed() < WAIT,
            "3 chat pods not Ready after {WAIT:?}: {:#?}\noperator log:\n{}",
            list.items.iter().map(|p| &p.status).collect::<Vec<_>>(),
            std::fs::read_to_string(temp.path().join("operator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
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
