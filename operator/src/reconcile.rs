//! The reconciler: observe, compute what is desired, apply the difference, report status.
//!
//! One `reconcile(lcs, ctx)` per change of a LongConnService or of anything it owns. It lists
//! the objects labelled as its own, asks [`crate::desired`] for the full desired set, applies
//! with server-side apply only the manifests that are not already satisfied, deletes owned
//! objects no longer desired, and writes status only when it changed. A reconcile that finds
//! everything as desired therefore makes no write request at all. Garbage collection removes
//! owned objects when the LongConnService is deleted (owner references), so no finalizer is
//! needed: deleting a LongConnService never waits for the operator.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use longconn_drain_api::{DrainRequest, DrainStrategy};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use crate::certs;
use crate::compare;
use crate::crd::{LongConnService, TlsMode};
use crate::desired::{
    self, CertBundle, Manifest, Observed, ObservedRevision, ServedApis, Settings,
};
use crate::kinds::Kind;
use crate::labels::{self, MANAGER, names};
use crate::metrics::{ErrorReason, KindLabels, Metrics};
use crate::revision;
use crate::rollout::{self, DELETION_COST, GatewayLoss, LOWEST_COST, Plan, PodFacts};
use crate::status::{self, CertFacts, Facts, MonitoringFacts, Problem};

