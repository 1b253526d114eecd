//! The reconciler: observe, plan, record, act.
//!
//! One `reconcile(lcs, ctx)` per change of a LongConnService's spec, of anything it owns, of
//! its pods, or of a gateway's report. It reads in one go from the caches ([`observe`]), asks
//! the pure [`plan`] what to record and do, records the status first (under an
//! optimistic-concurrency precondition: a reconcile that saw a stale status does nothing and
//! looks again), then follows the record with Events and metrics, and only then acts: drains,
//! deletion costs, server-side applies of what is not already as desired, resizes, deletes and,
//! when the session autoscaling decided so, `spec.replicas` through the scale subresource.
//! A reconcile that finds everything as desired makes no request at all. Garbage collection
//! removes owned objects when the LongConnService is deleted (owner references), so no
//! finalizer is needed: deleting a LongConnService never waits for the operator.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use longconn_drain_api::{DrainRequest, DrainStrategy, RebalanceRequest};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, instrument, warn};

use crate::arrivals::{Admission, Arrivals};
use crate::autoscale::History;
use crate::cache::Caches;
use crate::certs;
use crate::compare;
use crate::crd::{LongConnService, LongConnServiceStatus, TlsMode};
use crate::desired::{self, Manifest, ServedApis, Settings};
use crate::expectations::Expectations;
use crate::gateways::{self, Reports};
use crate::history::{self, Undo};
use crate::kinds::Kind;
use crate::labels::{MANAGER, names};
use crate::metrics::{Direction, DirectionLabels, ErrorReason, KindLabels, Metrics};
use crate::observe::{self, Observation, UserSecret};
use crate::plan::{self, Certificate, Outcome, Refusals};
use crate::rollout::{LOWEST_COST, Note, Plan};
use crate::status::{CertFacts, Problem};

/// How often the cluster is asked which optional APIs it serves, by default.
pub const DISCOVERY_REFRESH: Duration = Duration::from_secs(60);
/// Requeue after a reconcile that saw a stale view or could not act fully.
const SOON: Duration = Duration::from_secs(1);

