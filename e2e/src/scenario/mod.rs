//! The end-to-end rollout scenarios: each runs a LongConnService on the local control plane with
//! the real operator, gateways and echo apps, puts live WebSocket sessions on it, disturbs it (a
//! template change, a scale-down, a load that makes the session autoscaling scale up and down, a
//! message load that makes the CPU autoscaling scale up and down, a node drain, a killed operator or gateway, a revision that never becomes Ready, clients that
//! ignore close frames), and compares what the clients counted with what the operator recorded
//! in `status.rollout`.
//!
//! ```no_run
//! # async fn example() -> Result<(), longconn_e2e::scenario::ScenarioError> {
//! use longconn_e2e::scenario::{self, Scenario, ScenarioOptions};
//! let options = ScenarioOptions::new(std::env::temp_dir().join("scenarios"));
//! let suite = scenario::run(&options, &Scenario::ALL, std::future::pending()).await?;
//! println!("{}", serde_json::to_string(&suite).unwrap_or_default());
//! # Ok(()) }
//! ```
//!
//! One [`harness::Harness`] (cluster with real nodes, operator, client host) serves every
//! scenario of a run; each scenario works in its own namespace, named after it, deleted when it
//! ends.

pub mod harness;
pub mod landing;
pub mod service;
pub mod steps;
pub mod wait;

mod autoscale;
mod autoscale_cpu;
mod bad_revision;
mod canary;
mod canary_abort;
mod drain_deadline;
mod gateway_crash;
mod node_drain;
mod operator_restart;
mod rolling_update;
mod scale_down;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::load::{LoadError, LoadReport, RefusedAttempts, SessionsByMoves, TimeToServing};
use harness::Harness;
use service::{Recorded, Rollout, ServiceSpec};

/// What can stop a scenario before it reaches its verdict, or a benchmark before its figures.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The cluster, its nodes or the operator could not be started or stopped.
    #[error(transparent)]
    E2e(#[from] crate::Error),
    /// Something the scenarios need is missing.
    #[error("setup: {0}")]
    Setup(String),
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// kubectl failed.
    #[error("kubectl {args}: {stderr}")]
    Kubectl { args: String, stderr: String },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// The load could not start.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The operator process is not running as it should.
    #[error("operator: {0}")]
    Operator(String),
    /// A pod's gateway metrics could not be read.
    #[error("metrics of pod {pod}: {reason}")]
    Metrics { pod: String, reason: String },
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted")]
    Interrupted,
}

impl ScenarioError {
    /// A [`ScenarioError::Kube`] for `action`.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| ScenarioError::Kube { action, source }
    }
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    RollingUpdate,
    Canary,
    CanaryAbort,
    ScaleDown,
    Autoscale,
    AutoscaleCpu,
    NodeDrain,
    OperatorRestart,
    GatewayCrash,
    BadRevision,
    DrainDeadline,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 11] = [
        Scenario::RollingUpdate,
        Scenario::Canary,
        Scenario::CanaryAbort,
        Scenario::ScaleDown,
        Scenario::Autoscale,
        Scenario::AutoscaleCpu,
        Scenario::NodeDrain,
        Scenario::OperatorRestart,
        Scenario::GatewayCrash,
        Scenario::BadRevision,
        Scenario::DrainDeadline,
    ];

    /// The scenario's name (also its namespace).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::RollingUpdate => "rolling-update",
            Scenario::Canary => "canary",
            Scenario::CanaryAbort => "canary-abort",
            Scenario::ScaleDown => "scale-down",
            Scenario::Autoscale => "autoscale",
            Scenario::AutoscaleCpu => "autoscale-cpu",
            Scenario::NodeDrain => "node-drain",
            Scenario::OperatorRestart => "operator-restart",
            Scenario::GatewayCrash => "gateway-crash",
            Scenario::BadRevision => "bad-revision",
            Scenario::DrainDeadline => "drain-deadline",
        }
    }

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How scenarios run.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// The control-plane binaries (`make tools`).
    pub tools_dir: PathBuf,
    /// Cluster folder, pod folders and logs.
    pub work_dir: PathBuf,
    /// The image archives of `make images`, loaded into every node.
    pub images_dir: PathBuf,
    /// Real nodes to run the pods on.
    pub nodes: usize,
    /// The seed of the random choices (operator-restart's kill time); from the clock if unset.
    pub seed: Option<u64>,
    /// Load progress lines on stderr.
    pub progress: bool,
}

