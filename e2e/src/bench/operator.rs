//! `longconn-e2e bench-operator`: what the operator costs the API server, beside an anchor
//! measured in the same run, on the local control plane without nodes (every pod stays Pending:
//! the figures are the control plane's and the operator's, not the kubelets').
//!
//! 1. **Anchor**: `count` plain Deployments in `bench-anchor`, each the Deployment the operator
//!    would make for the LongConnService of phase 3 with the same index (`desired()`, its owner
//!    reference removed). The creates are timed, then the time until every Deployment has
//!    converged: `status.observedGeneration == metadata.generation` and `status.replicas ==
//!    spec.replicas` (its ReplicaSet created the pod).
//! 2. **No operator**: the LongConnServices of phase 3, created the same way in `bench-bare`
//!    before any operator runs, followed by the same watches as phase 3's, timed after one
//!    untimed dry-run create (the API server prepares a custom resource's endpoint on its first
//!    writes; in phase 3 the operator's requests have done it): what the API server takes to
//!    admit them (their schema, defaults and CEL rules) apart from any work of the operator.
//!    Both namespaces are then deleted, so the operator starts on a cluster as empty as the
//!    anchor had.
//! 3. **longconn**: the operator runs as a host process (`longconn-operator run`, leader election
//!    on, as deployed); `count` LongConnServices in `bench-longconn`, created the same way. One
//!    has converged when its `status.observedGeneration == metadata.generation` and its
//!    `status.replicas == spec.replicas` (the operator has seen the pod its Deployment's
//!    ReplicaSet created), and its Deployment has converged as in 1.
//! 4. The operator's requests to the API server (its `longconn_operator_api_requests_total`,
//!    scraped from `/metrics`) from just before the first create until the last LongConnService
//!    converged, then over an idle period, during which a watch on the leader Lease counts its
//!    renewals.
//! 5. The operator's peak (`VmHWM`) and settled (`VmRSS` after the idle period) resident memory.
//!
//! Creates run `concurrency` at a time (1: one after the other, as `kubectl create -f` of a
//! multi-document file), the same in every phase. Convergence is followed with watches, so its
//! time is when the last change arrived, not a poll's. Every wait is bounded; an API error, a
//! convergence timeout or the operator exiting fails the run, and the cluster is stopped either
//! way.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use longconn_operator::crd::{LongConnService, RolloutSpec};
use longconn_operator::desired::{self, Observed, ServedApis, ServiceRouting, Settings};
use longconn_operator::kinds::Kind;
use longconn_operator::labels;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::report::{Counters, Measured, Memory, Phase, Report};
use crate::cluster::{Cluster, ClusterOptions};
use crate::process::{self, Spawned};
use crate::scenario::ScenarioError;
use crate::scenario::harness::{self, LEASE, OPERATOR_NAMESPACE};
use crate::scenario::service::ServiceSpec;
use crate::scenario::wait::{Check, wait_until};

/// The plain Deployments' namespace.
pub const ANCHOR_NAMESPACE: &str = "bench-anchor";
/// The LongConnServices' namespace.
pub const LONGCONN_NAMESPACE: &str = "bench-longconn";
/// The namespace of the LongConnServices created with no operator running.
pub const BARE_NAMESPACE: &str = "bench-bare";
/// The operator's leader identity (its `POD_NAME`).
const IDENTITY: &str = "longconn-operator-bench";
/// The default idle period: the operator's resync period and 30 s. It starts once the last
/// reconcile is over, so every service's resync (due at most that period after its last
/// reconcile) falls in it, and a write a resync makes is counted.
pub const IDLE: Duration = longconn_operator::plan::RESYNC.saturating_add(Duration::from_secs(30));
/// How long the anchor's namespace may take to go.
const NAMESPACE_GONE: Duration = Duration::from_secs(600);
/// How long the operator may take to lead and finish its start-up requests.
const OPERATOR_START: Duration = Duration::from_secs(60);
/// The operator's start-up is over once its requests stop for this long.
const STARTUP_QUIET: Duration = Duration::from_secs(1);
/// The operator has stopped reacting to the creates once no reconcile ran for this long.
const RECONCILES_QUIET: Duration = Duration::from_secs(5);
/// How long after convergence the operator may keep reconciling before the idle period starts
/// anyway.
const QUIET_LIMIT: Duration = Duration::from_secs(300);
/// How often a phase says how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How long one scrape of `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest `/metrics` answer read (it has a gauge per LongConnService and rollout phase).
const SCRAPE_LIMIT: u64 = 64 << 20;
/// How long the operator may take to exit after SIGTERM.
const OPERATOR_GRACE: Duration = Duration::from_secs(10);

