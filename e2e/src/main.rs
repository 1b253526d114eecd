//! `longconn-e2e`: the command line of the local cluster.
//!
//! `cluster up` starts the control plane and real nodes and returns, leaving them running;
//! `cluster env` prints the lines for `eval "$(longconn-e2e cluster env)"`; `cluster down` stops
//! it and removes the nodes from the host. `load` opens WebSocket sessions to a Service (its
//! ClusterIP or its Ready endpoints) and reports migrated and dropped sessions and lost messages.
//! `scenario` runs the end-to-end rollout scenarios on a cluster of its own and judges them.
//! `bench-operator` measures what the operator costs the API server beside plain Deployments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use longconn_e2e::cluster::{self, Cluster, ClusterOptions};
use longconn_e2e::tools;

#[derive(Debug, Parser)]
#[command(
    name = "longconn-e2e",
    about = "longconn's local Kubernetes control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop or use the local control plane.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Open WebSocket sessions to a Service's Ready endpoints, check every echo, follow drains;
    /// exits 2 when a session was dropped or a message lost.
    Load(LoadArgs),
    /// Run an end-to-end rollout scenario (or `all`) on a cluster of its own, with the operator,
    /// real pods and live load; prints what it measured; exits 1 when it did not pass.
    Scenario(ScenarioArgs),
    /// Measure the operator's cost on the API server on a control plane of its own (no nodes):
    /// COUNT LongConnServices against COUNT plain Deployments, requests per service, idle
    /// requests, memory; prints a table with the targets and one JSON line.
    BenchOperator(BenchOperatorArgs),
}

#[derive(Debug, Args)]
struct BenchOperatorArgs {
    /// Objects of each kind: plain Deployments, then LongConnServices.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Creates in flight at once, in both phases (1: one after the other, as `kubectl create -f`).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// How long the operator is watched doing nothing after the last service converged
    /// (default: the operator's resync period and 30 s, so every service's resync is in it).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// How long each phase may take to converge before the run fails.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    converge_timeout: Duration,
    /// The operator binary (default: `longconn-operator` beside this program).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// The folder `make tools` built the control-plane binaries into.
    #[arg(long, env = tools::TOOLS_DIR_ENV, default_value_os_t = tools::repository_root().join(".tools"))]
    tools_dir: PathBuf,
    /// Cluster folder and the operator's log (default: a new folder under the temporary folder,
    /// removed when the run succeeded).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    /// rolling-update, scale-down, autoscale, autoscale-cpu, node-drain, operator-restart,
    /// gateway-crash, bad-revision, drain-deadline, several of them comma-separated (run in the
    /// order given), or all (in that order); on one cluster.
    name: String,
    /// Print the report as one JSON object on stdout (for several: {passed, scenarios: [...]}).
    #[arg(long)]
    json: bool,
    /// The image archives of `make images`, loaded into every node.
    #[arg(long, env = longconn_e2e::nodes::IMAGES_DIR_ENV, default_value_os_t = longconn_e2e::nodes::default_images_dir())]
    images_dir: PathBuf,
    /// The folder `make tools` built the control-plane binaries into.
    #[arg(long, env = tools::TOOLS_DIR_ENV, default_value_os_t = tools::repository_root().join(".tools"))]
    tools_dir: PathBuf,
    /// Cluster folder, pod folders and logs (default: a new folder under the temporary
    /// folder, removed when every scenario passed).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The seed of random choices (operator-restart's kill time); default from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Show the load's progress on stderr.
    #[arg(long)]
    progress: bool,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The Service (and its Secret `<service>-tls` with `ca.crt`).
    #[arg(long, default_value = "chat")]
    service: String,
    /// The Service's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Sessions to open (at most 5000).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages per second per session (at most 100).
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// How long sessions send, e.g. `30s` (at most 10m); echoes get 10 s more.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also allow connections to this IPv4 network (`10.246.0.0/16`); 10.244.0.0/16 and
    /// 127.0.0.0/8 are always allowed.
    #[arg(long, value_parser = parse_network)]
    allow: Vec<(std::net::Ipv4Addr, u8)>,
    /// How many of the sessions ignore the server's close frames (never answer, keep the socket
    /// open until the server cuts it); they are reported as force-closed, not dropped.
    #[arg(long, default_value_t = 0)]
    close_ignoring: usize,
    /// Where connections go: `cluster-ip` (through kube-proxy; 10.96.0.0/12 is then allowed too)
    /// or `endpoints` (round-robin over the Ready pod IPs).
    #[arg(long, value_enum, default_value = "endpoints")]
    route: longconn_e2e::load::Route,
    /// Run the clients in this network namespace (`longconn-client`: the client host of
    /// `cluster up`, which routes the Service range through kube-proxy).
    #[arg(long)]
    netns: Option<String>,
}

