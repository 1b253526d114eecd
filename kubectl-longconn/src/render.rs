//! `kubectl longconn status` and `history`: a LongConnService's rollout and its revisions in
//! words, from the object alone.
//!
//! [`status`], [`history`] and [`revision`] read nothing but the object (no clock, no other API
//! object), so what they print is what `status` and the spec say: the revisions, the phase, the
//! step in progress and what holds it, what a person can do next, the health gate, the pods
//! being drained, each pod's open sessions, the rollout's accounting and the Progressing and
//! SessionsPreserved conditions; and each revision recorded in `status.history`, how its
//! rollout ended and what changed.

use std::fmt::Write;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use longconn_operator::crd::{
    AnalysisSpec, AnalysisStatus, DrainingPod, HealthTally, LongConnService, LongConnServiceStatus,
    PauseCause, RevisionRecord, RolloutPhase, RolloutStatus,
};
use longconn_operator::rollout::SESSIONS_PRESERVED;
use longconn_operator::steps::Stage;

use crate::decide::Refused;
use crate::history;

/// The conditions shown, in this order.
const CONDITIONS: [&str; 2] = ["Progressing", SESSIONS_PRESERVED];

/// The most characters of a change shown in the history's table; `--revision` shows it whole.
const CHANGE_WIDTH: usize = 40;