/// How the benchmark runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Objects of each kind.
    pub count: usize,
    /// Creates in flight at once, in every phase.
    pub concurrency: usize,
    /// How long the operator is watched doing nothing after the last service converged.
    pub idle: Duration,
    /// How long each phase may take to converge, from its first create.
    pub converge_timeout: Duration,
    /// The folder `make tools` built the control-plane binaries into.
    pub tools_dir: PathBuf,
    /// The `longconn-operator` binary.
    pub operator_bin: PathBuf,
    /// The cluster's folder and the operator's log (`operator.log`).
    pub work_dir: PathBuf,
}

impl Options {
    /// 1000 objects of each kind, created one at a time, the idle period [`IDLE`], 15 minutes
    /// for each phase to converge; the tools of `$LONGCONN_E2E_TOOLS_DIR` or
    /// `<repository>/.tools`.
    pub fn new(work_dir: PathBuf, operator_bin: PathBuf) -> Self {
        Self {
            count: 1000,
            concurrency: 1,
            idle: IDLE,
            converge_timeout: Duration::from_secs(15 * 60),
            tools_dir: crate::tools::default_tools_dir(),
            operator_bin,
            work_dir,
        }
    }
}

/// Starts the control plane (no nodes), measures both phases and the idle period, stops
/// everything, and reports.
pub async fn run(options: &Options) -> Result<Report, ScenarioError> {
    if options.count == 0 || options.concurrency == 0 {
        return Err(ScenarioError::Setup(
            "count and concurrency must be at least 1".into(),
        ));
    }
    if !options.operator_bin.is_file() {
        return Err(ScenarioError::Setup(format!(
            "{} missing: build it with `cargo build -p longconn-operator`",
            options.operator_bin.display()
        )));
    }
    std::fs::create_dir_all(&options.work_dir)
        .map_err(crate::Error::io("create", &options.work_dir))?;
    tracing::info!(work_dir = %options.work_dir.display(), "starting the control plane (no nodes)");
    let cluster = Cluster::up(ClusterOptions {
        dir: options.work_dir.join("cluster"),
        tools_dir: options.tools_dir.clone(),
        nodes: 0,
        ..ClusterOptions::default()
    })
    .await?;
    let measured = measure(options, &cluster).await;
    let stopped = cluster.down().await;
    let measured = measured?;
    stopped?;
    Ok(Report::new(&measured))
}

