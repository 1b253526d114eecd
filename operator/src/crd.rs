//! The `LongConnService` API (`longconn.dev/v1alpha1`).
//!
//! These types are the contract with users: every doc comment becomes `kubectl explain` text,
//! every `#[serde(default)]` becomes a schema default the API server fills in, and the
//! `x-kubernetes-validations` rules make the API server refuse bad objects with a message that
//! names the field. What the schema cannot know (a missing Secret, a missing CRD) is reported
//! in status conditions by the reconciler instead.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads those as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// What an int-or-string field accepts as a string: a percentage.
const PERCENT: &str = r"^[0-9]{1,3}%$";

/// What `gateway.logging.level` accepts: comma-separated levels or `target=level` directives.
/// Each is what the gateway's `--log-level` accepts too (a target begins with a letter, digit or
/// `_`, as `tracing`'s filter needs).
const LOG_LEVEL: &str = r"^([A-Za-z0-9_][A-Za-z0-9_:.-]*=)?(error|warn|info|debug|trace|off)(,([A-Za-z0-9_][A-Za-z0-9_:.-]*=)?(error|warn|info|debug|trace|off))*$";

/// API group of every longconn resource.
pub const GROUP: &str = "longconn.dev";

/// A service that holds long-lived client connections (WebSocket and similar), run by longconn.
///
/// The operator turns it into one Deployment per revision whose pods carry the longconn gateway
/// as a native sidecar, a Service, a PodDisruptionBudget, TLS Secrets that renew themselves, an
/// admin-token Secret, a NetworkPolicy, a ServiceMonitor with a PrometheusRule of alerts and, when
/// asked, autoscales it: on open sessions itself, on CPU with a HorizontalPodAutoscaler.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "longconn.dev",
    version = "v1alpha1",
    kind = "LongConnService",
    plural = "longconnservices",
    shortname = "lcs",
    category = "all",
    namespaced,
    status = "LongConnServiceStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired pods"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.autoscaling.desiredReplicas",
        description = "Pods the session autoscaling wants"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready pods"
    ),
    printcolumn(
        name = "Sessions",
        type_ = "integer",
        json_path = ".status.activeSessions",
        description = "Open client sessions"
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.currentRevision",
        description = "Revision serving traffic"
    ),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status",
        description = "Enough pods are ready"
    ),
    printcolumn(
        name = "Last Scale",
        type_ = "string",
        json_path = ".status.autoscaling.lastDecision.reason",
        description = "Why the session autoscaling last changed replicas",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!(self.rollout.maxSurge == 0 || self.rollout.maxSurge == '0%') || !has(self.disruption.maxUnavailable) || !(self.disruption.maxUnavailable == 0 || self.disruption.maxUnavailable == '0%')"
).message("rollout.maxSurge and disruption.maxUnavailable must not both be zero: a rollout could then never replace a pod").field_path(".rollout.maxSurge"))]
#[x_kube(validation = Rule::new(
    "!has(self.autoscaling) || !has(self.autoscaling.targetSessionsPerPod) || self.gateway.maxConnections >= self.autoscaling.targetSessionsPerPod"
).message("autoscaling.targetSessionsPerPod must not exceed gateway.maxConnections").field_path(".autoscaling.targetSessionsPerPod"))]
#[x_kube(validation = Rule::new(
    "!has(self.autoscaling) || !has(self.autoscaling.rebalance) || !has(self.autoscaling.rebalance.spread) || !has(self.drain.timeout) || duration(self.autoscaling.rebalance.spread) <= duration(self.drain.timeout)"
).message("autoscaling.rebalance.spread must not exceed drain.timeout, which bounds a round of rebalancing on the gateways").field_path(".autoscaling.rebalance.spread"))]
pub struct LongConnServiceSpec {
    /// Number of pods. `kubectl scale`, the operator's session autoscaling and the
    /// HorizontalPodAutoscaler write it through the scale subresource; every decrease drains the
    /// pods that go away before they are removed.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: i32,

    /// The app's pod template. Its containers listen on localhost; the gateway, injected as a
    /// native sidecar, terminates client connections and proxies them to `gateway.upstreamPort`.
    #[x_kube(validation = Rule::new("has(self.spec) && size(self.spec.containers) > 0")
        .message("template.spec.containers must hold at least one container: the app the gateway proxies to")
        .field_path(".spec.containers"))]
    pub template: PodTemplateSpec,

    /// The gateway that terminates client connections in every pod.
    #[serde(default)]
    pub gateway: GatewaySpec,

    /// TLS for client connections.
    #[serde(default)]
    pub tls: TlsSpec,

    /// How a pod's sessions are moved away before the pod goes.
    #[serde(default)]
    pub drain: DrainSpec,

    /// How a new revision replaces the old one.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Voluntary disruptions (node drains, evictions) allowed at once: becomes the
    /// PodDisruptionBudget. Set either `maxUnavailable` or `minAvailable`.
    #[serde(default)]
    pub disruption: DisruptionSpec,

    /// Autoscale `replicas`: on open sessions (and CPU beside them) by the operator itself, on
    /// CPU alone by a HorizontalPodAutoscaler. Unset: no autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Prometheus monitoring of the gateways.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSpec,
}

fn default_replicas() -> i32 {
    3
}

/// Settings of the gateway sidecar. Changing any of them starts a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.port != self.upstreamPort && self.port != self.adminPort && self.upstreamPort != self.adminPort")
    .message("gateway.port, gateway.upstreamPort and gateway.adminPort must be three different ports"))]
#[x_kube(validation = Rule::new("duration(self.heartbeat.timeout) <= duration(self.heartbeat.interval)")
    .message("gateway.heartbeat.timeout must not exceed gateway.heartbeat.interval").field_path(".heartbeat.timeout"))]
