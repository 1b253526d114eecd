//! rolling-update: 3 replicas, 1,000 live sessions, a template change. Passes when no session is
//! dropped (by the clients' count and by `status.rollout.sessionsDropped`), no message is lost,
//! every old pod is gone, `status.rollout` says Complete for the new revision, its
//! `sessionsMigrated` equals the migrations the clients counted, and every session moved once
//! and landed where there was room (the bounds of [`super::landing`]).

use std::time::Duration;

use super::canary;
use super::harness::Harness;
use super::landing;
use super::service::{Recorded, ServiceSpec};
use super::steps::{self, RolloutEnd};
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
pub const SESSIONS: usize = 1_000;

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let spec = ServiceSpec::new(&context.namespace);
    rollout_under_load(harness, context, report, SESSIONS, spec, During::Nothing).await?;
    report.expect_moved_once_and_landed_with_room();
    Ok(())
}

/// When, after the template change, to kill the operator and start it again.
pub(super) struct Kill {
    pub after: Duration,
}

/// What happens between the template change and the end of the rollout.
pub(super) enum During {
    /// Nothing: the rollout runs by itself.
    Nothing,
    /// The operator is killed and started again.
    Kill(Kill),
    /// The rollout stops at its pause step, is judged there, and is promoted
    /// ([`canary::hold_and_promote`]).
    Canary,
}

/// Deploys `spec`, puts `sessions` on it, changes the template (then, as `during` says, kills
/// the operator or stops at a pause step) and judges the rollout; reads the sessions per pod at
/// the end (judged by the caller).
pub(super) async fn rollout_under_load(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
    sessions: usize,
    mut spec: ServiceSpec,
    during: During,
) -> Result<(), ScenarioError> {
    let old = steps::deploy(harness, &spec).await?;
    report.detail("oldRevision", &old.revision);
    report.detail("oldPods", &old.pods);
    let baseline = spec.observe(&harness.client()).await?.rollout();
    let load = steps::start_load(
        harness,
        &spec,
        sessions,
        0,
        context.progress,
        Route::ClusterIp,
    )
    .await?;
    steps::run_for(harness, Duration::from_secs(3)).await?;
    // Where the sessions start from: a rollout that moves each session once can only spread
    // them as evenly as room allows, so an uneven start shows in the balance at the end.
    match landing::sessions_per_pod(harness, &spec).await {
        Ok(before) => {
            report.detail("balanceBefore", before.rounded_balance());
            report.detail("sessionsPerPodBefore", &before.0);
        }
        Err(err) => report.detail("balanceBefore", format!("not read: {err}")),
    }

    let change = tokio::time::Instant::now();
    let new_revision = steps::change_template(harness, &mut spec, &old.revision).await?;
    report.detail("newRevision", &new_revision);
    match during {
        During::Nothing => {}
        During::Canary => {
            canary::hold_and_promote(harness, &spec, &old.revision, &new_revision, report).await?;
        }
        During::Kill(kill) => kill_and_restart(harness, &spec, report, change, kill).await?,
    }
    let end = steps::wait_rollout(harness, &spec, &old.revision, &new_revision).await;
    report.detail(
        "rolloutSeconds",
        (change.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    // Whatever happened, the clients get to finish and count.
    steps::run_for(harness, Duration::from_secs(2)).await?;
    let landed = landing::sessions_per_pod(harness, &spec).await;
    load.stop();
    report.client(load.finish().await);
    report.landed(landed);
    landing::operator_account(harness, &spec, report).await;
    let end = end?;

    let observed = end.observed().clone();
    let recorded = Recorded::since(baseline.as_ref(), observed.rollout().as_ref());
    report.operator(recorded.as_ref());
    let pods = spec.pods(&harness.client()).await?;
    let old_left: Vec<&str> = pods
        .iter()
        .filter(|p| p.revision == old.revision)
        .map(|p| p.name.as_str())
        .collect();

    report.expect_clean_clients(sessions);
    report.expect_migrations_agree();
    report.expect(old_left.is_empty(), format!("old pods left: {old_left:?}"));
    match &end {
        RolloutEnd::Complete(_) => {}
        RolloutEnd::Stopped(o) => report
            .failures
            .push(format!("the rollout stopped: {}", o.summary())),
        RolloutEnd::Unrecorded(o) => report.failures.push(format!(
            "the pods settled at {new_revision} but status.rollout does not say Complete for it: {}",
            o.summary()
        )),
    }
    match report.operator_dropped {
        Some(0) => {}
        Some(n) => report
            .failures
            .push(format!("the operator recorded {n} dropped sessions")),
        None => report
            .failures
            .push("the operator recorded no rollout accounting (status.rollout)".into()),
    }
    Ok(())
}

/// `kill.after` the template `change`, records the rollout and the pods, kills the operator and
/// starts it again.
async fn kill_and_restart(
    harness: &mut Harness,
    spec: &ServiceSpec,
    report: &mut ScenarioReport,
    change: tokio::time::Instant,
    kill: Kill,
) -> Result<(), ScenarioError> {
    tokio::time::sleep_until(change + kill.after).await;
    let observed = spec.observe(&harness.client()).await?;
    let pods = spec.pods(&harness.client()).await?;
    report.detail(
        "atKill",
        serde_json::json!({
            "secondsAfterChange": (change.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "rollout": observed.rollout().map(|r| r.0),
            "pods": pods,
        }),
    );
    harness.kill_operator().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    harness.start_operator().await?;
    Ok(())
}