/// How long the answer to "is this optional API served?" is trusted, by default.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60);
/// Requeue when nothing else is pending: catches drift the watches cannot see.
const RESYNC: Duration = Duration::from_secs(300);
/// Requeue while a rollout or a drain is in motion: drain reports are followed at this pace.
const ROLLOUT_POLL: Duration = Duration::from_secs(1);
/// Requeue while gateways run, to keep `status.activeSessions` current (a read per gateway; a
/// status write only when the count changed).
const SESSIONS_POLL: Duration = Duration::from_secs(10);
/// How long one gateway may take to answer `GET /drain` or `POST /drain`.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything that can make a reconcile fail; it is then retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listing {kind:?} objects in namespace {namespace}: {source}")]
    List {
        kind: Kind,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the pods of namespace {namespace}: {source}")]
    ListPods {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {kind:?} {namespace}/{name}: {source}")]
    Get {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("marking pod {namespace}/{name} for removal: {source}")]
    PatchPod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("scaling Deployment {namespace}/{name}: {source}")]
    Scale {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind:?} {namespace}/{name}: {source}")]
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of LongConnService {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("issuing the certificate of LongConnService {namespace}/{name}: {source}")]
    Certificate {
        namespace: String,
        name: String,
        #[source]
        source: certs::Error,
    },
    #[error("LongConnService has no {0}")]
    MissingField(&'static str),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

impl Error {
    pub fn metric_reason(&self) -> ErrorReason {
        match self {
            Error::List { .. }
            | Error::ListPods { .. }
            | Error::Get { .. }
            | Error::PatchPod { .. }
            | Error::Scale { .. }
            | Error::Delete { .. }
            | Error::Status { .. } => ErrorReason::Api,
            Error::Certificate { .. } | Error::Random(_) => ErrorReason::Crypto,
            Error::MissingField(_) => ErrorReason::InvalidObject,
        }
    }
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    discovery_ttl: Duration,
    discovery: Mutex<Option<(Instant, ServedApis)>>,
    failures: Mutex<HashMap<ObjectRef<LongConnService>, u32>>,
    /// Per pod (`namespace/name`): its gateway's restart count and last reported open sessions.
    gateways: Mutex<HashMap<String, GatewaySeen>>,
}

/// What was last seen of one pod's gateway.
#[derive(Clone, Copy, Debug, Default)]
struct GatewaySeen {
    restarts: i32,
    active: i64,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            discovery_ttl: DISCOVERY_TTL,
            discovery: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Compares what the gateways report now with what they reported last time: a gateway
    /// whose restart count went up lost the sessions it last reported. Kept in memory only: an
    /// operator that restarts in the same moment as a gateway misses that loss.
    fn gateway_losses(&self, ns: &str, pods: &PodsSeen) -> Vec<GatewayLoss> {
        let Ok(mut seen) = self.gateways.lock() else {
            return Vec::new();
        };
        let prefix = format!("{ns}/");
        let names: Vec<String> = pods
            .facts
            .iter()
            .map(|p| format!("{ns}/{}", p.name))
            .collect();
        seen.retain(|key, _| !key.starts_with(&prefix) || names.contains(key));
        let mut losses = Vec::new();
        for pod in &pods.facts {
            let restarts = pods.restarts.get(&pod.name).copied().unwrap_or(0);
            let entry = seen
                .entry(format!("{ns}/{}", pod.name))
                .or_insert(GatewaySeen {
                    restarts,
                    active: 0,
                });
            if restarts > entry.restarts && entry.active > 0 {
                losses.push(GatewayLoss {
                    pod: pod.name.clone(),
                    sessions: entry.active,
                });
                entry.active = 0;
            }
            entry.restarts = restarts;
            if let Some(report) = &pod.report {
                entry.active = i64::try_from(report.active).unwrap_or(i64::MAX);
            }
        }
        losses
    }

    /// Sets how long discovery answers are trusted (tests use a short one).
    pub fn with_discovery_ttl(mut self, ttl: Duration) -> Self {
        self.discovery_ttl = ttl;
        self
    }

    /// Which optional APIs are served, asked at most once per discovery TTL. An API whose
    /// group could not be asked (a transient error, not a 404) keeps its last known answer and
    /// is asked again on the next reconcile, so a blip never flips MonitoringReady.
    async fn served_apis(&self) -> ServedApis {
        let cached = self.discovery.lock().ok().and_then(|cache| *cache);
        if let Some((at, apis)) = cached
            && at.elapsed() < self.discovery_ttl
        {
            return apis;
        }
        let previous = cached.map(|(_, apis)| apis).unwrap_or_default();
        let service_monitor = self.serves(Kind::ServiceMonitor).await;
        let cert_manager = self.serves(Kind::Certificate).await;
        let apis = ServedApis {
            service_monitor: service_monitor.unwrap_or(previous.service_monitor),
            cert_manager: cert_manager.unwrap_or(previous.cert_manager),
        };
        if service_monitor.is_some()
            && cert_manager.is_some()
            && let Ok(mut cache) = self.discovery.lock()
        {
            *cache = Some((Instant::now(), apis));
        }
        apis
    }

    /// Whether the cluster serves `kind`'s API; None when discovery failed for another reason
    /// than the group not being there.
    async fn serves(&self, kind: Kind) -> Option<bool> {
        let Some(group_version) = kind.optional_api() else {
            return Some(true);
        };
        let plural = kind.api_resource().plural;
        match self.client.list_api_group_resources(group_version).await {
            Ok(list) => Some(list.resources.iter().any(|r| r.name == plural)),
            Err(kube::Error::Api(status)) if status.code == 404 => Some(false),
            Err(e) => {
                warn!(error = %e, group_version, "discovery failed; keeping the last answer");
                None
            }
        }
    }

    async fn event(&self, lcs: &LongConnService, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &lcs.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish an event");
        }
    }
}

/// Objects labelled as ours, by kind.
type OwnedObjects = BTreeMap<Kind, Vec<DynamicObject>>;

/// Reconciles one LongConnService.
#[instrument(skip_all, fields(lcs = %format!("{}/{}", lcs.namespace().unwrap_or_default(), lcs.name_any())))]
pub async fn reconcile(lcs: Arc<LongConnService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&lcs, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok()
        && let Ok(mut failures) = ctx.failures.lock()
    {
        failures.remove(&ObjectRef::from_obj(lcs.as_ref()));
    }
    result
}

/// On failure: count it, log it, and retry with exponential backoff (5s doubling to 5m).
pub fn error_policy(lcs: Arc<LongConnService>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            reason: error.metric_reason(),
        })
        .inc();
    let attempt = ctx.failures.lock().map_or(0, |mut failures| {
        let n = failures
            .entry(ObjectRef::from_obj(lcs.as_ref()))
            .or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = Duration::from_secs(5)
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(6)))
        .min(RESYNC);
    warn!(
        lcs = %format!("{}/{}", lcs.namespace().unwrap_or_default(), lcs.name_any()),
        error = %error, attempt, retry_in = ?delay, "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_inner(lcs: &LongConnService, ctx: &Context) -> Result<Action, Error> {
    if lcs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = lcs
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let ns = lcs
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = lcs
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingField("metadata.uid"))?;
    let now = Timestamp::now();
    let apis = ctx.served_apis().await;
    let owned = list_owned(ctx, &ns, &name, apis).await?;
    let mut problems = Vec::new();

    let admin_token = secret_value(&owned, &names::admin_token(&name), desired::ADMIN_TOKEN_KEY)
        .map_or_else(new_token, Ok)?;
    let admin_port = desired::admin_port(lcs);
    let pods = observe_pods(ctx, &ns, &name, admin_port, &admin_token).await?;
    let (certificate, cert_facts, renew_at) =
        certificate(lcs, ctx, &owned, apis, now, &mut problems).await?;
    let revisions = observed_revisions(&owned);
    let update_revision = revision::of(lcs, &ctx.settings);
    let update_stalled = owned
        .get(&Kind::Deployment)
        .into_iter()
        .flatten()
        .filter(|d| d.labels().get(labels::REVISION) == Some(&update_revision))
        .any(deployment_stalled);

    let gateway_losses = ctx.gateway_losses(&ns, &pods);
    let plan = rollout::step(&rollout::Input {
        lcs,
        update_revision: &update_revision,
        revisions: &revisions,
        pods: &pods.facts,
        update_stalled,
        gateway_losses: &gateway_losses,
        now,
    });
    start_drains(lcs, &ns, &pods, admin_port, &admin_token, &plan).await;
    mark_for_removal(ctx, &ns, &plan).await?;

    let observed = Observed {
        update_replicas: plan.replicas.get(&update_revision).copied(),
        admin_token,
        certificate,
        apis,
    };
    let manifests = desired::desired(lcs, &observed, &ctx.settings);
    let mut created = Vec::new();
    for manifest in &manifests {
        match apply(ctx, &ns, &uid, &owned, manifest).await {
            Applied::Created => created.push(format!("{:?} {}", manifest.kind, manifest.name)),
            Applied::Updated | Applied::Unchanged => {}
            Applied::Refused(problem) => problems.push(problem),
        }
    }
    if !created.is_empty() {
        let note = format!("created {}", created.join(", "));
        ctx.event(lcs, EventType::Normal, "Created", note).await;
    }
    scale_other_revisions(ctx, &ns, &owned, &update_revision, &plan).await?;
    let keep: Vec<String> = plan
        .replicas
        .keys()
        .map(|revision| names::deployment(&name, revision))
        .collect();
    delete_orphans(lcs, ctx, &ns, &uid, &owned, &manifests, &keep).await?;

    let monitoring = match (
        lcs.spec.monitoring.service_monitor.enabled,
        apis.service_monitor,
    ) {
        (false, _) => MonitoringFacts::Disabled,
        (true, true) => MonitoringFacts::Created,
        (true, false) => MonitoringFacts::ApiMissing,
    };
    let new_status = status::compute(
        lcs,
        &Facts {
            update_revision: &update_revision,
            revisions: &revisions,
            update_stalled,
            problems: &problems,
            certificate: &cert_facts,
            monitoring,
            active_sessions: pods.active,
            rollout: plan.rollout.as_ref(),
            progressing: plan.progressing.as_ref(),
            sessions_preserved: &plan.sessions_preserved,
            now,
        },
    );
    write_status(lcs, ctx, &ns, &name, new_status).await?;
    record_rollout(lcs, ctx, &ns, &name, &plan).await;

    let mut next = if plan.active {
        ROLLOUT_POLL
    } else if pods.running > 0 {
        SESSIONS_POLL
    } else {
        RESYNC
    };
    if let Some(renew_at) = renew_at {
        let until = renew_at.duration_since(now).unsigned_abs();
        next = next.min(until.max(Duration::from_secs(1)));
    }
    Ok(Action::requeue(next))
}