/// Both phases and the idle period on a running cluster.
async fn measure(options: &Options, cluster: &Cluster) -> Result<Measured, ScenarioError> {
    let client = harness::bounded_client(&cluster.kubeconfig_path()).await?;
    // Watches wait longer than a bounded request may.
    let watch_client = cluster.client();
    install_crd(&client).await?;
    for namespace in [
        ANCHOR_NAMESPACE,
        BARE_NAMESPACE,
        LONGCONN_NAMESPACE,
        OPERATOR_NAMESPACE,
    ] {
        harness::create_namespace(&client, namespace).await?;
    }
    let count = options.count;

    tracing::info!(count, "anchor: creating plain Deployments");
    let deployments = (0..count)
        .map(anchor_deployment)
        .collect::<Result<Vec<_>, _>>()?;
    let clients = (&client, &watch_client);
    let anchor = phase(clients, ANCHOR_NAMESPACE, deployments, options, None).await?;
    tracing::info!(?anchor, "anchor converged");

    tracing::info!(count, "no operator: creating LongConnServices");
    let services = (0..count)
        .map(|index| service(BARE_NAMESPACE, index))
        .collect::<Result<Vec<_>, _>>()?;
    // The API server builds what serves a custom resource on its first requests: a create run
    // dry first, so that this is not timed (in phase 3 the operator's requests have done it).
    if let Some(first) = services.first() {
        Api::<LongConnService>::namespaced(client.clone(), BARE_NAMESPACE)
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                first,
            )
            .await
            .map_err(ScenarioError::kube("create a LongConnService, dry run"))?;
    }
    // The same watches follow them as follow phase 3's, so that the API server serves the same
    // watchers in both; none of these converges, and the watches end with the creates.
    let (following, bare_creates) =
        followed_creates(clients, BARE_NAMESPACE, services, options).await?;
    following.abort();
    tracing::info!(creates = ?bare_creates, "created with no operator; deleting both namespaces");
    for namespace in [ANCHOR_NAMESPACE, BARE_NAMESPACE] {
        harness::delete_namespace(&client, namespace, NAMESPACE_GONE).await?;
    }

    let operator = OperatorProcess::start(
        &options.operator_bin,
        &cluster.kubeconfig_path(),
        &options.work_dir.join("operator.log"),
    )?;
    operator.wait_leading(&client).await?;
    let (before, _) = operator
        .wait_still(
            "the operator's start-up requests to end",
            Counters::total,
            STARTUP_QUIET,
            OPERATOR_START,
        )
        .await?;
    tracing::info!(count, "longconn: creating LongConnServices");
    let services = (0..count)
        .map(|index| service(LONGCONN_NAMESPACE, index))
        .collect::<Result<Vec<_>, _>>()?;
    let longconn = phase(
        clients,
        LONGCONN_NAMESPACE,
        services,
        options,
        Some(&operator),
    )
    .await?;
    let converged_at = Instant::now();
    tracing::info!(
        ?longconn,
        "longconn converged; waiting for the operator to stop reconciling"
    );
    let (quiet, quiet_after) = match operator
        .wait_still(
            "the operator to stop reconciling",
            |counters| counters.reconciles,
            RECONCILES_QUIET,
            QUIET_LIMIT,
        )
        .await
    {
        Ok((counters, since)) => (
            counters,
            Some(since.saturating_duration_since(converged_at)),
        ),
        Err(ScenarioError::Timeout { last, .. }) => {
            tracing::warn!(%last, limit = ?QUIET_LIMIT, "the operator kept reconciling; idle period anyway");
            (operator.counters().await?, None)
        }
        Err(err) => return Err(err),
    };
    tracing::info!(?quiet_after, idle = ?options.idle, "idle period");

    let renewals = LeaseWrites::watch(watch_client).await?;
    let idle_start = operator.counters().await?;
    operator.idle(options.idle).await?;
    let idle_end = operator.counters().await?;
    let idle_lease_renewals = renewals.stop();
    let memory = operator.memory()?;
    operator.stop()?;
    Ok(Measured {
        count,
        concurrency: options.concurrency,
        idle: options.idle,
        anchor,
        bare_creates,
        longconn,
        converging: quiet.since(&before),
        quiet_after,
        idle_counters: idle_end.since(&idle_start),
        idle_lease_renewals,
        memory,
    })
}

/// Creates the LongConnService CRD and waits until it is Established.
async fn install_crd(client: &kube::Client) -> Result<(), ScenarioError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = longconn_operator::crd::crd();
    let name = crd.name_any();
    crds.create(&PostParams::default(), &crd)
        .await
        .map_err(ScenarioError::kube(format!("create CRD {name}")))?;
    wait_until(
        &format!("CRD {name} Established"),
        Duration::from_secs(60),
        || async {
            let crd = crds
                .get(&name)
                .await
                .map_err(ScenarioError::kube(format!("get CRD {name}")))?;
            let established = crd
                .status
                .iter()
                .flat_map(|status| status.conditions.iter().flatten())
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(if established {
                Check::Done(())
            } else {
                Check::NotYet("not Established".into())
            })
        },
    )
    .await
}

