//! Snapshot tests of every manifest `desired()` builds. A change to any generated object shows
//! up as a snapshot diff to review (`INSTA_UPDATE=always cargo test` rewrites them).

use longconn_operator::certs::CertAndKey;
use longconn_operator::crd::LongConnService;
use longconn_operator::desired::{
    self, CertBundle, Manifest, Observed, ServedApis, ServiceRouting, Settings,
};
use longconn_operator::kinds::Kind;
use longconn_operator::revision;

fn sample(path: &str) -> LongConnService {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).expect("sample");
    let mut lcs: LongConnService = serde_yaml::from_str(&text).expect("sample parses");
    lcs.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    lcs.metadata.uid = Some("11111111-2222-3333-4444-555555555555".to_owned());
    lcs
}

fn pair(cert: &str, key: &str) -> CertAndKey {
    CertAndKey {
        cert_pem: cert.to_owned(),
        key_pem: key.to_owned(),
    }
}

/// What the reconciler would find for `lcs` settled: its Service selecting its revision.
fn observed(lcs: &LongConnService, apis: ServedApis, update_replicas: Option<i32>) -> Observed {
    Observed {
        update_replicas,
        admin_token: "admin-token".to_owned(),
        certificate: Some(CertBundle {
            ca: pair("CA CERT", "CA KEY"),
            previous_ca: None,
            serving: pair("CERT", "KEY"),
        }),
        apis,
        routing: ServiceRouting {
            revision: Some(revision::of(lcs, &settings())),
            changed_at: None,
        },
    }
}

fn settings() -> Settings {
    Settings {
        gateway_image: "ghcr.io/longconn/longconn-gateway:test".to_owned(),
        ..Settings::default()
    }
}

fn yaml(manifests: &[Manifest]) -> Vec<serde_json::Value> {
    manifests.iter().map(|m| m.object.clone()).collect()
}

const ALL_APIS: ServedApis = ServedApis {
    service_monitor: true,
    prometheus_rule: true,
    cert_manager: true,
};

/// What `lcs` becomes at its own replica count with every optional API served.
fn with_every_api(lcs: &LongConnService) -> Vec<Manifest> {
    desired::desired(
        lcs,
        &observed(lcs, ALL_APIS, Some(lcs.spec.replicas)),
        &settings(),
    )
}

/// The (only) Deployment `desired` builds for `lcs`, with every optional API served.
fn deployment(lcs: &LongConnService) -> serde_json::Value {
    with_every_api(lcs)
        .into_iter()
        .find(|m| m.kind == Kind::Deployment)
        .expect("deployment")
        .object
}

#[test]
fn chat_example_with_every_optional_api() {
    let lcs = sample("../examples/chat.yaml");
    let out = with_every_api(&lcs);
    insta::assert_yaml_snapshot!("chat", yaml(&out));
}

#[test]
fn every_field_set() {
    let lcs = sample("tests/samples/good/full.yaml");
    let out = with_every_api(&lcs);
    insta::assert_yaml_snapshot!("full", yaml(&out));
}

#[test]
fn on_sessions_the_operator_scales_itself_and_makes_no_horizontal_pod_autoscaler() {
    let lcs = sample("tests/samples/good/full.yaml");
    assert!(lcs.spec.autoscaling.is_some());
    let kinds: Vec<Kind> = with_every_api(&lcs).iter().map(|m| m.kind).collect();
    assert!(!kinds.contains(&Kind::HorizontalPodAutoscaler), "{kinds:?}");
}

#[test]
fn on_cpu_alone_a_horizontal_pod_autoscaler_carries_the_behavior() {
    let lcs = sample("tests/samples/good/cpu-autoscaling.yaml");
    let hpa: Vec<Manifest> = with_every_api(&lcs)
        .into_iter()
        .filter(|m| m.kind == Kind::HorizontalPodAutoscaler)
        .collect();
    insta::assert_yaml_snapshot!("cpu-autoscaling", yaml(&hpa));
}