/// Everything that can make a reconcile fail; it is then retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("scaling LongConnService {namespace}/{name} to {replicas} replicas: {source}")]
    ScaleService {
        namespace: String,
        name: String,
        replicas: i32,
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
    #[error("returning LongConnService {namespace}/{name} to an earlier revision: {source}")]
    Undo {
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
            Error::Get { .. }
            | Error::PatchPod { .. }
            | Error::Scale { .. }
            | Error::ScaleService { .. }
            | Error::Delete { .. }
            | Error::Status { .. }
            | Error::Undo { .. } => ErrorReason::Api,
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
    /// The controller's caches: owned objects, pods, ReplicaSets.
    pub caches: Caches,
    /// The gateways' latest reports.
    pub reports: Reports,
    /// Who the Events say reported them.
    reporter: Reporter,
    /// Which optional APIs the cluster serves, once asked ([`Context::discover`]).
    apis: watch::Sender<Option<ServedApis>>,
    failures: Mutex<HashMap<ObjectRef<LongConnService>, u32>>,
    /// What the last attempt to apply each LongConnService's manifests refused.
    problems: Mutex<HashMap<ObjectRef<LongConnService>, Refusals>>,
    /// When each LongConnService's open sessions were last recorded.
    sessions_recorded: Mutex<HashMap<ObjectRef<LongConnService>, Instant>>,
    /// When each LongConnService's status was last written.
    status_recorded: Mutex<HashMap<ObjectRef<LongConnService>, tokio::time::Instant>>,
    /// Writes whose result the caches do not show yet.
    expectations: Expectations,
    /// Each LongConnService's session autoscaling history: recommendations and scale events
    /// (in memory: an operator that restarts starts with none, see [`crate::autoscale`]).
    histories: Mutex<HashMap<ObjectRef<LongConnService>, History>>,
    /// LongConnServices whose next step waits for routing to settle, on counts read within
    /// [`crate::rollout::FRESH`]: their gateways are read every tick.
    routing_pending: Mutex<HashSet<ObjectRef<LongConnService>>>,
    /// Each LongConnService's last reading of its pods' CPU, while its autoscaling needs one.
    cpu_reads: Mutex<HashMap<ObjectRef<LongConnService>, (Instant, observe::CpuUsed)>>,
    /// New LongConnServices, which wait while more arrive in a burst.
    arrivals: Mutex<Arrivals<ObjectRef<LongConnService>>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, caches: Caches) -> Self {
        Self {
            reporter: Reporter {
                controller: MANAGER.to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
            client,
            settings,
            metrics,
            caches,
            reports: Reports::default(),
            apis: watch::Sender::new(None),
            failures: Mutex::new(HashMap::new()),
            problems: Mutex::new(HashMap::new()),
            sessions_recorded: Mutex::new(HashMap::new()),
            status_recorded: Mutex::new(HashMap::new()),
            expectations: Expectations::default(),
            histories: Mutex::new(HashMap::new()),
            cpu_reads: Mutex::new(HashMap::new()),
            routing_pending: Mutex::new(HashSet::new()),
            arrivals: Mutex::new(Arrivals::default()),
        }
    }

    /// How long the new LongConnService `key` waits for a burst of arrivals to pass, if it
    /// does ([`crate::arrivals`]).
    fn wait_for_burst(&self, key: &ObjectRef<LongConnService>, now: Instant) -> Option<Duration> {
        let Admission::Wait { after, began } = self.arrivals.lock().ok()?.admit(key, now) else {
            return None;
        };
        if began {
            info!(
                "new LongConnServices are arriving in a burst: they are set up once no new one \
                 has come for {:?}, at most {:?} after each came",
                crate::arrivals::IDLE,
                crate::arrivals::MAX_WAIT,
            );
        }
        debug!(
            wait = ?after,
            "waiting for the burst of new LongConnServices to pass"
        );
        Some(after)
    }

    /// Asks the cluster which optional APIs it serves and publishes the answer (to the
    /// reconciles and to the watches of those APIs); returns whether it changed. An API whose
    /// group could not be asked (a transient error, not a 404) keeps its last known answer, so
    /// a blip never flips MonitoringReady. Runs on its own schedule, never in a reconcile.
    pub async fn discover(&self) -> bool {
        let previous = (*self.apis.borrow()).unwrap_or_default();
        // One request per group/version: the ServiceMonitor and PrometheusRule share theirs.
        let monitoring = self.served_resources(Kind::ServiceMonitor).await;
        let cert_manager = self.served_resources(Kind::Certificate).await;
        let known = self.apis.borrow().is_some();
        if !known && (monitoring.is_none() || cert_manager.is_none()) {
            // No answer to keep yet: reconciles wait for a complete one.
            return false;
        }
        let serves = |resources: &Option<Vec<String>>, kind: Kind, last: bool| {
            resources
                .as_ref()
                .map_or(last, |r| r.iter().any(|p| p == kind.names().plural))
        };
        let apis = ServedApis {
            service_monitor: serves(&monitoring, Kind::ServiceMonitor, previous.service_monitor),
            prometheus_rule: serves(&monitoring, Kind::PrometheusRule, previous.prometheus_rule),
            cert_manager: serves(&cert_manager, Kind::Certificate, previous.cert_manager),
        };
        self.apis.send_if_modified(|old| {
            let changed = *old != Some(apis);
            *old = Some(apis);
            changed
        })
    }

    /// The latest answer of [`Context::discover`]: None until the cluster answered once.
    pub fn served_apis(&self) -> watch::Receiver<Option<ServedApis>> {
        self.apis.subscribe()
    }

    /// The resources (plural names) the cluster serves in `kind`'s optional group/version:
    /// none when the group is not there (a 404), None when discovery failed for another
    /// reason.
    async fn served_resources(&self, kind: Kind) -> Option<Vec<String>> {
        let group_version = kind.optional_api()?;
        match self.client.list_api_group_resources(group_version).await {
            Ok(list) => Some(list.resources.into_iter().map(|r| r.name).collect()),
            Err(kube::Error::Api(status)) if status.code == 404 => Some(Vec::new()),
            Err(e) => {
                warn!(error = %e, group_version, "discovery failed; keeping the last answer");
                None
            }
        }
    }

    /// Publishes an Event about `lcs`. Every one is an Event object of its own: a recorder that
    /// outlives one publish would fold an Event into the first one of the same reason (a count
    /// raised, the first one's note kept), so of six pods drained in a rollout only the first
    /// one's words would be left, and it keeps every Event it sent for six minutes to do so
    /// (3,000 after creating a thousand services). The Events the operator publishes
    /// follow what it records, once, so there is nothing to fold.
    pub async fn event(&self, lcs: &LongConnService, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        match recorder.publish(&event, &lcs.object_ref(&())).await {
            Ok(()) => {}
            // Its namespace is being deleted, and the LongConnService with it.
            Err(e) if namespace_terminating(&e) => {
                debug!(error = %e, reason, "no event: the namespace is being deleted");
            }
            Err(e) => warn!(error = %e, reason, "could not publish an event"),
        }
    }

    fn last_problems(&self, key: &ObjectRef<LongConnService>) -> Refusals {
        kept(&self.problems, key)
    }

    /// Keeps what an attempt to apply refused; returns whether that changed.
    fn set_problems(&self, key: ObjectRef<LongConnService>, problems: Refusals) -> bool {
        let Ok(mut all) = self.problems.lock() else {
            return false;
        };
        let old = if problems == Refusals::default() {
            all.remove(&key)
        } else {
            all.insert(key, problems.clone())
        };
        old.unwrap_or_default() != problems
    }

    fn sessions_due(&self, key: &ObjectRef<LongConnService>) -> bool {
        self.sessions_recorded
            .lock()
            .ok()
            .and_then(|s| s.get(key).copied())
            .is_none_or(|at| at.elapsed() >= plan::SESSIONS_RECORD)
    }

    /// How long a change of counts alone must wait before it is written (zero: not at all).
    fn counts_wait(&self, key: &ObjectRef<LongConnService>) -> Duration {
        self.status_recorded
            .lock()
            .ok()
            .and_then(|s| s.get(key).copied())
            .map_or(Duration::ZERO, |at| {
                plan::COUNTS_RECORD.saturating_sub(at.elapsed())
            })
    }

    /// The session autoscaling history of a LongConnService (empty when there is none yet).
    fn history(&self, key: &ObjectRef<LongConnService>) -> History {
        kept(&self.histories, key)
    }

    /// Changes the session autoscaling history of a LongConnService; `None` forgets it (the
    /// session autoscaling is off).
    fn update_history(
        &self,
        key: &ObjectRef<LongConnService>,
        change: Option<impl FnOnce(&mut History)>,
    ) {
        let Ok(mut all) = self.histories.lock() else {
            return;
        };
        match change {
            Some(change) => change(all.entry(key.clone()).or_default()),
            None => {
                all.remove(key);
            }
        }
    }

    /// Whether a LongConnService's next step waits for its routing to settle (then its
    /// gateways are read every tick, so that step starts on fresh counts).
    pub fn routing_pending(&self, key: &ObjectRef<LongConnService>) -> bool {
        self.routing_pending
            .lock()
            .is_ok_and(|pending| pending.contains(key))
    }

    fn set_routing_pending(&self, key: &ObjectRef<LongConnService>, pending: bool) {
        if let Ok(mut all) = self.routing_pending.lock() {
            if pending {
                all.insert(key.clone());
            } else {
                all.remove(key);
            }
        }
    }

    /// The last reading of a LongConnService's pods' CPU, if it is younger than `max_age`.
    pub fn cpu_read(
        &self,
        key: &ObjectRef<LongConnService>,
        max_age: Duration,
    ) -> Option<observe::CpuUsed> {
        let reads = self.cpu_reads.lock().ok()?;
        let (at, read) = reads.get(key)?;
        (at.elapsed() < max_age).then(|| read.clone())
    }

    /// Keeps a reading of a LongConnService's pods' CPU; `None` forgets the last one.
    pub fn cpu_store(&self, key: ObjectRef<LongConnService>, read: Option<observe::CpuUsed>) {
        if let Ok(mut reads) = self.cpu_reads.lock() {
            match read {
                Some(read) => reads.insert(key, (Instant::now(), read)),
                None => reads.remove(&key),
            };
        }
    }

    /// Notes a status write, with the open sessions refreshed in it or not.
    fn status_written(&self, key: &ObjectRef<LongConnService>, sessions: bool) {
        if let Ok(mut s) = self.status_recorded.lock() {
            s.insert(key.clone(), tokio::time::Instant::now());
        }
        if sessions && let Ok(mut s) = self.sessions_recorded.lock() {
            s.insert(key.clone(), Instant::now());
        }
    }
}

/// What `all` keeps for `key`, or the default.
fn kept<T: Clone + Default>(
    all: &Mutex<HashMap<ObjectRef<LongConnService>, T>>,
    key: &ObjectRef<LongConnService>,
) -> T {
    all.lock()
        .ok()
        .and_then(|all| all.get(key).cloned())
        .unwrap_or_default()
}

/// Whether the API server refused a request because its namespace is being deleted (nothing
/// new may be created there then).
pub fn namespace_terminating(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 403
            && status
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

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
        .min(plan::RESYNC);
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
    for (field, value) in [
        ("metadata.name", &lcs.metadata.name),
        ("metadata.namespace", &lcs.metadata.namespace),
        ("metadata.uid", &lcs.metadata.uid),
    ] {
        if value.is_none() {
            return Err(Error::MissingField(field));
        }
    }
    let key = ObjectRef::from_obj(lcs);
    let Some(apis) = *ctx.apis.borrow() else {
        debug!("the optional APIs are not discovered yet");
        return Ok(Action::requeue(SOON));
    };
    if !ctx.caches.ready(apis) {
        debug!("the caches are not filled yet");
        return Ok(Action::requeue(SOON));
    }
    // A new LongConnService that arrives in a burst is set up once the burst is over.
    if lcs.status.is_none()
        && let Some(wait) = ctx.wait_for_burst(&key, Instant::now())
    {
        return Ok(Action::requeue(wait));
    }

    // Wait until the caches show our own last writes: a plan made before would be made from a
    // stale view. A cheap look (by name), made before observing; the watch of each owned object
    // written wakes the reconcile again, the LongConnService's own status (which wakes nothing)
    // is looked for again soon.
    let ns = key.namespace.as_deref().unwrap_or_default();
    let settled = ctx
        .expectations
        .settled(&key, Instant::now(), |kind, name| match kind {
            None => lcs.resource_version(),
            Some(kind) => ctx.caches.resource_version(kind, ns, name),
        });
    if !settled {
        debug!("waiting for the caches to show the last writes");
        return Ok(Action::requeue(SOON));
    }

    // Observe.
    let observation = observe::observe(ctx, lcs, apis, Timestamp::now()).await?;
    debug!(pods = ?observation.pod_lines(), revisions = ?observation.revisions, "observed");
    // A person asked to return to an earlier revision: that goes into the spec first, and the
    // change wakes the next reconcile.
    let name = lcs.name_any();
    if let Some(undo) = history::undo(lcs, |revision| {
        let fields = observation.owned.pod_fields(&name, revision)?;
        serde_json::from_value(fields.clone()).ok()
    }) {
        follow_undo(lcs, ctx, undo).await?;
        return Ok(Action::requeue(SOON));
    }
    let admin_token = observation.admin_token.clone().map_or_else(new_token, Ok)?;
    let certificate = certificate(lcs, &ctx.settings, &observation)?;
    let refresh_sessions = ctx.sessions_due(&key);
    let history = ctx.history(&key);

    // Plan.
    let outcome = plan::plan(plan::Input {
        lcs,
        observation: &observation,
        settings: &ctx.settings,
        certificate,
        admin_token,
        refused: ctx.last_problems(&key),
        refresh_sessions,
        history: &history,
    });
    ctx.set_routing_pending(&key, outcome.rollout.routing_pending);
    // Every recommendation is remembered, whatever becomes of this plan: it is what the
    // gateways reported.
    let autoscaling = lcs.spec.autoscaling.as_ref();
    ctx.update_history(
        &key,
        outcome
            .autoscale
            .as_ref()
            .zip(autoscaling)
            .map(|(a, spec)| {
                move |h: &mut History| {
                    if let Some(recommendation) = a.recommendation {
                        h.recommended(observation.now, recommendation, spec);
                    }
                }
            }),
    );

    // Record first (a change of counts alone waits to go out with the next)...
    let old_status = lcs.status.clone().unwrap_or_default();
    let counts_wait = ctx.counts_wait(&key);
    // What forces the write now, if anything does.
    let urgent = outcome
        .status
        .as_ref()
        .and_then(|new| plan::urgent_change(&old_status, new));
    let status = outcome
        .status
        .as_ref()
        .filter(|_| counts_wait.is_zero() || urgent.is_some());
    let mut requeue = outcome.requeue;
    // The LongConnService's resourceVersion as this reconcile last saw or wrote it.
    let mut version = lcs.resource_version();
    let mut recorded = false;
    if outcome.status.is_some() && status.is_none() {
        debug!(wait = ?counts_wait, "counts changed; recorded with the next write");
        requeue = requeue.min(counts_wait);
    }
    if let Some(status) = status {
        // What forced the write: a verdict, or (once the counts may go) the first change.
        let changed = urgent.clone().unwrap_or_else(|| {
            compare::first_change(&old_status, status)
                .map(|field| format!("{field} (counts)"))
                .unwrap_or_default()
        });
        info!(%changed, "recording status");
        match write_status(lcs, ctx, status).await {
            Ok(written) => {
                ctx.expectations.wrote(
                    &key,
                    (None, &key.name),
                    lcs.resource_version().as_deref(),
                    written.as_deref(),
                    Instant::now(),
                );
                version = written;
                recorded = true;
            }
            Err(Error::Status {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 => {
                // The status changed since the cache showed it: this plan is stale.
                debug!(seen = ?lcs.resource_version(), "the status changed since the cache showed it");
                return Ok(Action::requeue(SOON));
            }
            Err(e) => return Err(e),
        }
        ctx.status_written(&key, refresh_sessions);
        follow_record(lcs, ctx, &outcome).await;
    }

    // ...then act.
    let problems = perform(lcs, ctx, &observation, &outcome).await?;
    if recorded {
        // A round of rebalancing is asked for only once it is recorded: a round that is not
        // is never sent, and one that is but fails to reach a gateway just moves less.
        start_rebalance(lcs, &observation, &outcome.rollout).await;
    }
    let scaled = match outcome.autoscale.as_ref().and_then(|a| a.scale_to) {
        Some(replicas) => scale_service(lcs, ctx, version.as_deref(), replicas).await?,
        None => true,
    };
    if ctx.set_problems(key, problems) || !scaled {
        return Ok(Action::requeue(SOON));
    }
    debug!(?requeue, "reconciled");
    Ok(Action::requeue(requeue))
}

/// Writes what the [`crate::steps::UNDO`] annotation asks for (the revision's pod fields back in
/// the spec, or only the annotation removed when it cannot be followed) and says so in an Event.
async fn follow_undo(lcs: &LongConnService, ctx: &Context, undo: Undo) -> Result<(), Error> {
    let (patch, warning, message) = match undo {
        Undo::Return {
            patch,
            number,
            revision,
        } => (
            patch,
            false,
            format!("returning the pods' spec to revision {number} ({revision}), as asked"),
        ),
        Undo::Refused { patch, message } => (patch, true, message),
    };
    let ns = lcs.namespace().unwrap_or_default();
    let name = lcs.name_any();
    let api: Api<LongConnService> = Api::namespaced(ctx.client.clone(), &ns);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Undo {
        namespace: ns.clone(),
        name: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(|source| Error::Undo {
            namespace: ns,
            name,
            source,
        })?;
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let reason = if warning {
        "UndoRefused"
    } else {
        "RolloutUndo"
    };
    info!(%message, "undo");
    ctx.event(lcs, type_, reason, message).await;
    Ok(())
}

/// A fresh admin token: 32 random bytes from the operating system, hex-encoded.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the planned status with server-side apply, on the condition that the object is
/// still the one the plan was made from (its resourceVersion).
async fn write_status(
    lcs: &LongConnService,
    ctx: &Context,
    status: &LongConnServiceStatus,
) -> Result<Option<String>, Error> {
    let ns = lcs.namespace().unwrap_or_default();
    let name = lcs.name_any();
    let api: Api<LongConnService> = Api::namespaced(ctx.client.clone(), &ns);
    let mut patch = json!({
        "apiVersion": LongConnService::api_version(&()),
        "kind": LongConnService::kind(&()),
        "status": status,
    });
    if let Some(rv) = lcs.resource_version() {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    let written = api
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            namespace: ns,
            name,
            source,
        })?;
    Ok(written.resource_version())
}

/// What follows a recorded status, once: the rollout's Events and metrics, and Warning Events
/// for conditions that turned bad.
async fn follow_record(lcs: &LongConnService, ctx: &Context, outcome: &Outcome) {
    let plan = &outcome.rollout;
    let metrics = &ctx.metrics;
    if let Some(decision) = outcome.autoscale.as_ref().and_then(|a| a.scaled.as_ref()) {
        let direction = if decision.replicas > decision.from {
            Direction::Up
        } else {
            Direction::Down
        };
        metrics
            .autoscale_decisions
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }
    metrics
        .drains_started
        .inc_by(u64::try_from(plan.started).unwrap_or(0));
    if !plan.rebalance_asks.is_empty() {
        metrics.rebalance_rounds.inc();
        metrics.rebalance_sessions_asked.inc_by(
            plan.rebalance_asks
                .iter()
                .map(|a| u64::try_from(a.sessions).unwrap_or(0))
                .sum(),
        );
    }
    for pod in plan.rebalanced.iter().filter_map(|p| p.outcome.as_ref()) {
        metrics
            .rebalance_sessions_moved
            .inc_by(u64::try_from(pod.moved).unwrap_or(0));
        metrics
            .rebalance_sessions_dropped
            .inc_by(u64::try_from(pod.dropped).unwrap_or(0));
    }
    for drained in &plan.finished {
        metrics.drains_finished.inc();
        metrics
            .sessions_migrated
            .inc_by(u64::try_from(drained.migrated).unwrap_or(0));
        metrics
            .sessions_dropped
            .inc_by(u64::try_from(drained.dropped).unwrap_or(0));
        metrics
            .sessions_moved_again
            .inc_by(u64::try_from(drained.moved_again).unwrap_or(0));
        metrics
            .attempts_refused
            .inc_by(u64::try_from(drained.refused).unwrap_or(0));
        if let (Some(started), Some(finished)) = (&drained.started_at, &drained.finished_at) {
            metrics
                .drain_duration
                .observe(finished.0.duration_since(started.0).as_secs_f64().max(0.0));
        }
    }
    if plan
        .events
        .iter()
        .any(|n| n.reason == "CertificateIssued" || n.reason == "CertificateRenewed")
    {
        metrics.certificates_issued.inc();
    }
    metrics.set_phase(
        &lcs.namespace().unwrap_or_default(),
        &lcs.name_any(),
        plan.rollout.as_ref().map(|r| r.phase),
    );
    for note in &plan.events {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        info!(reason = note.reason, message = %note.message, "recorded");
        ctx.event(lcs, type_, note.reason, note.message.clone())
            .await;
    }
    for warning in &outcome.warnings {
        ctx.event(
            lcs,
            EventType::Warning,
            &warning.reason,
            warning.message.clone(),
        )
        .await;
    }
}

/// Acts on a recorded plan. Returns what the API server refused to apply (reported in the
/// Degraded condition by the next reconcile).
async fn perform(
    lcs: &LongConnService,
    ctx: &Context,
    observation: &Observation,
    outcome: &Outcome,
) -> Result<Refusals, Error> {
    let ns = lcs.namespace().unwrap_or_default();
    route(ctx, &ns, &outcome.rollout, observation.now).await?;
    start_drains(lcs, ctx, observation, &outcome.rollout).await;
    mark_for_removal(ctx, &ns, &outcome.rollout).await?;
    for pod in &outcome.rollout.release {
        if outcome.rollout.lowest_cost.contains(pod) {
            continue;
        }
        if let Some(&at) = observation.finalizer_at.get(pod) {
            release(ctx, &ns, pod, at).await?;
        }
    }
    let uid = lcs.uid().unwrap_or_default();
    let mut refused = Refusals::default();
    let mut created = Vec::new();
    for manifest in &outcome.manifests {
        match apply(
            ctx,
            &ObjectRef::from_obj(lcs),
            &ns,
            &uid,
            observation,
            manifest,
        )
        .await
        {
            Applied::Created
                if announced_by_rollout(lcs, manifest.kind, &manifest.name, Change::Created) => {}
            Applied::Created => created.push(format!("{:?} {}", manifest.kind, manifest.name)),
            Applied::Updated
                if manifest.kind == Kind::Service
                    && manifest.name == lcs.name_any()
                    && observation.service.revision != outcome.rollout.selects =>
            {
                let selects = outcome
                    .rollout
                    .selects
                    .as_deref()
                    .unwrap_or("every revision");
                info!(service = %format!("{ns}/{}", manifest.name), selects, "routing changed");
            }
            Applied::Updated | Applied::Unchanged => {}
            Applied::Refused(problem) => {
                // The only Deployment desired() builds is the update revision's.
                if manifest.kind == Kind::Deployment {
                    refused.update = Some(problem.message.clone());
                }
                refused.problems.push(problem);
            }
        }
    }
    if !created.is_empty() {
        let note = format!("created {}", created.join(", "));
        ctx.event(lcs, EventType::Normal, "Created", note).await;
    }
    let key = ObjectRef::from_obj(lcs);
    scale(ctx, &key, &ns, observation, &outcome.scale).await?;
    delete_orphans(lcs, ctx, &ns, &outcome.orphans).await?;
    Ok(refused)
}

/// Asks the gateways the plan names to drain, with the LongConnService's drain settings; each
/// answer goes into the reports at once. A gateway that cannot be reached is asked again on
/// the next reconcile: its report then still says Serving.
async fn start_drains(
    lcs: &LongConnService,
    ctx: &Context,
    observation: &Observation,
    plan: &Plan,
) {
    let Some(token) = observation.admin_token.as_deref() else {
        return;
    };
    let drain = &lcs.spec.drain;
    let request = DrainRequest {
        strategy: Some(match drain.strategy {
            crate::crd::DrainStrategy::Notify => DrainStrategy::Notify,
            crate::crd::DrainStrategy::Wait => DrainStrategy::Wait,
        }),
        deadline: drain.timeout.to_std().ok(),
        spread: drain.spread.to_std().ok(),
        close_code: u16::try_from(drain.close_code).ok(),
        reason: Some(format!("moving: revision {}", plan.target)),
    };
    let calls = plan.drain.iter().map(|pod| {
        let request = &request;
        async move {
            let Some((addr, key)) = observation.admin.get(pod) else {
                warn!(pod = %pod, "cannot drain a pod without an IP yet");
                return;
            };
            let addr = addr.to_string();
            let call = async {
                match longconn_drain_api::start_drain(&addr, token, request).await {
                    // A gateway older than the close frame's reason refuses the field: ask it
                    // again without one.
                    Err(longconn_drain_api::Error::Status { status, .. })
                        if status == hyper::StatusCode::BAD_REQUEST && request.reason.is_some() =>
                    {
                        let plain = DrainRequest {
                            reason: None,
                            ..request.clone()
                        };
                        longconn_drain_api::start_drain(&addr, token, &plain).await
                    }
                    answer => answer,
                }
            };
            match tokio::time::timeout(gateways::TIMEOUT * 2, call).await {
                Ok(Ok(report)) => {
                    info!(pod = %pod, sessions = report.sessions_at_start, "drain started");
                    ctx.reports
                        .record(key.clone(), Some(report), Instant::now());
                }
                Ok(Err(e)) => warn!(pod = %pod, error = %e, "drain request failed; retrying"),
                Err(_) => warn!(pod = %pod, "drain request timed out; retrying"),
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// Asks the gateways of a round of rebalancing to move their share of sessions (`POST
/// /rebalance`, idempotent by the round's id).
async fn start_rebalance(lcs: &LongConnService, observation: &Observation, plan: &Plan) {
    let (Some(token), Some(round), Some(spec)) = (
        observation.admin_token.as_deref(),
        plan.rebalance.as_ref(),
        lcs.spec.autoscaling.as_ref(),
    ) else {
        return;
    };
    let calls = plan.rebalance_asks.iter().map(|ask| {
        let pod = &ask.pod;
        let request = RebalanceRequest {
            id: crate::rebalance::round_id(round.round),
            sessions: u64::try_from(ask.sessions).unwrap_or(0),
            spread: spec.rebalance.spread.to_std().unwrap_or_default(),
            close_code: u16::try_from(lcs.spec.drain.close_code).ok(),
            reason: Some(format!("rebalancing: round {}", round.round)),
            keep_moved_for: Some(crate::rebalance::KEEP_MOVED_FOR),
        };
        async move {
            let Some((addr, _)) = observation.admin.get(pod) else {
                warn!(pod = %pod, "cannot rebalance a pod without an IP");
                return;
            };
            let addr = addr.to_string();
            let call = longconn_drain_api::start_rebalance(&addr, token, &request);
            match tokio::time::timeout(gateways::TIMEOUT * 2, call).await {
                Ok(Ok(report)) => {
                    info!(pod = %pod, asked = request.sessions, selected = report.selected, kept_moved = report.kept_moved, round = round.round, "rebalance started");
                }
                Ok(Err(e)) => warn!(pod = %pod, error = %e, "rebalance request failed"),
                Err(_) => warn!(pod = %pod, "rebalance request timed out"),
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// Sets each pod's `longconn.dev/accepting` label as the plan says (the client Service selects
/// only `"true"`), with the time of the change beside it.
async fn route(ctx: &Context, ns: &str, plan: &Plan, now: Timestamp) -> Result<(), Error> {
    for (pod, accepting) in &plan.routing {
        let patch = json!({"metadata": {
            "labels": {crate::labels::ACCEPTING: accepting.to_string()},
            "annotations": {crate::labels::ROUTING_CHANGED_AT: now.to_string()},
        }});
        if patch_pod(ctx, ns, pod, &Patch::Merge(patch)).await? {
            info!(pod = %format!("{ns}/{pod}"), accepting, "routing changed");
        }
    }
    Ok(())
}

/// Gives drained pods the lowest deletion cost, so that shrinking their ReplicaSet removes
/// exactly them; a pod whose accounting is recorded loses its drain-report finalizer in the
/// same patch (a strategic merge patch removes the finalizer by value, wherever it is).
async fn mark_for_removal(ctx: &Context, ns: &str, plan: &Plan) -> Result<(), Error> {
    let cost = json!({crate::rollout::DELETION_COST: LOWEST_COST.to_string()});
    for pod in &plan.lowest_cost {
        let released = plan.release.contains(pod);
        let patch = if released {
            json!({"metadata": {
                "annotations": cost,
                "$deleteFromPrimitiveList/finalizers": [desired::DRAIN_REPORT_FINALIZER],
            }})
        } else {
            json!({"metadata": {"annotations": cost}})
        };
        if patch_pod(ctx, ns, pod, &Patch::Strategic(patch)).await? && released {
            info!(pod = %format!("{ns}/{pod}"), "released: its accounting is recorded");
        }
    }
    Ok(())
}

/// Patches the metadata of a pod; false when the pod is gone.
async fn patch_pod(
    ctx: &Context,
    ns: &str,
    pod: &str,
    patch: &Patch<Value>,
) -> Result<bool, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.patch(pod, &PatchParams::default(), patch).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(Error::PatchPod {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
            source,
        }),
    }
}

/// Takes the drain-report finalizer off a pod whose accounting is recorded (`at`: its place in
/// the pod's finalizers, checked by the patch itself), so the pod can go.
pub async fn release(ctx: &Context, ns: &str, pod: &str, at: usize) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let path = json_patch::jsonptr::PointerBuf::from_tokens(["metadata", "finalizers"])
        .with_trailing_token(at);
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: path.clone(),
            value: desired::DRAIN_REPORT_FINALIZER.into(),
        }),
        json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path }),
    ]);
    match api
        .patch(pod, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            info!(pod = %format!("{ns}/{pod}"), "released: its accounting is recorded");
            Ok(())
        }
        // Gone already, or the finalizers changed under us: the next look decides again.
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => Ok(()),
        Err(source) => Err(Error::PatchPod {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
            source,
        }),
    }
}

/// Sets the replicas of the Deployments of revisions other than the update revision. They keep
/// the template they were created with; only their size changes, with a merge patch.
async fn scale(
    ctx: &Context,
    lcs: &ObjectRef<LongConnService>,
    ns: &str,
    observation: &Observation,
    scale: &[(String, i32)],
) -> Result<(), Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &Kind::Deployment.api_resource());
    for (name, replicas) in scale {
        let seen = observation
            .owned
            .find(Kind::Deployment, name)
            .and_then(|d| d.metadata.resource_version.as_deref());
        let patch = json!({"spec": {"replicas": replicas}});
        let written = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Scale {
                namespace: ns.to_owned(),
                name: name.clone(),
                source,
            })?;
        ctx.expectations.wrote(
            lcs,
            (Some(Kind::Deployment), name),
            seen,
            written.metadata.resource_version.as_deref(),
            Instant::now(),
        );
        info!(deployment = %name, replicas, "scaled");
    }
    Ok(())
}

