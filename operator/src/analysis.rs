//! The health gate of a rollout with steps: the new revision's gateways against the old
//! revision's, over the same window.
//!
//! When a rollout with steps starts while `spec.rollout.analysis` is set, every gateway's
//! counts are recorded ([`baseline`], in `status.rollout.analysis`). From then on each step
//! [`tally`]s what each revision's gateways saw since (a gateway that restarted counts from
//! zero again; a pod that started later from zero) and [`judge`]s the new revision: for each
//! share of the upgrade attempts (refused by the app, not handed to it, sessions the app ended
//! with an error) the new revision may exceed the old revision's share by at most the limit,
//! once it has seen `minAttempts`; the sessions its gateways lost to crashes may not exceed
//! `maxDroppedSessions`. A failed signal aborts the rollout: the new revision's pods are
//! drained, never cut, and the old revision grows back. Pure, like the rollout it serves.

use std::fmt;

use longconn_drain_api::DrainReport;

use crate::crd::{AnalysisSpec, HealthBaseline, HealthTally};
use crate::rollout::PodFacts;

/// What the gate judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    UpstreamRefused,
    UpstreamUnavailable,
    ServerErrors,
    DroppedSessions,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::UpstreamRefused => "UpstreamRefused",
            Signal::UpstreamUnavailable => "UpstreamUnavailable",
            Signal::ServerErrors => "ServerErrors",
            Signal::DroppedSessions => "DroppedSessions",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub update: HealthTally,
    pub stable: HealthTally,
    /// The first signal beyond its limit.
    pub failed: Option<Signal>,
    /// The verdict in words.
    pub message: String,
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn baseline_of(pod: &str, report: &DrainReport) -> HealthBaseline {
    let h = report.health;
    HealthBaseline {
        pod: pod.to_owned(),
        restarts: count(report.restarts),
        handshakes: count(h.handshakes),
        upstream_refused: count(h.upstream_refused),
        upstream_unavailable: count(h.upstream_unavailable),
        upstream_errors: count(h.upstream_errors),
        lost_to_restarts: count(report.lost_to_restarts),
    }
}

/// Every gateway's counts now, where its report is read: the start of the window.
pub fn baseline(pods: &[PodFacts]) -> Vec<HealthBaseline> {
    pods.iter()
        .filter_map(|p| Some(baseline_of(&p.name, p.report.as_ref()?)))
        .collect()
}

/// What one gateway saw since the window began: its counts less those of the baseline, all of
/// them when its process restarted since (the counts began again) or it started later.
fn since(pod: &PodFacts, baseline: &[HealthBaseline]) -> Option<HealthTally> {
    let now = baseline_of(&pod.name, pod.report.as_ref()?);
    let zero = HealthBaseline::default();
    let then = baseline.iter().find(|b| b.pod == pod.name).unwrap_or(&zero);
    let counts_from = if now.restarts > then.restarts {
        &zero
    } else {
        then
    };
    let delta = |now: i64, then: i64| (now - then).max(0);
    Some(HealthTally {
        attempts: delta(
            now.handshakes + now.upstream_refused + now.upstream_unavailable,
            counts_from.handshakes
                + counts_from.upstream_refused
                + counts_from.upstream_unavailable,
        ),
        upstream_refused: delta(now.upstream_refused, counts_from.upstream_refused),
        upstream_unavailable: delta(now.upstream_unavailable, counts_from.upstream_unavailable),
        server_errors: delta(now.upstream_errors, counts_from.upstream_errors),
        // A running total across restarts.
        dropped: delta(now.lost_to_restarts, then.lost_to_restarts),
    })
}

/// The counts of some pods' gateways since the window began.
pub fn tally<'a>(
    pods: impl IntoIterator<Item = &'a PodFacts>,
    baseline: &[HealthBaseline],
) -> HealthTally {
    pods.into_iter()
        .filter_map(|p| since(p, baseline))
        .fold(HealthTally::default(), |a, b| HealthTally {
            attempts: a.attempts + b.attempts,
            upstream_refused: a.upstream_refused + b.upstream_refused,
            upstream_unavailable: a.upstream_unavailable + b.upstream_unavailable,
            server_errors: a.server_errors + b.server_errors,
            dropped: a.dropped + b.dropped,
        })
}

/// A share of the attempts, in percent (0 of none).
fn share(n: i64, attempts: i64) -> f64 {
    if attempts > 0 {
        n as f64 * 100.0 / attempts as f64
    } else {
        0.0
    }
}

