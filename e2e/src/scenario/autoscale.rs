//! autoscale: the operator's own session autoscaling under a load that rises and falls.
//! `autoscaling: {minReplicas: 2, maxReplicas: 6, targetSessionsPerPod: 150}`, 2 replicas to
//! begin with, the scale-down stabilization window shortened to 20s (the default 300s would
//! hold the scale-down for five minutes), the rebalancing's spread to 5s (default 30s) and the
//! tolerance narrowed to 0.05 (with the default 0.1, 800 sessions over 5 pods, 160 each, would
//! be within it and keep 5). The load starts at
//! 100 sessions and ramps to 800 in steps of 175, 10 s apart; the operator must scale to
//! ceil(800 / 150) = 6 pods, and once the ramp's sessions close (100 left), back to 2, draining
//! every pod it removes.
//!
//! Passes when 6 pods are Ready within 90 s of the ramp's end and 2 are left within 120 s of
//! the fall, `spec.replicas` and `status.autoscaling.desiredReplicas` never leave 2..=6, no
//! session is dropped (clients' count and operator's), no message is lost, the operator
//! recorded the 4 pods of the scale-down drained with as many migrated sessions as the clients
//! counted during it, no session moved more than once nor any attempt was refused (the
//! bounds of [`super::landing`]), and within [`BALANCE_WITHIN`] of the scale-up the busiest
//! pod holds at most [`landing::BALANCE`] times the mean (`balanceAfterScaleUpWithinTarget`,
//! `timeToBalanceSeconds`): long-lived sessions stay where they are and new pods get only new
//! sessions, so this is the operator's rebalancing (hot pods hand a share of their sessions to
//! the pods with room), whose rounds `rebalance.cooldown` paces. One case passes short of the
//! bound, shown in `balanceHeldByMoveOnce`: every pod above it is recorded in the last round
//! (`status.rebalance`) as keeping part of its ask because those sessions moved to it less
//! than the gateway's `keepMovedFor` (10 minutes) before; a session moves at most once in that
//! time, and that rule wins over the balance (see the operator's README). Also in the
//! details: how evenly the sessions sit right after the scale-up, replicas and pods every
//! second (`replicasOverTime`), the times to scale up and down, the last decision's reason and
//! the `Scaled` Events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};

use longconn_operator::crd::RebalanceStatus;
use longconn_operator::rebalance;

use super::harness::Harness;
use super::landing::{self, PodSessions};
use super::service::{Observed, PodView, Recorded, Rollout, ServiceSpec};
use super::steps::{self, describe_pods};
use super::wait::{Check, wait_until};
use super::{Context, ScenarioError, ScenarioReport, round};
use crate::load::{LoadReport, Route, RunningLoad, SessionsByMoves};

const MIN_REPLICAS: i32 = 2;
const MAX_REPLICAS: i32 = 6;
const TARGET_SESSIONS_PER_POD: u64 = 150;
/// Shortened from the default 300s, so that the scale-down comes within the scenario.
const SCALE_DOWN_WINDOW: &str = "20s";
/// Narrowed from the default 0.1, under which 800 sessions over 5 pods would keep 5.
const TOLERANCE: f64 = 0.05;
/// The rebalancing's close frames spread over this, shortened from the default 30s as the
/// drains' spread is.
const REBALANCE_SPREAD: &str = "5s";
/// The sessions there from the start and left at the end.
const BASE_SESSIONS: usize = 100;
/// The steps of the ramp, and the sessions each adds.
const RAMP_STEPS: usize = 4;
const RAMP_STEP: usize = 175;
/// The time between two steps of the ramp.
const RAMP_EVERY: Duration = Duration::from_secs(10);
/// Every session of the run.
const SESSIONS: usize = BASE_SESSIONS + RAMP_STEPS * RAMP_STEP;
/// How long after the ramp's end the pods may take to reach `maxReplicas`, all Ready.
const SCALE_UP_WITHIN: Duration = Duration::from_secs(90);
/// How long after the scale-up the sessions get to even out: room for a second round of
/// rebalancing should the first fall short (the default `rebalance.cooldown`, 60s, the next
/// reconcile, the round's 5-s spread and the reconnects).
const BALANCE_WITHIN: Duration = Duration::from_secs(100);
/// How long after the fall the pods may take to be back at `minReplicas`.
const SCALE_DOWN_WITHIN: Duration = Duration::from_secs(120);
/// Once the pods settled, how long the operator gets to record the drains.
const RECORD_GRACE: Duration = Duration::from_secs(30);
/// How often replicas and pods are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The `spec.autoscaling` of the scenario.
fn autoscaling() -> Value {
    json!({
        "minReplicas": MIN_REPLICAS,
        "maxReplicas": MAX_REPLICAS,
        "targetSessionsPerPod": TARGET_SESSIONS_PER_POD,
        "behavior": {
            "scaleDown": {"stabilizationWindow": SCALE_DOWN_WINDOW},
            "tolerance": TOLERANCE,
        },
        "rebalance": {"spread": REBALANCE_SPREAD},
    })
}

