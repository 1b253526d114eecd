//! autoscale-cpu: autoscaling on CPU, read from the resource metrics API (metrics-server, which
//! the cluster runs), under a message load the clients keep up. One pod to begin with, CPU
//! requests of [`APP_CPU`] on the app and [`GATEWAY_CPU`] on the gateway, and
//! [`SESSIONS`] sessions sending [`RATE`] messages per second each. Two phases:
//!
//! 1. CPU alone, `autoscaling: {minReplicas: 1, maxReplicas: 3, targetCPUUtilization: 50}`: the
//!    operator makes a HorizontalPodAutoscaler named after the LongConnService, and the HPA
//!    controller scales it through the scale subresource. Passes when the HPA exists and
//!    `spec.replicas` rises above 1 within [`SCALE_UP_WITHIN`] of the load's start.
//! 2. Both targets: `targetSessionsPerPod` [`SESSIONS_TARGET`] (the sessions never ask for a
//!    second pod) beside the CPU target. The operator then scales on the larger of the two
//!    recommendations itself: it deletes its HPA (within [`HPA_GONE_WITHIN`]), and while the
//!    load holds ([`HOLD`]) `spec.replicas` stays above 1 in every sample and
//!    `status.autoscaling.cpuUtilization` is reported; a decision of the operator's that keeps
//!    more than one pod names CPU in its reason. Once the load stops, `spec.replicas` comes back
//!    to 1 with its pods drained within [`SCALE_DOWN_WITHIN`] (the scale-down window shortened
//!    to [`SCALE_DOWN_WINDOW`]).
//!
//! Throughout: every session opened, none dropped, no message lost. Reported besides: the pods'
//! CPU use per container as metrics-server serves it (`podMetrics*`: idle, under load, after
//! the scale-up, at the end of the hold), the HPA's status, and replicas, pods and the
//! operator's CPU utilization every second (`replicasOverTime`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Api;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::autoscale::{Sample, Sampler, replicas, wait_replicas};
use super::harness::Harness;
use super::service::{Resources, ServiceSpec};
use super::steps;
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport, round};
use crate::load::{self, LoadOptions, Route};

const MIN_REPLICAS: i32 = 1;
const MAX_REPLICAS: i32 = 3;
const TARGET_CPU_UTILIZATION: i32 = 50;
/// Phase 2's session target: far above what the load opens, so only CPU asks for pods. The
/// highest allowed: `gateway.maxConnections` (5000 in the scenarios).
const SESSIONS_TARGET: i64 = 5000;
/// The CPU requests, small so that a load this machine sustains beside the cluster passes the
/// target.
const APP_CPU: &str = "20m";
const GATEWAY_CPU: &str = "20m";
/// The load: sessions, and messages per second each.
const SESSIONS: usize = 40;
const RATE: f64 = 25.0;
/// Shortened from the default 300s, so that the scale-down comes within the scenario.
const SCALE_DOWN_WINDOW: &str = "15s";
/// The rebalancing's spread, which must not exceed `drain.timeout` (20s; the default is 30s).
const REBALANCE_SPREAD: &str = "5s";
/// How long the pods' use before the load is waited for (reported, not judged).
const IDLE_METRICS_WITHIN: Duration = Duration::from_secs(40);
/// From the load's start to `spec.replicas` above 1: two scrapes of metrics-server (10 s
/// apart), the HPA controller's sync (15 s) and slack for a loaded machine.
const SCALE_UP_WITHIN: Duration = Duration::from_secs(180);
/// How long the operator may take to delete its HPA once both targets are set.
const HPA_GONE_WITHIN: Duration = Duration::from_secs(60);
/// How long phase 2 keeps the load on, judged on every sample after [`SETTLE`].
const HOLD: Duration = Duration::from_secs(60);
/// From the change to both targets to the first sample judged: the operator's next reconcile.
const SETTLE: Duration = Duration::from_secs(15);
/// From the load's stop to one Ready pod: the window, a fresh CPU reading and the drains.
const SCALE_DOWN_WITHIN: Duration = Duration::from_secs(150);

/// `spec.autoscaling` of phase 1.
fn cpu_alone() -> Value {
    json!({
        "minReplicas": MIN_REPLICAS,
        "maxReplicas": MAX_REPLICAS,
        "targetCPUUtilization": TARGET_CPU_UTILIZATION,
        "behavior": {"scaleDown": {"stabilizationWindow": SCALE_DOWN_WINDOW}},
        "rebalance": {"spread": REBALANCE_SPREAD},
    })
}