/// LongConnService number `index` of `namespace`: the scenarios' service (the echo app behind
/// the gateway, self-signed TLS) with one replica and the default progress deadline (15
/// minutes): no pod ever runs here, and the scenarios' 3 minutes would end every rollout, and
/// write every status, inside the periods measured.
fn service(namespace: &str, index: usize) -> Result<LongConnService, ScenarioError> {
    let spec = ServiceSpec {
        name: format!("svc-{index:04}"),
        replicas: 1,
        progress_deadline: RolloutSpec::default().progress_deadline.to_string(),
        ..ServiceSpec::new(namespace)
    };
    serde_json::from_value(spec.manifest())
        .map_err(|e| ScenarioError::Setup(format!("LongConnService {}: {e}", spec.name)))
}

/// The Deployment the operator makes for LongConnService number `index`, in the anchor's
/// namespace, without its owner reference and without the pods' drain-report finalizer (which
/// only a running operator releases: a plain Deployment's pods must go on their own).
fn anchor_deployment(index: usize) -> Result<Deployment, ScenarioError> {
    let mut lcs = service(ANCHOR_NAMESPACE, index)?;
    lcs.metadata.uid = Some("anchor".into());
    let observed = Observed {
        update_replicas: Some(lcs.spec.replicas),
        admin_token: "anchor".into(),
        certificate: None,
        apis: ServedApis::default(),
        routing: ServiceRouting::default(),
    };
    let manifest = desired::desired(&lcs, &observed, &Settings::default())
        .into_iter()
        .find(|manifest| manifest.kind == Kind::Deployment)
        .ok_or_else(|| ScenarioError::Setup(format!("no Deployment for {}", lcs.name_any())))?;
    let mut deployment: Deployment = serde_json::from_value(manifest.object)
        .map_err(|e| ScenarioError::Setup(format!("Deployment {}: {e}", manifest.name)))?;
    deployment.metadata.owner_references = None;
    if let Some(template) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
    {
        template.finalizers = None;
    }
    Ok(deployment)
}

/// What the benchmark creates: Deployments and LongConnServices.
trait Object:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Object for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// The two clients of a phase: bounded requests, and unbounded watches.
type Clients<'a> = (&'a kube::Client, &'a kube::Client);

/// Creates `objects` in `namespace`, `options.concurrency` at a time, and follows them until each
/// has converged (see [`Convergence`]); checks meanwhile that the operator, if any, still runs.
async fn phase<K: Object>(
    clients: Clients<'_>,
    namespace: &str,
    objects: Vec<K>,
    options: &Options,
    operator: Option<&OperatorProcess>,
) -> Result<Phase, ScenarioError> {
    let started = Instant::now();
    let (mut following, creates) = followed_creates(clients, namespace, objects, options).await?;
    tracing::info!(namespace, creates = ?creates, "created; waiting for convergence");
    let converged = loop {
        tokio::select! {
            joined = &mut following => {
                break joined.map_err(|e| ScenarioError::Setup(format!("the watch task: {e}")))??;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(Err(err)) = operator.map(OperatorProcess::check_running) {
                    following.abort();
                    return Err(err);
                }
            }
        }
    };
    Ok(Phase {
        creates_seconds: creates.as_secs_f64(),
        converged_seconds: converged.duration_since(started).as_secs_f64(),
    })
}

/// Starts the watches that follow `objects` to convergence (see [`converged_at`]), then creates
/// them (see [`timed_creates`]); the watches' task, and how long the creates took.
async fn followed_creates<K: Object>(
    (client, watch_client): Clients<'_>,
    namespace: &str,
    objects: Vec<K>,
    options: &Options,
) -> Result<(Following, Duration), ScenarioError> {
    let services = K::kind(&()) == LongConnService::kind(&());
    let following = tokio::spawn(converged_at(
        watch_client.clone(),
        namespace.to_owned(),
        Convergence::new(objects.len(), services),
        options.converge_timeout,
    ));
    match timed_creates(client, namespace, objects, options).await {
        Ok(creates) => Ok((following, creates)),
        Err(err) => {
            following.abort();
            Err(err)
        }
    }
}

/// The task of [`converged_at`].
type Following = tokio::task::JoinHandle<Result<Instant, ScenarioError>>;

