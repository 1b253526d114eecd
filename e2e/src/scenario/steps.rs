//! The steps scenarios share: deploy a LongConnService and wait for its pods, start the load
//! against it, change its template, and wait for a rollout to end one way or another.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use super::ScenarioError;
use super::harness::Harness;
use super::service::{Observed, PodView, ServiceSpec};
use super::wait::{Check, wait_until};
use crate::load::{self, LoadOptions, Route, RunningLoad};

/// How long new pods may take to become Ready.
const PODS_READY: Duration = Duration::from_secs(180);
/// How long a rollout may take in any scenario.
pub const ROLLOUT: Duration = Duration::from_secs(300);
/// Once the pods have settled, how long the operator gets to record the end of the rollout.
const RECORD_GRACE: Duration = Duration::from_secs(30);
/// How long the proxies are given to follow an EndpointSlice change (kube-proxy applies them at
/// most once a second by default; the operator waits as long, `placement::SETTLE`).
const PROXY_SETTLE: Duration = Duration::from_secs(2);
/// How long a fresh service's client Service may take to list every pod.
const ALL_ACCEPTING: Duration = Duration::from_secs(60);

/// A LongConnService whose pods are all Ready.
#[derive(Clone, Debug)]
pub struct Deployed {
    /// The revision label of its pods.
    pub revision: String,
    pub pods: Vec<PodView>,
}

impl Deployed {
    /// The pod IPs.
    pub fn ips(&self) -> BTreeSet<String> {
        self.pods.iter().filter_map(|p| p.ip.clone()).collect()
    }

    /// The pod names.
    pub fn names(&self) -> BTreeSet<String> {
        self.pods.iter().map(|p| p.name.clone()).collect()
    }
}

/// Creates the namespace, applies `spec`, and waits until `spec.replicas` pods of one revision
/// are Ready and in the Service's EndpointSlices, and the CA the clients verify exists.
pub async fn deploy(harness: &Harness, spec: &ServiceSpec) -> Result<Deployed, ScenarioError> {
    harness.create_namespace(&spec.namespace).await?;
    spec.apply(&harness.client()).await?;
    let deployed = wait_settled(harness, spec, None).await?;
    let secrets: Api<Secret> = Api::namespaced(harness.client(), &spec.namespace);
    let secret = format!("{}-tls", spec.name);
    wait_until(
        &format!("Secret {}/{secret} with ca.crt", spec.namespace),
        Duration::from_secs(60),
        || async {
            let found = secrets
                .get_opt(&secret)
                .await
                .map_err(ScenarioError::kube(format!("get Secret {secret}")))?;
            Ok(
                if found
                    .and_then(|s| s.data)
                    .is_some_and(|d| d.contains_key("ca.crt"))
                {
                    Check::Done(())
                } else {
                    Check::NotYet("missing".into())
                },
            )
        },
    )
    .await?;
    wait_all_accepting(harness, spec, &deployed).await?;
    Ok(deployed)
}

/// Waits until the client Service of a service just deployed lists every pod as ready, then
/// [`PROXY_SETTLE`] for the proxies: the first sessions then spread over every pod. (The client
/// Service's EndpointSlice can follow the pods a moment after the metrics Service's; a load
/// started in between puts its first sessions on the pods listed already, an imbalance that a
/// rollout moving each session once inherits.)
async fn wait_all_accepting(
    harness: &Harness,
    spec: &ServiceSpec,
    deployed: &Deployed,
) -> Result<(), ScenarioError> {
    let slices: Api<EndpointSlice> = Api::namespaced(harness.client(), &spec.namespace);
    let ips: BTreeSet<String> = deployed.pods.iter().filter_map(|p| p.ip.clone()).collect();
    let what = format!(
        "every pod of {}/{} in the client Service's EndpointSlices",
        spec.namespace, spec.name
    );
    wait_until(&what, ALL_ACCEPTING, || async {
        let accepting = ready_endpoints(&slices, &spec.name).await?;
        Ok(if accepting == ips {
            Check::Done(())
        } else {
            Check::NotYet(format!("accepting {accepting:?}, pod IPs {ips:?}"))
        })
    })
    .await?;
    tokio::time::sleep(PROXY_SETTLE).await;
    Ok(())
}