/// Sets `spec.replicas` as the session autoscaling decided, through the scale subresource (the
/// write path of `kubectl scale` and the HorizontalPodAutoscaler), on the condition that the
/// LongConnService is still at `version`, the one the decision was recorded on. Returns false
/// when it was not (someone else changed it since: the next reconcile decides again).
async fn scale_service(
    lcs: &LongConnService,
    ctx: &Context,
    version: Option<&str>,
    replicas: i32,
) -> Result<bool, Error> {
    let ns = lcs.namespace().unwrap_or_default();
    let name = lcs.name_any();
    let api: Api<LongConnService> = Api::namespaced(ctx.client.clone(), &ns);
    let mut patch = json!({"spec": {"replicas": replicas}});
    if let Some(version) = version {
        patch["metadata"] = json!({ "resourceVersion": version });
    }
    let written = match api
        .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {
            debug!(replicas, "the LongConnService changed since the decision");
            return Ok(false);
        }
        Err(source) => {
            return Err(Error::ScaleService {
                namespace: ns,
                name,
                replicas,
                source,
            });
        }
    };
    let key = ObjectRef::from_obj(lcs);
    ctx.expectations.wrote(
        &key,
        (None, &name),
        version,
        written.metadata.resource_version.as_deref(),
        Instant::now(),
    );
    let from = lcs.spec.replicas;
    let now = Timestamp::now();
    ctx.update_history(
        &key,
        lcs.spec
            .autoscaling
            .as_ref()
            .map(|spec| move |h: &mut History| h.scaled(now, from, replicas, spec)),
    );
    info!(from, replicas, "scaled");
    Ok(true)
}

