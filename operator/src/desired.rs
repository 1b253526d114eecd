//! Every object a `LongConnService` needs, built by pure functions.
//!
//! [`desired`] takes the resource, what the reconciler observed, and the operator's settings,
//! and returns the full list of manifests to apply. It talks to no API server and reads no
//! clock, so snapshot tests pin its output exactly. The reconciler applies the list with
//! server-side apply and deletes whatever is labelled as ours but not in it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec as CoreServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use serde_json::{Value, json};

use crate::alerts;
use crate::certs::CertAndKey;
pub use crate::certs::CertBundle;
use crate::crd::{
    AutoscalingSpec, LogFormat, LongConnService, ScalingPolicyType, ScalingRules, SelectPolicy,
    SessionLimitAction, SessionLimitsSpec, TlsMode,
};
use crate::crd::{GatewaySpec, ProxyProtocol, ServiceType};
use crate::duration::Duration;
use crate::kinds::Kind;
use crate::labels::{self, names};
use crate::revision;

/// Where the gateway copies its binary so the app's preStop hook can run `drain --wait`.
pub const GATEWAY_BIN_DIR: &str = "/longconn/bin";
/// Where the admin-token Secret is mounted in the gateway container (and in no other: the app's
/// preStop hook drains with the local token the gateway writes beside its installed binary).
pub const ADMIN_TOKEN_DIR: &str = "/etc/longconn/admin";
/// Where the serving certificate Secret is mounted in the gateway.
pub const TLS_DIR: &str = "/etc/longconn/tls";
/// Name of the gateway container.
pub const GATEWAY_CONTAINER: &str = "longconn-gateway";
/// Key of the token in the admin-token Secret.
pub const ADMIN_TOKEN_KEY: &str = "token";
/// The finalizer every pod carries until the operator has recorded its gateway's final drain
/// report (read from the gateway container's termination message) or counted its loss.
pub const DRAIN_REPORT_FINALIZER: &str = "longconn.dev/drain-report";
/// Where the gateway leaves its final report: the container's termination message file.
pub const TERMINATION_REPORT: &str = "/dev/termination-log";
/// Extra grace on top of `drain.timeout` before the kubelet kills a pod.
pub const GRACE_MARGIN_SECONDS: i64 = 30;
/// Kubernetes' `terminationGracePeriodSeconds` for a pod that sets none.
const KUBERNETES_GRACE_SECONDS: i64 = 30;

/// Operator-wide settings that shape the objects (flags of `longconn-operator run`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Gateway image when `spec.gateway.image` is unset.
    pub gateway_image: String,
    /// Namespace of the operator's pods (the NetworkPolicy admits the admin port from them).
    pub operator_namespace: String,
    /// Labels of the operator's pods.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Namespace of the Prometheus that scrapes the gateways; admitted to the admin port.
    pub metrics_namespace: Option<String>,
    /// The cluster's DNS domain, for the certificate's names.
    pub cluster_domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gateway_image: format!(
                "ghcr.io/longconn/longconn-gateway:{}",
                env!("CARGO_PKG_VERSION")
            ),
            operator_namespace: "longconn-system".to_owned(),
            operator_pod_labels: BTreeMap::from([(
                labels::NAME.to_owned(),
                "longconn-operator".to_owned(),
            )]),
            metrics_namespace: None,
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

/// A Deployment of one revision as observed in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRevision {
    pub revision: String,
    /// `spec.replicas` as last applied.
    pub replicas: i32,
    /// `status.replicas`: pods that still exist.
    pub current_replicas: i32,
    pub ready_replicas: i32,
}

/// Which optional APIs the cluster serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServedApis {
    pub service_monitor: bool,
    pub prometheus_rule: bool,
    pub cert_manager: bool,
}

impl ServedApis {
    /// Whether objects of `kind` can be made: its API is served, or it needs none optional.
    pub fn serve(self, kind: Kind) -> bool {
        match kind {
            Kind::ServiceMonitor => self.service_monitor,
            Kind::PrometheusRule => self.prometheus_rule,
            Kind::Certificate => self.cert_manager,
            _ => true,
        }
    }
}

/// What the reconciler found that the desired objects depend on.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Replicas of the update revision's Deployment, as the rollout plans them; None when the
    /// rollout has taken it away (rolled back, no pod left).
    pub update_replicas: Option<i32>,
    /// The admin token: the existing Secret's, or a fresh one.
    pub admin_token: String,
    /// Mode SelfSigned: the CA (and, during a rotation, the previous CA) and the serving
    /// certificate to keep in the Secrets.
    pub certificate: Option<CertBundle>,
    pub apis: ServedApis,
    /// What the client Service selects.
    pub routing: ServiceRouting,
}

/// The client Service's selector, as the rollout decides it ([`crate::placement::selects`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceRouting {
    /// The revision it selects; None: every revision.
    pub revision: Option<String>,
    /// When the operator last changed that, kept in the Service's
    /// `longconn.dev/routing-changed-at` annotation.
    pub changed_at: Option<Timestamp>,
}

/// One object to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub kind: Kind,
    pub name: String,
    pub object: Value,
}

/// What `longconn-operator render` prints: every object `lcs` becomes, with placeholders for
/// what is generated in the cluster (the admin token, the certificates), and the
/// ControllerRevision of revision 1, which the first reconcile records too.
pub fn rendered(lcs: &LongConnService, settings: &Settings) -> Vec<Manifest> {
    let placeholder = |what: &str| format!("<{what}, generated in the cluster>");
    let observed = Observed {
        update_replicas: Some(lcs.spec.replicas),
        admin_token: placeholder("admin token"),
        certificate: Some(CertBundle {
            ca: CertAndKey {
                cert_pem: placeholder("CA certificate"),
                key_pem: placeholder("CA key"),
            },
            previous_ca: None,
            serving: CertAndKey {
                cert_pem: placeholder("serving certificate"),
                key_pem: placeholder("serving key"),
            },
        }),
        apis: ServedApis {
            service_monitor: true,
            prometheus_rule: true,
            cert_manager: true,
        },
        routing: ServiceRouting {
            revision: Some(revision::of(lcs, settings)),
            changed_at: None,
        },
    };
    let first_revision = controller_revision(
        lcs,
        &revision::of(lcs, settings),
        1,
        crate::history::PodFields::of(&lcs.spec).to_json(),
    );
    let mut manifests = desired(lcs, &observed, settings);
    manifests.push(first_revision);
    manifests
}