/// The summary `kubectl longconn status` prints.
pub fn status(lcs: &LongConnService) -> String {
    let mut out = heading(lcs);
    let mut line = |key: &str, value: &str| field(&mut out, key, value);
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
    if let Some(gate) = gate(lcs, status) {
        line("Gate", &gate);
    }
    let analysis = status.rollout.as_ref().and_then(|r| r.analysis.as_ref());
    if let Some(a) = analysis {
        out.push_str("\nHealth gate:\n");
        out.push_str(&tallies(lcs.spec.rollout.analysis.as_ref(), a));
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

/// The `Name:` line every summary starts with.
fn heading(lcs: &LongConnService) -> String {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let namespace = lcs.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = String::new();
    field(&mut out, "Name", &format!("{namespace}/{name}"));
    out
}

/// A `Key:        value` line; the lines after the first of a value are indented under it.
fn field(out: &mut String, key: &str, value: &str) {
    let mut lines = value.lines();
    let _ = writeln!(
        out,
        "{:<11} {}",
        format!("{key}:"),
        lines.next().unwrap_or_default()
    );
    for more in lines {
        let _ = writeln!(out, "{:<11} {more}", "");
    }
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

/// The health gate's verdict, or what it waits for.
fn gate(lcs: &LongConnService, status: &LongConnServiceStatus) -> Option<String> {
    let spec = lcs.spec.rollout.analysis.as_ref();
    let recorded = status
        .rollout
        .as_ref()
        .and_then(|r| Some((r, r.analysis.as_ref()?)));
    let Some((r, a)) = recorded else {
        return spec.map(|_| {
            if lcs.spec.rollout.steps.is_empty() {
                "spec.rollout.analysis is set, but it judges only a rollout with steps".to_owned()
            } else {
                "waits for a rollout: the new revision is judged against the others from its \
                 first step on"
                    .to_owned()
            }
        });
    };
    let verdict = match (&a.failed, a.message.as_str()) {
        (Some(signal), "") => format!("failed on {signal}"),
        (Some(signal), message) => format!("failed on {signal}: {message}"),
        (None, "") => match spec {
            Some(s) if a.update.attempts < s.min_attempts => format!(
                "not judged before {} attempts ({} so far)",
                s.min_attempts, a.update.attempts
            ),
            _ => "within its limits".to_owned(),
        },
        (None, message) => message.to_owned(),
    };
    let since = a
        .since
        .as_ref()
        .map(|t| format!(" since {}", t.0))
        .unwrap_or_default();
    Some(format!(
        "revision {} against the others{since}: {verdict}",
        r.revision
    ))
}

/// The health gate's counts: each signal's share of the attempts, of the update revision and
/// of the stable ones, beside its limit.
fn tallies(spec: Option<&AnalysisSpec>, a: &AnalysisStatus) -> String {
    let of = |count: fn(&HealthTally) -> i64| {
        [&a.update, &a.stable].map(|t| match t.attempts {
            0 => "no attempts".to_owned(),
            n => format!("{:.1}% of {n}", count(t) as f64 * 100.0 / n as f64),
        })
    };
    let limit = |points: fn(&AnalysisSpec) -> i32| spec.map(|s| format!("+{} points", points(s)));
    let signals = [
        (
            "UpstreamRefused",
            "upstream refused",
            of(|t| t.upstream_refused),
            limit(|s| s.upstream_refused_percent),
        ),
        (
            "UpstreamUnavailable",
            "upstream unavailable",
            of(|t| t.upstream_unavailable),
            limit(|s| s.upstream_unavailable_percent),
        ),
        (
            "ServerErrors",
            "server errors",
            of(|t| t.server_errors),
            limit(|s| s.server_errors_percent),
        ),
        (
            "DroppedSessions",
            "sessions dropped",
            [a.update.dropped, a.stable.dropped].map(|n| n.to_string()),
            spec.map(|s| format!("at most {}", s.max_dropped_sessions)),
        ),
    ];
    let mut rows = vec![
        ["SIGNAL", "UPDATE", "STABLE", "LIMIT", ""]
            .map(str::to_owned)
            .to_vec(),
    ];
    for (signal, words, [update, stable], limit) in signals {
        let failed = a.failed.as_deref() == Some(signal);
        rows.push(vec![
            words.to_owned(),
            update,
            stable,
            limit.unwrap_or_default(),
            if failed { "failed" } else { "" }.to_owned(),
        ]);
    }
    table(&rows)
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

/// What `kubectl longconn history` prints: every revision recorded in `status.history`, oldest
/// first, how its rollout ended and what changed.
pub fn history(lcs: &LongConnService) -> String {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let mut out = heading(lcs);
    let records = history::records(lcs);
    let status = lcs.status.as_ref().filter(|_| !records.is_empty());
    let Some(status) = status else {
        field(
            &mut out,
            "History",
            "none yet: the operator records each revision of the pods' spec in status.history \
             as it rolls it out",
        );
        return out;
    };
    field(&mut out, "Revisions", &revisions(status));
    field(
        &mut out,
        "Next",
        &format!(
            "kubectl longconn history {name} --revision N shows revision N in full; kubectl \
             longconn undo {name} --to-revision N returns to it"
        ),
    );
    let mut rows = vec![
        [
            "NUMBER", "REVISION", "CREATED", "RESULT", "DRAINED", "MOVED", "DROPPED", "CHANGE",
            "MESSAGE",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for record in records {
        let [drained, moved, dropped] = counts(status, record).map(|n| n.to_string());
        let change = record.change.lines().collect::<Vec<_>>().join("; ");
        rows.push(vec![
            record.number.to_string(),
            record.revision.clone(),
            created(record),
            result(lcs, record),
            drained,
            moved,
            dropped,
            clip(&change, CHANGE_WIDTH),
            record
                .outcome
                .as_ref()
                .map(|o| o.message.clone())
                .unwrap_or_default(),
        ]);
    }
    out.push_str("\nHistory:\n");
    out.push_str(&table(&rows));
    out
}

/// What `kubectl longconn history --revision N` prints: that record in full.
pub fn revision(lcs: &LongConnService, number: i64) -> Result<String, Refused> {
    let record = history::numbered(lcs, number)?;
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let mut out = heading(lcs);
    let mut title = format!("{} ({})", record.number, record.revision);
    if let Some(Time(at)) = &record.created_at {
        let _ = write!(title, ", created {at}");
    }
    if let Some(role) = role(lcs, record) {
        let _ = write!(title, ", {role}");
    }
    field(&mut out, "Revision", &title);
    let [drained, moved, dropped] = lcs
        .status
        .as_ref()
        .map(|s| counts(s, record))
        .unwrap_or_default();
    let tally = format!("{drained} pods drained, {moved} sessions moved, {dropped} dropped");
    let result = match &record.outcome {
        Some(o) => match &o.finished_at {
            Some(Time(at)) => format!("{:?} at {at}: {tally}", o.result),
            None => format!("{:?}: {tally}", o.result),
        },
        None => format!("in progress: {tally} so far"),
    };
    field(&mut out, "Result", &result);
    if let Some(o) = record.outcome.as_ref().filter(|o| !o.message.is_empty()) {
        field(&mut out, "Message", &o.message);
    }
    field(&mut out, "Change", &record.change);
    let update = lcs
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref());
    if update != Some(record.revision.as_str()) {
        field(
            &mut out,
            "Next",
            &format!("return to it with kubectl longconn undo {name} --to-revision {number}"),
        );
    }
    Ok(out)
}

fn created(record: &RevisionRecord) -> String {
    record
        .created_at
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

/// How a revision's rollout ended (`in progress` while it has not), and whether the pods run it
/// or the spec asks for it.
fn result(lcs: &LongConnService, record: &RevisionRecord) -> String {
    let words = match &record.outcome {
        Some(o) => format!("{:?}", o.result),
        None => "in progress".to_owned(),
    };
    match role(lcs, record) {
        Some(role) => format!("{words} ({role})"),
        None => words,
    }
}

/// `running` for the record the pods run; for the one the spec asks for, `rolling out` or, once
/// its rollout ended without it, `in the spec`.
fn role(lcs: &LongConnService, record: &RevisionRecord) -> Option<&'static str> {
    let is = |r: Option<&RevisionRecord>| r.is_some_and(|r| r.number == record.number);
    if is(history::running(lcs)) {
        Some("running")
    } else if is(history::asked_for(lcs)) {
        Some(match record.outcome {
            None => "rolling out",
            Some(_) => "in the spec",
        })
    } else {
        None
    }
}

/// Pods drained, sessions moved and sessions dropped: the outcome's, or the rollout's so far.
fn counts(status: &LongConnServiceStatus, record: &RevisionRecord) -> [i64; 3] {
    match (&record.outcome, &status.rollout) {
        (Some(o), _) => [
            o.pods_drained.into(),
            o.sessions_migrated,
            o.sessions_dropped,
        ],
        (None, Some(r)) if r.revision == record.revision => [
            r.pods_drained.into(),
            r.sessions_migrated,
            r.sessions_dropped,
        ],
        (None, _) => [0; 3],
    }
}

/// `text`, cut to `width` characters with an ellipsis.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
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
    use longconn_operator::crd::{RevisionOutcome, RevisionResult};

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
    fn a_health_gate_judging_the_rollout_compares_the_update_with_the_stable_revisions() {
        insta::assert_snapshot!(status(&fixtures::gate_judging()));
    }

    #[test]
    fn a_failed_health_gate_names_the_signal_that_failed() {
        insta::assert_snapshot!(status(&fixtures::gate_failed()));
    }

    #[test]
    fn a_health_gate_short_of_its_attempts_says_it_has_not_judged_yet() {
        let mut lcs = fixtures::gate_judging();
        if let Some(spec) = lcs.spec.rollout.analysis.as_mut() {
            spec.min_attempts = 100;
        }
        let text = status(&lcs);
        assert!(
            text.contains(
                "Gate:       revision b against the others since 2026-01-01T00:00:00Z: not \
                 judged before 100 attempts (50 so far)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_health_gate_without_a_rollout_says_what_it_waits_for() {
        let mut lcs = fixtures::complete();
        lcs.spec.rollout.analysis = Some(AnalysisSpec::default());
        let text = status(&lcs);
        assert!(
            text.contains(
                "Gate:       waits for a rollout: the new revision is judged against the others \
                 from its first step on\n"
            ),
            "{text}"
        );
        assert!(!text.contains("Health gate:"), "{text}");
        lcs.spec.rollout.steps.clear();
        let text = status(&lcs);
        assert!(
            text.contains(
                "Gate:       spec.rollout.analysis is set, but it judges only a rollout with steps\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_history_lists_each_revision_s_ending_and_marks_the_running_and_rolling_out_ones() {
        insta::assert_snapshot!(history(&fixtures::with_history()));
    }

    #[test]
    fn one_revision_of_the_history_in_full_says_how_to_return_to_it() {
        insta::assert_snapshot!(revision(&fixtures::with_history(), 5).expect("in the history"));
    }

    #[test]
    fn a_service_without_history_says_it_has_none_yet() {
        insta::assert_snapshot!(history(&fixtures::waiting_for_promotion()));
    }

    #[test]
    fn the_history_clips_a_long_change_and_one_revision_shows_it_whole() {
        let lcs = fixtures::with_history();
        let whole = "image: chat:1.5.1 → chat:1.5.2; env LOG_LEVEL: debug → info; \
                     resources.limits.memory: 512Mi → 1Gi";
        let table = history(&lcs);
        assert!(!table.contains(whole), "{table}");
        assert!(
            table.contains("image: chat:1.5.1 → chat:1.5.2; env LOG…\n"),
            "{table}"
        );
        let one = revision(&lcs, 4).expect("in the history");
        assert!(one.contains(&format!("Change:     {whole}\n")), "{one}");
        assert!(one.contains(", running\n"), "{one}");
    }

    #[test]
    fn one_revision_of_the_spec_asks_for_offers_no_undo() {
        let one = revision(&fixtures::with_history(), 6).expect("in the history");
        assert!(
            one.contains(
                "Result:     in progress: 1 pods drained, 298 sessions moved, 0 dropped so far\n"
            ),
            "{one}"
        );
        assert!(!one.contains("Next:"), "{one}");
    }

    #[test]
    fn an_aborted_revision_the_spec_still_asks_for_is_marked_in_the_spec() {
        let mut lcs = fixtures::with_history();
        let records = lcs.status.iter_mut().flat_map(|s| &mut s.history);
        for record in records.filter(|r| r.number == 6) {
            record.outcome = Some(RevisionOutcome {
                result: RevisionResult::Aborted,
                ..RevisionOutcome::default()
            });
        }
        let table = history(&lcs);
        assert!(table.contains("  Aborted (in the spec)  "), "{table}");
        assert!(table.contains("  Complete (running)  "), "{table}");
    }

    #[test]
    fn a_revision_not_in_the_history_is_refused_with_the_numbers_there_are() {
        let refused = revision(&fixtures::with_history(), 9).expect_err("no revision 9");
        assert_eq!(
            refused.to_string(),
            "chat has no revision 9 in its history; it has 1, 2, 3, 4, 5, 6"
        );
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
