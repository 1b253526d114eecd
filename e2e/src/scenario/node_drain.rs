//! node-drain: `kubectl drain` of a node holding one of 3 pods, under 300 live sessions: the
//! eviction API respects the PodDisruptionBudget, the evicted pod's preStop hook drains its
//! gateway and its sessions move to the others. Passes when the clients counted no dropped
//! session and no lost message, and every session moved once and landed where there was room
//! (the bounds of [`super::landing`]; the balance over the pods left); reports what the operator
//! recorded (a drain it did not start).

use std::time::Duration;

use super::harness::Harness;
use super::landing;
use super::service::{Recorded, ServiceSpec};
use super::steps;
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 300;
/// How long the operator gets to record the drain once the pods settled.
const RECORD_GRACE: Duration = Duration::from_secs(15);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let spec = ServiceSpec::new(&context.namespace);
    let before = steps::deploy(harness, &spec).await?;
    report.detail("podsBefore", &before.pods);
    let Some(node) = before.pods.iter().find_map(|p| p.node.clone()) else {
        return Err(ScenarioError::Setup("no pod is bound to a node".into()));
    };
    let evicted: Vec<String> = before
        .pods
        .iter()
        .filter(|p| p.node.as_deref() == Some(node.as_str()))
        .map(|p| p.name.clone())
        .collect();
    report.detail("node", &node);
    report.detail("evictedPods", &evicted);
    let baseline = spec.observe(&harness.client()).await?.rollout();
    let load = steps::start_load(
        harness,
        &spec,
        SESSIONS,
        0,
        context.progress,
        Route::ClusterIp,
    )
    .await?;
    steps::run_for(harness, Duration::from_secs(3)).await?;

    let started = tokio::time::Instant::now();
    let drained = harness
        .kubectl(&[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=180s",
        ])
        .await;
    let settled = match drained {
        Ok(output) => {
            report.detail("kubectlDrain", output.lines().collect::<Vec<_>>());
            steps::wait_settled(harness, &spec, Some(&before.revision)).await
        }
        Err(err) => Err(err),
    };
    report.detail(
        "drainSeconds",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    let uncordoned = harness.kubectl(&["uncordon", &node]).await;
    if settled.is_ok() {
        steps::run_for(harness, RECORD_GRACE).await?;
    }
    let landed = landing::sessions_per_pod(harness, &spec).await;
    load.stop();
    report.client(load.finish().await);
    report.landed(landed);
    landing::operator_account(harness, &spec, report).await;
    let settled = settled?;
    uncordoned?;
    report.detail("podsAfter", &settled.pods);
    let after = spec.observe(&harness.client()).await?;
    let recorded = Recorded::since(baseline.as_ref(), after.rollout().as_ref());
    report.operator(recorded.as_ref());
    report.detail("operatorRecordedTheEviction", recorded.is_some());

    report.expect_clean_clients(SESSIONS);
    report.expect_moved_once_and_landed_with_room();
    report.detail(
        "migrationsAgree",
        report.migrated.map(|n| n as i64) == report.operator_migrated,
    );
    report.expect(
        settled.pods.iter().all(|p| !evicted.contains(&p.name)),
        "an evicted pod is still there",
    );
    Ok(())
}