/// After the status holding them is written: the plan's Events and the rollout metrics.
async fn record_rollout(lcs: &LongConnService, ctx: &Context, ns: &str, name: &str, plan: &Plan) {
    let metrics = &ctx.metrics;
    metrics
        .drains_started
        .inc_by(u64::try_from(plan.started).unwrap_or(0));
    for drained in &plan.finished {
        metrics.drains_finished.inc();
        metrics
            .sessions_migrated
            .inc_by(u64::try_from(drained.migrated).unwrap_or(0));
        metrics
            .sessions_dropped
            .inc_by(u64::try_from(drained.dropped).unwrap_or(0));
        if let (Some(started), Some(finished)) = (&drained.started_at, &drained.finished_at) {
            metrics
                .drain_duration
                .observe(finished.0.duration_since(started.0).as_secs_f64().max(0.0));
        }
    }
    metrics.set_phase(ns, name, plan.rollout.as_ref().map(|r| r.phase));
    for note in &plan.events {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        info!(reason = note.reason, message = %note.message, "rollout");
        ctx.event(lcs, type_, note.reason, note.message.clone())
            .await;
    }
}

async fn list_owned(
    ctx: &Context,
    ns: &str,
    name: &str,
    apis: ServedApis,
) -> Result<OwnedObjects, Error> {
    let params = ListParams::default().labels(&labels::ownership_selector(name));
    let mut owned = OwnedObjects::new();
    for kind in Kind::ALL {
        let served = match kind {
            Kind::ServiceMonitor => apis.service_monitor,
            Kind::Certificate => apis.cert_manager,
            _ => true,
        };
        if !served {
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
        let list = api.list(&params).await.map_err(|source| Error::List {
            kind,
            namespace: ns.to_owned(),
            source,
        })?;
        owned.insert(kind, list.items);
    }
    Ok(owned)
}

fn find<'a>(owned: &'a OwnedObjects, kind: Kind, name: &str) -> Option<&'a DynamicObject> {
    owned
        .get(&kind)?
        .iter()
        .find(|o| o.metadata.name.as_deref() == Some(name))
}

