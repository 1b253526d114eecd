//! `longconn-operator`: `crd` prints the CRD, `render` shows offline what a LongConnService
//! becomes, `run` runs the controller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, controller, predicates, watcher};
use kube::{Api, Client, ResourceExt};
use longconn_operator::crd::{LongConnService, crd_yaml};
use longconn_operator::desired::{self, Settings};
use longconn_operator::metrics::{Method, MethodLabels, Metrics};
use longconn_operator::reconcile::{self, Context};
use longconn_operator::server::{self, Health};
use longconn_operator::{cache, gateways, leader};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

#[derive(Parser)]
#[command(
    name = "longconn-operator",
    version,
    about = "The longconn Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the LongConnService CustomResourceDefinition as YAML.
    Crd,
    /// Print the RBAC rules the operator needs, as YAML (a ClusterRole's `rules`, then the
    /// Lease rule for a Role in the operator's namespace).
    Rbac,
    /// Print the objects a LongConnService manifest becomes, without a cluster.
    Render {
        /// A LongConnService manifest (YAML).
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Run the controller against the cluster of the kubeconfig (or in-cluster config).
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct SettingsArgs {
    /// Gateway image for LongConnServices that do not set spec.gateway.image.
    #[arg(long, env = "LONGCONN_OPERATOR_GATEWAY_IMAGE", default_value_t = Settings::default().gateway_image)]
    gateway_image: String,
    /// Namespace of the operator's pods (admitted to the gateways' admin port).
    #[arg(
        long,
        env = "LONGCONN_OPERATOR_NAMESPACE",
        default_value = "longconn-system"
    )]
    operator_namespace: String,
    /// Labels of the operator's pods, as `k=v,k=v` (admitted to the gateways' admin port).
    #[arg(long, env = "LONGCONN_OPERATOR_POD_LABELS", default_value = "app.kubernetes.io/name=longconn-operator", value_parser = parse_labels)]
    operator_pod_labels: BTreeMap<String, String>,
    /// Namespace of the Prometheus that scrapes the gateways (admitted to the admin port).
    #[arg(long, env = "LONGCONN_OPERATOR_METRICS_NAMESPACE")]
    metrics_namespace: Option<String>,
    /// The cluster's DNS domain.
    #[arg(
        long,
        env = "LONGCONN_OPERATOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
}

impl SettingsArgs {
    fn settings(&self) -> Settings {
        Settings {
            gateway_image: self.gateway_image.clone(),
            operator_namespace: self.operator_namespace.clone(),
            operator_pod_labels: self.operator_pod_labels.clone(),
            metrics_namespace: self.metrics_namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Watch only this namespace (needs only a Role there); default: every namespace.
    #[arg(long, env = "LONGCONN_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "LONGCONN_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Run only while holding the leader Lease, so several replicas can run safely.
    #[arg(long, env = "LONGCONN_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease (in the operator's namespace).
    #[arg(
        long,
        env = "LONGCONN_OPERATOR_LEASE_NAME",
        default_value = "longconn-operator"
    )]
    lease_name: String,
    /// Requests per second the operator sends to the API server at most (renewals of the
    /// leader Lease aside): a thousand LongConnServices applied at once are realised at this
    /// pace instead of crowding out everyone else's requests (the trade-off, measured: the
    /// operator's README, "The pace").
    #[arg(long, env = "LONGCONN_OPERATOR_KUBE_API_QPS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    kube_api_qps: u64,
    /// How often to ask whether the ServiceMonitor, PrometheusRule and cert-manager APIs are
    /// served (their objects are made, and watched, only once they are).
    #[arg(long, env = "LONGCONN_OPERATOR_DISCOVERY_REFRESH", default_value = "60s", value_parser = humantime::parse_duration)]
    discovery_refresh: Duration,
    /// Log format.
    #[arg(long, env = "LONGCONN_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("{pair:?} is not key=value"))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => emit(&crd_yaml()?),
        Command::Rbac => {
            use longconn_operator::rbac;
            let rules = serde_json::json!({
                "clusterRules": rbac::policy_rules(rbac::RULES),
                "leaseRules": rbac::policy_rules(&[rbac::LEASE_RULE]),
            });
            emit(&serde_yaml::to_string(&rules)?)
        }
        Command::Render { file, settings } => render(&file, &settings.settings()),
        Command::Run(args) => run(*args).await,
    }
}