impl ScenarioOptions {
    /// Tools from [`crate::tools::default_tools_dir`], images (the operator's among them) from
    /// [`crate::nodes::default_images_dir`], 3 nodes.
    pub fn new(work_dir: PathBuf) -> Self {
        Self {
            tools_dir: crate::tools::default_tools_dir(),
            work_dir,
            images_dir: crate::nodes::default_images_dir(),
            nodes: 3,
            seed: None,
            progress: false,
        }
    }
}

/// What one scenario measured, and its verdict.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioReport {
    pub scenario: String,
    pub passed: bool,
    /// Why it did not pass (each criterion that failed).
    pub failures: Vec<String>,
    /// What stopped it before its verdict, if anything.
    pub error: Option<String>,
    /// Load sessions (logical clients).
    pub sessions: u64,
    /// Of those, sessions that ignore close frames.
    pub close_ignoring_sessions: u64,
    /// Sessions the clients counted dropped (for drain-deadline: besides the force-closed ones).
    pub client_dropped: Option<u64>,
    /// Sessions the operator recorded dropped (`status.rollout.sessionsDropped`, since the
    /// scenario's disturbance).
    pub operator_dropped: Option<i64>,
    /// Migrations the clients counted (close 1012/1001 answered, reconnected).
    pub migrated: Option<u64>,
    /// Migrations the operator recorded (`status.rollout.sessionsMigrated`).
    pub operator_migrated: Option<i64>,
    /// Messages sent and never echoed.
    pub lost_messages: Option<u64>,
    /// Pods the operator recorded drained (`status.rollout.podsDrained`).
    pub pods_drained: Option<i64>,
    /// Sessions by how often the clients saw them moved (keys `0`, `1`, `2`, `3+`).
    pub sessions_by_moves: Option<SessionsByMoves>,
    /// Sessions the clients saw moved twice or more.
    pub moved_more_than_once: Option<u64>,
    /// Connection attempts refused: `total`, `http503`, `http429`, `reset`, `refused` (at TCP
    /// level).
    pub refused_attempts: Option<RefusedAttempts>,
    /// From a move's close frame to the echo of the first message on the new connection:
    /// `samples`, `p50`, `p99`, `max` (milliseconds).
    pub time_to_serving_ms: Option<TimeToServing>,
    /// Sessions each Ready, non-terminating pod's gateway held at the end
    /// (`longconn_gateway_sessions_active`), by pod name.
    pub sessions_per_pod: Option<BTreeMap<String, u64>>,
    /// The busiest of those pods' sessions over the mean per pod.
    pub balance: Option<f64>,
    pub wall_seconds: f64,
    /// The seed of the scenario's random choices, if it makes any.
    pub seed: Option<u64>,
    /// What the scenario did and saw besides (pods, nodes, times).
    pub details: BTreeMap<String, Value>,
    /// The load client's full report.
    pub load: Option<LoadReport>,
    /// `status.rollout` at the end.
    pub rollout: Option<Value>,
    /// `status.conditions` at the end.
    pub conditions: Value,
    /// `status.currentRevision` and `status.updateRevision` at the end.
    pub current_revision: Option<String>,
    pub update_revision: Option<String>,
}

impl ScenarioReport {
    fn new(scenario: Scenario) -> Self {
        Self {
            scenario: scenario.name().to_owned(),
            conditions: Value::Array(Vec::new()),
            ..Self::default()
        }
    }

    /// Records a failed criterion unless `holds`.
    pub fn expect(&mut self, holds: bool, failure: impl Into<String>) {
        if !holds {
            self.failures.push(failure.into());
        }
    }

    /// Records a detail.
    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Fills the client-side numbers from the load report.
    pub fn client(&mut self, load: LoadReport) {
        self.sessions = load.sessions_opened;
        self.close_ignoring_sessions = load.close_ignoring;
        self.client_dropped = Some(load.dropped);
        self.migrated = Some(load.migrated);
        self.lost_messages = Some(load.messages_lost);
        self.sessions_by_moves = Some(load.sessions_by_moves);
        self.moved_more_than_once = Some(load.moved_more_than_once);
        self.refused_attempts = Some(load.refused_attempts);
        self.time_to_serving_ms = load.time_to_serving_ms;
        self.load = Some(load);
    }