pub(super) async fn run(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
) -> Result<(), ScenarioError> {
    let mut spec = ServiceSpec::new(&context.namespace);
    spec.replicas = MIN_REPLICAS;
    spec.autoscaling = Some(autoscaling());
    report.detail("autoscaling", &spec.autoscaling);
    report.detail(
        "shortenedForTheScenario",
        format!(
            "behavior.scaleDown.stabilizationWindow {SCALE_DOWN_WINDOW} (default 300s) so that \
             the scale-down comes within the scenario; behavior.tolerance {TOLERANCE} (default \
             0.1, under which 800 sessions over 5 pods, 160 each, keep 5); rebalance.spread \
             {REBALANCE_SPREAD} (default 30s), as drain.spread is 2s"
        ),
    );
    let deployed = steps::deploy(harness, &spec).await?;
    report.detail("podsBefore", &deployed.pods);

    let clock = Instant::now();
    let mut loads = Loads::default();
    let sampler = Sampler::start(harness.client(), spec.clone(), clock, loads.offered.clone());
    let outcome = phases(
        harness, context, report, &mut spec, &mut loads, &sampler, clock,
    )
    .await;
    // Whatever happened, the clients get to finish and count.
    report.client(loads.finish().await);
    let series = sampler.finish();
    expect_replicas_within_bounds(report, &series);
    report.detail("replicasOverTime", &series);
    let scale_down = outcome?;

    report.expect_clean_clients(SESSIONS);
    expect_moved_once_per_phase(report, &scale_down);
    report.expect_landed_with_room();
    expect_drained_first(report, &scale_down);
    Ok(())
}

/// How long a round of rebalancing moves sessions: its spread, and the time the proxies take to
/// follow the routing back.
const ROUND_LASTS: Duration = Duration::from_secs(5 + 3);

/// Waits (at most 30 s) until the last round of rebalancing, if any, has ended and each of its
/// pods' outcome is recorded, and records `status.rebalance` in `rebalanceAtFall`. Returns it.
async fn rebalanced(
    harness: &Harness,
    spec: &ServiceSpec,
    report: &mut ScenarioReport,
) -> Result<Option<Value>, ScenarioError> {
    let client = harness.client();
    let status = wait_until(
        &format!(
            "the last round of rebalancing of {}/{} over",
            spec.namespace, spec.name
        ),
        Duration::from_secs(30),
        || async {
            let observed = spec.observe(&client).await?;
            let rebalance = observed.at("/status/rebalance").cloned();
            let started = rebalance
                .as_ref()
                .and_then(|r| r.pointer("/startedAt"))
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
            let recorded = rebalance
                .as_ref()
                .and_then(|r| r.pointer("/pods"))
                .and_then(Value::as_array)
                .is_none_or(|pods| pods.iter().all(|p| p.get("outcome").is_some()));
            let over = recorded
                && started.is_none_or(|t| {
                    k8s_openapi::jiff::Timestamp::now().duration_since(t)
                        >= k8s_openapi::jiff::SignedDuration::try_from(ROUND_LASTS)
                            .unwrap_or_default()
                });
            Ok(if over {
                Check::Done(rebalance)
            } else {
                Check::NotYet(format!("round under way: {rebalance:?}"))
            })
        },
    )
    .await?;
    report.detail("rebalanceAtFall", &status);
    Ok(status)
}

/// The operator's count of the sessions the rounds of rebalancing moved equals the clients':
/// until the load falls, rebalancing is all that moves sessions.
fn expect_rebalance_recorded(report: &mut ScenarioReport, status: Option<&Value>, migrated: u64) {
    let count = |field: &str| status.and_then(|s| s.get(field)).and_then(Value::as_i64);
    let (moved, dropped) = (count("sessionsMoved"), count("sessionsDropped"));
    report.expect(
        moved == i64::try_from(migrated).ok() && dropped.unwrap_or(0) == 0,
        format!(
            "status.rebalance records {moved:?} sessions moved and {dropped:?} dropped by the \
             rounds; the clients counted {migrated} moved when the load fell"
        ),
    );
}

/// Each session moved at most once in each phase: the rebalancing of the scale-up (judged when
/// the load falls, after the last round has ended) and the drains of the scale-down. A session
/// the rebalancing moved can be moved again by the scale-down that follows (its pod may be one
/// that goes): once per phase, so at the end no session moved three times or more, and no more
/// moved twice than had moved once when the load fell.
fn expect_moved_once_per_phase(report: &mut ScenarioReport, scale_down: &ScaleDown) {
    let at_fall = scale_down.moves_at_fall;
    report.expect(
        at_fall.more_than_once() == 0,
        format!(
            "when the load fell, {} sessions had moved more than once (0/1/2/3+ times: {}/{}/{}/{})",
            at_fall.more_than_once(),
            at_fall.never,
            at_fall.once,
            at_fall.twice,
            at_fall.more
        ),
    );
    let end = report.sessions_by_moves.unwrap_or_default();
    report.expect(
        report.sessions_by_moves.is_some() && end.more == 0 && end.twice <= at_fall.once,
        format!(
            "sessions moved 0/1/2/3+ times at the end: {}/{}/{}/{}, of which at most {} (those \
             the rebalancing had moved once) may have moved twice",
            end.never, end.once, end.twice, end.more, at_fall.once
        ),
    );
}