/// The new revision against the old, over the same window.
pub fn judge(spec: &AnalysisSpec, update: HealthTally, stable: HealthTally) -> Judgement {
    let shares = [
        (
            Signal::UpstreamRefused,
            "upstream refused",
            update.upstream_refused,
            stable.upstream_refused,
            spec.upstream_refused_percent,
        ),
        (
            Signal::UpstreamUnavailable,
            "upstream unavailable",
            update.upstream_unavailable,
            stable.upstream_unavailable,
            spec.upstream_unavailable_percent,
        ),
        (
            Signal::ServerErrors,
            "server errors",
            update.server_errors,
            stable.server_errors,
            spec.server_errors_percent,
        ),
    ];
    let judged = update.attempts >= spec.min_attempts;
    let failed_share = shares.iter().find(|(.., new, old, limit)| {
        judged && share(*new, update.attempts) - share(*old, stable.attempts) > f64::from(*limit)
    });
    let (failed, message) = if update.dropped > spec.max_dropped_sessions {
        (
            Some(Signal::DroppedSessions),
            format!(
                "the new revision's gateways lost {} sessions to crashes, more than \
                 maxDroppedSessions ({})",
                update.dropped, spec.max_dropped_sessions
            ),
        )
    } else if let Some((signal, words, new, old, limit)) = failed_share {
        (
            Some(*signal),
            format!(
                "{words}: {:.1}% of {} attempts on the new revision against {:.1}% of {} on \
                 the old, more than {limit} points above",
                share(*new, update.attempts),
                update.attempts,
                share(*old, stable.attempts),
                stable.attempts
            ),
        )
    } else if judged {
        (
            None,
            format!(
                "healthy over {} attempts on the new revision ({} on the old)",
                update.attempts, stable.attempts
            ),
        )
    } else {
        (
            None,
            format!(
                "{} of the {} attempts the new revision must see before it is judged",
                update.attempts, spec.min_attempts
            ),
        )
    };
    Judgement {
        update,
        stable,
        failed,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longconn_drain_api::Health;

    fn pod(name: &str, restarts: u64, lost: u64, health: Health) -> PodFacts {
        PodFacts {
            name: name.to_owned(),
            report: Some(DrainReport {
                restarts,
                lost_to_restarts: lost,
                health,
                ..DrainReport::default()
            }),
            ..PodFacts::default()
        }
    }

    fn health(handshakes: u64, refused: u64, unavailable: u64, errors: u64) -> Health {
        Health {
            handshakes,
            upstream_refused: refused,
            upstream_unavailable: unavailable,
            upstream_errors: errors,
        }
    }

    fn tally_of(attempts: i64, refused: i64) -> HealthTally {
        HealthTally {
            attempts,
            upstream_refused: refused,
            ..HealthTally::default()
        }
    }

    #[test]
    fn a_gateway_counts_from_the_baseline_and_from_zero_after_a_restart_or_when_new() {
        let base = baseline(&[
            pod("a", 0, 0, health(100, 5, 1, 2)),
            pod("b", 1, 3, health(50, 0, 0, 0)),
        ]);
        let now = [
            // The same process: the difference.
            pod("a", 0, 0, health(130, 9, 1, 3)),
            // Restarted since: everything it counts is new; its losses are a running total.
            pod("b", 2, 10, health(4, 1, 0, 0)),
            // Started later.
            pod("c", 0, 0, health(7, 0, 2, 0)),
        ];
        assert_eq!(
            tally(&now, &base),
            HealthTally {
                attempts: 34 + 5 + 9,
                upstream_refused: 4 + 1,
                upstream_unavailable: 2,
                server_errors: 1,
                dropped: 7,
            }
        );
        // A pod whose report cannot be read now adds nothing.
        let unread = PodFacts {
            name: "a".to_owned(),
            ..PodFacts::default()
        };
        assert_eq!(tally([&unread], &base), HealthTally::default());
    }

    #[test]
    fn a_share_above_the_old_revision_s_by_more_than_the_limit_fails_once_enough_was_seen() {
        let spec = AnalysisSpec::default();
        // 30% refused against 0%: fails, naming the signal.
        let failed = judge(&spec, tally_of(40, 12), tally_of(10, 0));
        assert_eq!(failed.failed, Some(Signal::UpstreamRefused));
        assert!(
            failed.message.contains("30.0% of 40 attempts"),
            "{}",
            failed.message
        );
        // The same share on the old revision: the app refuses as much either way.
        assert_eq!(
            judge(&spec, tally_of(40, 12), tally_of(100, 28)).failed,
            None
        );
        // Exactly at the limit passes.
        assert_eq!(judge(&spec, tally_of(100, 5), tally_of(0, 0)).failed, None);
        // Too few attempts: no verdict yet, and the words say how many are wanted.
        let early = judge(&spec, tally_of(19, 19), tally_of(0, 0));
        assert_eq!(early.failed, None);
        assert!(early.message.contains("19 of the 20"), "{}", early.message);
    }

    #[test]
    fn each_signal_fails_on_its_own_limit() {
        let spec = AnalysisSpec {
            upstream_refused_percent: 50,
            upstream_unavailable_percent: 10,
            server_errors_percent: 20,
            ..AnalysisSpec::default()
        };
        let update = |unavailable, errors, dropped| HealthTally {
            attempts: 100,
            upstream_refused: 40,
            upstream_unavailable: unavailable,
            server_errors: errors,
            dropped,
        };
        let stable = HealthTally::default();
        assert_eq!(judge(&spec, update(10, 20, 0), stable).failed, None);
        assert_eq!(
            judge(&spec, update(11, 20, 0), stable).failed,
            Some(Signal::UpstreamUnavailable)
        );
        assert_eq!(
            judge(&spec, update(10, 21, 0), stable).failed,
            Some(Signal::ServerErrors)
        );
        // Sessions lost to a crash fail the gate whatever the attempts.
        let crashed = HealthTally {
            dropped: 1,
            ..HealthTally::default()
        };
        assert_eq!(
            judge(&spec, crashed, stable).failed,
            Some(Signal::DroppedSessions)
        );
    }
}