fn parse_network(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (addr, len) = s.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{len}: {e}"))?;
    if len > 32 {
        return Err(format!("prefix length {len} > 32"));
    }
    Ok((addr, len))
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Generate the PKI, start etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
    /// then the nodes (containerd, kubelet and kube-proxy each), and wait until all are Ready.
    Up(UpArgs),
    /// Stop every process of the cluster (SIGTERM, then SIGKILL after the grace period).
    Down(DownArgs),
    /// Print `export` lines for KUBECONFIG and PATH (with the built kubectl and helm first).
    Env(DirArgs),
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The cluster folder (PKI, kubeconfigs, etcd data, logs).
    #[arg(long, env = "LONGCONN_E2E_CLUSTER_DIR", default_value_os_t = cluster::default_cluster_dir())]
    dir: PathBuf,
    /// The folder `make tools` built the control-plane binaries into.
    #[arg(long, env = tools::TOOLS_DIR_ENV, default_value_os_t = tools::repository_root().join(".tools"))]
    tools_dir: PathBuf,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// How long each component may take to become healthy, in seconds.
    #[arg(long, default_value_t = 120)]
    ready_timeout_secs: u64,
    /// How many nodes to start (0: the control plane only, on 127.0.0.1).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The image archives of `make images`, loaded into every node.
    #[arg(long, env = longconn_e2e::nodes::IMAGES_DIR_ENV, default_value_os_t = longconn_e2e::nodes::default_images_dir())]
    images_dir: PathBuf,
}