#[x_kube(validation = Rule::new(TRUSTED_PROXIES_RULE)
    .message("gateway.trustedProxies entries must be IP addresses or CIDRs such as 10.0.0.0/8 or 2001:db8::/32")
    .field_path(".trustedProxies"))]
pub struct GatewaySpec {
    /// The public port clients connect to (the Service's port too).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The app's port inside the pod; the gateway proxies to 127.0.0.1 on this port.
    #[serde(default = "default_upstream_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub upstream_port: i32,

    /// The gateway's admin port (health, metrics, drain API). Reachable only from the operator
    /// and the metrics scraper; the drain API also needs a bearer token.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,

    /// Gateway image. Unset: the operator's default, which matches the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of the gateway container. Unset: requests of 50m CPU and 64Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Most concurrent client connections per pod; above it new connections get HTTP 503 with
    /// Retry-After before the WebSocket upgrade. Each takes two file descriptors: the gateway
    /// refuses to start when the container's open-file limit is below 2 x maxConnections + 64.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,

    /// WebSocket pings to detect dead clients.
    #[serde(default)]
    pub heartbeat: HeartbeatSpec,

    /// A session with no message in either direction for this long is closed (1001).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,

    /// Time a client has to complete the HTTP upgrade; a slow or silent client cannot hold a slot.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,

    /// Largest WebSocket message in bytes; a larger one closes the session with 1009.
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 125, max = 67108864))]
    pub max_message_bytes: i64,

    /// Origins allowed to open sessions (exact match, such as `https://chat.example.com`).
    /// Empty: any origin. Others get HTTP 403 before the upgrade.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_origins: Vec<String>,

    /// New connections allowed per client IP (token bucket); above it HTTP 429.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,

    /// Plain HTTP requests (everything that is not a WebSocket upgrade).
    #[serde(default)]
    pub http: HttpSpec,

    /// What each WebSocket client may send per second: data messages, payload bytes, or both,
    /// and what a client over them gets. Unset: no per-session limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_limits: Option<SessionLimitsSpec>,

    /// The gateway's log lines, among them one per session and per plain HTTP request.
    #[serde(default)]
    pub logging: LoggingSpec,

    /// PROXY protocol headers the client port requires (from a load balancer that relays TCP):
    /// Disabled (default), V1, V2 or Any. When on, a connection without a valid header is closed, and
    /// the address the header carries is the client for limits, logs and X-Forwarded-For.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,

    /// Peers (IP addresses or CIDRs) whose X-Forwarded-For is believed: behind one of them, the
    /// rightmost X-Forwarded-For entry that is not itself trusted is the client, for logs, the
    /// X-Real-IP the app receives and the per-IP rate limit. Empty (default): none.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 49)))]
    pub trusted_proxies: Vec<String>,
}

/// Which PROXY protocol headers the gateway's client port requires. Not `Off`: YAML 1.1, which
/// kubectl reads, takes an unquoted `Off` for the boolean false.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the connection's peer is the client.
    #[default]
    Disabled,
    /// Version 1 (text), as sent by HAProxy `send-proxy` or AWS Classic Load Balancers.
    V1,
    /// Version 2 (binary), as sent by AWS Network Load Balancers and most others.
    V2,
    /// Either version.
    Any,
}

/// Every `gateway.trustedProxies` entry is an IPv4 or IPv6 address with an optional prefix
/// length. A regular expression rather than CEL's `isCIDR`, which Kubernetes before 1.31 lacks;
/// the gateway parses the entries again at start.
const TRUSTED_PROXIES_RULE: &str = concat!(
    "self.trustedProxies.all(c, c.matches('^(",
    "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "(/(3[0-2]|[12]?[0-9]))?",
    "|",
    "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?",
    "|",
    "([0-9a-fA-F]{1,4}(:[0-9a-fA-F]{1,4}){0,6})?::([0-9a-fA-F]{1,4}(:[0-9a-fA-F]{1,4}){0,6})?",
    "(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?",
    ")$'))"
);

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            port: default_port(),
            upstream_port: default_upstream_port(),
            admin_port: default_admin_port(),
            image: None,
            resources: None,
            max_connections: default_max_connections(),
            heartbeat: HeartbeatSpec::default(),
            idle_timeout: default_idle_timeout(),
            handshake_timeout: default_handshake_timeout(),
            max_message_bytes: default_max_message_bytes(),
            allowed_origins: Vec::new(),
            rate_limit: RateLimitSpec::default(),
            http: HttpSpec::default(),
            session_limits: None,
            logging: LoggingSpec::default(),
            proxy_protocol: ProxyProtocol::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_port() -> i32 {
    8443
}
fn default_upstream_port() -> i32 {
    8080
}
fn default_admin_port() -> i32 {
    9901
}
fn default_max_connections() -> i32 {
    10000
}
fn default_idle_timeout() -> Duration {
    Duration::from_static("10m")
}
fn default_handshake_timeout() -> Duration {
    Duration::from_static("10s")
}
fn default_max_message_bytes() -> i64 {
    1_048_576
}

/// WebSocket heartbeat: a ping every `interval`; no pong within `timeout` closes the session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Time between pings.
    #[serde(default = "default_heartbeat_interval")]
    pub interval: Duration,
    /// Time to wait for the pong.
    #[serde(default = "default_heartbeat_timeout")]
    pub timeout: Duration,
}

impl Default for HeartbeatSpec {
    fn default() -> Self {
        Self {
            interval: default_heartbeat_interval(),
            timeout: default_heartbeat_timeout(),
        }
    }
}

fn default_heartbeat_interval() -> Duration {
    Duration::from_static("30s")
}
fn default_heartbeat_timeout() -> Duration {
    Duration::from_static("10s")
}

/// Per-client-IP connection rate limit (token bucket).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Tokens added per second; 0 turns the limit off (behind a proxy that limits already, or
    /// when many clients share one address), and with it the cap of 512 handshakes in progress
    /// per client IP. An IPv6 client is counted by its /64.
    #[serde(default = "default_rate", rename = "connectionsPerSecondPerIP")]
    #[schemars(range(min = 0, max = 100000))]
    pub connections_per_second_per_ip: i32,
    /// Bucket size: connections one IP may open at once.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: i32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            connections_per_second_per_ip: default_rate(),
            burst: default_burst(),
        }
    }
}