/// What the scale-down phase leaves to judge once the clients have finished.
struct ScaleDown {
    /// The clients' migrations when the load fell.
    migrated_at_fall: u64,
    /// The clients' sessions by moves when the load fell.
    moves_at_fall: SessionsByMoves,
    /// What the operator recorded in `status.rollout` since the load fell.
    recorded: Option<Recorded>,
}

/// The scenario up to its verdict: the ramp, the scale-up, the settle, the fall, the
/// scale-down. Each step's figures go into the details as they come; a bounded wait for the
/// replicas that runs out is a failure, and the scenario goes on.
async fn phases(
    harness: &mut Harness,
    context: &Context,
    report: &mut ScenarioReport,
    spec: &mut ServiceSpec,
    loads: &mut Loads,
    sampler: &Sampler,
    clock: Instant,
) -> Result<ScaleDown, ScenarioError> {
    let client = harness.client();
    let at = || round(clock.elapsed().as_secs_f64());

    // 100 sessions over 2 pods, far below the target: the replicas stay.
    loads
        .add(harness, spec, BASE_SESSIONS, context.progress)
        .await?;
    let mut ramp = vec![json!({"at": at(), "sessions": loads.offered()})];
    for _ in 0..RAMP_STEPS {
        steps::run_for(harness, RAMP_EVERY).await?;
        loads.add(harness, spec, RAMP_STEP, false).await?;
        ramp.push(json!({"at": at(), "sessions": loads.offered()}));
    }
    let ramp_end = clock.elapsed();
    report.detail("ramp", ramp);
    report.detail("rampEndSeconds", round(ramp_end.as_secs_f64()));
    let read = landing::sessions_per_pod(harness, spec).await;
    landing_detail(report, "AtRampEnd", &read);

    let scaled_up = scaled(
        harness,
        report,
        spec,
        MAX_REPLICAS,
        (clock, ramp_end),
        "timeToScaleUpSeconds",
    )
    .await?;
    let observed = spec.observe(&client).await?;
    report.detail(
        "lastDecisionAfterScaleUp",
        observed.at("/status/autoscaling/lastDecision"),
    );
    if let Some(pods) = &scaled_up {
        report.detail("podsAfterScaleUp", pods);
        let read = landing::sessions_per_pod(harness, spec).await;
        landing_detail(report, "AfterScaleUp", &read);
        settle(harness, spec, report).await;
    }

    // The load falls back to the first run's 100 sessions, once no round of rebalancing moves
    // sessions any more: rebalancing is turned off and its last round waited for, so that what
    // moves from then on is the scale-down's, and the operator's count of it can be checked
    // against the clients'. (A round that starts as the load falls, on counts read before,
    // would move sessions the scale-down then moves again: see e2e/README.md.)
    spec.merge(
        &client,
        json!({"spec": {"autoscaling": {"rebalance": {"enabled": false}}}}),
    )
    .await?;
    let rounds = rebalanced(harness, spec, report).await?;
    let baseline = spec.observe(&client).await?.rollout();
    // The scale-down may be decided in more than one step, each recorded anew: its accounting
    // is the records seen from the fall on, the baseline's among them.
    let records_from = sampler.records().len().saturating_sub(1);
    let at_fall = loads.so_far();
    expect_rebalance_recorded(report, rounds.as_ref(), at_fall.migrated);
    report.detail("sessionsByMovesAtFall", at_fall.sessions_by_moves);
    let fall = clock.elapsed();
    report.detail("fallSeconds", round(fall.as_secs_f64()));
    loads.fall().await;
    let scaled_down = scaled(
        harness,
        report,
        spec,
        MIN_REPLICAS,
        (clock, fall),
        "timeToScaleDownSeconds",
    )
    .await?;
    if scaled_down.is_some() {
        spec.replicas = MIN_REPLICAS;
        let settled = steps::wait_settled(harness, spec, None).await?;
        report.detail("podsAfter", &settled.pods);
        let recorded_in_time =
            wait_recorded(harness, spec, baseline.as_ref(), sampler, records_from).await;
        report.detail("operatorRecordedBeforeTheLoadEnded", recorded_in_time);
    }
    steps::run_for(harness, Duration::from_secs(2)).await?;
    report.landed(landing::sessions_per_pod(harness, spec).await);

    let end = spec.observe(&client).await?;
    // The verdict takes what is recorded at the very end; the wait above only gave it time.
    let recorded = Recorded::over(
        baseline.as_ref(),
        &records_since(sampler, records_from, end.rollout()),
    );
    report.operator(recorded.as_ref());
    report.detail("autoscalingStatus", end.at("/status/autoscaling"));
    report.detail(
        "lastDecisionReason",
        end.at("/status/autoscaling/lastDecision/reason"),
    );
    report.detail("scaledEvents", scaled_events(&client, spec).await?);
    Ok(ScaleDown {
        migrated_at_fall: at_fall.migrated,
        moves_at_fall: at_fall.sessions_by_moves,
        recorded,
    })
}