#[test]
fn cert_manager_mode_creates_a_certificate_and_no_ca() {
    let lcs = sample("tests/samples/good/cert-manager.yaml");
    let out = with_every_api(&lcs);
    insta::assert_yaml_snapshot!("cert-manager", yaml(&out));
}

#[test]
fn an_own_exec_pre_stop_hook_runs_after_the_drain_and_another_kind_is_kept() {
    let lcs = sample("tests/samples/good/own-pre-stop.yaml");
    insta::assert_yaml_snapshot!("own-pre-stop", deployment(&lcs));
    let unchained: Vec<String> = desired::unchained_pre_stop_hooks(&lcs)
        .iter()
        .map(|u| format!("{}/{}", u.container, u.handler))
        .collect();
    assert_eq!(unchained, ["metrics/httpGet"]);
}

#[test]
fn user_secret_mode_mounts_that_secret_and_creates_no_certificate() {
    let lcs = sample("tests/samples/good/tls-secret.yaml");
    let out = desired::desired(
        &lcs,
        &observed(&lcs, ServedApis::default(), Some(lcs.spec.replicas)),
        &settings(),
    );
    assert!(
        out.iter()
            .all(|m| m.name != "tls-secret-tls" && m.name != "tls-secret-ca")
    );
    let deployment = out
        .iter()
        .find(|m| m.kind == Kind::Deployment)
        .expect("deployment");
    let volumes = &deployment.object["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["secret"]["secretName"] == "my-cert")
    );
}

/// The kinds `desired` builds for the chat example, with `apis` served and `monitoring` set.
fn monitoring_kinds(apis: ServedApis, monitoring: serde_json::Value) -> Vec<Kind> {
    let mut lcs = sample("../examples/chat.yaml");
    lcs.spec.monitoring = serde_json::from_value(monitoring).expect("a monitoring spec");
    desired::desired(
        &lcs,
        &observed(&lcs, apis, Some(lcs.spec.replicas)),
        &settings(),
    )
    .iter()
    .map(|m| m.kind)
    .filter(|k| matches!(k, Kind::ServiceMonitor | Kind::PrometheusRule))
    .collect()
}

#[test]
fn without_the_monitoring_api_no_service_monitor_is_desired() {
    let lcs = sample("../examples/chat.yaml");
    let out = desired::desired(
        &lcs,
        &observed(&lcs, ServedApis::default(), Some(lcs.spec.replicas)),
        &settings(),
    );
    assert!(
        out.iter()
            .all(|m| m.kind != Kind::ServiceMonitor && m.kind != Kind::PrometheusRule)
    );
    assert!(
        out.iter().any(|m| m.name == "chat-metrics"),
        "the metrics Service stays"
    );
}

#[test]
fn the_prometheus_rule_goes_beside_the_service_monitor_when_its_api_is_served_and_asked_for() {
    let defaults = serde_json::json!({});
    assert_eq!(
        monitoring_kinds(ALL_APIS, defaults.clone()),
        [Kind::ServiceMonitor, Kind::PrometheusRule]
    );
    let no_rule_api = ServedApis {
        prometheus_rule: false,
        ..ALL_APIS
    };
    assert_eq!(
        monitoring_kinds(no_rule_api, defaults),
        [Kind::ServiceMonitor]
    );
    assert_eq!(
        monitoring_kinds(
            ALL_APIS,
            serde_json::json!({"prometheusRule": {"enabled": false}})
        ),
        [Kind::ServiceMonitor]
    );
    // Its expressions select the ServiceMonitor's targets: without one, no rule either.
    assert_eq!(
        monitoring_kinds(
            ALL_APIS,
            serde_json::json!({"serviceMonitor": {"enabled": false}})
        ),
        []
    );
}