/// Limits of plain HTTP requests, which share the pod's `maxConnections` with the sessions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.idleTimeout) > duration('0s')")
    .message("gateway.http.idleTimeout must be longer than 0s").field_path(".idleTimeout"))]
pub struct HttpSpec {
    /// Most plain HTTP connections at once per pod (within `maxConnections`), so that they cannot
    /// take the slots of WebSocket sessions; above it HTTP 503.
    #[serde(default = "default_http_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
    /// An exchange with no byte moving either way for this long is ended: 408 when the announced
    /// request body does not come, 504 when the app does not start its response, a cut when the
    /// client does not read it. A server-sent event stream lives while events come more often.
    #[serde(default = "default_http_idle_timeout")]
    pub idle_timeout: Duration,
    /// Largest request body in bytes (HTTP 413 above it); 0: no limit.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1099511627776_i64))]
    pub max_body_bytes: i64,
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            max_connections: default_http_max_connections(),
            idle_timeout: default_http_idle_timeout(),
            max_body_bytes: 0,
        }
    }
}

/// Per-session limits: token buckets on what each WebSocket client sends (data messages and their
/// payload bytes; pings, pongs and close frames are never limited).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.messagesPerSecond) || has(self.bytesPerSecond)")
    .message("gateway.sessionLimits needs messagesPerSecond, bytesPerSecond or both"))]
#[x_kube(validation = Rule::new("!has(self.messageBurst) || has(self.messagesPerSecond)")
    .message("gateway.sessionLimits.messageBurst needs gateway.sessionLimits.messagesPerSecond").field_path(".messageBurst"))]
#[x_kube(validation = Rule::new("!has(self.bytesBurst) || has(self.bytesPerSecond)")
    .message("gateway.sessionLimits.bytesBurst needs gateway.sessionLimits.bytesPerSecond").field_path(".bytesBurst"))]
pub struct SessionLimitsSpec {
    /// Data messages per second each client may send (a fragmented message counts once).
    /// Unset: messages are not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub messages_per_second: Option<i32>,
    /// Messages a client may send at once, above the rate. Unset: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000000))]
    pub message_burst: Option<i32>,
    /// Payload bytes of data messages per second each client may send. Unset: bytes are not
    /// limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1099511627776_i64))]
    pub bytes_per_second: Option<i64>,
    /// Payload bytes a client may send at once, above the rate. Unset: one second's worth. A
    /// message larger than this passes when the bucket is full and delays the next ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1099511627776_i64))]
    pub bytes_burst: Option<i64>,
    /// What a client over its limits gets.
    #[serde(default)]
    pub action: SessionLimitAction,
}

/// What the gateway does to a client that sends faster than its session limits.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionLimitAction {
    /// Stop reading the client until its messages fit, so they arrive late but all arrive; a
    /// client held back for longer than `heartbeat.timeout` without a break is closed (1008).
    #[default]
    Backpressure,
    /// Close the session (1008 Policy Violation) at the first message over the limits.
    Close,
}

fn default_http_max_connections() -> i32 {
    1000
}
fn default_http_idle_timeout() -> Duration {
    Duration::from_static("60s")
}

fn default_rate() -> i32 {
    50
}
fn default_burst() -> i32 {
    100
}

/// How the gateway writes its log lines.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, the event's fields at the top level: for log collectors.
    #[default]
    Json,
    /// Plain text lines: for people reading `kubectl logs`.
    Text,
}

/// The gateway's log lines: every WebSocket session and every plain HTTP request ends with one
/// `info` line carrying its id, peer, path, request id, trace id, duration, bytes each way and,
/// for sessions, close code and reason.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// Json (default) or Text.
    #[serde(default)]
    pub format: LogFormat,
    /// A level, `error`, `warn`, `info` (default), `debug`, `trace` or `off`, or comma-separated
    /// `target=level` directives: `info,longconn_gateway::access_log=off` keeps every line but
    /// the per-session and per-request ones.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256), regex(pattern = LOG_LEVEL))]
    pub level: String,
}

impl Default for LoggingSpec {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Where the serving certificate comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// The operator keeps its own CA and a serving certificate, renewed at 2/3 of `validity`.
    #[default]
    SelfSigned,
    /// A `kubernetes.io/tls` Secret you provide (`secretName`).
    Secret,
    /// A cert-manager `Certificate` issued by `issuerRef`.
    CertManager,
    /// Plain-text connections.
    Disabled,
}

/// TLS for client connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode != 'Secret' || has(self.secretName)")
    .message("tls.secretName is required when tls.mode is Secret").field_path(".secretName"))]
#[x_kube(validation = Rule::new("self.mode != 'CertManager' || has(self.issuerRef)")
    .message("tls.issuerRef is required when tls.mode is CertManager").field_path(".issuerRef"))]
#[x_kube(validation = Rule::new("duration(self.validity) >= duration('1h')")
    .message("tls.validity must be at least 1h").field_path(".validity"))]
pub struct TlsSpec {
    /// SelfSigned (default), Secret, CertManager or Disabled.
    #[serde(default)]
    pub mode: TlsMode,
    /// Mode Secret: name of a `kubernetes.io/tls` Secret in the same namespace with `tls.crt`
    /// and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Mode CertManager: the issuer that signs the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Extra DNS names for the certificate, added to the Service's own names.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    pub dns_names: Vec<String>,
    /// Lifetime of the serving certificate (SelfSigned and CertManager); renewed at 2/3 of it.
    #[serde(default = "default_validity")]
    pub validity: Duration,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            secret_name: None,
            issuer_ref: None,
            dns_names: Vec::new(),
            validity: default_validity(),
        }
    }
}