/// Works out the serving certificate for the TLS mode, issuing self-signed material when
/// needed: the bundle to store (SelfSigned), the facts for status, when to look again (the next
/// renewal or step of a CA rotation), and an Event about what was issued.
fn certificate(
    lcs: &LongConnService,
    settings: &Settings,
    observation: &Observation,
) -> Result<Certificate, Error> {
    let name = lcs.name_any();
    let ns = lcs.namespace().unwrap_or_default();
    let owned = &observation.owned;
    let tls = &lcs.spec.tls;
    let without = |facts: CertFacts| Certificate {
        bundle: None,
        facts,
        renew_at: None,
        note: None,
        issued: 0,
    };
    match tls.mode {
        TlsMode::Disabled => Ok(without(CertFacts::Disabled)),
        TlsMode::SelfSigned => {
            let stored = certs::Stored::read(
                |key| owned.secret_value(&names::ca(&name), key),
                |key| owned.secret_value(&names::serving_cert(&name), key),
            );
            let dns_names = desired::certificate_dns_names(lcs, settings);
            let validity = tls
                .validity
                .to_std()
                .unwrap_or(Duration::from_secs(90 * 86_400));
            let ensured = certs::ensure(&stored, &name, &dns_names, validity, observation.now)
                .map_err(|source| Error::Certificate {
                    namespace: ns.clone(),
                    name: name.clone(),
                    source,
                })?;
            let note = ensured.describe().map(|message| Note {
                warning: false,
                reason: if stored.is_empty() {
                    "CertificateIssued"
                } else {
                    "CertificateRenewed"
                },
                message,
            });
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
            Ok(Certificate {
                issued: ensured.issued(),
                renew_at: Some(ensured.next),
                bundle: Some(ensured.bundle),
                facts,
                note,
            })
        }
        TlsMode::Secret => {
            let secret_name = tls.secret_name.clone().unwrap_or_default();
            Ok(without(user_secret(
                &ns,
                &secret_name,
                &observation.user_secret,
            )))
        }
        TlsMode::CertManager => {
            if !observation.apis.cert_manager {
                let message = "tls.mode is CertManager but the cluster does not serve cert-manager.io/v1 Certificate: install cert-manager or choose another tls.mode".to_owned();
                return Ok(without(CertFacts::NotReady {
                    reason: "CertManagerMissing",
                    message,
                }));
            }
            let cert = owned.find(Kind::Certificate, &names::serving_cert(&name));
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
            Ok(without(facts))
        }
    }
}

