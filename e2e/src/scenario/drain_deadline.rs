//! drain-deadline: 200 live sessions of which 30 ignore close frames (they never answer and keep
//! their socket open; about 10 per pod), a drain timeout of 6s and no dropped session allowed. A
//! template change drains a first old pod; at the deadline its gateway cuts the close-ignoring
//! sessions. Passes when the rollout pauses (Progressing=False, reason DropBudgetExceeded) and
//! stays paused with old pods left undrained, and the operator's dropped count equals the
//! close-ignoring sessions the clients saw cut on the drained pods.

use std::time::Duration;

use super::harness::Harness;
use super::service::{Recorded, ServiceSpec};
use super::steps;
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 200;
/// Of which this many ignore close frames.
const CLOSE_IGNORING: usize = 30;
const DRAIN_TIMEOUT: &str = "6s";
/// How long the rollout may take to pause.
const PAUSE_WAIT: Duration = Duration::from_secs(150);
/// How long a pause must hold.
const PAUSE_HOLDS: Duration = Duration::from_secs(10);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.drain_timeout = DRAIN_TIMEOUT.to_owned();
    spec.max_dropped_sessions = 0;
    let old = steps::deploy(harness, &spec).await?;
    report.detail("oldRevision", &old.revision);
    report.detail("oldPods", &old.pods);
    let baseline = spec.observe(&harness.client()).await?.rollout();
    let load = steps::start_load(
        harness,
        &spec,
        SESSIONS,
        CLOSE_IGNORING,
        context.progress,
        Route::Endpoints,
    )
    .await?;
    steps::run_for(harness, Duration::from_secs(3)).await?;

    let started = tokio::time::Instant::now();
    let new_revision = steps::change_template(harness, &mut spec, &old.revision).await;
    let client = harness.client();
    let paused = steps::wait_stopped(
        harness,
        &spec,
        &new_revision,
        "DropBudgetExceeded",
        PAUSE_WAIT,
    )
    .await;
    report.detail(
        "secondsToPause",
        (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    // A pause holds: nothing more is drained meanwhile (and the count, which may trail the
    // condition by a status write, settles).
    let at_pause = paused.as_ref().ok().and_then(|o| o.rollout());
    steps::run_for(harness, PAUSE_HOLDS).await?;
    let held = spec.observe(&client).await?;
    let pods = spec.pods(&client).await?;
    load.stop();
    report.client(load.finish().await);
    let new_revision = new_revision?;
    report.detail("newRevision", &new_revision);
    report.detail("podsAtPause", &pods);
    let observed = spec.observe(&client).await?;
    let recorded = Recorded::since(baseline.as_ref(), observed.rollout().as_ref());
    report.operator(recorded.as_ref());

    let load = report.load.clone().unwrap_or_default();
    let old_ips = old.ips();
    let cut_on_old: u64 = load
        .endpoints
        .iter()
        .filter(|(ip, _)| old_ips.contains(*ip))
        .map(|(_, e)| e.force_closed)
        .sum();
    let drained_ips: Vec<&String> = load
        .endpoints
        .iter()
        .filter(|(ip, e)| old_ips.contains(*ip) && (e.migrated > 0 || e.closes_ignored > 0))
        .map(|(ip, _)| ip)
        .collect();
    report.detail("clientForceClosedOnDrainedPods", cut_on_old);
    report.detail("drainedPodIps", &drained_ips);

    if let Err(err) = &paused {
        report.failures.push(err.to_string());
    }
    if paused.is_ok() {
        report.expect(
            held.stopped_with("DropBudgetExceeded"),
            format!(
                "the pause did not hold for {PAUSE_HOLDS:?}: {}",
                held.summary()
            ),
        );
        let drained_then = at_pause.and_then(|r| r.pods_drained());
        let drained_now = held.rollout().and_then(|r| r.pods_drained());
        report.expect(
            drained_then == drained_now,
            format!(
                "pods were drained after the pause: {drained_then:?} at the pause, {drained_now:?} {PAUSE_HOLDS:?} later"
            ),
        );
    }
    let old_left = pods.iter().filter(|p| p.revision == old.revision).count();
    report.detail("oldPodsLeftAtPause", old_left);
    report.expect(
        old_left > 0,
        "no old pod was left: the pause came only after the last drain",
    );
    report.expect(
        cut_on_old > 0,
        "no close-ignoring session was cut: the drain deadline never came",
    );
    report.expect(
        load.force_closed == cut_on_old,
        format!(
            "{} close-ignoring sessions were cut on pods other than the old ones",
            load.force_closed - cut_on_old
        ),
    );
    report.expect(
        load.dropped == 0,
        format!(
            "well-behaved clients counted {} dropped sessions: {:?}",
            load.dropped, load.drop_reasons
        ),
    );
    match report.operator_dropped {
        Some(n) if n == cut_on_old as i64 => {}
        Some(n) => report.failures.push(format!(
            "the operator recorded {n} dropped sessions, the clients saw {cut_on_old} cut on drained pods"
        )),
        None => report.failures.push(format!(
            "the operator recorded no rollout accounting (clients saw {cut_on_old} cut)"
        )),
    }
    Ok(())
}