/// Every object the LongConnService needs, in apply order (Secrets before the pods that
/// mount them).
pub fn desired(lcs: &LongConnService, observed: &Observed, settings: &Settings) -> Vec<Manifest> {
    let ctx = Ctx::new(lcs);
    let update_revision = revision::of(lcs, settings);
    let mut out = Vec::new();

    out.push(ctx.manifest(
        Kind::Secret,
        admin_token_secret(&ctx, &observed.admin_token),
    ));
    match (lcs.spec.tls.mode, &observed.certificate) {
        (TlsMode::SelfSigned, Some(bundle)) => {
            out.push(ctx.manifest(Kind::Secret, ca_secret(&ctx, bundle)));
            out.push(ctx.manifest(Kind::Secret, serving_secret(&ctx, bundle)));
        }
        (TlsMode::CertManager, _) if observed.apis.cert_manager => {
            out.push(ctx.manifest(Kind::Certificate, certificate(&ctx, settings)));
        }
        _ => {}
    }

    // Only the update revision's Deployment is built from the spec; older ones keep their own
    // template and are only scaled, by the rollout.
    if let Some(replicas) = observed.update_replicas {
        out.push(ctx.manifest(
            Kind::Deployment,
            deployment(&ctx, settings, &update_revision, replicas),
        ));
    }
    out.push(ctx.manifest(Kind::Service, service(&ctx, &observed.routing)));
    out.push(ctx.manifest(Kind::PodDisruptionBudget, pdb(&ctx)));
    out.push(ctx.manifest(Kind::NetworkPolicy, network_policy(&ctx, settings)));

    let monitor = &lcs.spec.monitoring.service_monitor;
    if monitor.enabled {
        out.push(ctx.manifest(Kind::Service, metrics_service(&ctx)));
        if observed.apis.service_monitor {
            out.push(ctx.manifest(Kind::ServiceMonitor, service_monitor(&ctx)));
        }
        if lcs.spec.monitoring.prometheus_rule.enabled && observed.apis.prometheus_rule {
            out.push(ctx.manifest(Kind::PrometheusRule, prometheus_rule(&ctx)));
        }
    }
    // On sessions the operator scales itself (`autoscale`): a HorizontalPodAutoscaler beside
    // it would be a second writer of `spec.replicas`.
    if let Some(autoscaling) = &lcs.spec.autoscaling
        && autoscaling.target_sessions_per_pod.is_none()
        && let Some(cpu) = autoscaling.target_cpu_utilization
    {
        out.push(ctx.manifest(Kind::HorizontalPodAutoscaler, hpa(&ctx, autoscaling, cpu)));
    }
    out
}

/// What every builder needs to know about the LongConnService.
struct Ctx<'a> {
    lcs: &'a LongConnService,
    name: String,
    namespace: String,
    owner: OwnerReference,
}

