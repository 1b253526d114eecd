//! Rebalancing: the busiest gateways hand a share of their sessions to the pods with room.
//!
//! A scale-up adds empty pods, and new pods receive only new sessions: the busy pods stay busy
//! for as long as their clients stay. Once nothing else moves (no drain, no rollout, no
//! scale-down, every pod Ready) and the busiest pod holds more than
//! `autoscaling.rebalance.thresholdPercent` of the mean, a **round** starts: each pod above the
//! threshold is asked (`POST /rebalance` on its gateway) to move what it holds above the mean,
//! its close frames spread over `spread`. While the round runs, the [`placement`] counts those
//! sessions as on their way, so only the pods with the most room take them (the busy pods stop
//! accepting), and each moved session lands once. The gateway picks the sessions that have
//! moved least, then the youngest, and leaves out those that came by a move in the last
//! [`KEEP_MOVED_FOR`]. Rounds start at most every `cooldown`, and never while the session
//! autoscaling's arithmetic calls for another number of pods ([`scale_ahead`]).
//!
//! Everything here is pure: the rollout step (`rollout::step`) asks it, with the pods' counts
//! and `status.rebalance`, whether a round is due ([`due`], [`scale_ahead`]), what each pod is
//! asked ([`asks`]), how many sessions are still on their way ([`incoming`]), and what to
//! record ([`start`]).
//!
//! [`placement`]: crate::placement

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use longconn_drain_api::RebalanceReport;

use crate::crd::{
    AutoscalingSpec, RebalanceOutcome, RebalanceSpec, RebalanceStatus, RebalancedPod, ScalingRules,
    SelectPolicy,
};
use crate::placement;

/// A round leaves out the sessions that came to a pod by a move (a drain's or an earlier
/// round's) less than this long ago, so that no round moves a session twice within it (the
/// gateway knows a moved session by the moves its client declares, `Longconn-Session-Moves`).
pub const KEEP_MOVED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// The rebalancing settings, durations parsed; None when it is off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub threshold_percent: i32,
    pub spread: SignedDuration,
    pub cooldown: SignedDuration,
}

impl Settings {
    /// The settings of `spec`; None when rebalancing is off or a duration does not parse (the
    /// schema refuses such a spec).
    pub fn of(spec: &RebalanceSpec) -> Option<Settings> {
        let signed = |d: &crate::duration::Duration| {
            d.to_std()
                .ok()
                .and_then(|d| SignedDuration::try_from(d).ok())
        };
        spec.enabled.then_some(())?;
        Some(Settings {
            threshold_percent: spec.threshold_percent,
            spread: signed(&spec.spread)?,
            cooldown: signed(&spec.cooldown)?,
        })
    }
}

/// The id of round `round` on the gateways.
pub fn round_id(round: u32) -> String {
    format!("rebalance {round}")
}

/// What a round asks of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub pod: String,
    /// Sessions to move.
    pub sessions: i64,
    /// Sessions it holds now.
    pub held: i64,
}

/// Sessions to move from each pod of `sessions` (the pods that stay and serve): when the
/// busiest holds more than `threshold_percent` of the mean, every pod above that share moves
/// what it holds above the mean (rounded up). Empty otherwise.
pub fn asks(sessions: &BTreeMap<String, i64>, threshold_percent: i32) -> Vec<Ask> {
    let pods = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
    let total: i64 = sessions.values().sum();
    if pods < 2 || total <= 0 {
        return Vec::new();
    }
    // In whole sessions: a pod is over the threshold when 100 * its sessions * pods exceeds
    // threshold * total.
    let over = |n: i64| 100 * n * pods > i64::from(threshold_percent) * total;
    let mean = (total + pods - 1) / pods;
    sessions
        .iter()
        .filter(|&(_, &n)| over(n) && n > mean)
        .map(|(pod, &n)| Ask {
            pod: pod.clone(),
            sessions: n - mean,
            held: n,
        })
        .collect()
}

/// Whether round `last` may still be moving sessions at `now`: its spread, and the time the
/// proxies need to follow a label change, have not passed since it started.
pub fn in_flight(last: &RebalanceStatus, settings: &Settings, now: Timestamp) -> bool {
    last.started_at
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0) < settings.spread + placement::SETTLE)
}

/// Whether a new round may start at `now` with `serving` pods: the last one started at least
/// `cooldown` ago, or with another number of pods serving (a scale-up just added empty ones).
pub fn due(
    last: Option<&RebalanceStatus>,
    settings: &Settings,
    now: Timestamp,
    serving: usize,
) -> bool {
    last.is_none_or(|r| {
        usize::try_from(r.pods_serving).ok() != Some(serving)
            || r.started_at
                .as_ref()
                .is_none_or(|t| now.duration_since(t.0) >= settings.cooldown)
    })
}