fn default_validity() -> Duration {
    Duration::from_static("2160h")
}

/// A cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Issuer or ClusterIssuer.
    #[serde(default = "default_issuer_kind")]
    #[schemars(regex(pattern = r"^(Issuer|ClusterIssuer)$"))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}
fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

/// What a drain does with the sessions a pod holds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrainStrategy {
    /// Send each session a close frame with `closeCode` so the client reconnects elsewhere.
    #[default]
    Notify,
    /// Tell no one; let sessions end on their own until `timeout`.
    Wait,
}

/// How a pod's sessions are moved away before the pod goes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.spread) < duration(self.timeout)")
    .message("drain.spread must be shorter than drain.timeout").field_path(".spread"))]
#[x_kube(validation = Rule::new("duration(self.timeout) <= duration('168h')")
    .message("drain.timeout must be at most 168h (a week), the longest drain a gateway accepts").field_path(".timeout"))]
#[x_kube(validation = Rule::new("self.closeCode == 1001 || self.closeCode == 1012 || (self.closeCode >= 4000 && self.closeCode <= 4999)")
    .message("drain.closeCode must be 1001, 1012 or an application code 4000-4999").field_path(".closeCode"))]
pub struct DrainSpec {
    /// Notify (default): ask clients to reconnect; Wait: let sessions end on their own.
    #[serde(default)]
    pub strategy: DrainStrategy,
    /// Deadline per pod; sessions still open then are force-closed and counted as dropped. At
    /// most 168h.
    #[serde(default = "default_drain_timeout")]
    pub timeout: Duration,
    /// Notify: close frames are spread evenly over this window, so clients do not all
    /// reconnect at once.
    #[serde(default = "default_drain_spread")]
    pub spread: Duration,
    /// Notify: WebSocket close code sent to clients: 1012 (Service Restart), or 1001 (Going
    /// Away) for clients that know only that.
    #[serde(default = "default_close_code")]
    pub close_code: i32,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            strategy: DrainStrategy::default(),
            timeout: default_drain_timeout(),
            spread: default_drain_spread(),
            close_code: default_close_code(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_static("5m")
}
fn default_drain_spread() -> Duration {
    Duration::from_static("30s")
}
fn default_close_code() -> i32 {
    1012
}

/// What a rollout does when more sessions were dropped than `maxDroppedSessions`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DropBudgetAction {
    /// Stop the rollout (Progressing=False, reason DropBudgetExceeded).
    #[default]
    Pause,
    /// Go back to the previous revision.
    Rollback,
}

/// How a new revision replaces the old one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Pods of the new revision started above `replicas` before old pods are drained: an
    /// integer or a percentage of `replicas` (rounded up).
    #[serde(default = "default_max_surge")]
    #[schemars(extend("minimum" = 0, "pattern" = PERCENT))]
    pub max_surge: IntOrString,
    /// Pods drained at the same time. Unset (the default): as many as the pods that stay have
    /// room for, each drain starting once its sessions fit them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_drains: Option<i32>,
    /// Dropped sessions allowed per rollout; above it the rollout pauses or rolls back.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_dropped_sessions: i64,
    /// Pause (default) or Rollback when `maxDroppedSessions` is exceeded.
    #[serde(default)]
    pub on_drop_budget_exceeded: DropBudgetAction,
    /// A rollout that makes no progress for this long stops with reason ProgressDeadlineExceeded.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// The stages a new revision goes through: grow to a size (`{replicas: 1}`, `{replicas:
    /// 50%}`), then wait (`{pause: {duration: 5m}}`, or `{pause: {}}` until a person promotes
    /// it). Empty (the default): the new revision replaces the old one in one go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub steps: Vec<RolloutStep>,
    /// Hold any rollout or scale-down at its next safe point: no drain starts and the new
    /// revision does not grow, while drains under way finish and are recorded. Clearing it
    /// resumes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// The health gate of a rollout with steps: from its first step on, the new revision's
    /// gateways are compared with the old revision's over the same window, and beyond these
    /// limits the rollout is aborted (the new revision's pods drained, the old revision grown
    /// back). Unset: no gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Revisions kept as records in `status.history`, with what `kubectl longconn undo` needs
    /// to return to them (ControllerRevisions), besides the ones in use.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub revision_history_limit: i32,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_surge: default_max_surge(),
            max_concurrent_drains: None,
            max_dropped_sessions: 0,
            on_drop_budget_exceeded: DropBudgetAction::default(),
            progress_deadline: default_progress_deadline(),
            steps: Vec::new(),
            paused: false,
            analysis: None,
            revision_history_limit: default_revision_history_limit(),
        }
    }
}

fn default_revision_history_limit() -> i32 {
    10
}

/// The limits of the health gate. Each share is of the upgrade attempts a revision's gateways
/// relayed to their app in the window (sessions opened, and attempts the app refused or did not
/// answer); the new revision fails a signal when its share exceeds the old revision's by more
/// than the limit, in percentage points, once it has seen `minAttempts`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Upgrades the app refused (answered without switching protocols).
    #[serde(default = "default_share_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub upstream_refused_percent: i32,
    /// Upgrades the gateway could not relay: the app did not accept the connection or did not
    /// answer in time.
    #[serde(default = "default_share_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub upstream_unavailable_percent: i32,
    /// Sessions the app ended with an error (no completed close handshake).
    #[serde(default = "default_share_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub server_errors_percent: i32,
    /// Sessions the new revision's gateways lost (a gateway crash) in the window.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_dropped_sessions: i64,
    /// Attempts the new revision must have seen before its shares are judged.
    #[serde(default = "default_min_attempts")]
    #[schemars(range(min = 1))]
    pub min_attempts: i64,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            upstream_refused_percent: default_share_limit(),
            upstream_unavailable_percent: default_share_limit(),
            server_errors_percent: default_share_limit(),
            max_dropped_sessions: 0,
            min_attempts: default_min_attempts(),
        }
    }
}

