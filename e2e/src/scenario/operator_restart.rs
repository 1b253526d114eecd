//! operator-restart: a rolling update under 300 live sessions during which the operator process
//! is killed with SIGKILL at a random point (from the run's seed) and started again. Passes when
//! the rollout still completes with no session dropped and no message lost, as rolling-update;
//! how the sessions moved and where they landed is reported as there, not judged.

use std::time::Duration;

use super::harness::Harness;
use super::rolling_update::{During, Kill, rollout_under_load};
use super::service::ServiceSpec;
use super::{Context, ScenarioError, ScenarioReport, SplitMix};

/// Sessions of this scenario.
const SESSIONS: usize = 300;
/// The kill comes within this long after the template change.
const KILL_WITHIN: Duration = Duration::from_secs(15);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
    seed: u64,
) -> Result<(), ScenarioError> {
    let mut rng = SplitMix::new(seed);
    let within_ms = u64::try_from(KILL_WITHIN.as_millis()).unwrap_or(u64::MAX);
    let after = Duration::from_millis(rng.below(within_ms));
    tracing::info!(
        seed,
        ?after,
        "operator-restart: the operator is killed this long after the template change (rerun with --seed {seed})"
    );
    report.detail("killAfterSeconds", after.as_secs_f64());
    let starts_before = harness.operator_starts();
    let spec = ServiceSpec::new(&context.namespace);
    let during = During::Kill(Kill { after });
    rollout_under_load(harness, context, report, SESSIONS, spec, during).await?;
    report.detail("operatorStarts", harness.operator_starts() - starts_before);
    Ok(())
}
