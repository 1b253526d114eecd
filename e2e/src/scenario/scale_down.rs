//! scale-down: 5 replicas to 2 through the scale subresource (`kubectl scale lcs`) under 500
//! live sessions. Passes when no session is dropped (clients' count and operator's), no message
//! is lost, 2 pods are left, the operator recorded the 3 drained pods in `status.rollout` with as
//! many migrated sessions as the clients counted, and every session moved once and landed where
//! there was room (the bounds of [`super::landing`]).

use std::time::Duration;

use super::harness::Harness;
use super::landing;
use super::service::{Recorded, ServiceSpec};
use super::steps;
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 500;
const FROM: i32 = 5;
const TO: i32 = 2;
/// How long the operator gets, once the pods settled, to record the drains.
const RECORD_GRACE: Duration = Duration::from_secs(30);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.replicas = FROM;
    let before = steps::deploy(harness, &spec).await?;
    report.detail("podsBefore", &before.pods);
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
    let scaled = harness
        .kubectl(&[
            "scale",
            "-n",
            &spec.namespace,
            &format!("lcs/{}", spec.name),
            &format!("--replicas={TO}"),
        ])
        .await;
    spec.replicas = TO;
    let settled = match scaled {
        Ok(_) => steps::wait_settled(harness, &spec, Some(&before.revision))
            .await
            .map(Some),
        Err(err) => Err(err),
    };
    report.detail(
        "scaleDownSeconds",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    // Give the operator time to record the three drains (early out once it has).
    let client = harness.client();
    let recorded_in_time = if settled.is_ok() {
        wait_until(
            "the operator to record 3 drained pods",
            RECORD_GRACE,
            || async {
                let now = spec.observe(&client).await?.rollout();
                let recorded = Recorded::since(baseline.as_ref(), now.as_ref());
                Ok(match recorded {
                    Some(r) if r.pods_drained >= i64::from(FROM - TO) => Check::Done(Some(r)),
                    other => Check::NotYet(format!("recorded {other:?}")),
                })
            },
        )
        .await
        .unwrap_or(None)
    } else {
        None
    };
    steps::run_for(harness, Duration::from_secs(2)).await?;
    let landed = landing::sessions_per_pod(harness, &spec).await;
    load.stop();
    report.client(load.finish().await);
    report.landed(landed);
    landing::operator_account(harness, &spec, report).await;
    let settled = settled?;
    let after = spec.observe(&harness.client()).await?;
    // The verdict takes what is recorded at the very end; the wait above only gave it time.
    let recorded = Recorded::since(baseline.as_ref(), after.rollout().as_ref());
    report.detail(
        "operatorRecordedBeforeTheLoadEnded",
        recorded_in_time.is_some(),
    );
    report.operator(recorded.as_ref());
    if let Some(deployed) = &settled {
        report.detail("podsAfter", &deployed.pods);
    }

    report.expect_clean_clients(SESSIONS);
    report.expect_migrations_agree();
    report.expect_moved_once_and_landed_with_room();
    match &recorded {
        None => report.failures.push(
            "the operator recorded no accounting for the scale-down in status.rollout".into(),
        ),
        Some(r) => {
            report.expect(
                r.sessions_dropped == 0,
                format!(
                    "the operator recorded {} dropped sessions",
                    r.sessions_dropped
                ),
            );
            report.expect(
                r.pods_drained == i64::from(FROM - TO),
                format!(
                    "the operator recorded {} drained pods, not {}",
                    r.pods_drained,
                    FROM - TO
                ),
            );
        }
    }
    let current = after.current_revision();
    let rollout_revision = after.rollout().and_then(|r| r.revision());
    report.expect(
        rollout_revision.is_some() && rollout_revision == current,
        format!(
            "status.rollout.revision {rollout_revision:?} is not the current revision {current:?}"
        ),
    );
    Ok(())
}