/// Whether the session autoscaling is about to change the number of pods: by its arithmetic,
/// `sessions` call for fewer or more pods than serve (beyond the tolerance, within
/// `minReplicas` and `maxReplicas`, in a direction its `behavior` does not disable). Sessions
/// moved now could land on a pod a scale-down then drains, or be moved again by the round the
/// new pods of a scale-up call for: no round then.
pub fn scale_ahead(sessions: &BTreeMap<String, i64>, spec: &AutoscalingSpec) -> bool {
    let Some(target) = spec.target_sessions_per_pod.filter(|t| *t > 0) else {
        return false;
    };
    let pods = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
    let total: i64 = sessions.values().sum();
    let ratio = total as f64 / (pods as f64 * target as f64);
    let wanted = ((total + target - 1) / target)
        .min(i64::from(spec.max_replicas))
        .max(i64::from(spec.min_replicas));
    let tolerance = spec.behavior.tolerance;
    let may = |rules: &ScalingRules| rules.select_policy != SelectPolicy::Disabled;
    (ratio < 1.0 - tolerance && wanted < pods && may(&spec.behavior.scale_down))
        || (ratio > 1.0 + tolerance && wanted > pods && may(&spec.behavior.scale_up))
}

/// The sessions round `last` still counts as on their way to the receivers, while it is in
/// flight: what each pod still there holds above what it was asked to keep (`sessions_of` its
/// open sessions now; None when it is gone).
pub fn incoming(
    last: Option<&RebalanceStatus>,
    settings: &Settings,
    now: Timestamp,
    sessions_of: impl Fn(&str) -> Option<i64>,
) -> i64 {
    last.filter(|r| in_flight(r, settings, now)).map_or(0, |r| {
        r.pods
            .iter()
            .filter_map(|p| {
                let now = sessions_of(&p.pod)?;
                Some((now - (p.held - p.sessions)).clamp(0, p.sessions))
            })
            .sum()
    })
}

/// The record of a new round after `last`, asking `asks`, started at `now`.
pub fn start(
    last: Option<&RebalanceStatus>,
    asks: &[Ask],
    serving: usize,
    now: Timestamp,
) -> RebalanceStatus {
    let asked: i64 = asks.iter().map(|a| a.sessions).sum();
    RebalanceStatus {
        round: last.map_or(0, |r| r.round) + 1,
        started_at: Some(Time(now)),
        pods: asks
            .iter()
            .map(|a| RebalancedPod {
                pod: a.pod.clone(),
                sessions: a.sessions,
                held: a.held,
                outcome: None,
            })
            .collect(),
        sessions_asked: last.map_or(0, |r| r.sessions_asked) + asked,
        pods_serving: i32::try_from(serving).unwrap_or(i32::MAX),
        ..last.cloned().unwrap_or_default()
    }
}