impl<'a> Ctx<'a> {
    fn new(lcs: &'a LongConnService) -> Self {
        let name = lcs.metadata.name.clone().unwrap_or_default();
        let namespace = lcs.metadata.namespace.clone().unwrap_or_default();
        let owner = OwnerReference {
            api_version: LongConnService::api_version(&()).into_owned(),
            kind: LongConnService::kind(&()).into_owned(),
            name: name.clone(),
            uid: lcs.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        Self {
            lcs,
            name,
            namespace,
            owner,
        }
    }

    fn meta(&self, name: String) -> ObjectMeta {
        self.meta_with(name, BTreeMap::new())
    }

    fn meta_with(&self, name: String, extra_labels: BTreeMap<String, String>) -> ObjectMeta {
        let mut labels = labels::common(&self.name);
        labels.extend(extra_labels);
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn manifest(&self, kind: Kind, object: impl Serialize) -> Manifest {
        let mut object = serde_json::to_value(object).unwrap_or(Value::Null);
        let res = kind.api_resource();
        if let Value::Object(map) = &mut object {
            map.insert("apiVersion".to_owned(), Value::String(res.api_version));
            map.insert("kind".to_owned(), Value::String(res.kind));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Manifest { kind, name, object }
    }
}

/// The ControllerRevision that keeps revision `revision`'s pod fields (`data`), numbered as its
/// record in `status.history` ([`crate::history`]).
pub fn controller_revision(
    lcs: &LongConnService,
    revision: &str,
    number: i64,
    data: Value,
) -> Manifest {
    let ctx = Ctx::new(lcs);
    ctx.manifest(
        Kind::ControllerRevision,
        ControllerRevision {
            metadata: ctx.meta_with(
                names::controller_revision(&ctx.name, revision),
                BTreeMap::from([(labels::REVISION.to_owned(), revision.to_owned())]),
            ),
            data: Some(RawExtension(data)),
            revision: number,
        },
    )
}

fn admin_token_secret(ctx: &Ctx, token: &str) -> Secret {
    Secret {
        metadata: ctx.meta(names::admin_token(&ctx.name)),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            ADMIN_TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn ca_secret(ctx: &Ctx, bundle: &CertBundle) -> Secret {
    Secret {
        metadata: ctx.meta(names::ca(&ctx.name)),
        type_: Some("Opaque".to_owned()),
        data: Some(secret_data(bundle.ca_secret_data())),
        ..Secret::default()
    }
}

fn serving_secret(ctx: &Ctx, bundle: &CertBundle) -> Secret {
    Secret {
        metadata: ctx.meta(names::serving_cert(&ctx.name)),
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(secret_data(bundle.serving_secret_data())),
        ..Secret::default()
    }
}

fn secret_data(data: BTreeMap<&'static str, String>) -> BTreeMap<String, ByteString> {
    data.into_iter()
        .map(|(key, value)| (key.to_owned(), ByteString(value.into_bytes())))
        .collect()
}

/// The DNS names the serving certificate covers: the Service's own names plus `tls.dnsNames`.
pub fn certificate_dns_names(lcs: &LongConnService, settings: &Settings) -> Vec<String> {
    let name = lcs.metadata.name.clone().unwrap_or_default();
    let ns = lcs.metadata.namespace.clone().unwrap_or_default();
    let mut names = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.{}", settings.cluster_domain),
    ];
    for extra in &lcs.spec.tls.dns_names {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    names
}

/// The Secret the gateway reads its certificate from, if TLS is on.
pub fn tls_secret_name(lcs: &LongConnService) -> Option<String> {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    match lcs.spec.tls.mode {
        TlsMode::SelfSigned | TlsMode::CertManager => Some(names::serving_cert(name)),
        TlsMode::Secret => lcs.spec.tls.secret_name.clone(),
        TlsMode::Disabled => None,
    }
}

fn certificate(ctx: &Ctx, settings: &Settings) -> Value {
    let tls = &ctx.lcs.spec.tls;
    let validity = tls.validity.to_std().unwrap_or_default();
    let issuer = tls.issuer_ref.clone();
    json!({
        "metadata": ctx.meta(names::serving_cert(&ctx.name)),
        "spec": {
            "secretName": names::serving_cert(&ctx.name),
            "dnsNames": certificate_dns_names(ctx.lcs, settings),
            "duration": crate::duration::Duration::from_std(validity).as_str(),
            "renewBefore": crate::duration::Duration::from_std(validity / 3).as_str(),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": issuer.map(|i| json!({"name": i.name, "kind": i.kind, "group": i.group})),
        }
    })
}

fn deployment(ctx: &Ctx, settings: &Settings, revision: &str, replicas: i32) -> Deployment {
    let selector = labels::revision_pods(&ctx.name, revision);
    let progress_deadline = ctx
        .lcs
        .spec
        .rollout
        .progress_deadline
        .to_std()
        .map_or(600, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
    Deployment {
        metadata: ctx.meta_with(names::deployment(&ctx.name, revision), selector.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: pod_template(ctx, settings, revision),
            progress_deadline_seconds: Some(progress_deadline),
            revision_history_limit: Some(1),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The user's pod template with the gateway injected as a native sidecar.
pub fn pod_template_for(
    lcs: &LongConnService,
    settings: &Settings,
    revision: &str,
) -> PodTemplateSpec {
    pod_template(&Ctx::new(lcs), settings, revision)
}

fn pod_template(ctx: &Ctx, settings: &Settings, revision: &str) -> PodTemplateSpec {
    let spec = &ctx.lcs.spec;
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let pod_labels = meta.labels.get_or_insert_with(BTreeMap::new);
    pod_labels.extend(labels::common(&ctx.name));
    pod_labels.extend(labels::revision_pods(&ctx.name, revision));
    pod_labels.insert(labels::ACCEPTING.to_owned(), "true".to_owned());
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == DRAIN_REPORT_FINALIZER) {
        finalizers.push(DRAIN_REPORT_FINALIZER.to_owned());
    }

    let mut pod = template.spec.take().unwrap_or_default();
    if let Some(first) = pod.containers.first() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .entry("kubectl.kubernetes.io/default-container".to_owned())
            .or_insert_with(|| first.name.clone());
    }

    let tls_secret = tls_secret_name(ctx.lcs);
    let admin = admin_port(ctx.lcs);
    let chains_own_hook = pod
        .containers
        .iter()
        .any(|c| matches!(own_pre_stop(c), OwnPreStop::Exec(_)));
    for container in &mut pod.containers {
        inject_drain_hook(container, admin);
    }
    let mut init = vec![gateway_container(ctx, settings, tls_secret.is_some())];
    init.append(pod.init_containers.get_or_insert_with(Vec::new));
    pod.init_containers = Some(init);

    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: "longconn-bin".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(secret_volume(
        "longconn-admin",
        names::admin_token(&ctx.name),
    ));
    if let Some(secret) = tls_secret {
        volumes.push(secret_volume("longconn-tls", secret));
    }

    let drain_seconds = spec.drain.timeout.to_std().map_or(0, |d| d.as_secs());
    // A container's own exec hook now runs after the drain: it keeps the time the pod gave it.
    let own_hook_seconds = if chains_own_hook {
        pod.termination_grace_period_seconds
            .unwrap_or(KUBERNETES_GRACE_SECONDS)
    } else {
        0
    };
    let grace = i64::try_from(drain_seconds)
        .unwrap_or(i64::MAX / 2)
        .saturating_add(GRACE_MARGIN_SECONDS)
        .saturating_add(own_hook_seconds);
    pod.termination_grace_period_seconds =
        Some(pod.termination_grace_period_seconds.unwrap_or(0).max(grace));

    if pod
        .topology_spread_constraints
        .as_ref()
        .is_none_or(Vec::is_empty)
    {
        pod.topology_spread_constraints = Some(
            ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
                .into_iter()
                .map(|key| TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: key.to_owned(),
                    when_unsatisfiable: "ScheduleAnyway".to_owned(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels::revision_pods(&ctx.name, revision)),
                        ..LabelSelector::default()
                    }),
                    ..TopologySpreadConstraint::default()
                })
                .collect(),
        );
    }
    template.spec = Some(pod);
    template
}

/// The gateway's admin port (the schema keeps it in 1..=65535).
pub fn admin_port(lcs: &LongConnService) -> u16 {
    u16::try_from(lcs.spec.gateway.admin_port).unwrap_or_default()
}

fn secret_volume(volume: &str, secret: String) -> Volume {
    Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o444),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Adds the drain hook to an app container: its preStop drains the gateway and waits, so a
/// pod that goes away for any reason (eviction, node drain) moves its sessions first. The hook
/// runs the binary the gateway installed into the shared emptyDir, which finds the local token
/// the gateway wrote beside it: no token is mounted into the app container or named in its
/// spec. A container's own `exec` preStop hook runs after the drain, in the same hook
/// (`drain --wait ... -- COMMAND`); another kind of hook (httpGet, sleep, tcpSocket) cannot be
/// chained and is kept instead of the drain ([`unchained_pre_stop_hooks`] names those).
fn inject_drain_hook(container: &mut Container, admin_port: u16) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.push(VolumeMount {
        name: "longconn-bin".to_owned(),
        mount_path: GATEWAY_BIN_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let command = match own_pre_stop(container) {
        OwnPreStop::None => drain_hook(admin_port, &[]),
        OwnPreStop::Exec(command) => drain_hook(admin_port, command),
        OwnPreStop::Unchainable(_) => return,
    };
    container
        .lifecycle
        .get_or_insert_with(Lifecycle::default)
        .pre_stop = Some(LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        ..LifecycleHandler::default()
    });
}

/// How long the drain hook of a pod deleted by someone else (an eviction, a node drain) waits
/// for the operator to start its drain, which it does once the sessions have somewhere to go
/// (the pod replacing it is Ready); after that the hook starts the drain itself. Well within
/// the grace period's margin over `drain.timeout`.
pub const HANDOFF: std::time::Duration = std::time::Duration::from_secs(20);

/// The drain hook's command, followed by `then` (a container's own preStop command) if any.
fn drain_hook(admin_port: u16, then: &[String]) -> Vec<String> {
    let mut command = vec![
        format!("{GATEWAY_BIN_DIR}/longconn-gateway"),
        "drain".to_owned(),
        "--wait".to_owned(),
        "--admin".to_owned(),
        format!("127.0.0.1:{admin_port}"),
        "--handoff".to_owned(),
        format!("{}s", HANDOFF.as_secs()),
    ];
    if !then.is_empty() {
        command.push("--".to_owned());
        command.extend_from_slice(then);
    }
    command
}

/// A container's own preStop hook, as the drain hook sees it.
enum OwnPreStop<'a> {
    None,
    /// An exec hook: its command runs after the drain.
    Exec(&'a [String]),
    /// Any other handler, by its field name: it is kept, and no drain runs.
    Unchainable(&'static str),
}

fn own_pre_stop(container: &Container) -> OwnPreStop<'_> {
    let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return OwnPreStop::None;
    };
    if let Some(exec) = &hook.exec {
        OwnPreStop::Exec(exec.command.as_deref().unwrap_or_default())
    } else if hook.http_get.is_some() {
        OwnPreStop::Unchainable("httpGet")
    } else if hook.sleep.is_some() {
        OwnPreStop::Unchainable("sleep")
    } else if hook.tcp_socket.is_some() {
        OwnPreStop::Unchainable("tcpSocket")
    } else {
        // A handler with no action is no hook (the API server refuses one anyway).
        OwnPreStop::None
    }
}

/// An app container whose own preStop hook is kept instead of the drain hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnchainedPreStop {
    /// The container's name.
    pub container: String,
    /// The hook's handler: `httpGet`, `sleep` or `tcpSocket`.
    pub handler: &'static str,
}

impl std::fmt::Display for UnchainedPreStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} has a {} preStop hook, which cannot run after the drain; it is kept, so \
             this container's stop does not drain the gateway (use an exec hook to have both)",
            self.container, self.handler
        )
    }
}

