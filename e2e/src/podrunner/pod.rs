//! One pod's life on a node, as the kubelet lives it: init containers in order (a native sidecar,
//! an init container with `restartPolicy: Always`, keeps running once started), then the main
//! containers; probes; restarts with backoff; status (phase, conditions including readiness
//! gates, container statuses) written only when it changes; and on deletion `preStop` hooks,
//! SIGTERM, the grace period, SIGKILL (main containers first, sidecars after, in reverse order),
//! then the final deletion of the pod object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::env::{self, Placement, Sources};
use super::images::ImageTable;
use super::mounts::{Enter, Mount, MountNamespace};
use super::network::PodNetwork;
use super::probe::{self, Handler, ProbeState, Target};
use super::volumes::PodVolumes;
use crate::process::Spawned;

/// How often a pod's containers and probes are looked at.
const TICK: Duration = Duration::from_millis(200);
/// Restart backoff: first delay and cap (shorter than the kubelet's 10 s and 5 min, for tests).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(20);
/// What sidecars get at least to stop after the main containers used up the grace period.
const SIDECAR_MIN_GRACE: Duration = Duration::from_secs(2);

/// What every pod task shares.
pub struct PodContext {
    pub client: kube::Client,
    pub images: ImageTable,
    /// Where pod folders (logs, working directories) go.
    pub work_dir: PathBuf,
    pub host_ip: String,
    pub apiserver_host: String,
    pub apiserver_port: u16,
    /// Bumped whenever a Secret or ConfigMap changes: volumes are synced again.
    pub volume_events: watch::Receiver<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Sidecar,
    Main,
}

/// A container's run on this node.
struct Run {
    spec: Container,
    kind: Kind,
    process: Option<Spawned>,
    /// The mount namespace of the running process (volumes at their mount paths).
    mounts: Option<MountNamespace>,
    env: Vec<(String, String)>,
    started_at: Option<Timestamp>,
    started_instant: Option<Instant>,
    restart_count: i32,
    /// Exit code and times of the last finished run.
    last_exit: Option<(i32, Timestamp, Timestamp)>,
    /// When the next start may happen (restart backoff).
    next_start: Option<Instant>,
    /// Why the container cannot start, if it cannot.
    waiting_reason: Option<(String, String)>,
    /// No more starts: completed init container, or a main container not restarted.
    finished: bool,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    startup: Option<ProbeState>,
}

impl Run {
    fn new(spec: Container, kind: Kind) -> Self {
        Self {
            spec,
            kind,
            process: None,
            mounts: None,
            env: Vec::new(),
            started_at: None,
            started_instant: None,
            restart_count: 0,
            last_exit: None,
            next_start: None,
            waiting_reason: None,
            finished: false,
            readiness: None,
            liveness: None,
            startup: None,
        }
    }

    fn running(&self) -> bool {
        self.process.is_some()
    }

    /// Started: running and past its startup probe (if any).
    fn started(&self) -> bool {
        self.running() && self.startup.as_ref().is_none_or(|state| state.passing)
    }

    fn ready(&self) -> bool {
        match self.kind {
            Kind::Init => false,
            Kind::Sidecar | Kind::Main => {
                self.started() && self.readiness.as_ref().is_none_or(|state| state.passing)
            }
        }
    }
}

impl Drop for Run {
    /// A pod task that ends or is aborted (the runner dropped) takes its processes with it.
    fn drop(&mut self) {
        if let Some(process) = &self.process {
            process.signal(Signal::SIGKILL);
        }
    }
}