/// Waits (within [`SCALE_UP_WITHIN`] or [`SCALE_DOWN_WITHIN`]) for `n` replicas, all Ready
/// (see [`wait_replicas`]), and records in `detail` the seconds it took from `since` on `clock`.
/// A wait that runs out is a failure and `None` (the detail `null`); any other error ends the
/// scenario.
async fn scaled(
    harness: &Harness,
    report: &mut ScenarioReport,
    spec: &ServiceSpec,
    n: i32,
    (clock, since): (Instant, Duration),
    detail: &str,
) -> Result<Option<Vec<PodView>>, ScenarioError> {
    let within = if n == MAX_REPLICAS {
        SCALE_UP_WITHIN
    } else {
        SCALE_DOWN_WITHIN
    };
    let pods = match wait_replicas(harness, spec, n, within).await {
        Ok(pods) => Some(pods),
        Err(timeout @ ScenarioError::Timeout { .. }) => {
            report.failures.push(timeout.to_string());
            None
        }
        Err(err) => return Err(err),
    };
    let took = round((clock.elapsed() - since).as_secs_f64());
    report.detail(detail, pods.as_ref().map(|_| took));
    Ok(pods)
}

/// Waits (at most `within`) until `spec.replicas` is `n` and exactly `n` pods exist, all Ready,
/// none terminating: the autoscaling's decision carried out, drains included.
pub(super) async fn wait_replicas(
    harness: &Harness,
    spec: &ServiceSpec,
    n: i32,
    within: Duration,
) -> Result<Vec<PodView>, ScenarioError> {
    let client = harness.client();
    let count = usize::try_from(n).unwrap_or(0);
    wait_until(
        &format!(
            "spec.replicas {n} and {n} Ready pods of {}/{}",
            spec.namespace, spec.name
        ),
        within,
        || async {
            let observed = spec.observe(&client).await?;
            let pods = spec.pods(&client).await?;
            let ready = pods.iter().filter(|p| p.ready && !p.terminating).count();
            Ok(
                if replicas(&observed) == Some(i64::from(n))
                    && pods.len() == count
                    && ready == count
                {
                    Check::Done(pods)
                } else {
                    Check::NotYet(format!(
                        "spec.replicas {:?}, status.autoscaling {}; {}",
                        replicas(&observed),
                        observed
                            .at("/status/autoscaling")
                            .map_or("unset".to_owned(), Value::to_string),
                        describe_pods(&pods)
                    ))
                },
            )
        },
    )
    .await
}

pub(super) fn replicas(observed: &Observed) -> Option<i64> {
    observed.at("/spec/replicas").and_then(Value::as_i64)
}

/// After the scale-up: waits (at most [`BALANCE_WITHIN`]) until the busiest pod holds at most
/// [`landing::BALANCE`] times the mean, and reports how long that took (`null`: it did not),
/// the balance seen meanwhile (each change, with the seconds since the scale-up) and the
/// sessions per pod at the end; fails the scenario when the balance was not reached.
async fn settle(harness: &Harness, spec: &ServiceSpec, report: &mut ScenarioReport) {
    let started = Instant::now();
    let seen: Mutex<Vec<(f64, f64)>> = Mutex::new(Vec::new());
    let balanced = wait_until(
        &format!("the busiest pod within {} of the mean", landing::BALANCE),
        BALANCE_WITHIN,
        || async {
            let read = landing::sessions_per_pod(harness, spec).await?;
            let balance = read.balance();
            if let (Some(b), Ok(mut seen)) = (balance, seen.lock()) {
                let b = (b * 1000.0).round() / 1000.0;
                if seen.last().is_none_or(|&(_, last)| last != b) {
                    seen.push((round(started.elapsed().as_secs_f64()), b));
                }
            }
            Ok(match balance {
                Some(b) if b <= landing::BALANCE => Check::Done(()),
                _ => Check::NotYet(format!("sessions per pod {:?}", read.0)),
            })
        },
    )
    .await;
    let time_to_balance = balanced
        .ok()
        .map(|()| round(started.elapsed().as_secs_f64()));
    report.detail("timeToBalanceSeconds", time_to_balance);
    report.detail(
        "balanceWhileSettling",
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
    );
    let read = landing::sessions_per_pod(harness, spec).await;
    landing_detail(report, "AfterSettle", &read);
    let within = match time_to_balance {
        Some(seconds) => format!("true: reached {seconds} s after the scale-up"),
        None => format!(
            "false: not within {} s of the scale-up",
            BALANCE_WITHIN.as_secs()
        ),
    };
    let last = read.as_ref().ok().and_then(PodSessions::balance);
    let kept = match (time_to_balance, &read) {
        (None, Ok(sessions)) => {
            let observed = spec.observe(&harness.client()).await;
            let round = observed
                .ok()
                .and_then(|o| o.at("/status/rebalance").cloned())
                .and_then(|r| serde_json::from_value::<RebalanceStatus>(r).ok());
            kept_by_move_once(sessions, round.as_ref())
        }
        _ => None,
    };
    report.expect(
        time_to_balance.is_some() || kept.is_some(),
        format!(
            "the busiest pod was not within {} of the mean {} s after the scale-up, and the \
             last round of rebalancing does not record the pods above it keeping sessions moved \
             to them recently",
            landing::BALANCE,
            BALANCE_WITHIN.as_secs()
        ),
    );
    if let Some(kept) = kept {
        report.detail("balanceHeldByMoveOnce", kept);
    }
    report.detail(
        "balanceAfterScaleUpWithinTarget",
        format!(
            "{within} (busiest pod over the mean, target <= {}); {} at the end of the wait",
            landing::BALANCE,
            last.map_or("not read".to_owned(), |b| format!("{b:.3}"))
        ),
    );
}