fn default_share_limit() -> i32 {
    5
}

fn default_min_attempts() -> i64 {
    20
}

/// One stage of a rollout: exactly one of `replicas` and `pause`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.replicas) != has(self.pause)")
    .message("a rollout step sets exactly one of replicas and pause"))]
pub struct RolloutStep {
    /// Grow the new revision to this many pods (an integer, or a percentage of `replicas`
    /// rounded up), draining as many old pods; the step ends once they serve and the drains
    /// are recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "pattern" = PERCENT))]
    pub replicas: Option<IntOrString>,
    /// Wait, with nothing drained: for `duration`, or without one until promoted
    /// (`kubectl longconn promote`, or the `longconn.dev/promote` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
}

/// A pause between the steps of a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait; unset: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

fn default_max_surge() -> IntOrString {
    IntOrString::Int(1)
}
fn default_progress_deadline() -> Duration {
    Duration::from_static("15m")
}

/// Voluntary disruptions allowed at once (the PodDisruptionBudget).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.maxUnavailable) && has(self.minAvailable))")
    .message("set either disruption.maxUnavailable or disruption.minAvailable, not both"))]
pub struct DisruptionSpec {
    /// Pods that may be down at once (integer or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "pattern" = PERCENT))]
    pub max_unavailable: Option<IntOrString>,
    /// Pods that must stay up (integer or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "pattern" = PERCENT))]
    pub min_available: Option<IntOrString>,
}

impl Default for DisruptionSpec {
    fn default() -> Self {
        Self {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
        }
    }
}

/// Autoscaling of `replicas`. On sessions (`targetSessionsPerPod`) the operator itself decides
/// `replicas` from the open sessions its gateways report: nothing else needs installing; with
/// `targetCPUUtilization` beside it, the operator also reads the pods' CPU from the resource
/// metrics API and follows the larger of the two. On CPU alone a HorizontalPodAutoscaler
/// (autoscaling/v2) targets this resource's scale subresource. Either way `replicas` has one
/// writer, and scale-downs drain the pods that go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas").field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("has(self.targetSessionsPerPod) || has(self.targetCPUUtilization)")
    .message("autoscaling needs targetSessionsPerPod, targetCPUUtilization or both"))]
pub struct AutoscalingSpec {
    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Open sessions per pod to aim for. The operator reads every gateway's open sessions and
    /// sets `replicas` to the total over this target (rounded up), with the `behavior` below;
    /// pods being drained and their sessions are left out. No metrics adapter is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_sessions_per_pod: Option<i64>,
    /// Average CPU utilization of the pods, in percent of their requests (every container and
    /// sidecar must request CPU); read from the resource metrics API (`metrics.k8s.io`, served
    /// by metrics-server). Alone: a HorizontalPodAutoscaler scales on it. Beside
    /// `targetSessionsPerPod`: the operator reads it too and follows whichever target asks for
    /// more pods; while it cannot be read, scale-ups on sessions go on and scale-downs wait.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "targetCPUUtilization"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// How fast `replicas` follows the target, as a HorizontalPodAutoscaler's `behavior`:
    /// stabilization windows, rate policies and the tolerance.
    #[serde(default)]
    pub behavior: AutoscalingBehavior,
    /// Moving sessions from the busiest pods to the emptiest once the pods are uneven (after a
    /// scale-up, new pods receive only new sessions). On by default.
    #[serde(default)]
    pub rebalance: RebalanceSpec,
}

/// When and how the busiest gateways hand a share of their sessions to the pods with room.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.spread) <= duration('10m')")
    .message("autoscaling.rebalance.spread must be at most 10m").field_path(".spread"))]
#[x_kube(validation = Rule::new("duration(self.cooldown) >= duration(self.spread)")
    .message("autoscaling.rebalance.cooldown must be at least its spread").field_path(".cooldown"))]
pub struct RebalanceSpec {
    /// Rebalance at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A round starts when the busiest pod holds more than this percentage of the mean open
    /// sessions per pod; each pod above it is asked to move what it holds above the mean.
    #[serde(default = "default_rebalance_threshold")]
    #[schemars(range(min = 101, max = 1000))]
    pub threshold_percent: i32,
    /// The window over which a round's close frames are spread (at most 10m, and at most the
    /// gateways' `drain.timeout`, which bounds a round).
    #[serde(default = "default_rebalance_spread")]
    pub spread: Duration,
    /// The least time from the start of one round to the start of the next (at least the
    /// spread): the rate limit.
    #[serde(default = "default_rebalance_cooldown")]
    pub cooldown: Duration,
}

impl Default for RebalanceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold_percent: default_rebalance_threshold(),
            spread: default_rebalance_spread(),
            cooldown: default_rebalance_cooldown(),
        }
    }
}

fn default_rebalance_threshold() -> i32 {
    120
}
fn default_rebalance_spread() -> Duration {
    Duration::from_static("30s")
}
fn default_rebalance_cooldown() -> Duration {
    Duration::from_static("60s")
}

/// How fast `replicas` follows the target (autoscaling/v2's `behavior`, with durations).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingBehavior {
    /// Growing. Unset: no stabilization window, at most 4 pods or 100% more per 15s (whichever
    /// is more).
    #[serde(default = "default_scale_up")]
    pub scale_up: ScalingRules,
    /// Shrinking. Unset: a 300s stabilization window, at most 100% fewer per 15s.
    #[serde(default = "default_scale_down")]
    pub scale_down: ScalingRules,
    /// How far (a fraction) the sessions per pod may be from the target before `replicas`
    /// changes: with 0.1, anything from 90% to 110% of the target keeps the pods as they are.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub tolerance: f64,
}

impl Default for AutoscalingBehavior {
    fn default() -> Self {
        Self {
            scale_up: default_scale_up(),
            scale_down: default_scale_down(),
            tolerance: default_tolerance(),
        }
    }
}