/// The app containers of `lcs` whose own preStop hook is not an `exec` command, so that the
/// drain hook cannot run before it: they keep their hook and get no drain hook, and a pod that
/// goes away without the operator draining it first (an eviction, a node drain) may cut its
/// sessions. The reconciler reports them (see the operator's README).
pub fn unchained_pre_stop_hooks(lcs: &LongConnService) -> Vec<UnchainedPreStop> {
    let containers = lcs
        .spec
        .template
        .spec
        .as_ref()
        .map_or(&[][..], |pod| &pod.containers[..]);
    containers
        .iter()
        .filter_map(|container| match own_pre_stop(container) {
            OwnPreStop::Unchainable(handler) => Some(UnchainedPreStop {
                container: container.name.clone(),
                handler,
            }),
            OwnPreStop::None | OwnPreStop::Exec(_) => None,
        })
        .collect()
}

/// The gateway container's resources: `spec.gateway.resources`, or requests of 50m CPU and 64Mi.
fn gateway_resources(g: &crate::crd::GatewaySpec) -> ResourceRequirements {
    g.resources.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        ..ResourceRequirements::default()
    })
}

/// The gateway's runtime threads: its CPU limit, or else its CPU request, rounded up to whole
/// CPUs (1 runs the single-threaded scheduler). Without either, or with a quantity
/// [`crate::cpu::millis`] does not read (`2k`), none is passed and the gateway
/// starts one per CPU of the node, which a container held to a fraction of one would only spend
/// in the scheduler's throttling.
pub fn worker_threads(resources: &ResourceRequirements) -> Option<u64> {
    let cpu = |list: &Option<BTreeMap<String, Quantity>>| list.as_ref()?.get("cpu").cloned();
    let millis = crate::cpu::millis(&cpu(&resources.limits).or_else(|| cpu(&resources.requests))?)?;
    (millis > 0.0).then(|| ((millis / 1000.0).ceil() as u64).max(1))
}