/// When every pod above [`landing::BALANCE`] times the mean is recorded in the last round of
/// rebalancing (`status.rebalance`) as having kept part of its ask because those sessions moved
/// to it recently (each session moves at most once within the gateway's `keepMovedFor`): each
/// such pod with the sessions it kept (the operator's [`rebalance::kept_of_ask`]). None
/// otherwise.
fn kept_by_move_once(
    sessions: &PodSessions,
    round: Option<&RebalanceStatus>,
) -> Option<Vec<Value>> {
    let pods = &round?.pods;
    let kept_of = |name: &str| rebalance::kept_of_ask(pods.iter().find(|p| p.pod == name)?);
    let over = sessions.over(landing::BALANCE);
    if over.is_empty() {
        return None;
    }
    over.into_iter()
        .map(|pod| {
            let kept = kept_of(pod)?;
            Some(json!({"pod": pod, "sessions": sessions.0.get(pod), "keptOfAsk": kept}))
        })
        .collect()
}

/// `sessionsPerPod<when>` and `balance<when>` in the details, or why they could not be read.
fn landing_detail(
    report: &mut ScenarioReport,
    when: &str,
    read: &Result<PodSessions, ScenarioError>,
) {
    match read {
        Ok(sessions) => {
            report.detail(&format!("sessionsPerPod{when}"), &sessions.0);
            report.detail(
                &format!("balance{when}"),
                sessions.balance().map(|b| (b * 1000.0).round() / 1000.0),
            );
        }
        Err(err) => report.detail(&format!("sessionsPerPod{when}Error"), err.to_string()),
    }
}

/// The records `sampler` saw from the `from`th on, then `now`.
fn records_since(sampler: &Sampler, from: usize, now: Option<Rollout>) -> Vec<Rollout> {
    let mut records = sampler.records();
    let mut since = records.split_off(from.min(records.len()));
    since.extend(now);
    since
}

/// Gives the operator [`RECORD_GRACE`] to record the scale-down's drains (over every record
/// since the fall); whether it did.
async fn wait_recorded(
    harness: &Harness,
    spec: &ServiceSpec,
    baseline: Option<&Rollout>,
    sampler: &Sampler,
    from: usize,
) -> bool {
    let client = harness.client();
    let drained = i64::from(MAX_REPLICAS - MIN_REPLICAS);
    wait_until(
        &format!("the operator to record {drained} drained pods"),
        RECORD_GRACE,
        || async {
            let now = spec.observe(&client).await?.rollout();
            let records = records_since(sampler, from, now);
            Ok(match Recorded::over(baseline, &records) {
                Some(r) if r.pods_drained >= drained => Check::Done(()),
                other => Check::NotYet(format!("recorded {other:?}")),
            })
        },
    )
    .await
    .is_ok()
}

/// The Events of reason `Scaled` about the LongConnService, oldest first: when, what they say,
/// and how often they were seen.
async fn scaled_events(
    client: &kube::Client,
    spec: &ServiceSpec,
) -> Result<Vec<Value>, ScenarioError> {
    let events: Api<Event> = Api::namespaced(client.clone(), &spec.namespace);
    let list = events
        .list(&ListParams::default())
        .await
        .map_err(ScenarioError::kube(format!(
            "list the Events of namespace {}",
            spec.namespace
        )))?;
    let mut scaled: Vec<Value> = list
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("Scaled")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(spec.name.as_str())
        })
        .map(|e| {
            let at = match &e.event_time {
                Some(time) => serde_json::to_value(time).unwrap_or(Value::Null),
                None => serde_json::to_value(&e.deprecated_last_timestamp).unwrap_or(Value::Null),
            };
            json!({
                "at": at,
                "note": e.note,
                "count": e.series.map_or(1, |s| s.count),
            })
        })
        .collect();
    scaled.sort_by_key(|e| e["at"].as_str().unwrap_or_default().to_owned());
    Ok(scaled)
}

