//! bad-revision: the new revision's app listens on the wrong port, so its pods never become
//! Ready (the gateway's `/readyz` finds no upstream). Under 200 live sessions, passes when no
//! old pod was drained (all still there, `status.rollout.podsDrained == 0`), the rollout stopped
//! with Progressing=False, reason ProgressDeadlineExceeded (deadline 20s), and no session was
//! dropped nor message lost.

use std::time::Duration;

use super::harness::Harness;
use super::service::ServiceSpec;
use super::steps;
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 200;
const PROGRESS_DEADLINE: &str = "20s";
/// How long past the progress deadline the operator gets to say so.
const DEADLINE_GRACE: Duration = Duration::from_secs(90);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.progress_deadline = PROGRESS_DEADLINE.to_owned();
    let old = steps::deploy(harness, &spec).await?;
    report.detail("oldRevision", &old.revision);
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

    spec.app_listen = format!("127.0.0.1:{}", super::service::APP_PORT + 1);
    let started = tokio::time::Instant::now();
    let new_revision = steps::change_template(harness, &mut spec, &old.revision).await;
    let client = harness.client();
    let stopped = steps::wait_stopped(
        harness,
        &spec,
        &new_revision,
        "ProgressDeadlineExceeded",
        Duration::from_secs(20) + DEADLINE_GRACE,
    )
    .await;
    report.detail(
        "secondsToStop",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    steps::run_for(harness, Duration::from_secs(2)).await?;
    let pods = spec.pods(&client).await?;
    load.stop();
    report.client(load.finish().await);
    let new_revision = new_revision?;
    report.detail("newRevision", &new_revision);
    report.detail("podsAtStop", &pods);
    let observed = spec.observe(&client).await?;
    let rollout = observed.rollout();
    report.pods_drained = rollout.as_ref().and_then(|r| r.pods_drained());
    report.operator_dropped = rollout.as_ref().and_then(|r| r.sessions_dropped());
    report.operator_migrated = rollout.as_ref().and_then(|r| r.sessions_migrated());

    report.expect_clean_clients(SESSIONS);
    if let Err(err) = &stopped {
        report.failures.push(err.to_string());
    }
    let old_names = old.names();
    let old_now: Vec<_> = pods
        .iter()
        .filter(|p| old_names.contains(&p.name))
        .collect();
    report.expect(
        old_now.len() == old_names.len() && old_now.iter().all(|p| p.ready && !p.terminating),
        format!(
            "old pods touched: before {old_names:?}, now {}",
            steps::describe_pods(&pods)
        ),
    );
    report.expect(
        pods.iter()
            .filter(|p| p.revision == new_revision)
            .all(|p| !p.ready),
        "a pod of the bad revision became Ready",
    );
    match report.pods_drained {
        Some(0) => {}
        Some(n) => report
            .failures
            .push(format!("status.rollout.podsDrained is {n}, not 0")),
        None => report
            .failures
            .push("status.rollout.podsDrained is missing (no rollout accounting)".into()),
    }
    report.expect(
        report.operator_dropped.unwrap_or(0) == 0,
        format!(
            "the operator recorded {:?} dropped sessions",
            report.operator_dropped
        ),
    );
    Ok(())
}