/// Prints the manifests a LongConnService becomes, with placeholders for generated secrets.
fn render(file: &PathBuf, settings: &Settings) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut lcs: LongConnService = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing {} as a LongConnService", file.display()))?;
    lcs.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    lcs.metadata.uid.get_or_insert_with(|| "<uid>".to_owned());
    let mut text = String::new();
    for manifest in desired::rendered(&lcs, settings) {
        text.push_str("---\n");
        text.push_str(serde_yaml::to_string(&manifest.object)?.trim_end());
        text.push('\n');
    }
    emit(&text)
}

/// Writes `text` to stdout. A reader that stops early (`| head`) is not an error: the rest is
/// not wanted.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only on a terminal (as the gateway's logs): a container's log, read with `kubectl
    // logs` or kept in a file, gets the plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// How long the API server may take to answer a request (its response head; a watch answers at
/// once and then streams). A connection that went dead silently would otherwise hold the
/// request, and the reconcile waiting on it, forever: the client sets no read timeout, since
/// watches stay open.
const API_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Reconciles run at once. The API requests they send are paced (`--kube-api-qps`): with a
/// thousand LongConnServices applied at once and every one of them reconciling, each request
/// would wait behind all the others' and every service would be half done for minutes; a few
/// at a time, each is finished in a moment, and its Deployment reaches the Deployment
/// controller at once.
const RECONCILES_AT_ONCE: u16 = 16;