/// Runs the pod until it is deleted (then stops it and deletes the object) or `shutdown` turns
/// true (then kills its processes at once and leaves the object alone).
pub async fn run(
    context: Arc<PodContext>,
    mut updates: watch::Receiver<Pod>,
    mut shutdown: watch::Receiver<bool>,
    mut network: PodNetwork,
) {
    let pod_ip = network.ip.clone();
    let pod = updates.borrow().clone();
    let key = pod_key(&pod);
    let span = tracing::info_span!("pod", pod = %key);
    let _enter = span.enter();
    let dir = context.work_dir.join(key.replace('/', "_"));
    if let Err(err) = std::fs::create_dir_all(&dir) {
        tracing::error!(%err, dir = %dir.display(), "cannot create the pod folder");
        return;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let mut runs: Vec<Run> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            Run::new(c.clone(), kind)
        })
        .collect();
    runs.extend(
        spec.containers
            .iter()
            .map(|c| Run::new(c.clone(), Kind::Main)),
    );
    let placement = Placement {
        pod_ip: pod_ip.clone(),
        host_ip: context.host_ip.clone(),
        apiserver_host: context.apiserver_host.clone(),
        apiserver_port: context.apiserver_port,
    };
    let mut volumes = PodVolumes::new(&dir);
    let mut volume_events = context.volume_events.clone();
    let mut volumes_ready = false;
    let _forwarder = api_forwarder(&context, &network);
    let start_time = Timestamp::now();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut last_status = serde_json::Value::Null;
    let mut phase_done = false;

    loop {
        let latest = updates.borrow_and_update().clone();
        if *shutdown.borrow() {
            for run in &mut runs {
                if let Some(process) = &run.process {
                    process.signal(Signal::SIGKILL);
                }
            }
            return;
        }
        if latest.metadata.deletion_timestamp.is_some() {
            terminate(&latest, &mut runs, &dir, &network).await;
            network.teardown();
            delete_final(&context, &latest).await;
            return;
        }
        if !volumes_ready || volume_events.has_changed().unwrap_or(false) {
            volume_events.mark_unchanged();
            match volumes.sync(&context.client, &latest).await {
                Ok(()) => volumes_ready = true,
                Err(why) => {
                    tracing::warn!(%why, "volumes not ready");
                    for run in runs.iter_mut().filter(|run| !run.running()) {
                        run.waiting_reason = Some(("ContainerCreating".into(), why.clone()));
                    }
                }
            }
        }

        if !phase_done && volumes_ready {
            let sandbox = Sandbox {
                network: &network,
                volumes: &volumes,
                dir: &dir,
            };
            step(
                &context,
                &latest,
                &mut runs,
                &placement,
                &sandbox,
                &restart_policy,
            )
            .await;
            run_probes(&mut runs, &network, &dir).await;
        }
        let (status, done) = status(
            &latest,
            &runs,
            &pod_ip,
            &context.host_ip,
            start_time,
            &restart_policy,
        );
        if done && !phase_done {
            phase_done = true;
            // The pod has finished: its sidecars stop too.
            stop_runs(
                &mut runs,
                Kind::Sidecar,
                Instant::now() + SIDECAR_MIN_GRACE,
                &network,
                &dir,
            )
            .await;
        }
        if status != last_status {
            let pods: Api<Pod> = Api::namespaced(
                context.client.clone(),
                latest.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let name = latest.metadata.name.clone().unwrap_or_default();
            match pods
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await
            {
                Ok(_) => last_status = status,
                Err(err) => tracing::warn!(%err, "status update failed; retrying"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = updates.changed() => {}
            _ = shutdown.changed() => {}
            _ = volume_events.changed() => {}
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Starts what should run next and collects exits.
async fn step(
    context: &PodContext,
    pod: &Pod,
    runs: &mut [Run],
    placement: &Placement,
    sandbox: &Sandbox<'_>,
    restart_policy: &str,
) {
    let now = Instant::now();
    // Collect exits first.
    for run in runs.iter_mut() {
        let Some(process) = run.process.as_mut() else {
            continue;
        };
        let Some(exit) = process.try_exit() else {
            continue;
        };
        let code = exit.code().unwrap_or(128 + exit_signal(&exit));
        let started = run.started_at.unwrap_or_else(Timestamp::now);
        run.last_exit = Some((code, started, Timestamp::now()));
        run.process = None;
        run.mounts = None;
        run.readiness = None;
        run.liveness = None;
        run.startup = None;
        let restart = match run.kind {
            Kind::Sidecar => true,
            Kind::Init => code != 0 && restart_policy != "Never",
            Kind::Main => match restart_policy {
                "Always" => true,
                "OnFailure" => code != 0,
                _ => false,
            },
        };
        if restart {
            let delay = BACKOFF_FIRST
                .saturating_mul(1u32 << run.restart_count.clamp(0, 10))
                .min(BACKOFF_CAP);
            run.next_start = Some(now + delay);
            run.restart_count += 1;
            tracing::info!(container = %run.spec.name, code, ?delay, "container exited; restarting after backoff");
        } else {
            run.finished = true;
            tracing::info!(container = %run.spec.name, code, "container exited");
        }
    }
    // Init containers and sidecars one after the other, each only once the one before it has
    // completed (init) or started (sidecar); main containers once all of them are through.
    for run in runs.iter_mut() {
        let due = !run.running() && !run.finished && run.next_start.is_none_or(|at| now >= at);
        if due {
            start(context, pod, run, placement, sandbox).await;
        }
        let blocked = match run.kind {
            Kind::Init => !(run.finished && run.last_exit.is_some_and(|(code, _, _)| code == 0)),
            Kind::Sidecar => !run.started(),
            Kind::Main => false,
        };
        if blocked {
            break;
        }
    }
}

fn exit_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal().unwrap_or(0)
}

/// What a container starts in: the pod's network, its volumes and its folder.
struct Sandbox<'a> {
    network: &'a PodNetwork,
    volumes: &'a PodVolumes,
    dir: &'a Path,
}

async fn start(
    context: &PodContext,
    pod: &Pod,
    run: &mut Run,
    placement: &Placement,
    sandbox: &Sandbox<'_>,
) {
    let dir = sandbox.dir;
    let sources = match fetch_sources(context, pod, &run.spec).await {
        Ok(sources) => sources,
        Err(why) => {
            run.waiting_reason = Some(("CreateContainerConfigError".into(), why));
            run.next_start = Some(Instant::now() + BACKOFF_FIRST);
            return;
        }
    };
    let env = match env::resolve(pod, &run.spec, placement, &sources) {
        Ok(env) => env,
        Err(why) => {
            run.waiting_reason = Some(("CreateContainerConfigError".into(), why));
            run.next_start = Some(Instant::now() + BACKOFF_FIRST);
            return;
        }
    };
    let image = run.spec.image.clone().unwrap_or_default();
    let expand = |items: &Option<Vec<String>>| -> Vec<String> {
        items
            .iter()
            .flatten()
            .map(|item| env::expand(item, &env))
            .collect()
    };
    let entrypoint =
        match context
            .images
            .entrypoint(&image, &expand(&run.spec.command), &expand(&run.spec.args))
        {
            Ok(entrypoint) => entrypoint,
            Err(why) => {
                run.waiting_reason = Some(("ErrImagePull".into(), why));
                run.next_start = Some(Instant::now() + BACKOFF_CAP);
                return;
            }
        };
    let workdir = run
        .spec
        .working_dir
        .as_ref()
        .map(PathBuf::from)
        .filter(|path| path.is_dir())
        .unwrap_or_else(|| dir.to_path_buf());
    let mounts = match container_mounts(&run.spec, sandbox) {
        Ok(mounts) => mounts,
        Err(why) => {
            run.waiting_reason = Some(("CreateContainerError".into(), why));
            run.next_start = Some(Instant::now() + BACKOFF_CAP);
            return;
        }
    };
    let mut command = std::process::Command::new(&entrypoint.program);
    command
        .args(&entrypoint.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&workdir);
    let enter = Enter {
        network: sandbox.network.namespace_file(),
        mounts: mounts.as_ref().map(MountNamespace::file),
    };
    if let Err(why) = enter.apply(&mut command, &workdir) {
        run.waiting_reason = Some(("CreateContainerError".into(), why));
        run.next_start = Some(Instant::now() + BACKOFF_CAP);
        return;
    }
    let log = dir.join(format!("{}.log", run.spec.name));
    match Spawned::start_command(&run.spec.name, command, &log) {
        Ok(process) => {
            let now = Instant::now();
            tracing::info!(container = %run.spec.name, pid = process.record.pid, program = %entrypoint.program.display(), "container started");
            run.process = Some(process);
            run.mounts = mounts;
            run.env = env;
            run.started_at = Some(Timestamp::now());
            run.started_instant = Some(now);
            run.waiting_reason = None;
            run.next_start = None;
            run.readiness = run
                .spec
                .readiness_probe
                .as_ref()
                .map(|p| ProbeState::new(p, now));
            // Liveness starts out passing: only failures count.
            run.liveness = run.spec.liveness_probe.as_ref().map(|p| {
                let mut state = ProbeState::new(p, now);
                state.passing = true;
                state
            });
            run.startup = run
                .spec
                .startup_probe
                .as_ref()
                .map(|p| ProbeState::new(p, now));
        }
        Err(err) => {
            run.waiting_reason = Some(("RunContainerError".into(), err.to_string()));
            run.next_start = Some(Instant::now() + BACKOFF_CAP);
        }
    }
}

async fn fetch_sources(
    context: &PodContext,
    pod: &Pod,
    container: &Container,
) -> Result<Sources, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (secret_names, config_map_names) = env::referenced(container);
    let mut sources = Sources::default();
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), namespace);
    for name in secret_names {
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(|err| format!("secret {name}: {err}"))?
        {
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .chain(secret.string_data.unwrap_or_default())
                .collect();
            sources.secrets.insert(name, data);
        }
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(context.client.clone(), namespace);
    for name in config_map_names {
        if let Some(config_map) = config_maps
            .get_opt(&name)
            .await
            .map_err(|err| format!("configMap {name}: {err}"))?
        {
            sources
                .config_maps
                .insert(name, config_map.data.unwrap_or_default());
        }
    }
    Ok(sources)
}

async fn run_probes(runs: &mut [Run], network: &PodNetwork, dir: &Path) {
    let now = Instant::now();
    for run in runs.iter_mut() {
        if !run.running() {
            continue;
        }
        let target_env = run.env.clone();
        let spec = run.spec.clone();
        let target = Target {
            pod_ip: &network.ip,
            container: &spec,
            env: &target_env,
            workdir: dir,
            enter: Enter {
                network: network.namespace_file(),
                mounts: run.mounts.as_ref().map(MountNamespace::file),
            },
        };
        // Startup first; readiness and liveness only once started.
        if let (Some(probe), Some(state)) = (&spec.startup_probe, run.startup.as_mut())
            && !state.passing
        {
            if state.due(now) {
                let result = run_handler(probe, &target).await;
                state.record(probe, now, result);
            }
            continue;
        }
        if let (Some(probe), Some(state)) = (&spec.readiness_probe, run.readiness.as_mut())
            && state.due(now)
        {
            let result = run_handler(probe, &target).await;
            if state.record(probe, now, result) {
                tracing::info!(container = %spec.name, ready = state.passing, "readiness changed");
            }
        }
        if let (Some(probe), Some(state)) = (&spec.liveness_probe, run.liveness.as_mut())
            && state.due(now)
        {
            let result = run_handler(probe, &target).await;
            if state.record(probe, now, result)
                && !state.passing
                && let Some(process) = &run.process
            {
                tracing::info!(container = %spec.name, "liveness probe failed; killing the container");
                process.signal(Signal::SIGKILL);
            }
        }
    }
}

async fn run_handler(
    probe: &k8s_openapi::api::core::v1::Probe,
    target: &Target<'_>,
) -> Result<(), String> {
    match Handler::of_probe(probe) {
        Some(handler) => probe::run(handler, target, probe::timeout(probe)).await,
        None => Ok(()),
    }
}

/// The pod status patch and whether the pod has finished (all main containers done for good).
fn status(
    pod: &Pod,
    runs: &[Run],
    pod_ip: &str,
    host_ip: &str,
    start_time: Timestamp,
    restart_policy: &str,
) -> (serde_json::Value, bool) {
    let mains: Vec<&Run> = runs.iter().filter(|run| run.kind == Kind::Main).collect();
    let initialized = runs.iter().all(|run| match run.kind {
        Kind::Init => run.finished && run.last_exit.is_some_and(|(code, _, _)| code == 0),
        Kind::Sidecar => run.started(),
        Kind::Main => true,
    });
    let containers_ready = runs
        .iter()
        .filter(|run| run.kind != Kind::Init)
        .all(Run::ready);
    let gates_pass = pod
        .spec
        .iter()
        .flat_map(|spec| spec.readiness_gates.iter().flatten())
        .all(|gate| {
            pod.status
                .iter()
                .flat_map(|status| status.conditions.iter().flatten())
                .any(|c| c.type_ == gate.condition_type && c.status == "True")
        });
    let init_failed = restart_policy == "Never"
        && runs.iter().any(|run| {
            run.kind == Kind::Init
                && run.finished
                && run.last_exit.is_some_and(|(code, _, _)| code != 0)
        });
    let done = init_failed || (!mains.is_empty() && mains.iter().all(|run| run.finished));
    let phase = if init_failed {
        "Failed"
    } else if done {
        if mains
            .iter()
            .all(|run| run.last_exit.is_some_and(|(code, _, _)| code == 0))
        {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized
        && mains
            .iter()
            .any(|run| run.running() || run.last_exit.is_some())
    {
        "Running"
    } else {
        "Pending"
    };
    let ready = containers_ready && gates_pass && !done;
    let condition = |type_: &str, value: bool| {
        let previous = pod
            .status
            .iter()
            .flat_map(|status| status.conditions.iter().flatten())
            .find(|c| c.type_ == type_);
        let status = if value { "True" } else { "False" };
        // Keep the transition time while the value holds, so an unchanged pod writes nothing.
        let transition = previous
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_else(|| Timestamp::now().to_string());
        serde_json::json!({"type": type_, "status": status, "lastTransitionTime": transition})
    };
    let container_status = |run: &Run| {
        let image = run.spec.image.clone().unwrap_or_default();
        let terminated = |(code, started, finished): (i32, Timestamp, Timestamp)| {
            serde_json::json!({"terminated": {
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started.to_string(),
                "finishedAt": finished.to_string(),
            }})
        };
        let state = if let (true, Some(started)) = (run.running(), run.started_at) {
            serde_json::json!({"running": {"startedAt": started.to_string()}})
        } else if run.finished
            && let Some(exit) = run.last_exit
        {
            terminated(exit)
        } else if let Some((reason, message)) = &run.waiting_reason {
            serde_json::json!({"waiting": {"reason": reason, "message": message}})
        } else if run.last_exit.is_some() {
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}})
        } else {
            serde_json::json!({"waiting": {"reason": "PodInitializing"}})
        };
        let mut value = serde_json::json!({
            "name": run.spec.name,
            "image": image,
            "imageID": format!("longconn://{image}"),
            "ready": run.ready(),
            "started": run.started(),
            "restartCount": run.restart_count,
            "state": state,
        });
        if let Some(process) = &run.process {
            value["containerID"] = serde_json::json!(format!("longconn://{}", process.record.pid));
        }
        if run.running()
            && let Some(exit) = run.last_exit
        {
            value["lastState"] = terminated(exit);
        }
        value
    };
    let init_statuses: Vec<serde_json::Value> = runs
        .iter()
        .filter(|run| run.kind != Kind::Main)
        .map(container_status)
        .collect();
    let main_statuses: Vec<serde_json::Value> =
        mains.iter().map(|run| container_status(run)).collect();
    let status = serde_json::json!({"status": {
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time.to_string(),
        "conditions": [
            condition("PodReadyToStartContainers", true),
            condition("Initialized", initialized),
            condition("ContainersReady", containers_ready && !done),
            condition("Ready", ready),
        ],
        "initContainerStatuses": init_statuses,
        "containerStatuses": main_statuses,
    }});
    (status, done)
}

