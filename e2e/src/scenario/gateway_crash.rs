//! gateway-crash: one gateway process is killed with SIGKILL while 300 sessions are open. Its
//! sessions are lost without a close handshake; the clients count them. Passes when the
//! operator's recorded dropped count equals exactly what the clients lost: honest accounting,
//! not zero.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::harness::Harness;
use super::service::{Recorded, ServiceSpec};
use super::steps;
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport};
use crate::load::Route;

/// Sessions of this scenario.
const SESSIONS: usize = 300;
/// How long the operator gets to record the loss.
const RECORD_WAIT: Duration = Duration::from_secs(60);

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let spec = ServiceSpec::new(&context.namespace);
    let before = steps::deploy(harness, &spec).await?;
    let baseline = spec.observe(&harness.client()).await?.rollout();
    let load = steps::start_load(
        harness,
        &spec,
        SESSIONS,
        0,
        context.progress,
        Route::Endpoints,
    )
    .await?;
    steps::run_for(harness, Duration::from_secs(3)).await?;

    let victim = before.pods[0].clone();
    let container = victim.gateway_container.clone().ok_or_else(|| {
        ScenarioError::Setup(format!("pod {} reports no gateway container", victim.name))
    })?;
    // The container's processes are in its cgroup on the node; its gateway is the one running
    // longconn-gateway.
    let pid = crate::nodes::container_process(&container, "longconn-gateway").ok_or_else(|| {
        ScenarioError::Setup(format!(
            "no longconn-gateway process in container {container} of pod {}",
            victim.name
        ))
    })?;
    let victim_ip = victim.ip.clone().unwrap_or_default();
    let on_victim = load
        .report()
        .endpoints
        .get(&victim_ip)
        .map_or(0, |e| e.connections);
    kill(Pid::from_raw(pid), Signal::SIGKILL)
        .map_err(|e| ScenarioError::Setup(format!("kill -9 {pid}: {e}")))?;
    tracing::info!(pod = %victim.name, pid, "gateway killed");
    report.detail("killedPod", &victim.name);
    report.detail("killedGatewayPid", pid);
    report.detail("connectionsToKilledPodBefore", on_victim);

    // The clients see the loss at once (reset or EOF); give them a moment to count it.
    steps::run_for(harness, Duration::from_secs(3)).await?;
    let client_lost = load.report().dropped;
    let client = harness.client();
    // Wait until the operator's count matches (or the time is up); the verdict takes the count
    // read at the very end, so a later change of it shows.
    let matched = wait_until(
        &format!("the operator to record {client_lost} dropped sessions"),
        RECORD_WAIT,
        || async {
            let now = spec.observe(&client).await?.rollout();
            let recorded = Recorded::since(baseline.as_ref(), now.as_ref());
            Ok(match recorded {
                Some(r) if r.sessions_dropped == client_lost as i64 => Check::Done(r),
                other => Check::NotYet(format!("recorded {other:?}")),
            })
        },
    )
    .await;
    load.stop();
    report.client(load.finish().await);
    let after = spec.observe(&harness.client()).await?;
    let recorded = Recorded::since(baseline.as_ref(), after.rollout().as_ref());
    report.operator(recorded.as_ref());
    report.detail("operatorMatchedBeforeTheLoadEnded", matched.is_ok());
    let pods = spec.pods(&harness.client()).await?;
    report.detail("podsAfter", &pods);

    let client_dropped = report.client_dropped.unwrap_or(0);
    let on_victim_dropped = report
        .load
        .as_ref()
        .and_then(|l| l.endpoints.get(&victim_ip))
        .map_or(0, |e| e.dropped);
    report.detail("clientDroppedOnKilledPod", on_victim_dropped);
    report.expect(
        client_dropped > 0,
        "no client lost its session: the kill hit no session",
    );
    report.expect(
        client_dropped == on_victim_dropped,
        format!(
            "clients lost {} sessions on other pods",
            client_dropped - on_victim_dropped
        ),
    );
    match report.operator_dropped {
        Some(n) if n == client_dropped as i64 => {}
        Some(n) => report.failures.push(format!(
            "the operator recorded {n} dropped sessions, the clients lost {client_dropped}"
        )),
        None => report.failures.push(format!(
            "the operator recorded nothing for the crash (clients lost {client_dropped})"
        )),
    }
    Ok(())
}