/// Checks a user-provided TLS Secret (mode Secret).
fn user_secret(ns: &str, secret_name: &str, secret: &UserSecret) -> CertFacts {
    let secret = match secret {
        UserSecret::Found(secret) => secret,
        UserSecret::Missing | UserSecret::NotUsed => {
            return CertFacts::NotReady {
                reason: "SecretNotFound",
                message: format!(
                    "tls.secretName {secret_name} does not exist in namespace {ns}: create it (type kubernetes.io/tls) or choose another tls.mode"
                ),
            };
        }
    };
    let data = secret.data.clone().unwrap_or_default();
    let missing: Vec<&str> = ["tls.crt", "tls.key"]
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return CertFacts::NotReady {
            reason: "SecretInvalid",
            message: format!("Secret {secret_name} lacks {}", missing.join(" and ")),
        };
    }
    let pem = String::from_utf8_lossy(&data["tls.crt"].0).into_owned();
    let Some(inspected) = certs::inspect(&pem) else {
        return CertFacts::NotReady {
            reason: "SecretInvalid",
            message: format!("tls.crt in Secret {secret_name} is not a PEM certificate"),
        };
    };
    CertFacts::Ready {
        secret: secret_name.to_owned(),
        lifetime: Some(inspected.lifetime),
        reason: "SecretValid",
        message: format!(
            "Secret {secret_name} holds a certificate valid until {}",
            inspected.lifetime.not_after
        ),
    }
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