    /// Fills the operator-side numbers from what it recorded since `baseline`.
    pub fn operator(&mut self, recorded: Option<&Recorded>) {
        self.operator_dropped = recorded.map(|r| r.sessions_dropped);
        self.operator_migrated = recorded.map(|r| r.sessions_migrated);
        self.pods_drained = recorded.map(|r| r.pods_drained);
    }

    /// The clients' migrations and the operator's agree exactly (each close handshake is seen
    /// by both ends).
    pub fn expect_migrations_agree(&mut self) {
        let (clients, operator) = (self.migrated, self.operator_migrated);
        self.expect(
            operator.is_some() && clients.map(|n| n as i64) == operator,
            format!("clients counted {clients:?} migrations, the operator {operator:?}"),
        );
    }

    /// The checks every scenario with well-behaved clients makes: every session opened, none
    /// dropped, no message lost.
    pub fn expect_clean_clients(&mut self, sessions: usize) {
        let Some(load) = self.load.clone() else {
            self.failures.push("no load report".into());
            return;
        };
        self.expect(
            load.sessions_opened == sessions as u64,
            format!("{} of {sessions} sessions opened", load.sessions_opened),
        );
        self.expect(
            load.dropped == 0,
            format!(
                "clients counted {} dropped sessions: {:?}",
                load.dropped, load.drop_reasons
            ),
        );
        self.expect(
            load.messages_lost == 0,
            format!("{} messages lost", load.messages_lost),
        );
    }
}

/// The report of a run of one or more scenarios.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SuiteReport {
    pub passed: bool,
    pub wall_seconds: f64,
    /// Where the logs are (kept when a scenario failed).
    pub work_dir: PathBuf,
    pub scenarios: Vec<ScenarioReport>,
    /// What could not be stopped cleanly at the end.
    pub teardown_problems: Vec<String>,
}

/// Runs `scenarios` in order on one harness and tears it down, also when `interrupted`
/// completes first (the report then says so). An error means the harness could not start.
pub async fn run(
    options: &ScenarioOptions,
    scenarios: &[Scenario],
    interrupted: impl Future<Output = ()>,
) -> Result<SuiteReport, ScenarioError> {
    let started = Instant::now();
    tokio::pin!(interrupted);
    let mut harness = tokio::select! {
        harness = Harness::up(options) => harness?,
        () = &mut interrupted => return Err(ScenarioError::Interrupted),
    };
    let seed = options.seed.unwrap_or_else(clock_seed);
    let mut reports = Vec::new();
    for &scenario in scenarios {
        let mut report = ScenarioReport::new(scenario);
        let scenario_started = Instant::now();
        tracing::info!(scenario = scenario.name(), "scenario starts");
        let whole = async {
            if let Err(err) =
                run_one(&mut harness, scenario, &mut report, seed, options.progress).await
            {
                report.error = Some(err.to_string());
            }
            finish(&mut harness, scenario, &mut report).await;
        };
        let interrupted_now = tokio::select! {
            () = whole => false,
            () = &mut interrupted => true,
        };
        if interrupted_now {
            report.error = Some(ScenarioError::Interrupted.to_string());
        }
        report.wall_seconds = round(scenario_started.elapsed().as_secs_f64());
        report.passed = report.error.is_none() && report.failures.is_empty();
        tracing::info!(
            scenario = scenario.name(),
            passed = report.passed,
            failures = ?report.failures,
            error = ?report.error,
            "scenario ends"
        );
        reports.push(report);
        if interrupted_now {
            break;
        }
    }
    let teardown_problems = harness.shutdown().await;
    let passed = reports.len() == scenarios.len()
        && reports.iter().all(|r| r.passed)
        && teardown_problems.is_empty();
    Ok(SuiteReport {
        passed,
        wall_seconds: round(started.elapsed().as_secs_f64()),
        work_dir: options.work_dir.clone(),
        scenarios: reports,
        teardown_problems,
    })
}