/// Creates `objects` in `namespace`, `options.concurrency` at a time, within
/// `options.converge_timeout`; how long that took.
async fn timed_creates<K: Object>(
    client: &kube::Client,
    namespace: &str,
    objects: Vec<K>,
    options: &Options,
) -> Result<Duration, ScenarioError> {
    let count = objects.len();
    let started = Instant::now();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    tokio::time::timeout(
        options.converge_timeout,
        create_all(&api, objects, options.concurrency),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ScenarioError::Timeout {
            what: format!("{count} creates in {namespace}"),
            after: options.converge_timeout,
            last: "still creating".into(),
        })
    })?;
    Ok(started.elapsed())
}

/// Creates every object, `concurrency` requests at a time; the first error ends it.
async fn create_all<K: Object>(
    api: &Api<K>,
    objects: Vec<K>,
    concurrency: usize,
) -> Result<(), ScenarioError> {
    futures::stream::iter(objects)
        .map(|object| async move {
            api.create(&PostParams::default(), &object)
                .await
                .map(drop)
                .map_err(ScenarioError::kube(format!(
                    "create {} {}",
                    K::kind(&()),
                    object.name_any()
                )))
        })
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Follows the Deployments (and the LongConnServices, if `convergence` tracks them) of
/// `namespace` with watches until every one has converged, for at most `timeout`; when that
/// happened.
async fn converged_at(
    client: kube::Client,
    namespace: String,
    mut convergence: Convergence,
    timeout: Duration,
) -> Result<Instant, ScenarioError> {
    let deadline = Instant::now() + timeout;
    type Watched<K> = Box<Result<watcher::Event<K>, watcher::Error>>;
    enum Seen {
        Deployment(Watched<Deployment>),
        Service(Watched<LongConnService>),
    }
    let config = watcher::Config::default();
    let deployments = watcher(Api::namespaced(client.clone(), &namespace), config.clone())
        .default_backoff()
        .map(|event| Seen::Deployment(Box::new(event)));
    let mut seen = if convergence.services.is_some() {
        let services = watcher(Api::namespaced(client, &namespace), config)
            .default_backoff()
            .map(|event| Seen::Service(Box::new(event)));
        futures::stream::select(deployments, services).boxed()
    } else {
        deployments.boxed()
    };
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut last_error = String::from("none");
    loop {
        tokio::select! {
            next = seen.next() => match next {
                Some(Seen::Deployment(event)) => match *event {
                    Ok(event) => on_event(event, |d, present| convergence.deployment(d, present)),
                    Err(err) => last_error = watch_failed(&namespace, &err),
                },
                Some(Seen::Service(event)) => match *event {
                    Ok(event) => on_event(event, |s, present| convergence.service(s, present)),
                    Err(err) => last_error = watch_failed(&namespace, &err),
                },
                None => {
                    return Err(ScenarioError::Setup(format!("the watches of {namespace} ended")));
                }
            },
            _ = progress.tick() => {
                tracing::info!(%namespace, "{}", convergence.describe());
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                return Err(ScenarioError::Timeout {
                    what: format!("every object in {namespace} to converge"),
                    after: timeout,
                    last: format!("{}; last watch error: {last_error}", convergence.describe()),
                });
            }
        }
        if convergence.done() {
            tracing::info!(%namespace, "{}", convergence.describe());
            return Ok(Instant::now());
        }
    }
}

/// Logs a failed watch request (the watcher retries with backoff); what failed.
fn watch_failed(namespace: &str, err: &watcher::Error) -> String {
    tracing::warn!(%namespace, %err, "watch failed; retrying");
    err.to_string()
}

/// Hands each object of a watch event to `seen`, with whether it (still) exists.
fn on_event<K>(event: watcher::Event<K>, mut seen: impl FnMut(&K, bool)) {
    match event {
        watcher::Event::Apply(object) | watcher::Event::InitApply(object) => seen(&object, true),
        watcher::Event::Delete(object) => seen(&object, false),
        watcher::Event::Init | watcher::Event::InitDone => {}
    }
}

/// Which objects of a phase have converged, by LongConnService name (a Deployment counts for the
/// service of its `longconn.dev/service` label, which the anchor's carry too).
#[derive(Debug)]
struct Convergence {
    count: usize,
    deployments: BTreeSet<String>,
    /// `None` in the anchor phase, where no LongConnService exists.
    services: Option<BTreeSet<String>>,
}

impl Convergence {
    fn new(count: usize, services: bool) -> Self {
        Self {
            count,
            deployments: BTreeSet::new(),
            services: services.then(BTreeSet::new),
        }
    }

    fn deployment(&mut self, deployment: &Deployment, present: bool) {
        let key = deployment
            .labels()
            .get(labels::SERVICE)
            .cloned()
            .unwrap_or_else(|| deployment.name_any());
        mark(
            &mut self.deployments,
            key,
            present && deployment_converged(deployment),
        );
    }

    fn service(&mut self, lcs: &LongConnService, present: bool) {
        if let Some(services) = self.services.as_mut() {
            mark(services, lcs.name_any(), present && service_converged(lcs));
        }
    }

    fn done(&self) -> bool {
        self.deployments.len() >= self.count
            && self
                .services
                .as_ref()
                .is_none_or(|services| services.len() >= self.count)
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{} of {} Deployments converged",
            self.deployments.len(),
            self.count
        );
        if let Some(services) = &self.services {
            text.push_str(&format!(
                ", {} of {} LongConnServices",
                services.len(),
                self.count
            ));
        }
        text
    }
}