/// How `replicas` changes in one direction.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.stabilizationWindow) || duration(self.stabilizationWindow) <= duration('1h')")
    .message("the stabilizationWindow of autoscaling.behavior.scaleUp and scaleDown must be at most 1h").field_path(".stabilizationWindow"))]
pub struct ScalingRules {
    /// How far back recommendations are remembered: a scale-down goes only as low as the
    /// highest recommendation of its window, a scale-up only as high as the lowest of its.
    /// Unset: 0s for scaleUp, 300s for scaleDown. At most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<Duration>,
    /// Which policy applies when several do: Max (default) the one that allows the largest
    /// change, Min the smallest; Disabled never changes `replicas` in this direction.
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// How much may change per period, each policy counted from the replicas at the start of
    /// its period. Unset: for scaleUp 4 pods and 100% per 15s, for scaleDown 100% per 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10))]
    pub policies: Option<Vec<ScalingPolicy>>,
}

/// Which of several scaling policies applies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy that allows the largest change.
    #[default]
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No change in this direction.
    Disabled,
}

/// What a scaling policy's value counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalingPolicyType {
    /// A number of pods.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// At most `value` pods (or percent) of change per `period`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.period) > duration('0s') && duration(self.period) <= duration('30m')")
    .message("the period of an autoscaling.behavior policy must be longer than 0s and at most 30m").field_path(".period"))]
pub struct ScalingPolicy {
    /// Pods or Percent.
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    /// Pods, or percent of the replicas at the start of the period.
    #[schemars(range(min = 1, max = 100000))]
    pub value: i32,
    /// The period the value is counted over (longer than 0s, at most 30m).
    pub period: Duration,
}

/// The HorizontalPodAutoscaler's scale-up rules: no window, 4 pods or 100% per 15s, the larger.
pub fn default_scale_up() -> ScalingRules {
    ScalingRules {
        stabilization_window: Some(Duration::from_static("0s")),
        select_policy: SelectPolicy::Max,
        policies: Some(vec![
            ScalingPolicy {
                type_: ScalingPolicyType::Pods,
                value: 4,
                period: Duration::from_static("15s"),
            },
            ScalingPolicy {
                type_: ScalingPolicyType::Percent,
                value: 100,
                period: Duration::from_static("15s"),
            },
        ]),
    }
}
/// The HorizontalPodAutoscaler's scale-down rules: a 300s window, 100% per 15s.
pub fn default_scale_down() -> ScalingRules {
    ScalingRules {
        stabilization_window: Some(Duration::from_static("300s")),
        select_policy: SelectPolicy::Max,
        policies: Some(vec![ScalingPolicy {
            type_: ScalingPolicyType::Percent,
            value: 100,
            period: Duration::from_static("15s"),
        }]),
    }
}
fn default_tolerance() -> f64 {
    0.1
}

fn default_min_replicas() -> i32 {
    1
}

/// Prometheus monitoring.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A Prometheus Operator ServiceMonitor for the gateways' `/metrics`.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
    /// A Prometheus Operator PrometheusRule with alerts on the gateways' metrics.
    #[serde(default)]
    pub prometheus_rule: PrometheusRuleSpec,
}

/// The ServiceMonitor (monitoring.coreos.com/v1), created when that API is served.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Scrape interval.
    #[serde(default = "default_scrape_interval")]
    pub interval: Duration,
    /// Extra labels on the ServiceMonitor, for Prometheus' `serviceMonitorSelector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_scrape_interval(),
            labels: BTreeMap::new(),
        }
    }
}

/// The PrometheusRule (monitoring.coreos.com/v1), created beside the ServiceMonitor when that
/// API is served: alerts on this service's gateways (sessions dropped, drain deadline reached,
/// certificate expiring, rejections, connections near `gateway.maxConnections`, restarts,
/// descriptors near the limit). Its expressions select the ServiceMonitor's targets, so it is
/// made only while `serviceMonitor.enabled` is true.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusRuleSpec {
    /// Create the PrometheusRule.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Extra labels on the PrometheusRule, for Prometheus' `ruleSelector`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Default for PrometheusRuleSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: BTreeMap::new(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_true() -> bool {
    true
}
fn default_scrape_interval() -> Duration {
    Duration::from_static("30s")
}

/// Type of the client-facing Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// The client-facing Service, selecting the pods of every revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.externalTrafficPolicy) || self.type != 'ClusterIP'")
    .message("service.externalTrafficPolicy applies only to type NodePort or LoadBalancer")
    .field_path(".externalTrafficPolicy"))]
pub struct ServiceSpec {
    /// ClusterIP (default), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service (for example a cloud load balancer's settings).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// NodePort or LoadBalancer only. Local: nodes send external traffic only to their own
    /// pods, so the pods see the client's address rather than a node's (no second hop, no
    /// source NAT). Unset: Kubernetes' default, Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// Where a NodePort or LoadBalancer Service sends external traffic. Local keeps the client's
/// address (no second hop, no source NAT); unset is Kubernetes' default, Cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalTrafficPolicy {
    /// To any ready pod, on any node; the client's address is replaced by a node's.
    Cluster,
    /// To ready pods on the receiving node only; the client's address is kept.
    Local,
}

/// Observed state of a LongConnService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LongConnServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of every revision.
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of every revision.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods of the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Label selector of the pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Open client sessions across all gateways, as last reported by them.
    #[serde(default)]
    pub active_sessions: i64,
    /// The revision serving traffic once the last rollout finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision the spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Available, Progressing, Degraded, CertificateReady, MonitoringReady, SessionsPreserved,
    /// and ScalingActive while `autoscaling.targetSessionsPerPod` is set.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last or current rollout and its session accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The serving certificate (modes SelfSigned and CertManager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// What the session accounting needs to know of each pod's gateway beyond a reconcile: the
    /// sessions its restarts lost that are already counted, and its open sessions as last
    /// recorded. Kept here, not in the operator's memory, so a new leader counts exactly what
    /// the previous one had not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pod"]))]
    pub gateways: Vec<GatewayRecord>,
    /// The operator's autoscaling on `autoscaling.targetSessionsPerPod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// The rebalancing of sessions between pods (`spec.autoscaling.rebalance`): its last round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
    /// The revisions of the pods' spec, oldest first: the last `rollout.revisionHistoryLimit`
    /// and the ones in use, each with what changed and how its rollout ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
}