#[test]
fn only_the_update_revision_deployment_is_built_and_only_when_planned() {
    let lcs = sample("../examples/chat.yaml");
    let new = revision::of(&lcs, &settings());
    let deployments = |replicas| {
        desired::desired(&lcs, &observed(&lcs, ALL_APIS, replicas), &settings())
            .into_iter()
            .filter(|m| m.kind == Kind::Deployment)
            .map(|m| (m.name, m.object["spec"]["replicas"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        deployments(Some(4)),
        vec![(format!("chat-{new}"), serde_json::json!(4))]
    );
    assert!(deployments(None).is_empty(), "rolled back: none built");
}

#[test]
fn revision_changes_with_the_pod_template_but_not_with_scaling() {
    let lcs = sample("../examples/chat.yaml");
    let base = revision::of(&lcs, &settings());
    assert_eq!(base.len(), revision::LEN);
    let mut scaled = lcs.clone();
    scaled.spec.replicas = 7;
    scaled.spec.autoscaling = None;
    assert_eq!(revision::of(&scaled, &settings()), base);
    let mut changed = lcs.clone();
    if let Some(pod) = changed.spec.template.spec.as_mut() {
        pod.containers[0].image = Some("ghcr.io/longconn/longconn-echo:0.2.0".to_owned());
    }
    assert_ne!(revision::of(&changed, &settings()), base);
    let mut drained = lcs;
    drained.spec.drain.close_code = 1001;
    assert_ne!(revision::of(&drained, &settings()), base);
}

#[test]
fn during_a_ca_rotation_both_secrets_publish_both_cas_in_ca_crt() {
    let lcs = sample("../examples/chat.yaml");
    let mut observed = observed(&lcs, ALL_APIS, Some(lcs.spec.replicas));
    if let Some(bundle) = observed.certificate.as_mut() {
        bundle.previous_ca = Some(pair("OLD CA CERT\n", "OLD CA KEY"));
    }
    let secrets: Vec<Manifest> = desired::desired(&lcs, &observed, &settings())
        .into_iter()
        .filter(|m| m.name == "chat-ca" || m.name == "chat-tls")
        .collect();
    assert_eq!(secrets.len(), 2);
    let text = |m: &Manifest, key: &str| {
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(m.object["data"][key].clone()).expect("base64");
        String::from_utf8(bytes.0).expect("utf-8")
    };
    for secret in &secrets {
        assert_eq!(
            text(secret, "ca.crt"),
            "CA CERT\nOLD CA CERT\n",
            "{}",
            secret.name
        );
    }
    assert_eq!(text(&secrets[0], "ca-previous.key"), "OLD CA KEY");
    insta::assert_yaml_snapshot!("ca-rotation", yaml(&secrets));
}

#[test]
fn pod_disruption_budget_always_allows_evicting_unhealthy_pods() {
    let lcs = sample("../examples/chat.yaml");
    let out = with_every_api(&lcs);
    let pdb = out
        .iter()
        .find(|m| m.kind == Kind::PodDisruptionBudget)
        .expect("pdb");
    assert_eq!(
        pdb.object["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow",
        "a crash-looping pod must not block a node drain"
    );
}

#[test]
fn only_the_gateway_mounts_the_admin_token_and_the_hook_names_no_token() {
    let pod = &deployment(&sample("../examples/chat.yaml"))["spec"]["template"]["spec"];
    let mounts = |container: &serde_json::Value| -> Vec<String> {
        container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let gateway = &pod["initContainers"][0];
    assert_eq!(gateway["name"], desired::GATEWAY_CONTAINER);
    assert!(mounts(gateway).contains(&"longconn-admin".to_owned()));
    let app = &pod["containers"][0];
    assert_eq!(mounts(app), vec!["longconn-bin"]);
    let hook = app["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(hook.contains("drain") && hook.contains("--wait"), "{hook}");
    assert!(
        !hook.contains("token") && !hook.contains(desired::ADMIN_TOKEN_DIR),
        "{hook}"
    );
}