/// Applies one manifest unless it is already satisfied. An object the cache does not hold is
/// applied without forcing: if someone else's object of that name exists with other values,
/// the API server answers with a conflict and the object is left alone. A manifest that
/// cannot be applied is reported as a problem (Degraded condition) rather than failing the
/// whole reconcile.
async fn apply(
    ctx: &Context,
    lcs: &ObjectRef<LongConnService>,
    ns: &str,
    uid: &str,
    observation: &Observation,
    manifest: &Manifest,
) -> Applied {
    let kind = manifest.kind;
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
    let existing = observation.owned.find(kind, &manifest.name);
    if let Some(existing) = existing
        && !owned_by(existing, uid)
    {
        return Applied::Refused(conflict(kind, &manifest.name));
    }
    let seen = existing.and_then(|e| e.metadata.resource_version.as_deref());
    let differs = match existing {
        Some(existing) => {
            let observed = serde_json::to_value(existing).unwrap_or(Value::Null);
            match compare::first_difference(&manifest.object, &observed) {
                None => return Applied::Unchanged,
                Some(path) => Some(path),
            }
        }
        None => None,
    };
    let params = PatchParams::apply(MANAGER);
    let params = if existing.is_some() {
        params.force()
    } else {
        params
    };
    match api
        .patch(&manifest.name, &params, &Patch::Apply(&manifest.object))
        .await
    {
        Ok(written) => {
            ctx.expectations.wrote(
                lcs,
                (Some(kind), &manifest.name),
                seen,
                written.metadata.resource_version.as_deref(),
                Instant::now(),
            );
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
        Err(kube::Error::Api(s)) if s.code == 409 && existing.is_none() => {
            warn!(kind = ?kind, name = %manifest.name, "someone else's object has this name");
            Applied::Refused(conflict(kind, &manifest.name))
        }
        Err(e) => {
            warn!(kind = ?kind, name = %manifest.name, error = %e, "apply refused");
            let message = format!("applying {kind:?} {}: {}", manifest.name, api_message(&e));
            Applied::Refused(Problem {
                reason: "ApplyFailed",
                message,
            })
        }
    }
}

fn conflict(kind: Kind, name: &str) -> Problem {
    Problem {
        reason: "OwnershipConflict",
        message: format!(
            "{kind:?} {name} already exists and is not owned by this LongConnService; rename or delete it"
        ),
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// What happened to an owned object, for [`announced_by_rollout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Created,
    Deleted,
}

/// Whether `change` to `name`, of `kind`, is told by the rollout's own Events: the Deployment
/// and ControllerRevision of a revision other than the current one are created when it is
/// rolled out (`RolloutStarted` names the revision), and such a Deployment
/// is deleted once its last pod is drained and gone (`RolloutComplete`, `RolledBack`). The
/// first revision's objects, the current revision's made again after someone deleted them, and
/// the ControllerRevisions the history prunes have an Event of their own.
fn announced_by_rollout(lcs: &LongConnService, kind: Kind, name: &str, change: Change) -> bool {
    let lcs_name = lcs.name_any();
    let current = lcs
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref());
    current.is_some_and(|rev| match kind {
        Kind::Deployment => name != names::deployment(&lcs_name, rev),
        Kind::ControllerRevision => {
            change == Change::Created && name != names::controller_revision(&lcs_name, rev)
        }
        _ => false,
    })
}

/// Deletes owned objects no longer desired (a Secret of a TLS mode no longer used, the
/// Deployment of a revision with no pod left, ...).
async fn delete_orphans(
    lcs: &LongConnService,
    ctx: &Context,
    ns: &str,
    orphans: &[(Kind, String)],
) -> Result<(), Error> {
    for (kind, name) in orphans {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(source) => {
                return Err(Error::Delete {
                    kind: *kind,
                    namespace: ns.to_owned(),
                    name: name.clone(),
                    source,
                });
            }
        }
        ctx.metrics
            .objects_deleted
            .get_or_create(&KindLabels::of(*kind))
            .inc();
        info!(kind = ?kind, name = %name, "deleted, no longer desired");
        if announced_by_rollout(lcs, *kind, name, Change::Deleted) {
            continue;
        }
        ctx.event(
            lcs,
            EventType::Normal,
            "Deleted",
            format!("deleted {kind:?} {name}: no longer desired"),
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API server's answer to an Event created in a namespace being deleted.
    const TERMINATING: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message":"events.events.k8s.io \"chat.1\" is forbidden: unable to create new content in namespace demo because it is being terminated",
        "reason":"Forbidden","details":{"name":"chat.1","group":"events.k8s.io","kind":"events",
        "causes":[{"reason":"NamespaceTerminating","message":"namespace demo is being terminated","field":"metadata.namespace"}]},
        "code":403}"#;

    fn api_error(json: &str) -> kube::Error {
        kube::Error::Api(Box::new(serde_json::from_str(json).expect("a Status")))
    }

    #[test]
    fn a_namespace_being_deleted_is_told_from_other_refusals() {
        assert!(namespace_terminating(&api_error(TERMINATING)));
        let forbidden = TERMINATING.replace("NamespaceTerminating", "FieldValueForbidden");
        assert!(!namespace_terminating(&api_error(&forbidden)));
        let not_found = TERMINATING.replace("\"code\":403", "\"code\":404");
        assert!(!namespace_terminating(&api_error(&not_found)));
    }

    #[test]
    fn a_revisions_objects_have_events_of_their_own_only_outside_a_rollout() {
        let first = LongConnService::test().build();
        assert!(!announced_by_rollout(
            &first,
            Kind::Deployment,
            "chat-a",
            Change::Created
        ));
        let rolled_out = LongConnService::test()
            .status(crate::crd::LongConnServiceStatus {
                current_revision: Some("a".to_owned()),
                ..Default::default()
            })
            .build();
        for kind in [Kind::Deployment, Kind::ControllerRevision] {
            assert!(
                announced_by_rollout(&rolled_out, kind, "chat-b", Change::Created),
                "{kind:?}"
            );
            // The current revision's, made again: drift is told.
            assert!(
                !announced_by_rollout(&rolled_out, kind, "chat-a", Change::Created),
                "{kind:?}"
            );
        }
        assert!(announced_by_rollout(
            &rolled_out,
            Kind::Deployment,
            "chat-b",
            Change::Deleted
        ));
        // A ControllerRevision the history prunes: no rollout tells it.
        assert!(!announced_by_rollout(
            &rolled_out,
            Kind::ControllerRevision,
            "chat-b",
            Change::Deleted
        ));
        assert!(!announced_by_rollout(
            &rolled_out,
            Kind::Secret,
            "chat-b",
            Change::Created
        ));
    }
}