/// Waits until exactly `spec.replicas` pods exist, none terminating, all Ready, all of one
/// revision (`revision`, when given), the EndpointSlices of `<name>-metrics` (which selects
/// every pod) list them all as ready, and the client Service lists some of them: the operator
/// takes a pod that holds more than its share out of the client Service (label
/// `longconn.dev/accepting`) without touching its readiness.
pub async fn wait_settled(
    harness: &Harness,
    spec: &ServiceSpec,
    revision: Option<&str>,
) -> Result<Deployed, ScenarioError> {
    let client = harness.client();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &spec.namespace);
    let what = format!(
        "{} Ready pods of {}/{}{} in the EndpointSlices",
        spec.replicas,
        spec.namespace,
        spec.name,
        revision.map_or(String::new(), |r| format!(" at revision {r}"))
    );
    wait_until(&what, PODS_READY, || async {
        let pods = spec.pods(&client).await?;
        let revisions: BTreeSet<&str> = pods.iter().map(|p| p.revision.as_str()).collect();
        let settled = pods.len() == usize::try_from(spec.replicas).unwrap_or(0)
            && pods.iter().all(|p| p.ready && !p.terminating)
            && revisions.len() == 1
            && revision.is_none_or(|r| revisions.contains(r));
        if !settled {
            return Ok(Check::NotYet(describe_pods(&pods)));
        }
        let ready = ready_endpoints(&slices, &format!("{}-metrics", spec.name)).await?;
        let accepting = ready_endpoints(&slices, &spec.name).await?;
        let ips: BTreeSet<String> = pods.iter().filter_map(|p| p.ip.clone()).collect();
        if ready != ips || accepting.is_empty() || !accepting.is_subset(&ips) {
            return Ok(Check::NotYet(format!(
                "pods settled; ready endpoints {ready:?}, accepting {accepting:?}, pod IPs {ips:?}"
            )));
        }
        let revision = pods[0].revision.clone();
        Ok(Check::Done(Deployed { revision, pods }))
    })
    .await
}

/// The Ready, non-terminating endpoint addresses of Service `service`.
async fn ready_endpoints(
    slices: &Api<EndpointSlice>,
    service: &str,
) -> Result<BTreeSet<String>, ScenarioError> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(ScenarioError::kube(format!(
            "list the EndpointSlices of {service}"
        )))?;
    Ok(list
        .items
        .into_iter()
        .flat_map(|s| s.endpoints.into_iter().flatten())
        .filter(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            c.ready != Some(false) && c.terminating != Some(true)
        })
        .flat_map(|e| e.addresses)
        .collect())
}

/// One line per pod for wait messages.
pub fn describe_pods(pods: &[PodView]) -> String {
    let lines: Vec<String> = pods
        .iter()
        .map(|p| {
            format!(
                "{} rev {} {}{}",
                p.name,
                p.revision,
                if p.ready { "Ready" } else { "not Ready" },
                if p.terminating { " terminating" } else { "" }
            )
        })
        .collect();
    format!("{} pods: [{}]", pods.len(), lines.join(", "))
}

/// Starts `sessions` load sessions (`close_ignoring` of them ignoring close frames) at 1
/// message per second each, sending until stopped, from the cluster's client host along
/// `route`, and waits until each has connected once.
pub async fn start_load(
    harness: &Harness,
    spec: &ServiceSpec,
    sessions: usize,
    close_ignoring: usize,
    progress: bool,
    route: Route,
) -> Result<RunningLoad, ScenarioError> {
    let mut options = LoadOptions::new(&spec.namespace, &spec.name);
    options.sessions = sessions;
    options.close_ignoring = close_ignoring;
    options.rate = 1.0;
    options.duration = load::MAX_DURATION;
    options.progress = progress;
    options.route = route;
    start_load_with(harness, options).await
}

/// Starts the load `options` describe from the cluster's client host and waits until each of
/// its sessions has connected once.
pub async fn start_load_with(
    harness: &Harness,
    options: LoadOptions,
) -> Result<RunningLoad, ScenarioError> {
    let sessions = options.sessions;
    let running = harness.start_load(options).await?;
    let expected = sessions as u64;
    wait_until(
        &format!("{sessions} load sessions connected"),
        Duration::from_secs(60),
        || async {
            let report = running.report();
            Ok(if report.connections + report.dropped >= expected {
                Check::Done(())
            } else {
                Check::NotYet(format!(
                    "{} connections, {} dropped",
                    report.connections, report.dropped
                ))
            })
        },
    )
    .await?;
    Ok(running)
}

/// Changes the pod template (the app's environment) and waits until the operator names the new
/// revision in `status.updateRevision` (or, failing that, a pod of another revision exists).
pub async fn change_template(
    harness: &Harness,
    spec: &mut ServiceSpec,
    old_revision: &str,
) -> Result<String, ScenarioError> {
    spec.revision += 1;
    spec.apply(&harness.client()).await?;
    new_revision(harness, spec, old_revision).await
}