#[derive(Debug, Args)]
struct DownArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// How long each component may take to exit after SIGTERM, in seconds.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube's client logs every refused connection while the API server starts; the readiness
    // errors this command reports say the same once, when it matters. Scenarios show their own
    // steps, not every request of the load clients.
    let default_filter = match cli.command {
        Command::Scenario(_) => "warn,longconn_e2e::scenario=info,kube_client=off",
        Command::BenchOperator(_) => "warn,longconn_e2e::bench=info,kube_client=off",
        _ => "info,kube_client=off",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err @ RunError::Loss) => {
            eprintln!("longconn-e2e: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("longconn-e2e: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    E2e(#[from] longconn_e2e::Error),
    #[error(transparent)]
    Load(#[from] longconn_e2e::load::LoadError),
    #[error("load client: {0}")]
    Client(String),
    #[error("sessions were dropped or messages lost")]
    Loss,
    #[error(transparent)]
    Scenario(#[from] longconn_e2e::scenario::ScenarioError),
    #[error("{0}")]
    Usage(String),
    #[error("not passed: {0}")]
    NotPassed(String),
    #[error("{source} (logs in {})", work_dir.display())]
    Bench {
        source: longconn_e2e::scenario::ScenarioError,
        work_dir: PathBuf,
    },
}

async fn run(cli: Cli) -> Result<(), RunError> {
    match cli.command {
        Command::Load(args) => load(args).await,
        Command::Scenario(args) => scenario(args).await,
        Command::BenchOperator(args) => bench_operator(args).await,
        Command::Cluster(ClusterCommand::Up(args)) => {
            let cluster = Cluster::up(ClusterOptions {
                dir: args.dir.dir,
                tools_dir: args.dir.tools_dir.clone(),
                ready_timeout: Duration::from_secs(args.ready_timeout_secs),
                nodes: args.nodes,
                images_dir: args.images_dir,
                ..ClusterOptions::default()
            })
            .await?;
            if let Some(after) = cluster.nodes_ready_after() {
                eprintln!(
                    "nodes: {} Ready {:.1} s after the first one started",
                    args.nodes,
                    after.as_secs_f64()
                );
            }
            eprintln!(
                "cluster up: {} (logs in {})\nuse it with: eval \"$(longconn-e2e cluster env --dir {})\"",
                cluster.server(),
                cluster.dir().join("logs").display(),
                cluster.dir().display(),
            );
            cluster.detach();
            Ok(())
        }
        Command::Cluster(ClusterCommand::Down(args)) => {
            cluster::down_dir(&args.dir.dir, Duration::from_secs(args.grace_secs))?;
            eprintln!("cluster down: {}", args.dir.dir.display());
            Ok(())
        }
        Command::Cluster(ClusterCommand::Env(args)) => {
            let tools_dir = std::fs::canonicalize(&args.tools_dir).unwrap_or(args.tools_dir);
            let dir = std::fs::canonicalize(&args.dir).unwrap_or(args.dir);
            print!("{}", cluster::env_lines(&dir, &tools_dir));
            Ok(())
        }
    }
}

async fn load(args: LoadArgs) -> Result<(), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| RunError::Client(e.to_string()))?;
    let mut options = longconn_e2e::load::LoadOptions::new(args.namespace, args.service);
    options.sessions = args.sessions;
    options.rate = args.rate;
    options.duration = args.duration;
    options.allowed.extend(args.allow);
    options.close_ignoring = args.close_ignoring;
    options.progress = true;
    options.route = args.route;
    if args.route == longconn_e2e::load::Route::ClusterIp {
        options
            .allowed
            .push(longconn_e2e::nodes::plan::service_network());
    }
    let report = match args.netns {
        Some(netns) => {
            longconn_e2e::nodes::in_netns(&netns, move || longconn_e2e::load::run(client, options))
                .await??
        }
        None => longconn_e2e::load::run(client, options).await?,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| RunError::Client(e.to_string()))?
        );
    }
    for reason in &report.drop_reasons {
        eprintln!("dropped: {reason}");
    }
    if report.dropped > 0 || report.messages_lost > 0 {
        return Err(RunError::Loss);
    }
    Ok(())
}