/// The rebalancing's rounds: the last one in full, totals over all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceStatus {
    /// Rounds started; the last one's id on the gateways is `rebalance <round>`.
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub round: u32,
    /// When the last round started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// The pods the last round asked to move sessions, and how many each.
    #[serde(default)]
    pub pods: Vec<RebalancedPod>,
    /// Sessions all rounds asked to move.
    #[serde(default)]
    pub sessions_asked: i64,
    /// Pods serving when the last round started: a round may start before its cooldown once
    /// their number changes (a scale-up is what calls for one).
    #[serde(default)]
    pub pods_serving: i32,
    /// Sessions the rounds moved (their clients completed the close handshake), over all
    /// rounds, as each pod's gateway reported its part of a round finished.
    #[serde(default)]
    pub sessions_moved: i64,
    /// Of `sessionsMoved`, the sessions whose client declared an earlier move.
    #[serde(default)]
    pub sessions_moved_again: i64,
    /// Sessions a round ended without a completed close handshake, over all rounds.
    #[serde(default)]
    pub sessions_dropped: i64,
}

/// One pod of a rebalancing round.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RebalancedPod {
    pub pod: String,
    /// Sessions it was asked to move.
    pub sessions: i64,
    /// Sessions it held when asked.
    #[serde(default)]
    pub held: i64,
    /// How its part of the round ended, once its gateway reports it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RebalanceOutcome>,
}

/// How one pod's part of a round of rebalancing ended, as its gateway reported it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceOutcome {
    /// Sessions picked: at most those asked, leaving out those that came by a recent move.
    pub selected: i64,
    /// Open sessions left out because they came to the pod by a move less than 10 minutes
    /// before (a session moves at most once in that time). When `selected` falls short of the
    /// ask by these, the pod stays above the mean until a round after they age moves them.
    #[serde(default)]
    pub kept_moved: i64,
    /// Sessions asked to move that completed the close handshake.
    pub moved: i64,
    /// Of `moved`, sessions whose client declared an earlier move.
    pub moved_again: i64,
    /// Sessions their clients ended first: not a loss.
    pub closed_by_client: i64,
    /// Sessions ended without a completed close handshake.
    pub dropped: i64,
    /// Sessions a drain of the pod took over before they moved (counted in the drain's
    /// report).
    pub taken_by_drain: i64,
}

/// What the session autoscaling sees and decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The replicas the autoscaling wants now, its stabilization windows and rate policies
    /// applied.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Pods the last recommendation counted: those serving and those starting; pods being
    /// drained are left out. Refreshed with `activeSessions`.
    #[serde(default)]
    pub current_replicas: i32,
    /// Mean open sessions per serving pod whose gateway reported. Refreshed with
    /// `activeSessions`.
    #[serde(default)]
    pub sessions_per_pod: i64,
    /// With `targetCPUUtilization` beside `targetSessionsPerPod`: the CPU the serving pods use,
    /// in percent of what they request, as last read from the resource metrics API. Refreshed
    /// with `activeSessions`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "cpuUtilization"
    )]
    pub cpu_utilization: Option<i32>,
    /// When the autoscaling last changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// The last decision that changed `spec.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<ScaleDecision>,
}

/// A change of `spec.replicas` the session autoscaling decided.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    /// `spec.replicas` before.
    pub from: i32,
    /// `spec.replicas` after.
    pub replicas: i32,
    /// Why, in words: the sessions, the target, and the limit that applied, if any.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// The accounting record of one pod's gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRecord {
    pub pod: String,
    /// Sessions lost by restarts of this pod's gateway that are counted as dropped already
    /// (the gateway reports the running total in `lostToRestarts`).
    #[serde(default)]
    pub lost_counted: i64,
    /// Open sessions as last recorded (refreshed at most every `status.activeSessions`
    /// refresh); what a pod that vanishes without a report is taken to have lost when no newer
    /// count is known.
    #[serde(default)]
    pub sessions: i64,
}

/// Where a rollout is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Starting pods of the new revision.
    #[default]
    Surging,
    /// Draining old pods.
    Draining,
    /// Removing drained pods.
    Removing,
    /// Stopped: the drop budget or the progress deadline was exceeded, or held by a pause
    /// step or `spec.rollout.paused` (`pausedBy` says which).
    Paused,
    /// Going back to the previous revision after the drop budget was exceeded (and, once there,
    /// staying there until the spec changes).
    RollingBack,
    /// Done.
    Complete,
}

/// One revision of the pods' spec, as `kubectl longconn history` lists it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Its number: one more than the newest before it. `kubectl longconn undo --to-revision N`
    /// names it; a revision returned to takes the next number.
    pub number: i64,
    pub revision: String,
    /// When it was first seen (or returned to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    /// What changed from the revision before it, in the fields that shape a pod.
    #[serde(default)]
    pub change: String,
    /// How its rollout ended; unset while it is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RevisionOutcome>,
}

/// How a revision's rollout ended, with its accounting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionOutcome {
    pub result: RevisionResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default)]
    pub pods_drained: i32,
    #[serde(default)]
    pub sessions_migrated: i64,
    #[serde(default)]
    pub sessions_dropped: i64,
    /// Why it ended so, in words (the failing signal of an aborted rollout).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// How a revision's rollout ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RevisionResult {
    /// Every pod runs it.
    #[default]
    Complete,
    /// Rolled back after the drop budget was spent.
    RolledBack,
    /// Aborted (`kubectl longconn abort`, or the health gate): its pods were drained.
    Aborted,
    /// Replaced by a newer spec before its rollout completed.
    Superseded,
}