fn secret_value(owned: &OwnedObjects, secret: &str, key: &str) -> Option<String> {
    let data = find(owned, Kind::Secret, secret)?
        .data
        .get("data")?
        .get(key)?;
    let bytes: k8s_openapi::ByteString = serde_json::from_value(data.clone()).ok()?;
    String::from_utf8(bytes.0).ok()
}

/// A fresh admin token: 32 random bytes from the operating system, hex-encoded.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The pods of a LongConnService, each with its gateway's drain report.
struct PodsSeen {
    facts: Vec<PodFacts>,
    /// Admin address of each running pod's gateway.
    admin: BTreeMap<String, String>,
    /// Restart count of each pod's gateway container.
    restarts: BTreeMap<String, i32>,
    /// Running pods with an IP.
    running: usize,
    /// Open sessions, summed over the gateways that answered.
    active: i64,
}

/// Lists the pods and reads every running gateway's report (`GET /drain` on its admin port,
/// with the admin token), concurrently. A gateway that does not answer within
/// [`GATEWAY_TIMEOUT`] has no report: its pod is starting or going away.
async fn observe_pods(
    ctx: &Context,
    ns: &str,
    name: &str,
    port: u16,
    token: &str,
) -> Result<PodsSeen, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = labels::selector_string(&labels::pods(name));
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListPods {
            namespace: ns.to_owned(),
            source,
        })?;
    let mut admin = BTreeMap::new();
    let mut restarts = BTreeMap::new();
    let mut facts = Vec::new();
    for pod in &list.items {
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let running = status.and_then(|s| s.phase.as_deref()) == Some("Running") && ip.is_some();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let pod_name = pod.name_any();
        let gateway_restarts = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.name == desired::GATEWAY_CONTAINER)
            .map_or(0, |c| c.restart_count);
        restarts.insert(pod_name.clone(), gateway_restarts);
        if let (true, Some(ip)) = (running, ip) {
            admin.insert(
                pod_name.clone(),
                std::net::SocketAddr::new(ip, port).to_string(),
            );
        }
        facts.push(PodFacts {
            name: pod_name,
            revision: pod
                .labels()
                .get(labels::REVISION)
                .cloned()
                .unwrap_or_default(),
            running,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            deletion_cost: pod
                .annotations()
                .get(DELETION_COST)
                .and_then(|v| v.parse().ok()),
            report: None,
        });
    }
    let reports = futures::future::join_all(facts.iter().map(|pod| async {
        let addr = admin.get(&pod.name)?;
        tokio::time::timeout(GATEWAY_TIMEOUT, longconn_drain_api::report(addr, token))
            .await
            .ok()?
            .ok()
    }))
    .await;
    for (pod, report) in facts.iter_mut().zip(reports) {
        pod.report = report;
    }
    let active = facts
        .iter()
        .filter_map(|p| p.report.as_ref())
        .map(|r| i64::try_from(r.active).unwrap_or(i64::MAX))
        .fold(0i64, i64::saturating_add);
    Ok(PodsSeen {
        running: admin.len(),
        facts,
        admin,
        restarts,
        active,
    })
}

