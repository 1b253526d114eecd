//! canary: a rolling update in steps under 300 live sessions: `rollout.steps: [{replicas: 1},
//! {pause: {}}]` over 3 replicas. The rollout must stop at the pause with exactly one pod of the
//! new revision serving beside two old ones, one old pod drained, and Progressing=False with
//! reason WaitingForPromotion, which `kubectl longconn status` shows; it must stay there,
//! draining nothing, for [`HOLD`]. Promoted with `kubectl longconn promote`, it goes on to the
//! end. Then it is judged as
//! rolling-update: no session dropped (clients' count and operator's), no message lost, every
//! old pod gone, `status.rollout` Complete with `sessionsMigrated` equal to the clients'
//! migrations, every session moved once and landed where there was room.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::Harness;
use super::rolling_update::{During, rollout_under_load};
use super::service::ServiceSpec;
use super::steps::{describe_pods, wait_stopped};
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport};

/// Sessions of this scenario.
const SESSIONS: usize = 300;
/// How long the rollout may take to reach its pause.
const TO_PAUSE: Duration = Duration::from_secs(180);
/// How long the rollout is watched at the pause.
const HOLD: Duration = Duration::from_secs(10);
/// The index of the pause step.
const PAUSE_STEP: i64 = 1;

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.rollout_steps = Some(json!([{"replicas": 1}, {"pause": {}}]));
    rollout_under_load(harness, context, report, SESSIONS, spec, During::Canary).await?;
    report.expect_moved_once_and_landed_with_room();
    Ok(())
}

/// What the pause shows: the pods of each revision serving, and the pods drained so far.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
struct AtPause {
    new_serving: usize,
    old_serving: usize,
    pods_drained: i64,
    step: Option<i64>,
    paused_by: Option<String>,
}

async fn at_pause(
    harness: &Harness,
    spec: &ServiceSpec,
    old: &str,
    new: &str,
) -> Result<AtPause, ScenarioError> {
    let client = harness.client();
    let observed = spec.observe(&client).await?;
    let pods = spec.pods(&client).await?;
    let serving = |revision: &str| {
        pods.iter()
            .filter(|p| p.revision == revision && p.ready && !p.terminating)
            .count()
    };
    Ok(AtPause {
        new_serving: serving(new),
        old_serving: serving(old),
        pods_drained: observed
            .rollout()
            .and_then(|r| r.pods_drained())
            .unwrap_or(0),
        step: observed.at("/status/rollout/step").and_then(Value::as_i64),
        paused_by: observed
            .at("/status/rollout/pausedBy")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Waits for the rollout to stop at its pause, judges what it holds there and that it holds
/// still for [`HOLD`], then promotes it and waits until the operator has moved past the pause.
pub(super) async fn hold_and_promote(
    harness: &mut Harness,
    spec: &ServiceSpec,
    old: &str,
    new: &str,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let revision = Ok(new.to_owned());
    let stopped = wait_stopped(harness, spec, &revision, "WaitingForPromotion", TO_PAUSE).await?;
    let first = at_pause(harness, spec, old, new).await?;
    report.detail("atPause", &first);
    report.detail(
        "progressingAtPause",
        stopped.condition("Progressing").map(|c| c.message),
    );
    let want = AtPause {
        new_serving: 1,
        old_serving: 2,
        pods_drained: 1,
        step: Some(PAUSE_STEP),
        paused_by: Some("Step".to_owned()),
    };
    report.expect(
        first == want,
        format!("at the pause: {first:?}, expected {want:?}"),
    );
    super::steps::run_for(harness, HOLD).await?;
    let held = at_pause(harness, spec, old, new).await?;
    report.expect(
        held == first,
        format!(
            "the pause did not hold still for {} s: {first:?}, then {held:?}",
            HOLD.as_secs()
        ),
    );

    let status = harness
        .kubectl_longconn("status", &spec.name, &spec.namespace)
        .await?;
    report.expect(
        status.contains("WaitingForPromotion"),
        format!("kubectl longconn status at the pause does not say WaitingForPromotion:\n{status}"),
    );
    report.detail(
        "kubectlLongconnStatusAtPause",
        status.lines().collect::<Vec<_>>(),
    );
    let promoted = harness
        .kubectl_longconn("promote", &spec.name, &spec.namespace)
        .await?;
    report.detail("kubectlLongconnPromote", promoted.trim());
    let client = harness.client();
    wait_until("the operator to move past the pause", HOLD, || async {
        let observed = spec.observe(&client).await?;
        let step = observed.at("/status/rollout/step").and_then(Value::as_i64);
        Ok(if step.is_some_and(|s| s > PAUSE_STEP) {
            Check::Done(())
        } else {
            let pods = spec.pods(&client).await?;
            Check::NotYet(format!(
                "step {step:?}; {}; {}",
                observed.summary(),
                describe_pods(&pods)
            ))
        })
    })
    .await
}
