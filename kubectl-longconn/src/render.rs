//! `kubectl longconn status`: a LongConnService's rollout in words, from the object alone.
//!
//! [`status`] reads nothing but the object (no clock, no other API object), so what it prints
//! is what `status` and the spec say: the revisions, the phase, the step in progress and what
//! holds it, what a person can do next, the pods being drained, each pod's open sessions, the
//! rollout's accounting and the Progressing and SessionsPreserved conditions.

use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_operator::crd::{
    DrainingPod, LongConnService, LongConnServiceStatus, PauseCause, RolloutPhase, RolloutStatus,
};
use longconn_operator::rollout::SESSIONS_PRESERVED;
use longconn_operator::steps::Stage;

/// The conditions shown, in this order.
const CONDITIONS: [&str; 2] = ["Progressing", SESSIONS_PRESERVED];

/// The summary `kubectl longconn status` prints.
pub fn status(lcs: &LongConnService) -> String {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let namespace = lcs.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{:<11} {value}", format!("{key}:"));
    };
    line("Name", &format!("{namespace}/{name}"));
    let Some(status) = lcs.status.as_ref() else {
        line(
            "Status",
            "none yet: the operator has not reconciled it (is the operator running?)",
        );
        return out;
    };
    line("Revisions", &revisions(status));
    if let Some(r) = &status.rollout {
        line("Phase", &phase(status, r));
        // Steps stage a rollout to a new revision, not the way back.
        if r.phase != RolloutPhase::RollingBack
            && let Some(step) = step(lcs, r)
        {
            line("Step", &step);
        }
    }
    if let Some(next) = next(lcs, status) {
        line("Next", &next);
    }
    line(
        "Pods",
        &format!(
            "{} wanted, {} running ({} ready, {} of the update revision), {} sessions open",
            lcs.spec.replicas,
            status.replicas,
            status.ready_replicas,
            status.updated_replicas,
            status.active_sessions
        ),
    );
    if let Some(r) = &status.rollout {
        line("Rollout", &accounting(r));
    }
    if let Some(r) = status.rollout.as_ref().filter(|r| !r.draining.is_empty()) {
        out.push_str("\nDraining:\n");
        out.push_str(&draining(&r.draining));
    }
    if !status.gateways.is_empty() {
        out.push_str("\nSessions per pod:\n");
        out.push_str(&gateways(status));
    }
    let conditions: Vec<&Condition> = CONDITIONS
        .iter()
        .filter_map(|t| status.conditions.iter().find(|c| c.type_ == *t))
        .collect();
    if !conditions.is_empty() {
        out.push_str("\nConditions:\n");
        out.push_str(&self::conditions(&conditions));
    }
    out
}

fn revisions(status: &LongConnServiceStatus) -> String {
    match (
        status.current_revision.as_deref(),
        status.update_revision.as_deref(),
    ) {
        (Some(current), Some(update)) if current == update => format!("{current} (up to date)"),
        (Some(current), Some(update)) => format!("{current} → {update}"),
        (None, Some(update)) => format!("{update} (the first)"),
        (Some(current), None) => current.to_owned(),
        (None, None) => "none yet".to_owned(),
    }
}

fn phase(status: &LongConnServiceStatus, r: &RolloutStatus) -> String {
    let current = status.current_revision.as_deref().unwrap_or("?");
    let words = match (r.phase, r.paused_by) {
        (RolloutPhase::Surging, _) => format!("starting pods of revision {}", r.revision),
        (RolloutPhase::Draining, _) => "draining pods of other revisions".to_owned(),
        (RolloutPhase::Removing, _) => "removing drained pods".to_owned(),
        (RolloutPhase::Paused, Some(PauseCause::Step)) => "held by a pause step".to_owned(),
        (RolloutPhase::Paused, Some(PauseCause::Spec)) => "held by spec.rollout.paused".to_owned(),
        (RolloutPhase::Paused, None) => "stopped (see the Progressing condition)".to_owned(),
        (RolloutPhase::RollingBack, _) => match &r.finished_at {
            Some(at) => format!("rolled back to revision {current} at {}", at.0),
            None => format!("rolling back to revision {current}"),
        },
        (RolloutPhase::Complete, _) => match &r.finished_at {
            Some(at) => format!("revision {} complete at {}", r.revision, at.0),
            None => format!("revision {} complete", r.revision),
        },
    };
    format!("{:?}: {words}", r.phase)
}

/// The step in progress and when it began; for a timed pause, when it ends by itself.
fn step(lcs: &LongConnService, r: &RolloutStatus) -> Option<String> {
    let index = usize::try_from(r.step?).ok()?;
    let mut words = Stage::describe(lcs, index);
    if index >= lcs.spec.rollout.steps.len() {
        return Some(words);
    }
    if let Some(started) = &r.step_started_at {
        let _ = write!(words, ", since {}", started.0);
    }
    if let Some(until) = pause_ends(lcs, r) {
        let _ = write!(words, ", ends at {until}");
    }
    Some(words)
}

/// When the timed pause step in progress ends by itself.
fn pause_ends(lcs: &LongConnService, r: &RolloutStatus) -> Option<Timestamp> {
    let index = usize::try_from(r.step?).ok()?;
    let pause = lcs.spec.rollout.steps.get(index)?.pause.as_ref()?;
    let duration = pause.duration.as_ref()?.to_std().ok()?;
    let Time(started) = r.step_started_at.as_ref()?;
    started
        .checked_add(SignedDuration::try_from(duration).ok()?)
        .ok()
}