/// Stops the pod for its deletion: main containers (preStop, SIGTERM, grace, SIGKILL) together,
/// then sidecars in reverse order with what is left of the grace period.
async fn terminate(pod: &Pod, runs: &mut [Run], dir: &Path, network: &PodNetwork) {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(grace);
    tracing::info!(grace, "terminating");
    stop_runs(runs, Kind::Main, deadline, network, dir).await;
    stop_runs(
        runs,
        Kind::Sidecar,
        deadline.max(Instant::now() + SIDECAR_MIN_GRACE),
        network,
        dir,
    )
    .await;
    for run in runs.iter_mut() {
        if let Some(process) = &run.process {
            process.signal(Signal::SIGKILL);
        }
    }
}

/// preStop, SIGTERM, wait until `deadline`, SIGKILL, for every running container of `kind`
/// (sidecars one after the other, latest first; main containers together).
async fn stop_runs(
    runs: &mut [Run],
    kind: Kind,
    deadline: Instant,
    network: &PodNetwork,
    dir: &Path,
) {
    let mut order: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].kind == kind && runs[i].running())
        .collect();
    if kind == Kind::Sidecar {
        order.reverse();
        for index in order {
            stop_one(&mut runs[index], deadline, network, dir).await;
        }
        return;
    }
    let stops = runs
        .iter_mut()
        .filter(|run| run.kind == kind && run.running())
        .map(|run| stop_one(run, deadline, network, dir));
    futures::future::join_all(stops).await;
}