async fn scenario(args: ScenarioArgs) -> Result<(), RunError> {
    use longconn_e2e::scenario::{self, Scenario, ScenarioOptions};

    let scenarios: Vec<Scenario> = if args.name == "all" {
        Scenario::ALL.to_vec()
    } else {
        args.name
            .split(',')
            .map(|name| {
                Scenario::from_name(name.trim()).ok_or_else(|| {
                    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    RunError::Usage(format!(
                        "no scenario {name:?}: choose from {}, or all",
                        names.join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let (own_work_dir, work_dir) = work_dir(args.work_dir, "longconn-scenarios");
    let mut options = ScenarioOptions::new(work_dir.clone());
    options.tools_dir = args.tools_dir;
    options.images_dir = args.images_dir;
    options.seed = args.seed;
    options.progress = args.progress;
    let suite = scenario::run(&options, &scenarios, interrupted()).await?;
    if args.json {
        let text = if scenarios.len() == 1 && suite.scenarios.len() == 1 {
            to_json(&suite.scenarios[0])
        } else {
            to_json(&suite)
        };
        println!("{text}");
    } else {
        for report in &suite.scenarios {
            println!("{}", summary_line(report));
            if let Some(line) = moves_line(report) {
                println!("    {line}");
            }
            for failure in &report.failures {
                println!("    failed: {failure}");
            }
            if let Some(error) = &report.error {
                println!("    error: {error}");
            }
        }
        println!(
            "{} in {:.1} s",
            if suite.passed { "PASSED" } else { "FAILED" },
            suite.wall_seconds
        );
    }
    for problem in &suite.teardown_problems {
        eprintln!("longconn-e2e: teardown: {problem}");
    }
    if suite.passed {
        if own_work_dir {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        Ok(())
    } else {
        let failed: Vec<&str> = suite
            .scenarios
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.scenario.as_str())
            .collect();
        Err(RunError::NotPassed(format!(
            "{} (logs in {})",
            if failed.is_empty() {
                "teardown".to_owned()
            } else {
                failed.join(", ")
            },
            work_dir.display()
        )))
    }
}

async fn bench_operator(args: BenchOperatorArgs) -> Result<(), RunError> {
    use longconn_e2e::bench::operator::{self, Options};
    use longconn_e2e::scenario::ScenarioError;

    let operator_bin = match args.operator_bin {
        Some(path) => path,
        None => std::env::current_exe()
            .map_err(|e| RunError::Usage(format!("where is this program: {e}")))?
            .with_file_name("longconn-operator"),
    };
    let (own_work_dir, work_dir) = work_dir(args.work_dir, "longconn-bench-operator");
    let mut options = Options::new(work_dir.clone(), operator_bin);
    options.count = args.count;
    options.concurrency = args.concurrency;
    options.idle = args.idle.unwrap_or(options.idle);
    options.converge_timeout = args.converge_timeout;
    options.tools_dir = args.tools_dir;
    // Stopping on a signal drops the run, which stops the operator and the cluster.
    let report = tokio::select! {
        report = operator::run(&options) => report,
        () = interrupted() => Err(ScenarioError::Interrupted),
    }
    .map_err(|source| RunError::Bench {
        source,
        work_dir: work_dir.clone(),
    })?;
    println!(
        "operator benchmark: {} of each kind, 1 replica each, no nodes (pods stay Pending), creates {} at a time, idle {:.0} s",
        report.count, report.concurrency, report.idle_seconds
    );
    print!("{}", report.table());
    println!("{}", to_json(&report));
    if own_work_dir {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(())
}

/// The work folder given, or a new one under the temporary folder named `prefix-PID` (then
/// `true`: this program removes it after a run that passed).
fn work_dir(given: Option<PathBuf>, prefix: &str) -> (bool, PathBuf) {
    match given {
        Some(dir) => (false, dir),
        None => (
            true,
            std::env::temp_dir().join(format!("{prefix}-{}", std::process::id())),
        ),
    }
}

/// Resolves at SIGINT or SIGTERM, after saying that everything is being torn down.
async fn interrupted() {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match terminate {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("longconn-e2e: interrupted; tearing everything down");
}

/// One line per scenario for the terminal.
fn summary_line(report: &longconn_e2e::scenario::ScenarioReport) -> String {
    let show = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    format!(
        "{:<17} {}  sessions {}  clientDropped {}  operatorDropped {}  migrated {}  lost {}  podsDrained {}  {:.1} s",
        report.scenario,
        if report.passed { "PASSED" } else { "FAILED" },
        report.sessions,
        show(report.client_dropped.map(|n| n.to_string())),
        show(report.operator_dropped.map(|n| n.to_string())),
        show(report.migrated.map(|n| n.to_string())),
        show(report.lost_messages.map(|n| n.to_string())),
        show(report.pods_drained.map(|n| n.to_string())),
        report.wall_seconds
    )
}

/// How the sessions moved and where they landed, when the scenario ran load.
fn moves_line(report: &longconn_e2e::scenario::ScenarioReport) -> Option<String> {
    let by_moves = report.sessions_by_moves?;
    let refused = report.refused_attempts.unwrap_or_default();
    let serving = report.time_to_serving_ms.map_or("-".to_owned(), |t| {
        format!("{}/{}/{} ms ({} moves)", t.p50, t.p99, t.max, t.samples)
    });
    let balance = report.balance.map_or("-".to_owned(), |b| format!("{b:.2}"));
    Some(format!(
        "moved 0/1/2/3+ times {}/{}/{}/{}  movedMoreThanOnce {}  refusedAttempts {} (503 {}, 429 {}, reset {}, refused {})  timeToServing p50/p99/max {serving}  balance {balance} {:?}",
        by_moves.never,
        by_moves.once,
        by_moves.twice,
        by_moves.more,
        by_moves.more_than_once(),
        refused.total,
        refused.http503,
        refused.http429,
        refused.reset,
        refused.refused,
        report.sessions_per_pod.clone().unwrap_or_default()
    ))
}

/// One line of JSON.
fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