/// What a person can do now, if anything.
fn next(lcs: &LongConnService, status: &LongConnServiceStatus) -> Option<String> {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let r = status.rollout.as_ref();
    let rolling_out = matches!(
        (
            status.current_revision.as_deref(),
            status.update_revision.as_deref()
        ),
        (Some(current), Some(update)) if current != update
    ) && r.is_some_and(|r| r.phase != RolloutPhase::RollingBack);
    let abort = format!("abort it with kubectl longconn abort {name}");
    let words = match r.and_then(|r| r.paused_by) {
        Some(PauseCause::Spec) => format!("resume it with kubectl longconn resume {name}"),
        Some(PauseCause::Step) => match r.and_then(|r| pause_ends(lcs, r)) {
            Some(until) => format!(
                "it goes on by itself at {until}; kubectl longconn promote {name} ends the pause now"
            ),
            None => format!(
                "promote it with kubectl longconn promote {name} (--full skips every step left), or {abort}"
            ),
        },
        None if lcs.spec.rollout.paused => format!(
            "spec.rollout.paused is set: no drain starts; resume it with kubectl longconn resume {name}"
        ),
        None if rolling_out && r.is_some_and(|r| r.phase == RolloutPhase::Paused) => {
            format!("change the spec to go on, or {abort}")
        }
        None if rolling_out => format!("to go back, {abort}"),
        None => return None,
    };
    Some(words)
}

fn accounting(r: &RolloutStatus) -> String {
    let mut words = format!(
        "revision {}: {} pods drained, {} sessions moved ({} of them moved again), {} dropped, \
         {} connection attempts refused",
        r.revision,
        r.pods_drained,
        r.sessions_migrated,
        r.sessions_moved_again,
        r.sessions_dropped,
        r.attempts_refused
    );
    if let Some(balance) = &r.balance {
        let _ = write!(words, "; balance {balance}");
    }
    words
}

fn draining(pods: &[DrainingPod]) -> String {
    let mut rows = vec![
        [
            "POD",
            "REVISION",
            "STATE",
            "STARTED",
            "AT START",
            "OPEN",
            "MOVED",
            "CLIENT CLOSED",
            "DROPPED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for p in pods {
        let state = match &p.finished_at {
            Some(at) => format!("drained {}", clock(at)),
            None => "draining".to_owned(),
        };
        rows.push(vec![
            p.pod.clone(),
            p.revision.clone(),
            state,
            p.started_at.as_ref().map(clock).unwrap_or_default(),
            p.sessions_at_start.to_string(),
            p.active.to_string(),
            p.migrated.to_string(),
            p.closed_by_client.to_string(),
            p.dropped.to_string(),
        ]);
    }
    table(&rows)
}

fn gateways(status: &LongConnServiceStatus) -> String {
    let draining = status.rollout.as_ref().map(|r| r.draining.as_slice());
    let mut rows = vec![vec!["POD".to_owned(), "SESSIONS".to_owned(), String::new()]];
    for g in &status.gateways {
        let drain = draining
            .unwrap_or_default()
            .iter()
            .find(|d| d.pod == g.pod)
            .map(|d| match d.finished_at {
                Some(_) => "drained",
                None => "draining",
            });
        rows.push(vec![
            g.pod.clone(),
            g.sessions.to_string(),
            drain.unwrap_or_default().to_owned(),
        ]);
    }
    table(&rows)
}

fn conditions(conditions: &[&Condition]) -> String {
    let mut rows = vec![
        ["TYPE", "STATUS", "REASON", "MESSAGE"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for c in conditions {
        rows.push(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    table(&rows)
}

/// The time of day of `at`, in UTC.
fn clock(at: &Time) -> String {
    at.0.strftime("%H:%M:%SZ").to_string()
}

/// Rows as aligned columns, indented by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "  {cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn a_rollout_waiting_for_promotion_says_how_to_promote_it() {
        insta::assert_snapshot!(status(&fixtures::waiting_for_promotion()));
    }

    #[test]
    fn a_timed_pause_says_when_it_ends() {
        insta::assert_snapshot!(status(&fixtures::timed_pause()));
    }

    #[test]
    fn a_rollout_paused_by_the_spec_says_how_to_resume_it() {
        insta::assert_snapshot!(status(&fixtures::paused_by_spec()));
    }

    #[test]
    fn a_draining_rollout_lists_each_drain_and_each_pod_s_sessions() {
        insta::assert_snapshot!(status(&fixtures::draining()));
    }

    #[test]
    fn a_rollout_stopped_by_its_drop_budget_offers_the_way_back() {
        insta::assert_snapshot!(status(&fixtures::drop_budget_exceeded()));
    }

    #[test]
    fn a_complete_rollout_shows_its_accounting_and_balance() {
        insta::assert_snapshot!(status(&fixtures::complete()));
    }

    #[test]
    fn an_aborted_rollout_rolling_back_names_the_revision_it_goes_back_to() {
        insta::assert_snapshot!(status(&fixtures::rolling_back()));
    }

    #[test]
    fn an_aborted_rollout_rolled_back_says_when() {
        insta::assert_snapshot!(status(&fixtures::aborted()));
    }

    #[test]
    fn a_service_without_status_says_the_operator_has_not_seen_it() {
        insta::assert_snapshot!(status(&fixtures::no_status()));
    }

    #[test]
    fn spec_paused_before_the_operator_holds_the_rollout_says_so() {
        let mut lcs = fixtures::draining();
        lcs.spec.rollout.paused = true;
        let text = status(&lcs);
        assert!(
            text.contains("Next:       spec.rollout.paused is set: no drain starts; resume it with kubectl longconn resume chat"),
            "{text}"
        );
    }
}
