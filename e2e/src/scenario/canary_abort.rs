//! canary-abort: a canary whose new app refuses [`REFUSED_PERCENT`] % of WebSocket upgrades,
//! under 200 live sessions, with `rollout.steps: [{replicas: 1}, {pause: {}}]` and the health
//! gate on (`rollout.analysis: {upstreamRefusedPercent: 5, minAttempts: 20}`). The sessions moved
//! onto the canary meet the refusals (the clients retry, as clients do); the gate must abort the
//! rollout on its own: Progressing=False with reason AnalysisFailed, the condition naming
//! UpstreamRefused, `status.rollout.analysis.failed: UpstreamRefused`, the canary drained and every
//! pod of the old revision again, the revision recorded Aborted in `status.history` (which
//! `kubectl longconn history` shows). No session dropped (clients' count and operator's), no
//! message lost.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::Harness;
use super::service::ServiceSpec;
use super::steps::{self, describe_pods};
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 200;
/// The share of upgrades the new revision's app refuses.
const REFUSED_PERCENT: u32 = 30;
/// How long the gate may take to abort and the rollback to end, from the template change.
const TO_ABORT: Duration = Duration::from_secs(240);
/// How long the old revision may take to serve alone again once the rollback is recorded.
const TO_SETTLE: Duration = Duration::from_secs(120);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.rollout_steps = Some(json!([{"replicas": 1}, {"pause": {}}]));
    spec.rollout_analysis = Some(json!({"upstreamRefusedPercent": 5, "minAttempts": 20}));
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

    spec.app_refuses_percent = REFUSED_PERCENT;
    let started = tokio::time::Instant::now();
    let new_revision = steps::change_template(harness, &mut spec, &old.revision).await;
    let stopped =
        steps::wait_stopped(harness, &spec, &new_revision, "AnalysisFailed", TO_ABORT).await;
    report.detail(
        "secondsToAbort",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    let client = harness.client();
    let old_names = old.names();
    let settled = wait_until(
        "only the old revision's pods, all serving",
        TO_SETTLE,
        || async {
            let pods = spec.pods(&client).await?;
            let serving = pods
                .iter()
                .filter(|p| p.revision == old.revision && p.ready && !p.terminating)
                .count();
            Ok(
                if pods.iter().all(|p| p.revision == old.revision)
                    && serving == usize::try_from(spec.replicas).unwrap_or(0)
                {
                    Check::Done(pods)
                } else {
                    Check::NotYet(describe_pods(&pods))
                },
            )
        },
    )
    .await;
    steps::run_for(harness, Duration::from_secs(3)).await?;
    load.stop();
    report.client(load.finish().await);
    let new_revision = new_revision?;
    report.detail("newRevision", &new_revision);

    let observed = spec.observe(&client).await?;
    let rollout = observed.rollout();
    report.pods_drained = rollout.as_ref().and_then(|r| r.pods_drained());
    report.operator_dropped = rollout.as_ref().and_then(|r| r.sessions_dropped());
    report.operator_migrated = rollout.as_ref().and_then(|r| r.sessions_migrated());
    let analysis = observed.at("/status/rollout/analysis").cloned();
    report.detail(
        "analysis",
        json!({
            "failed": analysis.as_ref().and_then(|a| a.get("failed")),
            "message": analysis.as_ref().and_then(|a| a.get("message")),
            "update": analysis.as_ref().and_then(|a| a.get("update")),
            "stable": analysis.as_ref().and_then(|a| a.get("stable")),
        }),
    );
    let progressing = observed.condition("Progressing");
    report.detail("progressing", progressing.as_ref().map(|c| &c.message));

    report.expect_clean_clients(SESSIONS);
    report.expect(
        report.operator_dropped == Some(0),
        format!(
            "status.rollout counts {:?} dropped sessions",
            report.operator_dropped
        ),
    );
    if let Err(err) = &stopped {
        report.failures.push(err.to_string());
    }
    if let Err(err) = &settled {
        report.failures.push(err.to_string());
    }
    let failed = analysis
        .as_ref()
        .and_then(|a| a.get("failed"))
        .and_then(Value::as_str);
    report.expect(
        failed == Some("UpstreamRefused"),
        format!("status.rollout.analysis.failed is {failed:?}, not UpstreamRefused"),
    );
    report.expect(
        progressing
            .as_ref()
            .is_some_and(|c| c.message.contains("UpstreamRefused")),
        format!("the Progressing condition does not name the signal: {progressing:?}"),
    );
    let outcome = observed
        .at("/status/history")
        .and_then(Value::as_array)
        .and_then(|records| {
            records
                .iter()
                .rev()
                .find(|r| r["revision"] == new_revision.as_str())
        })
        .and_then(|r| r.pointer("/outcome/result"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    report.expect(
        outcome.as_deref() == Some("Aborted"),
        format!("status.history records revision {new_revision} as {outcome:?}, not Aborted"),
    );
    if let Ok(pods) = &settled {
        report.detail("podsAfter", pods);
        report.expect(
            pods.iter().all(|p| p.revision == old.revision),
            format!("pods of another revision left: {}", describe_pods(pods)),
        );
        report.detail(
            "oldPodsKept",
            pods.iter().filter(|p| old_names.contains(&p.name)).count(),
        );
    }
    let history = harness
        .kubectl_longconn("history", &spec.name, &spec.namespace)
        .await?;
    report.expect(
        history.contains("Aborted"),
        format!("kubectl longconn history does not show the abort:\n{history}"),
    );
    report.detail(
        "kubectlLongconnHistory",
        history.lines().collect::<Vec<_>>(),
    );
    Ok(())
}