/// The last round with the outcome of each pod whose gateway now reports its part finished
/// (`report`: the gateway's last rebalance report, by pod name), added to the totals once:
/// the round's record, and the pods whose outcome it newly holds.
pub fn follow(
    round: &RebalanceStatus,
    report: impl Fn(&str) -> Option<RebalanceReport>,
) -> (RebalanceStatus, Vec<RebalancedPod>) {
    let id = round_id(round.round);
    let mut out = round.clone();
    let mut finished = Vec::new();
    for pod in out.pods.iter_mut().filter(|p| p.outcome.is_none()) {
        let Some(r) = report(&pod.pod).filter(|r| r.id == id && r.is_finished()) else {
            continue;
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let outcome = RebalanceOutcome {
            selected: n(r.selected),
            kept_moved: n(r.kept_moved),
            moved: n(r.moved),
            moved_again: n(r.moved_again),
            closed_by_client: n(r.closed_by_client),
            dropped: n(r.dropped),
            taken_by_drain: n(r.taken_by_drain),
        };
        out.sessions_moved += outcome.moved;
        out.sessions_moved_again += outcome.moved_again;
        out.sessions_dropped += outcome.dropped;
        pod.outcome = Some(outcome);
        finished.push(pod.clone());
    }
    (out, finished)
}

/// The sessions of its ask that `pod` kept because they came to it by a move within
/// [`KEEP_MOVED_FOR`], once its outcome is recorded: None when it picked all it was asked, or
/// fell short for another reason (fewer sessions open than asked).
pub fn kept_of_ask(pod: &RebalancedPod) -> Option<i64> {
    let outcome = pod.outcome.as_ref()?;
    let short = pod.sessions - outcome.selected;
    Some(short.min(outcome.kept_moved)).filter(|&kept| kept > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::constant(1_800_000_000, 0);

    fn settings() -> Settings {
        Settings::of(&RebalanceSpec::default()).expect("on by default")
    }

    fn sessions(counts: &[i64]) -> BTreeMap<String, i64> {
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("p{i}"), *n))
            .collect()
    }

    #[test]
    fn after_a_scale_up_the_busy_pods_move_what_they_hold_above_the_mean() {
        // Two pods of 400, four new empty ones: the mean is 134 (800 / 6, rounded up).
        let asks = asks(&sessions(&[400, 400, 0, 0, 0, 0]), 120);
        assert_eq!(asks, [ask("p0", 266, 400), ask("p1", 266, 400)]);
    }

    #[test]
    fn pods_within_the_threshold_are_left_alone() {
        assert!(
            asks(&sessions(&[119, 100, 81]), 120).is_empty(),
            "119 of a mean of 100"
        );
        assert_eq!(asks(&sessions(&[121, 100, 79]), 120), [ask("p0", 21, 121)]);
        assert!(
            asks(&sessions(&[5]), 120).is_empty(),
            "one pod has no one to give to"
        );
        assert!(asks(&sessions(&[0, 0]), 120).is_empty());
    }

    #[test]
    fn a_round_is_in_flight_for_its_spread_and_rounds_start_at_most_every_cooldown() {
        let s = settings();
        let round = start(None, &[ask("p0", 10, 30)], 3, NOW);
        assert_eq!(round.round, 1);
        assert_eq!(round.sessions_asked, 10);
        assert!(in_flight(&round, &s, NOW + s.spread));
        assert!(!in_flight(&round, &s, NOW + s.spread + placement::SETTLE));
        let early = NOW + s.cooldown - SignedDuration::from_secs(1);
        assert!(!due(Some(&round), &s, early, 3));
        assert!(
            due(Some(&round), &s, early, 5),
            "a scale-up calls for a round at once"
        );
        assert!(due(Some(&round), &s, NOW + s.cooldown, 3));
        assert!(due(None, &s, NOW, 3));
        let next = start(Some(&round), &[ask("p1", 5, 20)], 3, NOW + s.cooldown);
        assert_eq!((next.round, next.sessions_asked), (2, 15));
        assert_eq!(round_id(next.round), "rebalance 2");
    }

    #[test]
    fn the_sessions_on_their_way_are_those_the_pods_still_there_have_not_moved_yet() {
        let s = settings();
        let round = start(None, &[ask("p0", 10, 30), ask("p1", 7, 27)], 3, NOW);
        let at_start = |p: &str| Some(if p == "p0" { 30 } else { 27 });
        assert_eq!(incoming(Some(&round), &s, NOW, at_start), 17);
        let p1_only = |p: &str| (p == "p1").then_some(27);
        assert_eq!(incoming(Some(&round), &s, NOW, p1_only), 7);
        let halfway = |p: &str| Some(if p == "p0" { 25 } else { 20 });
        assert_eq!(incoming(Some(&round), &s, NOW, halfway), 5, "p1 is done");
        let grown = |_: &str| Some(100);
        assert_eq!(
            incoming(Some(&round), &s, NOW, grown),
            17,
            "at most what was asked"
        );
        let over = NOW + s.spread + placement::SETTLE;
        assert_eq!(incoming(Some(&round), &s, over, at_start), 0);
        assert_eq!(incoming(None, &s, NOW, at_start), 0);
    }

    fn ask(pod: &str, sessions: i64, held: i64) -> Ask {
        Ask {
            pod: pod.to_owned(),
            sessions,
            held,
        }
    }

    fn autoscaling() -> AutoscalingSpec {
        serde_json::from_value(serde_json::json!({
            "minReplicas": 2, "maxReplicas": 6, "targetSessionsPerPod": 150
        }))
        .expect("spec")
    }

    #[test]
    fn no_round_while_the_autoscaling_is_about_to_scale_down() {
        let spec = autoscaling();
        // 100 sessions on 6 pods, far below 150 per pod: down to 2 soon.
        assert!(scale_ahead(&sessions(&[100, 0, 0, 0, 0, 0]), &spec));
        // 820 on 6 is within the tolerance (at least 810); 760 is not, but still calls for 6.
        assert!(!scale_ahead(&sessions(&[820, 0, 0, 0, 0, 0]), &spec));
        assert!(!scale_ahead(&sessions(&[760, 0, 0, 0, 0, 0]), &spec));
        assert!(scale_ahead(&sessions(&[740, 0, 0, 0, 0, 0]), &spec));
        // At minReplicas nothing goes.
        assert!(!scale_ahead(&sessions(&[100, 0]), &spec));
    }

    #[test]
    fn no_round_while_the_autoscaling_is_about_to_scale_up() {
        let mut spec = autoscaling();
        // 400 sessions on 2 pods, 200 per pod: up to 3 soon, and a round on 3 would move
        // again what a round on 2 moved.
        assert!(scale_ahead(&sessions(&[300, 100]), &spec));
        // 330 on 2 is within the tolerance (at most 330).
        assert!(!scale_ahead(&sessions(&[250, 80]), &spec));
        // At maxReplicas, or with scale-ups disabled, no pod comes.
        assert!(!scale_ahead(&sessions(&[1200, 0, 0, 0, 0, 0]), &spec));
        spec.behavior.scale_up.select_policy = SelectPolicy::Disabled;
        assert!(!scale_ahead(&sessions(&[300, 100]), &spec));
    }

    #[test]
    fn off_means_no_settings() {
        let off = RebalanceSpec {
            enabled: false,
            ..RebalanceSpec::default()
        };
        assert_eq!(Settings::of(&off), None);
    }

    #[test]
    fn a_round_s_outcome_is_recorded_once_per_pod_as_its_gateway_reports_it_finished() {
        let asks = [
            Ask {
                pod: "p0".to_owned(),
                sessions: 100,
                held: 300,
            },
            Ask {
                pod: "p1".to_owned(),
                sessions: 50,
                held: 250,
            },
        ];
        let round = start(None, &asks, 4, NOW);
        let report = |id: &str, state, moved| RebalanceReport {
            id: id.to_owned(),
            state,
            selected: 100,
            moved,
            moved_again: 1,
            dropped: 2,
            closed_by_client: 100 - moved - 2,
            ..RebalanceReport::default()
        };
        let reports = |pod: &str| match pod {
            "p0" => Some(report(
                "rebalance 1",
                longconn_drain_api::RebalanceState::Done,
                95,
            )),
            // Still moving: nothing recorded yet.
            _ => Some(report(
                "rebalance 1",
                longconn_drain_api::RebalanceState::Moving,
                10,
            )),
        };
        let (followed, finished) = follow(&round, reports);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].pod, "p0");
        let outcome = followed.pods[0].outcome.clone().expect("p0 finished");
        assert_eq!(
            (outcome.moved, outcome.moved_again, outcome.dropped),
            (95, 1, 2)
        );
        assert_eq!(followed.pods[1].outcome, None);
        assert_eq!(
            (
                followed.sessions_moved,
                followed.sessions_moved_again,
                followed.sessions_dropped
            ),
            (95, 1, 2)
        );
        // Read again: nothing counted twice.
        let (again, finished) = follow(&followed, reports);
        assert!(finished.is_empty());
        assert_eq!(again, followed);
        // A report of another round (an older one, or a new gateway's) is not this round's.
        let (other, finished) = follow(&round, |_| {
            Some(report(
                "rebalance 0",
                longconn_drain_api::RebalanceState::Done,
                95,
            ))
        });
        assert!(finished.is_empty());
        assert_eq!(other.sessions_moved, 0);
        // The next round keeps the totals.
        let next = start(Some(&followed), &asks[..1], 4, NOW);
        assert_eq!((next.round, next.sessions_moved), (2, 95));
        assert_eq!(next.pods[0].outcome, None);
    }

    #[test]
    fn a_pod_that_keeps_sessions_moved_to_it_recently_falls_short_of_its_ask_by_them() {
        // Asked 94 of 227, of which 167 came by a move a minute before: it picks 60.
        let round = start(None, &[ask("p0", 94, 227)], 6, NOW);
        let report = |selected, kept_moved| RebalanceReport {
            id: "rebalance 1".to_owned(),
            state: longconn_drain_api::RebalanceState::Done,
            requested: 94,
            selected,
            kept_moved,
            moved: selected,
            ..RebalanceReport::default()
        };
        let (followed, _) = follow(&round, |_| Some(report(60, 167)));
        let pod = &followed.pods[0];
        assert_eq!(pod.outcome.as_ref().map(|o| o.kept_moved), Some(167));
        assert_eq!(kept_of_ask(pod), Some(34));
        let (all_picked, _) = follow(&round, |_| Some(report(94, 73)));
        assert_eq!(
            kept_of_ask(&all_picked.pods[0]),
            None,
            "nothing kept of the ask"
        );
        assert_eq!(kept_of_ask(&round.pods[0]), None, "not finished");
        let (fewer_open, _) = follow(&round, |_| Some(report(50, 0)));
        assert_eq!(
            kept_of_ask(&fewer_open.pods[0]),
            None,
            "fewer open than asked"
        );
    }
}