/// Waits until a revision other than `old_revision` is named in status or on a pod.
pub async fn new_revision(
    harness: &Harness,
    spec: &ServiceSpec,
    old_revision: &str,
) -> Result<String, ScenarioError> {
    let client = harness.client();
    wait_until(
        &format!(
            "a revision other than {old_revision} for {}/{}",
            spec.namespace, spec.name
        ),
        Duration::from_secs(60),
        || async {
            let observed = spec.observe(&client).await?;
            if let Some(revision) = observed.update_revision()
                && revision != old_revision
            {
                return Ok(Check::Done(revision));
            }
            let pods = spec.pods(&client).await?;
            if let Some(pod) = pods.iter().find(|p| p.revision != old_revision) {
                return Ok(Check::Done(pod.revision.clone()));
            }
            Ok(Check::NotYet(observed.summary()))
        },
    )
    .await
}

/// After a template change that produced `new_revision`, waits (at most `within`) until the
/// resource reports Progressing=False with `reason`.
pub async fn wait_stopped(
    harness: &Harness,
    spec: &ServiceSpec,
    new_revision: &Result<String, ScenarioError>,
    reason: &str,
    within: Duration,
) -> Result<Observed, ScenarioError> {
    if new_revision.is_err() {
        return Err(ScenarioError::Setup("no new revision".into()));
    }
    let client = harness.client();
    wait_until(
        &format!("Progressing=False with reason {reason}"),
        within,
        || async {
            let observed = spec.observe(&client).await?;
            Ok(if observed.stopped_with(reason) {
                Check::Done(observed)
            } else {
                Check::NotYet(observed.summary())
            })
        },
    )
    .await
}

/// How a rollout ended.
#[derive(Clone, Debug)]
pub enum RolloutEnd {
    /// `status.rollout` of the new revision says Complete and no old pod is left.
    Complete(Observed),
    /// The rollout stopped: Progressing=False or phase Paused.
    Stopped(Observed),
    /// The pods settled at the new revision, but within the grace the operator recorded no
    /// Complete rollout for it.
    Unrecorded(Observed),
}

impl RolloutEnd {
    pub fn observed(&self) -> &Observed {
        match self {
            RolloutEnd::Complete(o) | RolloutEnd::Stopped(o) | RolloutEnd::Unrecorded(o) => o,
        }
    }
}

/// Waits (at most [`ROLLOUT`]) until the rollout to `new_revision` completes, stops, or settles
/// without a record.
pub async fn wait_rollout(
    harness: &Harness,
    spec: &ServiceSpec,
    old_revision: &str,
    new_revision: &str,
) -> Result<RolloutEnd, ScenarioError> {
    let client = harness.client();
    let settled_at: Mutex<Option<tokio::time::Instant>> = Mutex::new(None);
    wait_until(
        &format!(
            "the rollout of {}/{} from {old_revision} to {new_revision} to end",
            spec.namespace, spec.name
        ),
        ROLLOUT,
        || {
            let client = client.clone();
            let settled_at = &settled_at;
            async move {
                let observed = spec.observe(&client).await?;
                let pods = spec.pods(&client).await?;
                let old_left = pods.iter().any(|p| p.revision == old_revision);
                let rollout = observed.rollout();
                let phase = rollout.as_ref().and_then(|r| r.phase());
                let of_new = rollout
                    .as_ref()
                    .is_some_and(|r| r.revision().as_deref() == Some(new_revision));
                if of_new && phase.as_deref() == Some("Complete") && !old_left {
                    return Ok(Check::Done(RolloutEnd::Complete(observed)));
                }
                let progressing = observed.condition("Progressing");
                if progressing.as_ref().is_some_and(|c| c.status == "False")
                    || (of_new && phase.as_deref() == Some("Paused"))
                {
                    return Ok(Check::Done(RolloutEnd::Stopped(observed)));
                }
                let new_ready = pods
                    .iter()
                    .filter(|p| p.revision == new_revision && p.ready && !p.terminating)
                    .count();
                let settled = !old_left && new_ready == usize::try_from(spec.replicas).unwrap_or(0);
                let since = match settled_at.lock() {
                    Ok(mut at) if settled => *at.get_or_insert_with(tokio::time::Instant::now),
                    Ok(mut at) => {
                        *at = None;
                        tokio::time::Instant::now()
                    }
                    Err(_) => tokio::time::Instant::now(),
                };
                if settled && since.elapsed() >= RECORD_GRACE {
                    return Ok(Check::Done(RolloutEnd::Unrecorded(observed)));
                }
                Ok(Check::NotYet(format!(
                    "{}; {}",
                    observed.summary(),
                    describe_pods(&pods)
                )))
            }
        },
    )
    .await
}

/// Sleeps `duration`, failing early if the operator exits meanwhile.
pub async fn run_for(harness: &mut Harness, duration: Duration) -> Result<(), ScenarioError> {
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        harness.check_operator().await?;
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_secs(1)))
            .await;
    }
    Ok(())
}