/// The requests of the app and the gateway.
fn resources() -> Resources {
    Resources {
        app: json!({"requests": {"cpu": APP_CPU, "memory": "16Mi"}}),
        gateway: json!({"requests": {"cpu": GATEWAY_CPU, "memory": "64Mi"}}),
    }
}

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.replicas = MIN_REPLICAS;
    spec.autoscaling = Some(cpu_alone());
    spec.resources = Some(resources());
    report.detail("autoscaling", &spec.autoscaling);
    report.detail(
        "load",
        json!({"sessions": SESSIONS, "messagesPerSecondEach": RATE,
               "cpuRequests": {"app": APP_CPU, "gateway": GATEWAY_CPU}}),
    );
    let deployed = steps::deploy(harness, &spec).await?;
    report.detail("podsBefore", &deployed.pods);
    report.detail("podMetricsIdle", idle_metrics(harness, &spec).await);

    let mut options = LoadOptions::new(&spec.namespace, &spec.name);
    options.sessions = SESSIONS;
    options.rate = RATE;
    options.duration = load::MAX_DURATION;
    options.progress = context.progress;
    options.route = Route::ClusterIp;
    let load = steps::start_load_with(harness, options).await?;
    let clock = Instant::now();
    let offered = Arc::new(AtomicU64::new(SESSIONS as u64));
    let sampler = Sampler::start(harness.client(), spec.clone(), clock, offered.clone());
    let outcome = phases(harness, report, &spec, clock, &sampler, || {
        load.stop();
        offered.store(0, Ordering::Relaxed);
    })
    .await;
    load.stop();
    report.client(load.finish().await);
    report.detail("replicasOverTime", sampler.finish());
    outcome?;
    report.expect_clean_clients(SESSIONS);
    Ok(())
}

/// The two phases up to the verdict; `stop_load` ends the load when phase 2 has held it.
async fn phases(
    harness: &mut Harness,
    report: &mut ScenarioReport,
    spec: &ServiceSpec,
    clock: Instant,
    sampler: &Sampler,
    stop_load: impl FnOnce(),
) -> Result<(), ScenarioError> {
    let client = harness.client();
    let at = || round(clock.elapsed().as_secs_f64());
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &spec.namespace);

    // Phase 1: the HPA scales on CPU.
    steps::run_for(harness, Duration::from_secs(25)).await?;
    report.detail(
        "podMetricsUnderLoad",
        pod_metrics(&client, &spec.namespace).await,
    );
    let scaled_up = wait_until(
        &format!(
            "spec.replicas of {}/{} above {MIN_REPLICAS} and its HPA",
            spec.namespace, spec.name
        ),
        SCALE_UP_WITHIN.saturating_sub(clock.elapsed()),
        || async {
            let observed = spec.observe(&client).await?;
            let hpa = hpa_status(&hpas, &spec.name).await?;
            let replicas = replicas(&observed);
            Ok(match (&hpa, replicas) {
                (Some(_), Some(n)) if n > i64::from(MIN_REPLICAS) => Check::Done(n),
                _ => Check::NotYet(format!("spec.replicas {replicas:?}, HPA status {hpa:?}")),
            })
        },
    )
    .await;
    report.detail("hpaAfterScaleUp", hpa_status(&hpas, &spec.name).await?);
    match scaled_up {
        Ok(n) => {
            report.detail("timeToScaleUpSeconds", at());
            report.detail("replicasAfterScaleUp", n);
        }
        Err(timeout @ ScenarioError::Timeout { .. }) => report.failures.push(timeout.to_string()),
        Err(err) => return Err(err),
    }
    steps::run_for(harness, Duration::from_secs(10)).await?;
    report.detail(
        "podMetricsAfterScaleUp",
        pod_metrics(&client, &spec.namespace).await,
    );

    // Phase 2: both targets; the operator alone writes spec.replicas.
    let both = clock.elapsed();
    report.detail("bothTargetsSeconds", round(both.as_secs_f64()));
    spec.merge(
        &client,
        json!({"spec": {"autoscaling": {"targetSessionsPerPod": SESSIONS_TARGET}}}),
    )
    .await?;
    let hpa_gone = wait_until(
        &format!("no HPA {}/{}", spec.namespace, spec.name),
        HPA_GONE_WITHIN,
        || async {
            Ok(match hpa_status(&hpas, &spec.name).await? {
                None => Check::Done(()),
                Some(status) => Check::NotYet(format!("HPA status {status}")),
            })
        },
    )
    .await;
    if let Err(err) = hpa_gone {
        report.failures.push(err.to_string());
    }
    steps::run_for(harness, HOLD.saturating_sub(clock.elapsed() - both)).await?;
    let held = clock.elapsed();
    let observed = spec.observe(&client).await?;
    report.detail(
        "podMetricsEndOfHold",
        pod_metrics(&client, &spec.namespace).await,
    );
    report.detail(
        "autoscalingStatusEndOfHold",
        observed.at("/status/autoscaling"),
    );
    let judged = from_seconds(&sampler.samples(), (both + SETTLE).as_secs_f64());
    expect_cpu_held(report, &judged);
    expect_decision_names_cpu(report, observed.at("/status/autoscaling/lastDecision"));

    stop_load();
    report.detail("loadStoppedSeconds", round(held.as_secs_f64()));
    let scaled_down = wait_replicas(harness, spec, MIN_REPLICAS, SCALE_DOWN_WITHIN).await;
    match scaled_down {
        Ok(_) => report.detail(
            "timeToScaleDownSeconds",
            round((clock.elapsed() - held).as_secs_f64()),
        ),
        Err(timeout @ ScenarioError::Timeout { .. }) => report.failures.push(timeout.to_string()),
        Err(err) => return Err(err),
    }
    let end = spec.observe(&client).await?;
    report.detail("autoscalingStatusAtEnd", end.at("/status/autoscaling"));
    Ok(())
}