/// A client for the configured cluster that counts every request it sends in `requests`
/// (by HTTP method), gives up on one not answered within
/// [`API_ANSWER_TIMEOUT`] and, given `per_second`, sends at most that many requests in any
/// second (the others wait their turn, untimed).
fn counted_client(
    config: kube::Config,
    requests: Family<MethodLabels, Counter>,
    per_second: Option<u64>,
) -> Result<Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(
        move |request: http::Request<kube::client::Body>| {
            requests
                .get_or_create(&MethodLabels {
                    method: Method::of(request.method()),
                })
                .inc();
            debug!(target: "longconn_operator::api", method = %request.method(), uri = %request.uri(), "request");
            request
        },
    );
    let limit = per_second.map(|n| tower::limit::RateLimitLayer::new(n, Duration::from_secs(1)));
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::util::option_layer(limit))
        .with_layer(&tower::timeout::TimeoutLayer::new(API_ANSWER_TIMEOUT))
        .with_layer(&count)
        .build())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let settings = args.settings.settings();
    // The LongConnServices the controller reconciles from, filled by the main watch below once
    // this replica leads; the metrics read their recorded conditions from it.
    let (services, services_writer) = reflector::store::<LongConnService>();
    let mut metrics = Metrics::default();
    metrics.watch_services(services.clone());
    let metrics = Arc::new(metrics);
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API's configuration")?;
    let client = counted_client(
        config.clone(),
        metrics.api_requests.clone(),
        Some(args.kube_api_qps),
    )
    .context("connecting to the Kubernetes API")?;
    // The leader Lease is renewed past the rate limit: a queue of reconciles' requests must
    // never delay a renewal until the Lease is lost. Its requests are counted apart: they
    // come at a fixed pace, whatever the operator is doing.
    let lease_client = counted_client(config, metrics.lease_requests.clone(), None)
        .context("connecting to the Kubernetes API")?;
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", args.metrics_listen))?;
    let server = tokio::spawn(server::serve(listener, health.clone(), stop_rx.clone()));

    let ns = args.watch_namespace.as_deref();
    let lcs_api: Api<LongConnService> = scoped(&client, ns);
    wait_for_crd(&lcs_api).await;
    health.ready.store(true, Ordering::Relaxed);

    // Leader election (see `leader`): a replica that loses the Lease, or cannot renew it in
    // time, exits (below) rather than trying to stop reconciles mid-flight; its restart
    // campaigns again.
    let mut leadership = None;
    if args.leader_elect {
        let (namespace, identity) = (&settings.operator_namespace, leader::identity());
        tokio::select! {
            held = leader::Leadership::acquire(&lease_client, &args.lease_name, namespace, &identity) => leadership = Some(held?),
            _ = shutdown_signal() => return shutdown(stop_tx, server).await,
        }
    }

    let (caches, writers) = cache::new();
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics, caches));
    // Which optional APIs are served is asked on a schedule of its own; a changed answer
    // wakes every LongConnService (a ServiceMonitor can now be made, say).
    let apis = ctx.served_apis();
    let _discovery = AbortOnDrop(tokio::spawn(discover(ctx.clone(), args.discovery_refresh)));
    let apis_changed = futures::stream::unfold(ctx.served_apis(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    // Every watch runs in a task of its own and sends what should wake a reconcile here.
    let (triggers, woken) = mpsc::unbounded_channel();
    let _watches = writers.spawn(&client, ns, &triggers, &apis);
    // The main watch wakes a reconcile only when the spec, labels or annotations change: the
    // operator's own status writes do not come back as work.
    // Whether the store above holds its first list (the gateway poller waits for it).
    let (listed_tx, listed) = watch::channel(false);
    let spec_changes = watcher::watcher(lcs_api, watcher::Config::default().any_semantic())
        .backoff(cache::WatchBackoff::default())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(services_writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                listed_tx.send_replace(true);
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::labels)
                .combine(predicates::annotations),
            Default::default(),
        );
    let _services_watch = AbortOnDrop(tokio::spawn(cache::forward(
        "LongConnService".to_owned(),
        spec_changes,
        triggers.clone(),
        |lcs| Some(ObjectRef::from_obj(lcs)),
    )));
    // A gateway report that changed.
    let poller = tokio::spawn(gateways::poll(
        ctx.clone(),
        services.clone(),
        listed,
        triggers,
    ));
    // The controller watches nothing itself: its store is filled, and its triggers sent, by
    // the tasks above.
    let controller = Controller::for_stream(
        futures::stream::pending::<Result<LongConnService, watcher::Error>>(),
        services,
    )
    .reconcile_on(futures::stream::unfold(woken, |mut rx| async move {
        rx.recv().await.map(|lcs| (lcs, rx))
    }))
    .reconcile_all_on(apis_changed)
    // Pod status changes come in bursts; one reconcile per burst is enough. Kept short: a
    // trigger within the window postpones the reconcile again.
    .with_config(
        controller::Config::default()
            .debounce(Duration::from_millis(200))
            .concurrency(RECONCILES_AT_ONCE),
    )
    .graceful_shutdown_on(async {
        shutdown_signal().await;
    })
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            log_controller_error(&e);
        }
    });
    let _poller = AbortOnDrop(poller);

    match leadership {
        Some(mut leadership) => {
            tokio::select! {
                _ = controller => {}
                lost = leadership.lost() => {
                    error!(%lost, "no longer the leader; exiting so a restart campaigns again");
                    shutdown(stop_tx, server).await?;
                    anyhow::bail!("lost leadership: {lost}");
                }
            }
        }
        None => controller.await,
    }
    info!("shut down");
    shutdown(stop_tx, server).await
}

/// Asks which optional APIs the cluster serves every `every` (every second until it first
/// answered).
async fn discover(ctx: Arc<Context>, every: Duration) {
    let apis = ctx.served_apis();
    loop {
        ctx.discover().await;
        let pause = if apis.borrow().is_some() {
            every
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Logs what the controller's stream reports. Only the unexpected is a warning: a failed
/// reconcile is logged by `error_policy`, and a trigger for a LongConnService deleted
/// meanwhile is normal.
fn log_controller_error(error: &controller::Error<reconcile::Error, watcher::Error>) {
    match error {
        controller::Error::ReconcilerFailed(..) | controller::Error::ObjectNotFound(_) => {
            debug!(error = %error, "controller");
        }
        _ => warn!(error = %error, "controller"),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An API over one namespace, or over all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn shutdown(
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let _ = stop.send(true);
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    Ok(())
}

/// Waits until the LongConnService API answers, retrying with backoff (the CRD may be installed
/// after the operator).
async fn wait_for_crd(api: &Api<LongConnService>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, retry_in = ?delay, "the LongConnService API is not served yet; install the CRD");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
