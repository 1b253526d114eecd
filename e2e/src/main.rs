//! `longconn-e2e`: the command line of the local control plane.
//!
//! `cluster up` starts it and returns, leaving the components running; `cluster env` prints the
//! lines for `eval "$(longconn-e2e cluster env)"`; `cluster down` stops it. `podrunner run`
//! stands in for the kubelet of that cluster until interrupted. `load` opens WebSocket sessions
//! to a Service's Ready endpoints and reports migrated and dropped sessions and lost messages.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use longconn_e2e::cluster::{self, Cluster, ClusterOptions};
use longconn_e2e::podrunner::images::{self, ImageTable};
use longconn_e2e::podrunner::network::NetworkOptions;
use longconn_e2e::podrunner::{PodRunner, PodRunnerOptions};
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
    /// Run the pods of a cluster as host processes.
    #[command(subcommand)]
    Podrunner(PodrunnerCommand),
    /// Open WebSocket sessions to a Service's Ready endpoints, check every echo, follow drains;
    /// exits 2 when a session was dropped or a message lost.
    Load(LoadArgs),
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
enum PodrunnerCommand {
    /// Register nodes and run the pods bound to them until SIGINT or SIGTERM, then stop every
    /// container, remove the pod network and deregister the nodes.
    Run(PodrunnerArgs),
}

#[derive(Debug, Args)]
struct PodrunnerArgs {
    /// The cluster folder of `cluster up` (pods go to `<dir>/pods`).
    #[arg(long, env = "LONGCONN_E2E_CLUSTER_DIR", default_value_os_t = cluster::default_cluster_dir())]
    dir: PathBuf,
    /// How many nodes to register.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the workspace binaries standing in for the images are.
    #[arg(long, default_value_os_t = images::default_bin_dir())]
    bin_dir: PathBuf,
    /// The bridge pods are attached to.
    #[arg(long, default_value = "longconn0")]
    bridge: String,
    /// Use 127.x pod addresses instead of network namespaces.
    #[arg(long)]
    no_namespaces: bool,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Generate the PKI, start etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
    /// 127.0.0.1 and wait until they are healthy.
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's client logs every refused connection while the API server starts; the
                // readiness errors this command reports say the same once, when it matters.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .init();
    match run(Cli::parse()).await {
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
}

async fn run(cli: Cli) -> Result<(), RunError> {
    match cli.command {
        Command::Load(args) => load(args).await,
        Command::Cluster(ClusterCommand::Up(args)) => {
            let cluster = Cluster::up(ClusterOptions {
                dir: args.dir.dir,
                tools_dir: args.dir.tools_dir.clone(),
                ready_timeout: Duration::from_secs(args.ready_timeout_secs),
                ..ClusterOptions::default()
            })
            .await?;
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
        Command::Podrunner(PodrunnerCommand::Run(args)) => Ok(podrunner_run(args).await?),
        Command::Cluster(ClusterCommand::Env(args)) => {
            let tools_dir = std::fs::canonicalize(&args.tools_dir).unwrap_or(args.tools_dir);
            let dir = std::fs::canonicalize(&args.dir).unwrap_or(args.dir);
            print!("{}", cluster::env_lines(&dir, &tools_dir));
            Ok(())
        }
    }
}

async fn podrunner_run(args: PodrunnerArgs) -> longconn_e2e::Result<()> {
    let kubeconfig = args.dir.join("kubeconfig");
    let config = kube::config::Kubeconfig::read_from(&kubeconfig).map_err(|source| {
        longconn_e2e::Error::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        }
    })?;
    let server = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    let client_config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|source| longconn_e2e::Error::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        })?;
    let client = kube::Client::try_from(client_config)
        .map_err(longconn_e2e::Error::kube("build a client"))?;
    // Containers start in their pod's folder, so a relative binary folder would not resolve.
    let bin_dir = std::path::absolute(&args.bin_dir).map_err(longconn_e2e::Error::io(
        "resolve the binary folder",
        &args.bin_dir,
    ))?;
    let mut options = PodRunnerOptions::new(
        &server,
        args.dir.join("pods"),
        ImageTable::workspace(&bin_dir),
    );
    options.nodes = args.nodes;
    options.network = NetworkOptions {
        bridge: args.bridge,
        namespaces: !args.no_namespaces,
        ..NetworkOptions::default()
    };
    let runner = PodRunner::start(client, options).await?;
    eprintln!(
        "pod runner: nodes {} (pod folders in {}); Ctrl-C stops it",
        runner.nodes().join(", "),
        args.dir.join("pods").display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(longconn_e2e::Error::io("watch SIGTERM", "signal"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    runner.stop().await
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
    options.progress = true;
    let report = longconn_e2e::load::run(client, options).await?;
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