/// `spec.replicas` and `status.autoscaling.desiredReplicas` stayed within
/// `minReplicas..=maxReplicas` in every sample.
fn expect_replicas_within_bounds(report: &mut ScenarioReport, series: &[Sample]) {
    let outside: Vec<&Sample> = series
        .iter()
        .filter(|s| {
            [s.replicas, s.desired]
                .into_iter()
                .flatten()
                .any(|n| n < i64::from(MIN_REPLICAS) || n > i64::from(MAX_REPLICAS))
        })
        .collect();
    report.expect(!series.is_empty(), "no sample of spec.replicas was taken");
    report.expect(
        outside.is_empty(),
        format!(
            "spec.replicas or status.autoscaling.desiredReplicas left {MIN_REPLICAS}..={MAX_REPLICAS} in {} samples, the first: {:?}",
            outside.len(),
            outside.first()
        ),
    );
}

/// Every pod the scale-down removed was drained first: the operator recorded them all, with
/// no session dropped and as many migrated as the clients counted since the fall.
fn expect_drained_first(report: &mut ScenarioReport, scale_down: &ScaleDown) {
    let clients = report
        .migrated
        .map(|n| n.saturating_sub(scale_down.migrated_at_fall));
    report.detail("clientsMigratedInScaleDown", clients);
    let Some(recorded) = &scale_down.recorded else {
        report.failures.push(
            "the operator recorded no accounting for the scale-down in status.rollout".into(),
        );
        return;
    };
    let drained = i64::from(MAX_REPLICAS - MIN_REPLICAS);
    report.expect(
        recorded.sessions_dropped == 0,
        format!(
            "the operator recorded {} dropped sessions",
            recorded.sessions_dropped
        ),
    );
    report.expect(
        recorded.pods_drained == drained,
        format!(
            "the operator recorded {} drained pods, not {drained}",
            recorded.pods_drained
        ),
    );
    report.expect(
        clients.map(|n| n as i64) == Some(recorded.sessions_migrated),
        format!(
            "in the scale-down the clients counted {clients:?} migrations, the operator {}",
            recorded.sessions_migrated
        ),
    );
}

/// The load runs: the first stays to the end, the others make the ramp.
#[derive(Default)]
struct Loads {
    running: Vec<RunningLoad>,
    finished: Vec<LoadReport>,
    /// The sessions the runs under way hold open.
    offered: Arc<AtomicU64>,
}

impl Loads {
    /// Starts a run of `sessions` through the ClusterIP and waits until each has connected.
    async fn add(
        &mut self,
        harness: &Harness,
        spec: &ServiceSpec,
        sessions: usize,
        progress: bool,
    ) -> Result<(), ScenarioError> {
        let load =
            steps::start_load(harness, spec, sessions, 0, progress, Route::ClusterIp).await?;
        self.running.push(load);
        self.offered.fetch_add(sessions as u64, Ordering::Relaxed);
        Ok(())
    }

    fn offered(&self) -> u64 {
        self.offered.load(Ordering::Relaxed)
    }

    /// What every run counted so far, added up.
    fn so_far(&self) -> LoadReport {
        let running = self.running.iter().map(RunningLoad::report);
        let all: Vec<LoadReport> = running.chain(self.finished.iter().cloned()).collect();
        LoadReport::combined(&all)
    }

    /// Stops every run but the first and waits until they have ended.
    async fn fall(&mut self) {
        let ramp = self.running.split_off(self.running.len().min(1));
        for load in &ramp {
            load.stop();
        }
        let left: u64 = self
            .running
            .iter()
            .map(|l| l.report().sessions_opened)
            .sum();
        self.offered.store(left, Ordering::Relaxed);
        for load in ramp {
            self.finished.push(load.finish().await);
        }
    }

    /// Stops every run, waits until they have ended, and adds up their reports.
    async fn finish(mut self) -> LoadReport {
        for load in &self.running {
            load.stop();
        }
        for load in self.running.drain(..) {
            self.finished.push(load.finish().await);
        }
        self.offered.store(0, Ordering::Relaxed);
        LoadReport::combined(&self.finished)
    }
}

/// One sample of the replicas and pods.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    /// `spec.replicas`.
    pub replicas: Option<i64>,
    /// `status.autoscaling.desiredReplicas`.
    pub desired: Option<i64>,
    /// `status.autoscaling.cpuUtilization`, when the operator scales on CPU itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_utilization: Option<i64>,
    /// Pods not terminating, and of those the Ready ones.
    pub pods: usize,
    pub ready: usize,
    pub terminating: usize,
    /// Sessions the load runs under way hold open.
    pub sessions: u64,
}