/// The gateway's command line, one flag per `spec.gateway` / `spec.drain` field.
pub fn gateway_args(lcs: &LongConnService, tls: bool) -> Vec<String> {
    let g = &lcs.spec.gateway;
    let d = &lcs.spec.drain;
    let mut args = vec![
        "run".to_owned(),
        format!("--listen=0.0.0.0:{}", g.port),
        format!("--upstream=127.0.0.1:{}", g.upstream_port),
        format!("--admin-listen=0.0.0.0:{}", g.admin_port),
        format!("--admin-token-file={ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"),
        format!("--install-to={GATEWAY_BIN_DIR}"),
        format!("--termination-report={TERMINATION_REPORT}"),
        format!("--max-connections={}", g.max_connections),
        format!("--heartbeat-interval={}", g.heartbeat.interval),
        format!("--heartbeat-timeout={}", g.heartbeat.timeout),
        format!("--idle-timeout={}", g.idle_timeout),
        format!("--handshake-timeout={}", g.handshake_timeout),
        format!("--max-message-bytes={}", g.max_message_bytes),
        format!(
            "--rate-limit-connections-per-second-per-ip={}",
            g.rate_limit.connections_per_second_per_ip
        ),
        format!("--rate-limit-burst={}", g.rate_limit.burst),
        format!("--max-http-connections={}", g.http.max_connections),
        format!("--http-idle-timeout={}", g.http.idle_timeout),
        format!("--http-max-body-bytes={}", g.http.max_body_bytes),
        format!("--drain-strategy={:?}", d.strategy),
        format!("--drain-timeout={}", d.timeout),
        format!("--drain-spread={}", d.spread),
        format!("--drain-close-code={}", d.close_code),
    ];
    if let Some(threads) = worker_threads(&gateway_resources(g)) {
        args.push(format!("--worker-threads={threads}"));
    }
    if g.rate_limit.connections_per_second_per_ip == 0 {
        // Per-IP limits are off: many clients share one address.
        args.push("--max-handshakes-per-ip=0".to_owned());
    }
    if !g.allowed_origins.is_empty() {
        args.push(format!("--allowed-origins={}", g.allowed_origins.join(",")));
    }
    args.extend(session_limit_args(g.session_limits.as_ref()));
    args.push(format!(
        "--log-format={}",
        match g.logging.format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    ));
    args.push(format!("--log-level={}", g.logging.level));
    args.extend(client_address_args(g));
    if tls {
        args.push(format!("--tls-cert={TLS_DIR}/tls.crt"));
        args.push(format!("--tls-key={TLS_DIR}/tls.key"));
    }
    args
}

/// The flags of `gateway.proxyProtocol` and `gateway.trustedProxies`, only when set: a spec
/// that leaves them out keeps the revision it had before they existed.
fn client_address_args(g: &GatewaySpec) -> Vec<String> {
    let mut args = Vec::new();
    let proxy_protocol = match g.proxy_protocol {
        ProxyProtocol::Disabled => None,
        ProxyProtocol::V1 => Some("v1"),
        ProxyProtocol::V2 => Some("v2"),
        ProxyProtocol::Any => Some("any"),
    };
    if let Some(p) = proxy_protocol {
        args.push(format!("--proxy-protocol={p}"));
    }
    if !g.trusted_proxies.is_empty() {
        args.push(format!("--trusted-proxies={}", g.trusted_proxies.join(",")));
    }
    args
}