fn mark(set: &mut BTreeSet<String>, key: String, converged: bool) {
    if converged {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

/// The Deployment controller has seen the current spec and its ReplicaSet has created every pod.
fn deployment_converged(deployment: &Deployment) -> bool {
    let generation = deployment.metadata.generation;
    let want = deployment.spec.as_ref().and_then(|spec| spec.replicas);
    let status = deployment.status.as_ref();
    generation.is_some()
        && status.and_then(|s| s.observed_generation) == generation
        && status.and_then(|s| s.replicas) == Some(want.unwrap_or(1))
}

/// The operator has written the status of the current spec and counted every pod in it.
fn service_converged(lcs: &LongConnService) -> bool {
    let generation = lcs.metadata.generation;
    lcs.status.as_ref().is_some_and(|status| {
        generation.is_some()
            && status.observed_generation == generation
            && status.replicas == lcs.spec.replicas
    })
}

/// `longconn-operator run` as a host process, stopped when dropped.
struct OperatorProcess {
    process: Mutex<Option<Spawned>>,
    metrics_port: u16,
}

impl OperatorProcess {
    /// Starts the operator as the cluster admin, its `/metrics` on a free loopback port, its
    /// output in `log`.
    fn start(binary: &Path, kubeconfig: &Path, log: &Path) -> Result<Self, ScenarioError> {
        let metrics_port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map_err(crate::Error::NoFreePort)?
            .port();
        let mut command = std::process::Command::new(binary);
        command
            .args([
                "run".to_owned(),
                "--log-format=text".to_owned(),
                format!("--operator-namespace={OPERATOR_NAMESPACE}"),
                format!("--metrics-listen=127.0.0.1:{metrics_port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", IDENTITY);
        let process = Spawned::start_command("longconn-operator", command, log)?;
        tracing::info!(pid = process.record.pid, log = %log.display(), "operator started");
        Ok(Self {
            process: Mutex::new(Some(process)),
            metrics_port,
        })
    }

    /// Fails when the operator has exited (with the end of its log).
    fn check_running(&self) -> Result<(), ScenarioError> {
        let mut process = self
            .process
            .lock()
            .map_err(|_| ScenarioError::Operator("its process handle is poisoned".into()))?;
        match process.as_mut() {
            Some(process) => process.check_running().map_err(ScenarioError::from),
            None => Err(ScenarioError::Operator("stopped".into())),
        }
    }

    fn pid(&self) -> Result<i32, ScenarioError> {
        self.process
            .lock()
            .ok()
            .and_then(|process| process.as_ref().map(|p| p.record.pid))
            .ok_or_else(|| ScenarioError::Operator("stopped".into()))
    }

    /// Waits until the operator holds the leader Lease.
    async fn wait_leading(&self, client: &kube::Client) -> Result<(), ScenarioError> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        wait_until("the operator to lead", OPERATOR_START, || async {
            self.check_running()?;
            let holder = leases
                .get_opt(LEASE)
                .await
                .map_err(ScenarioError::kube("get the leader Lease"))?
                .and_then(|lease| lease.spec?.holder_identity);
            Ok(if holder.as_deref() == Some(IDENTITY) {
                Check::Done(())
            } else {
                Check::NotYet(format!("Lease holder {holder:?}"))
            })
        })
        .await
    }

    /// Waits until `measure` of the operator's counters has not changed for `quiet` (at most
    /// `limit`); the counters then, and when they were first seen at that value.
    async fn wait_still(
        &self,
        what: &str,
        measure: fn(&Counters) -> u64,
        quiet: Duration,
        limit: Duration,
    ) -> Result<(Counters, Instant), ScenarioError> {
        let last = Mutex::new(None::<(u64, Instant)>);
        wait_until(what, limit, || async {
            self.check_running()?;
            let counters = self.counters().await?;
            let value = measure(&counters);
            let mut last = last
                .lock()
                .map_err(|_| ScenarioError::Operator("poisoned".into()))?;
            match *last {
                Some((seen, since)) if seen == value => Ok(if since.elapsed() >= quiet {
                    Check::Done((counters, since))
                } else {
                    Check::NotYet(format!("{value}, unchanged for {:?}", since.elapsed()))
                }),
                _ => {
                    *last = Some((value, Instant::now()));
                    Ok(Check::NotYet(format!("{value}, changing")))
                }
            }
        })
        .await
    }

    /// Reads the operator's counters from its `/metrics`.
    async fn counters(&self) -> Result<Counters, ScenarioError> {
        let scrape = crate::cluster::http_get_loopback(self.metrics_port, "/metrics", SCRAPE_LIMIT);
        match tokio::time::timeout(SCRAPE_TIMEOUT, scrape).await {
            Ok(Ok(text)) => Ok(Counters::parse(&text)),
            Ok(Err(err)) => Err(ScenarioError::Operator(format!("GET /metrics: {err}"))),
            Err(_) => Err(ScenarioError::Timeout {
                what: "the operator's /metrics".into(),
                after: SCRAPE_TIMEOUT,
                last: "no answer".into(),
            }),
        }
    }

    /// Lets `period` pass, checking every second that the operator still runs.
    async fn idle(&self, period: Duration) -> Result<(), ScenarioError> {
        let end = Instant::now() + period;
        while Instant::now() < end {
            tokio::time::sleep(
                end.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1)),
            )
            .await;
            self.check_running()?;
        }
        Ok(())
    }

    /// The operator's resident memory now, and the most it ever held.
    fn memory(&self) -> Result<Memory, ScenarioError> {
        let path = format!("/proc/{}/status", self.pid()?);
        let text = std::fs::read_to_string(&path).map_err(crate::Error::io("read", &path))?;
        Memory::parse_status(&text)
            .ok_or_else(|| ScenarioError::Operator(format!("no VmHWM or VmRSS in {path}")))
    }

    /// Stops the operator (SIGTERM, SIGKILL after the grace).
    fn stop(&self) -> Result<(), ScenarioError> {
        let process = self.process.lock().ok().and_then(|mut p| p.take());
        if let Some(process) = process {
            process::stop_all(&mut [process], OPERATOR_GRACE)?;
        }
        Ok(())
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::error!(%err, "stopping the operator failed");
        }
    }
}