async fn run_one(
    harness: &mut Harness,
    scenario: Scenario,
    report: &mut ScenarioReport,
    seed: u64,
    progress: bool,
) -> Result<(), ScenarioError> {
    let context = Context {
        namespace: scenario.name().to_owned(),
        progress,
    };
    match scenario {
        Scenario::RollingUpdate => rolling_update::run(harness, &context, report).await,
        Scenario::Canary => canary::run(harness, &context, report).await,
        Scenario::CanaryAbort => canary_abort::run(harness, &context, report).await,
        Scenario::ScaleDown => scale_down::run(harness, &context, report).await,
        Scenario::Autoscale => autoscale::run(harness, &context, report).await,
        Scenario::AutoscaleCpu => autoscale_cpu::run(harness, &context, report).await,
        Scenario::NodeDrain => node_drain::run(harness, &context, report).await,
        Scenario::OperatorRestart => {
            report.seed = Some(seed);
            operator_restart::run(harness, &context, report, seed).await
        }
        Scenario::GatewayCrash => gateway_crash::run(harness, &context, report).await,
        Scenario::BadRevision => bad_revision::run(harness, &context, report).await,
        Scenario::DrainDeadline => drain_deadline::run(harness, &context, report).await,
    }
}

/// What a scenario gets besides the harness.
pub(crate) struct Context {
    /// Its namespace.
    pub namespace: String,
    /// Load progress lines on stderr.
    pub progress: bool,
}

/// After a scenario: the final status into the report, the operator back if it died, the
/// namespace deleted.
async fn finish(harness: &mut Harness, scenario: Scenario, report: &mut ScenarioReport) {
    let spec = ServiceSpec::new(scenario.name());
    if let Ok(observed) = spec.observe(&harness.client()).await {
        report.rollout = observed.rollout().map(|Rollout(raw)| raw);
        report.conditions = observed.conditions();
        report.current_revision = observed.current_revision();
        report.update_revision = observed.update_revision();
    }
    if !report.failures.is_empty() || report.error.is_some() {
        keep_pod_logs(harness.work_dir(), scenario.name());
    }
    if let Err(err) = harness.check_operator().await {
        report
            .failures
            .push(format!("the operator crashed during the scenario: {err}"));
        if let Err(err) = harness.recover_operator().await {
            tracing::error!(%err, "the operator does not lead again");
        }
    }
    if let Err(err) = harness.delete_namespace(scenario.name()).await {
        report
            .failures
            .push(format!("cleaning up namespace {}: {err}", scenario.name()));
    }
}

/// Copies the logs of the operator's pods and of the scenario's own pods to
/// `<work_dir>/failed/<scenario>/`, before the namespace goes: a kubelet removes a pod's logs with
/// the pod, and a later scenario (a node drained, the operator killed) may replace the operator's.
fn keep_pod_logs(work_dir: &Path, scenario: &str) {
    let kept = work_dir.join("failed").join(scenario);
    let wanted = |name: &str| {
        name.starts_with("longconn-system_") || name.starts_with(&format!("{scenario}_"))
    };
    let nodes = work_dir.join("cluster").join("nodes");
    for node in read_dir(&nodes) {
        for pod in read_dir(&node.join("pod-logs")) {
            let name = pod.file_name().unwrap_or_default().to_string_lossy();
            if !wanted(&name) {
                continue;
            }
            for container in read_dir(&pod) {
                let to = kept
                    .join(&*name)
                    .join(container.file_name().unwrap_or_default());
                for log in read_dir(&container) {
                    let copied = std::fs::create_dir_all(&to).and_then(|()| {
                        std::fs::copy(&log, to.join(log.file_name().unwrap_or_default()))
                    });
                    if let Err(err) = copied {
                        tracing::warn!(log = %log.display(), %err, "could not keep a pod's log");
                    }
                }
            }
        }
    }
    tracing::info!(dir = %kept.display(), "kept the operator's and the scenario's pod logs");
}

/// The entries of `dir`, none when it cannot be read.
fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// A seed from the clock, for runs that do not ask for one.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// splitmix64: a small, well-mixed generator, enough for reproducible random choices.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)` (bound > 0), close enough for choosing times.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::from_name(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::from_name("nope"), None);
    }

    #[test]
    fn the_generator_is_reproducible_from_its_seed() {
        let a: Vec<u64> = {
            let mut rng = SplitMix::new(42);
            (0..5).map(|_| rng.below(1000)).collect()
        };
        let b: Vec<u64> = {
            let mut rng = SplitMix::new(42);
            (0..5).map(|_| rng.below(1000)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&n| n < 1000));
        assert_ne!(a, {
            let mut rng = SplitMix::new(43);
            (0..5).map(|_| rng.below(1000)).collect::<Vec<_>>()
        });
    }
}