async fn stop_one(run: &mut Run, deadline: Instant, network: &PodNetwork, dir: &Path) {
    if let Some(hook) = run
        .spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        let env = run.env.clone();
        let spec = run.spec.clone();
        let target = Target {
            pod_ip: &network.ip,
            container: &spec,
            env: &env,
            workdir: dir,
            enter: Enter {
                network: network.namespace_file(),
                mounts: run.mounts.as_ref().map(MountNamespace::file),
            },
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let result = if let Some(sleep) = &hook.sleep {
            let wanted = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
            tokio::time::sleep(wanted.min(left)).await;
            Ok(())
        } else if let Some(http) = &hook.http_get {
            probe::run(Handler::Http(http), &target, left).await
        } else if let Some(tcp) = &hook.tcp_socket {
            probe::run(Handler::Tcp(tcp), &target, left).await
        } else if let Some(exec) = &hook.exec {
            probe::run(Handler::Exec(exec), &target, left).await
        } else {
            Ok(())
        };
        if let Err(why) = result {
            tracing::warn!(container = %spec.name, %why, "preStop hook failed");
        }
    }
    let Some(process) = run.process.as_mut() else {
        return;
    };
    process.signal(Signal::SIGTERM);
    while process.group_alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if process.group_alive() {
        tracing::info!(container = %run.spec.name, "grace period over; SIGKILL");
        process.signal(Signal::SIGKILL);
        let until = Instant::now() + Duration::from_secs(5);
        while process.group_alive() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let code = process
        .try_exit()
        .map(|exit| exit.code().unwrap_or(128 + exit_signal(&exit)))
        .unwrap_or(137);
    run.last_exit = Some((
        code,
        run.started_at.unwrap_or_else(Timestamp::now),
        Timestamp::now(),
    ));
    run.process = None;
    run.mounts = None;
    run.finished = true;
}

/// The kubelet's last word on a pod: delete the object with no further grace, for this very pod
/// (UID precondition), ignoring that it is already gone.
async fn delete_final(context: &PodContext, pod: &Pod) {
    let pods: Api<Pod> = Api::namespaced(
        context.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    match pods.delete(&name, &params).await {
        Ok(_) => tracing::info!("deleted"),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(err) => tracing::warn!(%err, "final deletion failed"),
    }
}

/// The container's mount namespace with its `volumeMounts`, when pods have namespaces (with
/// 127.x pod IPs there is no isolation, and volumes stay in the pod folder only).
fn container_mounts(
    container: &Container,
    sandbox: &Sandbox<'_>,
) -> Result<Option<MountNamespace>, String> {
    if sandbox.network.namespace_file().is_none() {
        return Ok(None);
    }
    let mounts: Vec<Mount> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| Mount {
            source: match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) => sandbox.volumes.path(&mount.name).join(sub),
                None => sandbox.volumes.path(&mount.name),
            },
            target: PathBuf::from(&mount.mount_path),
            read_only: mount.read_only == Some(true),
        })
        .collect();
    let scratch = sandbox.dir.join("mounts").join(&container.name);
    MountNamespace::create(&mounts, &scratch).map(Some)
}

/// Inside the pod's network namespace, listens on the API server's own address (127.0.0.1 and
/// its port) and forwards each connection to it, so in-cluster clients work unchanged. The task
/// ends when the returned guard drops.
fn api_forwarder(context: &PodContext, network: &PodNetwork) -> Option<AbortOnDrop> {
    network.namespace_file()?;
    let ip: std::net::IpAddr = context.apiserver_host.parse().ok()?;
    let address = std::net::SocketAddr::new(ip, context.apiserver_port);
    let listener = match network
        .listen(address)
        .and_then(tokio::net::TcpListener::from_std)
    {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(%err, "no API server forwarder in the pod");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(address).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Some(AbortOnDrop(task))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