/// Counts writes to the operator's leader Lease (its renewals) with a watch on it.
struct LeaseWrites {
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseWrites {
    /// Starts the watch and returns once its initial list is done: from then on every change of
    /// the Lease counts.
    async fn watch(client: kube::Client) -> Result<Self, ScenarioError> {
        let leases: Api<Lease> = Api::namespaced(client, OPERATOR_NAMESPACE);
        let config = watcher::Config::default().fields(&format!("metadata.name={LEASE}"));
        let writes = Arc::new(AtomicU64::new(0));
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let writes = writes.clone();
            async move {
                let mut listed_tx = Some(listed_tx);
                let mut events = watcher(leases, config).default_backoff().boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = listed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(watcher::Event::Apply(_)) => {
                            writes.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(err) => tracing::warn!(%err, "watch of the leader Lease failed"),
                    }
                }
            }
        });
        match tokio::time::timeout(OPERATOR_START, listed).await {
            Ok(Ok(())) => Ok(Self { writes, task }),
            _ => {
                task.abort();
                Err(ScenarioError::Timeout {
                    what: "the watch of the leader Lease to list it".into(),
                    after: OPERATOR_START,
                    last: "not listed".into(),
                })
            }
        }
    }

    /// Ends the watch; the writes it saw.
    fn stop(self) -> u64 {
        self.task.abort();
        self.writes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(service: &str, generation: i64, observed: i64, replicas: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-abc"), "generation": generation,
                         "labels": {labels::SERVICE: service}},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas},
        }))
        .expect("deployment")
    }

    fn lcs(name: &str, generation: i64, status: serde_json::Value) -> LongConnService {
        let mut lcs = service(LONGCONN_NAMESPACE, 0).expect("service");
        lcs.metadata.name = Some(name.into());
        lcs.metadata.generation = Some(generation);
        lcs.status = serde_json::from_value(status).expect("status");
        lcs
    }

    #[test]
    fn a_deployment_converges_when_its_replicaset_created_the_pod_of_its_generation() {
        assert!(deployment_converged(&deployment("a", 1, 1, 1)));
        assert!(!deployment_converged(&deployment("a", 2, 1, 1)));
        assert!(!deployment_converged(&deployment("a", 1, 1, 0)));
    }

    #[test]
    fn a_service_converges_when_its_status_counts_the_pod_of_its_generation() {
        assert!(service_converged(&lcs(
            "a",
            1,
            serde_json::json!({"observedGeneration": 1, "replicas": 1})
        )));
        assert!(!service_converged(&lcs(
            "a",
            2,
            serde_json::json!({"observedGeneration": 1, "replicas": 1})
        )));
        assert!(!service_converged(&lcs(
            "a",
            1,
            serde_json::json!({"observedGeneration": 1, "replicas": 0})
        )));
        assert!(!service_converged(&lcs("a", 1, serde_json::Value::Null)));
    }

    #[test]
    fn the_anchor_is_done_when_every_deployment_converged() {
        let mut convergence = Convergence::new(2, false);
        convergence.deployment(&deployment("a", 1, 1, 1), true);
        convergence.deployment(&deployment("b", 1, 1, 0), true);
        assert!(!convergence.done(), "{}", convergence.describe());
        convergence.deployment(&deployment("b", 1, 1, 1), true);
        assert!(convergence.done());
        convergence.deployment(&deployment("b", 1, 1, 1), false);
        assert!(!convergence.done(), "a deleted one no longer counts");
    }

    #[test]
    fn longconn_is_done_when_every_service_and_its_deployment_converged() {
        let mut convergence = Convergence::new(1, true);
        convergence.deployment(&deployment("a", 1, 1, 1), true);
        assert!(!convergence.done());
        assert_eq!(
            convergence.describe(),
            "1 of 1 Deployments converged, 0 of 1 LongConnServices"
        );
        let status = serde_json::json!({"observedGeneration": 1, "replicas": 1});
        convergence.service(&lcs("a", 1, status), true);
        assert!(convergence.done());
    }

    #[test]
    fn the_anchor_deployment_is_the_operators_for_the_same_service_without_owner() {
        let deployment = anchor_deployment(7).expect("anchor");
        assert_eq!(deployment.namespace().as_deref(), Some(ANCHOR_NAMESPACE));
        assert!(deployment.name_any().starts_with("svc-0007-"));
        assert_eq!(
            deployment.labels().get(labels::SERVICE).map(String::as_str),
            Some("svc-0007")
        );
        assert!(deployment.metadata.owner_references.is_none());
        let spec = deployment.spec.expect("spec");
        assert!(
            spec.template
                .metadata
                .as_ref()
                .is_none_or(|m| m.finalizers.is_none()),
            "no operator runs to release the anchor's pods"
        );
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.expect("pod spec");
        let init: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            init.contains(&desired::GATEWAY_CONTAINER),
            "the gateway sidecar: {init:?}"
        );
    }
}