/// Asks the gateways the plan names to drain, with the LongConnService's drain settings. A
/// gateway that cannot be reached is asked again on the next reconcile: its report then still
/// says Serving.
async fn start_drains(
    lcs: &LongConnService,
    ns: &str,
    pods: &PodsSeen,
    port: u16,
    token: &str,
    plan: &Plan,
) {
    let drain = &lcs.spec.drain;
    let request = DrainRequest {
        strategy: Some(match drain.strategy {
            crate::crd::DrainStrategy::Notify => DrainStrategy::Notify,
            crate::crd::DrainStrategy::Wait => DrainStrategy::Wait,
        }),
        deadline: drain.timeout.to_std().ok(),
        spread: drain.spread.to_std().ok(),
        close_code: u16::try_from(drain.close_code).ok(),
    };
    let calls = plan.drain.iter().map(|pod| {
        let request = &request;
        async move {
            let Some(addr) = pods.admin.get(pod) else {
                warn!(pod = %pod, "cannot drain a pod without an IP yet");
                return;
            };
            let call = longconn_drain_api::start_drain(addr, token, request);
            match tokio::time::timeout(GATEWAY_TIMEOUT, call).await {
                Ok(Ok(report)) => {
                    info!(pod = %format!("{ns}/{pod}"), port, sessions = report.sessions_at_start, "drain started");
                }
                Ok(Err(e)) => warn!(pod = %pod, error = %e, "drain request failed; retrying"),
                Err(_) => warn!(pod = %pod, "drain request timed out; retrying"),
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// Gives drained pods the lowest deletion cost, so that shrinking their ReplicaSet removes
/// exactly them.
async fn mark_for_removal(ctx: &Context, ns: &str, plan: &Plan) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {DELETION_COST: LOWEST_COST.to_string()}}});
    for pod in &plan.lowest_cost {
        match api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(Error::PatchPod {
                    namespace: ns.to_owned(),
                    name: pod.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Sets the replicas of the Deployments of revisions other than the update revision. They keep
/// the template they were created with; only their size changes, with a merge patch.
async fn scale_other_revisions(
    ctx: &Context,
    ns: &str,
    owned: &OwnedObjects,
    update_revision: &str,
    plan: &Plan,
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &Kind::Deployment.api_resource());
    for deployment in owned.get(&Kind::Deployment).into_iter().flatten() {
        let Some(revision) = deployment.labels().get(labels::REVISION) else {
            continue;
        };
        let Some(&replicas) = plan.replicas.get(revision) else {
            continue;
        };
        if revision == update_revision
            || deployment.data["spec"]["replicas"].as_i64() == Some(i64::from(replicas))
            || deployment.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let name = deployment.name_any();
        let patch = json!({"spec": {"replicas": replicas}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Scale {
                namespace: ns.to_owned(),
                name: name.clone(),
                source,
            })?;
        info!(deployment = %name, replicas, "scaled");
    }
    Ok(())
}

fn observed_revisions(owned: &OwnedObjects) -> Vec<ObservedRevision> {
    owned
        .get(&Kind::Deployment)
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let revision = d.labels().get(labels::REVISION)?.clone();
            let int = |v: &Value| v.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0);
            Some(ObservedRevision {
                revision,
                replicas: int(&d.data["spec"]["replicas"]),
                current_replicas: int(&d.data["status"]["replicas"]),
                ready_replicas: int(&d.data["status"]["readyReplicas"]),
            })
        })
        .collect()
}

fn deployment_stalled(d: &DynamicObject) -> bool {
    d.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
}

/// Works out the serving certificate for the TLS mode, issuing self-signed material when
/// needed. Returns the bundle to store (SelfSigned), the facts for status, and when to renew.
async fn certificate(
    lcs: &LongConnService,
    ctx: &Context,
    owned: &OwnedObjects,
    apis: ServedApis,
    now: Timestamp,
    problems: &mut Vec<Problem>,
) -> Result<(Option<CertBundle>, CertFacts, Option<Timestamp>), Error> {
    let name = lcs.name_any();
    let ns = lcs.namespace().unwrap_or_default();
    let tls = &lcs.spec.tls;
    match tls.mode {
        TlsMode::Disabled => Ok((None, CertFacts::Disabled, None)),
        TlsMode::SelfSigned => {
            let existing = (|| {
                Some(CertBundle {
                    ca_cert_pem: secret_value(owned, &names::ca(&name), "ca.crt")?,
                    ca_key_pem: secret_value(owned, &names::ca(&name), "ca.key")?,
                    cert_pem: secret_value(owned, &names::serving_cert(&name), "tls.crt")?,
                    key_pem: secret_value(owned, &names::serving_cert(&name), "tls.key")?,
                })
            })();
            let dns_names = desired::certificate_dns_names(lcs, &ctx.settings);
            let validity = tls
                .validity
                .to_std()
                .unwrap_or(Duration::from_secs(90 * 86_400));
            let ensured = certs::ensure(existing.as_ref(), &name, &dns_names, validity, now)
                .map_err(|source| Error::Certificate {
                    namespace: ns.clone(),
                    name: name.clone(),
                    source,
                })?;
            let issued: Vec<String> = [
                ("CA", ensured.ca_issued),
                ("serving certificate", ensured.serving_issued),
            ]
            .into_iter()
            .filter_map(|(what, reason)| Some(format!("a new {what} ({})", reason?.describe())))
            .collect();
            if !issued.is_empty() {
                ctx.metrics.certificates_issued.inc_by(issued.len() as u64);
                let event_reason = if existing.is_some() {
                    "CertificateRenewed"
                } else {
                    "CertificateIssued"
                };
                let note = format!("issued {}", issued.join(" and "));
                ctx.event(lcs, EventType::Normal, event_reason, note).await;
            }
            let facts = CertFacts::Ready {
                secret: names::serving_cert(&name),
                lifetime: Some(ensured.serving),
                reason: "SelfSigned",
                message: format!(
                    "serving certificate for {} valid until {}, renewed at {}",
                    dns_names.join(", "),
                    ensured.serving.not_after,
                    ensured.serving.renew_at()
                ),
            };
            Ok((
                Some(ensured.bundle),
                facts,
                Some(ensured.serving.renew_at()),
            ))
        }
        TlsMode::Secret => {
            let secret_name = tls.secret_name.clone().unwrap_or_default();
            let facts = user_secret(ctx, &ns, &secret_name).await?;
            if let CertFacts::NotReady { reason, message } = &facts {
                problems.push(Problem {
                    reason,
                    message: message.clone(),
                });
            }
            Ok((None, facts, None))
        }
        TlsMode::CertManager => {
            if !apis.cert_manager {
                let message = "tls.mode is CertManager but the cluster does not serve cert-manager.io/v1 Certificate: install cert-manager or choose another tls.mode".to_owned();
                problems.push(Problem {
                    reason: "CertManagerMissing",
                    message: message.clone(),
                });
                return Ok((
                    None,
                    CertFacts::NotReady {
                        reason: "CertManagerMissing",
                        message,
                    },
                    None,
                ));
            }
            let cert = find(owned, Kind::Certificate, &names::serving_cert(&name));
            let ready = cert
                .and_then(|c| c.data["status"]["conditions"].as_array())
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            let facts = match ready {
                Some(c) if c["status"] == "True" => CertFacts::Ready {
                    secret: names::serving_cert(&name),
                    lifetime: None,
                    reason: "CertManagerReady",
                    message: c["message"]
                        .as_str()
                        .unwrap_or("cert-manager issued the certificate")
                        .to_owned(),
                },
                Some(c) => CertFacts::NotReady {
                    reason: "CertManagerPending",
                    message: format!(
                        "cert-manager: {}",
                        c["message"].as_str().unwrap_or("not ready")
                    ),
                },
                None => CertFacts::NotReady {
                    reason: "CertManagerPending",
                    message: format!(
                        "waiting for cert-manager to issue Certificate {}",
                        names::serving_cert(&name)
                    ),
                },
            };
            Ok((None, facts, None))
        }
    }
}

/// Checks a user-provided TLS Secret (mode Secret).
async fn user_secret(ctx: &Context, ns: &str, secret_name: &str) -> Result<CertFacts, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(secret_name)
        .await
        .map_err(|source| Error::Get {
            kind: Kind::Secret,
            namespace: ns.to_owned(),
            name: secret_name.to_owned(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(CertFacts::NotReady {
            reason: "SecretNotFound",
            message: format!(
                "tls.secretName {secret_name} does not exist in namespace {ns}: create it (type kubernetes.io/tls) or choose another tls.mode"
            ),
        });
    };
    let data = secret.data.unwrap_or_default();
    let missing: Vec<&str> = ["tls.crt", "tls.key"]
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Ok(CertFacts::NotReady {
            reason: "SecretInvalid",
            message: format!("Secret {secret_name} lacks {}", missing.join(" and ")),
        });
    }
    let pem = String::from_utf8_lossy(&data["tls.crt"].0).into_owned();
    let Some(inspected) = certs::inspect(&pem) else {
        return Ok(CertFacts::NotReady {
            reason: "SecretInvalid",
            message: format!("tls.crt in Secret {secret_name} is not a PEM certificate"),
        });
    };
    Ok(CertFacts::Ready {
        secret: secret_name.to_owned(),
        lifetime: Some(inspected.lifetime),
        reason: "SecretValid",
        message: format!(
            "Secret {secret_name} holds a certificate valid until {}",
            inspected.lifetime.not_after
        ),
    })
}

fn owned_by(object: &DynamicObject, uid: &str) -> bool {
    object.owner_references().iter().any(|o| o.uid == uid)
}

/// What [`apply`] did with one manifest.
enum Applied {
    Created,
    Updated,
    Unchanged,
    /// Not applied: someone else's object has that name, or the API server refused it.
    Refused(Problem),
}

/// Applies one manifest unless it is already satisfied. A manifest that cannot be applied is
/// reported as a problem (Degraded condition) rather than failing the whole reconcile.
async fn apply(
    ctx: &Context,
    ns: &str,
    uid: &str,
    owned: &OwnedObjects,
    manifest: &Manifest,
) -> Applied {
    let kind = manifest.kind;
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
    let existing = match find(owned, kind, &manifest.name) {
        Some(o) => Some(o.clone()),
        // Not labelled as ours: make sure no one else's object has this name.
        None => match api.get_opt(&manifest.name).await {
            Ok(o) => o,
            Err(e) => {
                return Applied::Refused(Problem {
                    reason: "ApplyFailed",
                    message: format!("reading {kind:?} {}: {e}", manifest.name),
                });
            }
        },
    };
    if let Some(existing) = &existing
        && !owned_by(existing, uid)
    {
        let message = format!(
            "{kind:?} {} already exists and is not owned by this LongConnService; rename or delete it",
            manifest.name
        );
        return Applied::Refused(Problem {
            reason: "OwnershipConflict",
            message,
        });
    }
    let differs = match &existing {
        Some(existing) => {
            let observed = serde_json::to_value(existing).unwrap_or(Value::Null);
            match compare::first_difference(&manifest.object, &observed) {
                None => return Applied::Unchanged,
                Some(path) => Some(path),
            }
        }
        None => None,
    };
    let params = PatchParams::apply(MANAGER).force();
    match api
        .patch(&manifest.name, &params, &Patch::Apply(&manifest.object))
        .await
    {
        Ok(_) => {
            ctx.metrics
                .objects_applied
                .get_or_create(&KindLabels::of(kind))
                .inc();
            if existing.is_none() {
                info!(kind = ?kind, name = %manifest.name, "created");
                Applied::Created
            } else {
                info!(kind = ?kind, name = %manifest.name, differs = %differs.unwrap_or_default(), "updated");
                Applied::Updated
            }
        }
        Err(e) => {
            let message = format!("applying {kind:?} {}: {}", manifest.name, api_message(&e));
            Applied::Refused(Problem {
                reason: "ApplyFailed",
                message,
            })
        }
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Deletes objects labelled as ours and owned by this LongConnService that are no longer
/// desired (a Secret of a TLS mode no longer used, ...). Deployments stay while the rollout
/// keeps their revision (`deployments`); an old revision's goes once its last pod is gone.
async fn delete_orphans(
    lcs: &LongConnService,
    ctx: &Context,
    ns: &str,
    uid: &str,
    owned: &OwnedObjects,
    manifests: &[Manifest],
    deployments: &[String],
) -> Result<(), Error> {
    for (kind, objects) in owned {
        for object in objects {
            let name = object.name_any();
            let wanted = manifests.iter().any(|m| m.kind == *kind && m.name == name)
                || *kind == Kind::Deployment && deployments.contains(&name);
            if wanted || !owned_by(object, uid) || object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(source) => {
                    return Err(Error::Delete {
                        kind: *kind,
                        namespace: ns.to_owned(),
                        name,
                        source,
                    });
                }
            }
            ctx.metrics
                .objects_deleted
                .get_or_create(&KindLabels::of(*kind))
                .inc();
            info!(kind = ?kind, name = %name, "deleted, no longer desired");
            ctx.event(
                lcs,
                EventType::Normal,
                "Deleted",
                format!("deleted {kind:?} {name}: no longer desired"),
            )
            .await;
        }
    }
    Ok(())
}

/// Writes the status when it differs from the current one, and records a Warning Event when
/// the Degraded, CertificateReady or MonitoringReady condition turns bad or changes its words.
async fn write_status(
    lcs: &LongConnService,
    ctx: &Context,
    ns: &str,
    name: &str,
    new: crate::crd::LongConnServiceStatus,
) -> Result<(), Error> {
    let old = lcs.status.clone().unwrap_or_default();
    if old == new {
        return Ok(());
    }
    for type_ in [
        status::DEGRADED,
        status::CERTIFICATE_READY,
        status::MONITORING_READY,
    ] {
        let bad = if type_ == status::DEGRADED {
            "True"
        } else {
            "False"
        };
        if let Some(c) = status::condition(&new, type_)
            && c.status == bad
            && status::condition(&old, type_)
                .is_none_or(|o| o.status != c.status || o.message != c.message)
        {
            ctx.event(lcs, EventType::Warning, &c.reason, c.message.clone())
                .await;
        }
    }
    let api: Api<LongConnService> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": LongConnService::api_version(&()),
        "kind": LongConnService::kind(&()),
        "status": new,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}