impl Sample {
    fn of(t: f64, observed: &Observed, pods: &[PodView], sessions: u64) -> Self {
        let live = || pods.iter().filter(|p| !p.terminating);
        Sample {
            t,
            replicas: replicas(observed),
            desired: observed
                .at("/status/autoscaling/desiredReplicas")
                .and_then(Value::as_i64),
            cpu_utilization: observed
                .at("/status/autoscaling/cpuUtilization")
                .and_then(Value::as_i64),
            pods: live().count(),
            ready: live().filter(|p| p.ready).count(),
            terminating: pods.iter().filter(|p| p.terminating).count(),
            sessions,
        }
    }
}

/// Samples the replicas and pods every [`SAMPLE_EVERY`] in the background until finished or
/// dropped; a sample whose reads fail is skipped.
pub(super) struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    /// `status.rollout` at every sample, oldest first ([`Recorded::over`] reads each record's
    /// last version).
    records: Arc<Mutex<Vec<Rollout>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub(super) fn start(
        client: kube::Client,
        spec: ServiceSpec,
        clock: Instant,
        sessions: Arc<AtomicU64>,
    ) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let records = Arc::new(Mutex::new(Vec::<Rollout>::new()));
        let kept = samples.clone();
        let records_kept = records.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let t = round(clock.elapsed().as_secs_f64());
                let (Ok(observed), Ok(pods)) =
                    (spec.observe(&client).await, spec.pods(&client).await)
                else {
                    continue;
                };
                let sample = Sample::of(t, &observed, &pods, sessions.load(Ordering::Relaxed));
                if let Ok(mut kept) = kept.lock() {
                    kept.push(sample);
                }
                if let (Some(record), Ok(mut records)) = (observed.rollout(), records_kept.lock()) {
                    records.push(record);
                }
            }
        });
        Self {
            samples,
            records,
            task,
        }
    }

    /// `status.rollout` as sampled so far, oldest first.
    fn records(&self) -> Vec<Rollout> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The samples taken so far.
    pub(super) fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops sampling; the samples taken.
    pub(super) fn finish(self) -> Vec<Sample> {
        self.task.abort();
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_balance_short_of_the_target_is_held_by_move_once_only_when_the_last_round_says_so() {
        // The counts of a run that stopped at 1.253: the busiest pod held only sessions that
        // had moved to it, and round 3 asked it for 33.
        let sessions = PodSessions(
            [
                ("a", 167),
                ("b", 133),
                ("c", 130),
                ("d", 125),
                ("e", 123),
                ("f", 122),
            ]
            .into_iter()
            .map(|(p, n)| (p.to_owned(), n))
            .collect(),
        );
        // As the status holds it.
        let round = |selected: i64, kept: i64| -> RebalanceStatus {
            serde_json::from_value(json!({"round": 3, "pods": [{"pod": "a", "sessions": 33,
                "held": 167, "outcome": {"selected": selected, "keptMoved": kept,
                "moved": selected, "movedAgain": 0, "closedByClient": 0, "dropped": 0,
                "takenByDrain": 0}}]}))
            .expect("a status.rebalance")
        };
        let held = kept_by_move_once(&sessions, Some(&round(0, 167))).expect("held");
        assert_eq!(
            held,
            [json!({"pod": "a", "sessions": 167, "keptOfAsk": 33})]
        );
        assert_eq!(kept_by_move_once(&sessions, Some(&round(33, 134))), None);
        assert_eq!(kept_by_move_once(&sessions, None), None);
        let unfinished: RebalanceStatus = serde_json::from_value(
            json!({"round": 3, "pods": [{"pod": "a", "sessions": 33, "held": 167}]}),
        )
        .expect("a status.rebalance");
        assert_eq!(kept_by_move_once(&sessions, Some(&unfinished)), None);
        // Another pod above the bound that the round did not ask: not held by the rule.
        let mut two_over = sessions.clone();
        two_over.0.insert("b".to_owned(), 170);
        assert_eq!(kept_by_move_once(&two_over, Some(&round(0, 167))), None);
        let balanced = PodSessions(sessions.0.keys().map(|p| (p.clone(), 100)).collect());
        assert_eq!(kept_by_move_once(&balanced, Some(&round(0, 167))), None);
    }

    fn sample(t: f64, replicas: i64, desired: Option<i64>) -> Sample {
        Sample {
            t,
            replicas: Some(replicas),
            desired,
            cpu_utilization: None,
            pods: usize::try_from(replicas).unwrap_or(0),
            ready: usize::try_from(replicas).unwrap_or(0),
            terminating: 0,
            sessions: 100,
        }
    }

    #[test]
    fn the_ramp_ends_at_800_sessions_which_ask_for_the_most_pods() {
        assert_eq!(SESSIONS, 800);
        let wanted = (SESSIONS as u64).div_ceil(TARGET_SESSIONS_PER_POD);
        assert_eq!(wanted, u64::try_from(MAX_REPLICAS).unwrap_or(0));
        // One pod fewer would be outside the tolerance, so it does not hold the scale-up back.
        let one_fewer = SESSIONS as f64 / ((wanted - 1) * TARGET_SESSIONS_PER_POD) as f64;
        assert!(one_fewer > 1.0 + TOLERANCE, "{one_fewer}");
        // What is left at the end asks for fewer than the fewest pods.
        assert!((BASE_SESSIONS as u64).div_ceil(TARGET_SESSIONS_PER_POD) < MIN_REPLICAS as u64);
    }

    #[test]
    fn replicas_outside_the_bounds_fail_and_name_the_first_sample() {
        let mut report = ScenarioReport::default();
        let within = [sample(0.0, 2, None), sample(1.0, 6, Some(6))];
        expect_replicas_within_bounds(&mut report, &within);
        assert_eq!(report.failures, Vec::<String>::new());

        let over = [
            sample(0.0, 2, Some(2)),
            sample(1.0, 6, Some(7)),
            sample(2.0, 1, Some(2)),
        ];
        expect_replicas_within_bounds(&mut report, &over);
        let failure = report.failures.join("; ");
        assert!(
            report.failures.len() == 1
                && failure.contains("in 2 samples, the first: Some(Sample { t: 1.0"),
            "{failure}"
        );

        let mut empty = ScenarioReport::default();
        expect_replicas_within_bounds(&mut empty, &[]);
        assert_eq!(empty.failures, ["no sample of spec.replicas was taken"]);
    }

    #[test]
    fn each_session_may_move_once_in_each_phase() {
        let judge = |at_fall: [u64; 4], end: [u64; 4]| {
            let moves = |[never, once, twice, more]: [u64; 4]| SessionsByMoves {
                never,
                once,
                twice,
                more,
            };
            let mut report = ScenarioReport {
                sessions_by_moves: Some(moves(end)),
                ..ScenarioReport::default()
            };
            let scale_down = ScaleDown {
                migrated_at_fall: 0,
                moves_at_fall: moves(at_fall),
                recorded: None,
            };
            expect_moved_once_per_phase(&mut report, &scale_down);
            report.failures.len()
        };
        assert_eq!(
            judge([500, 300, 0, 0], [400, 397, 3, 0]),
            0,
            "rebalanced, then drained"
        );
        assert_eq!(
            judge([500, 298, 2, 0], [500, 298, 2, 0]),
            1,
            "moved twice while scaling up"
        );
        assert_eq!(
            judge([800, 0, 0, 0], [797, 0, 3, 0]),
            1,
            "moved twice in the scale-down"
        );
        assert_eq!(judge([500, 300, 0, 0], [500, 299, 0, 1]), 1, "three times");
    }

    #[test]
    fn the_scale_down_is_judged_on_what_moved_after_the_fall() {
        let mut report = ScenarioReport {
            migrated: Some(130),
            ..ScenarioReport::default()
        };
        let recorded = |migrated, dropped, drained| {
            Some(Recorded {
                pods_drained: drained,
                sessions_migrated: migrated,
                sessions_dropped: dropped,
            })
        };
        expect_drained_first(
            &mut report,
            &ScaleDown {
                migrated_at_fall: 30,
                moves_at_fall: SessionsByMoves::default(),
                recorded: recorded(100, 0, 4),
            },
        );
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(report.details["clientsMigratedInScaleDown"], json!(100));

        expect_drained_first(
            &mut report,
            &ScaleDown {
                migrated_at_fall: 0,
                moves_at_fall: SessionsByMoves::default(),
                recorded: recorded(100, 2, 3),
            },
        );
        let expected = [
            "the operator recorded 2 dropped sessions",
            "the operator recorded 3 drained pods, not 4",
            "in the scale-down the clients counted Some(130) migrations, the operator 100",
        ];
        assert_eq!(report.failures, expected);

        let mut unrecorded = ScenarioReport::default();
        expect_drained_first(
            &mut unrecorded,
            &ScaleDown {
                migrated_at_fall: 0,
                moves_at_fall: SessionsByMoves::default(),
                recorded: None,
            },
        );
        assert_eq!(unrecorded.failures.len(), 1);
    }

    #[test]
    fn a_sample_counts_live_ready_and_terminating_pods_apart() {
        let observed = Observed(json!({"spec": {"replicas": 3},
            "status": {"autoscaling": {"desiredReplicas": 3}}}));
        let pod = |name: &str, ready, terminating| PodView {
            name: name.to_owned(),
            revision: "a".to_owned(),
            node: None,
            ip: None,
            ready,
            terminating,
            gateway_container: None,
            gateway_restarts: 0,
            admin_port: None,
        };
        let pods = [
            pod("a", true, false),
            pod("b", false, false),
            pod("c", true, true),
        ];
        assert_eq!(
            Sample::of(4.0, &observed, &pods, 275),
            Sample {
                t: 4.0,
                replicas: Some(3),
                desired: Some(3),
                cpu_utilization: None,
                pods: 2,
                ready: 1,
                terminating: 1,
                sessions: 275,
            }
        );
    }
}