/// The HPA `name`'s status, `None` when there is no such HPA.
async fn hpa_status(
    hpas: &Api<HorizontalPodAutoscaler>,
    name: &str,
) -> Result<Option<Value>, ScenarioError> {
    let found = hpas
        .get_opt(name)
        .await
        .map_err(ScenarioError::kube(format!("get HPA {name}")))?;
    Ok(found.map(|hpa| serde_json::to_value(hpa.status).unwrap_or(Value::Null)))
}

/// The samples taken from `seconds` on.
fn from_seconds(samples: &[Sample], seconds: f64) -> Vec<Sample> {
    samples.iter().filter(|s| s.t >= seconds).cloned().collect()
}

/// While the load held with both targets, `spec.replicas` stayed above 1 in every sample (the
/// sessions ask for 1 pod, so CPU held them) and the operator reported its CPU utilization.
fn expect_cpu_held(report: &mut ScenarioReport, samples: &[Sample]) {
    report.expect(
        !samples.is_empty(),
        "no sample of spec.replicas while the load held with both targets",
    );
    let low: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.replicas.is_none_or(|n| n <= i64::from(MIN_REPLICAS)))
        .collect();
    report.expect(
        low.is_empty(),
        format!(
            "with both targets and the load on, spec.replicas was {MIN_REPLICAS} or unread in {} of {} samples, the first: {:?}",
            low.len(),
            samples.len(),
            low.first()
        ),
    );
    report.expect(
        samples.iter().any(|s| s.cpu_utilization.is_some()),
        "with both targets the operator never reported status.autoscaling.cpuUtilization",
    );
}

/// A decision of the operator's that keeps more than one pod while the sessions ask for one
/// was CPU's, and says so.
fn expect_decision_names_cpu(report: &mut ScenarioReport, decision: Option<&Value>) {
    report.detail("lastDecisionEndOfHold", decision);
    let Some(decision) = decision else {
        return;
    };
    let replicas = decision.get("replicas").and_then(Value::as_i64);
    let reason = decision
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    report.expect(
        replicas.is_none_or(|n| n <= i64::from(MIN_REPLICAS)) || reason.contains("CPU"),
        format!("the decision to {replicas:?} replicas does not name CPU: {reason:?}"),
    );
}