/// The gateway's `--session-*` flags for `gateway.sessionLimits`; none when it is unset, so
/// that the pods (and the revision) of a LongConnService without it stay as they were.
fn session_limit_args(limits: Option<&SessionLimitsSpec>) -> Vec<String> {
    let Some(l) = limits else {
        return Vec::new();
    };
    let flag = |name: &str, value: Option<i64>| value.map(|v| format!("--session-{name}={v}"));
    [
        flag("messages-per-second", l.messages_per_second.map(i64::from)),
        flag("message-burst", l.message_burst.map(i64::from)),
        flag("bytes-per-second", l.bytes_per_second),
        flag("bytes-burst", l.bytes_burst),
        Some(format!(
            "--session-limit-action={}",
            match l.action {
                SessionLimitAction::Backpressure => "backpressure",
                SessionLimitAction::Close => "close",
            }
        )),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn gateway_container(ctx: &Ctx, settings: &Settings, tls: bool) -> Container {
    let g = &ctx.lcs.spec.gateway;
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let mut mounts = vec![
        VolumeMount {
            name: "longconn-bin".to_owned(),
            mount_path: GATEWAY_BIN_DIR.to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "longconn-admin".to_owned(),
            mount_path: ADMIN_TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    if tls {
        mounts.push(VolumeMount {
            name: "longconn-tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: GATEWAY_CONTAINER.to_owned(),
        image: Some(revision::gateway_image(ctx.lcs, settings)),
        args: Some(gateway_args(ctx.lcs, tls)),
        restart_policy: Some("Always".to_owned()),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".to_owned()),
                container_port: g.port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: g.admin_port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        startup_probe: Some(http_probe("/healthz", 1, 60)),
        readiness_probe: Some(http_probe("/readyz", 2, 1)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: Some(gateway_resources(&ctx.lcs.spec.gateway)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The client Service: the pods of the revision it selects (every revision when none) that
/// carry `longconn.dev/accepting: "true"`.
fn service(ctx: &Ctx, routing: &ServiceRouting) -> Service {
    let svc = &ctx.lcs.spec.service;
    let mut meta = ctx.meta(ctx.name.clone());
    let mut annotations = svc.annotations.clone();
    if let Some(at) = routing.changed_at {
        annotations.insert(labels::ROUTING_CHANGED_AT.to_owned(), at.to_string());
    }
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    let mut selector = labels::accepting_pods(&ctx.name);
    if let Some(revision) = &routing.revision {
        selector.insert(labels::REVISION.to_owned(), revision.clone());
    }
    Service {
        metadata: meta,
        spec: Some(CoreServiceSpec {
            type_: Some(format!("{:?}", svc.type_)),
            // Kubernetes refuses the field on a ClusterIP Service (the schema does too).
            external_traffic_policy: svc
                .external_traffic_policy
                .filter(|_| svc.type_ != ServiceType::ClusterIP)
                .map(|p| format!("{p:?}")),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("client".to_owned()),
                port: ctx.lcs.spec.gateway.port,
                target_port: Some(IntOrString::String("client".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..CoreServiceSpec::default()
        }),
        status: None,
    }
}

/// A headless Service over the admin port, for the ServiceMonitor only, so the admin port is
/// never on the client-facing (possibly LoadBalancer) Service.
fn metrics_service(ctx: &Ctx) -> Service {
    Service {
        metadata: ctx.meta_with(
            names::metrics_service(&ctx.name),
            BTreeMap::from([(labels::COMPONENT.to_owned(), "metrics".to_owned())]),
        ),
        spec: Some(CoreServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(labels::pods(&ctx.name)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                port: ctx.lcs.spec.gateway.admin_port,
                target_port: Some(IntOrString::String("admin".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..CoreServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(ctx: &Ctx) -> PodDisruptionBudget {
    let d = &ctx.lcs.spec.disruption;
    let max_unavailable = match (&d.max_unavailable, &d.min_available) {
        (None, None) => Some(IntOrString::Int(1)),
        (max, _) => max.clone(),
    };
    PodDisruptionBudget {
        metadata: ctx.meta(ctx.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(labels::pods(&ctx.name)),
                ..LabelSelector::default()
            }),
            max_unavailable,
            min_available: d.min_available.clone(),
            // A pod that is not Ready (crash-looping, stuck starting) may always be evicted:
            // otherwise it counts against the budget and blocks every node drain until it
            // recovers. One that still holds sessions drains through its preStop hook.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
        }),
        status: None,
    }
}

fn network_policy(ctx: &Ctx, settings: &Settings) -> NetworkPolicy {
    let g = &ctx.lcs.spec.gateway;
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let namespace_selector = |ns: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            ns.to_owned(),
        )])),
        ..LabelSelector::default()
    };
    let mut admin_from = vec![NetworkPolicyPeer {
        namespace_selector: Some(namespace_selector(&settings.operator_namespace)),
        pod_selector: Some(LabelSelector {
            match_labels: Some(settings.operator_pod_labels.clone()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }];
    if let Some(ns) = &settings.metrics_namespace {
        admin_from.push(NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector(ns)),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicy {
        metadata: ctx.meta(ctx.name.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::pods(&ctx.name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(g.port)]),
                    from: None,
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(g.admin_port)]),
                    from: Some(admin_from),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn service_monitor(ctx: &Ctx) -> Value {
    let m = &ctx.lcs.spec.monitoring.service_monitor;
    json!({
        "metadata": ctx.meta_with(ctx.name.clone(), m.labels.clone()),
        "spec": {
            "selector": {"matchLabels": {
                labels::INSTANCE: ctx.name,
                labels::MANAGED_BY: labels::MANAGER,
                labels::COMPONENT: "metrics",
            }},
            "namespaceSelector": {"matchNames": [ctx.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": m.interval.as_str()}],
        }
    })
}

/// The alerts of [`alerts::rules`], in one group.
fn prometheus_rule(ctx: &Ctx) -> Value {
    let r = &ctx.lcs.spec.monitoring.prometheus_rule;
    json!({
        "metadata": ctx.meta_with(ctx.name.clone(), r.labels.clone()),
        "spec": {"groups": [{"name": alerts::GROUP, "rules": alerts::rules(ctx.lcs)}]},
    })
}

/// The HorizontalPodAutoscaler of `targetCPUUtilization` alone, with the spec's behavior.
fn hpa(ctx: &Ctx, a: &AutoscalingSpec, cpu: i32) -> HorizontalPodAutoscaler {
    let metric = MetricSpec {
        type_: "Resource".to_owned(),
        resource: Some(ResourceMetricSource {
            name: "cpu".to_owned(),
            target: MetricTarget {
                type_: "Utilization".to_owned(),
                average_utilization: Some(cpu),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    // The cluster's default tolerance is 10%; another one needs the HPAConfigurableTolerance
    // feature (beta, on by default since Kubernetes 1.34).
    let tolerance = a.behavior.tolerance;
    let tolerance =
        ((tolerance - 0.1).abs() > f64::EPSILON).then(|| Quantity(format!("{tolerance}")));
    let rules = |r: &ScalingRules| HPAScalingRules {
        policies: r.policies.as_ref().map(|policies| {
            policies
                .iter()
                .map(|p| HPAScalingPolicy {
                    period_seconds: seconds(&p.period).max(1),
                    type_: match p.type_ {
                        ScalingPolicyType::Pods => "Pods",
                        ScalingPolicyType::Percent => "Percent",
                    }
                    .to_owned(),
                    value: p.value,
                })
                .collect()
        }),
        select_policy: Some(
            match r.select_policy {
                SelectPolicy::Max => "Max",
                SelectPolicy::Min => "Min",
                SelectPolicy::Disabled => "Disabled",
            }
            .to_owned(),
        ),
        stabilization_window_seconds: r.stabilization_window.as_ref().map(seconds),
        tolerance: tolerance.clone(),
    };
    HorizontalPodAutoscaler {
        metadata: ctx.meta(ctx.name.clone()),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(LongConnService::api_version(&()).into_owned()),
                kind: LongConnService::kind(&()).into_owned(),
                name: ctx.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![metric]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: Some(rules(&a.behavior.scale_up)),
                scale_down: Some(rules(&a.behavior.scale_down)),
            }),
        },
        status: None,
    }
}

/// A duration of the spec in whole seconds, rounded up (the HorizontalPodAutoscaler counts in
/// seconds).
fn seconds(d: &Duration) -> i32 {
    let d = d.to_std().unwrap_or_default();
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExternalTrafficPolicy, LongConnServiceSpec};

    #[test]
    fn the_gateway_logs_json_at_info_unless_the_spec_says_otherwise() {
        let mut lcs = LongConnService::test().build();
        let logging = |lcs: &LongConnService| -> Vec<String> {
            gateway_args(lcs, false)
                .into_iter()
                .filter(|a| a.starts_with("--log-"))
                .collect()
        };
        assert_eq!(logging(&lcs), ["--log-format=json", "--log-level=info"]);
        lcs.spec.gateway.logging.format = LogFormat::Text;
        lcs.spec.gateway.logging.level = "warn,longconn_gateway::access_log=info".to_owned();
        assert_eq!(
            logging(&lcs),
            [
                "--log-format=text",
                "--log-level=warn,longconn_gateway::access_log=info"
            ]
        );
    }

    #[test]
    fn client_address_flags_are_passed_only_when_set_so_the_revision_stays() {
        let mut lcs = LongConnService::test().build();
        let client_flags = |lcs: &LongConnService| -> Vec<String> {
            gateway_args(lcs, false)
                .into_iter()
                .filter(|a| a.starts_with("--proxy-protocol") || a.starts_with("--trusted-"))
                .collect()
        };
        let before = revision::of(&lcs, &Settings::default());
        assert!(client_flags(&lcs).is_empty());
        lcs.spec.gateway.trusted_proxies = Vec::new();
        assert_eq!(revision::of(&lcs, &Settings::default()), before);
        for (mode, flag) in [
            (ProxyProtocol::V1, "v1"),
            (ProxyProtocol::V2, "v2"),
            (ProxyProtocol::Any, "any"),
        ] {
            lcs.spec.gateway.proxy_protocol = mode;
            assert_eq!(client_flags(&lcs), [format!("--proxy-protocol={flag}")]);
        }
        lcs.spec.gateway.trusted_proxies =
            vec!["10.0.0.0/8".to_owned(), "2001:db8::/32".to_owned()];
        assert_eq!(
            client_flags(&lcs),
            [
                "--proxy-protocol=any",
                "--trusted-proxies=10.0.0.0/8,2001:db8::/32"
            ]
        );
        assert_ne!(revision::of(&lcs, &Settings::default()), before);
    }

    #[test]
    fn the_client_service_selects_the_revision_routed_to_with_the_time_of_the_change() {
        let mut lcs = LongConnService::test().build();
        lcs.spec.service.annotations =
            BTreeMap::from([("example.com/team".to_owned(), "chat".to_owned())]);
        let at: Timestamp = "2026-12-06T10:00:00Z".parse().expect("time");
        let routed = service(
            &Ctx::new(&lcs),
            &ServiceRouting {
                revision: Some("abc".to_owned()),
                changed_at: Some(at),
            },
        );
        let selector = routed.spec.expect("spec").selector.expect("selector");
        assert_eq!(
            selector.get(labels::REVISION).map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            selector.get(labels::ACCEPTING).map(String::as_str),
            Some("true")
        );
        let annotations = routed.metadata.annotations.expect("annotations");
        assert_eq!(annotations[labels::ROUTING_CHANGED_AT], at.to_string());
        assert_eq!(annotations["example.com/team"], "chat");
        // Every revision: no revision in the selector, and no annotation while never changed.
        let every = service(&Ctx::new(&lcs), &ServiceRouting::default());
        assert!(
            !every
                .spec
                .expect("spec")
                .selector
                .expect("selector")
                .contains_key(labels::REVISION)
        );
        assert!(
            !every
                .metadata
                .annotations
                .expect("the user's")
                .contains_key(labels::ROUTING_CHANGED_AT)
        );
    }

    #[test]
    fn the_client_service_keeps_client_addresses_with_external_traffic_policy_local() {
        let policy = |type_: ServiceType, policy: Option<ExternalTrafficPolicy>| {
            let mut lcs = LongConnService::test().build();
            lcs.spec.service.type_ = type_;
            lcs.spec.service.external_traffic_policy = policy;
            service(&Ctx::new(&lcs), &ServiceRouting::default())
                .spec
                .expect("spec")
                .external_traffic_policy
        };
        use ExternalTrafficPolicy::{Cluster, Local};
        assert_eq!(
            policy(ServiceType::LoadBalancer, Some(Local)).as_deref(),
            Some("Local")
        );
        assert_eq!(
            policy(ServiceType::NodePort, Some(Cluster)).as_deref(),
            Some("Cluster")
        );
        assert_eq!(
            policy(ServiceType::LoadBalancer, None),
            None,
            "Kubernetes' default"
        );
        assert_eq!(
            policy(ServiceType::ClusterIP, Some(Local)),
            None,
            "refused there"
        );
    }

    #[test]
    fn worker_threads_follow_the_cpu_limit_else_the_request_rounded_up() {
        let resources = |limit: Option<&str>, request: Option<&str>| {
            let list = |cpu: Option<&str>| {
                cpu.map(|c| BTreeMap::from([("cpu".to_owned(), Quantity(c.to_owned()))]))
            };
            ResourceRequirements {
                limits: list(limit),
                requests: list(request),
                ..ResourceRequirements::default()
            }
        };
        for (limit, request, threads) in [
            (Some("1500m"), Some("100m"), Some(2)),
            (Some("2"), None, Some(2)),
            (Some("0.5"), None, Some(1)),
            (None, Some("50m"), Some(1)),
            (None, Some("3"), Some(3)),
            (None, None, None),
            (Some("1e3m"), None, Some(1)),
            (Some("2k"), None, None),
            (Some("0"), None, None),
        ] {
            assert_eq!(
                worker_threads(&resources(limit, request)),
                threads,
                "limit {limit:?}, request {request:?}"
            );
        }
    }

    /// A LongConnService whose pod template has `containers` (JSON) and `grace` seconds, if any.
    fn lcs(containers: Value, grace: Option<i64>) -> LongConnService {
        let spec: LongConnServiceSpec = serde_json::from_value(json!({
            "template": {"spec": {
                "containers": containers,
                "terminationGracePeriodSeconds": grace,
            }},
            "gateway": {"adminPort": 9901},
            "drain": {"timeout": "5m"},
        }))
        .expect("spec");
        let mut lcs = LongConnService::new("chat", spec);
        lcs.metadata.namespace = Some("default".to_owned());
        lcs
    }

    fn pod(lcs: &LongConnService) -> k8s_openapi::api::core::v1::PodSpec {
        pod_template_for(lcs, &Settings::default(), "rev")
            .spec
            .expect("pod spec")
    }

    fn pre_stop(container: &Container) -> Option<&LifecycleHandler> {
        container.lifecycle.as_ref()?.pre_stop.as_ref()
    }

    fn hook_command(container: &Container) -> Vec<String> {
        pre_stop(container)
            .and_then(|h| h.exec.as_ref())
            .and_then(|e| e.command.clone())
            .expect("an exec preStop hook")
    }

    const DRAIN: [&str; 7] = [
        "/longconn/bin/longconn-gateway",
        "drain",
        "--wait",
        "--admin",
        "127.0.0.1:9901",
        "--handoff",
        "20s",
    ];

    fn session_flags(lcs: &LongConnService) -> Vec<String> {
        gateway_args(lcs, false)
            .into_iter()
            .filter(|a| a.starts_with("--session-"))
            .collect()
    }

    #[test]
    fn session_limits_become_the_gateways_session_flags_and_none_when_unset() {
        let mut service = lcs(json!([{"name": "app", "image": "app:1"}]), None);
        assert!(session_flags(&service).is_empty());
        let unset = revision::of(&service, &Settings::default());
        service.spec.gateway.session_limits = Some(SessionLimitsSpec {
            messages_per_second: Some(20),
            message_burst: None,
            bytes_per_second: Some(65536),
            bytes_burst: Some(1_048_576),
            action: SessionLimitAction::Close,
        });
        assert_eq!(
            session_flags(&service),
            [
                "--session-messages-per-second=20",
                "--session-bytes-per-second=65536",
                "--session-bytes-burst=1048576",
                "--session-limit-action=close",
            ]
        );
        assert_ne!(revision::of(&service, &Settings::default()), unset);
    }

    #[test]
    fn session_limits_from_yaml_default_to_backpressure_with_the_gateways_bursts() {
        let mut service = lcs(json!([{"name": "app", "image": "app:1"}]), None);
        service.spec.gateway.session_limits = Some(
            serde_json::from_value(json!({"messagesPerSecond": 5, "messageBurst": 50}))
                .expect("limits"),
        );
        assert_eq!(
            session_flags(&service),
            [
                "--session-messages-per-second=5",
                "--session-message-burst=50",
                "--session-limit-action=backpressure",
            ]
        );
    }

    #[test]
    fn per_ip_handshakes_are_capped_only_while_the_per_ip_rate_limit_is_on() {
        let mut service = lcs(json!([{"name": "app", "image": "app:1"}]), None);
        let off = "--max-handshakes-per-ip=0".to_owned();
        assert!(!gateway_args(&service, false).contains(&off));
        service
            .spec
            .gateway
            .rate_limit
            .connections_per_second_per_ip = 0;
        assert!(gateway_args(&service, false).contains(&off));
    }

    #[test]
    fn a_container_without_a_pre_stop_hook_gets_the_drain_alone() {
        let pod = pod(&lcs(json!([{"name": "app", "image": "app:1"}]), None));
        assert_eq!(hook_command(&pod.containers[0]), DRAIN);
    }

    #[test]
    fn a_users_exec_pre_stop_runs_after_the_drain_in_the_same_hook_in_its_order() {
        let pod = pod(&lcs(
            json!([{"name": "app", "image": "app:1", "lifecycle": {
                "preStop": {"exec": {"command": ["/app/stop", "--flush", "-v", "a b"]}},
                "postStart": {"exec": {"command": ["/app/started"]}},
            }}]),
            None,
        ));
        let app = &pod.containers[0];
        let mut chained: Vec<&str> = DRAIN.to_vec();
        chained.extend(["--", "/app/stop", "--flush", "-v", "a b"]);
        assert_eq!(hook_command(app), chained);
        let post_start = app.lifecycle.as_ref().and_then(|l| l.post_start.as_ref());
        assert!(post_start.is_some(), "the rest of the lifecycle stays");
    }

    #[test]
    fn a_pre_stop_hook_other_than_exec_is_kept_and_reported_as_unchained() {
        let containers = json!([
            {"name": "web", "image": "app:1", "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 8080}}}},
            {"name": "plain", "image": "app:1"},
            {"name": "waits", "image": "app:1", "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}},
            {"name": "own", "image": "app:1", "lifecycle": {"preStop": {"exec": {"command": ["/stop"]}}}},
            {"name": "tcp", "image": "app:1", "lifecycle": {"preStop": {"tcpSocket": {"port": 8080}}}},
        ]);
        let service = lcs(containers, None);
        let pod = pod(&service);
        let by_name = |name: &str| {
            pod.containers
                .iter()
                .find(|c| c.name == name)
                .expect("container")
        };
        let web = pre_stop(by_name("web")).expect("kept");
        assert!(web.exec.is_none() && web.http_get.is_some());
        assert!(pre_stop(by_name("waits")).is_some_and(|h| h.sleep.is_some() && h.exec.is_none()));
        assert!(
            pre_stop(by_name("tcp")).is_some_and(|h| h.tcp_socket.is_some() && h.exec.is_none())
        );
        assert_eq!(hook_command(by_name("plain")), DRAIN);
        assert_eq!(
            hook_command(by_name("own")).last().map(String::as_str),
            Some("/stop")
        );

        let unchained = unchained_pre_stop_hooks(&service);
        let named: Vec<(&str, &str)> = unchained
            .iter()
            .map(|u| (u.container.as_str(), u.handler))
            .collect();
        assert_eq!(
            named,
            [("web", "httpGet"), ("waits", "sleep"), ("tcp", "tcpSocket")]
        );
        let message = unchained[0].to_string();
        assert!(
            message.contains("web") && message.contains("httpGet"),
            "{message}"
        );
    }

    #[test]
    fn no_pre_stop_hook_of_its_own_or_an_exec_one_is_not_reported() {
        let containers = json!([
            {"name": "plain", "image": "app:1"},
            {"name": "own", "image": "app:1", "lifecycle": {"preStop": {"exec": {"command": ["/stop"]}}}},
        ]);
        assert_eq!(unchained_pre_stop_hooks(&lcs(containers, None)), []);
    }

    #[test]
    fn a_chained_hook_keeps_the_pods_own_grace_period_after_the_drains() {
        let own_hook = json!([{"name": "app", "image": "app:1", "lifecycle": {
            "preStop": {"exec": {"command": ["/stop"]}}}}]);
        let no_hook = json!([{"name": "app", "image": "app:1"}]);
        let grace = |containers: &Value, seconds| {
            pod(&lcs(containers.clone(), seconds)).termination_grace_period_seconds
        };
        // drain.timeout 5m plus the 30 s margin, plus the hook's own time: the pod's grace
        // period, or Kubernetes' default of 30 s.
        assert_eq!(grace(&own_hook, None), Some(300 + 30 + 30));
        assert_eq!(grace(&own_hook, Some(90)), Some(300 + 30 + 90));
        assert_eq!(grace(&no_hook, None), Some(300 + 30));
        assert_eq!(grace(&no_hook, Some(600)), Some(600));
    }
}
