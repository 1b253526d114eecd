//! The pod the operator generates, run against the real gateway.
//!
//! The Deployment comes from `longconn_operator::desired::desired` for a sample LongConnService;
//! its gateway container runs as the real `longconn-gateway` binary with exactly the generated
//! arguments, remapped only where a pod differs from this machine (addresses in the pod become
//! ports on 127.0.0.1, mounted paths become directories, the app becomes an echo app of the
//! test), and its app containers' preStop hooks run as the kubelet would run them. So a flag the
//! operator generates that the gateway does not accept, a probe path it does not serve, or a
//! hook that cannot drain the gateway fails here, without a cluster.
#![allow(clippy::unwrap_used)]

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Container;
use longconn_drain_api::{DrainReport, DrainState};
use longconn_operator::kinds::Kind;
use longconn_tests::{
    WAIT, http,
    pod::{ADMIN_TOKEN, Pod, RunningGateway, sample},
    upstream::start_echo,
};
use tokio_tungstenite::tungstenite::Message;

/// Runs the preStop hook of `container` and checks that it succeeded; returns the drain report
/// it printed first and the lines that followed.
async fn run_pre_stop(
    pod: &Pod,
    gateway: &RunningGateway,
    container: &Container,
) -> (DrainReport, Vec<String>) {
    let output = pod.run_pre_stop(container).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        gateway.log()
    );
    let mut lines = stdout.lines();
    let report = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the hook printed no drain report ({e}):\n{stdout}"));
    (report, lines.map(str::to_owned).collect())
}

#[tokio::test]
async fn the_gateway_starts_with_the_generated_flags_and_every_probe_answers_200() {
    let pod = Pod::new(&sample("examples/chat.yaml"), start_echo().await);
    let gateway = pod.start_gateway().await;
    // Self-signed TLS: the serving certificate and key come from the mounted Secret.
    assert!(
        gateway.args.iter().any(|a| a.starts_with("--tls-cert=")),
        "{:?}",
        gateway.args
    );
    let container = pod.gateway();
    for (kind, probe) in [
        ("startup", &container.startup_probe),
        ("readiness", &container.readiness_probe),
        ("liveness", &container.liveness_probe),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("no {kind} probe"));
        let status = pod.probe(container, probe).await.unwrap();
        assert_eq!(status, 200, "{kind} probe {:?}", probe.http_get);
    }
}

#[tokio::test]
async fn the_generated_pre_stop_drains_with_the_local_token_alone_and_prints_the_report() {
    let pod = Pod::new(&sample("examples/chat.yaml"), start_echo().await);
    let gateway = pod.start_gateway().await;
    let app = pod.container("app");
    // The app container sees the gateway's binary and its local token, and no other token.
    let bin = pod.volume("longconn-bin");
    assert!(bin.join("longconn-gateway.token").is_file());
    let mounted: Vec<&str> = app
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(mounted, ["longconn-bin"]);

    let (report, rest) = run_pre_stop(&pod, &gateway, app).await;
    assert_eq!(
        report.state,
        DrainState::Drained,
        "it returned after the drain"
    );
    assert!(rest.is_empty(), "{rest:?}");

    // The gateway is drained: out of the endpoints, and its report, read with the Secret's
    // token as the operator reads it, says so.
    let readiness = pod.gateway().readiness_probe.as_ref().unwrap();
    assert_eq!(pod.probe(pod.gateway(), readiness).await.unwrap(), 503);
    let admin = pod.named_port(pod.gateway(), "admin").to_string();
    let seen = longconn_drain_api::report(&admin, ADMIN_TOKEN)
        .await
        .unwrap();
    assert_eq!(seen.state, DrainState::Drained);
}

#[tokio::test]
async fn an_app_containers_own_exec_pre_stop_runs_after_the_drain_in_the_same_hook() {
    let mut lcs = sample("operator/tests/samples/good/own-pre-stop.yaml");
    // The sample's own hook, made runnable here: a command that prints one line.
    let app = lcs
        .spec
        .template
        .spec
        .as_mut()
        .and_then(|pod| pod.containers.iter_mut().find(|c| c.name == "app"))
        .unwrap();
    let exec = app
        .lifecycle
        .as_mut()
        .and_then(|l| l.pre_stop.as_mut())
        .and_then(|h| h.exec.as_mut())
        .unwrap();
    exec.command = Some(vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "echo own hook ran".to_owned(),
    ]);
    // The gateway runs as a process of this test, under this machine's open-file limit, which
    // the default of 10,000 connections may exceed (the gateway would refuse to start).
    lcs.spec.gateway.max_connections = 1000;
    let pod = Pod::new(&lcs, start_echo().await);
    let gateway = pod.start_gateway().await;

    // One live session through the gateway's client port.
    let client = pod.named_port(pod.gateway(), "client");
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{client}/chat")),
    )
    .await
    .unwrap()
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let session = tokio::spawn(async move {
        // Read until the end; tungstenite answers the close frame, completing the handshake.
        let mut close_code = None;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, ws.next()).await {
            if let Message::Close(frame) = message {
                close_code = frame.map(|f| u16::from(f.code));
            }
        }
        close_code
    });

    let (report, rest) = run_pre_stop(&pod, &gateway, pod.container("app")).await;
    // First the drain, to its end (the report is printed once it says Drained, the session
    // moved), then the container's own command.
    assert_eq!(report.state, DrainState::Drained);
    assert_eq!((report.migrated, report.dropped), (1, 0), "{report:?}");
    assert_eq!(rest, ["own hook ran"]);
    assert_eq!(session.await.unwrap(), Some(1012));
}

/// The metric names `expr` reads: its words that start like the gateway's metrics.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("longconn_") || word.starts_with("process_"))
        .collect()
}

#[tokio::test]
async fn every_metric_the_generated_alerts_read_is_served_where_the_service_monitor_scrapes() {
    let pod = Pod::new(&sample("examples/chat.yaml"), start_echo().await);
    let gateway = pod.start_gateway().await;
    let object = |kind| {
        &pod.manifests
            .iter()
            .find(|m| m.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} generated"))
            .object
    };
    // The ServiceMonitor scrapes the metrics Service's port, which is the gateway's admin port.
    let endpoint = &object(Kind::ServiceMonitor)["spec"]["endpoints"][0];
    let (status, text) = http::get(
        pod.named_port(pod.gateway(), "admin"),
        endpoint["path"].as_str().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}\n{}", gateway.log());
    let served: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let rules = object(Kind::PrometheusRule)["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap();
    assert_eq!(rules.len(), 8, "{rules:#?}");
    for rule in rules {
        let expr = rule["expr"].as_str().unwrap();
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(
                served.contains(&name),
                "{} reads {name}, which the gateway does not serve:\n{text}",
                rule["alert"]
            );
        }
    }
}