/// CPU and memory per container of every pod in `namespace`, as `metrics.k8s.io` serves them
/// (`{pod: {container: {cpu, memory}}}`), or why they could not be read.
async fn pod_metrics(client: &kube::Client, namespace: &str) -> Value {
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
    let request = match http::Request::get(&path).body(Vec::new()) {
        Ok(request) => request,
        Err(err) => return json!({"error": err.to_string()}),
    };
    match client.request::<Value>(request).await {
        Ok(list) => usage_by_pod(&list),
        Err(err) => json!({"error": err.to_string()}),
    }
}

/// The pods' use before the load, once metrics-server serves it (it needs two readings of a new
/// pod; at most [`IDLE_METRICS_WITHIN`]), or what was served then.
async fn idle_metrics(harness: &Harness, spec: &ServiceSpec) -> Value {
    let client = harness.client();
    let served = wait_until(
        &format!("PodMetrics of the pods of {}/{}", spec.namespace, spec.name),
        IDLE_METRICS_WITHIN,
        || async {
            let metrics = pod_metrics(&client, &spec.namespace).await;
            Ok(match metrics.as_object() {
                Some(pods) if !pods.is_empty() && !pods.contains_key("error") => {
                    Check::Done(metrics)
                }
                _ => Check::NotYet(metrics.to_string()),
            })
        },
    )
    .await;
    match served {
        Ok(metrics) => metrics,
        Err(_) => pod_metrics(&client, &spec.namespace).await,
    }
}

/// A PodMetricsList as `{pod: {container: usage}}`.
fn usage_by_pod(list: &Value) -> Value {
    let mut pods = serde_json::Map::new();
    for item in list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let containers: serde_json::Map<String, Value> = item
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                (
                    name.to_owned(),
                    c.get("usage").cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        pods.insert(name.to_owned(), Value::Object(containers));
    }
    Value::Object(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, replicas: i64, cpu: Option<i64>) -> Sample {
        Sample {
            t,
            replicas: Some(replicas),
            desired: None,
            cpu_utilization: cpu,
            pods: 0,
            ready: 0,
            terminating: 0,
            sessions: SESSIONS as u64,
        }
    }

    #[test]
    fn the_sessions_never_ask_for_a_second_pod() {
        assert!((SESSIONS as i64) < SESSIONS_TARGET);
    }

    #[test]
    fn cpu_holds_the_replicas_only_when_every_sample_is_above_one() {
        let judge = |samples: &[Sample]| {
            let mut report = ScenarioReport::default();
            expect_cpu_held(&mut report, samples);
            report.failures
        };
        assert!(judge(&[sample(30.0, 3, Some(80)), sample(31.0, 2, Some(60))]).is_empty());
        let dipped = judge(&[sample(30.0, 3, Some(80)), sample(31.0, 1, Some(60))]);
        assert!(
            dipped.len() == 1 && dipped[0].contains("in 1 of 2 samples"),
            "{dipped:?}"
        );
        let unreported = judge(&[sample(30.0, 2, None)]);
        assert!(
            unreported.len() == 1 && unreported[0].contains("cpuUtilization"),
            "{unreported:?}"
        );
        assert_eq!(judge(&[]).len(), 2);
        assert_eq!(from_seconds(&[sample(1.0, 1, None)], 2.0), Vec::new());
    }

    #[test]
    fn a_decision_for_more_pods_must_name_cpu() {
        let judge = |decision: Value| {
            let mut report = ScenarioReport::default();
            expect_decision_names_cpu(&mut report, Some(&decision));
            report.failures.len()
        };
        assert_eq!(
            judge(json!({"replicas": 3, "reason": "CPU 80% over the 50% target"})),
            0
        );
        assert_eq!(judge(json!({"replicas": 3, "reason": "sessions"})), 1);
        assert_eq!(judge(json!({"replicas": 1, "reason": "sessions"})), 0);
    }

    #[test]
    fn pod_metrics_are_read_per_pod_and_container() {
        let list = json!({"items": [{
            "metadata": {"name": "chat-a"},
            "containers": [
                {"name": "app", "usage": {"cpu": "3m", "memory": "2Mi"}},
                {"name": "gateway", "usage": {"cpu": "12m", "memory": "9Mi"}},
            ],
        }]});
        assert_eq!(
            usage_by_pod(&list),
            json!({"chat-a": {"app": {"cpu": "3m", "memory": "2Mi"},
                              "gateway": {"cpu": "12m", "memory": "9Mi"}}})
        );
    }
}