/// The health gate of a rollout: the window it judges and what it saw.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the window began: the rollout's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Every gateway's counts when the window began (a pod missing here started later and
    /// counts from zero).
    #[serde(default)]
    pub baseline: Vec<HealthBaseline>,
    /// The new revision's counts in the window, as last judged.
    #[serde(default)]
    pub update: HealthTally,
    /// The other revisions' counts in the same window.
    #[serde(default)]
    pub stable: HealthTally,
    /// The signal that failed: UpstreamRefused, UpstreamUnavailable, ServerErrors or
    /// DroppedSessions. Set once, when the gate aborts the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The gate's verdict in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A gateway's counts when the window began.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthBaseline {
    pub pod: String,
    /// Its gateway's restarts then: with more, the counts began again at zero.
    #[serde(default)]
    pub restarts: i64,
    #[serde(default)]
    pub handshakes: i64,
    #[serde(default)]
    pub upstream_refused: i64,
    #[serde(default)]
    pub upstream_unavailable: i64,
    #[serde(default)]
    pub upstream_errors: i64,
    /// Sessions lost to restarts so far (a running total across restarts).
    #[serde(default)]
    pub lost_to_restarts: i64,
}

/// A revision's counts in the window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthTally {
    /// Upgrade attempts relayed to the app.
    pub attempts: i64,
    pub upstream_refused: i64,
    pub upstream_unavailable: i64,
    pub server_errors: i64,
    /// Sessions lost with a gateway crash.
    pub dropped: i64,
}

/// What holds a rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseCause {
    /// A pause step of `spec.rollout.steps`.
    Step,
    /// `spec.rollout.paused`.
    Spec,
}

/// One rollout and its session accounting. A scale-down, and drains the operator did not start
/// (evictions, node drains), are recorded the same way under the current revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out (for a scale-down: the current one).
    pub revision: String,
    /// Where the rollout is.
    pub phase: RolloutPhase,
    /// The index of the step of `spec.rollout.steps` in progress (their number once all are
    /// done); unset for a rollout without steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// When that step began: a pause with a duration ends that long after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Why the rollout waits, while it does: `Step` (a pause step), `Spec`
    /// (`spec.rollout.paused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<PauseCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Old pods drained so far.
    #[serde(default)]
    pub pods_drained: i32,
    /// Sessions asked to move that completed the close handshake.
    #[serde(default)]
    pub sessions_migrated: i64,
    /// Sessions ended without a completed close handshake (force-closed, lost with their pod).
    #[serde(default)]
    pub sessions_dropped: i64,
    /// Of the migrated sessions, those moved by an earlier drain too, as the gateways counted
    /// them from the `Longconn-Session-Moves` header their clients sent (clients that send none
    /// are not counted).
    #[serde(default)]
    pub sessions_moved_again: i64,
    /// Connection attempts the drained gateways refused (503) during their drains: clients
    /// sent to a pod that no longer took sessions.
    #[serde(default)]
    pub attempts_refused: i64,
    /// When complete: the busiest pod's open sessions over the mean per pod, as the gateways
    /// last reported them (1.00 is perfectly even).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// Pods being drained now.
    #[serde(default)]
    pub draining: Vec<DrainingPod>,
    /// The health gate, for a rollout with steps while `spec.rollout.analysis` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
}

/// A pod being drained, or drained and waiting to be removed. It stays listed until the pod is
/// gone; its numbers count in the rollout's totals from `finishedAt` on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainingPod {
    pub pod: String,
    /// The revision the pod belongs to.
    #[serde(default)]
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Sessions open when the drain started.
    #[serde(default)]
    pub sessions_at_start: i64,
    /// Restarts of the pod's gateway when this drain started: a report with more means the
    /// drain's process is gone and what it had left open was lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gateway_restarts: i64,
    /// Sessions still open, as last reported.
    #[serde(default)]
    pub active: i64,
    /// Sessions that completed the close handshake after being asked to move.
    #[serde(default)]
    pub migrated: i64,
    /// Sessions the clients ended themselves.
    #[serde(default)]
    pub closed_by_client: i64,
    /// Sessions ended without a completed close handshake; a pod that disappears before its
    /// report is read adds its last known open sessions here.
    #[serde(default)]
    pub dropped: i64,
    /// Of the migrated sessions, those whose clients said they had been moved before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moved_again: i64,
    /// Connection attempts the gateway refused (503) during this drain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: i64,
    /// When the drain finished (or its report was lost); then the pod may be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// The serving certificate in use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Secret holding `tls.crt`, `tls.key` and `ca.crt`.
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator renews it (2/3 of its lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
}

/// The CRD as installed: the derived one, with the descriptions of the embedded pod template
/// left out. They are upstream's PodSpec documentation (`kubectl explain pod.spec` has them)
/// and would more than double the CRD, past what client-side `kubectl apply` can store.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = LongConnService::crd();
    for version in &mut crd.spec.versions {
        let template = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|spec| spec.properties.as_mut())
            .and_then(|p| p.get_mut("template"));
        if let Some(template) = template {
            strip_descriptions(template);
            template.description =
                Some("The app's pod template (a PodTemplateSpec, as in a Deployment). Its containers listen on localhost; the gateway, injected as a native sidecar, terminates client connections and proxies them to `gateway.upstreamPort`.".to_owned());
        }
    }
    crd
}

fn strip_descriptions(schema: &mut JSONSchemaProps) {
    schema.description = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_descriptions(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        strip_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_descriptions(extra);
    }
    for list in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        for child in list.iter_mut().flatten() {
            strip_descriptions(child);
        }
    }
}

/// The CRD as YAML, as `longconn-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}
